"""``unroll evaluate``: checkpoints against the task's baselines on the test split, scored with
the task's metrics.

    unroll evaluate --ckpt_path CKPT [CKPT ...] --output_dir DIR [--names N ...] [--lam 0.1]
    unroll evaluate --config CONFIG [overrides] --ckpt_path CKPT [CKPT ...] --output_dir DIR

Rebuilds each checkpoint's task and data module (from the config ``unroll fit`` saved in the
checkpoint, or from ``--config``), runs it on the data module's test split through
``Trainer.test`` (which checks the checkpoint's model class and operator against the
config's), and runs the task's baselines (ISTA and FISTA by default, λ = ``--lam``) with the
same number of iterations, each batch with its own operator. All checkpoints share one test
set and one table. The task declares the metrics (NMSE (dB) per iteration by default;
PSNR, SSIM, iteration counts, any torchmetrics ``Metric``); for each metric ``KEY`` it
prints a table per iteration, and it writes ``DIR/metrics.json`` (``{"ALISTA": {"nmse_db":
[...], "per_sample_nmse_db": [...]}, ..., "ista": {...}, "fista": {...}}``, one value per
iteration, the last one being the final estimate; columns named by model class or
``--names``), ``DIR/metrics.csv`` (columns ``METHOD_KEY``), ``DIR/per_sample.csv`` and one
plot per metric (``nmse.png`` for ``nmse_db``, ``psnr.png`` for ``psnr_db``, ``ssim.png``),
each atomically.
"""

from __future__ import annotations

import csv
import io
import os
import sys
import textwrap
import warnings
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import lightning as L
import torch
from jsonargparse import ActionYesNo, ArgumentParser
from rich.console import Console
from rich.table import Table

from .checkpoint import AtomicCheckpointIO, CheckpointError, load_checkpoint, naming_file
from .io import atomic_write, atomic_write_json, atomic_write_text
from .scoring import MetricTracker, metric_label
from .unroll_cli import UnrollCLI

__all__ = ["evaluate_main", "run_baselines", "write_report", "plot_name"]

#: ``{method: {metric key: [values]}}``
Results = Dict[str, Dict[str, List[float]]]


class _EvaluateCLI(UnrollCLI):
    def add_arguments_to_parser(self, parser) -> None:
        _add_evaluate_arguments(parser)


def _add_evaluate_arguments(parser) -> None:
    parser.add_argument("--ckpt_path", type=str, nargs="+", required=True,
                        help="checkpoint(s) to evaluate; several share one table")
    parser.add_argument("--output_dir", type=str, required=True, help="folder for metrics.json/.csv and the plot")
    parser.add_argument("--lam", type=float, default=0.1, help="λ of the ISTA/FISTA baselines")
    parser.add_argument("--names", type=str, nargs="+", default=None,
                        help="column names, one per checkpoint (default: the model class names)")
    parser.add_argument("--trust_checkpoint", action=ActionYesNo, default=False,
                        help="load checkpoints that need more than plain data to unpickle (torch.load "
                             "weights_only=False): only files you made yourself, since unpickling can run code")


def _add_data_argument(parser) -> None:
    parser.add_argument("--data", type=Optional[dict], default=None,
                        help="the data section (YAML), merged over each checkpoint's own, e.g. "
                             "'{init_args: {snr_db: 30}}' or a whole '{class_path: ..., init_args: ...}'")


def run_baselines(task, datamodule, num_iters: int, lam: float,
                  trackers_out: Optional[Dict] = None) -> Tuple[Results, Results]:
    """Score each of ``task.baselines`` with ``task.metrics`` on ``datamodule``'s test split, batch
    by batch, each batch with its own operator (:meth:`ReconstructionTask.batch_operator`), on the
    CPU.

    A task with a ``make_tracker()`` method scores with the tracker it makes (e.g. the MRI
    task's per-volume fastMRI metrics) instead of a :class:`MetricTracker` of its metrics; a
    baseline with a ``prepare(task, datamodule)`` method is prepared first (e.g. its λ tuned on
    the validation split).

    Args:
        num_iters: the iteration budget (the evaluated models' depth).
        lam: ``λ`` of the baselines without their own (``--lam``).
        trackers_out: if given, filled with ``{baseline: tracker}``.

    Returns:
        ``({baseline: {key: [value per iteration]}}, {baseline: {key: [final value per sample]}})``.
    """
    task = task.to("cpu")
    make = getattr(task, "make_tracker", None)
    for b in task.baselines:
        if callable(getattr(b, "prepare", None)):
            b.prepare(task, datamodule)
    trackers = {b.name: make() if callable(make) else MetricTracker(task.metrics) for b in task.baselines}
    if trackers_out is not None:
        trackers_out.update(trackers)
    with torch.no_grad():
        for batch in datamodule.test_dataloader():
            op = task.batch_operator(batch)
            for baseline in task.baselines:
                run = baseline.run(op, batch.y, num_iters, lam)
                trackers[baseline.name].update(run.trajectory, batch.x, iterations=run.iterations, meta=batch.meta)
    return ({k: t.compute() for k, t in trackers.items()}, {k: t.per_sample() for k, t in trackers.items()})


def plot_name(key: str) -> str:
    """The plot file of metric ``key``: ``nmse_db`` → ``nmse.png``, ``ssim`` → ``ssim.png``."""
    stem = key[:-3] if key.endswith("_db") else key
    return f"{stem}.png"


def _metric_keys(results: Results) -> List[str]:
    keys: List[str] = []
    for per_metric in results.values():
        keys += [k for k in per_metric if k not in keys]
    return keys


def _write_columns_csv(path: Path, index_name: str, index_start: int, results: Results) -> str:
    columns = [(method, key) for key in _metric_keys(results) for method in results if key in results[method]]
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow([index_name, *[f"{m}_{k}" for m, k in columns]])
    rows = max(len(results[m][k]) for m, k in columns)
    for i in range(rows):
        writer.writerow([i + index_start, *[f"{results[m][k][i]:.4f}" if i < len(results[m][k]) else ""
                                            for m, k in columns]])
    return str(atomic_write_text(path, buf.getvalue()))


def write_report(results: Results, output_dir: str, title: str = "", per_sample: Optional[Results] = None,
                 labels: Optional[Dict[str, str]] = None) -> Dict[str, str]:
    """Write ``metrics.json``, ``metrics.csv`` and one plot per metric for ``{method: {key: [value
    per iteration]}}`` into ``output_dir`` (atomically), and with ``per_sample`` (``{method: {key:
    [final value per test sample]}}``) also ``per_sample.csv`` and a ``per_sample_KEY`` entry per
    method and metric in the JSON.

    Args:
        labels: ``{key: axis label}`` (default: the keys).

    Returns:
        The paths: ``json``, ``csv``, ``per_sample_csv`` (with ``per_sample``), ``png`` (the first
        metric's plot) and ``plot_KEY`` for every metric.
    """
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    labels = labels or {}
    paths = {}
    report = {m: dict(v) for m, v in results.items()}
    if per_sample and any(per_sample.values()):
        for m, v in per_sample.items():
            for key, values in v.items():
                report.setdefault(m, {})[f"per_sample_{key}"] = values
        paths["per_sample_csv"] = _write_columns_csv(out / "per_sample.csv", "sample", 0, per_sample)
    paths["json"] = str(atomic_write_json(out / "metrics.json", report))
    paths["csv"] = _write_columns_csv(out / "metrics.csv", "iteration", 1, results)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    for key in _metric_keys(results):
        fig, ax = plt.subplots(figsize=(6, 4))
        if _single_valued(results, key):  # once per run: a bar per method
            methods = [m for m in results if key in results[m]]
            values = [results[m][key][0] for m in methods]
            bars = ax.bar(range(len(methods)), values, color=[f"C{i}" for i in range(len(methods))])
            ax.bar_label(bars, fmt="%.2f", fontsize=8)
            ax.set_xticks(range(len(methods)), methods, rotation=20, ha="right", fontsize=8)
            ax.grid(True, axis="y", alpha=0.3)
        else:
            shown = _settled_rows(results, [key])
            for m, v in results.items():
                if key in v:
                    c = v[key][:max(shown, 1)]
                    ax.plot(range(1, len(c) + 1), c, marker="o" if len(c) <= 60 else None, markersize=3, label=m)
            ax.set_xlabel("iteration / layer")
            ax.grid(True, alpha=0.3)
            ax.legend()
        ax.set_ylabel(labels.get(key, key))
        if title:
            ax.set_title(textwrap.fill(title, 70), fontsize=9)
        fig.tight_layout()
        paths[f"plot_{key}"] = str(atomic_write(out / plot_name(key),
                                                lambda tmp: fig.savefig(tmp, format="png", dpi=120)))
        paths.setdefault("png", paths[f"plot_{key}"])
        plt.close(fig)
    return paths


def _single_valued(results: Results, key: str) -> bool:
    """Whether metric ``key`` has one value per method (read once per run: iterations, wall time)."""
    return all(len(v[key]) == 1 for v in results.values() if key in v)


def _settled_rows(results: Results, keys: List[str]) -> int:
    """The number of rows worth printing for the curves of ``keys``: up to the last row where any
    method's value still changes (a solver that stopped repeats its final value to the budget)."""
    last = 1
    for key in keys:
        for v in results.values():
            c = v.get(key, [])
            for i in range(len(c) - 1, 0, -1):
                if c[i] != c[i - 1]:
                    last = max(last, i + 1)
                    break
    return last


def _print_tables(results: Results, title: str, labels: Dict[str, str]) -> None:
    keys = _metric_keys(results)
    once = [k for k in keys if _single_valued(results, k)]
    if once:  # one row per method, one column per once-per-run metric
        table = Table(title=f"{title}: per run")
        table.add_column("method")
        for k in once:
            table.add_column(labels.get(k, k), justify="right")
        for m, v in results.items():
            table.add_row(m, *[f"{v[k][0]:.2f}" if k in v else "" for k in once])
        Console().print(table)
    for key in [k for k in keys if k not in once]:
        methods = [m for m in results if key in results[m]]
        table = Table(title=title if len(labels) <= 1 else f"{title}: {labels.get(key, key)}")
        table.add_column("iteration", justify="right")
        for m in methods:
            table.add_column(f"{m} {labels.get(key, key)}", justify="right")
        rows = max(len(results[m][key]) for m in methods)
        shown = _settled_rows({m: results[m] for m in methods}, [key])
        for i in range(shown):
            table.add_row(str(i + 1), *[f"{results[m][key][i]:.2f}" if i < len(results[m][key]) else ""
                                        for m in methods])
        if shown < rows:
            table.caption = f"rows {shown + 1}-{rows}: every method had stopped (metrics.csv has them)"
        Console().print(table)


def _embedded_config(ckpt_path: str, trust: bool = False) -> Dict:
    # memory-mapped: only the small metadata is read here (Trainer.test loads the weights); checked
    # (zip CRCs) and loaded as plain data (weights_only) unless trusted
    ckpt = load_checkpoint(ckpt_path, map_location="cpu", trust=trust, mmap=True)
    meta = (ckpt.get("unroll") if isinstance(ckpt, dict) else None) or {}
    cfg = meta.get("config")
    if not cfg:
        raise ValueError(f"ckpt_path: {ckpt_path!r} carries no config (it was not written by `unroll fit`); "
                         "pass the config that trained it with --config")
    return cfg


def _build(cfg: Optional[Dict], argv: Optional[List[str]]):
    """(task, datamodule, accelerator) from a checkpoint's embedded config or from ``argv``."""
    if cfg is not None:
        with warnings.catch_warnings():  # a dict of args next to `unroll evaluate`'s own command line is intended
            warnings.filterwarnings("ignore", message=".*args parameter is intended.*")
            cli = UnrollCLI(args={"model": cfg["model"], "data": cfg["data"], "trainer": {"logger": False}},
                            run=False)
        return cli.model, cli.datamodule, "cpu" if not torch.cuda.is_available() else "auto"
    cli = _EvaluateCLI(args=argv, run=False)
    return cli.model, cli.datamodule, cli.trainer.accelerator


def _test_curve(task, datamodule, ckpt_path: str, accelerator, trust: bool = False) -> Dict[str, List[float]]:
    # the checkpoint is loaded by AtomicCheckpointIO: CRC-checked, plain data only unless trusted
    trainer = L.Trainer(accelerator=accelerator, devices=1, logger=False, enable_checkpointing=False,
                        enable_model_summary=False, plugins=[AtomicCheckpointIO(trust=trust)])
    with warnings.catch_warnings():  # the training callbacks (Timer, ModelCheckpoint) are not needed to test
        warnings.filterwarnings("ignore", message=".*callbacks used to create the checkpoint.*")
        try:
            trainer.test(task, datamodule=datamodule, ckpt_path=ckpt_path, verbose=False)
        except CheckpointError as e:  # say which of the checkpoints it is
            raise naming_file(e, ckpt_path) from None
    return task.test_results


def _unique_names(names: List[str]) -> List[str]:
    out = []
    for i, n in enumerate(names):
        k = sum(1 for m in names[:i] if m == n)
        out.append(n if names.count(n) == 1 else f"{n}-{k + 1}")
    return out


def evaluate_main(argv: Optional[List[str]] = None) -> Results:
    """Run ``unroll evaluate`` with command-line arguments ``argv``; returns ``{method: {metric key:
    [value per iteration]}}``.

    With ``--config`` (and any overrides after it) that config builds the data module and the
    model for every checkpoint. Without it each checkpoint is rebuilt from the config that
    ``unroll fit`` saved in it; then all checkpoints must have been trained on the same data
    (same problem, sizes, noise and seed), since they share one test set and one table.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--config" in argv or any(a.startswith("--config=") for a in argv):
        cfg = _EvaluateCLI(args=argv, run=False).config
    else:
        parser = ArgumentParser(prog="unroll evaluate", description="Evaluate checkpoints against ISTA/FISTA")
        parser.add_argument("--config", type=Optional[str], default=None,
                            help="a config (as for unroll fit) that builds the model and data of every checkpoint; "
                                 "overrides such as --data.init_args.snr_db=30 may follow it (default: the config "
                                 "each checkpoint carries)")
        _add_evaluate_arguments(parser)
        _add_data_argument(parser)
        cfg = parser.parse_args(argv)
    ckpts = list(cfg["ckpt_path"])
    for path in ckpts:
        if not os.path.isfile(path):
            raise FileNotFoundError(f"ckpt_path: no checkpoint at {path!r}")
    if cfg["names"] is not None and len(cfg["names"]) != len(ckpts):
        raise ValueError(f"names: expected one name per checkpoint ({len(ckpts)}), got {len(cfg['names'])}")
    use_config = "config" in cfg and cfg.get("config")

    results: Results = {}
    reference = None  # (describe(), operator fingerprint) of the first checkpoint's test data
    first = None  # (task, datamodule) of the first checkpoint: its test set, metrics and baselines
    model_names = []
    per_sample: Results = {}
    trackers: Dict = {}  # {method: its tracker}, for a task's own report (write_evaluation)
    for path in ckpts:
        embedded = None
        if not use_config:
            embedded = _embedded_config(path, trust=cfg["trust_checkpoint"])
            if cfg.get("data"):
                embedded = dict(embedded, data=_merge(embedded["data"], cfg["data"]))
        task, datamodule, accelerator = _build(embedded, argv)
        results[path] = _test_curve(task, datamodule, path, accelerator, trust=cfg["trust_checkpoint"])
        per_sample[path] = task.test_per_sample
        trackers[path] = getattr(task, "_test_tracker", None)
        data_id = (datamodule.describe() if hasattr(datamodule, "describe") else None,
                   None if task.operator is None else task.operator.fingerprint())
        if reference is None:
            reference, first = data_id, (task, datamodule)
        elif data_id != reference:
            raise ValueError(f"ckpt_path: {path!r} was trained on other data ({data_id[0]}, operator {data_id[1]}) "
                             f"than {ckpts[0]!r} ({reference[0]}, operator {reference[1]}); checkpoints in one "
                             "table must share the test set: evaluate them separately")
        elif list(task.metrics) != list(first[0].metrics):
            raise ValueError(f"ckpt_path: {path!r} declares the metrics {list(task.metrics)}, {ckpts[0]!r} "
                             f"{list(first[0].metrics)}; checkpoints in one table must declare the same metrics: "
                             "evaluate them separately")
        model_names.append(type(task.model).__name__)
    names = list(cfg["names"]) if cfg["names"] is not None else _unique_names(model_names)
    results = dict(zip(names, results.values()))
    per_sample = dict(zip(names, per_sample.values()))
    trackers = dict(zip(names, trackers.values()))

    task, datamodule = first
    depth = max(len(c) for r in results.values() for c in r.values())
    base_results, base_per_sample = run_baselines(task, datamodule, depth, cfg["lam"], trackers_out=trackers)
    clash = sorted(set(base_results) & set(results))
    if clash:
        raise ValueError(f"names: {clash} name both a model and a baseline; choose other --names")
    results.update(base_results)
    per_sample.update(base_per_sample)

    labels = {k: metric_label(k, m) for k, m in task.metrics.items()}
    n_test = len(datamodule.test_dataloader().dataset)
    baselines = ", ".join(b.description(cfg["lam"]) for b in task.baselines)
    title = f"{', '.join(names)} vs {baselines or 'no baseline'} on {n_test} test samples"
    _print_tables(results, title, labels)
    _print_per_sample(per_sample, task.metrics, labels)
    paths = write_report(results, cfg["output_dir"], title, per_sample=per_sample, labels=labels)
    if callable(getattr(task, "write_evaluation", None)):  # a task's own tables and figures (MRI: panels)
        extra = task.write_evaluation(trackers, cfg["output_dir"])
        print("also: " + "  ".join(extra.values()), flush=True)
    plots = "  ".join(v for k, v in paths.items() if k.startswith("plot_"))
    print(f"metrics: {paths['json']}  {paths['csv']}  {paths.get('per_sample_csv', '')}  plots: {plots}", flush=True)
    return results


def _merge(base: Dict, override: Dict) -> Dict:
    """``override`` merged into ``base`` recursively (a new ``class_path`` replaces the section)."""
    if "class_path" in override and override["class_path"] != base.get("class_path"):
        return override
    out = dict(base)
    for k, v in override.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _print_per_sample(per_sample: Results, metrics, labels: Dict[str, str]) -> None:
    for key in _metric_keys(per_sample):
        higher = bool(getattr(metrics.get(key), "higher_is_better", False))
        note = " (all-zero signals, whose NMSE is undefined, left out)" if key.startswith("nmse") else ""
        table = Table(title=f"final {labels.get(key, key)} over the test samples{note}")
        for col in ("", "mean", "median", "worst 10 %", "worst"):
            table.add_column(col, justify="right")
        for m, v in per_sample.items():
            if key not in v:
                continue
            t = torch.tensor(v[key], dtype=torch.float64)
            t = t[~torch.isnan(t)]
            if t.numel() == 0:
                continue
            worst10 = torch.quantile(t, 0.1 if higher else 0.9)
            worst = t.min() if higher else t.max()
            table.add_row(m, f"{float(t.mean()):.2f}", f"{float(t.median()):.2f}", f"{float(worst10):.2f}",
                          f"{float(worst):.2f}")
        Console().print(table)
