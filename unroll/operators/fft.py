"""Centred orthonormal 2-D FFT over the last two dimensions of native complex tensors.

The convention is fastMRI's (``fastmri/fftc.py``): ``ifftshift → fftn(norm="ortho") → fftshift``
over ``(H, W) = (-2, -1)``, so the zero frequency sits at index ``(H // 2, W // 2)`` of k-space
and the image origin at ``(H // 2, W // 2)`` of the image. Unlike fastMRI the data are native
complex tensors (``complex64``/``complex128``), not a trailing real dimension of size 2.

``F = P_f · DFT · P_i`` with the shift permutations ``P_i = P_f⁻¹ = P_fᵀ``, so
``Fᴴ = P_f · DFT⁻¹ · P_i`` is exactly :func:`ifft2c` (for odd sizes too) and ``F`` is unitary.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import Tensor

from .base import LinearOperator

__all__ = ["fft2c", "ifft2c", "FFT2c"]

_DIMS = (-2, -1)


def _check_complex(x: Tensor, name: str, fn: str) -> None:
    if not isinstance(x, Tensor):
        raise TypeError(f"{name}: {fn} expected a torch.Tensor, got {type(x).__name__}")
    if x.dim() < 2:
        raise ValueError(f"{name}: {fn} expected a tensor (..., H, W), got shape {tuple(x.shape)}")
    if not x.is_complex():
        raise TypeError(
            f"{name}: {fn} expected a native complex tensor (..., H, W), got {x.dtype} of shape "
            f"{tuple(x.shape)}; convert real images with x.to(torch.complex64) (and fastMRI's "
            "(..., 2) real layout with torch.view_as_complex)"
        )


def fft2c(x: Tensor) -> Tensor:
    """Centred orthonormal 2-D FFT: image ``(..., H, W)`` → k-space ``(..., H, W)`` (complex)."""
    _check_complex(x, "x", "fft2c")
    x = torch.fft.ifftshift(x, dim=_DIMS)
    x = torch.fft.fftn(x, dim=_DIMS, norm="ortho")
    return torch.fft.fftshift(x, dim=_DIMS)


def ifft2c(y: Tensor) -> Tensor:
    """Centred orthonormal inverse 2-D FFT (the adjoint and inverse of :func:`fft2c`):
    k-space ``(..., H, W)`` → image ``(..., H, W)`` (complex)."""
    _check_complex(y, "y", "ifft2c")
    y = torch.fft.ifftshift(y, dim=_DIMS)
    y = torch.fft.ifftn(y, dim=_DIMS, norm="ortho")
    return torch.fft.fftshift(y, dim=_DIMS)


class FFT2c(LinearOperator):
    """The centred orthonormal 2-D FFT :func:`fft2c` as a (unitary, complex) operator.

    Args:
        shape: per-sample shape ``(..., H, W)`` it acts on (e.g. ``(H, W)`` or ``(C, H, W)``);
            ``None`` accepts any shape with at least two trailing dimensions.

    Shapes:
        ``forward``, ``adjoint``, ``normal``: ``(B, *shape) → (B, *shape)``; ``normal`` is the
        identity and :meth:`lipschitz` is exactly 1.
    """

    is_complex = True

    def __init__(self, shape: Optional[Sequence[int]] = None) -> None:
        super().__init__()
        if shape is not None:
            shape = tuple(int(s) for s in shape)
            if len(shape) < 2 or any(s < 1 for s in shape):
                raise ValueError(f"shape: expected a per-sample shape (..., H, W) of positive sizes, got {shape}")
        self.in_shape = self.out_shape = shape

    def _check(self, t: Tensor, shape, name: str, space: str) -> None:
        super()._check(t, shape, name, space)
        if shape is None and t.dim() < 3:
            raise ValueError(f"{name}: expected a batch (B, ..., H, W) for {self.describe()}, "
                             f"got shape {tuple(t.shape)}")

    def _forward(self, x: Tensor) -> Tensor:
        return fft2c(x)

    def _adjoint(self, y: Tensor) -> Tensor:
        return ifft2c(y)

    def normal(self, x: Tensor) -> Tensor:
        """``FᴴF = I``: returns ``x`` (after the input check)."""
        self.check_input(x)
        return x

    def lipschitz(self, *args, **kwargs) -> Tensor:
        """``‖F‖₂² = 1`` (exact: ``F`` is unitary)."""
        return torch.ones(())

    def lipschitz_batch(self, batch: int, *args, **kwargs) -> Tensor:
        return torch.ones(()).expand(batch)
