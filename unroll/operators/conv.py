"""2-D convolution with a fixed kernel (blur, deblurring problems).

The operator is a true convolution (the kernel is flipped, as in ``scipy.signal.convolve2d``),
"same" size, applied to every channel with the same kernel (depthwise)::

    (A x)[b, c, i, j] = Σ_{p, q} k[p, q] · x[b, c, i − (p − kh//2), j − (q − kw//2)]

where the out-of-range samples of ``x`` are taken periodically (``padding_mode="circular"``) or
as zeros (``padding_mode="zeros"``).

* ``"circular"``: computed with FFTs. ``A`` is diagonalised by the 2-D DFT with transfer function
  ``k̂`` (the DFT of the kernel wrapped around the origin), so ``Aᴴ`` multiplies by ``conj(k̂)``,
  ``AᴴA`` by ``|k̂|²`` and ``‖A‖₂² = max |k̂|²`` exactly.
* ``"zeros"``: ``conv2d`` on the zero-padded input, the adjoint ``conv_transpose2d`` with the
  same (conjugated) weights and padding; ``‖A‖₂²`` by power iteration.
"""

from __future__ import annotations

import math
from typing import Literal, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from .base import LinearOperator

__all__ = ["Convolution2d", "gaussian_kernel"]

PaddingMode = Literal["zeros", "circular"]


def gaussian_kernel(size: int, sigma: float, dtype: Optional[torch.dtype] = None,
                    device: Optional[torch.device] = None) -> Tensor:
    """An isotropic Gaussian blur kernel ``(size, size)``, normalised to sum 1.

    Args:
        size: side length, a positive odd int (the kernel is centred on its middle entry).
        sigma: standard deviation in pixels, ``> 0``.
        dtype: floating dtype (default: torch's default dtype).
        device: device of the result.

    Returns:
        a real ``(size, size)`` tensor with ``k[i, j] ∝ exp(−((i − c)² + (j − c)²) / (2σ²))``,
        ``c = size // 2``.
    """
    if isinstance(size, bool) or not isinstance(size, int) or size < 1 or size % 2 == 0:
        raise ValueError(f"size: expected a positive odd int, got {size!r}")
    if isinstance(sigma, bool) or not isinstance(sigma, (int, float)) or not math.isfinite(sigma) or sigma <= 0:
        raise ValueError(f"sigma: expected a finite number > 0, got {sigma!r}")
    dtype = torch.get_default_dtype() if dtype is None else dtype
    if not dtype.is_floating_point:
        raise TypeError(f"dtype: expected a real floating dtype, got {dtype}")
    r = torch.arange(size, dtype=torch.float64) - size // 2
    g = torch.exp(-0.5 * (r / float(sigma)) ** 2)
    k = g[:, None] * g[None, :]
    return (k / k.sum()).to(dtype=dtype, device=device)


class Convolution2d(LinearOperator):
    """Depthwise "same"-size 2-D convolution ``(B, C, H, W) → (B, C, H, W)`` with a fixed kernel.

    Args:
        kernel: ``(kh, kw)`` tensor, odd sizes, real or complex (stored as the buffer ``kernel``).
            A real kernel makes a real operator (complex inputs are refused), a complex one a
            complex operator.
        image_shape: ``(C, H, W)`` of one sample; every channel is convolved with the same kernel.
        padding_mode: ``"circular"`` (default: periodic boundary, FFT-based, ``AᴴA`` circulant,
            exact :meth:`lipschitz`) or ``"zeros"`` (zero boundary, ``conv2d`` /
            ``conv_transpose2d``).

    Inputs must have the kernel's precision (``float32`` data with a ``float32`` kernel, …):
    convert the operator with ``.to(dtype)`` otherwise. The kernel is fixed: to change it,
    build a new operator (or load a state dict, which refreshes the cached transfer function).

    Shapes:
        ``forward``, ``adjoint``, ``normal``: ``(B, C, H, W) → (B, C, H, W)``.
    """

    def __init__(self, kernel: Tensor, image_shape: Sequence[int], padding_mode: PaddingMode = "circular") -> None:
        super().__init__()
        if not isinstance(kernel, Tensor):
            raise TypeError(f"kernel: expected a torch.Tensor, got {type(kernel).__name__}")
        if kernel.dim() != 2:
            raise ValueError(f"kernel: expected a 2-D (kh, kw) tensor, got shape {tuple(kernel.shape)}")
        kh, kw = kernel.shape
        if kh % 2 == 0 or kw % 2 == 0:
            raise ValueError(f"kernel: expected odd sizes (kh, kw) so that it has a centre, got {(kh, kw)}")
        if not (kernel.is_floating_point() or kernel.is_complex()):
            raise TypeError(f"kernel: expected a floating or complex dtype, got {kernel.dtype}")
        try:
            shape = tuple(int(s) for s in image_shape)
        except TypeError:
            raise TypeError(f"image_shape: expected a tuple (C, H, W) of ints, got {image_shape!r}") from None
        if len(shape) != 3 or any(s < 1 for s in shape) or any(int(s) != s for s in image_shape):
            raise ValueError(f"image_shape: expected a tuple (C, H, W) of positive ints, got {tuple(image_shape)!r}")
        if padding_mode not in ("zeros", "circular"):
            raise ValueError(f"padding_mode: expected 'zeros' or 'circular', got {padding_mode!r}")
        self.padding_mode = padding_mode
        self.register_buffer("kernel", kernel.detach().clone())
        self.in_shape = self.out_shape = shape
        self.is_complex = kernel.is_complex()
        if padding_mode == "circular":
            # derived from the kernel (not saved): the transfer function, stored as a real view so
            # that .to(dtype) casts it like the kernel
            self.register_buffer("transfer", self._transfer_function(), persistent=False)
        else:
            self.transfer = None

    # ------------------------------------------------------------------ kernel helpers
    @property
    def kernel_size(self):
        return tuple(self.kernel.shape)

    def _transfer_function(self) -> Tensor:
        """``view_as_real`` of the DFT of the kernel wrapped around the origin: ``(H, W//2+1, 2)``
        (``rfft2``) for a real kernel, ``(H, W, 2)`` (``fft2``) for a complex one."""
        _, H, W = self.in_shape
        k = self.kernel.detach()
        kh, kw = k.shape
        rows = (torch.arange(kh, device=k.device) - kh // 2) % H
        cols = (torch.arange(kw, device=k.device) - kw // 2) % W
        psf = torch.zeros((H, W), dtype=k.dtype, device=k.device)
        # accumulate: a kernel larger than the image wraps around (periodic boundary)
        psf.index_put_((rows[:, None].expand(kh, kw), cols[None, :].expand(kh, kw)), k, accumulate=True)
        khat = torch.fft.fft2(psf) if k.is_complex() else torch.fft.rfft2(psf)
        return torch.view_as_real(khat).contiguous()

    def _khat(self) -> Tensor:
        return torch.view_as_complex(self.transfer)

    def _load_from_state_dict(self, *args, **kwargs):  # keep the transfer function in sync
        super()._load_from_state_dict(*args, **kwargs)
        if self.padding_mode == "circular":
            with torch.no_grad():
                self.transfer.copy_(self._transfer_function().to(self.transfer.dtype))

    def _weight(self, channels: int) -> Tensor:
        """``conv2d`` weight ``(C, 1, kh, kw)``: the flipped kernel (conv2d correlates)."""
        return torch.flip(self.kernel, dims=(0, 1)).expand(channels, 1, *self.kernel.shape)

    # ------------------------------------------------------------------ checks
    def _check(self, t: Tensor, shape, name: str, space: str) -> None:
        super()._check(t, shape, name, space)
        if t.real.dtype != self.kernel.real.dtype:
            raise TypeError(f"{name}: dtype {t.dtype} does not match the precision of the kernel "
                            f"({self.kernel.dtype}); convert one of them (e.g. op.to({t.real.dtype}))")

    def _fingerprint_extra(self) -> str:
        return f"padding_mode={self.padding_mode}"

    def extra_repr(self) -> str:
        return (f"kernel_size={self.kernel_size}, image_shape={self.in_shape}, padding_mode={self.padding_mode!r}, "
                f"dtype={self.kernel.dtype}")

    # ------------------------------------------------------------------ circular (FFT)
    def _apply_transfer(self, x: Tensor, khat: Tensor) -> Tensor:
        """Multiply the 2-D DFT of ``x`` by ``khat``: ``rfft2`` for a real kernel (real data),
        ``fft2`` for a complex one."""
        if self.kernel.is_complex():
            return torch.fft.ifft2(torch.fft.fft2(x) * khat)
        return torch.fft.irfft2(torch.fft.rfft2(x) * khat, s=tuple(x.shape[-2:]))

    def _circular(self, x: Tensor, conj: bool) -> Tensor:
        khat = self._khat()
        return self._apply_transfer(x, khat.conj() if conj else khat)

    # ------------------------------------------------------------------ zeros (conv2d)
    def _zeros_forward(self, x: Tensor) -> Tensor:
        kh, kw = self.kernel.shape
        return F.conv2d(x, self._weight(x.shape[1]), padding=(kh // 2, kw // 2), groups=x.shape[1])

    def _zeros_adjoint(self, y: Tensor) -> Tensor:
        kh, kw = self.kernel.shape
        w = self._weight(y.shape[1])
        return F.conv_transpose2d(y, w.conj() if w.is_complex() else w, padding=(kh // 2, kw // 2),
                                  groups=y.shape[1])

    # ------------------------------------------------------------------ contract
    def _forward(self, x: Tensor) -> Tensor:
        if self.padding_mode == "circular":
            return self._circular(x, conj=False)
        return self._zeros_forward(x)

    def _adjoint(self, y: Tensor) -> Tensor:
        if self.padding_mode == "circular":
            return self._circular(y, conj=True)
        return self._zeros_adjoint(y)

    def normal(self, x: Tensor) -> Tensor:
        """``AᴴA x``; one FFT pair (multiplication by ``|k̂|²``) in circular mode."""
        self._check(x, self.in_shape, "x", "domain")
        if self.padding_mode == "circular":
            khat = self._khat()
            return self._apply_transfer(x, khat.real ** 2 + khat.imag ** 2)
        return self._zeros_adjoint(self._zeros_forward(x))

    def lipschitz(self, x: Optional[Tensor] = None, max_iter: int = 100, tol: float = 1e-6,
                  recompute: bool = False) -> Tensor:
        """``‖A‖₂²``: exact ``max |k̂|²`` in circular mode, else power iteration. Cached."""
        if self.padding_mode != "circular":
            return super().lipschitz(x, max_iter=max_iter, tol=tol, recompute=recompute)
        if self._lipschitz_cache is None or recompute:
            with torch.no_grad():
                khat = self._khat()
                self._lipschitz_cache = (khat.real ** 2 + khat.imag ** 2).max()
        return self._lipschitz_cache
