"""Reconstruction metrics (torchmetrics-based).

* :class:`NMSE` follows the sparse-recovery literature: ``‖x̂ − x‖² / ‖x‖²`` accumulated as a
  ratio of sums over the data set (not a mean of per-sample ratios), reported in dB.
* :class:`PSNR` and :class:`SSIM` follow fastMRI's convention: one value per sample (per
  volume), with the data range the sample's target maximum unless given, averaged over the
  samples; built on ``torchmetrics.functional``.
* :class:`Iterations`: the mean number of iterations a solver or model ran per sample.

Besides ``update``/``compute``, these metrics share what ``unroll evaluate`` reads:
``label`` (axis and table label), ``per_sample(...) → (B,)`` (the metric of each sample,
for the per-sample report) and ``reads``: ``"estimate"`` (``update(preds, target)``, scored
at every iterate) or ``"iterations"`` (``update(iterations)``, once per run). Metrics with
``uses_data_range`` also take ``data_range=`` ``(B,)`` from the batch's metadata.
"""

from __future__ import annotations

from typing import Optional, Sequence, Union

import torch
from torch import Tensor
from torchmetrics import Metric

__all__ = ["NMSE", "PSNR", "SSIM", "Iterations", "nmse", "psnr", "ssim", "to_db"]


def to_db(ratio: Tensor) -> Tensor:
    """``10 log10(ratio)``."""
    return 10.0 * torch.log10(ratio)


def _sq(t: Tensor) -> Tensor:
    return t.abs().square() if t.is_complex() else t.square()


def nmse(x_hat: Tensor, x: Tensor, db: bool = True, reduction: str = "ratio_of_sums") -> Tensor:
    """Normalised MSE between ``x_hat`` and ``x`` (both ``(B, ...)``).

    Args:
        db: return ``10 log10`` of the ratio.
        reduction: ``"ratio_of_sums"`` (``Σ‖x̂ − x‖² / Σ‖x‖²``, a scalar) or ``"none"`` (per sample, ``(B,)``).
    """
    err = _sq(x_hat - x).flatten(1).sum(1)
    ref = _sq(x).flatten(1).sum(1)
    if reduction == "ratio_of_sums":
        ratio = err.sum() / ref.sum()
    elif reduction == "none":
        ratio = err / ref
    else:
        raise ValueError(f"reduction: expected 'ratio_of_sums' or 'none', got {reduction!r}")
    return to_db(ratio) if db else ratio


class NMSE(Metric):
    """NMSE over a data set, optionally one value per iteration.

    Args:
        num_iters: ``None`` for a single estimate; ``K`` to track a trajectory, in which case
            ``update`` takes ``preds`` as a sequence of ``K`` tensors (or a ``(K, B, ...)``
            stack) and ``compute`` returns ``(K,)``.
        db: report in dB.

    ``update(preds, target)``: ``preds`` ``(B, ...)`` (or a trajectory), ``target`` ``(B, ...)``.
    """

    is_differentiable = True
    higher_is_better = False
    full_state_update = False
    reads = "estimate"

    def __init__(self, num_iters: Optional[int] = None, db: bool = True, **kwargs) -> None:
        super().__init__(**kwargs)
        self.num_iters, self.db = num_iters, db
        shape = () if num_iters is None else (num_iters,)
        self.add_state("err", default=torch.zeros(shape, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("ref", default=torch.zeros(shape, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, preds: Union[Tensor, Sequence[Tensor]], target: Tensor) -> None:
        if self.num_iters is None:
            if not isinstance(preds, Tensor) or preds.shape != target.shape:
                raise ValueError(f"preds: expected a tensor of shape {tuple(target.shape)}, got "
                                 f"{tuple(preds.shape) if isinstance(preds, Tensor) else type(preds).__name__}")
            err = _sq(preds - target).sum()
        else:
            stack = preds if isinstance(preds, Tensor) else torch.stack(list(preds))
            if stack.shape[0] != self.num_iters or stack.shape[1:] != target.shape:
                raise ValueError(f"preds: expected {self.num_iters} estimates of shape {tuple(target.shape)}, got "
                                 f"{tuple(stack.shape)}")
            err = _sq(stack - target.unsqueeze(0)).flatten(1).sum(1)
        self.err += err.detach().to(torch.float64)
        self.ref += _sq(target).sum().detach().to(torch.float64)

    def compute(self) -> Tensor:
        ratio = self.err / self.ref
        return to_db(ratio) if self.db else ratio

    @property
    def label(self) -> str:
        return "NMSE (dB)" if self.db else "NMSE"

    def per_sample(self, preds: Tensor, target: Tensor) -> Tensor:
        """``(B,)`` NMSE of each sample (dB if ``db``); NaN for an all-zero target."""
        return nmse(preds, target, db=self.db, reduction="none")


def _data_range(target: Tensor, data_range) -> Tensor:
    """``(B,)`` data range per sample: ``data_range`` (a number or ``(B,)``), else the target's max."""
    B = target.shape[0]
    if data_range is None:
        return target.detach().flatten(1).amax(1)
    d = torch.as_tensor(data_range, dtype=target.dtype, device=target.device)
    if d.dim() == 0:
        d = d.expand(B)
    if d.shape != (B,):
        raise ValueError(f"data_range: expected a number or a (B,) = ({B},) tensor, got shape {tuple(d.shape)}")
    return d


def _real_images(preds: Tensor, target: Tensor, name: str, min_dim: int) -> tuple:
    if not isinstance(preds, Tensor) or not isinstance(target, Tensor) or preds.shape != target.shape:
        raise ValueError(f"preds: expected a tensor of the target's shape {tuple(target.shape)}, got "
                         f"{tuple(preds.shape) if isinstance(preds, Tensor) else type(preds).__name__}")
    if target.dim() < min_dim:
        raise ValueError(f"target: {name} expects (B, ...) with at least {min_dim} dimensions, got shape "
                         f"{tuple(target.shape)}")
    if preds.is_complex() or target.is_complex():  # magnitude images, as fastMRI scores them
        preds, target = preds.abs(), target.abs()
    return preds, target


def psnr(preds: Tensor, target: Tensor, data_range: Union[None, float, Tensor] = None) -> Tensor:
    """Peak signal-to-noise ratio of each sample, ``10 log10(d² / mean((x̂ − x)²))`` in dB.

    Args:
        preds, target: ``(B, ...)`` (complex: their magnitudes are compared).
        data_range: ``d``: a number, a ``(B,)`` tensor, or ``None`` for each target's maximum
            (fastMRI's convention).

    Returns:
        ``(B,)`` PSNR in dB (``torchmetrics.functional.peak_signal_noise_ratio`` on each sample
        scaled by ``1/d``).
    """
    from torchmetrics.functional.image import peak_signal_noise_ratio

    preds, target = _real_images(preds, target, "PSNR", 2)
    d = _data_range(target, data_range)
    shape = (-1,) + (1,) * (target.dim() - 1)
    return peak_signal_noise_ratio(preds / d.view(shape), target / d.view(shape), data_range=1.0,
                                   reduction="none", dim=tuple(range(1, target.dim())))


def ssim(preds: Tensor, target: Tensor, data_range: Union[None, float, Tensor] = None, kernel_size: int = 7,
         gaussian_kernel: bool = False) -> Tensor:
    """Structural similarity of each sample (mean SSIM over its pixels).

    Args:
        preds, target: ``(B, C, H, W)`` images, or ``(B, H, W)`` (one channel); complex: their
            magnitudes are compared.
        data_range: a number, a ``(B,)`` tensor, or ``None`` for each target's maximum
            (fastMRI's convention).
        kernel_size, gaussian_kernel: the window: by default a uniform 7×7 window as fastMRI's
            (scikit-image's default); ``gaussian_kernel=True``: a Gaussian of σ = 1.5.

    Returns:
        ``(B,)`` SSIM (``torchmetrics.functional.structural_similarity_index_measure`` on each
        sample scaled by ``1/d``, which with ``data_range=1`` equals SSIM with range ``d``).
    """
    from torchmetrics.functional.image import structural_similarity_index_measure

    preds, target = _real_images(preds, target, "SSIM", 3)
    if target.dim() == 3:
        preds, target = preds.unsqueeze(1), target.unsqueeze(1)
    if target.dim() != 4:
        raise ValueError(f"target: SSIM expects (B, C, H, W) or (B, H, W) images, got shape {tuple(target.shape)}")
    d = _data_range(target, data_range).view(-1, 1, 1, 1)
    return structural_similarity_index_measure(preds / d, target / d, gaussian_kernel=gaussian_kernel,
                                               kernel_size=kernel_size, data_range=1.0, reduction="none")


class _MeanOverSamples(Metric):
    """Mean over all samples seen of a per-sample value (float64 sums, summed across processes)."""

    is_differentiable = False
    full_state_update = False
    reads = "estimate"
    label = ""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.add_state("total", default=torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def _accumulate(self, values: Tensor) -> None:
        self.total += values.detach().to(torch.float64).sum()
        self.count += values.numel()

    def compute(self) -> Tensor:
        return self.total / self.count


class _ImageMetric(_MeanOverSamples):
    """Mean over samples of a per-sample image metric with a data range."""

    higher_is_better = True
    uses_data_range = True

    def __init__(self, data_range: Optional[float] = None, **kwargs) -> None:
        super().__init__(**kwargs)
        if data_range is not None and not (isinstance(data_range, (int, float)) and not isinstance(data_range, bool)
                                           and 0 < data_range < float("inf")):
            raise ValueError(f"data_range: expected a finite number > 0 or None, got {data_range!r}")
        self.data_range = data_range

    def update(self, preds: Tensor, target: Tensor, data_range: Optional[Tensor] = None) -> None:
        self._accumulate(self.per_sample(preds, target, data_range))


class PSNR(_ImageMetric):
    """Mean over samples of each sample's PSNR (dB), see :func:`psnr`.

    Args:
        data_range: the range ``d`` of every sample; ``None``: each target's maximum, or the
            ``data_range`` the batch's metadata gives (``update(..., data_range=(B,))``).

    ``update(preds, target, data_range=None)``: ``(B, ...)`` tensors.
    """

    label = "PSNR (dB)"

    def per_sample(self, preds: Tensor, target: Tensor, data_range: Optional[Tensor] = None) -> Tensor:
        """``(B,)`` PSNR (dB) of each sample."""
        return psnr(preds, target, self.data_range if data_range is None else data_range)


class SSIM(_ImageMetric):
    """Mean over samples of each sample's SSIM, see :func:`ssim` (``(B, C, H, W)`` or ``(B, H, W)``).

    Args:
        data_range: as :class:`PSNR`.
        kernel_size, gaussian_kernel: the window (uniform 7×7 by default, as fastMRI).

    ``update(preds, target, data_range=None)``.
    """

    label = "SSIM"

    def __init__(self, data_range: Optional[float] = None, kernel_size: int = 7, gaussian_kernel: bool = False,
                 **kwargs) -> None:
        super().__init__(data_range, **kwargs)
        if isinstance(kernel_size, bool) or not isinstance(kernel_size, int) or kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"kernel_size: expected an odd integer ≥ 1, got {kernel_size!r}")
        self.kernel_size, self.gaussian_kernel = kernel_size, bool(gaussian_kernel)

    def per_sample(self, preds: Tensor, target: Tensor, data_range: Optional[Tensor] = None) -> Tensor:
        """``(B,)`` SSIM of each sample."""
        return ssim(preds, target, self.data_range if data_range is None else data_range, self.kernel_size,
                    self.gaussian_kernel)


class Iterations(_MeanOverSamples):
    """Mean number of iterations run per sample (e.g. ``SolverInfo.iterations`` of a run with a
    tolerance); read once per run, not per iterate.

    ``update(iterations)``: ``(B,)`` integers.
    """

    higher_is_better = False
    reads = "iterations"
    label = "iterations"

    def per_sample(self, iterations: Tensor) -> Tensor:
        """``(B,)`` iterations as floats."""
        return torch.as_tensor(iterations).to(torch.float64)

    def update(self, iterations: Tensor) -> None:
        iterations = torch.as_tensor(iterations)
        if iterations.dim() != 1:
            raise ValueError(f"iterations: expected a (B,) tensor, got shape {tuple(iterations.shape)}")
        self._accumulate(iterations)
