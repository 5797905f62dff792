"""The README's main job, measured: ``unroll fit --config configs/alista.yaml`` then
``unroll evaluate`` on the checkpoint it wrote; prints a Markdown report for BENCHMARKS.md.

    python benchmarks/main_job.py                       # the full job (the config's step-based schedule)
    python benchmarks/main_job.py --busy 1              # the same, with one CPU-bound process competing
    python benchmarks/main_job.py --max_time 00:00:00:30  # a short, wall-clock-limited version

Runs in a scratch folder (``--workdir``, default a temporary one), so nothing in the
repository is touched. Wall time is measured around the whole ``unroll fit`` process
(start-up, data, the whole stage-wise schedule, final validation and checkpoint). The load
average before and after is printed: the machine is shared. ``--busy N`` runs N busy loops
(one core each) beside the job, to show that the step-based schedule gives the same model on a
busy machine (only slower).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from machine import cpu_name  # benchmarks/machine.py

ROOT = Path(__file__).resolve().parents[1]




def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(ROOT / "configs" / "alista.yaml"))
    parser.add_argument("--max_time", default=None, help="override trainer.max_time (DD:HH:MM:SS)")
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--busy", type=int, default=0, help="busy-loop processes to run beside the job")
    args = parser.parse_args()

    work = Path(args.workdir or tempfile.mkdtemp(prefix="unroll-main-job-"))
    work.mkdir(parents=True, exist_ok=True)
    unroll = shutil.which("unroll") or f"{sys.executable} -m unroll.train.cli"
    fit = [*unroll.split(), "fit", "--config", args.config]
    if args.max_time:
        fit.append(f"--trainer.max_time={args.max_time}")
    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(args.busy)]
    load_before = os.getloadavg()
    cpu0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(fit, cwd=work, capture_output=True, text=True)
    finally:
        wall = time.perf_counter() - t0
        load_after = os.getloadavg()
        cpu1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
        for h in hogs:
            h.kill()
            h.wait()
    if proc.returncode != 0:
        sys.exit(f"unroll fit failed:\n{proc.stderr[-4000:]}")
    run = next(line.split("run folder:", 1)[1].split("(")[0].strip() for line in proc.stdout.splitlines()
               if line.startswith("run folder:"))
    ckpt = work / run / "checkpoints" / "last.ckpt"
    steps = next((line for line in proc.stdout.splitlines() if line.startswith("trained ")), "")
    name = Path(args.config).stem

    out_dir = work / "eval"
    ev = [*unroll.split(), "evaluate", "--config", args.config, "--ckpt_path", str(ckpt), "--output_dir", str(out_dir)]
    proc = subprocess.run(ev, cwd=work, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"unroll evaluate failed:\n{proc.stderr[-4000:]}")
    curves = {k: v["nmse_db"] for k, v in json.loads((out_dir / "metrics.json").read_text()).items()}
    curves["model"] = next(v for k, v in curves.items() if k not in ("ista", "fista"))

    import torch

    print(f"## Main job: `unroll fit --config configs/{name}.yaml`" + (f" (max_time {args.max_time})" if args.max_time else ""))
    print()
    print(f"Machine: {os.cpu_count()} cores, {cpu_name()}; torch {torch.__version__}, Python {platform.python_version()}.")
    print()
    print(f"- wall time of `unroll fit` (whole process): {wall:.0f} s; load average (1 min) {load_before[0]:.2f} "
          f"before, {load_after[0]:.2f} after" + (f"; {args.busy} busy loop(s) beside it" if args.busy else ""))
    print(f"- CPU time of `unroll fit` (user + system, all its threads): {cpu:.0f} s")
    print(f"- {steps}")
    print(f"- final test NMSE on the 1000 published test signals: **{curves['model'][-1]:.2f} dB** "
          f"(FISTA at the same depth: {curves['fista'][-1]:.2f} dB, ISTA: {curves['ista'][-1]:.2f} dB; "
          f"λ = 0.1 for both)")
    print()
    print("| iteration | model | ISTA | FISTA |")
    print("|---:|---:|---:|---:|")
    for i, (m, a, f) in enumerate(zip(curves["model"], curves["ista"], curves["fista"])):
        print(f"| {i + 1} | {m:.2f} | {a:.2f} | {f:.2f} |")
    print()
    print(f"(outputs in {work})")


if __name__ == "__main__":
    main()
