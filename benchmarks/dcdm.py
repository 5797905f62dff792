"""Learned conjugate directions (DCDM) against CG, Jacobi-PCG and IC-PCG on 3-D Poisson systems.

1. Train ``configs/dcdm_poisson.yaml`` at 32³ through the CLI for a budget of CPU time
   (``--train-minutes``, ``--clock wall`` for the wall clock; the config's data: one empty training domain and one with spheres,
   1000 Lanczos vectors each), unless ``--ckpt`` names a checkpoint.
2. Solve fresh systems to ‖r‖/‖b‖ ≤ 1e-4 at 32³ and 64³, without obstacles and with obstacles of
   shapes not seen in training (boxes and random blobs), one system at a time (B = 1): iterations
   and wall time per system for CG, Jacobi-PCG, IC-PCG (solve time; the IC(0) factorisation is
   reported apart) and DCDM (``conjugate_directions``, the network trained at 32³ only).
   Right-hand sides as in training (Ritz vectors, low half ×9), from ``--eval-lanczos`` Lanczos
   steps per evaluation domain.

Results go to ``benchmarks/results/dcdm.json`` after every case (a run cut short keeps what it
did). Run (about an hour on a loaded 2-core machine)::

    nice -n 5 python benchmarks/dcdm.py --train-minutes 15
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def train(minutes: float, root: Path, extra=(), clock: str = "cpu") -> Path:
    """Train ``configs/dcdm_poisson.yaml`` for ``minutes`` of training time: CPU time of this
    process (``unroll.train.CPUTimer``: a loaded machine slows the run, it does not shorten its
    training) or, with ``clock="wall"``, ``trainer.max_time``. Data generation is not counted."""
    from unroll.train.cli import UnrollCLI

    budget = f"00:00:{int(minutes):02d}:{int(round((minutes % 1) * 60)):02d}"
    timer = (["--trainer.callbacks+=unroll.train.CPUTimer", f"--trainer.callbacks.init_args.duration={budget}"]
             if clock == "cpu" else [f"--trainer.max_time={budget}"])
    args = ["fit", "--config", str(ROOT / "configs" / "dcdm_poisson.yaml"),
            f"--trainer.default_root_dir={root}", "--trainer.enable_progress_bar=false",
            "--trainer.max_steps=100000", "--trainer.accelerator=cpu",
            f"--data.init_args.cache={root / 'dcdm_poisson_32.h5'}",
            "--data.init_args.test_lanczos_vectors=200", *extra, *timer]  # the timer last: extra's init_args are not its
    cli = UnrollCLI(args=args)
    best = cli.trainer.checkpoint_callback.best_model_path  # the config's first checkpoint: fewest val/iterations
    ckpt = Path(best) if best else Path(cli.trainer.log_dir) / "checkpoints" / "last.ckpt"
    print(f"trained {cli.trainer.global_step} steps; checkpoint {ckpt}", flush=True)
    return ckpt


def validation_curve(metrics_csv: Path, out_png: Path, label: str = "") -> list:
    """``val/loss``, ``val/iterations`` and ``val/fallbacks`` against the step, from a run's
    CSVLogger ``metrics.csv``; plotted to ``out_png``. Returns the rows ``[step, loss, iterations,
    fallbacks]``."""
    import csv

    rows = []
    with open(metrics_csv) as fh:
        for r in csv.DictReader(fh):
            if r.get("val/iterations"):
                rows.append([int(r["step"]) + 1, float(r["val/loss"]), float(r["val/iterations"]),
                             float(r["val/fallbacks"])])
    if not rows:
        return rows
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [r[0] for r in rows]
    fig, ax = plt.subplots(figsize=(6, 3.2))
    ax.plot(steps, [r[2] for r in rows], "o-", label="val/iterations (solver, to 1e-4)")
    ax.plot(steps, [r[3] for r in rows], "s--", label="val/fallbacks (CG steps)")
    ax.set_xlabel("training step")
    ax.set_ylabel("per system")
    ax2 = ax.twinx()
    ax2.plot(steps, [r[1] for r in rows], "k:", label="val/loss (right)")
    ax2.set_ylabel("scale-invariant loss")
    lines = ax.get_legend_handles_labels()
    lines2 = ax2.get_legend_handles_labels()
    ax.legend(lines[0] + lines2[0], lines[1] + lines2[1], fontsize=7, loc="upper left")
    ax.set_title(f"DCDM validation, 32³ training domains {label}".strip(), fontsize=9)
    fig.tight_layout()
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=110)
    plt.close(fig)
    return rows


def growth_plot(paths, out_png: Path) -> None:
    """Mean iterations against the grid size (log–log), one panel per obstacle case: CG and
    IC-PCG (from the first results JSON), and DCDM alone and multilevel for every JSON (given as
    ``LABEL=PATH`` or ``PATH``, then named by its file). A count that does not grow with the
    grid is a flat line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = []
    for p in paths:  # PATH or LABEL=PATH
        label, _, path = p.rpartition("=")
        runs.append((label or Path(path).stem, json.loads(Path(path).read_text())))
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6), sharey=True)
    for ax, obstacles in zip(axes, ("no obstacles", "obstacles (box+blobs)")):
        def curve(res, method):
            pts = [(int(k.split("^")[0]), _mean(r[method]["iterations"])) for k, r in res["cases"].items()
                   if k.endswith(obstacles) and method in r]
            return [p for p in pts if p[1] is not None]

        for method, style in (("CG", "k-o"), ("IC-PCG", "k--s")):
            pts = curve(runs[0][1], method)
            ax.plot([p[0] for p in pts], [p[1] for p in pts], style, label=method)
        for i, (name, res) in enumerate(runs):
            color = f"C{i}"
            for method, style in (("DCDM", ":^"), ("DCDM multilevel", "-D")):
                pts = curve(res, method)
                if pts:
                    ax.plot([p[0] for p in pts], [p[1] for p in pts], style, color=color,
                            label=f"{name}: {'alone' if method == 'DCDM' else 'multilevel'}")
        ax.set_xscale("log", base=2)
        ax.set_xticks([32, 64, 128], ["32", "64", "128"])
        ax.set_yscale("log")
        ax.set_xlabel("grid n (n³ cells)")
        ax.set_title(obstacles, fontsize=9)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_ylabel("mean iterations to 1e-4")
    axes[1].legend(fontsize=6, loc="center left", bbox_to_anchor=(1.0, 0.5))
    fig.suptitle("DCDM trained at 32³ only: iterations against grid size", fontsize=10)
    fig.tight_layout()
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=110)
    plt.close(fig)


def systems(n: int, obstacles: bool, count: int, m: int, seed: int, rhs: str = "ritz"):
    from unroll.data.poisson import _laplacian, _start_vector, lanczos, obstacle_mask, ritz_rhs

    g = torch.Generator().manual_seed(seed)
    grid = (n, n, n)
    if obstacles:  # two boxes and two blobs: shapes the network never saw
        mask = obstacle_mask(grid, "box", 2, g) & obstacle_mask(grid, "blobs", 2, g)
        from unroll.data.poisson import _fill_enclosed
        mask = _fill_enclosed(mask)
    else:
        mask = obstacle_mask(grid, "none", 1, g)
    A = _laplacian(grid, mask)
    if rhs == "noise":  # white noise on the fluid cells: not the training distribution
        b = torch.randn(count, *grid, generator=g) * mask
        return A, b / b.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
    _, V = lanczos(A, m, _start_vector(mask, g))
    return A, ritz_rhs(V, count, g, dtype=torch.float32)


def _timed(B, solve, fallbacks: bool = True) -> dict:
    """``solve(b[None]) → (x, info)`` on each system of ``B`` in turn: iterations (``None`` where it
    did not converge), seconds and, for conjugate directions, fallbacks per system."""
    its, secs, fb = [], [], []
    for b in B:
        t = time.perf_counter()
        _, info = solve(b[None])
        secs.append(time.perf_counter() - t)
        its.append(int(info.iterations[0]) if info.status == "converged" else None)
        if fallbacks:
            fb.append(int(info.fallbacks[0]))
    return {"iterations": its, "seconds": secs, **({"fallbacks": fb} if fallbacks else {})}


def solve_all(task, A, B, max_iter: int, pure: bool = False, multilevel: int = 0):
    import unroll
    from unroll.preconditioners import IncompleteCholesky, JacobiPreconditioner

    t0 = time.perf_counter()
    ic = IncompleteCholesky(A)
    ic_setup = time.perf_counter() - t0
    out = {name: _timed(B, lambda b, M=M: unroll.cg(A, b, M=M, tol=1e-4, max_iter=max_iter, check_every=1), False)
           for name, M in {"CG": None, "Jacobi-PCG": JacobiPreconditioner(A), "IC-PCG": ic}.items()}
    out["IC-PCG"]["setup_seconds"] = ic_setup

    def dcdm(direction, **kw):
        return lambda b: unroll.conjugate_directions(A, b, direction=direction, tol=1e-4, max_iter=max_iter, **kw)

    out["DCDM"] = _timed(B, dcdm(task.model))
    if multilevel:  # the same network, as its own coarse-grid solve on grids finer than `multilevel`
        from unroll.models import MultilevelDirection

        ml = MultilevelDirection(task.model, coarsest=multilevel)
        out["DCDM multilevel"] = {**_timed(B, dcdm(ml)), "coarsest": multilevel, "levels": ml.levels(tuple(A.shape))}
    if pure:  # the paper's method: every finite network direction is kept (safeguard 0)
        out["DCDM (safeguard 0)"] = _timed(B, dcdm(task.model, safeguard=0.0, on_failure="ignore"), False)
    return out


def _mean(values):
    vals = [v for v in values if v is not None]
    if len(vals) < len(values):
        return None  # some system did not reach the tolerance
    return sum(vals) / len(vals)


def report(results) -> str:
    """The Markdown tables of a results dict (iterations; wall time per system; ratios)."""
    methods = ["CG", "Jacobi-PCG", "IC-PCG", "DCDM"]
    fmt = lambda v, d=1: "not reached" if v is None else f"{v:.{d}f}"  # noqa: E731
    times = lambda q: f"{q:.0f}×" if q >= 10 else f"{q:.2g}×"  # noqa: E731  (0.55×, 1.1×, 9×, 26×)
    lines = ["| case | systems | " + " | ".join(methods) + " | DCDM fallbacks | CG / DCDM | IC-PCG / DCDM |",
             "|---|---|" + "---|" * (len(methods) + 3)]
    for key, r in results["cases"].items():
        its = {m: _mean(r[m]["iterations"]) for m in methods}
        ratio = lambda a, b: "—" if a is None or b in (None, 0) else f"{a / b:.2f}×"  # noqa: E731
        fb = sum(r["DCDM"]["fallbacks"]) / len(r["DCDM"]["fallbacks"])
        lines.append(f"| {key} | {len(r['CG']['iterations'])} | " + " | ".join(fmt(its[m]) for m in methods)
                     + f" | {fb:.1f} | {ratio(its['CG'], its['DCDM'])} | {ratio(its['IC-PCG'], its['DCDM'])} |")
    lines += ["", "| case | " + " | ".join(f"{m} ms" for m in methods) + " | IC(0) set-up ms | DCDM / CG time "
              "| DCDM / IC-PCG time |", "|---|" + "---|" * (len(methods) + 3)]
    for key, r in results["cases"].items():
        ms = {m: 1000 * sum(r[m]["seconds"]) / len(r[m]["seconds"]) for m in methods}
        lines.append(f"| {key} | " + " | ".join(f"{ms[m]:.0f}" for m in methods)
                     + f" | {1000 * r['IC-PCG']['setup_seconds']:.0f} | {times(ms['DCDM'] / ms['CG'])} "
                     f"| {times(ms['DCDM'] / ms['IC-PCG'])} |")
    multi = [(k, r) for k, r in results["cases"].items() if "DCDM multilevel" in r]
    if multi:
        lines += ["", "| case | grids | DCDM | DCDM multilevel | fallbacks | CG / multilevel | IC-PCG / multilevel "
                  "| multilevel ms | multilevel / CG time | multilevel / IC-PCG time |", "|---|" + "---|" * 9]
        for key, r in multi:
            m = r["DCDM multilevel"]
            its = {k: _mean(r[k]["iterations"]) for k in ("CG", "IC-PCG", "DCDM", "DCDM multilevel")}
            ms = {k: 1000 * sum(r[k]["seconds"]) / len(r[k]["seconds"])
                  for k in ("CG", "IC-PCG", "DCDM multilevel")}
            ratio = lambda a, b: "—" if a is None or b in (None, 0) else f"{a / b:.2f}×"  # noqa: E731
            lines.append(f"| {key} | {m['levels']} | {fmt(its['DCDM'])} | {fmt(its['DCDM multilevel'])} "
                         f"| {sum(m['fallbacks']) / len(m['fallbacks']):.1f} "
                         f"| {ratio(its['CG'], its['DCDM multilevel'])} "
                         f"| {ratio(its['IC-PCG'], its['DCDM multilevel'])} "
                         f"| {ms['DCDM multilevel']:.0f} | {times(ms['DCDM multilevel'] / ms['CG'])} "
                         f"| {times(ms['DCDM multilevel'] / ms['IC-PCG'])} |")
    pure = [(k, r["DCDM (safeguard 0)"]) for k, r in results["cases"].items() if "DCDM (safeguard 0)" in r]
    if pure:
        lines += ["", "| case | DCDM iterations, safeguard 1 (default) | DCDM iterations, safeguard 0 (paper) |",
                  "|---|---|---|"]
        for key, p in pure:
            lines.append(f"| {key} | {fmt(_mean(results['cases'][key]['DCDM']['iterations']))} "
                         f"| {fmt(_mean(p['iterations']))} |")
    return "\n".join(lines)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--train-minutes", type=float, default=15.0, help="training budget, minutes of --clock")
    p.add_argument("--clock", choices=["cpu", "wall"], default="cpu",
                   help="what --train-minutes counts: this process's CPU time (default) or the wall clock")
    p.add_argument("--ckpt", type=str, default=None, help="skip training: evaluate this checkpoint")
    p.add_argument("--sizes", type=int, nargs="+", default=[32, 64])
    p.add_argument("--systems", type=int, nargs="+", default=[2, 1], help="systems per case, one per size")
    p.add_argument("--eval-lanczos", type=int, default=200)
    p.add_argument("--max-iter", type=int, default=400)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--pure-sizes", type=int, nargs="*", default=[32],
                   help="sizes where DCDM also runs with safeguard 0")
    p.add_argument("--root", type=str, default=str(ROOT / "benchmarks" / "runs"), help="runs and data cache")
    p.add_argument("--extra", type=str, action="append", default=[],
                   help="one more `unroll fit` override, as --extra=--data.init_args.grid=[8,8,8] (repeatable)")
    p.add_argument("--out", type=str, default=str(ROOT / "benchmarks" / "results" / "dcdm.json"))
    p.add_argument("--same-geometry", action="store_true",
                   help="the same obstacles (in fractions of the grid) at every size, not a new draw per size")
    p.add_argument("--seed", type=int, default=1000,
                   help="base seed of the evaluation systems (obstacles and right-hand sides); the default is the one "
                        "of every table in BENCHMARKS.md, another one gives systems no choice was made on")
    p.add_argument("--rhs", choices=["ritz", "noise"], default="ritz",
                   help="right-hand sides: as in training (Ritz vectors) or white noise on the fluid cells")
    p.add_argument("--multilevel", type=int, default=0, metavar="N",
                   help="also solve with unroll.models.MultilevelDirection(network, coarsest=N): on grids of 2N "
                        "and more the network is its own coarse-grid solve (N: the training grid, 32)")
    p.add_argument("--report-only", type=str, default=None, help="print the tables of a results JSON and stop")
    p.add_argument("--plot-validation", type=str, nargs=2, metavar=("METRICS_CSV", "PNG"), default=None,
                   help="plot a run's validation curve (loss, iterations, fallbacks) and stop")
    p.add_argument("--plot-growth", type=str, nargs="+", metavar=("PNG", "RESULTS_JSON"), default=None,
                   help="plot iterations against grid size from results JSONs ([LABEL=]PATH; the first argument is "
                        "the PNG) and stop")
    a = p.parse_args(argv)
    if a.plot_growth:
        growth_plot(a.plot_growth[1:], Path(a.plot_growth[0]))
        return
    if a.plot_validation:
        for row in validation_curve(Path(a.plot_validation[0]), Path(a.plot_validation[1])):
            print(row)
        return
    if a.report_only:
        print(report(json.loads(Path(a.report_only).read_text())))
        return
    torch.set_num_threads(a.threads)
    root = Path(a.root)
    t0 = time.perf_counter()
    ckpt = Path(a.ckpt) if a.ckpt else train(a.train_minutes, root, a.extra, a.clock)
    train_seconds = None if a.ckpt else time.perf_counter() - t0  # no training when a checkpoint is given
    curve = []
    if not a.ckpt:  # the run's validation curve, next to the results
        curve = validation_curve(ckpt.parent.parent / "metrics.csv", Path(a.out).with_suffix(".png"))
    from unroll.train import DCDMTask

    task = DCDMTask.load_from_checkpoint(str(ckpt))
    task.eval()
    from unroll.train import load_checkpoint

    steps = int(load_checkpoint(ckpt, map_location="cpu")["global_step"])  # CRC-checked, plain data only
    # the command as run (its arguments); how the process was pinned (taskset, OMP_NUM_THREADS) is
    # recorded by the threads field and the environment below, not guessed
    results = {"command": "python benchmarks/dcdm.py " + " ".join(sys.argv[1:] if argv is None else argv),
               "environment": {k: os.environ[k] for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS") if k in os.environ},
               "checkpoint": str(ckpt), "train_steps": steps, "train_seconds_incl_data": train_seconds,
               "train_budget": None if a.ckpt else {"minutes": a.train_minutes, "clock": a.clock},
               "threads": a.threads, "tol": 1e-4, "multilevel": a.multilevel, "seed": a.seed, "rhs": a.rhs,
               "same_geometry": a.same_geometry,
               "eval_lanczos": a.eval_lanczos,
               "validation": [dict(zip(("step", "loss", "iterations", "fallbacks"), r)) for r in curve], "cases": {}}
    for n, count in zip(a.sizes, a.systems):
        for obstacles in (False, True):
            key = f"{n}^3 {'obstacles (box+blobs)' if obstacles else 'no obstacles'}"
            # --same-geometry: the same draws at every size, so the obstacles (placed and sized in
            # fractions of the grid) are one domain seen at two resolutions, and growth measures resolution
            seed = a.seed + int(obstacles) + (0 if a.same_geometry else n)
            A, B = systems(n, obstacles, count, a.eval_lanczos, seed=seed, rhs=a.rhs)
            results["cases"][key] = solve_all(task, A, B, a.max_iter, pure=n in a.pure_sizes, multilevel=a.multilevel)
            print(key, json.dumps(results["cases"][key]), flush=True)
            Path(a.out).parent.mkdir(parents=True, exist_ok=True)
            tmp = a.out + ".tmp"
            Path(tmp).write_text(json.dumps(results, indent=1))
            os.replace(tmp, a.out)
    print(report(results))
    print(f"results: {a.out}")


if __name__ == "__main__":
    main()
