"""Weights built from the dense matrix ``A``: the matrix itself, ALISTA's analytic weight, and
the initial weights of the LISTA family (``"ista"``: ISTA's; ``"analytic"``: ALISTA's)."""

from __future__ import annotations

from typing import Tuple

import torch
from torch import Tensor

from unroll.operators import LinearOperator, MatrixOperator

__all__ = ["INITS", "analytic_weight", "check_init", "check_lam", "check_ridge", "dense_matrix", "initial_weight"]

#: the initialisations of the LISTA family's matrices
INITS = ("ista", "analytic")


def check_init(init: str) -> str:
    """``init`` if it is one of :data:`INITS`; otherwise a ``ValueError`` that lists them."""
    if init not in INITS:
        raise ValueError(f"init: expected one of {', '.join(repr(i) for i in INITS)}, got {init!r}")
    return init


def check_ridge(ridge) -> float:
    """``ridge`` as a float if it is a finite number ``>= 0``; otherwise a ``ValueError``."""
    if isinstance(ridge, bool) or not isinstance(ridge, (int, float)) or not (0.0 <= ridge < float("inf")):
        raise ValueError(f"ridge: expected a finite number >= 0, got {ridge!r}")
    return float(ridge)


def check_lam(lam) -> float:
    """``lam`` as a float if it is a finite number ``> 0`` (λ of the initial thresholds ``λ/L``
    of the LISTA family); otherwise a ``ValueError`` that names ``lam``."""
    if isinstance(lam, bool) or not isinstance(lam, (int, float)) or not (0.0 < lam < float("inf")):
        raise ValueError(f"lam: expected a finite number > 0 (the initial thresholds are lam/L), got {lam!r}")
    return float(lam)


def _zero_columns(a: Tensor) -> list:
    """Indices of the all-zero columns of ``a`` ``(m, n)``."""
    return torch.nonzero((a == 0).all(dim=0)).flatten().tolist()


def _fmt_indices(idx: list, limit: int = 10) -> str:
    shown = ", ".join(str(i) for i in idx[:limit])
    return shown + (f", … ({len(idx)} in all)" if len(idx) > limit else "")


def dense_matrix(op: LinearOperator, model: str) -> Tensor:
    """The dense ``(m, n)`` matrix of a :class:`MatrixOperator` (models that need ``A`` itself)."""
    if not isinstance(op, MatrixOperator) or op.batched:
        raise TypeError(f"A: {model} needs a single (m, n) matrix (a MatrixOperator or a 2-D tensor), "
                        f"got {type(op).__name__}")
    return op.dense()


def analytic_weight(a: Tensor, ridge: float = 0.0) -> Tensor:
    """ALISTA's weight ``W`` ``(m, n)`` for a matrix ``A`` ``(m, n)``.

    ``W`` minimises ``‖Wᵀ A‖²_F + ridge·‖W‖²_F`` subject to ``diag(Wᵀ A) = 1``. The problem
    separates over the columns: ``w_i = argmin ‖Aᵀ w‖² + ridge·‖w‖²`` s.t. ``a_iᵀ w = 1``, whose
    Lagrange conditions give ``w_i = M⁻¹ a_i / (a_iᵀ M⁻¹ a_i)`` with ``M = AAᵀ + ridge·I``.
    Computed in float64 with a Cholesky solve, returned in ``A``'s dtype.

    ``ridge = 0`` is ALISTA's weight (Liu et al. 2019), which needs ``A`` of full row rank
    (``m ≤ n``). With noisy measurements ``y = Ax + e`` a layer ``x + Wᵀ(y − Ax)`` passes the
    noise on as ``Wᵀe``, column ``i`` amplified by ``‖w_i‖`` (at least ``1/‖a_i‖``, reached by
    ``w_i = a_i/‖a_i‖²``): ``ridge > 0`` trades some coherence ``|w_iᵀa_j|`` for less noise gain. For
    ``e ~ N(0, σ²I)`` and an error of variance ``s²`` per entry in the layer's input, the
    column's output error variance is ``s²·Σ_{j≠i} (w_iᵀa_j)² + σ²‖w_i‖²``, minimised by
    ``ridge = σ²/s²``; ``ridge → ∞`` gives ``w_i ∝ a_i``, ISTA's direction.
    """
    if a.dim() != 2:
        raise ValueError(f"a: expected a (m, n) matrix, got shape {tuple(a.shape)}")
    ridge = check_ridge(ridge)
    if not torch.isfinite(a).all():
        raise ValueError(f"a: expected finite entries, got NaN or Inf in A of shape {tuple(a.shape)}")
    zero = _zero_columns(a)
    if zero:  # a_iᵀ w_i = 1 has no solution: w_i would be 0/0, and every output NaN
        raise ValueError(f"a: column(s) {_fmt_indices(zero)} of A (shape {tuple(a.shape)}) are zero, so the analytic "
                         "weight (diag(Wᵀ A) = 1) does not exist; remove those columns (the entries of x they "
                         "hold are not measured; LISTA-family models can also start from init='ista')")
    a64 = a.detach().to(torch.complex128 if a.is_complex() else torch.float64)
    gram = a64 @ a64.mH
    if ridge:
        gram = gram + ridge * torch.eye(gram.shape[0], dtype=gram.dtype, device=gram.device)  # M
    chol, info = torch.linalg.cholesky_ex(gram)
    if int(info) != 0:
        raise ValueError(f"a: A Aᴴ is singular (A of shape {tuple(a.shape)} must have full row rank, "
                         "or pass ridge > 0)")
    v = torch.cholesky_solve(a64, chol)  # M⁻¹ A, column i = M⁻¹ a_i
    denom = (a64.conj() * v).sum(0)  # a_iᴴ M⁻¹ a_i, real positive
    bad = torch.nonzero(~(torch.isfinite(denom.real) & (denom.real > 0))).flatten().tolist()
    if bad:  # M numerically singular: A is rank-deficient to working precision
        raise ValueError(f"a: A (shape {tuple(a.shape)}) is numerically rank-deficient: a_iᴴ (A Aᴴ)⁻¹ a_i is not "
                         f"positive for column(s) {_fmt_indices(bad)}; pass ridge > 0 (LISTA-family models can also start "
                         "from init='ista')")
    return (v / denom.conj()).to(a.dtype)


def initial_weight(a: Tensor, lip: float, init: str, ridge: float = 0.0) -> Tuple[Tensor, float]:
    """``(W, γ)`` with ``x − γ Wᴴ(A x − y)`` the first step of the chosen iteration.

    ``"ista"``: ``W = A``, ``γ = 1/L`` (ISTA's gradient step); ``"analytic"``: ``W`` =
    :func:`analytic_weight` of ``A`` with ``ridge``, ``γ = 1`` (ALISTA's step, ``diag(Wᴴ A) = 1``).

    Args:
        a: ``(m, n)`` matrix; lip: ``L = ‖A‖²``; init: one of :data:`INITS`;
        ridge: see :func:`analytic_weight` (``"analytic"`` only).
    """
    if check_init(init) == "ista":
        return a, 1.0 / lip
    return analytic_weight(a, ridge), 1.0
