"""Hypergradients through an inner solver (unroll.bilevel.hypergrad) against closed forms."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from unroll import L1, Problem, SolverWarning, SquaredL2
from unroll.bilevel import hypergrad
from unroll.solvers import ista

DT = torch.float64


def data(seed=0, n_train=40, n_val=30, d=8):
    r = np.random.default_rng(seed)
    w = r.standard_normal(d) * (r.random(d) < 0.6)
    Xt, Xv = r.standard_normal((n_train, d)), r.standard_normal((n_val, d))
    yt = Xt @ w + 0.5 * r.standard_normal(n_train)
    yv = Xv @ w + 0.5 * r.standard_normal(n_val)
    return (torch.tensor(Xt, dtype=DT), torch.tensor(yt, dtype=DT)[None],
            torch.tensor(Xv, dtype=DT), torch.tensor(yv, dtype=DT)[None])


def outer_fn(Xv, yv):
    return lambda x, *h: 0.5 * ((x @ Xv.T - yv) ** 2).sum()


def ridge_closed_form(Xt, yt, Xv, yv, lam):
    """x* = (XᵀX + diag λ)⁻¹Xᵀy and dF/dλ = −x* ⊙ H⁻¹∇F (per feature)."""
    H = Xt.T @ Xt + torch.diag(lam.expand(Xt.shape[1]))
    x = torch.linalg.solve(H, Xt.T @ yt[0])
    gF = Xv.T @ (Xv @ x - yv[0])
    return x, -x * torch.linalg.solve(H, gF)


@pytest.mark.parametrize("per_feature", [False, True], ids=["scalar", "per_feature"])
def test_implicit_ridge_hypergradient_is_the_closed_form(per_feature):
    Xt, yt, Xv, yv = data()
    lam0 = torch.linspace(0.5, 3.0, Xt.shape[1], dtype=DT) if per_feature else torch.tensor(1.3, dtype=DT)
    lam = lam0.clone().requires_grad_(True)
    (g,), info = hypergrad(lambda l: Problem.create(Xt, yt, SquaredL2(l)), outer_fn(Xv, yv), lam,
                           method="implicit", backward_solver="cg", num_iters=20000, tol=1e-13)
    x, per = ridge_closed_form(Xt, yt, Xv, yv, lam0)
    torch.testing.assert_close(g, per if per_feature else per.sum(), rtol=1e-7, atol=1e-10)
    assert info.inner.status == "converged" and info.backward.status == "converged" and info.backward.method == "cg"


def test_unrolled_agrees_with_implicit_at_convergence():
    Xt, yt, Xv, yv = data(1)
    grads = {}
    for method in ("unrolled", "implicit"):
        lam = torch.tensor(0.8, dtype=DT, requires_grad=True)
        (g,), _ = hypergrad(lambda l: Problem.create(Xt, yt, SquaredL2(l)), outer_fn(Xv, yv), lam, method=method,
                            num_iters=3000, tol=1e-13)
        grads[method] = g
    torch.testing.assert_close(grads["unrolled"], grads["implicit"], rtol=1e-7, atol=1e-10)
    # a short unrolled run differentiates what it ran, not the solution: it differs
    lam = torch.tensor(0.8, dtype=DT, requires_grad=True)
    (short,), _ = hypergrad(lambda l: Problem.create(Xt, yt, SquaredL2(l)), outer_fn(Xv, yv), lam,
                            method="unrolled", num_iters=5)
    assert abs(float(short - grads["implicit"])) > 1e-3 * abs(float(grads["implicit"]))


def test_lasso_hypergradient_is_the_closed_form_on_the_support():
    Xt, yt, Xv, yv = data(2)
    lam = torch.tensor(4.0, dtype=DT, requires_grad=True)
    (g,), info = hypergrad(lambda l: Problem.create(Xt, yt, L1(l)), outer_fn(Xv, yv), lam, method="implicit",
                           num_iters=50000, tol=1e-14, check_every=50)
    assert info.backward.status == "converged"
    xs, _ = ista(Xt, yt, 4.0, max_iter=50000, tol=1e-14)  # the same solution, for the closed form
    S = xs[0].abs() > 1e-10
    assert 0 < int(S.sum()) < Xt.shape[1]  # a proper support, so the restriction matters
    XS = Xt[:, S]
    dx = -torch.linalg.solve(XS.T @ XS, torch.sign(xs[0, S]))
    gF = (Xv.T @ (Xv @ xs[0] - yv[0]))[S]
    torch.testing.assert_close(g, gF @ dx, rtol=1e-6, atol=1e-9)


def test_penalty_method_approaches_the_implicit_hypergradient():
    Xt, yt, Xv, yv = data(3)
    lam0 = torch.tensor(1.1, dtype=DT)
    _, exact = ridge_closed_form(Xt, yt, Xv, yv, lam0)
    errors = []
    for rho in (1e1, 1e2, 1e3):
        lam = lam0.clone().requires_grad_(True)
        (g,), info = hypergrad(lambda l: Problem.create(Xt, yt, SquaredL2(l)), outer_fn(Xv, yv), lam,
                               method="penalty", penalty=rho, num_iters=50000, tol=1e-14, check_every=50)
        assert info.penalized.status == "converged" and info.penalty == rho
        errors.append(abs(float(g - exact.sum())))
    assert errors[2] < errors[1] < errors[0]
    assert errors[2] < 2e-2 * abs(float(exact.sum()))  # O(1/ρ): about 10× smaller per decade
    assert errors[0] / errors[2] > 30


def test_bad_input_and_unconverged_inner_solves():
    Xt, yt, Xv, yv = data()
    inner = lambda l: Problem.create(Xt, yt, SquaredL2(l))  # noqa: E731
    with pytest.raises(ValueError, match="method"):
        hypergrad(inner, outer_fn(Xv, yv), torch.tensor(1.0, dtype=DT, requires_grad=True), method="grid")
    with pytest.raises(ValueError, match=r"hparams\[0\]: expected a tensor that requires grad"):
        hypergrad(inner, outer_fn(Xv, yv), torch.tensor(1.0, dtype=DT))
    with pytest.raises(ValueError, match="tol"):
        hypergrad(inner, outer_fn(Xv, yv), torch.tensor(1.0, dtype=DT, requires_grad=True), tol=-1.0)
    with pytest.raises(ValueError, match="lam"):
        hypergrad(inner, outer_fn(Xv, yv), torch.tensor(-1.0, dtype=DT, requires_grad=True))
    for method in ("implicit", "penalty"):
        with pytest.warns(SolverWarning, match="did not"):
            hypergrad(inner, outer_fn(Xv, yv), torch.tensor(1.0, dtype=DT, requires_grad=True), method=method,
                      num_iters=3, tol=1e-12)


# ---------------------------------------------------------------- ready-made inner problems
def _solve(problem, iters=100000, tol=1e-14):
    from unroll import GradientStep, ProxGradStep, Unrolled

    step = ProxGradStep(problem.reg) if problem.reg is not None else GradientStep(1.0)
    out = Unrolled(step, num_iters=iters)(problem, tol=tol, check_every=50)
    assert out.info.status == "converged"
    return out.x


def test_inner_problems_match_scikit_learn():
    lm = pytest.importorskip("sklearn.linear_model")
    Xt, yt, _, _ = data(4, n_train=60, d=10)
    X, y = Xt.numpy(), yt[0].numpy()
    from unroll.bilevel import elastic_net, lasso, logistic, ridge

    cases = [(ridge(Xt, yt[0], 2.0), lm.Ridge(alpha=2.0, fit_intercept=False, tol=1e-12)),
             (lasso(Xt, yt[0], 0.05), lm.Lasso(alpha=0.05, fit_intercept=False, tol=1e-12, max_iter=100000)),
             (elastic_net(Xt, yt[0], 0.1, 0.3),
              lm.ElasticNet(alpha=0.1, l1_ratio=0.3, fit_intercept=False, tol=1e-12, max_iter=100000))]
    for problem, est in cases:
        np.testing.assert_allclose(_solve(problem)[0].numpy(), est.fit(X, y).coef_, rtol=1e-6, atol=1e-8)
    labels = torch.tensor((y > 0).astype(float), dtype=DT)
    lam = 0.05
    ref = lm.LogisticRegression(C=1.0 / (len(y) * lam), fit_intercept=False, tol=1e-12, max_iter=10000)
    np.testing.assert_allclose(_solve(logistic(Xt, labels, lam))[0].numpy(),
                               ref.fit(X, labels.numpy()).coef_[0], rtol=1e-5, atol=1e-7)
    with pytest.raises(ValueError, match=r"y: expected 60 targets"):
        ridge(Xt, yt[0, :50], 1.0)
    with pytest.raises(ValueError, match="binary"):
        logistic(Xt, yt[0], 1.0)
    with pytest.raises(ValueError, match="l1_ratio"):
        elastic_net(Xt, yt[0], 0.1, 1.5)


def test_per_feature_logistic_hypergradient_matches_finite_differences():
    from unroll.bilevel import logistic

    Xt, yt, Xv, yv = data(5, n_train=80, d=6)
    t_train, t_val = (yt[0] > 0).to(DT), (yv[0] > 0).to(DT)

    def outer(w, *h):  # validation log-loss
        z = Xv @ w[0]
        return (torch.nn.functional.softplus(z) - t_val * z).mean()

    lam0 = torch.linspace(0.01, 0.2, 6, dtype=DT)
    lam = lam0.clone().requires_grad_(True)
    (g,), info = hypergrad(lambda l: logistic(Xt, t_train, l), outer, lam, method="implicit",
                           backward_solver="cg", num_iters=200000, tol=1e-14, check_every=100)
    assert info.backward.status == "converged"

    def value(lv):
        return float(outer(_solve(logistic(Xt, t_train, lv), tol=1e-15)))

    h = 1e-5
    fd = torch.tensor([(value(lam0 + h * e) - value(lam0 - h * e)) / (2 * h) for e in torch.eye(6, dtype=DT)], dtype=DT)
    torch.testing.assert_close(g, fd, rtol=1e-4, atol=1e-7)
    assert float(g.abs().max()) > 1e-4
