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

from dataclasses import dataclass
from typing import Callable, List, Optional, Tuple, Union

import torch
from torch import Tensor, nn

from .checks import check_tol
from .info import SolverInfo
from .operators.base import LinearOperator
from .problem import Problem
from .prox import L0, L1, Regularizer
from .steps import FISTAStep, ProxGradStep
from .unrolled import Unrolled

__all__ = ["ista", "fista", "iht", "projected_gradient", "conjugate_directions", "ConjugateDirectionsInfo"]

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



# ---------------------------------------------------------------------------------- learned conjugate directions
@dataclass
class ConjugateDirectionsInfo(SolverInfo):
    """:class:`~unroll.info.SolverInfo` of :func:`conjugate_directions`, with one more field.

    Attributes:
        fallbacks: ``(B,)`` int64, the steps of each sample that used the CG direction instead of
            the network's (not finite, zero, or lowering the energy less than the CG direction
            would, see ``safeguard``).
    """

    fallbacks: Optional[Tensor] = None


def _direction_dtype(direction) -> Optional[torch.dtype]:
    """The floating dtype of a module's first parameter (the network's own), else ``None``."""
    if isinstance(direction, nn.Module):
        for p in direction.parameters():
            if p.is_floating_point():
                return p.dtype
    return None


def conjugate_directions(A, b: Tensor, direction: Callable[[Tensor], Tensor], tol: float = 1e-4,
                         max_iter: Optional[int] = None, orthogonalize: int = 2, x0: Optional[Tensor] = None,
                         atol: float = 0.0, safeguard: float = 1.0, record_history: bool = False,
                         check_every: int = 1, on_failure: str = "warn") -> Tuple[Tensor, ConjugateDirectionsInfo]:
    """Conjugate directions with a learned search direction (DCDM, Kaneda et al., ICML 2023) for
    symmetric positive-definite ``A x = b``, batched over right-hand sides.

    Each iteration: ``q = direction(r/‖r‖)`` (an approximation of ``A⁻¹r`` up to scale and sign),
    A-orthogonalised against the last ``orthogonalize`` search directions ``p_i``
    (``q ← q − Σ (qᵀAp_i / p_iᵀAp_i) p_i``, with the stored ``A p_i``, no extra products), then
    an exact line search ``α = pᵀr / pᵀAp``, ``x ← x + αp``, ``r ← r − αAp``. A sample stops at
    ``‖r‖ ≤ max(tol·‖b‖, atol)``.

    Safeguard (not in the paper): the CG direction ``g`` (the residual orthogonalised the same way;
    with CG directions before it, this *is* conjugate gradient) is formed too (one more product
    with ``A``, cheap next to the network). The network's direction is used when it is finite,
    has positive curvature and lowers the energy ``φ(x) = ½xᵀAx − bᵀx`` by at least
    ``safeguard`` times what ``g`` would (the decrease of an exact line search along ``p`` is
    ``(pᵀr)²/pᵀAp``; the sign of ``p`` does not matter); otherwise the step takes ``g`` and is
    counted in ``info.fallbacks``. ``safeguard=0`` keeps every usable network direction
    (a direction with ``pᵀr = 0``, zero, or NaN still falls back): the literal "fall back when it
    is not a descent direction", under which an untrained network lowers the energy at every step
    but can stall for thousands of iterations. Any ``safeguard > 0`` is a sufficient-decrease
    condition: every step does at least that fraction of a CG step's decrease, so the solve
    converges whatever the network. The default, 1, takes the better of the two (an untrained
    network then is CG); a small value such as 0.01 keeps more of a weak network's directions.

    When ``A`` carries a boolean ``mask`` of its grid (a :class:`~unroll.operators.Laplacian`
    with obstacles, ``True`` = fluid), the directions are zeroed on solid cells (where ``A`` is
    the identity and ``b`` should be zero).

    Args:
        A: the operator ``(B, *shape) → (B, *shape)``: a square
            :class:`~unroll.operators.LinearOperator` (checked against ``b``), a matrix, or a
            callable ``x ↦ A x``. Symmetric positive definite.
        b: right-hand sides ``(B, *shape)``, real.
        direction: ``r ↦ q`` on ``(B, *shape)``, e.g. :class:`unroll.models.DCDM`; called without
            a graph, on ``r`` cast to its parameters' dtype, its output cast back to ``b``'s. A
            direction with a true attribute ``takes_operator`` is called as ``direction(r, A)``
            (e.g. ``DCDM(mask_input=True)``, which reads the obstacles from ``A.mask``).
        tol: relative tolerance ``≥ 0`` on ``‖r‖/‖b‖``.
        max_iter: iteration budget ``≥ 1`` (default: entries per sample).
        orthogonalize: how many previous directions to A-orthogonalise against, ``≥ 0``.
        x0: initial guess ``(B, *shape)`` (zeros by default).
        atol: absolute tolerance on ``‖r‖``.
        safeguard: ``≥ 0``, see above (default 1: the better of the two directions).
        record_history: keep ``‖r_k‖/‖b‖`` after each iteration in ``info.residual_history``
            ``(B, iterations run)``.
        check_every: stop once every sample is done, tested every this many iterations.
        on_failure: ``"warn"``, ``"raise"`` or ``"ignore"`` on breakdown / divergence.

    Returns:
        ``(x, info)``: ``x`` ``(B, *shape)`` (no graph), ``info`` a
        :class:`ConjugateDirectionsInfo` (a :class:`~unroll.info.SolverInfo`, ``method``
        ``"conjugate_directions"``): ``iterations``, ``residual`` (the true final ``‖b − Ax‖/‖b‖``),
        ``converged``, ``breakdown``, ``fallbacks``, ``residual_history`` on request.

    A sample on which some nonzero vector ``v`` (the residual or the network's direction) has
    ``vᵀAv ≤ 0`` proves ``A`` not positive definite: it is frozen and marked in ``info.breakdown``
    (status ``breakdown``), its ``x`` kept finite.

    Raises:
        ValueError: ``b`` does not have the operator's shape ``(B, *in_shape)``, or ``direction``
            returns another shape than it was given.
    """
    from .batched import batch_dot, batch_norm, per_sample
    from .linalg import _apply, _as_callable, _report

    if not isinstance(b, Tensor):
        raise TypeError(f"b: expected a torch.Tensor (B, *shape), got {type(b).__name__}")
    if b.dim() < 2:
        raise ValueError(f"b: expected a batch of right-hand sides (B, *shape), got shape {tuple(b.shape)}")
    if not b.is_floating_point():
        raise TypeError(f"b: expected a real floating dtype, got {b.dtype}")
    op = _as_callable(A, "A")
    if isinstance(op, LinearOperator) and op.in_shape is not None and tuple(b.shape[1:]) != tuple(op.in_shape):
        raise ValueError(f"b: expected shape (B, {', '.join(map(str, op.in_shape))}) for {op.describe()}, "
                         f"got {tuple(b.shape)}")
    if not callable(direction):
        raise TypeError(f"direction: expected a callable r ↦ q (e.g. unroll.models.DCDM), got "
                        f"{type(direction).__name__}")
    tol = check_tol(tol, "tol", allow_none=False)
    atol = check_tol(atol, "atol", allow_none=False)
    for name, value, lo in (("orthogonalize", orthogonalize, 0), ("check_every", check_every, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < lo:
            raise ValueError(f"{name}: expected an int >= {lo}, got {value!r}")
    if max_iter is None:
        max_iter = max(1, b.shape[1:].numel())  # b.shape, not b[0]: an empty batch is valid
    if isinstance(max_iter, bool) or not isinstance(max_iter, int) or max_iter < 1:
        raise ValueError(f"max_iter: expected an int >= 1, got {max_iter!r}")
    if isinstance(safeguard, bool) or not isinstance(safeguard, (int, float)) or not 0 <= safeguard < float("inf"):
        raise ValueError(f"safeguard: expected a finite number >= 0, got {safeguard!r}")
    if on_failure not in ("warn", "raise", "ignore"):
        raise ValueError(f"on_failure: expected 'warn', 'raise' or 'ignore', got {on_failure!r}")
    if x0 is not None and (not isinstance(x0, Tensor) or x0.shape != b.shape):
        got = tuple(x0.shape) if isinstance(x0, Tensor) else type(x0).__name__
        raise ValueError(f"x0: expected the shape of b {tuple(b.shape)}, got {got}")
    mask = getattr(A, "mask", None)
    if isinstance(mask, Tensor) and mask.dtype == torch.bool and tuple(mask.shape) == tuple(b.shape[1:]):
        fluid = mask.to(device=b.device, dtype=b.dtype)
    else:
        fluid = None
    net_dtype = _direction_dtype(direction)

    def net(r: Tensor) -> Tensor:
        inp = r if net_dtype is None else r.to(net_dtype)
        q = direction(inp, A) if getattr(direction, "takes_operator", False) else direction(inp)
        if not isinstance(q, Tensor) or tuple(q.shape) != tuple(b.shape):
            got = tuple(q.shape) if isinstance(q, Tensor) else type(q).__name__
            raise ValueError(f"direction: expected an output of the residual's shape {tuple(b.shape)}, got {got}")
        q = q.to(b.dtype)
        return q if fluid is None else q * fluid

    with torch.no_grad():
        bnorm = batch_norm(b)
        zero_b = bnorm == 0
        safe_bnorm = torch.where(zero_b, torch.ones_like(bnorm), bnorm)
        thresh = torch.clamp(tol * bnorm, min=atol)
        x = torch.zeros_like(b) if x0 is None else x0.detach().to(b.dtype).clone()
        if fluid is not None:  # identity rows on solid cells: x = b there, exactly
            x = torch.where(fluid.bool(), x, b)
        r = b.clone() if x0 is None and fluid is None else b - _apply(op, x, "A")
        bsz = b.shape[0]
        iterations = torch.zeros(bsz, dtype=torch.long, device=b.device)
        fallbacks = torch.zeros_like(iterations)
        rnorm = batch_norm(r)
        converged = zero_b | (rnorm <= thresh)
        breakdown = torch.zeros_like(converged)
        frozen = converged.clone()
        previous: List[Tuple[Tensor, Tensor, Tensor]] = []  # (p, A p, pᵀAp) of the last directions
        history: List[Tensor] = []
        tiny = torch.finfo(b.dtype).tiny
        for k in range(max_iter):
            if k % check_every == 0 and bool(frozen.all()):
                break
            active = ~frozen
            safe_rnorm = torch.where(rnorm > 0, rnorm, torch.ones_like(rnorm))
            q = net(r / per_sample(safe_rnorm, r))
            finite = torch.isfinite(q.reshape(bsz, -1)).all(1)
            q = torch.where(per_sample(finite, q), q, torch.zeros_like(q))
            Aq, Ar = _apply(op, q, "A"), _apply(op, r, "A")
            qAq_raw, rAr = batch_dot(q, Aq), batch_dot(r, Ar)
            q_nonzero = batch_norm(q) > 0
            bad = active & ((rAr <= 0) | (q_nonzero & (qAq_raw <= 0)))  # a nonzero v with vᵀAv ≤ 0
            g, Ag = r, Ar
            for p_i, Ap_i, pAp_i in previous:
                cq = per_sample(batch_dot(Ap_i, q) / pAp_i, q)
                q, Aq = q - cq * p_i, Aq - cq * Ap_i
                cg_ = per_sample(batch_dot(Ap_i, g) / pAp_i, g)
                g, Ag = g - cg_ * p_i, Ag - cg_ * Ap_i
            qAq, gAg = batch_dot(q, Aq), batch_dot(g, Ag)
            qr, gr = batch_dot(q, r), batch_dot(g, r)
            gain_q = torch.where(qAq > 0, qr * qr / torch.where(qAq > 0, qAq, torch.ones_like(qAq)),
                                 torch.zeros_like(qAq))
            gain_g = torch.where(gAg > 0, gr * gr / torch.where(gAg > 0, gAg, torch.ones_like(gAg)),
                                 torch.zeros_like(gAg))
            slack = 1 + 64 * torch.finfo(b.dtype).eps  # a tie (q = r) is the network's step, not a fallback
            use_net = finite & (qAq > 0) & (gain_q > 0) & (gain_q * slack >= safeguard * gain_g)
            p = torch.where(per_sample(use_net, q), q, g)
            Ap = torch.where(per_sample(use_net, q), Aq, Ag)
            pAp = torch.where(use_net, qAq, gAg)
            bad = bad | (active & ~use_net & ~(gAg > 0) & ~(gr == 0))
            breakdown = breakdown | bad
            step = active & ~bad & (pAp > 0)
            alpha = torch.where(step, batch_dot(p, r) / torch.where(pAp > 0, pAp, torch.ones_like(pAp)),
                                torch.zeros_like(pAp))
            upd = per_sample(step, x)  # where, not a product: a frozen sample's p may be non-finite
            x = torch.where(upd, x + per_sample(alpha, x) * p, x)
            r = torch.where(upd, r - per_sample(alpha, r) * Ap, r)
            iterations = iterations + active.long()
            fallbacks = fallbacks + (active & ~use_net & ~bad).long()
            rnorm = batch_norm(r)
            now = active & ~bad & (rnorm <= thresh)
            converged = converged | now
            frozen = frozen | now | bad | ~torch.isfinite(rnorm)
            if record_history:
                history.append(rnorm / safe_bnorm)
            if orthogonalize > 0:
                previous.append((p, Ap, torch.where(pAp > 0, pAp, torch.full_like(pAp, tiny))))
                previous = previous[-orthogonalize:]
        res = batch_norm(b - _apply(op, x, "A"))
        rel = torch.where(zero_b, res, res / safe_bnorm)
        info = ConjugateDirectionsInfo(
            iterations=iterations, residual=rel, converged=converged & ~breakdown, tol=float(tol), atol=float(atol),
            max_iter=max_iter, breakdown=breakdown, method="conjugate_directions",
            residual_history=torch.stack(history, dim=1) if history else None, fallbacks=fallbacks)
    _report(info, on_failure, "conjugate_directions")
    return x, info
