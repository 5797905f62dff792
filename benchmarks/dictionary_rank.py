"""Supervised dictionary learning with a low-rank covariate map: recovery error vs assumed rank
(issue 19; the formulation is pinned down in :mod:`unroll.dictionary`).

Ground truth (:func:`unroll.dictionary.make_dictionary_problem`): ``k = 12`` orthonormal atoms in
``d = 24`` dimensions, codes with ``s = 2`` nonzeros, ``q = 20`` covariates through a map ``W`` of
true rank ``r* = 3``, ``N = 150`` training samples, white noise of standard deviation ``σ`` on
signals and covariates. For each assumed rank ``r`` the alternating projected gradient
(:func:`unroll.dictionary.supervised_dictionary_learning`, ``β = 1``) is run on ``--trials``
independent problems from a start at relative distance ``--delta`` from the true dictionary (a
local method: see the random-start row), and scored by

* the dictionary error ``‖D̂PS − D‖/‖D‖`` (atoms matched by the Hungarian algorithm, signs fixed),
* the covariate map error ``‖ŴPSΛ − W‖/‖W‖`` (same permutation/signs, atom scales),
* the held-out prediction error ``‖Ŵ ẑ − W z‖/‖W z‖`` on 500 fresh samples, their codes ``ẑ``
  found from the signals alone by hard thresholding with ``D̂``.

Also reported: the same at the true rank from the common data start (``k`` random normalised
signals), without and with ``--warmup`` sweeps of unsupervised learning first (``β = 0``, codes
restarted each sweep), to show how far the method is from global recovery.

    nice -n 5 python benchmarks/dictionary_rank.py       # a few minutes on 1 core
    python benchmarks/dictionary_rank.py --short         # smoke run
    nice -n 5 python benchmarks/dictionary_rank.py --random-only 150 600 2400   # random starts only

Writes benchmarks/results/dictionary_rank.json and benchmarks/figures/dictionary_rank.png.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from unroll.dictionary import dictionary_errors, make_dictionary_problem, sparse_code, supervised_dictionary_learning

ROOT = Path(__file__).resolve().parents[1]


def run(Y, C, D, W, Yt, Ct_clean, k, rank, s, iters, D0, gen, warmup=0):
    t0 = time.perf_counter()
    Dh, Wh, _, info = supervised_dictionary_learning(Y, C, k, rank, s, max_iter=iters, tol=1e-10, D0=D0,
                                                     generator=gen, warmup=warmup)
    sec = time.perf_counter() - t0
    atom, derr, werr = dictionary_errors(Dh, Wh, D, W)
    Zt = sparse_code(Yt, Dh, s)
    pred = torch.linalg.norm(Wh @ Zt - Ct_clean, dim=(1, 2)) / torch.linalg.norm(Ct_clean, dim=(1, 2))
    recovered = (atom < 1e-2).double()
    cos = ((Dh / Dh.norm(dim=1, keepdim=True).clamp_min(1e-300)).transpose(1, 2) @ D).abs().amax(1)  # (B, k)
    return {"atoms_found": float((cos > 0.99).double().mean()), "rank": rank, "D_err": float(derr.median()),
            "W_err": float(werr.median()),
            "pred_err": float(pred.median()), "worst_atom": float(atom.median()),
            "all_atoms_recovered": float(recovered.mean()), "median_iters": float(info.iterations.double().median()),
            "seconds": sec}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--short", action="store_true")
    ap.add_argument("--ranks", type=int, nargs="+", default=[1, 2, 3, 4, 6, 9, 12])
    ap.add_argument("--noise", type=float, nargs="+", default=[0.0, 0.05, 0.1])
    ap.add_argument("--trials", type=int, default=8)
    ap.add_argument("--iters", type=int, default=1500)
    ap.add_argument("--delta", type=float, default=0.3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--warmup", type=int, default=100, help="unsupervised warm-up sweeps of the random starts")
    ap.add_argument("--random-only", type=int, nargs="*", default=None, metavar="N",
                    help="only the random data start, noiseless, at the true rank, for these sample counts N")
    ap.add_argument("--out", default=None)
    ap.add_argument("--figure", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    d, k, q, r_true, s, N, N_test = 24, 12, 20, 3, 2, 150, 500
    if args.short:
        d, k, q, r_true, N, N_test = 8, 4, 6, 2, 40, 50
        args.ranks, args.noise, args.trials, args.iters, args.warmup = [1, 2, 4], [0.05], 2, 60, 5
    out = Path(args.out) if args.out else ROOT / "benchmarks" / "results" / "dictionary_rank.json"
    fig_path = Path(args.figure) if args.figure else ROOT / "benchmarks" / "figures" / "dictionary_rank.png"
    from machine import cpu_name  # benchmarks/machine.py

    t_start = time.perf_counter()
    if args.random_only:
        rows = []
        print("| N | warm-up sweeps | atoms found (cos > 0.99) | problems with every atom | D error | W error | "
              "sweeps |")
        print("|---|---|---|---|---|---|---|")
        for n_train in args.random_only:
            g = torch.Generator().manual_seed(args.seed + n_train)
            Yall, Call, D, W, _ = make_dictionary_problem(args.trials, d, k, q, r_true, s, n_train + N_test,
                                                          generator=g)
            for warm in (0, args.warmup):
                row = run(Yall[..., :n_train], Call[..., :n_train], D, W, Yall[..., n_train:], Call[..., n_train:], k,
                          r_true, s, args.iters, None, torch.Generator().manual_seed(args.seed), warmup=warm)
                row["N"], row["warmup"] = n_train, warm
                rows.append(row)
                print(f"| {n_train} | {warm} | {row['atoms_found']:.2f} | {row['all_atoms_recovered']:.2f} | "
                      f"{row['D_err']:.2e} | {row['W_err']:.2e} | {row['median_iters']:.0f} |", flush=True)
        out = Path(args.out) if args.out else ROOT / "benchmarks" / "results" / "dictionary_random_start.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        settings = {"d": d, "k": k, "q": q, "true_rank": r_true, "sparsity": s,
                    **{kk: v for kk, v in vars(args).items() if kk not in ("out", "figure")}}
        out.write_text(json.dumps({"machine": cpu_name(), "settings": settings, "rows": rows,
                                   "seconds": time.perf_counter() - t_start}, indent=2))
        print(f"wrote {out}")
        return
    results = {"machine": cpu_name(), "threads": args.threads,
               "settings": {"d": d, "k": k, "q": q, "true_rank": r_true, "sparsity": s, "N": N, "N_test": N_test,
                            **{kk: v for kk, v in vars(args).items() if kk not in ("out", "figure")}},
               "curves": {}, "random_start": {}}
    for sigma in args.noise:
        g = torch.Generator().manual_seed(args.seed + int(1000 * sigma))
        Yall, Call, D, W, Zall = make_dictionary_problem(args.trials, d, k, q, r_true, s, N + N_test, generator=g)
        noisy = lambda t: t + sigma * torch.randn(t.shape, generator=g, dtype=t.dtype)  # noqa: E731
        Y, C = noisy(Yall[..., :N]), noisy(Call[..., :N])
        Yt, Ct_clean = noisy(Yall[..., N:]), Call[..., N:]
        E = torch.randn(D.shape, generator=g, dtype=D.dtype)
        D0 = D + args.delta * E / torch.linalg.norm(E, dim=(1, 2), keepdim=True) * torch.linalg.norm(D, dim=(1, 2),
                                                                                                     keepdim=True)
        rows = []
        print(f"\nσ = {sigma}: d={d}, k={k}, q={q}, true rank {r_true}, s={s}, N={N}, start at δ={args.delta}")
        print("| assumed rank | D error | W error | held-out covariate error | problems with every atom found | "
              "sweeps |")
        print("|---|---|---|---|---|---|")
        for rank in args.ranks:
            row = run(Y, C, D, W, Yt, Ct_clean, k, rank, s, args.iters, D0, None)
            rows.append(row)
            print(f"| {rank}{' (true)' if rank == r_true else ''} | {row['D_err']:.2e} | {row['W_err']:.2e} | "
                  f"{row['pred_err']:.2e} | {row['all_atoms_recovered']:.2f} | {row['median_iters']:.0f} |",
                  flush=True)
        results["curves"][str(sigma)] = rows
        for warm in (0, args.warmup):
            rnd = run(Y, C, D, W, Yt, Ct_clean, k, r_true, s, args.iters, None,
                      torch.Generator().manual_seed(args.seed), warmup=warm)
            results["random_start"][f"{sigma}/warmup{warm}"] = rnd
            print(f"random data start, true rank, {warm} warm-up sweeps: D error {rnd['D_err']:.2e}, W error "
                  f"{rnd['W_err']:.2e}, atoms found {rnd['atoms_found']:.2f}, every atom found in "
                  f"{rnd['all_atoms_recovered']:.2f} of the problems")
    results["seconds"] = time.perf_counter() - t_start
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    for ax, key, title in zip(axes, ("D_err", "W_err", "pred_err"),
                              ("dictionary error", "covariate map error", "held-out covariate prediction error")):
        for sigma, rows in results["curves"].items():
            ax.plot([r["rank"] for r in rows], [max(r[key], 1e-16) for r in rows], "o-", label=f"σ = {sigma}")
        ax.axvline(r_true, color="k", ls=":", lw=0.8)
        ax.set_yscale("log")
        ax.set_xlabel("assumed rank r (dotted: true rank)")
        ax.set_title(title + " (median)")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(fig_path, dpi=110)
    plt.close(fig)
    print(f"\nwrote {out} and {fig_path} ({results['seconds']:.0f} s, {cpu_name()})")


if __name__ == "__main__":
    main()
