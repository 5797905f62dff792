"""Issue 18's comparison table: zero-filled, CS, MoDL, E2E VarNet, RecurrentVarNet and CIRIM on the
built-in multi-coil brain data, at 4×/8× equispaced Cartesian and 5×/10× 2-D Poisson-disc
undersampling, with fastMRI's per-volume SSIM, PSNR and NMSE, parameter counts, inference time per
slice, and the training memory with and without activation checkpointing. Prints a Markdown report
for BENCHMARKS.md, writes ``benchmarks/results/mri_compare.json`` and one PNG panel per setting
(``benchmarks/figures/mri_compare_<setting>.png``: one test slice, every method, error maps).

    python benchmarks/mri_compare.py                                   # everything (hours on 2 cores)
    python benchmarks/mri_compare.py --steps 60 --size 64 --settings equispaced4 poisson5
    python benchmarks/mri_compare.py --steps 2 --size 32 --test_slices 2   # a smoke run

Data: the built-in Colin27 slices (``unroll.data.fastmri.load_builtin_images``, 8 slabs of 8
slices, 128×128; ``--size`` average-pools them first), simulated as the data module does
(``simulate_multicoil``: 8 birdcage coils, smooth phase, noise 0.01·max, seeded per slab), split
by slab as the data module (train 0, 2, 4, 6, 7; val 3; test 1, 5). Target: the RSS of the noisy
coil images (fastMRI's ``reconstruction_rss``). Masks, seeded per slice: equispaced with a centre
of 8 % (4×) / 4 % (8×) of the columns (fastMRI's ``EquispacedMaskFractionFunc``), Poisson-disc
(``poisson_disc_mask``, centre 8 %; 16 masks drawn once per setting and cycled over the slices,
because drawing one costs a Python loop). Maps: estimated from the ACS block of ``y``
(``estimate_sensitivities``), as the data module does.

Training: every learned model gets the same budget: ``--steps`` Adam steps (lr ``--lr``) on
batches of one slice, loss ``1 − SSIM`` (the MRI task's :class:`~unroll.train.MRILoss`, the
volume's max as data range; CIRIM: over every time step, weighted as in its paper), the model
sizes of ``configs/{modl,varnet,recurrent_varnet,cirim}.yaml`` (read from those files). The
checkpoint with the best validation SSIM is not selected: the last weights are scored. CS:
Haar-wavelet ℓ1 by FISTA (``CompressedSensing``), λ picked on 4 validation slices from a grid.

Memory, two figures. The true peak of tensor memory during one training step (forward and
backward of one slice; parameters, gradients, activations and temporaries) with ``grad_mode="full"``
and ``"checkpoint"``: from the allocator on CUDA (``max_memory_allocated``), elsewhere by following every
storage the step creates until it is freed (a dispatch mode and weak references). And the
bytes of the activations a training step keeps from its forward pass for the
backward pass (tensors saved by autograd, deduplicated by storage, counted with
``torch.autograd.graph.saved_tensors_hooks``), with the models' ``grad_mode="full"`` and
``"checkpoint"`` (MoDL: its CG solve is already differentiated implicitly; not applicable). With
checkpointing the backward pass recomputes one segment at a time, so the true peak adds one
segment's activations to the figure (which the peak figure includes).

Budgets: ``--steps`` Adam steps per learned model (equal steps), or ``--cpu_budget S`` seconds of
CPU time per model (equal compute; process time, so other jobs on a shared machine do not shrink
it); the report gives both the steps taken and the wall and CPU seconds.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

import torch
import torch.nn.functional as F
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))

from machine import cpu_name  # noqa: E402  (benchmarks/machine.py)

SETTINGS = {  # name -> (kind, acceleration, centre fraction)
    "equispaced4": ("equispaced", 4.0, 0.08),
    "equispaced8": ("equispaced", 8.0, 0.04),
    "poisson5": ("poisson", 5.0, 0.08),
    "poisson10": ("poisson", 10.0, 0.08),
}
LEARNED = ["modl", "varnet", "recurrent_varnet", "cirim"]
METHODS = ["zero_filled", "cs"] + LEARNED
LABELS = {"zero_filled": "zero-filled (SENSE)", "cs": "CS (Haar ℓ1, FISTA)", "modl": "MoDL", "varnet": "E2E VarNet",
          "recurrent_varnet": "RecurrentVarNet", "cirim": "CIRIM"}
SPLIT = {"train": [0, 2, 4, 6, 7], "val": [3], "test": [1, 5]}


# ------------------------------------------------------------------------------ data
def make_split(slabs: List[int], setting: str, size: int, coils: int = 8) -> Dict[str, object]:
    """k-space ``y`` (S, C, n, n), masks (S, 1, 1|n, n), ACS-estimated maps, RSS targets, volume ids."""
    from unroll.data.fastmri import BUILTIN_SLAB_SLICES, load_builtin_images
    from unroll.data.fastmri_writer import simulate_multicoil
    from unroll.operators.masks import center_mask, equispaced_mask, mask_seed, poisson_disc_mask
    from unroll.operators.mri import estimate_sensitivities

    kind, accel, cf = SETTINGS[setting]
    images = torch.as_tensor(load_builtin_images())
    ys, masks, maps, targets, vol = [], [], [], [], []
    poisson_bank = None
    if kind == "poisson":
        poisson_bank = [poisson_disc_mask((size, size), accel, cf, seed=1000 + s) for s in range(16)]
    for k in slabs:
        vol_imgs = images[k * BUILTIN_SLAB_SLICES:(k + 1) * BUILTIN_SLAB_SLICES]
        if size != vol_imgs.shape[-1]:
            vol_imgs = F.adaptive_avg_pool2d(vol_imgs.unsqueeze(1), size).squeeze(1)
        sim = simulate_multicoil(vol_imgs, num_coils=coils, noise=0.01, seed=1000 + k)
        kspace, target = sim["kspace"], sim["reconstruction_rss"]
        for s in range(kspace.shape[0]):
            if kind == "equispaced":
                m = equispaced_mask((size,), cf, accel, seed=mask_seed(f"colin27_slab{k}.h5", s)).view(1, 1, size)
            else:
                m = poisson_bank[(k * BUILTIN_SLAB_SLICES + s) % len(poisson_bank)].view(1, size, size)
            y = kspace[s] * m
            n_low = int(center_mask(size, round(size * cf)).sum())
            ys.append(y)
            masks.append(m.float())
            maps.append(estimate_sensitivities(y.unsqueeze(0), n_low)[0])
            targets.append(target[s])
            vol.append(k)
    targets_t = torch.stack(targets)
    vol_t = torch.tensor(vol)
    vmax = torch.stack([targets_t[vol_t == v].max() for v in vol])  # the volume's max (data range)
    return {"y": torch.stack(ys), "mask": torch.stack(masks), "maps": torch.stack(maps), "x": targets_t,
            "vol": vol_t, "max": vmax}


def operator(data, idx):
    from unroll.operators import SENSE

    return SENSE(data["maps"][idx], data["mask"][idx])


# ------------------------------------------------------------------------------ models
def config_model(name: str) -> torch.nn.Module:
    """The model of ``configs/<name>.yaml`` (class and init_args as written there)."""
    cfg = yaml.safe_load((ROOT / "configs" / f"{name}.yaml").read_text())
    spec = cfg["model"]["init_args"]["model"]
    module, cls = spec["class_path"].rsplit(".", 1)
    return getattr(importlib.import_module(module), cls)(**spec.get("init_args", {}))


def supports_checkpoint(model) -> bool:
    return type(model).__name__ in ("VarNet", "RecurrentVarNet", "CIRIM")


def training_loss(name, model, y, op, x, d, grad_mode=None):
    from unroll.models.cirim import time_step_loss
    from unroll.train.mri import MRILoss, magnitude_crop

    loss_fn = MRILoss(1.0, 0.0)
    kw = {} if grad_mode is None else {"grad_mode": grad_mode}
    if name == "cirim":
        out = model(y, op, return_trajectory=True, **kw)
        return time_step_loss(out.trajectory, lambda z: loss_fn(magnitude_crop(z, x.shape), x, data_range=d))
    return loss_fn(magnitude_crop(model(y, op, **kw), x.shape), x, data_range=d)


def train(name, model, data, steps: int, lr: float, seed: int = 0, cpu_budget: Optional[float] = None):
    """Adam steps on single slices (a seeded random order): ``steps`` of them, or with ``cpu_budget``
    as many as fit in that many seconds of this process's CPU time (``time.process_time``: on a
    shared machine other jobs do not shrink it, as they would a wall-clock budget; ``steps`` is
    then a cap). Returns ``(wall seconds, CPU seconds, steps taken)``."""
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    n = data["y"].shape[0]
    model.train()
    t0, c0 = time.perf_counter(), time.process_time()
    order: List[int] = []
    taken = 0
    for _ in range(steps):
        if cpu_budget is not None and time.process_time() - c0 >= cpu_budget:
            break
        taken += 1
        if not order:
            order = torch.randperm(n, generator=gen).tolist()
        i = order.pop()
        idx = slice(i, i + 1)
        loss = training_loss(name, model, data["y"][idx], operator(data, idx), data["x"][idx], data["max"][idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return time.perf_counter() - t0, time.process_time() - c0, taken


def saved_activation_bytes(name, model, data, grad_mode) -> int:
    """Bytes autograd keeps from one training forward pass for the backward pass (storages counted once)."""
    seen = {}

    def pack(t):
        try:
            st = t.untyped_storage()
            seen[(st.data_ptr(), t.device)] = st.nbytes()
        except (RuntimeError, NotImplementedError):  # tensors without storage
            seen[id(t)] = t.numel() * t.element_size()
        return t

    idx = slice(0, 1)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = training_loss(name, model, data["y"][idx], operator(data, idx), data["x"][idx], data["max"][idx],
                             grad_mode)
    loss.backward()
    model.zero_grad(set_to_none=True)
    return int(sum(seen.values()))


class PeakMemory:
    """The peak of live tensor storage while active (a ``TorchDispatchMode``): every storage an
    operation returns is counted from its creation until it is freed (a weak reference to it
    fires then), once however many tensors view it; ``start`` storages (the model's parameters)
    count throughout. Any device; ``peak`` and ``current`` in bytes."""

    def __init__(self, start=()):
        from torch.utils._python_dispatch import TorchDispatchMode

        tracker = self
        self.live: Dict[int, object] = {}
        self.current = self.peak = 0

        class _Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                out = func(*args, **(kwargs or {}))
                for t in torch.utils._pytree.tree_leaves(out):
                    if isinstance(t, torch.Tensor):
                        tracker.add(t)
                return out

        self.mode = _Mode()
        for t in start:
            self.add(t)

    def add(self, t: torch.Tensor) -> None:
        import weakref

        st = t.untyped_storage()
        key = st._cdata
        if key in self.live:
            return
        nbytes = st.nbytes()

        def freed(_ref, key=key, nbytes=nbytes):
            self.current -= nbytes
            self.live.pop(key, None)

        self.live[key] = weakref.ref(st, freed)
        self.current += nbytes
        self.peak = max(self.peak, self.current)

    def __enter__(self):
        self.mode.__enter__()
        return self

    def __exit__(self, *exc):
        return self.mode.__exit__(*exc)


def peak_step_bytes(name, model, data, grad_mode) -> Dict[str, int]:
    """The true peak of tensor memory during one training step (forward and backward of one slice):
    ``{"peak": bytes, "params": bytes}``. On CUDA from the allocator (``max_memory_allocated``,
    minus what was allocated before the step, plus the parameters); elsewhere by following every
    tensor storage the step creates until it is freed (:class:`PeakMemory`): parameters,
    gradients, activations and temporaries. The input slice, built before the step, is not
    counted."""
    idx = slice(0, 1)
    args = (data["y"][idx], operator(data, idx), data["x"][idx], data["max"][idx])
    model.zero_grad(set_to_none=True)
    params = list(model.parameters())
    param_bytes = sum(p.untyped_storage().nbytes() for p in {p.untyped_storage()._cdata: p for p in params}.values())
    dev = data["y"].device
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
        torch.cuda.reset_peak_memory_stats(dev)
        base = torch.cuda.memory_allocated(dev)
        training_loss(name, model, *args, grad_mode).backward()
        torch.cuda.synchronize(dev)
        peak = torch.cuda.max_memory_allocated(dev) - base + param_bytes
    else:
        with PeakMemory(start=params) as tracker:
            training_loss(name, model, *args, grad_mode).backward()
        peak = tracker.peak
    model.zero_grad(set_to_none=True)
    return {"peak": int(peak), "params": int(param_bytes)}


@torch.no_grad()
def reconstruct(model, data, batch: int = 4):
    """``|x̂|`` (S, n, n) and the mean inference time per slice (s)."""
    from unroll.train.mri import magnitude_crop

    if isinstance(model, torch.nn.Module):
        model.eval()
    outs = []
    t0 = time.perf_counter()
    for i in range(0, data["y"].shape[0], batch):
        idx = slice(i, i + batch)
        outs.append(magnitude_crop(model(data["y"][idx], operator(data, idx)), data["x"][idx].shape))
    return torch.cat(outs), (time.perf_counter() - t0) / data["y"].shape[0]


def fastmri_scores(pred, data) -> Dict[str, float]:
    """fastMRI's metrics per volume (data range = the volume's max), averaged over volumes."""
    from unroll.metrics import fastmri_nmse, fastmri_psnr, fastmri_ssim

    rows = {"nmse": [], "psnr": [], "ssim": []}
    for v in data["vol"].unique().tolist():
        sel = data["vol"] == v
        t, p = data["x"][sel].double(), pred[sel].double()
        rows["nmse"].append(float(fastmri_nmse(t, p)))
        rows["psnr"].append(float(fastmri_psnr(t, p)))
        rows["ssim"].append(float(fastmri_ssim(t, p)))
    return {k: sum(v) / len(v) for k, v in rows.items()}


def tune_cs(data, lams=(1e-3, 3e-3, 1e-2, 3e-2), n: int = 4):
    from unroll.models import CompressedSensing
    from unroll.metrics import fastmri_ssim

    sub = {k: v[:n] for k, v in data.items()}
    best = None
    for lam in lams:
        pred, _ = reconstruct(CompressedSensing(lam=lam), sub)
        score = float(fastmri_ssim(sub["x"].double(), pred.double(), sub["max"][0].double()))
        if best is None or score > best[1]:
            best = (lam, score)
    return best[0]


def panel(path: Path, setting: str, test, preds: Dict[str, torch.Tensor], index: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    target = test["x"][index]
    d = float(test["max"][index])
    cols = [("target", target)] + [(LABELS[m], p[index]) for m, p in preds.items()]
    fig, axes = plt.subplots(2, len(cols), figsize=(2.2 * len(cols), 4.6))
    for j, (title, img) in enumerate(cols):
        axes[0, j].imshow(img.numpy(), cmap="gray", vmin=0, vmax=d)
        axes[0, j].set_title(title, fontsize=8)
        if j:
            axes[1, j].imshow((img - target).abs().numpy(), cmap="magma", vmin=0, vmax=0.25 * d)
        for a in axes[:, j]:
            a.axis("off")
    fig.suptitle(f"{setting}: test slice {index} (bottom: |error|, 0 to 25 % of the volume max)", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)


# ------------------------------------------------------------------------------ main
def main(argv: Optional[List[str]] = None) -> Dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--methods", nargs="+", default=METHODS, choices=METHODS)
    parser.add_argument("--steps", type=int, default=200, help="training steps of every learned model (a cap "
                        "with --cpu_budget)")
    parser.add_argument("--cpu_budget", type=float, default=None,
                        help="equal compute instead of equal steps: train every learned model for this many "
                             "seconds of CPU time (process time; at most --steps steps)")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--size", type=int, default=128, help="image size (the built-in 128, or average-pooled)")
    parser.add_argument("--test_slices", type=int, default=None, help="score only the first N test slices")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--memory_only", action="store_true",
                        help="only the parameter counts and the memory figures of the learned models (no training, "
                             "no scoring)")
    parser.add_argument("--output", default=str(ROOT / "benchmarks" / "results" / "mri_compare.json"))
    parser.add_argument("--figures", default=str(ROOT / "benchmarks" / "figures"))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    report = {"command": "python benchmarks/mri_compare.py " + " ".join(argv if argv is not None else sys.argv[1:]),
              "machine": {"cpu": cpu_name(), "threads": args.threads, "python": platform.python_version(),
                          "torch": torch.__version__, "load_average": list(os.getloadavg())},
              "budget": {"steps": args.steps, "cpu_seconds": args.cpu_budget, "lr": args.lr, "batch": 1,
                         "size": args.size}, "memory_only": args.memory_only, "results": {}}
    for setting in args.settings:
        torch.manual_seed(0)
        train_d = make_split(SPLIT["train"], setting, args.size)
        val_d = make_split(SPLIT["val"], setting, args.size)
        test_d = make_split(SPLIT["test"], setting, args.size)
        if args.test_slices is not None:
            test_d = {k: v[:args.test_slices] for k, v in test_d.items()}
        results, preds = {}, {}
        for method in args.methods:
            row: Dict[str, object] = {}
            if args.memory_only and method not in LEARNED:
                continue
            if method == "zero_filled":
                from unroll.models import ZeroFilled

                model = ZeroFilled("sense")
            elif method == "cs":
                from unroll.models import CompressedSensing

                lam = tune_cs(val_d)
                model = CompressedSensing(lam=lam)
                row["lam"] = lam
            else:
                torch.manual_seed(0)
                model = config_model(method)
                row["params"] = sum(p.numel() for p in model.parameters())
                if supports_checkpoint(model):
                    row["saved_bytes_full"] = saved_activation_bytes(method, model, train_d, "full")
                    row["saved_bytes_checkpoint"] = saved_activation_bytes(method, model, train_d, "checkpoint")
                    row["peak_full"] = peak_step_bytes(method, model, train_d, "full")
                    row["peak_checkpoint"] = peak_step_bytes(method, model, train_d, "checkpoint")
                else:
                    row["saved_bytes_full"] = saved_activation_bytes(method, model, train_d, None)
                    row["peak_full"] = peak_step_bytes(method, model, train_d, None)
                if args.memory_only:
                    results[method] = row
                    print(f"[{setting}] {method}: {row}", flush=True)
                    continue
                row["train_seconds"], row["train_cpu_seconds"], row["train_steps"] = train(
                    method, model, train_d, args.steps, args.lr, cpu_budget=args.cpu_budget)
            pred, per_slice = reconstruct(model, test_d)
            row.update(fastmri_scores(pred, test_d))
            row["seconds_per_slice"] = per_slice
            results[method], preds[method] = row, pred
            print(f"[{setting}] {method}: " + ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                                      for k, v in row.items()), flush=True)
        if not args.memory_only:
            panel(Path(args.figures) / f"mri_compare_{setting}.png", setting, test_d, preds,
                  index=min(4, test_d["y"].shape[0] - 1))
        report["results"][setting] = results
        report["machine"]["load_average_end"] = list(os.getloadavg())
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(json.dumps(report, indent=2))  # after every setting: partial runs are kept
    print(markdown(report))
    return report


def markdown(report: Dict) -> str:
    budget = report["budget"]
    what = (f"{budget['cpu_seconds']:g} s of CPU time per model (at most {budget['steps']} Adam steps)"
            if budget.get("cpu_seconds") else f"{budget['steps']} Adam steps")
    lines = [f"Command: `{report['command']}`; {report['machine']['cpu']}, {report['machine']['threads']} thread(s), "
             f"load average {report['machine']['load_average'][0]:.1f}; budget {what} "
             f"(lr {budget['lr']}, one slice per step), images {budget['size']}².", ""]

    def mb(a, b=None, na=" (n/a)"):
        return f"{a / 2**20:.1f}" + (f" → {b / 2**20:.1f}" if b is not None else na)

    if report.get("memory_only"):
        for setting, results in report["results"].items():
            lines += [f"**{setting}** (memory of one training step, one slice)", "",
                      "| method | params | peak full → checkpoint (MB) | saved activations full → checkpoint (MB) |",
                      "|---|---|---|---|"]
            for m, r in results.items():
                ck = r.get("peak_checkpoint")
                lines.append(f"| {LABELS[m]} | {r['params']:,} | "
                             f"{mb(r['peak_full']['peak'], ck['peak'] if ck else None)} | "
                             f"{mb(r['saved_bytes_full'], r.get('saved_bytes_checkpoint'))} |")
            lines.append("")
        return "\n".join(lines)

    for setting, results in report["results"].items():
        lines += [f"**{setting}**", "",
                  "| method | SSIM | PSNR (dB) | NMSE | params | steps | train (s wall / CPU) | inference (ms/slice) | "
                  "peak step memory full → checkpoint (MB) | saved activations full → checkpoint (MB) |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for m, r in results.items():
            saved = peak = ""
            if "saved_bytes_full" in r:
                saved = mb(r["saved_bytes_full"], r.get("saved_bytes_checkpoint"))
            if "peak_full" in r:
                peak = mb(r["peak_full"]["peak"], r["peak_checkpoint"]["peak"] if "peak_checkpoint" in r else None)
            train_s = (f"{r['train_seconds']:.0f} / {r.get('train_cpu_seconds', r['train_seconds']):.0f}"
                       if "train_seconds" in r else "0")
            lines.append(f"| {LABELS[m]} | {r['ssim']:.4f} | {r['psnr']:.2f} | {r['nmse']:.4f} | "
                         f"{r.get('params', 0):,} | {r.get('train_steps', '')} | {train_s} | "
                         f"{1000 * r['seconds_per_slice']:.1f} | {peak} | {saved} |")
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
