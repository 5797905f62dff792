"""``unroll evaluate``: a checkpoint against classical ISTA and FISTA on the test split.

    unroll evaluate --config CONFIG --ckpt_path CKPT --output_dir DIR [--lam 0.1]

Builds the task and data module from the same config used for training, runs the
checkpoint on the data module's test split through ``Trainer.test`` (which checks the
checkpoint's model class and operator against the config's), and runs ISTA and FISTA with
the same number of iterations. Prints a table of NMSE (dB) per iteration and writes
``DIR/metrics.json`` (``{"model": {"nmse_db": [...]}, "ista": {...}, "fista": {...}}``, one
value per iteration, the last one being the final estimate), ``DIR/metrics.csv`` and
``DIR/nmse.png``, each atomically.
"""

from __future__ import annotations

import csv
import io
import os
import warnings
from pathlib import Path
from typing import Dict, List, Optional

import lightning as L
import torch
from rich.console import Console
from rich.table import Table

from unroll import solvers
from unroll.metrics import NMSE

from .cli import UnrollCLI
from .io import atomic_write, atomic_write_json, atomic_write_text

__all__ = ["evaluate_main", "baseline_curves", "write_report"]


class _EvaluateCLI(UnrollCLI):
    def add_arguments_to_parser(self, parser) -> None:
        parser.add_argument("--ckpt_path", type=str, required=True, help="checkpoint to evaluate")
        parser.add_argument("--output_dir", type=str, required=True, help="folder for metrics.json/.csv and the plot")
        parser.add_argument("--lam", type=float, default=0.1, help="λ of the ISTA/FISTA baselines")


def _test_split(datamodule: L.LightningDataModule):
    ys, xs = [], []
    for batch in datamodule.test_dataloader():
        ys.append(batch.y)
        xs.append(batch.x)
    return torch.cat(ys), torch.cat(xs)


def baseline_curves(operator, y: torch.Tensor, x: torch.Tensor, num_iters: int, lam: float,
                    batch_size: int = 1000) -> Dict[str, List[float]]:
    """NMSE (dB) per iteration of ISTA and FISTA (``λ = lam``, ``num_iters`` iterations, no early
    stop) on ``y`` ``(N, m)`` against ``x`` ``(N, n)``."""
    curves = {}
    for name, solver in (("ista", solvers.ista), ("fista", solvers.fista)):
        metric = NMSE(num_iters=num_iters)
        for i in range(0, y.shape[0], batch_size):
            _, info = solver(operator, y[i:i + batch_size], lam, max_iter=num_iters, tol=None,
                             return_trajectory=True)
            metric.update(info.trajectory, x[i:i + batch_size])
        curves[name] = [float(v) for v in metric.compute()]
    return curves


def write_report(curves: Dict[str, List[float]], output_dir: str, title: str = "") -> Dict[str, str]:
    """Write ``metrics.json``, ``metrics.csv`` and ``nmse.png`` for ``{method: [nmse_db per
    iteration]}`` curves into ``output_dir`` (atomically); return their paths."""
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {}
    paths["json"] = str(atomic_write_json(out / "metrics.json", {k: {"nmse_db": v} for k, v in curves.items()}))

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


def evaluate_main(argv: Optional[List[str]] = None) -> Dict[str, List[float]]:
    """Run ``unroll evaluate`` with command-line arguments ``argv``; returns the curves."""
    cli = _EvaluateCLI(args=argv, run=False)
    cfg = cli.config
    ckpt_path = cfg["ckpt_path"]
    if not os.path.isfile(ckpt_path):
        raise FileNotFoundError(f"ckpt_path: no checkpoint at {ckpt_path!r}")
    task, datamodule = cli.model, cli.datamodule

    trainer = L.Trainer(accelerator=cli.trainer.accelerator, devices=1, logger=False,
                        enable_checkpointing=False, enable_model_summary=False)
    with warnings.catch_warnings():  # the training callbacks (Timer, ModelCheckpoint) are not needed to test
        warnings.filterwarnings("ignore", message=".*callbacks used to create the checkpoint.*")
        trainer.test(task, datamodule=datamodule, ckpt_path=ckpt_path, verbose=False)
    model_curve = [float(v) for v in task.test_nmse_per_iter]

    y, x = _test_split(datamodule)
    op = task.operator.to("cpu")
    curves = {"model": model_curve}
    curves.update(baseline_curves(op, y.cpu(), x.cpu(), len(model_curve), cfg["lam"]))

    name = type(task.model).__name__
    title = f"{name} vs ISTA/FISTA (λ={cfg['lam']:g}) on {y.shape[0]} test signals"
    _print_table(curves, title)
    paths = write_report(curves, cfg["output_dir"], title)
    print(f"metrics: {paths['json']}  {paths['csv']}  plot: {paths['png']}", flush=True)
    return curves
