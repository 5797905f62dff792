"""Reconstruction metrics (torchmetrics-based).

``NMSE`` follows the sparse-recovery literature: ``‖x̂ − x‖² / ‖x‖²`` accumulated as a
ratio of sums over the data set (not a mean of per-sample ratios), reported in dB.
"""

from __future__ import annotations

from typing import Optional, Sequence, Union

import torch
from torch import Tensor
from torchmetrics import Metric

__all__ = ["NMSE", "nmse", "to_db"]


def to_db(ratio: Tensor) -> Tensor:
    """``10 log10(ratio)``."""
    return 10.0 * torch.log10(ratio)


def _sq(t: Tensor) -> Tensor:
    return t.abs().square() if t.is_complex() else t.square()


def nmse(x_hat: Tensor, x: Tensor, db: bool = True, reduction: str = "ratio_of_sums") -> Tensor:
    """Normalised MSE between ``x_hat`` and ``x`` (both ``(B, ...)``).

    Args:
        db: return ``10 log10`` of the ratio.
        reduction: ``"ratio_of_sums"`` (``Σ‖x̂ − x‖² / Σ‖x‖²``, a scalar) or ``"none"`` (per sample, ``(B,)``).
    """
    err = _sq(x_hat - x).flatten(1).sum(1)
    ref = _sq(x).flatten(1).sum(1)
    if reduction == "ratio_of_sums":
        ratio = err.sum() / ref.sum()
    elif reduction == "none":
        ratio = err / ref
    else:
        raise ValueError(f"reduction: expected 'ratio_of_sums' or 'none', got {reduction!r}")
    return to_db(ratio) if db else ratio


class NMSE(Metric):
    """NMSE over a data set, optionally one value per iteration.

    Args:
        num_iters: ``None`` for a single estimate; ``K`` to track a trajectory, in which case
            ``update`` takes ``preds`` as a sequence of ``K`` tensors (or a ``(K, B, ...)``
            stack) and ``compute`` returns ``(K,)``.
        db: report in dB.

    ``update(preds, target)``: ``preds`` ``(B, ...)`` (or a trajectory), ``target`` ``(B, ...)``.
    """

    is_differentiable = True
    higher_is_better = False
    full_state_update = False

    def __init__(self, num_iters: Optional[int] = None, db: bool = True, **kwargs) -> None:
        super().__init__(**kwargs)
        self.num_iters, self.db = num_iters, db
        shape = () if num_iters is None else (num_iters,)
        self.add_state("err", default=torch.zeros(shape, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("ref", default=torch.zeros(shape, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, preds: Union[Tensor, Sequence[Tensor]], target: Tensor) -> None:
        if self.num_iters is None:
            if not isinstance(preds, Tensor) or preds.shape != target.shape:
                raise ValueError(f"preds: expected a tensor of shape {tuple(target.shape)}, got "
                                 f"{tuple(preds.shape) if isinstance(preds, Tensor) else type(preds).__name__}")
            err = _sq(preds - target).sum()
        else:
            stack = preds if isinstance(preds, Tensor) else torch.stack(list(preds))
            if stack.shape[0] != self.num_iters or stack.shape[1:] != target.shape:
                raise ValueError(f"preds: expected {self.num_iters} estimates of shape {tuple(target.shape)}, got "
                                 f"{tuple(stack.shape)}")
            err = _sq(stack - target.unsqueeze(0)).flatten(1).sum(1)
        self.err += err.detach().to(torch.float64)
        self.ref += _sq(target).sum().detach().to(torch.float64)

    def compute(self) -> Tensor:
        ratio = self.err / self.ref
        return to_db(ratio) if self.db else ratio
