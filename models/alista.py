"""ALISTA (Liu, Chen, Wang & Yin, ICLR 2019): analytic weight, learned step sizes and thresholds,
with support selection."""

from __future__ import annotations

from dataclasses import dataclass
from torch import Tensor

from unroll.operators import LinearOperator
from unroll.problem import LeastSquares
from unroll.prox import soft_threshold_support_selection
from unroll.steps import State, Step
from unroll.unrolled import Unrolled

from .base import UnrolledModel, learned_scalar, support_selection_schedule
from .weights import analytic_weight, check_ridge, dense_matrix

__all__ = ["ALISTA", "ALISTAStep", "analytic_weight", "support_selection_schedule"]


@dataclass(frozen=True)
class WeightedProblem(LeastSquares):
    """A :class:`~unroll.problem.LeastSquares` problem that also carries ALISTA's weight ``W`` ``(m, n)``."""

    weight: Tensor = None  # type: ignore[assignment]


class ALISTAStep(Step):
    """``x ← η^{ss}_{θ, p}(x − γ Wᵀ(A x − y))``: a step along the analytic weight, then
    soft thresholding with support selection (the largest ``p`` % pass untouched).

    Args:
        gamma: initial step γ > 0; theta: initial threshold θ > 0 (both learned, see
            :func:`~unroll.models.base.learned_scalar`); percent: ``p`` in %.
    """

    def __init__(self, gamma: float, theta: float, percent: float) -> None:
        super().__init__()
        self.gamma = learned_scalar(gamma, "gamma")
        self.theta = learned_scalar(theta, "theta")
        self.percent = float(percent)

    def forward(self, state: State, problem: WeightedProblem) -> State:
        r = problem.residual(state.x)
        v = state.x - self.gamma() * (r @ problem.weight.conj())
        return State(soft_threshold_support_selection(v, self.theta(), self.percent))

    def extra_repr(self) -> str:
        return f"percent={self.percent:g}"


class ALISTA(UnrolledModel):
    """ALISTA: ``x_{k+1} = η^{ss}_{θ_k, p_k}(x_k − γ_k Wᵀ(A x_k − y))`` with ``W`` =
    :func:`analytic_weight` of ``A``, computed once at binding and kept as a buffer (saved
    with the checkpoint). Only ``2K`` scalars are learned.

    Args:
        num_layers: ``K``.
        operator: the ``(m, n)`` matrix or ``MatrixOperator`` (or bind later).
        gamma: initial step sizes; theta: initial thresholds.
        support_selection: use it (``p_k = min(p_step·k, p_max)`` %) or plain soft thresholding.
        p_step, p_max: the support-selection schedule in percent.
        ridge: the weight of ``‖W‖²`` in the analytic weight's objective (0: ALISTA's ``W``;
            see :func:`analytic_weight`), which lowers its noise gain for noisy data.
        grad_mode: gradient mode of the unrolled layers (see :mod:`unroll.autodiff`).

    Shapes: ``y`` ``(B, m)`` → ``x`` ``(B, n)``.

    Raises:
        ValueError: at binding, when ``A`` has zero columns or is rank-deficient (the analytic
            weight does not exist; the error names the columns).
    """

    needs_operator = True

    def __init__(self, num_layers: int = 16, operator=None, gamma: float = 1.0, theta: float = 0.4,
                 support_selection: bool = True, p_step: float = 1.2, p_max: float = 13.0,
                 ridge: float = 0.0, grad_mode: str = "full") -> None:
        super().__init__(num_layers, grad_mode)
        self.gamma, self.theta = gamma, theta
        self.ridge = check_ridge(ridge)
        self.percents = support_selection_schedule(num_layers, p_step, p_max, support_selection)
        if operator is not None:
            self.bind(operator)

    def _build(self, op: LinearOperator) -> None:
        self.register_buffer("weight", analytic_weight(dense_matrix(op, "ALISTA"), self.ridge))
        self.unrolled = Unrolled([ALISTAStep(self.gamma, self.theta, p) for p in self.percents],
                                 grad_mode=self.grad_mode)

    def problem(self, y: Tensor, op: LinearOperator) -> WeightedProblem:
        return WeightedProblem.create(op, y, check=False, weight=self.weight)
