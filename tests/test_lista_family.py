"""Tests for the LISTA family: LISTA, LISTA-SS, LISTA-CP, LISTA-CPSS, TiLISTA, ALISTA, and
learned projected gradient.

Shapes and trajectories; untrained models against the classical iterations they start from
(ISTA, projected gradient) and their parameter counts; short trainings against the classical
iteration at equal depth; support selection against hand-computed outputs and an independent
numpy reference on every layer of the schedule; per-layer/shared parameter bookkeeping; operator
binding; the shipped configs.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from unroll import MatrixOperator, Problem, State, UnrolledOutput, solvers
from unroll.data import SparseRecoveryDataModule
from unroll.metrics import nmse
from unroll.models import (ALISTA, LISTA, LISTACP, LISTACPSS, LISTASS, LearnedPGD, TiLISTA, UnrolledModel,
                           analytic_weight)
from unroll.models.alista import ALISTAStep, WeightedProblem
from unroll.models.lista import LISTAStep
from unroll.models.lista_cp import CoupledStep
from unroll.parametrize import PositiveScalar
from unroll.prox import L1Ball, NonNegative

from test_models import small_problem  # noqa: E402  (a Gaussian A with unit-norm columns, sparse x, y = A x)

DT = torch.float64
CONFIGS = Path(__file__).resolve().parents[1] / "configs"

MODELS = ["LISTA", "LISTASS", "LISTACP", "LISTACPSS", "TiLISTA", "ALISTA", "LearnedPGD"]
SS_MODELS = ["LISTASS", "LISTACPSS", "TiLISTA", "ALISTA"]


# --------------------------------------------------------------------------- #
# helpers
# --------------------------------------------------------------------------- #
def build(name, K, a, lam=0.1, **kw):
    """Model ``name`` with ``K`` layers bound to ``a`` (LearnedPGD needs no operator)."""
    if name == "LISTA":
        return LISTA(K, operator=a, lam=lam, **kw)
    if name == "LISTASS":
        return LISTASS(K, operator=a, lam=lam, **kw)
    if name == "LISTACP":
        return LISTACP(K, operator=a, lam=lam, **kw)
    if name == "LISTACPSS":
        return LISTACPSS(K, operator=a, lam=lam, **kw)
    if name == "TiLISTA":
        return TiLISTA(K, operator=a, lam=lam, **kw)
    if name == "ALISTA":
        return ALISTA(K, operator=a, **kw)
    if name == "LearnedPGD":
        return LearnedPGD(K, **kw)
    raise AssertionError(name)


def n_params(model):
    return sum(p.numel() for p in model.parameters())


def set_positive(scalar: PositiveScalar, value: float) -> None:
    """Set a learnable softplus-parametrised scalar to ``value``."""
    scalar.set_(value)


def schedule_ref(K, p_step_tenths=12, p_max_tenths=130):
    """``p_k = min(1.2 k, 13)`` %, k = 1..K, from exact integers (tenths of a percent)."""
    return [min(p_step_tenths * k, p_max_tenths) / 10 for k in range(1, K + 1)]


def ss_reference(v: np.ndarray, thr: float, k_sel: int) -> np.ndarray:
    """Support selection by its definition, row by row and with a sort (not topk): the
    ``k_sel`` largest magnitudes that also exceed ``thr`` pass, the rest is soft-thresholded."""
    out = np.sign(v) * np.maximum(np.abs(v) - thr, 0.0)
    for i, row in enumerate(v):
        if k_sel == 0:
            continue
        top = np.argsort(-np.abs(row), kind="stable")[:k_sel]
        for j in top:
            if abs(row[j]) > thr:
                out[i, j] = row[j]
    return out


# --------------------------------------------------------------------------- #
# 1. shapes, dtypes, trajectories
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name", MODELS)
def test_shapes_dtype_and_trajectory(name, dtype):
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # the models' scalars are created in the default dtype
    try:
        a, _, y = small_problem(dtype=dtype)
        B, n = y.shape[0], a.shape[1]
        K = 4
        model = build(name, K, a)
        assert isinstance(model, UnrolledModel) and model.num_layers == K and model.is_bound
        # untrained, the layers are all alike: change the last one so that "repeats the last
        # layer" can be told from "repeats the first one"
        with torch.no_grad():
            for prm in model.unrolled.steps[-1].parameters():
                prm.add_(0.3 if prm.dim() == 0 else 0.05 * torch.ones_like(prm))
        x = model(y, a)
        assert isinstance(x, torch.Tensor) and x.shape == (B, n) and x.dtype == dtype
        assert torch.isfinite(x).all() and torch.count_nonzero(x) > 0

        full = model(y, a, return_trajectory=True)
        assert isinstance(full, UnrolledOutput)
        assert len(full.trajectory) == K
        assert all(t.shape == (B, n) and t.dtype == dtype for t in full.trajectory)
        assert torch.equal(full.trajectory[-1], full.x) and torch.equal(full.x, x)
        # consecutive iterates differ: the trajectory is not one tensor repeated
        assert not torch.equal(full.trajectory[0], full.trajectory[1])

        for k in (1, 2, K):
            part = model(y, a, num_iters=k, return_trajectory=True)
            assert len(part.trajectory) == k
            for t, ref in zip(part.trajectory, full.trajectory[:k]):
                assert torch.equal(t, ref)
            assert torch.equal(model(y, a, num_iters=k), full.trajectory[k - 1])

        # more than K: the last layer repeated
        more = model(y, a, num_iters=K + 3, return_trajectory=True)
        assert len(more.trajectory) == K + 3
        for t, ref in zip(more.trajectory[:K], full.trajectory):
            assert torch.equal(t, ref)
        last = model.unrolled.steps[-1]
        problem = model.problem(y, MatrixOperator(a))
        with torch.no_grad():
            for k in range(K, K + 3):
                expected = last(State(more.trajectory[k - 1]), problem).x
                torch.testing.assert_close(more.trajectory[k], expected, rtol=0, atol=0)
            first = model.unrolled.steps[0](State(more.trajectory[K - 1]), problem).x
            assert not torch.allclose(more.trajectory[K], first)
    finally:
        torch.set_default_dtype(old)


# --------------------------------------------------------------------------- #
# 2. untrained = classical; parameter counts
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("name,kw,lam", [
    ("LISTA", {}, 0.1),
    ("LISTA", {}, 0.03),
    ("LISTACP", {}, 0.1),
    ("LISTACP", {}, 0.4),
    ("TiLISTA", {"support_selection": False}, 0.1),
    ("TiLISTA", {"support_selection": False}, 0.4),
])
def test_untrained_is_ista(name, kw, lam, float64_default):
    a, _, y = small_problem(m=25, n=50, batch=8, dtype=DT)
    K = 7
    model = build(name, K, a, lam=lam, **kw)
    with torch.no_grad():
        out = model(y, a, return_trajectory=True)
    _, info = solvers.ista(a, y, lam, max_iter=K, tol=None, return_trajectory=True)
    assert len(info.trajectory) == K == len(out.trajectory)
    for k, (x_model, x_ista) in enumerate(zip(out.trajectory, info.trajectory)):
        assert x_model.dtype == DT
        assert torch.count_nonzero(x_ista) > 0, k  # the threshold does not kill everything
        torch.testing.assert_close(x_model, x_ista, rtol=0, atol=1e-10)
    # and the iterates are not those of another λ (the comparison can fail)
    _, other = solvers.ista(a, y, 2 * lam, max_iter=K, tol=None, return_trajectory=True)
    assert (out.trajectory[-1] - other.trajectory[-1]).abs().max() > 1e-4


@pytest.mark.parametrize("constraint", [NonNegative(), L1Ball(0.5)], ids=["nonneg", "l1ball"])
def test_untrained_learned_pgd_is_projected_gradient(constraint, float64_default):
    a, x, _ = small_problem(m=25, n=50, batch=8, dtype=DT)
    constraint = constraint.to(DT)
    x = x.abs()
    y = x @ a.T
    K = 7
    model = LearnedPGD(K, constraint=constraint)
    with torch.no_grad():
        out = model(y, a, return_trajectory=True)
    _, info = solvers.projected_gradient(a, y, constraint, max_iter=K, tol=None, return_trajectory=True)
    for x_model, x_pgd in zip(out.trajectory, info.trajectory):
        torch.testing.assert_close(x_model, x_pgd, rtol=0, atol=1e-10)
    assert bool(constraint.contains(out.x).all())
    if isinstance(constraint, L1Ball):  # the constraint is active
        np.testing.assert_allclose(out.x.abs().sum(1).numpy(), 0.5, rtol=1e-10)
    # an independent numpy loop, for the nonnegative case
    if isinstance(constraint, NonNegative):
        an, yn = a.numpy(), y.numpy()
        L = np.linalg.norm(an, 2) ** 2
        xn = np.zeros((y.shape[0], a.shape[1]))
        for k in range(K):
            xn = np.maximum(xn - (xn @ an.T - yn) @ an / L, 0.0)
            np.testing.assert_allclose(out.trajectory[k].numpy(), xn, rtol=1e-9, atol=1e-12)


def test_lista_cp_and_tilista_initial_weights(float64_default):
    a, _, _ = small_problem(dtype=DT)
    L = np.linalg.norm(a.numpy(), 2) ** 2
    cp = LISTACP(3, operator=a, lam=0.3)
    for st in cp.unrolled.steps:
        np.testing.assert_allclose(st.weight.detach().numpy(), a.numpy() / L, rtol=1e-12)
        assert st.theta().item() == pytest.approx(0.3 / L, rel=1e-12)
    assert len({st.weight.data_ptr() for st in cp.unrolled.steps}) == 3  # untied
    ti = TiLISTA(3, operator=a, lam=0.3)
    np.testing.assert_array_equal(ti.weight.detach().numpy(), a.numpy())
    assert ti.weight.data_ptr() != a.data_ptr()  # a copy, training it does not change A
    for st in ti.unrolled.steps:
        assert st.gamma().item() == pytest.approx(1 / L, rel=1e-12)
        assert st.theta().item() == pytest.approx(0.3 / L, rel=1e-12)


def test_ridge_starts_every_analytic_model_at_the_ridge_weight(float64_default):
    """``ridge`` reaches the analytic weight of every model that starts from it; it is refused
    with ISTA's start, where it would do nothing."""
    a, _, _ = small_problem(dtype=DT)
    w = analytic_weight(a, ridge=0.5)
    cp = LISTACP(2, operator=a, init="analytic", ridge=0.5)
    for st in cp.unrolled.steps:
        torch.testing.assert_close(st.weight.detach(), w, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(TiLISTA(2, operator=a, init="analytic", ridge=0.5).weight.detach(), w)
    torch.testing.assert_close(ALISTA(2, operator=a, ridge=0.5).weight, w)
    li = LISTA(2, operator=a, init="analytic", ridge=0.5)
    torch.testing.assert_close(li.unrolled.steps[0].w1.detach(), w.mT)
    assert not torch.allclose(w, analytic_weight(a))
    with pytest.raises(ValueError, match="ridge.*init='analytic'"):
        LISTACP(2, operator=a, ridge=0.5)
    with pytest.raises(ValueError, match="ridge"):
        ALISTA(2, ridge=-1.0)


def test_parameter_counts():
    a, _, _ = small_problem(m=12, n=30)
    m, n = a.shape
    K = 5
    assert n_params(LISTA(K, operator=a)) == K * (n * m + n * n + 2)  # + threshold and relaxation
    assert n_params(LISTA(K, operator=a, relaxation=False)) == K * (n * m + n * n + 1)
    assert n_params(LISTASS(K, operator=a)) == K * (n * m + n * n + 2)
    assert n_params(LISTACP(K, operator=a)) == K * (m * n + 2)
    assert n_params(LISTACP(K, operator=a, relaxation=False)) == K * (m * n + 1)
    assert n_params(LISTACPSS(K, operator=a)) == K * (m * n + 2)
    assert n_params(TiLISTA(K, operator=a)) == m * n + 2 * K
    assert n_params(TiLISTA(K, operator=a, support_selection=False)) == m * n + 2 * K
    assert n_params(ALISTA(K, operator=a)) == 2 * K
    assert n_params(LearnedPGD(K)) == K
    assert n_params(LearnedPGD(K, constraint=NonNegative())) == K
    assert n_params(LearnedPGD(K, learn_step=False)) == 0


# --------------------------------------------------------------------------- #
# 3. short trainings beat the classical iteration at equal depth
# --------------------------------------------------------------------------- #
TRAIN_K = 5
TRAIN_STEPS = 150


@pytest.fixture(scope="module")
def sparse_data():
    dm = SparseRecoveryDataModule(problem="gaussian", m=25, n=50, p=0.1, batch_size=64,
                                  train_batches=TRAIN_STEPS, val_size=8, test_size=500, seed=3)
    dm.setup("fit")
    op, test = dm.get_operator(), dm.test_split
    # ISTA at equal depth, with the best λ of a grid (a fair baseline)
    ista_db = {}
    for lam in (0.05, 0.1, 0.2, 0.4, 0.8):
        x_ista, _ = solvers.ista(op, test.y, lam, max_iter=TRAIN_K, tol=None)
        ista_db[lam] = float(nmse(x_ista, test.x))
    return dm, op, test, ista_db


def _train(model, dm, lr, nonneg=False):
    torch.manual_seed(0)
    op, A = dm.get_operator(), dm.A
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    for batch in dm.train_dataloader():
        x, y = batch.x, batch.y
        if nonneg:
            x = x.abs()
            y = x @ A.T
        loss = (model(y, op) - x).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model


@pytest.mark.parametrize("name,lr", [("LISTA", 1e-2), ("LISTASS", 1e-2), ("LISTACP", 3e-2), ("LISTACPSS", 3e-2),
                                     ("TiLISTA", 3e-2), ("ALISTA", 3e-2)])
def test_training_beats_ista(name, lr, sparse_data):
    dm, op, test, ista_db = sparse_data
    model = build(name, TRAIN_K, dm.A, lam=0.1)
    with torch.no_grad():
        init_db = float(nmse(model(test.y, op), test.x))
    if name in ("LISTA", "LISTACP"):  # at init they are ISTA with λ = 0.1
        assert init_db == pytest.approx(ista_db[0.1], abs=1e-3)
    _train(model, dm, lr)
    with torch.no_grad():
        trained_db = float(nmse(model(test.y, op), test.x))
    assert math.isfinite(trained_db)
    assert trained_db < min(ista_db.values()) - 1.0, (trained_db, ista_db)
    assert trained_db < init_db - 1.0


def test_training_learned_pgd_beats_projected_gradient(sparse_data):
    dm, op, test, _ = sparse_data
    x_test = test.x.abs()
    y_test = x_test @ dm.A.T
    x_pgd, _ = solvers.projected_gradient(op, y_test, NonNegative(), max_iter=TRAIN_K, tol=None)
    pgd_db = float(nmse(x_pgd, x_test))
    model = LearnedPGD(TRAIN_K, constraint=NonNegative())
    with torch.no_grad():
        assert float(nmse(model(y_test, op), x_test)) == pytest.approx(pgd_db, abs=1e-3)
    _train(model, dm, lr=0.1, nonneg=True)
    with torch.no_grad():
        x_hat = model(y_test, op)
    trained_db = float(nmse(x_hat, x_test))
    assert (x_hat >= 0).all()
    assert trained_db < pgd_db - 1.0, (trained_db, pgd_db)
    assert max(model.step_sizes()) > 1.2  # it learned longer steps than 1/L


# --------------------------------------------------------------------------- #
# 4. support selection
# --------------------------------------------------------------------------- #
def _identity_steps(n, m, thr, percent):
    """Each step class set up so that its pre-activation is ``v = x``, with the problem it reads."""
    a = torch.randn(m, n, generator=torch.Generator().manual_seed(5), dtype=DT)
    y = torch.randn(1, m, generator=torch.Generator().manual_seed(6), dtype=DT)
    plain = Problem.create(MatrixOperator(a), y, check=False)
    weighted = WeightedProblem.create(MatrixOperator(a), y, check=False, weight=torch.zeros(m, n, dtype=DT))
    lista = LISTAStep(torch.zeros(n, m, dtype=DT), torch.eye(n, dtype=DT), thr, percent)  # v = 0·y + I x
    cp = CoupledStep(torch.zeros(m, n, dtype=DT), thr, percent)  # v = x − 0ᵀ(Ax − y)
    al = ALISTAStep(0.7, thr, percent)  # v = x − γ 0ᵀ(Ax − y)
    return [("LISTAStep", lista, plain), ("CoupledStep", cp, plain), ("ALISTAStep", al, weighted)]


@pytest.mark.parametrize("case", ["tie_free", "top_k_below_threshold", "k_rounds_down", "no_selection"])
def test_support_selection_hand_computed(case, float64_default):
    if case == "tie_free":
        # N = 10, 30 % → k = 3: the top 3 magnitudes (3, 2, 1.5) pass; the rest shrinks by 0.5
        v = [3.0, -0.25, 0.75, -2.0, 0.125, 1.25, -1.0, 0.375, 0.0, -1.5]
        thr, percent = 0.5, 30.0
        passed = [0, 3, 9]
        expected = [3.0, 0.0, 0.25, -2.0, 0.0, 0.75, -0.5, 0.0, 0.0, -1.5]
    elif case == "top_k_below_threshold":
        # N = 8, 50 % → k = 4: the top 4 are 2, -1, -0.375, 0.25; the last two are below θ = 0.5
        v = [2.0, -0.375, 0.25, -1.0, 0.125, 0.0, -0.0625, 0.03125]
        thr, percent = 0.5, 50.0
        passed = [0, 3]
        expected = [2.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 0.0]
    elif case == "k_rounds_down":
        # N = 8, 37.4 % → floor(2.99) = 2: only 4 and -3 pass, 2.5 (third) is shrunk to 1.5
        v = [4.0, 0.5, 2.5, -3.0, -1.75, 0.25, 1.25, -2.25]
        thr, percent = 1.0, 37.4
        passed = [0, 3]
        expected = [4.0, 0.0, 1.5, -3.0, -0.75, 0.0, 0.25, -1.25]
    else:
        # N = 8, 12 % → floor(0.96) = 0: plain soft thresholding
        v = [4.0, 0.5, 2.5, -3.0, -1.75, 0.25, 1.25, -2.25]
        thr, percent = 1.0, 12.0
        passed = []
        expected = [3.0, 0.0, 1.5, -2.0, -0.75, 0.0, 0.25, -1.25]
    v_t = torch.tensor([v], dtype=DT)
    n = v_t.shape[1]
    for label, step, problem in _identity_steps(n, 4, thr, percent):
        assert step.percent == percent
        theta = step.theta().item()
        assert theta == pytest.approx(thr, rel=1e-14)
        with torch.no_grad():
            out = step(State(v_t), problem).x[0]
        assert out.shape == (n,) and out.dtype == DT
        for j in range(n):
            if j in passed:
                assert out[j].item() == v[j], (label, j)  # untouched, bit for bit
            else:
                want = math.copysign(max(abs(v[j]) - theta, 0.0), v[j])
                assert out[j].item() == pytest.approx(want, abs=1e-14), (label, j)
        np.testing.assert_allclose(out.numpy(), expected, rtol=0, atol=1e-14, err_msg=label)
        # the numpy reference of the definition agrees
        k_sel = math.floor(percent * n / 100)
        np.testing.assert_allclose(out.numpy(), ss_reference(np.array([v]), theta, k_sel)[0], rtol=0, atol=1e-14)


@pytest.mark.parametrize("name", SS_MODELS)
def test_support_selection_schedule_on_every_layer(name, float64_default):
    """Every layer of the model, with its own p_k, on random tie-free inputs: the entries passed
    are the top floor(p_k·N/100) that also exceed θ_k; the rest are soft-thresholded."""
    m, n, K = 60, 250, 12  # n = 250: p_9 = 10.8 % gives 27 entries (1.2·9 in floats is 10.7999…)
    a, _, y = small_problem(m=m, n=n, batch=4, dtype=DT)
    model = build(name, K, a)
    ref = schedule_ref(K)
    assert [st.percent for st in model.unrolled.steps] == pytest.approx(ref, rel=1e-12)
    assert model.unrolled.steps[-1].percent == 13.0
    # make the pre-activation v = x
    with torch.no_grad():
        if name in ("LISTASS",):
            for st in model.unrolled.steps:
                st.w1.zero_()
                st.w2.copy_(torch.eye(n, dtype=DT))
        elif name == "LISTACPSS":
            for st in model.unrolled.steps:
                st.weight.zero_()
        else:  # TiLISTA's parameter, ALISTA's buffer
            model.weight.zero_()
    op = MatrixOperator(a)
    problem = model.problem(y, op)
    g = torch.Generator().manual_seed(11)
    v = torch.randn(4, n, generator=g, dtype=DT)
    assert all(len(set(row.abs().tolist())) == n for row in v)  # no ties
    # θ = 0.1: every top-k entry exceeds it, so the count k itself is checked; θ = 1.9: about 14
    # of 250 N(0,1) entries exceed it, so on late layers some top-k entries are below θ
    straddles = 0
    for thr in (0.1, 1.9):
        for k, st in enumerate(model.unrolled.steps):
            set_positive(st.theta, thr)
            theta = st.theta().item()
            k_sel = (min(12 * (k + 1), 130) * n) // 1000
            with torch.no_grad():
                out = st(State(v), problem).x
            expected = ss_reference(v.numpy(), theta, k_sel)
            np.testing.assert_allclose(out.numpy(), expected, rtol=0, atol=1e-14, err_msg=f"layer {k}, θ={thr}")
            # count the passed entries directly: exactly the top-k that exceed θ
            passed = (out == v) & (v.abs() > theta)
            top = v.abs().topk(k_sel, dim=1).values
            assert passed.sum(1).tolist() == (top > theta).sum(1).tolist()
            if thr == 0.1:
                assert passed.sum(1).tolist() == [k_sel] * v.shape[0]
            straddles += int(((top > theta).any(1) & (top <= theta).any(1)).sum())
    assert straddles > 0  # the "top-k but below θ" case occurred


@pytest.mark.parametrize("name", MODELS)
def test_schedule_stored_on_steps(name):
    a, _, _ = small_problem()
    K = 14
    model = build(name, K, a)
    percents = [getattr(st, "percent", 0.0) for st in model.unrolled.steps]
    if name in SS_MODELS:
        assert percents == pytest.approx(schedule_ref(K), rel=1e-12)
        assert model.percents == pytest.approx(schedule_ref(K), rel=1e-12)
        assert percents[:2] == pytest.approx([1.2, 2.4]) and percents[-3:] == [13.0] * 3
        # another schedule
        custom = build(name, 5, a, p_step=2.0, p_max=7.0)
        assert [st.percent for st in custom.unrolled.steps] == pytest.approx([2.0, 4.0, 6.0, 7.0, 7.0])
        # switched off
        off = build(name, 3, a, support_selection=False)
        assert [st.percent for st in off.unrolled.steps] == [0.0] * 3
    elif name in ("LISTA", "LISTACP"):
        assert percents == [0.0] * K
    else:  # LearnedPGD: no thresholding at all
        assert not any(hasattr(st, "percent") for st in model.unrolled.steps)


# --------------------------------------------------------------------------- #
# 5. per-layer and shared parameters
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("name", MODELS)
def test_layer_and_shared_parameters(name):
    a, _, _ = small_problem(m=12, n=30)
    m, n = a.shape
    K = 4
    model = build(name, K, a)
    layers = [{id(p) for p in model.layer_parameters(k)} for k in range(K)]
    shared = [id(p) for p in model.shared_parameters()]
    everything = [id(p) for p in model.parameters()]
    per_layer = {"LISTA": n * m + n * n + 2, "LISTASS": n * m + n * n + 2, "LISTACP": m * n + 2,
                 "LISTACPSS": m * n + 2, "TiLISTA": 2, "ALISTA": 2, "LearnedPGD": 1}[name]
    for k in range(K):
        assert sum(p.numel() for p in model.layer_parameters(k)) == per_layer
        assert layers[k] == {id(p) for p in model.unrolled.steps[k].parameters()}
        for j in range(k):
            assert not layers[k] & layers[j], (k, j)  # untied: disjoint
        assert not layers[k] & set(shared)
    if name == "TiLISTA":
        assert shared == [id(model.weight)]
    else:
        assert shared == []
    union = set().union(*layers) | set(shared)
    assert union == set(everything) and len(everything) == len(set(everything))
    with pytest.raises(IndexError):
        model.layer_parameters(K)


# --------------------------------------------------------------------------- #
# 6. binding
# --------------------------------------------------------------------------- #
def test_bound_model_refuses_another_operator():
    a, _, y = small_problem()
    b, _, _ = small_problem(seed=7)
    model = LISTACPSS(3, operator=a)
    out = model(y, a)
    with pytest.raises(ValueError, match=r"^A:"):
        model(y, b)
    with pytest.raises(ValueError, match=r"^A:"):
        model(y, MatrixOperator(b))
    with pytest.raises(ValueError, match=r"^A:"):
        model.bind(b)
    a2 = a.clone()
    a2[3, 5] += 1e-3  # a single entry changed
    with pytest.raises(ValueError, match=r"^A:"):
        model(y, a2)
    # the same matrix (an equal copy) is accepted and gives the same result
    torch.testing.assert_close(model(y, a.clone()), out, rtol=0, atol=0)
    torch.testing.assert_close(model(y, MatrixOperator(a)), out, rtol=0, atol=0)


# --------------------------------------------------------------------------- #
# 7. configs
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("config,cls,ss", [
    ("lista", LISTA, False), ("lista_ss", LISTASS, True), ("lista_cp", LISTACP, False),
    ("lista_cpss", LISTACPSS, True), ("tilista", TiLISTA, True), ("learned_pgd", LearnedPGD, None),
])
def test_config_parses_and_builds_the_model(config, cls, ss, tmp_path, monkeypatch):
    from unroll.train.cli import UnrollCLI

    monkeypatch.chdir(tmp_path)  # nothing is written in the repository
    cli = UnrollCLI(args=["--config", str(CONFIGS / f"{config}.yaml"), f"--trainer.default_root_dir={tmp_path}"],
                    run=False)
    model = cli.model.model
    assert type(model) is cls
    assert model.num_layers == 16
    if ss is not None:
        assert model.lam == 0.4
        assert model.percents == (pytest.approx(schedule_ref(16), rel=1e-12) if ss else [0.0] * 16)
        # bound to a small operator, it runs, and its steps carry the schedule
        a, _, y = small_problem()
        model.bind(a)
        assert [st.percent for st in model.unrolled.steps] == model.percents
    else:
        assert isinstance(model.constraint, L1Ball) and float(model.constraint.radius) == 40.0
        assert model.step_sizes() == pytest.approx([1.0] * 16, rel=1e-6)
        a, _, y = small_problem()
    assert model(y, a).shape == (y.shape[0], a.shape[1])


def test_matrix_changed_in_place_is_another_operator():
    """The operator cached for a matrix argument is dropped when the matrix is modified in place."""
    torch.manual_seed(0)
    a = torch.randn(10, 20, dtype=torch.float64) / 10 ** 0.5
    model = LISTACP(3, operator=a.clone()).double()
    y = torch.randn(4, 10, dtype=torch.float64)
    model(y, a)
    a[3, 5] += 1.0
    with pytest.raises(ValueError, match="^A:"):
        model(y, a)


# --------------------------------------------------------------------------- #
# 7. parametrisation of the learned scalars; relaxation
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("beta,value", [(1.0, 0.05), (1.0, 3.0), (200.0, 0.05), (200.0, 1e-4)])
def test_softplus_beta_value_and_closed_form_gradient(beta, value, float64_default):
    s = PositiveScalar(value, learnable=True, beta=beta)
    v = s()
    assert v.item() == pytest.approx(value, rel=1e-12)
    v.backward()
    # d softplus_β(r)/dr = sigmoid(β r) = 1 − exp(−β·value)
    assert s.raw.grad.item() == pytest.approx(-math.expm1(-beta * value), rel=1e-9)
    s.set_(2 * value)
    assert s().item() == pytest.approx(2 * value, rel=1e-12)
    with pytest.raises(ValueError, match="beta"):
        PositiveScalar(value, learnable=True, beta=0.0)
    with pytest.raises(ValueError, match="value"):
        s.set_(-1.0)


def test_learned_scalars_move_like_plain_parameters_in_their_range(float64_default):
    """The family's thresholds and steps: β = 10/initial value, so d value / d raw ≥ 1 − e⁻¹⁰
    at the initial value and ≥ 1 − e⁻¹ at a tenth of it."""
    a, _, _ = small_problem(dtype=DT)
    for model in (LISTA(2, operator=a), LISTACP(2, operator=a), TiLISTA(2, operator=a), ALISTA(2, operator=a)):
        for st in model.unrolled.steps:
            for scalar in (st.theta, st.gamma):
                v0 = scalar().item()
                assert scalar.beta == pytest.approx(10 / v0, rel=1e-9)
                slope = -math.expm1(-scalar.beta * v0)
                assert slope > 1 - 1e-4
                scalar.set_(v0 / 10)
                assert -math.expm1(-scalar.beta * v0 / 10) == pytest.approx(1 - math.exp(-1))


def test_relaxed_layers_are_plain_layers_with_effective_weights(float64_default):
    """x + γ(W₁y + W₂x − x) is the plain LISTA layer with γW₁ and (1−γ)I + γW₂; x − γWᵀ(Ax − y)
    is the plain LISTA-CP layer with γW: relaxation does not change the set of networks."""
    a, x, y = small_problem(m=20, n=40, batch=6, dtype=DT)
    for name, ss in (("LISTA", False), ("LISTASS", True), ("LISTACP", False), ("LISTACPSS", True)):
        relaxed = build(name, 3, a)
        plain = build(name, 3, a, relaxation=False)
        g = torch.Generator().manual_seed(1)
        with torch.no_grad():
            for k, (sr, sp) in enumerate(zip(relaxed.unrolled.steps, plain.unrolled.steps)):
                sr.gamma.set_(0.6 + 0.5 * k)  # under- and over-relaxed layers
                for p in sr.parameters():
                    if p.numel() > 1:
                        p.add_(0.01 * torch.randn(p.shape, generator=g, dtype=p.dtype))
                sp.theta.set_(sr.theta().item())
                if name.startswith("LISTACP"):
                    sp.weight.copy_(sr.effective_weight())
                else:
                    w1, w2 = sr.effective_weights()
                    sp.w1.copy_(w1)
                    sp.w2.copy_(w2)
            out_r = relaxed(y, a, return_trajectory=True)
            out_p = plain(y, a, return_trajectory=True)
        assert relaxed.unrolled.steps[0].percent == (1.2 if ss else 0.0)
        for xr, xp in zip(out_r.trajectory, out_p.trajectory):
            torch.testing.assert_close(xr, xp, rtol=1e-10, atol=1e-12)
        # and γ matters: the relaxed network is not the untouched one
        assert (out_r.x - build(name, 3, a)(y, a)).abs().max() > 1e-3


# --------------------------------------------------------------------------- #
# 8. the analytic initialisation
# --------------------------------------------------------------------------- #
def test_analytic_init_is_alista_before_training(float64_default):
    """init="analytic": LISTA, LISTA-CP(SS) and TiLISTA start as ALISTA with γ = 1, θ = λ/L (an
    independent model: its weight is a buffer, its layers another class)."""
    a, _, y = small_problem(m=25, n=50, batch=8, dtype=DT)
    lam, K = 0.2, 5
    L = float(np.linalg.norm(a.numpy(), 2) ** 2)
    w = analytic_weight(a)
    for name, ss in (("LISTA", False), ("LISTASS", True), ("LISTACP", False), ("LISTACPSS", True),
                     ("TiLISTA", True)):
        model = build(name, K, a, lam=lam, init="analytic")
        ref = ALISTA(K, operator=a, gamma=1.0, theta=lam / L, support_selection=ss)
        with torch.no_grad():
            got, want = model(y, a, return_trajectory=True), ref(y, a, return_trajectory=True)
        for xg, xw in zip(got.trajectory, want.trajectory):
            torch.testing.assert_close(xg, xw, rtol=1e-9, atol=1e-11)
        st = model.unrolled.steps[0]
        if name.startswith("LISTACP"):
            torch.testing.assert_close(st.weight.detach(), w)
        elif name == "TiLISTA":
            torch.testing.assert_close(model.weight.detach(), w)
            assert st.gamma().item() == pytest.approx(1.0, rel=1e-12)
        else:
            torch.testing.assert_close(st.w1.detach(), w.T)
            torch.testing.assert_close(st.w2.detach(), torch.eye(50, dtype=DT) - w.T @ a)
    # and it is not the ISTA initialisation
    ista = build("LISTACP", K, a, lam=lam)
    assert (ista(y, a) - build("LISTACP", K, a, lam=lam, init="analytic")(y, a)).abs().max() > 1e-3
    with pytest.raises(ValueError, match="init"):
        build("LISTA", K, a, init="alista")
