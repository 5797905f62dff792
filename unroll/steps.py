"""One iteration as a module: ``step(state, problem) → state``.

A state is a small ``NamedTuple`` of batched tensors (every field has the batch on dim 0),
so it is a pytree that ``torch.func`` transforms and ``torch.compile`` take as it is. Each
step class says which state it carries through :meth:`Step.init_state`.

Step sizes are given in units of ``1/L`` (``L = ‖A‖₂²``, from the problem), so the same
``step=1.0`` is right for every operator scale; learnable ones are positive by construction
(:class:`~unroll.parametrize.PositiveScalar`).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn

from .batched import per_sample
from .parametrize import PositiveScalar
from .problem import Problem

__all__ = ["State", "MomentumState", "Step", "GradientStep", "ProxGradStep", "FISTAStep"]


class State(NamedTuple):
    """The plain iterate. ``x``: ``(B, *in_shape)``."""

    x: Tensor


class MomentumState(NamedTuple):
    """FISTA's state. ``x``: iterate ``(B, *in_shape)``; ``z``: extrapolated point, same
    shape; ``t``: momentum sequence ``(B,)``."""

    x: Tensor
    z: Tensor
    t: Tensor


class Step(nn.Module):
    """Base class of iterations. Subclasses implement ``forward(state, problem)``."""

    def init_state(self, x0: Tensor, problem: Problem):
        """The state at ``x0`` ``(B, *in_shape)``; default :class:`State`."""
        return State(x0)

    def step_size(self, problem: Problem) -> Tensor:
        """The step ``α = step / L`` (0-dim tensor)."""
        return self.step() / problem.lipschitz


def _step_param(step: float, learn_step: bool) -> PositiveScalar:
    return PositiveScalar(step, learnable=learn_step, name="step")


class GradientStep(Step):
    """``x ← x − α ∇f(x)`` with ``f = ½‖Ax − y‖²`` and ``α = step / L``.

    Args:
        step: step size in units of ``1/L`` (``< 2`` for convergence).
        learn_step: learn it (positive by softplus).
    """

    def __init__(self, step: float = 1.0, learn_step: bool = False) -> None:
        super().__init__()
        self.step = _step_param(step, learn_step)

    def forward(self, state: State, problem: Problem) -> State:
        return State(state.x - self.step_size(problem) * problem.grad(state.x))


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
        alpha = self.step_size(problem)
        return State(self.prox.prox(state.x - alpha * problem.grad(state.x), alpha))


class FISTAStep(ProxGradStep):
    """FISTA (Beck & Teboulle 2009): a proximal-gradient step at the extrapolated point ``z``,
    then Nesterov momentum.

    ``x⁺ = prox_{αg}(z − α∇f(z))``, ``t⁺ = (1 + √(1 + 4t²)) / 2``,
    ``z⁺ = x⁺ + ((t − 1)/t⁺)(x⁺ − x)``.

    Args: as :class:`ProxGradStep`.
    """

    def init_state(self, x0: Tensor, problem: Problem) -> MomentumState:
        t0 = torch.ones(x0.shape[0], dtype=x0.real.dtype, device=x0.device)
        return MomentumState(x0, x0, t0)

    def forward(self, state: MomentumState, problem: Problem) -> MomentumState:
        x_new = super().forward(State(state.z), problem).x
        t_new = 0.5 * (1.0 + torch.sqrt(1.0 + 4.0 * state.t * state.t))
        beta = per_sample((state.t - 1.0) / t_new, x_new)
        return MomentumState(x_new, x_new + beta * (x_new - state.x), t_new)
