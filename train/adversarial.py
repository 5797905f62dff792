"""``AdversarialTrainingTask``: adversarial training (Madry et al. 2018) of any classifier, and
adversarial fine-tuning of a pretrained one.

The inner maximisation is :class:`unroll.adversarial.PGDAttack` (an unrolled projected
gradient), the outer minimisation is Lightning's optimiser. With ``adversarial: false`` the same
task trains on clean inputs (standard training), so the three settings of the benchmark
(standard, adversarial, adversarial fine-tuning) differ only in their configs.

Validation logs clean and robust accuracy (torchmetrics) under the training attack with
``eval_steps`` steps; test (and ``unroll evaluate``) reports clean accuracy and robust accuracy
under PGD at every ``eval_eps``, and ``unroll evaluate`` also draws robust accuracy against ε.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Dict, List, Optional

import lightning as L
import torch
import torch.nn.functional as F
import torchmetrics
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor, nn

from unroll.adversarial import STEPS, PGDAttack, check_eps, check_norm

from .checkpoint import CheckpointError, load_checkpoint
from .task import log_train_loss, optimizers_for

__all__ = ["AdversarialTrainingTask", "Accuracy", "eps_key"]

CKPT_KEY = "unroll"
GRAD_MODES = ("none", "full", "truncated", "checkpoint")


class Accuracy(torchmetrics.Metric):
    """Share of correctly classified samples, with a label for ``unroll evaluate``'s tables.
    ``update(correct)`` takes a ``(B,)`` bool tensor; ``per_sample(correct)`` gives it as 0/1."""

    higher_is_better = True
    full_state_update = False

    def __init__(self, label: str = "accuracy") -> None:
        super().__init__()
        self.label = label
        self.add_state("correct", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("total", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, correct: Tensor) -> None:
        self.correct += correct.long().sum()
        self.total += correct.numel()

    def compute(self) -> Tensor:
        return self.correct.double() / self.total.clamp_min(1).double()

    @staticmethod
    def per_sample(correct: Tensor) -> Tensor:
        return correct.double()


def eps_key(eps: float) -> str:
    """The metric key of robust accuracy at ``eps``: ``0.1`` → ``robust_acc_eps0.1``."""
    return f"robust_acc_eps{eps:g}"


class AdversarialTrainingTask(L.LightningModule):
    """Train a classifier ``model(x) → logits`` on clean or adversarial inputs.

    Args:
        model: the classifier (e.g. ``unroll.models.MLPClassifier``); ``(B, *shape) → (B, C)``.
        adversarial: train on PGD inputs (``True``) or clean ones (standard training).
        eps, norm, num_steps, step_size, direction, rank, random_start: the training attack
            (:class:`~unroll.adversarial.PGDAttack`; ``step_size`` in units of ε, default
            ``2.5/num_steps``).
        attack_grad_mode: ``"none"`` (the adversarial input is a constant, Madry et al.) or
            ``"full"``/``"truncated"``/``"checkpoint"`` (backpropagate through the unrolled
            attack as well).
        clean_weight: weight of the clean loss in the training loss
            ``(1 − w)·ℓ(x_adv) + w·ℓ(x)`` (``0``: pure adversarial training).
        eps_warmup_epochs: ramp the training ε linearly from 0 over this many epochs.
        lo, hi: the valid input range.
        eval_eps: the radii of the test's robust accuracies (``0`` is clean accuracy).
        eval_steps: PGD steps of the validation and test attacks (with a random start, seeded).
        pretrained: fine-tune from this checkpoint's model weights (an ``unroll fit``
            checkpoint of this task, or a config's runs folder, whose newest run's
            ``checkpoints/last.ckpt`` is taken); loaded at the start of ``fit`` as plain data
            (``weights_only``, CRC-checked: :func:`unroll.train.load_checkpoint`).
        optimizer: optimiser factory; Adam(lr=1e-3) by default.
        lr_scheduler: optional scheduler factory (monitors ``val/robust_acc``).
    """

    def __init__(self, model: nn.Module, adversarial: bool = True, eps: float = 0.1, norm: str = "linf",
                 num_steps: int = 7, step_size: Optional[float] = None, direction: str = "auto",
                 rank: Optional[int] = None, random_start: bool = True, attack_grad_mode: str = "none",
                 clean_weight: float = 0.0, eps_warmup_epochs: int = 0, lo: Optional[float] = 0.0,
                 hi: Optional[float] = 1.0, eval_eps: Optional[List[float]] = None, eval_steps: int = 20,
                 pretrained: Optional[str] = None, optimizer: OptimizerCallable = torch.optim.Adam,
                 lr_scheduler: Optional[LRSchedulerCallable] = None) -> None:
        super().__init__()
        if not isinstance(model, nn.Module):
            raise TypeError(f"model: expected an nn.Module classifier, got {type(model).__name__}")
        if attack_grad_mode not in GRAD_MODES:
            raise ValueError(f"attack_grad_mode: expected one of {', '.join(GRAD_MODES)}, got {attack_grad_mode!r}")
        if direction != "auto" and direction not in STEPS:
            raise ValueError(f"direction: expected 'auto' or one of {', '.join(STEPS)}, got {direction!r}")
        if isinstance(clean_weight, bool) or not isinstance(clean_weight, (int, float)) or not 0 <= clean_weight <= 1:
            raise ValueError(f"clean_weight: expected a number in [0, 1], got {clean_weight!r}")
        if isinstance(eps_warmup_epochs, bool) or not isinstance(eps_warmup_epochs, int) or eps_warmup_epochs < 0:
            raise ValueError(f"eps_warmup_epochs: expected an int >= 0, got {eps_warmup_epochs!r}")
        eval_eps = [0.0, eps / 2, eps, 2 * eps] if eval_eps is None else list(eval_eps)
        if not eval_eps:
            raise ValueError("eval_eps: expected at least one radius, got an empty list")
        self.eval_eps = [check_eps(e, "eval_eps") for e in eval_eps]
        if pretrained is not None and (not isinstance(pretrained, (str, os.PathLike)) or not str(pretrained)):
            raise ValueError(f"pretrained: expected a checkpoint path or a runs folder, got {pretrained!r}")
        self.save_hyperparameters(ignore=["model", "optimizer", "lr_scheduler"])
        self.model = model
        self.adversarial = bool(adversarial)
        self.attack = PGDAttack(eps=eps, norm=check_norm(norm), num_steps=num_steps, step_size=step_size,
                                direction=direction, random_start=random_start, rank=rank, lo=lo, hi=hi,
                                grad_mode=attack_grad_mode)
        self.eval_attack = PGDAttack(eps=eps, norm=norm, num_steps=eval_steps, direction=direction,
                                     random_start=True, rank=rank, lo=lo, hi=hi, grad_mode="none", seed=0)
        self.attack_grad_mode = attack_grad_mode
        self.clean_weight = float(clean_weight)
        self.eps_warmup_epochs = eps_warmup_epochs
        self.pretrained = None if pretrained is None else str(pretrained)
        self.optimizer_factory = optimizer
        self.scheduler_factory = lr_scheduler
        self.train_acc = Accuracy("training accuracy (on the training inputs)")
        self.val_clean = Accuracy("clean accuracy")
        self.val_robust = Accuracy(f"robust accuracy (PGD, eps={eps:g})")
        # plain dict and list (not submodules): prototypes for unroll evaluate
        self.metrics: Dict[str, torchmetrics.Metric] = {
            ("clean_acc" if e == 0 else eps_key(e)): Accuracy(
                "clean accuracy" if e == 0 else f"robust accuracy, {self.attack.norm} PGD-{eval_steps} eps={e:g}")
            for e in self.eval_eps}
        self.baselines: List[Any] = []
        self.operator = None  # no operator: what unroll evaluate compares between checkpoints is the data
        self.cli_config: Optional[Dict[str, Any]] = None
        self.test_results: Dict[str, List[float]] = {}
        self.test_per_sample: Dict[str, List[float]] = {}
        self._pretrained_loaded = False

    # ------------------------------------------------------------------ the pieces
    def forward(self, x: Tensor) -> Tensor:
        """``model(x)``: ``(B, *shape) → (B, C)`` logits."""
        return self.model(x)

    def batch_operator(self, batch) -> None:
        """No operator (``unroll evaluate`` asks every task for one)."""
        return None

    def train_eps(self) -> float:
        """The training radius at the current epoch (the linear warm-up, then ``eps``)."""
        if self.eps_warmup_epochs == 0:
            return self.attack.eps
        return self.attack.eps * min(1.0, (self.current_epoch + 1) / self.eps_warmup_epochs)

    def adversarial_inputs(self, x: Tensor, y: Tensor) -> Tensor:
        """The training attack's inputs ``(B, *shape)`` (with a graph to the model's weights in the
        modes that differentiate through the attack). The attack runs with the model in eval mode
        (batch-norm statistics are neither used per batch nor updated by the attack's forward
        passes; dropout is off), then the model's mode is restored."""
        was = self.model.training
        self.model.eval()
        try:
            return self.attack(self.model, x, y, eps=self.train_eps(), record=False).x_adv
        finally:
            self.model.train(was)

    @staticmethod
    def _plain(t: Tensor) -> Tensor:
        return t.clone() if t.is_inference() else t

    def robust_correct(self, x: Tensor, y: Tensor, eps: float) -> Tensor:
        """``(B,)`` bool: still classified correctly under the evaluation attack at ``eps``
        (``eps = 0``: clean). Runs with gradients even inside Lightning's inference mode."""
        if eps == 0:
            with torch.no_grad():
                return self.model(x).argmax(1) == y
        was = self.model.training
        self.model.eval()
        try:
            with torch.inference_mode(False), torch.enable_grad():
                x, y = self._plain(x), self._plain(y)
                res = self.eval_attack(self.model, x, y, eps=eps)
        finally:
            self.model.train(was)
        return ~res.success

    # ------------------------------------------------------------------ Lightning hooks
    def setup(self, stage: str) -> None:
        if stage == "fit" and self.pretrained is not None and not self._pretrained_loaded:
            self.load_pretrained(self.pretrained)

    def load_pretrained(self, source: str) -> str:
        """Load the model weights of a checkpoint of this task (or of the newest run in a runs
        folder) into :attr:`model`; returns the file read."""
        path = Path(source)
        if path.is_dir():
            from .unroll_cli import _newest_run_checkpoint

            path = _newest_run_checkpoint(path)
        elif not path.is_file():
            raise FileNotFoundError(f"pretrained: no checkpoint at {str(path)!r} (train the model first, e.g. unroll "
                                    "fit --config configs/adv_digits_standard.yaml, or give a checkpoint path)")
        ckpt = load_checkpoint(path, map_location="cpu")
        meta = ckpt.get(CKPT_KEY) or {}
        ours = f"{type(self.model).__module__}.{type(self.model).__qualname__}"
        if meta.get("model_class") not in (None, ours):
            raise ValueError(f"pretrained: {str(path)!r} holds a {meta['model_class']}, the config builds a {ours}")
        state = {k[len("model."):]: v for k, v in (ckpt.get("state_dict") or {}).items() if k.startswith("model.")}
        if not state:
            raise CheckpointError(f"checkpoint {path}: no model weights (no 'model.*' entries in its state_dict)")
        try:
            self.model.load_state_dict(state, strict=True)
        except RuntimeError as e:
            raise ValueError(f"pretrained: {str(path)!r} does not fit the model: {str(e).splitlines()[0]}") from None
        self._pretrained_loaded = True
        print(f"pretrained: model weights from {path}", flush=True)
        return str(path)

    def training_step(self, batch, batch_idx: int) -> Tensor:
        x, y = batch.x, batch.y
        if self.adversarial:
            x_adv = self.adversarial_inputs(x, y)
            logits = self.model(x_adv)
            loss = F.cross_entropy(logits, y)
            if self.clean_weight > 0:
                loss = (1 - self.clean_weight) * loss + self.clean_weight * F.cross_entropy(self.model(x), y)
            self.log("train/eps", self.train_eps(), batch_size=x.shape[0])
        else:
            logits = self.model(x)
            loss = F.cross_entropy(logits, y)
        self.train_acc.update(logits.detach().argmax(1) == y)
        self.log("train/acc", self.train_acc, batch_size=x.shape[0])
        return log_train_loss(self, loss, x.shape[0], "a learning rate too high, or bad input")

    def validation_step(self, batch, batch_idx: int) -> None:
        x, y = batch.x, batch.y
        n = x.shape[0]
        self.val_clean.update(self.robust_correct(x, y, 0.0))
        self.val_robust.update(self.robust_correct(x, y, self.attack.eps))
        with torch.no_grad():
            self.log("val/loss", F.cross_entropy(self.model(x), y), batch_size=n)
        self.log("val/clean_acc", self.val_clean, batch_size=n, prog_bar=True)
        self.log("val/robust_acc", self.val_robust, batch_size=n, prog_bar=True)

    def on_test_epoch_start(self) -> None:
        self._test = {k: m.clone().to(self.device) for k, m in self.metrics.items()}
        self._test_samples: Dict[str, List[Tensor]] = {k: [] for k in self.metrics}

    def test_step(self, batch, batch_idx: int) -> None:
        x, y = batch.x, batch.y
        for e, key in zip(self.eval_eps, self.metrics):
            ok = self.robust_correct(x, y, e)
            self._test[key].update(ok)
            self._test_samples[key].append(Accuracy.per_sample(ok).cpu())

    def on_test_epoch_end(self) -> None:
        #: ``{key: [value]}``: clean and robust accuracies
        self.test_results = {k: [float(m.compute())] for k, m in self._test.items()}
        #: ``{key: [1.0 / 0.0 per test sample]}``
        self.test_per_sample = {k: torch.cat(v).tolist() for k, v in self._test_samples.items() if v}
        #: what ``write_evaluation`` draws: the radii and the accuracies
        self._test_tracker = {"eps": list(self.eval_eps), "accuracy": [self.test_results[k][0] for k in self.metrics],
                              "norm": self.attack.norm}
        for k, v in self.test_results.items():
            self.log(f"test/{k}", v[0])

    def write_evaluation(self, trackers: Dict[str, Any], output_dir: str) -> Dict[str, str]:
        """``unroll evaluate``: robust accuracy against ε for every checkpoint, in one figure
        (``robust_accuracy.png``)."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        from .io import atomic_write

        fig, ax = plt.subplots(figsize=(6, 4))
        for name, t in trackers.items():
            if isinstance(t, dict) and "eps" in t:
                ax.plot(t["eps"], t["accuracy"], marker="o", label=name)
        ax.set_xlabel(f"ε ({self.attack.norm})")
        ax.set_ylabel("test accuracy under PGD")
        ax.set_ylim(0, 1)
        ax.grid(True, alpha=0.3)
        ax.legend()
        fig.tight_layout()
        path = atomic_write(Path(output_dir) / "robust_accuracy.png", lambda tmp: fig.savefig(tmp, format="png", dpi=120))
        plt.close(fig)
        return {"robust_accuracy": str(path)}

    def predict_step(self, batch, batch_idx: int) -> Tensor:
        return self.model(batch.x).argmax(1)

    def configure_optimizers(self):
        return optimizers_for(self, "val/robust_acc")

    # ------------------------------------------------------------------ checkpoints
    def on_save_checkpoint(self, checkpoint: Dict[str, Any]) -> None:
        checkpoint[CKPT_KEY] = {"model_class": f"{type(self.model).__module__}.{type(self.model).__qualname__}",
                                "operator_fingerprint": None, "config": self.cli_config}

    def on_load_checkpoint(self, checkpoint: Dict[str, Any]) -> None:
        meta = checkpoint.get(CKPT_KEY)
        if meta is None:
            raise ValueError("ckpt_path: the checkpoint was not written by unroll (no 'unroll' metadata)")
        ours = f"{type(self.model).__module__}.{type(self.model).__qualname__}"
        if meta.get("model_class") != ours:
            raise ValueError(f"ckpt_path: the checkpoint holds a {meta.get('model_class')} but the config builds a "
                             f"{ours}")
        self._pretrained_loaded = True  # a resumed or evaluated run has its weights already
