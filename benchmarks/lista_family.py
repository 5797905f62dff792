"""The LISTA-family table: NMSE (dB) per layer on the standard problem, noiseless and at SNR 40 dB.

Trains LISTA, LISTA-CP, LISTA-CPSS, TiLISTA and ALISTA (16 layers, stage-wise, the configs in
``configs/``) with a budget of CPU time each (``--budget``, or ``--budget_for`` one run; counted by
:class:`unroll.train.CPUTimer`, so other work on the machine slows a run down but does not shorten
its training), evaluates
all checkpoints of one setting in one ``unroll evaluate`` table on the 1000 published test signals
(next to ISTA and FISTA with λ = 0.1), and compares layer 16 with the published curves (Chen et
al. 2018, Fig. 3 and 4; Liu et al. 2019, Fig. 1 and 2). In the noisy setting it also reports the
converged LASSO with λ picked on the validation split, the reference for soft-thresholding models,
and the large-system limits of the best soft threshold and of the Bayes-optimal denoiser.

    python benchmarks/lista_family.py                       # 8 min per model, 2 runs at a time
    python benchmarks/lista_family.py --budget 00:00:15:00 --budget_for noiseless:ALISTA=00:00:25:00 \
        snr40:LISTA=00:00:30:00 snr40:LISTA-CP=00:02:25:00 --reuse  # the run in BENCHMARKS.md (4.2 h of CPU)
    python benchmarks/lista_family.py --short               # 40 s per model: a smoke run

Each run uses one thread (``OMP_NUM_THREADS=1``) and ``--jobs`` runs go in parallel.
``--reuse`` keeps checkpoints already in the work folder, but only those whose ``run.json`` records
the same code (git trees of the code folders, plus any uncommitted change to them), the same
resolved config (a hash of ``unroll fit --print_config``) and the same budget as the run asked for
now; any other is retrained, saying why. With ``--reuse`` an interrupted run (its ``partial.json``
matching the same way) resumes from its ``last.ckpt`` with the CPU time it has left, so the long
command can be stopped and run again. Writes
``benchmarks/results/lista_family.json``, ``benchmarks/figures/lista_family_<setting>.png`` and
prints the Markdown for BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Dict, List, Optional

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import cpu_name  # noqa: E402

MODELS = {  # column name -> config
    "LISTA": "lista",
    "LISTA-CP": "lista_cp",
    "LISTA-CPSS": "lista_cpss",
    "TiLISTA": "tilista",
    "ALISTA": "alista",
}
SETTINGS = {"noiseless": None, "snr40": 40.0}
#: published NMSE (dB) at layer 16 as the issue states them from the papers' figures:
#: (text, target) — a result matches when it is at most 2 dB above the target.
PUBLISHED = {
    "noiseless": {"LISTA": ("≈ −40", -40.0), "LISTA-CPSS": ("≈ −60 or lower", -60.0),
                  "ALISTA": ("≈ −60 or lower", -60.0)},
    "snr40": {k: ("−40 to −45 (plateau)", -40.0) for k in ("LISTA", "LISTA-CP", "LISTA-CPSS", "TiLISTA", "ALISTA")},
}


def _unroll() -> List[str]:
    exe = shutil.which("unroll")
    return [exe] if exe else [sys.executable, "-c", "from unroll.train.cli import main; main()"]


#: config overrides of one setting's run, part of the benchmark's set-up (``--args_for`` adds more).
#: At SNR 40 ALISTA, LISTA-CPSS and TiLISTA compute the analytic weight with a ridge
#: (``unroll.models.analytic_weight``), which lowers its noise gain mean ‖w_i‖ from 1.42 to 1.10;
#: LISTA runs as configured. LISTA-CP at SNR 40 trains as a longer run, without a ridge: its
#: matrices at lr 5e-4 (scalars at 5e-3) and the papers' stage length (a stage ends after 80
#: validations = 4000 steps without a 0.01 dB gain, VITA-Group/LISTA-CPSS's ``better_wait``);
#: BENCHMARKS.md has the runs.
SETUP: Dict[tuple, List[str]] = {
    **{("snr40", m): ["--model.init_args.model.init_args.ridge=1.0"] for m in ("LISTA-CPSS", "TiLISTA", "ALISTA")},
    ("snr40", "LISTA-CP"): ["--model.init_args.model.init_args.ridge=0.0", "--model.init_args.scalar_lr_factor=10",
                            "--model.init_args.optimizer.init_args.lr=0.0005", "--trainer.callbacks.init_args.patience=80",
                            "--trainer.callbacks.init_args.min_delta=0.01"],
}


def _split_for(o: str, flag: str) -> tuple:
    key, _, value = o.partition("=")
    s, _, m = key.partition(":")
    if s not in SETTINGS or m not in MODELS or not value:
        raise SystemExit(f"{flag}: expected SETTING:MODEL=VALUE with SETTING in {list(SETTINGS)} "
                         f"and MODEL in {list(MODELS)}, got {o!r}")
    return s, m, value


def args_for(setting: str, name: str, extra: List[str]) -> List[str]:
    """The config overrides of one run: :data:`SETUP`'s, then ``--args_for SETTING:MODEL=--key=value``'s."""
    out = list(SETUP.get((setting, name), []))
    for o in extra:
        s, m, value = _split_for(o, "--args_for")
        if (s, m) == (setting, name):
            out.append(value)
    return out


def budget_for(setting: str, name: str, budget: str, overrides: List[str]) -> str:
    """The training budget of one run: ``--budget`` unless ``--budget_for SETTING:MODEL=TIME`` says otherwise."""
    for o in overrides:
        s, m, value = _split_for(o, "--budget_for")
        if (s, m) == (setting, name):
            return value
    return budget


#: what decides the code a run trained with: these paths' git trees at HEAD, plus uncommitted changes to them
CODE_PATHS = ("unroll", "models", "data", "train", "configs", "pyproject.toml")


def _git(*args: str) -> Optional[str]:
    try:
        proc = subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True)
    except OSError:
        return None
    return proc.stdout if proc.returncode == 0 else None


def code_version() -> Dict[str, Optional[str]]:
    """``{"commit": HEAD, "code": identity of the code that trains}``: a hash of the git trees of
    :data:`CODE_PATHS` at HEAD and of the uncommitted diff to them (so a commit that only touches
    docs or benchmark results keeps checkpoints reusable, an edited config or model does not);
    ``None`` outside a git checkout."""
    import hashlib

    commit = _git("rev-parse", "HEAD")
    trees = _git("rev-parse", *[f"HEAD:{p}" for p in CODE_PATHS])
    diff = _git("diff", "HEAD", "--", *CODE_PATHS)
    untracked = _git("ls-files", "--others", "--exclude-standard", "--", *CODE_PATHS)
    if commit is None or trees is None or diff is None or untracked is None:
        return {"commit": None, "code": None}
    h = hashlib.sha256(trees.encode())
    h.update(diff.encode())
    for f in sorted(untracked.splitlines()):
        h.update(f.encode())
        h.update((ROOT / f).read_bytes())
    dirty = "" if not (diff or untracked) else " (with uncommitted changes)"
    return {"commit": commit.strip() + dirty, "code": h.hexdigest()[:16]}


def fit_command(setting: str, name: str, budget: str, extra: List[str]) -> List[str]:
    """The ``unroll fit`` command line of one run: the config, the setting, ``extra`` overrides and
    a budget of ``budget`` CPU seconds (:class:`unroll.train.CPUTimer`, so a run trains about as
    much on a loaded machine as on an idle one)."""
    # the budget is shared out by StageWise (stages end on patience or their time share, not on
    # the configs' cap of validations per stage, which is for runs without a time budget)
    cmd = [*_unroll(), "fit", "--config", str(ROOT / "configs" / f"{MODELS[name]}.yaml"),
           "--trainer.callbacks.init_args.max_validations=null"]
    if SETTINGS[setting] is not None:
        cmd.append(f"--data.init_args.snr_db={SETTINGS[setting]}")
    # the timer goes last: until it is appended, --trainer.callbacks.init_args.* in extra set StageWise's
    return cmd + list(extra) + ["--trainer.callbacks+=unroll.train.CPUTimer",
                                f"--trainer.callbacks.init_args.duration={budget}"]


def config_sha256(cmd: List[str]) -> str:
    """A hash of the config ``cmd`` (an ``unroll fit`` command) resolves to: its ``--print_config``
    output (config file, overrides and every default filled in)."""
    import hashlib

    proc = subprocess.run([*cmd, "--print_config"], capture_output=True, text=True, cwd=ROOT)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} --print_config failed:\n{proc.stderr[-2000:]}")
    return hashlib.sha256(proc.stdout.encode()).hexdigest()[:16]


#: run.json keys a reused checkpoint must match, and what they are called in messages
REUSE_KEYS = (("code", "code (git trees of the code folders)"), ("config_sha256", "resolved config"),
              ("budget", "budget"), ("args", "config overrides"))


def reuse_refusal(saved: Optional[Dict[str, object]], current: Dict[str, object]) -> Optional[str]:
    """Why the checkpoint whose ``run.json`` is ``saved`` cannot stand for the run ``current``
    describes (same keys: :data:`REUSE_KEYS`), or ``None`` when it can."""
    if saved is None:
        return "it has no run.json (nothing records the code, config and budget that made it)"
    if current.get("code") is None:
        return "the code version is unknown (not a git checkout), so a match cannot be shown"
    for key, what in REUSE_KEYS:
        if key not in saved or saved[key] is None:
            return f"its run.json records no {what} (written before runs recorded it)"
        if saved[key] != current[key]:
            return f"it was made with another {what}: {saved[key]!r}, now {current[key]!r}"
    return None


def _train_seconds(ckpt: Path) -> Optional[float]:
    """The training CPU seconds a checkpoint's :class:`~unroll.train.CPUTimer` had counted."""
    from unroll.train import load_checkpoint

    state = load_checkpoint(ckpt, map_location="cpu").get("callbacks", {}).get("CPUTimer")
    return None if state is None else float(state["time_elapsed"]["train"])


def train(work: Path, setting: str, name: str, budget: str, reuse: bool, extra: List[str]) -> Dict[str, object]:
    """``unroll fit`` one config (with its overrides ``extra``) in ``work/setting/name``; returns
    where, how long (wall and CPU seconds), with which overrides, code version and config hash.

    With ``reuse``, a finished run whose ``run.json`` matches (code, resolved config, budget,
    overrides) is kept, and an interrupted one whose ``partial.json`` matches is resumed from its
    ``last.ckpt`` (``--ckpt_path last``: the CPU time it had used counts against the budget)."""
    cfg = MODELS[name]
    run_dir = work / setting / cfg
    ckpt = run_dir / "runs" / cfg / "version_0" / "checkpoints" / "last.ckpt"  # the first run in a fresh run_dir
    record = run_dir / "run.json"  # wall time, budget, overrides, code and config of the run that made ckpt
    partial = run_dir / "partial.json"  # the same for a run under way: its segments' wall-clock spans
    cmd = fit_command(setting, name, budget, extra)
    current = {**code_version(), "config_sha256": config_sha256(cmd), "budget": f"{budget} CPU", "args": list(extra)}
    segments: List[List[float]] = []
    if reuse and ckpt.is_file() and record.is_file():
        saved = json.loads(record.read_text())
        why = reuse_refusal(saved, current)
        if why is None:
            return {"ckpt": str(ckpt), **saved, "reused": True}
        print(f"retraining {name} ({setting}): {why}", flush=True)
    elif reuse and ckpt.is_file() and partial.is_file():
        saved = json.loads(partial.read_text())
        why = reuse_refusal(saved, current)
        if why is None:
            segments = saved["segments"]
            segments[-1][1] = segments[-1][1] or ckpt.stat().st_mtime  # killed: it ended at its last checkpoint
            cmd = cmd + ["--ckpt_path", "last"]
            print(f"resuming {name} ({setting}) from {ckpt}", flush=True)
        else:
            print(f"retraining {name} ({setting}): {why}", flush=True)
    elif reuse and ckpt.is_file():
        print(f"retraining {name} ({setting}): {reuse_refusal(None, current)}", flush=True)
    if not segments:
        if run_dir.exists():
            shutil.rmtree(run_dir)
        run_dir.mkdir(parents=True)
    segments.append([time.time(), None])
    partial.write_text(json.dumps({**current, "segments": segments}))
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    with open(run_dir / "fit.log", "a") as log:
        proc = subprocess.run(cmd, cwd=run_dir, env=env, stdout=log, stderr=subprocess.STDOUT)
    segments[-1][1] = time.time()
    if proc.returncode != 0 or not ckpt.is_file():
        raise RuntimeError(f"{name} ({setting}) failed, see {run_dir / 'fit.log'}")
    wall = sum(b - a for a, b in segments)
    cpu = _train_seconds(ckpt)
    print(f"trained {name:<10} {setting:<9} in {wall:.0f} s ({cpu or 0:.0f} s of training CPU time"
          f"{f', {len(segments)} segments' if len(segments) > 1 else ''})", flush=True)
    done = {"wall_s": wall, "cpu_s": cpu, "segments": len(segments), **current}
    record.write_text(json.dumps(done))
    partial.unlink()
    return {"ckpt": str(ckpt), **done, "reused": False}


def progress(ckpt: str) -> Dict[str, object]:
    """Training steps and stage-wise position saved in a checkpoint."""
    from unroll.train import load_checkpoint

    c = load_checkpoint(ckpt, map_location="cpu")  # CRC-checked, plain data only
    out: Dict[str, object] = {"steps": int(c["global_step"])}
    for key, state in c.get("callbacks", {}).items():
        if key.startswith("StageWise"):
            out.update(layer=state["layer"], stage=state["stage"] + 1, done=state["done"],
                       stages_finished=len(state["history"]))
    return out


#: λ grid of the converged-LASSO reference (noisy settings), chosen on the validation split
LASSO_GRID = (0.001, 0.002, 0.003, 0.004, 0.006)


def lasso_reference(setting: str, short: bool) -> Optional[Dict[str, object]]:
    """NMSE (dB) on the test signals of FISTA run to convergence on the LASSO, λ picked on the
    validation split: the best any fixed-λ soft-thresholding solver reaches (noisy settings only).

    Float64, one thread, ``tol = 1e-7`` on the relative change (``--short``: 2 λ, 300 iterations).
    """
    if SETTINGS[setting] is None:
        return None
    import torch

    from unroll.data import SparseRecoveryDataModule
    from unroll.metrics import nmse
    from unroll.solvers import fista

    torch.set_num_threads(1)
    dm = SparseRecoveryDataModule(problem="standard", snr_db=SETTINGS[setting], dtype="float64", seed=0)
    dm.setup()
    grid, iters = (LASSO_GRID[1:3], 300) if short else (LASSO_GRID, 5000)

    def solve(split, lam):
        x_hat, info = fista(dm.operator, split.y, lam, max_iter=iters, tol=1e-7)
        return float(nmse(x_hat, split.x)), int(info.iterations.max())

    val = {lam: solve(dm.val_split, lam)[0] for lam in grid}
    best = min(val, key=val.get)
    test_db, its = solve(dm.test_split, best)
    return {"lam": best, "val_db": val, "test_db": test_db, "max_iterations": its, "max_iter": iters}


def large_system_limits(setting: str) -> Optional[Dict[str, float]]:
    """AMP state evolution's NMSE (dB) for the best soft threshold and the Bayes-optimal
    denoiser on this problem (``benchmarks/state_evolution.py``; noisy settings only, 20 s)."""
    if SETTINGS[setting] is None:
        return None
    import state_evolution as se  # beside this script, on sys.path like machine.py

    sigma2 = se.EPS / se.DELTA * 10 ** (-SETTINGS[setting] / 10)
    return {"soft_db": se.soft_limit(sigma2)["nmse_db"], "bayes_db": se.bayes_limit(sigma2)["nmse_db"]}


def evaluate(work: Path, setting: str, ckpts: Dict[str, str]) -> Dict[str, List[float]]:
    out_dir = work / setting / "eval"
    cmd = [*_unroll(), "evaluate", "--ckpt_path", *ckpts.values(), "--names", *ckpts.keys(),
           "--output_dir", str(out_dir)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"unroll evaluate failed:\n{proc.stderr[-4000:]}")
    return {k: v["nmse_db"] for k, v in json.loads((out_dir / "metrics.json").read_text()).items()}


def plot(setting: str, res: Dict[str, object]) -> None:
    """``benchmarks/figures/lista_family_<setting>.png`` from one setting's results (its curves,
    and the converged-LASSO line when there is one)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8.6, 4.2))
    curves, lasso = res["curves"], res.get("lasso")
    for k, v in curves.items():
        style = "--" if k in ("ista", "fista") else "-"
        ax.plot(range(1, len(v) + 1), v, style, marker="o", markersize=3, label=k.upper() if style == "--" else k)
    if lasso:
        ax.axhline(lasso["test_db"], color="grey", linestyle=":", label="LASSO, converged (best λ)")
    limits = res.get("limits")
    if limits:
        ax.axhline(limits["soft_db"], color="black", linestyle="-.", linewidth=0.8,
                   label="best soft threshold, n → ∞ (state evolution)")
        ax.axhline(limits["bayes_db"], color="black", linestyle=(0, (1, 3)), linewidth=0.8,
                   label="Bayes-optimal, n → ∞ (state evolution)")
    ax.set_xlabel("layer / iteration")
    ax.set_ylabel("NMSE (dB), 1000 published test signals")
    ax.set_title(f"Standard problem (250×500, p=0.1), {'noiseless' if setting == 'noiseless' else 'SNR 40 dB'}")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))  # outside: the curves fill the axes
    fig.tight_layout()
    path = ROOT / "benchmarks" / "figures" / f"lista_family_{setting}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def markdown(results: Dict[str, Dict], budget: str) -> str:
    lines = []
    for setting, res in results.items():
        curves = res["curves"]
        cols = ["ista", "fista", *[k for k in MODELS if k in curves]]
        lines.append(f"#### {'Noiseless' if setting == 'noiseless' else 'SNR 40 dB'}\n")
        lines.append("| layer | " + " | ".join(c.upper() if c in ("ista", "fista") else c for c in cols) + " |")
        lines.append("|---:|" + "---:|" * len(cols))
        for i in range(len(curves["ista"])):
            lines.append(f"| {i + 1} | " + " | ".join(f"{curves[c][i]:.2f}" for c in cols) + " |")
        pub = PUBLISHED[setting]
        lasso = res.get("lasso")
        if lasso:
            lines.append("")
            lines.append(f"Converged LASSO (FISTA to a relative change of 1e-7, at most {lasso['max_iter']} iterations, "
                         f"λ = {lasso['lam']:g} picked on the validation split from "
                         f"[{', '.join(f'{v:g}' for v in sorted(float(k) for k in lasso['val_db']))}]): "
                         f"**{lasso['test_db']:.2f} dB** on the test signals.")
        limits = res.get("limits")
        if limits:
            lines.append(f"Large-system limits from AMP's state evolution (`benchmarks/state_evolution.py`): best soft "
                         f"threshold (the LASSO at its best λ) **{limits['soft_db']:.2f} dB**, Bayes-optimal "
                         f"**{limits['bayes_db']:.2f} dB**.")
        lines.append("")
        lines.append("| model | layer 16 | published, layer 16 | within 2 dB or better |")
        lines.append("|---|---:|---|---|")
        for c in cols[2:]:
            text, target = pub.get(c, ("–", None))
            ok = "–" if target is None else ("yes" if curves[c][-1] <= target + 2.0 else
                                            f"no ({curves[c][-1] - target:+.1f} dB)")
            lines.append(f"| {c} | {curves[c][-1]:.2f} | {text} | {ok} |")
        lines.append("")
        lines.append("| model | budget | config overrides | steps | stage-wise position at the end | CPU (s) | wall (s) "
                     "| commit |")
        lines.append("|---|---|---|---:|---|---:|---:|---|")
        for k in cols[2:]:
            p = res["progress"][k]
            pos = "all 16 layers done" if p.get("done") else f"layer {p.get('layer')}, stage {p.get('stage')}"
            wall = res["runs"][k]["wall_s"]
            run_budget = res["runs"][k].get("budget", budget)
            extra = " ".join(f"`{a}`" for a in res["runs"][k].get("args", [])) or "–"
            cpu = res["runs"][k].get("cpu_s")
            commit = (res["runs"][k].get("commit") or "–")[:7]
            lines.append(f"| {k} | {run_budget} | {extra} | {p['steps']} | {pos} | "
                         f"{'–' if cpu is None else f'{cpu:.0f}'} | {'' if wall is None else f'{wall:.0f}'} | {commit} |")
        lines.append("")
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--budget", default="00:00:08:00", help="training CPU time per model (DD:HH:MM:SS; unroll.train.CPUTimer)")
    ap.add_argument("--short", action="store_true", help="40 s per model")
    ap.add_argument("--budget_for", nargs="*", default=[], metavar="SETTING:MODEL=TIME",
                    help="another budget for one run, e.g. noiseless:ALISTA=00:00:25:00")
    ap.add_argument("--args_for", nargs="*", default=[], metavar="SETTING:MODEL=--KEY=VALUE",
                    help="extra config overrides for one run, after SETUP's, e.g. "
                         "snr40:LISTA-CP=--model.init_args.model.init_args.ridge=0.3")
    ap.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    ap.add_argument("--jobs", type=int, default=2, help="runs in parallel (one thread each)")
    ap.add_argument("--work", default=str(ROOT / "benchmarks" / "runs" / "lista_family"))
    ap.add_argument("--reuse", action="store_true",
                    help="keep checkpoints already in --work whose run.json records the same code, resolved config "
                         "and budget, resume interrupted runs that match the same way (others are retrained)")
    ap.add_argument("--results", default=str(ROOT / "benchmarks" / "results" / "lista_family.json"))
    ap.add_argument("--report", action="store_true",
                    help="only print the Markdown of an earlier --results file and redraw its figures "
                         "(adding the large-system limits to the file if it has none)")
    args = ap.parse_args(argv)
    if args.report:  # also redraws the figures from the saved curves
        saved = json.loads(Path(args.results).read_text())
        for s, res in saved["results"].items():
            if "limits" not in res:  # results from before the limits were part of them
                res["limits"] = large_system_limits(s)
            plot(s, res)
        Path(args.results).write_text(json.dumps(saved, indent=1))
        print(markdown(saved["results"], saved["meta"]["budget_per_model"]))
        return
    budget = "00:00:00:40" if args.short else args.budget
    work = Path(args.work)

    jobs = [(s, m) for s in args.settings for m in args.models]

    def seconds(t: str) -> int:
        return sum(int(v) * u for v, u in zip(t.split(":"), (86400, 3600, 60, 1)))

    jobs.sort(key=lambda j: -seconds(budget_for(j[0], j[1], budget, args.budget_for)))  # longest first
    t0 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        runs = dict(zip(jobs, pool.map(
            lambda j: train(work, j[0], j[1], budget_for(j[0], j[1], budget, args.budget_for), args.reuse,
                            args_for(j[0], j[1], args.args_for)), jobs)))
    results: Dict[str, Dict] = {}
    for s in args.settings:
        ckpts = {m: runs[(s, m)]["ckpt"] for m in args.models}
        results[s] = {"curves": evaluate(work, s, ckpts), "runs": {m: runs[(s, m)] for m in args.models},
                      "progress": {m: progress(ckpts[m]) for m in args.models},
                      "lasso": lasso_reference(s, args.short), "limits": large_system_limits(s)}
        plot(s, results[s])
    meta = {"budget_per_model": budget, "budget_for": args.budget_for, "args_for": args.args_for, "threads_per_run": 1, "parallel_runs": args.jobs,
            "machine": f"{os.cpu_count()} cores, {cpu_name()}", "python": platform.python_version(),
            "total_wall_s": time.perf_counter() - t0,
            "published_layer16": {s: {k: v[0] for k, v in d.items()} for s, d in PUBLISHED.items()}}
    Path(args.results).parent.mkdir(parents=True, exist_ok=True)
    Path(args.results).write_text(json.dumps({"meta": meta, "results": results}, indent=1))
    print(f"\nbudget {budget} per model, {args.jobs} runs at a time, 1 thread each; {meta['machine']}; "
          f"total {meta['total_wall_s']:.0f} s\n")
    print(markdown(results, budget))


if __name__ == "__main__":
    main()
