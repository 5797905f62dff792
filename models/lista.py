"""LISTA (Gregor & LeCun, ICML 2010) with untied per-layer weights as in Chen et al. 2018, and
LISTA-SS: the same network with support selection (Chen et al., NeurIPS 2018)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from unroll.operators import LinearOperator, MatrixOperator
from unroll.parametrize import PositiveScalar
from unroll.problem import Problem
from unroll.prox import soft_threshold_support_selection
from unroll.steps import State, Step
from unroll.unrolled import Unrolled

from .base import ThresholdedMatrixModel

__all__ = ["LISTA", "LISTASS", "LISTAStep", "dense_matrix"]


def dense_matrix(op: LinearOperator, model: str) -> Tensor:
    """The dense ``(m, n)`` matrix of a :class:`MatrixOperator` (models that need ``A`` itself)."""
    if not isinstance(op, MatrixOperator) or op.batched:
        raise TypeError(f"A: {model} needs a single (m, n) matrix (a MatrixOperator or a 2-D tensor), "
                        f"got {type(op).__name__}")
    return op.dense()


class LISTAStep(Step):
    """``x ← η_{θ,p}(W₁ y + W₂ x)`` with ``η`` soft thresholding, with support selection of the
    largest ``p`` % when ``percent > 0``.

    Args:
        w1: ``(n, m)`` initial ``W₁`` (e.g. ``Aᴴ/L``).
        w2: ``(n, n)`` initial ``W₂`` (e.g. ``I − AᴴA/L``).
        theta: initial threshold θ > 0 (softplus-parametrised).
        percent: support selection in % (0: plain soft thresholding).
    """

    def __init__(self, w1: Tensor, w2: Tensor, theta: float, percent: float = 0.0) -> None:
        super().__init__()
        self.w1 = nn.Parameter(w1.clone())
        self.w2 = nn.Parameter(w2.clone())
        self.theta = PositiveScalar(theta, learnable=True, name="theta")
        self.percent = float(percent)

    def forward(self, state: State, problem: Problem) -> State:
        v = problem.y @ self.w1.mT + state.x @ self.w2.mT
        return State(soft_threshold_support_selection(v, self.theta(), self.percent))

    def extra_repr(self) -> str:
        return f"percent={self.percent:g}"


class LISTA(ThresholdedMatrixModel):
    """Learned ISTA with free matrices per layer: ``x_{k+1} = S_{θ_k}(W₁ᵏ y + W₂ᵏ x_k)``, ``x_0 = 0``.

    Initialised at ISTA (``W₁ = Aᵀ/L``, ``W₂ = I − AᵀA/L``, ``θ = λ/L``), so the untrained
    network is ISTA with ``K`` iterations.

    Args:
        num_layers: ``K``.
        operator: the ``(m, n)`` matrix or ``MatrixOperator`` (or bind later with :meth:`bind`).
        lam: λ for the initial thresholds ``θ = λ/L``.
        support_selection: pass the largest ``p_k`` % entries untouched
            (``p_k = min(p_step·k, p_max)``), as LISTA-SS; off for plain LISTA.
        p_step, p_max: the support-selection schedule in percent.
        grad_mode: gradient mode of the unrolled layers (see :mod:`unroll.autodiff`).

    Shapes: ``y`` ``(B, m)`` → ``x`` ``(B, n)``. Parameters: ``K·(n·m + n² + 1)``.
    """

    def __init__(self, num_layers: int = 16, operator=None, lam: float = 0.1, support_selection: bool = False,
                 p_step: float = 1.2, p_max: float = 13.0, grad_mode: str = "full") -> None:
        super().__init__(num_layers, operator, lam, support_selection, p_step, p_max, grad_mode)

    def _build(self, op: LinearOperator) -> None:
        a = dense_matrix(op, "LISTA").detach()
        lip = float(op.lipschitz())
        w1 = a.mH / lip
        w2 = torch.eye(a.shape[1], dtype=a.dtype, device=a.device) - a.mH @ a / lip
        self.unrolled = Unrolled([LISTAStep(w1, w2, self.lam / lip, p) for p in self.percents],
                                 grad_mode=self.grad_mode)


class LISTASS(LISTA):
    """LISTA-SS (Chen et al. 2018): :class:`LISTA` with support selection on by default.

    Args: as :class:`LISTA`.
    """

    def __init__(self, num_layers: int = 16, operator=None, lam: float = 0.1, support_selection: bool = True,
                 p_step: float = 1.2, p_max: float = 13.0, grad_mode: str = "full") -> None:
        super().__init__(num_layers, operator, lam, support_selection, p_step, p_max, grad_mode)
