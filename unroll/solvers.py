"""Classical solvers that need no training, each returning ``(x, info)``.

All minimise ``½‖A x − y‖² + λ g(x)`` over ``x`` of shape ``(B, *in_shape)``, for a batch of
measurements ``y`` ``(B, *out_shape)``; ``A`` is a :class:`~unroll.operators.LinearOperator`
or a 2-D tensor. They are built from the same steps and :class:`~unroll.unrolled.Unrolled`
loop as the learned models (so they are differentiable too), with fixed step ``1/L``.

``info`` is a :class:`~unroll.info.SolverInfo`: ``iterations`` and ``residual`` (final
relative change) per sample, ``objective`` ``(B, iterations run)`` per iteration, ``status``.

``lam`` is a number, or a tensor that keeps its graph (a hyperparameter: the solution is
differentiable w.r.t. it, e.g. for bilevel learning), of shape ``()``, ``(n,)`` (one weight per
feature) or ``(B, 1)`` (one per sample).
"""

from __future__ import annotations

from typing import Callable, Optional, Tuple, Union

import torch
from torch import Tensor, nn

from .checks import check_tol
from .info import SolverInfo
from .operators.base import LinearOperator
from .problem import Problem
from .prox import L0, L1, Regularizer
from .steps import FISTAStep, ProxGradStep
from .unrolled import Unrolled

__all__ = ["ista", "fista", "iht", "projected_gradient"]

OperatorLike = Union[LinearOperator, Tensor]


class _Projection(Regularizer):
    """Indicator of a set given by its projection ``project(x)`` (value 0: the iterates are feasible)."""

    def __init__(self, project: Callable[[Tensor], Tensor]) -> None:
        super().__init__()
        self.project = project

    def value(self, x: Tensor) -> Tensor:
        return x.new_zeros(x.shape[0]).real

    def prox(self, x: Tensor, step) -> Tensor:
        return self.project(x)


def _run(step: nn.Module, A: OperatorLike, y: Tensor, reg: nn.Module, max_iter: int, tol: Optional[float],
         x0: Optional[Tensor], return_trajectory: bool, grad_mode=None):
    if isinstance(max_iter, bool) or not isinstance(max_iter, int) or max_iter < 1:
        raise ValueError(f"max_iter: expected an int >= 1, got {max_iter!r}")
    tol = check_tol(tol, "tol")
    problem = Problem.create(A, y, reg=reg)
    step.to(device=y.device, dtype=y.real.dtype)  # the step module holds reg (its prox) too
    out = Unrolled(step, num_iters=max_iter)(problem, x0, tol=tol, record_objective=True,
                                             return_trajectory=return_trajectory, grad_mode=grad_mode)
    out.info.trajectory = out.trajectory
    return out.x, out.info


def _lam_reg(kind, lam) -> Regularizer:
    """The regulariser ``kind(lam)``; a tensor ``lam`` is passed on as it is (its graph kept)."""
    if isinstance(lam, Tensor):
        with torch.no_grad():
            bad = lam.is_complex() or not lam.is_floating_point() or not bool(torch.isfinite(lam).all()) \
                or bool((lam < 0).any())
        if bad:
            raise ValueError(f"lam: expected finite values >= 0 (a real floating tensor), got {lam!r}")
        return kind(lam)
    if isinstance(lam, bool) or not isinstance(lam, (int, float)) or not (0 <= lam < float("inf")):
        raise ValueError(f"lam: expected a finite number >= 0 or a tensor, got {lam!r}")
    return kind(float(lam))


def ista(A: OperatorLike, y: Tensor, lam: Union[float, Tensor], max_iter: int = 1000, tol: Optional[float] = 1e-6,
         x0: Optional[Tensor] = None, step: float = 1.0,
         return_trajectory: bool = False, grad_mode=None) -> Tuple[Tensor, SolverInfo]:
    """ISTA for the Lasso ``½‖Ax − y‖² + λ‖x‖₁``.

    Args:
        A: operator or ``(m, n)`` matrix.
        y: ``(B, m)`` measurements.
        lam: λ ≥ 0, a number or a tensor (kept in the graph; ``()``, ``(n,)`` or ``(B, 1)``).
        max_iter: iteration budget.
        tol: stop a sample when its relative change is ``≤ tol`` (``None``: run ``max_iter``).
        x0: initial estimate ``(B, n)`` (zeros by default).
        step: step size in units of ``1/‖A‖₂²``.
        return_trajectory: store every iterate in ``info.trajectory``.
        grad_mode: how gradients flow back through the solve (:mod:`unroll.autodiff`; default
            ``"full"``). ``"implicit"`` differentiates the solution at its fixed point with memory
            independent of the iteration count (ISTA, IHT, projected gradient; FISTA's momentum
            state is not a fixed-point map).

    Returns:
        ``(x, info)``, ``x`` of shape ``(B, n)``.
    """
    reg = _lam_reg(L1, lam)
    return _run(ProxGradStep(reg, step=step), A, y, reg, max_iter, tol, x0, return_trajectory, grad_mode)


def fista(A: OperatorLike, y: Tensor, lam: Union[float, Tensor], max_iter: int = 1000, tol: Optional[float] = 1e-6,
          x0: Optional[Tensor] = None, step: float = 1.0,
          return_trajectory: bool = False, grad_mode=None) -> Tuple[Tensor, SolverInfo]:
    """FISTA (Beck & Teboulle 2009) for the Lasso; arguments as :func:`ista`."""
    reg = _lam_reg(L1, lam)
    return _run(FISTAStep(reg, step=step), A, y, reg, max_iter, tol, x0, return_trajectory, grad_mode)


def iht(A: OperatorLike, y: Tensor, lam: Union[float, Tensor], max_iter: int = 1000, tol: Optional[float] = 1e-6,
        x0: Optional[Tensor] = None, step: float = 1.0,
        return_trajectory: bool = False, grad_mode=None) -> Tuple[Tensor, SolverInfo]:
    """Iterative hard thresholding for ``½‖Ax − y‖² + λ‖x‖₀`` (Blumensath & Davies 2008):
    ``x ← H_{√(2αλ)}(x − α Aᴴ(Ax − y))``. Arguments as :func:`ista` (λ weighs ‖x‖₀)."""
    reg = _lam_reg(L0, lam)
    return _run(ProxGradStep(reg, step=step), A, y, reg, max_iter, tol, x0, return_trajectory, grad_mode)


def projected_gradient(A: OperatorLike, y: Tensor, project: Union[Callable[[Tensor], Tensor], nn.Module],
                       max_iter: int = 1000, tol: Optional[float] = 1e-6, x0: Optional[Tensor] = None,
                       step: float = 1.0, return_trajectory: bool = False, grad_mode=None) -> Tuple[Tensor, SolverInfo]:
    """Projected gradient for ``min ½‖Ax − y‖²`` s.t. ``x ∈ C``.

    Args:
        project: the projection onto ``C``: a function ``x ↦ P_C(x)`` (e.g.
            ``unroll.prox.project_simplex``) or an indicator module (``Box``, ``Simplex`` …).
        others: as :func:`ista`.
    """
    if isinstance(project, nn.Module) and callable(getattr(project, "prox", None)):
        reg = project
    elif callable(project):
        reg = _Projection(project)
    else:
        raise TypeError(f"project: expected a projection function or an indicator module, got {type(project).__name__}")
    return _run(ProxGradStep(reg, step=step), A, y, reg, max_iter, tol, x0, return_trajectory, grad_mode)
