"""Plug-and-play solvers (PnP proximal gradient, PnP-ADMM) and their unrolled, trainable version.

Both take **any prox**: a :class:`~unroll.prox.Regularizer` (``TotalVariation``, ``WaveletL1``,
``L1``…), a learned proximal network with ``prox(x, step)`` (:class:`unroll.models.LPN`), or a plain
denoiser (:class:`~unroll.models.denoisers.DnCNN`, :class:`~unroll.models.denoisers.UNet`), which
:func:`~unroll.models.denoisers.as_prox` wraps in a :class:`~unroll.models.denoisers.DenoiserProx`.

* **PnP-PGD** (:func:`pnp_pgd`): ``x ← prox_{αg}(x − α Aᴴ(Ax − y))``, ``α = step/L``
  (:class:`~unroll.steps.ProxGradStep`); its residual is the fixed-point residual
  ``‖x_{k+1} − x_k‖ / ‖x_k‖``.
* **PnP-ADMM** (:func:`pnp_admm`, :class:`PnPADMMStep`): the scaled ADMM of
  :class:`~unroll.steps.ADMMStep` on the state ``(x, z, u)``: ``x ← (AᴴA + ρI)⁻¹(Aᴴy + ρ(z − u))``
  — in closed form by FFT when the operator has one (:meth:`unroll.operators.Blur.solve_shifted_normal`,
  circular blur), else by :func:`unroll.cg` — then ``z ← prox_{g/ρ}(x + u)``, ``u ← u + x − z``;
  its residual is the fixed-point residual of the whole state.

Both run to a tolerance on that residual (per sample, batched) and record it at every iteration
(``info.residual_history``, ``(B, iterations)``): for a true proximal operator (a convex ``g``,
an LPN) the iteration is a fixed-point iteration of an averaged operator and the residual goes to
zero; a denoiser that is not a prox may stall or oscillate, which the curve shows.

:class:`UnrolledPnP` is ``K`` such iterations as a network ``model(y, A)``, trained end to end
(the prior's weights, ``ρ`` or the step) with every gradient mode of :mod:`unroll.autodiff`
(``implicit``/``jfb`` on the whole ADMM state, with tied weights).
"""

from __future__ import annotations

from typing import Optional, Tuple, Union

import torch
from torch import Tensor, nn

from unroll.autodiff import GradMode
from unroll.checks import check_tol
from unroll.info import SolverInfo
from unroll.operators import LinearOperator, as_operator
from unroll.problem import LeastSquares, Problem
from unroll.steps import ADMMState, ADMMStep, ProxGradStep
from unroll.unrolled import Unrolled, UnrolledOutput

from .base import UnrolledModel
from .denoisers import as_prox

__all__ = ["PnPADMMStep", "pnp_admm", "pnp_pgd", "UnrolledPnP"]


class PnPADMMStep(ADMMStep):
    """:class:`~unroll.steps.ADMMStep` whose data step is solved in closed form when the operator
    offers ``solve_shifted_normal(b, ρ) = (AᴴA + ρI)⁻¹ b`` (and says so by ``has_shifted_inverse``,
    as a circular :class:`~unroll.operators.Blur` does); otherwise by :func:`unroll.cg` as the base.

    Args:
        prox: the prior (a module with ``prox(x, step)``, or a denoiser: wrapped by ``as_prox``).
        rho: penalty ``ρ`` in units of ``L = ‖A‖²``; ``prox`` is called with step ``1/ρ``.
        learn_rho: learn it (softplus).
        closed_form: use the operator's closed form when it has one.
        cg_tol, cg_max_iter: the inner CG otherwise.

    State: :class:`~unroll.steps.ADMMState` ``(x, z, u)``, each ``(B, *shape)``; estimate ``z``.
    """

    def __init__(self, prox: nn.Module, rho: float = 1.0, learn_rho: bool = False, closed_form: bool = True,
                 cg_tol: float = 1e-8, cg_max_iter: int = 100) -> None:
        super().__init__(as_prox(prox), rho=rho, learn_rho=learn_rho, cg_tol=cg_tol, cg_max_iter=cg_max_iter)
        self.closed_form = bool(closed_form)

    def uses_closed_form(self, problem: LeastSquares) -> bool:
        """Whether the data step of ``problem`` is solved in closed form."""
        return self.closed_form and bool(getattr(problem.op, "has_shifted_inverse", False))

    def forward(self, state: ADMMState, problem: LeastSquares) -> ADMMState:
        if not self.uses_closed_form(problem):
            return super().forward(state, problem)
        rho = self.rho() * problem.lipschitz_for(state.x)
        rho = rho.to(state.x.dtype)
        rhs = problem.op._adjoint(problem.y) + rho * (state.z - state.u)
        x = problem.op.solve_shifted_normal(rhs, rho)
        z = self.prox.prox(x + state.u, 1.0 / rho)
        return ADMMState(x, z, state.u + x - z)


def _start(op: LinearOperator, y: Tensor, x0: Optional[Tensor]) -> Tensor:
    return op.adjoint(y) if x0 is None else x0


def _solve(step: nn.Module, op, y: Tensor, x0: Optional[Tensor], max_iter: int, tol: Optional[float],
           check_every: int) -> Tuple[Tensor, SolverInfo]:
    op = as_operator(op)
    problem = Problem.create(op, y)  # checks y (shape, dtype, NaN/Inf)
    layer = Unrolled(step, num_iters=max_iter)
    out = layer(problem, _start(op, y, x0), tol=tol, check_every=check_every, record_residuals=True)
    return out.x, out.info


def pnp_admm(op: Union[LinearOperator, Tensor], y: Tensor, prior: nn.Module, rho: float = 1.0,
             max_iter: int = 100, tol: Optional[float] = 1e-4, x0: Optional[Tensor] = None, check_every: int = 10,
             closed_form: bool = True) -> Tuple[Tensor, SolverInfo]:
    """Plug-and-play ADMM for ``½‖Ax − y‖² + g(x)`` with ``g`` given by its prox (or a denoiser).

    Args:
        op: the forward operator ``A`` (e.g. a :class:`~unroll.operators.GaussianBlur`).
        y: measurements ``(B, *out_shape)``.
        prior: a module with ``prox(x, step)`` or a denoiser (see the module docstring).
        rho: ADMM penalty in units of ``‖A‖²``.
        max_iter: iteration budget; tol: stop a sample once its fixed-point residual is ``≤ tol``
            (``None``: run ``max_iter``); check_every: early-stop test period (one host sync).
        x0: start of ``x`` and ``z`` (default ``Aᴴy``); ``u`` starts at 0.
        closed_form: solve the data step in closed form when the operator allows.

    Returns:
        ``(x, info)``: the estimate ``z`` ``(B, *in_shape)`` and a :class:`~unroll.info.SolverInfo` with
        per-sample iterations, final residual, convergence and ``residual_history`` ``(B, iterations)``.
    """
    return _solve(PnPADMMStep(prior, rho=rho, closed_form=closed_form), op, y, x0, max_iter, tol, check_every)


def pnp_pgd(op: Union[LinearOperator, Tensor], y: Tensor, prior: nn.Module, step: float = 1.0, max_iter: int = 100,
            tol: Optional[float] = 1e-4, x0: Optional[Tensor] = None, check_every: int = 10
            ) -> Tuple[Tensor, SolverInfo]:
    """Plug-and-play proximal gradient ``x ← prox_{αg}(x − α Aᴴ(Ax − y))``, ``α = step/‖A‖²``.

    Args: as :func:`pnp_admm`, with ``step`` (units of ``1/L``, ``< 2``) instead of ``rho``.

    Returns:
        ``(x, info)`` as :func:`pnp_admm` (residual: ``‖x_{k+1} − x_k‖/‖x_k‖``).
    """
    return _solve(ProxGradStep(as_prox(prior), step=step), op, y, x0, max_iter, tol, check_every)


class UnrolledPnP(UnrolledModel):
    """``K`` plug-and-play iterations (ADMM or proximal gradient) as a trainable network ``model(y, A)``.

    Untrained, it is :func:`pnp_admm` / :func:`pnp_pgd` with ``K`` iterations from ``x0 = Aᴴy``;
    training updates the prior's weights and, if asked, ``ρ`` (ADMM) or the step (PGD), end to end
    through the iterations, in any gradient mode (``full``, ``truncated``, ``checkpoint``; and with
    ``tied=True`` ``implicit`` and ``jfb`` at the fixed point of the whole state).

    Args:
        prior: the prox (``prox(x, step)``) or denoiser of every iteration (its weights start from
            it: pass a pre-trained denoiser to fine-tune it inside the loop).
        num_layers: ``K``.
        algorithm: ``"admm"`` or ``"pgd"``.
        rho: ADMM penalty (units of ``‖A‖²``); learn_rho: learn it (per layer when untied).
        step: PGD step (units of ``1/‖A‖²``); learn_step: learn it.
        tied: one prior and one ``ρ``/step shared by all iterations (``False``: ``K`` copies).
        grad_mode: gradient mode of the iterations (:mod:`unroll.autodiff`).
        closed_form, cg_tol, cg_max_iter: ADMM's data step (see :class:`PnPADMMStep`).
        tol: default tolerance on the fixed-point residual when the model is in eval mode and a
            call gives none (each sample then stops there, within ``num_iters``); ``None``: run all.

    Shapes: ``y`` ``(B, *out_shape)`` → ``x`` ``(B, *in_shape)`` (images ``(B, C, H, W)``).
    """

    def __init__(self, prior: nn.Module, num_layers: int = 10, algorithm: str = "admm", rho: float = 1.0,
                 learn_rho: bool = True, step: float = 1.0, learn_step: bool = True, tied: bool = True,
                 grad_mode: Union[str, GradMode] = "full", closed_form: bool = True, cg_tol: float = 1e-6,
                 cg_max_iter: int = 50, tol: Optional[float] = None) -> None:
        super().__init__(num_layers, grad_mode)
        self.tol = check_tol(tol, "tol")
        if algorithm not in ("admm", "pgd"):
            raise ValueError(f"algorithm: expected 'admm' or 'pgd', got {algorithm!r}")
        self.algorithm = algorithm
        prox = as_prox(prior)
        if algorithm == "admm":
            it = PnPADMMStep(prox, rho=rho, learn_rho=learn_rho, closed_form=closed_form, cg_tol=cg_tol,
                             cg_max_iter=cg_max_iter)
        else:
            it = ProxGradStep(prox, step=step, learn_step=learn_step)
        self.unrolled = Unrolled(it, num_iters=num_layers, tied=tied, grad_mode=self.grad_mode)

    def forward(self, y: Tensor, A: Union[LinearOperator, Tensor], *, num_iters: Optional[int] = None,
                tol: Optional[float] = None, return_trajectory: bool = False, x0: Optional[Tensor] = None,
                grad_mode=None) -> Union[Tensor, UnrolledOutput]:
        """As :meth:`UnrolledModel.forward`, starting from ``x0 = Aᴴy`` by default."""
        if x0 is None and isinstance(y, Tensor):
            op = self._operator(A)
            if op.out_shape is None or tuple(y.shape[1:]) == tuple(op.out_shape):
                x0 = op.adjoint(y)
        if tol is None and not self.training:
            tol = self.tol
        return super().forward(y, A, num_iters=num_iters, tol=tol, return_trajectory=return_trajectory, x0=x0,
                               grad_mode=grad_mode)

    def extra_repr(self) -> str:
        return f"algorithm={self.algorithm!r}, num_layers={self.num_layers}, tied={self.unrolled.tied}"
