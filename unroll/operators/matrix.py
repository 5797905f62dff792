"""Matrix operators: dense or sparse ``A ∈ 𝔽^{m×n}`` acting on ``(B, n)`` batches."""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from .base import LinearOperator

__all__ = ["MatrixOperator"]


#: dtypes that ``torch.linalg`` does not support: the Lipschitz constant is computed in float32
_LOW_PRECISION = (torch.float16, torch.bfloat16)


def _check_finite_matrix(matrix: Tensor) -> None:
    """Raise ``ValueError`` naming ``matrix`` if it holds NaN or Inf (one host synchronisation)."""
    values = matrix if matrix.layout == torch.strided else matrix.values()  # sparse: coalesced COO
    bad = ~torch.isfinite(values.detach())
    if bad.any():
        n_nan = int(torch.isnan(values.detach()).sum())
        where = torch.nonzero(bad)[0].tolist() if matrix.layout == torch.strided else None
        raise ValueError(f"matrix: expected finite entries, got {n_nan} NaN and {int(bad.sum()) - n_nan} Inf "
                         f"(shape {tuple(matrix.shape)}" + (f", first at index {tuple(where)})" if where else ")"))


class MatrixOperator(LinearOperator):
    """``x ↦ A x`` for a dense or sparse (COO) matrix.

    Args:
        matrix: ``(m, n)`` dense tensor, a sparse COO/CSR ``(m, n)`` tensor, or a dense
            ``(B, m, n)`` stack (one matrix per sample). Real or complex; its dtype decides
            whether the operator is real (complex inputs are refused) or complex, and is the
            dtype its inputs must have. Checked once here for NaN/Inf entries. float16 and
            bfloat16 work (the Lipschitz constant is then computed in float32).
        learnable: make a dense matrix an ``nn.Parameter`` (default: a buffer, saved in
            checkpoints but not trained).

    Shapes:
        ``forward``: ``(B, n) → (B, m)``; ``adjoint``: ``(B, m) → (B, n)``.
    """

    def __init__(self, matrix: Tensor, learnable: bool = False) -> None:
        super().__init__()
        if not isinstance(matrix, Tensor):
            raise TypeError(f"matrix: expected a torch.Tensor, got {type(matrix).__name__}")
        self.sparse = matrix.layout != torch.strided
        if self.sparse:
            if matrix.dim() != 2:
                raise ValueError(f"matrix: a sparse matrix must be 2-D, got shape {tuple(matrix.shape)}")
            if learnable:
                raise ValueError("learnable: sparse matrices cannot be learnable")
            matrix = matrix.to_sparse_coo().coalesce()
            # Aᴴ kept as its own sparse matrix so both products are sparse × dense.
            adj = matrix.t().conj().coalesce()
            self.register_buffer("matrix", matrix)
            self.register_buffer("matrix_h", adj)
        else:
            if matrix.dim() not in (2, 3):
                raise ValueError(
                    f"matrix: expected a 2-D (m, n) or 3-D (B, m, n) tensor, got shape {tuple(matrix.shape)}"
                )
            if not (matrix.is_floating_point() or matrix.is_complex()):
                raise TypeError(f"matrix: expected a floating or complex dtype, got {matrix.dtype}")
            if learnable:
                self.matrix = torch.nn.Parameter(matrix.clone())
            else:
                self.register_buffer("matrix", matrix)
        if not (torch.compiler.is_compiling() or matrix.is_meta):  # one check, here: SVD/Cholesky would fail obscurely
            _check_finite_matrix(matrix)
        m, n = matrix.shape[-2:]
        self.in_shape, self.out_shape = (n,), (m,)
        self.is_complex = matrix.is_complex()
        self.batched = matrix.dim() == 3

    def _check(self, t: Tensor, shape, name: str, space: str) -> None:
        super()._check(t, shape, name, space)
        if t.dtype != self.matrix.dtype:
            raise TypeError(
                f"{name}: dtype {t.dtype} does not match the operator's {self.matrix.dtype}; "
                f"convert one of them (e.g. op.to({t.dtype}))"
            )
        if self.batched and t.shape[0] != self.matrix.shape[0]:
            raise ValueError(
                f"{name}: batch size {t.shape[0]} does not match the {self.matrix.shape[0]} matrices of the operator"
            )

    def _forward(self, x: Tensor) -> Tensor:
        if self.sparse:
            return (self.matrix @ x.mT).mT
        if self.batched:
            return (self.matrix @ x.unsqueeze(-1)).squeeze(-1)
        return torch.nn.functional.linear(x, self.matrix)  # x Aᵀ in one op, no transposed view

    def _adjoint(self, y: Tensor) -> Tensor:
        if self.sparse:
            return (self.matrix_h @ y.mT).mT
        if self.batched:
            return (self.matrix.mH @ y.unsqueeze(-1)).squeeze(-1)
        return y @ self.matrix.conj()

    @property
    def per_sample(self) -> bool:
        """A ``(B, m, n)`` stack is one matrix per sample."""
        return self.batched

    def dense(self) -> Tensor:
        """The matrix as a dense ``(m, n)`` (or ``(B, m, n)``) tensor."""
        return self.matrix.to_dense() if self.sparse else self.matrix

    def lipschitz(self, x: Optional[Tensor] = None, max_iter: int = 100, tol: float = 1e-6,
                  recompute: bool = False) -> Tensor:
        """``‖A‖₂²``; exact (from the singular values) for a dense 2-D matrix, otherwise by
        power iteration. For a ``(B, m, n)`` stack, the largest over the batch. Cached (and
        recomputed when the matrix changes). For a float16/bfloat16 matrix it is computed in (and
        returned as) float32."""
        if not recompute and self._cached_lipschitz_valid():
            return self._lipschitz_cache
        if self.sparse:
            return super().lipschitz(x, max_iter, tol, recompute)
        s = self._spectral_norms()
        self._lipschitz_cache, self._lipschitz_key = (s.max() if s.dim() else s) ** 2, self._state_key()
        return self._lipschitz_cache

    def _spectral_norms(self) -> Tensor:
        """``‖A‖₂`` (or one per matrix of a stack), without a graph; float32 for half precision,
        which ``torch.linalg`` refuses."""
        with torch.no_grad():
            a = self.matrix.detach()
            if a.dtype in _LOW_PRECISION:
                a = a.to(torch.float32)
            return torch.linalg.matrix_norm(a, ord=2)

    def lipschitz_batch(self, batch: int, x: Optional[Tensor] = None, max_iter: int = 100,
                        tol: float = 1e-6) -> Tensor:
        """``‖A_i‖₂²`` per sample ``(batch,)``, exact from the singular values of each matrix of
        a ``(B, m, n)`` stack; a single matrix's constant repeated otherwise."""
        if not self.batched:
            return super().lipschitz_batch(batch, x, max_iter, tol)
        if batch != self.matrix.shape[0]:
            raise ValueError(f"batch: the operator holds {self.matrix.shape[0]} matrices, got a batch of {batch}")
        return self._spectral_norms() ** 2

    def extra_repr(self) -> str:
        kind = "sparse" if self.sparse else ("batched" if self.batched else "dense")
        return f"{kind}, shape={tuple(self.matrix.shape)}, dtype={self.matrix.dtype}"
