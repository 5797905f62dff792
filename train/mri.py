"""The MRI task: train and evaluate any ``model(y, op) → complex image`` on fastMRI-layout batches.

:class:`MRIReconstructionTask` is a :class:`~unroll.train.ReconstructionTask` for the MRI batch
contract (``unroll.data.FastMRIDataModule``): ``y`` undersampled multi-coil k-space
``(B, C, H, W)``, ``x`` the target magnitude ``(B, h, w)``, ``operator`` what builds the batch's
:class:`~unroll.operators.SENSE` operator (the data module's ``build_operator``) and ``meta``
with ``fname``, ``slice_num`` and the volume's ``max`` (the data range of the fastMRI metrics).

Every step takes the magnitude of the model's complex output, centre-crops it to the target's
``(h, w)`` and scores it there: the training loss is ``ssim_weight · (1 − SSIM) + l1_weight ·
‖x̂ − x‖₁ / (N·d)`` (SSIM with fastMRI's window and the volume's data range ``d``); the test metrics
are fastMRI's (:class:`FastMRITracker`): NMSE, PSNR and SSIM per volume, averaged over volumes.
``unroll evaluate`` on an MRI checkpoint also writes per-slice and per-volume tables and PNG
panels (target, zero-filled, reconstruction, error map) for a few slices
(:meth:`MRIReconstructionTask.write_evaluation`), and scores the task's baselines
(:class:`MRIBaseline`: zero-filled SENSE and RSS, compressed sensing with λ tuned on the
validation split) with the same metrics.
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor, nn
from torchmetrics import Metric

from unroll.losses import Loss
from unroll.metrics import FastMRINMSE, FastMRIPSNR, FastMRISSIM, fastmri_ssim_per_slice
from unroll.operators import LinearOperator, center_crop

from .io import atomic_write, atomic_write_json, atomic_write_text, rows_csv
from .scoring import Baseline, BaselineRun, MetricTracker, check_baselines
from .task import ReconstructionTask, log_train_loss

__all__ = ["MRIReconstructionTask", "MRILoss", "FastMRITracker", "MRIBaseline", "fastmri_metrics", "magnitude_crop",
           "volume_data_range", "tune_baseline_lam"]


# ---------------------------------------------------------------------------------- helpers
def magnitude_crop(estimate: Tensor, target_shape: Sequence[int]) -> Tensor:
    """``|estimate|`` centre-cropped to the target's image size.

    Args:
        estimate: the model's output ``(B, H, W)`` (complex or real).
        target_shape: the target's shape ``(B, h, w)`` (or just ``(h, w)``).

    Returns:
        ``(B, h, w)`` real.
    """
    if not isinstance(estimate, Tensor) or estimate.dim() != 3:
        got = tuple(estimate.shape) if isinstance(estimate, Tensor) else type(estimate).__name__
        raise ValueError(f"estimate: an MRI model must return an image (B, H, W), got {got}")
    hw = tuple(int(s) for s in target_shape[-2:])
    mag = estimate.abs() if estimate.is_complex() else estimate
    if tuple(mag.shape[-2:]) == hw:
        return mag
    return center_crop(mag, hw)


def volume_data_range(meta: Optional[Mapping], target: Tensor) -> Tensor:
    """``(B,)`` data range of each slice: its volume's target maximum (``meta["max"]``, else
    ``meta["data_range"]``), or the slice's own maximum when the batch carries neither."""
    meta = meta or {}
    for key in ("max", "data_range"):
        if key in meta and meta[key] is not None:
            d = torch.as_tensor(meta[key], device=target.device, dtype=target.dtype).reshape(-1)
            if d.shape[0] != target.shape[0]:
                raise ValueError(f"meta[{key!r}]: expected one value per slice ({target.shape[0]}), got shape "
                                 f"{tuple(d.shape)}")
            return d
    return target.detach().flatten(1).amax(1)


def _slice_ssim(pred: Tensor, target: Tensor, data_range: Tensor) -> Tensor:
    """``(B,)`` SSIM of each slice with fastMRI's conventions and its volume's data range ``(B,)``
    (:func:`unroll.metrics.fastmri_ssim_per_slice`); differentiable."""
    return fastmri_ssim_per_slice(target, pred, data_range)


class MRILoss(Loss):
    """``ssim_weight · (1 − SSIM(x̂, x)) + l1_weight · mean|x̂ − x| / d`` on magnitude images.

    SSIM is fastMRI's (7×7 uniform window, k1 = 0.01, k2 = 0.03) with the data range ``d`` of each
    slice (its volume's maximum, as fastMRI's ``SSIMLoss`` takes ``max_value``); the ℓ1 term is
    divided by ``d`` too, so both terms are scale-free.

    Args:
        ssim_weight: weight of ``1 − SSIM`` (``≥ 0``).
        l1_weight: weight of the normalised ℓ1 error (``≥ 0``); at least one weight must be > 0.

    ``forward(x_hat, target, problem=None, data_range=None)``: ``(B, h, w)`` real images,
    ``data_range`` ``(B,)`` (default each target's maximum); returns a 0-dim tensor.
    """

    def __init__(self, ssim_weight: float = 1.0, l1_weight: float = 0.0) -> None:
        super().__init__()
        for name, v in (("ssim_weight", ssim_weight), ("l1_weight", l1_weight)):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v < float("inf"):
                raise ValueError(f"{name}: expected a finite number >= 0, got {v!r}")
        if ssim_weight == 0 and l1_weight == 0:
            raise ValueError("ssim_weight, l1_weight: at least one must be > 0, got both 0")
        self.ssim_weight, self.l1_weight = float(ssim_weight), float(l1_weight)

    def forward(self, x_hat: Tensor, target: Optional[Tensor], problem: Any = None,
                data_range: Optional[Tensor] = None) -> Tensor:
        if target is None:
            raise ValueError("target: MRILoss is supervised and needs the target image, got None")
        if x_hat.shape != target.shape:
            raise ValueError(f"x_hat: expected the target's shape {tuple(target.shape)}, got {tuple(x_hat.shape)}")
        d = target.detach().flatten(1).amax(1) if data_range is None else data_range
        loss = x_hat.new_zeros(())
        if self.ssim_weight:
            loss = loss + self.ssim_weight * (1.0 - _slice_ssim(x_hat, target, d).mean())
        if self.l1_weight:
            loss = loss + self.l1_weight * ((x_hat - target).abs().flatten(1).mean(1) / d).mean()
        return loss

    def extra_repr(self) -> str:
        return f"ssim_weight={self.ssim_weight:g}, l1_weight={self.l1_weight:g}"


# ---------------------------------------------------------------------------------- metrics
def fastmri_metrics() -> Dict[str, Metric]:
    """The MRI task's metrics: fastMRI's NMSE, PSNR and SSIM per volume, averaged over volumes
    (:class:`unroll.metrics.FastMRINMSE`, :class:`~unroll.metrics.FastMRIPSNR`,
    :class:`~unroll.metrics.FastMRISSIM`)."""
    return {"nmse": FastMRINMSE(), "psnr": FastMRIPSNR(), "ssim": FastMRISSIM()}


class FastMRITracker(MetricTracker):
    """A :class:`~unroll.train.MetricTracker` for MRI models: each estimate ``(B, H, W)`` (complex
    or magnitude) is turned into its magnitude centre-cropped to the target ``(B, h, w)``
    (:func:`magnitude_crop`) before it is scored, so models and baselines that return full-size
    complex images are scored alike by fastMRI's per-volume metrics (the batch's ``meta`` gives
    the file, slice and volume max). It also remembers each slice's ``(fname, slice)`` for the
    per-slice table and keeps the images of the first ``num_panels`` slices for the panels of
    :meth:`MRIReconstructionTask.write_evaluation`.

    Args:
        metrics: ``{key: Metric}`` (default :func:`fastmri_metrics`).
        num_panels: slices whose images are kept.
    """

    def __init__(self, metrics: Optional[Mapping[str, Metric]] = None, num_panels: int = 0) -> None:
        super().__init__(metrics if metrics is not None else fastmri_metrics())
        self.num_panels = int(num_panels)
        #: ``(fname, slice)`` of every slice scored, in order
        self.keys: List[Tuple[str, int]] = []
        #: ``{(fname, slice): (estimate (h, w), target (h, w))}`` of the first ``num_panels`` slices
        self.panels: "OrderedDict[Tuple[str, int], Tuple[Tensor, Tensor]]" = OrderedDict()

    def update(self, trajectory: Sequence[Tensor], target: Optional[Tensor], *, iterations: Optional[Tensor] = None,
               meta: Optional[Mapping] = None) -> None:
        """As :meth:`MetricTracker.update`, with ``trajectory`` the model's estimates ``(B, H, W)``."""
        if target is None:
            raise ValueError("batch.x: the fastMRI metrics need the target images, but the batch has none")
        trajectory = [magnitude_crop(t.detach(), target.shape).to(target.dtype) for t in trajectory]
        super().update(trajectory, target, iterations=iterations, meta=meta)
        meta = meta or {}
        b = target.shape[0]
        names = [str(f) for f in meta["fname"]] if "fname" in meta else [f"#{len(self.keys) + i + 1}" for i in range(b)]
        nums = meta.get("slice_num")
        nums = [int(v) for v in torch.as_tensor(nums).reshape(-1)] if nums is not None else [0] * b
        for i in range(b):
            self.keys.append((names[i], nums[i]))
            if len(self.panels) < self.num_panels:
                self.panels[(names[i], nums[i])] = (trajectory[-1][i].detach().float().cpu(),
                                                    target[i].detach().float().cpu())

    def slice_rows(self) -> List[Dict[str, Any]]:
        """One row per slice: ``fname``, ``slice`` and each metric of the slice alone (with its
        volume's data range)."""
        values = self.per_sample()
        return [{"fname": f, "slice": s, **{k: v[i] for k, v in values.items()}} for i, (f, s) in enumerate(self.keys)]

    def volume_rows(self) -> List[Dict[str, Any]]:
        """One row per volume (in order of first appearance): ``fname``, ``slices`` and each metric
        with fastMRI's per-volume conventions."""
        per_volume = {k: clones[-1].per_volume() for k, clones in (self._per_iter or {}).items()
                      if hasattr(clones[-1], "per_volume")}
        counts: "OrderedDict[str, int]" = OrderedDict()
        for f, _ in self.keys:
            counts[f] = counts.get(f, 0) + 1
        return [{"fname": f, "slices": n, **{k: v[f] for k, v in per_volume.items() if f in v}}
                for f, n in counts.items()]


# ---------------------------------------------------------------------------------- baselines
class MRIBaseline(Baseline):
    """A classical MRI reconstruction (any ``model(y, op) → (B, H, W)`` without training, e.g.
    :class:`unroll.models.ZeroFilled` or :class:`unroll.models.CompressedSensing`) scored by
    ``unroll evaluate`` next to the trained models, with the MRI task's metrics.

    Args:
        model: the reconstruction module.
        name: column name in the reports (default: the model's ``name`` attribute or class name).
        tune_lams: values of the model's ``lam`` to try on the validation split before the test
            (the one with the best mean slice SSIM is kept; ``None``: no tuning).
        tune_batches: validation batches used for tuning (``None``: all).
    """

    def __init__(self, model: nn.Module, name: Optional[str] = None, tune_lams: Optional[List[float]] = None,
                 tune_batches: Optional[int] = None) -> None:
        if not isinstance(model, nn.Module):
            raise ValueError(f"model: expected an nn.Module called model(y, op), got {type(model).__name__}")
        if tune_lams is not None:
            if not hasattr(model, "lam"):
                raise ValueError(f"tune_lams: {type(model).__name__} has no `lam` to tune")
            if not tune_lams or any(isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0
                                    for v in tune_lams):
                raise ValueError(f"tune_lams: expected a non-empty list of numbers > 0, got {tune_lams!r}")
        if tune_batches is not None and (isinstance(tune_batches, bool) or not isinstance(tune_batches, int)
                                         or tune_batches < 1):
            raise ValueError(f"tune_batches: expected an int >= 1 or None, got {tune_batches!r}")
        self.model = model
        self.name = name or getattr(model, "name", None) or type(model).__name__
        self.tune_lams = None if tune_lams is None else [float(v) for v in tune_lams]
        self.tune_batches = tune_batches
        #: ``{lam: mean validation SSIM}`` after :meth:`prepare` tuned it
        self.tuning: Dict[float, float] = {}

    def prepare(self, task: "MRIReconstructionTask", datamodule) -> None:
        """Tune ``lam`` on ``datamodule``'s validation split (when ``tune_lams`` is set)."""
        if self.tune_lams is None or self.tuning:
            return
        best, self.tuning = tune_baseline_lam(self.model, datamodule.val_dataloader(), task.batch_operator,
                                              self.tune_lams, self.tune_batches)
        self.model.lam = best

    def run(self, operator: LinearOperator, y: Tensor, num_iters: int, lam: float) -> BaselineRun:
        with torch.no_grad():
            x = self.model(y, operator)
        return BaselineRun([x], torch.ones(y.shape[0], dtype=torch.long, device=y.device))

    def description(self, lam: float) -> str:
        value = getattr(self.model, "lam", None)
        return self.name if value is None else f"{self.name} (λ={float(value):g})"


def tune_baseline_lam(model: nn.Module, loader, build_operator, lams: Sequence[float],
                      max_batches: Optional[int] = None) -> Tuple[float, Dict[float, float]]:
    """Grid search of ``model.lam`` on a validation loader by mean slice SSIM (fastMRI's window,
    the volumes' data range).

    Args:
        model: a module with a settable ``lam``, called ``model(y, op)``.
        loader: yields :class:`unroll.data.Batch` es.
        build_operator: ``batch → operator`` (the task's :meth:`~ReconstructionTask.batch_operator`).
        lams: candidate values.
        max_batches: use at most this many batches (``None``: all).

    Returns:
        ``(best lam, {lam: mean SSIM})``.
    """
    batches = []
    for i, batch in enumerate(loader):
        if max_batches is not None and i >= max_batches:
            break
        batches.append(batch)
    if not batches:
        raise ValueError("loader: the validation split is empty; cannot tune lam")
    scores: Dict[float, float] = {}
    old = model.lam
    with torch.no_grad():
        for lam in lams:
            model.lam = float(lam)
            total, count = 0.0, 0
            for batch in batches:
                x = magnitude_crop(model(batch.y, build_operator(batch)), batch.x.shape)
                s = _slice_ssim(x.to(torch.float64), batch.x.to(torch.float64),
                                volume_data_range(batch.meta, batch.x.to(torch.float64)))
                total, count = total + float(s.sum()), count + s.numel()
            scores[float(lam)] = total / count
    model.lam = old
    best = max(scores, key=lambda k: scores[k])
    return best, scores


def _default_baselines() -> List[Baseline]:
    from unroll.models.mri_baselines import CompressedSensing, ZeroFilled

    return [MRIBaseline(ZeroFilled("sense"), name="zero_filled"),
            MRIBaseline(ZeroFilled("rss"), name="zero_filled_rss"),
            MRIBaseline(CompressedSensing(), name="cs_wavelet", tune_lams=[3e-4, 1e-3, 3e-3, 1e-2], tune_batches=8)]


# ---------------------------------------------------------------------------------- the task
class MRIReconstructionTask(ReconstructionTask):
    """Train, validate and test an MRI reconstruction model ``model(y, op) → (B, H, W)`` complex.

    Args:
        model: the network (e.g. :class:`unroll.models.MoDL`), called ``model(y, op)`` with the
            batch's operator (the data module's ``build_operator(batch.operator)``).
        ssim_weight, l1_weight: the training loss :class:`MRILoss` (``1 − SSIM`` by default, as
            fastMRI's VarNet; ``l1_weight`` adds the normalised ℓ1 error).
        optimizer, lr_scheduler: as :class:`~unroll.train.ReconstructionTask` (a scheduler
            monitors ``val/nmse_db``, which is logged too).
        baselines: what ``unroll evaluate`` scores next to the model (:class:`MRIBaseline`s);
            default zero-filled SENSE and RSS and wavelet compressed sensing with λ tuned on the
            validation split.
        num_panels: slices drawn as PNG panels by ``unroll evaluate``.
        compile, compile_mode: as :class:`~unroll.train.ReconstructionTask`.

    Logged: ``train/loss``; ``val/loss``, ``val/ssim``, ``val/psnr`` (mean over slices, each with its
    volume's data range) and ``val/nmse_db``. ``trainer.test`` reports fastMRI's per-volume NMSE,
    PSNR and SSIM (``test/nmse``, ``test/psnr``, ``test/ssim``).
    """

    def __init__(self, model: nn.Module, ssim_weight: float = 1.0, l1_weight: float = 0.0,
                 optimizer: OptimizerCallable = torch.optim.Adam, lr_scheduler: Optional[LRSchedulerCallable] = None,
                 baselines: Optional[List[Baseline]] = None, num_panels: int = 4, compile: bool = False,
                 compile_mode: Optional[str] = None) -> None:
        if isinstance(num_panels, bool) or not isinstance(num_panels, int) or num_panels < 0:
            raise ValueError(f"num_panels: expected an int >= 0, got {num_panels!r}")
        super().__init__(model, loss=MRILoss(ssim_weight, l1_weight), optimizer=optimizer, lr_scheduler=lr_scheduler,
                         metrics=fastmri_metrics(),
                         baselines=check_baselines(baselines) if baselines is not None else _default_baselines(),
                         compile=compile, compile_mode=compile_mode)
        self.save_hyperparameters(ignore=["model", "optimizer", "lr_scheduler", "baselines"])
        self.num_panels = num_panels

    @property
    def num_layers(self) -> int:
        return int(getattr(self.model, "num_layers", 1))

    def _prediction(self, batch) -> Tuple[Tensor, Tensor]:
        """``(|x̂| cropped to the target (B, h, w), data range (B,))`` of a batch."""
        if batch.x is None:
            raise ValueError("batch.x: the MRI task is supervised and needs the target images, got None")
        op = self.batch_operator(batch)
        pred = magnitude_crop(self(batch.y, op, **self._depth()), batch.x.shape)
        return pred, volume_data_range(batch.meta, batch.x)

    def training_step(self, batch, batch_idx: int) -> Tensor:
        pred, d = self._prediction(batch)
        loss = self.loss(pred, batch.x, data_range=d)
        return log_train_loss(self, loss, batch.y.shape[0])

    def validation_step(self, batch, batch_idx: int) -> None:
        pred, d = self._prediction(batch)
        b = batch.y.shape[0]
        self.val_nmse.update(pred, batch.x)
        self.log("val/loss", self.loss(pred, batch.x, data_range=d), batch_size=b, sync_dist=True)
        self.log("val/ssim", _slice_ssim(pred, batch.x, d).mean(), batch_size=b, sync_dist=True, prog_bar=True)
        mse = (pred - batch.x).square().flatten(1).mean(1)
        self.log("val/psnr", (10 * torch.log10(d.square() / mse)).mean(), batch_size=b, sync_dist=True)
        self.log("val/nmse_db", self.val_nmse, batch_size=b)

    def make_tracker(self) -> FastMRITracker:
        """What ``unroll evaluate`` scores each method with (the model and every baseline)."""
        return FastMRITracker(self.metrics, num_panels=self.num_panels)

    def on_test_epoch_start(self) -> None:
        self._test_tracker = self.make_tracker()

    def test_step(self, batch, batch_idx: int) -> None:
        out = self(batch.y, self.batch_operator(batch))
        self._test_tracker.update([out], batch.x, meta=getattr(batch, "meta", None))

    def predict_step(self, batch, batch_idx: int) -> Tensor:
        """``|x̂|`` ``(B, h, w)``, centre-cropped to the target when the batch has one (else
        ``(B, H, W)``)."""
        out = self(batch.y, self.batch_operator(batch))
        return magnitude_crop(out, batch.x.shape) if batch.x is not None else out.abs()

    # ------------------------------------------------------------------ evaluate's report
    def write_evaluation(self, trackers: Mapping[str, FastMRITracker], output_dir: str) -> Dict[str, str]:
        """Write the per-slice and per-volume tables of every method (``per_slice.csv/.json``,
        ``per_volume.csv/.json``: one row per method and slice/volume) and one PNG panel per kept
        slice (``panels/FNAME_sliceN.png``: target, zero-filled, each method's reconstruction and
        error map) into ``output_dir``.

        Args:
            trackers: ``{method name: FastMRITracker}`` after the test set was scored (the models
                first, then the baselines; the zero-filled one is the baseline named
                ``zero_filled``, else the first whose name starts with ``zero_filled``).

        Returns:
            ``{"per_slice_csv", "per_slice_json", "per_volume_csv", "per_volume_json", "panel_1", ...}``,
            and ``baselines_json`` (each tuned baseline's λ and its validation SSIM per candidate)
            when a baseline was tuned.
        """
        out = Path(output_dir)
        paths: Dict[str, str] = {}
        trackers = {k: t for k, t in trackers.items() if isinstance(t, FastMRITracker)}
        for what, rows_of in (("per_slice", FastMRITracker.slice_rows), ("per_volume", FastMRITracker.volume_rows)):
            rows = [{"method": m, **r} for m, t in trackers.items() for r in rows_of(t)]
            paths[f"{what}_csv"] = str(atomic_write_text(out / f"{what}.csv", rows_csv(rows)))
            paths[f"{what}_json"] = str(atomic_write_json(out / f"{what}.json", rows))
        tuned = {b.name: {"lam": float(b.model.lam), "val_ssim": {str(k): v for k, v in b.tuning.items()}}
                 for b in self.baselines if isinstance(b, MRIBaseline) and b.tuning}
        if tuned:
            paths["baselines_json"] = str(atomic_write_json(out / "baselines.json", tuned))
        zf_name = "zero_filled" if "zero_filled" in trackers else next(
            (k for k in trackers if k.startswith("zero_filled")), None)
        recon = [k for k in trackers if k != zf_name and not k.startswith("zero_filled")]
        if trackers:
            first = next(iter(trackers.values()))
            for i, key in enumerate(first.panels):
                paths[f"panel_{i + 1}"] = str(_write_panel(out / "panels", key, trackers, zf_name, recon))
        return paths


def _write_panel(folder: Path, key: Tuple[str, int], trackers: Mapping[str, FastMRITracker], zf_name: Optional[str],
                 methods: List[str]) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fname, num = key
    target = next(t.panels[key][1] for t in trackers.values() if key in t.panels)
    columns: List[Tuple[str, Tensor, bool]] = [("target", target, False)]
    if zf_name is not None and key in trackers[zf_name].panels:
        columns.append(("zero-filled", trackers[zf_name].panels[key][0], False))
    for m in methods:
        if key in trackers[m].panels:
            columns.append((m, trackers[m].panels[key][0], False))
    errors = [(f"|{m} − target|", trackers[m].panels[key][0] - target, True) for m in methods
              if key in trackers[m].panels]
    columns += errors
    vmax = float(target.max()) or 1.0
    emax = max([float(e.abs().max()) for _, e, _ in errors] + [1e-12])
    fig, axes = plt.subplots(1, len(columns), figsize=(2.6 * len(columns), 2.9), squeeze=False)
    for ax, (title, img, is_err) in zip(axes[0], columns):
        if is_err:
            ax.imshow(img.abs().numpy(), cmap="inferno", vmin=0, vmax=emax)
        else:
            ax.imshow(img.numpy(), cmap="gray", vmin=0, vmax=vmax)
        ax.set_title(title, fontsize=8)
        ax.axis("off")
    fig.suptitle(f"{fname}, slice {num}", fontsize=9)
    fig.tight_layout()
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in Path(fname).stem)
    path = atomic_write(folder / f"{safe}_slice{num}.png", lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    plt.close(fig)
    return path


# ---------------------------------------------------------------------------------- issue 18
class MRITimeStepTask(MRIReconstructionTask):
    """:class:`MRIReconstructionTask` whose training loss is taken over every time step of the
    model (CIRIM's training, Karkalousos et al. 2022), validation and test as the parent's.

    The model is called ``model(y, op, return_trajectory=True)`` and its output's ``trajectory``
    is either nested (per cascade, per time step: :class:`~unroll.models.CIRIM`) or flat (per
    step: :class:`~unroll.models.RecurrentVarNet`, :class:`~unroll.models.VarNet`, one cascade).
    The loss is :func:`unroll.models.cirim.time_step_loss` of :class:`MRILoss` on each estimate
    (magnitude, centre-cropped to the target): per cascade the time steps weighted by
    ``logspace(−1, 0, T)`` and averaged, then averaged over cascades.

    Args: as :class:`MRIReconstructionTask`.
    """

    def training_step(self, batch, batch_idx: int) -> Tensor:
        from unroll.models.cirim import time_step_loss

        if batch.x is None:
            raise ValueError("batch.x: the MRI task is supervised and needs the target images, got None")
        out = self(batch.y, self.batch_operator(batch), return_trajectory=True, **self._depth())
        traj = getattr(out, "trajectory", None)
        if not traj:
            raise ValueError(f"model: {type(self.model).__name__} returned no trajectory with return_trajectory=True; "
                             "MRITimeStepTask needs the estimate of every time step")
        nested = traj if isinstance(traj[0], (list, tuple)) else [traj]
        d = volume_data_range(batch.meta, batch.x)
        loss = time_step_loss(nested, lambda z: self.loss(magnitude_crop(z, batch.x.shape), batch.x, data_range=d))
        return log_train_loss(self, loss, batch.y.shape[0])


__all__ += ["MRITimeStepTask"]
