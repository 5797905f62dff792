"""``as_operator``: operators from tensors (kept apart from ``base`` so that ``base`` does not
import the concrete operators that subclass it)."""

from __future__ import annotations

from torch import Tensor

from .base import LinearOperator
from .matrix import MatrixOperator

__all__ = ["as_operator"]


def as_operator(a) -> LinearOperator:
    """Return ``a`` if it is a :class:`LinearOperator`, wrap a 2-D (or batched 3-D) tensor as a
    :class:`~unroll.operators.MatrixOperator`, else raise a ``TypeError``."""
    if isinstance(a, LinearOperator):
        return a
    if isinstance(a, Tensor):
        return MatrixOperator(a)
    raise TypeError(f"A: expected a LinearOperator or a 2-D tensor, got {type(a).__name__}")
