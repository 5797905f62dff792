"""Why the paper's LPN, trained on this machine's budget, does not converge in PnP-ADMM
deblurring (issue 15, reproduction 2): the variants tried, each trained with the recipe of
``benchmarks/pnp_deblur.py`` (``configs/lpn_patches.yaml``, 32×32 patches, batch 16, ℓ1 warm start
then proximal matching γ 0.5 → 0.1), and three measurements of each on the held-out 128×128 crops:

1. as a denoiser at σ_d = 0.05, and on the clean crops (how close ``f`` comes to the identity);
2. the proximal-point iteration ``z ← f(z)`` from a noisy crop, 30 times: what PnP reduces to
   along the directions the blur removes (it decreases ``R`` at every step, so where it goes is
   where the learned ``R`` is low);
3. PnP-ADMM (ρ = σ_n²/σ_d², the rule of ``pnp_deblur.py``) at σ_b/σ_n = 1/0.02 and 2/0.04: PSNR
   after 1, 2, 3, 5, 10, 20 and 100 iterations, in the library's order (x, z, u) and in the order
   of the paper's code (x, u, z: Douglas–Rachford with the data step first, the order under which
   non-convex convergence theory applies).

    OMP_NUM_THREADS=1 python benchmarks/lpn_pnp_diagnosis.py               # about 30 min, 1 thread
    python benchmarks/lpn_pnp_diagnosis.py --steps 4 --variants paper      # smoke run

Writes ``benchmarks/results/lpn_pnp_diagnosis.json``.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import pnp_deblur  # noqa: E402
from machine import cpu_name  # noqa: E402

from unroll.data import DeblurringDataModule  # noqa: E402
from unroll.metrics import psnr  # noqa: E402
from unroll.models.pnp import PnPADMMStep  # noqa: E402
from unroll.problem import Problem  # noqa: E402
from unroll.steps import ADMMState  # noqa: E402
from unroll.unrolled import Unrolled  # noqa: E402

# name → (noise_std, noise_std_max, extra CLI arguments)
VARIANTS = {
    "paper": (0.05, None, []),
    "blind 0-0.1": (0.0, 0.1, []),
    "beta 10": (0.05, None, ["--model.init_args.model.init_args.beta=10"]),
    "trained at 0.02": (0.02, None, []),
    "learned quadratic": (0.05, None, ["--model.init_args.model.init_args.quadratic=5"]),
}
CHECKPOINTS = (1, 2, 3, 5, 10, 20, 100)


class DataStepFirstADMM(PnPADMMStep):
    """PnP-ADMM in the order x, u, z (the paper's code, ``order="132"``): Douglas–Rachford
    splitting with the data term's prox first and the prior's at the reflected point."""

    def forward(self, state: ADMMState, problem) -> ADMMState:
        rho = (self.rho() * problem.lipschitz_for(state.x)).to(state.x.dtype)
        x = problem.op.solve_shifted_normal(problem.op._adjoint(problem.y) + rho * (state.z - state.u), rho)
        u = state.u + x - state.z
        return ADMMState(x, self.prox.prox(x + u, 1.0 / rho), u)


def score(est, x) -> float:
    return float(psnr(est.clamp(0, 1), x, data_range=1.0).mean())


def train(name: str, steps: int):
    lo, hi, extra = VARIANTS[name]
    more = [f"--data.init_args.noise_std={lo}"] + ([] if hi is None else [f"--data.init_args.noise_std_max={hi}"])
    torch.manual_seed(0)
    net, secs = pnp_deblur.train_lpn(steps, tempfile.mkdtemp(prefix="lpn_diag_"), overrides=more + extra)
    for p in net.parameters():
        p.requires_grad_(False)
    return net, secs


def measure(net, iters: int) -> dict:
    out = {}
    dm = DeblurringDataModule(blur="gaussian", blur_sigma=1.0, noise_std=0.02, image_size=128, test_crops=1,
                              dtype="float32", seed=0)
    dm.setup()
    x = dm.test_split.x
    noisy = x + pnp_deblur.SIGMA_D * torch.randn(x.shape, generator=torch.Generator().manual_seed(1), dtype=x.dtype)
    with torch.no_grad():
        out["noisy_psnr"], out["denoised_psnr"], out["f_clean_psnr"] = score(noisy, x), score(net(noisy), x), \
            score(net(x), x)
        z, traj = noisy, {}
        for k in range(1, 31):
            w, z = z, net(z)
            if k in (1, 2, 3, 5, 10, 20, 30):
                traj[k] = {"psnr": score(z, x), "min": float(z.min()), "max": float(z.max()),
                           "R": net.regularizer(z, preimage=w).tolist()}  # exact: z = f(w)
        # R at the clean crops themselves: through f⁻¹ (the LPN's inverse solve)
        y, info = net.inverse(x, return_info=True)
        r_clean = net.regularizer(x, preimage=y)
        out["R_clean"] = {"R": r_clean.tolist(), "inverse_converged": bool(info.converged.all()),
                          "inverse_iterations": info.iterations.tolist(),
                          "f_of_inverse_error": float((net(y) - x).abs().max())}
    out["proximal_point"] = traj
    out["pnp_admm"] = {}
    for sb, sn in ((1.0, 0.02), (2.0, 0.04)):
        dm = DeblurringDataModule(blur="gaussian", blur_sigma=sb, noise_std=sn, image_size=128, test_crops=1,
                                  dtype="float32", seed=0)
        dm.setup()
        op, y, x = dm.get_operator(), dm.test_split.y, dm.test_split.x
        rho = (sn / pnp_deblur.SIGMA_D) ** 2
        for order, cls in (("x,z,u", PnPADMMStep), ("x,u,z", DataStepFirstADMM)):
            layer = Unrolled(cls(net, rho=rho), num_iters=iters)
            problem = Problem.create(op, y)
            with torch.no_grad():
                res = layer(problem, op.adjoint(y), tol=None, record_residuals=True, return_trajectory=True)
            traj = res.trajectory  # the estimates z after each iteration
            row = {str(k): score(traj[k - 1], x) for k in CHECKPOINTS if k <= len(traj)}
            hist = res.info.residual_history
            out["pnp_admm"][f"blur{sb:g}_noise{sn:g} {order}"] = {
                "rho": rho, "psnr_at": row, "final_residual": float(hist[:, -1].max()),
                "final_min_max": [float(res.x.min()), float(res.x.max())]}
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=3000, help="Adam steps of each LPN (half l1, half prox. matching)")
    ap.add_argument("--iters", type=int, default=100, help="PnP-ADMM iterations")
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--out", default=str(HERE / "results" / "lpn_pnp_diagnosis.json"))
    a = ap.parse_args()
    torch.set_num_threads(1)
    results = {"command": "python benchmarks/lpn_pnp_diagnosis.py " + " ".join(sys.argv[1:]),
               "machine": {"cpu": cpu_name(), "python": platform.python_version(), "torch": torch.__version__},
               "steps": a.steps, "sigma_d": pnp_deblur.SIGMA_D, "variants": {}}
    for name in a.variants:
        t0 = time.time()
        net, secs = train(name, a.steps)
        res = measure(net, a.iters)
        res["train_seconds"] = round(secs, 1)
        results["variants"][name] = res
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(json.dumps(results, indent=1))
        pp = res["proximal_point"]
        print(f"{name}: R along z <- f(z) (per image) " + "; ".join(
            f"{k}: " + ", ".join(f"{v:.1f}" for v in pp[k]["R"]) for k in (1, 5, 30))
            + "; R(clean) " + ", ".join(f"{v:.1f}" for v in res["R_clean"]["R"]), flush=True)
        print(f"{name}: denoised {res['denoised_psnr']:.2f} (noisy {res['noisy_psnr']:.2f}), f(clean) "
              f"{res['f_clean_psnr']:.2f}; proximal point after 30: {pp[30]['psnr']:.2f} dB, range "
              f"[{pp[30]['min']:.2f}, {pp[30]['max']:.2f}] ({time.time() - t0:.0f} s)", flush=True)
        for key, row in res["pnp_admm"].items():
            print(f"   {key}: " + " ".join(f"{k}:{v:.2f}" for k, v in row["psnr_at"].items())
                  + f"  residual {row['final_residual']:.1e}", flush=True)
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
