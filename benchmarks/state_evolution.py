"""Large-system references for the noisy LISTA problem: what soft thresholding and a
Bayes-optimal denoiser can reach, from AMP's state evolution.

For ``y = A x + e`` with ``A`` i.i.d. ``N(0, 1/m)`` (unit columns on average), ``δ = m/n``,
``x`` i.i.d. Bernoulli(ε)–Gaussian(0, 1) and white noise of variance ``σ²``, AMP's iterates
behave like ``x + τ_t Z`` with ``Z ~ N(0, 1)`` and

    τ²_{t+1} = σ² + mse(τ_t) / δ,        mse(τ) = E[(η(x + τZ) − x)²]

(Donoho, Maleki & Montanari, PNAS 2009; Bayati & Montanari, IEEE Trans. IT 2011). Two
denoisers ``η``:

- soft thresholding at ``ατ``, ``α`` chosen to minimise the fixed point: the asymptotic MSE of
  the LASSO at its best λ (Bayati & Montanari, IEEE Trans. IT 2012, whose calibration gives
  ``λ = ατ(1 − P(η ≠ 0)/δ)``). This is the trade-off every soft-thresholding layer makes
  between the bias θ on the support and the noise it lets through.
- the posterior mean ``E[x | x + τZ]`` (Bayes-optimal AMP, started uninformed): the MMSE
  that no estimator beats in the large-system limit when AMP's fixed point is the only one.

Next to them, the support oracle on the shipped standard problem's 1000 test signals (least
squares on the true support, the noise drawn as the data module draws it).

    python benchmarks/state_evolution.py            # about 20 s
    python benchmarks/state_evolution.py --snr_db 40 30 20

Each fixed point is checked by Monte Carlo (4·10⁶ draws of ``x + τZ``).
"""

from __future__ import annotations

import argparse
import math
from typing import Callable, Dict, List

import numpy as np
from scipy import integrate, optimize
from scipy.stats import norm

EPS, DELTA = 0.1, 0.5  # the standard problem: p = 0.1, m/n = 250/500


def soft_mse(tau: float, alpha: float, eps: float = EPS) -> float:
    """``E[(η_{ατ}(x + τZ) − x)²]`` for Bernoulli(ε)–N(0, 1) ``x`` (closed form in ``Z``,
    quadrature in ``x``)."""
    t = alpha * tau
    zero = tau**2 * 2 * ((1 + alpha**2) * norm.cdf(-alpha) - alpha * norm.pdf(alpha))

    def given_x(x: float) -> float:  # E_Z[(η_t(x + τZ) − x)²] · φ(x)
        u1, u2 = (t - x) / tau, (-t - x) / tau  # η > 0 for Z > u1, η < 0 for Z < u2
        above = tau**2 * (u1 * norm.pdf(u1) + norm.sf(u1)) - 2 * t * tau * norm.pdf(u1) + t * t * norm.sf(u1)
        below = tau**2 * (norm.cdf(u2) - u2 * norm.pdf(u2)) - 2 * t * tau * norm.pdf(u2) + t * t * norm.cdf(u2)
        inside = x * x * (norm.cdf(u1) - norm.cdf(u2))
        return (above + below + inside) * norm.pdf(x)

    nonzero = integrate.quad(given_x, -10, 10, points=[-5 * t, -t, 0, t, 5 * t], limit=500, epsabs=1e-14)[0]
    return (1 - eps) * zero + eps * nonzero


def posterior_mean(v: np.ndarray, tau2: float, eps: float = EPS) -> np.ndarray:
    """``E[x | x + τZ = v]`` for Bernoulli(ε)–N(0, 1) ``x``."""
    on = eps * norm.pdf(v, scale=math.sqrt(1 + tau2))
    off = (1 - eps) * norm.pdf(v, scale=math.sqrt(tau2))
    return on / (on + off) * v / (1 + tau2)


def bayes_mse(tau: float, eps: float = EPS) -> float:
    """MMSE of ``x`` from ``x + τZ``: ``E[x²] − E[E[x | v]²]``."""
    tau2 = tau * tau

    def density_times_sq(v: float) -> float:
        dens = eps * norm.pdf(v, scale=math.sqrt(1 + tau2)) + (1 - eps) * norm.pdf(v, scale=tau)
        return dens * posterior_mean(np.asarray(v), tau2, eps) ** 2

    s = 6 * tau
    second = integrate.quad(density_times_sq, -12, 12, points=[-s, -tau, 0, tau, s], limit=500, epsabs=1e-14)[0]
    return eps - second


def fixed_point(mse: Callable[[float], float], sigma2: float, delta: float = DELTA, unique: bool = False) -> float:
    """The largest ``τ²`` with ``τ² = σ² + mse(τ)/δ``: where AMP started from ``x = 0`` ends.

    ``unique``: the map has one fixed point (soft thresholding, whose map is concave in τ²),
    found by Brent's method between ``σ²`` and the uninformed start; otherwise the map is
    iterated from the uninformed start (its iterates decrease to the largest fixed point).
    """
    hi = sigma2 + EPS / delta  # the uninformed start
    if unique:
        return optimize.brentq(lambda t2: t2 - sigma2 - mse(math.sqrt(t2)) / delta, sigma2, hi,
                               xtol=1e-16, rtol=1e-10)
    tau2 = hi
    for _ in range(10_000):
        new = sigma2 + mse(math.sqrt(tau2)) / delta
        if abs(new - tau2) <= 1e-10 * new:
            return new
        tau2 = new
    raise RuntimeError("state evolution did not converge")


def _db(ratio: float) -> float:
    return 10 * math.log10(ratio)


def soft_limit(sigma2: float, xatol: float = 1e-3) -> Dict[str, float]:
    """The best soft threshold's fixed point: NMSE (dB), α, τ², the calibrated λ (``α`` to
    ``xatol``)."""

    def nmse_at(alpha: float) -> float:
        tau2 = fixed_point(lambda tau: soft_mse(tau, alpha), sigma2, unique=True)
        return soft_mse(math.sqrt(tau2), alpha) / EPS

    res = optimize.minimize_scalar(nmse_at, bounds=(0.5, 3.0), method="bounded", options={"xatol": xatol})
    alpha = float(res.x)
    tau2 = fixed_point(lambda tau: soft_mse(tau, alpha), sigma2, unique=True)
    tau = math.sqrt(tau2)
    p_nonzero = 2 * ((1 - EPS) * norm.sf(alpha) + EPS * norm.sf(alpha * tau / math.sqrt(1 + tau2)))
    return {"nmse_db": _db(soft_mse(tau, alpha) / EPS), "alpha": alpha, "tau2": tau2,
            "lam": alpha * tau * (1 - p_nonzero / DELTA)}


def bayes_limit(sigma2: float) -> Dict[str, float]:
    tau2 = fixed_point(bayes_mse, sigma2)
    return {"nmse_db": _db(bayes_mse(math.sqrt(tau2)) / EPS), "tau2": tau2}


def monte_carlo(tau2: float, denoise: Callable[[np.ndarray], np.ndarray], draws: int = 4_000_000) -> float:
    rng = np.random.default_rng(0)
    x = rng.standard_normal(draws) * (rng.random(draws) < EPS)
    v = x + math.sqrt(tau2) * rng.standard_normal(draws)
    return _db(np.mean((denoise(v) - x) ** 2) / EPS)


def support_oracle(snr_db: float, count: int | None = None) -> float:
    """NMSE (dB) of least squares on the true support, on the standard problem's test signals
    (the first ``count`` of them; all by default)."""
    import torch

    from unroll.data import SparseRecoveryDataModule

    dm = SparseRecoveryDataModule(problem="standard", snr_db=snr_db, dtype="float64", seed=0)
    dm.setup("test")
    split, a = dm.test_split, dm.A
    if count is not None:
        split = type(split)(split.y[:count], split.x[:count])
    err = 0.0
    for y, x in zip(split.y, split.x):
        s = x != 0
        x_hat = torch.zeros_like(x)
        x_hat[s] = torch.linalg.lstsq(a[:, s], y.unsqueeze(1)).solution.squeeze(1)
        err += float((x_hat - x).square().sum())
    return _db(err / float(split.x.square().sum()))


def main(argv: List[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--snr_db", type=float, nargs="+", default=[40.0])
    parser.add_argument("--smoke", action="store_true",
                        help="a smoke test (seconds): α to 0.2, 2·10⁵ Monte Carlo draws, 20 test signals")
    args = parser.parse_args(argv)
    xatol, draws, count = (0.2, 200_000, 20) if args.smoke else (1e-3, 4_000_000, None)
    print("| SNR (dB) | σ² | best soft threshold (≈ LASSO at its best λ) | its λ | Monte Carlo | "
          "Bayes-optimal AMP | Monte Carlo | support oracle, 1000 test signals |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for snr in args.snr_db:
        sigma2 = EPS / DELTA * 10 ** (-snr / 10)  # E‖Ax‖²/m = εn/m for unit columns
        soft, bayes = soft_limit(sigma2, xatol), bayes_limit(sigma2)
        t = soft["alpha"] * math.sqrt(soft["tau2"])
        mc_soft = monte_carlo(soft["tau2"], lambda v: np.sign(v) * np.maximum(np.abs(v) - t, 0), draws)
        mc_bayes = monte_carlo(bayes["tau2"], lambda v: posterior_mean(v, bayes["tau2"]), draws)
        print(f"| {snr:g} | {sigma2:.2e} | {soft['nmse_db']:.2f} (α = {soft['alpha']:.3f}) | {soft['lam']:.4f} | "
              f"{mc_soft:.2f} | {bayes['nmse_db']:.2f} | {mc_bayes:.2f} | {support_oracle(snr, count):.2f} |")


if __name__ == "__main__":
    main()
