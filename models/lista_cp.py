"""LISTA-CP and LISTA-CPSS (Chen, Liu, Wang & Yin, NeurIPS 2018): LISTA with the coupled
weight ``W₂ = I − W₁A``, which leaves one ``(m, n)`` matrix per layer, optionally with support
selection."""

from __future__ import annotations

from typing import Literal

from torch import Tensor, nn

from unroll.operators import LinearOperator
from unroll.problem import Problem
from unroll.prox import soft_threshold_support_selection
from unroll.steps import State, Step
from unroll.unrolled import Unrolled

from .base import ThresholdedMatrixModel, learned_scalar

__all__ = ["CoupledStep", "LISTACP", "LISTACPSS"]


class CoupledStep(Step):
    """``x ← η_{θ,p}(x − γ Wᵀ(A x − y))``: LISTA's update with the coupling ``W₂ = I − γWᵀA``;
    without ``relaxation``, ``γ = 1``.

    Args:
        weight: ``(m, n)`` initial ``W`` (e.g. ``A/L``, which gives ISTA's step).
        theta: initial threshold θ > 0 (see :func:`~unroll.models.base.learned_scalar`).
        percent: support selection in % (0: plain soft thresholding).
        relaxation: learn the step ``γ`` (initial value 1), see :class:`LISTACP`.
    """

    def __init__(self, weight: Tensor, theta: float, percent: float = 0.0, relaxation: bool = True) -> None:
        super().__init__()
        self.weight = nn.Parameter(weight.clone())
        self.theta = learned_scalar(theta, "theta")
        self.gamma = learned_scalar(1.0, "gamma") if relaxation else None
        self.percent = float(percent)

    def forward(self, state: State, problem: Problem) -> State:
        g = problem.residual(state.x) @ self.weight.conj()  # (B, m) @ (m, n)
        v = state.x - g if self.gamma is None else state.x - self.gamma() * g
        return State(soft_threshold_support_selection(v, self.theta(), self.percent))

    def effective_weight(self) -> Tensor:
        """``γ W`` ``(m, n)``: the plain LISTA-CP matrix this layer computes with."""
        return self.weight if self.gamma is None else self.gamma().to(self.weight.dtype) * self.weight

    def extra_repr(self) -> str:
        return f"percent={self.percent:g}, relaxation={self.gamma is not None}"


class LISTACP(ThresholdedMatrixModel):
    """LISTA-CP: ``x_{k+1} = η_{θ_k}(x_k + Wₖᵀ(y − A x_k))``, ``x_0 = 0``, one learned ``(m, n)``
    matrix ``Wₖ`` and threshold ``θₖ`` per layer.

    Initialised at ISTA (``Wₖ = A/L``, ``θₖ = λ/L``), or with ``init="analytic"`` at ALISTA's
    weight (``Wₖ`` = :func:`~unroll.models.analytic_weight`, ``θₖ = λ/L``; see
    :class:`~unroll.models.LISTA`). Chen et al. prove that the coupling is
    necessary for convergence of the learned iteration, and it halves LISTA's parameters.

    Relaxation (on by default): each layer also learns a step ``γ_k`` (initially 1) and uses
    ``γ_k Wₖ`` (:meth:`CoupledStep.effective_weight`): the same set of networks at one extra
    parameter per layer, which Adam trains far better than the scale of a 250×500 matrix (see
    :class:`~unroll.models.LISTA`); off: the papers' plain layers.

    Args:
        num_layers: ``K``.
        operator: the ``(m, n)`` matrix or ``MatrixOperator`` (or bind later with :meth:`bind`).
        lam: λ for the initial thresholds.
        support_selection: the largest ``p_k = min(p_step·k, p_max)`` % entries bypass the
            threshold (LISTA-CPSS); off for LISTA-CP.
        p_step, p_max: the support-selection schedule in percent.
        relaxation: learn a step ``γ_k`` per layer (see above); off: plain LISTA-CP layers.
        init: ``"ista"`` or ``"analytic"`` (see above).
        ridge: ``"analytic"`` only: the weight of ``‖W‖²`` in the analytic weight's objective
            (:func:`~unroll.models.analytic_weight`), which lowers its noise gain for noisy data.
        grad_mode: gradient mode of the unrolled layers (see :mod:`unroll.autodiff`).

    Shapes: ``y`` ``(B, m)`` → ``x`` ``(B, n)``. Parameters: ``K·(m·n + 2)`` (``+ 1`` per layer
    without relaxation).
    """

    def __init__(self, num_layers: int = 16, operator=None, lam: float = 0.4, support_selection: bool = False,
                 p_step: float = 1.2, p_max: float = 13.0, relaxation: bool = True,
                 init: Literal["ista", "analytic"] = "ista", ridge: float = 0.0, grad_mode: str = "full") -> None:
        super().__init__(num_layers, operator, lam, support_selection, p_step, p_max, grad_mode,
                         relaxation=relaxation, init=init, ridge=ridge)

    def _build(self, op: LinearOperator) -> None:
        _, lip, w, gamma = self._initial_weights(op)
        self.unrolled = Unrolled([CoupledStep(gamma * w, self.lam / lip, p, self.relaxation) for p in self.percents],
                                 grad_mode=self.grad_mode)


class LISTACPSS(LISTACP):
    """LISTA-CPSS: :class:`LISTACP` with support selection on by default.

    Args: as :class:`LISTACP`.
    """

    def __init__(self, num_layers: int = 16, operator=None, lam: float = 0.4, support_selection: bool = True,
                 p_step: float = 1.2, p_max: float = 13.0, relaxation: bool = True,
                 init: Literal["ista", "analytic"] = "ista", ridge: float = 0.0, grad_mode: str = "full") -> None:
        super().__init__(num_layers, operator, lam, support_selection, p_step, p_max, relaxation, init, ridge,
                         grad_mode)
