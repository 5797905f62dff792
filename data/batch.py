"""The sample type every ``unroll.data`` dataloader yields."""

from __future__ import annotations

from typing import Any, Mapping, NamedTuple, Optional

from torch import Tensor

__all__ = ["Batch"]


def _select(value: Any, index) -> Any:
    if isinstance(value, Tensor):
        return value[index]
    if isinstance(value, Mapping):
        return {k: _select(v, index) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        if isinstance(index, int):
            return value[index]
        if isinstance(index, slice):
            return type(value)(value[index]) if isinstance(value, list) else tuple(value[index])
    raise TypeError(f"cannot select samples of a {type(value).__name__} (expected a tensor, a mapping of them or "
                    "a per-sample list)")


class Batch(NamedTuple):
    """A batch of measurements, the signals they came from, and what the batch's own problem needs.

    Attributes:
        y: measurements ``A x (+ noise)``, shape ``(B, *out_shape)`` (a single sample from a
            map-style dataset has shape ``out_shape``; the default collate stacks them).
        x: ground-truth signals ``(B, *in_shape)``, or ``None`` for unsupervised data.
        operator: the batch's own forward operator, when each batch (or sample) has one:
            either what builds it — a mapping of tensors, e.g. ``{"mask": (B, H, W)}``, that the
            data module's ``build_operator(batch.operator)`` turns into a
            :class:`~unroll.operators.LinearOperator` — or, for streams that yield whole batches,
            a ready ``LinearOperator`` batched over ``B``. Empty (the default): the data set's
            single global operator (``datamodule.get_operator()``), as in sparse recovery.
        meta: per-sample metadata for evaluation, e.g. ``{"fname": [str] * B, "slice": (B,),
            "data_range": (B,)}`` (``data_range`` is read by :class:`unroll.metrics.PSNR` and
            :class:`~unroll.metrics.SSIM`); empty by default.

    Like fastMRI's ``VarNetSample`` it is a ``NamedTuple`` of tensors and mappings, so it
    survives ``torch.utils.data.default_collate`` (samples' mappings become mappings of
    stacked tensors, strings become lists) and Lightning's device transfer unchanged.
    Read its fields by name (``batch.y``, ``batch.x``): it has four, so ``y, x = batch`` no
    longer unpacks it. The default ``operator``/``meta`` are a shared empty ``dict``: never
    mutate a batch's mappings, build new ones.
    """

    y: Tensor
    x: Optional[Tensor]
    operator: Any = {}
    meta: Mapping[str, Any] = {}

    @property
    def batch_size(self) -> int:
        """``B``, the number of samples (``y.shape[0]``)."""
        return int(self.y.shape[0])

    def select(self, index) -> "Batch":
        """The samples ``index`` (an ``int`` or a ``slice``) of every field: tensors are indexed on
        their first dimension, mappings entry by entry, per-sample lists by position. A ready
        ``LinearOperator`` in ``operator`` cannot be split (give what builds it instead).

        Example: a map-style dataset over a stored split yields ``split.select(i)``.
        """
        op = self.operator
        if op is not None and not isinstance(op, Mapping):
            raise TypeError(f"operator: a {type(op).__name__} cannot be split into samples; give the batch what "
                            "builds it (a mapping of per-sample tensors) instead")
        return Batch(_select(self.y, index), None if self.x is None else _select(self.x, index),
                     _select(op or {}, index), _select(self.meta or {}, index))
