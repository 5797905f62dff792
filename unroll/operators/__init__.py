"""Batched linear operators (``LinearOperator``) and their self-checks."""

from .base import (AdjointOperator, ComposedOperator, LinearOperator, ScaledOperator, SumOperator,
                   adjoint_test, fmt_shape)
from .convert import as_operator
from .conv import Convolution2d, gaussian_kernel
from .elementwise import Diagonal, Identity
from .laplacian import Laplacian
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
    "Laplacian",
    "Convolution2d",
    "gaussian_kernel",
    "adjoint_test",
    "as_operator",
    "fmt_shape",
]
