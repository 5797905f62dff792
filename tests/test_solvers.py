"""Tests for unroll.solvers against references written here in numpy / scipy.

Lasso: coordinate descent in numpy, polished on its support by the exact KKT linear system;
box-constrained least squares: scipy L-BFGS-B; plus optimality (KKT, fixed-point) conditions
and the descent properties of ISTA and IHT.
"""

from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch
from scipy import optimize

from unroll import MatrixOperator, solvers
from unroll.metrics import nmse
from unroll.prox import Box, Simplex, project_simplex

DT = torch.float64
ASSETS = Path(__file__).resolve().parents[1] / "data" / "assets" / "lista"



# --------------------------------------------------------------------------- #
# problems and numpy references
# --------------------------------------------------------------------------- #
def lasso_problem(m=20, n=40, batch=3, k=4, noise=0.01, seed=0):
    r = np.random.default_rng(seed)
    a = r.standard_normal((m, n)) / np.sqrt(m)
    x = np.zeros((batch, n))
    for b in range(batch):
        x[b, r.choice(n, k, replace=False)] = r.standard_normal(k)
    y = x @ a.T + noise * r.standard_normal((batch, m))
    lam = 0.1 * np.abs(y @ a).max()
    return a, y, lam


def lasso_objective(a, y, x, lam):
    return 0.5 * np.sum((x @ a.T - y) ** 2, axis=-1) + lam * np.sum(np.abs(x), axis=-1)


def lasso_cd(a, y, lam, sweeps=20000, tol=1e-14):
    """Cyclic coordinate descent for ½‖Ax − y‖² + λ‖x‖₁ (one sample), then an exact solve of
    the KKT system on the support found: A_Sᵀ(y − A_S x_S) = λ sign(x_S)."""
    n = a.shape[1]
    x = np.zeros(n)
    r = y.copy()
    col2 = np.sum(a * a, axis=0)
    for _ in range(sweeps):
        dmax = 0.0
        for j in range(n):
            old = x[j]
            rho = a[:, j] @ r + col2[j] * old
            new = np.sign(rho) * max(abs(rho) - lam, 0.0) / col2[j]
            if new != old:
                r -= a[:, j] * (new - old)
                x[j] = new
                dmax = max(dmax, abs(new - old))
        if dmax < tol:
            break
    s = x != 0
    a_s = a[:, s]
    x_pol = np.zeros(n)
    x_pol[s] = np.linalg.solve(a_s.T @ a_s, a_s.T @ y - lam * np.sign(x[s]))
    if np.all(np.sign(x_pol[s]) == np.sign(x[s])):  # the polish kept the signs: it is the minimiser
        x = x_pol
    return x


def kkt_violation(a, y, x, lam):
    """max over entries of the Lasso KKT violation (one sample)."""
    g = a.T @ (y - a @ x)
    on = x != 0
    v_on = np.abs(g[on] - lam * np.sign(x[on]))
    v_off = np.maximum(np.abs(g[~on]) - lam, 0.0)
    return max(v_on.max(initial=0.0), v_off.max(initial=0.0))


def soft(v, thr):
    return np.sign(v) * np.maximum(np.abs(v) - thr, 0.0)


def ista_np(a, y, lam, iters, step=1.0):
    L = np.linalg.norm(a, 2) ** 2
    al = step / L
    x = np.zeros((y.shape[0], a.shape[1]))
    for _ in range(iters):
        x = soft(x - al * (x @ a.T - y) @ a, al * lam)
    return x


def fista_np(a, y, lam, iters, step=1.0):
    L = np.linalg.norm(a, 2) ** 2
    al = step / L
    x = z = np.zeros((y.shape[0], a.shape[1]))
    t = 1.0
    for _ in range(iters):
        x_new = soft(z - al * (z @ a.T - y) @ a, al * lam)
        t_new = (1 + np.sqrt(1 + 4 * t * t)) / 2
        z = x_new + (t - 1) / t_new * (x_new - x)
        x, t = x_new, t_new
    return x


def iht_np(a, y, lam, iters, step=1.0):
    L = np.linalg.norm(a, 2) ** 2
    al = step / L
    thr = np.sqrt(2 * al * lam)
    x = np.zeros((y.shape[0], a.shape[1]))
    for _ in range(iters):
        v = x - al * (x @ a.T - y) @ a
        x = np.where(np.abs(v) > thr, v, 0.0)
    return x


def proj_simplex_np(v):
    """Euclidean projection onto {x ≥ 0, Σx = 1} (sort-based, Held et al. 1974), one vector."""
    u = np.sort(v)[::-1]
    css = np.cumsum(u) - 1.0
    k = np.arange(1, v.size + 1)
    rho = np.nonzero(u - css / k > 0)[0][-1]
    return np.maximum(v - css[rho] / (rho + 1), 0.0)


# --------------------------------------------------------------------------- #
# Lasso: FISTA / ISTA
# --------------------------------------------------------------------------- #
@pytest.fixture(scope="module")
def lasso():
    a, y, lam = lasso_problem()
    ref = np.stack([lasso_cd(a, yb, lam) for yb in y])
    for b in range(y.shape[0]):  # the reference itself is optimal
        assert kkt_violation(a, y[b], ref[b], lam) < 1e-12
    return a, y, lam, ref


def test_fista_reaches_lasso_minimiser(lasso):
    a, y, lam, ref = lasso
    x, info = solvers.fista(torch.tensor(a), torch.tensor(y), lam, max_iter=5000, tol=1e-13)
    x = x.numpy()
    f_ref = lasso_objective(a, y, ref, lam)
    f = lasso_objective(a, y, x, lam)
    np.testing.assert_array_less(np.abs(f - f_ref) / f_ref, 1e-6)
    assert np.all(f >= f_ref - 1e-12 * f_ref)  # nobody beats the minimiser
    for b in range(y.shape[0]):
        assert kkt_violation(a, y[b], x[b], lam) < 1e-5
    np.testing.assert_allclose(x, ref, atol=1e-6)
    assert info.status == "converged"


def test_fista_kkt_is_tight_in_float64(lasso):
    """Converged in float64, the KKT conditions hold to near machine precision (λ is used exactly)."""
    a, y, lam, ref = lasso
    x, _ = solvers.fista(torch.tensor(a), torch.tensor(y), lam, max_iter=5000, tol=1e-14)
    for b in range(y.shape[0]):
        assert kkt_violation(a, y[b], x[b].numpy(), lam) < 1e-11
    np.testing.assert_allclose(x.numpy(), ref, atol=1e-10)


@pytest.mark.parametrize("step", [1.0, 0.9, 0.5])
def test_ista_fista_iht_match_numpy_iterations(lasso, step):
    a, y, lam, _ = lasso
    at, yt = torch.tensor(a), torch.tensor(y)
    K = 25
    x, _ = solvers.ista(at, yt, lam, max_iter=K, tol=None, step=step)
    np.testing.assert_allclose(x.numpy(), ista_np(a, y, lam, K, step), rtol=0, atol=1e-12)
    x, _ = solvers.fista(at, yt, lam, max_iter=K, tol=None, step=step)
    np.testing.assert_allclose(x.numpy(), fista_np(a, y, lam, K, step), rtol=0, atol=1e-12)
    lam0 = 0.02
    x, _ = solvers.iht(at, yt, lam0, max_iter=K, tol=None, step=step)
    np.testing.assert_allclose(x.numpy(), iht_np(a, y, lam0, K, step), rtol=0, atol=1e-12)


def test_ista_objective_monotone_and_fista_faster(lasso):
    a, y, lam, _ = lasso
    at, yt = torch.tensor(a), torch.tensor(y)
    K = 30
    x_i, info_i = solvers.ista(at, yt, lam, max_iter=K, tol=None)
    x_f, info_f = solvers.fista(at, yt, lam, max_iter=K, tol=None)
    obj_i = info_i.objective.numpy()
    assert obj_i.shape == (y.shape[0], K)
    assert np.all(np.diff(obj_i, axis=1) <= 1e-12 * obj_i[:, :1])
    assert np.all(np.diff(obj_i, axis=1)[:, :5] < 0)  # strictly decreasing at first
    # the recorded objective is the Lasso objective of the iterates
    np.testing.assert_allclose(obj_i[:, -1], lasso_objective(a, y, x_i.numpy(), lam), rtol=1e-12)
    np.testing.assert_allclose(info_f.objective.numpy()[:, -1], lasso_objective(a, y, x_f.numpy(), lam),
                               rtol=1e-12)
    assert np.all(info_f.objective.numpy()[:, -1] < obj_i[:, -1])


def test_ista_converges_to_the_minimiser_too(lasso):
    a, y, lam, ref = lasso
    x, info = solvers.ista(torch.tensor(a), torch.tensor(y), lam, max_iter=20000, tol=1e-13)
    assert info.status == "converged"
    f_ref = lasso_objective(a, y, ref, lam)
    np.testing.assert_array_less(np.abs(lasso_objective(a, y, x.numpy(), lam) - f_ref) / f_ref, 1e-6)


def test_lam_zero_is_least_squares():
    r = np.random.default_rng(1)
    a = r.standard_normal((12, 5))
    y = r.standard_normal((2, 12))
    x, _ = solvers.fista(torch.tensor(a), torch.tensor(y), 0.0, max_iter=5000, tol=1e-14)
    ref = np.linalg.lstsq(a, y.T, rcond=None)[0].T
    np.testing.assert_allclose(x.numpy(), ref, atol=1e-9)


def test_large_lam_gives_zero():
    a, y, _ = lasso_problem(seed=2)
    lam = 1.01 * np.abs(y @ a).max()  # λ ≥ ‖Aᵀy‖∞  ⇒  x* = 0
    x, info = solvers.fista(torch.tensor(a), torch.tensor(y), lam, max_iter=100, tol=1e-10)
    assert torch.count_nonzero(x) == 0
    assert info.status == "converged"


# --------------------------------------------------------------------------- #
# SolverInfo
# --------------------------------------------------------------------------- #
def test_info_fields(lasso):
    a, y, lam, _ = lasso
    B = y.shape[0]
    at, yt = torch.tensor(a), torch.tensor(y)
    x, info = solvers.ista(at, yt, lam, max_iter=3000, tol=1e-8)
    assert info.iterations.shape == (B,) and info.iterations.dtype == torch.int64
    assert info.residual.shape == (B,) and info.converged.shape == (B,)
    assert info.converged.dtype == torch.bool
    assert info.status == "converged" and bool(info.converged.all())
    assert torch.all(info.residual <= 1e-8)
    run = info.objective.shape[1]
    assert info.objective.shape[0] == B
    assert int(info.iterations.max()) <= run <= 3000
    assert run < 3000  # stopped early
    assert info.tol == 1e-8

    x2, info2 = solvers.ista(at, yt, lam, max_iter=5, tol=1e-14)
    assert info2.status == "max_iter"
    assert torch.equal(info2.iterations, torch.full((B,), 5))
    assert info2.objective.shape == (B, 5)
    assert not bool(info2.converged.any())

    x3, info3 = solvers.ista(at, yt, lam, max_iter=7, tol=None)
    assert info3.status == "fixed" and info3.tol is None
    assert torch.equal(info3.iterations, torch.full((B,), 7))
    assert info3.objective.shape == (B, 7)
    # the residual is the relative change of the last iteration
    _, info6 = solvers.ista(at, yt, lam, max_iter=6, tol=None, return_trajectory=True)
    x5, x6 = info6.trajectory[-2].numpy(), info6.trajectory[-1].numpy()
    rel = np.linalg.norm(x6 - x5, axis=1) / np.linalg.norm(x5, axis=1)
    np.testing.assert_allclose(info6.residual.numpy(), rel, rtol=1e-10)
    assert len(info6.trajectory) == 6


def test_per_sample_stopping(lasso):
    a, y, lam, _ = lasso
    y0 = np.concatenate([np.zeros((1, y.shape[1])), y], axis=0)  # y = 0: x0 = 0 is optimal
    x, info = solvers.fista(torch.tensor(a), torch.tensor(y0), lam, max_iter=3000, tol=1e-10)
    it = info.iterations
    assert int(it[0]) == 1
    assert torch.all(it[1:] > it[0])
    assert torch.count_nonzero(x[0]) == 0
    # the other samples are not disturbed by the frozen one
    x_ref, _ = solvers.fista(torch.tensor(a), torch.tensor(y), lam, max_iter=3000, tol=1e-10)
    torch.testing.assert_close(x[1:], x_ref, rtol=0, atol=1e-12)
    # the frozen sample's objective stays constant after it stopped
    obj0 = info.objective[0]
    assert torch.all(obj0 == obj0[0])


# --------------------------------------------------------------------------- #
# IHT
# --------------------------------------------------------------------------- #
def test_iht_fixed_point(lasso):
    a, y, _, _ = lasso
    lam0 = 0.02
    x, info = solvers.iht(torch.tensor(a), torch.tensor(y), lam0, max_iter=5000, tol=1e-14)
    assert info.status == "converged"
    xs = x.numpy()
    L = np.linalg.norm(a, 2) ** 2
    v = xs - (xs @ a.T - y) @ a / L
    thr = np.sqrt(2 * lam0 / L)
    assert np.abs(np.abs(v) - thr).min() > 1e-4  # no entry sits on the threshold
    x_next = np.where(np.abs(v) > thr, v, 0.0)
    np.testing.assert_allclose(x_next, xs, rtol=0, atol=1e-10)
    # on its support x is the least-squares solution
    for b in range(y.shape[0]):
        s = xs[b] != 0
        ls = np.linalg.lstsq(a[:, s], y[b], rcond=None)[0]
        np.testing.assert_allclose(xs[b, s], ls, atol=1e-9)


@pytest.mark.parametrize("lam0", [0.005, 0.02, 0.1])
def test_iht_descent(lasso, lam0):
    """Blumensath & Davies (2008): with step < 1/‖A‖², ½‖y − Ax‖² + λ‖x‖₀ never increases."""
    a, y, _, _ = lasso
    x, info = solvers.iht(torch.tensor(a), torch.tensor(y), lam0, max_iter=200, tol=None, step=0.9)
    obj = info.objective.numpy()
    assert np.all(np.diff(obj, axis=1) <= 1e-12 * obj[:, :1])
    ref = 0.5 * np.sum((x.numpy() @ a.T - y) ** 2, 1) + lam0 * np.count_nonzero(x.numpy(), axis=1)
    np.testing.assert_allclose(obj[:, -1], ref, rtol=1e-12)


# --------------------------------------------------------------------------- #
# projected gradient
# --------------------------------------------------------------------------- #
def ls_problem(m=25, n=10, batch=3, seed=3):
    r = np.random.default_rng(seed)
    a = r.standard_normal((m, n)) / np.sqrt(m)
    x = r.uniform(-0.6, 1.6, (batch, n))
    y = x @ a.T + 0.05 * r.standard_normal((batch, m))
    return a, y


def test_projected_gradient_simplex():
    a, y = ls_problem()
    x, info = solvers.projected_gradient(torch.tensor(a), torch.tensor(y), project_simplex, max_iter=20000,
                                         tol=1e-14)
    xs = x.numpy()
    assert np.all(xs >= 0)
    np.testing.assert_allclose(xs.sum(1), 1.0, atol=1e-12)
    al = 1.0 / np.linalg.norm(a, 2) ** 2
    for b in range(y.shape[0]):
        g = a.T @ (a @ xs[b] - y[b])
        np.testing.assert_allclose(proj_simplex_np(xs[b] - al * g), xs[b], atol=1e-6)
    # the module form gives the same result
    x2, _ = solvers.projected_gradient(torch.tensor(a), torch.tensor(y), Simplex(), max_iter=20000, tol=1e-14)
    torch.testing.assert_close(x2, x, rtol=0, atol=1e-12)
    # and it is the constrained minimiser (scipy SLSQP)
    for b in range(y.shape[0]):
        res = optimize.minimize(lambda z: 0.5 * np.sum((a @ z - y[b]) ** 2), np.full(a.shape[1], 1 / a.shape[1]),
                                jac=lambda z: a.T @ (a @ z - y[b]), method="SLSQP",
                                bounds=[(0, None)] * a.shape[1],
                                constraints=[{"type": "eq", "fun": lambda z: z.sum() - 1,
                                              "jac": lambda z: np.ones_like(z)}],
                                options={"ftol": 1e-15, "maxiter": 1000})
        assert res.success
        np.testing.assert_allclose(xs[b], res.x, atol=1e-5)


def test_projected_gradient_box_matches_lbfgsb():
    a, y = ls_problem()
    x, info = solvers.projected_gradient(torch.tensor(a), torch.tensor(y), Box(0.0, 1.0), max_iter=20000,
                                         tol=1e-14)
    assert info.status == "converged"
    xs = x.numpy()
    assert np.all((xs >= 0) & (xs <= 1))
    al = 1.0 / np.linalg.norm(a, 2) ** 2
    n_active = 0
    for b in range(y.shape[0]):
        g = a.T @ (a @ xs[b] - y[b])
        np.testing.assert_allclose(np.clip(xs[b] - al * g, 0, 1), xs[b], atol=1e-6)
        res = optimize.minimize(lambda z: 0.5 * np.sum((a @ z - y[b]) ** 2), np.full(a.shape[1], 0.5),
                                jac=lambda z: a.T @ (a @ z - y[b]), method="L-BFGS-B",
                                bounds=[(0.0, 1.0)] * a.shape[1],
                                options={"ftol": 1e-16, "gtol": 1e-14, "maxiter": 10000})
        np.testing.assert_allclose(xs[b], res.x, atol=1e-6)
        n_active += int(np.sum((xs[b] == 0) | (xs[b] == 1)))
    assert n_active > 0  # the constraints matter in this problem


# --------------------------------------------------------------------------- #
# operator forms and input checks
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("solver", ["ista", "fista", "iht"])
def test_tensor_and_operator_agree(lasso, solver):
    a, y, lam, _ = lasso
    fn = getattr(solvers, solver)
    x1, i1 = fn(torch.tensor(a), torch.tensor(y), lam, max_iter=50, tol=None)
    x2, i2 = fn(MatrixOperator(torch.tensor(a)), torch.tensor(y), lam, max_iter=50, tol=None)
    assert torch.equal(x1, x2)
    assert torch.equal(i1.objective, i2.objective)


def test_float32_runs_in_float32(lasso):
    a, y, lam, _ = lasso
    x, info = solvers.fista(torch.tensor(a).float(), torch.tensor(y).float(), lam, max_iter=50, tol=None)
    assert x.dtype == torch.float32 and info.objective.dtype == torch.float32
    np.testing.assert_allclose(x.numpy(), fista_np(a, y, lam, 50), atol=1e-4)


def test_bad_inputs(lasso):
    a, y, lam, _ = lasso
    at = torch.tensor(a)
    y_nan = torch.tensor(y)
    y_nan[1, 3] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        solvers.ista(at, y_nan, lam)
    with pytest.raises(ValueError, match="NaN"):
        solvers.fista(at, y_nan, lam)
    y_inf = torch.tensor(y)
    y_inf[0, 0] = float("inf")
    with pytest.raises(ValueError, match="Inf"):
        solvers.iht(at, y_inf, lam)
    with pytest.raises(ValueError, match="y"):
        solvers.fista(at, torch.zeros(3, a.shape[0] + 1, dtype=DT), lam)
    with pytest.raises(ValueError, match="lam"):
        solvers.ista(at, torch.tensor(y), -0.1)
    with pytest.raises(ValueError, match="lam"):
        solvers.fista(at, torch.tensor(y), float("nan"))
    with pytest.raises(ValueError, match="max_iter"):
        solvers.ista(at, torch.tensor(y), lam, max_iter=0)
    with pytest.raises(TypeError):
        solvers.ista(at, torch.tensor(y, dtype=torch.complex128), lam)
    with pytest.raises(TypeError, match="project"):
        solvers.projected_gradient(at, torch.tensor(y), "simplex")


# --------------------------------------------------------------------------- #
# reference figures on the standard LISTA problem
# --------------------------------------------------------------------------- #
@pytest.fixture(scope="module")
def standard_problem():
    D = scipy.io.loadmat(str(ASSETS / "D.mat"))["D"]
    X = np.load(ASSETS / "xtest_n500_p10.npy")
    assert D.shape == (250, 500) and D.dtype == np.float64
    assert X.shape == (500, 1000)
    x = torch.from_numpy(X[:, :200].T.astype(np.float64))  # first 200 test signals (columns)
    A = torch.from_numpy(D)
    return A, x, x @ A.T


def test_reference_figures_ista_fista(standard_problem):
    A, x, y = standard_problem
    x_i, info_i = solvers.ista(A, y, 0.1, max_iter=16, tol=None)
    x_f, info_f = solvers.fista(A, y, 0.1, max_iter=16, tol=None)
    assert info_i.status == "fixed" and int(info_i.iterations[0]) == 16
    assert float(nmse(x_i, x)) == pytest.approx(-5.3, abs=0.3)
    assert float(nmse(x_f, x)) == pytest.approx(-10.1, abs=0.3)
