"""What a task is scored with: its declared metrics, accumulated per iterate over a test set
(:class:`MetricTracker`), and the classical baselines evaluated next to it
(:class:`Baseline`: :class:`SolverBaseline`, :class:`AdjointBaseline`).

``ReconstructionTask`` declares both (``metrics=``, ``baselines=``); ``unroll evaluate``
runs the task's model and every baseline on the same test batches, each batch with its own
operator, and reports every metric in one table, JSON, CSV and plot per metric.
"""

from __future__ import annotations

from typing import Dict, List, Literal, Mapping, NamedTuple, Optional, Sequence

import torch
from torch import Tensor
from torchmetrics import Metric

from unroll import solvers
from unroll.operators import LinearOperator

__all__ = ["MetricTracker", "BaselineRun", "Baseline", "SolverBaseline", "AdjointBaseline", "metric_label",
           "check_metrics", "check_baselines"]


def metric_label(key: str, metric: Metric) -> str:
    """The label of a metric in tables and plots: its ``label`` attribute, else its key."""
    return getattr(metric, "label", "") or key


def check_metrics(metrics: Mapping[str, Metric], name: str = "metrics") -> Dict[str, Metric]:
    """``metrics`` as a dict of torchmetrics ``Metric`` objects with non-empty string keys."""
    if not isinstance(metrics, Mapping) or not metrics:
        raise ValueError(f"{name}: expected a non-empty mapping {{key: torchmetrics.Metric}}, got {metrics!r}")
    for k, m in metrics.items():
        if not isinstance(k, str) or not k or "," in k:
            raise ValueError(f"{name}: expected non-empty keys without commas, got {k!r}")
        if not isinstance(m, Metric):
            raise ValueError(f"{name}[{k!r}]: expected a torchmetrics.Metric, got {type(m).__name__}")
        reads = getattr(m, "reads", "estimate")
        if reads not in ("estimate", "final", "iterations"):
            raise ValueError(f"{name}[{k!r}]: reads must be 'estimate', 'final' or 'iterations', got {reads!r}")
    return dict(metrics)


class MetricTracker:
    """Accumulates declared metrics over a test set for one method (a model or a baseline).

    Metrics that read the estimate (``reads = "estimate"``, the default of any torchmetrics
    ``Metric``: ``update(preds, target)``) are kept once per iterate (a clone each), so every
    one gives a curve over the iterations; metrics that read the iteration count
    (:class:`unroll.metrics.Iterations`) or only the final estimate (``reads = "final"``, e.g. a
    solve's wall time) give one value. Per-sample values of the final
    estimate are kept for metrics with a ``per_sample`` method. Metrics with
    ``uses_data_range`` receive ``data_range`` from the batch's metadata when it has one.

    Args:
        metrics: ``{key: Metric}``; the prototypes are cloned, never updated.
    """

    def __init__(self, metrics: Mapping[str, Metric]) -> None:
        self.prototypes = check_metrics(metrics)
        self._per_iter: Optional[Dict[str, List[Metric]]] = None
        self._once: Dict[str, Metric] = {}
        self._samples: Dict[str, List[Tensor]] = {k: [] for k in self.prototypes}

    @staticmethod
    def _extra(metric: Metric, meta: Mapping) -> Dict[str, Tensor]:
        if getattr(metric, "uses_meta", False) and meta:  # per-volume metrics (unroll.metrics.FastMRISSIM ...)
            return {"meta": meta}
        if getattr(metric, "uses_data_range", False) and meta and "data_range" in meta:
            return {"data_range": meta["data_range"]}
        return {}

    def update(self, trajectory: Sequence[Tensor], target: Optional[Tensor], *, iterations: Optional[Tensor] = None,
               meta: Optional[Mapping] = None) -> None:
        """Score one batch.

        Args:
            trajectory: the estimate after each iteration, ``K`` tensors ``(B, ...)`` (the last is
                the final estimate); ``K`` is set by the first batch. A shorter trajectory (a solver
                that stopped early) is continued with its final estimate; a longer one is an error.
            target: ``(B, ...)`` ground truth (needed by metrics that read the estimate).
            iterations: ``(B,)`` iterations each sample ran (for metrics that read them).
            meta: the batch's metadata (``data_range``).
        """
        trajectory = list(trajectory)
        if not trajectory:
            raise ValueError("trajectory: expected at least one estimate, got none")
        meta = meta or {}
        device = trajectory[-1].device
        if self._per_iter is None:
            K = len(trajectory)
            self._per_iter = {k: [m.clone().to(device) for _ in range(K)] for k, m in self.prototypes.items()
                              if getattr(m, "reads", "estimate") == "estimate"}
            self._once = {k: m.clone().to(device) for k, m in self.prototypes.items()
                          if getattr(m, "reads", "estimate") in ("iterations", "final")}
        K = max((len(c) for c in self._per_iter.values()), default=len(trajectory))
        if self._per_iter and len(trajectory) > K:
            raise ValueError(f"trajectory: {len(trajectory)} iterates, more than the {K} of the first batch scored; "
                             "every batch must report at most as many iterates (pad to the budget)")
        for key, clones in self._per_iter.items():
            if target is None:
                raise ValueError(f"batch.x: metric {key!r} needs the ground truth, but the batch has none")
            extra = self._extra(self.prototypes[key], meta)
            for k, metric in enumerate(clones):
                metric.update(trajectory[min(k, len(trajectory) - 1)].detach(), target, **extra)
            if hasattr(clones[0], "per_sample"):
                self._samples[key].append(clones[0].per_sample(trajectory[-1].detach(), target, **extra).cpu())
        for key, metric in self._once.items():
            if getattr(metric, "reads") == "final":
                extra = self._extra(self.prototypes[key], meta)
                metric.update(trajectory[-1].detach(), target, **extra)
                if hasattr(metric, "per_sample"):
                    self._samples[key].append(metric.per_sample(trajectory[-1].detach(), target, **extra).cpu())
                continue
            if iterations is None:
                raise ValueError(f"iterations: metric {key!r} reads the iteration counts, but the run reported none")
            metric.update(iterations)
            if hasattr(metric, "per_sample"):
                self._samples[key].append(metric.per_sample(iterations).cpu())

    def compute(self) -> Dict[str, List[float]]:
        """``{key: [value per iterate]}`` (one value for metrics that read iteration counts or the
        final estimate only), in the order the metrics were declared."""
        if self._per_iter is None:
            raise RuntimeError("MetricTracker.compute: no batch was scored")
        out = {}
        for key in self.prototypes:
            if key in self._per_iter:
                out[key] = [float(m.compute()) for m in self._per_iter[key]]
            else:
                out[key] = [float(self._once[key].compute())]
        return out

    def per_sample(self) -> Dict[str, List[float]]:
        """``{key: [value of each sample's final estimate]}`` for the metrics that have per-sample values."""
        return {k: [float(v) for v in torch.cat(chunks)] for k, chunks in self._samples.items() if chunks}


class BaselineRun(NamedTuple):
    """A baseline's result on one batch: the estimate after each iteration and ``(B,)`` iterations run."""

    trajectory: List[Tensor]
    iterations: Tensor


class Baseline:
    """A classical method scored next to the trained models, on the same batches and operators.

    Subclasses set ``name`` (the column in the reports) and implement :meth:`run`.
    """

    name: str = "baseline"

    def run(self, operator: LinearOperator, y: Tensor, num_iters: int, lam: float) -> BaselineRun:
        """Reconstruct from ``y`` ``(B, *out_shape)`` with the batch's operator.

        Args:
            num_iters: the iteration budget (the evaluated models' depth).
            lam: the evaluation's default λ (``unroll evaluate --lam``), for baselines without their own.
        """
        raise NotImplementedError

    def description(self, lam: float) -> str:
        """A short description for report titles."""
        return self.name


def check_baselines(baselines, name: str = "baselines") -> List[Baseline]:
    """``baselines`` as a list of :class:`Baseline` objects with distinct names."""
    if isinstance(baselines, (str, bytes)) or not isinstance(baselines, (list, tuple)) \
            or not all(isinstance(b, Baseline) for b in baselines):
        raise ValueError(f"{name}: expected a list of unroll.train.scoring.Baseline, got {baselines!r}")
    names = [b.name for b in baselines]
    if len(set(names)) != len(names):
        raise ValueError(f"{name}: expected distinct names (they name the reports' columns), got {names}")
    return list(baselines)


_SOLVERS = {"ista": solvers.ista, "fista": solvers.fista, "iht": solvers.iht}


class SolverBaseline(Baseline):
    """A classical solver of :mod:`unroll.solvers` (ISTA, FISTA or IHT) with weight ``λ``.

    Args:
        solver: ``"ista"``, ``"fista"`` or ``"iht"``.
        lam: ``λ``; ``None``: ``unroll evaluate --lam`` (default 0.1).
        tol: stop each sample at this relative change (``None``: run the whole budget); the
            iterations each sample ran are then what :class:`unroll.metrics.Iterations` reports.
        max_iter: iteration budget; ``None``: the evaluated models' depth.
        name: column name; default the solver's name.
    """

    def __init__(self, solver: Literal["ista", "fista", "iht"] = "ista", lam: Optional[float] = None,
                 tol: Optional[float] = None, max_iter: Optional[int] = None, name: Optional[str] = None) -> None:
        if solver not in _SOLVERS:
            raise ValueError(f"solver: expected one of {', '.join(map(repr, _SOLVERS))}, got {solver!r}")
        for arg, value in (("lam", lam), ("tol", tol)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                      or not 0 <= value < float("inf")):
                raise ValueError(f"{arg}: expected a finite number ≥ 0 or None, got {value!r}")
        if max_iter is not None and (isinstance(max_iter, bool) or not isinstance(max_iter, int) or max_iter < 1):
            raise ValueError(f"max_iter: expected an integer ≥ 1 or None, got {max_iter!r}")
        self.solver, self.lam, self.tol, self.max_iter = solver, lam, tol, max_iter
        self.name = name or solver

    def _lam(self, lam: float) -> float:
        return float(lam if self.lam is None else self.lam)

    def run(self, operator: LinearOperator, y: Tensor, num_iters: int, lam: float) -> BaselineRun:
        budget = self.max_iter or num_iters
        _, info = _SOLVERS[self.solver](operator, y, self._lam(lam), max_iter=budget, tol=self.tol,
                                        return_trajectory=True)
        trajectory = list(info.trajectory)
        # stopped early (tol): the estimate stays the final one for the rest of the budget, so that
        # every batch reports the same number of iterates
        trajectory += [trajectory[-1]] * (budget - len(trajectory))
        return BaselineRun(trajectory, info.iterations)

    def description(self, lam: float) -> str:
        return f"{self.name} (λ={self._lam(lam):g})"


class AdjointBaseline(Baseline):
    """``x̂ = Aᴴ y`` (one iteration): the zero-filled reconstruction of a sampling mask.

    Args:
        name: column name (default ``"adjoint"``).
    """

    def __init__(self, name: str = "adjoint") -> None:
        self.name = name

    def run(self, operator: LinearOperator, y: Tensor, num_iters: int, lam: float) -> BaselineRun:
        return BaselineRun([operator.adjoint(y)], torch.ones(y.shape[0], dtype=torch.long, device=y.device))
