"""k-space undersampling masks and the masking operator.

Cartesian masks select columns (the last dimension ``W``, fastMRI's phase-encoding direction) and
are returned as ``(W,)`` (or ``(H, W)`` when a 2-D shape is asked for) bool tensors, which
broadcast over batch, coils and rows of k-space ``(B, C, H, W)``:

* :func:`random_mask` — fastMRI's ``RandomMaskFunc``: ``round(W · center_fraction)`` fully sampled
  centre columns, every other column kept with probability
  ``p = (W / acceleration − n_low) / (W − n_low)``, so the *expected* acceleration is
  ``acceleration``.
* :func:`equispaced_mask` — fastMRI's ``EquispacedMaskFractionFunc``: the same centre plus
  columns every ``a' = acceleration · (n_low − W) / (n_low · acceleration − W)`` (rounded) from a
  random offset in ``[0, round(a'))``, the spacing adjusted so that the *total* sampled fraction
  is ``1 / acceleration`` (up to the rounding of a column or two).

The centre starts at column ``(W − n_low + 1) // 2`` (fastMRI's convention, which matches the
centred FFT's zero frequency at ``W // 2``).

Determinism: :func:`mask_seed` derives a 63-bit seed from a string key (the file name) and an
index (the slice), so validation masks are the same in every run and every worker; fastMRI seeds
its NumPy generator from the file name in the same spirit.

:func:`poisson_disc_mask` is a 2-D variable-density Poisson-disc mask ``(H, W)`` (see there).

:class:`Mask` applies a 0/1 mask as an operator (self-adjoint projection), broadcasting over
coils; :class:`~unroll.operators.mri.SENSE` builds the mask into the multi-coil operator.
"""

from __future__ import annotations

import hashlib
import math
from typing import List, Literal, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

from .base import LinearOperator

__all__ = ["mask_seed", "center_mask", "random_mask", "equispaced_mask", "poisson_disc_mask", "MaskFunc", "Mask",
           "as_binary_mask"]

ShapeLike = Union[int, Sequence[int]]


def mask_seed(key: str, index: int = 0) -> int:
    """A deterministic 63-bit seed from a string ``key`` (e.g. a file name) and an ``index`` (e.g.
    a slice): the same ``(key, index)`` always gives the same seed, on every machine and Python
    version (SHA-256, not Python's salted ``hash``)."""
    if not isinstance(key, str):
        raise TypeError(f"key: expected a str (e.g. the file name), got {type(key).__name__}")
    if isinstance(index, bool) or not isinstance(index, int):
        raise TypeError(f"index: expected an int (e.g. the slice index), got {type(index).__name__}")
    digest = hashlib.sha256(f"{key}\x00{index}".encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def _generator(seed: Optional[int]) -> torch.Generator:
    gen = torch.Generator(device="cpu")
    if seed is None:
        gen.seed()
    else:
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise TypeError(f"seed: expected an int or None, got {type(seed).__name__} (use mask_seed(key, index))")
        gen.manual_seed(seed)
    return gen


def _parse_shape(shape: ShapeLike) -> Tuple[Optional[int], int]:
    """``(H or None, W)`` from ``W``, ``(W,)`` or ``(H, W)``."""
    if isinstance(shape, int) and not isinstance(shape, bool):
        dims: Tuple[int, ...] = (shape,)
    else:
        try:
            dims = tuple(int(s) for s in shape)
        except TypeError:
            raise TypeError(f"shape: expected W, (W,) or (H, W), got {shape!r}") from None
    if len(dims) not in (1, 2) or any(d < 1 for d in dims):
        raise ValueError(f"shape: expected W, (W,) or (H, W) with positive sizes, got {shape!r}")
    return (None, dims[0]) if len(dims) == 1 else (dims[0], dims[1])


def _check_fraction_accel(center_fraction: float, acceleration: float) -> None:
    if not (isinstance(center_fraction, (int, float)) and 0 < center_fraction < 1):
        raise ValueError(f"center_fraction: expected a number in (0, 1), got {center_fraction!r}")
    if not (isinstance(acceleration, (int, float)) and math.isfinite(acceleration) and acceleration > 1):
        raise ValueError(f"acceleration: expected a finite number > 1, got {acceleration!r}")


def _num_low(width: int, center_fraction: float, acceleration: float) -> int:
    n_low = round(width * center_fraction)
    if n_low * acceleration >= width:
        raise ValueError(
            f"center_fraction: {center_fraction} of {width} columns ({n_low}) already reaches the budget of "
            f"acceleration {acceleration} ({width / acceleration:.1f} columns); use a smaller center_fraction "
            "or a smaller acceleration"
        )
    return n_low


def center_mask(width: int, num_low_freqs: int) -> Tensor:
    """The fully sampled centre ``(W,)`` bool: ``num_low_freqs`` columns from
    ``(W − num_low_freqs + 1) // 2`` (fastMRI's convention)."""
    if not 0 <= num_low_freqs <= width:
        raise ValueError(f"num_low_freqs: expected an int in [0, {width}], got {num_low_freqs!r}")
    mask = torch.zeros(width, dtype=torch.bool)
    pad = (width - num_low_freqs + 1) // 2
    mask[pad:pad + num_low_freqs] = True
    return mask


def _shaped(cols: Tensor, height: Optional[int]) -> Tensor:
    return cols if height is None else cols.expand(height, cols.shape[0]).clone()


def random_mask(shape: ShapeLike, center_fraction: float, acceleration: float,
                seed: Optional[int] = None) -> Tensor:
    """fastMRI's ``RandomMaskFunc``: a fully sampled centre plus random columns.

    Args:
        shape: ``W`` / ``(W,)`` (returns ``(W,)``) or ``(H, W)`` (returns ``(H, W)``, the same
            columns on every row).
        center_fraction: fraction of the ``W`` columns in the fully sampled centre
            (``round(W · center_fraction)`` columns).
        acceleration: the target acceleration ``R``; the other columns are kept with probability
            ``(W / R − n_low) / (W − n_low)``, so that ``E[#columns] = W / R``.
        seed: an int (e.g. ``mask_seed(file_name, slice_index)``) for a reproducible mask; ``None``
            for a fresh random one.

    Returns:
        a bool tensor, ``True`` where k-space is sampled.
    """
    height, width = _parse_shape(shape)
    _check_fraction_accel(center_fraction, acceleration)
    n_low = _num_low(width, center_fraction, acceleration)
    prob = (width / acceleration - n_low) / (width - n_low)
    u = torch.rand(width, generator=_generator(seed), dtype=torch.float64)
    return _shaped((u < prob) | center_mask(width, n_low), height)


def equispaced_mask(shape: ShapeLike, center_fraction: float, acceleration: float,
                    seed: Optional[int] = None, offset: Optional[int] = None) -> Tensor:
    """fastMRI's ``EquispacedMaskFractionFunc``: a fully sampled centre plus equispaced columns,
    the spacing adjusted so that the total sampled fraction is ``1 / acceleration``.

    Args:
        shape: ``W`` / ``(W,)`` or ``(H, W)`` as for :func:`random_mask`.
        center_fraction, acceleration: as for :func:`random_mask`.
        seed: seeds the random offset (``mask_seed(file_name, slice_index)`` for validation).
        offset: the first equispaced column; drawn uniformly in ``[0, round(a'))`` if ``None``.

    Returns:
        a bool tensor, ``True`` where k-space is sampled.
    """
    height, width = _parse_shape(shape)
    _check_fraction_accel(center_fraction, acceleration)
    n_low = _num_low(width, center_fraction, acceleration)
    adjusted = acceleration * (n_low - width) / (n_low * acceleration - width)
    if offset is None:
        high = max(1, round(adjusted))
        offset = int(torch.randint(0, high, (1,), generator=_generator(seed)))
    elif isinstance(offset, bool) or not isinstance(offset, int) or not 0 <= offset < width:
        raise ValueError(f"offset: expected an int in [0, {width}), got {offset!r}")
    cols = torch.arange(offset, width - 1, adjusted, dtype=torch.float64).round().long().clamp_max(width - 1)
    mask = center_mask(width, n_low)
    mask[cols] = True
    return _shaped(mask, height)


def poisson_disc_mask(shape: Sequence[int], acceleration: float, center_fraction: float = 0.08,
                      seed: Optional[int] = None, growth: float = 1.0, tol: float = 0.02,
                      max_iter: int = 30) -> Tensor:
    """A 2-D variable-density Poisson-disc mask ``(H, W)`` (for 3-D Cartesian / 2-D phase-encode
    undersampling), by dart throwing.

    Method (simple and documented rather than optimal): every pixel outside the fully sampled
    centre is visited once, in a seeded random order; a pixel is accepted unless it lies inside
    the exclusion disc of an already accepted point, and each accepted point ``p`` excludes the
    pixels at distance ``< r(p)`` with ``r(p) = r₀ (1 + growth · ρ(p))``, where ``ρ`` is the
    normalised distance from the k-space centre (``0`` at ``(H//2, W//2)``, ``1`` at the middle of
    an edge). The radius grows away from the centre, so the density falls (about
    ``(1 + growth)²``-fold from centre to edge). ``r₀`` is found by bisection so that the number of
    samples is ``H · W / acceleration`` within ``tol`` (relative); the same seed gives the same
    mask. The centre ``round(H · center_fraction) × round(W · center_fraction)`` is fully sampled.
    Cost: a Python loop over the pixels per bisection step (about a second for 256 × 256).

    Returns:
        a bool tensor ``(H, W)``, ``True`` where k-space is sampled.
    """
    if isinstance(shape, int) or len(tuple(shape)) != 2:
        raise ValueError(f"shape: expected (H, W), got {shape!r}")
    height, width = (int(s) for s in shape)
    if height < 2 or width < 2:
        raise ValueError(f"shape: expected (H, W) with sizes >= 2, got {shape!r}")
    if not (isinstance(acceleration, (int, float)) and math.isfinite(acceleration) and acceleration > 1):
        raise ValueError(f"acceleration: expected a finite number > 1, got {acceleration!r}")
    if not (isinstance(center_fraction, (int, float)) and 0 <= center_fraction < 1):
        raise ValueError(f"center_fraction: expected a number in [0, 1), got {center_fraction!r}")
    if not (isinstance(growth, (int, float)) and growth >= 0):
        raise ValueError(f"growth: expected a number >= 0, got {growth!r}")
    n_total = height * width
    target = n_total / acceleration
    calib = torch.outer(center_mask(height, round(height * center_fraction)),
                        center_mask(width, round(width * center_fraction)))
    n_calib = int(calib.sum())
    if n_calib >= target:
        raise ValueError(f"center_fraction: the fully sampled centre ({n_calib} samples) already reaches the "
                         f"budget of acceleration {acceleration} ({target:.0f} samples)")
    order = torch.randperm(n_total, generator=_generator(seed)).tolist()
    calib_flat = calib.flatten().tolist()
    order = [i for i in order if not calib_flat[i]]
    ci, cj = height // 2, width // 2
    rho = [math.hypot((i // width - ci) / (height / 2), (i % width - cj) / (width / 2)) for i in range(n_total)]

    def throw(r0: float) -> list:
        blocked = bytearray(n_total)
        accepted = []
        for idx in order:
            if blocked[idx]:
                continue
            accepted.append(idx)
            r = r0 * (1.0 + growth * rho[idx])
            reach = int(math.ceil(r)) - 1 if r == int(r) else int(r)
            i0, j0 = divmod(idx, width)
            r2 = r * r
            for di in range(-reach, reach + 1):
                i = i0 + di
                if not 0 <= i < height:
                    continue
                span = int(math.sqrt(max(r2 - di * di, 0.0)))
                if span * span + di * di >= r2:  # strictly inside the disc
                    span -= 1
                row = i * width
                for j in range(max(0, j0 - span), min(width, j0 + span + 1)):
                    blocked[row + j] = 1
        return accepted

    lo, hi = 0.0, float(max(height, width))
    best, best_err = None, math.inf
    for _ in range(max_iter):
        r0 = 0.5 * (lo + hi)
        accepted = throw(r0)
        count = len(accepted) + n_calib
        err = abs(count - target) / target
        if err < best_err:
            best, best_err = accepted, err
        if err <= tol:
            break
        if count > target:
            lo = r0
        else:
            hi = r0
    mask = calib.flatten().clone()
    mask[torch.tensor(best, dtype=torch.long)] = True
    return mask.view(height, width)


class MaskFunc:
    """A configurable Cartesian mask generator, as fastMRI's ``MaskFunc`` classes: one
    ``(center_fraction, acceleration)`` pair is drawn per call (uniformly, with the call's seed),
    then a :func:`random_mask` or :func:`equispaced_mask` with it.

    Args:
        kind: ``"random"`` (``RandomMaskFunc``) or ``"equispaced"`` (``EquispacedMaskFractionFunc``).
        center_fractions: the candidate centre fractions.
        accelerations: the candidate accelerations (same length as ``center_fractions``).

    Call ``mask_func(shape, key=None, index=0, seed=None)``: with ``key`` (the file name) the seed
    is ``mask_seed(key, index)``, so a (file, slice) always gets the same mask; otherwise ``seed``
    (``None``: random). Returns a bool ``(W,)`` or ``(H, W)`` mask.
    """

    def __init__(self, kind: Literal["random", "equispaced"] = "random",
                 center_fractions: Sequence[float] = (0.08,), accelerations: Sequence[float] = (4.0,)) -> None:
        if kind not in ("random", "equispaced"):
            raise ValueError(f"kind: expected 'random' or 'equispaced', got {kind!r}")
        self.center_fractions: List[float] = [float(c) for c in center_fractions]
        self.accelerations: List[float] = [float(a) for a in accelerations]
        if not self.accelerations or len(self.center_fractions) != len(self.accelerations):
            raise ValueError(f"center_fractions: expected one per acceleration ({len(self.accelerations)}), got "
                             f"{len(self.center_fractions)}")
        for cf, acc in zip(self.center_fractions, self.accelerations):
            _check_fraction_accel(cf, acc)
        self.kind = kind

    def __call__(self, shape: ShapeLike, key: Optional[str] = None, index: int = 0,
                 seed: Optional[int] = None) -> Tensor:
        if key is not None:
            seed = mask_seed(key, index)
        gen = _generator(seed)
        i = int(torch.randint(0, len(self.accelerations), (1,), generator=gen))
        sub_seed = int(torch.randint(0, 2 ** 62, (1,), generator=gen))
        fn = random_mask if self.kind == "random" else equispaced_mask
        return fn(shape, self.center_fractions[i], self.accelerations[i], seed=sub_seed)

    def __repr__(self) -> str:
        return (f"MaskFunc(kind={self.kind!r}, center_fractions={self.center_fractions}, "
                f"accelerations={self.accelerations})")


def as_binary_mask(mask: Tensor, name: str = "mask") -> Tensor:
    """``mask`` as a bool tensor; a real tensor must hold only 0 and 1 (a weighted mask is not a
    projection, and the operators rely on ``M² = M``)."""
    if not isinstance(mask, Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor (bool or 0/1), got {type(mask).__name__}")
    if mask.dtype == torch.bool:
        return mask
    if mask.is_complex():
        raise TypeError(f"{name}: expected a bool or real 0/1 tensor, got {mask.dtype}")
    if not bool(((mask == 0) | (mask == 1)).all()):
        raise ValueError(f"{name}: expected only 0 and 1 entries (a sampling mask), got other values")
    return mask != 0


class Mask(LinearOperator):
    """``x ↦ M ⊙ x`` for a 0/1 sampling mask ``M`` that broadcasts over the leading (coil) dims.

    Args:
        mask: bool or 0/1 tensor aligned with the *last* dims of k-space: ``(W,)``, ``(H, W)`` or
            ``(..., H|1, W)``; with ``per_sample=True`` its first dimension is the batch
            ``(B, ..., W)``. Stored as a bool buffer, so it never changes the data's dtype.
        shape: optional per-sample shape ``(..., H, W)`` of the data (needed only for
            :func:`~unroll.operators.adjoint_test` without an example input).
        per_sample: whether the first dimension of ``mask`` is the batch.

    Shapes:
        ``forward``, ``adjoint``, ``normal``: ``(B, ..., H, W) → (B, ..., H, W)`` (self-adjoint,
        ``normal = forward`` since ``M² = M``); real or complex data.
    """

    def __init__(self, mask: Tensor, shape: Optional[Sequence[int]] = None, per_sample: bool = False) -> None:
        super().__init__()
        mask = as_binary_mask(mask, "mask")
        if mask.dim() < (2 if per_sample else 1):
            raise ValueError(f"mask: expected {'(B, ..., W)' if per_sample else '(..., W)'}, got {tuple(mask.shape)}")
        self.register_buffer("mask", mask)
        self.per_sample = per_sample
        self.in_shape = self.out_shape = None if shape is None else tuple(int(s) for s in shape)
        if self.in_shape is not None:
            self._check_trailing(self.in_shape, "shape")

    def _mask_dims(self) -> Tuple[int, ...]:
        return tuple(self.mask.shape[1:] if self.per_sample else self.mask.shape)

    def _check_trailing(self, sample_shape: Tuple[int, ...], name: str) -> None:
        m = self._mask_dims()
        if len(sample_shape) < max(len(m), 1):
            raise ValueError(f"{name}: expected at least {len(m)} dims per sample for the mask {m}, "
                             f"got {tuple(sample_shape)}")
        if sample_shape[-1] != m[-1]:
            raise ValueError(f"{name}: k-space width {sample_shape[-1]} does not match the mask width {m[-1]} "
                             f"(shape {tuple(sample_shape)}, mask {m})")
        for k in range(2, len(m) + 1):
            if m[-k] not in (1, sample_shape[-k]):
                raise ValueError(f"{name}: dim {-k} of size {sample_shape[-k]} does not match the mask's {m[-k]} "
                                 f"(mask {m} must broadcast against {tuple(sample_shape)})")

    def _check(self, t: Tensor, shape, name: str, space: str) -> None:
        super()._check(t, shape, name, space)
        self._check_trailing(tuple(t.shape[1:]), name)
        if self.per_sample and t.shape[0] != self.mask.shape[0]:
            raise ValueError(f"{name}: batch size {t.shape[0]} does not match the per-sample mask of batch "
                             f"{self.mask.shape[0]}")

    def _broadcast(self, x: Tensor) -> Tensor:
        if not self.per_sample:
            return self.mask
        extra = x.dim() - self.mask.dim()
        return self.mask.view(self.mask.shape[0], *([1] * extra), *self.mask.shape[1:])

    def _forward(self, x: Tensor) -> Tensor:
        return x * self._broadcast(x)

    _adjoint = _forward

    def normal(self, x: Tensor) -> Tensor:
        """``MᴴM x = M x`` (a 0/1 mask is a projection)."""
        return self.forward(x)

    def lipschitz(self, *args, **kwargs) -> Tensor:
        """``1`` if anything is sampled, else ``0`` (exact)."""
        return self.mask.any().to(torch.get_default_dtype())

    def lipschitz_batch(self, batch: int, *args, **kwargs) -> Tensor:
        """Per sample ``(batch,)``: ``1`` if the sample's mask samples anything (exact)."""
        if not self.per_sample:
            return self.lipschitz().expand(batch)
        if batch != self.mask.shape[0]:
            raise ValueError(f"batch: the operator holds {self.mask.shape[0]} masks, got a batch of {batch}")
        return self.mask.flatten(1).any(dim=1).to(torch.get_default_dtype())

    def extra_repr(self) -> str:
        return f"mask={tuple(self.mask.shape)}, per_sample={self.per_sample}, shape={self.in_shape}"
