"""Batched conjugate gradient as a differentiable layer.

:func:`cg` solves ``A x = b`` for a Hermitian positive-definite ``A``, one independent system
per sample of the batch, with per-sample stopping (masks, no host synchronisation per
iteration). Its backward pass is implicit: ``x`` is differentiable w.r.t. ``b`` and w.r.t. the
tensors inside ``A`` through *one* adjoint CG solve, not by backpropagating through the
iterations (constant memory in the number of iterations).

:func:`solve_normal` solves the regularised normal equations ``(AᴴA + λI) x = Aᴴ y`` (ridge
regression, the data-consistency step of MoDL) with it.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from numbers import Real
from typing import Callable, List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from .batched import batch_dot, batch_norm, per_sample
from .checks import check_measurements
from .operators.base import LinearOperator, _fmt_shape, as_operator

__all__ = ["cg", "solve_normal", "CGInfo"]

OperatorLike = Union[LinearOperator, Callable[[Tensor], Tensor], Tensor]


@dataclass
class CGInfo:
    """What :func:`cg` did, per sample.

    Attributes:
        iterations: ``(B,)`` int64, CG iterations each sample ran (a frozen sample stops counting;
            a sample with ``b = 0`` runs none).
        residual_norm: ``(B,)`` real, final relative residual ``‖b − A x‖ / ‖b‖`` (recomputed from
            ``x``, not the recursively updated residual; ``0`` for a sample with ``b = 0``).
        converged: ``(B,)`` bool, whether the stopping test ``‖r‖ ≤ max(tol·‖b‖, atol)`` was met
            (on the recursively updated residual ``r``, the one CG iterates with).
        tol: the relative tolerance used.
        atol: the absolute tolerance used.
        max_iter: the iteration budget.
        backward_info: the :class:`CGInfo` of the adjoint solve run by the backward pass, once
            ``backward`` has gone through this solve (``None`` before).
    """

    iterations: Tensor
    residual_norm: Tensor
    converged: Tensor
    tol: float
    atol: float = 0.0
    max_iter: Optional[int] = None
    backward_info: Optional["CGInfo"] = field(default=None, repr=False, compare=False)

    @property
    def status(self) -> str:
        """``"diverged"`` (a non-finite residual), ``"converged"`` (every sample met the
        tolerance) or ``"max_iter"``. Reading it synchronises with the device."""
        if not torch.isfinite(self.residual_norm).all():
            return "diverged"
        return "converged" if bool(self.converged.all()) else "max_iter"


# ---------------------------------------------------------------------------------- helpers
def _as_callable(op, name: str) -> Callable[[Tensor], Tensor]:
    if isinstance(op, Tensor):
        op = as_operator(op)
    if isinstance(op, LinearOperator):
        if op.in_shape is not None and op.out_shape is not None and tuple(op.in_shape) != tuple(op.out_shape):
            raise ValueError(
                f"{name}: cg needs a square operator (domain = range), got {op._describe()}; "
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
             check_every: int) -> Tuple[Tensor, CGInfo]:
    """Batched preconditioned CG without a graph. ``A``, ``M``: callables; ``M`` may be ``None``."""
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
    frozen = converged.clone()  # converged, or broken down (pᴴAp ≤ 0: A not positive definite)
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
        now = active & (batch_norm(r) <= thresh)
        converged = converged | now
        frozen = frozen | now | (active & ~ok & ~torch.isnan(pAp))  # NaN propagates: "diverged"
        z = r if M is None else _apply(M, r, "M")
        rz_new = batch_dot(r, z).real
        nz = rz != 0
        beta = torch.where(nz, rz_new / torch.where(nz, rz, torch.ones_like(rz)), torch.zeros_like(rz))
        p = torch.where(per_sample(frozen, b), p, z + per_sample(beta, b) * p)
        rz = torch.where(frozen, rz, rz_new)
    res = batch_norm(b - _apply(A, x, "A"))
    rel = torch.where(zero_b, res, res / torch.where(zero_b, torch.ones_like(bnorm), bnorm))
    info = CGInfo(iterations=iterations, residual_norm=rel, converged=converged, tol=tol, atol=atol,
                  max_iter=max_iter)
    return x, info


class _CGFunction(torch.autograd.Function):
    """``x = A⁻¹ b`` with an implicit backward: ``v = A⁻ᴴ g = A⁻¹ g`` (one CG solve), then
    ``∂L/∂b = v`` and ``∂L/∂θ = vjp of θ ↦ A(θ) x at −v``."""

    @staticmethod
    def forward(ctx, A, M, opts, holder, b, x0, *params):
        x, info = _cg_loop(A, b, x0, M, **opts)
        holder.append(info)
        ctx.A, ctx.M, ctx.opts, ctx.info = A, M, opts, info
        ctx.save_for_backward(x, *params)  # params saved so in-place changes before backward are caught
        return x

    @staticmethod
    @once_differentiable
    def backward(ctx, g):
        x, *params = ctx.saved_tensors
        v, binfo = _cg_loop(ctx.A, g, None, ctx.M, **ctx.opts)
        ctx.info.backward_info = binfo
        grad_b = v if ctx.needs_input_grad[4] else None
        grads: List[Optional[Tensor]] = [None] * len(params)
        want = [i for i, need in enumerate(ctx.needs_input_grad[6:]) if need]
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
        return (None, None, None, None, grad_b, None, *grads)


def cg(A: OperatorLike, b: Tensor, x0: Optional[Tensor] = None, M: Optional[OperatorLike] = None,
       tol: float = 1e-6, max_iter: Optional[int] = None, atol: float = 0.0, *,
       params: Sequence[Tensor] = (), check_every: int = 10) -> Tuple[Tensor, CGInfo]:
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
            positive definite).
        tol: relative tolerance, ``≥ 0``.
        max_iter: iteration budget, ``≥ 1`` (default: the number of entries per sample,
            ``N = b[0].numel()``, where exact-arithmetic CG terminates).
        atol: absolute tolerance on ``‖r‖``, ``≥ 0``.
        params: tensors inside a callable ``A`` to differentiate w.r.t. (tensors a lambda
            captures cannot be found automatically). For a ``LinearOperator`` (or a bound method
            of one, such as ``op.normal``) its parameters and buffers that require grad are
            added automatically.
        check_every: test for early exit every this many iterations (``0``: never; run ``max_iter``).

    Returns:
        ``(x, info)``: ``x`` of shape ``(B, *shape)``, differentiable w.r.t. ``b`` and ``params``
        through one adjoint CG solve in the backward (same ``tol``, ``atol``, ``max_iter`` and
        ``M``), whose :class:`CGInfo` is then stored in ``info.backward_info``; ``info`` a
        :class:`CGInfo`.

    A sample whose ``b`` is zero returns ``x = 0`` after 0 iterations. A sample on which
    ``pᴴ A p ≤ 0`` (``A`` not positive definite) stops, not converged.
    """
    if not isinstance(b, Tensor):
        raise TypeError(f"b: expected a torch.Tensor, got {type(b).__name__}")
    if b.dim() < 1:
        raise ValueError("b: expected a batch (B, *shape), got a 0-dim tensor")
    if not (b.is_floating_point() or b.is_complex()):
        raise TypeError(f"b: expected a floating or complex dtype, got {b.dtype}")
    op = _as_callable(A, "A")
    pre = None if M is None else _as_callable(M, "M")
    if isinstance(op, LinearOperator) and op.in_shape is not None and tuple(b.shape[1:]) != tuple(op.in_shape):
        raise ValueError(f"b: expected shape {_fmt_shape(op.in_shape)} for {op._describe()}, got {tuple(b.shape)}")
    if x0 is not None:
        if not isinstance(x0, Tensor):
            raise TypeError(f"x0: expected a torch.Tensor, got {type(x0).__name__}")
        if x0.shape != b.shape:
            raise ValueError(f"x0: expected the shape of b {tuple(b.shape)}, got {tuple(x0.shape)}")
        if x0.dtype != b.dtype:
            raise TypeError(f"x0: expected the dtype of b ({b.dtype}), got {x0.dtype}")
        x0 = x0.detach()
    if not isinstance(tol, Real) or not tol >= 0:
        raise ValueError(f"tol: expected a number >= 0, got {tol!r}")
    if not isinstance(atol, Real) or not atol >= 0:
        raise ValueError(f"atol: expected a number >= 0, got {atol!r}")
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
    opts = dict(tol=float(tol), atol=float(atol), max_iter=max_iter, check_every=check_every)

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
            return _cg_loop(op, b, x0, pre, **opts)
    holder: List[CGInfo] = []
    x = _CGFunction.apply(op, pre, opts, holder, b, x0, *params)
    return x, holder[0]


def solve_normal(A: Union[LinearOperator, Tensor], y: Tensor, lam: Union[float, Tensor] = 0.0,
                 **cg_kwargs) -> Tuple[Tensor, CGInfo]:
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
        and the operator's parameters; ``info`` a :class:`CGInfo`.
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
