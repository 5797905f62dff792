"""A small U-Net and its complex-image wrapper, the image-space prior of the MRI models.

Written for this project (not copied from fastMRI): ``UNet`` is Ronneberger et al.'s encoder /
decoder with skip connections, with instance normalisation, leaky ReLUs, 2×2 average pooling on
the way down and 2×2 transposed convolutions on the way up (as the E2E VarNet paper uses it).
``NormUNet`` applies it to complex images: complex → (real, imaginary) channels, per-sample
normalisation, padding to a size the pooling divides, and back, so the network sees the same
input statistics whatever the scale of the k-space data. Shared by :mod:`.varnet` (the cascade
refiner and the sensitivity-map network) and available to any other model.
"""

from __future__ import annotations

from typing import Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["UNet", "NormUNet", "complex_to_channels", "channels_to_complex"]


def _int_at_least(value, name: str, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name}: expected an int >= {low}, got {value!r}")
    return value


def complex_to_channels(x: Tensor) -> Tensor:
    """Complex ``(B, C, H, W)`` → real ``(B, 2C, H, W)`` (channel ``2c`` real, ``2c+1`` imaginary)."""
    b, c, h, w = x.shape
    return torch.stack([x.real, x.imag], dim=2).reshape(b, 2 * c, h, w)


def channels_to_complex(x: Tensor) -> Tensor:
    """Real ``(B, 2C, H, W)`` → complex ``(B, C, H, W)`` (the inverse of :func:`complex_to_channels`)."""
    b, c2, h, w = x.shape
    if c2 % 2:
        raise ValueError(f"x: expected an even number of channels (real, imaginary pairs), got shape {tuple(x.shape)}")
    return torch.complex(x[:, 0::2], x[:, 1::2])


class _ConvBlock(nn.Sequential):
    """Two ``3×3 conv → InstanceNorm → LeakyReLU(0.2) → Dropout2d`` layers, ``(B, cin, H, W) →
    (B, cout, H, W)``."""

    def __init__(self, cin: int, cout: int, dropout: float) -> None:
        layers = []
        for a, b in ((cin, cout), (cout, cout)):
            layers += [nn.Conv2d(a, b, kernel_size=3, padding=1, bias=False), nn.InstanceNorm2d(b),
                       nn.LeakyReLU(0.2), nn.Dropout2d(dropout)]
        super().__init__(*layers)


class _Up(nn.Sequential):
    """``2×2`` transposed convolution (stride 2) ``→ InstanceNorm → LeakyReLU``: doubles H and W."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__(nn.ConvTranspose2d(cin, cout, kernel_size=2, stride=2, bias=False),
                         nn.InstanceNorm2d(cout), nn.LeakyReLU(0.2))


class UNet(nn.Module):
    """U-Net ``(B, in_channels, H, W) → (B, out_channels, H, W)`` on real images.

    Encoder: ``num_pools`` levels of :class:`_ConvBlock` then 2×2 average pooling, the width
    doubling from ``channels`` at each level; a bottleneck block; decoder: transposed convolution,
    concatenation with the encoder's feature map of the same level, a block; a final ``1×1``
    convolution. Any ``H, W`` work: after each up-sampling the map is zero-padded to the size of
    its skip connection (odd sizes lose a row/column to the pooling). Instance normalisation needs
    more than one pixel per channel at the bottleneck, i.e. ``H, W >= 2^(num_pools+1)``;
    :class:`NormUNet` pads small images to that.

    Args:
        in_channels, out_channels: image channels in and out.
        channels: feature maps of the first level (doubling per level).
        num_pools: number of pooling levels.
        dropout: ``Dropout2d`` probability in every block.
    """

    def __init__(self, in_channels: int, out_channels: int, channels: int = 32, num_pools: int = 4,
                 dropout: float = 0.0) -> None:
        super().__init__()
        _int_at_least(in_channels, "in_channels", 1)
        _int_at_least(out_channels, "out_channels", 1)
        _int_at_least(channels, "channels", 1)
        _int_at_least(num_pools, "num_pools", 1)
        if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
            raise ValueError(f"dropout: expected a probability in [0, 1), got {dropout!r}")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.channels, self.num_pools = channels, num_pools
        self.down = nn.ModuleList()
        ch = channels
        cin = in_channels
        for _ in range(num_pools):
            self.down.append(_ConvBlock(cin, ch, dropout))
            cin, ch = ch, ch * 2
        self.bottleneck = _ConvBlock(cin, ch, dropout)
        self.up = nn.ModuleList()
        self.up_blocks = nn.ModuleList()
        for _ in range(num_pools):
            self.up.append(_Up(ch, ch // 2))
            self.up_blocks.append(_ConvBlock(ch, ch // 2, dropout))
            ch //= 2
        self.out = nn.Conv2d(ch, out_channels, kernel_size=1)

    def forward(self, x: Tensor) -> Tensor:
        """``(B, in_channels, H, W) → (B, out_channels, H, W)``."""
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"x: expected a real image (B, {self.in_channels}, H, W), got shape {tuple(x.shape)}")
        skips = []
        for block in self.down:
            x = block(x)
            skips.append(x)
            x = F.avg_pool2d(x, kernel_size=2, stride=2)
        x = self.bottleneck(x)
        for up, block in zip(self.up, self.up_blocks):
            skip = skips.pop()
            x = up(x)
            dh, dw = skip.shape[-2] - x.shape[-2], skip.shape[-1] - x.shape[-1]
            if dh or dw:
                x = F.pad(x, (0, dw, 0, dh))
            x = block(torch.cat([x, skip], dim=1))
        return self.out(x)

    def extra_repr(self) -> str:
        return (f"in_channels={self.in_channels}, out_channels={self.out_channels}, channels={self.channels}, "
                f"num_pools={self.num_pools}")


class NormUNet(nn.Module):
    """:class:`UNet` on complex images with per-sample normalisation.

    ``x`` ``(B, C, H, W)`` complex → real ``(B, 2C, H, W)`` → normalised per sample and per
    channel (mean and standard deviation over the pixels) → zero-padded (centred) to a multiple
    of ``2^num_pools`` that is at least ``2^(num_pools+1)`` → U-Net → cropped → de-normalised →
    complex ``(B, C, H, W)``. The map is scale-equivariant: ``f(a x) = a f(x)`` for ``a > 0``.

    Args:
        channels_in: complex channels ``C`` in (and out).
        channels: U-Net features of the first level.
        num_pools: U-Net pooling levels.
        dropout: U-Net dropout.
        zero_init: start from the zero map: the U-Net's last convolution is zero-initialised and
            the output is ``std · U(·)`` without the mean added back (the refinement of an
            untrained cascade is then exactly 0). ``False``: fastMRI-style ``std · U(·) + mean``
            from a random initialisation.
        residual: output ``x + (the above)`` (with ``zero_init``, the identity at start).
    """

    def __init__(self, channels_in: int = 1, channels: int = 18, num_pools: int = 4, dropout: float = 0.0,
                 zero_init: bool = False, residual: bool = False) -> None:
        super().__init__()
        _int_at_least(channels_in, "channels_in", 1)
        self.channels_in = channels_in
        self.zero_init, self.residual = bool(zero_init), bool(residual)
        self.unet = UNet(2 * channels_in, 2 * channels_in, channels, num_pools, dropout)
        if self.zero_init:
            nn.init.zeros_(self.unet.out.weight)
            nn.init.zeros_(self.unet.out.bias)

    def _pad_sizes(self, n: int) -> Tuple[int, int]:
        m = 2 ** self.unet.num_pools
        target = max(-(-n // m) * m, 2 * m)
        extra = target - n
        return extra // 2, extra - extra // 2

    def forward(self, x: Tensor) -> Tensor:
        """``(B, C, H, W)`` complex → ``(B, C, H, W)`` complex."""
        if x.dim() != 4 or x.shape[1] != self.channels_in or not x.is_complex():
            raise ValueError(f"x: expected a complex image (B, {self.channels_in}, H, W), got {x.dtype} of shape "
                             f"{tuple(x.shape)}")
        h, w = x.shape[-2:]
        z = complex_to_channels(x)
        mean = z.mean(dim=(-2, -1), keepdim=True)
        std = z.std(dim=(-2, -1), keepdim=True) + 1e-12 * z.abs().amax(dim=(1, 2, 3), keepdim=True) + 1e-30
        z = (z - mean) / std
        (top, bottom), (left, right) = self._pad_sizes(h), self._pad_sizes(w)
        z = F.pad(z, (left, right, top, bottom))
        z = self.unet(z)
        z = z[..., top:top + h, left:left + w]
        out = channels_to_complex(z * std if self.zero_init else z * std + mean)
        return x + out if self.residual else out
