"""Per-sample reductions over a batch ``(B, ...)``: the few helpers every solver loop needs."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["batch_dot", "batch_norm", "per_sample"]


def batch_dot(u: Tensor, v: Tensor) -> Tensor:
    """``⟨u, v⟩ = Σ conj(u)·v`` per sample, over all but the first dim: ``(B, ...) → (B,)``."""
    return (u.conj() * v).flatten(1).sum(1) if u.is_complex() else (u * v).flatten(1).sum(1)


def batch_norm(t: Tensor) -> Tensor:
    """Euclidean norm per sample: ``(B, ...) → (B,)`` (real)."""
    return torch.linalg.vector_norm(t.flatten(1), dim=1)


def per_sample(s: Tensor, like: Tensor) -> Tensor:
    """A ``(B,)`` tensor viewed as ``(B, 1, ..., 1)`` to broadcast against ``like``."""
    return s.view(-1, *([1] * (like.dim() - 1)))
