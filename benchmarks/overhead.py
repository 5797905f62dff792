"""Framework overhead and torch.compile speed-up on one training step of learned ISTA.

    python benchmarks/overhead.py                 # K=16, batch 64, the standard 250×500 problem
    python benchmarks/overhead.py --reps 10       # shorter

Times, interleaved in one run (the machine is shared: ratios within a run are what count):

* ``hand``: a hand-written eager loop doing the same arithmetic (per-layer step and
  threshold through softplus, ``x ← S_θ(x − α Aᵀ(Ax − y))`` with ``S_θ(z) = z − clip(z, −θ, θ)``
  differentiated by autograd, MSE, Adam);
* ``hand + unroll.prox.soft_threshold``: the same loop calling the library's soft threshold
  (same forward, leaner custom backward) — the ratio of the framework to this one is the pure
  cost of the framework's layers (modules, Problem, Unrolled, checks);
* ``framework``: ``ReconstructionTask.training_step`` of ``LearnedISTA(16)`` + backward + Adam;
* ``framework+compile``: the same with ``torch.compile`` on the model.

Each timing is the median over ``--reps`` rounds of ``--steps`` steps; rounds alternate
between the variants.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
import warnings

import torch
import torch.nn.functional as F

from machine import cpu_name  # benchmarks/machine.py (scripts run from this folder)
from unroll.data import Batch, load_standard_problem
from unroll.models import LearnedISTA
from unroll.operators import MatrixOperator
from unroll.parametrize import inverse_softplus
from unroll.prox import soft_threshold
from unroll.train import ReconstructionTask


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--layers", type=int, default=16)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--reps", type=int, default=40)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", message=".*self.log.*")  # no Trainer attached: logging is skipped
    K = args.layers

    a = load_standard_problem()["A"].float()
    op = MatrixOperator(a)
    lip = float(op.lipschitz())
    g = torch.Generator().manual_seed(0)
    x = (torch.rand(args.batch, a.shape[1], generator=g) < 0.1).float() * torch.randn(args.batch, a.shape[1], generator=g)
    y = x @ a.T
    batch = Batch(y, x)

    # hand-written: the same parametrisation and arithmetic, no framework
    raw_s = torch.nn.Parameter(torch.full((K,), float(inverse_softplus(1.0))))
    raw_l = torch.nn.Parameter(torch.full((K,), float(inverse_softplus(0.1))))
    opt_h = torch.optim.Adam([raw_s, raw_l], lr=1e-5, foreach=True)

    def hand() -> None:
        xk = torch.zeros_like(x)
        for k in range(K):
            alpha = F.softplus(raw_s[k]) / lip
            thr = alpha * F.softplus(raw_l[k])
            z = xk - alpha * ((xk @ a.T - y) @ a)
            xk = z - torch.clamp(z, -thr, thr)  # soft thresholding (autograd through clamp)
        loss = F.mse_loss(xk, x)
        opt_h.zero_grad()
        loss.backward()
        opt_h.step()

    def hand_lean() -> None:  # the same loop with the library's soft_threshold (custom backward)
        xk = torch.zeros_like(x)
        for k in range(K):
            alpha = F.softplus(raw_s[k]) / lip
            thr = alpha * F.softplus(raw_l[k])
            xk = soft_threshold(xk - alpha * ((xk @ a.T - y) @ a), thr)
        loss = F.mse_loss(xk, x)
        opt_h.zero_grad()
        loss.backward()
        opt_h.step()

    def make_framework(compiled: bool):
        task = ReconstructionTask(LearnedISTA(K, lam=0.1), operator=op)
        if compiled:
            task.model = torch.compile(task.model)
        opt = torch.optim.Adam(task.model.parameters(), lr=1e-5, foreach=True)

        def step() -> None:
            loss = task.training_step(batch, 0)
            opt.zero_grad()
            loss.backward()
            opt.step()
        return step

    variants = {"hand": hand, "hand + unroll.prox.soft_threshold": hand_lean, "framework": make_framework(False),
                "framework+compile": make_framework(True)}
    t0 = time.perf_counter()
    for f in variants.values():  # warm-up (and compilation)
        for _ in range(3):
            f()
    compile_s = time.perf_counter() - t0
    times = {k: [] for k in variants}
    for _ in range(args.reps):
        for name, f in variants.items():
            t = time.perf_counter()
            for _ in range(args.steps):
                f()
            times[name].append((time.perf_counter() - t) / args.steps)
    med = {k: statistics.median(v) for k, v in times.items()}

    # inference (forward only) with and without compile
    model = LearnedISTA(K, lam=0.1)
    cmodel = torch.compile(model)
    with torch.no_grad():
        for _ in range(3):
            model(y, op), cmodel(y, op)
        inf = {"eager": [], "compiled": []}
        for _ in range(args.reps):
            for name, m in (("eager", model), ("compiled", cmodel)):
                t = time.perf_counter()
                for _ in range(args.steps):
                    m(y, op)
                inf[name].append((time.perf_counter() - t) / args.steps)
    inf_med = {k: statistics.median(v) for k, v in inf.items()}

    cpu = cpu_name()
    print(f"Machine: {os.cpu_count()} cores ({args.threads} threads used), {cpu}; torch {torch.__version__}")
    print(f"Learned ISTA, K={K}, batch {args.batch}, A 250×500 float32; median of {args.reps} rounds × "
          f"{args.steps} steps (warm-up and compilation: {compile_s:.0f} s)")
    print()
    print("| training step | ms | ratio to hand-written |")
    print("|---|---:|---:|")
    for k, v in med.items():
        print(f"| {k} | {v * 1e3:.2f} | {v / med['hand']:.3f} |")
    print()
    print("| inference forward | ms | speed-up |")
    print("|---|---:|---:|")
    print(f"| eager | {inf_med['eager'] * 1e3:.2f} | 1.00 |")
    print(f"| torch.compile | {inf_med['compiled'] * 1e3:.2f} | {inf_med['eager'] / inf_med['compiled']:.2f} |")
    print()
    print(f"torch.compile speed-up of the training step: {med['framework'] / med['framework+compile']:.2f}×; "
          f"pure framework overhead (framework / hand with the same soft_threshold): "
          f"{med['framework'] / med['hand + unroll.prox.soft_threshold']:.3f}")


if __name__ == "__main__":
    main()
