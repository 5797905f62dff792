"""Unrolled PnP-ADMM (K = 10) trained end to end next to plug-and-play with the same denoiser (issue 15,
reproduction 3): what training the whole loop buys, and where it comes from.

    OMP_NUM_THREADS=1 taskset -c 0 python benchmarks/unrolled_pnp.py --setting 1 0.02 --steps 1500
    OMP_NUM_THREADS=1 taskset -c 1 python benchmarks/unrolled_pnp.py --setting 2 0.04 --steps 1500
                                                   # the numbers in BENCHMARKS.md (about 30 min each, 1 thread)
    python benchmarks/unrolled_pnp.py --short      # a smoke run

The task is reproduction 2's (``benchmarks/pnp_deblur.py``): Gaussian blur σ_b with a circular boundary, noise
σ_n, the held-out 128×128 centre crops of ``camera`` and ``coins``. The denoiser is the DnCNN of that run (the
same config, budget and seed: ``configs/dncnn_denoise.yaml``, 1000 Adam steps at σ_d = 0.05 on 32×32 patches).

Rows, each evaluated on the test crops (PSNR/SSIM, torchmetrics, data range 1):

* PnP-ADMM with the DnCNN and the MAP rule ``ρ = σ_n²/σ_d²``, at 10 and at 100 iterations (reproduction 2's row);
* the same with ``ρ`` tuned: the best of a grid around the rule (×1/16 … ×4) on the *validation* crops (8 crops
  of the validation images), at 10 iterations: what tuning the one scalar buys, with no training;
* ``UnrolledPnP`` (K = 10 iterations, full backprop, ``ρ`` learned), started from the DnCNN and the rule's ρ
  (``--rho-start tuned``: the tuned one),
  trained end to end on the MSE to the clean image with ``--steps`` Adam steps (lr ``--lr``, cosine decay to 0)
  on 64×64 crops of the training images (batch ``--batch``, fresh crops and noise at every step), tied (one
  DnCNN for all ten iterations) and untied (``tied=False``: ten copies, each fine-tuned for its iteration).
  Validation PSNR is logged every ``--val-every`` steps (``figures/unrolled_pnp_<setting>.png``).

The control for "more training of the same denoiser": ``--denoiser-steps 2500 --ties --tag control`` gives the
PnP rows with a DnCNN trained for the denoiser's 1000 steps plus the unrolled network's 1500, as a denoiser.

Writes ``benchmarks/results/unrolled_pnp_blur<σ_b>_noise<σ_n>[_<tag>].json`` (``_short`` for a smoke run).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

from machine import cpu_name  # noqa: E402
from pnp_deblur import SIGMA_D, scores, train_with_config  # noqa: E402

from unroll.data import DeblurringDataModule  # noqa: E402
from unroll.models import UnrolledPnP, pnp_admm  # noqa: E402


def evaluate(fn, split) -> dict:
    """PSNR/SSIM of ``fn(y, op)`` on a split of a :class:`DeblurringDataModule`."""
    with torch.no_grad():
        x_hat = fn(split.y)
    p, s, per = scores(x_hat, split.x)
    return {"psnr": p, "ssim": s, "psnr_per_image": per}


def train_unrolled(dncnn, rho0: float, tied: bool, args, sb: float, sn: float, val, op_eval) -> tuple:
    """Train ``UnrolledPnP`` (K = 10) end to end from ``dncnn`` and ``rho0``; returns the model and a log."""
    torch.manual_seed(1)
    prior = copy.deepcopy(dncnn).train()
    for prm in prior.parameters():
        prm.requires_grad_(True)
    model = UnrolledPnP(prior, num_layers=10, rho=rho0, learn_rho=True, tied=tied, grad_mode="full")
    dm = DeblurringDataModule(blur="gaussian", blur_sigma=sb, noise_std=sn, image_size=args.patch,
                              batch_size=args.batch, train_batches=args.steps, seed=1)
    dm.setup()
    op = dm.get_operator()
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: 0.5 * (1 + math.cos(math.pi * k / args.steps)))
    log = {"step": [], "val_psnr": [], "loss": []}

    def validate(step):
        model.eval()
        log["step"].append(step)
        log["val_psnr"].append(evaluate(lambda y: model(y, op_eval), val)["psnr"])
        model.train()

    validate(0)
    losses = []
    t0 = time.time()
    loader = iter(dm.train_dataloader())
    for step in range(1, args.steps + 1):
        batch = next(loader)
        opt.zero_grad()
        loss = (model(batch.y, op) - batch.x).square().mean()
        loss.backward()
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
        if step % args.val_every == 0 or step == args.steps:
            log["loss"].append(sum(losses[-args.val_every:]) / len(losses[-args.val_every:]))
            validate(step)
            print(f"  {'tied' if tied else 'untied'} step {step}: loss {log['loss'][-1]:.3e}, val PSNR "
                  f"{log['val_psnr'][-1]:.2f} dB ({time.time() - t0:.0f} s)", flush=True)
    log["train_seconds"] = round(time.time() - t0, 1)
    model.eval()
    log["rho_learned"] = [float(s.rho().detach()) for s in model.unrolled.steps]  # one when tied, K when untied
    return model, log


def run(args):
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    sb, sn = args.setting
    key = f"blur{sb:g}_noise{sn:g}"
    suffix = key + ("_short" if args.short else "") + (f"_{args.tag}" if args.tag else "")
    out_json = ROOT / "benchmarks" / "results" / f"unrolled_pnp_{suffix}.json"
    out_json.parent.mkdir(parents=True, exist_ok=True)
    results = {"machine": {"cpu": cpu_name(), "threads": torch.get_num_threads(), "python": platform.python_version(),
                           "torch": torch.__version__},
               "command": " ".join(sys.argv),
               "setting": {"blur_sigma": sb, "noise_std": sn},
               "budget": {"denoiser_steps": args.denoiser_steps, "unrolled_steps": args.steps, "lr": args.lr,
                          "batch": args.batch, "patch": args.patch, "K": 10, "sigma_d": SIGMA_D}}
    dncnn, secs = train_with_config("dncnn_denoise", args.denoiser_steps, tempfile.mkdtemp(prefix="unrolled_pnp_"))
    for prm in dncnn.parameters():
        prm.requires_grad_(False)
    results["denoiser_train_seconds"] = round(secs, 1)
    print(f"trained DnCNN in {secs:.0f} s", flush=True)

    dm = DeblurringDataModule(blur="gaussian", blur_sigma=sb, noise_std=sn, image_size=128, test_crops=1,
                              val_size=args.val_size, dtype="float32", seed=0)
    dm.setup()
    op, val, test = dm.get_operator(), dm.val_split, dm.test_split
    rows = {"blurred input": evaluate(lambda y: y, test)}
    rho0 = (sn / SIGMA_D) ** 2
    for iters in (10, args.pnp_iters):
        rows[f"PnP-ADMM, rule rho, {iters} iterations"] = evaluate(
            lambda y: pnp_admm(op, y, dncnn, rho=rho0, max_iter=iters, tol=None)[0], test)
        rows[f"PnP-ADMM, rule rho, {iters} iterations"]["rho"] = rho0
    grid = [rho0 * f for f in (1 / 16, 1 / 8, 0.25, 0.5, 0.7, 1.0, 1.4, 2.0, 4.0)]
    val_scores = {r: evaluate(lambda y: pnp_admm(op, y, dncnn, rho=r, max_iter=10, tol=None)[0], val)["psnr"]
                  for r in grid}
    rho_best = max(val_scores, key=val_scores.get)
    rows["PnP-ADMM, rho tuned on validation, 10 iterations"] = evaluate(
        lambda y: pnp_admm(op, y, dncnn, rho=rho_best, max_iter=10, tol=None)[0], test)
    rows["PnP-ADMM, rho tuned on validation, 10 iterations"]["rho"] = rho_best
    results["rho_grid_val_psnr"] = {f"{r:.4g}": v for r, v in val_scores.items()}
    results["rho_tuned_at_grid_edge"] = rho_best in (grid[0], grid[-1])
    for name, row in rows.items():
        print(f"{key} {name}: PSNR {row['psnr']:.2f} SSIM {row['ssim']:.3f}", flush=True)
    results["rows"] = rows
    out_json.write_text(json.dumps(results, indent=1))

    logs = {}
    rho_start = rho0 if args.rho_start == "rule" else rho_best
    results["budget"]["rho_start"] = {"from": args.rho_start, "value": rho_start}
    for tied in [t == "tied" for t in args.ties]:
        name = f"unrolled PnP, K = 10, {'tied' if tied else 'untied'}"
        model, log = train_unrolled(dncnn, rho_start, tied, args, sb, sn, val, op)
        rows[name] = evaluate(lambda y: model(y, op), test)
        rows[name]["rho_learned"] = log["rho_learned"]
        rows[name]["train_seconds"] = log["train_seconds"]
        logs[name] = log
        print(f"{key} {name}: PSNR {rows[name]['psnr']:.2f} SSIM {rows[name]['ssim']:.3f}", flush=True)
        results["training"] = logs
        out_json.write_text(json.dumps(results, indent=1))
    print(f"wrote {out_json}")
    if not logs:
        return

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.4))
    for name, log in logs.items():
        ax.plot(log["step"], log["val_psnr"], marker=".", label=name.replace("unrolled PnP, K = 10, ", "unrolled, "))
    for iters in (10,):
        pnp = evaluate(lambda y: pnp_admm(op, y, dncnn, rho=rho_best, max_iter=iters, tol=None)[0], val)["psnr"]
        ax.axhline(pnp, color="k", ls="--", lw=1, label=f"PnP-ADMM, tuned ρ, {iters} its")
    ax.set_xlabel("Adam step")
    ax.set_ylabel("validation PSNR (dB)")
    ax.set_title(f"unrolled PnP-ADMM (K = 10), σ_b = {sb:g}, σ_n = {sn:g}", fontsize=9)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig_path = ROOT / "benchmarks" / "figures" / f"unrolled_pnp_{suffix}.png"
    fig_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(fig_path, dpi=110)
    print(f"wrote {fig_path}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--setting", type=float, nargs=2, default=(1.0, 0.02), metavar=("SIGMA_B", "SIGMA_N"),
                    help="Gaussian blur σ and noise σ")
    ap.add_argument("--steps", type=int, default=1500, help="Adam steps of each unrolled network")
    ap.add_argument("--lr", type=float, default=2e-4, help="Adam learning rate (cosine decay to 0)")
    ap.add_argument("--batch", type=int, default=2, help="training crops per step")
    ap.add_argument("--patch", type=int, default=64, help="training crop size")
    ap.add_argument("--val-every", type=int, default=250, help="steps between validation PSNRs")
    ap.add_argument("--val-size", type=int, default=8, help="validation crops (128×128, validation images)")
    ap.add_argument("--denoiser-steps", type=int, default=1000, help="Adam steps of the DnCNN (as pnp_deblur.py)")
    ap.add_argument("--pnp-iters", type=int, default=100, help="iterations of the longer PnP-ADMM run")
    ap.add_argument("--rho-start", choices=["rule", "tuned"], default="rule",
                    help="the unrolled networks' initial ρ: the MAP rule's, or the one tuned on validation")
    ap.add_argument("--ties", nargs="*", choices=["tied", "untied"], default=["tied", "untied"],
                    help="which unrolled networks to train (none: the PnP rows only, e.g. the control run of a "
                         "DnCNN trained longer as a denoiser: --denoiser-steps 2500 --ties --tag control)")
    ap.add_argument("--tag", type=str, default="", help="suffix of the output files")
    ap.add_argument("--threads", type=int, default=1, help="torch threads")
    ap.add_argument("--short", action="store_true", help="smoke run: tiny budgets")
    args = ap.parse_args()
    if args.short:
        args.steps, args.denoiser_steps, args.pnp_iters, args.val_every, args.val_size = 3, 3, 12, 2, 2
    run(args)


if __name__ == "__main__":
    main()
