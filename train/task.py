"""``ReconstructionTask``: one generic LightningModule for any ``model(y, A)``.

It owns no network code: it takes the model, a loss and an optimiser factory (typed
arguments, so LightningCLI builds all of them from YAML), binds the model to the data
module's operator, and logs NMSE (dB) each validation and per iteration at test time.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Union

import lightning as L
import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor, nn

from unroll.losses import Loss, MSELoss, iteration_weights, trajectory_loss
from unroll.metrics import NMSE, nmse
from unroll.operators import LinearOperator, MatrixOperator, as_operator
from unroll.problem import Problem

__all__ = ["ReconstructionTask"]

_CKPT_KEY = "unroll"
_COMPILE_MODES = (None, "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


class ReconstructionTask(L.LightningModule):
    """Train, validate and test a reconstruction model ``model(y, A) → x̂``.

    Args:
        model: the network (any ``nn.Module`` with the call shape ``model(y, A, *,
            return_trajectory)``, e.g. ``unroll.models.ALISTA``). Models that need the operator
            are bound to the data module's operator in :meth:`setup`.
        loss: training loss ``loss(x̂, x, problem)``; supervised ``MSELoss`` by default, or
            ``ObjectiveLoss(L1(λ))`` for unsupervised training on the original objective.
        weighting: how the loss is weighted over the iterates: ``"last"`` (only the final
            estimate), ``"uniform"``, ``"linear"`` or one weight per layer.
        optimizer: optimiser factory (``params → Optimizer``); Adam(lr=1e-3) by default.
        lr_scheduler: optional scheduler factory (``optimizer → LRScheduler``).
        operator: the operator ``A`` when no data module provides one (``trainer.fit(task,
            train_dataloaders=...)``); with a data module its ``operator`` is used.
        scalar_lr_factor: learning rate of the model's single-element parameters (learned step
            sizes, thresholds, relaxations) relative to the optimiser's ``lr``, which the matrices
            and other tensors keep. The two form separate parameter groups of one optimiser.
            The LISTA-family configs use 100: matrices at 5e-5 (they start at ALISTA's analytic
            weight and only need refining), thresholds and steps at 5e-3 (ALISTA's rate), which
            a matrix rate would make far too slow.
        compile: run the model through ``torch.compile`` (training, validation, test and
            predict; the model's weights and checkpoints are unchanged). Each depth and output
            kind (stage-wise depths, trajectories at test time) compiles once.
        compile_mode: ``torch.compile``'s ``mode``: ``"default"``, ``"reduce-overhead"``,
            ``"max-autotune"`` or ``"max-autotune-no-cudagraphs"`` (``None``: the default).

    Batches are ``unroll.data.Batch(y, x)`` (``x`` may be ``None`` for unsupervised data).
    """

    def __init__(self, model: nn.Module, loss: Optional[Loss] = None,
                 weighting: Union[str, List[float]] = "last",
                 optimizer: OptimizerCallable = torch.optim.Adam,
                 lr_scheduler: Optional[LRSchedulerCallable] = None,
                 operator: Optional[LinearOperator] = None, scalar_lr_factor: float = 1.0,
                 compile: bool = False, compile_mode: Optional[str] = None) -> None:
        super().__init__()
        if not isinstance(compile, bool):
            raise ValueError(f"compile: expected true or false, got {compile!r}")
        if compile_mode not in _COMPILE_MODES:
            raise ValueError(f"compile_mode: expected one of {', '.join(map(str, _COMPILE_MODES))}, got {compile_mode!r}")
        self.use_compile, self.compile_mode = compile, compile_mode  # (`compile` is nn.Module's method)
        self._compiled: Optional[Any] = None  # torch.compile(model), built lazily; not a submodule (no state)
        if isinstance(scalar_lr_factor, bool) or not isinstance(scalar_lr_factor, (int, float)) \
                or not (0 < scalar_lr_factor < float("inf")):
            raise ValueError(f"scalar_lr_factor: expected a finite number > 0, got {scalar_lr_factor!r}")
        self.scalar_lr_factor = float(scalar_lr_factor)
        self.save_hyperparameters(ignore=["model", "loss", "operator", "optimizer", "lr_scheduler"])
        self.model = model
        self.loss = loss if loss is not None else MSELoss()
        self.weighting = weighting
        self.optimizer_factory = optimizer
        self.scheduler_factory = lr_scheduler
        self.operator: Optional[LinearOperator] = None
        if operator is not None:
            self.bind(operator)
        self.val_nmse = NMSE()
        self.test_nmse: Optional[NMSE] = None
        #: depth run by training and validation steps (``None``: all layers); set by
        #: stage-wise training (:class:`unroll.train.StageWise`). Test and predict use all layers.
        self.active_layers: Optional[int] = None
        #: the ``model`` and ``data`` sections of the config that built this task (set by the
        #: ``unroll`` CLI), saved in checkpoints for ``unroll evaluate``.
        self.cli_config: Optional[Dict[str, Any]] = None

    # ------------------------------------------------------------------ operator
    def bind(self, operator) -> None:
        """Attach the operator (a submodule: it follows the device, and its tensors are saved in
        checkpoints) and bind the model to it if the model needs it."""
        op = as_operator(operator)
        if self.operator is not None and self.operator.fingerprint() != op.fingerprint():
            raise ValueError(f"operator: the task is bound to operator {self.operator.fingerprint()}, "
                             f"got {op.fingerprint()}")
        self.operator = op
        if hasattr(self.model, "bind"):
            self.model.bind(op)

    def setup(self, stage: str) -> None:
        dm = self.trainer.datamodule if self._trainer is not None else None
        if dm is not None and hasattr(dm, "get_operator"):
            self.bind(dm.get_operator())
        if self.operator is None:
            raise RuntimeError("operator: ReconstructionTask needs an operator: use a data module that provides "
                               "one (get_operator()) or pass operator=... to the task")

    @property
    def num_layers(self) -> int:
        return int(getattr(self.model, "num_layers"))

    # ------------------------------------------------------------------ steps
    def forward(self, y: Tensor, **kwargs: Any):
        """``self.model(y, self.operator, **kwargs)`` (through ``torch.compile`` with ``compile=True``)."""
        if self.use_compile:
            if self._compiled is None:
                import torch._dynamo

                # one graph per depth (stage-wise training runs 1..K) and output kind
                torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 64)
                object.__setattr__(self, "_compiled", torch.compile(self.model, mode=self.compile_mode))
            return self._compiled(y, self.operator, **kwargs)
        return self.model(y, self.operator, **kwargs)

    def _problem(self, y: Tensor) -> Problem:
        return Problem.create(self.operator, y, check=False)

    def _depth(self) -> Dict[str, int]:
        return {} if self.active_layers is None else {"num_iters": int(self.active_layers)}

    def training_step(self, batch, batch_idx: int) -> Tensor:
        y, x = batch.y, batch.x
        if self.loss.requires_target and x is None:
            raise ValueError(f"batch.x: {type(self.loss).__name__} is supervised but the batch has no ground truth")
        if self.weighting == "last":
            loss = self.loss(self(y, **self._depth()), x, self._problem(y))
        else:
            out = self(y, return_trajectory=True, **self._depth())
            w = iteration_weights(self.weighting, len(out.trajectory))
            loss = trajectory_loss(self.loss, out.trajectory, x, self._problem(y), w)
        if not torch.isfinite(loss):  # one scalar sync per step; never train on (or checkpoint) NaNs
            raise FloatingPointError(
                f"train/loss is {float(loss.detach())} at step {self.global_step}: the model diverged (a step size above "
                "2/L, a learning rate too high, or bad input); stopping before a non-finite checkpoint is written")
        self.log("train/loss", loss, batch_size=y.shape[0])
        return loss

    def validation_step(self, batch, batch_idx: int) -> None:
        x_hat = self(batch.y, **self._depth())
        self.val_nmse.update(x_hat, batch.x)
        self.log("val/loss", self.loss(x_hat, batch.x, self._problem(batch.y)), batch_size=batch.y.shape[0],
                 sync_dist=True)
        self.log("val/nmse_db", self.val_nmse, prog_bar=True, batch_size=batch.y.shape[0])

    def on_test_epoch_start(self) -> None:
        self.test_nmse = NMSE(num_iters=self.num_layers).to(self.device)
        self._test_per_sample: List[Tensor] = []

    def test_step(self, batch, batch_idx: int) -> None:
        out = self(batch.y, return_trajectory=True)
        self.test_nmse.update(out.trajectory, batch.x)
        self._test_per_sample.append(nmse(out.x, batch.x, reduction="none").detach().cpu())

    def on_test_epoch_end(self) -> None:
        per_iter = self.test_nmse.compute()
        self.test_nmse_per_iter = per_iter.detach().cpu()
        #: final-estimate NMSE (dB) of every test sample of this process, in order
        self.test_nmse_per_sample = torch.cat(self._test_per_sample) if self._test_per_sample else torch.empty(0)
        self.log("test/nmse_db", per_iter[-1])
        for k, v in enumerate(per_iter.tolist()):
            self.log(f"test/nmse_db_iter_{k + 1:02d}", v)

    def predict_step(self, batch, batch_idx: int) -> Tensor:
        return self(batch.y)

    # ------------------------------------------------------------------ optimisation
    def parameter_groups(self) -> List[Dict[str, Any]]:
        """The optimiser's parameter groups: the model's tensors, then its single-element
        parameters with ``lr_factor = scalar_lr_factor`` (one group when the factor is 1 or
        either group would be empty)."""
        params = list(self.model.parameters())
        if self.scalar_lr_factor == 1.0:
            return [{"params": params}]
        tensors = [p for p in params if p.numel() > 1]
        scalars = [p for p in params if p.numel() == 1]
        if not tensors or not scalars:
            return [{"params": params}]
        return [{"params": tensors}, {"params": scalars, "lr_factor": self.scalar_lr_factor}]

    def configure_optimizers(self):
        groups = self.parameter_groups()
        optimizer = self.optimizer_factory(groups if len(groups) > 1 else groups[0]["params"])
        for g in optimizer.param_groups:  # the factor applies to the lr the factory set
            g["lr"] = g["lr"] * g.get("lr_factor", 1.0)
        if self.scheduler_factory is None:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": self.scheduler_factory(optimizer),
                                                          "monitor": "val/nmse_db"}}

    # ------------------------------------------------------------------ checkpoints
    def on_save_checkpoint(self, checkpoint: Dict[str, Any]) -> None:
        checkpoint[_CKPT_KEY] = {
            "model_class": f"{type(self.model).__module__}.{type(self.model).__qualname__}",
            "operator_fingerprint": None if self.operator is None else self.operator.fingerprint(),
            "num_layers": getattr(self.model, "num_layers", None),
            "config": self.cli_config,
        }

    def on_load_checkpoint(self, checkpoint: Dict[str, Any]) -> None:
        meta = checkpoint.get(_CKPT_KEY)
        if meta is None:
            raise ValueError("ckpt_path: the checkpoint was not written by unroll's ReconstructionTask "
                             "(no 'unroll' metadata)")
        ours = f"{type(self.model).__module__}.{type(self.model).__qualname__}"
        if meta["model_class"] != ours:
            raise ValueError(f"ckpt_path: the checkpoint holds a {meta['model_class']} but the config builds a "
                             f"{ours}")
        if meta.get("num_layers") != getattr(self.model, "num_layers", None):
            raise ValueError(f"ckpt_path: the checkpoint's model has {meta.get('num_layers')} layers, "
                             f"the config's {getattr(self.model, 'num_layers', None)}")
        if self.operator is None and meta["operator_fingerprint"] is not None:
            self.bind(_operator_from_state(checkpoint.get("state_dict", {})))  # load_from_checkpoint
        fp = None if self.operator is None else self.operator.fingerprint()
        if meta["operator_fingerprint"] != fp:
            raise ValueError(
                f"ckpt_path: the checkpoint was trained on another problem (operator {meta['operator_fingerprint']}) "
                f"than the data module provides (operator {fp}); evaluate it on the data it was trained for "
                "(same problem, sizes and seed)")

    @classmethod
    def load_from_checkpoint(cls, checkpoint_path, map_location=None, hparams_file=None, strict: Optional[bool] = None,
                             **kwargs: Any) -> "ReconstructionTask":
        """Rebuild a task with its weights from a checkpoint, without its config file::

            task = ReconstructionTask.load_from_checkpoint("runs/alista/checkpoints/last.ckpt")
            x_hat = task(y)  # = task.model(y, task.operator)

        The task and its model are built from the config that ``unroll fit`` saved in the
        checkpoint; for a task trained from Python (no saved config) pass ``model=`` (an
        untrained instance of the same architecture). The operator is rebuilt from the
        checkpoint (where the task's operator is a dense or sparse ``MatrixOperator``, saved as
        its state) unless ``operator=`` is given. Further keyword arguments override the task's
        ``__init__`` arguments (e.g. ``weighting="uniform"``). The checkpoint's model class,
        depth and operator are checked as for ``unroll evaluate``.

        Args:
            checkpoint_path: path (or file-like object) of the checkpoint.
            map_location: as in ``torch.load``; a device also moves the task there.
            hparams_file: not supported (the config travels inside the checkpoint).
            strict: require the checkpoint's state to match the task's exactly (default ``True``).
        """
        if hparams_file is not None:
            raise ValueError("hparams_file: not supported by ReconstructionTask; its config is saved in the checkpoint")
        ckpt = torch.load(checkpoint_path, map_location=map_location, weights_only=False)
        meta = ckpt.get(_CKPT_KEY)
        if meta is None:
            raise ValueError(f"checkpoint_path: {checkpoint_path!r} was not written by unroll's ReconstructionTask "
                             "(no 'unroll' metadata)")
        config = meta.get("config")
        if "model" in kwargs:
            saved = {k: v for k, v in ckpt.get("hyper_parameters", {}).items() if not k.startswith("_")}
            task = cls(**{**saved, **kwargs})
        elif config and "model" in config:
            task = _task_from_config(cls, config["model"], kwargs)
        else:
            raise ValueError(f"checkpoint_path: {checkpoint_path!r} carries no config (it was not written by "
                             "`unroll fit`); pass model=... (an instance of the trained architecture)")
        task.cli_config = config
        task.on_load_checkpoint(ckpt)
        task.load_state_dict(ckpt["state_dict"], strict=True if strict is None else strict)
        if isinstance(map_location, (str, torch.device)):
            task.to(map_location)
        return task


def _task_from_config(cls, section: Dict[str, Any], overrides: Dict[str, Any]) -> "ReconstructionTask":
    """The task of a config's ``model`` section (``{"class_path", "init_args"}``), with overrides."""
    from jsonargparse import ArgumentParser

    section = dict(section, init_args={**section.get("init_args", {}), **overrides})
    parser = ArgumentParser(exit_on_error=False)
    parser.add_subclass_arguments(cls, "task", fail_untyped=False)
    return parser.instantiate_classes(parser.parse_object({"task": section})).task


def _operator_from_state(state: Dict[str, Tensor]) -> LinearOperator:
    """The task's ``MatrixOperator`` from the ``operator.*`` entries of a checkpoint's state."""
    keys = sorted(k for k in state if k.startswith("operator."))
    if keys in (["operator.matrix"], ["operator.matrix", "operator.matrix_h"]):
        return MatrixOperator(state["operator.matrix"])
    raise ValueError(f"operator: the checkpoint's operator (state {keys or 'empty'}) is not a MatrixOperator that "
                     "can be rebuilt from its state; pass operator=... (the operator it was trained with)")
