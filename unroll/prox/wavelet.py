"""Orthogonal 2-D wavelet transforms (Haar, Daubechies db2–db4) and the wavelet-ℓ1 prior.

Why a small in-core DWT rather than ``pytorch_wavelets`` or ``PyWavelets``: the prior only needs an
*orthogonal* transform ``W`` (then ``prox_{t‖(W·)_d‖₁}(x) = Wᵀ soft(W x, t)`` exactly), which the
periodised filter bank gives in ~60 lines of torch: batched, on any device and dtype, differentiable
by autograd, and runnable inside ``torch.func`` transforms. ``pytorch_wavelets`` adds a dependency
whose default boundary modes (symmetric / zero padding) are not orthogonal, and PyWavelets works on
NumPy arrays (no GPU, no autograd). The filters are computed by Daubechies' spectral factorisation
(:func:`daubechies_lowpass`, in PyWavelets' ``dec_lo`` order); the tests check them against
PyWavelets' tabulated ``db2``–``db4``, their orthonormality and ``WᵀW = WWᵀ = I``.

Transform (one level along a dimension of even length ``L``, periodic boundary)::

    lo[n] = Σ_k h[k] x[(2n + k) mod L],    hi[n] = Σ_k g[k] x[(2n + k) mod L],    g[k] = (−1)^k h[K−1−k]

and its adjoint (= inverse) scatters back. In 2-D a level filters the rows then the columns, giving
the bands ``LL, (LH, HL, HH)``; further levels split ``LL``. ``H`` and ``W`` must be divisible by
``2^levels``.
"""

from __future__ import annotations

import functools
import math
from typing import List, Tuple

import torch
from torch import Tensor

from ..batched import flat
from .checks import check_image, check_step
from .functional import Scalar, soft_threshold
from .regularizers import _WeightedRegularizer

__all__ = ["WAVELETS", "daubechies_lowpass", "wavelet_filters", "dwt2", "idwt2", "WaveletL1"]

#: the orthogonal wavelets available: ``haar`` (= ``db1``) and Daubechies ``db2``–``db4``
WAVELETS = ("haar",) + tuple(f"db{n}" for n in range(1, 5))


@functools.lru_cache(maxsize=None)
def daubechies_lowpass(n: int) -> Tuple[float, ...]:
    """The ``2n`` low-pass coefficients of Daubechies' ``dbN`` wavelet in PyWavelets' ``dec_lo``
    order, computed by spectral factorisation (Daubechies 1988): ``h(z) ∝ (1 + z)^n Q(z)`` with
    ``|Q|²`` the polynomial ``P(y) = Σ_{k<n} C(n−1+k, k) yᵏ`` at ``y = sin²(ω/2)`` and the
    roots of ``Q`` inside the unit circle (minimum phase); normalised to ``Σ h = √2``.
    Orthonormal to machine precision (float64), unlike tabulated decimals."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n: expected an int >= 1, got {n!r}")
    def mul(u: Tensor, v: Tensor) -> Tensor:  # product of polynomials (coefficients, highest power first)
        return torch.nn.functional.conv1d(u.view(1, 1, -1), torch.flip(v, (0,)).view(1, 1, -1),
                                          padding=v.numel() - 1).view(-1)

    c128 = torch.complex128
    y = torch.tensor([-0.25, 0.5, -0.25], dtype=torch.float64)  # z·y(z), y = −(z − 1)²/(4z)
    q = torch.zeros(2 * n - 1, dtype=torch.float64)  # z^{n−1} P(y(z)), degree 2n − 2
    for k in range(n):
        term = torch.tensor([float(math.comb(n - 1 + k, k))], dtype=torch.float64)
        for _ in range(k):
            term = mul(term, y)
        term = torch.cat([term, torch.zeros(n - 1 - k, dtype=torch.float64)])  # × z^{n−1−k}
        q[q.numel() - term.numel():] += term
    h = torch.ones(1, dtype=c128)
    if n > 1:  # roots: eigenvalues of the companion matrix
        comp = torch.diag(torch.ones(q.numel() - 2, dtype=torch.float64), -1)
        comp[0, :] = -q[1:] / q[0]
        roots = torch.linalg.eigvals(comp)
        for r in roots[roots.abs() < 1]:
            h = mul(h, torch.stack([torch.ones((), dtype=c128), -r]))
    for _ in range(n):
        h = mul(h, torch.ones(2, dtype=c128))
    c = h.real
    c = c / c.sum() * math.sqrt(2.0)
    return tuple(float(v) for v in torch.flip(c, (0,)))


Bands = Tuple[Tensor, Tensor, Tensor]


def wavelet_filters(wavelet: str, dtype: torch.dtype = torch.float64, device=None) -> Tuple[Tensor, Tensor]:
    """``(h, g)``: the low- and high-pass analysis filters ``(K,)`` of an orthogonal wavelet
    (``"haar"``, ``"db1"``–``"db4"``)."""
    if wavelet not in WAVELETS:
        raise ValueError(f"wavelet: expected one of {', '.join(WAVELETS)}, got {wavelet!r}")
    h = torch.tensor(daubechies_lowpass(1 if wavelet == "haar" else int(wavelet[2:])), dtype=torch.float64)
    K = h.numel()
    g = torch.flip(h, (0,)) * torch.tensor([(-1.0) ** k for k in range(K)], dtype=torch.float64)
    return h.to(dtype=dtype, device=device), g.to(dtype=dtype, device=device)


def _indices(L: int, K: int, device) -> Tensor:
    n = torch.arange(L // 2, device=device)[:, None]
    k = torch.arange(K, device=device)[None, :]
    return (2 * n + k) % L  # (L/2, K)


def _analysis(x: Tensor, h: Tensor, g: Tensor) -> Tuple[Tensor, Tensor]:
    """One level along the last dim: ``(..., L) → (..., L/2), (..., L/2)``."""
    idx = _indices(x.shape[-1], h.numel(), x.device)
    xs = x[..., idx]  # (..., L/2, K)
    return xs @ h, xs @ g


def _synthesis(lo: Tensor, hi: Tensor, h: Tensor, g: Tensor) -> Tensor:
    """Adjoint (= inverse) of :func:`_analysis`: ``(..., L/2), (..., L/2) → (..., L)``."""
    L = 2 * lo.shape[-1]
    idx = _indices(L, h.numel(), lo.device)
    vals = lo[..., :, None] * h + hi[..., :, None] * g  # (..., L/2, K)
    out = lo.new_zeros(*lo.shape[:-1], L)
    return out.index_add(-1, idx.reshape(-1), vals.reshape(*vals.shape[:-2], -1))


def _check_levels(x: Tensor, levels: int, name: str = "x") -> None:
    if isinstance(levels, bool) or not isinstance(levels, int) or levels < 1:
        raise ValueError(f"levels: expected an int >= 1, got {levels!r}")
    H, W = x.shape[-2:]
    m = 2 ** levels
    if H % m or W % m:
        raise ValueError(f"{name}: a {levels}-level DWT needs H and W divisible by 2^{levels} = {m}, got "
                         f"shape {tuple(x.shape)}; crop or pad the image, or use fewer levels")


def dwt2(x: Tensor, wavelet: str = "db4", levels: int = 3) -> Tuple[Tensor, List[Bands]]:
    """Orthogonal periodised 2-D DWT over the last two dims.

    Args:
        x: ``(..., H, W)`` real, ``H`` and ``W`` divisible by ``2^levels``.
        wavelet: ``"haar"`` or ``"db1"``–``"db4"``.
        levels: number of levels.

    Returns:
        ``(ll, details)``: ``ll`` ``(..., H/2^J, W/2^J)`` and ``details[j] = (lh, hl, hh)``, each
        ``(..., H/2^{j+1}, W/2^{j+1})``, finest level first.
    """
    _check_levels(x, levels)
    h, g = wavelet_filters(wavelet, x.dtype, x.device)
    details: List[Bands] = []
    ll = x
    for _ in range(levels):
        lo, hi = _analysis(ll, h, g)  # along W
        lo_t, hi_t = lo.transpose(-1, -2), hi.transpose(-1, -2)
        ll_t, lh_t = _analysis(lo_t, h, g)  # along H
        hl_t, hh_t = _analysis(hi_t, h, g)
        ll = ll_t.transpose(-1, -2)
        details.append((lh_t.transpose(-1, -2), hl_t.transpose(-1, -2), hh_t.transpose(-1, -2)))
    return ll, details


def idwt2(ll: Tensor, details: List[Bands], wavelet: str = "db4") -> Tensor:
    """Inverse (and adjoint) of :func:`dwt2`: ``(ll, details) → (..., H, W)``."""
    h, g = wavelet_filters(wavelet, ll.dtype, ll.device)
    for lh, hl, hh in reversed(details):
        lo_t = _synthesis(ll.transpose(-1, -2), lh.transpose(-1, -2), h, g)
        hi_t = _synthesis(hl.transpose(-1, -2), hh.transpose(-1, -2), h, g)
        ll = _synthesis(lo_t.transpose(-1, -2), hi_t.transpose(-1, -2), h, g)
    return ll


class WaveletL1(_WeightedRegularizer):
    """``g(x) = lam · Σ |detail coefficients of W x|`` with ``W`` an orthogonal DWT (:func:`dwt2`);
    the coarsest approximation band is not penalised. The prox is exact:
    ``prox_{t·g}(x) = Wᵀ(ll, soft(details, t·lam))``.

    Args:
        lam: weight ``≥ 0`` (as :class:`~unroll.prox.L1`; per sample ``(B, 1, 1, 1)``).
        wavelet: ``"haar"`` or ``"db1"``–``"db4"``.
        levels: decomposition levels (``H, W`` divisible by ``2^levels``).
        learnable: learn ``lam`` (softplus).

    Shapes: ``value``: ``(B, C, H, W) → (B,)``; ``prox``: ``(B, C, H, W) → (B, C, H, W)``.
    """

    def __init__(self, lam: Scalar = 1.0, wavelet: str = "db4", levels: int = 3, learnable: bool = False) -> None:
        super().__init__(lam, learnable)
        wavelet_filters(wavelet)  # checks the name
        if isinstance(levels, bool) or not isinstance(levels, int) or levels < 1:
            raise ValueError(f"levels: expected an int >= 1, got {levels!r}")
        self.wavelet, self.levels = wavelet, levels

    def value(self, x: Tensor) -> Tensor:
        """``lam · ‖details‖₁`` per sample: ``(B, C, H, W) → (B,)``."""
        check_image(x, who="WaveletL1.value")
        _, details = dwt2(x, self.wavelet, self.levels)
        total = sum(flat(b.abs()).sum(1) for bands in details for b in bands)
        lam = self._lam_like(x)
        return (flat(lam).reshape(-1) if lam.dim() > 0 else lam) * total

    def prox(self, x: Tensor, step: Scalar = 1.0) -> Tensor:
        """``Wᵀ soft(W x, step·lam)`` on the detail bands: ``(B, C, H, W) → (B, C, H, W)``."""
        check_image(x, who="WaveletL1.prox")
        check_step(step, x, who="WaveletL1.prox")
        t = torch.as_tensor(step, dtype=x.dtype, device=x.device) * self._lam_like(x)
        ll, details = dwt2(x, self.wavelet, self.levels)
        details = [tuple(soft_threshold(b, t) for b in bands) for bands in details]
        return idwt2(ll, details, self.wavelet)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", wavelet={self.wavelet!r}, levels={self.levels}"
