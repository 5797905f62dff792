"""Denoising data: patches of the images that ship with scikit-image, and the 1-D Laplace toy.

* :class:`PatchDenoisingDataModule`: grey-scale patches cut at random from scikit-image's
  bundled test images (no download: the files are inside the installed package), with
  Gaussian noise of a configurable level. Training, validation and test images are disjoint
  (by default ``camera`` and ``coins`` are held out for testing, ``astronaut`` for validation).
* :class:`LaplaceDenoisingDataModule`: ``x ~ Laplace(0, b)`` per entry, ``y = x + σ e``: the
  toy of the learned-proximal-network paper, whose MAP denoiser (for ``b = σ = 1``) is soft
  thresholding at ``σ²/b = 1``.

Both yield :class:`~unroll.data.Batch` ``(y=noisy, x=clean, meta={...})`` with no operator
(denoising: the identity); the training stream is fresh and resumable, the validation and test
splits fixed, all drawn from ``seed``.
"""

from __future__ import annotations

import functools
import math
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor

from .base import SplitData, SyntheticDataModule
from .batch import Batch
from .checks import as_dtype, check_finite_number, check_int
from .stream import make_generator

__all__ = ["SHIPPED_IMAGES", "TRAIN_IMAGES", "VAL_IMAGES", "TEST_IMAGES", "load_shipped_image", "make_patch_batch",
           "PatchDenoisingDataModule", "make_laplace_batch", "sample_laplace_posterior",
           "laplace_posterior_kernel_log_mean", "LaplaceDenoisingDataModule"]

#: natural images bundled inside the scikit-image package (``skimage.data``; no download), by name
SHIPPED_IMAGES: Tuple[str, ...] = (
    "astronaut", "brick", "camera", "cell", "chelsea", "clock", "coffee", "coins", "grass", "gravel",
    "hubble_deep_field", "immunohistochemistry", "moon", "page", "retina", "rocket", "text")
#: the default split (disjoint images)
TRAIN_IMAGES: Tuple[str, ...] = (
    "brick", "cell", "chelsea", "clock", "coffee", "grass", "gravel", "hubble_deep_field",
    "immunohistochemistry", "moon", "page", "retina", "rocket", "text")
VAL_IMAGES: Tuple[str, ...] = ("astronaut",)
TEST_IMAGES: Tuple[str, ...] = ("camera", "coins")

_STREAM_VAL, _STREAM_TEST = SyntheticDataModule.VAL_STREAM, SyntheticDataModule.TEST_STREAM


@functools.lru_cache(maxsize=None)
def _load_cached(name: str) -> Tensor:
    try:
        import skimage.color
        import skimage.data
        import skimage.util
    except ImportError as e:  # pragma: no cover - a dependency of the package
        raise ImportError("load_shipped_image: needs scikit-image (pip install scikit-image)") from e
    img = getattr(skimage.data, name)()
    if img.ndim == 3:
        img = skimage.color.rgb2gray(img[..., :3])
    img = skimage.util.img_as_float64(img)
    return torch.from_numpy(img.copy())


def load_shipped_image(name: str, dtype: torch.dtype = torch.float64) -> Tensor:
    """A grey-scale image bundled with scikit-image, in ``[0, 1]``: ``(H, W)`` on the CPU
    (colour images converted by luminance). ``name`` is one of :data:`SHIPPED_IMAGES`."""
    if name not in SHIPPED_IMAGES:
        raise ValueError(f"image: expected one of {', '.join(SHIPPED_IMAGES)}, got {name!r}")
    return _load_cached(name).to(dtype)


def _check_names(name: str, names: Sequence[str]) -> List[str]:
    if isinstance(names, str) or not names:
        raise ValueError(f"{name}: expected a non-empty list of image names from {', '.join(SHIPPED_IMAGES)}, "
                         f"got {names!r}")
    bad = [n for n in names if n not in SHIPPED_IMAGES]
    if bad:
        raise ValueError(f"{name}: unknown image(s) {bad}; expected names from {', '.join(SHIPPED_IMAGES)}")
    return list(names)


def make_patch_batch(index: int, generator: torch.Generator, images: Sequence[Tensor], patch_size: int,
                     batch_size: int, noise_std: float, noise_std_max: Optional[float], augment: bool,
                     dtype: torch.dtype) -> Batch:
    """One batch of noisy patches drawn from ``generator`` (``index`` is unused: every batch of a
    stream has its own generator). A patch's image is drawn with probability proportional to the
    number of patch positions it has, its position uniformly; with ``augment`` a random flip and
    quarter turn; its noise level is ``noise_std`` or, with ``noise_std_max``, uniform in
    ``[noise_std, noise_std_max]``.

    Returns:
        ``Batch(y (B, 1, P, P), x (B, 1, P, P), {}, {"data_range": ones(B), "noise_std": (B,)})``.
    """
    p = patch_size
    positions = torch.tensor([float((im.shape[0] - p + 1) * (im.shape[1] - p + 1)) for im in images],
                             dtype=torch.float64)
    which = torch.multinomial(positions / positions.sum(), batch_size, replacement=True, generator=generator)
    patches = []
    for i in which.tolist():
        im = images[i]
        r = int(torch.randint(im.shape[0] - p + 1, (1,), generator=generator))
        c = int(torch.randint(im.shape[1] - p + 1, (1,), generator=generator))
        patch = im[r:r + p, c:c + p]
        if augment:
            k, flip = torch.randint(4, (2,), generator=generator).tolist()
            patch = torch.rot90(patch, k % 4, (0, 1))
            if flip % 2:
                patch = patch.flip(1)
        patches.append(patch)
    x = torch.stack(patches)[:, None].to(dtype)
    if noise_std_max is None:
        sigma = torch.full((batch_size,), float(noise_std), dtype=dtype)
    else:
        sigma = noise_std + (noise_std_max - noise_std) * torch.rand(batch_size, generator=generator, dtype=dtype)
    y = x + sigma[:, None, None, None] * torch.randn(x.shape, generator=generator, dtype=dtype)
    return Batch(y, x, {}, {"data_range": torch.ones(batch_size, dtype=dtype), "noise_std": sigma})


class PatchDenoisingDataModule(SyntheticDataModule):
    """Denoising of grey-scale image patches cut from scikit-image's bundled images.

    Batches: :class:`~unroll.data.Batch` ``(y (B, 1, P, P) noisy, x (B, 1, P, P) clean, operator={},
    meta={"data_range": (B,), "noise_std": (B,)})``; no operator (denoising). Images are in
    ``[0, 1]`` (the noisy ones are not clipped). The training stream cuts fresh patches from
    ``train_images``; the validation and test splits are fixed sets of patches from
    ``val_images`` and ``test_images`` (disjoint from the training images by default: ``camera``
    and ``coins`` are the test images, ``astronaut`` the validation image). :meth:`test_images`
    gives the whole held-out images (e.g. for deblurring benchmarks).

    Args:
        patch_size: ``P``.
        noise_std: noise standard deviation ``σ`` (images in [0, 1]); the lower end of the range
            with ``noise_std_max``.
        noise_std_max: if given, each training sample's ``σ`` is uniform in ``[noise_std,
            noise_std_max]`` (blind denoising); validation and test use ``noise_std``.
        train_images, val_images, test_images: names from :data:`SHIPPED_IMAGES`.
        augment: random flips and quarter turns of the training patches.
        batch_size, train_batches, eval_batch_size, seed, num_workers: as
            :class:`~unroll.data.SyntheticDataModule`.
        val_size, test_size: patches in the fixed splits.
        dtype: ``"float32"`` or ``"float64"``.
    """

    def __init__(self, patch_size: int = 32, noise_std: float = 0.1, noise_std_max: Optional[float] = None,
                 train_images: Sequence[str] = TRAIN_IMAGES, val_images: Sequence[str] = VAL_IMAGES,
                 test_images: Sequence[str] = TEST_IMAGES, augment: bool = True, batch_size: int = 32,
                 train_batches: int = 100, val_size: int = 128, test_size: int = 256, eval_batch_size: int = 128,
                 seed: int = 0, dtype: str = "float32", num_workers: int = 0) -> None:
        super().__init__(batch_size=batch_size, train_batches=train_batches, eval_batch_size=eval_batch_size,
                         seed=seed, num_workers=num_workers)
        self.patch_size = check_int("patch_size", patch_size, 1)
        self.noise_std = check_finite_number("noise_std", noise_std, 0.0)
        if noise_std_max is not None:
            check_finite_number("noise_std_max", noise_std_max, 0.0)
            if noise_std_max < noise_std:
                raise ValueError(f"noise_std_max: expected >= noise_std = {noise_std}, got {noise_std_max}")
            noise_std_max = float(noise_std_max)
        self.noise_std_max = noise_std_max
        self.train_images = _check_names("train_images", train_images)
        self.val_images = _check_names("val_images", val_images)
        self.test_images_names = _check_names("test_images", test_images)
        if not isinstance(augment, bool):
            raise ValueError(f"augment: expected true or false, got {augment!r}")
        self.augment = augment
        self.val_size = check_int("val_size", val_size, 1)
        self.test_size = check_int("test_size", test_size, 1)
        self.torch_dtype = as_dtype(dtype)
        self.dtype = dtype
        for split, names in (("train_images", self.train_images), ("val_images", self.val_images),
                             ("test_images", self.test_images_names)):
            for n in names:
                h, w = load_shipped_image(n).shape
                if min(h, w) < patch_size:
                    raise ValueError(f"patch_size: {patch_size} is larger than the image {n!r} of {split} ({h}×{w})")
        self.save_hyperparameters()

    def _images(self, names: Sequence[str]) -> List[Tensor]:
        return [load_shipped_image(n) for n in names]

    def build(self) -> SplitData:
        def fixed(names, stream, size):
            return make_patch_batch(0, make_generator(self.seed, stream), self._images(names), self.patch_size, size,
                                    self.noise_std, None, False, self.torch_dtype)

        return SplitData(None, fixed(self.val_images, _STREAM_VAL, self.val_size),
                         fixed(self.test_images_names, _STREAM_TEST, self.test_size))

    def batch_maker(self) -> Callable[[int, torch.Generator], Batch]:
        return functools.partial(make_patch_batch, images=self._images(self.train_images), patch_size=self.patch_size,
                                 batch_size=self.batch_size, noise_std=self.noise_std,
                                 noise_std_max=self.noise_std_max, augment=self.augment, dtype=self.torch_dtype)

    def test_images(self) -> Dict[str, Tensor]:
        """The whole held-out test images, ``{name: (H, W)}`` in ``[0, 1]`` (the module's dtype)."""
        return {n: load_shipped_image(n, self.torch_dtype) for n in self.test_images_names}

    def describe(self) -> Dict[str, object]:
        """The task's parameters (what makes two test sets the same)."""
        return {"task": "patch_denoising", "patch_size": self.patch_size, "noise_std": self.noise_std,
                "test_images": list(self.test_images_names), "seed": self.seed, "test_size": self.test_size,
                "dtype": self.dtype}


def make_laplace_batch(index: int, generator: torch.Generator, batch_size: int, dim: int, scale: float,
                       noise_std: float, dtype: torch.dtype) -> Batch:
    """One batch of the Laplace toy: ``x ~ Laplace(0, scale)`` entrywise (a random sign times an
    exponential), ``y = x + noise_std · e``.

    Returns:
        ``Batch(y (B, dim), x (B, dim), {}, {})``.
    """
    u = torch.rand((batch_size, dim), generator=generator, dtype=torch.float64)
    sign = torch.where(torch.rand((batch_size, dim), generator=generator, dtype=torch.float64) < 0.5, -1.0, 1.0)
    x = sign * (-scale * torch.log1p(-u))  # -log(1 - u) ~ Exp(1), u in [0, 1)
    y = x + noise_std * torch.randn((batch_size, dim), generator=generator, dtype=torch.float64)
    return Batch(y.to(dtype), x.to(dtype), {}, {})


def sample_laplace_posterior(y: torch.Tensor, generator: torch.Generator, scale: float = 1.0,
                             noise_std: float = 1.0) -> torch.Tensor:
    """Exact draws of ``x`` given ``y`` for ``x ~ Laplace(0, scale)``, ``y = x + noise_std · e``.

    The posterior ``∝ exp(−|x|/b − (y − x)²/(2σ²))`` is two truncated Gaussians: on ``x > 0`` with
    mean ``m₊ = y − σ²/b`` and mass ``∝ exp(m₊²/(2σ²)) Φ(m₊/σ)``, on ``x < 0`` with mean
    ``m₋ = y + σ²/b`` and mass ``∝ exp(m₋²/(2σ²)) Φ(−m₋/σ)``. A half is picked by its mass, then
    sampled by the inverse CDF written so that it stays exact far in the tails (``ndtri`` of a
    small probability rather than of one minus it). Computed in float64.

    With it, the y of training pairs can follow any distribution (e.g. uniform over the range
    to be learnt) while the conditional law of x given y, hence the minimiser at each y of any
    loss E[ℓ(f(y), x) | y], stays that of the toy.

    Args:
        y: ``(*)`` observations.
        generator: the random stream.

    Returns:
        ``(*)`` float64, one draw per entry of ``y``.
    """
    if not (scale > 0 and noise_std > 0):
        raise ValueError(f"sample_laplace_posterior: scale and noise_std must be > 0, got {scale} and {noise_std}")
    y = y.to(torch.float64)
    var = noise_std ** 2
    m_pos, m_neg = y - var / scale, y + var / scale
    log_cdf_pos = torch.special.log_ndtr(m_pos / noise_std)  # log Φ(m₊/σ): P(x > 0) within the half
    log_cdf_neg = torch.special.log_ndtr(-m_neg / noise_std)
    log_pos = m_pos ** 2 / (2 * var) + log_cdf_pos  # log mass of x > 0 (+ a common constant)
    log_neg = m_neg ** 2 / (2 * var) + log_cdf_neg
    positive = torch.rand(y.shape, generator=generator, dtype=torch.float64) < torch.sigmoid(log_pos - log_neg)
    log_v = torch.rand(y.shape, generator=generator, dtype=torch.float64).clamp_min(1e-300).log()
    # x > 0: x = m₊ + σ z with z > −m₊/σ, i.e. −z = ndtri(Φ(m₊/σ) v); x < 0 symmetrically
    x_pos = m_pos - noise_std * torch.special.ndtri(torch.exp(log_cdf_pos + log_v))
    x_neg = m_neg + noise_std * torch.special.ndtri(torch.exp(log_cdf_neg + log_v))
    return torch.where(positive, x_pos.clamp_min(0.0), x_neg.clamp_max(0.0))


def laplace_posterior_kernel_log_mean(c: torch.Tensor, y: torch.Tensor, gamma: float, scale: float = 1.0,
                                      noise_std: float = 1.0) -> torch.Tensor:
    """``log E[exp(−((c − x)/γ)²) | y]`` for ``x ~ Laplace(0, scale)``, ``y = x + noise_std · e``, in
    closed form and differentiable in ``c`` (and ``y``).

    ``1 − exp`` of it is the proximal-matching loss of the estimate ``c`` averaged exactly over the
    posterior of ``x`` (its conditional expectation given ``y``): the same expected loss, hence the
    same minimiser at every ``y``, as drawing ``x`` and scoring one sample, without that draw's
    noise. The noise is what starves small ``γ``: a drawn ``x`` contributes a gradient only when
    it falls within about ``γ`` of ``c``, which few do; the expectation is the posterior density
    smoothed by the kernel, and its slope at ``c`` is never zero.

    Each half of the posterior (``x > 0`` and ``x < 0``; see :func:`sample_laplace_posterior`)
    times the Gaussian kernel is a Gaussian on a half-line, which integrates to a Gaussian factor
    times a normal CDF; the normaliser is the same with the kernel left out.

    Args:
        c: ``(*)`` estimates (broadcast against ``y``).
        y: ``(*)`` observations.
        gamma: the kernel's width ``γ > 0``.

    Returns:
        ``(*)`` (the broadcast shape), ``≤ 0``.
    """
    if not (gamma > 0 and scale > 0 and noise_std > 0):
        raise ValueError(f"laplace_posterior_kernel_log_mean: gamma, scale and noise_std must be > 0, "
                         f"got {gamma}, {scale} and {noise_std}")
    var, k = noise_std ** 2, 1.0 / gamma ** 2
    a = 0.5 / var + k  # the precision (×2) of x under the posterior half times the kernel
    log_norm = -0.5 * math.log(2 * var * a)  # ∫ e^{−a(x−μ)²} over R / ∫ e^{−(x−m)²/(2σ²)} over R

    def half(m: torch.Tensor, sign: float) -> torch.Tensor:
        # log ∫_{sign·x>0} e^{−(x−m)²/(2σ²) − k(x−c)²} dx − log ∫_R e^{−(x−m)²/(2σ²)} dx
        mu = (m / (2 * var) + k * c) / a
        return (a * mu ** 2 - m ** 2 / (2 * var) - k * c ** 2 + log_norm
                + torch.special.log_ndtr(sign * mu * math.sqrt(2 * a)))

    m_pos, m_neg = y - var / scale, y + var / scale
    w_pos, w_neg = m_pos ** 2 / (2 * var), m_neg ** 2 / (2 * var)  # each half's weight (+ a common constant)
    log_num = torch.logaddexp(w_pos + half(m_pos, 1.0), w_neg + half(m_neg, -1.0))
    log_den = torch.logaddexp(w_pos + torch.special.log_ndtr(m_pos / noise_std),
                              w_neg + torch.special.log_ndtr(-m_neg / noise_std))
    return log_num - log_den


class LaplaceDenoisingDataModule(SyntheticDataModule):
    """The 1-D Laplace toy of the learned-proximal-network paper: ``x ~ Laplace(0, scale)``,
    ``y = x + σ e``. For ``scale = σ = 1`` the MAP denoiser is soft thresholding at
    ``σ² / scale = 1`` (``−log p(x) = |x|/scale``), the posterior mean and median are not.

    Batches: :class:`~unroll.data.Batch` ``(y (B, dim), x (B, dim))``, no operator.

    Args:
        dim: entries per sample (i.i.d.).
        scale: the Laplace scale ``b``.
        noise_std: ``σ``.
        batch_size, train_batches, eval_batch_size, seed, num_workers: as
            :class:`~unroll.data.SyntheticDataModule` (the paper trains with batches of 2000).
        val_size, test_size: samples of the fixed splits.
        dtype: ``"float32"`` or ``"float64"``.
    """

    def __init__(self, dim: int = 1, scale: float = 1.0, noise_std: float = 1.0, batch_size: int = 2000,
                 train_batches: int = 100, val_size: int = 10000, test_size: int = 10000,
                 eval_batch_size: int = 10000, seed: int = 0, dtype: str = "float32", num_workers: int = 0) -> None:
        super().__init__(batch_size=batch_size, train_batches=train_batches, eval_batch_size=eval_batch_size,
                         seed=seed, num_workers=num_workers)
        self.dim = check_int("dim", dim, 1)
        self.scale = check_finite_number("scale", scale, 0.0)
        if self.scale == 0:
            raise ValueError("scale: expected a number > 0 (the Laplace scale b), got 0")
        self.noise_std = check_finite_number("noise_std", noise_std, 0.0)
        self.val_size = check_int("val_size", val_size, 1)
        self.test_size = check_int("test_size", test_size, 1)
        self.torch_dtype = as_dtype(dtype)
        self.dtype = dtype
        self.save_hyperparameters()

    def draw(self) -> Callable[..., Batch]:
        return functools.partial(make_laplace_batch, dim=self.dim, scale=self.scale, noise_std=self.noise_std,
                                 dtype=self.torch_dtype)

    def describe(self) -> Dict[str, object]:
        """The task's parameters."""
        return {"task": "laplace_denoising", "dim": self.dim, "scale": self.scale, "noise_std": self.noise_std,
                "seed": self.seed, "test_size": self.test_size, "dtype": self.dtype}
