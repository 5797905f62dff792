"""LISTA (Gregor & LeCun, ICML 2010) with untied per-layer weights as in Chen et al. 2018, and
LISTA-SS: the same network with support selection (Chen et al., NeurIPS 2018)."""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

from unroll.operators import LinearOperator
from unroll.problem import Problem
from unroll.prox import soft_threshold_support_selection
from unroll.steps import State, Step
from unroll.unrolled import Unrolled

from .base import ThresholdedMatrixModel, learned_scalar
from .weights import dense_matrix

__all__ = ["LISTA", "LISTASS", "LISTAStep", "dense_matrix"]  # dense_matrix: re-exported from .weights


class LISTAStep(Step):
    """``x ← η_{θ,p}(x + γ (W₁ y + W₂ x − x))`` with ``η`` soft thresholding, with support
    selection of the largest ``p`` % when ``percent > 0``; without ``relaxation`` (``γ = 1``)
    this is LISTA's ``x ← η_{θ,p}(W₁ y + W₂ x)``.

    Args:
        w1: ``(n, m)`` initial ``W₁`` (e.g. ``Aᴴ/L``).
        w2: ``(n, n)`` initial ``W₂`` (e.g. ``I − AᴴA/L``).
        theta: initial threshold θ > 0 (see :func:`~unroll.models.base.learned_scalar`).
        percent: support selection in % (0: plain soft thresholding).
        relaxation: learn the relaxation ``γ`` (initial value 1), see :class:`LISTA`.
    """

    def __init__(self, w1: Tensor, w2: Tensor, theta: float, percent: float = 0.0,
                 relaxation: bool = True) -> None:
        super().__init__()
        self.w1 = nn.Parameter(w1.clone())
        self.w2 = nn.Parameter(w2.clone())
        self.theta = learned_scalar(theta, "theta")
        self.gamma = learned_scalar(1.0, "gamma") if relaxation else None
        self.percent = float(percent)

    def forward(self, state: State, problem: Problem) -> State:
        v = problem.y @ self.w1.mT + state.x @ self.w2.mT
        if self.gamma is not None:
            v = torch.lerp(state.x, v, self.gamma().to(v.dtype))  # x + γ (v − x)
        return State(soft_threshold_support_selection(v, self.theta(), self.percent))

    def effective_weights(self) -> "tuple[Tensor, Tensor]":
        """``(γ W₁, (1 − γ) I + γ W₂)``: the plain LISTA matrices this layer computes with."""
        if self.gamma is None:
            return self.w1, self.w2
        g = self.gamma().to(self.w2.dtype)
        eye = torch.eye(self.w2.shape[0], dtype=self.w2.dtype, device=self.w2.device)
        return g * self.w1, (1 - g) * eye + g * self.w2

    def extra_repr(self) -> str:
        return f"percent={self.percent:g}, relaxation={self.gamma is not None}"


class LISTA(ThresholdedMatrixModel):
    """Learned ISTA with free matrices per layer: ``x_{k+1} = S_{θ_k}(W₁ᵏ y + W₂ᵏ x_k)``, ``x_0 = 0``.

    Initialised at ISTA (``W₁ = Aᵀ/L``, ``W₂ = I − AᵀA/L``, ``θ = λ/L``), so the untrained
    network is ISTA with ``K`` iterations; or, with ``init="analytic"``, at ALISTA's weight
    ``W`` (:func:`~unroll.models.analytic_weight`: ``W₁ = Wᵀ``, ``W₂ = I − WᵀA``, ``θ = λ/L``),
    the matrices that the LISTA-CP analysis says training converges to (Liu et al. 2019).
    Trained from there, the network starts where ISTA-initialised training arrives only after
    long runs; the configs use it (BENCHMARKS.md compares the two).

    Relaxation (on by default): each layer also learns a scalar ``γ_k`` (initially 1) and computes
    ``η_θ(x + γ_k (W₁ y + W₂ x − x))``. That is still a LISTA layer, with matrices ``γ_k W₁`` and
    ``(1 − γ_k) I + γ_k W₂`` (:meth:`LISTAStep.effective_weights`), so the set of networks is the
    same, at one extra parameter per layer. It changes what training finds: Adam moves each entry
    of a matrix by about the learning rate, so it rescales a 500×500 matrix only slowly, while a
    layer's step size is what ALISTA's learned steps show to matter (the ablation in
    BENCHMARKS.md measures it: +1.2 dB for LISTA-CP at 16 layers).

    Args:
        num_layers: ``K``.
        operator: the ``(m, n)`` matrix or ``MatrixOperator`` (or bind later with :meth:`bind`).
        lam: λ for the initial thresholds ``θ = λ/L``.
        support_selection: pass the largest ``p_k`` % entries untouched
            (``p_k = min(p_step·k, p_max)``), as LISTA-SS; off for plain LISTA.
        p_step, p_max: the support-selection schedule in percent.
        relaxation: learn a relaxation ``γ_k`` per layer (see above); off: plain LISTA layers.
        init: ``"ista"`` or ``"analytic"`` (see above).
        ridge: ``"analytic"`` only: the weight of ``‖W‖²`` in the analytic weight's objective
            (:func:`~unroll.models.analytic_weight`), which lowers its noise gain for noisy data.
        grad_mode: gradient mode of the unrolled layers (see :mod:`unroll.autodiff`).

    Shapes: ``y`` ``(B, m)`` → ``x`` ``(B, n)``. Parameters: ``K·(n·m + n² + 2)`` (``+ 1`` per
    layer without relaxation).
    """

    def __init__(self, num_layers: int = 16, operator=None, lam: float = 0.1, support_selection: bool = False,
                 p_step: float = 1.2, p_max: float = 13.0, relaxation: bool = True,
                 init: Literal["ista", "analytic"] = "ista", ridge: float = 0.0, grad_mode: str = "full") -> None:
        super().__init__(num_layers, operator, lam, support_selection, p_step, p_max, grad_mode,
                         relaxation=relaxation, init=init, ridge=ridge)

    def _build(self, op: LinearOperator) -> None:
        a, lip, w, gamma = self._initial_weights(op)
        w1 = gamma * w.mH
        w2 = torch.eye(a.shape[1], dtype=a.dtype, device=a.device) - w1 @ a
        self.unrolled = Unrolled([LISTAStep(w1, w2, self.lam / lip, p, self.relaxation) for p in self.percents],
                                 grad_mode=self.grad_mode)


class LISTASS(LISTA):
    """LISTA-SS (Chen et al. 2018): :class:`LISTA` with support selection on by default.

    Args: as :class:`LISTA`.
    """

    def __init__(self, num_layers: int = 16, operator=None, lam: float = 0.1, support_selection: bool = True,
                 p_step: float = 1.2, p_max: float = 13.0, relaxation: bool = True,
                 init: Literal["ista", "analytic"] = "ista", ridge: float = 0.0, grad_mode: str = "full") -> None:
        super().__init__(num_layers, operator, lam, support_selection, p_step, p_max, relaxation, init, ridge,
                         grad_mode)
