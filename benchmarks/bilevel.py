"""Bilevel benchmarks (issue 16): prints the figures of BENCHMARKS.md's bilevel section.

    nice -n 5 python benchmarks/bilevel.py [--quick] [--only cv_lasso,accuracy,per_feature,cleaning,penalty]

1. 5-fold CV Lasso on make_regression(500, 1000, noise=40, random_state=0): wall time of
   unroll.bilevel.LassoCV to reach a CV MSE at or below the best of scikit-learn's LassoCV on a
   100-value grid, both timed in this run (same thread budget: one thread each). The CV MSE of
   the grid is evaluated exactly (active-set solves to the KKT conditions) at each of the 100
   grid values; scikit-learn's own mse_path_ (tolerance 1e-4 solves) is printed too.
2. Hypergradient accuracy of each method against central finite differences (float64) and the
   time per hypergradient, on ridge, Lasso and logistic regression.
3. Per-feature penalties (one per feature, 1000 hyperparameters) against the best single one:
   held-out MSE, per-feature ridge (closed-form dual solve) and weighted Lasso (unroll.bilevel.hypergrad,
   implicit, warm-started inner solves), each on make_regression data with 10 and with 5 informative
   features.
4. Data hyper-cleaning on digits, half the training labels corrupted: clean test accuracy of
   learned sample weights vs uniform weights vs the oracle that drops the corrupted samples.
5. The penalty method's hypergradient error as its penalty grows (ridge, closed form).
"""

from __future__ import annotations

import argparse

import sys
import time

import numpy as np
import torch

from unroll import Problem, SquaredL2
from unroll.bilevel import LassoCV, hypergrad, lasso, logistic, ridge
from unroll.bilevel_cv import _EnetFolds, _LogisticFolds, kfold_indices

DT = torch.float64


def cv_lasso(quick: bool) -> None:
    from sklearn.datasets import make_regression
    from sklearn.linear_model import Lasso
    from sklearn.linear_model import LassoCV as SkLassoCV
    from threadpoolctl import threadpool_limits

    print("## 1. 5-fold CV Lasso, make_regression(500, 1000, noise=40, random_state=0)")
    X, y = make_regression(n_samples=500, n_features=1000, noise=40, random_state=0)
    reps = 1 if quick else 5
    sk_times, ours_times, reach_times = [], [], []
    with threadpool_limits(1):
        SkLassoCV(cv=5, alphas=100).fit(X, y)  # warm-up (imports, caches)
        LassoCV(cv=5).fit(X, y)
        for _ in range(reps):
            t = time.perf_counter()
            sk = SkLassoCV(cv=5, alphas=100).fit(X, y)
            sk_times.append(time.perf_counter() - t)
            t = time.perf_counter()
            ours = LassoCV(cv=5).fit(X, y)
            ours_times.append(time.perf_counter() - t)
            reach_times.append(None)
            ours_hist = ours.history_
    # the grid's CV MSE, exact (the same evaluator as ours)
    prob = _EnetFolds(torch.tensor(X), torch.tensor(y), kfold_indices(500, 5), True, 1.0, 1e-10, 500)
    grid = np.array([prob.value_grad(float(a))[0] for a in sk.alphas_])
    target = float(grid.min())
    reach = [h["time"] for h in ours_hist if h["cv_mse"] <= target]
    # cross-check both with scikit-learn's Lasso at tol=1e-12 on each fold
    def sk_cv(alpha):
        total = 0.0
        for tr, va in kfold_indices(500, 5):
            m = Lasso(alpha=alpha, tol=1e-12, max_iter=100000).fit(X[tr], y[tr])
            total += ((m.predict(X[va]) - y[va]) ** 2).mean() / 5
        return total
    print(f"scikit-learn LassoCV (100 alphas): median {np.median(sk_times):.3f} s over {reps} runs; "
          f"alpha_={sk.alpha_:.4f}; its mse_path_ best {sk.mse_path_.mean(1).min():.3f} (tol 1e-4 solves); "
          f"exact CV MSE best over its grid {target:.3f} (at alpha={sk.alphas_[grid.argmin()]:.4f}); "
          f"exact CV at its alpha_ (sklearn Lasso tol 1e-12) {sk_cv(sk.alpha_):.3f}")
    print(f"unroll LassoCV: median total fit {np.median(ours_times):.3f} s ({ours.n_outer_} outer steps, "
          f"alpha_={ours.alpha_:.4f}, CV MSE {ours.cv_mse_:.3f}; sklearn Lasso tol 1e-12 at it: {sk_cv(ours.alpha_):.3f})")
    if reach:
        print(f"time to reach CV MSE <= {target:.3f}: {reach[0]:.3f} s (last run) -> "
              f"{np.median(sk_times) / reach[0]:.1f}x faster than the grid; whole fit incl. refit "
              f"{np.median(sk_times) / np.median(ours_times):.1f}x")
    else:
        print("unroll LassoCV did NOT reach the grid's best CV MSE")
    print("outer steps (alpha, CV MSE, time):",
          "; ".join(f"{h['alpha']:.4f} {h['cv_mse']:.2f} {h['time']:.3f}s" for h in ours_hist))


def _fd(fun, h0: torch.Tensor, eps: float) -> torch.Tensor:
    out = torch.zeros_like(h0)
    flat = out.view(-1)
    for i in range(h0.numel()):
        e = torch.zeros_like(h0).view(-1)
        e[i] = eps
        e = e.view_as(h0)
        flat[i] = (fun(h0 + e) - fun(h0 - e)) / (2 * eps)
    return out


def accuracy(quick: bool) -> None:
    from unroll import GradientStep, ProxGradStep, Unrolled

    print("\n## 2. Hypergradient accuracy vs central finite differences (float64), time per hypergradient")
    r = np.random.default_rng(0)
    n, nv, d = 60, 40, 10
    w = r.standard_normal(d) * (r.random(d) < 0.5)
    Xt, Xv = torch.tensor(r.standard_normal((n, d))), torch.tensor(r.standard_normal((nv, d)))
    yt, yv = Xt @ torch.tensor(w) + 0.5 * torch.randn(n, dtype=DT), Xv @ torch.tensor(w) + 0.5 * torch.randn(nv, dtype=DT)
    tt, tv = (yt > 0).to(DT), (yv > 0).to(DT)
    mse = lambda x, *h: ((x[0] @ Xv.T - yv) ** 2).mean()  # noqa: E731

    def logloss(x, *h):
        z = Xv @ x[0]
        return (torch.nn.functional.softplus(z) - tv * z).mean()

    cases = [("ridge", lambda l: ridge(Xt, yt, l), mse, torch.tensor(2.0, dtype=DT), "cg"),
             ("lasso", lambda l: lasso(Xt, yt, l), mse, torch.tensor(0.1, dtype=DT), "bicgstab"),
             ("logistic (per feature)", lambda l: logistic(Xt, tt, l), logloss,
              torch.linspace(0.01, 0.1, d, dtype=DT), "cg")]
    print("| inner | method | rel. error vs FD | time / hypergradient |")
    print("|---|---|---|---|")
    for name, inner, outer, h0, bsolver in cases:
        def value(h):
            p = inner(h)
            step = ProxGradStep(p.reg) if p.reg is not None else GradientStep(1.0)
            return float(outer(Unrolled(step, num_iters=200000)(p, tol=1e-15, check_every=50).x))
        fd = _fd(value, h0, 1e-6 * float(h0.abs().max()))
        for method, kw in (("implicit", dict(backward_solver=bsolver, num_iters=100000, tol=1e-13, check_every=20)),
                           ("unrolled", dict(num_iters=2000)),
                           ("penalty", dict(penalty=1e4, num_iters=100000, tol=1e-13, check_every=20))):
            h = h0.clone().requires_grad_(True)
            t = time.perf_counter()
            (g,), _ = hypergrad(inner, outer, h, method=method, **kw)
            dt = time.perf_counter() - t
            err = float((g - fd).norm() / fd.norm())
            print(f"| {name} | {method} | {err:.1e} | {dt * 1e3:.0f} ms |")


def per_feature(quick: bool) -> None:
    from sklearn.datasets import make_regression
    from sklearn.linear_model import lasso_path

    print("\n## 3. One penalty per feature (1000 hyperparameters) vs the best single penalty")
    print("| data | penalty | best single λ: val / test MSE | per-feature λ: val / test MSE | outer steps | time |")
    print("|---|---|---|---|---|---|")
    steps = 20 if quick else 300
    for name, kw in (("make_regression(700, 1000, noise=40), 10 informative; 300 train / 200 val / 200 test", dict(n_informative=10)),
                     ("same, 5 informative", dict(n_informative=5))):
        X, y = make_regression(n_samples=700, n_features=1000, noise=40, random_state=0, **kw)
        X, y = torch.tensor(X), torch.tensor(y)
        Xtr, ytr, Xva, yva, Xte, yte = X[:300], y[:300], X[300:500], y[300:500], X[500:], y[500:]

        def err(w, Xs, ys):
            return ((Xs @ w - ys) ** 2).mean()

        # per-feature ridge: gradient through its dual-form solve (n x n system, closed form)
        def fit(lam):
            K = (Xtr / lam) @ Xtr.T + torch.eye(300, dtype=DT)
            return (Xtr.T @ torch.linalg.solve(K, ytr)) / lam

        grid = torch.logspace(-1, 5, 61, dtype=DT)
        vals = [float(err(fit(g.expand(1000)), Xva, yva)) for g in grid]
        lam0 = grid[int(np.argmin(vals))]
        single = (min(vals), float(err(fit(lam0.expand(1000)), Xte, yte)))
        raw = torch.full((1000,), float(lam0.log()), dtype=DT, requires_grad=True)
        opt = torch.optim.Adam([raw], lr=0.1)
        t = time.perf_counter()
        best = (single[0], raw.detach().clone())
        for _ in range(steps):
            loss = err(fit(raw.exp()), Xva, yva)  # closed-form implicit gradient through the solve
            if float(loss.detach()) < best[0]:
                best = (float(loss.detach()), raw.detach().clone())
            opt.zero_grad()
            loss.backward()
            opt.step()
        dt = time.perf_counter() - t
        w = fit(best[1].exp())
        print(f"| {name} | ridge, dual-form solve | {single[0]:.0f} / {single[1]:.0f} | {best[0]:.0f} / "
              f"{float(err(w, Xte, yte)):.0f} | {steps} | {dt:.1f} s |")

        # weighted Lasso (scikit-learn's objective, alpha per feature): the library's hypergradient,
        # implicit at the proximal-gradient fixed point (on the support), inner solves warm-started
        alphas, coefs, _ = lasso_path(Xtr.numpy(), ytr.numpy(), alphas=np.logspace(-1, 2.5, 36), tol=1e-9,
                                      max_iter=100000)  # returns the alphas in decreasing order
        coefs = torch.tensor(coefs)
        vals = [float(err(coefs[:, k], Xva, yva)) for k in range(len(alphas))]
        k = int(np.argmin(vals))
        single = (vals[k], float(err(coefs[:, k], Xte, yte)))
        raw = torch.full((1000,), float(np.log(alphas[k])), dtype=DT, requires_grad=True)  # alpha = exp(raw)
        opt = torch.optim.Adam([raw], lr=0.1)
        outer = lambda w, *h: ((w[0] @ Xva.T - yva) ** 2).mean()  # noqa: E731
        x0, best, its, unconverged = None, (single[0], coefs[:, k].clone()), 0, 0
        t = time.perf_counter()
        for _ in range(steps):  # each outer step re-solves the 1000-feature Lasso (warm start)
            (g,), info = hypergrad(lambda r: lasso(Xtr, ytr, r.exp()), outer, raw, method="implicit", x0=x0,
                                   num_iters=20000, tol=1e-8, check_every=10, on_failure="ignore")
            x0 = info.x
            its = max(its, int(info.inner.iterations.max()))
            unconverged += int(info.inner.status != "converged" or not bool(info.backward.converged.all()))
            if info.outer < best[0]:
                best = (info.outer, info.x[0].clone())
            opt.zero_grad()
            raw.grad = g
            opt.step()
        dt = time.perf_counter() - t
        print(f"| {name} | weighted Lasso, `hypergrad(method='implicit')` | {single[0]:.0f} / {single[1]:.0f} | "
              f"{best[0]:.0f} / {float(err(best[1], Xte, yte)):.0f} | {steps} | {dt:.1f} s |")
        print(f"  (weighted Lasso: best single alpha {alphas[k]:.3g} of a 36-value grid; largest inner solve "
              f"{its} iterations; {unconverged} outer steps with an unconverged inner or adjoint solve; "
              f"{int((best[1] != 0).sum())} nonzero coefficients at the best step)")


def cleaning(quick: bool) -> None:
    from sklearn.datasets import load_digits

    print("\n## 4. Data hyper-cleaning, digits, half the training labels corrupted")
    X, y = load_digits(return_X_y=True)
    X = X / 16.0
    r = np.random.default_rng(0)
    perm = r.permutation(len(y))
    X, y = X[perm], y[perm]
    ntr, nva = 600, 300
    Xtr, ytr = X[:ntr], y[:ntr].copy()
    Xva, yva, Xte, yte = X[ntr:ntr + nva], y[ntr:ntr + nva], X[ntr + nva:], y[ntr + nva:]
    bad = r.random(ntr) < 0.5
    ytr[bad] = (ytr[bad] + r.integers(1, 10, bad.sum())) % 10  # a wrong label for half of them
    ones = lambda A: torch.tensor(np.c_[A, np.ones(len(A))])  # noqa: E731
    lam = torch.full((65, 1), 1e-3, dtype=DT)
    lam[-1] = 0
    prob = _LogisticFolds(ones(Xtr), torch.tensor(ytr), [(np.arange(ntr), np.arange(0))], 10, intercept=True)
    Xv_t, yv_t = ones(Xva), torch.tensor(yva)
    Xte_t = ones(Xte)

    def fit_acc(weights):
        prob.s[0] = weights / ntr
        W, _ = prob.solve(lam, 1e-7, 100)
        return float(((Xte_t @ W[0]).argmax(1).numpy() == yte).mean()), W

    acc_uniform, _ = fit_acc(torch.ones(ntr, dtype=DT))
    acc_oracle, _ = fit_acc(torch.tensor((~bad).astype(float)))
    raw = torch.zeros(ntr, dtype=DT)  # weights sigmoid(raw), start 0.5
    steps = 20 if quick else 80
    m = torch.zeros_like(raw)
    v2 = torch.zeros_like(raw)
    t = time.perf_counter()
    for it in range(1, steps + 1):
        wts = torch.sigmoid(raw)
        prob.s[0] = wts / ntr
        W, _ = prob.solve(lam, 1e-7, 100)
        Z = Xv_t @ W[0]
        Pv = torch.softmax(Z, 1)
        Tv = torch.nn.functional.one_hot(yv_t, 10).to(DT)
        gF = (Xv_t.T @ (Pv - Tv) / nva).unsqueeze(0)  # dF/dW, F = validation cross-entropy
        P = torch.softmax(prob.X[0] @ W[0], 1).unsqueeze(0)
        V = prob._newton_dir(P, lam, gF, 1e-10)[0]  # H^-1 dF/dW
        # d grad_W / d s_i = x_i (p_i - t_i)ᵀ / n  ->  dF/ds_i = -<V, x_i (p_i - t_i)ᵀ>/n
        G_i = (prob.X[0] @ V * (P[0] - prob.T[0])).sum(1)[:ntr] / ntr
        g = -G_i * wts * (1 - wts)
        m = 0.9 * m + 0.1 * g
        v2 = 0.999 * v2 + 0.001 * g * g
        raw = raw - 1.0 * (m / (1 - 0.9 ** it)) / ((v2 / (1 - 0.999 ** it)).sqrt() + 1e-12)
    dt = time.perf_counter() - t
    wts = torch.sigmoid(raw)
    acc_learned, _ = fit_acc(wts)
    from sklearn.metrics import roc_auc_score
    auc = roc_auc_score(~bad, wts.numpy())
    print(f"clean test accuracy: uniform weights {acc_uniform:.3f}, learned weights {acc_learned:.3f}, "
          f"oracle (corrupted dropped) {acc_oracle:.3f}; {steps} outer steps in {dt:.1f} s; "
          f"AUC of the weights at telling clean from corrupted {auc:.3f}")


def penalty(quick: bool) -> None:
    print("\n## 5. Penalty method: hypergradient error vs penalty (ridge, closed form)")
    r = np.random.default_rng(3)
    Xt, Xv = torch.tensor(r.standard_normal((40, 8))), torch.tensor(r.standard_normal((30, 8)))
    yt, yv = torch.tensor(r.standard_normal(40)), torch.tensor(r.standard_normal(30))
    lam0 = torch.tensor(1.1, dtype=DT)
    H = Xt.T @ Xt + lam0 * torch.eye(8, dtype=DT)
    x = torch.linalg.solve(H, Xt.T @ yt)
    exact = float(-(x * torch.linalg.solve(H, Xv.T @ (Xv @ x - yv))).sum())
    outer = lambda w, *h: 0.5 * ((w[0] @ Xv.T - yv) ** 2).sum()  # noqa: E731
    print("| penalty ρ | relative error |")
    print("|---|---|")
    for rho in (1e1, 1e2, 1e3, 1e4, 1e5):
        lam = lam0.clone().requires_grad_(True)
        (g,), _ = hypergrad(lambda l: Problem.create(Xt, yt[None], SquaredL2(l)), outer, lam, method="penalty",
                            penalty=rho, num_iters=100000, tol=1e-15, check_every=50)
        print(f"| {rho:.0e} | {abs(float(g) - exact) / abs(exact):.1e} |")


SECTIONS = {"cv_lasso": cv_lasso, "accuracy": accuracy, "per_feature": per_feature, "cleaning": cleaning,
            "penalty": penalty}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small budgets (smoke test)")
    ap.add_argument("--only", default=",".join(SECTIONS), help="comma-separated sections")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    for name in args.only.split(","):
        if name not in SECTIONS:
            sys.exit(f"--only: unknown section {name!r}; expected {', '.join(SECTIONS)}")
        SECTIONS[name](args.quick)


if __name__ == "__main__":
    main()
