"""Deblurring (and, with ``blur="none"``, denoising) of grey-scale crops of scikit-image's bundled images.

``y = A x + σ e`` with ``x`` a crop of a natural image in ``[0, 1]``, ``A`` a fixed blur
(:class:`~unroll.operators.GaussianBlur`, :class:`~unroll.operators.BoxBlur`,
:class:`~unroll.operators.MotionBlur`; the identity with ``blur="none"``) shared by the whole data
set (the data module's global operator), and ``e ~ N(0, I)``. With ``noise_std_max`` each sample
draws its own ``σ`` uniformly in ``[noise_std, noise_std_max]`` (blind denoisers, DnCNN-B style).

Images: the images that ship inside scikit-image (no download), grey-scale in ``[0, 1]``
(:func:`~unroll.data.denoising.load_shipped_image`, the loader and the split of the denoising data,
so that the denoisers and learned proximal networks trained there never saw a test image), optionally
down-sampled by averaging ``scale × scale`` blocks. They are split by image: the **training** stream
cuts random ``image_size`` crops (random flips and 90° rotations) from ``train_images`` (those at
least ``image_size`` on both sides), the **validation** split from ``val_images``, and the **test**
split takes ``test_crops`` fixed (seeded) crops of each held-out ``test_images``.

Batches: :class:`~unroll.data.Batch` ``(y (B, 1, S, S), x (B, 1, S, S), {}, meta={"data_range": (B,),
"noise_std": (B,)})``; the operator is global (``get_operator()``).
"""

from __future__ import annotations

import functools
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from unroll.operators import BoxBlur, GaussianBlur, Identity, LinearOperator, MotionBlur

from .base import SplitData, SyntheticDataModule
from .batch import Batch
from .checks import as_dtype, check_finite_number, check_int
from .denoising import TEST_IMAGES, TRAIN_IMAGES, VAL_IMAGES, _check_names, load_shipped_image
from .stream import make_generator

__all__ = ["TRAIN_IMAGES", "VAL_IMAGES", "TEST_IMAGES", "load_image", "load_images", "make_blur", "make_deblur_batch",
           "DeblurringDataModule"]

_STREAM_VAL, _STREAM_TEST = 1, 2
_BLURS = ("gaussian", "box", "motion", "none")


def load_image(name: str, scale: int = 1, dtype: torch.dtype = torch.float32) -> Tensor:
    """One of scikit-image's bundled images (:func:`~unroll.data.denoising.load_shipped_image`:
    grey-scale, ``[0, 1]``) as ``(H, W)``, down-sampled by averaging ``scale × scale`` blocks."""
    check_int("scale", scale, 1)
    t = load_shipped_image(name, torch.float64)
    if scale > 1:
        t = F.avg_pool2d(t[None, None], scale)[0, 0]
    return t.clamp(0, 1).to(dtype)


def load_images(names: Sequence[str], scale: int, min_size: int, dtype: torch.dtype, skip_small: bool = False,
                what: str = "images") -> List[Tensor]:
    """:func:`load_image` for each name; each must be at least ``min_size`` on both sides (with
    ``skip_small`` smaller ones are left out, but at least one must remain)."""
    out = []
    for name in names:
        img = load_image(name, scale, dtype)
        if min(img.shape) < min_size:
            if skip_small:
                continue
            raise ValueError(f"image_size: {min_size} is larger than image {name!r} of the {what} at scale {scale} "
                             f"({tuple(img.shape)}); lower image_size or scale, or leave the image out")
        out.append(img)
    if not out:
        raise ValueError(f"image_size: {min_size} is larger than every image of the {what} at scale {scale}")
    return out


def make_blur(blur: str, image_size: int, blur_sigma: float = 1.0, box_size: int = 5, motion_length: float = 9.0,
              motion_angle: float = 0.0, padding_mode: str = "circular", dtype: torch.dtype = torch.float32
              ) -> LinearOperator:
    """The blur operator on ``(B, 1, image_size, image_size)`` (``blur="none"``: the identity)."""
    shape = (1, image_size, image_size)
    if blur == "gaussian":
        return GaussianBlur(shape, blur_sigma, padding_mode=padding_mode, dtype=dtype)
    if blur == "box":
        return BoxBlur(shape, box_size, padding_mode=padding_mode, dtype=dtype)
    if blur == "motion":
        return MotionBlur(shape, motion_length, motion_angle, padding_mode=padding_mode, dtype=dtype)
    if blur == "none":
        return Identity(shape)
    raise ValueError(f"blur: expected one of {', '.join(_BLURS)}, got {blur!r}")


def _random_crops(images: Sequence[Tensor], n: int, size: int, generator: torch.Generator,
                  augment: bool = True) -> Tensor:
    crops = []
    for _ in range(n):
        i = int(torch.randint(len(images), (1,), generator=generator))
        img = images[i]
        r = int(torch.randint(img.shape[0] - size + 1, (1,), generator=generator))
        c = int(torch.randint(img.shape[1] - size + 1, (1,), generator=generator))
        crop = img[r:r + size, c:c + size]
        if augment:
            k = int(torch.randint(4, (1,), generator=generator))
            crop = torch.rot90(crop, k, (0, 1))
            if bool(torch.randint(2, (1,), generator=generator)):
                crop = torch.flip(crop, (1,))
        crops.append(crop)
    return torch.stack(crops)[:, None].contiguous()


def _measure(x: Tensor, op: LinearOperator, noise_std: float, noise_std_max: Optional[float],
             generator: torch.Generator) -> Tuple[Tensor, Tensor]:
    B = x.shape[0]
    if noise_std_max is None:
        sigma = torch.full((B,), noise_std, dtype=x.dtype)
    else:
        sigma = noise_std + (noise_std_max - noise_std) * torch.rand(B, generator=generator, dtype=x.dtype)
    with torch.no_grad():
        y = op(x) + sigma.view(-1, 1, 1, 1) * torch.randn(x.shape, generator=generator, dtype=x.dtype)
    return y, sigma


def make_deblur_batch(index: int, generator: torch.Generator, images: Sequence[Tensor], op: LinearOperator,
                      batch_size: int, image_size: int, noise_std: float, noise_std_max: Optional[float]) -> Batch:
    """One training batch: random crops of ``images`` blurred by ``op`` plus noise (``index`` is
    unused: every batch of the stream has its own generator)."""
    x = _random_crops(images, batch_size, image_size, generator)
    y, sigma = _measure(x, op, noise_std, noise_std_max, generator)
    return Batch(y, x, {}, {"data_range": torch.ones(batch_size, dtype=x.dtype), "noise_std": sigma})


class DeblurringDataModule(SyntheticDataModule):
    """Deblurring of grey-scale crops of scikit-image's images (see the module docstring).

    Args:
        blur: ``"gaussian"``, ``"box"``, ``"motion"`` or ``"none"`` (denoising).
        blur_sigma: Gaussian standard deviation in pixels.
        box_size: side of the box blur (odd).
        motion_length, motion_angle: motion blur segment (pixels, degrees).
        padding_mode: boundary of the blur, ``"circular"`` or ``"zeros"``.
        noise_std: noise standard deviation ``σ`` (images in ``[0, 1]``), or the low end of the
            range with ``noise_std_max``.
        noise_std_max: draw ``σ`` per sample uniformly in ``[noise_std, noise_std_max]`` (``None``:
            fixed ``σ``).
        image_size: side ``S`` of the crops (training, validation, test).
        scale: down-sampling factor of the images before cropping.
        train_images, val_images, test_images: names from
            :data:`~unroll.data.denoising.SHIPPED_IMAGES` (the test images disjoint from the others).
        val_size: validation crops (fixed).
        test_crops: fixed crops per test image.
        batch_size, train_batches, eval_batch_size, seed, num_workers: as
            :class:`~unroll.data.SyntheticDataModule`.
        dtype: ``"float32"`` or ``"float64"``.
    """

    def __init__(self, blur: str = "gaussian", blur_sigma: float = 1.0, box_size: int = 5,
                 motion_length: float = 9.0, motion_angle: float = 0.0, padding_mode: str = "circular",
                 noise_std: float = 0.02, noise_std_max: Optional[float] = None, image_size: int = 128,
                 scale: int = 1, train_images: Sequence[str] = TRAIN_IMAGES, val_images: Sequence[str] = VAL_IMAGES,
                 test_images: Sequence[str] = TEST_IMAGES, test_crops: int = 2, val_size: int = 8, batch_size: int = 8,
                 train_batches: int = 100, eval_batch_size: int = 16,
                 seed: int = 0, dtype: str = "float32", num_workers: int = 0) -> None:
        super().__init__(batch_size=batch_size, train_batches=train_batches, eval_batch_size=eval_batch_size,
                         seed=seed, num_workers=num_workers)
        if blur not in _BLURS:
            raise ValueError(f"blur: expected one of {', '.join(_BLURS)}, got {blur!r}")
        if padding_mode not in ("circular", "zeros"):
            raise ValueError(f"padding_mode: expected 'circular' or 'zeros', got {padding_mode!r}")
        self.blur, self.padding_mode = blur, padding_mode
        self.blur_sigma = check_finite_number("blur_sigma", blur_sigma, 0.0)
        self.box_size = check_int("box_size", box_size, 1)
        self.motion_length = check_finite_number("motion_length", motion_length, 0.0)
        self.motion_angle = check_finite_number("motion_angle", motion_angle)
        self.noise_std = check_finite_number("noise_std", noise_std, 0.0)
        if noise_std_max is not None:
            noise_std_max = check_finite_number("noise_std_max", noise_std_max, 0.0)
            if noise_std_max < self.noise_std:
                raise ValueError(f"noise_std_max: expected >= noise_std = {self.noise_std}, got {noise_std_max}")
        self.noise_std_max = noise_std_max
        self.image_size = check_int("image_size", image_size, 8)
        self.scale = check_int("scale", scale, 1)
        self.train_images = tuple(_check_names("train_images", train_images))
        self.val_images = tuple(_check_names("val_images", val_images))
        self.test_images = tuple(_check_names("test_images", test_images))
        common = set(self.test_images) & (set(self.train_images) | set(self.val_images))
        if common:
            raise ValueError(f"test_images: must be held out, but {sorted(common)} are also training or validation "
                             "images")
        self.val_size = check_int("val_size", val_size, 1)
        self.test_crops = check_int("test_crops", test_crops, 1)
        self.torch_dtype = as_dtype(dtype)
        self.dtype = dtype
        self.save_hyperparameters()

    def make_operator(self) -> LinearOperator:
        """The data set's blur (or identity), ``(B, 1, S, S) → (B, 1, S, S)``."""
        return make_blur(self.blur, self.image_size, self.blur_sigma, self.box_size, self.motion_length,
                         self.motion_angle, self.padding_mode, self.torch_dtype)

    def build(self) -> SplitData:
        op = self.make_operator()
        S = self.image_size
        self._train = load_images(self.train_images, self.scale, S, self.torch_dtype, skip_small=True,
                                  what="training images")
        val = load_images(self.val_images, self.scale, S, self.torch_dtype, what="validation images")
        test = load_images(self.test_images, self.scale, S, self.torch_dtype, what="test images")
        g_val = make_generator(self.seed, _STREAM_VAL)
        x_val = _random_crops(val, self.val_size, S, g_val)
        y_val, s_val = _measure(x_val, op, self.noise_std, self.noise_std_max, g_val)
        g_test = make_generator(self.seed, _STREAM_TEST)
        x_test = torch.cat([_random_crops([img], self.test_crops, S, g_test, augment=False) for img in test])
        y_test, s_test = _measure(x_test, op, self.noise_std, self.noise_std_max, g_test)
        ones = lambda n: torch.ones(n, dtype=self.torch_dtype)  # noqa: E731
        return SplitData(op, Batch(y_val, x_val, {}, {"data_range": ones(self.val_size), "noise_std": s_val}),
                         Batch(y_test, x_test, {}, {"data_range": ones(x_test.shape[0]), "noise_std": s_test}))

    def batch_maker(self) -> Callable[[int, torch.Generator], Batch]:
        self.data
        return functools.partial(make_deblur_batch, images=self._train, op=self.operator, batch_size=self.batch_size,
                                 image_size=self.image_size, noise_std=self.noise_std, noise_std_max=self.noise_std_max)

    def describe(self) -> Dict[str, object]:
        """The task's parameters (what makes two test sets the same)."""
        return {"task": "deblurring", "blur": self.blur, "blur_sigma": self.blur_sigma, "box_size": self.box_size,
                "motion_length": self.motion_length, "motion_angle": self.motion_angle,
                "padding_mode": self.padding_mode, "noise_std": self.noise_std, "noise_std_max": self.noise_std_max,
                "image_size": self.image_size, "scale": self.scale, "test_images": list(self.test_images),
                "test_crops": self.test_crops,
                "seed": self.seed, "dtype": self.dtype}
