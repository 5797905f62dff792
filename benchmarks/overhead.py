"""Framework overhead, torch.compile and deepinv on one training step of learned ISTA.

    python benchmarks/overhead.py                   # K=16, batch 64, the standard 250×500 problem, deepinv too
    python benchmarks/overhead.py --no_deepinv      # without deepinv (no separate venv)
    python benchmarks/overhead.py --smoke           # seconds: 2 rounds of 1 step, no deepinv, no compile

Times one training step (forward, MSE, backward, Adam with ``foreach=True``) of 16-layer learned
ISTA on the standard problem (``unroll.data.load_standard_problem()``, A 250×500 float32, batch
64), per layer ``x ← S_θk(x − αk Aᵀ(Ax − y))`` with ``αk = softplus(sk)/L``,
``θk = αk·softplus(λk)``, all on one thread (``--threads 1``: the machine is shared; the
ratios are what counts). Variants, timed in alternating rounds in one process:

* ``plain loop``: a hand-written PyTorch loop, soft threshold ``sign(z)·relu(|z| − θ)`` differentiated
  by autograd (the reference of issue 13);
* ``lean-kernel loop``: the same loop with the library's ``unroll.prox.soft_threshold`` (same values,
  custom backward); the framework against it is the cost of the framework's layers alone;
* ``lean-kernel loop, 32 scalar parameters``: the same with each layer's two scalars stored as
  separate 0-dim parameters, as the framework stores them (separate leaves in backward, separate
  tensors in Adam): splits the framework's cost into this storage and the rest;
* ``framework``: ``ReconstructionTask.training_step`` of ``LearnedISTA(16)`` + backward + Adam;
* ``framework + torch.compile``: the same with the task's ``compile=True`` (``torch.compile`` of the
  model, as ``--model.init_args.compile=true`` gives it).

deepinv (not a dependency of this project) runs in a separate venv that this script creates
(``benchmarks/.venv-deepinv``, git-ignored; torch pinned to the local CPU build) as a subprocess
fed the same matrix, data and initial values through a temporary file: its unfolded proximal
gradient (``deepinv.optim.PGD(unfold=True)``, 16 iterations, per-iteration trainable step size and
λ, ``L1Prior``, ``L2`` data fidelity, ``LinearPhysics`` with the same matrix, zero start, MSE,
Adam foreach) is timed alternately with the same plain loop in that process, so ``deepinv /
plain loop`` is an in-process ratio and ``framework / deepinv`` follows from the two ratios.

A torch.profiler pass counts the aten calls per step of the eager variants (``--profile_steps``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Callable, Dict, List, Tuple

import torch
import torch.nn.functional as F

HERE = Path(__file__).resolve().parent
DEEPINV_VENV = HERE / ".venv-deepinv"
# torchvision 0.28.0 is the release built for torch 2.13 (it pins torch==2.13.0, so the local CPU
# build satisfies it and no other torch is fetched); deepinv imports it at import time
DEEPINV_REQUIREMENTS = ("torch==2.13.0", "torchvision==0.28.0", "deepinv==0.5.0")
LAM = 0.1  # initial λk (LearnedISTA's default)
LR = 1e-5


# --------------------------------------------------------------------------- #
# the plain loop (also run inside the deepinv venv: torch only)
# --------------------------------------------------------------------------- #
def plain_threshold(z: torch.Tensor, thr: torch.Tensor) -> torch.Tensor:
    """Soft thresholding as written by hand: ``sign(z)·relu(|z| − θ)`` (autograd backward)."""
    return torch.sign(z) * torch.relu(z.abs() - thr)


def make_loop(a: torch.Tensor, x: torch.Tensor, y: torch.Tensor, lip: float, raw_s0: torch.Tensor,
              raw_l0: torch.Tensor, threshold: Callable,
              per_layer: bool = False) -> Tuple[Callable[[], None], Callable[[], torch.Tensor]]:
    """A hand-written training step of learned ISTA: ``(step, forward)``.

    ``a`` ``(m, n)``, ``x`` ``(B, n)``, ``y`` ``(B, m)``; ``raw_s0``, ``raw_l0`` ``(K,)`` the
    unconstrained initial values (softplus, β = 1, as ``unroll.parametrize.PositiveScalar``),
    stored as two ``(K,)`` parameters, or with ``per_layer`` as ``2K`` 0-dim parameters (as the
    framework stores them: each its own leaf in backward and its own tensor in Adam).
    """
    if per_layer:
        raw_s = [torch.nn.Parameter(v.clone()) for v in raw_s0]
        raw_l = [torch.nn.Parameter(v.clone()) for v in raw_l0]
        params = raw_s + raw_l
    else:
        raw_s = torch.nn.Parameter(raw_s0.clone())
        raw_l = torch.nn.Parameter(raw_l0.clone())
        params = [raw_s, raw_l]
    opt = torch.optim.Adam(params, lr=LR, foreach=True)
    at = a.T  # a view, taken once
    num_layers = raw_s0.numel()

    def forward() -> torch.Tensor:
        xk = torch.zeros_like(x)
        for k in range(num_layers):
            alpha = F.softplus(raw_s[k]) / lip
            xk = threshold(xk - alpha * ((xk @ at - y) @ a), alpha * F.softplus(raw_l[k]))
        return xk

    def step() -> None:
        loss = F.mse_loss(forward(), x)
        opt.zero_grad()
        loss.backward()
        opt.step()

    return step, forward


# --------------------------------------------------------------------------- #
# timing and profiling
# --------------------------------------------------------------------------- #
def interleaved(variants: Dict[str, Callable[[], None]], reps: int, steps: int) -> Dict[str, List[float]]:
    """Seconds per step of each variant, one value per round; each round runs every variant
    ``steps`` times, the starting variant rotating from round to round."""
    names = list(variants)
    times: Dict[str, List[float]] = {n: [] for n in names}
    for r in range(reps):
        i = r % len(names)
        for n in names[i:] + names[:i]:
            f = variants[n]
            t = time.perf_counter()
            for _ in range(steps):
                f()
            times[n].append((time.perf_counter() - t) / steps)
    return times


def paired_ratio(num: List[float], den: List[float]) -> float:
    """Median over rounds of the per-round ratio (robust to load that drifts between rounds)."""
    return statistics.median(a / b for a, b in zip(num, den))


def aten_profile(step: Callable[[], None], n: int) -> Dict[str, object]:
    """aten calls and aten self-CPU time per step over ``n`` profiled steps (after one warm-up),
    with the calls per operator (nested calls counted, e.g. ``aten::matmul`` and its ``aten::mm``)."""
    from torch.profiler import ProfilerActivity, profile

    step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(n):
            step()
    ops = {e.key: e for e in prof.key_averages() if e.key.startswith("aten::")}
    return {"calls": sum(e.count for e in ops.values()) / n,
            "self_ms": sum(e.self_cpu_time_total for e in ops.values()) / n / 1e3,
            "mm_ms": sum(ops[k].self_cpu_time_total for k in ("aten::mm", "aten::addmm") if k in ops) / n / 1e3,
            "by_op": {k: e.count / n for k, e in sorted(ops.items(), key=lambda kv: -kv[1].count)}}


def load_avg() -> str:
    try:
        return " / ".join(f"{v:.2f}" for v in os.getloadavg()) + " (1 / 5 / 15 min)"
    except OSError:
        return "unknown"


# --------------------------------------------------------------------------- #
# deepinv, in its own venv
# --------------------------------------------------------------------------- #
def _import_deepinv():
    # torchvision 0.28.0's Linux wheel is built against CUDA torch: its C extension does not load
    # next to the CPU build (ops left out, torchvision.extension._has_ops() is False), but two of its
    # fake-kernel registrations (nms, qnms) are not guarded by that and need the ops' schemas to
    # exist. When that stops the import, declaring those two schemas (no kernel) lets torchvision
    # and deepinv import; deepinv's PGD calls no torchvision op.
    try:
        import torchvision  # noqa: F401
    except RuntimeError as e:
        if "torchvision::" not in str(e):
            raise
        for op in ("nms", "qnms"):
            torch.library.define(f"torchvision::{op}", "(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        for m in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
            del sys.modules[m]
        import torchvision  # noqa: F401
    import deepinv

    return deepinv


def deepinv_child(inp: str, outp: str) -> None:
    """Runs in the deepinv venv: times deepinv's unfolded PGD against the plain loop."""
    load_start = load_avg()
    dinv = _import_deepinv()
    d = torch.load(inp)
    torch.set_num_threads(d["threads"])
    warnings.filterwarnings("ignore")
    a, x, y, lip = d["a"], d["x"], d["y"], d["lip"]
    raw_s0, raw_l0 = d["raw_s0"], d["raw_l0"]
    num_layers = raw_s0.numel()
    plain_step, plain_forward = make_loop(a, x, y, lip, raw_s0, raw_l0, plain_threshold)

    at = a.T
    physics = dinv.physics.LinearPhysics(A=lambda v: v @ at, A_adjoint=lambda u: u @ a)
    steps0 = (F.softplus(raw_s0) / lip).tolist()  # the same initial values as the plain loop
    lams0 = F.softplus(raw_l0).tolist()
    model = dinv.optim.PGD(data_fidelity=dinv.optim.data_fidelity.L2(), prior=dinv.optim.prior.L1Prior(),
                           stepsize=steps0, lambda_reg=lams0, max_iter=num_layers, unfold=True,
                           trainable_params=["stepsize", "lambda"],
                           custom_init=lambda yy, ph: (torch.zeros_like(x), torch.zeros_like(x)))
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=LR, foreach=True)

    def deepinv_step() -> None:
        loss = F.mse_loss(model(y, physics), x)
        opt.zero_grad()
        loss.backward()
        opt.step()

    with torch.no_grad():  # same arithmetic: same output at the shared initial values
        ref = plain_forward()
        diff = float((model(y, physics) - ref).abs().max() / ref.abs().max())
    variants = {"plain loop": plain_step, "deepinv": deepinv_step}
    for f in variants.values():
        for _ in range(3):
            f()
    times = interleaved(variants, d["reps"], d["steps"])
    prof = {k: aten_profile(f, d["profile_steps"]) for k, f in variants.items()} if d["profile_steps"] else {}
    Path(outp).write_text(json.dumps({"load_start": load_start, "load_end": load_avg(),
        "versions": {"torch": torch.__version__, "deepinv": dinv.__version__,
                     "torchvision": __import__("torchvision").__version__},
        "trainable_parameters": f"{len(params)} tensors, {sum(p.numel() for p in params)} scalars",
        "output_rel_diff_at_init": diff, "times": times, "profile": prof}))


def deepinv_python(venv: Path) -> Path:
    """The venv's python, after creating the venv and installing ``DEEPINV_REQUIREMENTS`` in it
    when it has not got them."""
    py = venv / "bin" / "python"
    probe = [str(py), "-c", "import importlib.metadata as m; print(m.version('torch'), m.version('deepinv'))"]
    want = (DEEPINV_REQUIREMENTS[0].split("==")[1], DEEPINV_REQUIREMENTS[2].split("==")[1])
    if py.exists():
        r = subprocess.run(probe, capture_output=True, text=True)
        got = r.stdout.split()
        if r.returncode == 0 and len(got) == 2 and got[0].split("+")[0] == want[0] and got[1] == want[1]:
            return py
    print(f"Creating {venv} with {' '.join(DEEPINV_REQUIREMENTS)} (a few minutes) ...", flush=True)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run([str(py), "-m", "pip", "install", "-q", *DEEPINV_REQUIREMENTS], check=True)
    r = subprocess.run(probe, capture_output=True, text=True, check=True)
    if r.stdout.split()[0].split("+")[0] != want[0]:
        raise RuntimeError(f"{venv}: expected torch {want[0]} after the install, got {r.stdout.strip()}")
    return py


def run_deepinv(args, payload: Dict[str, object]) -> Dict[str, object]:
    py = deepinv_python(Path(args.deepinv_venv))
    with tempfile.TemporaryDirectory() as tmp:
        inp, outp = Path(tmp) / "in.pt", Path(tmp) / "out.json"
        torch.save(payload, inp)
        subprocess.run([str(py), str(Path(__file__).resolve()), "--deepinv_child", str(inp), str(outp)], check=True)
        return json.loads(outp.read_text())


# --------------------------------------------------------------------------- #
# main
# --------------------------------------------------------------------------- #
def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--layers", type=int, default=16)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--reps", type=int, default=40, help="alternating rounds")
    p.add_argument("--steps", type=int, default=5, help="training steps per variant and round")
    p.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (both processes)")
    p.add_argument("--profile_steps", type=int, default=10, help="steps profiled per variant (0: no profile)")
    p.add_argument("--no_deepinv", action="store_true", help="skip deepinv (and its venv)")
    p.add_argument("--no_compile", action="store_true", help="skip the torch.compile variants")
    p.add_argument("--smoke", action="store_true", help="2 rounds of 1 step, 1 profiled step, no deepinv, no compile")
    p.add_argument("--deepinv_venv", default=str(DEEPINV_VENV), help="where deepinv's venv lives (created if needed)")
    p.add_argument("--json", default=None, help="also write the raw numbers to this file")
    p.add_argument("--deepinv_child", nargs=2, metavar=("IN", "OUT"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.deepinv_child:
        deepinv_child(*args.deepinv_child)
        return
    if args.smoke:
        args.reps, args.steps, args.profile_steps = 2, 1, 1
        args.no_deepinv = args.no_compile = True

    from machine import cpu_name  # benchmarks/machine.py (scripts run from this folder)
    from unroll.data import Batch, load_standard_problem
    from unroll.models import LearnedISTA
    from unroll.operators import MatrixOperator
    from unroll.parametrize import inverse_softplus
    from unroll.prox import soft_threshold
    from unroll.train import ReconstructionTask

    load_start = load_avg()
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", message=".*self.log.*")  # no Trainer attached: logging is skipped
    K = args.layers

    a = load_standard_problem()["A"].float()
    op = MatrixOperator(a)
    lip = float(op.lipschitz())
    g = torch.Generator().manual_seed(0)
    x = (torch.rand(args.batch, a.shape[1], generator=g) < 0.1).float() * torch.randn(args.batch, a.shape[1], generator=g)
    y = x @ a.T
    batch = Batch(y, x)
    raw_s0 = torch.full((K,), float(inverse_softplus(1.0)))  # step 1 (·1/L), LearnedISTA's default
    raw_l0 = torch.full((K,), float(inverse_softplus(LAM)))

    plain, plain_forward = make_loop(a, x, y, lip, raw_s0, raw_l0, plain_threshold)
    lean, _ = make_loop(a, x, y, lip, raw_s0, raw_l0, soft_threshold)
    lean_scalars, _ = make_loop(a, x, y, lip, raw_s0, raw_l0, soft_threshold, per_layer=True)

    def make_framework(compiled: bool):
        task = ReconstructionTask(LearnedISTA(K, lam=LAM), operator=op, compile=compiled)  # as `compile: true`
        opt = torch.optim.Adam(task.model.parameters(), lr=LR, foreach=True)

        def step() -> None:
            loss = task.training_step(batch, 0)
            opt.zero_grad()
            loss.backward()
            opt.step()
        return step, task

    framework, task = make_framework(False)
    with torch.no_grad():  # the loops compute what the framework computes
        ref = plain_forward()
        same = float((task(y) - ref).abs().max() / ref.abs().max())
    variants = {"plain loop": plain, "lean-kernel loop": lean, f"lean-kernel loop, {2 * K} scalar parameters": lean_scalars,
                "framework": framework}
    if not args.no_compile:
        variants["framework + torch.compile"] = make_framework(True)[0]
    t0 = time.perf_counter()
    for f in variants.values():  # warm-up (and compilation)
        for _ in range(3):
            f()
    warm_s = time.perf_counter() - t0
    times = interleaved(variants, args.reps, args.steps)
    med = {k: statistics.median(v) for k, v in times.items()}

    prof = {}
    if args.profile_steps:
        prof = {k: aten_profile(f, args.profile_steps) for k, f in variants.items() if "compile" not in k}

    inf_med = {}
    if not args.no_compile:  # inference (forward only) with and without compile
        model = LearnedISTA(K, lam=LAM)
        cmodel = torch.compile(model)
        with torch.no_grad():
            for _ in range(3):
                model(y, op), cmodel(y, op)
            inf = interleaved({"eager": lambda: model(y, op), "torch.compile": lambda: cmodel(y, op)},
                              args.reps, args.steps)
        inf_med = {k: statistics.median(v) for k, v in inf.items()}

    dres = None
    if not args.no_deepinv:
        try:
            dres = run_deepinv(args, {"a": a, "x": x, "y": y, "lip": lip, "raw_s0": raw_s0, "raw_l0": raw_l0,
                                      "threads": args.threads, "reps": args.reps, "steps": args.steps,
                                      "profile_steps": args.profile_steps})
        except (OSError, RuntimeError, subprocess.CalledProcessError) as e:  # report the rest all the same
            print(f"deepinv: not measured ({type(e).__name__}: {e}); --no_deepinv skips it", file=sys.stderr)

    # ------------------------------------------------------------------ report
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=HERE, capture_output=True,
                                text=True).stdout.strip() or "unknown"
    except OSError:
        commit = "unknown"
    print(f"Date: {started}; commit {commit}")
    print(f"Machine: {os.cpu_count()} cores, {cpu_name()}; torch {torch.__version__}, Python "
          f"{sys.version.split()[0]}; torch.set_num_threads({args.threads})")
    print(f"Load average at start: {load_start}")
    print(f"Learned ISTA, K={K}, batch {args.batch}, A {a.shape[0]}×{a.shape[1]} float32, Adam foreach; median of "
          f"{args.reps} alternating rounds × {args.steps} steps (warm-up and compilation: {warm_s:.0f} s); "
          f"framework output vs plain loop at init: max rel. diff {same:.1e}")
    print()
    base = "plain loop"
    print("| training step | ms | / plain loop | / plain loop, per round | / lean-kernel loop |")
    print("|---|---:|---:|---:|---:|")
    for k, v in med.items():
        print(f"| {k} | {v * 1e3:.2f} | {v / med[base]:.3f} | {paired_ratio(times[k], times[base]):.3f} | "
              f"{v / med['lean-kernel loop']:.3f} |")
    if inf_med:
        print()
        print("| inference forward | ms | speed-up |")
        print("|---|---:|---:|")
        for k, v in inf_med.items():
            print(f"| {k} | {v * 1e3:.2f} | {inf_med['eager'] / v:.2f} |")

    fw_plain = med["framework"] / med[base]
    if dres is not None:
        dt = dres["times"]
        dmed = {k: statistics.median(v) for k, v in dt.items()}
        d_plain = dmed["deepinv"] / dmed[base]
        print()
        print(f"deepinv subprocess ({', '.join(f'{k} {v}' for k, v in dres['versions'].items())}; load average "
              f"{dres['load_start']} at its start, {dres['load_end']} at its end; trainable "
              f"parameters: {dres['trainable_parameters']}; output vs plain loop at init: max rel. diff "
              f"{dres['output_rel_diff_at_init']:.1e}):")
        print()
        print("| training step, deepinv process | ms | / plain loop | / plain loop, per round |")
        print("|---|---:|---:|---:|")
        for k, v in dmed.items():
            print(f"| {k} | {v * 1e3:.2f} | {v / dmed[base]:.3f} | {paired_ratio(dt[k], dt[base]):.3f} |")
        print()
        print(f"deepinv / framework = (deepinv / plain) / (framework / plain) = {d_plain:.3f} / {fw_plain:.3f} = "
              f"{d_plain / fw_plain:.2f}× (per-round ratios: "
              f"{paired_ratio(dt['deepinv'], dt[base]) / paired_ratio(times['framework'], times[base]):.2f}×)")
        prof.update({f"{k} (deepinv process)": v for k, v in dres["profile"].items()})

    if prof:
        print()
        print(f"aten calls per training step (torch.profiler, {args.profile_steps} steps; nested calls counted):")
        print()
        names = list(prof)
        print("| | " + " | ".join(names) + " |")
        print("|---|" + "---:|" * len(names))
        print("| aten calls / step | " + " | ".join(f"{prof[n]['calls']:.0f}" for n in names) + " |")
        print("| aten self CPU, ms / step | " + " | ".join(f"{prof[n]['self_ms']:.1f}" for n in names) + " |")
        print("| of which `mm`/`addmm`, ms / step | " + " | ".join(f"{prof[n]['mm_ms']:.1f}" for n in names) + " |")
        ops = sorted({o for n in names for o in prof[n]["by_op"]},
                     key=lambda o: -max(abs(prof[n]["by_op"].get(o, 0) - prof[names[0]]["by_op"].get(o, 0))
                                        for n in names))
        for o in ops[:15]:
            print(f"| `{o}` | " + " | ".join(f"{prof[n]['by_op'].get(o, 0):.0f}" for n in names) + " |")

    def verdict(ok_medians: bool, ok_rounds: bool) -> str:
        return "met" if ok_medians and ok_rounds else "NOT met" if not (ok_medians or ok_rounds) else \
            "undecided (ratio of medians and per-round ratio disagree)"

    fw_round = paired_ratio(times["framework"], times[base])
    print()
    print("Targets (issue 13), ratio of medians / median per-round ratio:")
    print(f"- eager framework ≤ 1.10× the plain loop: {fw_plain:.3f} / {fw_round:.3f} -> "
          f"{verdict(fw_plain <= 1.10, fw_round <= 1.10)}")
    scal = f"lean-kernel loop, {2 * K} scalar parameters"
    print(f"- framework / lean-kernel loop (cost of the framework's own layers): "
          f"{med['framework'] / med['lean-kernel loop']:.3f} = {med[scal] / med['lean-kernel loop']:.3f} "
          f"({2 * K} 0-dim parameters instead of 2 vectors) × {med['framework'] / med[scal]:.3f} (the rest)")
    if "framework + torch.compile" in med:
        c = med["framework + torch.compile"] / med[base]
        cr = paired_ratio(times["framework + torch.compile"], times[base])
        print(f"- compiled faster than the plain loop: {c:.3f} / {cr:.3f} -> {verdict(c < 1, cr < 1)} "
              f"(compile speed-up over eager framework {med['framework'] / med['framework + torch.compile']:.2f}×)")
    if dres is not None:
        r = d_plain / fw_plain
        rr = paired_ratio(dt["deepinv"], dt[base]) / fw_round
        print(f"- at least 1.5× faster than deepinv: {r:.2f}× / {rr:.2f}× -> {verdict(r >= 1.5, rr >= 1.5)}")
    print(f"Load average at end: {load_avg()}")

    if args.json:
        Path(args.json).write_text(json.dumps({
            "date": started, "commit": commit, "cpu": cpu_name(), "threads": args.threads, "load_start": load_start,
            "load_end": load_avg(), "times": times, "inference": inf_med, "profile": prof, "deepinv": dres}, indent=1))


if __name__ == "__main__":
    main()
