"""The sample type every ``unroll.data`` dataloader yields."""

from __future__ import annotations

from typing import NamedTuple

from torch import Tensor

__all__ = ["Batch"]


class Batch(NamedTuple):
    """A batch of measurements and the signals they came from.

    Attributes:
        y: measurements ``A x (+ noise)``, shape ``(B, m)`` (a single sample from a
            map-style dataset has shape ``(m,)``; the default collate stacks them).
        x: ground-truth signals, shape ``(B, n)`` (``(n,)`` for a single sample).

    Being a ``NamedTuple``, it survives ``torch.utils.data.default_collate`` and
    Lightning's device transfer unchanged, and unpacks as ``y, x = batch``.
    """

    y: Tensor
    x: Tensor
