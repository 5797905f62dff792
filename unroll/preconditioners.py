"""Preconditioners for :func:`unroll.cg` (``cg(A, b, M=P)`` or ``cg(A, b, preconditioner=P)``).

* :class:`JacobiPreconditioner`: ``M⁻¹ = diag(A)⁻¹``, a :class:`~unroll.operators.Diagonal`
  (device and dtype generic, differentiable, compiles).
* :class:`IncompleteCholesky`: IC(0), ``M = L Lᵀ`` with ``L`` lower triangular on the sparsity
  pattern of ``tril(A)``, applied as two sparse triangular solves
  (``scipy.sparse.linalg.spsolve_triangular``). **CPU only**: each application copies the residual
  to the host as float64 NumPy, solves, and copies the result back to the residual's device and
  dtype (a host synchronisation per CG iteration; not traceable by ``torch.compile`` or autograd —
  a preconditioner is not differentiated through by ``cg``). It is a baseline, not a layer.

Both are square :class:`~unroll.operators.LinearOperator` s with the grid's ``in_shape``, so
``cg`` checks them like ``A``.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor

from .operators.base import LinearOperator
from .operators.elementwise import Diagonal

__all__ = ["JacobiPreconditioner", "IncompleteCholesky"]


def _shape_of(A, shape: Optional[Sequence[int]], n: int, name: str) -> Tuple[int, ...]:
    if shape is not None:
        shape = tuple(shape)
        if math.prod(shape) != n:
            raise ValueError(f"shape: {shape} has {math.prod(shape)} entries, but {name} is {n} × {n}")
        return shape
    if isinstance(A, LinearOperator) and A.in_shape is not None:
        return tuple(A.in_shape)
    return (n,)


def _square_tensor(A: Tensor, name: str) -> int:
    if A.dim() != 2 or A.shape[0] != A.shape[1]:
        raise ValueError(f"{name}: expected a square matrix (N, N), got shape {tuple(A.shape)}")
    return A.shape[0]


class JacobiPreconditioner(Diagonal):
    """``M⁻¹ = diag(A)⁻¹`` (Jacobi), for ``cg(A, b, M=JacobiPreconditioner(A))``.

    Args:
        A: an operator with a ``diagonal()`` method returning its diagonal as ``(*in_shape)``
            (e.g. :class:`~unroll.operators.Laplacian`), or a matrix ``(N, N)`` as a dense or
            sparse torch tensor.
        shape: per-sample shape the preconditioner acts on (default: ``A.in_shape``, or ``(N,)``
            for a matrix).

    Shapes:
        ``(B, *shape) → (B, *shape)``. The diagonal must be positive (``A`` SPD).
    """

    def __init__(self, A, shape: Optional[Sequence[int]] = None) -> None:
        if isinstance(A, Tensor):
            n = _square_tensor(A, "A")
            if A.is_sparse:
                S = A.coalesce()
                i, j = S.indices()
                on = i == j
                d = torch.zeros(n, dtype=S.dtype, device=S.device).index_add_(0, i[on], S.values()[on])
            else:
                d = torch.diagonal(A)
            d = d.reshape(_shape_of(A, shape, n, "A"))
        elif callable(getattr(A, "diagonal", None)):
            d = A.diagonal()
            if shape is not None:
                d = d.reshape(tuple(shape))
        else:
            raise TypeError(f"A: expected an operator with a diagonal() method (e.g. Laplacian) or a (N, N) tensor, "
                            f"got {type(A).__name__}")
        d = d.detach()
        if not bool((d.real > 0).all() if d.is_complex() else (d > 0).all()):
            raise ValueError("A: Jacobi needs a positive diagonal (A symmetric positive definite); "
                             f"the smallest diagonal entry is {float(d.real.min()):.3g}")
        super().__init__(1.0 / d)


class IncompleteCholesky(LinearOperator):
    """IC(0) preconditioner: ``M⁻¹ r = L⁻ᵀ L⁻¹ r`` with ``L`` the zero-fill incomplete Cholesky
    factor of a real SPD ``A`` (``(L Lᵀ)_ij = A_ij`` on the pattern of ``A``). CPU/SciPy-backed.

    Args:
        A: a :class:`~unroll.operators.LinearOperator` with ``to_sparse()`` (e.g.
            :class:`~unroll.operators.Laplacian`), a torch tensor ``(N, N)`` (dense or sparse),
            or a SciPy sparse matrix. Only its lower triangle is read (``A`` is assumed symmetric).
        shape: per-sample shape it acts on (default: ``A.in_shape``, or ``(N,)``).

    Shapes:
        ``(B, *shape) → (B, *shape)``, any real float dtype and device (solved in float64 on the
        CPU, returned in the input's dtype and device).

    Raises:
        ValueError: when the factorisation meets a non-positive pivot (IC(0) exists for
        M-matrices such as the Laplacian, not for every SPD matrix).

    Attributes:
        L: the factor, a ``scipy.sparse.csr_matrix`` ``(N, N)``.
    """

    def __init__(self, A, shape: Optional[Sequence[int]] = None) -> None:
        super().__init__()
        import scipy.sparse as sp

        if isinstance(A, LinearOperator):
            if not callable(getattr(A, "to_sparse", None)):
                raise TypeError(f"A: {type(A).__name__} has no to_sparse(); pass its matrix (N, N) instead")
            S = A.to_sparse(dtype=torch.float64)
        else:
            S = A
        if isinstance(S, Tensor):
            n = _square_tensor(S, "A")
            if S.is_complex():
                raise TypeError(f"A: IncompleteCholesky handles real matrices, got {S.dtype}")
            S = S.detach().to("cpu", torch.float64)
            if S.is_sparse:
                S = S.coalesce()
                i, j = S.indices().numpy()
                csr = sp.csr_matrix((S.values().numpy(), (i, j)), shape=(n, n))
            else:
                csr = sp.csr_matrix(S.numpy())
        elif sp.issparse(S):
            if S.shape[0] != S.shape[1]:
                raise ValueError(f"A: expected a square matrix (N, N), got shape {S.shape}")
            n = S.shape[0]
            csr = sp.csr_matrix(S, dtype=np.float64)
        else:
            raise TypeError(f"A: expected a LinearOperator with to_sparse(), a torch tensor (N, N) or a SciPy sparse "
                            f"matrix, got {type(A).__name__}")
        self.in_shape = self.out_shape = _shape_of(A, shape, n, "A")
        self.is_complex = False
        self.n = n
        self.L = _ic0(csr)
        self.Lt = self.L.T.tocsr()

    def _forward(self, x: Tensor) -> Tensor:
        from scipy.sparse.linalg import spsolve_triangular

        rhs = x.detach().reshape(x.shape[0], self.n).to("cpu", torch.float64).numpy().T  # (N, B)
        y = spsolve_triangular(self.L, np.ascontiguousarray(rhs), lower=True)
        z = spsolve_triangular(self.Lt, y, lower=False)
        out = torch.from_numpy(np.ascontiguousarray(np.asarray(z).reshape(self.n, -1).T))
        return out.to(device=x.device, dtype=x.dtype).reshape(x.shape)

    def _adjoint(self, y: Tensor) -> Tensor:
        return self._forward(y)  # (L Lᵀ)⁻¹ is symmetric

    def extra_repr(self) -> str:
        return f"shape={self.in_shape}, nnz(L)={self.L.nnz}"


def _ic0(A) -> "object":
    """Zero-fill incomplete Cholesky of the lower triangle of a symmetric CSR matrix ``A``.

    Row-oriented (left-looking): ``L_ij = (A_ij − Σ_{k<j} L_ik L_jk) / L_jj`` for ``j < i`` on the
    pattern of ``tril(A)``, ``L_ii = sqrt(A_ii − Σ_{k<i} L_ik²)``. A Python loop over rows on
    plain lists: about a second per 10⁵ rows of a 7-point stencil (a one-off set-up cost)."""
    import scipy.sparse as sp

    low = sp.tril(A, format="csr")
    low.sum_duplicates()
    low.sort_indices()
    n = low.shape[0]
    indptr, indices = low.indptr.tolist(), low.indices.tolist()
    data = low.data.astype(np.float64).tolist()
    diag_pos = [0] * n
    for i in range(n):
        s, e = indptr[i], indptr[i + 1]
        if e == s or indices[e - 1] != i:
            raise ValueError(f"A: row {i} has no diagonal entry; IC(0) needs a nonzero diagonal (A SPD)")
        diag_pos[i] = e - 1
    for i in range(n):
        s, e = indptr[i], indptr[i + 1] - 1  # off-diagonal part of row i: [s, e)
        pos = {indices[p]: p for p in range(s, e)} if e - s > 1 else None
        acc = 0.0
        for p in range(s, e):
            j = indices[p]
            v = data[p]
            if pos is not None:
                for q in range(indptr[j], diag_pos[j]):
                    pk = pos.get(indices[q])
                    if pk is not None and pk < p:
                        v -= data[pk] * data[q]
            v /= data[diag_pos[j]]
            data[p] = v
            acc += v * v
        d = data[e] - acc
        if not d > 0:
            raise ValueError(f"A: IC(0) broke down at row {i} (pivot {d:.3g} ≤ 0); A is not SPD or not an M-matrix "
                             "for which IC(0) exists; use JacobiPreconditioner")
        data[e] = math.sqrt(d)
    return sp.csr_matrix((np.asarray(data), low.indices.copy(), low.indptr.copy()), shape=(n, n))
