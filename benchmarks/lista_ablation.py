"""What the LISTA family's training set-up is worth: an ablation on the standard problem.

Trains LISTA, LISTA-CP and LISTA-CPSS (16 layers, noiseless, stage-wise: layer t alone, then
layers 1..t at lr x0.2 and x0.02) with a **fixed number of steps per stage**, so every variant
gets exactly the same training and the figures do not depend on the machine's speed. Variants,
each adding one change to the one before:

1. ``softplus``: ISTA initialisation, thresholds learned through a plain softplus (β = 1), one
   learning rate (5e-4, the papers') for everything, no relaxation — this project's set-up
   before these changes;
2. ``beta``: thresholds with β = 10/θ₀ (:func:`unroll.models.base.learned_scalar`): an Adam
   step moves them by about the learning rate, as the papers' plain variables;
3. ``beta_lr10``: the single-element parameters at 5e-3 (``scalar_lr_factor=10``);
4. ``relaxation``: a learned step γ_k per layer;
5. ``analytic``: the matrices start at ALISTA's analytic weight and train at 5e-5, the scalars
   at 5e-3 (``init="analytic"``, ``scalar_lr_factor=100``): the configs' set-up.

At the end of each stage the weights with the best validation NMSE are kept (as
``unroll.train.StageWise`` does); the figure is the NMSE (dB) on the 1000 published test
signals at layers 4, 8, 12 and 16.

    python benchmarks/lista_ablation.py                  # 300 steps per stage, the 10 jobs in JOBS
    python benchmarks/lista_ablation.py --steps 20 --layers 3 --models LISTACP --variants softplus analytic  # smoke

Runs ``--jobs`` variants at a time, one thread each. Writes
``benchmarks/results/lista_ablation.json`` and prints the Markdown for BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Dict, List, Optional

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import cpu_name  # noqa: E402

VARIANTS = {  # name -> (threshold beta = 10/θ0?, matrix lr, scalar lr, relaxation, init)
    "softplus": (False, 5e-4, 5e-4, False, "ista"),
    "beta": (True, 5e-4, 5e-4, False, "ista"),
    "beta_lr10": (True, 5e-4, 5e-3, False, "ista"),
    "relaxation": (True, 5e-4, 5e-3, True, "ista"),
    "analytic": (True, 5e-5, 5e-3, True, "analytic"),
}
LABELS = {"softplus": "1. ISTA init, softplus (β = 1), lr 5e-4 for all", "beta": "2. + β = 10/θ₀",
          "beta_lr10": "3. + scalars at 5e-3", "relaxation": "4. + relaxation",
          "analytic": "5. + analytic init, matrices at 5e-5 (configs)"}
#: the default jobs: every variant for LISTA-CP, the ends and the step before for the others
JOBS = [("LISTACP", v) for v in VARIANTS] + [("LISTA", v) for v in ("softplus", "relaxation", "analytic")] \
    + [("LISTACPSS", v) for v in ("softplus", "analytic")]
MODELS = ("LISTA", "LISTACP", "LISTACPSS")


def run(model_name: str, variant: str, steps: int, layers: int, seed: int) -> Dict[str, object]:
    """Train one model/variant; returns its test NMSE (dB) per layer and the wall time."""
    import torch

    torch.set_num_threads(1)
    from unroll.data import SparseRecoveryDataModule
    from unroll.data.sparse import make_sparse_signals, measure
    from unroll.metrics import nmse
    import unroll.models as M
    from unroll.parametrize import PositiveScalar

    use_beta, lr, lr_scalar, relaxation, init = VARIANTS[variant]
    torch.manual_seed(seed)
    dm = SparseRecoveryDataModule(problem="standard", p=0.1, batch_size=64, val_size=1000, seed=0)
    dm.setup("fit")
    A, val, test = dm.operator, dm.val_split, dm.test_split
    model = getattr(M, model_name)(num_layers=layers, operator=A, lam=0.4, relaxation=relaxation, init=init)
    if not use_beta:  # the former parametrisation: a plain softplus
        for st in model.unrolled.steps:
            st.theta = PositiveScalar(float(st.theta().detach()), learnable=True, name="theta")
    gen = torch.Generator().manual_seed(seed + 1)

    def nmse_db(k: int, split) -> float:
        with torch.no_grad():
            return float(nmse(model(split.y, A, num_iters=k), split.x))  # dB

    t0 = time.perf_counter()
    curve: List[float] = []
    for t in range(1, layers + 1):
        for stage, f in enumerate((1.0, 0.2, 0.02)):
            params = model.layer_parameters(t - 1) if stage == 0 else \
                [p for k in range(t) for p in model.layer_parameters(k)]
            for p in model.parameters():
                p.requires_grad_(False)
            for p in params:
                p.requires_grad_(True)
            opt = torch.optim.Adam([{"params": [p for p in params if p.numel() > 1], "lr": lr * f},
                                    {"params": [p for p in params if p.numel() == 1], "lr": lr_scalar * f}])
            best, best_state = math.inf, None
            for i in range(steps):
                x = make_sparse_signals(A.in_shape[0], 64, 0.1, gen)
                loss = (model(measure(A, x), A, num_iters=t) - x).square().sum(1).mean()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                if (i + 1) % 50 == 0 or i + 1 == steps:
                    v = nmse_db(t, val)
                    if v < best:
                        best, best_state = v, [p.detach().clone() for p in model.parameters()]
            with torch.no_grad():
                for p, b in zip(model.parameters(), best_state):
                    p.copy_(b)
        if t < layers:  # warm start: the new layer starts from its trained predecessor
            with torch.no_grad():
                for dst, src in zip(model.layer_parameters(t), model.layer_parameters(t - 1)):
                    dst.copy_(src)
        curve.append(nmse_db(t, test))
        print(f"{model_name:<10} {variant:<11} layer {t:>2}: test {curve[-1]:7.2f} dB  "
              f"({time.perf_counter() - t0:.0f} s)", flush=True)
    return {"model": model_name, "variant": variant, "test_nmse_db": curve, "wall_s": time.perf_counter() - t0}


def markdown(res: List[Dict[str, object]], layers: int) -> str:
    show = [k for k in (4, 8, 12, 16) if k <= layers] or [layers]
    lines = ["| model | variant | " + " | ".join(f"layer {k}" for k in show) + " |",
             "|---|---|" + "---:|" * len(show)]
    for r in res:
        c = r["test_nmse_db"]
        lines.append(f"| {r['model']} | {LABELS[r['variant']]} | " + " | ".join(f"{c[k - 1]:.2f}" for k in show) + " |")
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=300, help="training steps per stage")
    ap.add_argument("--layers", type=int, default=16)
    ap.add_argument("--models", nargs="+", default=None, choices=list(MODELS),
                    help="with --variants: every combination (default: the jobs listed in JOBS)")
    ap.add_argument("--variants", nargs="+", default=None, choices=list(VARIANTS))
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--results", default=str(ROOT / "benchmarks" / "results" / "lista_ablation.json"))
    args = ap.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    if args.models is None and args.variants is None:
        jobs = list(JOBS)
    else:
        jobs = [(m, v) for m in (args.models or MODELS) for v in (args.variants or VARIANTS)]
    t0 = time.perf_counter()
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        futs = [pool.submit(run, m, v, args.steps, args.layers, args.seed) for m, v in jobs]
        res = [f.result() for f in futs]
    meta = {"steps_per_stage": args.steps, "layers": args.layers, "variants": VARIANTS, "threads_per_run": 1,
            "parallel_runs": args.jobs, "machine": f"{os.cpu_count()} cores, {cpu_name()}",
            "python": platform.python_version(), "total_wall_s": time.perf_counter() - t0}
    Path(args.results).parent.mkdir(parents=True, exist_ok=True)
    Path(args.results).write_text(json.dumps({"meta": meta, "results": res}, indent=1))
    print(f"\n{args.steps} steps per stage, {args.layers} layers; {meta['machine']}; "
          f"total {meta['total_wall_s']:.0f} s\n")
    print(markdown(res, args.layers))


if __name__ == "__main__":
    main()
