"""Phase transition of blind gain calibration by projected gradient descent (issue 19).

Cambareri & Jacques ("Through the Haze", Information and Inference 2019, arXiv:1610.09028) prove
that their projected gradient descent recovers a signal ``x ∈ Rⁿ`` and ``m`` positive sensor gains
``d`` from ``p`` snapshots ``y_l = diag(d) A_l x`` (Gaussian ``A_l``) once the number of
measurements ``mp`` is of the order of the number of unknowns ``n + m``, up to log factors.

For each ``n`` and each ``(m, p)`` of a grid, ``--trials`` random instances (gains within
``ρ = 0.5`` of one, noiseless) are solved by :func:`unroll.calibration.blind_calibration` (the
paper's initialisation, step ``μ = 0.25``, gains projected onto ``{1ᵀd = m, ‖d − 1‖∞ ≤ 0.99}``,
at most ``--iters`` iterations, stopped at a relative change of 1e-11); an instance succeeds when
both relative errors (``x`` and ``d``, normalised by ``1ᵀd = m``) are below 1e-3. Reported: the
success rate per cell, against ``mp/(n + m)``, and per ``(n, m)`` the smallest ratio where at
least half of the trials succeed. If the paper's scaling holds, that ratio is roughly the same
for every ``m`` and ``n`` (up to slowly growing factors).

The learned variant (:class:`unroll.models.LearnedBlindCalibration`, ``K`` layers with per-layer
steps) is trained at one cell (``--learn-cell``) with Adam on fresh instances and compared, along
that cell's row of ``p``, with ``K`` untrained iterations and with the solver.

    nice -n 5 python benchmarks/blind_calibration.py           # about 10 min on 1 core
    python benchmarks/blind_calibration.py --short             # smoke run, seconds
    nice -n 5 python benchmarks/blind_calibration.py --learned-grid --ns 16   # learned vs untrained layers

Writes benchmarks/results/blind_calibration.json and benchmarks/figures/blind_calibration.png.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch

from unroll.calibration import blind_calibration, calibration_errors, make_calibration_instances
from unroll.models import LearnedBlindCalibration

ROOT = Path(__file__).resolve().parents[1]
SUCCESS = 1e-3


def transition(ratios, rates, level=0.5):
    """The smallest ratio at which the success rate reaches ``level`` (linear interpolation
    between grid points in ``log`` ratio), ``None`` if never."""
    pts = sorted(zip(ratios, rates))
    for i, (r, s) in enumerate(pts):
        if s >= level:
            if i == 0:
                return r
            r0, s0 = pts[i - 1]
            w = (level - s0) / (s - s0)
            return math.exp(math.log(r0) + w * (math.log(r) - math.log(r0)))
    return None


def solve_cell(n, m, p, trials, iters, seed):
    gen = torch.Generator().manual_seed(seed)
    A, y, x, d = make_calibration_instances(trials, n, m, p, rho=0.5, generator=gen, dtype=torch.float64)
    t0 = time.perf_counter()
    xh, dh, info = blind_calibration(A, y, rho=0.99, step=0.25, max_iter=iters, tol=1e-11)
    sec = time.perf_counter() - t0
    ex, ed = calibration_errors(xh, dh, x, d)
    ok = torch.maximum(ex, ed) < SUCCESS
    return {"n": n, "m": m, "p": p, "ratio": m * p / (n + m), "success": float(ok.double().mean()),
            "median_x_err": float(ex.median()), "median_d_err": float(ed.median()),
            "median_iters": float(info.iterations.double().median()), "seconds": sec}


def learned_comparison(n, m, p_train, ps, layers, steps, lr, batch, trials, seed):
    """Train ``LearnedBlindCalibration`` at ``(n, m, p_train)``; score it, the untrained ``K``-layer
    model and the solver on fresh instances for each ``p`` in ``ps``."""
    torch.manual_seed(seed)
    model = LearnedBlindCalibration(num_layers=layers, step=0.25, rho=0.99).double()
    untrained = LearnedBlindCalibration(num_layers=layers, step=0.25, learn_step=False, rho=0.99).double()
    gen = torch.Generator().manual_seed(seed + 1)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    t0 = time.perf_counter()
    losses = []
    for _ in range(steps):
        A, y, x, d = make_calibration_instances(batch, n, m, p_train, rho=0.5, generator=gen, dtype=torch.float64)
        out = model(y, A)
        ex, ed = calibration_errors(out.x, out.state.d, x, d)
        loss = (ex.square() + ed.square()).log10().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    train_sec = time.perf_counter() - t0
    rows = []
    test_gen = torch.Generator().manual_seed(seed + 2)
    for p in ps:
        A, y, x, d = make_calibration_instances(trials, n, m, p, rho=0.5, generator=test_gen, dtype=torch.float64)
        row = {"p": p, "ratio": m * p / (n + m)}
        with torch.no_grad():
            for name, net in (("learned", model), ("untrained", untrained)):
                out = net(y, A)
                ex, ed = calibration_errors(out.x, out.state.d, x, d)
                row[name] = {"median_x_err": float(ex.median()), "median_d_err": float(ed.median()),
                             "success": float((torch.maximum(ex, ed) < SUCCESS).double().mean())}
            xh, dh, info = blind_calibration(A, y, rho=0.99, step=0.25, max_iter=layers)
            ex, ed = calibration_errors(xh, dh, x, d)
            row["solver_K"] = {"median_x_err": float(ex.median()), "median_d_err": float(ed.median())}
        rows.append(row)
    return {"n": n, "m": m, "p_train": p_train, "layers": layers, "steps": steps, "lr": lr, "batch": batch,
            "train_seconds": train_sec, "loss_first": losses[0],
            "loss_last10": sum(losses[-10:]) / min(10, len(losses)),
            "step_sizes": model.step_sizes(), "rows": rows}


def learned_grid(args, out_path, fig_path):
    """``--learned-grid``: train the learned variant once at ``--learn-cell`` (as the main run does)
    and score it against ``K`` untrained layers over the ``(m, p)`` grid of that cell's ``n``
    (the layers' step sizes do not depend on the sizes, so one model runs on every cell)."""
    from machine import cpu_name  # benchmarks/machine.py

    ln, lm, lp = args.learn_cell
    t0 = time.perf_counter()
    trained = learned_comparison(ln, lm, lp, [lp], args.layers, args.train_steps, 0.02, 32, 4, args.seed)
    model = LearnedBlindCalibration(num_layers=args.layers, step=0.25, rho=0.99).double()
    for layer, (sx, sd) in zip(model.unrolled.steps, trained["step_sizes"]):
        layer.step_x.set_(sx)
        layer.step_d.set_(sd)
    untrained = LearnedBlindCalibration(num_layers=args.layers, step=0.25, learn_step=False, rho=0.99).double()
    cells = []
    print(f"\nK = {args.layers} layers, trained at n={ln}, m={lm}, p={lp}; median max(x, d) relative error and "
          f"success over {args.trials * 5} instances per cell")
    print("| m | p | mp/(n+m) | untrained: error / success | learned: error / success |")
    print("|---|---|---|---|---|")
    for f in args.m_factors:
        m = max(1, int(round(f * ln)))
        for p in args.ps:
            gen = torch.Generator().manual_seed(args.seed + 7 + 10 * m + p)
            A, y, x, d = make_calibration_instances(args.trials * 5, ln, m, p, rho=0.5, generator=gen,
                                                    dtype=torch.float64)
            row = {"n": ln, "m": m, "p": p, "ratio": m * p / (ln + m)}
            with torch.no_grad():
                for name, net in (("untrained", untrained), ("learned", model)):
                    o = net(y, A)
                    err = torch.maximum(*calibration_errors(o.x, o.state.d, x, d))
                    row[name] = {"median_err": float(err.median()), "success": float((err < SUCCESS).double().mean())}
            cells.append(row)
            print(f"| {m} | {p} | {row['ratio']:.2f} | {row['untrained']['median_err']:.2e} / "
                  f"{row['untrained']['success']:.2f} | {row['learned']['median_err']:.2e} / "
                  f"{row['learned']['success']:.2f} |", flush=True)
    res = {"machine": cpu_name(), "threads": args.threads, "seconds": time.perf_counter() - t0,
           "settings": {k: v for k, v in vars(args).items() if k not in ("out", "figure")}, "training": trained,
           "cells": cells}
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(res, indent=2))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ms = sorted({c["m"] for c in cells})
    ps = sorted({c["p"] for c in cells})
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, name in zip(axes, ("untrained", "learned")):
        grid = torch.full((len(ms), len(ps)), float("nan"))
        for c in cells:
            grid[ms.index(c["m"]), ps.index(c["p"])] = math.log10(max(c[name]["median_err"], 1e-16))
        im = ax.imshow(grid.numpy(), origin="lower", cmap="viridis_r", vmin=-4, vmax=0, aspect="auto")
        ax.set_xticks(range(len(ps)), [str(p) for p in ps])
        ax.set_yticks(range(len(ms)), [str(m) for m in ms])
        ax.set_xlabel("snapshots p")
        ax.set_ylabel("sensors m")
        ax.set_title(f"log10 median error after {args.layers} {name} layers (n = {ln})")
    fig.colorbar(im, ax=axes[-1])
    fig.tight_layout()
    fig_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(fig_path, dpi=110)
    plt.close(fig)
    print(f"\nwrote {out_path} and {fig_path} ({res['seconds']:.0f} s)")


def plot(cells, ns, learned, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(ns) + 1, figsize=(5 * (len(ns) + 1), 4.2))
    for ax, n in zip(axes, ns):
        sub = [c for c in cells if c["n"] == n]
        ms = sorted({c["m"] for c in sub})
        ps = sorted({c["p"] for c in sub})
        grid = torch.full((len(ms), len(ps)), float("nan"))
        for c in sub:
            grid[ms.index(c["m"]), ps.index(c["p"])] = c["success"]
        im = ax.imshow(grid.numpy(), origin="lower", cmap="gray", vmin=0, vmax=1, aspect="auto")
        for c in sub:
            ax.text(ps.index(c["p"]), ms.index(c["m"]), f"{c['ratio']:.2g}", ha="center", va="center", fontsize=7,
                    color="red")
        ax.set_xticks(range(len(ps)), [str(p) for p in ps])
        ax.set_yticks(range(len(ms)), [str(m) for m in ms])
        ax.set_xlabel("snapshots p")
        ax.set_ylabel("sensors m")
        ax.set_title(f"success rate, n = {n} (red: mp/(n+m))")
    fig.colorbar(im, ax=axes[len(ns) - 1])
    ax = axes[-1]
    for n in ns:
        for m in sorted({c["m"] for c in cells if c["n"] == n}):
            sub = sorted((c for c in cells if c["n"] == n and c["m"] == m), key=lambda c: c["ratio"])
            ax.plot([c["ratio"] for c in sub], [c["success"] for c in sub], "o-", ms=3, label=f"n={n}, m={m}")
    ax.set_xscale("log")
    ax.set_xlabel("mp / (n + m)")
    ax.set_ylabel("success rate")
    ax.axhline(0.5, color="k", lw=0.5, ls=":")
    ax.legend(fontsize=6)
    ax.set_title("success vs measurements per unknown")
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--short", action="store_true", help="smoke run: a tiny grid, a few steps")
    ap.add_argument("--ns", type=int, nargs="+", default=[16, 32])
    ap.add_argument("--m-factors", type=float, nargs="+", default=[0.5, 1, 2, 4], help="m = factor · n")
    ap.add_argument("--ps", type=int, nargs="+", default=[1, 2, 3, 4, 6, 8, 12])
    ap.add_argument("--trials", type=int, default=20)
    ap.add_argument("--iters", type=int, default=5000)
    ap.add_argument("--learn-cell", type=int, nargs=3, default=[16, 32, 4], metavar=("N", "M", "P"))
    ap.add_argument("--layers", type=int, default=20)
    ap.add_argument("--train-steps", type=int, default=400)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--learned-grid", action="store_true",
                    help="only: train the learned variant once and compare it with untrained layers over the grid")
    ap.add_argument("--out", default=None, help="results JSON (default benchmarks/results/blind_calibration.json)")
    ap.add_argument("--figure", default=None, help="PNG (default benchmarks/figures/blind_calibration.png)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.short:
        args.ns, args.m_factors, args.ps, args.trials, args.iters = [8], [0.5, 2], [1, 4], 4, 400
        args.learn_cell, args.layers, args.train_steps = [8, 16, 4], 3, 3
    out = Path(args.out) if args.out else ROOT / "benchmarks" / "results" / "blind_calibration.json"
    fig = Path(args.figure) if args.figure else ROOT / "benchmarks" / "figures" / "blind_calibration.png"
    if args.learned_grid:
        learned_grid(args, Path(args.out) if args.out else ROOT / "benchmarks" / "results" /
                     "blind_calibration_learned.json",
                     Path(args.figure) if args.figure else ROOT / "benchmarks" / "figures" /
                     "blind_calibration_learned.png")
        return
    from machine import cpu_name  # benchmarks/machine.py

    t_start = time.perf_counter()
    cells = []
    for n in args.ns:
        for f in args.m_factors:
            m = max(1, int(round(f * n)))
            for p in args.ps:
                c = solve_cell(n, m, p, args.trials, args.iters, args.seed + 1000 * n + 10 * m + p)
                cells.append(c)
                print(f"n={n:3d} m={m:4d} p={p:3d} mp/(n+m)={c['ratio']:6.2f} success={c['success']:.2f} "
                      f"median iters={c['median_iters']:.0f} ({c['seconds']:.1f} s)", flush=True)
    print("\n| n | m | transition mp/(n+m) (success ≥ 50 %) | success at the largest p |")
    print("|---|---|---|---|")
    trans = {}
    for n in args.ns:
        for m in sorted({c["m"] for c in cells if c["n"] == n}):
            sub = [c for c in cells if c["n"] == n and c["m"] == m]
            t = transition([c["ratio"] for c in sub], [c["success"] for c in sub])
            trans[f"{n},{m}"] = t
            last = max(sub, key=lambda c: c["p"])
            print(f"| {n} | {m} | {'not reached' if t is None else f'{t:.2f}'} | {last['success']:.2f} |")

    ln, lm, lp = args.learn_cell
    ps_row = sorted({max(1, lp // 2), lp, 2 * lp})
    learned = learned_comparison(ln, lm, lp, ps_row, args.layers, args.train_steps, 0.02, 32, args.trials * 5,
                                 args.seed)
    print(f"\nlearned variant: K={args.layers} layers trained {args.train_steps} steps at n={ln}, m={lm}, p={lp} "
          f"({learned['train_seconds']:.0f} s); median relative errors on {args.trials * 5} fresh instances:")
    print("\n| p | mp/(n+m) | K untrained steps: x / d | K learned steps: x / d | learned success |")
    print("|---|---|---|---|---|")
    for r in learned["rows"]:
        print(f"| {r['p']} | {r['ratio']:.2f} | {r['untrained']['median_x_err']:.2e} / "
              f"{r['untrained']['median_d_err']:.2e} | {r['learned']['median_x_err']:.2e} / "
              f"{r['learned']['median_d_err']:.2e} | {r['learned']['success']:.2f} |")
    results = {"machine": cpu_name(), "threads": args.threads, "seconds": time.perf_counter() - t_start,
               "settings": {k: v for k, v in vars(args).items() if k not in ("out", "figure")},
               "success_tol": SUCCESS, "cells": cells, "transition": trans, "learned": learned}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    plot(cells, args.ns, learned, fig)
    print(f"\nwrote {out} and {fig} ({results['seconds']:.0f} s, {cpu_name()})")


if __name__ == "__main__":
    main()
