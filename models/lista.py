"""LISTA (Gregor & LeCun, ICML 2010), with untied per-layer weights as in Chen et al. 2018."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from unroll.operators import LinearOperator, MatrixOperator
from unroll.parametrize import PositiveScalar
from unroll.problem import Problem
from unroll.prox import soft_threshold
from unroll.steps import State, Step
from unroll.unrolled import Unrolled

from .base import UnrolledModel

__all__ = ["LISTA", "LISTAStep", "dense_matrix"]


def dense_matrix(op: LinearOperator, model: str) -> Tensor:
    """The dense ``(m, n)`` matrix of a :class:`MatrixOperator` (models that need ``A`` itself)."""
    if not isinstance(op, MatrixOperator) or op.batched:
        raise TypeError(f"A: {model} needs a single (m, n) matrix (a MatrixOperator or a 2-D tensor), "
                        f"got {type(op).__name__}")
    return op.dense()


class LISTAStep(Step):
    """``x ← S_θ(W₁ y + W₂ x)``.

    Args:
        w1: ``(n, m)`` initial ``W₁`` (e.g. ``Aᴴ/L``).
        w2: ``(n, n)`` initial ``W₂`` (e.g. ``I − AᴴA/L``).
        theta: initial threshold θ > 0 (softplus-parametrised).
    """

    def __init__(self, w1: Tensor, w2: Tensor, theta: float) -> None:
        super().__init__()
        self.w1 = nn.Parameter(w1.clone())
        self.w2 = nn.Parameter(w2.clone())
        self.theta = PositiveScalar(theta, learnable=True, name="theta")

    def forward(self, state: State, problem: Problem) -> State:
        return State(soft_threshold(problem.y @ self.w1.mT + state.x @ self.w2.mT, self.theta()))


class LISTA(UnrolledModel):
    """Learned ISTA with free matrices per layer: ``x_{k+1} = S_{θ_k}(W₁ᵏ y + W₂ᵏ x_k)``, ``x_0 = 0``.

    Initialised at ISTA (``W₁ = Aᵀ/L``, ``W₂ = I − AᵀA/L``, ``θ = λ/L``), so the untrained
    network is ISTA with ``K`` iterations.

    Args:
        num_layers: ``K``.
        operator: the ``(m, n)`` matrix or ``MatrixOperator`` (or bind later with :meth:`bind`).
        lam: λ for the initial thresholds.
        grad_mode: gradient mode of the unrolled layers (see :mod:`unroll.autodiff`).

    Shapes: ``y`` ``(B, m)`` → ``x`` ``(B, n)``. Parameters: ``K·(n·m + n² + 1)``.
    """

    needs_operator = True

    def __init__(self, num_layers: int = 16, operator=None, lam: float = 0.1, grad_mode: str = "full") -> None:
        super().__init__(num_layers, grad_mode)
        self.lam = lam
        if operator is not None:
            self.bind(operator)

    def _build(self, op: LinearOperator) -> None:
        a = dense_matrix(op, "LISTA").detach()
        lip = float(op.lipschitz())
        w1 = a.mH / lip
        w2 = torch.eye(a.shape[1], dtype=a.dtype, device=a.device) - a.mH @ a / lip
        self.unrolled = Unrolled([LISTAStep(w1, w2, self.lam / lip) for _ in range(self.num_layers)],
                                 grad_mode=self.grad_mode)
