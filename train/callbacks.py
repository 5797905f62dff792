"""Lightning callbacks of the CLI: where the results went, and atomic prediction writing."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, List, Optional, Sequence

import lightning as L
import torch
from lightning.pytorch.callbacks import BasePredictionWriter, ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_only

from .io import atomic_write

__all__ = ["ReportPaths", "PredictionWriter"]


class ReportPaths(L.Callback):
    """At the end of ``fit``, print where the checkpoints and logs are (rank 0 only), and the
    best validation score when a checkpoint callback monitors one."""

    @rank_zero_only
    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        lines = []
        for cb in trainer.checkpoint_callbacks:
            if isinstance(cb, ModelCheckpoint):
                if cb.best_model_path and cb.monitor:
                    score = "" if cb.best_model_score is None else f" ({cb.monitor} = {float(cb.best_model_score):.2f})"
                    lines.append(f"best checkpoint: {cb.best_model_path}{score}")
                if cb.last_model_path:
                    lines.append(f"last checkpoint: {cb.last_model_path}")
        if trainer.logger is not None and trainer.logger.log_dir:
            lines.append(f"logs and config: {trainer.logger.log_dir}")
        if lines:
            print("\n".join(lines), flush=True)


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
            print(f"predictions: {os.path.abspath(path)}", flush=True)
