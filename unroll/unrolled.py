"""``Unrolled``: K iterations of a step module, with tied or untied weights."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import List, NamedTuple, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from .batched import batch_norm, per_sample
from .autodiff import GradMode, adjoint_bicgstab, adjoint_fixed_point, as_grad_mode, num_segments
from .problem import Problem
from .steps import State

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
        grad_mode: the gradient mode of the call.
        backward_iterations: iterations of the adjoint solve (``implicit``; ``0`` for ``jfb``),
            set when the backward pass runs, else ``None``.
        backward_residual: ``(B,)`` relative residual of the adjoint solve, set with it.
    """

    iterations: Tensor
    residual: Tensor
    converged: Tensor
    objective: Optional[Tensor] = None
    tol: Optional[float] = None
    trajectory: Optional[List[Tensor]] = None
    grad_mode: str = "full"
    backward_iterations: Optional[int] = None
    backward_residual: Optional[Tensor] = None
    backward_tol: Optional[float] = None

    @property
    def status(self) -> str:
        """``"converged"`` (every sample met ``tol``), ``"max_iter"`` or ``"fixed"`` (no tolerance
        asked). Reading it synchronises with the device."""
        if self.tol is None:
            return "fixed"
        if not torch.isfinite(self.residual).all():
            return "diverged"
        return "converged" if bool(self.converged.all()) else "max_iter"

    @property
    def backward_status(self) -> str:
        """``"not_run"``, ``"exact"`` (a mode without an adjoint solve), ``"converged"``,
        ``"max_iter"`` or ``"diverged"`` (non-finite adjoint residual)."""
        if self.grad_mode not in ("implicit", "jfb"):
            return "exact"
        if self.backward_iterations is None:
            return "not_run"
        if self.backward_residual is None:
            return "exact"  # jfb: no solve
        if not torch.isfinite(self.backward_residual).all():
            return "diverged"
        return "converged" if bool((self.backward_residual <= self.backward_tol).all()) else "max_iter"


class UnrolledOutput(NamedTuple):
    """``x``: final estimate ``(B, *in_shape)``; ``trajectory``: the estimate after each
    iteration (a list, last element ``x``) or ``None``; ``info``: :class:`SolverInfo`."""

    x: Tensor
    trajectory: Optional[List[Tensor]]
    info: SolverInfo


def _freeze(new, old, frozen: Tensor):
    """Keep ``old`` where ``frozen`` (``(B,)`` bool), else take ``new``; field by field."""
    return type(new)(*(torch.where(per_sample(frozen, n), o, n) for n, o in zip(new, old)))


class Unrolled(nn.Module):
    """Runs ``K`` iterations ``state ↦ step(state, problem)``.

    Args:
        steps: one step module, or a sequence of them (one per iteration: untied weights).
        num_iters: ``K``. Required with a single step; with a sequence it defaults to its length.
        tied: with a single step, share it across iterations (``True``) or make ``K``
            independent copies (``False``, untied weights).
        grad_mode: default gradient mode (:mod:`unroll.autodiff`): ``"full"``, ``"truncated"``,
            ``"checkpoint"``, ``"implicit"``, ``"jfb"`` or a :class:`~unroll.autodiff.GradMode`;
            each call may override it.
        check_finite: after each forward, report a non-finite residual (a diverging iteration,
            e.g. a step size above 2/L) as the mode's ``on_failure`` says (one host sync per call;
            skipped inside ``torch.compile``, so a fixed-``K`` layer compiles to one graph).

    At inference ``forward`` can run more iterations than ``K`` (untied: the last step is
    repeated) or stop at a tolerance on the relative change, per sample.
    """

    def __init__(self, steps: Union[nn.Module, Sequence[nn.Module]], num_iters: Optional[int] = None,
                 tied: bool = True, grad_mode: Union[str, GradMode] = "full", check_finite: bool = True) -> None:
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
        self.grad_mode = as_grad_mode(grad_mode)
        self.check_finite = check_finite

    @property
    def tied(self) -> bool:
        return len(self.steps) == 1

    def step_at(self, k: int) -> nn.Module:
        """The step used at iteration ``k`` (0-based); past ``K`` the last one."""
        return self.steps[min(k, len(self.steps) - 1)]

    def forward(self, problem: Problem, x0: Optional[Tensor] = None, *, num_iters: Optional[int] = None,
                tol: Optional[float] = None, check_every: int = 10, return_trajectory: bool = False,
                record_objective: bool = False, grad_mode: Union[str, GradMode, None] = None) -> UnrolledOutput:
        """Run the iterations.

        Args:
            problem: the :class:`~unroll.problem.Problem` (operator, measurements, regulariser).
            x0: initial estimate ``(B, *in_shape)``; zeros if omitted.
            num_iters: iterations to run (default ``K``); may exceed ``K`` at inference. With
                ``implicit``/``jfb`` it is the forward budget.
            tol: stop a sample once its relative change is ``≤ tol``; it is then frozen (batched
                masks, no host sync per iteration). ``implicit``/``jfb`` use the mode's
                ``forward_tol`` when it is omitted.
            check_every: with ``tol``, test every this many iterations whether all samples have
                converged and stop early (one host sync per test; ``0`` never stops early).
            return_trajectory: also return the estimate after every iteration.
            record_objective: record ``problem.objective`` after every iteration into ``info``.
            grad_mode: this call's gradient mode (default: the layer's).

        Returns:
            :class:`UnrolledOutput` ``(x, trajectory, info)``.
        """
        mode = as_grad_mode(grad_mode, self.grad_mode)
        n = self.num_iters if num_iters is None else int(num_iters)
        if n < 1:
            raise ValueError(f"num_iters: expected an int >= 1, got {num_iters!r}")
        if x0 is None:
            x0 = problem.zeros()
        else:  # the iterations call the operator unchecked: check the start once
            problem.op._check(x0, problem.op.in_shape, "x0", "domain")
        if mode.mode in ("implicit", "jfb"):
            return self._fixed_point(problem, x0, n, mode.forward_tol if tol is None else tol, check_every,
                                     return_trajectory, record_objective, mode)

        bsz = x0.shape[0]
        carry = (self.steps[0].init_state(x0, problem),
                 torch.zeros(bsz, dtype=torch.bool, device=x0.device),
                 torch.zeros(bsz, dtype=torch.long, device=x0.device),
                 torch.full((bsz,), float("inf"), dtype=x0.real.dtype, device=x0.device))
        trajectory: Optional[List[Tensor]] = [] if return_trajectory else None
        objective: List[Tensor] = []
        grad = torch.is_grad_enabled()
        for k0, k1, kind in self._plan(n, mode, tol, check_every):
            args = (problem, k0, k1, n, tol, return_trajectory, record_objective)
            if kind == "no_grad":
                with torch.no_grad():
                    carry, xs, objs = self._segment(carry, *args)
                carry = (type(carry[0])(*(t.detach() for t in carry[0])),) + carry[1:]
            elif kind == "checkpoint" and grad:
                carry, xs, objs = checkpoint(self._segment, carry, *args, use_reentrant=False)
            else:
                carry, xs, objs = self._segment(carry, *args)
            if trajectory is not None:
                trajectory.extend(xs)
            objective.extend(objs)
            if tol is not None and check_every > 0 and k1 < n and kind != "no_grad" and bool(carry[1].all()):
                break  # host sync, once per segment; never before the segment that keeps the graph
        state, converged, iterations, residual = carry
        info = SolverInfo(iterations=iterations, residual=residual, converged=converged,
                          objective=torch.stack(objective, dim=1) if record_objective else None, tol=tol,
                          grad_mode=mode.mode)
        self._check(info, mode, n)
        return UnrolledOutput(state.x, trajectory, info)

    # ------------------------------------------------------------------ internals
    @staticmethod
    def _plan(n: int, mode: GradMode, tol: Optional[float], check_every: int) -> List[Tuple[int, int, str]]:
        """Segments ``(k0, k1, kind)`` of the iteration range: where the graph is kept, dropped
        (``no_grad``) or recomputed (``checkpoint``), and where the early-stop test may run."""
        if mode.mode == "checkpoint":
            size = -(-n // num_segments(mode, n))
            return [(k, min(k + size, n), "checkpoint") for k in range(0, n, size)]
        chunk = check_every if (tol is not None and check_every > 0) else n
        bounds = [(k, min(k + chunk, n)) for k in range(0, n, chunk)]
        if mode.mode == "truncated" and mode.k < n:
            cut = n - mode.k
            split = []
            for k0, k1 in bounds:
                if k0 < cut < k1:
                    split += [(k0, cut), (cut, k1)]
                else:
                    split.append((k0, k1))
            return [(k0, k1, "no_grad" if k1 <= cut else "graph") for k0, k1 in split]
        return [(k0, k1, "graph") for k0, k1 in bounds]

    def _segment(self, carry, problem: Problem, k0: int, k1: int, n: int, tol: Optional[float],
                 return_trajectory: bool, record_objective: bool):
        """Iterations ``k0 .. k1-1`` as a pure function of ``carry = (state, converged, iterations,
        residual)`` (no side effects, so checkpointing can recompute it)."""
        state, converged, iterations, residual = carry
        xs: List[Tensor] = []
        objs: List[Tensor] = []
        steps, last = list(self.steps), len(self.steps) - 1
        for k in range(k0, k1):
            new = steps[min(k, last)](state, problem)
            if tol is not None or k == n - 1:
                prev = state.x
                prev_norm, change = batch_norm(prev), batch_norm(new.x - prev)
                # from x = 0 (a first iteration) any change is a whole one: 1 (or 0), not change / tiny,
                # which overflows; NaN/Inf still come out non-finite, for the divergence check
                tiny = torch.finfo(residual.dtype).tiny
                rel = torch.where(prev_norm > 0, change / prev_norm.clamp_min(tiny), change / change.clamp_min(tiny))
                if tol is not None:
                    new = _freeze(new, state, converged)
                    residual = torch.where(converged, residual, rel)
                    iterations = iterations + (~converged).long()  # the converging iteration counts
                    converged = converged | (rel <= tol)
                else:
                    residual = rel
            state = new
            if return_trajectory:
                xs.append(state.x)
            if record_objective:
                objs.append(problem.objective(state.x))
        if tol is None:
            iterations = iterations + (k1 - k0)
        return (state, converged, iterations, residual), xs, objs

    def _check(self, info: SolverInfo, mode: GradMode, n: int) -> None:
        if self.check_finite and not torch.compiler.is_compiling() and not bool(torch.isfinite(info.residual).all()):
            mode.fail(f"Unrolled: the iteration diverged (non-finite relative change after {n} iterations); "
                      "check the step size (it must stay below 2/L) and the input")

    def _fixed_point(self, problem: Problem, x0: Tensor, n: int, tol: float, check_every: int,
                     return_trajectory: bool, record_objective: bool, mode: GradMode) -> UnrolledOutput:
        """``implicit``/``jfb``: the fixed point without a graph, then one step with it."""
        if not self.tied:
            raise ValueError(f"grad_mode: {mode.mode!r} needs tied weights (one step module, a fixed-point map); "
                             f"this Unrolled has {len(self.steps)} untied steps")
        step = self.steps[0]
        if type(step.init_state(x0, problem)) is not State:
            raise TypeError(f"grad_mode: {mode.mode!r} needs a step whose state is the plain iterate (State); "
                            f"{type(step).__name__} carries more")
        with torch.no_grad():
            out = self.forward(problem, x0, num_iters=n, tol=tol, check_every=check_every,
                               return_trajectory=return_trajectory, record_objective=record_objective,
                               grad_mode=GradMode("full", on_failure=mode.on_failure))
        info = out.info
        info.grad_mode = mode.mode
        if bool(torch.isfinite(info.residual).all()) and not bool(info.converged.all()):
            mode.fail(f"Unrolled: the forward pass did not reach the fixed point (tol={tol:g}) in {n} iterations "
                      f"(largest relative change {float(info.residual.max()):.3g}); {mode.mode} gradients "
                      "assume a fixed point: raise num_iters or tol")
        x_star = out.x.detach()
        if not torch.is_grad_enabled():
            return UnrolledOutput(x_star, out.trajectory, info)
        x = step(State(x_star), problem).x  # one step with a graph to θ, y and the operator
        info.iterations = info.iterations + 1  # that step is part of what the layer did
        if mode.mode == "jfb":
            info.backward_iterations = 0
        elif x.requires_grad:
            x.register_hook(_implicit_hook(step, problem, x_star, mode, info))
        trajectory = None if out.trajectory is None else out.trajectory[:-1] + [x]
        return UnrolledOutput(x, trajectory, info)


def _implicit_hook(step: nn.Module, problem: Problem, x_star: Tensor, mode: GradMode, info: SolverInfo):
    """Backward hook turning the incoming gradient ``g`` into the adjoint ``v`` with
    ``(I − ∂T/∂x)ᵀ v = g`` at ``x*`` (then autograd pulls ``v`` back through one step)."""

    def hook(g: Optional[Tensor]) -> Optional[Tensor]:
        if g is None:  # an undefined gradient stays undefined
            return g
        _, vjp_fn = torch.func.vjp(lambda x: step(State(x), problem).x, x_star)
        solver = adjoint_bicgstab if mode.backward_solver == "bicgstab" else adjoint_fixed_point
        v, its, res = solver(lambda u: vjp_fn(u)[0], g, mode.backward_tol, mode.backward_max_iter)
        info.backward_iterations, info.backward_residual, info.backward_tol = its, res, mode.backward_tol
        if not bool(torch.isfinite(res).all()) or not bool(torch.isfinite(v).all()):
            mode.fail(f"implicit gradient: the adjoint solve diverged ({mode.backward_solver}, {its} iterations); "
                      "falling back to the Jacobian-free gradient")
            return g
        if not bool((res <= mode.backward_tol).all()):
            mode.fail(f"implicit gradient: the adjoint solve did not converge ({mode.backward_solver}: relative "
                      f"residual {float(res.max()):.3g} > {mode.backward_tol:g} after {its} iterations)")
        return v

    return hook
