"""LISTA-CP and LISTA-CPSS (Chen, Liu, Wang & Yin, NeurIPS 2018): LISTA with the coupled
weight ``W₂ = I − W₁A``, which leaves one ``(m, n)`` matrix per layer, optionally with support
selection."""

from __future__ import annotations

from torch import Tensor, nn

from unroll.operators import LinearOperator
from unroll.parametrize import PositiveScalar
from unroll.problem import Problem
from unroll.prox import soft_threshold_support_selection
from unroll.steps import State, Step
from unroll.unrolled import Unrolled

from .base import ThresholdedMatrixModel
from .lista import dense_matrix

__all__ = ["CoupledStep", "LISTACP", "LISTACPSS"]


class CoupledStep(Step):
    """``x ← η_{θ,p}(x − Wᵀ(A x − y))``: LISTA's update with the coupling ``W₂ = I − WᵀA``.

    Args:
        weight: ``(m, n)`` initial ``W`` (e.g. ``A/L``, which gives ISTA's step).
        theta: initial threshold θ > 0 (softplus-parametrised).
        percent: support selection in % (0: plain soft thresholding).
    """

    def __init__(self, weight: Tensor, theta: float, percent: float = 0.0) -> None:
        super().__init__()
        self.weight = nn.Parameter(weight.clone())
        self.theta = PositiveScalar(theta, learnable=True, name="theta")
        self.percent = float(percent)

    def forward(self, state: State, problem: Problem) -> State:
        v = state.x - problem.residual(state.x) @ self.weight.conj()  # (B, m) @ (m, n)
        return State(soft_threshold_support_selection(v, self.theta(), self.percent))

    def extra_repr(self) -> str:
        return f"percent={self.percent:g}"


class LISTACP(ThresholdedMatrixModel):
    """LISTA-CP: ``x_{k+1} = η_{θ_k}(x_k + Wₖᵀ(y − A x_k))``, ``x_0 = 0``, one learned ``(m, n)``
    matrix ``Wₖ`` and threshold ``θₖ`` per layer.

    Initialised at ISTA (``Wₖ = A/L``, ``θₖ = λ/L``). Chen et al. prove that the coupling is
    necessary for convergence of the learned iteration, and it halves LISTA's parameters.

    Args:
        num_layers: ``K``.
        operator: the ``(m, n)`` matrix or ``MatrixOperator`` (or bind later with :meth:`bind`).
        lam: λ for the initial thresholds.
        support_selection: the largest ``p_k = min(p_step·k, p_max)`` % entries bypass the
            threshold (LISTA-CPSS); off for LISTA-CP.
        p_step, p_max: the support-selection schedule in percent.
        grad_mode: gradient mode of the unrolled layers (see :mod:`unroll.autodiff`).

    Shapes: ``y`` ``(B, m)`` → ``x`` ``(B, n)``. Parameters: ``K·(m·n + 1)``.
    """

    def __init__(self, num_layers: int = 16, operator=None, lam: float = 0.4, support_selection: bool = False,
                 p_step: float = 1.2, p_max: float = 13.0, grad_mode: str = "full") -> None:
        super().__init__(num_layers, operator, lam, support_selection, p_step, p_max, grad_mode)

    def _build(self, op: LinearOperator) -> None:
        a = dense_matrix(op, type(self).__name__).detach()
        lip = float(op.lipschitz())
        self.unrolled = Unrolled([CoupledStep(a / lip, self.lam / lip, p) for p in self.percents],
                                 grad_mode=self.grad_mode)


class LISTACPSS(LISTACP):
    """LISTA-CPSS: :class:`LISTACP` with support selection on by default.

    Args: as :class:`LISTACP`.
    """

    def __init__(self, num_layers: int = 16, operator=None, lam: float = 0.4, support_selection: bool = True,
                 p_step: float = 1.2, p_max: float = 13.0, grad_mode: str = "full") -> None:
        super().__init__(num_layers, operator, lam, support_selection, p_step, p_max, grad_mode)
