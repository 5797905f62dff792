"""``BilevelTask``: hyperparameters learned by hypergradient through an inner solver, as a
LightningModule with manual optimisation.

Each training step is one outer step: solve the inner problem at the current hyperparameters
(warm-started from the previous step's solution), compute the hypergradient of the outer loss
with :func:`unroll.bilevel.hypergrad` (``unrolled``, ``implicit`` or ``penalty``), and step the
optimiser on the hyperparameters' unconstrained parameters (log-scale penalties, sigmoid sample
weights: :mod:`unroll.parametrize`). It logs the outer loss, the hyperparameters, the inner
iterations and residual, and the backward (adjoint) iterations and residual.

Two kinds of data:

* :class:`unroll.data.tabular.TabularDataModule` (``TabularBatch``): ridge / Lasso / elastic-net
  regression, binary or multinomial logistic regression (multinomial, ``implicit``/``penalty``:
  the inner problem is solved by Newton–CG first, the gradient loop starts at its solution); the
  outer loss on the held-out or the K folds' validation rows (MSE, or cross-entropy); ``unroll
  evaluate`` reports the test MSE, or the test accuracy and log-loss (predictions: the mean
  over the folds' inner solutions).
* a sparse-recovery data module (``unroll.data.Batch`` with a global operator): the ℓ1 weight
  (one, or one per coordinate) of an ISTA reconstruction learned on the training stream's
  signals, the outer loss the reconstruction MSE; ``unroll evaluate`` reports the test NMSE (dB).
"""

from __future__ import annotations

import math
from typing import Any, Dict, List, Optional

import lightning as L
import torch
import torchmetrics
from lightning.pytorch.cli import OptimizerCallable
from torch import Tensor, nn

from unroll import L1, Problem
from unroll.bilevel import METHODS, elastic_net, hypergrad, lasso, logistic, multinomial_logistic, ridge
from unroll.metrics import nmse
from unroll.parametrize import LogScale, UnitWeights

__all__ = ["BilevelTask", "INNER", "HPARAMS"]

INNER = ("ridge", "lasso", "elastic_net", "logistic", "multinomial", "ista")
HPARAMS = ("scalar", "per_feature", "sample_weights")
_REGRESSION = ("ridge", "lasso", "elastic_net")


class _Label(torchmetrics.MeanMetric):
    """A mean with a label (for ``unroll evaluate``'s tables)."""

    def __init__(self, label: str) -> None:
        super().__init__()
        self.label = label


class Bilevel:
    """The name of a bilevel run's column in ``unroll evaluate``'s tables."""


class BilevelTask(L.LightningModule):
    """Learn hyperparameters by hypergradient through an inner solver.

    Args:
        inner: the inner problem: ``"ridge"``, ``"lasso"``, ``"elastic_net"`` (scikit-learn's
            scalings, :mod:`unroll.bilevel`), ``"logistic"`` (binary), ``"multinomial"``, or
            ``"ista"`` (a Lasso reconstruction ``½‖Ax − y‖² + λ‖x‖₁`` of a sparse-recovery data
            module's signals, solved by ``num_iters`` ISTA steps).
        hparam: what is learned: ``"scalar"`` (one penalty), ``"per_feature"`` (one penalty per
            feature / coordinate) or ``"sample_weights"`` (one weight in (0, 1) per training
            row: data hyper-cleaning; logistic, multinomial or ridge).
        init: the initial penalty (> 0), or the initial sample weight (in (0, 1)).
        penalty: the fixed penalty of the inner problem when sample weights are learned.
        l1_ratio: the elastic net's ``ρ``.
        method: ``"implicit"``, ``"unrolled"`` or ``"penalty"`` (:func:`~unroll.bilevel.hypergrad`).
        num_iters: the inner iteration budget (``unrolled``: the iterations differentiated).
        tol: the inner tolerance (``implicit``/``penalty``).
        backward_solver: the adjoint solver of ``implicit`` (``"cg"``, ``"bicgstab"``, ``"neumann"``).
        backward_tol: its tolerance.
        warm_start: start each inner solve at the previous outer step's solution.
        optimizer: the outer optimiser factory (on the unconstrained parameters); Adam(lr=0.05)
            by default.
        dtype: ``"float64"`` (default: hypergradients to tight tolerances) or ``"float32"``.
    """

    def __init__(self, inner: str = "lasso", hparam: str = "scalar", init: float = 0.1, penalty: float = 1e-3,
                 l1_ratio: float = 0.5, method: str = "implicit", num_iters: int = 5000, tol: float = 1e-9,
                 backward_solver: str = "cg", backward_tol: float = 1e-9, warm_start: bool = True,
                 optimizer: Optional[OptimizerCallable] = None, dtype: str = "float64") -> None:
        super().__init__()
        if inner not in INNER:
            raise ValueError(f"inner: expected one of {', '.join(INNER)}, got {inner!r}")
        if hparam not in HPARAMS:
            raise ValueError(f"hparam: expected one of {', '.join(HPARAMS)}, got {hparam!r}")
        if method not in METHODS:
            raise ValueError(f"method: expected one of {', '.join(METHODS)}, got {method!r}")
        if hparam == "sample_weights" and inner not in ("ridge", "logistic", "multinomial"):
            raise ValueError(f"hparam: 'sample_weights' needs inner 'ridge', 'logistic' or 'multinomial', got {inner!r}")
        if hparam == "sample_weights" and not (0 < init < 1):
            raise ValueError(f"init: expected an initial sample weight in (0, 1), got {init!r}")
        if hparam != "sample_weights" and not (0 < init < math.inf):
            raise ValueError(f"init: expected an initial penalty > 0, got {init!r}")
        if dtype not in ("float64", "float32"):
            raise ValueError(f"dtype: expected 'float64' or 'float32', got {dtype!r}")
        self.save_hyperparameters(ignore=["optimizer"])
        self.inner_kind, self.hparam_kind, self.init = inner, hparam, float(init)
        self.fixed_penalty, self.l1_ratio, self.method = float(penalty), float(l1_ratio), method
        self.num_iters, self.tol = int(num_iters), float(tol)
        self.backward_solver, self.backward_tol, self.warm_start = backward_solver, float(backward_tol), warm_start
        self.optimizer_factory = optimizer
        self.compute_dtype = getattr(torch, dtype)
        self.automatic_optimization = False
        self.hp: Optional[nn.Module] = None
        self._warm: Optional[Tensor] = None
        self.operator = None  # no global operator to compare between checkpoints (tabular data)
        self.baselines: List[Any] = []
        if inner in _REGRESSION:
            self.metrics = {"test_mse": _Label("test MSE")}
        elif inner == "ista":
            self.metrics = {"nmse_db": _Label("test NMSE (dB)")}
        else:
            self.metrics = {"test_accuracy": _Label("test accuracy"), "test_logloss": _Label("test log-loss")}
        self.cli_config: Optional[Dict[str, Any]] = None  # set by the CLI: checkpoints carry their config
        self.test_results: Dict[str, List[float]] = {}
        self.test_per_sample: Dict[str, List[float]] = {}

    @property
    def model(self) -> "Bilevel":
        """What ``unroll evaluate`` names its column after (``type(task.model).__name__``)."""
        return Bilevel()

    def batch_operator(self, batch):
        """The operator of a batch (``unroll evaluate``'s baselines): the global one, if any."""
        return self.operator

    # ------------------------------------------------------------------ the hyperparameters
    def _size(self, batch) -> int:
        if self.inner_kind == "ista":
            return batch.x.shape[-1]
        return batch.X.shape[-1] if self.hparam_kind == "per_feature" else batch.X.shape[-2]

    def build_hparams(self, size: int) -> None:
        """Create the hyperparameters (``size``: features for ``per_feature``, training rows for
        ``sample_weights``); called in :meth:`setup` from the data module's first batch."""
        if self.hp is not None:
            return
        dt = self.compute_dtype
        if self.hparam_kind == "scalar":
            self.hp = LogScale(torch.tensor(self.init, dtype=dt), name="init")
        elif self.hparam_kind == "per_feature":
            self.hp = LogScale(torch.full((size,), self.init, dtype=dt), name="init")
        else:
            self.hp = UnitWeights(torch.full((size,), self.init, dtype=dt), name="init")

    def setup(self, stage: str) -> None:
        dm = self.trainer.datamodule if self.trainer is not None else None
        if dm is None:
            raise ValueError("BilevelTask: needs a data module (TabularDataModule or a sparse-recovery one)")
        if self.inner_kind == "ista":
            op = dm.get_operator()
            if op is None:
                raise ValueError("inner: 'ista' needs a data module with a global operator (SparseRecoveryDataModule)")
            self.operator = op
            self.build_hparams(op.in_shape[-1] if op.in_shape is not None else dm.val_split.x.shape[-1])
        else:
            if not hasattr(dm, "batch"):
                raise ValueError(f"inner: {self.inner_kind!r} needs a TabularDataModule, got {type(dm).__name__}")
            b = dm.batch
            if self.inner_kind in ("logistic", "multinomial") and not dm.classification:
                raise ValueError(f"inner: {self.inner_kind!r} needs a classification dataset, got {dm.dataset!r}")
            if self.inner_kind in _REGRESSION and dm.classification:
                raise ValueError(f"inner: {self.inner_kind!r} needs a regression dataset, got {dm.dataset!r}")
            if self.inner_kind == "logistic" and dm.n_classes != 2:
                raise ValueError(f"inner: 'logistic' is binary; {dm.dataset!r} has {dm.n_classes} classes (use 'multinomial')")
            self.n_classes = dm.n_classes
            self.build_hparams(self._size(b))
        self.hp.to(self.device)

    def hparams_value(self) -> Tensor:
        """The current hyperparameters (penalties or sample weights)."""
        return self.hp()

    # ------------------------------------------------------------------ inner and outer problems
    def _cast(self, batch):
        return type(batch)(*[t.to(self.device, self.compute_dtype) if isinstance(t, Tensor) and t.is_floating_point()
                             else t for t in batch])

    def _inner(self, batch, hv: Tensor) -> Problem:
        k = self.inner_kind
        if k == "ista":
            return Problem.create(self.operator, batch.y, L1(hv))
        sw = hv if self.hparam_kind == "sample_weights" else None
        lam = self.fixed_penalty if sw is not None else hv
        if k == "ridge":
            return ridge(batch.X, batch.y, lam, sample_weight=sw)
        if k == "lasso":
            return lasso(batch.X, batch.y, lam)
        if k == "elastic_net":
            return elastic_net(batch.X, batch.y, lam, self.l1_ratio)
        if k == "logistic":
            return logistic(batch.X, batch.y, lam, sample_weight=sw)
        return multinomial_logistic(batch.X, batch.y, lam, n_classes=self.n_classes, sample_weight=sw)

    def _scores(self, x: Tensor, X: Tensor) -> Tensor:
        """Predictions of the inner solutions ``x`` on rows ``X`` ``(K, m, d)``."""
        if self.inner_kind == "multinomial":
            return torch.einsum("kmd,kdc->kmc", X, x)
        return torch.einsum("kmd,kd->km", X, x)

    def _loss(self, x: Tensor, X: Tensor, y: Tensor) -> Tensor:
        z = self._scores(x, X)
        if self.inner_kind in _REGRESSION:
            return ((z - y) ** 2).mean()
        if self.inner_kind == "logistic":
            return (torch.nn.functional.softplus(z) - y * z).mean()
        return torch.nn.functional.cross_entropy(z.flatten(0, 1), y.flatten().long())

    def _outer(self, batch):
        if self.inner_kind == "ista":
            return lambda x, *h: ((x - batch.x) ** 2).flatten(1).sum(1).mean()
        return lambda x, *h: self._loss(x, batch.Xv, batch.yv)

    def _solve(self, batch):
        x0 = self._warm if (self.warm_start and self._warm is not None and self.inner_kind != "ista") else None
        if self.inner_kind == "multinomial" and self.method != "unrolled":
            x0 = self._newton_start(batch, x0)
        kw = dict(method=self.method, x0=x0, num_iters=self.num_iters, tol=self.tol, on_failure="warn")
        if self.method == "implicit":
            kw.update(backward_solver=self.backward_solver, backward_tol=self.backward_tol)
        raw = self.hp.raw
        (g,), info = hypergrad(lambda _r: self._inner(batch, self.hp()), self._outer(batch), raw, **kw)
        self._warm = info.x
        return g, info

    @torch.no_grad()
    def _newton_start(self, batch, x0: Optional[Tensor]) -> Tensor:
        """The multinomial inner solution by Newton–CG (the solver of
        :class:`unroll.bilevel.LogisticRegressionCV`), from ``x0`` ``(K, d, C)`` or zeros: the
        gradient-descent loop of :func:`~unroll.bilevel.hypergrad` then starts at its fixed point
        and only confirms convergence (thousands of gradient steps per outer step otherwise)."""
        from unroll.bilevel_cv import _LogisticFolds

        X, y = batch.X, batch.y.long()  # (K, n, d), (K, n)
        K, n, d = X.shape
        sw = self.hp() if self.hparam_kind == "sample_weights" else X.new_ones(n)
        lam = self.fixed_penalty if self.hparam_kind == "sample_weights" else self.hp()
        lam = torch.as_tensor(lam, dtype=X.dtype, device=X.device)
        lam = (lam.unsqueeze(-1) if lam.dim() == 1 else lam).expand(d, 1).contiguous()
        folds = _LogisticFolds.__new__(_LogisticFolds)  # the same objective as multinomial_logistic
        folds.binary, folds.project, folds.newton_iters = False, False, 0
        folds.X = X
        folds.T = torch.nn.functional.one_hot(y, self.n_classes).to(X.dtype)
        folds.s = (sw.detach() / n).expand(K, n)
        folds.W = x0.clone() if x0 is not None else X.new_zeros(K, d, self.n_classes)
        W, _ = folds.solve(lam, 0.1 * self.tol, 100)
        return W

    # ------------------------------------------------------------------ Lightning hooks
    def training_step(self, batch, batch_idx: int) -> None:
        batch = self._cast(batch)
        opt = self.optimizers()
        g, info = self._solve(batch)
        opt.zero_grad()
        self.hp.raw.grad = g.to(self.hp.raw.dtype)
        opt.step()
        hv = self.hparams_value().detach()
        logs = {"train/outer": info.outer, "inner/iterations": float(info.inner.iterations.max()),
                "inner/residual": float(info.inner.residual.max())}
        if info.backward is not None and info.backward.iterations is not None:
            logs["backward/iterations"] = float(info.backward.iterations.max())
            logs["backward/residual"] = float(info.backward.residual.max())
        if hv.numel() == 1:
            logs["hparam/value"] = float(hv)
        else:
            logs.update({"hparam/mean": float(hv.mean()), "hparam/min": float(hv.min()), "hparam/max": float(hv.max())})
            if self.hparam_kind == "sample_weights" and hasattr(batch, "corrupted") and bool(batch.corrupted.any()):
                bad = batch.corrupted.to(hv.device)
                logs["hparam/weight_corrupted"] = float(hv[bad].mean())
                logs["hparam/weight_clean"] = float(hv[~bad].mean())
        self.log_dict(logs, prog_bar=False, batch_size=1)

    @torch.no_grad()
    def _final(self, batch) -> Tensor:
        from unroll import GradientStep, ProxGradStep, Unrolled

        problem = self._inner(batch, self.hparams_value())
        step = ProxGradStep(problem.reg) if problem.reg is not None else GradientStep(1.0)
        x0 = None if self.inner_kind == "ista" or self._warm is None else self._warm
        if self.inner_kind == "ista":
            return Unrolled(step, num_iters=self.num_iters)(problem).x
        if self.inner_kind == "multinomial":
            x0 = self._newton_start(batch, x0)
        return Unrolled(step, num_iters=self.num_iters)(problem, x0, tol=self.tol, check_every=10).x

    def validation_step(self, batch, batch_idx: int) -> None:
        batch = self._cast(batch)
        x = self._final(batch)
        self.log("val/outer", float(self._outer(batch)(x)), batch_size=1, prog_bar=True)

    def on_test_epoch_start(self) -> None:
        self._test = {k: [] for k in self.metrics}
        self._test_n = []

    def test_step(self, batch, batch_idx: int) -> None:
        batch = self._cast(batch)
        x = self._final(batch)
        if self.inner_kind == "ista":
            self._test["nmse_db"].append(float(nmse(x, batch.x)))
            self._test_n.append(batch.x.shape[0])
            return
        z = self._scores(x, batch.Xt.unsqueeze(0).expand(x.shape[0], *batch.Xt.shape))  # (K, N[, C])
        yt = batch.yt
        self._test_n.append(1)
        if self.inner_kind in _REGRESSION:
            self._test["test_mse"].append(float(((z.mean(0) - yt) ** 2).mean()))
            return
        if self.inner_kind == "logistic":
            p = torch.sigmoid(z).mean(0)
            probs = torch.stack([1 - p, p], -1)
        else:
            probs = torch.softmax(z, -1).mean(0)
        yl = yt.long()
        self._test["test_accuracy"].append(float((probs.argmax(-1) == yl).double().mean()))
        self._test["test_logloss"].append(float(-probs.gather(1, yl[:, None]).clamp_min(1e-300).log().mean()))

    def on_test_epoch_end(self) -> None:
        w = torch.tensor(self._test_n, dtype=torch.float64)
        self.test_results = {k: [float((torch.tensor(v, dtype=torch.float64) * w).sum() / w.sum())]
                             for k, v in self._test.items() if v}
        for k, v in self.test_results.items():
            self.log(f"test/{k}", v[0], batch_size=1)

    def configure_optimizers(self):
        if self.hp is None:
            raise RuntimeError("BilevelTask: the hyperparameters are built in setup() from the data; "
                               "configure_optimizers ran before it")
        factory = self.optimizer_factory or (lambda p: torch.optim.Adam(p, lr=0.05))
        return factory(list(self.hp.parameters()))

    def on_save_checkpoint(self, checkpoint: Dict[str, Any]) -> None:
        checkpoint["unroll"] = {"model_class": f"{__name__}.BilevelTask", "config": self.cli_config,
                                "operator_fingerprint": None if self.operator is None else self.operator.fingerprint(),
                                "hparam_shape": list(self.hp.raw.shape)}
