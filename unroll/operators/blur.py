"""Blur operators for deblurring: Gaussian, box and motion blur, FFT-based, batched ``(B, C, H, W)``.

:class:`Blur` is a depthwise "same"-size convolution with a fixed kernel (the kernel is flipped,
as in ``scipy.signal.convolve2d``; every channel gets the same kernel), computed with FFTs for
both boundary conditions:

* ``"circular"`` (periodic boundary): ``A = F⁻¹ diag(k̂) F`` with ``k̂`` the DFT of the kernel
  wrapped around the origin, so ``Aᴴ`` multiplies by ``conj(k̂)``, ``AᴴA`` by ``|k̂|²``,
  ``‖A‖₂² = max |k̂|²`` exactly, and ``(AᴴA + ρI)⁻¹`` is one FFT pair
  (:meth:`Blur.solve_shifted_normal`): the closed-form data step of plug-and-play ADMM.
* ``"zeros"`` (zero boundary, the linear convolution cropped to the image): the image is
  zero-padded to ``(H + kh//2, W + kw//2)`` — enough that the periodic convolution on the padded
  grid never wraps a pixel onto another — then circularly convolved and cropped back:
  ``A = C · F⁻¹ diag(k̂ₚ) F · P``, ``Aᴴ = Pᵀ · F⁻¹ diag(conj k̂ₚ) F · Cᵀ`` (``P`` pads, ``C``
  crops, ``Cᵀ`` pads with zeros, ``Pᵀ`` crops). ``AᴴA`` is not circulant, so its shifted inverse
  has no closed form (PnP-ADMM then solves it by :func:`unroll.cg`); ``‖A‖₂²`` by power
  iteration (``≤ max |k̂ₚ|²``).

The kernels (:func:`box_kernel`, :func:`motion_kernel`, and :func:`~unroll.operators.conv.gaussian_kernel`)
are normalised to sum 1, so a blur keeps the mean of an image and ``‖A‖₂ ≤ 1`` (``= 1`` in
circular mode: the DC gain).

This is :class:`~unroll.operators.conv.Convolution2d` (same kernel convention, checks and
circular mode) with an FFT zero-boundary mode and the shifted-normal solve.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence, Union

import torch
from torch import Tensor

from .conv import Convolution2d, PaddingMode, gaussian_kernel

__all__ = ["Blur", "GaussianBlur", "BoxBlur", "MotionBlur", "box_kernel", "motion_kernel", "gaussian_kernel"]


def _check_odd(name: str, v) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < 1 or v % 2 == 0:
        raise ValueError(f"{name}: expected a positive odd int, got {v!r}")
    return v


def _check_positive(name: str, v, allow_zero: bool = False) -> float:
    bad_type = isinstance(v, bool) or not isinstance(v, (int, float))
    if bad_type or not math.isfinite(v) or v < 0 or (v == 0 and not allow_zero):
        raise ValueError(f"{name}: expected a finite number {'>=' if allow_zero else '>'} 0, got {v!r}")
    return float(v)


def box_kernel(size: int, dtype: Optional[torch.dtype] = None, device: Optional[torch.device] = None) -> Tensor:
    """A uniform ``(size, size)`` kernel, each entry ``1/size²`` (``size`` a positive odd int)."""
    _check_odd("size", size)
    dtype = torch.get_default_dtype() if dtype is None else dtype
    return torch.full((size, size), 1.0 / size ** 2, dtype=dtype, device=device)


def motion_kernel(length: float, angle: float = 0.0, size: Optional[int] = None, dtype: Optional[torch.dtype] = None,
                  device: Optional[torch.device] = None) -> Tensor:
    """A linear motion-blur kernel: a centred segment of ``length`` pixels at ``angle`` degrees
    (counter-clockwise from the horizontal axis, rows pointing down), drawn with bilinear weights
    on 64 samples per pixel of length and normalised to sum 1.

    Args:
        length: segment length in pixels, ``> 0`` (``≤ 1`` gives (almost) the identity).
        angle: direction in degrees.
        size: odd side of the kernel (default: the smallest odd size holding the segment).

    Returns:
        ``(size, size)`` real tensor, symmetric about its centre (the segment is centred).
    """
    length = _check_positive("length", length)
    if isinstance(angle, bool) or not isinstance(angle, (int, float)) or not math.isfinite(angle):
        raise ValueError(f"angle: expected a finite number of degrees, got {angle!r}")
    if size is None:
        size = 2 * math.ceil(length / 2) + 1
    _check_odd("size", size)
    dtype = torch.get_default_dtype() if dtype is None else dtype
    c = size // 2
    n = max(2, int(math.ceil(64 * length)))
    t = torch.linspace(-length / 2, length / 2, n, dtype=torch.float64)
    th = math.radians(angle)
    cols = c + t * math.cos(th)
    rows = c - t * math.sin(th)
    k = torch.zeros(size + 1, size + 1, dtype=torch.float64)
    r0, c0 = rows.floor(), cols.floor()
    fr, fc = rows - r0, cols - c0
    r0, c0 = r0.long().clamp(0, size - 1), c0.long().clamp(0, size - 1)
    for dr, wr in ((0, 1 - fr), (1, fr)):
        for dc, wc in ((0, 1 - fc), (1, fc)):
            k.index_put_((r0 + dr, c0 + dc), wr * wc, accumulate=True)
    k = k[:size, :size]
    k = 0.5 * (k + torch.flip(k, dims=(0, 1)))  # exactly centred (the sampling is symmetric up to rounding)
    return (k / k.sum()).to(dtype=dtype, device=device)


class Blur(Convolution2d):
    """Depthwise "same"-size blur ``(B, C, H, W) → (B, C, H, W)`` with a fixed kernel, FFT-based
    in both boundary modes (see the module docstring).

    Args:
        kernel: ``(kh, kw)`` real tensor, odd sizes (stored as the buffer ``kernel``).
        image_shape: ``(C, H, W)`` of one sample.
        padding_mode: ``"circular"`` (periodic boundary; closed-form shifted inverse, exact
            Lipschitz constant) or ``"zeros"`` (zero boundary).

    Inputs must have the kernel's precision (convert with ``.to(dtype)``). Real only (a complex
    kernel belongs to :class:`~unroll.operators.conv.Convolution2d`).

    Shapes:
        ``forward``, ``adjoint``, ``normal``, ``solve_shifted_normal``: ``(B, C, H, W) → (B, C, H, W)``.
    """

    def __init__(self, kernel: Tensor, image_shape: Sequence[int], padding_mode: PaddingMode = "circular") -> None:
        if isinstance(kernel, Tensor) and kernel.is_complex():
            raise TypeError(f"kernel: Blur takes a real kernel, got {kernel.dtype}; use Convolution2d for complex ones")
        super().__init__(kernel, image_shape, padding_mode=padding_mode)
        if padding_mode == "zeros":  # Convolution2d has no transfer function with zeros: ours is padded
            del self.transfer
            self.register_buffer("transfer", self._transfer_function(), persistent=False)

    @property
    def padded_shape(self):
        """The FFT grid ``(Hp, Wp)``: ``(H, W)`` in circular mode, ``(H + kh//2, W + kw//2)`` with zeros."""
        _, H, W = self.in_shape
        if self.padding_mode == "circular":
            return H, W
        kh, kw = self.kernel.shape
        return H + kh // 2, W + kw // 2

    def _transfer_function(self) -> Tensor:
        """``view_as_real`` of ``rfft2`` of the kernel wrapped around the origin of the FFT grid."""
        Hp, Wp = self.padded_shape
        k = self.kernel.detach()
        kh, kw = k.shape
        rows = (torch.arange(kh, device=k.device) - kh // 2) % Hp
        cols = (torch.arange(kw, device=k.device) - kw // 2) % Wp
        psf = torch.zeros((Hp, Wp), dtype=k.dtype, device=k.device)
        psf.index_put_((rows[:, None].expand(kh, kw), cols[None, :].expand(kh, kw)), k, accumulate=True)
        return torch.view_as_real(torch.fft.rfft2(psf)).contiguous()

    def _load_from_state_dict(self, *args, **kwargs):  # keep the transfer function in sync (both modes)
        super(Convolution2d, self)._load_from_state_dict(*args, **kwargs)
        with torch.no_grad():
            self.transfer.copy_(self._transfer_function().to(self.transfer.dtype))

    def _fft_apply(self, x: Tensor, multiplier: Tensor) -> Tensor:
        Hp, Wp = self.padded_shape
        H, W = x.shape[-2:]
        if (Hp, Wp) != (H, W):
            x = torch.nn.functional.pad(x, (0, Wp - W, 0, Hp - H))
        out = torch.fft.irfft2(torch.fft.rfft2(x) * multiplier, s=(Hp, Wp))
        return out[..., :H, :W] if (Hp, Wp) != (H, W) else out

    def _forward(self, x: Tensor) -> Tensor:
        return self._fft_apply(x, self._khat())

    def _adjoint(self, y: Tensor) -> Tensor:
        return self._fft_apply(y, self._khat().conj())

    def normal(self, x: Tensor) -> Tensor:
        """``AᴴA x``: one FFT pair (``|k̂|²``) in circular mode, two with zeros."""
        self._check(x, self.in_shape, "x", "domain")
        if self.padding_mode == "circular":
            khat = self._khat()
            return self._fft_apply(x, khat.real ** 2 + khat.imag ** 2)
        return self._adjoint(self._forward(x))

    @property
    def has_shifted_inverse(self) -> bool:
        """Whether :meth:`solve_shifted_normal` has a closed form (circular mode)."""
        return self.padding_mode == "circular"

    def solve_shifted_normal(self, b: Tensor, rho: Union[float, Tensor]) -> Tensor:
        """``(AᴴA + ρI)⁻¹ b`` in closed form (circular mode only): ``F⁻¹ (F b / (|k̂|² + ρ))``.

        Args:
            b: ``(B, C, H, W)``.
            rho: ``> 0``: a number, a 0-dim tensor or ``(B, 1, 1, 1)`` (one per sample);
                differentiable (a learned ρ gets its gradient).

        Returns:
            ``(B, C, H, W)``, differentiable in ``b`` and ``rho``.
        """
        if self.padding_mode != "circular":
            raise ValueError("solve_shifted_normal: (AᴴA + ρI)⁻¹ has a closed form only with "
                             "padding_mode='circular' "
                             "(a zero boundary makes AᴴA non-circulant); solve it with unroll.cg instead")
        self._check(b, self.in_shape, "b", "domain")
        if isinstance(rho, (int, float)):
            if not math.isfinite(rho) or rho <= 0:
                raise ValueError(f"rho: expected a finite number > 0, got {rho!r}")
        elif not isinstance(rho, Tensor):
            raise TypeError(f"rho: expected a number or a tensor, got {type(rho).__name__}")
        khat = self._khat()
        return self._fft_apply(b, 1.0 / (khat.real ** 2 + khat.imag ** 2 + rho))

    def lipschitz(self, x: Optional[Tensor] = None, max_iter: int = 100, tol: float = 1e-6,
                  recompute: bool = False) -> Tensor:
        """``‖A‖₂²``: exact ``max |k̂|²`` in circular mode, power iteration with zeros. Cached."""
        if self.padding_mode == "circular":
            return super().lipschitz(x, max_iter=max_iter, tol=tol, recompute=recompute)
        return super(Convolution2d, self).lipschitz(x, max_iter=max_iter, tol=tol, recompute=recompute)


def _shape(image_shape) -> tuple:
    return tuple(image_shape)


class GaussianBlur(Blur):
    """Isotropic Gaussian blur of standard deviation ``sigma`` pixels.

    Args:
        image_shape: ``(C, H, W)``.
        sigma: standard deviation in pixels, ``> 0``.
        size: odd kernel side (default ``2·⌈3σ⌉ + 1``: the kernel holds ±3σ).
        padding_mode: ``"circular"`` or ``"zeros"``.
        dtype: kernel dtype (default torch's default).

    Shapes: as :class:`Blur`.
    """

    def __init__(self, image_shape: Sequence[int], sigma: float = 1.0, size: Optional[int] = None,
                 padding_mode: PaddingMode = "circular", dtype: Optional[torch.dtype] = None) -> None:
        sigma = _check_positive("sigma", sigma)
        size = 2 * math.ceil(3 * sigma) + 1 if size is None else _check_odd("size", size)
        super().__init__(gaussian_kernel(size, sigma, dtype=dtype), _shape(image_shape), padding_mode)
        self.sigma = sigma

    def _fingerprint_extra(self) -> str:
        return super()._fingerprint_extra() + f",sigma={self.sigma}"


class BoxBlur(Blur):
    """Uniform ``size × size`` blur.

    Args:
        image_shape: ``(C, H, W)``.
        size: odd side of the box.
        padding_mode: ``"circular"`` or ``"zeros"``.
        dtype: kernel dtype.

    Shapes: as :class:`Blur`.
    """

    def __init__(self, image_shape: Sequence[int], size: int = 3, padding_mode: PaddingMode = "circular",
                 dtype: Optional[torch.dtype] = None) -> None:
        super().__init__(box_kernel(size, dtype=dtype), _shape(image_shape), padding_mode)


class MotionBlur(Blur):
    """Linear motion blur along a segment of ``length`` pixels at ``angle`` degrees
    (:func:`motion_kernel`).

    Args:
        image_shape: ``(C, H, W)``.
        length: segment length in pixels.
        angle: direction in degrees (counter-clockwise from the horizontal).
        size: odd kernel side (default: just holds the segment).
        padding_mode: ``"circular"`` or ``"zeros"``.
        dtype: kernel dtype.

    Shapes: as :class:`Blur`.
    """

    def __init__(self, image_shape: Sequence[int], length: float = 9.0, angle: float = 0.0,
                 size: Optional[int] = None, padding_mode: PaddingMode = "circular",
                 dtype: Optional[torch.dtype] = None) -> None:
        super().__init__(motion_kernel(length, angle, size=size, dtype=dtype), _shape(image_shape), padding_mode)
        self.length, self.angle = float(length), float(angle)
