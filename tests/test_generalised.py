"""The generalised core: problems beyond least squares, iterations on any state, per-sample
operators, solver objects with one result type, tensor hyperparameters, nesting."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import unroll
from unroll import (ADMMStep, CGStep, FISTAStep, GradientStep, L1, MatrixOperator, Problem,
                    ProxGradStep, QuadraticProblem, SmoothProblem, SolverWarning, SquaredL2, Status, Unrolled)
from unroll.autodiff import GradMode
from unroll.linalg import CG, BiCGSTAB, Neumann

DT = torch.float64


def rng_tensor(seed, *shape):
    return torch.tensor(np.random.default_rng(seed).standard_normal(shape), dtype=DT)


# ------------------------------------------------------------------ per-sample operators
def test_fista_on_a_batched_operator_gives_each_sample_its_own_result():
    # three samples, three very different matrices: with a shared (max) Lipschitz constant the
    # small-norm samples would take tiny steps and end elsewhere after a fixed budget
    mats = torch.stack([rng_tensor(0, 8, 12), 10 * rng_tensor(1, 8, 12), 0.1 * rng_tensor(2, 8, 12)])
    x = rng_tensor(3, 3, 12) * (torch.rand(3, 12, generator=torch.Generator().manual_seed(0)) < 0.3)
    y = (mats @ x.unsqueeze(-1)).squeeze(-1)
    op = MatrixOperator(mats)
    assert op.per_sample
    problem = Problem.create(op, y, reg=L1(0.01))
    lip = problem.lipschitz
    assert lip.shape == (3,)
    for i in range(3):
        assert float(lip[i]) == pytest.approx(float(torch.linalg.matrix_norm(mats[i], ord=2)) ** 2, rel=1e-10)
    together, _ = unroll.solvers.fista(op, y, lam=0.01, max_iter=50, tol=None)
    for i in range(3):
        alone, _ = unroll.solvers.fista(mats[i], y[i:i + 1], lam=0.01, max_iter=50, tol=None)
        torch.testing.assert_close(together[i:i + 1], alone, rtol=1e-10, atol=1e-12)


def test_explicit_lipschitz_is_used_and_lazy():
    A = rng_tensor(4, 5, 7)
    op = MatrixOperator(A)
    y = rng_tensor(5, 2, 5)
    p = Problem.create(op, y, lipschitz=123.0)
    assert op._lipschitz_cache is None  # nothing computed yet
    assert torch.equal(p.lipschitz, torch.full((2,), 123.0, dtype=DT))
    assert op._lipschitz_cache is None  # the given constant is used, the operator never asked
    with pytest.raises(ValueError, match="lipschitz"):
        Problem.create(op, y, lipschitz=torch.ones(3)).lipschitz


# ------------------------------------------------------------------ hyperparameters are tensors
def test_tensor_lam_through_ista_has_the_finite_difference_gradient():
    A = rng_tensor(6, 10, 20) / np.sqrt(10)
    y = rng_tensor(7, 3, 10)
    w = rng_tensor(8, 3, 20)

    def loss(lam):
        x, _ = unroll.solvers.ista(A, y, lam, max_iter=3000, tol=1e-13)
        return (w * x).sum()

    lam = torch.tensor(0.05, dtype=DT, requires_grad=True)
    g, = torch.autograd.grad(loss(lam), lam)
    h = 1e-6
    with torch.no_grad():
        fd = (loss(torch.tensor(0.05 + h, dtype=DT)) - loss(torch.tensor(0.05 - h, dtype=DT))) / (2 * h)
    assert float(g) == pytest.approx(float(fd), rel=1e-4)
    assert abs(float(g)) > 1e-3  # not a vacuous zero


def test_per_feature_lam_is_a_weighted_lasso():
    A = rng_tensor(9, 6, 8) / np.sqrt(6)
    y = rng_tensor(10, 2, 6)
    lam = torch.linspace(0.01, 0.3, 8, dtype=DT)
    x, info = unroll.solvers.ista(A, y, lam, max_iter=5000, tol=1e-14)
    assert info.status == "converged"
    g = (x @ A.T - y) @ A  # optimality: -grad ∈ lam ⊙ ∂|x|
    on = x.abs() > 1e-9
    torch.testing.assert_close((-g)[on], (lam.expand_as(x) * torch.sign(x))[on], atol=1e-8, rtol=0)
    assert bool(((-g)[~on].abs() <= lam.expand_as(x)[~on] + 1e-8).all())
    with pytest.raises(ValueError, match="lam"):
        unroll.solvers.ista(A, y, torch.ones(5, dtype=DT))
    with pytest.raises(ValueError, match="lam"):
        unroll.solvers.ista(A, y, torch.tensor(-1.0, dtype=DT))


# ------------------------------------------------------------------ smooth problems
def test_smooth_problem_logistic_regression_matches_scikit_learn():
    sklearn = pytest.importorskip("sklearn.linear_model")
    r = np.random.default_rng(11)
    n, d, C = 200, 5, 1.0
    X = r.standard_normal((n, d))
    w_true = r.standard_normal(d)
    labels = (X @ w_true + 0.5 * r.standard_normal(n) > 0).astype(float)
    ref = sklearn.LogisticRegression(C=C, fit_intercept=False, tol=1e-12, max_iter=10000).fit(X, labels).coef_[0]

    Xt, yt = torch.tensor(X), torch.tensor(labels)

    def f(w, data):  # (B, d) -> (B,): C·Σ log-loss + ½‖w‖², scikit-learn's objective
        X_, y_ = data
        z = torch.einsum("bnd,bd->bn", X_, w)
        return C * (torch.nn.functional.softplus(z) - y_ * z).sum(1) + 0.5 * (w * w).sum(1)

    data = (Xt.unsqueeze(0), yt.unsqueeze(0))  # a batch of one problem
    L = C * float(torch.linalg.matrix_norm(Xt, ord=2)) ** 2 / 4 + 1.0
    problem = SmoothProblem(f, data, lipschitz=L, like=torch.zeros(1, d, dtype=DT))
    out = Unrolled(GradientStep(1.0), num_iters=20000)(problem, tol=1e-13)
    assert out.info.status == "converged"
    np.testing.assert_allclose(out.x[0].numpy(), ref, rtol=1e-5, atol=1e-7)
    # the vmapped gradient is the autograd gradient, sample by sample
    w = rng_tensor(12, 3, d)
    data3 = (Xt.expand(3, n, d), yt.expand(3, n))
    p3 = SmoothProblem(f, data3, lipschitz=L)
    wr = w.clone().requires_grad_()
    g_ref, = torch.autograd.grad(f(wr, data3).sum(), wr)
    torch.testing.assert_close(p3.grad(w), g_ref)
    # Hessian-vector products by forward-over-reverse match the closed form
    v = rng_tensor(13, 3, d)
    s = torch.sigmoid(torch.einsum("bnd,bd->bn", data3[0], w))
    H = C * torch.einsum("bnd,bn,bne->bde", data3[0], s * (1 - s), data3[0]) + torch.eye(d, dtype=DT)
    torch.testing.assert_close(p3.hvp(w, v), torch.einsum("bde,be->bd", H, v))
    lam_max = torch.linalg.eigvalsh(H)[:, -1]
    torch.testing.assert_close(p3.estimate_lipschitz(w, max_iter=200), lam_max, rtol=1e-6, atol=0)


def test_smooth_problem_gradient_reaches_hyperparameters_in_data():
    # f(x) = ½‖x − c‖² + ½ lam‖x‖²  → x* = c / (1 + lam); d x*/d lam = −c/(1+lam)²
    c = rng_tensor(14, 4, 3)
    lam = torch.tensor(0.7, dtype=DT, requires_grad=True)

    def f(x, data):
        c_, = data
        return 0.5 * ((x - c_) ** 2).sum(1) + 0.5 * lam * (x * x).sum(1)

    problem = SmoothProblem(f, (c,), lipschitz=1 + lam.detach(), like=c)
    x = Unrolled(GradientStep(1.0), num_iters=200)(problem, tol=1e-14, check_every=1, grad_mode="implicit").x
    torch.testing.assert_close(x, c / (1 + lam.detach()))
    g, = torch.autograd.grad(x.sum(), lam)
    torch.testing.assert_close(g, (-c / (1 + lam.detach()) ** 2).sum(), rtol=1e-8, atol=1e-10)


# ------------------------------------------------------------------ quadratic problems and CG steps
def test_unrolled_cg_steps_solve_a_quadratic_with_krylov_residuals():
    M = rng_tensor(15, 2, 12, 12)
    Q = M @ M.mT + 12 * torch.eye(12, dtype=DT)
    b = rng_tensor(16, 2, 12)
    problem = QuadraticProblem(MatrixOperator(Q), b)
    out = Unrolled(CGStep(), num_iters=40)(problem, tol=1e-10, record_residuals=True)
    torch.testing.assert_close(out.x, torch.linalg.solve(Q, b.unsqueeze(-1)).squeeze(-1), rtol=1e-8, atol=1e-10)
    rel = torch.linalg.vector_norm(b - (Q @ out.x.unsqueeze(-1)).squeeze(-1), dim=1) / torch.linalg.vector_norm(b, dim=1)
    assert bool((out.info.residual <= 1e-10).all()) and bool((rel <= 1e-9).all())
    assert out.info.residual_history.shape[0] == 2
    x_cg, info = unroll.cg(MatrixOperator(Q), b, tol=1e-10)
    assert (out.info.iterations == info.iterations).all()  # the same method, iteration for iteration
    assert problem.lipschitz.shape == (2,)
    torch.testing.assert_close(problem.lipschitz, torch.linalg.eigvalsh(Q)[:, -1], rtol=1e-10, atol=0)


# ------------------------------------------------------------------ any state, every gradient mode
def _admm_setup():
    A = rng_tensor(17, 20, 10) / np.sqrt(20)  # overdetermined: ADMM converges linearly, fast
    y = rng_tensor(18, 3, 20)
    return MatrixOperator(A), y


def _admm_grads(mode, iters=400):
    op, y = _admm_setup()
    torch.manual_seed(0)
    step = ADMMStep(L1(0.05, learnable=True), rho=0.2, learn_rho=True)
    layer = Unrolled(step, num_iters=iters)
    kw = dict(tol=1e-13, check_every=1) if mode in ("implicit", "jfb") else {}
    gm = GradMode(mode, forward_tol=1e-13, backward_tol=1e-12, backward_max_iter=2000) if mode != "checkpoint" \
        else GradMode("checkpoint")
    out = layer(Problem.create(op, y), grad_mode=gm, **kw)
    w = rng_tensor(19, 3, 10)
    (w * out.x).sum().backward()
    return out, [p.grad.clone() for p in step.parameters()]


def test_admm_three_field_state_under_every_gradient_mode():
    ref_out, ref = _admm_grads("full")
    assert isinstance(ref_out.state, unroll.ADMMState)
    assert ref_out.info.status == "fixed"
    g_lam, g_rho = ref  # the Lasso solution depends on λ, but at convergence not on ADMM's ρ
    assert float(g_lam.abs()) > 1e-3 and float(g_rho.abs()) < 1e-8
    for mode in ("checkpoint", "implicit"):
        out, grads = _admm_grads(mode)
        torch.testing.assert_close(out.x, ref_out.x, rtol=1e-9, atol=1e-10)
        for g, r in zip(grads, ref):
            torch.testing.assert_close(g, r, rtol=1e-5, atol=1e-8)
    out, _ = _admm_grads("implicit")
    assert out.info.backward_status == "converged"
    # jfb runs on the same state and gives a gradient that points the same way (not the same one)
    out, grads = _admm_grads("jfb")
    torch.testing.assert_close(out.x, ref_out.x, rtol=1e-9, atol=1e-10)
    cos = sum(float((g * r).sum()) for g, r in zip(grads, ref)) / (
        sum(float(g.square().sum()) for g in grads) ** 0.5 * sum(float(r.square().sum()) for r in ref) ** 0.5)
    assert cos > 0


def test_implicit_backward_solver_objects_agree_on_a_symmetric_problem():
    # gradient descent on a ridge problem: J = I − α(AᵀA + λI) is symmetric, so CG applies
    A = rng_tensor(20, 12, 6) / np.sqrt(12)
    y = rng_tensor(21, 4, 12)
    grads = {}
    for solver in (CG(tol=1e-12, max_iter=500), BiCGSTAB(tol=1e-12, max_iter=500), Neumann(tol=1e-12, max_iter=5000)):
        lam = torch.tensor(0.3, dtype=DT, requires_grad=True)
        reg = SquaredL2(lam)
        problem = SmoothProblem(lambda x, data: 0.5 * ((x @ A.T - data) ** 2).sum(1) + reg.value(x), y,
                                lipschitz=float(torch.linalg.matrix_norm(A, ord=2)) ** 2 + 0.3, like=y.new_zeros(4, 6))
        out = Unrolled(GradientStep(1.0), num_iters=5000)(problem, tol=1e-14, check_every=5,
                                                          grad_mode=GradMode("implicit", backward_solver=solver))
        out.x.square().sum().backward()
        assert out.info.backward.method == solver.name and out.info.backward_status == "converged"
        grads[solver.name] = lam.grad.clone()
    # closed form: x = (AᵀA + λI)⁻¹Aᵀy, dx/dλ = −(AᵀA + λI)⁻¹ x
    H = A.T @ A + 0.3 * torch.eye(6, dtype=DT)
    x = torch.linalg.solve(H, (y @ A).T).T
    dx = -torch.linalg.solve(H, x.T).T
    exact = (2 * x * dx).sum()
    for name, g in grads.items():
        torch.testing.assert_close(g, exact, rtol=1e-7, atol=1e-10, msg=name)
    torch.testing.assert_close(grads["cg"], grads["bicgstab"], rtol=1e-9, atol=1e-12)


def test_fista_state_is_refused_by_implicit_and_trajectories_cover_every_field():
    op, y = _admm_setup()
    layer = Unrolled(FISTAStep(L1(0.05)), num_iters=5)
    with pytest.raises(TypeError, match="fixed-point map"):
        layer(Problem.create(op, y), grad_mode="implicit")
    out = layer(Problem.create(op, y), return_states=True, return_trajectory=True)
    assert len(out.states) == 5 and all(isinstance(s, unroll.MomentumState) for s in out.states)
    assert torch.equal(out.states[-1].x, out.x) and torch.equal(out.trajectory[-1], out.x)
    assert out.states[-1].t.shape == (y.shape[0],)


def test_freezing_works_on_every_field_and_warm_start_from_a_state():
    op, y = _admm_setup()
    layer = Unrolled(FISTAStep(L1(0.05)), num_iters=3000)
    out = layer(Problem.create(op, y), tol=1e-9, check_every=1)
    assert out.info.status == "converged"
    its = out.info.iterations
    assert int(its.min()) < int(its.max())  # samples stopped at different iterations, frozen per field
    again = layer(Problem.create(op, y), state0=out.state, num_iters=1)
    torch.testing.assert_close(again.x, out.x, rtol=1e-5, atol=1e-6)  # one more step from the state


# ------------------------------------------------------------------ nesting
def test_nested_unrolled_trains():
    torch.manual_seed(0)
    op, y_clean = _admm_setup()
    x_true = rng_tensor(22, 64, 10) * (torch.rand(64, 10) < 0.3)
    y = op(x_true)
    blocks = [Unrolled(ProxGradStep(L1(0.1, learnable=True), learn_step=True), num_iters=4).as_step()
              for _ in range(3)]
    outer = Unrolled(blocks)  # a cascade: 3 blocks of 4 inner iterations, each block its own weights
    opt = torch.optim.Adam(outer.parameters(), lr=0.02)
    losses = []
    for _ in range(60):
        opt.zero_grad()
        out = outer(Problem.create(op, y))
        loss = ((out.x - x_true) ** 2).mean()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert len(list(outer.parameters())) == 6
    assert losses[-1] < 0.85 * losses[0]
    assert all(p.grad is not None and float(p.grad.abs()) > 0 for p in outer.parameters())
    # the cascade is the same computation as 12 flat iterations with the blocks' weights
    flat = Unrolled([b.unrolled.steps[0] for b in blocks for _ in range(4)])
    torch.testing.assert_close(flat(Problem.create(op, y)).x, outer(Problem.create(op, y)).x)


# ------------------------------------------------------------------ solver info, statuses, checks
def test_cg_reports_an_indefinite_matrix():
    Q = torch.diag(torch.tensor([3.0, 1.0, -2.0, 0.5], dtype=DT))
    b = torch.ones(2, 4, dtype=DT)
    with pytest.warns(SolverWarning, match="breakdown"):
        x, info = unroll.cg(MatrixOperator(Q), b, tol=1e-10)
    assert info.status == Status.BREAKDOWN == "breakdown" and bool(info.breakdown.all())
    with pytest.raises(RuntimeError, match="not symmetric positive definite"):
        unroll.cg(MatrixOperator(Q), b, tol=1e-10, on_failure="raise")
    # a non-symmetric matrix whose iterates drift upwards in φ is caught too
    N = torch.tensor([[1.0, 4.0], [-4.0, 1.0]], dtype=DT) @ torch.tensor([[1.0, 0.0], [3.0, 1.0]], dtype=DT)
    _, info = unroll.cg(MatrixOperator(N), torch.tensor([[1.0, -1.0]], dtype=DT), tol=1e-12, max_iter=2,
                        on_failure="ignore")
    assert info.status in ("breakdown", "max_iter")  # never "converged" with a wrong answer
    # an SPD matrix never breaks down, even with a tiny budget on an ill-conditioned system
    S = torch.diag(torch.logspace(0, 8, 30, dtype=DT))
    _, info = unroll.cg(S, torch.ones(3, 30, dtype=DT), max_iter=3)
    assert info.status == "max_iter" and not bool(info.breakdown.any())


def test_bad_tolerances_are_refused():
    op, y = _admm_setup()
    for bad in (-1e-3, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="tol"):
            unroll.solvers.ista(op, y, 0.1, tol=bad)
        with pytest.raises(ValueError, match="tol"):
            Unrolled(ProxGradStep(L1(0.1)), num_iters=3)(Problem.create(op, y), tol=bad)
        with pytest.raises(ValueError, match="tol"):
            unroll.cg(op.normal, op.adjoint(y), tol=bad)
        with pytest.raises(ValueError, match="backward_tol"):
            GradMode("implicit", backward_tol=bad)
        with pytest.raises(ValueError, match="tol"):
            CG(tol=bad)


def test_empty_batch_gives_an_empty_result():
    op, _ = _admm_setup()
    y = torch.zeros(0, 20, dtype=DT)
    for solver in (unroll.solvers.ista, unroll.solvers.fista, unroll.solvers.iht):
        x, info = solver(op, y, 0.1, max_iter=5)
        assert x.shape == (0, 10) and info.iterations.shape == (0,)
    for reg in (unroll.L1Ball(1.0), unroll.Simplex(1.0), unroll.L2Ball(2.0)):
        x, _ = unroll.solvers.projected_gradient(op, y, reg, max_iter=3)
        assert x.shape == (0, 10)
    x, info = unroll.cg(op.normal, torch.zeros(0, 10, dtype=DT))
    assert x.shape == (0, 10) and info.status == "converged"


def test_one_info_type_and_status_enum_everywhere():
    op, y = _admm_setup()
    _, i1 = unroll.solvers.fista(op, y, 0.1, max_iter=10)
    _, i2 = unroll.cg(op.normal, op.adjoint(y))
    i3 = Unrolled(ProxGradStep(L1(0.1)), num_iters=4)(Problem.create(op, y)).info
    _, i4 = Neumann(tol=1e-8, max_iter=3).solve(lambda v: 0.5 * v, torch.ones(2, 3, dtype=DT))
    for info in (i1, i2, i3, i4):
        assert isinstance(info, unroll.SolverInfo) and isinstance(info.status, Status)
    assert i3.status == "fixed" and i2.status == "converged" and i4.status == "max_iter"
    assert [str(s) for s in i1.sample_status()] == [str(i1.status)] * y.shape[0] or i1.status == "max_iter"
    hist = unroll.cg(op.normal, op.adjoint(y), record_history=True)[1].residual_history
    assert hist.shape[0] == y.shape[0] and bool((hist[:, -1] <= 1e-6).all())


def test_nan_input_is_named_by_the_divergence_check():
    # models check y's shape and dtype up front and its values only when the iterations come out
    # non-finite (one host sync per call, shared with the divergence check)
    from unroll.models import ALISTA, LearnedISTA

    op = MatrixOperator(rng_tensor(24, 10, 20) / np.sqrt(10))  # wide: ALISTA's weight exists
    y = rng_tensor(25, 3, 10)
    y[1, 3] = float("nan")
    for model in (LearnedISTA(4).double(), ALISTA(4, op).double()):
        with pytest.raises(ValueError, match=r"y: expected finite values, got 1 NaN"):
            model(y, op)
    c = rng_tensor(23, 2, 3)
    c[0, 0] = float("inf")
    problem = SmoothProblem(lambda x, d: 0.5 * ((x - d) ** 2).sum(1), c, lipschitz=1.0, like=c)
    with pytest.raises(ValueError, match=r"data: expected finite values, got 0 NaN and 1 Inf"):
        Unrolled(GradientStep(1.0), num_iters=3)(problem)
