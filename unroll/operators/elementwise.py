"""Element-wise operators: identity and diagonal (a sampling mask is a 0/1 diagonal)."""

from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import Tensor

from .base import LinearOperator

__all__ = ["Identity", "Diagonal"]


class Identity(LinearOperator):
    """``x ↦ x``.

    Args:
        shape: per-sample shape it acts on; ``None`` (default) accepts any shape, in which
            case :meth:`lipschitz` needs an example input.
    """

    def __init__(self, shape: Optional[Sequence[int]] = None) -> None:
        super().__init__()
        self.in_shape = self.out_shape = None if shape is None else tuple(shape)

    def _forward(self, x: Tensor) -> Tensor:
        return x

    def _adjoint(self, y: Tensor) -> Tensor:
        return y

    def lipschitz(self, *args, **kwargs) -> Tensor:
        return torch.ones(())


class Diagonal(LinearOperator):
    """``x ↦ d ⊙ x`` (element-wise), e.g. a k-space sampling mask.

    Args:
        diag: the diagonal, of shape ``in_shape`` (shared by the batch) or ``(B, *in_shape)``
            (one per sample; pass ``per_sample=True``). A real diagonal acts on real and complex
            data alike; a complex one makes the operator complex.
        per_sample: whether the first dimension of ``diag`` is the batch.

    Shapes:
        ``forward`` and ``adjoint``: ``(B, *in_shape) → (B, *in_shape)``.
    """

    def __init__(self, diag: Tensor, per_sample: bool = False) -> None:
        super().__init__()
        if not isinstance(diag, Tensor):
            raise TypeError(f"diag: expected a torch.Tensor, got {type(diag).__name__}")
        if per_sample and diag.dim() < 2:
            raise ValueError(f"diag: per_sample=True needs shape (B, *in_shape), got {tuple(diag.shape)}")
        if diag.dtype == torch.bool:
            diag = diag.to(torch.get_default_dtype())
        self.register_buffer("diag", diag)
        self.per_sample = per_sample
        self.in_shape = self.out_shape = tuple(diag.shape[1:] if per_sample else diag.shape)
        self.is_complex = True if diag.is_complex() else None

    def _check(self, t: Tensor, shape, name: str, space: str) -> None:
        super()._check(t, shape, name, space)
        if self.per_sample and t.shape[0] != self.diag.shape[0]:
            raise ValueError(f"{name}: batch size {t.shape[0]} does not match the per-sample diagonal "
                             f"of batch {self.diag.shape[0]}")

    def _forward(self, x: Tensor) -> Tensor:
        return self.diag * x

    def _adjoint(self, y: Tensor) -> Tensor:
        return self.diag.conj() * y

    def lipschitz(self, *args, recompute: bool = False, **kwargs) -> Tensor:
        """``max |d|²`` (exact). Cached."""
        if recompute or not self._cached_lipschitz_valid():
            with torch.no_grad():
                self._lipschitz_cache = self.diag.detach().abs().max() ** 2
            self._lipschitz_key = self._state_key()
        return self._lipschitz_cache

    def lipschitz_batch(self, batch: int, *args, **kwargs) -> Tensor:
        """``max |d_i|²`` per sample ``(batch,)`` (exact)."""
        if not self.per_sample:
            return self.lipschitz().expand(batch)
        if batch != self.diag.shape[0]:
            raise ValueError(f"batch: the operator holds {self.diag.shape[0]} diagonals, got a batch of {batch}")
        with torch.no_grad():
            return self.diag.detach().abs().flatten(1).amax(dim=1) ** 2
