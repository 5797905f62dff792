"""One result type for every solver: :class:`SolverInfo` with one status enum, :class:`Status`.

``unroll.cg``, the adjoint solves of the gradient modes (:class:`~unroll.linalg.CG`,
:class:`~unroll.linalg.BiCGSTAB`, :class:`~unroll.linalg.Neumann`), the classical solvers of
:mod:`unroll.solvers` and :class:`~unroll.Unrolled` all report what they did in a
:class:`SolverInfo`: per-sample iterations, residual and convergence, an optional residual
history for convergence plots, and — once a backward pass has run through an implicit solve —
the :class:`SolverInfo` of that backward solve.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import List, Optional

import torch
from torch import Tensor

__all__ = ["Status", "SolverInfo"]


class Status(str, enum.Enum):
    """What became of a solve. A ``str`` enum: ``info.status == "converged"`` works.

    * ``CONVERGED``: every sample met the tolerance.
    * ``MAX_ITER``: the budget ran out before every sample met it.
    * ``DIVERGED``: a residual is not finite (NaN/Inf).
    * ``BREAKDOWN``: the method broke down on some sample: conjugate gradient met non-positive
      curvature ``pᴴAp ≤ 0`` (the operator is not positive definite) or ended with a residual
      larger than it started with (not symmetric, or singular and inconsistent).
    * ``FIXED``: a fixed number of iterations was asked for (no tolerance), and run.
    * ``NOT_RUN``: a backward solve that has not run yet (no ``backward()`` through it).
    * ``EXACT``: no solve was needed (a gradient mode without an adjoint system).
    """

    CONVERGED = "converged"
    MAX_ITER = "max_iter"
    DIVERGED = "diverged"
    BREAKDOWN = "breakdown"
    FIXED = "fixed"
    NOT_RUN = "not_run"
    EXACT = "exact"

    def __str__(self) -> str:  # f"{status}" prints the plain word
        return self.value


@dataclass
class SolverInfo:
    """What an iterative solver did, per sample of the batch.

    Attributes:
        iterations: ``(B,)`` int64, iterations each sample ran (a frozen sample stops counting).
        residual: ``(B,)`` real, the final convergence measure of each sample: the step's
            :meth:`~unroll.steps.Step.residual` (relative change by default, ``‖r‖/‖b‖`` for
            Krylov methods).
        converged: ``(B,)`` bool, whether the sample met the tolerance.
        tol: the tolerance, or ``None`` when a fixed number of iterations was asked for.
        breakdown: ``(B,)`` bool, samples on which the method broke down (see
            :class:`Status`), or ``None`` for methods that cannot.
        max_iter: the iteration budget, when there was one.
        atol: an absolute tolerance, for methods that take one.
        residual_history: ``(B, K)`` the residual after each iteration, when recorded.
        objective: ``(B, K)`` the problem's objective after each iteration, when recorded.
        trajectory: every iterate, when a classical solver was asked for it.
        grad_mode: the gradient mode of the call (:mod:`unroll.autodiff`).
        method: the solver's name (``"cg"``, ``"bicgstab"``, ``"neumann"``, ``"unrolled"``…).
        backward: the :class:`SolverInfo` of the adjoint solve, set when a backward pass has
            gone through an implicit solve (``None`` before, and for modes without one).
    """

    iterations: Tensor
    residual: Tensor
    converged: Tensor
    tol: Optional[float] = None
    breakdown: Optional[Tensor] = None
    max_iter: Optional[int] = None
    atol: float = 0.0
    residual_history: Optional[Tensor] = None
    objective: Optional[Tensor] = None
    trajectory: Optional[List[Tensor]] = None
    grad_mode: str = "full"
    method: str = ""
    backward: Optional["SolverInfo"] = field(default=None, repr=False, compare=False)

    # ------------------------------------------------------------------ status
    @property
    def status(self) -> Status:
        """The :class:`Status` of the whole batch; reading it synchronises with the device.

        ``DIVERGED`` if any residual is non-finite, else ``BREAKDOWN`` if any sample broke
        down, else ``FIXED`` without a tolerance, else ``CONVERGED`` if every sample converged,
        else ``MAX_ITER``.
        """
        if not bool(torch.isfinite(self.residual).all()):
            return Status.DIVERGED
        if self.breakdown is not None and bool(self.breakdown.any()):
            return Status.BREAKDOWN
        if self.tol is None:
            return Status.FIXED
        return Status.CONVERGED if bool(self.converged.all()) else Status.MAX_ITER

    def sample_status(self) -> List[Status]:
        """The status of each sample, in batch order (one host synchronisation)."""
        res, conv = self.residual.detach().cpu(), self.converged.cpu()
        brk = self.breakdown.cpu() if self.breakdown is not None else torch.zeros_like(conv)
        out = []
        for r, c, b in zip(res.tolist(), conv.tolist(), brk.tolist()):
            if r != r or r in (float("inf"), float("-inf")):
                out.append(Status.DIVERGED)
            elif b:
                out.append(Status.BREAKDOWN)
            elif self.tol is None:
                out.append(Status.FIXED)
            else:
                out.append(Status.CONVERGED if c else Status.MAX_ITER)
        return out

    # ------------------------------------------------------------------ backward solve
    @property
    def backward_status(self) -> Status:
        """``EXACT`` for modes without an adjoint solve (``full``, ``truncated``,
        ``checkpoint``, ``jfb``), ``NOT_RUN`` before the backward pass, else the status of the
        adjoint solve."""
        if self.grad_mode != "implicit":
            return Status.EXACT
        return Status.NOT_RUN if self.backward is None else self.backward.status

    @property
    def backward_iterations(self) -> Optional[int]:
        """Iterations of the adjoint solve (the largest over the batch): ``0`` for ``jfb``,
        ``None`` before the backward pass or for modes without one."""
        if self.grad_mode == "jfb":
            return 0
        return None if self.backward is None else int(self.backward.iterations.max()) if \
            self.backward.iterations.numel() else 0

    @property
    def backward_residual(self) -> Optional[Tensor]:
        """``(B,)`` relative residual of the adjoint solve, once it has run."""
        return None if self.backward is None else self.backward.residual

    @property
    def backward_tol(self) -> Optional[float]:
        return None if self.backward is None else self.backward.tol

    # ------------------------------------------------------------------ aliases
    @property
    def residual_norm(self) -> Tensor:
        """Alias of :attr:`residual` (the name :func:`unroll.cg` used)."""
        return self.residual

    @property
    def backward_info(self) -> Optional["SolverInfo"]:
        """Alias of :attr:`backward` (the name :func:`unroll.cg` used)."""
        return self.backward
