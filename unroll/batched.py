"""Per-sample reductions over a batch ``(B, ...)``: the few helpers every solver loop needs.

They accept any batch size, ``B = 0`` included, and samples of any shape (``(B,)`` too)."""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["broadcasts_to", "flat", "batch_dot", "batch_norm", "per_sample", "safe_ratio", "relative_change"]


def broadcasts_to(shape, target) -> bool:
    """Whether a tensor of ``shape`` broadcasts against ``target`` without changing it (a
    per-sample ``(B, 1, ...)`` or per-entry weight against ``x`` of shape ``target``)."""
    try:
        return tuple(torch.broadcast_shapes(tuple(shape), tuple(target))) == tuple(target)
    except RuntimeError:
        return False


def flat(t: Tensor) -> Tensor:
    """``(B, ...) → (B, N)`` with ``N`` the entries per sample (a view where possible; works for
    ``B = 0`` and for ``(B,)``, where ``N = 1``)."""
    return t.reshape(t.shape[0], math.prod(t.shape[1:]))


def batch_dot(u: Tensor, v: Tensor) -> Tensor:
    """``⟨u, v⟩ = Σ conj(u)·v`` per sample, over all but the first dim: ``(B, ...) → (B,)``."""
    return flat(u.conj() * v).sum(1) if u.is_complex() else flat(u * v).sum(1)


def batch_norm(t: Tensor) -> Tensor:
    """Euclidean norm per sample: ``(B, ...) → (B,)`` (real)."""
    return torch.linalg.vector_norm(flat(t), dim=1)


def per_sample(s: Tensor, like: Tensor) -> Tensor:
    """A ``(B,)`` tensor viewed as ``(B, 1, ..., 1)`` to broadcast against ``like``."""
    return s.view(-1, *([1] * (like.dim() - 1)))


def safe_ratio(num: Tensor, den: Tensor) -> Tensor:
    """``num / den`` per sample ``(B,)``, where ``den = 0`` a whole change: ``1`` (``0`` if
    ``num = 0`` too) instead of an overflow; NaN/Inf in ``num`` stay non-finite."""
    tiny = torch.finfo(num.dtype).tiny
    return torch.where(den > 0, num / den.clamp_min(tiny), num / num.clamp_min(tiny))


def relative_change(new: Tensor, old: Tensor) -> Tensor:
    """``‖new − old‖ / ‖old‖`` per sample ``(B,)`` (see :func:`safe_ratio` at ``old = 0``)."""
    return safe_ratio(batch_norm(new - old), batch_norm(old))
