"""``unroll evaluate``: a checkpoint against classical ISTA and FISTA on the test split.

    unroll evaluate --ckpt_path CKPT [CKPT ...] --output_dir DIR [--names N ...] [--lam 0.1]
    unroll evaluate --config CONFIG [overrides] --ckpt_path CKPT [CKPT ...] --output_dir DIR

Rebuilds each checkpoint's task and data module (from the config ``unroll fit`` saved in the
checkpoint, or from ``--config``), runs it on the data module's test split through
``Trainer.test`` (which checks the checkpoint's model class and operator against the
config's), and runs ISTA and FISTA with the same number of iterations. All checkpoints share
one test set and one table. Prints NMSE (dB) per iteration and writes ``DIR/metrics.json``
(``{"ALISTA": {"nmse_db": [...]}, ..., "ista": {...}, "fista": {...}}``, one value per
iteration, the last one being the final estimate; columns named by model class or
``--names``), ``DIR/metrics.csv`` and ``DIR/nmse.png``, each atomically.
"""

from __future__ import annotations

import csv
import io
import os
import sys
import warnings
from pathlib import Path
from typing import Dict, List, Optional

import lightning as L
import torch
from jsonargparse import ArgumentParser
from rich.console import Console
from rich.table import Table

from unroll import solvers
from unroll.metrics import NMSE, nmse

from .cli import UnrollCLI
from .io import atomic_write, atomic_write_json, atomic_write_text

__all__ = ["evaluate_main", "baseline_curves", "write_report"]


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


def _add_data_argument(parser) -> None:
    parser.add_argument("--data", type=Optional[dict], default=None,
                        help="the data section (YAML), merged over each checkpoint's own, e.g. "
                             "'{init_args: {snr_db: 30}}' or a whole '{class_path: ..., init_args: ...}'")


def _test_split(datamodule: L.LightningDataModule):
    ys, xs = [], []
    for batch in datamodule.test_dataloader():
        ys.append(batch.y)
        xs.append(batch.x)
    return torch.cat(ys), torch.cat(xs)


def baseline_curves(operator, y: torch.Tensor, x: torch.Tensor, num_iters: int, lam: float,
                    batch_size: int = 1000, per_sample: Optional[Dict[str, List[float]]] = None
                    ) -> Dict[str, List[float]]:
    """NMSE (dB) per iteration of ISTA and FISTA (``λ = lam``, ``num_iters`` iterations, no early
    stop) on ``y`` ``(N, m)`` against ``x`` ``(N, n)``. If ``per_sample`` is given, the final
    NMSE (dB) of every sample is stored in it under ``"ista"``/``"fista"``."""
    curves = {}
    for name, solver in (("ista", solvers.ista), ("fista", solvers.fista)):
        metric = NMSE(num_iters=num_iters)
        finals = []
        for i in range(0, y.shape[0], batch_size):
            x_hat, info = solver(operator, y[i:i + batch_size], lam, max_iter=num_iters, tol=None,
                                 return_trajectory=True)
            metric.update(info.trajectory, x[i:i + batch_size])
            finals.append(nmse(x_hat, x[i:i + batch_size], reduction="none"))
        curves[name] = [float(v) for v in metric.compute()]
        if per_sample is not None:
            per_sample[name] = [float(v) for v in torch.cat(finals)]
    return curves


def write_report(curves: Dict[str, List[float]], output_dir: str, title: str = "",
                 per_sample: Optional[Dict[str, List[float]]] = None) -> Dict[str, str]:
    """Write ``metrics.json``, ``metrics.csv`` and ``nmse.png`` for ``{method: [nmse_db per
    iteration]}`` curves into ``output_dir`` (atomically), and with ``per_sample`` (``{method:
    [final nmse_db per test sample]}``) also ``per_sample.csv`` and a ``per_sample_nmse_db``
    entry per method in the JSON; return their paths."""
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {}
    report = {k: {"nmse_db": v} for k, v in curves.items()}
    if per_sample:
        for k, v in per_sample.items():
            report.setdefault(k, {})["per_sample_nmse_db"] = v
        buf = io.StringIO()
        writer = csv.writer(buf)
        writer.writerow(["sample", *[f"{k}_nmse_db" for k in per_sample]])
        for i in range(max(len(v) for v in per_sample.values())):
            writer.writerow([i, *[f"{v[i]:.4f}" if i < len(v) else "" for v in per_sample.values()]])
        paths["per_sample_csv"] = str(atomic_write_text(out / "per_sample.csv", buf.getvalue()))
    paths["json"] = str(atomic_write_json(out / "metrics.json", report))

    buf = io.StringIO()
    writer = csv.writer(buf)
    names = list(curves)
    writer.writerow(["iteration", *[f"{k}_nmse_db" for k in names]])
    for i in range(max(len(v) for v in curves.values())):
        writer.writerow([i + 1, *[f"{curves[k][i]:.4f}" if i < len(curves[k]) else "" for k in names]])
    paths["csv"] = str(atomic_write_text(out / "metrics.csv", buf.getvalue()))

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for k in names:
        ax.plot(range(1, len(curves[k]) + 1), curves[k], marker="o", markersize=3, label=k)
    ax.set_xlabel("iteration / layer")
    ax.set_ylabel("NMSE (dB)")
    ax.grid(True, alpha=0.3)
    ax.legend()
    if title:
        ax.set_title(title)
    fig.tight_layout()
    paths["png"] = str(atomic_write(out / "nmse.png", lambda tmp: fig.savefig(tmp, format="png", dpi=120)))
    plt.close(fig)
    return paths


def _print_table(curves: Dict[str, List[float]], title: str) -> None:
    table = Table(title=title)
    table.add_column("iteration", justify="right")
    for k in curves:
        table.add_column(f"{k} NMSE (dB)", justify="right")
    for i in range(max(len(v) for v in curves.values())):
        table.add_row(str(i + 1), *[f"{curves[k][i]:.2f}" if i < len(curves[k]) else "" for k in curves])
    Console().print(table)


def _embedded_config(ckpt_path: str) -> Dict:
    # memory-mapped: only the small metadata is read here (Trainer.test loads the weights)
    meta = torch.load(ckpt_path, map_location="cpu", weights_only=False, mmap=True).get("unroll") or {}
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


def _test_curve(task, datamodule, ckpt_path: str, accelerator) -> List[float]:
    trainer = L.Trainer(accelerator=accelerator, devices=1, logger=False, enable_checkpointing=False,
                        enable_model_summary=False)
    with warnings.catch_warnings():  # the training callbacks (Timer, ModelCheckpoint) are not needed to test
        warnings.filterwarnings("ignore", message=".*callbacks used to create the checkpoint.*")
        trainer.test(task, datamodule=datamodule, ckpt_path=ckpt_path, verbose=False)
    return [float(v) for v in task.test_nmse_per_iter]


def _unique_names(names: List[str]) -> List[str]:
    out = []
    for i, n in enumerate(names):
        k = sum(1 for m in names[:i] if m == n)
        out.append(n if names.count(n) == 1 else f"{n}-{k + 1}")
    return out


def evaluate_main(argv: Optional[List[str]] = None) -> Dict[str, List[float]]:
    """Run ``unroll evaluate`` with command-line arguments ``argv``; returns the curves.

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

    curves: Dict[str, List[float]] = {}
    reference = None  # (describe(), operator fingerprint) of the first checkpoint's test data
    test_data = None
    model_names = []
    per_sample: Dict[str, List[float]] = {}
    for path in ckpts:
        embedded = None
        if not use_config:
            embedded = _embedded_config(path)
            if cfg.get("data"):
                embedded = dict(embedded, data=_merge(embedded["data"], cfg["data"]))
        task, datamodule, accelerator = _build(embedded, argv)
        curve = _test_curve(task, datamodule, path, accelerator)
        per_sample[path] = [float(v) for v in task.test_nmse_per_sample]
        data_id = (datamodule.describe() if hasattr(datamodule, "describe") else None, task.operator.fingerprint())
        if reference is None:
            reference, test_data = data_id, (_test_split(datamodule), task.operator.to("cpu"))
        elif data_id != reference:
            raise ValueError(f"ckpt_path: {path!r} was trained on other data ({data_id[0]}, operator {data_id[1]}) "
                             f"than {ckpts[0]!r} ({reference[0]}, operator {reference[1]}); checkpoints in one "
                             "table must share the test set: evaluate them separately")
        model_names.append(type(task.model).__name__)
        curves[path] = curve
    names = list(cfg["names"]) if cfg["names"] is not None else _unique_names(model_names)
    curves = dict(zip(names, curves.values()))
    per_sample = dict(zip(names, per_sample.values()))

    (y, x), op = test_data
    depth = max(len(c) for c in curves.values())
    curves.update(baseline_curves(op, y.cpu(), x.cpu(), depth, cfg["lam"], per_sample=per_sample))

    title = f"{', '.join(names)} vs ISTA/FISTA (λ={cfg['lam']:g}) on {y.shape[0]} test signals"
    _print_table(curves, title)
    _print_per_sample(per_sample)
    paths = write_report(curves, cfg["output_dir"], title, per_sample=per_sample)
    print(f"metrics: {paths['json']}  {paths['csv']}  {paths['per_sample_csv']}  plot: {paths['png']}", flush=True)
    return curves


def _merge(base: Dict, override: Dict) -> Dict:
    """``override`` merged into ``base`` recursively (a new ``class_path`` replaces the section)."""
    if "class_path" in override and override["class_path"] != base.get("class_path"):
        return override
    out = dict(base)
    for k, v in override.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _print_per_sample(per_sample: Dict[str, List[float]]) -> None:
    table = Table(title="final NMSE (dB) over the test samples (all-zero signals, whose NMSE is undefined, left out)")
    for col in ("", "mean of dB", "median", "90th percentile", "worst"):
        table.add_column(col, justify="right")
    for k, v in per_sample.items():
        t = torch.tensor(v, dtype=torch.float64)
        t = t[~torch.isnan(t)]
        if t.numel() == 0:
            continue
        table.add_row(k, f"{float(t.mean()):.2f}", f"{float(t.median()):.2f}",
                      f"{float(torch.quantile(t, 0.9)):.2f}", f"{float(t.max()):.2f}")
    Console().print(table)
