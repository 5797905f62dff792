"""Learned image denoisers (DnCNN, a small U-Net) trainable as denoisers and usable as a prox.

* :class:`DnCNN` (Zhang, Zuo, Chen, Meng & Zhang 2017, "Beyond a Gaussian denoiser"): ``depth``
  3×3 convolutions — Conv+ReLU, ``depth − 2`` × (Conv+BN+ReLU), Conv — predicting the noise,
  ``D(x) = x − net(x)`` (residual learning).
* :class:`UNet`: a small U-Net (Ronneberger et al. 2015) with ``levels`` 2× average-pool
  down-samplings, bilinear up-sampling, skip connections by concatenation and a residual output.
  It needs ``H, W ≥ 2^levels``; other sizes are reflect-padded to a multiple of ``2^levels`` and
  cropped back.

Both map ``(B, C, H, W) → (B, C, H, W)`` and check the channel count, the dtype and NaN/Inf.

**As a prox** (:class:`DenoiserProx`): a denoiser trained at noise level ``σ`` (or blind, over a
range of levels, as DnCNN-B) is used in place of ``prox_{step·g}`` as in plug-and-play
(Venkatakrishnan et al. 2013; Zhang et al. 2017 "Learning deep CNN denoiser prior"): the step is
checked and **ignored** — a fixed-σ denoiser has one strength, and PnP-ADMM then balances data
and prior through its penalty ``ρ`` (with ``σ² ↔ 1/ρ`` in the MAP reading). It is not the
proximal operator of any function in general (not non-expansive, not a gradient field), so PnP
with it need not converge; :class:`unroll.models.LPN` is. ``value`` is not defined.

**As a denoiser** (:class:`Denoise`): ``Denoise(DnCNN(...))(y, A)`` has the call shape of every
reconstruction model (``A`` is the identity of a denoising data module), so
``unroll.train.ReconstructionTask`` trains it (``configs/dncnn_denoise.yaml``).
"""

from __future__ import annotations

from typing import Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from unroll.info import SolverInfo
from unroll.prox import Regularizer
from unroll.prox.checks import check_image, check_step
from unroll.unrolled import UnrolledOutput

__all__ = ["DnCNN", "UNet", "DenoiserProx", "Denoise", "as_prox"]


def _check_int(name: str, v, low: int) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < low:
        raise ValueError(f"{name}: expected an int >= {low}, got {v!r}")
    return v


class _Denoiser(nn.Module):
    """Shared input checks: real ``(B, channels, H, W)`` of the network's dtype, finite (one sync)."""

    channels: int
    #: smallest H, W the network accepts
    min_size: int = 1

    def check_input(self, x: Tensor, name: str = "x") -> None:
        who = type(self).__name__
        check_image(x, name, who, self.channels)
        H, W = x.shape[-2:]
        if H < self.min_size or W < self.min_size:
            raise ValueError(f"{name}: {who} needs images of at least {self.min_size}×{self.min_size} pixels "
                             f"(its down-sampling levels), got shape {tuple(x.shape)}")
        p = next(self.parameters(), None)
        if p is not None and x.dtype != p.dtype:
            raise TypeError(f"{name}: dtype {x.dtype} does not match the network's {p.dtype}; convert one of them "
                            f"(x.to({p.dtype}) or net.to({x.dtype}))")
        if not torch.compiler.is_compiling() and not torch._C._are_functorch_transforms_active() \
                and not bool(torch.isfinite(x).all()):
            n_nan = int(torch.isnan(x).sum())
            raise ValueError(f"{name}: {who} expected finite values, got {n_nan} NaN and "
                             f"{int((~torch.isfinite(x)).sum()) - n_nan} Inf entries (shape {tuple(x.shape)})")


class DnCNN(_Denoiser):
    """DnCNN: ``D(x) = x − net(x)``, ``net`` = Conv+ReLU, ``depth − 2`` × (Conv [+BN] + ReLU), Conv.

    Args:
        channels: image channels ``C``.
        features: feature maps (64 in the paper).
        depth: convolutions (17 in the paper for a fixed σ, 20 blind), ``≥ 2``.
        batch_norm: batch normalisation in the middle layers, as the paper (``False`` suits
            unrolled training with the ``implicit``/``jfb`` modes, which re-run the network).

    Receptive field ``2·depth + 1`` pixels; any image size works (zero padding).

    Shapes: ``forward``: ``(B, C, H, W) → (B, C, H, W)``.
    """

    def __init__(self, channels: int = 1, features: int = 64, depth: int = 17, batch_norm: bool = True) -> None:
        super().__init__()
        self.channels = _check_int("channels", channels, 1)
        self.features = _check_int("features", features, 1)
        self.depth = _check_int("depth", depth, 2)
        self.batch_norm = bool(batch_norm)
        layers = [nn.Conv2d(channels, features, 3, padding=1), nn.ReLU(inplace=True)]
        for _ in range(depth - 2):
            layers.append(nn.Conv2d(features, features, 3, padding=1, bias=not batch_norm))
            if batch_norm:
                layers.append(nn.BatchNorm2d(features))
            layers.append(nn.ReLU(inplace=True))
        layers.append(nn.Conv2d(features, channels, 3, padding=1))
        self.net = nn.Sequential(*layers)
        for m in self.net:
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        nn.init.zeros_(self.net[-1].weight)  # untrained: the identity
        nn.init.zeros_(self.net[-1].bias)

    def forward(self, x: Tensor) -> Tensor:
        """``x − net(x)``: ``(B, C, H, W) → (B, C, H, W)``."""
        self.check_input(x)
        return x - self.net(x)

    def extra_repr(self) -> str:
        return f"channels={self.channels}, features={self.features}, depth={self.depth}, batch_norm={self.batch_norm}"


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.ReLU(inplace=True),
                         nn.Conv2d(cout, cout, 3, padding=1), nn.ReLU(inplace=True))


class UNet(_Denoiser):
    """A small residual U-Net denoiser ``D(x) = x − net(x)``.

    Encoder: a block (two 3×3 Conv+ReLU) per level, ``features·2^l`` maps, 2× average pooling in
    between; decoder: bilinear 2× up-sampling, concatenation with the encoder's maps, a block;
    a final 1×1 convolution (zero-initialised: the untrained network is the identity).

    Args:
        channels: image channels ``C``.
        features: maps at the finest level.
        levels: down-samplings (``≥ 1``); images need ``H, W ≥ 2^levels`` and are reflect-padded
            to a multiple of ``2^levels`` (then cropped back).

    Shapes: ``forward``: ``(B, C, H, W) → (B, C, H, W)``.
    """

    def __init__(self, channels: int = 1, features: int = 32, levels: int = 2) -> None:
        super().__init__()
        self.channels = _check_int("channels", channels, 1)
        self.features = _check_int("features", features, 1)
        self.levels = _check_int("levels", levels, 1)
        self.min_size = 2 ** levels
        widths = [features * 2 ** l for l in range(levels + 1)]
        self.down = nn.ModuleList([_block(channels, widths[0])] +
                                  [_block(widths[l], widths[l + 1]) for l in range(levels)])
        self.up = nn.ModuleList([_block(widths[l + 1] + widths[l], widths[l]) for l in reversed(range(levels))])
        self.out = nn.Conv2d(widths[0], channels, 1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: Tensor) -> Tensor:
        """``x − net(x)``: ``(B, C, H, W) → (B, C, H, W)``."""
        self.check_input(x)
        H, W = x.shape[-2:]
        m = self.min_size
        ph, pw = (-H) % m, (-W) % m
        h = F.pad(x, (0, pw, 0, ph), mode="reflect") if (ph or pw) else x
        skips = []
        for l, block in enumerate(self.down):
            h = block(h if l == 0 else F.avg_pool2d(h, 2))
            skips.append(h)
        for block, skip in zip(self.up, reversed(skips[:-1])):
            h = F.interpolate(h, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            h = block(torch.cat([h, skip], dim=1))
        res = self.out(h)[..., :H, :W]
        return x - res

    def extra_repr(self) -> str:
        return f"channels={self.channels}, features={self.features}, levels={self.levels}"


class DenoiserProx(Regularizer):
    """A denoiser in place of a proximal operator (plug-and-play; see the module docstring).

    ``prox(x, step) = denoiser(x)``: ``step`` is checked (finite, ``≥ 0``, broadcastable) and
    ignored; the denoiser's training noise level ``sigma`` is kept for the record.

    Args:
        denoiser: any module ``(B, C, H, W) → (B, C, H, W)`` (:class:`DnCNN`, :class:`UNet`).
        sigma: the noise level it was trained at (documentation; ``None`` if blind).

    Shapes: ``prox``: ``(B, C, H, W) → (B, C, H, W)``.
    """

    def __init__(self, denoiser: nn.Module, sigma: Optional[float] = None) -> None:
        super().__init__()
        if not isinstance(denoiser, nn.Module):
            raise TypeError(f"denoiser: expected an nn.Module (B, C, H, W) -> (B, C, H, W), got "
                            f"{type(denoiser).__name__}")
        self.denoiser = denoiser
        self.sigma = sigma

    def prox(self, x: Tensor, step: Union[float, Tensor] = 1.0) -> Tensor:
        """``denoiser(x)`` (``step`` checked, ignored): ``(B, C, H, W) → (B, C, H, W)``."""
        check_image(x, "x", type(self.denoiser).__name__, getattr(self.denoiser, "channels", None))
        check_step(step, x, who=f"DenoiserProx({type(self.denoiser).__name__})", finite_x=False)
        return self.denoiser(x)

    def value(self, x: Tensor) -> Tensor:
        raise NotImplementedError(f"DenoiserProx.value: a {type(self.denoiser).__name__} denoiser is not the prox of "
                                  "a known regulariser, so g(x) is not defined (unroll.models.LPN gives one)")


def as_prox(module: nn.Module) -> nn.Module:
    """``module`` itself when it has ``prox(x, step)`` (a regulariser, an LPN), else wrapped in
    :class:`DenoiserProx` (a plain denoiser)."""
    if callable(getattr(module, "prox", None)):
        return module
    if isinstance(module, nn.Module):
        return DenoiserProx(module)
    raise TypeError(f"prior: expected a module with prox(x, step) or a denoiser nn.Module, got {type(module).__name__}")


class Denoise(nn.Module):
    """A denoiser as a reconstruction model: ``Denoise(net)(y, A) = net(y)`` (one "iteration").

    ``A`` must be square (a denoising problem's identity; it is not applied). With
    ``return_trajectory=True`` the call returns an :class:`~unroll.unrolled.UnrolledOutput`
    ``(x, [x], info)``, so ``ReconstructionTask`` trains, tests and evaluates it like any model.

    Args:
        denoiser: the network (:class:`DnCNN`, :class:`UNet`, any ``(B, C, H, W)`` module).

    Shapes: ``y`` ``(B, C, H, W)`` → ``(B, C, H, W)``.
    """

    num_layers = 1

    def __init__(self, denoiser: nn.Module) -> None:
        super().__init__()
        if not isinstance(denoiser, nn.Module):
            raise TypeError(f"denoiser: expected an nn.Module, got {type(denoiser).__name__}")
        self.denoiser = denoiser

    def forward(self, y: Tensor, A=None, *, return_trajectory: bool = False, num_iters: Optional[int] = None,
                tol: Optional[float] = None, x0: Optional[Tensor] = None, grad_mode=None):
        """``denoiser(y)``; the other keyword arguments are accepted for the common call shape."""
        in_shape, out_shape = getattr(A, "in_shape", None), getattr(A, "out_shape", None)
        if in_shape is not None and out_shape is not None and tuple(in_shape) != tuple(out_shape):
            raise ValueError(f"A: Denoise expects a denoising problem (a square operator, the identity), got "
                             f"{A.describe()}")
        x = self.denoiser(y)
        if not return_trajectory:
            return x
        B = y.shape[0]
        info = SolverInfo(iterations=torch.ones(B, dtype=torch.long, device=y.device),
                          residual=torch.zeros(B, dtype=y.real.dtype, device=y.device),
                          converged=torch.ones(B, dtype=torch.bool, device=y.device), method="denoise")
        return UnrolledOutput(x, [x], info, None, None)
