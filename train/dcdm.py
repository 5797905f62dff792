"""``DCDMTask``: train a learned search direction (``unroll.models.DCDM``) on Poisson systems and
score it, as :func:`unroll.solvers.conjugate_directions`, against CG, Jacobi-PCG and IC-PCG.

Training is unsupervised: the network maps a right-hand side ``b`` to a direction ``q`` and is
trained on :class:`unroll.ScaleInvariantLoss` ``‖b − Aq (qᵀb)/(qᵀAq)‖²`` (``A`` the batch's
Laplacian). At test time (``trainer.test``, ``unroll evaluate``) every method solves each test
system to the relative residual ``tol`` and reports, per system, the iterations it took, the
wall time and the residual after every iteration.

How the solves reach the generic evaluation: a run's "trajectory" is a *trace*, one ``(B, 2)``
tensor per iteration holding ``[‖r_k‖/‖b‖, wall seconds of the whole solve per system]``,
padded with the final row to the budget ``max_iter`` (a sample that stopped stays where it
stopped); :class:`RelativeResidual` and :class:`SolveTime` read it, :class:`unroll.metrics.Iterations`
reads the iteration counts. ``unroll evaluate`` then prints and writes the curves
(``rel_residual.png``), the mean iterations and times, and per-system tables.
"""

from __future__ import annotations

import functools
import time
from typing import Dict, List, Literal, Optional

import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor, nn
from torchmetrics import Metric

from unroll.linalg import cg
from unroll.losses import Loss, ScaleInvariantLoss
from unroll.metrics import Iterations, MeanOverSamples
from unroll.models.multilevel import MultilevelDirection
from unroll.operators import LinearOperator
from unroll.preconditioners import IncompleteCholesky, JacobiPreconditioner
from unroll.problem import QuadraticProblem
from unroll.solvers import conjugate_directions

from .scoring import Baseline, BaselineRun
from .task import ReconstructionTask, log_train_loss

__all__ = ["DCDMTask", "KrylovBaseline", "RelativeResidual", "SolveTime", "solve_trace"]


def solve_trace(history: Optional[Tensor], final: Tensor, seconds: float, budget: int) -> List[Tensor]:
    """The trace of a solve: ``budget`` tensors ``(B, 2)``, row ``k`` = ``[‖r_k‖/‖b‖ after
    iteration k+1, seconds per system]``.

    Args:
        history: ``(B, K)`` relative residual after each iteration (``None`` or ``K = 0``: no
            iteration ran), ``K ≤ budget``.
        final: ``(B,)`` the final relative residual (used when no iteration ran).
        seconds: wall time of the whole batch's solve.
    """
    B = final.shape[0]
    per = torch.full((B,), seconds / max(B, 1), dtype=torch.float64)
    if history is None or history.shape[1] == 0:
        rows = [final.detach().cpu().to(torch.float64)]
    else:
        h = history.detach().cpu().to(torch.float64)
        rows = list(h.unbind(1))
    if len(rows) > budget:
        raise ValueError(f"history: {len(rows)} iterations, more than the budget {budget}")
    rows += [rows[-1]] * (budget - len(rows))
    return [torch.stack([r, per], dim=1) for r in rows]


def system_records(info, seconds: float, device: torch.device) -> List[Dict]:
    """One record per system of a batch's solve: ``iterations``, ``ms`` (the batch's wall time over
    its systems), ``residual`` (final ``‖r‖/‖b‖``), ``converged``, ``history`` (``‖r_k‖/‖b‖``
    after each iteration it ran, not padded), ``fallbacks`` (conjugate directions only) and
    ``device``."""
    B = info.iterations.shape[0]
    hist = info.residual_history
    fallbacks = getattr(info, "fallbacks", None)
    out = []
    for i in range(B):
        n = int(info.iterations[i])
        out.append({"iterations": n, "ms": 1000.0 * seconds / max(B, 1), "residual": float(info.residual[i]),
                    "converged": bool(info.converged[i]),
                    "history": [] if hist is None else [float(v) for v in hist[i, :n].detach().cpu()],
                    "fallbacks": None if fallbacks is None else int(fallbacks[i]), "device": str(device)})
    return out


class _TraceMetric(MeanOverSamples):
    """Mean over systems of one column of a solve trace ``(B, 2)`` (``update(trace, target)``;
    ``target`` is not read)."""

    higher_is_better = False

    def _values(self, trace: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def _check(self, trace: Tensor) -> None:
        if trace.dim() != 2 or trace.shape[1] != 2:
            raise ValueError(f"preds: {type(self).__name__} reads a solve trace (B, 2) [relative residual, "
                             f"seconds], got shape {tuple(trace.shape)}; use it with DCDMTask and KrylovBaseline")

    def update(self, preds: Tensor, target: Optional[Tensor] = None) -> None:
        self._check(preds)
        self._accumulate(self._values(preds).to(self.total.device))

    def per_sample(self, preds: Tensor, target: Optional[Tensor] = None) -> Tensor:
        self._check(preds)
        return self._values(preds)


class RelativeResidual(_TraceMetric):
    """``log10(‖r_k‖/‖b‖)`` per iteration, mean over the systems (a geometric mean of the residual)."""

    label = "log10 rel. residual"

    def _values(self, trace: Tensor) -> Tensor:
        return torch.log10(trace[:, 0].to(torch.float64).clamp_min(1e-300))


class SolveTime(_TraceMetric):
    """Wall time of a solve per system, in milliseconds (a batch's time over its systems); one
    value per run (``reads = "final"``: the trace's last row)."""

    label = "ms per system"
    reads = "final"

    def _values(self, trace: Tensor) -> Tensor:
        return 1000.0 * trace[:, 1].to(torch.float64)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class KrylovBaseline(Baseline):
    """CG, Jacobi-preconditioned CG or IC(0)-preconditioned CG (:func:`unroll.cg`) to a tolerance,
    reporting a solve trace (see the module notes).

    Args:
        method: ``"cg"``, ``"jacobi"`` or ``"ic"``.
        tol: relative residual to reach.
        max_iter: budget (``None``: the evaluated model's, i.e. the length of its trace).
        name: column name (default: ``CG``, ``Jacobi-PCG``, ``IC-PCG``).

    The wall time is the solve's; the preconditioner's set-up (IC(0) factorisation) is not
    included (it is kept in :attr:`setup_seconds`, per operator).
    """

    _NAMES = {"cg": "CG", "jacobi": "Jacobi-PCG", "ic": "IC-PCG"}

    def __init__(self, method: Literal["cg", "jacobi", "ic"] = "cg", tol: float = 1e-4, max_iter: Optional[int] = None,
                 name: Optional[str] = None) -> None:
        if method not in self._NAMES:
            raise ValueError(f"method: expected one of {', '.join(map(repr, self._NAMES))}, got {method!r}")
        if isinstance(tol, bool) or not isinstance(tol, (int, float)) or not 0 <= tol < float("inf"):
            raise ValueError(f"tol: expected a finite number >= 0, got {tol!r}")
        if max_iter is not None and (isinstance(max_iter, bool) or not isinstance(max_iter, int) or max_iter < 1):
            raise ValueError(f"max_iter: expected an int >= 1 or None, got {max_iter!r}")
        self.method, self.tol, self.max_iter = method, float(tol), max_iter
        self.name = name or self._NAMES[method]
        self.setup_seconds: List[float] = []
        #: one record per system solved (:func:`system_records`, plus the preconditioner's set-up ms)
        self.records: List[Dict] = []

    def preconditioner(self, operator: LinearOperator):
        if self.method == "cg":
            return None
        t0 = time.perf_counter()
        M = JacobiPreconditioner(operator) if self.method == "jacobi" else IncompleteCholesky(operator)
        self.setup_seconds.append(time.perf_counter() - t0)
        return M

    def run(self, operator: LinearOperator, y: Tensor, num_iters: int, lam: float) -> BaselineRun:
        budget = self.max_iter or num_iters
        M = self.preconditioner(operator)
        if M is not None:
            M = M.to(device=y.device)
        _sync(y.device)
        t0 = time.perf_counter()
        _, info = cg(operator, y, M=M, tol=self.tol, max_iter=budget, check_every=1, record_history=True,
                     on_failure="warn")
        _sync(y.device)
        seconds = time.perf_counter() - t0
        setup_ms = 1000.0 * self.setup_seconds[-1] if M is not None else 0.0
        self.records += [dict(r, setup_ms=setup_ms) for r in system_records(info, seconds, y.device)]
        return BaselineRun(solve_trace(info.residual_history, info.residual, seconds, budget), info.iterations)

    def description(self, lam: float) -> str:
        return f"{self.name} (tol {self.tol:g})"


def _default_metrics() -> Dict[str, Metric]:
    return {"rel_residual": RelativeResidual(), "iterations": Iterations(), "ms_per_system": SolveTime()}


class _TaskNetwork:
    """``task(r, A)``: the task's network (compiled with ``compile=True``) as a direction of
    :class:`MultilevelDirection`, which then passes it each level's operator."""

    takes_operator = True

    def __init__(self, task: "DCDMTask") -> None:
        self.task = task

    def __call__(self, r: Tensor, A: Optional[LinearOperator] = None) -> Tensor:
        return self.task(r, A)


class DCDMTask(ReconstructionTask):
    """Train a learned search direction ``model(r) → q`` (e.g. ``unroll.models.DCDM``) on the
    scale-invariant loss, and test it inside :func:`unroll.solvers.conjugate_directions`.

    Args:
        model: the network, ``(B, *grid) → (B, *grid)``.
        loss: default :class:`unroll.ScaleInvariantLoss` (``loss(q, None, QuadraticProblem(A, b))``).
        optimizer, lr_scheduler: as :class:`ReconstructionTask` (Adam by default).
        tol: relative residual the test solves stop at (the paper's ``1e-4``).
        max_iter: budget of every test solve (and the length of the residual curves).
        orthogonalize: previous directions the learned one is A-orthogonalised against.
        safeguard: :func:`~unroll.solvers.conjugate_directions`'s fallback ratio.
        train_residual_steps: ``K >= 0``. With ``K > 0``, each training batch has the second half of
            its right-hand sides replaced by the residuals the solver leaves after ``k`` iterations
            (``k`` uniform in ``1..K`` per batch, the current network, no graph), normalised: the
            solver feeds the network those residuals from its second iteration on, and a network
            trained on right-hand sides alone got worse on them as its loss kept falling
            (BENCHMARKS.md, DCDM). ``0``: the paper's training on right-hand sides only.
        val_solve: also solve every validation system with the solver and log ``val/iterations``
            (mean iterations to ``tol``, ``max_iter`` for a system that did not reach it) and
            ``val/fallbacks``. The loss ranks networks by one step from ``b``; the solver's count
            depends on every later residual too, and the two can disagree (BENCHMARKS.md, DCDM), so
            ``configs/dcdm_poisson.yaml`` keeps the best checkpoint by ``val/iterations``.
        metrics: default ``rel_residual`` (:class:`RelativeResidual`), ``iterations``
            (:class:`unroll.metrics.Iterations`) and ``ms_per_system`` (:class:`SolveTime`).
        baselines: default CG, Jacobi-PCG and IC-PCG (:class:`KrylovBaseline`) at ``tol``.
        compile, compile_mode: as :class:`ReconstructionTask`.
        multilevel: ``None`` (the network alone), or the training grid's size ``N``: every solve
            (validation, test, prediction) uses :class:`unroll.models.MultilevelDirection`
            ``(network, coarsest=N)``, so on grids of ``2N`` cells and more the network is also
            its own coarse-grid solve; grids under ``2N`` are unaffected, and so is the loss. It
            adds no parameters: a checkpoint trained without it evaluates with it
            (``unroll evaluate --config ... --model.init_args.multilevel=32``).

    Batches: ``unroll.data.Batch(y=b, x=solution or None, operator={"mask": ...})`` from
    :class:`unroll.data.PoissonDataModule`. The network's output is zeroed on solid cells
    (where the Laplacian is the identity and ``b`` is zero) before the loss, as the solver does.
    Logged: ``train/loss``, ``val/loss`` (and ``val/iterations``, ``val/fallbacks``); at test
    ``test/iterations``, ``test/rel_residual``, ``test/ms_per_system`` and ``test/fallbacks`` (mean
    steps per system that used the CG direction).
    """

    def __init__(self, model: nn.Module, loss: Optional[Loss] = None,
                 optimizer: OptimizerCallable = torch.optim.Adam, lr_scheduler: Optional[LRSchedulerCallable] = None,
                 tol: float = 1e-4, max_iter: int = 300, orthogonalize: int = 2, safeguard: float = 1.0,
                 train_residual_steps: int = 0, val_solve: bool = True, metrics: Optional[Dict[str, Metric]] = None,
                 baselines: Optional[List[Baseline]] = None, compile: bool = False,
                 compile_mode: Optional[str] = None, multilevel: Optional[int] = None) -> None:
        if multilevel is not None and (isinstance(multilevel, bool) or not isinstance(multilevel, int)
                                       or multilevel < 1):
            raise ValueError(f"multilevel: expected None or an int >= 1 (the training grid's size), got {multilevel!r}")
        if isinstance(max_iter, bool) or not isinstance(max_iter, int) or max_iter < 1:
            raise ValueError(f"max_iter: expected an int >= 1, got {max_iter!r}")
        if isinstance(tol, bool) or not isinstance(tol, (int, float)) or not 0 <= tol < float("inf"):
            raise ValueError(f"tol: expected a finite number >= 0, got {tol!r}")
        if isinstance(train_residual_steps, bool) or not isinstance(train_residual_steps, int) \
                or train_residual_steps < 0:
            raise ValueError(f"train_residual_steps: expected an int >= 0, got {train_residual_steps!r}")
        if not isinstance(val_solve, bool):
            raise ValueError(f"val_solve: expected a bool, got {val_solve!r}")
        super().__init__(model, loss=loss if loss is not None else ScaleInvariantLoss(), weighting="last",
                         optimizer=optimizer, lr_scheduler=lr_scheduler,
                         metrics=metrics if metrics is not None else _default_metrics(),
                         baselines=baselines if baselines is not None else [
                             KrylovBaseline("cg", tol), KrylovBaseline("jacobi", tol), KrylovBaseline("ic", tol)],
                         compile=compile, compile_mode=compile_mode)
        self.tol, self.max_iter, self.orthogonalize, self.safeguard = float(tol), max_iter, orthogonalize, safeguard
        self.val_solve, self.train_residual_steps = val_solve, train_residual_steps
        self.multilevel = multilevel

    # ------------------------------------------------------------------ the network's direction
    def _problem(self, y: Tensor, operator: LinearOperator) -> QuadraticProblem:
        return QuadraticProblem(operator, y)

    @staticmethod
    def _mask(q: Tensor, operator: LinearOperator) -> Tensor:
        mask = getattr(operator, "mask", None)
        return q if mask is None else q * mask.to(q.dtype)

    def direction(self, r: Tensor, operator: Optional[LinearOperator] = None) -> Tensor:
        """The network's direction ``(B, *grid) → (B, *grid)`` (through ``torch.compile`` with
        ``compile=True``); ``operator`` is passed on (``DCDM(mask_input=True)`` reads its mask)."""
        dtype = next((p.dtype for p in self.model.parameters() if p.is_floating_point()), r.dtype)
        if self.multilevel is not None:  # built per call: a view of the network, not a submodule
            return MultilevelDirection(_TaskNetwork(self), self.multilevel)(r.to(dtype), operator).to(r.dtype)
        return self(r.to(dtype), operator).to(r.dtype)

    def solver_residuals(self, operator: LinearOperator, b: Tensor, k: int) -> Tensor:
        """``r_k / ‖r_k‖``: the residuals after ``k`` iterations of the solver from ``x = 0`` (no
        graph; a sample already solved to round-off keeps ``b``): ``(B, *grid)``."""
        with torch.no_grad():
            x, _ = conjugate_directions(operator, b, direction=functools.partial(self.direction, operator=operator),
                                        tol=0.0, max_iter=k,
                                        orthogonalize=self.orthogonalize, safeguard=self.safeguard,
                                        on_failure="ignore")
            r = b - operator(x)
            n = r.flatten(1).norm(dim=1)
            ok = (n > 1e-6 * b.flatten(1).norm(dim=1)).view(-1, *([1] * (b.dim() - 1)))
            return torch.where(ok, r / n.clamp_min(torch.finfo(r.dtype).tiny).view_as(ok), b)

    def training_step(self, batch, batch_idx: int) -> Tensor:
        op = self.batch_operator(batch)
        b = batch.y
        if self.train_residual_steps > 0 and b.shape[0] >= 2:
            k = int(torch.randint(1, self.train_residual_steps + 1, ()))
            h = b.shape[0] // 2
            b = torch.cat([b[:h], self.solver_residuals(op, b[h:], k)])
        loss = self.loss(self._mask(self(b, op), op), None, self._problem(b, op))
        return log_train_loss(self, loss, batch.y.shape[0], "a learning rate too high?")

    def validation_step(self, batch, batch_idx: int) -> None:
        op = self.batch_operator(batch)
        loss = self.loss(self._mask(self(batch.y, op), op), None, self._problem(batch.y, op))
        bsz = batch.y.shape[0]
        self.log("val/loss", loss, batch_size=bsz, prog_bar=True, sync_dist=True)
        if self.val_solve:
            _, info = self.solve(op, batch.y, record_history=False)
            self.log("val/iterations", info.iterations.double().mean(), batch_size=bsz, prog_bar=True,
                     sync_dist=True)
            self.log("val/fallbacks", info.fallbacks.double().mean(), batch_size=bsz, sync_dist=True)

    # ------------------------------------------------------------------ solving
    def solve(self, operator: LinearOperator, b: Tensor, record_history: bool = True):
        """``conjugate_directions(operator, b, direction=network, ...)`` with the task's settings →
        ``(x, info)``."""
        return conjugate_directions(operator, b, direction=functools.partial(self.direction, operator=operator),
                                    tol=self.tol, max_iter=self.max_iter,
                                    orthogonalize=self.orthogonalize, safeguard=self.safeguard,
                                    record_history=record_history)

    def test_step(self, batch, batch_idx: int) -> None:
        op = self.batch_operator(batch)
        _sync(batch.y.device)
        t0 = time.perf_counter()
        _, info = self.solve(op, batch.y)
        _sync(batch.y.device)
        seconds = time.perf_counter() - t0
        self._fallbacks.append(info.fallbacks.detach().cpu())
        meta = getattr(batch, "meta", None) or {}
        for i, rec in enumerate(system_records(info, seconds, batch.y.device)):
            for key in ("domain", "obstacle"):
                if key in meta:
                    v = meta[key][i]
                    rec[key] = v.item() if isinstance(v, Tensor) else v
            self._records.append(rec)
        self._test_tracker.update(solve_trace(info.residual_history, info.residual, seconds, self.max_iter),
                                  batch.x, iterations=info.iterations, meta=getattr(batch, "meta", None))

    def on_test_epoch_start(self) -> None:
        super().on_test_epoch_start()
        self._fallbacks: List[Tensor] = []
        self._records: List[Dict] = []  # one per test system (system_records), for write_evaluation

    def on_test_epoch_end(self) -> None:
        self.test_results = self._test_tracker.compute()
        self.test_per_sample = self._test_tracker.per_sample()
        for key, values in self.test_results.items():
            self.log(f"test/{key}", values[-1])
        if self._fallbacks:
            self.log("test/fallbacks", float(torch.cat(self._fallbacks).double().mean()))

    def write_evaluation(self, trackers, output_dir: str) -> Dict[str, str]:
        """What ``unroll evaluate`` adds for solvers, from the last test run (this task's network,
        then every :class:`KrylovBaseline`), into ``output_dir``:

        * ``systems.csv``: one row per method and test system: its domain and obstacle shape,
          iterations to ``tol``, wall ms, final ``‖r‖/‖b‖``, whether it converged, the
          network's fallbacks (DCDM) or the preconditioner's set-up ms (IC-PCG, Jacobi-PCG), and
          the device it ran on;
        * ``solvers.json``: per method the mean, median and largest iteration count, mean ms,
          mean set-up ms, total fallbacks, device;
        * ``residual_curves.png``: ``‖r_k‖/‖b‖`` against the iteration, one line per system (not
          padded past its stop), one colour per method.

        Returns ``{"systems_csv", "solvers_json", "residual_curves_png"}``.
        """
        from pathlib import Path

        from .io import atomic_write, atomic_write_json, atomic_write_text, rows_csv

        records = getattr(self, "_records", None)
        if not records:
            return {}
        methods = {"DCDM" + (f" (multilevel {self.multilevel})" if self.multilevel else ""): records}
        for b in self.baselines:
            if isinstance(b, KrylovBaseline) and b.records:
                methods[b.name] = b.records[-len(records):]  # this test run's (a baseline may be reused)
        fields = ["method", "system", "domain", "obstacle", "iterations", "ms", "setup_ms", "residual", "converged",
                  "fallbacks", "device"]
        rows, summary = [], {}
        for name, recs in methods.items():
            for i, r in enumerate(recs):
                geo = records[i] if i < len(records) else {}
                row = dict(r, method=name, system=i, domain=geo.get("domain", ""), obstacle=geo.get("obstacle", ""))
                rows.append({f: row.get(f) for f in fields})
            its = torch.tensor([float(r["iterations"]) for r in recs], dtype=torch.float64)
            summary[name] = {
                "systems": len(recs), "tol": self.tol, "device": recs[0]["device"],
                "iterations_mean": float(its.mean()), "iterations_median": float(its.median()),
                "iterations_max": float(its.max()),
                "converged": sum(bool(r["converged"]) for r in recs),
                "ms_mean": sum(r["ms"] for r in recs) / len(recs),
                "setup_ms_mean": sum(r.get("setup_ms", 0.0) for r in recs) / len(recs),
                "fallbacks_total": None if recs[0]["fallbacks"] is None else sum(r["fallbacks"] for r in recs)}
        out = Path(output_dir)
        paths = {"systems_csv": str(atomic_write_text(out / "systems.csv", rows_csv(rows))),
                 "solvers_json": str(atomic_write_json(out / "solvers.json", summary))}

        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6.5, 4.2))
        for c, (name, recs) in enumerate(methods.items()):
            for j, r in enumerate(recs):
                if r["history"]:
                    ax.semilogy(range(1, len(r["history"]) + 1), r["history"], color=f"C{c}", lw=0.9, alpha=0.7,
                                label=f"{name} (mean {summary[name]['iterations_mean']:.1f} its)" if j == 0 else None)
        ax.axhline(self.tol, color="k", ls=":", lw=0.8)
        ax.set_xlabel("iteration")
        ax.set_ylabel("‖r‖ / ‖b‖")
        ax.set_title(f"{len(records)} test systems, one line each", fontsize=9)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        paths["residual_curves_png"] = str(atomic_write(out / "residual_curves.png",
                                                        lambda tmp: fig.savefig(tmp, format="png", dpi=120)))
        plt.close(fig)
        return paths

    def predict_step(self, batch, batch_idx: int) -> Tensor:
        """The solutions ``(B, *grid)`` of the batch's systems (conjugate directions to ``tol``)."""
        x, _ = self.solve(self.batch_operator(batch), batch.y, record_history=False)
        return x
