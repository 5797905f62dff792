"""Bilevel, second part: multiclass logistic and per-sample weights, parametrisations, and the
scikit-learn-style front ends (unroll.bilevel.LassoCV / ElasticNetCV / LogisticRegressionCV)."""

from __future__ import annotations

import math
import pickle

import numpy as np
import pytest
import torch

sklearn = pytest.importorskip("sklearn")
from sklearn import linear_model as lm  # noqa: E402
from sklearn.base import clone  # noqa: E402
from sklearn.datasets import make_classification, make_regression  # noqa: E402
from sklearn.utils import estimator_checks as ec  # noqa: E402

from unroll import GradientStep, SolverWarning, Unrolled  # noqa: E402
from unroll.bilevel import (ElasticNetCV, LassoCV, LogisticRegressionCV, hypergrad, multinomial_logistic,  # noqa: E402
                            ridge)
from unroll.bilevel_cv import _EnetFolds, _LogisticFolds, kfold_indices  # noqa: E402
from unroll.parametrize import LogScale, SimplexWeights, UnitWeights  # noqa: E402

DT = torch.float64


def _solve(problem, tol=1e-14):
    out = Unrolled(GradientStep(1.0), num_iters=200000)(problem, tol=tol, check_every=50)
    assert out.info.status == "converged"
    return out.x


def _multiclass(seed=0, n=60, nv=40, d=5, C=3):
    r = np.random.default_rng(seed)
    W = r.standard_normal((d, C))
    X, Xv = r.standard_normal((n, d)), r.standard_normal((nv, d))
    y = (X @ W + r.gumbel(size=(n, C))).argmax(1)
    yv = (Xv @ W + r.gumbel(size=(nv, C))).argmax(1)
    return torch.tensor(X), torch.tensor(y), torch.tensor(Xv), torch.tensor(yv)


# ---------------------------------------------------------------- multiclass logistic, sample weights
def test_multinomial_logistic_matches_scikit_learn_with_sample_weights():
    X, y, _, _ = _multiclass()
    s = torch.tensor(np.random.default_rng(1).uniform(0.2, 2.0, 60))
    lam = 0.05
    W = _solve(multinomial_logistic(X, y, lam, sample_weight=s))[0]  # (d, C)
    ref = lm.LogisticRegression(C=1 / (60 * lam), fit_intercept=False, tol=1e-12, max_iter=10000)
    ref.fit(X.numpy(), y.numpy(), sample_weight=s.numpy())
    np.testing.assert_allclose(W.numpy().T, ref.coef_, rtol=1e-5, atol=1e-7)
    with pytest.raises(ValueError, match=r"y: expected labels in 0\.\.1 \(n_classes=2\)"):
        multinomial_logistic(X, y, lam, n_classes=2)
    with pytest.raises(ValueError, match="sample_weight: expected finite weights >= 0"):
        multinomial_logistic(X, y, lam, sample_weight=-s)
    with pytest.raises(ValueError, match=r"sample_weight: expected \(60,\)"):
        multinomial_logistic(X, y, lam, sample_weight=s[:10])
    with pytest.raises(ValueError, match="lam: expected finite penalties >= 0"):
        multinomial_logistic(X, y, -1.0)


def test_sample_weight_hypergradient_matches_finite_differences():
    """Hyper-cleaning's gradient: d(validation cross-entropy)/d(sample weights) through a
    multinomial logistic inner problem, implicit (CG), against central differences (float64)."""
    X, y, Xv, yv = _multiclass(2, n=40, nv=30, d=4)
    lam = 0.05
    s0 = torch.tensor(np.random.default_rng(3).uniform(0.5, 1.5, 40))

    def outer(W, *h):
        return torch.nn.functional.cross_entropy(Xv @ W[0], yv)

    s = s0.clone().requires_grad_(True)
    (g,), info = hypergrad(lambda sw: multinomial_logistic(X, y, lam, sample_weight=sw), outer, s,
                           backward_solver="cg", num_iters=200000, tol=1e-13, check_every=50)
    assert info.inner.status == "converged" and info.backward.status == "converged"

    def value(sv):
        return float(outer(_solve(multinomial_logistic(X, y, lam, sample_weight=sv))))

    h = 1e-5
    for i in (0, 7, 23):
        e = torch.zeros(40, dtype=DT)
        e[i] = h
        fd = (value(s0 + e) - value(s0 - e)) / (2 * h)
        assert abs(float(g[i]) - fd) <= 1e-5 * abs(fd) + 1e-9
    assert float(g.abs().max()) > 1e-4


def test_weighted_ridge_is_scikit_learn_with_sample_weights():
    r = np.random.default_rng(4)
    X, y, s = r.standard_normal((30, 6)), r.standard_normal(30), r.uniform(0.1, 3.0, 30)
    from unroll import ProxGradStep

    p = ridge(torch.tensor(X), torch.tensor(y), 1.5, sample_weight=torch.tensor(s))
    x = Unrolled(ProxGradStep(p.reg), num_iters=100000)(p, tol=1e-14, check_every=50).x[0]
    ref = lm.Ridge(alpha=1.5, fit_intercept=False).fit(X, y, sample_weight=s)
    np.testing.assert_allclose(x.numpy(), ref.coef_, rtol=1e-7, atol=1e-9)


# ---------------------------------------------------------------- parametrisations
def test_parametrisations_stay_in_their_domain_and_reject_values_outside():
    p = LogScale([0.1, 2.0], name="lam")
    torch.testing.assert_close(p(), torch.tensor([0.1, 2.0], dtype=p.raw.dtype))
    with torch.no_grad():
        p.raw.sub_(100.0)  # any step keeps it positive
    assert bool((p() > 0).all())
    p.set_(torch.tensor([3.0, 4.0]))
    torch.testing.assert_close(p(), torch.tensor([3.0, 4.0], dtype=p.raw.dtype))
    with pytest.raises(ValueError, match=r"lam: expected finite values > 0"):
        LogScale([1.0, -2.0], name="lam")
    with pytest.raises(ValueError, match=r"lam: expected finite values > 0"):
        p.set_(0.0)
    w = SimplexWeights(5)
    torch.testing.assert_close(w(), torch.ones(5, dtype=w.raw.dtype))
    with torch.no_grad():
        w.raw.copy_(torch.randn(5) * 10)
    assert bool((w() >= 0).all()) and abs(float(w().sum()) - 5.0) < 1e-5
    with pytest.raises(ValueError, match=r"weights: expected finite weights > 0"):
        SimplexWeights([1.0, 0.0, 2.0])
    with pytest.raises(ValueError, match=r"weights: expected a \(n,\) vector"):
        SimplexWeights(torch.ones(2, 2))
    u = UnitWeights(3)
    torch.testing.assert_close(u(), torch.full((3,), 0.5, dtype=u.raw.dtype))
    with pytest.raises(ValueError, match=r"weights: expected weights strictly inside \(0, 1\)"):
        UnitWeights([0.5, 1.0])


def test_log_scale_hypergradient_is_the_chain_rule():
    """Through a parametrisation the hypergradient w.r.t. the raw parameter is λ·dF/dλ."""
    r = np.random.default_rng(5)
    Xt, yt = torch.tensor(r.standard_normal((30, 5))), torch.tensor(r.standard_normal(30))
    Xv, yv = torch.tensor(r.standard_normal((20, 5))), torch.tensor(r.standard_normal(20))
    outer = lambda x, *h: 0.5 * ((x[0] @ Xv.T - yv) ** 2).sum()  # noqa: E731
    p = LogScale(torch.tensor([0.7, 1.1, 0.2, 3.0, 0.9], dtype=DT))
    (g_raw,), _ = hypergrad(lambda raw: ridge(Xt, yt, p()), outer, p.raw, backward_solver="cg",
                            num_iters=50000, tol=1e-13)
    lam = p().detach().clone().requires_grad_(True)
    (g_lam,), _ = hypergrad(lambda l: ridge(Xt, yt, l), outer, lam, backward_solver="cg", num_iters=50000,
                            tol=1e-13)
    torch.testing.assert_close(g_raw, lam.detach() * g_lam, rtol=1e-8, atol=1e-12)


# ---------------------------------------------------------------- K-fold machinery
def test_kfold_indices_are_scikit_learns():
    from sklearn.model_selection import KFold

    for n, k in ((23, 5), (10, 3), (500, 5)):
        ours = kfold_indices(n, k)
        for (tr, va), (tr2, va2) in zip(ours, KFold(k).split(np.zeros(n))):
            np.testing.assert_array_equal(tr, tr2)
            np.testing.assert_array_equal(va, va2)
    with pytest.raises(ValueError, match="cv: expected an int >= 2"):
        kfold_indices(10, 1)


def _reg_data(n=80, d=30, seed=0):
    X, y = make_regression(n_samples=n, n_features=d, n_informative=5, noise=5.0, random_state=seed)
    return X, y


def test_cv_lasso_solutions_and_hypergradient_are_exact():
    """The batched active-set solves equal scikit-learn's Lasso on every fold (centred training
    rows), the CV MSE equals the one computed by hand, and dCV/dlogα equals central differences."""
    X, y = _reg_data()
    folds = kfold_indices(len(y), 4)
    for rho in (1.0, 0.6):
        prob = _EnetFolds(torch.tensor(X), torch.tensor(y), folds, True, rho, 1e-10, 200)
        alpha = 0.3 * prob.alpha_max()
        val, g = prob.value_grad(alpha)
        cv = 0.0
        for k, (tr, va) in enumerate(folds):
            ref = lm.ElasticNet(alpha=alpha, l1_ratio=rho, tol=1e-14, max_iter=100000).fit(X[tr], y[tr])
            np.testing.assert_allclose(prob.w[k].numpy(), ref.coef_, rtol=1e-6, atol=1e-8)
            cv += ((ref.predict(X[va]) - y[va]) ** 2).mean() / len(folds)
        assert abs(val - cv) <= 1e-8 * cv
        h = 1e-6
        fd = (prob.value_grad(alpha * math.exp(h))[0] - prob.value_grad(alpha * math.exp(-h))[0]) / (2 * h)
        assert abs(g - fd) <= 1e-5 * abs(fd) + 1e-8 and abs(g) > 1e-3


def test_lasso_cv_reaches_the_grid_optimum_of_scikit_learn():
    X, y = _reg_data(n=100, d=60, seed=1)
    est = LassoCV(cv=5).fit(X, y)
    sk = lm.LassoCV(cv=5, alphas=100).fit(X, y)
    prob = _EnetFolds(torch.tensor(X), torch.tensor(y), kfold_indices(100, 5), True, 1.0, 1e-10, 200)
    grid = [prob.value_grad(a)[0] for a in sk.alphas_[::-1]]  # exact CV MSE along the grid
    assert est.cv_mse_ <= min(grid) * (1 + 1e-9)
    assert est.history_[-1]["cv_mse"] > 0 and est.n_outer_ == len(est.history_) <= est.max_iter
    ref = lm.Lasso(alpha=est.alpha_, tol=1e-14, max_iter=100000).fit(X, y)  # same objective and alpha
    np.testing.assert_allclose(est.coef_, ref.coef_, rtol=1e-6, atol=1e-8)
    assert abs(est.intercept_ - ref.intercept_) < 1e-6
    np.testing.assert_allclose(est.predict(X), ref.predict(X), rtol=1e-7, atol=1e-6)


def test_elastic_net_cv_picks_its_l1_ratio_and_matches_scikit_learn():
    X, y = _reg_data(seed=2)
    est = ElasticNetCV(l1_ratio=[0.3, 0.9], cv=4).fit(X, y)
    assert est.l1_ratio_ in (0.3, 0.9)
    for rho in (0.3, 0.9):
        best = min(h["cv_mse"] for h in est.history_ if h["l1_ratio"] == rho)
        assert est.cv_mse_ <= best
    ref = lm.ElasticNet(alpha=est.alpha_, l1_ratio=est.l1_ratio_, tol=1e-14, max_iter=100000).fit(X, y)
    np.testing.assert_allclose(est.coef_, ref.coef_, rtol=1e-6, atol=1e-8)
    with pytest.raises(ValueError, match=r"l1_ratio: expected numbers in \(0, 1\]"):
        ElasticNetCV(l1_ratio=1.5).fit(X, y)


def test_logistic_hypergradient_matches_finite_differences():
    X, y = make_classification(n_samples=90, n_features=6, random_state=0)
    Xd = torch.tensor(np.c_[X, np.ones(90)])
    for labels, C in ((y, 2), (np.arange(90) % 3, 3)):
        prob = _LogisticFolds(Xd, torch.tensor(labels), kfold_indices(90, 3), C, intercept=True)
        loglam = torch.tensor(np.log(np.linspace(0.01, 0.3, 7)))[:, None]
        free = torch.ones(7, 1, dtype=DT)
        free[-1] = 0
        v, g, ok = prob.value_grad(loglam.exp() * free, 1e-12, 100)
        assert ok
        h = 1e-5
        for j in (0, 3):
            e = torch.zeros(7, 1, dtype=DT)
            e[j] = h
            fd = (prob.value_grad((loglam + e).exp() * free, 1e-13, 100)[0]
                  - prob.value_grad((loglam - e).exp() * free, 1e-13, 100)[0]) / (2 * h)
            assert abs(float(g[j]) - fd) <= 1e-4 * abs(fd) + 1e-9


def test_logistic_regression_cv_matches_scikit_learn_and_per_feature_helps():
    X, y = make_classification(n_samples=150, n_features=8, n_informative=3, random_state=3)
    est = LogisticRegressionCV(cv=3).fit(X, y)
    ref = lm.LogisticRegression(C=float(est.C_[0]), tol=1e-12, max_iter=10000).fit(X, y)
    np.testing.assert_allclose(est.coef_, ref.coef_, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(est.predict_proba(X), ref.predict_proba(X), atol=1e-6)
    assert est.alpha_ == pytest.approx(1.0 / (150 * est.C_[0]))
    pf = LogisticRegressionCV(cv=3, per_feature=True, per_feature_iter=20).fit(X, y)
    assert pf.C_.shape == (8,) and pf.alpha_.shape == (8,)
    assert pf.cv_loss_ <= est.cv_loss_ + 1e-12
    # one penalty per feature, scikit-learn's meaning: sklearn on X scaled by sqrt(C_j) is the same model
    ref = lm.LogisticRegression(C=1.0, tol=1e-12, max_iter=10000).fit(X * np.sqrt(pf.C_), y)
    np.testing.assert_allclose(pf.coef_, ref.coef_ * np.sqrt(pf.C_), rtol=1e-4, atol=1e-6)
    # multiclass, labels of any type
    Xm, ym = make_classification(n_samples=120, n_features=5, n_informative=3, n_classes=3, random_state=1)
    names = np.array(["a", "b", "c"])[ym]
    mc = LogisticRegressionCV(cv=3).fit(Xm, names)
    assert mc.coef_.shape == (3, 5) and set(mc.predict(Xm)) <= {"a", "b", "c"}
    ref = lm.LogisticRegression(C=float(mc.C_[0]), tol=1e-12, max_iter=10000).fit(Xm, names)
    np.testing.assert_allclose(mc.predict_proba(Xm), ref.predict_proba(Xm), atol=1e-5)


def test_front_ends_take_torch_tensors_and_give_tensors_back():
    X, y = _reg_data(n=60, d=12, seed=3)
    Xt, yt = torch.tensor(X), torch.tensor(y)
    a = LassoCV(cv=3, device="cpu").fit(Xt, yt)
    b = LassoCV(cv=3).fit(X, y)
    assert isinstance(a.predict(Xt), torch.Tensor) and isinstance(b.predict(X), np.ndarray)
    np.testing.assert_allclose(a.coef_, b.coef_, rtol=1e-10, atol=1e-12)
    f32 = LassoCV(cv=3).fit(Xt.float(), yt.float())
    assert f32.coef_t_.dtype == torch.float32 and f32.predict(Xt.float()).dtype == torch.float32
    np.testing.assert_allclose(f32.alpha_, b.alpha_, rtol=1e-2)
    Xc, yc = make_classification(n_samples=60, n_features=4, random_state=0)
    c = LogisticRegressionCV(cv=3).fit(torch.tensor(Xc), torch.tensor(yc))
    assert isinstance(c.predict_proba(torch.tensor(Xc)), torch.Tensor)
    np.testing.assert_array_equal(c.predict(torch.tensor(Xc)).numpy(), c.predict(Xc))


def test_bad_inputs_get_clear_errors():
    X, y = _reg_data(n=40, d=5)
    with pytest.raises(ValueError, match="inconsistent numbers of samples|as many targets"):
        LassoCV().fit(X, y[:30])
    with pytest.raises(ValueError, match="X, y: expected as many targets as rows of X"):
        LassoCV().fit(torch.tensor(X), torch.tensor(y[:30]))
    with pytest.raises(ValueError, match="X: expected a 2-D"):
        LassoCV().fit(torch.tensor(y), torch.tensor(y))
    with pytest.raises(ValueError, match="cv: expected an int >= 2"):
        LassoCV(cv=1).fit(X, y)
    est = LassoCV(cv=3).fit(X, y)
    with pytest.raises(ValueError, match="5 features"):
        est.predict(X[:, :3])
    with pytest.raises(ValueError, match=r"X: expected shape \(n_samples, 5\)"):
        est.predict(torch.tensor(X[:, :3]))
    with pytest.raises(ValueError, match="C: expected a finite number > 0"):
        LogisticRegressionCV(C=-1.0).fit(X, (y > 0).astype(int))
    with pytest.raises(ValueError, match="y: expected at least 2 classes"):
        LogisticRegressionCV().fit(X, np.zeros(40))


def test_an_inner_solve_that_did_not_converge_warns_with_its_budget():
    X, y = _reg_data(n=60, d=40)
    with pytest.warns(SolverWarning, match="did not reach the KKT conditions within max_rounds=1"):
        LassoCV(cv=3, max_rounds=1, max_iter=2).fit(X, y)
    Xc, yc = make_classification(n_samples=60, n_features=4, random_state=0)
    with pytest.warns(SolverWarning, match="did not converge in max_newton=1"):
        LogisticRegressionCV(cv=3, max_newton=1, max_iter=2).fit(Xc, yc)


# ---------------------------------------------------------------- scikit-learn's estimator checks
REGRESSOR_CHECKS = ["check_get_params_invariance", "check_set_params", "check_estimator_cloneable",
                    "check_estimators_fit_returns_self", "check_fit2d_predict1d", "check_n_features_in",
                    "check_estimators_unfitted", "check_dont_overwrite_parameters", "check_estimators_overwrite_params",
                    "check_no_attributes_set_in_init", "check_parameters_default_constructible",
                    "check_fit_score_takes_y", "check_regressor_data_not_an_array", "check_regressors_train",
                    "check_estimators_pickle", "check_fit_idempotent", "check_estimators_dtypes"]
CLASSIFIER_CHECKS = ["check_get_params_invariance", "check_set_params", "check_estimator_cloneable",
                     "check_estimators_fit_returns_self", "check_fit2d_predict1d", "check_n_features_in",
                     "check_estimators_unfitted", "check_dont_overwrite_parameters", "check_classifiers_train",
                     "check_classifier_data_not_an_array", "check_classifiers_classes", "check_estimators_pickle"]


@pytest.mark.parametrize("make", [lambda: LassoCV(cv=3, max_iter=8), lambda: ElasticNetCV(cv=3, max_iter=8)],
                         ids=["LassoCV", "ElasticNetCV"])
@pytest.mark.parametrize("check", REGRESSOR_CHECKS)
def test_regressors_pass_scikit_learn_checks(make, check):
    est = make()
    getattr(ec, check)(type(est).__name__, est)


@pytest.mark.parametrize("check", CLASSIFIER_CHECKS)
def test_logistic_regression_cv_passes_scikit_learn_checks(check):
    est = LogisticRegressionCV(cv=3, max_iter=6)
    getattr(ec, check)("LogisticRegressionCV", est)


def test_get_set_params_and_clone():
    est = LogisticRegressionCV(per_feature=True, cv=4, C=0.5)
    assert est.get_params()["per_feature"] is True and est.get_params()["cv"] == 4
    c = clone(est.set_params(cv=3))
    assert c is not est and c.get_params() == est.get_params() and c.cv == 3
    fitted = LassoCV(cv=3).fit(*_reg_data(n=40, d=5))
    again = pickle.loads(pickle.dumps(fitted))
    np.testing.assert_array_equal(again.predict(_reg_data(n=40, d=5)[0]), fitted.predict(_reg_data(n=40, d=5)[0]))
