"""Input validation with errors that name the argument, what was expected and what came."""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from .operators.base import LinearOperator, fmt_shape
from .operators.matrix import MatrixOperator

__all__ = ["check_finite", "check_measurements"]


def check_finite(t: Tensor, name: str) -> None:
    """Raise ``ValueError`` if ``t`` holds NaN or Inf (one host synchronisation)."""
    bad = ~torch.isfinite(t)
    if bad.any():
        n_nan = int(torch.isnan(t).sum())
        n_inf = int(bad.sum()) - n_nan
        raise ValueError(f"{name}: expected finite values, got {n_nan} NaN and {n_inf} Inf "
                         f"entries (shape {tuple(t.shape)})")


def _matrix_dtype(op: LinearOperator) -> Optional[torch.dtype]:
    """The dtype of a :class:`~unroll.operators.MatrixOperator`'s matrix (its inputs must have
    it), ``None`` for other operators."""
    return op.matrix.dtype if isinstance(op, MatrixOperator) else None


def check_measurements(y: Tensor, op: Optional[LinearOperator] = None, name: str = "y",
                       finite: bool = True) -> None:
    """Check measurements ``y`` of shape ``(B, *op.out_shape)`` against an operator.

    Raises:
        TypeError: ``y`` is not a tensor, or its dtype does not fit the operator (complex
            data for a real operator or vice versa; for a ``MatrixOperator``, a dtype other
            than its matrix's, e.g. float32 data for a float64 ``A``).
        ValueError: wrong shape, or NaN/Inf entries (when ``finite``; skipped inside
            ``torch.compile``, where it would break the graph).
    """
    if not isinstance(y, Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(y).__name__}")
    if y.dim() < 1:
        raise ValueError(f"{name}: expected a batch (B, ...), got a 0-dim tensor")
    if op is not None:
        if op.out_shape is not None and tuple(y.shape[1:]) != tuple(op.out_shape):
            raise ValueError(
                f"{name}: expected shape {fmt_shape(op.out_shape)} to fit the range of {op.describe()}, "
                f"got {tuple(y.shape)}"
            )
        if op.is_complex is False and y.is_complex():
            raise TypeError(f"{name}: {op.describe()} is a real operator but got complex measurements ({y.dtype})")
        if op.is_complex is True and not y.is_complex():
            raise TypeError(f"{name}: {op.describe()} is a complex operator but got real measurements ({y.dtype})")
        op_dtype = _matrix_dtype(op)
        if op_dtype is not None and y.dtype != op_dtype:
            raise TypeError(f"{name}: dtype {y.dtype} does not match the dtype {op_dtype} of the matrix A of "
                            f"{op.describe()}; pass both in one dtype ({name}.to({op_dtype}) or A.to({y.dtype}))")
    if finite and not torch.compiler.is_compiling():  # a data-dependent check would break the graph
        check_finite(y, name)


def check_tol(tol, name: str = "tol", allow_none: bool = True) -> Optional[float]:
    """``tol`` as a float if it is a finite number ``>= 0`` (or ``None`` when allowed); else a
    ``ValueError`` naming ``name`` (a negative or NaN tolerance would silently never stop)."""
    if tol is None and allow_none:
        return None
    if isinstance(tol, Tensor) and tol.numel() == 1:
        tol = float(tol)
    if isinstance(tol, bool) or not isinstance(tol, (int, float)) or not (0 <= tol < float("inf")):
        raise ValueError(f"{name}: expected a finite number >= 0{' or None' if allow_none else ''}, got {tol!r}")
    return float(tol)
