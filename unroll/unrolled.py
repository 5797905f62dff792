"""``Unrolled``: K iterations of a step module on any state, with tied or untied weights.

The state is any ``NamedTuple`` (pytree) of batched tensors; freezing converged samples,
detaching (truncated and implicit modes), checkpointing and trajectories work field by field.
An ``Unrolled`` can itself be one step of another (:meth:`Unrolled.as_step`), so cascades of
blocks and inner solves inside outer iterations are built from the same parts.
"""

from __future__ import annotations

import copy
import math
from typing import Any, Callable, List, NamedTuple, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn
from torch.utils._pytree import tree_flatten, tree_map, tree_unflatten
from torch.utils.checkpoint import checkpoint

from .autodiff import GradMode, as_grad_mode, num_segments
from .batched import flat, per_sample
from .checks import check_tol
from .info import SolverInfo, Status
from .problem import Problem

__all__ = ["Unrolled", "UnrolledOutput", "SolverInfo", "Status", "NestedStep"]


class UnrolledOutput(NamedTuple):
    """``x``: final estimate ``(B, *shape)``; ``trajectory``: the estimate after each iteration
    (a list, last element ``x``) or ``None``; ``info``: :class:`~unroll.info.SolverInfo`;
    ``state``: the final state (every field); ``states``: the state after each iteration, when
    asked for (``return_states=True``), else ``None``."""

    x: Tensor
    trajectory: Optional[List[Tensor]]
    info: SolverInfo
    state: Any = None
    states: Optional[List[Any]] = None


def _freeze(new, old, frozen: Tensor):
    """Keep ``old`` where ``frozen`` (``(B,)`` bool), else take ``new``; field by field."""
    return tree_map(lambda n, o: torch.where(per_sample(frozen, n), o, n), new, old)


def _detach(state):
    return tree_map(lambda t: t.detach() if isinstance(t, Tensor) else t, state)


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
    repeated) or stop each sample at a tolerance on its step's residual.
    """

    def __init__(self, steps: Union[nn.Module, Sequence[nn.Module]], num_iters: Optional[int] = None,
                 tied: bool = True, grad_mode: Union[str, GradMode] = "full", check_finite: bool = True) -> None:
        super().__init__()
        if isinstance(steps, nn.Module) and not isinstance(steps, (nn.ModuleList, nn.Sequential)):
            if isinstance(num_iters, bool) or not isinstance(num_iters, int) or num_iters < 1:
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
        for i, s in enumerate(steps):
            if not isinstance(s, nn.Module) or not callable(getattr(s, "init_state", None)):
                raise TypeError(f"steps[{i}]: expected a Step module (forward(state, problem) and init_state), "
                                f"got {type(s).__name__}")
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

    def init_state(self, x0: Tensor, problem: Problem):
        """The state the first step starts from at ``x0``."""
        return self.steps[0].init_state(x0, problem)

    def as_step(self, **call_kwargs) -> "NestedStep":
        """This layer as one step of another ``Unrolled`` (sharing its parameters): each outer
        iteration runs these ``K`` inner iterations from the outer state. ``call_kwargs`` are
        passed to every inner call (``num_iters``, ``tol``, ``grad_mode``…)."""
        return NestedStep(self, **call_kwargs)

    def forward(self, problem: Problem, x0: Optional[Tensor] = None, *, state0: Any = None,
                num_iters: Optional[int] = None, tol: Optional[float] = None, check_every: int = 10,
                return_trajectory: bool = False, return_states: bool = False, record_objective: bool = False,
                record_residuals: bool = False, grad_mode: Union[str, GradMode, None] = None) -> UnrolledOutput:
        """Run the iterations.

        Args:
            problem: the :class:`~unroll.problem.Problem` (operator, measurements, regulariser…).
            x0: initial estimate ``(B, *shape)``; zeros if omitted (and no ``state0``).
            state0: a whole initial state (e.g. a warm start of every field), instead of ``x0``.
            num_iters: iterations to run (default ``K``); may exceed ``K`` at inference. With
                ``implicit``/``jfb`` it is the forward budget.
            tol: stop a sample once its step's residual is ``≤ tol``; it is then frozen (batched
                masks, no host sync per iteration). ``implicit``/``jfb`` use the mode's
                ``forward_tol`` when it is omitted.
            check_every: with ``tol``, test every this many iterations whether all samples have
                converged and stop early (one host sync per test; ``0`` never stops early).
            return_trajectory: also return the estimate after every iteration.
            return_states: also return the state after every iteration (every field).
            record_objective: record ``problem.objective`` after every iteration into ``info``.
            record_residuals: record every iteration's residual into ``info.residual_history``.
            grad_mode: this call's gradient mode (default: the layer's).

        Returns:
            :class:`UnrolledOutput` ``(x, trajectory, info, state, states)``.
        """
        mode = as_grad_mode(grad_mode, self.grad_mode)
        n = self.num_iters if num_iters is None else num_iters
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"num_iters: expected an int >= 1, got {num_iters!r}")
        tol = check_tol(tol, "tol")
        if isinstance(check_every, bool) or not isinstance(check_every, int) or check_every < 0:
            raise ValueError(f"check_every: expected an int >= 0, got {check_every!r}")
        state = self._initial_state(problem, x0, state0)
        flags = dict(return_trajectory=return_trajectory, return_states=return_states,
                     record_objective=record_objective, record_residuals=record_residuals)
        if mode.mode in ("implicit", "jfb"):
            return self._fixed_point(problem, state, n, mode.forward_tol if tol is None else tol, check_every,
                                     mode, flags)
        return self._run(problem, state, n, tol, check_every, mode, flags)

    # ------------------------------------------------------------------ internals
    def _initial_state(self, problem: Problem, x0: Optional[Tensor], state0: Any):
        if state0 is not None:
            if x0 is not None:
                raise ValueError("x0, state0: pass one of them, not both")
            leaves = [t for t in tree_flatten(state0)[0] if isinstance(t, Tensor)]
            if not leaves or any(t.dim() < 1 for t in leaves):
                raise ValueError("state0: expected a NamedTuple of batched tensors (B, ...)")
            return state0
        if x0 is None:
            x0 = problem.zeros()
        else:  # the iterations call the operator unchecked: check the start once
            op = getattr(problem, "op", None)
            if op is not None and hasattr(op, "check_input"):
                op.check_input(x0, "x0")
            elif not isinstance(x0, Tensor) or x0.dim() < 1:
                raise ValueError(f"x0: expected a (B, *shape) tensor, got {type(x0).__name__}")
        return self.steps[0].init_state(x0, problem)

    def _run(self, problem: Problem, state, n: int, tol: Optional[float], check_every: int, mode: GradMode,
             flags) -> UnrolledOutput:
        x0 = self.steps[0].estimate(state)
        bsz = x0.shape[0]
        carry = (state,
                 torch.zeros(bsz, dtype=torch.bool, device=x0.device),
                 torch.zeros(bsz, dtype=torch.long, device=x0.device),
                 torch.full((bsz,), float("inf"), dtype=x0.real.dtype, device=x0.device))
        rec: dict = {k: [] for k in ("xs", "states", "objs", "res")}
        grad = torch.is_grad_enabled()
        for k0, k1, kind in self._plan(n, mode, tol, check_every):
            args = (problem, k0, k1, n, tol, flags)
            if kind == "no_grad":
                with torch.no_grad():
                    carry, got = self._segment(carry, *args)
                carry = (_detach(carry[0]),) + carry[1:]
            elif kind == "checkpoint" and grad:
                carry, got = checkpoint(self._segment, carry, *args, use_reentrant=False)
            else:
                carry, got = self._segment(carry, *args)
            for key, vals in zip(("xs", "states", "objs", "res"), got):
                rec[key].extend(vals)
            if tol is not None and check_every > 0 and k1 < n and kind != "no_grad" and bool(carry[1].all()):
                break  # host sync, once per segment; never before the segment that keeps the graph
        state, converged, iterations, residual = carry
        info = SolverInfo(iterations=iterations, residual=residual, converged=converged, tol=tol, max_iter=n,
                          objective=torch.stack(rec["objs"], dim=1) if flags["record_objective"] else None,
                          residual_history=torch.stack(rec["res"], dim=1) if flags["record_residuals"] else None,
                          grad_mode=mode.mode, method="unrolled")
        self._check(info, mode, n, problem)
        return UnrolledOutput(self.step_at(n - 1).estimate(state), rec["xs"] if flags["return_trajectory"] else None,
                              info, state, rec["states"] if flags["return_states"] else None)

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

    def _segment(self, carry, problem: Problem, k0: int, k1: int, n: int, tol: Optional[float], flags):
        """Iterations ``k0 .. k1-1`` as a pure function of ``carry = (state, converged, iterations,
        residual)`` (no side effects, so checkpointing can recompute it)."""
        state, converged, iterations, residual = carry
        xs: List[Tensor] = []
        states: List[Any] = []
        objs: List[Tensor] = []
        res: List[Tensor] = []
        need_res = tol is not None or flags["record_residuals"]
        steps = list(self.steps)  # plain-list indexing: ModuleList's __getitem__ costs µs per iteration
        last = len(steps) - 1
        for k in range(k0, k1):
            step = steps[k if k < last else last]
            new = step(state, problem)
            if need_res or k == n - 1:
                rel = step.residual(new, state, problem)
                if tol is not None:
                    new = _freeze(new, state, converged)
                    residual = torch.where(converged, residual, rel)
                    iterations = iterations + (~converged).long()  # the converging iteration counts
                    converged = converged | (rel <= tol)
                else:
                    residual = rel
                if flags["record_residuals"]:
                    res.append(residual)
            state = new
            if flags["return_trajectory"] or flags["record_objective"]:
                x = step.estimate(state)
                if flags["return_trajectory"]:
                    xs.append(x)
                if flags["record_objective"]:
                    objs.append(problem.objective(x))
            if flags["return_states"]:
                states.append(state)
        if tol is None:
            iterations = iterations + (k1 - k0)
        return (state, converged, iterations, residual), (xs, states, objs, res)

    def _check(self, info: SolverInfo, mode: GradMode, n: int, problem: Problem) -> None:
        if not self.check_finite or torch.compiler.is_compiling():
            return
        ok = torch.isfinite(info.residual).all()
        inputs = problem.inputs_finite()  # the data's check rides on the same host sync
        if not bool(ok if inputs is None else ok & inputs):
            problem.check_inputs_finite()  # NaN/Inf in the data is the input's fault: say so (ValueError)
            mode.fail(f"Unrolled: the iteration diverged (non-finite residual after {n} iterations); "
                      "check the step size (it must stay below 2/L) and the input")

    def _fixed_point(self, problem: Problem, state, n: int, tol: float, check_every: int, mode: GradMode,
                     flags) -> UnrolledOutput:
        """``implicit``/``jfb``: the fixed point without a graph, then one step with it."""
        if not self.tied:
            raise ValueError(f"grad_mode: {mode.mode!r} needs tied weights (one step module, a fixed-point map); "
                             f"this Unrolled has {len(self.steps)} untied steps")
        step = self.steps[0]
        if not getattr(step, "fixed_point", True):
            raise TypeError(f"grad_mode: {mode.mode!r} needs a step that is a fixed-point map of its state; "
                            f"{type(step).__name__} is not (e.g. FISTA's momentum grows without bound): use "
                            "'full', 'truncated' or 'checkpoint', or a fixed-point step such as ProxGradStep")
        with torch.no_grad():
            out = self._run(problem, _detach(state), n, tol, check_every,
                            GradMode("full", on_failure=mode.on_failure), flags)
        info = out.info
        info.grad_mode = mode.mode
        if bool(torch.isfinite(info.residual).all()) and not bool(info.converged.all()):
            mode.fail(f"Unrolled: the forward pass did not reach the fixed point (tol={tol:g}) in {n} iterations "
                      f"(largest residual {float(info.residual.max()):.3g}); {mode.mode} gradients "
                      "assume a fixed point: raise num_iters or tol")
        s_star = _detach(out.state)
        if not torch.is_grad_enabled():
            return UnrolledOutput(out.x, out.trajectory, info, s_star, out.states)
        new = step(s_star, problem)  # one step with a graph to θ, y and the operator
        info.iterations = info.iterations + 1  # that step is part of what the layer did
        if mode.mode == "implicit":
            new = _implicit_adjoint(step, problem, s_star, new, mode, info)
        x = step.estimate(new)
        trajectory = None if out.trajectory is None else out.trajectory[:-1] + [x]
        states = None if out.states is None else out.states[:-1] + [new]
        return UnrolledOutput(x, trajectory, info, new, states)


# ---------------------------------------------------------------------------- implicit gradients
def _pack(leaves: Sequence[Tensor], dtype: torch.dtype) -> Tensor:
    """Leaves ``(B, ...)`` → one ``(B, N)`` tensor of ``dtype``."""
    return torch.cat([flat(t).to(dtype) for t in leaves], dim=1)


def _unpack(v: Tensor, like: Sequence[Tensor]) -> List[Tensor]:
    out, i = [], 0
    for t in like:
        size = math.prod(t.shape[1:])
        piece = v[:, i:i + size]
        piece = piece if t.is_complex() or not piece.is_complex() else piece.real
        out.append(piece.reshape(t.shape).to(t.dtype))
        i += size
    return out


class _ImplicitFunction(torch.autograd.Function):
    """Identity on the leaves of one step's output ``T(s*)``; its backward replaces the incoming
    gradient ``g`` by the adjoint ``v`` solving ``(I − ∂T/∂s)ᵀ v = g`` at the fixed point, which
    autograd then pulls back through the one step to ``θ`` (implicit function theorem)."""

    @staticmethod
    def forward(ctx, solve: Callable, *leaves: Tensor):
        ctx.solve = solve
        return tuple(t.view_as(t) for t in leaves)

    @staticmethod
    def backward(ctx, *grads: Optional[Tensor]):
        return (None, *ctx.solve(grads))


def _implicit_adjoint(step: nn.Module, problem: Problem, s_star, new, mode: GradMode, info: SolverInfo):
    leaves, spec = tree_flatten(new)
    star_leaves = tree_flatten(s_star)[0]
    idx = [i for i, t in enumerate(leaves) if isinstance(t, Tensor) and (t.is_floating_point() or t.is_complex())]
    if not any(leaves[i].requires_grad for i in idx):
        return new
    dtype = leaves[idx[0]].dtype
    for i in idx:
        dtype = torch.promote_types(dtype, leaves[i].dtype)

    def solve(grads: Tuple[Optional[Tensor], ...]) -> List[Optional[Tensor]]:
        g_leaves = [grads[j] if grads[j] is not None else torch.zeros_like(leaves[i]) for j, i in enumerate(idx)]
        like = [leaves[i] for i in idx]
        g = _pack(g_leaves, dtype)

        def fn(*xs):
            full = list(star_leaves)
            for i, t in zip(idx, xs):
                full[i] = t
            out = tree_flatten(step(tree_unflatten(full, spec), problem))[0]
            return tuple(out[i] for i in idx)

        _, vjp_fn = torch.func.vjp(fn, *[star_leaves[i] for i in idx])

        def matvec(u: Tensor) -> Tensor:  # (I − Jᵀ) u
            jt = vjp_fn(tuple(_unpack(u, like)))
            return u - _pack(jt, dtype)

        solver = mode.solver
        v, binfo = solver.solve(matvec, g)
        info.backward = binfo
        name = solver.name
        if binfo.status in (Status.DIVERGED, Status.BREAKDOWN) or not bool(torch.isfinite(v).all()):
            mode.fail(f"implicit gradient: the adjoint solve diverged ({name}, {int(binfo.iterations.max())} "
                      "iterations); falling back to the Jacobian-free gradient")
            v = g
        elif binfo.status != Status.CONVERGED:
            mode.fail(f"implicit gradient: the adjoint solve did not converge ({name}: relative residual "
                      f"{float(binfo.residual.max()):.3g} > {solver.tol:g} after {int(binfo.iterations.max())} "
                      "iterations)")
        return list(_unpack(v, like))

    outs = _ImplicitFunction.apply(solve, *[leaves[i] for i in idx])
    merged = list(leaves)
    for i, t in zip(idx, outs):
        merged[i] = t
    return tree_unflatten(merged, spec)


# ---------------------------------------------------------------------------- nesting
class NestedStep(nn.Module):
    """An :class:`Unrolled` used as one step of another (see :meth:`Unrolled.as_step`).

    ``forward(state, problem)`` runs the inner iterations from ``state`` on the same problem
    and returns their final state; the state type, estimate and residual are the inner steps'.
    Its parameters are the inner layer's (shared, not copied).
    """

    def __init__(self, unrolled: Unrolled, **call_kwargs) -> None:
        super().__init__()
        if not isinstance(unrolled, Unrolled):
            raise TypeError(f"unrolled: expected an Unrolled, got {type(unrolled).__name__}")
        bad = set(call_kwargs) - {"num_iters", "tol", "check_every", "grad_mode"}
        if bad:
            raise TypeError(f"as_step: unexpected arguments {sorted(bad)}; expected num_iters, tol, check_every, "
                            "grad_mode")
        self.unrolled = unrolled
        self.call_kwargs = call_kwargs
        self.fixed_point = unrolled.tied and getattr(unrolled.steps[0], "fixed_point", False)

    def init_state(self, x0: Tensor, problem: Problem):
        return self.unrolled.init_state(x0, problem)

    def estimate(self, state) -> Tensor:
        return self.unrolled.step_at(self.unrolled.num_iters - 1).estimate(state)

    def residual(self, new, old, problem: Problem) -> Tensor:
        return self.unrolled.step_at(self.unrolled.num_iters - 1).residual(new, old, problem)

    def forward(self, state, problem: Problem):
        return self.unrolled(problem, state0=state, **self.call_kwargs).state
