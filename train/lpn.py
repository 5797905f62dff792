"""Training learned proximal networks: the projection callback, the proximal-matching schedule
and a small denoising task (``model(y) → x̂``, no operator).

* :class:`ProjectLPN` clips the non-negative weights of every
  :class:`~unroll.models.LearnedProxNet` in the task after each training batch (the paper's
  ``wclip``), so ``ψ`` stays convex.
* :class:`ProximalMatchingSchedule` drives a :class:`~unroll.losses.ProximalMatchingLoss`: ℓ1 for
  ``warmup_steps`` steps, then proximal matching with ``γ`` decreasing from ``gamma_start`` to
  ``gamma_end`` over ``decay_steps`` (linearly, or in ``stages`` equal steps as the paper does),
  optionally with its own learning rates. Everything is a function of the global step, so a
  resumed run continues the schedule where it stopped.
* :class:`DenoisingTask`: trains any denoiser ``model(y) → x̂`` (an LPN, a DnCNN…) on batches
  ``Batch(y=noisy, x=clean)`` with a core :class:`~unroll.losses.Loss`; logs the loss and the MSE
  (and PSNR for images) on validation, PSNR/SSIM/MSE (and the noisy input's) on test.
"""

from __future__ import annotations

import math
from typing import Any, Dict, List, Optional

import lightning as L
import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor, nn

from unroll.lipschitz import LipschitzPenalty, jacobian_norm
from unroll.losses import Loss, MSELoss, ProximalMatchingLoss
from unroll.metrics import PSNR, SSIM
from unroll.models.lpn import LearnedProxNet

from .task import log_train_loss, optimizers_for

__all__ = ["ProjectLPN", "ProximalMatchingSchedule", "DenoisingTask"]


def _lpns(module: nn.Module) -> List[LearnedProxNet]:
    return [m for m in module.modules() if isinstance(m, LearnedProxNet)]


class ProjectLPN(L.Callback):
    """After each training batch (so after each optimiser step), call ``project_()`` on every
    :class:`~unroll.models.LearnedProxNet` inside the task (the LPN itself, or one used as the
    prox of an unrolled solver), keeping its ``ψ`` convex. Also once when fitting starts.

    Args:
        strict: raise when the task holds no learned proximal network.
    """

    def __init__(self, strict: bool = True) -> None:
        super().__init__()
        self.strict = bool(strict)

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        nets = _lpns(pl_module)
        if not nets and self.strict:
            raise ValueError(f"ProjectLPN: the task {type(pl_module).__name__} holds no LPN/ConvLPN to project "
                             "(remove the callback, or pass strict=false)")
        for net in nets:
            net.project_()

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        for net in _lpns(pl_module):
            net.project_()


class ProximalMatchingSchedule(L.Callback):
    """ℓ1 warm start, then proximal matching with a decreasing ``γ`` (Fang et al. 2024).

    At the start of each training batch, from ``step = trainer.global_step``: before
    ``warmup_steps`` the task's :class:`~unroll.losses.ProximalMatchingLoss` computes ℓ1
    (``l1_warmup = True``); after, ``γ = gamma_at(step)``. With ``warmup_lr``/``lr`` the
    optimiser's learning rates are set for the two phases (a parameter group's ``lr_factor``,
    as :class:`~unroll.train.ReconstructionTask` sets it, is applied).

    Args:
        warmup_steps: ℓ1 steps (``0``: none).
        gamma_start, gamma_end: ``γ`` when proximal matching starts and at the end of the decay.
        decay_steps: steps over which ``γ`` goes from ``gamma_start`` to ``gamma_end`` (then stays).
        stages: ``None``: linear decay; an int ``S >= 2``: piecewise constant, ``S`` equally long
            stages at ``S`` equally spaced values from ``gamma_start`` to ``gamma_end`` (the paper's
            1-D toy: 0.5, 0.4, 0.3, 0.2, 0.1).
        warmup_lr: learning rate during the warm start (``None``: leave it).
        lr: learning rate during proximal matching (``None``: leave it). Either of the two
            together with a task's ``lr_scheduler`` is refused at the start of fitting (each would
            override the other).
    """

    def __init__(self, warmup_steps: int = 0, gamma_start: float = 0.5, gamma_end: float = 0.1,
                 decay_steps: int = 20000, stages: Optional[int] = None, warmup_lr: Optional[float] = None,
                 lr: Optional[float] = None) -> None:
        super().__init__()
        for name, value, minimum in (("warmup_steps", warmup_steps, 0), ("decay_steps", decay_steps, 1)):
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise ValueError(f"{name}: expected an int >= {minimum}, got {value!r}")
        for name, value in (("gamma_start", gamma_start), ("gamma_end", gamma_end)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
                raise ValueError(f"{name}: expected a finite number > 0, got {value!r}")
        if gamma_end > gamma_start:
            raise ValueError(f"gamma_end: expected <= gamma_start = {gamma_start} (a decreasing schedule), got "
                             f"{gamma_end}")
        if stages is not None and (isinstance(stages, bool) or not isinstance(stages, int) or stages < 2):
            raise ValueError(f"stages: expected None (linear decay) or an int >= 2, got {stages!r}")
        for name, value in (("warmup_lr", warmup_lr), ("lr", lr)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                      or not math.isfinite(value) or value < 0):
                raise ValueError(f"{name}: expected None or a finite number >= 0, got {value!r}")
        self.warmup_steps, self.decay_steps, self.stages = warmup_steps, decay_steps, stages
        self.gamma_start, self.gamma_end = float(gamma_start), float(gamma_end)
        self.warmup_lr, self.lr = warmup_lr, lr

    def in_warmup(self, step: int) -> bool:
        """Whether ``step`` is an ℓ1 warm-start step."""
        return step < self.warmup_steps

    def gamma_at(self, step: int) -> float:
        """``γ`` at global step ``step`` (``gamma_start`` during the warm start)."""
        t = min(max(step - self.warmup_steps, 0), self.decay_steps)
        if self.stages is None:
            frac = t / self.decay_steps
        else:
            stage = min(t * self.stages // self.decay_steps, self.stages - 1)
            frac = stage / (self.stages - 1)
        return self.gamma_start + frac * (self.gamma_end - self.gamma_start)

    def apply(self, loss: ProximalMatchingLoss, step: int, optimizers=()) -> None:
        """Set ``loss`` (and the optimisers' learning rates) for ``step``."""
        warm = self.in_warmup(step)
        loss.l1_warmup = warm
        loss.gamma = self.gamma_at(step)
        lr = self.warmup_lr if warm else self.lr
        if lr is not None:
            for opt in optimizers:
                for g in opt.param_groups:
                    g["lr"] = lr * g.get("lr_factor", 1.0)

    def _loss(self, pl_module: L.LightningModule) -> ProximalMatchingLoss:
        loss = getattr(pl_module, "loss", None)
        if not isinstance(loss, ProximalMatchingLoss):
            raise ValueError(f"ProximalMatchingSchedule: the task's loss must be a ProximalMatchingLoss, got "
                             f"{type(loss).__name__}")
        return loss

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._loss(pl_module)
        if (self.lr is not None or self.warmup_lr is not None) and trainer.lr_scheduler_configs:
            raise ValueError("ProximalMatchingSchedule: lr / warmup_lr set the learning rate at every batch, which "
                             "would silently override the task's lr_scheduler; give the schedule's lr and warmup_lr "
                             "as null, or drop the lr_scheduler")

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        step = trainer.global_step
        self.apply(self._loss(pl_module), step, trainer.optimizers)
        pl_module.log("train/gamma", self.gamma_at(step), on_step=True, on_epoch=False)
        pl_module.log("train/l1_warmup", float(self.in_warmup(step)), on_step=True, on_epoch=False)


class DenoisingTask(L.LightningModule):
    """Train, validate and test a denoiser ``model(y) → x̂`` (no operator).

    Args:
        model: the denoiser, e.g. ``unroll.models.ConvLPN`` or ``unroll.models.LPN``.
        loss: a core :class:`~unroll.losses.Loss` ``loss(x̂, x, None)``: ``MSELoss`` (ℓ2) by
            default, ``L1Loss``, ``ProximalMatchingLoss`` (with
            :class:`ProximalMatchingSchedule`).
        optimizer: optimiser factory (``params → Optimizer``); Adam(lr=1e-3) by default.
        lr_scheduler: optional scheduler factory.
        lipschitz: an optional :class:`unroll.lipschitz.LipschitzPenalty` added to the training
            loss (e.g. ``symmetric: true, bound: 0.9`` for an LPN whose ``R`` must be convex, so
            that plug-and-play with it converges); ``train/jacobian_norm`` (the largest estimate
            in the batch) and ``train/lipschitz_penalty`` are logged, and ``val/jacobian_norm``.

    Batches are ``unroll.data.Batch(y, x, ...)``. Validation logs ``val/loss`` (the loss as it is
    at that step), ``val/mse`` and, for images ``(B, C, H, W)``, ``val/psnr_db``. Test logs
    ``test/mse``, and for images ``test/psnr_db``, ``test/ssim`` and the noisy input's
    ``test/noisy_psnr_db``; :attr:`test_results` holds them.
    """

    def __init__(self, model: nn.Module, loss: Optional[Loss] = None,
                 optimizer: OptimizerCallable = torch.optim.Adam,
                 lr_scheduler: Optional[LRSchedulerCallable] = None,
                 lipschitz: Optional[LipschitzPenalty] = None) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["model", "loss", "optimizer", "lr_scheduler", "lipschitz"])
        if lipschitz is not None and not isinstance(lipschitz, LipschitzPenalty):
            raise TypeError(f"lipschitz: expected an unroll.lipschitz.LipschitzPenalty or None, got "
                            f"{type(lipschitz).__name__}")
        self.lipschitz = lipschitz
        self.model = model
        self.loss = loss if loss is not None else MSELoss()
        self.optimizer_factory = optimizer
        self.scheduler_factory = lr_scheduler
        self.val_psnr = PSNR()
        self.test_psnr, self.test_ssim, self.test_noisy_psnr = PSNR(), SSIM(), PSNR()

    def forward(self, y: Tensor) -> Tensor:
        """``x̂ = model(y)``, the shape of ``y``."""
        return self.model(y)

    @staticmethod
    def _range(batch) -> Optional[Tensor]:
        meta = getattr(batch, "meta", None) or {}
        return meta.get("data_range")

    def training_step(self, batch, batch_idx: int) -> Tensor:
        if batch.x is None:
            raise ValueError("batch.x: DenoisingTask is supervised but the batch has no clean signal")
        loss = self.loss(self(batch.y), batch.x, None)
        if self.lipschitz is not None:
            penalty, sigma = self.lipschitz(self.model, batch.y, batch.x)
            n = sigma.shape[0]
            self.log("train/jacobian_norm", sigma.max(), batch_size=n)
            self.log("train/lipschitz_penalty", penalty.detach(), batch_size=n)
            loss = loss + penalty
        return log_train_loss(self, loss, batch.y.shape[0])

    def validation_step(self, batch, batch_idx: int) -> None:
        x_hat = self(batch.y)
        n = batch.y.shape[0]
        self.log("val/loss", self.loss(x_hat, batch.x, None), batch_size=n, sync_dist=True)
        self.log("val/mse", (x_hat - batch.x).square().mean(), batch_size=n, sync_dist=True)
        if batch.x.dim() == 4:
            self.val_psnr.update(x_hat, batch.x, self._range(batch))
            self.log("val/psnr_db", self.val_psnr, prog_bar=True, batch_size=n)
        if self.lipschitz is not None:  # at the noisy inputs, more iterations than in training
            with torch.inference_mode(False), torch.enable_grad():
                sigma, _ = jacobian_norm(self.model, batch.y.clone(), 4 * self.lipschitz.iters,
                                         symmetric=self.lipschitz.symmetric)
            self.log("val/jacobian_norm", sigma.max(), batch_size=n, reduce_fx="max", sync_dist=True)

    def test_step(self, batch, batch_idx: int) -> None:
        x_hat = self(batch.y)
        n = batch.y.shape[0]
        self.log("test/mse", (x_hat - batch.x).square().mean(), batch_size=n, sync_dist=True)
        if batch.x.dim() == 4:
            rng = self._range(batch)
            self.test_psnr.update(x_hat, batch.x, rng)
            self.test_ssim.update(x_hat, batch.x, rng)
            self.test_noisy_psnr.update(batch.y, batch.x, rng)
            self.log("test/psnr_db", self.test_psnr, batch_size=n)
            self.log("test/ssim", self.test_ssim, batch_size=n)
            self.log("test/noisy_psnr_db", self.test_noisy_psnr, batch_size=n)

    def on_test_epoch_end(self) -> None:
        #: ``{name: value}`` of the test metrics
        self.test_results: Dict[str, float] = {k[len("test/"):]: float(v) for k, v in
                                               self.trainer.callback_metrics.items() if k.startswith("test/")}

    def predict_step(self, batch, batch_idx: int) -> Tensor:
        return self(batch.y)

    def configure_optimizers(self):
        return optimizers_for(self, "val/loss")
