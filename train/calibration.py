"""``BlindCalibrationTask``: train and score a blind-calibration model ``model(y, A)`` (e.g.
:class:`unroll.models.LearnedBlindCalibration`) on instances with known signal and gains
(:class:`unroll.data.BlindCalibrationDataModule`).

The loss is the mean over samples of ``‖x̂ − x‖²/‖x‖² + ‖d̂ − d‖²/‖d‖²`` (both pairs normalised to
``1ᵀd = m``, :func:`unroll.calibration.calibration_errors`), or its ``log10`` (``log_loss``: every
sample counts by its relative progress, so the already-accurate ones are not ignored). Validation
and test log the loss, the mean relative errors of ``x`` and ``d`` in dB (``20 log10``) and the
success rate (both errors below ``success_tol``).
"""

from __future__ import annotations

from typing import Dict, Optional, Tuple

import lightning as L
import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor, nn

from unroll.calibration import calibration_errors

from .task import log_train_loss, optimizers_for

__all__ = ["BlindCalibrationTask"]


class BlindCalibrationTask(L.LightningModule):
    """Train/validate/test ``model(y, A) → UnrolledOutput`` (signal ``.x``, gains ``.state.d``).

    Args:
        model: e.g. ``unroll.models.LearnedBlindCalibration``.
        optimizer: optimiser factory; Adam(lr=1e-3) by default.
        lr_scheduler: optional scheduler factory.
        log_loss: train on ``log10`` of each sample's squared relative error (default) instead of
            the error itself.
        success_tol: an estimate succeeds when both relative errors are below it.

    Batches: ``Batch(y (B, p, m), x (B, n), operator={"A": (B, p, m, n)}, meta={"gains": (B, m)})``.
    """

    def __init__(self, model: nn.Module, optimizer: OptimizerCallable = torch.optim.Adam,
                 lr_scheduler: Optional[LRSchedulerCallable] = None, log_loss: bool = True,
                 success_tol: float = 1e-3) -> None:
        super().__init__()
        if isinstance(success_tol, bool) or not isinstance(success_tol, (int, float)) or not success_tol > 0:
            raise ValueError(f"success_tol: expected a number > 0, got {success_tol!r}")
        self.save_hyperparameters(ignore=["model", "optimizer", "lr_scheduler"])
        self.model = model
        self.optimizer_factory = optimizer
        self.scheduler_factory = lr_scheduler
        self.log_loss = bool(log_loss)
        self.success_tol = float(success_tol)

    @staticmethod
    def _unpack(batch) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
        op = getattr(batch, "operator", None) or {}
        meta = getattr(batch, "meta", None) or {}
        if "A" not in op or "gains" not in meta or batch.x is None:
            raise ValueError("batch: expected Batch(y, x, operator={'A': (B, p, m, n)}, meta={'gains': (B, m)}) "
                             f"(unroll.data.BlindCalibrationDataModule), got operator keys {sorted(op)} and meta "
                             f"keys {sorted(meta)}")
        return batch.y, op["A"], batch.x, meta["gains"]

    def forward(self, y: Tensor, A: Tensor):
        return self.model(y, A)

    def errors(self, batch) -> Tuple[Tensor, Tensor]:
        """Relative errors of ``x`` and ``d`` per sample ``(B,)`` each."""
        y, A, x, d = self._unpack(batch)
        out = self(y, A)
        return calibration_errors(out.x, out.state.d, x, d)

    def _loss(self, ex: Tensor, ed: Tensor) -> Tensor:
        sq = ex.square() + ed.square()
        return torch.log10(sq + torch.finfo(sq.dtype).tiny).mean() if self.log_loss else sq.mean()

    def training_step(self, batch, batch_idx: int) -> Tensor:
        ex, ed = self.errors(batch)
        return log_train_loss(self, self._loss(ex, ed), ex.shape[0], "step sizes too large, a learning rate too "
                                                                     "high, or bad input")

    def _score(self, batch, prefix: str) -> Dict[str, Tensor]:
        ex, ed = self.errors(batch)
        n = ex.shape[0]
        values = {"loss": self._loss(ex, ed), "x_err_db": 20 * torch.log10(ex.mean()),
                  "d_err_db": 20 * torch.log10(ed.mean()),
                  "success": (torch.maximum(ex, ed) < self.success_tol).to(ex.dtype).mean()}
        for k, v in values.items():
            self.log(f"{prefix}/{k}", v, batch_size=n, sync_dist=True, prog_bar=k == "x_err_db")
        return values

    def validation_step(self, batch, batch_idx: int) -> None:
        self._score(batch, "val")

    def test_step(self, batch, batch_idx: int) -> None:
        self._score(batch, "test")

    def on_test_epoch_end(self) -> None:
        #: ``{name: value}`` of the test metrics
        self.test_results: Dict[str, float] = {k[len("test/"):]: float(v) for k, v in
                                               self.trainer.callback_metrics.items() if k.startswith("test/")}

    def predict_step(self, batch, batch_idx: int):
        y, A, _, _ = self._unpack(batch)
        out = self(y, A)
        return out.x, out.state.d

    def configure_optimizers(self):
        return optimizers_for(self, "val/loss")
