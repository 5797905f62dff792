"""Reproduction 1 of issue 15: the 1-D Laplace toy of Learned Proximal Networks (Fang, Buchanan &
Sulam, ICLR 2024, Sec. 4.1).

x ~ Laplace(0, 1), y = x + N(0, 1). The MAP denoiser (the prox of −σ² log p = |x|) is soft
thresholding at 1; the MMSE denoiser (posterior mean, what ℓ2 training learns) and the posterior
median (ℓ1) are not. An LPN (hidden 50, 4 layers, softplus β = 10, α = 0) is trained with ℓ2, with
ℓ1, and with proximal matching from the ℓ1 model (γ = 0.5, 0.4, 0.3, 0.2, 0.1), batches of 2000,
with the paper's step counts and learning rates (its notebook): ℓ2 and ℓ1 10k steps at 1e-3 then
10k at 1e-4; proximal matching 2k+2k (γ 0.5, lr 1e-3 then 1e-4), 4k (0.4, 1e-4), 4k (0.3, 1e-4),
4k (0.2, 1e-5), 4k+4k (0.1, 1e-5 then 1e-6): 24k steps.

Reports max |f(x) − soft_threshold(x, 1)| on [−4, 4] for each (the issue's target: ≤ 0.05 for
proximal matching), its distance to the best map any network could reach at the last γ of its
schedule (``proximal_matching_optimum``, 0.111 from soft thresholding at γ = 0.1: the paper's
schedule cannot meet the target), and the distance of the ℓ2 / ℓ1 maps to the posterior mean /
median computed by quadrature; plots the maps, the learned regularisers R (``LPN.regularizer``:
the inverse by the core's implicit-gradient solve) against |x|, and the kink.

Proximal matching starts from the ℓ1 model and its Adam state (as the notebook does); after the
paper's schedule (saved as ``pm_paper``) an extension (``--part ext``, saved as ``pm``) continues
with 4000-step stages at ``--ext-gammas`` (default 0.05 0.03 0.02 0.02), ``--ext-lr`` (the last
stage at a tenth), optionally another ``--batch`` or ``--ext-beta``. See BENCHMARKS.md for what
each variant does. ``--sampling posterior`` draws y uniformly on ``[−y_range, y_range]`` and x from
its posterior (the same minimiser at every y, more samples in the tails); ``--pm-lr steady`` keeps
proximal matching's learning rate at 1e-4 where the notebook drops it. ``--pm-estimate
conditional`` scores each y by the loss's exact expectation over x given y
(``ConditionalProximalMatching``) instead of at one drawn x: the same objective and minimiser,
without the sampling noise that starves small γ. That is the run that meets the issue's target
(BENCHMARKS.md)::

    python benchmarks/lpn_toy.py --part l1pm --pm-lr steady --pm-estimate conditional \
        --ext-gammas 0.05 0.03 0.02 0.01 0.01 --runs DIR

    nice -n 5 python benchmarks/lpn_toy.py                 # everything, one process
    python benchmarks/lpn_toy.py --scale 0.001 --batch 64 --grid 41 --inverse-iters 100  # a smoke run
    # or the parts in separate processes (l2 in parallel with l1 -> pm -> ext), then the evaluation:
    nice -n 5 python benchmarks/lpn_toy.py --part l2 --scale S --runs DIR &
    nice -n 5 python benchmarks/lpn_toy.py --part l1 --scale S --runs DIR
    nice -n 5 python benchmarks/lpn_toy.py --part pm --schedule paper --scale S --runs DIR
    nice -n 5 python benchmarks/lpn_toy.py --part ext --scale S --ext-gammas ... --ext-lr ... --runs DIR
    python benchmarks/lpn_toy.py --eval-only --runs DIR

Writes benchmarks/figures/lpn_toy.png and benchmarks/results/lpn_toy.json; the trained models in
benchmarks/runs/lpn_toy/ (git-ignored).
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path
from typing import Optional, Tuple

import torch

from unroll.data import Batch
from unroll.data.denoising import laplace_posterior_kernel_log_mean, make_laplace_batch, sample_laplace_posterior
from unroll.losses import L1Loss, MSELoss, ProximalMatchingLoss
from unroll.models import LPN
from unroll.prox import soft_threshold

HERE = Path(__file__).resolve().parent

#: (steps, lr) of the ℓ2 and ℓ1 runs; (steps, gamma, lr) of proximal matching (the paper's notebook)
BASE_PHASES = [(10000, 1e-3), (10000, 1e-4)]
PM_PHASES = [(2000, 0.5, 1e-3), (2000, 0.5, 1e-4), (4000, 0.4, 1e-4), (4000, 0.3, 1e-4), (4000, 0.2, 1e-5),
             (4000, 0.1, 1e-5), (4000, 0.1, 1e-6)]
#: the extension below γ = 0.1 (steps, gamma, lr): at γ = 0.1 even the best map is 0.111 from soft
#: thresholding at the kink (``proximal_matching_optimum``); 0.03 at γ = 0.02
EXTRA_GAMMAS = [(4000, 0.05), (4000, 0.03), (4000, 0.02), (4000, 0.02)]
#: ``--pm-lr steady``: the paper's γ stages, with the learning rate kept at 1e-4 where the notebook
#: drops it to 1e-5 and 1e-6 (at γ ≤ 0.2, where the map then hardly moves)
STEADY_PHASES = [(s, g, max(lr, 1e-4)) for s, g, lr in PM_PHASES]


def toy_batch(index: int, gen: torch.Generator, batch: int, sampling: str, y_range: float) -> Batch:
    """A training batch ``(y, x)`` of shape ``(batch, 1)``. ``sampling="joint"``: the toy as the
    paper draws it (x ~ Laplace(0, 1), y = x + N(0, 1)). ``"posterior"``: y uniform on
    ``[−y_range, y_range]`` and x drawn exactly from p(x | y) (``sample_laplace_posterior``). The law
    of x given y is the same, so is the minimiser of the expected loss at every y (soft thresholding
    in the limit γ → 0); what changes is how the batch is spread over y: the joint puts 3 % of its
    samples at |y| > 4 and 20 % within 0.25 of the kinks (|y| = 1), uniform on [−5, 5] puts 20 %
    and 10 %."""
    if sampling == "joint":
        return make_laplace_batch(index, gen, batch, 1, 1.0, 1.0, torch.float32)
    y = (2 * torch.rand((batch, 1), generator=gen, dtype=torch.float64) - 1) * y_range
    x = sample_laplace_posterior(y, gen)
    return Batch(y.float(), x.float(), {}, {})


def extra_phases(lr: float, gammas: Optional[list] = None) -> list:
    """The extension as :func:`train`'s ``(steps, lr, gamma)``: 4000 steps per ``gamma`` (default
    those of ``EXTRA_GAMMAS``), ``lr`` for all but the last stage, ``lr / 10`` for the last."""
    gammas = [g for _, g in EXTRA_GAMMAS] if gammas is None else gammas
    return [(4000, lr if i < len(gammas) - 1 else lr / 10, g) for i, g in enumerate(gammas)]


def train(model: LPN, loss_fn, phases, gen: torch.Generator, batch: int, scale: float, log: str,
          opt: Optional[torch.optim.Optimizer] = None, sampling: str = "joint",
          y_range: float = 5.0) -> Tuple[int, torch.optim.Optimizer]:
    """Adam over ``phases`` ``[(steps, lr, gamma or None)]`` with fresh batches (``toy_batch``); the
    weights are projected after every step. ``opt``: an optimiser to continue (the notebook keeps
    the ℓ1 run's Adam for proximal matching). Returns the number of steps run and the optimiser."""
    if opt is None:
        opt = torch.optim.Adam(model.parameters(), lr=phases[0][1])
    done, t0 = 0, time.time()
    for steps, lr, gamma in phases:
        n = max(1, int(round(steps * scale)))
        for g in opt.param_groups:
            g["lr"] = lr
        if gamma is not None:
            loss_fn.gamma = gamma
        for _ in range(n):
            b = toy_batch(done, gen, batch, sampling, y_range)
            if isinstance(loss_fn, KernelProximalMatching):
                loss = loss_fn.batch_loss(model.gradient(b.y), b.y, b.x)
            else:
                target = b.y if isinstance(loss_fn, ConditionalProximalMatching) else b.x
                loss = loss_fn(model.gradient(b.y), target)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            model.project_()
            done += 1
        print(f"  {log}: {done} steps (lr {lr:g}{'' if gamma is None else f', gamma {gamma:g}'}) "
              f"loss {float(loss.detach()):.4f}  [{time.time() - t0:.0f} s]", flush=True)
    return done, opt


def posterior_stats(y: torch.Tensor) -> tuple:
    """Posterior mean and median of x given y for x ~ Laplace(0, 1), y = x + N(0, 1), by quadrature."""
    t = torch.linspace(-15, 15, 6001, dtype=torch.float64)  # the posterior has Gaussian tails
    logw = -t.abs()[None, :] - 0.5 * (y[:, None] - t[None, :]) ** 2
    w = torch.softmax(logw, dim=1)
    mean = (w * t).sum(1)
    cdf = torch.cumsum(w, dim=1)
    median = t[(cdf < 0.5).sum(1).clamp(max=t.numel() - 1)]
    return mean, median


def proximal_matching_optimum(y: torch.Tensor, gamma: float, width: float = 1.5) -> torch.Tensor:
    """The best any map can do under proximal matching at width ``gamma``: for each ``y``,
    ``argmax_c E[exp(−((c − x)/γ)²) | y]`` (the minimiser of the expected loss), searched within
    ``width`` of ``soft_threshold(y, 1)`` on a grid of spacing 10⁻², then 10⁻⁴ around the best. It
    tends to the posterior mode (soft thresholding) as ``γ → 0``; at ``γ > 0`` it is the mode of
    the posterior smoothed by the loss' kernel, which rounds the kink at ``|y| = 1``. The
    expectation is in closed form (``laplace_posterior_kernel_log_mean``). ``y``: ``(Y,)`` float64
    → ``(Y,)``."""
    yy = y[:, None]
    best = soft_threshold(y, 1.0)
    for span, step in ((width, 1e-2), (2e-2, 1e-4)):
        c = best[:, None] + torch.arange(-span, span + step / 2, step, dtype=y.dtype)[None, :]
        best = c.gather(1, laplace_posterior_kernel_log_mean(c, yy, gamma).argmax(1, keepdim=True))[:, 0]
    return best


class ConditionalProximalMatching(ProximalMatchingLoss):
    """Proximal matching with the draw of ``x`` averaged out: the mean over the batch of
    ``1 − E[exp(−((f(y) − x)/γ)²) | y]``, the expectation over the toy's posterior in closed form
    (``laplace_posterior_kernel_log_mean``). Its expectation over ``y`` is the sampled loss's, so
    the minimiser is the same (``proximal_matching_optimum``); its gradient has no noise from ``x``
    (Rao–Blackwellisation), which at small ``γ`` is nearly all of the sampled loss's: there only
    the few draws within ~γ of ``f(y)`` move the map. Called as ``loss(f(y), y)``."""

    def forward(self, x_hat: torch.Tensor, y: torch.Tensor, problem=None) -> torch.Tensor:
        return 1.0 - laplace_posterior_kernel_log_mean(x_hat.double(), y.double(), self.gamma).exp().mean()


class KernelProximalMatching(ProximalMatchingLoss):
    """Proximal matching with the expectation over ``x`` given ``y_i`` estimated from the batch's
    own clean samples and the known noise model only, not the prior: self-normalised importance
    sampling with the Gaussian likelihood as the weight,
    ``E[k(f(y_i) − x) | y_i] ≈ Σ_j w_ij k(f(y_i) − x_j)``, ``w_ij ∝ exp(−(y_i − x_j)²/(2σ²))``,
    ``k(d) = exp(−(d/γ)²)``. Every ``x_j`` of the batch near ``f(y_i)`` then moves the map at
    ``y_i``, where the sampled loss has only ``x_i``. Consistent as the batch grows (the same
    minimiser); a denoising data set always knows its noise model, so this needs nothing the
    sampled loss does not. Called through :meth:`batch_loss`; the ``x_j`` are the batch's first
    ``references`` (a fresh draw every step): ``O(batch · references)`` per step."""

    def __init__(self, gamma: float = 0.5, noise_std: float = 1.0, references: int = 512) -> None:
        super().__init__(gamma)
        self.noise_std, self.references = float(noise_std), int(references)

    def batch_loss(self, x_hat: torch.Tensor, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """``x_hat = f(y)``, ``y``, ``x``: ``(B, 1)`` → the scalar loss."""
        xh, yy, xx = x_hat[:, 0], y[:, 0], x[:self.references, 0]
        logw = torch.log_softmax(-(yy[:, None] - xx[None, :]) ** 2 / (2 * self.noise_std ** 2), dim=1)
        log_k = -((xh[:, None] - xx[None, :]) / self.gamma) ** 2
        return 1.0 - torch.logsumexp(logw + log_k, dim=1).exp().mean()


def make_pm_loss(estimate: str, gamma: float) -> ProximalMatchingLoss:
    """The proximal-matching loss of ``--pm-estimate``."""
    if estimate == "conditional":
        return ConditionalProximalMatching(gamma)
    if estimate == "kernel":
        return KernelProximalMatching(gamma)
    return ProximalMatchingLoss(gamma)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scale", type=float, default=1.0, help="fraction of the paper's step counts (default 1)")
    ap.add_argument("--batch", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--no-plot", action="store_true")
    ap.add_argument("--grid", type=int, default=801, help="evaluation points on [-4, 4]")
    ap.add_argument("--inverse-iters", type=int, default=3000, help="iteration budget of f^-1 (for R)")
    ap.add_argument("--eval-only", action="store_true", help="evaluate the models saved by earlier runs")
    ap.add_argument("--part", choices=["all", "l2", "l1", "pm", "ext", "l1pm"], default="all",
                    help="train only the l2 model, only l1, only proximal matching (from the saved l1 model and "
                         "its Adam state), only its extension below gamma 0.1 (from the saved paper-schedule "
                         "model), or l1 then proximal matching (parts run in parallel processes; then --eval-only)")
    ap.add_argument("--ext-lr", type=float, default=1e-4, help="learning rate of the extension (its last stage: /10)")
    ap.add_argument("--ext-beta", type=float, default=None,
                    help="softplus sharpness of the extension (default: the network's, 10): the paper-schedule "
                         "model continues with this beta")
    ap.add_argument("--ext-gammas", type=float, nargs="+", default=None,
                    help="gamma of each 4000-step stage of the extension (default 0.05 0.03 0.02 0.02)")
    ap.add_argument("--schedule", choices=["extended", "paper"], default="extended",
                    help="proximal matching: the paper's 24k steps down to gamma 0.1, or those then the extension "
                         "down to gamma 0.02 (default; both models are saved and evaluated)")
    ap.add_argument("--sampling", choices=["joint", "posterior"], default="joint",
                    help="training pairs: as the paper (x ~ Laplace, y = x + noise), or y uniform on "
                         "[-y_range, y_range] and x drawn from its posterior (same minimiser at every y)")
    ap.add_argument("--y-range", type=float, default=5.0, help="--sampling posterior: y ~ U[-y_range, y_range]")
    ap.add_argument("--pm-lr", choices=["paper", "steady"], default="paper",
                    help="proximal matching's learning rates: the notebook's (1e-5, 1e-6 at gamma 0.2, 0.1) "
                         "or 1e-4 throughout after the first stage")
    ap.add_argument("--pm-estimate", choices=["sample", "kernel", "conditional"], default="sample",
                    help="proximal matching's loss per pair: at the drawn x (the paper); its expectation over x "
                         "given y estimated from the batch's x and the noise model (KernelProximalMatching); or "
                         "that expectation exact, from the known prior (ConditionalProximalMatching)")
    ap.add_argument("--runs", default=str(HERE / "runs" / "lpn_toy"), help="where the trained models are saved")
    ap.add_argument("--out", default=str(HERE / "results" / "lpn_toy.json"))
    ap.add_argument("--figure", default=str(HERE / "figures" / "lpn_toy.png"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    runs = Path(args.runs)
    runs.mkdir(parents=True, exist_ok=True)
    sampling = (args.sampling, args.y_range)

    def new_model() -> LPN:
        return LPN(1, hidden=50, layers=4, beta=10.0, alpha=0.0)

    models, steps, t_start = {}, {}, time.time()
    base = [(s, lr, None) for s, lr in BASE_PHASES]
    gen = torch.Generator().manual_seed(args.seed + {"l2": 1, "pm": 2, "ext": 3}.get(args.part, 0))  # a stream per process

    def save_budget(part: str, steps: dict, phases: list, beta: float = 10.0) -> None:
        (runs / f"budget_{part}.json").write_text(json.dumps({"steps": steps, "seconds": time.time() - t_start,
                                                              "scale": args.scale, "phases": phases,
                                                              "batch": args.batch, "beta": beta,
                                                              "sampling": args.sampling, "y_range": args.y_range,
                                                              "pm_estimate": args.pm_estimate}))

    if not args.eval_only:
        if args.part in ("all", "l2"):
            print("training l2", flush=True)
            m = new_model()
            steps["l2"], _ = train(m, MSELoss(), base, gen, args.batch, args.scale, "l2", None, *sampling)
            torch.save(m.state_dict(), runs / "l2.pt")
            save_budget("l2", {"l2": steps["l2"]}, base)
        if args.part in ("all", "l1", "l1pm"):
            print("training l1", flush=True)
            m = new_model()
            steps["l1"], opt = train(m, L1Loss(), base, gen, args.batch, args.scale, "l1", None, *sampling)
            torch.save(m.state_dict(), runs / "l1.pt")
            torch.save(opt.state_dict(), runs / "l1_adam.pt")
            save_budget("l1", {"l1": steps["l1"]}, base)
        if args.part in ("all", "pm", "l1pm"):
            t_start = time.time()
            if args.part == "pm":  # continue from the saved l1 run, its Adam state included (as the notebook)
                m = new_model()
                m.load_state_dict(torch.load(runs / "l1.pt", weights_only=True))
                opt = torch.optim.Adam(m.parameters())
                opt.load_state_dict(torch.load(runs / "l1_adam.pt", weights_only=True))
                steps["l1"] = json.loads((runs / "budget_l1.json").read_text())["steps"]["l1"]
            print("training proximal matching (from the l1 model)", flush=True)
            loss = make_pm_loss(args.pm_estimate, 0.5)
            phases = [(s, lr, g) for s, g, lr in (STEADY_PHASES if args.pm_lr == "steady" else PM_PHASES)]
            n, opt = train(m, loss, phases, gen, args.batch, args.scale, "pm", opt, *sampling)
            steps["pm_paper"] = steps["l1"] + n
            torch.save(m.state_dict(), runs / "pm_paper.pt")
            torch.save(opt.state_dict(), runs / "pm_paper_adam.pt")
            save_budget("pm_paper", {"pm_paper": steps["pm_paper"]}, phases)
        if args.schedule == "extended" and args.part in ("all", "pm", "ext", "l1pm"):
            t_start = time.time()
            if args.part == "ext":  # continue from the saved paper-schedule model and its Adam state
                m = new_model()
                m.load_state_dict(torch.load(runs / "pm_paper.pt", weights_only=True))
                opt = torch.optim.Adam(m.parameters())
                opt.load_state_dict(torch.load(runs / "pm_paper_adam.pt", weights_only=True))
                loss = make_pm_loss(args.pm_estimate, 0.1)
                steps["pm_paper"] = json.loads((runs / "budget_pm_paper.json").read_text())["steps"]["pm_paper"]
            if args.ext_beta is not None:
                m.beta = float(args.ext_beta)
            print("extending proximal matching below gamma 0.1", flush=True)
            phases = extra_phases(args.ext_lr, args.ext_gammas)
            n, opt = train(m, loss, phases, gen, args.batch, args.scale, "pm", opt, *sampling)
            torch.save(m.state_dict(), runs / "pm.pt")
            save_budget("pm", {"pm": steps["pm_paper"] + n}, phases, m.beta)
        if args.part != "all":
            return
    steps, seconds, schedules = {}, {}, {}
    for part in ("l2", "l1", "pm_paper", "pm"):
        if not (runs / f"budget_{part}.json").exists() and part in ("pm", "l2"):
            continue  # --schedule paper; --part l1pm without l2
        saved = json.loads((runs / f"budget_{part}.json").read_text())
        steps.update(saved["steps"])
        seconds[part] = round(saved["seconds"], 1)
        schedules[part] = {"scale": saved.get("scale"), "phases_steps_lr_gamma_unscaled": saved.get("phases"),
                           "batch": saved.get("batch", args.batch), "beta": saved.get("beta", 10.0),
                           "sampling": saved.get("sampling", "joint"), "y_range": saved.get("y_range"),
                           "pm_estimate": saved.get("pm_estimate", "sample")}
    for name in ("l2", "l1", "pm_paper", "pm"):
        if name in steps:
            models[name] = new_model()
            models[name].load_state_dict(torch.load(runs / f"{name}.pt", weights_only=True))
            models[name].beta = float(schedules.get(name, {}).get("beta", 10.0))
    train_seconds = seconds

    # ---- evaluation on [-4, 4], in float64
    x = torch.linspace(-4, 4, args.grid, dtype=torch.float64)
    soft = soft_threshold(x, 1.0)
    mean, median = posterior_stats(x)
    final_gamma = {"pm_paper": PM_PHASES[-1][1], "pm": (schedules.get("pm", {}).get("phases_steps_lr_gamma_unscaled")
                                                        or extra_phases(1.0))[-1][2]}
    optimum = {g: proximal_matching_optimum(x, g) for g in set(final_gamma.values())}
    from machine import cpu_name  # benchmarks/machine.py

    results = {"budget_steps": steps, "cpu": cpu_name(), "torch_threads": args.threads, "batch": args.batch,
               "seed": args.seed,
               "train_seconds": train_seconds, "schedules": schedules, "maps": {}}
    curves, priors = {}, {}
    for name, m in models.items():
        m = copy.deepcopy(m).double().eval()
        f = m(x[:, None]).detach()[:, 0]
        curves[name] = f
        err = (f - soft).abs()
        results["maps"][name] = {
            "steps": steps[name],
            "max_err_soft_threshold": float(err.max()),
            "max_err_soft_threshold_where": float(x[err.argmax()]),
            "mean_err_soft_threshold": float(err.mean()),
            "err_at_kinks": float(err[(x.abs() - 1).abs() < 1e-9].max()) if bool(((x.abs() - 1).abs() < 1e-9).any())
            else None,  # |f(±1)| when ±1 are grid points
            "max_err_posterior_mean": float((f - mean).abs().max()),
            "max_err_posterior_median": float((f - median).abs().max()),
        }
        if name in final_gamma:  # against the best map at the last γ of its schedule
            g = final_gamma[name]
            results["maps"][name]["final_gamma"] = g
            results["maps"][name]["max_err_pm_optimum_at_final_gamma"] = float((f - optimum[g]).abs().max())
            results["maps"][name]["pm_optimum_max_err_soft_threshold"] = float((optimum[g] - soft).abs().max())
        with torch.no_grad():
            y, info = m.inverse(x[:, None], max_iter=args.inverse_iters, tol=1e-9, return_info=True)
        with torch.no_grad():
            R = (y[:, 0] * x - 0.5 * x ** 2 - m._potential(y)).detach()
        R = R - R[x.abs().argmin()]
        priors[name] = R
        results["maps"][name]["inverse_converged"] = float(info.converged.double().mean())
        results["maps"][name]["inverse_max_residual_f"] = float((m(y).detach()[:, 0] - x).abs().max())
        results["maps"][name]["inverse_iterations_max"] = int(info.iterations.max())
        results["maps"][name]["max_err_R_vs_abs_x_on_[-3,3]"] = float((R - x.abs())[x.abs() <= 3].abs().max())
        print(f"{name}: max |f - soft| = {results['maps'][name]['max_err_soft_threshold']:.4f} at x = "
              f"{results['maps'][name]['max_err_soft_threshold_where']:+.2f}; max |f - posterior mean| = "
              f"{results['maps'][name]['max_err_posterior_mean']:.4f}; max |f - posterior median| = "
              f"{results['maps'][name]['max_err_posterior_median']:.4f}", flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "w") as fh:
        json.dump(results, fh, indent=2)
    print(f"wrote {args.out}")

    if not args.no_plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        def how(part: str) -> str:  # what differs from the paper's set-up, briefly
            sch = schedules.get(part, {})
            bits = [f"batch {sch['batch']}"] if sch.get("batch", 2000) != 2000 else []
            bits += [f"β {sch['beta']:g}"] if sch.get("beta", 10.0) != 10.0 else []
            bits += {"conditional": ["E over x | y"], "kernel": ["E over x | y from the batch"]}.get(
                sch.get("pm_estimate"), [])
            return "".join(", " + b for b in bits)

        paper_lr = [tuple(ph) for ph in schedules.get("pm_paper", {}).get("phases_steps_lr_gamma_unscaled") or []] in (
            [], [(st, lr, g) for st, g, lr in PM_PHASES])
        labels = {"l2": "LPN, ℓ2 loss", "l1": "LPN, ℓ1 loss",
                  "pm_paper": f"LPN, prox. matching to γ = {final_gamma['pm_paper']:g} "
                              f"({'paper' if paper_lr else 'lr 1e-4'}{how('pm_paper')})",
                  "pm": f"… + {steps.get('pm', 0) - steps.get('pm_paper', 0)} steps to γ = "
                        f"{final_gamma['pm']:g}{how('pm').replace(', ', ' (', 1) + ')' if how('pm') else ''}"}
        colors = {"l2": "C0", "l1": "C1", "pm_paper": "C2", "pm": "C3"}
        fig, ax = plt.subplots(1, 3, figsize=(15, 4))
        for name, f in curves.items():
            ax[0].plot(x, f, color=colors[name],
                       label=f"{labels[name]} (max err {results['maps'][name]['max_err_soft_threshold']:.3f})")
        ax[0].plot(x, soft, "k--", lw=1, label="soft threshold (MAP)")
        ax[0].plot(x, mean, ":", color="grey", lw=1, label="posterior mean")
        ax[0].set(title="learned proximal maps f(y)", xlabel="y", ylabel="f(y)")
        ax[0].legend(fontsize=7)
        ax[0].grid(alpha=0.3)
        for name, R in priors.items():
            ax[1].plot(x, R, color=colors[name], label=labels[name])
        ax[1].plot(x, x.abs(), "k--", lw=1, label="|x| (−log p, up to a constant)")
        ax[1].set(title="learned regulariser R(x) − R(0)", xlabel="x", ylim=(-0.5, 4.5))
        ax[1].legend(fontsize=7)
        ax[1].grid(alpha=0.3)
        zoom = (x >= 0.4) & (x <= 1.8)
        for name, f in curves.items():
            if name in final_gamma:
                ax[2].plot(x[zoom], f[zoom], color=colors[name], label=labels[name])
        for (g, f), c in zip(sorted(optimum.items(), reverse=True), ("C4", "C5")):
            ax[2].plot(x[zoom], f[zoom], ":", color=c, lw=1.5, label=f"best map at γ = {g:g} (quadrature)")
        ax[2].plot(x[zoom], soft[zoom], "k--", lw=1, label="soft threshold")
        ax[2].set(title="the kink at y = 1", xlabel="y", ylabel="f(y)")
        ax[2].legend(fontsize=7)
        ax[2].grid(alpha=0.3)
        fig.tight_layout()
        Path(args.figure).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(args.figure, dpi=120)
        print(f"wrote {args.figure}")


if __name__ == "__main__":
    main()
