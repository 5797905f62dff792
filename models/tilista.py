"""TiLISTA (Liu, Chen, Wang & Yin, ICLR 2019): LISTA-CPSS with one matrix shared by all
layers, scaled by a learned step per layer."""

from __future__ import annotations

from typing import Literal

from torch import Tensor, nn

from unroll.operators import LinearOperator
from unroll.unrolled import Unrolled

from .alista import ALISTAStep, WeightedProblem
from .base import ThresholdedMatrixModel

__all__ = ["TiLISTA"]


class TiLISTA(ThresholdedMatrixModel):
    """Tied LISTA: ``x_{k+1} = η^{ss}_{θ_k, p_k}(x_k − γ_k Wᵀ(A x_k − y))``.

    One learned ``(m, n)`` matrix ``W`` for all layers (a model parameter, not a layer's), and
    a learned step ``γ_k`` and threshold ``θ_k`` per layer. Initialised at ISTA: ``W = A``,
    ``γ_k = 1/L``, ``θ_k = λ/L``, or with ``init="analytic"`` at ALISTA (``W`` =
    :func:`~unroll.models.analytic_weight`, ``γ_k = 1``). It is ALISTA with ``W`` learned
    instead of computed.

    Args:
        num_layers: ``K``.
        operator: the ``(m, n)`` matrix or ``MatrixOperator`` (or bind later).
        lam: λ for the initial thresholds.
        support_selection: as in the paper's TiLISTA (``p_k = min(p_step·k, p_max)`` %), or off.
        p_step, p_max: the support-selection schedule in percent.
        init: ``"ista"`` or ``"analytic"`` (see above).
        ridge: ``"analytic"`` only: the weight of ``‖W‖²`` in the analytic weight's objective
            (:func:`~unroll.models.analytic_weight`), which lowers its noise gain for noisy data.
        grad_mode: gradient mode of the unrolled layers (see :mod:`unroll.autodiff`).

    Shapes: ``y`` ``(B, m)`` → ``x`` ``(B, n)``. Parameters: ``m·n + 2K``.
    """

    def __init__(self, num_layers: int = 16, operator=None, lam: float = 0.4, support_selection: bool = True,
                 p_step: float = 1.2, p_max: float = 13.0, init: Literal["ista", "analytic"] = "ista",
                 ridge: float = 0.0, grad_mode: str = "full") -> None:
        super().__init__(num_layers, operator, lam, support_selection, p_step, p_max, grad_mode, init=init,
                         ridge=ridge)

    def _build(self, op: LinearOperator) -> None:
        _, lip, w, gamma = self._initial_weights(op)
        self.weight = nn.Parameter(w.clone())
        self.unrolled = Unrolled([ALISTAStep(gamma, self.lam / lip, p) for p in self.percents],
                                 grad_mode=self.grad_mode)

    def problem(self, y: Tensor, op: LinearOperator) -> WeightedProblem:
        return WeightedProblem.create(op, y, check=False, weight=self.weight)
