"""Batched linear solvers: conjugate gradient as a differentiable layer, and the solver objects
that the implicit gradient mode uses for its adjoint systems.

:func:`cg` solves ``A x = b`` for a Hermitian positive-definite ``A``, one independent system
per sample of the batch, with per-sample stopping (masks, no host synchronisation per
iteration). Its backward pass is implicit: ``x`` is differentiable w.r.t. ``b`` and w.r.t. the
tensors inside ``A`` through *one* adjoint CG solve, not by backpropagating through the
iterations (constant memory in the number of iterations). Non-positive curvature (``A`` not
positive definite) is detected and reported as :attr:`~unroll.info.Status.BREAKDOWN`.

:func:`solve_normal` solves the regularised normal equations ``(AᴴA + λI) x = Aᴴ y`` (ridge
regression, the data-consistency step of MoDL) with it.

Solver objects (:class:`CG`, :class:`BiCGSTAB`, :class:`Neumann`) carry a tolerance and a budget
and solve ``A v = b`` for a callable ``A`` without a graph: ``solver.solve(A, b) → (v, info)``.
They are what ``GradMode(backward_solver=...)`` takes.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from numbers import Real
from typing import Callable, List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from .batched import batch_dot, batch_norm, per_sample
from .checks import check_measurements, check_tol
from .info import SolverInfo, Status
from .operators.base import LinearOperator, fmt_shape
from .operators.convert import as_operator
from .preconditioners import IncompleteCholesky, JacobiPreconditioner  # unroll.linalg.X, next to cg

__all__ = ["cg", "solve_normal", "CGInfo", "LinearSolver", "CG", "BiCGSTAB", "Neumann", "as_linear_solver",
           "SolverWarning", "JacobiPreconditioner", "IncompleteCholesky"]

OperatorLike = Union[LinearOperator, Callable[[Tensor], Tensor], Tensor]

#: :func:`cg` reports a :class:`~unroll.info.SolverInfo` (the name is kept for existing code).
CGInfo = SolverInfo


class SolverWarning(UserWarning):
    """A forward or backward solve that did not converge, broke down or diverged."""


# ---------------------------------------------------------------------------------- helpers
def _as_callable(op, name: str) -> Callable[[Tensor], Tensor]:
    if isinstance(op, Tensor):
        op = as_operator(op)
    if isinstance(op, LinearOperator):
        if op.in_shape is not None and op.out_shape is not None and tuple(op.in_shape) != tuple(op.out_shape):
            raise ValueError(
                f"{name}: cg needs a square operator (domain = range), got {op.describe()}; "
                f"for a rectangular A solve the normal equations with solve_normal(A, y) or pass A.normal"
            )
        return op
    if not callable(op):
        raise TypeError(f"{name}: expected a LinearOperator or a callable x ↦ {name} x, got {type(op).__name__}")
    return op


def _apply(op: Callable[[Tensor], Tensor], x: Tensor, name: str) -> Tensor:
    out = op(x)
    if not isinstance(out, Tensor) or out.shape != x.shape:
        got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
        raise ValueError(f"{name}: expected a square map (B, *shape) → (B, *shape) on an input of shape "
                         f"{tuple(x.shape)}, got {got}")
    return out


def _operator_params(op) -> List[Tensor]:
    """Tensors requiring grad inside an operator (parameters, then buffers); for a bound method
    of a LinearOperator (e.g. ``op.normal``), those of its module."""
    owner = op if isinstance(op, torch.nn.Module) else getattr(op, "__self__", None)
    if not isinstance(owner, torch.nn.Module):
        return []
    return [t for t in list(owner.parameters()) + list(owner.buffers()) if t.requires_grad]


def _dedupe(ts: Sequence[Tensor]) -> List[Tensor]:
    seen, out = set(), []
    for t in ts:
        if id(t) not in seen:
            seen.add(id(t))
            out.append(t)
    return out


# ---------------------------------------------------------------------------------- the solver
def _cg_loop(A, b: Tensor, x0: Optional[Tensor], M, tol: float, atol: float, max_iter: int,
             check_every: int, record_history: bool = False) -> Tuple[Tensor, SolverInfo]:
    """Batched preconditioned CG without a graph. ``A``, ``M``: callables; ``M`` may be ``None``.

    A sample breaks down (is frozen, ``info.breakdown``) on non-positive curvature ``pᴴAp ≤ 0``;
    a sample whose final residual exceeds ``‖b‖`` (worse than ``x = 0``: ``A`` not symmetric, or
    singular and inconsistent) is marked as broken down too."""
    bnorm = batch_norm(b)
    zero_b = bnorm == 0
    thresh = torch.clamp(tol * bnorm, min=atol)
    if x0 is None:
        x = torch.zeros_like(b)
        r = b.clone()
    else:
        x = torch.where(per_sample(zero_b, b), torch.zeros_like(x0), x0)  # b = 0 → x = 0
        r = b - _apply(A, x, "A")
    z = r if M is None else _apply(M, r, "M")
    p = z
    rz = batch_dot(r, z).real
    bsz = b.shape[0]
    iterations = torch.zeros(bsz, dtype=torch.long, device=b.device)
    converged = zero_b | (batch_norm(r) <= thresh)
    breakdown = torch.zeros_like(converged)
    frozen = converged.clone()  # converged, or broken down (pᴴAp ≤ 0: A not positive definite)
    safe_bnorm = torch.where(zero_b, torch.ones_like(bnorm), bnorm)
    history: List[Tensor] = []
    for k in range(max_iter):
        if check_every > 0 and k % check_every == 0 and bool(frozen.all()):  # one host sync per check
            break
        active = ~frozen
        Ap = _apply(A, p, "A")
        pAp = batch_dot(p, Ap).real
        ok = pAp > 0
        alpha = torch.where(active & ok, rz / torch.where(ok, pAp, torch.ones_like(pAp)), torch.zeros_like(pAp))
        a = per_sample(alpha, b)
        x = x + a * p
        r = r - a * Ap
        iterations = iterations + active.long()
        rnorm = batch_norm(r)
        now = active & (rnorm <= thresh)
        converged = converged | now
        bad = active & ~ok & ~torch.isnan(pAp)  # NaN propagates: "diverged"
        breakdown = breakdown | bad
        frozen = frozen | now | bad
        if record_history:
            history.append(rnorm / safe_bnorm)
        z = r if M is None else _apply(M, r, "M")
        rz_new = batch_dot(r, z).real
        nz = rz != 0
        beta = torch.where(nz, rz_new / torch.where(nz, rz, torch.ones_like(rz)), torch.zeros_like(rz))
        p = torch.where(per_sample(frozen, b), p, z + per_sample(beta, b) * p)
        rz = torch.where(frozen, rz, rz_new)
    ax = _apply(A, x, "A")
    res = batch_norm(b - ax)
    rel = torch.where(zero_b, res, res / safe_bnorm)
    # For a positive-definite A every CG step lowers φ(x) = ½⟨x, Ax⟩ − ⟨b, x⟩ below φ(0) = 0; a
    # final φ > 0 means A is not positive definite (or not symmetric): a rigorous test, unlike a
    # residual that grows (CG's residual norm need not decrease on an ill-conditioned SPD system).
    phi = 0.5 * batch_dot(x, ax).real - batch_dot(b, x).real
    scale = batch_norm(x) * bnorm
    breakdown = breakdown | (~converged & (phi > 1e-6 * scale))
    info = SolverInfo(iterations=iterations, residual=rel, converged=converged & ~breakdown, tol=tol, atol=atol,
                      max_iter=max_iter, breakdown=breakdown, method="cg",
                      residual_history=torch.stack(history, dim=1) if history else None)
    return x, info


def _report(info: SolverInfo, on_failure: str, what: str) -> None:
    """Warn (or raise) when a solve broke down or diverged, as ``on_failure`` asks."""
    if on_failure == "ignore" or torch.compiler.is_compiling():
        return
    status = info.status
    if status == Status.BREAKDOWN:
        n = int(info.breakdown.sum())
        msg = (f"{what}: broke down on {n} of {info.breakdown.numel()} samples: non-positive curvature pᴴAp ≤ 0 "
               "or a growing residual; the operator is not symmetric positive definite (status 'breakdown')")
    elif status == Status.DIVERGED:
        msg = f"{what}: the residual is not finite (NaN/Inf in the operator or the right-hand side)"
    else:
        return
    if on_failure == "raise":
        raise RuntimeError(msg)
    warnings.warn(msg, SolverWarning, stacklevel=3)


class _Holder:
    """Carries the forward's :class:`SolverInfo` out of the autograd function."""

    info: Optional[SolverInfo] = None


class _CGFunction(torch.autograd.Function):
    """``x = A⁻¹ b`` with an implicit backward: ``v = A⁻ᴴ g = A⁻¹ g`` (one CG solve), then
    ``∂L/∂b = v`` and ``∂L/∂θ = vjp of θ ↦ A(θ) x at −v``."""

    @staticmethod
    def forward(A, M, opts, on_failure, holder, b, x0, *params):
        x, info = _cg_loop(A, b, x0, M, **opts)
        holder.info = info
        return x

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:  # new-style, so torch.func transforms take it
        A, M, opts, on_failure, holder, b, x0, *params = inputs
        ctx.A, ctx.M, ctx.opts, ctx.info, ctx.on_failure = A, M, dict(opts, record_history=False), holder.info, \
            on_failure
        ctx.save_for_backward(output, *params)  # params saved so in-place changes before backward are caught

    @staticmethod
    @once_differentiable
    def backward(ctx, g):
        x, *params = ctx.saved_tensors
        v, binfo = _cg_loop(ctx.A, g, None, ctx.M, **ctx.opts)
        ctx.info.backward = binfo
        _report(binfo, ctx.on_failure, "cg (backward, adjoint solve)")
        grad_b = v if ctx.needs_input_grad[5] else None
        grads: List[Optional[Tensor]] = [None] * len(params)
        want = [i for i, need in enumerate(ctx.needs_input_grad[7:]) if need]
        if want:
            with torch.enable_grad():
                ax = ctx.A(x.detach())
            if ax.requires_grad:
                # retain_graph: ax's graph may run through tensors built before cg (e.g. Q = f(P)
                # captured by a lambda, with params=[P]) whose graph is not ours to free.
                got = torch.autograd.grad(ax, [params[i] for i in want], grad_outputs=-v, allow_unused=True,
                                          retain_graph=True)
                for i, gi in zip(want, got):
                    grads[i] = gi
        return (None, None, None, None, None, grad_b, None, *grads)


def cg(A: OperatorLike, b: Tensor, x0: Optional[Tensor] = None, M: Optional[OperatorLike] = None,
       tol: float = 1e-6, max_iter: Optional[int] = None, atol: float = 0.0, *,
       params: Sequence[Tensor] = (), check_every: int = 10, record_history: bool = False,
       on_failure: str = "warn", preconditioner: Optional[OperatorLike] = None) -> Tuple[Tensor, SolverInfo]:
    """Batched (preconditioned) conjugate gradient for Hermitian positive-definite ``A x = b``.

    Each sample of the batch is an independent system; a sample stops (is frozen) once
    ``‖r_i‖ ≤ max(tol·‖b_i‖, atol)``. The loop does not synchronise with the device, except
    to stop early once every sample is done, tested every ``check_every`` iterations.

    Args:
        A: the operator, ``(B, *shape) → (B, *shape)``: a square
            :class:`~unroll.operators.LinearOperator`, a 2-D ``(n, n)`` or ``(B, n, n)`` tensor,
            or any callable ``x ↦ A x`` (e.g. ``op.normal``, or a lambda). Must be Hermitian
            positive definite (for every sample).
        b: right-hand sides ``(B, *shape)``, real or complex.
        x0: initial guess ``(B, *shape)`` (zeros by default). Not differentiated through (the
            solution does not depend on it).
        M: optional preconditioner applying ``M⁻¹ ≈ A⁻¹`` (same kinds as ``A``; Hermitian
            positive definite), e.g. :class:`~unroll.preconditioners.JacobiPreconditioner` or
            :class:`~unroll.preconditioners.IncompleteCholesky`.
        tol: relative tolerance, ``≥ 0``.
        max_iter: iteration budget, ``≥ 1`` (default: the number of entries per sample,
            ``N = b[0].numel()``, where exact-arithmetic CG terminates).
        atol: absolute tolerance on ``‖r‖``, ``≥ 0``.
        params: tensors inside a callable ``A`` to differentiate w.r.t. (tensors a lambda
            captures cannot be found automatically). For a ``LinearOperator`` (or a bound method
            of one, such as ``op.normal``) its parameters and buffers that require grad are
            added automatically.
        check_every: test for early exit every this many iterations (``0``: never; run ``max_iter``).
        record_history: keep the relative residual ``‖r_k‖/‖b‖`` of every iteration in
            ``info.residual_history`` ``(B, iterations run)``.
        on_failure: ``"warn"`` (a :class:`SolverWarning`), ``"raise"`` (``RuntimeError``) or
            ``"ignore"`` when the solve breaks down (``A`` not positive definite) or diverges.
            Running out of ``max_iter`` is reported by the status only (fixed budgets are common).
        preconditioner: another name for ``M`` (give one of the two).

    Returns:
        ``(x, info)``: ``x`` of shape ``(B, *shape)``, differentiable w.r.t. ``b`` and ``params``
        through one adjoint CG solve in the backward (same ``tol``, ``atol``, ``max_iter`` and
        ``M``), whose :class:`~unroll.info.SolverInfo` is then stored in ``info.backward``;
        ``info`` a :class:`~unroll.info.SolverInfo` (``info.status``: ``converged``,
        ``max_iter``, ``breakdown`` or ``diverged``).

    A sample whose ``b`` is zero returns ``x = 0`` after 0 iterations. A sample on which
    ``pᴴ A p ≤ 0``, or whose final ``φ(x) = ½⟨x, Ax⟩ − ⟨b, x⟩`` is positive (impossible for a
    positive-definite ``A``), is marked in ``info.breakdown`` and the status is ``breakdown``.
    """
    if not isinstance(b, Tensor):
        raise TypeError(f"b: expected a torch.Tensor, got {type(b).__name__}")
    if b.dim() < 1:
        raise ValueError("b: expected a batch (B, *shape), got a 0-dim tensor")
    if not (b.is_floating_point() or b.is_complex()):
        raise TypeError(f"b: expected a floating or complex dtype, got {b.dtype}")
    if preconditioner is not None:
        if M is not None:
            raise ValueError("preconditioner: is another name for M; pass one of the two, not both")
        M = preconditioner
    op = _as_callable(A, "A")
    pre = None if M is None else _as_callable(M, "M")
    if isinstance(op, LinearOperator) and op.in_shape is not None and tuple(b.shape[1:]) != tuple(op.in_shape):
        raise ValueError(f"b: expected shape {fmt_shape(op.in_shape)} for {op.describe()}, got {tuple(b.shape)}")
    if isinstance(pre, LinearOperator) and pre.in_shape is not None and tuple(b.shape[1:]) != tuple(pre.in_shape):
        raise ValueError(f"M: expected a preconditioner on the shape of b {fmt_shape(b.shape[1:])}, got "
                         f"{pre.describe()}")
    if x0 is not None:
        if not isinstance(x0, Tensor):
            raise TypeError(f"x0: expected a torch.Tensor, got {type(x0).__name__}")
        if x0.shape != b.shape:
            raise ValueError(f"x0: expected the shape of b {tuple(b.shape)}, got {tuple(x0.shape)}")
        if x0.dtype != b.dtype:
            raise TypeError(f"x0: expected the dtype of b ({b.dtype}), got {x0.dtype}")
        x0 = x0.detach()
    tol = check_tol(tol, "tol", allow_none=False)
    atol = check_tol(atol, "atol", allow_none=False)
    if on_failure not in ("warn", "raise", "ignore"):
        raise ValueError(f"on_failure: expected 'warn', 'raise' or 'ignore', got {on_failure!r}")
    if max_iter is None:
        max_iter = max(1, math.prod(b.shape[1:]))
    if isinstance(max_iter, bool) or not isinstance(max_iter, int) or max_iter < 1:
        raise ValueError(f"max_iter: expected an int >= 1, got {max_iter!r}")
    if isinstance(check_every, bool) or not isinstance(check_every, int) or check_every < 0:
        raise ValueError(f"check_every: expected an int >= 0, got {check_every!r}")
    if isinstance(params, Tensor):
        params = [params]
    for i, t in enumerate(params):
        if not isinstance(t, Tensor):
            raise TypeError(f"params[{i}]: expected a torch.Tensor, got {type(t).__name__}")
    params = _dedupe(_operator_params(op) + list(params))
    opts = dict(tol=float(tol), atol=float(atol), max_iter=max_iter, check_every=check_every,
                record_history=record_history)

    grad_wanted = torch.is_grad_enabled()
    if grad_wanted and not params and not isinstance(op, LinearOperator):
        with torch.enable_grad():
            probe = op(b.detach())
        if isinstance(probe, Tensor) and probe.requires_grad:
            warnings.warn("A: its output depends on tensors that require grad, but they were not passed in "
                          "`params`: cg will not differentiate w.r.t. them; pass cg(..., params=[...])",
                          stacklevel=2)
    if not (grad_wanted and (b.requires_grad or any(t.requires_grad for t in params))):
        with torch.no_grad():
            x, info = _cg_loop(op, b, x0, pre, **opts)
    else:
        holder = _Holder()  # not a list: transforms flatten (copy) pytree arguments
        x = _CGFunction.apply(op, pre, opts, on_failure, holder, b, x0, *params)
        info = holder.info
    _report(info, on_failure, "cg")
    return x, info


def solve_normal(A: Union[LinearOperator, Tensor], y: Tensor, lam: Union[float, Tensor] = 0.0,
                 **cg_kwargs) -> Tuple[Tensor, SolverInfo]:
    """Solve the regularised normal equations ``(AᴴA + λI) x = Aᴴ y`` with :func:`cg`.

    The minimiser of ``½‖A x − y‖² + ½λ‖x‖²`` (ridge regression; the data-consistency step of
    MoDL with ``y`` replaced by the measurements and a prior term added by the caller).

    Args:
        A: a :class:`~unroll.operators.LinearOperator` ``(B, *in_shape) → (B, *out_shape)`` or
            a 2-D matrix; it needs an adjoint, so not a plain callable.
        y: measurements ``(B, *out_shape)``.
        lam: λ ``≥ 0``: a number, a 0-dim tensor or a ``(B,)`` tensor (one per sample); a
            tensor requiring grad (a learnable λ) is differentiated through.
        **cg_kwargs: passed to :func:`cg` (``x0``, ``M``, ``tol``, ``max_iter``, ``atol``,
            ``params``, ``check_every``).

    Returns:
        ``(x, info)``: ``x`` of shape ``(B, *in_shape)``, differentiable w.r.t. ``y``, ``lam``
        and the operator's parameters; ``info`` a :class:`~unroll.info.SolverInfo`.
    """
    if not isinstance(A, (LinearOperator, Tensor)):
        raise TypeError(f"A: solve_normal needs a LinearOperator or a matrix (it applies Aᴴ), "
                        f"got {type(A).__name__}")
    op = as_operator(A)
    check_measurements(y, op, "y", finite=False)
    extra: List[Tensor] = []
    if isinstance(lam, Tensor):
        if lam.dim() > 1 or (lam.dim() == 1 and lam.shape[0] != y.shape[0]):
            raise ValueError(f"lam: expected a number, a 0-dim or a (B,) = ({y.shape[0]},) tensor, "
                             f"got shape {tuple(lam.shape)}")
        if lam.requires_grad:
            extra.append(lam)
    elif not isinstance(lam, Real) or isinstance(lam, bool) or not lam >= 0:
        raise ValueError(f"lam: expected a number >= 0 or a tensor, got {lam!r}")
    rhs = op.adjoint(y)
    lam_b = per_sample(lam, rhs) if isinstance(lam, Tensor) and lam.dim() == 1 else lam

    def normal(x: Tensor) -> Tensor:
        return op.normal(x) + lam_b * x

    params = _dedupe(_operator_params(op) + extra + list(cg_kwargs.pop("params", ())))
    return cg(normal, rhs, params=params, **cg_kwargs)


# ---------------------------------------------------------------------------------- solver objects
@dataclass(frozen=True)
class LinearSolver:
    """Base of the solver objects: solve ``A v = b`` per sample, without a graph.

    Args:
        tol: relative residual tolerance ``‖b − A v‖ ≤ tol·‖b‖`` (per sample), ``≥ 0``.
        max_iter: iteration budget, ``≥ 1``.

    ``solve(A, b, x0=None) → (v, info)``: ``A`` a callable ``(B, *shape) → (B, *shape)``, ``b``
    ``(B, *shape)``; ``info`` a :class:`~unroll.info.SolverInfo`.
    """

    tol: float = 1e-6
    max_iter: int = 200

    #: the name reported in ``info.method``
    name = "solver"

    def __post_init__(self) -> None:
        check_tol(self.tol, f"{type(self).__name__}.tol", allow_none=False)
        if isinstance(self.max_iter, bool) or not isinstance(self.max_iter, int) or self.max_iter < 1:
            raise ValueError(f"{type(self).__name__}.max_iter: expected an int >= 1, got {self.max_iter!r}")

    def solve(self, A: Callable[[Tensor], Tensor], b: Tensor,
              x0: Optional[Tensor] = None) -> Tuple[Tensor, SolverInfo]:  # pragma: no cover - abstract
        raise NotImplementedError


@dataclass(frozen=True)
class CG(LinearSolver):
    """Conjugate gradient (:func:`cg`'s loop) for Hermitian positive-definite systems, e.g. the
    adjoint system ``(I − Jᵀ) v = g`` of a fixed-point map with a symmetric Jacobian (gradient
    descent on a smooth objective). Breaks down, and says so, on other systems."""

    name = "cg"

    def solve(self, A, b, x0=None):
        with torch.no_grad():
            return _cg_loop(A, b, x0, None, tol=self.tol, atol=0.0, max_iter=self.max_iter, check_every=1)


@dataclass(frozen=True)
class Neumann(LinearSolver):
    """Richardson iteration ``v ← v + (b − A v)`` from ``v = b``: for ``A = I − Jᵀ`` this is the
    Neumann series / fixed-point iteration ``v ← b + Jᵀ v``, which converges when ``ρ(J) < 1``
    (one matrix-vector product per iteration, no inner products)."""

    name = "neumann"

    def solve(self, A, b, x0=None):
        with torch.no_grad():
            tiny = torch.finfo(b.real.dtype).tiny
            bnorm = batch_norm(b).clamp_min(tiny)
            v = b.clone() if x0 is None else x0
            res = torch.full_like(bnorm, float("inf"))
            done = torch.zeros_like(bnorm, dtype=torch.bool)
            its = torch.zeros_like(bnorm, dtype=torch.long)
            for _ in range(self.max_iter):
                r = b - A(v)
                res = torch.where(done, res, batch_norm(r) / bnorm)
                done = done | (res <= self.tol)
                if bool(done.all()) or not bool(torch.isfinite(res).all()):  # one sync per iteration
                    break
                v = torch.where(per_sample(done, v), v, v + r)
                its = its + (~done).long()
            return v, SolverInfo(iterations=its, residual=res, converged=done, tol=self.tol,
                                 max_iter=self.max_iter, method=self.name)


@dataclass(frozen=True)
class BiCGSTAB(LinearSolver):
    """BiCGSTAB (van der Vorst 1992) for general (non-symmetric) systems, one per sample.

    Converged samples are frozen; the loop stops when all are (one sync per iteration). Starts
    from ``v = b`` (for an adjoint system ``(I − Jᵀ) v = g``, the Jacobian-free guess) unless
    ``x0`` is given, and returns per sample the iterate with the smallest residual, so a
    stagnating solve is never worse than its start.
    """

    name = "bicgstab"

    def solve(self, A, b, x0=None):
        with torch.no_grad():
            tiny = torch.finfo(b.real.dtype).tiny
            bnorm = batch_norm(b).clamp_min(tiny)
            v = b.clone() if x0 is None else x0.clone()
            r = b - A(v)
            r_hat = r.clone()
            rho = alpha = omega = torch.ones_like(batch_dot(r, r))
            p = torch.zeros_like(b)
            nu = torch.zeros_like(b)
            res = batch_norm(r) / bnorm
            done = res <= self.tol
            its = torch.zeros_like(res, dtype=torch.long)
            best_v, best_res = v, res
            for _ in range(self.max_iter):
                if bool(done.all()):
                    break
                rho_new = batch_dot(r_hat, r)
                beta = (rho_new / _safe(rho)) * (alpha / _safe(omega))
                p = r + per_sample(beta, b) * (p - per_sample(omega, b) * nu)
                nu = A(p)
                alpha = rho_new / _safe(batch_dot(r_hat, nu))
                s = r - per_sample(alpha, b) * nu
                t = A(s)
                omega = batch_dot(t, s) / _safe(batch_dot(t, t))
                step = per_sample(alpha, b) * p + per_sample(omega, b) * s
                keep = per_sample(done, b)
                v = torch.where(keep, v, v + step)
                r = torch.where(keep, r, s - per_sample(omega, b) * t)
                rho = rho_new
                its = its + (~done).long()
                res = torch.where(done, res, batch_norm(r) / bnorm)
                done = done | (res <= self.tol)
                better = res < best_res
                best_v = torch.where(per_sample(better, b), v, best_v)
                best_res = torch.where(better, res, best_res)
                if not bool(torch.isfinite(res).all()):
                    break
            return best_v, SolverInfo(iterations=its, residual=best_res, converged=best_res <= self.tol,
                                      tol=self.tol, max_iter=self.max_iter, method=self.name)


def _safe(d: Tensor) -> Tensor:
    """Avoid division by exactly zero (a breakdown of a converged or zero sample)."""
    tiny = torch.finfo(d.real.dtype).tiny
    return torch.where(d.abs() > tiny, d, torch.full_like(d, tiny))


_SOLVERS = {"cg": CG, "bicgstab": BiCGSTAB, "neumann": Neumann, "fixed_point": Neumann}


def as_linear_solver(solver: Union[str, LinearSolver], tol: float = 1e-6, max_iter: int = 200) -> LinearSolver:
    """A :class:`LinearSolver` from an instance or a name (``"cg"``, ``"bicgstab"``,
    ``"neumann"``; ``"fixed_point"`` is Neumann's former name) with ``tol`` and ``max_iter``."""
    if isinstance(solver, LinearSolver):
        return solver
    if isinstance(solver, str) and solver in _SOLVERS:
        return _SOLVERS[solver](tol=tol, max_iter=max_iter)
    raise ValueError(f"backward_solver: expected one of {', '.join(repr(k) for k in _SOLVERS)} or a LinearSolver "
                     f"(unroll.linalg.CG/BiCGSTAB/Neumann), got {solver!r}")

