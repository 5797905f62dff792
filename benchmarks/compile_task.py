"""What `--model.init_args.compile=true` gives a user: the training step and inference, eager vs compiled.

    python benchmarks/compile_task.py                          # learned_ista.yaml and alista.yaml
    python benchmarks/compile_task.py --rounds 10 --configs alista   # shorter

For each config, two tasks (``compile: false`` and ``compile: true``), their models and the data
module are built from the YAML exactly as `unroll fit` builds them (LightningCLI), at full depth
(K = 16, batch 64, the standard 250×500 problem). One training step is what Lightning calls:
``task.training_step(batch)`` + backward + the config's Adam (``foreach=True``) step. Timed: the
median over ``--rounds`` rounds of ``--steps`` steps, the rounds alternating between eager and
compiled in one process (the machine is shared: ratios within a run are what count); the first
steps (warm-up, holding the compilation) are timed separately. Inference: the full-depth model
on the 1000 validation signals, under ``no_grad``, alternating the same way.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
import warnings
from pathlib import Path

import torch

from machine import cpu_name  # benchmarks/machine.py (scripts run from this folder)
from unroll.train.cli import UnrollCLI, _quiet

ROOT = Path(__file__).resolve().parents[1]


def build(config: str, compiled: bool):
    cli = UnrollCLI(args=["--config", str(ROOT / "configs" / f"{config}.yaml"),
                          f"--model.init_args.compile={str(compiled).lower()}"], run=False)
    task, dm = cli.model, cli.datamodule
    dm.setup("fit")
    task.bind(dm.get_operator())
    opt = task.configure_optimizers()
    opt = opt["optimizer"] if isinstance(opt, dict) else opt
    return task, dm, opt


def step(task, opt, batch) -> None:
    opt.zero_grad(set_to_none=True)
    task.training_step(batch, 0).backward()
    opt.step()


def measure(config: str, rounds: int, steps: int, warmup: int):
    variants = {c: build(config, c) for c in (False, True)}
    batches = [b for _, b in zip(range(steps), variants[False][1].train_dataloader())]
    y_val = torch.cat([b.y for b in variants[False][1].val_dataloader()])
    warm = {}
    for c, (task, _, opt) in variants.items():
        t0 = time.perf_counter()
        for i in range(warmup):
            step(task, opt, batches[i % len(batches)])
        with torch.no_grad():
            task(y_val)
        warm[c] = time.perf_counter() - t0
    times = {False: [], True: []}
    infer = {False: [], True: []}
    for _ in range(rounds):
        for c, (task, _, opt) in variants.items():
            t0 = time.perf_counter()
            for b in batches:
                step(task, opt, b)
            times[c].append((time.perf_counter() - t0) / len(batches))
            t0 = time.perf_counter()
            with torch.no_grad():
                task(y_val)
            infer[c].append(time.perf_counter() - t0)
    return {c: (statistics.median(times[c]), warm[c], statistics.median(infer[c])) for c in (False, True)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--configs", nargs="+", default=["learned_ista", "alista"])
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--rounds", type=int, default=30)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    _quiet()
    warnings.filterwarnings("ignore")
    import logging

    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    load = os.getloadavg()[0]
    warnings.filterwarnings("ignore", message=".*self.log.*")  # no Trainer attached: logging is skipped
    rows = [(config, measure(config, args.rounds, args.steps, args.warmup)) for config in args.configs]
    print(f"Machine: {os.cpu_count()} cores ({args.threads} threads used), {cpu_name()}; torch {torch.__version__}; "
          f"load average {load:.2f} at the start, {os.getloadavg()[0]:.2f} at the end")
    print(f"median of {args.rounds} rounds of {args.steps} steps per variant, alternating; warm-up {args.warmup} steps "
          "and one inference (with the compilation)\n")
    print("| config (model, K=16, batch 64) | eager step (ms) | compiled step (ms) | training speed-up | "
          "warm-up eager / compiled (s) | inference 1000 signals eager / compiled (ms) | inference speed-up |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for config, med in rows:
        e, c = med[False], med[True]
        print(f"| `{config}.yaml` | {e[0] * 1e3:.2f} | {c[0] * 1e3:.2f} | **{e[0] / c[0]:.2f}×** | {e[1]:.1f} / {c[1]:.1f} "
              f"| {e[2] * 1e3:.1f} / {c[2] * 1e3:.1f} | {e[2] / c[2]:.2f}× |")


if __name__ == "__main__":
    main()
