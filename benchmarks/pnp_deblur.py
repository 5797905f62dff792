"""Plug-and-play deblurring (issue 15, reproductions 2 and 3): PnP-ADMM with a learned proximal
network (LPN) vs DnCNN vs a small U-Net vs TV vs wavelet-ℓ1 (and the blurred input), then unrolled
PnP (K = 10, trained end to end) next to plug-and-play at the same depth.

    nice -n 5 python benchmarks/pnp_deblur.py --steps 1000 --lpn-steps 3000 --iters 100 --unrolled-steps 120
                                                           # the numbers in BENCHMARKS.md (about 45 min, 1 thread)
    python benchmarks/pnp_deblur.py --short                # a smoke run (tiny budgets, 1 setting)

Task: 128×128 grey-scale crops (centre crops) of the held-out scikit-image images ``camera`` and
``coins`` (never seen in training: ``unroll.data.DeblurringDataModule`` with the split of
``unroll.data.PatchDenoisingDataModule``), Gaussian blur σ_b ∈ {1, 2} (circular boundary: ADMM's
data step is one FFT pair), noise σ_n ∈ {0.02, 0.04}.

Priors (all used through ``prox(x, step)``):

* learned, each trained once as a denoiser at σ_d = 0.05 on 32×32 patches of the training images
  (``configs/dncnn_denoise.yaml``, ``configs/unet_denoise.yaml``, ``configs/lpn_patches.yaml`` through
  the CLI with a CPU budget of ``--steps`` Adam steps each, batch 16; the LPN with its ℓ1 warm start for
  the first half and proximal matching γ 0.5 → 0.1 for the second). In PnP-ADMM they ignore the step, so
  the penalty is set by the MAP reading ``σ_d² = σ_n²/ρ``: ``ρ = σ_n²/σ_d²`` (in units of ‖A‖² = 1);
* the same LPN trained under :class:`unroll.lipschitz.LipschitzPenalty` ("LPN + Lipschitz penalty":
  weight ``--lpn-lipschitz``, bound ``--lpn-bound`` on ``‖J_f‖₂`` at ``--lpn-penalty-samples`` points per
  batch between the clean and the noisy patches, softplus β ``--lpn-bounded-beta``, and a learned quadratic
  term ``½‖Q ⊛ x‖²`` in ψ, ``ConvLPN(quadratic=--lpn-bounded-quadratic)``, which carries the linear part of the
  map the softplus units approximate poorly): near 1 the LPN is the prox of a (nearly) convex ``R``, for
  which PnP-ADMM converges; the paper's LPN is the prox of a non-convex one;
  ``‖J_f‖₂`` of every learned prox at the test crops is measured and reported;
* TV (its prox by FGP on the dual, warm-started), ``λ = σ_n/2``; wavelet-ℓ1 (orthogonal db4, 3 levels),
  ``λ = σ_n/4``; both with ``ρ = 0.5`` (their fixed point does not depend on ρ).

Every PnP run does ``--iters`` iterations from ``x0 = Aᴴy`` and records the fixed-point residual
``‖s_{k+1} − s_k‖/‖s_k‖`` of the ADMM state at each; the table reports PSNR/SSIM (torchmetrics,
data range 1) of the final estimate, and the first iteration at which the residual is ≤ 1e-3.

Unrolled PnP: ``unroll.models.UnrolledPnP`` (ADMM, K = 10, tied), starting from the trained DnCNN and
its ρ, trained end to end (MSE, full backprop, ρ learned) on 64×64 crops (batch 2) of the training
images at σ_b = 1, σ_n = 0.02 for ``--unrolled-steps`` Adam steps (``--unrolled-lr``); evaluated on the test
images next to PnP-ADMM with the same DnCNN at 10 iterations and at ``--iters``.

Writes ``benchmarks/results/pnp_deblur.json`` and ``benchmarks/figures/pnp_deblur_{panel,residuals}.png``.
"""

from __future__ import annotations

import argparse
import copy
import json
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

from unroll.data import DeblurringDataModule  # noqa: E402
from unroll.metrics import psnr, ssim  # noqa: E402
from unroll.models import UnrolledPnP, pnp_admm  # noqa: E402
from unroll.prox import TotalVariation, WaveletL1  # noqa: E402

SIGMA_D = 0.05
LPN_BOUNDED = "LPN + Lipschitz penalty"


def train_with_config(name: str, steps: int, workdir: str, extra=()):
    """Train a denoiser with ``configs/<name>.yaml`` through the CLI, small budget; returns the model."""
    from unroll.train.cli import UnrollCLI

    args = ["fit", "--config", str(ROOT / "configs" / f"{name}.yaml"), f"--trainer.default_root_dir={workdir}",
            f"--trainer.max_steps={steps}", "--trainer.logger=false", "--trainer.enable_progress_bar=false",
            "--trainer.enable_checkpointing=false", "--trainer.callbacks=null", "--trainer.limit_val_batches=0",
            "--trainer.num_sanity_val_steps=0", "--trainer.accelerator=cpu", "--trainer.devices=1",
            f"--data.init_args.noise_std={SIGMA_D}", "--data.init_args.patch_size=32", "--data.init_args.batch_size=16",
            *extra]
    t0 = time.time()
    cli = UnrollCLI(args=args, run=True)
    return cli.model.model.eval(), time.time() - t0


def train_lpn(steps: int, workdir: str, lipschitz: float = 0.0, bound: float = 0.9, beta=None, samples: int = 8,
              iters: int = 10, quadratic: int = 0, overrides=()):
    """The LPN as the paper trains it; with ``lipschitz > 0`` also under
    :class:`unroll.lipschitz.LipschitzPenalty` (that weight, ``bound``, symmetric: ψ's Hessian),
    which keeps ``f``'s Jacobian at most ``bound`` between the noisy and the clean patches;
    ``beta`` overrides the config's softplus sharpness (a sharp softplus puts curvature spikes
    of order β into ψ's Hessian, which the bound then flattens along with the rest);
    ``quadratic`` is ``ConvLPN``'s learned quadratic term; ``overrides`` are further ``unroll fit``
    arguments, applied after the recipe's."""
    half = max(1, steps // 2)
    extra = [] if beta is None else [f"--model.init_args.model.init_args.beta={beta}"]
    if quadratic:
        extra += [f"--model.init_args.model.init_args.quadratic={quadratic}"]
    if lipschitz > 0:
        extra += ["--model.init_args.lipschitz=unroll.lipschitz.LipschitzPenalty",
                 f"--model.init_args.lipschitz.init_args.weight={lipschitz}",
                 f"--model.init_args.lipschitz.init_args.bound={bound}",
                 "--model.init_args.lipschitz.init_args.symmetric=true",
                 f"--model.init_args.lipschitz.init_args.iters={iters}",
                 f"--model.init_args.lipschitz.init_args.samples={samples}"]
    extra += ["--trainer.callbacks+=unroll.train.ProjectLPN",
             "--trainer.callbacks+=unroll.train.ProximalMatchingSchedule",
             f"--trainer.callbacks.warmup_steps={half}", "--trainer.callbacks.warmup_lr=0.001",
             "--trainer.callbacks.gamma_start=0.5", "--trainer.callbacks.gamma_end=0.1",
             f"--trainer.callbacks.decay_steps={steps - half}", "--trainer.callbacks.stages=4",
             "--trainer.callbacks.lr=0.0001"]
    return train_with_config("lpn_patches", steps, workdir, extra + list(overrides))


def first_below(hist: torch.Tensor, thr: float):
    """Per sample, the first iteration (1-based) whose residual is ≤ thr, or None."""
    out = []
    for row in hist:
        idx = (row <= thr).nonzero()
        out.append(int(idx[0]) + 1 if idx.numel() else None)
    return out


def scores(x_hat, x):
    p = psnr(x_hat.clamp(0, 1), x, data_range=1.0)
    s = ssim(x_hat.clamp(0, 1), x, data_range=1.0)
    return p.mean().item(), s.mean().item(), p.tolist()


def denoising_check(nets) -> dict:
    """PSNR (dB, mean over the held-out 128×128 test crops) of each learned denoiser on its own
    task, Gaussian noise at σ_d (one fixed draw), next to the noisy input's: what each prior
    brings to PnP before any deblurring."""
    dm = DeblurringDataModule(blur="gaussian", blur_sigma=1.0, noise_std=0.0, image_size=128, test_crops=1,
                              dtype="float32", seed=0)
    dm.setup()
    x = dm.test_split.x
    noisy = x + SIGMA_D * torch.randn(x.shape, generator=torch.Generator().manual_seed(1), dtype=x.dtype)
    out = {"noisy input": scores(noisy, x)[0]}
    with torch.no_grad():
        for name, net in nets.items():
            out[name] = scores(net(noisy), x)[0]
    return out


def jacobian_norms(nets, iters: int) -> dict:
    """``‖J_f‖₂`` of each learned prox (power iteration, :func:`unroll.lipschitz.jacobian_norm`;
    symmetric for the LPNs, whose Jacobian is ψ's Hessian) at the held-out test crops with noise
    σ_d (its training inputs) and at their blurred measurements (σ_b 1, σ_n 0.02, where PnP
    starts): above 1 along some direction, a prox can push PnP's iterates apart."""
    from unroll.lipschitz import jacobian_norm
    from unroll.models import LearnedProxNet

    dm = DeblurringDataModule(blur="gaussian", blur_sigma=1.0, noise_std=0.02, image_size=128, test_crops=1,
                              dtype="float32", seed=0)
    dm.setup()
    x, y = dm.test_split.x, dm.test_split.y
    noisy = x + SIGMA_D * torch.randn(x.shape, generator=torch.Generator().manual_seed(1), dtype=x.dtype)
    out = {}
    for name, net in nets.items():
        sym = isinstance(net, LearnedProxNet)
        out[name] = {k: jacobian_norm(net, pts, iters, symmetric=sym, generator=torch.Generator().manual_seed(2))[0]
                     .tolist() for k, pts in (("noisy", noisy), ("blurred", y))}
    return out


def run(args):
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    suffix = ("_short" if args.short else "") + (f"_{args.tag}" if args.tag else "")
    out_json = ROOT / "benchmarks" / "results" / f"pnp_deblur{suffix}.json"
    figdir = ROOT / "benchmarks" / "figures"
    figdir.mkdir(parents=True, exist_ok=True)
    out_json.parent.mkdir(parents=True, exist_ok=True)
    results = {"machine": {"cpu": cpu_name(), "threads": torch.get_num_threads(), "python": platform.python_version(),
                           "torch": torch.__version__},
               "budget": {"denoiser_steps": args.steps, "lpn_steps": args.lpn_steps, "batch": 16, "patch": 32,
                          "lpn_lipschitz": {"weight": args.lpn_lipschitz, "bound": args.lpn_bound,
                                            "beta": args.lpn_bounded_beta, "quadratic": args.lpn_bounded_quadratic,
                                            "samples": args.lpn_penalty_samples, "iters": args.lpn_penalty_iters},
                          "sigma_d": SIGMA_D, "pnp_iterations": args.iters, "unrolled_steps": args.unrolled_steps},
               "train_seconds": {}, "settings": {}}
    work = tempfile.mkdtemp(prefix="pnp_deblur_")
    priors_learned = {}
    for name, fn in (("DnCNN", lambda: train_with_config("dncnn_denoise", args.steps, work)),
                     ("U-Net", lambda: train_with_config("unet_denoise", args.steps, work)),
                     ("LPN", lambda: train_lpn(args.lpn_steps, work)),
                     (LPN_BOUNDED, lambda: train_lpn(args.lpn_steps, work, args.lpn_lipschitz, args.lpn_bound,
                                                     args.lpn_bounded_beta, args.lpn_penalty_samples,
                                                     args.lpn_penalty_iters, args.lpn_bounded_quadratic))):
        if name == LPN_BOUNDED and args.lpn_lipschitz <= 0:
            continue
        net, secs = fn()
        for p in net.parameters():
            p.requires_grad_(False)
        priors_learned[name] = net
        results["train_seconds"][name] = round(secs, 1)
        print(f"trained {name} in {secs:.0f} s", flush=True)

    results["denoising"] = denoising_check(priors_learned)
    print("denoising at σ_d on the test crops (PSNR dB): "
          + ", ".join(f"{k} {v:.2f}" for k, v in results["denoising"].items()), flush=True)

    results["jacobian_norm"] = jacobian_norms(priors_learned, 5 if args.short else 50)
    print("‖J‖₂ of each learned prox at the noisy test crops / the blurred ones (σ_b 1, σ_n 0.02): "
          + ", ".join(f"{k} {max(v['noisy']):.2f} / {max(v['blurred']):.2f}"
                      for k, v in results["jacobian_norm"].items()), flush=True)

    settings = [(1.0, 0.02), (1.0, 0.04), (2.0, 0.02), (2.0, 0.04)]
    if args.short:
        settings = settings[:1]
    curves = {}
    panel = None
    for sb, sn in settings:
        dm = DeblurringDataModule(blur="gaussian", blur_sigma=sb, noise_std=sn, image_size=128, test_crops=1,
                                  dtype="float32", seed=0)
        dm.setup()
        op, y, x = dm.get_operator(), dm.test_split.y, dm.test_split.x
        key = f"blur{sb:g}_noise{sn:g}"
        rows = {}
        p, s, per = scores(y, x)
        rows["blurred"] = {"psnr": p, "ssim": s, "psnr_per_image": per, "iterations_to_1e-3": None}
        estimates = {"ground truth": x, "blurred": y}
        priors = {"TV": (TotalVariation(sn / 2, max_iter=50, tol=1e-4, warm_start=True), 0.5),
                  "wavelet-l1": (WaveletL1(sn / 4, "db4", 3), 0.5)}
        for name, net in priors_learned.items():
            priors[name] = (net, (sn / SIGMA_D) ** 2)
        for name, (prior, rho) in priors.items():
            t0 = time.time()
            with torch.no_grad():
                x_hat, info = pnp_admm(op, y, prior, rho=rho, max_iter=args.iters, tol=None)
            p, s, per = scores(x_hat, x)
            hist = info.residual_history
            rows[name] = {"psnr": p, "ssim": s, "psnr_per_image": per, "rho": rho,
                          "iterations_to_1e-3": first_below(hist, 1e-3), "final_residual": hist[:, -1].tolist(),
                          "seconds": round(time.time() - t0, 1)}
            curves.setdefault(key, {})[name] = hist.mean(0).tolist()
            estimates[name] = x_hat
            print(f"{key} {name:10s} PSNR {p:6.2f} SSIM {s:.3f} residual {float(hist[:, -1].max()):.2e} "
                  f"({time.time() - t0:.0f} s)", flush=True)
        results["settings"][key] = rows
        out_json.write_text(json.dumps(results, indent=1))  # partial results, in case a later part fails
        if (sb, sn) == (2.0, 0.02) or (args.short and panel is None):
            panel = (key, {k: v[0, 0].clamp(0, 1) for k, v in estimates.items()})

    # ---------------------------------------------------------------- unrolled PnP, K = 10
    sb, sn = 1.0, 0.02
    dm_train = DeblurringDataModule(blur="gaussian", blur_sigma=sb, noise_std=sn, image_size=64, batch_size=2,
                                    train_batches=max(1, args.unrolled_steps), seed=0)
    dm_train.setup()
    dm_test = DeblurringDataModule(blur="gaussian", blur_sigma=sb, noise_std=sn, image_size=128, test_crops=1, seed=0)
    dm_test.setup()
    dncnn = copy.deepcopy(priors_learned["DnCNN"]).train()
    for prm in dncnn.parameters():
        prm.requires_grad_(True)
    rho0 = (sn / SIGMA_D) ** 2
    model = UnrolledPnP(dncnn, num_layers=10, rho=rho0, learn_rho=True, grad_mode="full")
    opt = torch.optim.Adam(model.parameters(), lr=args.unrolled_lr)
    op_train = dm_train.get_operator()
    t0 = time.time()
    losses = []
    loader = iter(dm_train.train_dataloader())
    for step in range(args.unrolled_steps):
        batch = next(loader)
        opt.zero_grad()
        loss = (model(batch.y, op_train) - batch.x).square().mean()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    secs = time.time() - t0
    model.eval()
    op, y, x = dm_test.get_operator(), dm_test.test_split.y, dm_test.test_split.x
    with torch.no_grad():
        x_unrolled = model(y, op)
        x_pnp10, _ = pnp_admm(op, y, priors_learned["DnCNN"], rho=rho0, max_iter=10, tol=None)
    unrolled = {"K": 10, "train_steps": args.unrolled_steps, "lr": args.unrolled_lr, "train_seconds": round(secs, 1),
                "rho_learned": float(model.unrolled.steps[0].rho()), "rho_start": rho0,
                "loss_first_10": sum(losses[:10]) / max(1, len(losses[:10])),
                "loss_last_10": sum(losses[-10:]) / max(1, len(losses[-10:]))}
    for name, est in (("PnP-ADMM DnCNN, 10 iterations", x_pnp10), ("unrolled PnP, K = 10", x_unrolled)):
        p, s, per = scores(est, x)
        unrolled[name] = {"psnr": p, "ssim": s, "psnr_per_image": per}
        print(f"{name}: PSNR {p:.2f} SSIM {s:.3f}", flush=True)
    key = f"blur{sb:g}_noise{sn:g}"
    unrolled[f"PnP-ADMM DnCNN, {args.iters} iterations"] = {
        k: results["settings"][key]["DnCNN"][k] for k in ("psnr", "ssim")} if key in results["settings"] else None
    results["unrolled"] = unrolled
    out_json.write_text(json.dumps(results, indent=1))
    print(f"wrote {out_json}")

    # ---------------------------------------------------------------- figures
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    key, ims = panel
    if key == "blur1_noise0.02":
        ims["unrolled K=10"] = x_unrolled[0, 0].clamp(0, 1)
    names = list(ims)
    fig, axes = plt.subplots(1, len(names), figsize=(2.2 * len(names), 2.6))
    gt = ims["ground truth"]
    for ax, n in zip(axes, names):
        ax.imshow(ims[n].numpy(), cmap="gray", vmin=0, vmax=1)
        title = n if n == "ground truth" else f"{n}\n{float(psnr(ims[n][None, None], gt[None, None], 1.0)):.2f} dB"
        ax.set_title(title, fontsize=8)
        ax.axis("off")
    fig.suptitle(f"PnP-ADMM deblurring, camera crop, {key} ({args.iters} iterations)", fontsize=9)
    fig.tight_layout()
    fig.savefig(figdir / f"pnp_deblur_panel{suffix}.png", dpi=110)
    plt.close(fig)
    fig, axes = plt.subplots(1, len(curves), figsize=(4 * len(curves), 3.2), squeeze=False)
    for ax, (key, cs) in zip(axes[0], curves.items()):
        for n, c in cs.items():
            ax.semilogy(range(1, len(c) + 1), c, label=n)
        ax.set_title(key, fontsize=9)
        ax.set_xlabel("iteration")
        ax.grid(True, which="both", alpha=0.3)
    axes[0][0].set_ylabel("fixed-point residual ‖s⁺ − s‖/‖s‖")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(figdir / f"pnp_deblur_residuals{suffix}.png", dpi=110)
    plt.close(fig)
    print(f"wrote {figdir / f'pnp_deblur_panel{suffix}.png'} and {figdir / f'pnp_deblur_residuals{suffix}.png'}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--short", action="store_true", help="smoke run: tiny budgets, one setting")
    ap.add_argument("--steps", type=int, default=1000, help="Adam steps of DnCNN and U-Net")
    ap.add_argument("--lpn-steps", type=int, default=3000, help="Adam steps of the LPN (half l1, half prox. matching)")
    ap.add_argument("--lpn-lipschitz", type=float, default=100.0,
                    help="weight of the Lipschitz penalty of a second LPN (0: train only the paper's LPN)")
    ap.add_argument("--lpn-bound", type=float, default=1.0, help="the bound that penalty enforces (power iteration "
                    "underestimates: below 1 for a margin; the first runs used 0.9)")
    ap.add_argument("--lpn-bounded-quadratic", type=int, default=5,
                    help="kernel size of the bounded LPN's learned quadratic term (ConvLPN(quadratic=...); 0: none, "
                         "as in the first runs)")
    ap.add_argument("--lpn-bounded-beta", type=float, default=10.0,
                    help="softplus β of the bounded LPN (the paper's LPN keeps the config's 100)")
    ap.add_argument("--lpn-penalty-samples", type=int, default=8, help="patches per batch the penalty is taken at")
    ap.add_argument("--lpn-penalty-iters", type=int, default=10, help="power iterations per penalty estimate")
    ap.add_argument("--iters", type=int, default=100, help="PnP-ADMM iterations")
    ap.add_argument("--unrolled-steps", type=int, default=120, help="Adam steps of the unrolled PnP")
    ap.add_argument("--unrolled-lr", type=float, default=2e-4, help="Adam learning rate of the unrolled PnP")
    ap.add_argument("--tag", type=str, default="", help="suffix of the output files (pnp_deblur_<tag>.json, figures)")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (1: on a shared machine more threads slow the small FFTs down by 100x)")
    args = ap.parse_args()
    if args.short:
        args.steps, args.lpn_steps, args.iters, args.unrolled_steps = 4, 4, 5, 2
    run(args)


if __name__ == "__main__":
    main()
