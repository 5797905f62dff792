"""How gradients flow through an iterative solver: the gradient modes of :class:`~unroll.Unrolled`.

=============  =====================================================================  ===========
mode           backward                                                               memory in K
=============  =====================================================================  ===========
``full``       backprop through every step                                            ∝ K
``truncated``  backprop through the last ``k`` steps; earlier ones run without graph  ∝ k
``checkpoint`` ``torch.utils.checkpoint`` over ⌈√K⌉ segments, recomputed in backward  ∝ √K
``implicit``   implicit function theorem at the fixed point ``x* = T(x*, θ)``: the   constant
               adjoint system ``(I − ∂T/∂x)ᵀ v = g`` solved with ``torch.func`` vjps
               (fixed-point/Neumann iteration or BiCGSTAB), then ``v`` pulled back
               through one step to ``θ`` (and ``y``, the operator's parameters)
``jfb``        Jacobian-free backprop (Fung et al. 2022): ``v = g``, one step          constant
=============  =====================================================================  ===========

``implicit`` and ``jfb`` need tied weights (a fixed-point map) whose state is the plain
iterate (:class:`~unroll.steps.State`); they run the forward pass to a tolerance without a
graph. For non-smooth steps the vjp of the step is the prox's generalised Jacobian (the
support mask of soft thresholding, the active set of a projection), so, e.g., the implicit
gradient of a Lasso solution is the closed form on its support.

A mode is chosen per layer (``Unrolled(..., grad_mode=...)``) and per call
(``layer(problem, grad_mode=...)``), as a string or a :class:`GradMode`. What the forward and
backward passes did is reported in the :class:`~unroll.unrolled.SolverInfo` of the call
(``backward_*`` fields are filled in when the backward pass runs). A backward solve that does
not converge, or a residual that is not finite, warns or raises (``on_failure``); a
non-finite adjoint is never passed on: with ``on_failure="warn"`` it falls back to the JFB
gradient.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Callable, Literal, Optional, Union

import torch
from torch import Tensor

from .batched import batch_dot, batch_norm, per_sample

__all__ = ["GradMode", "as_grad_mode", "truncated", "checkpointed", "implicit", "jfb", "SolverWarning",
           "adjoint_fixed_point", "adjoint_bicgstab"]

ModeName = Literal["full", "truncated", "checkpoint", "implicit", "jfb"]
_MODES = ("full", "truncated", "checkpoint", "implicit", "jfb")


class SolverWarning(UserWarning):
    """A forward or backward solve that did not converge, or diverged."""


@dataclass(frozen=True)
class GradMode:
    """A gradient mode and its settings.

    Args:
        mode: ``"full"``, ``"truncated"``, ``"checkpoint"``, ``"implicit"`` or ``"jfb"``.
        k: ``truncated``: number of final steps with a graph (``k = K`` equals ``full``).
        segments: ``checkpoint``: number of segments (default ``⌈√K⌉``).
        forward_tol: ``implicit``/``jfb``: relative-change tolerance of the forward fixed point
            (the call's ``tol`` overrides it).
        backward_solver: ``implicit``: ``"fixed_point"`` (Neumann series ``v ← g + Jᵀv``) or
            ``"bicgstab"`` (Krylov; also for ``ρ(J) ≥ 1``).
        backward_tol: relative residual tolerance of the adjoint solve.
        backward_max_iter: its iteration budget.
        on_failure: ``"warn"``, ``"raise"`` or ``"ignore"`` when a solve does not converge or a
            residual is not finite.
    """

    mode: ModeName = "full"
    k: int = 1
    segments: Optional[int] = None
    forward_tol: float = 1e-6
    backward_solver: Literal["fixed_point", "bicgstab"] = "bicgstab"
    backward_tol: float = 1e-6
    backward_max_iter: int = 200
    on_failure: Literal["warn", "raise", "ignore"] = "warn"

    def __post_init__(self) -> None:
        if self.mode not in _MODES:
            raise ValueError(f"grad_mode: expected one of {', '.join(_MODES)}, got {self.mode!r}")
        if self.k < 1:
            raise ValueError(f"k: expected an int >= 1 for truncated backprop, got {self.k!r}")
        if self.segments is not None and self.segments < 1:
            raise ValueError(f"segments: expected an int >= 1, got {self.segments!r}")
        if self.backward_solver not in ("fixed_point", "bicgstab"):
            raise ValueError(f"backward_solver: expected 'fixed_point' or 'bicgstab', got {self.backward_solver!r}")
        if self.on_failure not in ("warn", "raise", "ignore"):
            raise ValueError(f"on_failure: expected 'warn', 'raise' or 'ignore', got {self.on_failure!r}")

    def fail(self, message: str) -> None:
        """Report a failed solve as configured."""
        if self.on_failure == "raise":
            raise RuntimeError(message)
        if self.on_failure == "warn":
            warnings.warn(message, SolverWarning, stacklevel=3)


def as_grad_mode(mode: Union[str, GradMode, None], default: Optional[GradMode] = None) -> GradMode:
    """A :class:`GradMode` from a string, a ``GradMode`` or ``None`` (→ ``default`` or full)."""
    if mode is None:
        return default if default is not None else GradMode()
    if isinstance(mode, GradMode):
        return mode
    if isinstance(mode, str):
        return GradMode(mode)  # type: ignore[arg-type]
    raise TypeError(f"grad_mode: expected a mode name or a GradMode, got {type(mode).__name__}")


def truncated(k: int, **kwargs) -> GradMode:
    """Backprop through the last ``k`` steps only."""
    return GradMode("truncated", k=k, **kwargs)


def checkpointed(segments: Optional[int] = None, **kwargs) -> GradMode:
    """Activation checkpointing over ``segments`` segments (default ``⌈√K⌉``)."""
    return GradMode("checkpoint", segments=segments, **kwargs)


def implicit(**kwargs) -> GradMode:
    """Implicit differentiation at the fixed point (see :class:`GradMode` for the settings)."""
    return GradMode("implicit", **kwargs)


def jfb(**kwargs) -> GradMode:
    """Jacobian-free backprop: one step at the fixed point."""
    return GradMode("jfb", **kwargs)


def num_segments(mode: GradMode, n: int) -> int:
    return min(n, mode.segments if mode.segments is not None else max(1, math.ceil(math.sqrt(n))))


# ---------------------------------------------------------------------------- adjoint solvers
def adjoint_fixed_point(vjp: Callable[[Tensor], Tensor], g: Tensor, tol: float, max_iter: int):
    """Solve ``v = g + Jᵀ v`` by the Neumann/fixed-point iteration (converges when ``ρ(J) < 1``).

    Args:
        vjp: ``u ↦ Jᵀ u`` on ``(B, *shape)``; g: ``(B, *shape)``.

    Returns:
        ``(v, iterations, relative residual (B,))``.
    """
    gnorm = batch_norm(g).clamp_min(torch.finfo(g.real.dtype).tiny)
    v = g
    res = torch.zeros_like(gnorm)
    for it in range(1, max_iter + 1):
        v_new = g + vjp(v)
        res = batch_norm(v_new - v) / gnorm
        v = v_new
        if bool((res <= tol).all()) or not bool(torch.isfinite(res).all()):  # backward: one sync/iter
            return v, it, res
    return v, max_iter, res


def adjoint_bicgstab(vjp: Callable[[Tensor], Tensor], g: Tensor, tol: float, max_iter: int):
    """Solve ``(I − Jᵀ) v = g`` by BiCGSTAB (van der Vorst 1992), one system per sample.

    Converged samples are frozen; the loop stops when all are (one sync per iteration, in the
    backward pass). Starts from ``v = g`` (the Jacobian-free guess) and returns, per sample, the
    iterate with the smallest residual, so a stagnating solve is never worse than JFB.
    Arguments and returns as :func:`adjoint_fixed_point`.
    """
    def op(u: Tensor) -> Tensor:
        return u - vjp(u)

    tiny = torch.finfo(g.real.dtype).tiny
    gnorm = batch_norm(g).clamp_min(tiny)
    v = g.clone()  # start from the JFB guess
    r = g - op(v)
    r_hat = r.clone()
    rho = alpha = omega = torch.ones_like(batch_dot(r, r))
    p = torch.zeros_like(g)
    nu = torch.zeros_like(g)
    res = batch_norm(r) / gnorm
    done = res <= tol
    best_v, best_res = v, res  # never return worse than the best iterate (the start is the JFB guess)
    for it in range(1, max_iter + 1):
        if bool(done.all()):
            return best_v, it - 1, best_res
        rho_new = batch_dot(r_hat, r)
        beta = (rho_new / _safe(rho)) * (alpha / _safe(omega))
        p = r + per_sample(beta, g) * (p - per_sample(omega, g) * nu)
        nu = op(p)
        alpha = rho_new / _safe(batch_dot(r_hat, nu))
        s = r - per_sample(alpha, g) * nu
        t = op(s)
        omega = batch_dot(t, s) / _safe(batch_dot(t, t))
        step = per_sample(alpha, g) * p + per_sample(omega, g) * s
        keep = per_sample(done, g)
        v = torch.where(keep, v, v + step)
        r = torch.where(keep, r, s - per_sample(omega, g) * t)
        rho = rho_new
        res = torch.where(done, res, batch_norm(r) / gnorm)
        done = done | (res <= tol)
        better = res < best_res
        best_v, best_res = torch.where(per_sample(better, g), v, best_v), torch.where(better, res, best_res)
        if not bool(torch.isfinite(res).all()):
            return best_v, it, best_res
    return best_v, max_iter, best_res


def _safe(d: Tensor) -> Tensor:
    """Avoid division by exactly zero (a breakdown of a converged or zero sample)."""
    tiny = torch.finfo(d.real.dtype).tiny
    return torch.where(d.abs() > tiny, d, torch.full_like(d, tiny))
