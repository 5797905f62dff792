"""``ReconstructionTask``: one generic LightningModule for any ``model(y, A)``.

It owns no network code: it takes the model, a loss and an optimiser factory (typed
arguments, so LightningCLI builds all of them from YAML), builds each batch's problem with
the batch's own operator (or the data module's global one, to which it binds the model),
logs NMSE (dB) each validation, and at test time scores the metrics it declares per
iteration (NMSE by default); ``unroll evaluate`` also runs the baselines it declares.
"""

from __future__ import annotations

import copy
import math
from typing import Any, Callable, Dict, List, Mapping, Optional, Union

import lightning as L
import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor, nn
from torchmetrics import Metric

from unroll.losses import Loss, MSELoss, iteration_weights, trajectory_loss
from unroll.metrics import NMSE
from unroll.operators import LinearOperator, MatrixOperator, as_operator
from unroll.problem import Problem

from .checkpoint import CheckpointError, load_checkpoint, naming_file
from .scoring import Baseline, MetricTracker, SolverBaseline, check_baselines, check_metrics

__all__ = ["ReconstructionTask"]

CKPT_KEY = "unroll"
_COMPILE_MODES = (None, "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


def optimizers_for(module: L.LightningModule, monitor: str):
    """What ``configure_optimizers`` returns for a task with ``optimizer_factory`` and an optional
    ``scheduler_factory`` (the CLI's callables): the optimiser over the task's model, with the
    scheduler stepping on ``monitor`` when one is configured."""
    optimizer = module.optimizer_factory(module.model.parameters())
    if module.scheduler_factory is None:
        return optimizer
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": module.scheduler_factory(optimizer),
                                                      "monitor": monitor}}


def log_train_loss(module: L.LightningModule, loss: Tensor, batch_size: int,
                   causes: str = "a learning rate too high, or bad input") -> Tensor:
    """Log ``train/loss`` after checking it is finite (one scalar sync per step): a non-finite loss
    stops training with a :class:`FloatingPointError` before a non-finite checkpoint is written.
    ``causes`` names the likely reasons in the message. Returns ``loss``."""
    if not torch.isfinite(loss):
        raise FloatingPointError(f"train/loss is {float(loss.detach())} at step {module.global_step}: the model "
                                 f"diverged ({causes}); stopping before a non-finite checkpoint is written")
    module.log("train/loss", loss, batch_size=batch_size)
    return loss


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
        metrics: what ``trainer.test`` and ``unroll evaluate`` score, ``{key: torchmetrics.Metric}``,
            per iteration; keys name the reports' columns (``nmse_db`` → ``ALISTA_nmse_db``) and
            plots. Default ``{"nmse_db": unroll.metrics.NMSE()}``; e.g. ``{"psnr_db":
            unroll.metrics.PSNR(), "ssim": unroll.metrics.SSIM(), "iterations":
            unroll.metrics.Iterations()}``.
        baselines: classical methods ``unroll evaluate`` scores next to the model
            (:mod:`unroll.train.scoring`); default ISTA and FISTA with ``evaluate --lam``.
        compile: run the model through ``torch.compile`` (training, validation, test and
            predict; the model's weights and checkpoints are unchanged). Each depth and output
            kind (stage-wise depths, trajectories at test time) compiles once.
        compile_mode: ``torch.compile``'s ``mode``: ``"default"``, ``"reduce-overhead"``,
            ``"max-autotune"`` or ``"max-autotune-no-cudagraphs"`` (``None``: the default).

    Batches are ``unroll.data.Batch(y, x, operator, meta)`` (``x`` may be ``None`` for
    unsupervised data): a batch whose ``operator`` is set is solved with its own operator
    (:meth:`batch_operator`), any other with the task's global one.
    """

    def __init__(self, model: nn.Module, loss: Optional[Loss] = None,
                 weighting: Union[str, List[float]] = "last",
                 optimizer: OptimizerCallable = torch.optim.Adam,
                 lr_scheduler: Optional[LRSchedulerCallable] = None,
                 operator: Optional[LinearOperator] = None, scalar_lr_factor: float = 1.0,
                 metrics: Optional[Dict[str, Metric]] = None, baselines: Optional[List[Baseline]] = None,
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
        self.save_hyperparameters(ignore=["model", "loss", "operator", "optimizer", "lr_scheduler", "metrics",
                                          "baselines"])
        self.model = model
        self.loss = loss if loss is not None else MSELoss()
        self.weighting = weighting
        self.optimizer_factory = optimizer
        self.scheduler_factory = lr_scheduler
        self.operator: Optional[LinearOperator] = None
        #: builds a batch's operator from what it carries (``batch.operator``); the data module's
        #: ``build_operator``, set in :meth:`setup`
        self.operator_builder: Optional[Callable[[Mapping[str, Tensor]], LinearOperator]] = None
        if operator is not None:
            self.bind(operator)
        self.val_nmse = NMSE()
        # plain dict and list (not submodules): prototypes, cloned for each test run
        self.metrics = check_metrics(metrics) if metrics is not None else {"nmse_db": NMSE()}
        self.baselines = check_baselines(baselines) if baselines is not None else [SolverBaseline("ista"),
                                                                                  SolverBaseline("fista")]
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
        """Bind the data module's global operator (``get_operator()``, if it returns one) and take
        its ``build_operator`` for batches that carry what builds theirs."""
        dm = self.trainer.datamodule if self._trainer is not None else None
        if dm is not None and hasattr(dm, "get_operator"):
            op = dm.get_operator()
            if op is not None:
                self.bind(op)
        if dm is not None and callable(getattr(dm, "build_operator", None)):
            self.operator_builder = dm.build_operator

    def batch_operator(self, batch) -> LinearOperator:
        """The operator of ``batch``: its own (``batch.operator``: a ``LinearOperator``, or a mapping of
        tensors that :attr:`operator_builder` turns into one), else the task's global operator."""
        own = getattr(batch, "operator", None)
        if isinstance(own, LinearOperator):
            return own
        if isinstance(own, Mapping) and own:
            if self.operator_builder is None:
                raise ValueError(f"batch.operator: the batch carries operator parameters {sorted(own)} but nothing "
                                 "builds an operator from them: use a data module with build_operator(), or set "
                                 "task.operator_builder")
            return self.operator_builder(own)
        if own is not None and not isinstance(own, Mapping):
            raise TypeError(f"batch.operator: expected a LinearOperator, a mapping of tensors or an empty mapping, "
                            f"got {type(own).__name__}")
        if self.operator is None:
            raise RuntimeError("operator: the batch carries no operator and the task has none: use a data module "
                               "that provides one (get_operator()) or batches that carry theirs (Batch.operator), "
                               "or pass operator=... to the task")
        return self.operator

    @property
    def num_layers(self) -> int:
        return int(getattr(self.model, "num_layers"))

    # ------------------------------------------------------------------ steps
    def forward(self, y: Tensor, operator: Optional[LinearOperator] = None, **kwargs: Any):
        """``self.model(y, operator, **kwargs)``, with the task's global operator by default
        (through ``torch.compile`` with ``compile=True``)."""
        op = self.operator if operator is None else operator
        if self.use_compile:
            if self._compiled is None:
                import torch._dynamo

                # one graph per depth (stage-wise training runs 1..K) and output kind
                torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 64)
                object.__setattr__(self, "_compiled", torch.compile(self.model, mode=self.compile_mode))
            if isinstance(op, LinearOperator) and not op.per_sample:
                # the operator's cached constant (‖A‖², an SVD or a power iteration) is computed
                # here, eagerly: computed inside the graph it would be traced into the first
                # compilation and its cache, set there, would fail the guards of the next call
                # (a second compilation of the whole model)
                op.lipschitz()
            return self._compiled(y, op, **kwargs)
        return self.model(y, op, **kwargs)

    def _problem(self, y: Tensor, operator: LinearOperator) -> Problem:
        return Problem.create(operator, y, check=False)

    def _depth(self) -> Dict[str, int]:
        return {} if self.active_layers is None else {"num_iters": int(self.active_layers)}

    def training_step(self, batch, batch_idx: int) -> Tensor:
        y, x, op = batch.y, batch.x, self.batch_operator(batch)
        if self.loss.requires_target and x is None:
            raise ValueError(f"batch.x: {type(self.loss).__name__} is supervised but the batch has no ground truth")
        if self.weighting == "last":
            loss = self.loss(self(y, op, **self._depth()), x, self._problem(y, op))
        else:
            out = self(y, op, return_trajectory=True, **self._depth())
            w = iteration_weights(self.weighting, len(out.trajectory))
            loss = trajectory_loss(self.loss, out.trajectory, x, self._problem(y, op), w)
        return log_train_loss(self, loss, y.shape[0], "a step size above 2/L, a learning rate too high, or bad input")

    def validation_step(self, batch, batch_idx: int) -> None:
        op = self.batch_operator(batch)
        x_hat = self(batch.y, op, **self._depth())
        self.val_nmse.update(x_hat, batch.x)
        self.log("val/loss", self.loss(x_hat, batch.x, self._problem(batch.y, op)), batch_size=batch.y.shape[0],
                 sync_dist=True)
        self.log("val/nmse_db", self.val_nmse, prog_bar=True, batch_size=batch.y.shape[0])

    def on_test_epoch_start(self) -> None:
        self._test_tracker = MetricTracker(self.metrics)

    def test_step(self, batch, batch_idx: int) -> None:
        out = self(batch.y, self.batch_operator(batch), return_trajectory=True)
        self._test_tracker.update(out.trajectory, batch.x, iterations=out.info.iterations,
                                  meta=getattr(batch, "meta", None))

    def on_test_epoch_end(self) -> None:
        #: ``{key: [value per iteration]}`` of every declared metric (one value for iteration counts)
        self.test_results: Dict[str, List[float]] = self._test_tracker.compute()
        #: ``{key: [final-estimate value of every test sample of this process, in order]}``
        self.test_per_sample: Dict[str, List[float]] = self._test_tracker.per_sample()
        if "nmse_db" in self.test_results:  # the names of the NMSE-only task
            self.test_nmse_per_iter = torch.tensor(self.test_results["nmse_db"])
            self.test_nmse_per_sample = torch.tensor(self.test_per_sample.get("nmse_db", []))
        for key, values in self.test_results.items():
            self.log(f"test/{key}", values[-1])
            if len(values) > 1:
                for k, v in enumerate(values):
                    self.log(f"test/{key}_iter_{k + 1:02d}", v)

    def predict_step(self, batch, batch_idx: int) -> Tensor:
        return self(batch.y, self.batch_operator(batch))

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
        factory = self.optimizer_factory
        name = _optimizer_name(factory)
        given = getattr(factory, "keywords", None) or {}  # the CLI's factory: a partial holding init_args
        if "lr" in given:
            _check_lr(given["lr"], name)
        try:
            optimizer = factory(groups if len(groups) > 1 else groups[0]["params"])
        except ValueError as e:  # torch's own check ("Invalid learning rate: -0.1"), without the argument's name
            if "learning rate" in str(e).lower():
                raise ValueError(f"optimizer.init_args.lr: {name} refused it ({e}); expected a finite number >= 0") \
                    from None
            raise
        for g in optimizer.param_groups:  # the factor applies to the lr the factory set
            _check_lr(g["lr"], name)
            g["lr"] = g["lr"] * g.get("lr_factor", 1.0)
        if self.scheduler_factory is None:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": self.scheduler_factory(optimizer),
                                                          "monitor": "val/nmse_db"}}

    # ------------------------------------------------------------------ checkpoints
    def on_save_checkpoint(self, checkpoint: Dict[str, Any]) -> None:
        checkpoint[CKPT_KEY] = {
            "model_class": f"{type(self.model).__module__}.{type(self.model).__qualname__}",
            "operator_fingerprint": None if self.operator is None else self.operator.fingerprint(),
            "num_layers": getattr(self.model, "num_layers", None),
            "config": self.cli_config,
        }

    def on_load_checkpoint(self, checkpoint: Dict[str, Any]) -> None:
        meta = checkpoint.get(CKPT_KEY)
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
        rebuilt = False
        if self.operator is None and meta["operator_fingerprint"] is not None:
            self.bind(operator_from_state(checkpoint.get("state_dict", {})))  # load_from_checkpoint
            rebuilt = True
        fp = None if self.operator is None else self.operator.fingerprint()
        if meta["operator_fingerprint"] != fp:
            if rebuilt:
                raise CheckpointError(_corrupt_operator(fp, meta["operator_fingerprint"]))
            raise ValueError(
                f"ckpt_path: the checkpoint was trained on another problem (operator {meta['operator_fingerprint']}) "
                f"than the data module provides (operator {fp}); evaluate it on the data it was trained for "
                "(same problem, sizes and seed)")
        if not rebuilt:  # a rebuilt operator is the stored one, just checked
            self._check_stored_operator(checkpoint.get("state_dict") or {}, meta["operator_fingerprint"])

    def _check_stored_operator(self, state: Dict[str, Tensor], recorded: Optional[str]) -> None:
        """The operator stored in a checkpoint's state must have the fingerprint recorded when it
        was saved (the zip CRC catches damaged bytes; this catches an edited or re-saved state, and
        any operator the baselines and the model would otherwise silently run on)."""
        stored = {k[len("operator."):]: v for k, v in state.items() if k.startswith("operator.")}
        if recorded is None or self.operator is None or not stored:
            return
        op = copy.deepcopy(self.operator)
        try:
            op.load_state_dict(stored, strict=True)
        except (RuntimeError, KeyError) as e:
            raise CheckpointError(f"ckpt_path: the checkpoint's operator state does not fit its operator "
                                  f"({str(e).splitlines()[0]}): the file is corrupted or was edited") from None
        fp = op.fingerprint()
        if fp != recorded:
            raise CheckpointError(_corrupt_operator(fp, recorded))

    @classmethod
    def load_from_checkpoint(cls, checkpoint_path, map_location=None, hparams_file=None, strict: Optional[bool] = None,
                             weights_only: Optional[bool] = None, *, trust: bool = False,
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
            weights_only: ``False`` is the same as ``trust=True`` (Lightning's spelling).
            trust: load a file that needs more than plain data to unpickle (only one you made
                yourself: unpickling it can run code). By default the file is loaded with
                ``torch.load(weights_only=True)`` after its zip CRCs are checked
                (:func:`unroll.train.load_checkpoint`); a damaged, truncated or foreign file, or a
                stored operator that does not match its recorded fingerprint, raises
                :class:`unroll.train.CheckpointError` (a ``ValueError``).
        """
        if hparams_file is not None:
            raise ValueError("hparams_file: not supported by ReconstructionTask; its config is saved in the checkpoint")
        ckpt = load_checkpoint(checkpoint_path, map_location=map_location, trust=trust or weights_only is False)
        meta = ckpt.get(CKPT_KEY) if isinstance(ckpt, dict) else None
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
        try:
            task.on_load_checkpoint(ckpt)
        except CheckpointError as e:
            raise naming_file(e, checkpoint_path) from None
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


def operator_from_state(state: Dict[str, Tensor]) -> LinearOperator:
    """The task's ``MatrixOperator`` from the ``operator.*`` entries of a checkpoint's state."""
    keys = sorted(k for k in state if k.startswith("operator."))
    if keys in (["operator.matrix"], ["operator.matrix", "operator.matrix_h"]):
        return MatrixOperator(state["operator.matrix"])
    raise ValueError(f"operator: the checkpoint's operator (state {keys or 'empty'}) is not a MatrixOperator that "
                     "can be rebuilt from its state; pass operator=... (the operator it was trained with)")


def _corrupt_operator(stored: Optional[str], recorded: Optional[str]) -> str:
    return (f"ckpt_path: the operator stored in the checkpoint (fingerprint {stored}) does not match the one recorded "
            f"when it was saved ({recorded}): the file is corrupted or was edited; refusing to run on it")


def _optimizer_name(factory: Any) -> str:
    """The optimiser class a factory builds (a class, or the CLI's partial holding it), for messages."""
    for obj in (factory, *getattr(factory, "args", ()), getattr(factory, "func", None)):
        if isinstance(obj, type):
            return f"{obj.__module__}.{obj.__qualname__}"
    return getattr(factory, "__qualname__", type(factory).__qualname__)


def _check_lr(lr: Any, optimizer: str) -> None:
    value = float(lr) if isinstance(lr, (int, float, Tensor)) and not isinstance(lr, bool) else None
    if value is None or not math.isfinite(value) or value < 0:
        raise ValueError(f"optimizer.init_args.lr: expected a finite number >= 0 for {optimizer}, got {lr!r}")
