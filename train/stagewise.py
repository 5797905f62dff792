"""Stage-wise (layer-by-layer) training of unrolled networks, as in the LISTA-CP/ALISTA papers.

For each depth ``t = 1..K`` the network is truncated to its first ``t`` layers and trained in
stages (Chen et al. 2018, Sec. 4; Liu et al. 2019):

1. only layer ``t`` (and the parameters shared by all layers) at the base learning rate;
2. layers ``1..t`` at the base rate × 0.2;
3. layers ``1..t`` at the base rate × 0.02.

A stage ends when the monitored validation metric has not improved for ``patience``
validations, or after ``max_validations`` validations (a cap that fixes the schedule's length
in steps, so the same config trains the same model on an idle or a busy machine); the best weights of the stage are then restored and the next stage starts with a
fresh optimiser state. A stage at the same depth as the one before starts with that stage's
best as the value to beat, so it keeps its starting weights unless it improves on them. After
the last stage of layer ``K`` training stops.

The callback works with any LightningModule that has an ``active_layers`` attribute (the depth
its training and validation steps run; ``None`` = all) and a ``model`` with
``layer_parameters(k)``, ``shared_parameters()`` and ``num_layers`` — as
:class:`~unroll.train.ReconstructionTask` with any :class:`~unroll.models.UnrolledModel`.
Its position in the schedule is saved in checkpoints, so an interrupted run resumes in the
stage where it stopped.
"""

from __future__ import annotations

import math
from typing import Any, Dict, List, Optional, Sequence

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, Timer
from lightning.pytorch.utilities import rank_zero_info
from torch import nn

from .callbacks import say

__all__ = ["StageWise"]


class StageWise(Callback):
    """Layer-by-layer training with learning-rate stages (a Lightning callback).

    Args:
        lr_factors: learning-rate factor of each stage; the first stage trains only the new
            layer, the others all layers up to it. Default ``(1, 0.2, 0.02)`` as in the papers.
        patience: validations without improvement that end a stage.
        min_delta: improvement (in the monitored unit, dB for ``val/nmse_db``) that counts.
        monitor: the validation metric, lower is better.
        first_layer: depth to start at (1-based; layers below it are taken as trained).
        restore_best: restore the stage's best weights when it ends.
        warm_start: when layer ``t`` is done, copy its parameters into layer ``t + 1`` (where
            shapes match), so a new layer starts from its trained predecessor. Off: each layer
            starts from its initialisation, as in the papers.
        max_validations: end a stage after this many validations at most (``None``: no cap), so
            a stage lasts at most ``max_validations × val_check_interval`` steps and the whole
            schedule at most that times the number of stages. With the time-aware shares off
            (no ``trainer.max_time``, or ``time_aware=False``) the schedule depends on steps and
            validation values only, not on the machine's speed.
        time_aware: with ``trainer.max_time`` set, a stage also ends when it has used its share
            of the time left (fixed when the stage starts: the time left times the stage's depth
            over the summed depths of the stages left, so that stages get about equal numbers
            of steps, a step at depth ``t`` costing about ``t`` layers), so that a time-limited
            run trains every layer instead of stopping half-way through the network with
            untrained layers behind it. Time a stage leaves unused goes to the later ones.

    Validation frequency (``trainer.val_check_interval``) sets how quickly a stage can end.
    The callback owns the learning rate: do not combine it with an LR scheduler.
    """

    def __init__(self, lr_factors: Sequence[float] = (1.0, 0.2, 0.02), patience: int = 4, min_delta: float = 0.0,
                 monitor: str = "val/nmse_db", first_layer: int = 1, restore_best: bool = True,
                 warm_start: bool = False, time_aware: bool = True, max_validations: Optional[int] = None) -> None:
        super().__init__()
        factors = [float(f) for f in lr_factors]
        if not factors or any(not (f > 0 and math.isfinite(f)) for f in factors):
            raise ValueError(f"lr_factors: expected a non-empty list of positive numbers, got {list(lr_factors)!r}")
        if isinstance(patience, bool) or not isinstance(patience, int) or patience < 1:
            raise ValueError(f"patience: expected an int >= 1, got {patience!r}")
        if isinstance(first_layer, bool) or not isinstance(first_layer, int) or first_layer < 1:
            raise ValueError(f"first_layer: expected an int >= 1, got {first_layer!r}")
        if max_validations is not None and (isinstance(max_validations, bool) or not isinstance(max_validations, int)
                                            or max_validations < 1):
            raise ValueError(f"max_validations: expected an int >= 1 or None, got {max_validations!r}")
        if not min_delta >= 0:
            raise ValueError(f"min_delta: expected a number >= 0, got {min_delta!r}")
        self.lr_factors = factors
        self.patience = patience
        self.min_delta = float(min_delta)
        self.monitor = monitor
        self.restore_best = restore_best
        self.warm_start = warm_start
        self.time_aware = time_aware
        self.max_validations = max_validations
        self.validations = 0  # validations in the current stage
        self.deadline: Optional[float] = None  # Timer's elapsed training seconds at which the stage ends
        # position in the schedule (saved in checkpoints)
        self.layer = first_layer
        self.stage = 0
        self.best = math.inf
        self.wait = 0
        self.done = False
        self.base_lrs: Optional[List[float]] = None
        self.history: List[Dict[str, float]] = []  # one entry per finished stage
        self._best_state: Optional[List[torch.Tensor]] = None

    # ------------------------------------------------------------------ helpers
    @staticmethod
    def _check_module(pl_module: L.LightningModule) -> nn.Module:
        model = getattr(pl_module, "model", None)
        missing = [a for a in ("layer_parameters", "shared_parameters", "num_layers") if not hasattr(model, a)]
        if not hasattr(pl_module, "active_layers") or missing:
            raise TypeError(
                f"StageWise: the LightningModule must have an `active_layers` attribute and a `model` with "
                f"layer_parameters(k), shared_parameters() and num_layers (e.g. ReconstructionTask with an "
                f"UnrolledModel); got {type(pl_module).__name__} with model {type(model).__name__}"
                + (f" missing {', '.join(missing)}" if missing else ""))
        return model

    def _trainable(self, model: nn.Module) -> List[nn.Parameter]:
        layers = [self.layer - 1] if self.stage == 0 else range(self.layer)
        seen, params = set(), []
        for p in [*model.shared_parameters(), *(q for k in layers for q in model.layer_parameters(k))]:
            if id(p) not in seen:
                seen.add(id(p))
                params.append(p)
        return params

    def _apply(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Set depth, trainable parameters and learning rate for the current stage."""
        model = self._check_module(pl_module)
        if self.done:
            pl_module.active_layers = None
            for p in model.parameters():
                p.requires_grad_(True)
            return
        if self.layer > model.num_layers:
            raise ValueError(f"first_layer: {self.layer} is beyond the model's {model.num_layers} layers")
        pl_module.active_layers = self.layer
        trainable = {id(p) for p in self._trainable(model)}
        for p in model.parameters():
            p.requires_grad_(id(p) in trainable)
        if trainer.optimizers:
            opt = trainer.optimizers[0]
            if self.base_lrs is None:
                self.base_lrs = [float(g.get("initial_lr", g["lr"])) for g in opt.param_groups]
            for g, lr in zip(opt.param_groups, self.base_lrs):
                g["lr"] = lr * self.lr_factors[self.stage]

    def _snapshot(self, model: nn.Module) -> None:
        self._best_state = [p.detach().clone() for p in model.parameters()]

    def _restore(self, model: nn.Module) -> None:
        if self._best_state is not None:
            with torch.no_grad():
                for p, b in zip(model.parameters(), self._best_state):
                    p.copy_(b)

    @staticmethod
    def _copy_forward(model: nn.Module, k: int) -> None:
        """Copy layer ``k``'s parameters into layer ``k + 1`` if they match in shape."""
        if k + 1 >= model.num_layers:
            return
        src, dst = model.layer_parameters(k), model.layer_parameters(k + 1)
        if len(dst) == len(src) and all(a.shape == b.shape for a, b in zip(dst, src)):
            with torch.no_grad():
                for a, b in zip(dst, src):
                    if a is not b:
                        a.copy_(b)

    def _set_deadline(self, trainer: L.Trainer, num_layers: int) -> None:
        timer = next((c for c in trainer.callbacks if isinstance(c, Timer)), None)
        left = timer.time_remaining() if (timer is not None and self.time_aware) else None
        if left is None or self.done:
            self.deadline = None
            return
        # a stage's share of the time left is proportional to its depth (a step costs about
        # depth layers), so every stage gets about the same number of steps
        n = len(self.lr_factors)
        weights_left = self.layer * (n - self.stage) + n * sum(range(self.layer + 1, num_layers + 1))
        self.deadline = timer.time_elapsed() + max(left, 0.0) * self.layer / max(weights_left, 1)

    def _past_deadline(self, trainer: L.Trainer) -> bool:
        if self.deadline is None:
            return False
        timer = next((c for c in trainer.callbacks if isinstance(c, Timer)), None)
        past = timer is not None and timer.time_elapsed() >= self.deadline
        # clocks differ between processes: rank 0 decides, so all ranks change stage together
        return bool(trainer.strategy.broadcast(past, src=0)) if trainer.world_size > 1 else past

    # ------------------------------------------------------------------ hooks
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage == "fit":
            self._check_module(pl_module)
            ddp_kwargs = getattr(trainer.strategy, "_ddp_kwargs", None)
            if isinstance(ddp_kwargs, dict) and not ddp_kwargs.get("find_unused_parameters", False):
                # frozen layers give parameters without gradients, which DDP must be told to expect
                ddp_kwargs["find_unused_parameters"] = True
                rank_zero_info("StageWise: DDP set to find_unused_parameters=True (layers are frozen by stage)")

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.lr_scheduler_configs:
            raise ValueError("StageWise sets the learning rate itself; remove the lr_scheduler from the config")
        self._apply(trainer, pl_module)
        if self.deadline is None:
            self._set_deadline(trainer, pl_module.model.num_layers)
        if not self.done:
            say(trainer, f"StageWise: layer {self.layer}/{pl_module.model.num_layers}, stage {self.stage + 1}"
                         f"/{len(self.lr_factors)}")

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or self.done or trainer.state.fn != "fit":
            return
        value = trainer.callback_metrics.get(self.monitor)
        if value is None:
            raise KeyError(f"monitor: StageWise monitors {self.monitor!r}, which the validation did not log "
                           f"(logged: {', '.join(sorted(trainer.callback_metrics)) or 'nothing'})")
        value = float(value)
        model = pl_module.model
        self.validations += 1
        if value < self.best - self.min_delta:
            self.best, self.wait = value, 0
            if self.restore_best:
                self._snapshot(model)
        else:
            self.wait += 1
        capped = self.max_validations is not None and self.validations >= self.max_validations
        if self.wait >= self.patience or capped or self._past_deadline(trainer):
            self._end_stage(trainer, pl_module)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch,
                           batch_idx: int) -> None:
        # time shares are enforced at every step, not only at validations, so that short shares
        # are not overrun by a validation interval and the last layers get their time
        if not self.done and self._past_deadline(trainer):
            self._end_stage(trainer, pl_module)

    def _end_stage(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        model = pl_module.model
        if self.restore_best:
            self._restore(model)
        self.history.append({"layer": self.layer, "stage": self.stage + 1, "best": self.best,
                             "step": trainer.global_step})
        self.stage += 1
        self.validations = 0
        same_depth = self.stage < len(self.lr_factors)
        if not same_depth:
            if self.warm_start:
                self._copy_forward(model, self.layer - 1)
            self.stage, self.layer = 0, self.layer + 1
        if same_depth and self.restore_best and self._best_state is not None:
            # the next stage starts from the weights just restored (still held in _best_state),
            # whose metric is known: it must beat them to replace them, so no stage ends worse
            # than it started (a fresh optimiser's first steps can make things worse first)
            self.wait = 0
        else:  # a new depth: the metric of the starting point is not yet known
            self.best, self.wait, self._best_state = math.inf, 0, None
        if self.layer > model.num_layers:
            self.done = True
            trainer.should_stop = True
            say(trainer, f"StageWise: all {model.num_layers} layers trained (step {trainer.global_step})")
        else:
            say(trainer, f"StageWise: layer {self.layer}/{model.num_layers}, stage {self.stage + 1}/"
                         f"{len(self.lr_factors)} (step {trainer.global_step}, previous best "
                         f"{self.history[-1]['best']:.2f})")
        for opt in trainer.optimizers:  # a fresh optimiser state for the new stage
            opt.state.clear()
        self._apply(trainer, pl_module)
        self._set_deadline(trainer, model.num_layers)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # leave the module usable as a whole network (full depth, all parameters trainable)
        pl_module.active_layers = None
        for p in pl_module.model.parameters():
            p.requires_grad_(True)

    # ------------------------------------------------------------------ checkpointing
    def state_dict(self) -> Dict[str, Any]:
        return {"layer": self.layer, "stage": self.stage, "best": self.best, "wait": self.wait, "done": self.done,
                "base_lrs": self.base_lrs, "history": list(self.history), "best_state": self._best_state,
                "deadline": self.deadline, "validations": self.validations}

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        self.layer, self.stage = int(state_dict["layer"]), int(state_dict["stage"])
        self.best, self.wait, self.done = float(state_dict["best"]), int(state_dict["wait"]), bool(state_dict["done"])
        self.base_lrs = state_dict["base_lrs"]
        self.history = list(state_dict["history"])
        self._best_state = state_dict.get("best_state")
        self.deadline = state_dict.get("deadline")
        self.validations = int(state_dict.get("validations", 0))
