"""Multi-coil MRI: the SENSE operator, coil combination and sensitivity estimation.

Conventions (``shared/DESIGN.md``): complex data as native complex tensors, coils on dim 1,
images ``(B, H, W)``, coil images and k-space ``(B, C, H, W)``; the Fourier transform is the
centred orthonormal :func:`~unroll.operators.fft.fft2c` over ``(H, W)``; masks select k-space
columns (the last dim) and broadcast over coils (:mod:`unroll.operators.masks`).
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from .base import LinearOperator
from .fft import fft2c, ifft2c
from .masks import as_binary_mask, center_mask

__all__ = ["SENSE", "MultiCoilMRI", "CoilSensitivities", "rss", "sense_combine", "estimate_sensitivities",
           "center_crop"]


def _coil_check(t: Tensor, maps: Tensor, name: str) -> None:
    """``t`` ``(B, C, H, W)`` against ``maps`` ``(B|-, C, H, W)``: the same coils and image size."""
    if t.dim() != 4:
        raise ValueError(f"{name}: expected (B, C, H, W) coil data, got shape {tuple(t.shape)}")
    c, hw = maps.shape[-3], tuple(maps.shape[-2:])
    if t.shape[1] != c:
        raise ValueError(f"{name}: {t.shape[1]} coils (dim 1 of {tuple(t.shape)}) do not match the {c} coils of "
                         f"the sensitivity maps {tuple(maps.shape)}")
    if tuple(t.shape[-2:]) != hw:
        raise ValueError(f"{name}: image size {tuple(t.shape[-2:])} does not match the sensitivity maps' {hw}")
    if maps.dim() == 4 and t.shape[0] != maps.shape[0]:
        raise ValueError(f"{name}: batch size {t.shape[0]} does not match the per-sample sensitivity maps of "
                         f"batch {maps.shape[0]}")


def _check_maps(maps: Tensor, name: str = "maps") -> None:
    if not isinstance(maps, Tensor):
        raise TypeError(f"{name}: expected a complex torch.Tensor (B, C, H, W) or (C, H, W), got {type(maps).__name__}")
    if maps.dim() not in (3, 4):
        raise ValueError(f"{name}: expected sensitivity maps (B, C, H, W) or (C, H, W), got shape {tuple(maps.shape)}")
    if not maps.is_complex():
        raise TypeError(f"{name}: expected complex sensitivity maps, got {maps.dtype}")


class CoilSensitivities(LinearOperator):
    """Multiplication by the coil sensitivity maps ``x ↦ (S_c x)_c``, ``(B, H, W) → (B, C, H, W)``,
    with adjoint ``y ↦ Σ_c conj(S_c) y_c``; :class:`SENSE` is ``Mask @ FFT2c @ CoilSensitivities``
    in one operator with a cheaper normal.

    Args:
        maps: complex sensitivity maps ``(C, H, W)`` (shared by the batch) or ``(B, C, H, W)``
            (per sample: ``per_sample`` is set and the inputs' batch must match).

    Shapes:
        ``forward``: ``(B, H, W) → (B, C, H, W)``; ``adjoint``: ``(B, C, H, W) → (B, H, W)``;
        ``normal``: ``x ↦ Σ_c |S_c|² x``, ``(B, H, W) → (B, H, W)``; :meth:`lipschitz` is exactly
        ``max Σ_c |S_c|²``.
    """

    is_complex = True

    def __init__(self, maps: Tensor) -> None:
        super().__init__()
        _check_maps(maps)
        self.register_buffer("maps", maps)
        self.per_sample = maps.dim() == 4
        self.in_shape, self.out_shape = tuple(maps.shape[-2:]), tuple(maps.shape[-3:])

    def _check(self, t: Tensor, shape, name: str, space: str) -> None:
        if isinstance(t, Tensor) and space == "range" and t.dim() == 4 and t.shape[1] != self.maps.shape[-3]:
            raise ValueError(f"{name}: {t.shape[1]} coils (dim 1 of {tuple(t.shape)}) do not match the "
                             f"{self.maps.shape[-3]} coils of the sensitivity maps {tuple(self.maps.shape)}")
        super()._check(t, shape, name, space)
        if self.per_sample and t.shape[0] != self.maps.shape[0]:
            raise ValueError(f"{name}: batch size {t.shape[0]} does not match the per-sample sensitivity maps of "
                             f"batch {self.maps.shape[0]}")

    def _maps(self) -> Tensor:
        return self.maps if self.per_sample else self.maps.unsqueeze(0)

    def _forward(self, x: Tensor) -> Tensor:
        return self._maps() * x.unsqueeze(1)

    def _adjoint(self, y: Tensor) -> Tensor:
        # a physical conjugate: inductor miscompiled the lazy conj view in graphs that apply the
        # normal operator twice with a convolution in between (found with VarNet/CIRIM compiled)
        return torch.sum(torch.conj_physical(self._maps()) * y, dim=1)

    def normal(self, x: Tensor) -> Tensor:
        """``Σ_c |S_c|² x`` ``(B, H, W) → (B, H, W)``."""
        self.check_input(x)
        return torch.sum(self._maps().abs() ** 2, dim=1) * x

    def lipschitz(self, *args, recompute: bool = False, **kwargs) -> Tensor:
        """``max Σ_c |S_c|²`` (exact; the largest over the batch for per-sample maps). Cached."""
        if recompute or not self._cached_lipschitz_valid():
            with torch.no_grad():
                self._lipschitz_cache = (self.maps.detach().abs() ** 2).sum(dim=-3).max()
            self._lipschitz_key = self._state_key()
        return self._lipschitz_cache

    def lipschitz_batch(self, batch: int, *args, **kwargs) -> Tensor:
        """``max Σ_c |S_{i,c}|²`` per sample ``(batch,)`` (exact)."""
        if not self.per_sample:
            return self.lipschitz().expand(batch)
        if batch != self.maps.shape[0]:
            raise ValueError(f"batch: the operator holds maps for {self.maps.shape[0]} samples, got a batch of {batch}")
        with torch.no_grad():
            return (self.maps.detach().abs() ** 2).sum(dim=1).flatten(1).amax(dim=1)


class SENSE(LinearOperator):
    """The multi-coil SENSE operator ``A x = M · F(S_c x)``, ``(B, H, W) → (B, C, H, W)``.

    ``S_c`` are the coil sensitivity maps, ``F`` the centred orthonormal 2-D FFT and ``M`` a 0/1
    k-space mask shared by the coils. The adjoint is ``Aᴴ y = Σ_c conj(S_c) Fᴴ(M y_c)`` and
    :meth:`normal` is ``Σ_c conj(S_c) Fᴴ M F(S_c x)`` (the mask applied once: ``M² = M``).

    Args:
        maps: complex sensitivity maps ``(C, H, W)`` (shared by the batch) or ``(B, C, H, W)``
            (per sample).
        mask: bool or 0/1 mask broadcasting against ``(B, C, H, W)``: ``(W,)``, ``(H, W)`` or
            ``(B|1, 1, H|1, W)`` (a leading dim > 1 is the batch); ``None`` for full sampling.

    ``per_sample`` is set when the maps are ``(B, C, H, W)`` or the mask has a batch dim > 1;
    then the inputs' batch must match.

    Shapes:
        ``forward``: ``(B, H, W) → (B, C, H, W)``; ``adjoint``: ``(B, C, H, W) → (B, H, W)``;
        ``normal``: ``(B, H, W) → (B, H, W)``.
    """

    is_complex = True

    def __init__(self, maps: Tensor, mask: Optional[Tensor] = None) -> None:
        super().__init__()
        _check_maps(maps)
        c, h, w = maps.shape[-3:]
        if mask is None:
            mask = torch.ones(w, dtype=torch.bool, device=maps.device)
        mask = as_binary_mask(mask, "mask")
        if mask.dim() == 1:
            mask4 = mask.view(1, 1, 1, -1)
        elif mask.dim() == 2:
            mask4 = mask.view(1, 1, *mask.shape)
        elif mask.dim() == 4:
            mask4 = mask
        else:
            raise ValueError(f"mask: expected (W,), (H, W) or (B|1, 1, H|1, W), got shape {tuple(mask.shape)}")
        if mask4.shape[-1] != w:
            raise ValueError(f"mask: width {mask4.shape[-1]} (mask {tuple(mask.shape)}) does not match the k-space "
                             f"width {w} of the sensitivity maps {tuple(maps.shape)}")
        if mask4.shape[-2] not in (1, h):
            raise ValueError(f"mask: height {mask4.shape[-2]} does not match the k-space height {h} (use 1 or {h})")
        if mask4.shape[1] != 1:
            raise ValueError(f"mask: expected (B|1, 1, H|1, W) with one mask for all coils, got {tuple(mask.shape)}")
        nb_maps = maps.shape[0] if maps.dim() == 4 else None
        nb_mask = mask4.shape[0] if mask4.shape[0] > 1 else None
        if nb_maps is not None and nb_mask is not None and nb_maps != nb_mask:
            raise ValueError(f"mask: batch {nb_mask} does not match the batch {nb_maps} of the sensitivity maps")
        self.batch = nb_maps if nb_maps is not None else nb_mask
        self.register_buffer("maps", maps)
        self.register_buffer("mask", mask4.to(maps.device))
        self.per_sample = self.batch is not None
        self.in_shape, self.out_shape = (h, w), (c, h, w)

    @property
    def num_coils(self) -> int:
        return self.maps.shape[-3]

    def _check(self, t: Tensor, shape, name: str, space: str) -> None:
        if (isinstance(t, Tensor) and space == "range" and t.dim() == 4 and t.shape[1] != self.num_coils
                and tuple(t.shape[-2:]) == tuple(self.in_shape)):
            raise ValueError(f"{name}: {t.shape[1]} coils (dim 1 of {tuple(t.shape)}) do not match the "
                             f"{self.num_coils} coils of the sensitivity maps {tuple(self.maps.shape)}")
        if isinstance(t, Tensor) and t.dim() >= 1 and t.shape[-1] != self.in_shape[-1] and t.dim() == len(shape) + 1:
            what = "k-space" if space == "range" else "image"
            raise ValueError(f"{name}: {what} width {t.shape[-1]} (shape {tuple(t.shape)}) does not match the mask and "
                             f"sensitivity-map width {self.in_shape[-1]} of {self.describe()}")
        super()._check(t, shape, name, space)
        if self.per_sample and t.shape[0] != self.batch:
            raise ValueError(f"{name}: batch size {t.shape[0]} does not match the per-sample maps/mask of "
                             f"batch {self.batch}")

    def _maps(self) -> Tensor:
        return self.maps if self.maps.dim() == 4 else self.maps.unsqueeze(0)

    def _forward(self, x: Tensor) -> Tensor:
        return fft2c(self._maps() * x.unsqueeze(1)) * self.mask

    def _adjoint(self, y: Tensor) -> Tensor:
        return torch.sum(torch.conj_physical(self._maps()) * ifft2c(y * self.mask), dim=1)

    def normal(self, x: Tensor) -> Tensor:
        """``AᴴA x = Σ_c conj(S_c) Fᴴ M F(S_c x)`` ``(B, H, W) → (B, H, W)`` (one masking)."""
        self.check_input(x)
        maps = self._maps()
        return torch.sum(maps.conj() * ifft2c(fft2c(maps * x.unsqueeze(1)) * self.mask), dim=1)

    def lipschitz(self, x: Optional[Tensor] = None, max_iter: int = 100, tol: float = 1e-6,
                  recompute: bool = False) -> Tensor:
        """``‖A‖₂²`` by power iteration (at most ``max_{pixels} Σ_c |S_c|²``, with equality under
        full sampling); the largest over the batch for per-sample maps or masks. Cached."""
        if not self.per_sample:
            return super().lipschitz(x, max_iter, tol, recompute)
        if not recompute and self._cached_lipschitz_valid():
            return self._lipschitz_cache
        est = self.lipschitz_batch(self.batch, x, max_iter, tol).max()
        self._lipschitz_cache, self._lipschitz_key = est, self._state_key()
        return est

    def lipschitz_batch(self, batch: int, x: Optional[Tensor] = None, max_iter: int = 100,
                        tol: float = 1e-6) -> Tensor:
        if self.per_sample and batch != self.batch:
            raise ValueError(f"batch: the operator holds maps/masks for {self.batch} samples, got a batch of {batch}")
        return super().lipschitz_batch(batch, x, max_iter, tol)

    def extra_repr(self) -> str:
        return f"maps={tuple(self.maps.shape)}, mask={tuple(self.mask.shape)}, per_sample={self.per_sample}"


MultiCoilMRI = SENSE
"""The name ``shared/DESIGN.md`` gives the multi-coil MRI operator: an alias of :class:`SENSE`."""


def rss(x: Tensor, dim: int = 1) -> Tensor:
    """Root-sum-of-squares coil combination ``sqrt(Σ_c |x_c|²)`` over ``dim`` (real result;
    ``(B, C, H, W) → (B, H, W)`` with the default ``dim=1``)."""
    if not isinstance(x, Tensor):
        raise TypeError(f"x: expected a torch.Tensor, got {type(x).__name__}")
    return torch.sqrt(torch.sum(x.abs() ** 2, dim=dim))


def sense_combine(coil_images: Tensor, maps: Tensor) -> Tensor:
    """SENSE coil combination ``Σ_c conj(S_c) x_c / Σ_c |S_c|²`` (0 where ``Σ_c |S_c|² = 0``).

    The least-squares image for fully sampled coil images ``x_c = S_c x``: it returns ``x``
    exactly wherever the maps do not vanish.

    Args:
        coil_images: ``(B, C, H, W)`` complex coil images.
        maps: ``(B, C, H, W)`` or ``(C, H, W)`` complex sensitivity maps.

    Returns:
        ``(B, H, W)`` complex image.
    """
    _check_maps(maps)
    if not isinstance(coil_images, Tensor):
        raise TypeError(f"coil_images: expected a torch.Tensor (B, C, H, W), got {type(coil_images).__name__}")
    _coil_check(coil_images, maps, "coil_images")
    m = maps if maps.dim() == 4 else maps.unsqueeze(0)
    num = torch.sum(m.conj() * coil_images, dim=1)
    den = torch.sum(m.abs() ** 2, dim=1)
    safe = torch.where(den > 0, den, torch.ones_like(den))
    return torch.where(den > 0, num / safe, torch.zeros_like(num))


def estimate_sensitivities(kspace: Tensor, num_low_freqs: int, threshold: float = 0.0) -> Tensor:
    """Coil sensitivities from the auto-calibration (ACS) lines, by the low-resolution ratio method.

    1. keep the ``num_low_freqs`` fully sampled centre columns (fastMRI's centre convention, see
       :func:`~unroll.operators.masks.center_mask`) and the same number of centre rows, i.e. a
       square-ish low-frequency block, zero elsewhere;
    2. weight it by a separable Hann window (``num_low_freqs + 2`` points without its zero ends,
       along both axes) to suppress Gibbs ringing;
    3. inverse centred FFT to low-resolution coil images ``I_c``;
    4. divide each by their root-sum-of-squares: ``S_c = I_c / sqrt(Σ_c |I_c|²)`` (0 where the
       RSS is ``<= threshold · max RSS`` of the sample).

    The estimate equals the true maps up to the normalisation ``sqrt(Σ_c |S_c|²)`` and the phase
    of the low-resolution object (both are common to all coils), so ``Σ_c |Ŝ_c|² = 1`` on the
    support. This is the simplest calibration; ESPIRiT is more robust to aliasing and noise.

    Args:
        kspace: ``(B, C, H, W)`` complex multi-coil k-space (at least the ACS columns sampled).
        num_low_freqs: number of fully sampled centre columns (``round(W · center_fraction)``).
        threshold: relative RSS threshold under which the maps are set to 0 (background).

    Returns:
        ``(B, C, H, W)`` complex sensitivity maps.
    """
    if not isinstance(kspace, Tensor):
        raise TypeError(f"kspace: expected a complex torch.Tensor (B, C, H, W), got {type(kspace).__name__}")
    if kspace.dim() != 4 or not kspace.is_complex():
        raise ValueError(f"kspace: expected complex multi-coil k-space (B, C, H, W), got {kspace.dtype} of shape "
                         f"{tuple(kspace.shape)}")
    h, w = kspace.shape[-2:]
    if isinstance(num_low_freqs, bool) or not isinstance(num_low_freqs, int) or not 1 <= num_low_freqs <= w:
        raise ValueError(f"num_low_freqs: expected an int in [1, {w}] (the ACS columns), got {num_low_freqs!r}")
    if not 0 <= threshold < 1:
        raise ValueError(f"threshold: expected a number in [0, 1), got {threshold!r}")
    real = kspace.real.dtype

    def window(n: int, size: int) -> Tensor:
        win = torch.zeros(size, dtype=real, device=kspace.device)
        sel = center_mask(size, n).to(kspace.device)
        win[sel] = torch.hann_window(n + 2, periodic=False, dtype=real, device=kspace.device)[1:-1]
        return win

    n_rows = min(num_low_freqs, h)
    win = window(n_rows, h)[:, None] * window(num_low_freqs, w)[None, :]
    low = ifft2c(kspace * win)
    norm = rss(low, dim=1).unsqueeze(1)
    limit = threshold * norm.flatten(1).amax(dim=1).view(-1, 1, 1, 1)
    keep = norm > limit
    safe = torch.where(keep, norm, torch.ones_like(norm))
    return torch.where(keep, low / safe, torch.zeros_like(low))


def center_crop(x: Tensor, shape) -> Tensor:
    """The centre ``(h, w)`` of the last two dimensions of ``x``, as fastMRI's ``center_crop``
    (rows from ``(H − h) // 2``, columns from ``(W − w) // 2``); real or complex, any leading dims.

    Args:
        x: ``(..., H, W)`` tensor (images ``(B, H, W)``, coil images ``(B, C, H, W)``, ...).
        shape: ``(h, w)`` with ``1 <= h <= H`` and ``1 <= w <= W``.

    Returns:
        ``(..., h, w)``, a view of ``x``.
    """
    if not isinstance(x, Tensor):
        raise TypeError(f"x: expected a torch.Tensor (..., H, W), got {type(x).__name__}")
    if x.dim() < 2:
        raise ValueError(f"x: expected at least 2 dimensions (..., H, W), got shape {tuple(x.shape)}")
    try:
        h, w = (int(s) for s in shape)
    except (TypeError, ValueError):
        raise ValueError(f"shape: expected (h, w), got {shape!r}") from None
    H, W = x.shape[-2:]
    if not (1 <= h <= H and 1 <= w <= W):
        raise ValueError(f"shape: the crop {(h, w)} must fit into the last two dims {(H, W)} of x "
                         f"(shape {tuple(x.shape)})")
    top, left = (H - h) // 2, (W - w) // 2
    return x[..., top:top + h, left:left + w]
