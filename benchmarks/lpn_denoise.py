"""ConvLPN as a plain denoiser: what its initialisation and activation do, next to DnCNN.

The deblurring benchmark (``pnp_deblur.py``) uses each learned prior as the denoiser it was
trained to be; an LPN that denoises badly makes a bad PnP prior whatever its convergence. This
script trains one denoiser per variant on the task of ``configs/lpn_patches.yaml`` at the PnP
benchmark's noise level (32×32 patches of the training images of
``unroll.data.PatchDenoisingDataModule``, σ = 0.05, batches of 16, seed 0), with Adam and a cosine
learning-rate decay over ``--steps`` steps, ℓ1 loss for the LPN (its warm-start loss) and MSE for
DnCNN (its config's), the LPN's weights projected after every step; it reports the PSNR of the
first validation batch (16 patches of the held-out validation image) at five points, and the CPU
time (one thread).

    python benchmarks/lpn_denoise.py --variants small:100 default:100 --steps 3000
    python benchmarks/lpn_denoise.py --variants small:100 small:10 small:10:0.1 --steps 1500
    python benchmarks/lpn_denoise.py --variants dncnn --steps 1000
    python benchmarks/lpn_denoise.py --short                     # a smoke run

A variant is ``dncnn`` or ``INIT:BETA[:ALPHA]`` for a ``ConvLPN(hidden=--hidden,
downsample=--downsample, init=INIT, beta=BETA, alpha=ALPHA)`` (α default 1e-6). Each variant runs
from the same seed, so the first one of a list gives the same numbers as when run alone.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Dict, List

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import cpu_name  # noqa: E402

NOISE = 0.05


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """PSNR (dB) of ``a`` against ``b`` over the whole batch, data range 1."""
    return float(10 * torch.log10(1 / (a - b).square().mean()))


def build(variant: str, hidden: int, downsample: int):
    from unroll.models import ConvLPN, DnCNN

    if variant == "dncnn":
        return DnCNN(1, features=32, depth=10, batch_norm=False)
    parts = variant.split(":")
    if len(parts) not in (2, 3) or parts[0] not in ("small", "default"):
        raise SystemExit(f"--variants: expected 'dncnn' or INIT:BETA[:ALPHA] with INIT small or default, got {variant!r}")
    alpha = float(parts[2]) if len(parts) == 3 else 1e-6
    return ConvLPN(hidden=hidden, beta=float(parts[1]), downsample=downsample, alpha=alpha, init=parts[0])


def train(variant: str, steps: int, hidden: int, downsample: int, lr: float, points: int = 5) -> Dict[str, object]:
    """Train one variant from seed 0; its validation PSNR at ``points`` evenly spaced steps."""
    from unroll.data import PatchDenoisingDataModule

    torch.manual_seed(0)
    dm = PatchDenoisingDataModule(patch_size=32, noise_std=NOISE, batch_size=16, train_batches=10 ** 6, val_size=64,
                                  seed=0)
    dm.setup("fit")
    model = build(variant, hidden, downsample)
    lpn = variant != "dncnn"
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    val = next(iter(dm.val_dataloader()))
    out = {"variant": variant, "noisy_db": psnr(val.y, val.x), "curve": []}
    t0 = time.process_time()
    batches = iter(dm.train_dataloader())
    every = max(1, steps // points)
    for s in range(1, steps + 1):
        b = next(batches)
        err = model(b.y) - b.x
        loss = err.abs().mean() if lpn else err.square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        if lpn:
            model.project_()
        sched.step()
        if s % every == 0 or s == steps:
            with torch.no_grad():
                den = model(val.y)
            out["curve"].append((s, psnr(den, val.x), time.process_time() - t0))
    return out


def main(argv: List[str] = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variants", nargs="+", default=["small:100", "default:100"])
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--hidden", type=int, default=32)
    ap.add_argument("--downsample", type=int, default=2)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--short", action="store_true", help="a smoke run: 10 steps of a small LPN and of DnCNN")
    args = ap.parse_args(argv)
    if args.short:
        args.variants, args.steps, args.hidden = ["small:10", "dncnn"], 10, 4
    torch.set_num_threads(1)
    rows = [train(v, args.steps, args.hidden, args.downsample, args.lr) for v in args.variants]
    print(f"Machine: {cpu_name()}, 1 thread; torch {torch.__version__}; {args.steps} steps, lr {args.lr:g} "
          f"(cosine), batch 16, σ = {NOISE}; ConvLPN hidden {args.hidden}, downsample {args.downsample}\n")
    steps = [s for s, _, _ in rows[0]["curve"]]
    print("| variant | noisy input | " + " | ".join(f"step {s}" for s in steps) + " | CPU s |")
    print("|---|---:|" + "---:|" * len(steps) + "---:|")
    for r in rows:
        print(f"| {r['variant']} | {r['noisy_db']:.2f} | " + " | ".join(f"{p:.2f}" for _, p, _ in r["curve"])
              + f" | {r['curve'][-1][2]:.0f} |")


if __name__ == "__main__":
    main()
