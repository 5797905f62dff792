"""``Unrolled``: K iterations of a step module, with tied or untied weights."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import List, NamedTuple, Optional, Sequence, Union

import torch
from torch import Tensor, nn

from .problem import Problem

__all__ = ["Unrolled", "UnrolledOutput", "SolverInfo"]


@dataclass
class SolverInfo:
    """What an iterative solver did, per sample.

    Attributes:
        iterations: ``(B,)`` int64, iterations each sample ran (frozen samples stop counting).
        residual: ``(B,)`` final relative change ``‖x_k − x_{k−1}‖ / ‖x_{k−1}‖``.
        converged: ``(B,)`` bool, whether the tolerance was met (all ``False`` without a tolerance).
        objective: ``(B, K)`` objective after each iteration, when recorded, else ``None``.
        tol: the tolerance used, or ``None``.
        trajectory: every iterate, when a classical solver was asked for it (``return_trajectory``).
    """

    iterations: Tensor
    residual: Tensor
    converged: Tensor
    objective: Optional[Tensor] = None
    tol: Optional[float] = None
    trajectory: Optional[List[Tensor]] = None

    @property
    def status(self) -> str:
        """``"converged"`` (every sample met ``tol``), ``"max_iter"`` or ``"fixed"`` (no tolerance
        asked). Reading it synchronises with the device."""
        if self.tol is None:
            return "fixed"
        if not torch.isfinite(self.residual).all():
            return "diverged"
        return "converged" if bool(self.converged.all()) else "max_iter"


class UnrolledOutput(NamedTuple):
    """``x``: final estimate ``(B, *in_shape)``; ``trajectory``: the estimate after each
    iteration (a list, last element ``x``) or ``None``; ``info``: :class:`SolverInfo`."""

    x: Tensor
    trajectory: Optional[List[Tensor]]
    info: SolverInfo


def _batch_norm(t: Tensor) -> Tensor:
    return torch.linalg.vector_norm(t.flatten(1), dim=1)


def _freeze(new, old, frozen: Tensor):
    """Keep ``old`` where ``frozen`` (``(B,)`` bool), else take ``new``; field by field."""
    return type(new)(*(torch.where(frozen.view(-1, *([1] * (n.dim() - 1))), o, n)
                       for n, o in zip(new, old)))


class Unrolled(nn.Module):
    """Runs ``K`` iterations ``state ↦ step(state, problem)``.

    Args:
        steps: one step module, or a sequence of them (one per iteration: untied weights).
        num_iters: ``K``. Required with a single step; with a sequence it defaults to its length.
        tied: with a single step, share it across iterations (``True``) or make ``K``
            independent copies (``False``, untied weights).

    At inference ``forward`` can run more iterations than ``K`` (untied: the last step is
    repeated) or stop at a tolerance on the relative change, per sample.
    """

    def __init__(self, steps: Union[nn.Module, Sequence[nn.Module]], num_iters: Optional[int] = None,
                 tied: bool = True) -> None:
        super().__init__()
        if isinstance(steps, nn.Module) and not isinstance(steps, (nn.ModuleList, nn.Sequential)):
            if num_iters is None or num_iters < 1:
                raise ValueError(f"num_iters: expected an int >= 1 with a single step, got {num_iters!r}")
            steps = [steps] if tied else [copy.deepcopy(steps) for _ in range(num_iters)]
        else:
            steps = list(steps)
            if not steps:
                raise ValueError("steps: expected at least one step module, got an empty sequence")
            if num_iters is None:
                num_iters = len(steps)
            if len(steps) not in (1, num_iters):
                raise ValueError(f"num_iters: {num_iters} does not match the {len(steps)} steps given")
        self.steps = nn.ModuleList(steps)
        self.num_iters = int(num_iters)

    @property
    def tied(self) -> bool:
        return len(self.steps) == 1

    def step_at(self, k: int) -> nn.Module:
        """The step used at iteration ``k`` (0-based); past ``K`` the last one."""
        return self.steps[min(k, len(self.steps) - 1)]

    def forward(self, problem: Problem, x0: Optional[Tensor] = None, *, num_iters: Optional[int] = None,
                tol: Optional[float] = None, check_every: int = 10, return_trajectory: bool = False,
                record_objective: bool = False) -> UnrolledOutput:
        """Run the iterations.

        Args:
            problem: the :class:`~unroll.problem.Problem` (operator, measurements, regulariser).
            x0: initial estimate ``(B, *in_shape)``; zeros if omitted.
            num_iters: iterations to run (default ``K``); may exceed ``K`` at inference.
            tol: stop a sample once its relative change is ``≤ tol``; it is then frozen (batched
                masks, no host sync per iteration).
            check_every: with ``tol``, test every this many iterations whether all samples have
                converged and stop early (one host sync per test; ``0`` never stops early).
            return_trajectory: also return the estimate after every iteration.
            record_objective: record ``problem.objective`` after every iteration into ``info``.

        Returns:
            :class:`UnrolledOutput` ``(x, trajectory, info)``.
        """
        n = self.num_iters if num_iters is None else int(num_iters)
        if n < 1:
            raise ValueError(f"num_iters: expected an int >= 1, got {num_iters!r}")
        if x0 is None:
            x0 = problem.zeros()
        state = self.steps[0].init_state(x0, problem)
        bsz = x0.shape[0]
        iterations = torch.zeros(bsz, dtype=torch.long, device=x0.device)
        converged = torch.zeros(bsz, dtype=torch.bool, device=x0.device)
        residual = torch.full((bsz,), float("inf"), dtype=x0.real.dtype, device=x0.device)
        trajectory: Optional[List[Tensor]] = [] if return_trajectory else None
        objective: List[Tensor] = []
        for k in range(n):
            new = self.step_at(k)(state, problem)
            if tol is not None or k == n - 1:
                prev = state.x
                rel = _batch_norm(new.x - prev) / _batch_norm(prev).clamp_min(torch.finfo(residual.dtype).tiny)
                if tol is not None:
                    new = _freeze(new, state, converged)
                    residual = torch.where(converged, residual, rel)
                    iterations = iterations + (~converged).long()
                    converged = converged | (rel <= tol)
                else:
                    residual = rel
            state = new
            if trajectory is not None:
                trajectory.append(state.x)
            if record_objective:
                objective.append(problem.objective(state.x))
            if tol is not None and check_every > 0 and (k + 1) % check_every == 0 and k + 1 < n:
                if bool(converged.all()):  # host sync, once every `check_every` iterations
                    break
        if tol is None:
            iterations = torch.full_like(iterations, n)
        info = SolverInfo(iterations=iterations, residual=residual, converged=converged,
                          objective=torch.stack(objective, dim=1) if record_objective else None, tol=tol)
        return UnrolledOutput(state.x, trajectory, info)
