"""Clean and robust accuracy on scikit-learn's digits under PGD of increasing strength, for
standard training, adversarial training (Madry et al. 2018) and adversarial fine-tuning of the
standard model, each trained by its config with ``unroll fit``:

* ``configs/adv_digits_standard.yaml`` (clean training, 30 epochs),
* ``configs/adv_digits_pgd.yaml`` (ℓ∞ PGD-7 at ε = 0.1, attack treated as a constant, 30 epochs),
* the same with ``attack_grad_mode: full`` (backpropagation through the unrolled attack),
* ``configs/adv_digits_finetune.yaml`` (10 epochs of PGD-7 training from the standard run),
* ``configs/adv_digits_pgd.yaml`` with ℓ2 PGD-7 at ε = 1 (normalised-gradient steps), with the attack
  constant and with the gradient through it (evaluated under ℓ2 PGD-50).

Each model is then attacked on the 449 test images by ℓ∞ PGD with a random start (seeded) at
every ε of a grid, with 10 and 50 steps (step 2.5 ε / K) and 50 steps from the best of 5 random
starts, and by the low-rank PGD (rank 1 and 2
per 8×8 image, Savostianova et al. 2024) at ε = 0.1. Prints Markdown tables for BENCHMARKS.md,
writes ``benchmarks/results/adversarial.json`` and ``benchmarks/figures/adversarial_robust_accuracy.png``.

    python benchmarks/adversarial.py            # the configs as they are (a few minutes on 2 cores)
    python benchmarks/adversarial.py --short    # seconds-long smoke run (numbers meaningless)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

from machine import cpu_name  # benchmarks/machine.py

ROOT = Path(__file__).resolve().parents[1]
EPS_GRID = [0.0, 0.025, 0.05, 0.075, 0.1, 0.125, 0.15, 0.2]
STRENGTHS = [(10, 1), (50, 1), (50, 5)]  # (steps, random restarts)
METHODS = [
    ("standard", "adv_digits_standard", [], "standard training"),
    ("pgd", "adv_digits_pgd", [], "adversarial training (PGD-7, attack constant)"),
    ("pgd_through", "adv_digits_pgd", ["--model.init_args.attack_grad_mode=full", "--run_name=through"],
     "adversarial training (PGD-7, gradient through the attack)"),
    ("finetune", "adv_digits_finetune", [], "adversarial fine-tuning of the standard model"),
]
# ℓ2 adversarial training with normalised-gradient steps, where differentiating through the attack
# changes the gradient (with sign steps it cannot: the iterates are piecewise constant in the weights)
L2 = ["--model.init_args.norm=l2", "--model.init_args.eps=1.0", "--model.init_args.eval_eps=[0.0,1.0]"]
METHODS_L2 = [
    ("l2_pgd", "adv_digits_pgd", [*L2, "--run_name=l2_constant"], "ℓ2 adversarial training (PGD-7, attack constant)"),
    ("l2_pgd_through", "adv_digits_pgd", [*L2, "--model.init_args.attack_grad_mode=full", "--run_name=l2_through"],
     "ℓ2 adversarial training (PGD-7, gradient through the attack)"),
]
EPS_GRID_L2 = [0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 2.0]


def _fit(config: str, extra, work: Path):
    from unroll.train.cli import main as cli

    t0, c0 = time.perf_counter(), time.process_time()
    cli(["fit", "--config", str(ROOT / "configs" / f"{config}.yaml"), f"--trainer.default_root_dir={work}",
         "--trainer.enable_progress_bar=false", *extra])
    return time.perf_counter() - t0, time.process_time() - c0


def _name(steps: int, restarts: int) -> str:
    return f"PGD-{steps}" + (f"x{restarts}" if restarts > 1 else "")


def _newest(work: Path, config: str) -> Path:
    runs = sorted((work / "runs" / config).glob("*/checkpoints/last.ckpt"), key=lambda p: p.stat().st_mtime)
    return runs[-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--short", action="store_true", help="smoke run: tiny training, two radii, 2 steps")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    parser.add_argument("--workdir", default=None, help="where the runs go (default: a temporary folder)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))

    from unroll.adversarial import PGDAttack
    from unroll.data import DigitsDataModule
    from unroll.models import MLPClassifier
    from unroll.train import AdversarialTrainingTask, load_checkpoint

    work = Path(args.workdir or tempfile.mkdtemp(prefix="unroll-adversarial-"))
    eps_grid, strengths = (EPS_GRID, STRENGTHS) if not args.short else ([0.0, 0.1], [(2, 1), (2, 2)])
    steps_list = [k for k, _ in strengths]
    eps_grid_l2 = EPS_GRID_L2 if not args.short else [0.0, 1.0]
    tiny = ["--trainer.max_epochs=1", "--trainer.limit_train_batches=2", "--trainer.limit_val_batches=1",
            "--model.init_args.eval_steps=2"] if args.short else []
    load_before = os.getloadavg()
    budgets, models = {}, {}
    for key, config, extra, _ in METHODS + METHODS_L2:
        more = list(extra)
        if config == "adv_digits_finetune":
            more.append(f"--model.init_args.pretrained={work / 'runs' / 'adv_digits_standard'}")
        wall, cpu = _fit(config, tiny + more, work)
        named = [a.split("=", 1)[1] for a in extra if a.startswith("--run_name=")]
        ckpt = work / "runs" / config / named[0] / "checkpoints" / "last.ckpt" if named else _newest(work, config)
        ck = load_checkpoint(ckpt, map_location="cpu")
        shown = [a for a in extra if not a.startswith(("--run_name", "--model.init_args.eval_eps"))]
        budgets[key] = {"config": f"configs/{config}.yaml" + (" " + " ".join(shown) if shown else ""),
                        "epochs": int(ck["epoch"]) + 1, "steps": int(ck["global_step"]),
                        "wall_s": round(wall, 1), "cpu_s": round(cpu, 1)}
        task = AdversarialTrainingTask(MLPClassifier([1, 8, 8], [128, 128], 10))
        task.load_pretrained(str(ckpt))
        models[key] = task.model.eval()
    load_after = os.getloadavg()

    dm = DigitsDataModule()
    test = dm.split("test")
    n = 64 if args.short else len(test)
    x, y = test.x[:n], test.y[:n]
    results = {k: {"robust": {}, "low_rank": {}, "robust_l2": []} for k in models}
    t_attack = time.perf_counter()
    for key in ("standard", "l2_pgd", "l2_pgd_through"):
        for eps in eps_grid_l2:
            res = PGDAttack(eps=eps, norm="l2", num_steps=steps_list[-1], seed=0)(models[key], x, y)
            results[key]["robust_l2"].append(1 - float(res.success.double().mean()))
    for key, model in models.items():
        if key.startswith("l2_"):
            continue
        for steps, restarts in strengths:
            accs = []
            for eps in eps_grid:
                if eps == 0:
                    with torch.no_grad():
                        accs.append(float((model(x).argmax(1) == y).double().mean()))
                    continue
                res = PGDAttack(eps=eps, num_steps=steps, seed=0, restarts=restarts)(model, x, y)
                accs.append(1 - float(res.success.double().mean()))
            results[key]["robust"][_name(steps, restarts)] = accs
        for rank in (1, 2):
            res = PGDAttack(eps=0.1, num_steps=steps_list[-1], rank=rank, seed=0)(model, x, y)
            results[key]["low_rank"][f"rank{rank}"] = 1 - float(res.success.double().mean())
    t_attack = time.perf_counter() - t_attack

    machine = {"cpu": cpu_name(), "cores": os.cpu_count(), "threads": args.threads,
               "load_before": [round(v, 2) for v in load_before], "load_after": [round(v, 2) for v in load_after],
               "python": platform.python_version(), "torch": torch.__version__}
    report = {"machine": machine, "budgets": budgets, "eps": eps_grid, "strengths": strengths, "test_samples": n,
              "results": results, "attack_seconds": round(t_attack, 1), "short": args.short}

    print(f"\nmachine: {machine['cpu']}, {machine['cores']} cores, {args.threads} torch thread(s), load average "
          f"{load_before[0]:.2f} before / {load_after[0]:.2f} after training\n")
    print("| method | config | epochs | optimiser steps | wall (s) | CPU (s) |")
    print("|---|---|---|---|---|---|")
    for key, _, _, label in METHODS + METHODS_L2:
        b = budgets[key]
        print(f"| {label} | `{b['config']}` | {b['epochs']} | {b['steps']} | {b['wall_s']} | {b['cpu_s']} |")
    for steps, restarts in strengths:
        name = _name(steps, restarts)
        more = f", best of {restarts} random starts" if restarts > 1 else ", one random start"
        print(f"\ntest accuracy under ℓ∞ {name} (step 2.5ε/{steps}{more}), {n} test images\n")
        print("| method | " + " | ".join("clean" if e == 0 else f"ε={e:g}" for e in eps_grid) + " |")
        print("|---|" + "---|" * len(eps_grid))
        for key, _, _, label in METHODS:
            print(f"| {label} | " + " | ".join(f"{a:.3f}" for a in results[key]["robust"][name]) + " |")
    print(f"\ntest accuracy under low-rank ℓ∞ PGD-{steps_list[-1]} at ε = 0.1 (rank per 8×8 image)\n")
    print("| method | rank 1 | rank 2 | full rank |")
    print("|---|---|---|---|")
    i = eps_grid.index(0.1)
    for key, _, _, label in METHODS:
        lr = results[key]["low_rank"]
        print(f"| {label} | {lr['rank1']:.3f} | {lr['rank2']:.3f} | "
              f"{results[key]['robust'][_name(steps_list[-1], 1)][i]:.3f} |")

    print(f"\ntest accuracy under ℓ2 PGD-{steps_list[-1]} (normalised steps, random start), {n} test images\n")
    print("| method | " + " | ".join("clean" if e == 0 else f"ε={e:g}" for e in eps_grid_l2) + " |")
    print("|---|" + "---|" * len(eps_grid_l2))
    for key, _, _, label in [METHODS[0], *METHODS_L2]:
        print(f"| {label} | " + " | ".join(f"{a:.3f}" for a in results[key]["robust_l2"]) + " |")
    report["eps_l2"] = eps_grid_l2

    out = ROOT / "benchmarks" / "results" / "adversarial.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    for (key, _, _, label), color in zip([METHODS[0], *METHODS_L2], ["C0", "C4", "C5"]):
        ax2.plot(eps_grid_l2, results[key]["robust_l2"], "-", color=color, marker="o", markersize=3, label=label)
    ax2.set_xlabel("ε (ℓ2, pixels in [0, 1])")
    ax2.set_ylabel(f"test accuracy under ℓ2 PGD-{steps_list[-1]}")
    ax2.set_ylim(0, 1)
    ax2.grid(True, alpha=0.3)
    ax2.legend(fontsize=7)
    ax2.set_title("ℓ2: attack constant vs gradient through it", fontsize=9)
    for (key, _, _, label), color in zip(METHODS, ["C0", "C1", "C2", "C3"]):
        weakest, strongest = _name(*strengths[0]), _name(*strengths[-1])
        for name, style in ((weakest, "--"), (strongest, "-")):
            ax.plot(eps_grid, results[key]["robust"][name], style, color=color, marker="o", markersize=3,
                    label=f"{label}, {strongest}" if name == strongest else None)
    ax.set_xlabel("ε (ℓ∞, pixels in [0, 1])")
    ax.set_ylabel("test accuracy under PGD")
    ax.set_ylim(0, 1)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)
    ax.set_title(f"digits, MLP: ℓ∞ robust accuracy vs ε (dashed: {_name(*strengths[0])})", fontsize=9)
    fig.tight_layout()
    fig_path = ROOT / "benchmarks" / "figures" / "adversarial_robust_accuracy.png"
    fig_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(fig_path, dpi=120)
    plt.close(fig)
    print(f"\nwrote {out} and {fig_path}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
