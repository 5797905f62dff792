"""What `--model.init_args.compile=true` gives a user: training steps per second through Lightning.

    python benchmarks/compile_task.py                      # learned_ista.yaml and alista.yaml, 300 timed steps
    python benchmarks/compile_task.py --steps 100 --rounds 1   # shorter

For each config, the task, model and data module are built from the YAML exactly as `unroll fit`
builds them (LightningCLI, `--model.init_args.compile=false|true`), and trained by a Lightning
Trainer for ``--warmup`` + ``--steps`` steps without validation, checkpoints or progress bar.
Reported: the median time of the timed steps (each step measured from one batch end to the
next: data, forward, backward, Adam and Lightning's loop), the time of the warm-up steps (which
holds the compilation), and the inference time of the full-depth model on the 1000 validation
signals. Eager and compiled runs alternate over ``--rounds`` rounds (the machine is shared: the
ratios within a run are what count); the load average is printed.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
import warnings
from pathlib import Path

import lightning as L
import torch

from machine import cpu_name  # benchmarks/machine.py (scripts run from this folder)
from unroll.train.cli import UnrollCLI, _quiet

ROOT = Path(__file__).resolve().parents[1]


class StepTimer(L.Callback):
    def __init__(self, warmup: int) -> None:
        self.warmup, self.times, self.t, self.start = warmup, [], None, None

    def on_train_start(self, trainer, pl_module) -> None:
        self.start = time.perf_counter()

    def on_train_batch_end(self, trainer, *args) -> None:
        now = time.perf_counter()
        if trainer.global_step == self.warmup:
            self.warmup_s = now - self.start
        elif trainer.global_step > self.warmup:
            self.times.append(now - self.t)
        self.t = now


def run(config: str, compiled: bool, warmup: int, steps: int):
    torch._dynamo.reset()
    cli = UnrollCLI(args=["--config", str(ROOT / "configs" / f"{config}.yaml"),
                          f"--model.init_args.compile={str(compiled).lower()}"], run=False)
    task, dm = cli.model, cli.datamodule
    timer = StepTimer(warmup)
    trainer = L.Trainer(max_steps=warmup + steps, limit_val_batches=0, num_sanity_val_steps=0, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        accelerator="cpu", devices=1, callbacks=[timer])
    trainer.fit(task, datamodule=dm)
    y = dm.val_dataloader().dataset.y if hasattr(dm.val_dataloader().dataset, "y") else None
    if y is None:
        y = torch.cat([b.y for b in dm.val_dataloader()])
    task.eval()
    with torch.no_grad():
        task(y)  # warm-up (compiles the inference graph)
        t0 = time.perf_counter()
        for _ in range(5):
            task(y)
        inference = (time.perf_counter() - t0) / 5
    return statistics.median(timer.times), timer.warmup_s, inference


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--configs", nargs="+", default=["learned_ista", "alista"])
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    _quiet()
    warnings.filterwarnings("ignore")
    import logging

    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    load = os.getloadavg()[0]
    rows = []
    for config in args.configs:
        res = {False: [], True: []}
        for _ in range(args.rounds):
            for compiled in (False, True):
                res[compiled].append(run(config, compiled, args.warmup, args.steps))
        med = {c: [statistics.median(r[i] for r in res[c]) for i in range(3)] for c in res}
        rows.append((config, med))
    print(f"Machine: {os.cpu_count()} cores ({args.threads} threads used), {cpu_name()}; torch {torch.__version__}; "
          f"load average {load:.2f} at the start, {os.getloadavg()[0]:.2f} at the end")
    print(f"{args.rounds} rounds of {args.warmup} warm-up + {args.steps} timed steps per variant, alternating\n")
    print("| config (model, K=16, batch 64) | eager step (ms) | compiled step (ms) | training speed-up | "
          "warm-up eager / compiled (s) | inference 1000 signals eager / compiled (ms) | inference speed-up |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for config, med in rows:
        e, c = med[False], med[True]
        print(f"| `{config}.yaml` | {e[0] * 1e3:.2f} | {c[0] * 1e3:.2f} | **{e[0] / c[0]:.2f}×** | {e[1]:.1f} / {c[1]:.1f} "
              f"| {e[2] * 1e3:.1f} / {c[2] * 1e3:.1f} | {e[2] / c[2]:.2f}× |")


if __name__ == "__main__":
    main()
