"""Lightning callbacks of the CLI: the progress bar, where the results went, and atomic prediction
writing."""

from __future__ import annotations

import os
import time
from datetime import timedelta
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Union

import lightning as L
import torch
from lightning.pytorch.callbacks import BasePredictionWriter, ModelCheckpoint, RichProgressBar, Timer
from lightning.pytorch.trainer.states import RunningStage
from lightning.pytorch.utilities import rank_zero_info, rank_zero_only

from .io import atomic_write

__all__ = ["ReportPaths", "PredictionWriter", "RunProgressBar", "CPUTimer", "say", "fit_summary"]


def say(trainer: Optional[L.Trainer], message: str, log: bool = True) -> None:
    """Print ``message`` on rank 0: through the progress bar's console while a Rich bar is drawn
    (so the line does not end up glued to the bar), else through Lightning's log (``log=True``)
    or to standard output."""
    if trainer is not None and not trainer.is_global_zero:
        return
    bar = getattr(trainer, "progress_bar_callback", None) if trainer is not None else None
    progress = getattr(bar, "progress", None)
    if isinstance(bar, RichProgressBar) and progress is not None and bar.is_enabled \
            and not getattr(bar, "_progress_stopped", False):
        progress.console.print(message, markup=False, highlight=False, soft_wrap=True)
    elif log:
        rank_zero_info(message)
    else:
        print(message, flush=True)


class CPUTimer(Timer):
    """Lightning's :class:`~lightning.pytorch.callbacks.Timer` on the process's CPU time.

    ``Trainer(max_time=...)`` stops on the wall clock, so a run on a busy machine gets less
    computation for the same budget. This timer counts :func:`time.process_time` instead (CPU
    seconds of all the process's threads, so with ``OMP_NUM_THREADS=1`` one core's seconds):
    other processes taking turns on the core no longer shorten a run's training (a busy sibling
    hyperthread still slows each step, and so still costs training within a budget). Everything that
    reads a ``Timer`` (:class:`~unroll.train.StageWise`'s time shares, the progress bar, the fit
    summary) reads this one the same way; its state is saved in checkpoints, so a resumed run
    continues with what it had left. Use it instead of ``trainer.max_time``, not with it::

        unroll fit --config configs/alista.yaml --trainer.callbacks+=unroll.train.CPUTimer \
            --trainer.callbacks.init_args.duration=00:00:15:00

    Args:
        duration: the CPU-time budget, as ``Timer`` takes it (``"DD:HH:MM:SS"``, a
            :class:`~datetime.timedelta` or a dict of its arguments); ``None``: no limit, only timing.
        interval: check the budget after every ``"step"`` or ``"epoch"``.
        verbose: say when the budget ends the run.
    """

    #: the clock the timer reads (seconds); the CPU time of this process
    clock = staticmethod(time.process_time)

    # Timer's own signature defaults interval to an enum, which --print_config cannot write out
    def __init__(self, duration: Optional[Union[str, timedelta, Dict[str, int]]] = None, interval: str = "step",
                 verbose: bool = True) -> None:
        super().__init__(duration=duration, interval=interval, verbose=verbose)

    def time_elapsed(self, stage: str = RunningStage.TRAINING) -> float:
        start, end = self.start_time(stage), self.end_time(stage)
        offset = self._offset if RunningStage(stage) == RunningStage.TRAINING else 0
        if start is None:
            return offset
        return (self.clock() if end is None else end) - start + offset

    def _mark(self, table: Dict[RunningStage, Optional[float]], stage: RunningStage) -> None:
        table[stage] = self.clock()

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._mark(self._start_time, RunningStage.TRAINING)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._mark(self._end_time, RunningStage.TRAINING)

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._mark(self._start_time, RunningStage.VALIDATING)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._mark(self._end_time, RunningStage.VALIDATING)

    def on_test_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._mark(self._start_time, RunningStage.TESTING)

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._mark(self._end_time, RunningStage.TESTING)


def _stagewise(trainer: L.Trainer):
    from .stagewise import StageWise

    return next((c for c in trainer.callbacks if isinstance(c, StageWise)), None)


def fit_summary(trainer: L.Trainer) -> List[str]:
    """Lines saying how a ``fit`` ended: steps, the stage-wise schedule's state, the best
    validation score, where the checkpoints and logs are."""
    lines = [f"trained {trainer.global_step} steps"]
    timer = next((c for c in trainer.callbacks if isinstance(c, Timer)), None)
    if timer is not None and timer.time_elapsed("train") > 0:
        lines[0] += f" in {timer.time_elapsed('train'):.0f} s" + (" of CPU time" if isinstance(timer, CPUTimer) else "")
    sw = _stagewise(trainer)
    model = getattr(trainer.lightning_module, "model", None) if trainer.lightning_module is not None else None
    if sw is not None and model is not None:
        k = getattr(model, "num_layers", "?")
        lines[0] += (f"; stage-wise schedule complete ({k} layers)" if sw.done else
                     f"; stage-wise schedule stopped at layer {sw.layer}/{k}, stage {sw.stage + 1}/{len(sw.lr_factors)}"
                     " (resume with --ckpt_path to continue it)")
    for cb in trainer.checkpoint_callbacks:
        if isinstance(cb, ModelCheckpoint):
            if cb.best_model_path and cb.monitor:
                score = "" if cb.best_model_score is None else f" ({cb.monitor} = {float(cb.best_model_score):.2f})"
                lines.append(f"best checkpoint: {cb.best_model_path}{score}")
            if cb.last_model_path:
                lines.append(f"last checkpoint: {cb.last_model_path}")
            elif not cb.monitor and cb.best_model_path:  # a callback that keeps the latest state (the configs' last.ckpt)
                lines.append(f"last checkpoint: {cb.best_model_path}")
    if trainer.logger is not None and trainer.logger.log_dir:
        lines.append(f"logs and config: {trainer.logger.log_dir}")
    return lines


class ReportPaths(L.Callback):
    """At the end of ``fit``, print where the checkpoints and logs are (rank 0 only), and the
    best validation score when a checkpoint callback monitors one. (The ``unroll`` CLI prints
    this summary itself, after the progress bar has stopped; the callback is for Python use.)"""

    @rank_zero_only
    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        print("\n".join(fit_summary(trainer)), flush=True)


class RunProgressBar(RichProgressBar):
    """The ``unroll`` CLI's progress bar (added by the CLI unless ``--trainer.enable_progress_bar=false``).

    The training bar counts optimiser steps over the whole run, against the budget that ends
    it: ``max_steps``, ``max_epochs`` × batches, or the most the stage-wise schedule can still
    take (``StageWise(max_validations=...)``); its description says where the stage-wise
    schedule is and, under ``max_time``, the time used against the limit. No epoch counter (the
    configs train on a stream: ``max_epochs: -1``) and no ``v_num``.
    """

    def _total(self, trainer: L.Trainer) -> float:
        totals = []
        if trainer.max_steps is not None and trainer.max_steps > 0:
            totals.append(trainer.max_steps)
        batches = trainer.num_training_batches
        if trainer.max_epochs is not None and trainer.max_epochs >= 0 and batches != float("inf"):
            totals.append(trainer.max_epochs * int(batches) // max(trainer.accumulate_grad_batches, 1))
        sw = _stagewise(trainer)
        interval = getattr(trainer, "val_check_batch", None)
        if sw is not None and sw.done:
            totals.append(trainer.global_step)  # the schedule has ended the run
        elif sw is not None and sw.max_validations is not None and isinstance(interval, int):
            model = trainer.lightning_module.model
            stages_left = (model.num_layers - sw.layer) * len(sw.lr_factors) + len(sw.lr_factors) - sw.stage
            left = stages_left * sw.max_validations - sw.validations
            totals.append(trainer.global_step + left * interval // max(trainer.accumulate_grad_batches, 1))
        return int(min(totals)) if totals else float("inf")

    def _describe(self, trainer: L.Trainer) -> str:
        parts = ["train"]
        sw = _stagewise(trainer)
        if sw is not None and trainer.lightning_module is not None and not sw.done:
            parts.append(f"layer {sw.layer}/{trainer.lightning_module.model.num_layers} "
                         f"stage {sw.stage + 1}/{len(sw.lr_factors)}")
        timer = next((c for c in trainer.callbacks if isinstance(c, Timer)), None)
        limit = getattr(timer, "_duration", None) if timer is not None else None
        if limit:
            kind = "CPU time" if isinstance(timer, CPUTimer) else "max_time"
            parts.append(f"{_clock(timer.time_elapsed('train'))}/{_clock(limit)} {kind}")
        return " · ".join(parts)

    def _get_train_description(self, current_epoch: int) -> str:
        return self._describe(self.trainer)

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # one bar for the whole run (not one per epoch of the data stream)
        if self.is_disabled:
            return
        if self.progress is not None and self.train_progress_bar_id is None:
            self.train_progress_bar_id = self._add_task(self._total(trainer), self._describe(trainer))
            self.progress.update(self.train_progress_bar_id, completed=trainer.global_step)
        self.refresh()

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if self.is_disabled:
            return
        if self.train_progress_bar_id is None:  # resumed mid-epoch
            self.on_train_epoch_start(trainer, pl_module)
        if self.progress is not None and self.train_progress_bar_id is not None:
            self.progress.update(self.train_progress_bar_id, completed=trainer.global_step, total=self._total(trainer),
                                 description=self._describe(trainer))
        self._update_metrics(trainer, pl_module)
        self.refresh()

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # the last state (e.g. the schedule ended at the last validation) before the bar stops
        if not self.is_disabled and self.progress is not None and self.train_progress_bar_id is not None:
            self.progress.update(self.train_progress_bar_id, completed=trainer.global_step, total=self._total(trainer),
                                 description=self._describe(trainer))
            self.refresh()

    def get_metrics(self, trainer: L.Trainer, pl_module: L.LightningModule):
        items = super().get_metrics(trainer, pl_module)
        items.pop("v_num", None)
        return items


def _clock(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    h, rest = divmod(seconds, 3600)
    return f"{h}:{rest // 60:02d}:{rest % 60:02d}" if h else f"{rest // 60}:{rest % 60:02d}"


class PredictionWriter(BasePredictionWriter):
    """Write the predictions of ``unroll predict`` to ``output_dir/predictions.pt`` atomically
    (a dict with ``"x_hat"``, the concatenated estimates ``(N, *in_shape)``). Each DDP rank
    writes its own file ``predictions_rank{r}.pt`` when more than one process runs.

    Args:
        output_dir: folder for the predictions.
    """

    def __init__(self, output_dir: str = "predictions") -> None:
        super().__init__(write_interval="epoch")
        self.output_dir = output_dir

    def write_on_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, predictions: Sequence[Any],
                           batch_indices: Optional[Sequence[Any]]) -> None:
        preds: List[torch.Tensor] = [p for p in predictions if isinstance(p, torch.Tensor)]
        name = "predictions.pt" if trainer.world_size == 1 else f"predictions_rank{trainer.global_rank}.pt"
        path = Path(self.output_dir) / name
        data = {"x_hat": torch.cat(preds).cpu() if preds else torch.empty(0)}
        atomic_write(path, lambda tmp: torch.save(data, tmp))
        if trainer.global_rank == 0:
            say(trainer, f"predictions: {os.path.abspath(path)}", log=False)
