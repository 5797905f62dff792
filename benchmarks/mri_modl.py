"""MoDL on the built-in brain data at 4×, measured: ``unroll fit --config configs/modl.yaml`` then
``unroll evaluate`` on its best checkpoint (by validation SSIM), which also scores zero-filled
SENSE and RSS and wavelet compressed sensing (λ tuned on the validation split) on the test split
with fastMRI's per-volume metrics. Prints a Markdown report for BENCHMARKS.md and writes
``benchmarks/results/mri_modl.json`` and a panel ``benchmarks/figures/mri_modl_panel.png``.

    python benchmarks/mri_modl.py                      # the config as it is
    python benchmarks/mri_modl.py --threads 2          # torch intra-op threads of the runs (default 1)
    python benchmarks/mri_modl.py --max_steps 20       # a short smoke run

Runs in a scratch folder (``--workdir``, default a temporary one). Wall time is measured around
the whole ``unroll fit`` process (start-up, writing the built-in files, training, validations,
checkpoints). On a machine shared with other jobs, one intra-op thread per process is much
faster than two (OpenMP threads that wait for each other on preempted cores); the thread count
and the load average are printed with the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from machine import cpu_name  # benchmarks/machine.py

ROOT = Path(__file__).resolve().parents[1]
METHODS = [("zero_filled_rss", "zero-filled (RSS)"), ("zero_filled", "zero-filled (SENSE)"),
           ("cs_wavelet", "CS, Haar wavelet ℓ1 (FISTA, λ tuned on val)"), ("MoDL", "MoDL")]


def _run(cmd, cwd, env):
    cpu0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    cpu1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd[:3])} failed:\n{proc.stderr[-4000:]}")
    return proc, wall, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(ROOT / "configs" / "modl.yaml"))
    parser.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS of the runs")
    parser.add_argument("--max_steps", type=int, default=None, help="override trainer.max_steps")
    parser.add_argument("--workdir", default=None)
    args = parser.parse_args()

    work = Path(args.workdir or tempfile.mkdtemp(prefix="unroll-mri-modl-"))
    work.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    unroll = shutil.which("unroll") or f"{sys.executable} -m unroll.train.cli"
    fit = [*unroll.split(), "fit", "--config", args.config]
    if args.max_steps is not None:
        fit.append(f"--trainer.max_steps={args.max_steps}")
    load_before = os.getloadavg()
    proc, wall, cpu = _run(fit, work, env)
    load_after = os.getloadavg()
    run = next(line.split("run folder:", 1)[1].split("(")[0].strip() for line in proc.stdout.splitlines()
               if line.startswith("run folder:"))
    ckpts = work / run / "checkpoints"
    best = sorted(ckpts.glob("best-*.ckpt"))
    ckpt = best[-1] if best else ckpts / "last.ckpt"
    trained = next((line for line in proc.stdout.splitlines() if line.startswith("trained ")), "")

    out_dir = work / "eval"
    ev = [*unroll.split(), "evaluate", "--ckpt_path", str(ckpt), "--output_dir", str(out_dir)]
    _, ev_wall, _ = _run(ev, work, env)
    report = json.loads((out_dir / "metrics.json").read_text())
    volumes = json.loads((out_dir / "per_volume.json").read_text())
    tuned_path = out_dir / "baselines.json"
    tuned = json.loads(tuned_path.read_text()) if tuned_path.exists() else {}

    import torch

    results = {"config": os.path.relpath(args.config, ROOT), "threads": args.threads, "fit_wall_s": wall,
               "fit_cpu_s": cpu, "evaluate_wall_s": ev_wall, "load_before": load_before, "load_after": load_after,
               "trained": trained, "checkpoint": ckpt.name,
               "metrics": {m: {k: report[m][k][-1] for k in ("nmse", "psnr", "ssim")}
                           for m, _ in METHODS if m in report},
               "per_volume": volumes, "tuned": tuned, "cpu": cpu_name(), "torch": torch.__version__}
    (ROOT / "benchmarks" / "results").mkdir(parents=True, exist_ok=True)
    (ROOT / "benchmarks" / "results" / "mri_modl.json").write_text(json.dumps(results, indent=1))
    panels = sorted((out_dir / "panels").glob("*.png"))
    if panels:
        (ROOT / "benchmarks" / "figures").mkdir(parents=True, exist_ok=True)
        shutil.copy(panels[0], ROOT / "benchmarks" / "figures" / "mri_modl_panel.png")

    name = Path(args.config).stem
    print(f"## MoDL on the built-in brain data at 4×: `unroll fit --config configs/{name}.yaml`"
          + (f" (max_steps {args.max_steps})" if args.max_steps is not None else ""))
    print()
    print(f"Machine: {os.cpu_count()} cores, {cpu_name()}; torch {torch.__version__}, Python "
          f"{platform.python_version()}; OMP_NUM_THREADS={args.threads}.")
    print()
    print(f"- wall time of `unroll fit` (whole process): {wall:.0f} s; CPU time {cpu:.0f} s; load average (1 min) "
          f"{load_before[0]:.2f} before, {load_after[0]:.2f} after")
    print(f"- {trained}; evaluated checkpoint `{ckpt.name}`; `unroll evaluate` took {ev_wall:.0f} s")
    print()
    print("| method | SSIM | PSNR (dB) | NMSE |")
    print("|---|---:|---:|---:|")
    for key, label in METHODS:
        if key in report:
            m = results["metrics"][key]
            lam = f" (λ = {tuned[key]['lam']:g})" if key in tuned else ""
            print(f"| {label}{lam} | {m['ssim']:.4f} | {m['psnr']:.2f} | {m['nmse']:.4f} |")
    print()
    print(f"(outputs in {work})")


if __name__ == "__main__":
    main()
