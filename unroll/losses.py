"""Training losses for reconstruction models: ``loss(x_hat, target, problem) → scalar``.

Supervised losses compare to the ground truth ``target``; unsupervised ones score the
estimate on the original optimisation problem and need no ground truth
(``requires_target = False``). :func:`trajectory_loss` weights a loss over the iterates.
"""

from __future__ import annotations

from typing import List, Optional, Sequence, Union

import torch
from torch import Tensor, nn

from .problem import Problem

__all__ = ["Loss", "MSELoss", "ObjectiveLoss", "iteration_weights", "trajectory_loss", "ScaleInvariantLoss"]


class Loss(nn.Module):
    """Base class: ``forward(x_hat, target, problem) → 0-dim tensor``."""

    requires_target: bool = True

    def forward(self, x_hat: Tensor, target: Optional[Tensor], problem: Problem) -> Tensor:  # pragma: no cover
        raise NotImplementedError


class MSELoss(Loss):
    """Supervised: mean over the batch of ``‖x̂ − x‖² / N`` (``N`` entries per sample), i.e.
    ``torch.nn.functional.mse_loss`` (complex: squared modulus)."""

    def forward(self, x_hat: Tensor, target: Optional[Tensor], problem: Optional[Problem] = None) -> Tensor:
        if target is None:
            raise ValueError("target: MSELoss is supervised and needs the ground truth x, got None")
        d = x_hat - target
        return (d.abs().square() if d.is_complex() else d.square()).mean()


class ObjectiveLoss(Loss):
    """Unsupervised: the original objective ``f(x̂) + g(x̂)``, mean over the batch: ``f`` is the
    problem's smooth part (``½‖A x̂ − y‖²`` for least squares, any :class:`SmoothProblem`'s own).

    Args:
        regularizer: ``g``, a module with ``value(x) → (B,)`` (e.g. ``L1(0.1)`` or ``L0(0.1)``);
            ``None`` for the data term alone. (``‖x‖₀`` has zero gradient almost everywhere:
            with ``L0`` the gradient comes from the data term.)
    """

    requires_target = False

    def __init__(self, regularizer: Optional[nn.Module] = None) -> None:
        super().__init__()
        self.regularizer = regularizer

    def forward(self, x_hat: Tensor, target: Optional[Tensor], problem: Problem) -> Tensor:
        f = problem.smooth(x_hat)
        if self.regularizer is not None:
            f = f + self.regularizer.value(x_hat)
        return f.mean()


def iteration_weights(scheme: Union[str, Sequence[float]], num_iters: int) -> List[float]:
    """Weights over ``K`` iterates, normalised to sum to 1.

    ``"last"``: only the final estimate; ``"uniform"``: all equal; ``"linear"``: ``∝ k``;
    or an explicit sequence of ``K`` non-negative numbers.
    """
    if isinstance(scheme, str):
        if scheme == "last":
            w = [0.0] * (num_iters - 1) + [1.0]
        elif scheme == "uniform":
            w = [1.0] * num_iters
        elif scheme == "linear":
            w = [float(k + 1) for k in range(num_iters)]
        else:
            raise ValueError(f"iteration_weights: expected 'last', 'uniform', 'linear' or a list, got {scheme!r}")
    else:
        w = [float(v) for v in scheme]
        if len(w) != num_iters or any(v < 0 for v in w) or sum(w) <= 0:
            raise ValueError(f"iteration_weights: expected {num_iters} non-negative weights with a positive sum, "
                             f"got {list(scheme)!r}")
    s = sum(w)
    return [v / s for v in w]


def trajectory_loss(loss: nn.Module, trajectory: Sequence[Tensor], target: Optional[Tensor], problem: Problem,
                    weights: Sequence[float]) -> Tensor:
    """``Σ_k w_k · loss(x_k, target, problem)`` over the iterates with non-zero weight."""
    if len(weights) != len(trajectory):
        raise ValueError(f"weights: expected {len(trajectory)} values (one per iterate), got {len(weights)}")
    total = None
    for w, x_k in zip(weights, trajectory):
        if w == 0:
            continue
        term = w * loss(x_k, target, problem)
        total = term if total is None else total + term
    return total


class ScaleInvariantLoss(Loss):
    """Unsupervised loss of a learned search direction (DCDM, Kaneda et al., ICML 2023):
    ``‖b − A q (qᵀb)/(qᵀAq)‖²``, mean over the batch, with ``q = f(b)`` the network's direction.

    ``A q (qᵀb)/(qᵀAq)`` is what one exact line search along ``q`` from ``x = 0`` leaves of
    ``b``; the loss is zero when ``q ∝ A⁻¹b`` and is invariant to scaling ``q`` by any nonzero
    number (the sign too), so the network is free to choose its output's scale.

    ``forward(q, target, problem)``: ``q`` ``(B, *shape)``; ``target`` is ignored (no ground
    truth needed; ``None``); ``problem`` a :class:`~unroll.problem.QuadraticProblem` (``A`` its
    ``Q``, ``b`` its right-hand sides ``(B, *shape)``). Samples with ``qᵀAq = 0`` (``q = 0``)
    score ``‖b‖²``, the loss of no step.
    """

    requires_target = False

    def forward(self, q: Tensor, target: Optional[Tensor], problem: Problem) -> Tensor:
        from .batched import batch_dot, per_sample

        b = getattr(problem, "b", None)
        if b is None or not callable(getattr(problem, "apply", None)):
            raise TypeError(f"problem: ScaleInvariantLoss needs a QuadraticProblem (A and b), got "
                            f"{type(problem).__name__}")
        if q.shape != b.shape:
            raise ValueError(f"q: expected the shape of b {tuple(b.shape)}, got {tuple(q.shape)}")
        Aq = problem.apply(q)
        qAq = batch_dot(q, Aq).real
        ok = qAq > 0
        scale = torch.where(ok, batch_dot(q, b).real / torch.where(ok, qAq, torch.ones_like(qAq)),
                            torch.zeros_like(qAq))
        res = b - per_sample(scale, Aq) * Aq
        return batch_dot(res, res).real.mean()
