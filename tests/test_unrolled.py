"""Tests for unroll.steps, unroll.unrolled and unroll.parametrize.

Iterations are compared with numpy re-implementations; gradients with finite differences
(``torch.autograd.gradcheck`` in float64).
"""

import math

import numpy as np
import pytest
import torch
from torch import nn

from unroll import (L1, FISTAStep, GradientStep, MatrixOperator, MomentumState, PositiveScalar, Problem,
                    ProxGradStep, State, Unrolled, UnrolledOutput)
from unroll.parametrize import inverse_softplus

DT = torch.float64



def make_problem(m=15, n=30, batch=4, seed=0, lam=0.05, zero_first=False):
    r = np.random.default_rng(seed)
    a = r.standard_normal((m, n)) / np.sqrt(m)
    x = r.standard_normal((batch, n)) * (r.random((batch, n)) < 0.2)
    y = x @ a.T + 0.01 * r.standard_normal((batch, m))
    if zero_first:
        y[0] = 0.0
    A = MatrixOperator(torch.tensor(a))
    return a, y, Problem.create(A, torch.tensor(y), reg=L1(lam))


def soft(v, thr):
    return np.sign(v) * np.maximum(np.abs(v) - thr, 0.0)


def n_params(module):
    return sum(p.numel() for p in module.parameters())


def learned_step(step=1.0, lam=0.05):
    return ProxGradStep(L1(lam, learnable=True), step=step, learn_step=True)


# --------------------------------------------------------------------------- #
# tied / untied
# --------------------------------------------------------------------------- #
def test_tied_shares_one_module():
    s = learned_step()
    u = Unrolled(s, num_iters=5)
    assert u.tied and len(u.steps) == 1 and u.num_iters == 5
    assert u.steps[0] is s
    assert all(u.step_at(k) is s for k in range(8))
    assert n_params(u) == n_params(s) == 2


def test_untied_copies_are_independent():
    s = learned_step()
    u = Unrolled(s, num_iters=4, tied=False)
    assert not u.tied and len(u.steps) == 4
    ids = {id(m) for m in u.steps}
    assert len(ids) == 4 and id(s) not in ids
    ptrs = {p.data_ptr() for p in u.parameters()}
    assert len(ptrs) == 8
    assert n_params(u) == 4 * n_params(s)
    assert all(math.isclose(m.step().item(), s.step().item()) for m in u.steps)  # same initial values
    with torch.no_grad():
        u.steps[1].step.raw.add_(1.0)
    assert u.steps[1].step().item() != u.steps[0].step().item()
    assert u.steps[2].step().item() == u.steps[0].step().item() == s.step().item()
    assert u.step_at(3) is u.steps[3] and u.step_at(10) is u.steps[3]


def test_untied_from_list():
    steps = [learned_step(step=0.5 + 0.1 * k) for k in range(3)]
    u = Unrolled(steps)
    assert u.num_iters == 3 and not u.tied
    assert all(u.steps[k] is steps[k] for k in range(3))
    assert n_params(u) == 6
    assert Unrolled(nn.ModuleList(steps)).num_iters == 3
    one = Unrolled([steps[0]], num_iters=7)  # one step in a list: tied
    assert one.tied and one.num_iters == 7


def test_untied_gradients_are_per_step():
    _, _, problem = make_problem()
    u = Unrolled([learned_step() for _ in range(3)])
    out = u(problem)
    out.x.square().sum().backward()
    grads = [m.step.raw.grad for m in u.steps]
    assert all(g is not None and torch.isfinite(g) and g != 0 for g in grads)
    assert len({float(g) for g in grads}) == 3  # each layer has its own gradient
    # each equals the central finite difference of the loss in that layer's step (float64 copy)
    import copy

    ud = copy.deepcopy(u).double()

    def loss() -> float:
        with torch.no_grad():
            return float(ud(problem).x.square().sum())

    h = 1e-6
    for k, g in enumerate(grads):
        raw = ud.steps[k].step.raw
        raw.data += h
        up = loss()
        raw.data -= 2 * h
        down = loss()
        raw.data += h
        assert float(g) == pytest.approx((up - down) / (2 * h), rel=1e-4)


def test_constructor_errors():
    s = learned_step()
    with pytest.raises(ValueError, match="num_iters"):
        Unrolled(s)
    with pytest.raises(ValueError, match="num_iters"):
        Unrolled(s, num_iters=0)
    with pytest.raises(ValueError, match="steps"):
        Unrolled([])
    with pytest.raises(ValueError, match="num_iters"):
        Unrolled([learned_step(), learned_step()], num_iters=3)
    _, _, problem = make_problem()
    with pytest.raises(ValueError, match="num_iters"):
        Unrolled(s, num_iters=3)(problem, num_iters=0)
    with pytest.raises(TypeError, match="prox"):
        ProxGradStep(nn.Linear(2, 2))
    with pytest.raises(TypeError, match="prox"):
        FISTAStep(nn.Identity())


# --------------------------------------------------------------------------- #
# iterations
# --------------------------------------------------------------------------- #
def ista_np(a, y, lam, steps, x0=None):
    L = np.linalg.norm(a, 2) ** 2
    x = np.zeros((y.shape[0], a.shape[1])) if x0 is None else x0.copy()
    out = []
    for s in steps:
        al = s / L
        x = soft(x - al * (x @ a.T - y) @ a, al * lam)
        out.append(x)
    return out


def test_trajectory_and_numpy_reference():
    a, y, problem = make_problem()
    K = 6
    out = Unrolled(ProxGradStep(L1(0.05)), num_iters=K)(problem, return_trajectory=True, record_objective=True)
    assert isinstance(out, UnrolledOutput)
    assert len(out.trajectory) == K
    assert torch.equal(out.trajectory[-1], out.x)
    ref = ista_np(a, y, 0.05, [1.0] * K)
    for k in range(K):
        np.testing.assert_allclose(out.trajectory[k].numpy(), ref[k], rtol=0, atol=1e-6)
    assert out.info.objective.shape == (y.shape[0], K)
    for k in range(K):
        torch.testing.assert_close(out.info.objective[:, k], problem.objective(out.trajectory[k]))
    assert Unrolled(ProxGradStep(L1(0.05)), num_iters=K)(problem).trajectory is None


def test_x0_is_used():
    a, y, problem = make_problem()
    x0 = np.random.default_rng(9).standard_normal((y.shape[0], a.shape[1]))
    out = Unrolled(ProxGradStep(L1(0.05)), num_iters=3)(problem, torch.tensor(x0))
    np.testing.assert_allclose(out.x.numpy(), ista_np(a, y, 0.05, [1.0] * 3, x0)[-1], atol=1e-6)


def test_more_iterations_than_trained_untied_repeats_last_step():
    a, y, problem = make_problem()
    sizes = [0.5, 0.8, 1.2]
    u = Unrolled([ProxGradStep(L1(0.05), step=s) for s in sizes])
    out = u(problem, num_iters=6, return_trajectory=True)
    assert len(out.trajectory) == 6
    ref = ista_np(a, y, 0.05, sizes + [sizes[-1]] * 3)
    for k in range(6):
        np.testing.assert_allclose(out.trajectory[k].numpy(), ref[k], rtol=0, atol=1e-6)
    short = u(problem, num_iters=2)
    np.testing.assert_allclose(short.x.numpy(), ref[1], atol=1e-6)


def test_more_iterations_improve_ista_objective():
    _, _, problem = make_problem()
    u = Unrolled(ProxGradStep(L1(0.05)), num_iters=5)
    f5 = problem.objective(u(problem).x)
    f20 = problem.objective(u(problem, num_iters=20).x)
    f100 = problem.objective(u(problem, num_iters=100).x)
    assert torch.all(f20 < f5) and torch.all(f100 < f20)


def test_gradient_step_is_gradient_descent():
    a, y, problem = make_problem(m=30, n=10)
    out = Unrolled(GradientStep(step=1.5), num_iters=4)(problem)
    L = np.linalg.norm(a, 2) ** 2
    x = np.zeros((y.shape[0], a.shape[1]))
    for _ in range(4):
        x = x - 1.5 / L * (x @ a.T - y) @ a
    np.testing.assert_allclose(out.x.numpy(), x, atol=1e-6)


# --------------------------------------------------------------------------- #
# early stopping
# --------------------------------------------------------------------------- #
def test_tol_stops_early_and_freezes_samples():
    _, y, problem = make_problem(zero_first=True, batch=5)
    problem = Problem.create(problem.op, problem.y * torch.tensor([[1.0], [1.0], [0.1], [3.0], [1.0]], dtype=DT),
                             reg=L1(0.05))
    n_max = 3000
    u = Unrolled(ProxGradStep(L1(0.05)), num_iters=10)
    out = u(problem, num_iters=n_max, tol=1e-7, return_trajectory=True)
    info = out.info
    it = info.iterations
    assert info.status == "converged" and bool(info.converged.all())
    assert int(it.max()) < n_max and len(out.trajectory) < n_max
    assert int(it[0]) == 1  # y = 0: x = 0 is a fixed point
    assert len(set(it.tolist())) > 2  # samples stopped at different iterations
    assert torch.all(info.residual <= 1e-7)
    for i in range(y.shape[0]):
        k = int(it[i])
        frozen = out.trajectory[k - 1][i]
        for later in out.trajectory[k:]:
            assert torch.equal(later[i], frozen)
        if k >= 2:  # before converging it was still moving
            assert not torch.equal(out.trajectory[k - 2][i], frozen)
    assert torch.equal(out.trajectory[-1], out.x)


def test_check_every_zero_runs_all_iterations():
    _, _, problem = make_problem(zero_first=True)
    u = Unrolled(ProxGradStep(L1(0.05)), num_iters=10)
    out = u(problem, num_iters=60, tol=1e-2, check_every=0, return_trajectory=True, record_objective=True)
    assert len(out.trajectory) == 60 and out.info.objective.shape[1] == 60
    assert bool(out.info.converged.all())
    assert torch.all(out.info.iterations < 60)


def test_tol_not_reached_is_max_iter():
    _, _, problem = make_problem()
    out = Unrolled(ProxGradStep(L1(0.05)), num_iters=3)(problem, tol=1e-15)
    assert out.info.status == "max_iter"
    assert torch.equal(out.info.iterations, torch.full((problem.batch_size,), 3))


# --------------------------------------------------------------------------- #
# learnable positive scalars
# --------------------------------------------------------------------------- #
def test_positive_scalar_fixed_is_exact():
    for v in [0.7, 1.0, 1e-3, 5.0]:
        p = PositiveScalar(v)
        assert float(p()) == v and p().dtype == torch.float64  # exact: kept in float64 until .to()
        assert not p.learnable and len(list(p.parameters())) == 0 and "fixed" in p.state_dict()


@pytest.mark.parametrize("v", [0.7, 1.0, 1e-3, 5.0, 30.0])
def test_positive_scalar_learnable_init(v):
    p = PositiveScalar(v, learnable=True)
    assert isinstance(p.raw, nn.Parameter)
    assert p().item() == pytest.approx(v, rel=1e-6)  # float32


@pytest.mark.parametrize("v", [0.7, 1.0, 1e-3, 5.0, 30.0])
def test_positive_scalar_learnable_init_float64(float64_default, v):
    p = PositiveScalar(v, learnable=True)
    assert p.raw.dtype == DT
    assert p().item() == pytest.approx(v, rel=1e-14)
    assert float(torch.nn.functional.softplus(inverse_softplus(v))) == pytest.approx(v, rel=1e-14)


def test_positive_scalar_vector_and_errors():
    p = PositiveScalar([0.5, 2.0], learnable=True)
    assert p().shape == (2,)
    torch.testing.assert_close(p(), torch.tensor([0.5, 2.0]))
    for bad in [0.0, -1.0, float("nan"), float("inf"), [1.0, -0.1]]:
        with pytest.raises(ValueError, match="step"):
            PositiveScalar(bad, name="step")


def test_learned_step_stays_positive_after_large_updates():
    s = ProxGradStep(L1(0.05), step=0.7, learn_step=True)
    assert isinstance(s.step.raw, nn.Parameter)
    assert s.step().item() == pytest.approx(0.7, rel=1e-6)
    opt = torch.optim.SGD(s.parameters(), lr=1.0)
    for _ in range(10):
        opt.zero_grad()
        (50.0 * s.step()).backward()  # pushes the step down, hard (the first update alone is about -34)
        opt.step()
    assert s.step.raw.item() < -20
    assert s.step().item() > 0
    _, _, problem = make_problem()
    out = Unrolled(s, num_iters=3)(problem)
    assert torch.isfinite(out.x).all()
    # and the same holds for a learnable threshold weight
    reg = L1(0.05, learnable=True)
    opt = torch.optim.SGD(reg.parameters(), lr=1.0)
    for _ in range(10):
        opt.zero_grad()
        (50.0 * reg.lam).backward()
        opt.step()
    assert reg.lam.item() > 0


# --------------------------------------------------------------------------- #
# gradients
# --------------------------------------------------------------------------- #
def test_gradcheck_through_unrolled_prox_grad():
    r = np.random.default_rng(4)
    m, n, lam = 6, 9, 0.05
    a = torch.tensor(r.standard_normal((m, n)) / np.sqrt(m))
    y = torch.tensor(r.standard_normal((2, m)), requires_grad=True)
    A = MatrixOperator(a)
    steps = [ProxGradStep(L1(lam), step=s) for s in (1.0, 0.8, 0.6)]
    u = Unrolled(steps)

    # away from the kinks: every pre-threshold value is far from ±threshold
    with torch.no_grad():
        problem = Problem.create(A, y)
        x = torch.zeros(2, n, dtype=DT)
        for st in steps:
            alpha = st.step_size(problem)
            v = x - alpha * problem.grad(x)
            thr = float(alpha) * float(st.prox.lam)
            assert float((v.abs() - thr).abs().min()) > 1e-4
            x = st.prox.prox(v, alpha)
        assert torch.count_nonzero(x) > 0  # some entries survive: a non-trivial Jacobian

    def f(yy):
        return u(Problem.create(A, yy)).x

    assert torch.autograd.gradcheck(f, (y,), eps=1e-6, atol=1e-8, rtol=1e-6)


def test_gradcheck_through_learned_parameters(float64_default):
    r = np.random.default_rng(5)
    m, n = 6, 9
    a = torch.tensor(r.standard_normal((m, n)) / np.sqrt(m))
    y = torch.tensor(r.standard_normal((2, m)))
    A = MatrixOperator(a)
    raw_step = torch.tensor([float(inverse_softplus(0.9)), float(inverse_softplus(0.7))], requires_grad=True)
    raw_lam = torch.tensor([float(inverse_softplus(0.05)), float(inverse_softplus(0.03))], requires_grad=True)

    def f(rs, rl):
        steps = [learned_step() for _ in range(2)]
        for k, st in enumerate(steps):
            del st.step.raw, st.prox.raw_lam
            st.step.raw, st.prox.raw_lam = rs[k], rl[k]  # plain tensors: differentiable inputs
        return Unrolled(steps)(Problem.create(A, y)).x

    assert torch.count_nonzero(f(raw_step, raw_lam)) > 0
    assert torch.autograd.gradcheck(f, (raw_step, raw_lam), eps=1e-6, atol=1e-8, rtol=1e-6)


# --------------------------------------------------------------------------- #
# FISTA state
# --------------------------------------------------------------------------- #
def test_fista_state():
    a, y, problem = make_problem()
    B, n = y.shape[0], a.shape[1]
    st = FISTAStep(L1(0.05))
    s0 = st.init_state(torch.zeros(B, n, dtype=DT), problem)
    assert isinstance(s0, MomentumState) and s0._fields == ("x", "z", "t")
    assert s0.t.shape == (B,) and torch.all(s0.t == 1) and s0.t.dtype == DT
    s1 = st(s0, problem)
    assert isinstance(s1, MomentumState)
    assert s1.t.shape == (B,) and s1.x.shape == (B, n) and s1.z.shape == (B, n)
    t1 = (1 + math.sqrt(5)) / 2
    torch.testing.assert_close(s1.t, torch.full((B,), t1, dtype=DT))
    assert torch.equal(s1.z, s1.x)  # first momentum coefficient (t0 − 1)/t1 = 0
    s2 = st(s1, problem)
    t2 = (1 + math.sqrt(1 + 4 * t1 * t1)) / 2
    torch.testing.assert_close(s2.t, torch.full((B,), t2, dtype=DT))
    torch.testing.assert_close(s2.z, s2.x + (t1 - 1) / t2 * (s2.x - s1.x))
    L = np.linalg.norm(a, 2) ** 2
    z = s1.z.numpy()
    np.testing.assert_allclose(s2.x.numpy(), soft(z - (z @ a.T - y) @ a / L, 0.05 / L), atol=1e-6)
    # the plain steps carry a State
    assert isinstance(ProxGradStep(L1(0.05)).init_state(s0.x, problem), State)


def test_fista_in_unrolled_with_tol_freezes_the_whole_state():
    _, _, problem = make_problem(zero_first=True)
    u = Unrolled(FISTAStep(L1(0.05)), num_iters=10)
    out = u(problem, num_iters=2000, tol=1e-9, return_trajectory=True)
    assert out.info.status == "converged"
    assert int(out.info.iterations[0]) == 1
    assert torch.count_nonzero(out.x[0]) == 0
    ref = u(problem, num_iters=int(out.info.iterations[1]))
    torch.testing.assert_close(out.x[1], ref.x[1], rtol=0, atol=0)


def test_x0_of_the_wrong_shape_is_named():
    op = MatrixOperator(torch.randn(4, 6, dtype=DT))
    problem = Problem.create(op, torch.randn(2, 4, dtype=DT))
    with pytest.raises(ValueError, match=r"x0: expected shape \(B, 6\)"):
        Unrolled(ProxGradStep(L1(0.1)), num_iters=3)(problem, torch.zeros(2, 5, dtype=DT))
