"""Small synthetic images with a random sampling mask per sample: inpainting and denoising.

``y = m ⊙ (x + σ e)`` with ``x`` a smooth random image in ``[0, 1]``, ``m`` a Bernoulli mask
of observed pixels drawn for each sample, and ``e ~ N(0, I)``. The operator differs from
sample to sample, so every batch carries what builds it (``batch.operator = {"mask": m}``)
and :meth:`InpaintingDataModule.build_operator` makes it a per-sample
:class:`~unroll.operators.Diagonal`; batches also carry ``meta = {"data_range": (B,)}`` for
PSNR/SSIM. With ``observed=1`` it is plain denoising.

A small, fast, generic task (seconds on a CPU) for models, metrics and evaluation beyond one
global matrix.
"""

from __future__ import annotations

import functools
import math
from typing import Callable, Dict, Mapping

import torch
from torch import Tensor

from unroll.operators import Diagonal, LinearOperator

from .base import SyntheticDataModule
from .batch import Batch
from .checks import as_dtype, check_finite_number, check_int, check_probability

__all__ = ["make_smooth_images", "make_inpainting_batch", "InpaintingDataModule"]


def make_smooth_images(batch: int, channels: int, size: int, smoothness: float, generator: torch.Generator,
                       dtype: torch.dtype = torch.float32) -> Tensor:
    """Random smooth images: white noise low-passed by a Gaussian of width ``smoothness`` pixels
    (periodic), each image then scaled to span exactly ``[0, 1]``.

    Returns:
        ``(batch, channels, size, size)`` tensor on the CPU.
    """
    check_int("batch", batch, 1)
    check_int("channels", channels, 1)
    check_int("size", size, 2)
    check_finite_number("smoothness", smoothness, 0.0)
    noise = torch.randn((batch, channels, size, size), generator=generator, dtype=torch.float64)
    f = torch.fft.fftfreq(size, dtype=torch.float64)
    radius2 = f[:, None] ** 2 + f[None, :] ** 2
    transfer = torch.exp(-2.0 * math.pi ** 2 * float(smoothness) ** 2 * radius2)  # FT of a Gaussian of σ pixels
    img = torch.fft.ifft2(torch.fft.fft2(noise) * transfer).real
    lo = img.flatten(2).amin(2)[..., None, None]
    hi = img.flatten(2).amax(2)[..., None, None]
    return ((img - lo) / (hi - lo).clamp_min(1e-12)).to(dtype)


def make_inpainting_batch(index: int, generator: torch.Generator, batch_size: int, channels: int, size: int,
                          smoothness: float, observed: float, noise_std: float, dtype: torch.dtype) -> Batch:
    """One batch of the inpainting task drawn from ``generator`` (``index`` is unused: every
    batch of a stream has its own generator).

    Returns:
        ``Batch(y, x, {"mask": m}, {"data_range": ones(B)})``, all ``(B, C, H, W)`` but the range.
    """
    x = make_smooth_images(batch_size, channels, size, smoothness, generator, dtype)
    mask = (torch.rand(x.shape, generator=generator, dtype=dtype) < observed).to(dtype)
    noisy = x + noise_std * torch.randn(x.shape, generator=generator, dtype=dtype) if noise_std else x
    return Batch(mask * noisy, x, {"mask": mask}, {"data_range": torch.ones(batch_size, dtype=dtype)})


class InpaintingDataModule(SyntheticDataModule):
    """Inpainting (or, with ``observed=1``, denoising) of small smooth images, a mask per sample.

    Batches: :class:`~unroll.data.Batch` ``(y (B, C, H, W), x (B, C, H, W), operator={"mask":
    (B, C, H, W)}, meta={"data_range": (B,)})``; the operator of a batch is
    ``Diagonal(mask, per_sample=True)`` (:meth:`build_operator`); there is no global operator.
    The training stream is fresh and resumable (:mod:`unroll.data.stream`), the validation and
    test splits fixed, all drawn from ``seed``.

    Args:
        image_size: ``H = W``.
        channels: ``C``.
        observed: probability that a pixel is observed, in ``(0, 1]`` (1: denoising).
        noise_std: standard deviation ``σ`` of the noise on the observed pixels (images in [0, 1]).
        smoothness: width in pixels of the Gaussian that smooths the random images.
        batch_size, train_batches, eval_batch_size, seed, num_workers: as
            :class:`~unroll.data.SyntheticDataModule`.
        val_size, test_size: samples of the fixed splits.
        dtype: ``"float32"`` or ``"float64"``.
    """

    def __init__(self, image_size: int = 16, channels: int = 1, observed: float = 0.5, noise_std: float = 0.0,
                 smoothness: float = 2.0, batch_size: int = 16, train_batches: int = 50, val_size: int = 64,
                 test_size: int = 64, eval_batch_size: int = 64, seed: int = 0, dtype: str = "float32",
                 num_workers: int = 0) -> None:
        super().__init__(batch_size=batch_size, train_batches=train_batches, eval_batch_size=eval_batch_size,
                         seed=seed, num_workers=num_workers)
        self.image_size = check_int("image_size", image_size, 2)
        self.channels = check_int("channels", channels, 1)
        self.observed = check_probability("observed", observed, "the fraction of observed pixels")
        self.noise_std = check_finite_number("noise_std", noise_std, 0.0)
        self.smoothness = check_finite_number("smoothness", smoothness, 0.0)
        self.val_size = check_int("val_size", val_size, 1)
        self.test_size = check_int("test_size", test_size, 1)
        self.torch_dtype = as_dtype(dtype)
        self.dtype = dtype
        self.save_hyperparameters()

    def draw(self) -> Callable[[int, torch.Generator], Batch]:
        return functools.partial(make_inpainting_batch, channels=self.channels, size=self.image_size,
                                 smoothness=self.smoothness, observed=self.observed, noise_std=self.noise_std,
                                 dtype=self.torch_dtype)

    def build_operator(self, params: Mapping[str, Tensor]) -> LinearOperator:
        """``Diagonal(params["mask"], per_sample=True)``: the batch's ``(B, C, H, W)`` mask."""
        if "mask" not in params:
            raise ValueError(f"operator: expected the batch's parameters to hold 'mask', got keys {sorted(params)}")
        return Diagonal(params["mask"], per_sample=True)

    def describe(self) -> Dict[str, object]:
        """The task's parameters (what makes two test sets the same)."""
        return {"task": "inpainting", "image_size": self.image_size, "channels": self.channels,
                "observed": self.observed, "noise_std": self.noise_std, "smoothness": self.smoothness,
                "seed": self.seed, "test_size": self.test_size, "dtype": self.dtype}
