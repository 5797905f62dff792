"""Batched linear operators (``LinearOperator``) and their self-checks."""

from .base import (AdjointOperator, ComposedOperator, LinearOperator, ScaledOperator, SumOperator,
                   adjoint_test, as_operator)
from .elementwise import Diagonal, Identity
from .matrix import MatrixOperator

__all__ = [
    "LinearOperator",
    "AdjointOperator",
    "ComposedOperator",
    "SumOperator",
    "ScaledOperator",
    "MatrixOperator",
    "Diagonal",
    "Identity",
    "adjoint_test",
    "as_operator",
]
