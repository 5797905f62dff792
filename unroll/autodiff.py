"""How gradients flow through an iterative solver: the gradient modes of :class:`~unroll.Unrolled`.

=============  =====================================================================  ===========
mode           backward                                                               memory in K
=============  =====================================================================  ===========
``full``       backprop through every step                                            ∝ K
``truncated``  backprop through the last ``k`` steps; earlier ones run without graph  ∝ k
``checkpoint`` ``torch.utils.checkpoint`` over ⌈√K⌉ segments, recomputed in backward  ∝ √K
``implicit``   implicit function theorem at the fixed point ``s* = T(s*, θ)`` of the   constant
               whole state: the adjoint system ``(I − ∂T/∂s)ᵀ v = g`` solved by a
               solver object (``CG``, ``BiCGSTAB``, ``Neumann``) with ``torch.func``
               vjps, then ``v`` pulled back through one step to ``θ`` (and ``y``, the
               operator's parameters)
``jfb``        Jacobian-free backprop (Fung et al. 2022): ``v = g``, one step          constant
=============  =====================================================================  ===========

``implicit`` and ``jfb`` need tied weights (a fixed-point map) and work on any state (the plain
iterate, ADMM's ``(x, z, u)``, …) whose step is a fixed-point map (``Step.fixed_point``: not
FISTA, whose momentum sequence grows without bound); they run the forward pass to a tolerance
without a graph. For non-smooth steps the vjp of the step is the prox's generalised Jacobian (the
support mask of soft thresholding, the active set of a projection), so, e.g., the implicit
gradient of a Lasso solution is the closed form on its support.

A mode is chosen per layer (``Unrolled(..., grad_mode=...)``) and per call
(``layer(problem, grad_mode=...)``), as a string or a :class:`GradMode`. What the forward and
backward passes did is reported in the :class:`~unroll.unrolled.SolverInfo` of the call
(``info.backward`` is filled in when the backward pass runs). A backward solve that does
not converge, or a residual that is not finite, warns or raises (``on_failure``); a
non-finite adjoint is never passed on: with ``on_failure="warn"`` it falls back to the JFB
gradient.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Literal, Optional, Union

from .checks import check_tol
from .linalg import BiCGSTAB, CG, LinearSolver, Neumann, SolverWarning, as_linear_solver

__all__ = ["GradMode", "as_grad_mode", "truncated", "checkpointed", "implicit", "jfb", "SolverWarning",
           "CG", "BiCGSTAB", "Neumann", "LinearSolver"]

ModeName = Literal["full", "truncated", "checkpoint", "implicit", "jfb"]
_MODES = ("full", "truncated", "checkpoint", "implicit", "jfb")


@dataclass(frozen=True)
class GradMode:
    """A gradient mode and its settings.

    Args:
        mode: ``"full"``, ``"truncated"``, ``"checkpoint"``, ``"implicit"`` or ``"jfb"``.
        k: ``truncated``: number of final steps with a graph (``k = K`` equals ``full``).
        segments: ``checkpoint``: number of segments (default ``⌈√K⌉``).
        forward_tol: ``implicit``/``jfb``: relative-change tolerance of the forward fixed point
            (the call's ``tol`` overrides it).
        backward_solver: ``implicit``: the solver of the adjoint system ``(I − Jᵀ) v = g``, an
            object (:class:`~unroll.linalg.CG` for symmetric Jacobians, e.g. gradient descent on
            a smooth objective; :class:`~unroll.linalg.BiCGSTAB`, also for ``ρ(J) ≥ 1``;
            :class:`~unroll.linalg.Neumann`, the series ``v ← g + Jᵀv``) with its own tolerance
            and budget, or a name (``"cg"``, ``"bicgstab"``, ``"neumann"``/``"fixed_point"``)
            that takes ``backward_tol`` and ``backward_max_iter``.
        backward_tol: relative residual tolerance of a solver given by name.
        backward_max_iter: its iteration budget.
        on_failure: ``"warn"``, ``"raise"`` or ``"ignore"`` when a solve does not converge or a
            residual is not finite.
    """

    mode: ModeName = "full"
    k: int = 1
    segments: Optional[int] = None
    forward_tol: float = 1e-6
    backward_solver: Union[str, LinearSolver] = "bicgstab"
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
        check_tol(self.forward_tol, "forward_tol", allow_none=False)
        check_tol(self.backward_tol, "backward_tol", allow_none=False)
        as_linear_solver(self.backward_solver, self.backward_tol, self.backward_max_iter)  # checks the name
        if self.on_failure not in ("warn", "raise", "ignore"):
            raise ValueError(f"on_failure: expected 'warn', 'raise' or 'ignore', got {self.on_failure!r}")

    @property
    def solver(self) -> LinearSolver:
        """The adjoint solver as an object (a name resolved with ``backward_tol``/``_max_iter``)."""
        return as_linear_solver(self.backward_solver, self.backward_tol, self.backward_max_iter)

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
