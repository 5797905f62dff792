"""One iteration as a module: ``step(state, problem) → state``.

A state is a small ``NamedTuple`` of batched tensors (every field has the batch on dim 0; a
field may itself be such a ``NamedTuple``), so it is a pytree that ``torch.func`` transforms and
``torch.compile`` take as it is. Each step class says which state it carries
(:meth:`Step.init_state`), where its estimate is (:meth:`Step.estimate`, the field ``x`` by
default) and how its convergence is measured (:meth:`Step.residual`: the relative change of the
estimate by default, ``‖r‖/‖b‖`` for Krylov steps, the fixed-point residual for ADMM).

Step sizes of gradient steps are given in units of ``1/L`` (``L``, the problem's per-sample
Lipschitz constant), so the same ``step=1.0`` is right for every operator scale; learnable ones
are positive by construction (:class:`~unroll.parametrize.PositiveScalar`).
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import torch
from torch import Tensor, nn

from .batched import batch_dot, batch_norm, per_sample, relative_change, safe_ratio
from .linalg import cg
from .parametrize import PositiveScalar
from .problem import LeastSquares, Problem, QuadraticProblem

__all__ = ["State", "MomentumState", "CGState", "ADMMState", "Step", "GradientStep", "ProxGradStep", "FISTAStep",
           "CGStep", "ADMMStep", "Chain"]


class State(NamedTuple):
    """The plain iterate. ``x``: ``(B, *shape)``."""

    x: Tensor


class MomentumState(NamedTuple):
    """FISTA's state. ``x``: iterate ``(B, *shape)``; ``z``: extrapolated point, same
    shape; ``t``: momentum sequence ``(B,)``."""

    x: Tensor
    z: Tensor
    t: Tensor


class CGState(NamedTuple):
    """Conjugate gradient's state: iterate ``x``, residual ``r = b − Qx``, direction ``p``
    (all ``(B, *shape)``) and ``rr = ⟨r, r⟩`` ``(B,)``."""

    x: Tensor
    r: Tensor
    p: Tensor
    rr: Tensor


class ADMMState(NamedTuple):
    """ADMM's state for ``f(x) + g(z)`` s.t. ``x = z``: ``x``, ``z`` and the scaled dual ``u``,
    all ``(B, *shape)``."""

    x: Tensor
    z: Tensor
    u: Tensor


class Step(nn.Module):
    """Base class of iterations. Subclasses implement ``forward(state, problem) → state``.

    Attributes:
        fixed_point: whether ``state ↦ step(state, problem)`` is a fixed-point map whose fixed
            point is the solution (what the ``implicit`` and ``jfb`` gradient modes
            differentiate). ``False`` for FISTA (its momentum sequence grows without bound) and
            CG (its direction is not a function of the solution).
    """

    fixed_point: bool = True

    def init_state(self, x0: Tensor, problem: Problem):
        """The state at ``x0`` ``(B, *shape)``; default :class:`State`."""
        return State(x0)

    def estimate(self, state) -> Tensor:
        """The estimate a state holds, ``(B, *shape)``: its field ``x`` by default."""
        return state.x

    def residual(self, new, old, problem: Problem) -> Tensor:
        """How far from convergence, per sample ``(B,)``: by default the relative change of the
        estimate ``‖x_new − x_old‖ / ‖x_old‖`` (``1`` from ``x_old = 0``; NaN/Inf stay
        non-finite, so divergence shows)."""
        return relative_change(self.estimate(new), self.estimate(old))

    def step_size(self, problem: Problem, x: Optional[Tensor] = None) -> Tensor:
        """``α = step / L``, broadcastable against ``x`` (0-dim for a shared operator,
        ``(B, 1, …)`` for per-sample constants; ``(B,)`` without ``x``)."""
        return self.step() / problem.lipschitz_for(x)


def _step_param(step: float, learn_step: bool) -> PositiveScalar:
    return PositiveScalar(step, learnable=learn_step, name="step")


class GradientStep(Step):
    """``x ← x − α ∇f(x)`` with ``α = step / L`` (any problem with a gradient: least squares,
    :class:`~unroll.problem.SmoothProblem`, quadratics).

    Args:
        step: step size in units of ``1/L`` (``< 2`` for convergence).
        learn_step: learn it (positive by softplus).
    """

    def __init__(self, step: float = 1.0, learn_step: bool = False) -> None:
        super().__init__()
        self.step = _step_param(step, learn_step)

    def forward(self, state: State, problem: Problem) -> State:
        return State(state.x - self.step_size(problem, state.x) * problem.grad(state.x))


class ProxGradStep(Step):
    """Proximal gradient: ``x ← prox_{α g}(x − α ∇f(x))``, ``α = step / L``.

    With ``prox=L1(λ)`` this is ISTA, with ``L0(λ)`` IHT, with an indicator (``Box``,
    ``Simplex``, ``L2Ball``, …) projected gradient; any module with ``prox(x, step)`` works,
    learned ones included.

    Args:
        prox: the regulariser whose prox is applied.
        step: step size in units of ``1/L``.
        learn_step: learn it (positive by softplus).
    """

    def __init__(self, prox: nn.Module, step: float = 1.0, learn_step: bool = False) -> None:
        super().__init__()
        if not callable(getattr(prox, "prox", None)):
            raise TypeError(f"prox: expected a module with a prox(x, step) method, got {type(prox).__name__}")
        self.prox = prox
        self.step = _step_param(step, learn_step)

    def forward(self, state: State, problem: Problem) -> State:
        alpha = self.step_size(problem, state.x)
        return State(self.prox.prox(state.x - alpha * problem.grad(state.x), alpha))


class FISTAStep(ProxGradStep):
    """FISTA (Beck & Teboulle 2009): a proximal-gradient step at the extrapolated point ``z``,
    then Nesterov momentum.

    ``x⁺ = prox_{αg}(z − α∇f(z))``, ``t⁺ = (1 + √(1 + 4t²)) / 2``,
    ``z⁺ = x⁺ + ((t − 1)/t⁺)(x⁺ − x)``.

    Args: as :class:`ProxGradStep`.
    """

    fixed_point = False  # t grows without bound: not a fixed-point map of (x, z, t)

    def init_state(self, x0: Tensor, problem: Problem) -> MomentumState:
        t0 = torch.ones(x0.shape[0], dtype=x0.real.dtype, device=x0.device)
        return MomentumState(x0, x0, t0)

    def forward(self, state: MomentumState, problem: Problem) -> MomentumState:
        x_new = super().forward(State(state.z), problem).x
        t_new = 0.5 * (1.0 + torch.sqrt(1.0 + 4.0 * state.t * state.t))
        beta = per_sample((state.t - 1.0) / t_new, x_new)
        return MomentumState(x_new, x_new + beta * (x_new - state.x), t_new)


class CGStep(Step):
    """One conjugate-gradient iteration on a :class:`~unroll.problem.QuadraticProblem`
    ``½⟨x, Qx⟩ − ⟨b, x⟩`` (Hestenes & Stiefel 1952), as a layer: exact line search along ``p``,
    then ``p ← r + β p``. Its residual is ``‖r‖/‖b‖`` (Krylov), so ``Unrolled(CGStep(), K,
    tol=...)`` stops each sample at a relative residual. A sample whose ``r`` is exactly zero
    stays put. (For an inner solve differentiated by one adjoint solve instead of through its
    iterations, use :func:`unroll.cg`.)
    """

    fixed_point = False

    def init_state(self, x0: Tensor, problem: QuadraticProblem) -> CGState:
        r = problem.residual(x0)
        return CGState(x0, r, r, batch_dot(r, r).real)

    def forward(self, state: CGState, problem: QuadraticProblem) -> CGState:
        qp = problem.apply(state.p)
        pqp = batch_dot(state.p, qp).real
        ok = pqp > 0
        alpha = torch.where(ok, state.rr / torch.where(ok, pqp, torch.ones_like(pqp)), torch.zeros_like(pqp))
        a = per_sample(alpha, state.x)
        x = state.x + a * state.p
        r = state.r - a * qp
        rr = batch_dot(r, r).real
        nz = state.rr > 0
        beta = torch.where(nz, rr / torch.where(nz, state.rr, torch.ones_like(rr)), torch.zeros_like(rr))
        return CGState(x, r, r + per_sample(beta, r) * state.p, rr)

    def residual(self, new: CGState, old: CGState, problem: QuadraticProblem) -> Tensor:
        """``‖r‖ / ‖b‖`` per sample (``‖r‖`` where ``b = 0``)."""
        bn = batch_norm(problem.b)
        return new.rr.clamp_min(0).sqrt() / torch.where(bn > 0, bn, torch.ones_like(bn))


class ADMMStep(Step):
    """ADMM (Boyd et al. 2011, scaled form) for ``½‖Ax − y‖² + g(z)`` subject to ``x = z``:

    ``x ← (AᴴA + ρI)⁻¹(Aᴴy + ρ(z − u))`` (by :func:`unroll.cg`, differentiable through one
    adjoint solve), ``z ← prox_{g/ρ}(x + u)``, ``u ← u + x − z``.

    The state is :class:`ADMMState` ``(x, z, u)``; the estimate is ``z`` (feasible for ``g``);
    the residual is the fixed-point residual ``‖s_new − s_old‖ / ‖s_old‖`` over all three fields,
    which is zero exactly at a solution. ``implicit``/``jfb`` differentiate its fixed point.

    Args:
        prox: the regulariser ``g`` (any module with ``prox(x, step)``).
        rho: the penalty ``ρ > 0``, in units of ``L = ‖A‖²`` (so ``rho=1`` suits every scale).
        learn_rho: learn it (positive by softplus).
        cg_tol, cg_max_iter: tolerance and budget of the inner solve.
    """

    def __init__(self, prox: nn.Module, rho: float = 1.0, learn_rho: bool = False, cg_tol: float = 1e-10,
                 cg_max_iter: int = 200) -> None:
        super().__init__()
        if not callable(getattr(prox, "prox", None)):
            raise TypeError(f"prox: expected a module with a prox(x, step) method, got {type(prox).__name__}")
        self.prox = prox
        self.rho = PositiveScalar(rho, learnable=learn_rho, name="rho")
        self.cg_tol, self.cg_max_iter = float(cg_tol), int(cg_max_iter)

    def init_state(self, x0: Tensor, problem: LeastSquares) -> ADMMState:
        return ADMMState(x0, x0, torch.zeros_like(x0))

    def estimate(self, state: ADMMState) -> Tensor:
        return state.z

    def forward(self, state: ADMMState, problem: LeastSquares) -> ADMMState:
        rho = self.rho() * problem.lipschitz_for(state.x)
        rhs = problem.op._adjoint(problem.y) + rho * (state.z - state.u)
        x, _ = cg(lambda v: problem.op.normal(v) + rho * v, rhs, x0=state.x.detach(), tol=self.cg_tol,
                  max_iter=self.cg_max_iter, check_every=0 if torch.compiler.is_compiling() else 5,
                  params=[t for t in (rho,) if t.requires_grad])
        z = self.prox.prox(x + state.u, 1.0 / rho)
        return ADMMState(x, z, state.u + x - z)

    def residual(self, new: ADMMState, old: ADMMState, problem: LeastSquares) -> Tensor:
        num = sum(batch_norm(n - o).square() for n, o in zip(new, old)).sqrt()
        den = sum(batch_norm(o).square() for o in old).sqrt()
        return safe_ratio(num, den)


class Chain(Step):
    """Several steps applied in order as one iteration (e.g. a gradient step then a learned
    denoiser, or a cascade of blocks). The state is the first step's; every step must take and
    return it. Its residual and estimate are the last step's.

    Args:
        steps: the step modules (an ``Unrolled`` built with ``as_step()`` is a step too).
    """

    def __init__(self, *steps: nn.Module) -> None:
        super().__init__()
        if len(steps) == 1 and isinstance(steps[0], (list, tuple)):
            steps = tuple(steps[0])
        if not steps:
            raise ValueError("steps: expected at least one step module, got none")
        for i, s in enumerate(steps):
            if not isinstance(s, nn.Module) or not callable(getattr(s, "init_state", None)):
                raise TypeError(f"steps[{i}]: expected a Step module (forward(state, problem), init_state), "
                                f"got {type(s).__name__}")
        self.steps = nn.ModuleList(steps)
        self.fixed_point = all(getattr(s, "fixed_point", False) for s in steps)

    def init_state(self, x0: Tensor, problem: Problem):
        return self.steps[0].init_state(x0, problem)

    def estimate(self, state) -> Tensor:
        return self.steps[-1].estimate(state)

    def residual(self, new, old, problem: Problem) -> Tensor:
        return self.steps[-1].residual(new, old, problem)

    def forward(self, state, problem: Problem):
        for s in self.steps:
            state = s(state, problem)
        return state
