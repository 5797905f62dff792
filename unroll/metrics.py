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
at every iterate), ``"final"`` (the same call, on the final estimate only: one value per run) or
``"iterations"`` (``update(iterations)``, once per run). Metrics with
``uses_data_range`` also take ``data_range=`` ``(B,)`` from the batch's metadata.
"""

from __future__ import annotations

from typing import Dict, Mapping, Optional, Sequence, Union

import torch
from torch import Tensor
from torchmetrics import Metric

__all__ = ["NMSE", "PSNR", "SSIM", "Iterations", "MeanOverSamples", "nmse", "psnr", "ssim", "to_db",
           # fastMRI's conventions (issue 17)
           "fastmri_nmse", "fastmri_psnr", "fastmri_ssim", "fastmri_ssim_per_slice", "FastMRINMSE", "FastMRIPSNR", "FastMRISSIM"]


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


class MeanOverSamples(Metric):
    """Mean over all samples seen of a per-sample value (float64 sums, summed across processes);
    subclasses call ``self._accumulate(values)`` from ``update``."""

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


class _ImageMetric(MeanOverSamples):
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


class Iterations(MeanOverSamples):
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


# ---------------------------------------------------------------------------------------------
# fastMRI's evaluation conventions (issue 17)
#
# fastMRI (``fastmri/evaluate.py``) scores a reconstruction volume by volume, on magnitude images
# ``(slices, H, W)`` cropped to the recon size, and averages over the volumes:
#
# * NMSE = ``‖gt − pred‖² / ‖gt‖²`` over the whole volume (a ratio, not dB);
# * PSNR = ``10 log10(maxval² / mean((gt − pred)²))`` over the whole volume, maxval = the target
#   volume's max (scikit-image's ``peak_signal_noise_ratio(gt, pred, data_range=maxval)``);
# * SSIM = the mean over slices of scikit-image's ``structural_similarity(gt[s], pred[s],
#   data_range=maxval)``: a uniform 7×7 window, k1 = 0.01, k2 = 0.03, *sample* (co)variances
#   (``N/(N − 1)`` with N = 49), averaged over the pixels whose window lies inside the image.
#
# PSNR uses ``torchmetrics.functional.peak_signal_noise_ratio``, which matches. SSIM does not go
# through torchmetrics: its uniform-window SSIM reflect-pads the image and averages over every
# pixel, and uses population (co)variances, so it differs from scikit-image (about 2e-3 on noisy
# images); :func:`fastmri_ssim` computes the valid-window version directly (``avg_pool2d``),
# which equals scikit-image to float precision (``tests/test_fastmri_data.py``).
# ---------------------------------------------------------------------------------------------

_SSIM_WIN, _SSIM_K1, _SSIM_K2 = 7, 0.01, 0.03


def _volume_pair(target, prediction, name: str, ndim: Optional[int] = None) -> tuple:
    """``(target, prediction)`` as real tensors of one shape (complex → magnitude, numpy accepted)."""
    target = torch.as_tensor(target)
    prediction = torch.as_tensor(prediction, device=target.device)
    if target.shape != prediction.shape:
        raise ValueError(f"prediction: {name} expects the target's shape {tuple(target.shape)}, got "
                         f"{tuple(prediction.shape)}")
    if ndim is not None and target.dim() != ndim:
        raise ValueError(f"target: {name} expects a volume (slices, H, W), got shape {tuple(target.shape)}")
    if target.is_complex() or prediction.is_complex():
        target, prediction = target.abs(), prediction.abs()
    if not target.is_floating_point():
        target = target.to(torch.get_default_dtype())
    return target, prediction.to(target.dtype)


def _maxval(target: Tensor, maxval) -> Tensor:
    if maxval is None:
        return target.max()
    m = torch.as_tensor(maxval, dtype=target.dtype, device=target.device)
    if m.dim() != 0 or not bool(m > 0):
        raise ValueError(f"maxval: expected a number > 0 (the target volume's max), got {maxval!r}")
    return m


def fastmri_nmse(target: Tensor, prediction: Tensor) -> Tensor:
    """fastMRI's NMSE of one volume: ``‖target − prediction‖² / ‖target‖²`` (a ratio, not dB).

    Args:
        target, prediction: ``(slices, H, W)`` (any shape, the same for both; complex: magnitudes).

    Returns:
        a scalar tensor.
    """
    target, prediction = _volume_pair(target, prediction, "fastmri_nmse")
    return (target - prediction).square().sum() / target.square().sum()


def fastmri_psnr(target: Tensor, prediction: Tensor, maxval: Union[None, float, Tensor] = None) -> Tensor:
    """fastMRI's PSNR of one volume (dB): ``10 log10(maxval² / mean((target − prediction)²))`` over
    the whole volume (``torchmetrics.functional.peak_signal_noise_ratio``).

    Args:
        target, prediction: ``(slices, H, W)`` (any shape, the same for both; complex: magnitudes).
        maxval: the data range; ``None``: the target volume's max (fastMRI's convention).

    Returns:
        a scalar tensor.
    """
    from torchmetrics.functional.image import peak_signal_noise_ratio

    target, prediction = _volume_pair(target, prediction, "fastmri_psnr")
    m = _maxval(target, maxval)
    return peak_signal_noise_ratio(prediction / m, target / m, data_range=1.0)


def _ssim_slices(target: Tensor, prediction: Tensor, data_range: Tensor) -> Tensor:
    """scikit-image's SSIM (7×7 uniform window, sample covariances, valid pixels) of each slice:
    ``target``, ``prediction`` ``(S, H, W)`` real, ``data_range`` ``(S,)`` → ``(S,)``."""
    if min(target.shape[-2:]) < _SSIM_WIN:
        raise ValueError(f"target: SSIM needs images of at least {_SSIM_WIN}×{_SSIM_WIN} pixels (its window), got "
                         f"shape {tuple(target.shape)}")
    d = data_range.to(target.dtype).view(-1, 1, 1, 1)
    x, y = target.unsqueeze(1) / d, prediction.unsqueeze(1) / d  # data range 1 after scaling
    pool = torch.nn.functional.avg_pool2d
    n = _SSIM_WIN * _SSIM_WIN
    cov_norm = n / (n - 1)
    stats = pool(torch.cat([x, y, x * x, y * y, x * y], dim=1), _SSIM_WIN, stride=1)
    ux, uy, uxx, uyy, uxy = stats.unbind(1)
    vx, vy, vxy = cov_norm * (uxx - ux * ux), cov_norm * (uyy - uy * uy), cov_norm * (uxy - ux * uy)
    c1, c2 = _SSIM_K1 ** 2, _SSIM_K2 ** 2
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
    return s.flatten(1).mean(1)


def fastmri_ssim(target: Tensor, prediction: Tensor, maxval: Union[None, float, Tensor] = None) -> Tensor:
    """fastMRI's SSIM of one volume: the mean over slices of each slice's SSIM with the data range
    ``maxval`` (by default the target *volume's* max), a uniform 7×7 window, k1 = 0.01, k2 = 0.03,
    as scikit-image's ``structural_similarity`` (sample covariances, mean over the pixels whose
    window lies inside the slice). Differentiable.

    Args:
        target, prediction: ``(slices, H, W)`` real (complex: their magnitudes), H, W >= 7.
        maxval: the data range; ``None``: ``target.max()``.

    Returns:
        a scalar tensor.
    """
    target, prediction = _volume_pair(target, prediction, "fastmri_ssim", ndim=3)
    m = _maxval(target, maxval)
    return _ssim_slices(target, prediction, m.expand(target.shape[0])).mean()


def fastmri_ssim_per_slice(target: Tensor, prediction: Tensor, maxval: Union[None, float, Tensor] = None) -> Tensor:
    """The SSIM of each slice as :func:`fastmri_ssim` computes it, batched (one pooling call for
    all slices; differentiable, e.g. for a ``1 − SSIM`` loss).

    Args:
        target, prediction: ``(B, H, W)`` real (complex: magnitudes), H, W >= 7.
        maxval: the data range of each slice: a number, a ``(B,)`` tensor (e.g. ``meta["max"]``,
            each slice's volume max) or ``None`` (each target slice's own max).

    Returns:
        ``(B,)`` SSIM; ``fastmri_ssim(t, p, m) == fastmri_ssim_per_slice(t, p, m).mean()``.
    """
    target, prediction = _volume_pair(target, prediction, "fastmri_ssim_per_slice", ndim=3)
    B = target.shape[0]
    if maxval is None:
        d = target.detach().flatten(1).amax(1)
    else:
        d = torch.as_tensor(maxval, dtype=target.dtype, device=target.device)
        d = d.expand(B) if d.dim() == 0 else d
        if d.shape != (B,):
            raise ValueError(f"maxval: expected a number or a ({B},) tensor, got shape {tuple(d.shape)}")
    return _ssim_slices(target, prediction, d)


def _volume_key(fname: str) -> int:
    """A stable 63-bit integer id of a file name (tensor states must be numbers to sync across processes)."""
    import hashlib

    return int.from_bytes(hashlib.sha256(fname.encode("utf-8")).digest()[:8], "little") & ((1 << 63) - 1)


class _FastMRIVolumeMetric(Metric):
    """A fastMRI metric accumulated per volume and averaged over volumes.

    ``update(preds, target, data_range=None, meta=None, fname=None, slice_num=None)``:

    * ``preds``, ``target``: ``(B, H, W)`` magnitude images (complex: magnitudes), cropped to
      the recon size;
    * the volume and slice of each sample: ``fname`` (``[str] * B``) and ``slice_num`` ``(B,)``,
      or the batch's ``meta`` (``meta["fname"]``, ``meta["slice_num"]``); without a file name each
      sample counts as a volume of its own;
    * the data range: ``data_range`` ``(B,)``, else ``meta["data_range"]`` / ``meta["max"]`` (the
      target volume's max, as the fastMRI data module gives it).

    Per-slice sufficient statistics are kept (list states concatenated across processes, so DDP
    works; a (volume, slice) seen twice, e.g. a sample repeated by a distributed sampler, counts
    once). :meth:`compute` returns the mean over volumes; :meth:`per_volume` the value of each
    volume; :meth:`per_sample` the value of each slice of a batch (the per-slice table).
    """

    is_differentiable = False
    full_state_update = False
    reads = "estimate"
    uses_data_range = True
    uses_meta = True
    label = ""
    needs_range = False  # the slice statistics need the data range (SSIM)

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.add_state("volume", default=[], dist_reduce_fx="cat")
        self.add_state("slice", default=[], dist_reduce_fx="cat")
        self.add_state("stats", default=[], dist_reduce_fx="cat")
        self._names: Dict[int, str] = {}
        self._anonymous = 0

    # per-slice statistics ``(B, k)`` and their combination into one volume's value
    def _slice_stats(self, preds: Tensor, target: Tensor, data_range: Optional[Tensor]) -> Tensor:
        raise NotImplementedError

    def _combine(self, stats: Tensor) -> Tensor:
        raise NotImplementedError

    def _parse(self, preds, target, data_range, meta, fname, slice_num):
        if not isinstance(preds, Tensor) or not isinstance(target, Tensor) or preds.shape != target.shape:
            raise ValueError(f"preds: expected a tensor of the target's shape "
                             f"{tuple(target.shape) if isinstance(target, Tensor) else '?'}, got "
                             f"{tuple(preds.shape) if isinstance(preds, Tensor) else type(preds).__name__}")
        if target.dim() != 3:
            raise ValueError(f"target: {type(self).__name__} expects (B, H, W) images, got shape {tuple(target.shape)}")
        if preds.is_complex() or target.is_complex():
            preds, target = preds.abs(), target.abs()
        B = target.shape[0]
        meta = meta or {}
        if fname is None and "fname" in meta:
            fname = meta["fname"]
        if slice_num is None and "slice_num" in meta:
            slice_num = meta["slice_num"]
        if data_range is None:
            data_range = meta["data_range"] if "data_range" in meta else meta.get("max") if "max" in meta else None
        if isinstance(fname, str):
            fname = [fname]
        if fname is not None and len(fname) != B:
            raise ValueError(f"fname: expected {B} file names (one per sample), got {len(fname)}")
        if fname is not None and slice_num is None:
            raise ValueError("slice_num: the samples carry file names but no slice numbers (meta['slice_num'])")
        if data_range is not None:
            data_range = torch.as_tensor(data_range, device=target.device).to(target.dtype)
            data_range = data_range.expand(B) if data_range.dim() == 0 else data_range
            if data_range.shape != (B,):
                raise ValueError(f"data_range: expected a number or a ({B},) tensor, got shape {tuple(data_range.shape)}")
        elif self.needs_range:
            if fname is not None:
                raise ValueError(f"data_range: {type(self).__name__} needs each volume's max (meta['max'] or "
                                 "meta['data_range']) when the samples carry file names")
            data_range = target.detach().flatten(1).amax(1)
        return preds.detach(), target.detach(), data_range, fname, slice_num

    def update(self, preds: Tensor, target: Tensor, data_range: Optional[Tensor] = None,
               meta: Optional[Mapping] = None, fname: Optional[Sequence[str]] = None,
               slice_num: Optional[Tensor] = None) -> None:
        preds, target, data_range, fname, slice_num = self._parse(preds, target, data_range, meta, fname, slice_num)
        B = target.shape[0]
        if fname is None:
            rank = torch.distributed.get_rank() if torch.distributed.is_available() and \
                torch.distributed.is_initialized() else 0
            ids = []
            for _ in range(B):  # negative ids (never a hashed file name), distinct across processes
                self._anonymous += 1
                ids.append(-((rank << 40) + self._anonymous))
            slices = torch.zeros(B, dtype=torch.long)
        else:
            ids = [_volume_key(str(f)) for f in fname]
            for i, f in zip(ids, fname):
                self._names[i] = str(f)
            slices = torch.as_tensor(slice_num).reshape(-1).long()
        self.volume.append(torch.tensor(ids, dtype=torch.long, device=self.device))
        self.slice.append(slices.to(self.device))
        self.stats.append(self._slice_stats(preds, target, data_range).to(device=self.device, dtype=torch.float64))

    def _grouped(self) -> Dict[int, Tensor]:
        from torchmetrics.utilities import dim_zero_cat

        empty = len(self.volume) == 0 if isinstance(self.volume, list) else self.volume.numel() == 0
        if empty:
            raise RuntimeError(f"{type(self).__name__}.compute: no sample was scored")
        vol, sl, st = dim_zero_cat(self.volume), dim_zero_cat(self.slice), dim_zero_cat(self.stats)
        groups: Dict[int, Dict[int, Tensor]] = {}
        for v, s, row in zip(vol.tolist(), sl.tolist(), st):
            groups.setdefault(v, {}).setdefault(s, row)  # a repeated (volume, slice) counts once
        return {v: torch.stack([rows[s] for s in sorted(rows)]) for v, rows in groups.items()}

    def per_volume(self) -> Dict[str, float]:
        """``{file name: value}`` of every volume scored (anonymous samples as ``"#k"``; under DDP,
        volumes only other processes saw are named by their hash id ``"#-id"``)."""
        return {self._names.get(v, f"#{-v}"): float(self._combine(rows)) for v, rows in self._grouped().items()}

    def compute(self) -> Tensor:
        values = [self._combine(rows) for rows in self._grouped().values()]
        return torch.stack(values).mean()

    def per_sample(self, preds: Tensor, target: Tensor, data_range: Optional[Tensor] = None,
                   meta: Optional[Mapping] = None, fname: Optional[Sequence[str]] = None,
                   slice_num: Optional[Tensor] = None) -> Tensor:
        """``(B,)`` the metric of each slice alone (with the volume's data range)."""
        preds, target, data_range, _, _ = self._parse(preds, target, data_range, meta, fname, slice_num)
        stats = self._slice_stats(preds, target, data_range).to(torch.float64)
        return torch.stack([self._combine(row.unsqueeze(0)) for row in stats])


class FastMRINMSE(_FastMRIVolumeMetric):
    """fastMRI's NMSE (a ratio, lower is better), per volume (:func:`fastmri_nmse`), averaged over
    volumes. ``update`` as :class:`_FastMRIVolumeMetric` (no data range needed)."""

    higher_is_better = False
    label = "NMSE"

    def _slice_stats(self, preds, target, data_range):
        return torch.stack([(preds - target).square().flatten(1).sum(1), target.square().flatten(1).sum(1)], 1)

    def _combine(self, stats):
        return stats[:, 0].sum() / stats[:, 1].sum()


class FastMRIPSNR(_FastMRIVolumeMetric):
    """fastMRI's PSNR (dB), per volume (:func:`fastmri_psnr`, data range = the target volume's
    max: ``meta["max"]``, or the largest slice max seen when not given), averaged over volumes."""

    higher_is_better = True
    label = "PSNR (dB)"

    def _slice_stats(self, preds, target, data_range):
        m = target.flatten(1).amax(1) if data_range is None else data_range
        err = (preds - target).square().flatten(1).sum(1)
        count = torch.full_like(err, float(target[0].numel()))
        return torch.stack([err, count, m.to(err.dtype)], 1)

    def _combine(self, stats):
        mse = stats[:, 0].sum() / stats[:, 1].sum()
        return 10.0 * torch.log10(stats[:, 2].max() ** 2 / mse)


class FastMRISSIM(_FastMRIVolumeMetric):
    """fastMRI's SSIM, per volume (:func:`fastmri_ssim`: the mean over its slices, data range = the
    target volume's max from ``meta["max"]``), averaged over volumes."""

    higher_is_better = True
    label = "SSIM"
    needs_range = True

    def _slice_stats(self, preds, target, data_range):
        return _ssim_slices(target, preds, data_range).unsqueeze(1)

    def _combine(self, stats):
        return stats[:, 0].mean()
