"""Memory and time of one forward+backward per gradient mode, and the accuracy of the gradients.

    python benchmarks/grad_modes.py                      # K ∈ {8, 32, 128, 512}, settings a and b, accuracy
    python benchmarks/grad_modes.py --quick              # K ∈ {8, 32}: a short version
    python benchmarks/grad_modes.py --settings a --modes full implicit --K 8 64 --no-accuracy

Settings (every mode runs the same map: tied weights, also for full/truncated/checkpoint):

(a) learned ISTA on the standard 250×500 problem (float32, batch 64, Bernoulli–Gaussian x with
    p = 0.1, y = A x): ``Unrolled(ProxGradStep(L1(0.1, learnable=True), learn_step=True), K, tied=True)``.
(b) 256×256 deblurring: ``Convolution2d(gaussian_kernel(9, 2.0), (1, 256, 256))`` (circular), batch 1,
    a sum of Gaussian blobs blurred plus 1 % noise;
    ``Unrolled(ProxGradStep(CNNProx(channels=1, features=16), step=1.0), K, tied=True)``.

Modes: full, truncated (k = 8), checkpoint (⌈√K⌉ segments), implicit (BiCGSTAB, backward_tol 1e-5,
at most 100 iterations) and jfb; implicit and jfb get ``forward_tol=1e-30`` so that their forward
pass runs all K iterations (the point is memory and time against K, not convergence).
Loss: MSE to the ground truth; backward w.r.t. the layer's parameters.

Each (setting, mode, K) runs in a fresh subprocess (this script with ``--one``), which builds
everything and runs one warm-up forward+backward at K = 2. Memory: the kernel's peak-RSS counter
is reset (``/proc/self/clear_refs``), the RSS is read (``/proc/self/statm``), one forward+backward
at K runs, and ``peak_delta = ru_maxrss − rss_before`` is reported. For this pass glibc serves
allocations above 16 KiB by ``mmap`` and its free heap is released first (``mallopt``,
``malloc_trim``), so that the RSS follows the live tensors (memory freed earlier would otherwise be
reused without showing in the RSS). Time: the wall time (``time.perf_counter``) of the next
forward+backward at K (the minimum over ``--repeat`` passes; default 1), with glibc back in its
steady state (blocks up to 32 MiB from the heap; a 16 KiB mmap threshold page-faults every
allocation and inflates times by 20-40 %).

Accuracy (``--accuracy``, on by default): at a converged fixed point of tied learned ISTA in float64
(m = 50, n = 100, batch 16, K = 3000), the gradient of each mode w.r.t. the step and threshold
parameters and w.r.t. y against full backprop through the same K iterations.

Writes ``benchmarks/results/grad_modes.json`` (raw numbers) and prints Markdown tables.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import resource
import shlex
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Dict, List, Optional

from machine import cpu_name  # benchmarks/machine.py

ROOT = Path(__file__).resolve().parents[1]
MODES = ("full", "truncated", "checkpoint", "implicit", "jfb")
SETTINGS = ("a", "b")
SETTING_TITLES = {
    "a": "(a) learned ISTA, 250×500 standard problem, float32, batch 64",
    "b": "(b) 256×256 deblurring (Gaussian 9×9, σ=2, circular) with a CNN prox (16 features), float32, batch 1",
}
TRUNCATE_K = 8
MiB = 2 ** 20


# ---------------------------------------------------------------------------- machine


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _reset_peak() -> bool:
    """Reset the kernel's peak-RSS counter (what ru_maxrss reports) to the current RSS."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _maxrss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


# ---------------------------------------------------------------------------- settings
def grad_mode(name: str, forward_tol: float = 1e-30, **kwargs):
    from unroll.autodiff import GradMode

    if name == "full":
        return GradMode("full")
    if name == "truncated":
        return GradMode("truncated", k=kwargs.get("k", TRUNCATE_K))
    if name == "checkpoint":
        return GradMode("checkpoint")
    if name == "implicit":
        return GradMode("implicit", forward_tol=forward_tol, backward_tol=kwargs.get("backward_tol", 1e-5),
                        backward_max_iter=kwargs.get("backward_max_iter", 100),
                        backward_solver=kwargs.get("backward_solver", "bicgstab"))
    if name == "jfb":
        return GradMode("jfb", forward_tol=forward_tol)
    raise ValueError(f"mode: expected one of {', '.join(MODES)}, got {name!r}")


def build_setting(setting: str, K: int):
    """``(layer, problem, x_true)`` of a setting, in float32."""
    import torch

    from unroll.problem import Problem
    from unroll.steps import ProxGradStep
    from unroll.unrolled import Unrolled

    torch.manual_seed(0)
    if setting == "a":
        from unroll.data import load_standard_problem
        from unroll.operators import MatrixOperator
        from unroll.prox import L1

        op = MatrixOperator(load_standard_problem()["A"].to(torch.float32))
        n = op.in_shape[0]
        g = torch.Generator().manual_seed(1)
        x = torch.randn(64, n, generator=g) * (torch.rand(64, n, generator=g) < 0.1)
        problem = Problem.create(op, op(x))
        layer = Unrolled(ProxGradStep(L1(0.1, learnable=True), learn_step=True), num_iters=K, tied=True)
        return layer, problem, x
    if setting == "b":
        from unroll.models.blocks import CNNProx
        from unroll.operators.conv import Convolution2d, gaussian_kernel

        op = Convolution2d(gaussian_kernel(9, 2.0, dtype=torch.float32), (1, 256, 256))
        x = blob_image(256, seed=2)[None, None]
        ax = op(x)
        g = torch.Generator().manual_seed(3)
        y = ax + 0.01 * ax.abs().max() * torch.randn(ax.shape, generator=g)
        problem = Problem.create(op, y)
        layer = Unrolled(ProxGradStep(CNNProx(channels=1, features=16), step=1.0), num_iters=K, tied=True)
        return layer, problem, x
    raise ValueError(f"setting: expected 'a' or 'b', got {setting!r}")


def blob_image(size: int, blobs: int = 8, seed: int = 0):
    """A smooth test image in [0, 1]: a sum of Gaussian blobs of random centre, width and height."""
    import torch

    g = torch.Generator().manual_seed(seed)
    r = torch.arange(size, dtype=torch.float32)
    img = torch.zeros(size, size)
    for _ in range(blobs):
        cy, cx = (torch.rand(2, generator=g) * size).tolist()
        w = float(8 + 32 * torch.rand((), generator=g))
        a = float(0.3 + 0.7 * torch.rand((), generator=g))
        img += a * torch.exp(-((r[:, None] - cy) ** 2 + (r[None, :] - cx) ** 2) / (2 * w * w))
    return img / img.max()


def _forward_backward(layer, problem, x_true, K: int, mode):
    import torch

    layer.zero_grad(set_to_none=True)
    out = layer(problem, num_iters=K, grad_mode=mode)
    loss = torch.mean((out.x - x_true) ** 2)
    t_fwd = time.perf_counter()
    loss.backward()
    return out, loss, t_fwd


def _mallopt(mmap_threshold: int, trim_threshold: int, trim: bool = False) -> bool:
    """glibc ``mallopt(M_MMAP_THRESHOLD)``/``mallopt(M_TRIM_THRESHOLD)`` (and ``malloc_trim(0)``);
    ``False`` where that is not available."""
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
        ok = libc.mallopt(M_MMAP_THRESHOLD, mmap_threshold) == 1 and libc.mallopt(M_TRIM_THRESHOLD, trim_threshold) == 1
        if trim:
            libc.malloc_trim(0)
        return ok
    except (OSError, AttributeError):
        return False


def run_one(setting: str, mode_name: str, K: int, threads: int, repeat: int = 1) -> Dict:
    """One cell, in its own process: a warm-up at K=2; one forward+backward at K for the peak
    memory; then ``repeat`` timed forward+backward passes at K."""
    import torch

    torch.set_num_threads(threads)
    # memory: allocations above 16 KiB are mmapped (freed memory leaves the RSS at once), so the
    # RSS follows the live tensors instead of the heap's high-water mark
    tuned = _mallopt(16 * 1024, 64 * 1024)
    layer, problem, x_true = build_setting(setting, K)
    mode = grad_mode(mode_name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _forward_backward(layer, problem, x_true, 2, mode)  # warm-up: allocator, FFT plans, autograd
        layer.zero_grad(set_to_none=True)
        gc.collect()
        _mallopt(16 * 1024, 64 * 1024, trim=True)
        reset = _reset_peak()
        rss_before = _rss_bytes()
        t0 = time.perf_counter()
        _forward_backward(layer, problem, x_true, K, mode)
        t1 = time.perf_counter()
        peak = _maxrss_bytes()
    layer.zero_grad(set_to_none=True)
    gc.collect()
    # time: glibc's steady state by default (blocks up to 32 MiB served from the heap), so that the
    # page faults of fresh mmaps do not inflate the times
    _mallopt(32 * 2 ** 20, 64 * 2 ** 20)
    times = []
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        for _ in range(repeat):
            t2 = time.perf_counter()
            out, loss, t_fwd = _forward_backward(layer, problem, x_true, K, mode)
            t3 = time.perf_counter()
            times.append((t3 - t2, t_fwd - t2, t3 - t_fwd))
        caught = sorted({str(m.message)[:200] for m in w})
    info = out.info
    grads = [p.grad for p in layer.parameters() if p.grad is not None]
    best = min(times)
    return {
        "setting": setting, "mode": mode_name, "K": K, "threads": threads,
        "time_s": best[0], "times_s": [t[0] for t in times], "forward_s": best[1], "backward_s": best[2],
        "rss_before": rss_before, "peak_rss": peak, "peak_delta": peak - rss_before,
        "peak_reset": reset, "malloc_tuned": tuned, "memory_run_time_s": t1 - t0,
        "forward_iterations": int(info.iterations.max()),
        "backward_iterations": info.backward_iterations,
        "backward_residual_max": None if info.backward_residual is None else float(info.backward_residual.max()),
        "loss": float(loss.detach()),
        "grad_norm": float(torch.sqrt(sum((g.double() ** 2).sum() for g in grads))) if grads else 0.0,
        "params_with_grad": len(grads),
        "warnings": caught,
    }


# ---------------------------------------------------------------------------- parent
def run_child(setting: str, mode: str, K: int, threads: int, repeat: int, timeout: float) -> Dict:
    env = dict(os.environ)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--one", setting, mode, str(K), "--threads", str(threads),
           "--repeat", str(repeat)]
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"setting": setting, "mode": mode, "K": K, "error": f"timeout after {timeout:.0f} s"}
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        why = "killed (out of memory?)" if proc.returncode in (-9, 137) else f"exit code {proc.returncode}"
        return {"setting": setting, "mode": mode, "K": K, "error": why, "stderr": proc.stderr[-2000:]}
    res = json.loads(lines[-1])
    res["process_s"] = time.perf_counter() - t0
    return res


def _cell(r: Optional[Dict]) -> str:
    if r is None:
        return "–"
    if "error" in r:
        return r["error"]
    return f"{r['time_s']:.3g} s / {r['peak_delta'] / MiB:.1f} MiB"


def growth(results: List[Dict], setting: str, mode: str, Ks: List[int]):
    """``(mem(Kmax)/mem(Kmin), log(ratio)/log(Kmax/Kmin))`` or ``(None, None)``."""
    by_k = {r["K"]: r for r in results if r["setting"] == setting and r["mode"] == mode and "error" not in r}
    lo, hi = min(Ks), max(Ks)
    if lo == hi or lo not in by_k or hi not in by_k:
        return None, None
    m_lo, m_hi = by_k[lo]["peak_delta"], by_k[hi]["peak_delta"]
    if m_lo <= 0 or m_hi <= 0:
        return None, None
    ratio = m_hi / m_lo
    return ratio, math.log(ratio) / math.log(hi / lo)


def table(results: List[Dict], setting: str, modes: List[str], Ks: List[int]) -> str:
    lo, hi = min(Ks), max(Ks)
    head = ["mode"] + [f"K={k}" for k in Ks] + [f"mem(K={hi})/mem(K={lo})", "growth exponent"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for m in modes:
        row = [m if m != "truncated" else f"truncated (k={TRUNCATE_K})"]
        for k in Ks:
            r = next((r for r in results if r["setting"] == setting and r["mode"] == m and r["K"] == k), None)
            row.append(_cell(r))
        ratio, expo = growth(results, setting, m, Ks)
        row += ["–" if ratio is None else f"{ratio:.2f}", "–" if expo is None else f"{expo:.2f}"]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def details(results: List[Dict], setting: str) -> str:
    """Forward/backward split and solver counts (implicit/jfb), one line per run."""
    out = []
    for r in results:
        if r["setting"] != setting or "error" in r:
            continue
        extra = ""
        if r["mode"] in ("implicit", "jfb"):
            extra = f", forward iterations {r['forward_iterations']}"
            if r["mode"] == "implicit":
                extra += f", BiCGSTAB iterations {r['backward_iterations']} (residual {r['backward_residual_max']:.2g})"
        out.append(f"- {r['mode']:10s} K={r['K']:<4d} forward {r['forward_s']:.3g} s, backward {r['backward_s']:.3g} s, "
                   f"RSS before {r['rss_before'] / MiB:.0f} MiB{extra}")
    return "\n".join(out)


# ---------------------------------------------------------------------------- accuracy
def accuracy(threads: int) -> Dict:
    """Gradients of every mode at a converged Lasso fixed point against full backprop (float64)."""
    import torch

    from unroll.autodiff import GradMode
    from unroll.problem import Problem
    from unroll.prox import L1
    from unroll.steps import ProxGradStep
    from unroll.unrolled import Unrolled

    torch.set_num_threads(threads)
    m, n, B, K, lam, tol = 50, 100, 16, 3000, 0.05, 1e-12
    dt = torch.float64
    g = torch.Generator().manual_seed(0)
    A = torch.randn(m, n, dtype=dt, generator=g) / math.sqrt(m)
    x = torch.randn(B, n, dtype=dt, generator=g) * (torch.rand(B, n, dtype=dt, generator=g) < 0.1)
    y0 = x @ A.T + 0.01 * torch.randn(B, m, dtype=dt, generator=g)

    old = torch.get_default_dtype()
    torch.set_default_dtype(dt)
    try:
        layer = Unrolled(ProxGradStep(L1(lam, learnable=True), learn_step=True), num_iters=K, tied=True)
    finally:
        torch.set_default_dtype(old)
    step = layer.steps[0]
    params = [step.step.raw, step.prox.raw_lam]

    from unroll.operators import MatrixOperator

    op = MatrixOperator(A)
    with torch.no_grad():  # the fixed point is reached: K iterations with tol 1e-12
        conv = layer(Problem.create(op, y0), num_iters=K, tol=tol).info
    fixed = {"converged": bool(conv.converged.all()), "max_iterations": int(conv.iterations.max()),
             "max_residual": float(conv.residual.max())}

    def grads(mode: GradMode, tol_: Optional[float]):
        y = y0.clone().requires_grad_(True)
        problem = Problem.create(op, y)
        t0 = time.perf_counter()
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always")
            out = layer(problem, num_iters=K, tol=tol_, grad_mode=mode)
            loss = torch.mean((out.x - x) ** 2)
            gs = torch.autograd.grad(loss, params + [y])
        return gs, time.perf_counter() - t0, out.info, [str(m.message)[:160] for m in w]

    ref, t_ref, _, _ = grads(GradMode("full"), None)
    cases = [
        ("truncated (k=8)", GradMode("truncated", k=8), None),
        ("truncated (k=64)", GradMode("truncated", k=64), None),
        ("checkpoint", GradMode("checkpoint"), None),
        ("implicit (bicgstab)", GradMode("implicit", forward_tol=tol, backward_solver="bicgstab",
                                         backward_tol=1e-12, backward_max_iter=5000), tol),
        ("implicit (fixed_point)", GradMode("implicit", forward_tol=tol, backward_solver="fixed_point",
                                            backward_tol=1e-12, backward_max_iter=5000), tol),
        ("jfb", GradMode("jfb", forward_tol=tol), tol),
    ]

    def rel(a, b):
        return float(torch.linalg.vector_norm(a - b) / torch.linalg.vector_norm(b))

    theta_ref = torch.stack([ref[0], ref[1]])
    rows = [{"mode": "full (reference)", "time_s": t_ref, "theta": 0.0, "lam_raw": 0.0, "y": 0.0,
             "step_raw_abs": float(ref[0].abs()), "backward_iterations": None, "forward_iterations": K,
             "warnings": []}]
    for name, mode, tol_ in cases:
        gs, t, info, caught = grads(mode, tol_)
        rows.append({"mode": name, "time_s": t, "theta": rel(torch.stack([gs[0], gs[1]]), theta_ref),
                     "lam_raw": rel(gs[1], ref[1]), "step_raw": rel(gs[0], ref[0]),
                     "step_raw_abs": float(gs[0].abs()), "y": rel(gs[2], ref[2]),
                     "backward_iterations": info.backward_iterations,
                     "forward_iterations": int(info.iterations.max()), "warnings": caught})
    return {"problem": {"m": m, "n": n, "batch": B, "K": K, "lam": lam, "tol": tol, "dtype": "float64",
                        "noise": 0.01, "p": 0.1},
            "fixed_point": fixed,
            "reference_grad_norms": {"step_raw": float(ref[0].abs()), "lam_raw": float(ref[1].abs()),
                                     "y": float(torch.linalg.vector_norm(ref[2]))},
            "rows": rows}


def accuracy_table(acc: Dict) -> str:
    lines = ["| mode | rel. err. ∂/∂θ (step_raw, λ_raw) | rel. err. ∂/∂λ_raw | rel. err. ∂/∂y | ∂/∂step_raw "
             "(abs.) | forward its | backward its | time s |",
             "|---|---|---|---|---|---|---|---|"]
    for r in acc["rows"]:
        its = "–" if r["backward_iterations"] is None else str(r["backward_iterations"])
        lines.append(f"| {r['mode']} | {r['theta']:.2e} | {r['lam_raw']:.2e} | {r['y']:.2e} | "
                     f"{r['step_raw_abs']:.1e} | {r['forward_iterations']} | {its} | {r['time_s']:.3g} |")
    return "\n".join(lines)


# ---------------------------------------------------------------------------- main
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--K", type=int, nargs="+", default=[8, 32, 128, 512], help="iteration counts")
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=SETTINGS)
    parser.add_argument("--quick", action="store_true", help="K ∈ {8, 32} only")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    parser.add_argument("--accuracy", dest="accuracy", action="store_true", default=True,
                        help="run the gradient-accuracy section (default)")
    parser.add_argument("--no-accuracy", dest="accuracy", action="store_false")
    parser.add_argument("--repeat", type=int, default=1, help="timed runs per cell (the minimum is reported)")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds per measurement subprocess")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "grad_modes.json"))
    parser.add_argument("--one", nargs=3, metavar=("SETTING", "MODE", "K"), help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.one:
        setting, mode, K = args.one
        print(json.dumps(run_one(setting, mode, int(K), args.threads, args.repeat)), flush=True)
        return

    import torch

    Ks = [8, 32] if args.quick else sorted(set(args.K))
    command = " ".join(shlex.quote(a) for a in [sys.executable, *sys.argv])
    machine = {"cpu_count": os.cpu_count(), "cpu": cpu_name(), "torch": torch.__version__,
               "python": platform.python_version(), "platform": platform.platform(), "threads": args.threads,
               "repeat": args.repeat}
    print("# Gradient modes: memory and time of one forward+backward\n")
    print(f"- machine: {machine['cpu_count']} CPUs ({machine['cpu']}), torch {machine['torch']}, "
          f"python {machine['python']}, {args.threads} torch threads")
    print(f"- command: `{command}`")
    print("- every mode runs the same map: tied weights (one step module) for all modes, "
          f"truncated keeps the last k={TRUNCATE_K} steps, checkpoint ⌈√K⌉ segments; implicit/jfb run exactly K "
          "forward iterations (forward_tol=1e-30); implicit: BiCGSTAB, backward_tol 1e-5, ≤ 100 iterations")
    print("- fresh process per cell, warm-up forward+backward at K=2; memory = peak RSS of one forward+backward "
          "at K minus the RSS before it (glibc mmap threshold 16 KiB, heap trimmed, peak reset); time = the next "
          "forward+backward at K" + ("" if args.repeat == 1 else f" (min of {args.repeat})") + "\n", flush=True)

    results: List[Dict] = []
    for setting in args.settings:
        for mode in args.modes:
            for K in Ks:
                r = run_child(setting, mode, K, args.threads, args.repeat, args.timeout)
                results.append(r)
                print(f"  [{setting}] {mode:10s} K={K:<4d} {_cell(r)}", file=sys.stderr, flush=True)
        print(f"## {SETTING_TITLES[setting]}\n")
        print("cells: time of one forward+backward / peak memory above the baseline\n")
        print(table(results, setting, args.modes, Ks))
        print("\nDetails:\n")
        print(details(results, setting))
        warned = sorted({(r["mode"], w) for r in results if r["setting"] == setting for w in r.get("warnings", [])})
        if warned:
            print("\nWarnings raised (deduplicated):\n")
            for mode, w in warned:
                print(f"- {mode}: {w}")
        errors = [r for r in results if r["setting"] == setting and "error" in r]
        for r in errors:
            print(f"\n{r['mode']} K={r['K']}: {r['error']}\n{r.get('stderr', '')[-500:]}")
        print(flush=True)

    acc = None
    if args.accuracy:
        acc = accuracy(args.threads)
        p, fp = acc["problem"], acc["fixed_point"]
        print("## Gradient accuracy at the fixed point (tied learned ISTA, float64)\n")
        print(f"m={p['m']}, n={p['n']}, batch {p['batch']}, λ={p['lam']}, K={p['K']}; the fixed point is "
              f"{'reached' if fp['converged'] else 'NOT reached'} (tol {p['tol']:g}: at most {fp['max_iterations']} "
              f"iterations, largest relative change {fp['max_residual']:.2g}). Reference: full backprop through "
              f"the same {p['K']} iterations; implicit/jfb stop the forward at tol {p['tol']:g}; implicit "
              "backward_tol 1e-12. At the Lasso fixed point the solution does not depend on the step size, so "
              "the exact ∂/∂step_raw is 0 (full backprop gives round-off, about 1e-17): it is shown as an absolute "
              "value, its relative error would be meaningless; the θ column combines both parameters.\n")
        print(accuracy_table(acc))
        print(flush=True)

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"command": command, "machine": machine, "K": Ks, "modes": args.modes,
                               "settings": {s: SETTING_TITLES[s] for s in args.settings},
                               "results": results, "accuracy": acc}, indent=1))
    print(f"raw numbers: {out}")


if __name__ == "__main__":
    main()
