"""Supervised vs unsupervised unrolling of ISTA and IHT, learning only the step sizes.

Unrolled ISTA (ℓ1) and unrolled IHT (ℓ0) with ``T`` layers,
``x_{k+1} = prox_{α_k λ g}(x_k − α_k Aᵀ(A x_k − y))``, ``α_k = s_k / L``, learn only the
per-layer steps ``s_k`` (initialised at the classical ``s_k = 1``, λ fixed), once with the MSE
to the true ``x`` (supervised) and once with the objective ``½‖Ax − y‖² + λ g(x)`` itself
(unsupervised). Each learned network is compared with classical ISTA / IHT after ``T``
iterations and run to convergence, and with the number of classical iterations it takes to
match it: the smallest ``k`` whose objective (unsupervised) or NMSE (supervised) reaches the
network's. Learned IHT is also tested under a sparsity mismatch (trained at ``p = 0.08``,
tested at ``p = 0.04`` and ``p = 0.16`` on the same matrix).

    python benchmarks/sup_vs_unsup.py            # T ∈ {10, 20, 50, 100}: about 6 min, 1 thread
    python benchmarks/sup_vs_unsup.py --short    # T ∈ {10, 20}, small splits: under 1 min
    python benchmarks/sup_vs_unsup.py --T 20 100 --layer-steps 20000

Problem: Gaussian ``A`` (75×150, unit-norm columns, seed 0), Bernoulli–Gaussian ``x`` with
``p = 0.08`` (about 12 non-zeros), SNR 10 dB (``unroll.data.SparseRecoveryDataModule``).
λ for ISTA and for IHT: the best NMSE of the converged classical solver on the validation
split over a small grid. Training: Adam on fresh float32 batches (the same batch sequence for
every network), cosine learning-rate decay, ``steps(T) = clip(layer_steps / T, min, max)``;
the validation split picks the best checkpoint (the training criterion: NMSE for supervised,
mean objective for unsupervised), and a blow-up (non-finite or 3× the initial criterion)
restores the best checkpoint and halves the learning rate. Evaluation in float64 on the test
split; the classical solvers run in chunks (``x0`` = last iterate) until every sample's
relative change is ``≤ tol`` or ``max_iter``.

Writes ``benchmarks/results/sup_vs_unsup.json`` and the figures
``benchmarks/figures/sup_vs_unsup_{curves,steps}.png`` (``--short``: ``sup_vs_unsup_short*``), and
prints the Markdown tables.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import math
import os
import platform
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import cpu_name  # noqa: E402  (benchmarks/machine.py)

from unroll import metrics, solvers  # noqa: E402
from unroll.data import SparseRecoveryDataModule  # noqa: E402
from unroll.losses import MSELoss, ObjectiveLoss  # noqa: E402
from unroll.models import LearnedIHT, LearnedISTA  # noqa: E402
from unroll.problem import Problem  # noqa: E402
from unroll.prox import L0, L1  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
ALGOS = {  # name -> (learned model class, regulariser class, classical solver)
    "ista": (LearnedISTA, L1, solvers.ista),
    "iht": (LearnedIHT, L0, solvers.iht),
}
LOSSES = ("sup", "unsup")


@dataclass
class Config:
    """Everything the run depends on (stored in the results)."""

    m: int = 75
    n: int = 150
    p: float = 0.08
    snr_db: float = 10.0
    seed: int = 0
    Ts: Tuple[int, ...] = (10, 20, 50, 100)
    batch_size: int = 128
    lr: float = 0.02
    layer_steps: int = 35000  # steps(T) = clip(layer_steps / T, min_steps, max_steps)
    min_steps: int = 500
    max_steps: int = 1500
    evals: int = 10  # validation checks per training run
    val_size: int = 500
    test_size: int = 1000
    lam_grid: Dict[str, Tuple[float, ...]] = field(default_factory=lambda: {
        "ista": (0.05, 0.07, 0.1, 0.14, 0.2), "iht": (0.025, 0.035, 0.05, 0.07, 0.1)})
    lam_max_iter: int = 2000  # λ selection: converged enough for the NMSE
    lam_tol: float = 1e-6
    max_iter: int = 10000  # classical "to convergence"
    tol: float = 1e-8
    chunk: int = 100
    mismatch_p: Tuple[float, ...] = (0.04, 0.16)

    def steps(self, T: int) -> int:
        return int(min(self.max_steps, max(self.min_steps, round(self.layer_steps / T))))


SHORT = dict(Ts=(10, 20), layer_steps=4000, min_steps=200, max_steps=400, evals=5, val_size=200,
             test_size=300, lam_grid={"ista": (0.07, 0.1, 0.14), "iht": (0.035, 0.05, 0.07)},
             lam_max_iter=1000, max_iter=3000)
#: ``--smoke``: the whole pipeline in seconds (a test, not a result)
SMOKE = dict(Ts=(3,), batch_size=16, layer_steps=6, min_steps=3, max_steps=3, evals=1, val_size=32, test_size=32,
             lam_grid={"ista": (0.1,), "iht": (0.05,)}, lam_max_iter=50, max_iter=100, chunk=50, mismatch_p=(0.04,))


# ---------------------------------------------------------------------------- data
def datamodule(cfg: Config, p: float, dtype: str, batch_size: int = 1, train_batches: int = 1,
               val_size: int = 1, test_size: int = 1) -> SparseRecoveryDataModule:
    """The data module of the setup (same seed, hence the same ``A``, for every ``p``)."""
    dm = SparseRecoveryDataModule(problem="gaussian", m=cfg.m, n=cfg.n, p=p, snr_db=cfg.snr_db,
                                  batch_size=batch_size, train_batches=train_batches, val_size=val_size,
                                  test_size=test_size, seed=cfg.seed, dtype=dtype)
    dm.setup("fit")
    return dm


def regulariser(algo: str, lam: float, dtype=torch.float64):
    return ALGOS[algo][1](lam).to(dtype)


def mean_objective(op, y: torch.Tensor, x_hat: torch.Tensor, reg) -> float:
    return float(Problem.create(op, y, reg=reg, check=False).objective(x_hat).mean())


# ---------------------------------------------------------------------------- classical solvers
def select_lam(algo: str, op, val, grid: Sequence[float], max_iter: int, tol: float) -> Tuple[float, List[Dict]]:
    """λ with the best NMSE of the converged classical solver on the validation split."""
    rows = []
    for lam in grid:
        x_hat, info = ALGOS[algo][2](op, val.y, lam, max_iter=max_iter, tol=tol)
        rows.append({"lam": lam, "nmse_db": float(metrics.nmse(x_hat, val.x)),
                     "nnz": float((x_hat != 0).sum(1).double().mean()), "iterations": int(info.iterations.max())})
    best = min(rows, key=lambda r: r["nmse_db"])["lam"]
    return best, rows


def classical_curve(algo: str, op, batch, lam: float, max_iter: int, tol: float, chunk: int) -> Dict:
    """NMSE (dB; ratio of sums and median per sample) and mean objective after every iteration
    ``k = 1, 2, …`` of the classical solver, until every sample's relative change is ``≤ tol``
    (or ``max_iter``)."""
    solver = ALGOS[algo][2]
    nmse_db: List[float] = []
    median_db: List[float] = []
    objective: List[float] = []
    x_cur, converged = None, False
    while len(nmse_db) < max_iter and not converged:
        n = min(chunk, max_iter - len(nmse_db))
        x_cur, info = solver(op, batch.y, lam, max_iter=n, tol=tol, x0=x_cur, return_trajectory=True)
        nmse_db += [float(metrics.nmse(xk, batch.x)) for xk in info.trajectory]
        median_db += [float(metrics.nmse(xk, batch.x, reduction="none").nanmedian()) for xk in info.trajectory]
        objective += info.objective.mean(0).tolist()
        converged = bool(info.converged.all())
    return {"nmse_db": nmse_db, "median_nmse_db": median_db, "objective": objective, "iterations": len(nmse_db),
            "converged": converged, "final_nmse_db": nmse_db[-1], "final_median_nmse_db": median_db[-1],
            "final_objective": objective[-1]}


def iterations_to_match(values: Sequence[float], target: float) -> Optional[int]:
    """Smallest ``k ≥ 1`` with ``values[k−1] ≤ target`` (``None``: never within the curve)."""
    return next((k + 1 for k, v in enumerate(values) if v <= target), None)


def at(curve: Dict, key: str, k: int) -> float:
    """The curve's value after ``k`` iterations (its last one past convergence)."""
    return curve[key][min(k, len(curve[key])) - 1]


# ---------------------------------------------------------------------------- training
def criterion_fn(kind: str, op, val, reg) -> Callable[[torch.nn.Module], float]:
    """Validation criterion of a training run: NMSE (supervised) or mean objective (unsupervised)."""

    def crit(model) -> float:
        with torch.no_grad():
            x_hat = model(val.y, op)
        if kind == "sup":
            return float(metrics.nmse(x_hat, val.x, db=False))
        return mean_objective(op, val.y, x_hat, reg)

    return crit


def train(cfg: Config, algo: str, kind: str, T: int, lam: float) -> Tuple[torch.nn.Module, Dict]:
    """Learn the ``T`` steps of unrolled ISTA/IHT with the supervised or unsupervised loss."""
    steps = cfg.steps(T)
    dm = datamodule(cfg, cfg.p, "float32", batch_size=cfg.batch_size, train_batches=steps,
                    val_size=cfg.val_size)
    op = dm.get_operator()
    model = ALGOS[algo][0](num_layers=T, lam=lam, step=1.0, learn_step=True, learn_threshold=False)
    reg = regulariser(algo, lam, torch.float32)
    loss_fn = MSELoss() if kind == "sup" else ObjectiveLoss(reg)
    crit = criterion_fn(kind, op, dm.val_split, reg)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, foreach=True)

    every = max(1, steps // cfg.evals)
    initial = best = crit(model)
    best_state = (copy.deepcopy(model.state_dict()), copy.deepcopy(opt.state_dict()))
    best_step, scale, restarts, history = 0, 1.0, 0, [(0, initial)]
    t0 = time.perf_counter()
    for step, (y, x, *_) in enumerate(dm.train_dataloader(), start=1):  # Batch(y, x, operator, meta)
        for g in opt.param_groups:  # cosine decay to 0
            g["lr"] = cfg.lr * scale * 0.5 * (1.0 + math.cos(math.pi * (step - 1) / steps))
        loss = loss_fn(model(y, op), x, Problem.create(op, y, check=False))
        blown = not torch.isfinite(loss)
        if not blown:
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        if blown or step % every == 0 or step == steps:
            value = crit(model) if not blown else math.inf
            history.append((step, value))
            if not math.isfinite(value) or value > 3.0 * initial:  # blow-up: back to the best, slower
                model.load_state_dict(best_state[0])
                opt.load_state_dict(best_state[1])
                scale, restarts = scale * 0.5, restarts + 1
            elif value < best:
                best, best_step = value, step
                best_state = (copy.deepcopy(model.state_dict()), copy.deepcopy(opt.state_dict()))
    model.load_state_dict(best_state[0])
    log = {"steps": steps, "batch_size": cfg.batch_size, "train_time_s": time.perf_counter() - t0,
           "best_step": best_step, "restarts": restarts, "val_criterion_initial": initial,
           "val_criterion_best": best, "val_history": history,
           "s": [s for s, _ in model.steps_and_weights()]}
    return model, log


# ---------------------------------------------------------------------------- evaluation
def evaluate_learned(model: torch.nn.Module, op, batch, reg) -> Dict:
    """Per-layer NMSE (dB) and mean objective of a learned network, in float64; also, at the
    last layer, the median per-sample NMSE and the samples whose iterates diverged (objective
    above 10× ``½‖y‖²``, its value at ``x = 0``)."""
    net = copy.deepcopy(model).to(torch.float64)
    with torch.no_grad():
        out = net(batch.y, op, return_trajectory=True)
    problem = Problem.create(op, batch.y, reg=reg, check=False)
    nmse_db = [float(metrics.nmse(xk, batch.x)) for xk in out.trajectory]
    objective = [float(problem.objective(xk).mean()) for xk in out.trajectory]
    diverged = problem.objective(out.x) > 5.0 * batch.y.square().sum(1)
    return {"nmse_db": nmse_db, "objective": objective, "final_nmse_db": nmse_db[-1],
            "final_objective": objective[-1], "nnz": float((out.x != 0).sum(1).double().mean()),
            "median_nmse_db": float(metrics.nmse(out.x, batch.x, reduction="none").nanmedian()),
            "diverged": int(diverged.sum()), "samples": int(diverged.numel())}


def compare(learned: Dict, curve: Dict) -> Dict:
    """Classical iterations needed to reach the network's objective and its NMSE."""
    return {"iters_to_objective": iterations_to_match(curve["objective"], learned["final_objective"]),
            "iters_to_nmse": iterations_to_match(curve["nmse_db"], learned["final_nmse_db"])}


CURVE_KEYS = ("nmse_db", "median_nmse_db", "objective")


def sample_curve(curve: Dict, dense: int = 100, points: int = 60) -> Dict:
    """The curve at ``k = 1..dense`` and at log-spaced ``k`` up to its end (for the JSON)."""
    n = curve["iterations"]
    ks = sorted(set(range(1, min(dense, n) + 1)) | {
        int(round(math.exp(math.log(dense) + i * (math.log(max(n, dense)) - math.log(dense)) / points)))
        for i in range(points + 1)} | {n})
    ks = [k for k in ks if k <= n]
    return {"k": ks, **{key: [curve[key][k - 1] for k in ks] for key in CURVE_KEYS}}


# ---------------------------------------------------------------------------- figures
def plot_curves(res: Dict, path: Path) -> None:
    """NMSE and objective against iteration: classical vs the learned networks."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    Ts = res["config"]["Ts"]
    Tmax = max(Ts)
    colors = {"sup": "tab:blue", "unsup": "tab:orange"}
    fig, axes = plt.subplots(2, 2, figsize=(11, 8))
    for row, algo in enumerate(ALGOS):
        curve = res["classical"][algo]["curve"]
        f_star = curve["final_objective"]
        ks = list(range(1, curve["iterations"] + 1))
        for col, key in enumerate(("nmse_db", "objective")):
            ax = axes[row, col]
            gap = key == "objective" and algo == "ista"  # convex: plot the gap to the minimum
            tr = (lambda v: max(v - f_star, 1e-12)) if gap else (lambda v: v)
            ax.plot(ks, [tr(v) for v in curve[key]], color="black", lw=1.2, label=f"classical {algo.upper()}")
            ax.axhline(tr(curve[key][-1]), color="black", ls=":", lw=0.8)
            for kind in LOSSES:
                nets = res["learned"][algo][kind]
                full = nets[str(Tmax)]["test"]
                ax.plot(range(1, Tmax + 1), [tr(v) for v in full[key]], color=colors[kind], lw=1.5,
                        label=f"learned, {'supervised' if kind == 'sup' else 'unsupervised'} (T={Tmax}, per layer)")
                ax.plot(Ts, [tr(nets[str(T)]["test"][f"final_{key}"]) for T in Ts], "o" if kind == "unsup" else "s",
                        color=colors[kind], ms=6, mfc="white", mew=1.5,
                        label=f"{'sup.' if kind == 'sup' else 'unsup.'} final layer, T ∈ {{{', '.join(map(str, Ts))}}}")
            ax.set_xscale("log")
            if gap:
                ax.set_yscale("log")
                learned_gaps = [tr(nets_T["test"]["final_objective"]) for kind in LOSSES
                                for nets_T in res["learned"][algo][kind].values()]
                ax.set_ylim(bottom=min(1e-6, 0.1 * min(learned_gaps)))
                ax.set_ylabel("objective − converged ISTA objective")
            elif key == "objective":
                lo = min(min(full["objective"]) for full in
                         (res["learned"][algo][k][str(Tmax)]["test"] for k in LOSSES))
                ax.set_ylim(0.97 * min(lo, curve[key][-1]), at(curve, key, 3))
                ax.set_ylabel("mean objective")
            else:
                ax.set_ylabel("NMSE (dB)")
            ax.set_xlabel("iteration / layer")
            ax.set_title(f"{algo.upper()} (λ = {res['lam'][algo]:g}), test split")
            ax.grid(True, which="both", alpha=0.3)
            if col == 0:
                ax.legend(fontsize=7)
    fig.suptitle(f"Supervised vs unsupervised step sizes: m={res['config']['m']}, n={res['config']['n']}, "
                 f"p={res['config']['p']}, SNR {res['config']['snr_db']:g} dB")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_steps(res: Dict, path: Path) -> None:
    """Learned step sizes ``s_k`` (units of 1/L) against the layer."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    Ts = res["config"]["Ts"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    palette = ("tab:blue", "tab:green", "tab:purple", "tab:brown", "tab:olive", "tab:gray")
    for ax, algo in zip(axes, ALGOS):
        for i, T in enumerate(Ts):
            c = palette[i % len(palette)]
            for kind, ls in (("sup", "-"), ("unsup", "--")):
                s = res["learned"][algo][kind][str(T)]["train"]["s"]
                ax.plot(range(1, T + 1), s, ls, color=c, lw=1.3,
                        label=f"T={T} {'supervised' if kind == 'sup' else 'unsupervised'}")
        ax.axhline(1.0, color="black", lw=0.8, ls=":")
        ax.axhline(2.0, color="red", lw=0.8, ls=":")
        ax.set_xscale("log")
        ax.set_xlabel("layer k")
        ax.set_title(f"learned {algo.upper()}: s_k (1 = classical 1/L; red: 2/L)")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_ylabel("step size s_k (units of 1/L)")
    axes[1].legend(fontsize=7, ncol=2)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ---------------------------------------------------------------------------- report
def _k(v: Optional[int], limit: int) -> str:
    return f"> {limit}" if v is None else str(v)


def _cell(nmse_db: float, median_db: float, obj: float, diverged: int = 0) -> str:
    """``NMSE (median) / objective`` [, samples that diverged]."""
    s = f"{nmse_db:.2f} ({median_db:.2f}) / " + (f"{obj:.4f}" if obj < 1e4 else f"{obj:.1e}")
    return s + (f", **{diverged} diverged**" if diverged else "")


def _net(r: Dict) -> str:
    return _cell(r["final_nmse_db"], r["median_nmse_db"], r["final_objective"], r["diverged"])


def markdown(res: Dict) -> str:
    """The Markdown tables of the run."""
    cfg, out = res["config"], []
    for algo in ALGOS:
        c = res["classical"][algo]["curve"]
        out.append(f"#### {algo.upper()} (λ = {res['lam'][algo]:g}); classical converged after "
                   f"{c['iterations']} iterations: NMSE {c['final_nmse_db']:.2f} dB, objective "
                   f"{c['final_objective']:.5f}\n")
        out.append("| T | method | NMSE (dB) | objective | classical iters to reach its objective | "
                   "classical iters to reach its NMSE |")
        out.append("|---:|---|---:|---:|---:|---:|")
        for T in cfg["Ts"]:
            out.append(f"| {T} | classical, T iterations | {at(c, 'nmse_db', T):.2f} | {at(c, 'objective', T):.5f} | – | – |")
            for kind in LOSSES:
                r = res["learned"][algo][kind][str(T)]
                name = "learned, supervised (MSE)" if kind == "sup" else "learned, unsupervised (objective)"
                mo, mn = r["match"]["iters_to_objective"], r["match"]["iters_to_nmse"]
                bold_o, bold_n = ("**", "") if kind == "unsup" else ("", "**")
                blew = f" ({r['test']['diverged']}/{r['test']['samples']} diverged)" if r["test"]["diverged"] else ""
                out.append(f"| {T} | {name} | {r['test']['final_nmse_db']:.2f}{blew} | {r['test']['final_objective']:.5f} | "
                           f"{bold_o}{_k(mo, c['iterations'])}{bold_o} | {bold_n}{_k(mn, c['iterations'])}{bold_n} |")
        out.append("")
    if "mismatch" in res:
        out.append("#### IHT under a sparsity mismatch (trained at p = %g)\n" % cfg["p"])
        out.append("Cells: NMSE in dB over the split (ratio of sums), in brackets the median per-sample NMSE, "
                   "then the mean objective; samples whose learned iterates diverged (objective > 10× its value "
                   f"at x = 0) out of {cfg['test_size']}.\n")
        out.append("| test p | T | classical, T iterations | classical, converged | supervised | unsupervised |")
        out.append("|---:|---:|---|---|---|---|")
        same = {"classical": res["classical"]["iht"]["curve"],
                "learned": {kind: {T: r["test"] for T, r in res["learned"]["iht"][kind].items()} for kind in LOSSES}}
        for p, mm in [(f"{cfg['p']} (trained)", same), *res["mismatch"].items()]:
            c = mm["classical"]
            for T in cfg["Ts"]:
                s, u = mm["learned"]["sup"][str(T)], mm["learned"]["unsup"][str(T)]
                out.append(f"| {p} | {T} | {_cell(at(c, 'nmse_db', T), at(c, 'median_nmse_db', T), at(c, 'objective', T))} | "
                           f"{_cell(c['final_nmse_db'], c['final_median_nmse_db'], c['final_objective'])} | "
                           f"{_net(s)} | {_net(u)} |")
        out.append("")
    out.append("λ selection (validation split, classical solver to tol %g): " % cfg["lam_tol"] + "; ".join(
        f"{algo.upper()}: " + ", ".join(f"λ={r['lam']:g} → {r['nmse_db']:.2f} dB" for r in res["lam_grid"][algo])
        for algo in ALGOS) + ".")
    out.append("")
    out.append("| training run | steps | best step | restarts | time (s) |")
    out.append("|---|---:|---:|---:|---:|")
    for algo in ALGOS:
        for kind in LOSSES:
            for T in cfg["Ts"]:
                tr = res["learned"][algo][kind][str(T)]["train"]
                out.append(f"| {algo.upper()} {kind} T={T} | {tr['steps']} | {tr['best_step']} | {tr['restarts']} | "
                           f"{tr['train_time_s']:.1f} |")
    return "\n".join(out)


# ---------------------------------------------------------------------------- main
def run(cfg: Config, figures: bool, tag: str) -> Dict:
    torch.set_num_threads(1)
    t_start = time.perf_counter()
    wall: Dict[str, float] = {}
    dm = datamodule(cfg, cfg.p, "float64", val_size=cfg.val_size, test_size=cfg.test_size)
    op, test = dm.get_operator(), dm.test_split
    res: Dict = {"config": {**asdict(cfg), "steps_per_T": {str(T): cfg.steps(T) for T in cfg.Ts}},
                 "data": dm.describe(), "lam": {}, "lam_grid": {}, "classical": {}, "learned": {}}

    t = time.perf_counter()
    for algo in ALGOS:
        res["lam"][algo], res["lam_grid"][algo] = select_lam(algo, op, dm.val_split, cfg.lam_grid[algo],
                                                             cfg.lam_max_iter, cfg.lam_tol)
        print(f"λ {algo}: {res['lam'][algo]:g}  ({res['lam_grid'][algo]})", flush=True)
    wall["lambda_selection_s"] = time.perf_counter() - t

    t = time.perf_counter()
    curves = {}
    for algo in ALGOS:
        curves[algo] = classical_curve(algo, op, test, res["lam"][algo], cfg.max_iter, cfg.tol, cfg.chunk)
        c = curves[algo]
        res["classical"][algo] = {"curve": c}
        print(f"classical {algo}: {c['iterations']} iterations (converged: {c['converged']}), "
              f"NMSE {c['final_nmse_db']:.2f} dB, objective {c['final_objective']:.5f}", flush=True)
    wall["classical_s"] = time.perf_counter() - t

    t = time.perf_counter()
    models: Dict[Tuple[str, str, int], torch.nn.Module] = {}
    for algo in ALGOS:
        reg = regulariser(algo, res["lam"][algo])
        res["learned"][algo] = {kind: {} for kind in LOSSES}
        for T in cfg.Ts:
            for kind in LOSSES:
                model, log = train(cfg, algo, kind, T, res["lam"][algo])
                models[algo, kind, T] = model
                ev = evaluate_learned(model, op, test, reg)
                entry = {"train": log, "test": ev, "match": compare(ev, curves[algo])}
                res["learned"][algo][kind][str(T)] = entry
                print(f"{algo} {kind:5s} T={T:3d}: {log['steps']} steps in {log['train_time_s']:.1f} s "
                      f"(best {log['best_step']}, restarts {log['restarts']}); NMSE {ev['final_nmse_db']:.2f} dB, "
                      f"objective {ev['final_objective']:.5f}; {entry['match']}", flush=True)
    wall["training_and_eval_s"] = time.perf_counter() - t

    t = time.perf_counter()
    res["mismatch"] = {}
    fp = op.fingerprint()
    lam = res["lam"]["iht"]
    reg = regulariser("iht", lam)
    for p in cfg.mismatch_p:
        dm_p = datamodule(cfg, p, "float64", test_size=cfg.test_size)
        op_p = dm_p.get_operator()
        if op_p.fingerprint() != fp:
            raise RuntimeError(f"p={p}: the data module built another A ({op_p.fingerprint()} != {fp})")
        c = classical_curve("iht", op_p, dm_p.test_split, lam, cfg.max_iter, cfg.tol, cfg.chunk)
        entry = {"classical": c, "learned": {kind: {} for kind in LOSSES}}
        for kind in LOSSES:
            for T in cfg.Ts:
                ev = evaluate_learned(models["iht", kind, T], op_p, dm_p.test_split, reg)
                entry["learned"][kind][str(T)] = {k: v for k, v in ev.items() if k not in ("nmse_db", "objective")}
        res["mismatch"][str(p)] = entry
        print(f"mismatch p={p}: classical IHT converged NMSE {c['final_nmse_db']:.2f} dB", flush=True)
    wall["mismatch_s"] = time.perf_counter() - t
    wall["total_s"] = time.perf_counter() - t_start

    res["budget"] = {"batch_size": cfg.batch_size, "steps_per_T": res["config"]["steps_per_T"],
                     "training_runs": 2 * len(LOSSES) * len(cfg.Ts), "lr": cfg.lr, "wall": wall}
    res["machine"] = {"cpu": cpu_name(), "threads": torch.get_num_threads(), "cores": os.cpu_count(),
                      "torch": torch.__version__, "python": platform.python_version(),
                      "date": datetime.date.today().isoformat()}
    if figures:
        plot_curves(res, ROOT / "benchmarks" / "figures" / f"sup_vs_unsup{tag}_curves.png")
        plot_steps(res, ROOT / "benchmarks" / "figures" / f"sup_vs_unsup{tag}_steps.png")
    return res


def slim(res: Dict) -> Dict:
    """The results without the full classical curves (sampled instead), for the JSON."""
    out = copy.deepcopy(res)
    for algo in ALGOS:
        c = out["classical"][algo]["curve"]
        out["classical"][algo]["curve"] = {**{k: v for k, v in c.items() if k not in CURVE_KEYS},
                                           "sampled": sample_curve(c)}
    for mm in out.get("mismatch", {}).values():
        c = mm["classical"]
        mm["classical"] = {**{k: v for k, v in c.items() if k not in CURVE_KEYS}, "sampled": sample_curve(c)}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--short", action="store_true", help="T ∈ {10, 20}, small splits: about 1 minute")
    parser.add_argument("--smoke", action="store_true", help="T = 3, 3 steps, tiny splits: a smoke test (seconds)")
    parser.add_argument("--T", type=int, nargs="+", default=None, help="numbers of layers to sweep")
    parser.add_argument("--layer-steps", type=int, default=None, help="steps(T) = clip(layer_steps / T, min, max)")
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--lr", type=float, default=None)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--out", default=None, help="results JSON (default benchmarks/results/sup_vs_unsup[_short].json)")
    parser.add_argument("--no-figures", action="store_true")
    args = parser.parse_args()

    cfg = Config(**SMOKE) if args.smoke else Config(**SHORT) if args.short else Config()
    for name, value in (("Ts", tuple(args.T) if args.T else None), ("layer_steps", args.layer_steps),
                        ("batch_size", args.batch_size), ("lr", args.lr), ("seed", args.seed)):
        if value is not None:
            setattr(cfg, name, value)
    tag = "_smoke" if args.smoke else "_short" if args.short else ""
    out = Path(args.out) if args.out else ROOT / "benchmarks" / "results" / f"sup_vs_unsup{tag}.json"
    print(f"budget: T ∈ {cfg.Ts}, steps {[cfg.steps(T) for T in cfg.Ts]}, batch {cfg.batch_size}, "
          f"Adam lr {cfg.lr} (cosine), 1 thread", flush=True)

    res = run(cfg, figures=not args.no_figures, tag=tag)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(slim(res), indent=1))
    w = res["budget"]["wall"]
    print()
    print(f"Machine: {res['machine']['cpu']}, {res['machine']['threads']} thread; torch {res['machine']['torch']}")
    print(f"Budget: {res['budget']['training_runs']} training runs, steps per T {res['budget']['steps_per_T']}, "
          f"batch {cfg.batch_size}; wall time {w['total_s']:.0f} s (λ selection {w['lambda_selection_s']:.0f} s, "
          f"classical {w['classical_s']:.0f} s, training + evaluation {w['training_and_eval_s']:.0f} s, "
          f"mismatch {w['mismatch_s']:.0f} s)")
    print()
    print(markdown(res))
    print(f"\n(results in {out})")


if __name__ == "__main__":
    main()
