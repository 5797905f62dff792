"""Classical MRI reconstructions with the models' call shape ``model(y, op) → (B, H, W)`` complex:
zero-filled (SENSE or root-sum-of-squares coil combination) and compressed sensing
(orthonormal Haar wavelet ℓ1 solved by the core's FISTA step).

They have nothing to train; ``unroll evaluate`` scores them next to the trained models
(``unroll.train.mri.MRIBaseline``), and the compressed-sensing weight ``lam`` is tuned on the
validation split there.
"""

from __future__ import annotations

from typing import Literal, Optional

import torch
from torch import Tensor, nn

from unroll.operators import LinearOperator, ifft2c
from unroll.operators.mri import rss
from unroll.problem import Problem
from unroll.prox import Regularizer, soft_threshold
from unroll.steps import FISTAStep
from unroll.unrolled import Unrolled

__all__ = ["ZeroFilled", "CompressedSensing", "HaarWaveletL1", "haar2", "ihaar2"]


def _check_call(y: Tensor, op: LinearOperator, who: str) -> None:
    if not isinstance(op, LinearOperator):
        raise TypeError(f"op: {who} needs the batch's LinearOperator (e.g. SENSE), got {type(op).__name__}")
    if not isinstance(y, Tensor) or not y.is_complex() or y.dim() != 4:
        got = f"{y.dtype} of shape {tuple(y.shape)}" if isinstance(y, Tensor) else type(y).__name__
        raise ValueError(f"y: {who} expects complex multi-coil k-space (B, C, H, W), got {got}")


class ZeroFilled(nn.Module):
    """The zero-filled reconstruction (unsampled k-space set to zero), coil-combined.

    Args:
        combine: ``"sense"``: ``Aᴴy = Σ_c conj(S_c) Fᴴ y_c`` with the operator's sensitivity maps
            (the SENSE combination, the maps being normalised to ``Σ_c |S_c|² = 1``);
            ``"rss"``: the root-sum-of-squares ``sqrt(Σ_c |Fᴴ y_c|²)`` of the coil images (real,
            returned as a complex tensor with zero phase), which needs no maps.

    Call: ``model(y, op)``: ``y`` ``(B, C, H, W)`` complex → ``(B, H, W)`` complex.
    """

    def __init__(self, combine: Literal["sense", "rss"] = "sense") -> None:
        super().__init__()
        if combine not in ("sense", "rss"):
            raise ValueError(f"combine: expected 'sense' or 'rss', got {combine!r}")
        self.combine = combine
        self.name = "zero_filled" if combine == "sense" else "zero_filled_rss"
        self.num_layers = 1

    def forward(self, y: Tensor, op: LinearOperator) -> Tensor:
        _check_call(y, op, "ZeroFilled")
        if self.combine == "sense":
            return op.adjoint(y)
        return rss(ifft2c(y), dim=1).to(y.dtype)

    def extra_repr(self) -> str:
        return f"combine={self.combine!r}"


# ---------------------------------------------------------------------------------- wavelets
_S = 0.7071067811865476  # 1/√2


def _levels(h: int, w: int, levels: int) -> int:
    """The number of Haar levels that divide ``(h, w)`` evenly, at most ``levels``."""
    n = 0
    while n < levels and h % 2 == 0 and w % 2 == 0 and h > 1 and w > 1:
        h, w, n = h // 2, w // 2, n + 1
    return n


def haar2(x: Tensor, levels: int) -> Tensor:
    """Orthonormal 2-D Haar transform over the last two dims, ``levels`` times on the low band,
    coefficients stored in place (Mallat layout). ``levels`` must divide the size evenly
    (see :class:`HaarWaveletL1`). ``(..., H, W) → (..., H, W)``, real or complex."""
    out = x.clone()
    h, w = x.shape[-2:]
    for _ in range(levels):
        blk = out[..., :h, :w]
        a, b = blk[..., 0::2, :], blk[..., 1::2, :]
        rows = torch.cat(((a + b) * _S, (a - b) * _S), dim=-2)
        a, b = rows[..., 0::2], rows[..., 1::2]
        out = out.clone()
        out[..., :h, :w] = torch.cat(((a + b) * _S, (a - b) * _S), dim=-1)
        h, w = h // 2, w // 2
    return out


def ihaar2(c: Tensor, levels: int) -> Tensor:
    """The inverse (= adjoint) of :func:`haar2`."""
    out = c.clone()
    for lev in reversed(range(levels)):
        h, w = c.shape[-2] >> lev, c.shape[-1] >> lev
        blk = out[..., :h, :w]
        lo, hi = blk[..., : w // 2], blk[..., w // 2:]
        cols = torch.stack(((lo + hi) * _S, (lo - hi) * _S), dim=-1).flatten(-2)
        lo, hi = cols[..., : h // 2, :], cols[..., h // 2:, :]
        rows = torch.stack(((lo + hi) * _S, (lo - hi) * _S), dim=-2).flatten(-3, -2)
        out = out.clone()
        out[..., :h, :w] = rows
    return out


class HaarWaveletL1(Regularizer):
    """``g(x) = λ ‖W x‖₁`` with ``W`` the orthonormal 2-D Haar transform (approximation band
    included, as in BART's ``-l1`` wavelet regularisation), on complex images ``(B, H, W)``.

    Its prox is exact because ``W`` is orthonormal: ``prox_{αg}(x) = Wᵀ soft(W x, αλ)``
    (complex soft thresholding of the coefficients' magnitudes).

    Args:
        lam: ``λ``: a number or a ``(B,)`` tensor (one weight per sample).
        levels: decomposition levels (reduced to what divides the image size evenly).
    """

    def __init__(self, lam, levels: int = 4) -> None:
        super().__init__()
        self.lam = lam
        self.levels = int(levels)

    def _lam(self, x: Tensor) -> Tensor:
        lam = torch.as_tensor(self.lam, dtype=x.real.dtype, device=x.device)
        return lam.view(-1, *([1] * (x.dim() - 1))) if lam.dim() == 1 else lam

    def value(self, x: Tensor) -> Tensor:
        lev = _levels(*x.shape[-2:], self.levels)
        return (self._lam(x) * haar2(x, lev).abs()).flatten(1).sum(1)

    def prox(self, x: Tensor, step=1.0) -> Tensor:
        lev = _levels(*x.shape[-2:], self.levels)
        return ihaar2(soft_threshold(haar2(x, lev), step * self._lam(x)), lev)


class CompressedSensing(nn.Module):
    """Compressed-sensing MRI: ``min_x ½‖A x − y‖² + λ s ‖W x‖₁`` by FISTA (the core's
    :class:`~unroll.steps.FISTAStep`, step ``1/L`` with ``L = ‖A‖²``), ``W`` the orthonormal Haar
    wavelet (:class:`HaarWaveletL1`), started from the zero-filled ``Aᴴy``.

    Args:
        lam: ``λ`` relative to the scale ``s`` = the largest ``|Aᴴy|`` of each sample, so one
            value fits data at any scale (tuned on the validation split by ``unroll evaluate``).
        levels: wavelet levels.
        max_iter: FISTA iterations.
        tol: stop a sample at this relative change (``None``: run ``max_iter``).

    Call: ``model(y, op)``: ``y`` ``(B, C, H, W)`` complex → ``(B, H, W)`` complex.
    """

    def __init__(self, lam: float = 3e-3, levels: int = 4, max_iter: int = 100, tol: Optional[float] = 1e-4) -> None:
        super().__init__()
        if isinstance(lam, bool) or not isinstance(lam, (int, float)) or not 0 <= lam < float("inf"):
            raise ValueError(f"lam: expected a finite number >= 0, got {lam!r}")
        for name, v in (("levels", levels), ("max_iter", max_iter)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name}: expected an int >= 1, got {v!r}")
        if tol is not None and (isinstance(tol, bool) or not isinstance(tol, (int, float)) or not 0 <= tol < 1):
            raise ValueError(f"tol: expected a number in [0, 1) or None, got {tol!r}")
        self.lam, self.levels, self.max_iter, self.tol = float(lam), levels, max_iter, tol
        self.name = "cs_wavelet"
        self.num_layers = 1

    def forward(self, y: Tensor, op: LinearOperator) -> Tensor:
        _check_call(y, op, "CompressedSensing")
        x0 = op.adjoint(y)
        scale = x0.detach().abs().flatten(1).amax(1)
        reg = HaarWaveletL1(float(self.lam) * scale, self.levels)
        problem = Problem.create(op, y, reg=reg, check=False)
        out = Unrolled(FISTAStep(reg), num_iters=self.max_iter).to(device=y.device)(problem, x0, tol=self.tol)
        return out.x

    def extra_repr(self) -> str:
        return f"lam={self.lam:g}, levels={self.levels}, max_iter={self.max_iter}, tol={self.tol}"
