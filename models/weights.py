"""Weights built from the dense matrix ``A``: the matrix itself, ALISTA's analytic weight, and
the initial weights of the LISTA family (``"ista"``: ISTA's; ``"analytic"``: ALISTA's)."""

from __future__ import annotations

from typing import Tuple

import torch
from torch import Tensor

from unroll.operators import LinearOperator, MatrixOperator

__all__ = ["INITS", "analytic_weight", "check_init", "dense_matrix", "initial_weight"]

#: the initialisations of the LISTA family's matrices
INITS = ("ista", "analytic")


def check_init(init: str) -> str:
    """``init`` if it is one of :data:`INITS`; otherwise a ``ValueError`` that lists them."""
    if init not in INITS:
        raise ValueError(f"init: expected one of {', '.join(repr(i) for i in INITS)}, got {init!r}")
    return init


def dense_matrix(op: LinearOperator, model: str) -> Tensor:
    """The dense ``(m, n)`` matrix of a :class:`MatrixOperator` (models that need ``A`` itself)."""
    if not isinstance(op, MatrixOperator) or op.batched:
        raise TypeError(f"A: {model} needs a single (m, n) matrix (a MatrixOperator or a 2-D tensor), "
                        f"got {type(op).__name__}")
    return op.dense()


def analytic_weight(a: Tensor) -> Tensor:
    """ALISTA's weight ``W`` ``(m, n)`` for a matrix ``A`` ``(m, n)``.

    ``W`` minimises ``‖Wᵀ A‖_F`` subject to ``diag(Wᵀ A) = 1``. The problem separates over the
    columns: ``w_i = argmin ‖Aᵀ w‖²`` s.t. ``a_iᵀ w = 1``, whose Lagrange conditions give
    ``w_i = (AAᵀ)⁻¹ a_i / (a_iᵀ (AAᵀ)⁻¹ a_i)``. Computed in float64 with a Cholesky solve,
    returned in ``A``'s dtype. Needs ``A`` of full row rank (``m ≤ n``).
    """
    if a.dim() != 2:
        raise ValueError(f"a: expected a (m, n) matrix, got shape {tuple(a.shape)}")
    a64 = a.detach().to(torch.complex128 if a.is_complex() else torch.float64)
    gram = a64 @ a64.mH
    chol, info = torch.linalg.cholesky_ex(gram)
    if int(info) != 0:
        raise ValueError(f"a: A Aᴴ is singular (A of shape {tuple(a.shape)} must have full row rank)")
    v = torch.cholesky_solve(a64, chol)  # (AAᴴ)⁻¹ A, column i = (AAᴴ)⁻¹ a_i
    denom = (a64.conj() * v).sum(0)  # a_iᴴ (AAᴴ)⁻¹ a_i, real positive
    return (v / denom.conj()).to(a.dtype)


def initial_weight(a: Tensor, lip: float, init: str) -> Tuple[Tensor, float]:
    """``(W, γ)`` with ``x − γ Wᴴ(A x − y)`` the first step of the chosen iteration.

    ``"ista"``: ``W = A``, ``γ = 1/L`` (ISTA's gradient step); ``"analytic"``: ``W`` =
    :func:`analytic_weight` of ``A``, ``γ = 1`` (ALISTA's step, ``diag(Wᴴ A) = 1``).

    Args:
        a: ``(m, n)`` matrix; lip: ``L = ‖A‖²``; init: one of :data:`INITS`.
    """
    if check_init(init) == "ista":
        return a, 1.0 / lip
    return analytic_weight(a), 1.0
