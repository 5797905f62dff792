"""Tests for unroll.models: LearnedISTA, LearnedIHT, LISTA, ALISTA.

Untrained models against the classical solvers they start from, ALISTA's analytic weight
against the published reference and its own optimality conditions, short trainings against
ISTA, and the input checks of ``model(y, A)``.
"""

from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch

from unroll import MatrixOperator, UnrolledOutput, solvers
from unroll.metrics import nmse
from unroll.models import ALISTA, LISTA, LearnedIHT, LearnedISTA, UnrolledModel, analytic_weight
from unroll.models.alista import support_selection_schedule

DT = torch.float64
ASSETS = Path(__file__).resolve().parents[1] / "data" / "assets" / "lista"



def small_problem(m=20, n=40, batch=6, p=0.1, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(m, n, generator=g, dtype=DT) / m ** 0.5
    a = a / a.norm(dim=0, keepdim=True)
    x = torch.randn(batch, n, generator=g, dtype=DT) * (torch.rand(batch, n, generator=g, dtype=DT) < p)
    return a.to(dtype), x.to(dtype), (x @ a.T).to(dtype)


def n_params(model):
    return sum(p.numel() for p in model.parameters())


MODELS = ["LearnedISTA", "LearnedIHT", "LISTA", "ALISTA"]


def build(name, K, a):
    if name == "LearnedISTA":
        return LearnedISTA(K, lam=0.1)
    if name == "LearnedIHT":
        return LearnedIHT(K, lam=0.01)
    if name == "LISTA":
        return LISTA(K, operator=a, lam=0.1)
    return ALISTA(K, operator=a)


# --------------------------------------------------------------------------- #
# shapes and trajectories
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("name", MODELS)
def test_output_shapes_and_trajectory(name):
    a, x, y = small_problem()
    K = 4
    model = build(name, K, a)
    assert isinstance(model, UnrolledModel) and model.num_layers == K
    out = model(y, a)
    assert isinstance(out, torch.Tensor) and out.shape == (y.shape[0], a.shape[1]) and out.dtype == torch.float32
    full = model(y, a, return_trajectory=True)
    assert isinstance(full, UnrolledOutput)
    assert len(full.trajectory) == K
    assert torch.equal(full.trajectory[-1], full.x)
    torch.testing.assert_close(full.x, out, rtol=0, atol=0)
    assert all(t.shape == out.shape for t in full.trajectory)
    # the operator form gives the same result
    torch.testing.assert_close(model(y, MatrixOperator(a)), out, rtol=0, atol=0)
    # more layers at inference (the last one repeated)
    more = model(y, a, num_iters=K + 3, return_trajectory=True)
    assert len(more.trajectory) == K + 3
    torch.testing.assert_close(more.trajectory[K - 1], out, rtol=0, atol=0)


# --------------------------------------------------------------------------- #
# untrained = classical
# --------------------------------------------------------------------------- #
def test_untrained_learned_ista_is_ista_exactly():
    a, _, y = small_problem()
    for K in (1, 5, 12):
        x_model = LearnedISTA(K, lam=0.1)(y, a)
        x_ista, _ = solvers.ista(a, y, 0.1, max_iter=K, tol=None)
        assert torch.equal(x_model, x_ista)


def test_untrained_learned_ista_is_ista_float64(float64_default):
    a, _, y = small_problem(dtype=DT)
    model = LearnedISTA(8, lam=0.1)
    x_ista, _ = solvers.ista(a, y, 0.1, max_iter=8, tol=None)
    torch.testing.assert_close(model(y, a), x_ista, rtol=0, atol=1e-13)
    # a different step and λ too
    model = LearnedISTA(8, lam=0.05, step=0.7)
    x_ista, _ = solvers.ista(a, y, 0.05, max_iter=8, tol=None, step=0.7)
    torch.testing.assert_close(model(y, a), x_ista, rtol=0, atol=1e-13)


def test_untrained_learned_iht_is_iht():
    a, _, y = small_problem()
    x_model = LearnedIHT(6, lam=0.01)(y, a)
    x_iht, _ = solvers.iht(a, y, 0.01, max_iter=6, tol=None)
    assert torch.equal(x_model, x_iht)


def test_untrained_lista_is_ista(float64_default):
    a, _, y = small_problem(dtype=DT)
    for K in (1, 6):
        model = LISTA(K, operator=a, lam=0.1)
        x_ista, _ = solvers.ista(a, y, 0.1, max_iter=K, tol=None)
        x_lista = model(y, a)
        assert x_lista.dtype == DT
        assert torch.count_nonzero(x_ista) > 0
        torch.testing.assert_close(x_lista, x_ista, rtol=0, atol=1e-10)


def test_lista_initial_weights(float64_default):
    a, _, _ = small_problem(dtype=DT)
    model = LISTA(3, operator=a, lam=0.1)
    L = np.linalg.norm(a.numpy(), 2) ** 2
    for st in model.unrolled.steps:
        np.testing.assert_allclose(st.w1.detach().numpy(), a.numpy().T / L, rtol=1e-12, atol=1e-15)
        np.testing.assert_allclose(st.w2.detach().numpy(), np.eye(a.shape[1]) - a.numpy().T @ a.numpy() / L,
                                   rtol=1e-12, atol=1e-15)
        assert st.theta().item() == pytest.approx(0.1 / L, rel=1e-12)
    # untied: every layer has its own matrices
    assert len({st.w1.data_ptr() for st in model.unrolled.steps}) == 3


# --------------------------------------------------------------------------- #
# ALISTA
# --------------------------------------------------------------------------- #
@pytest.fixture(scope="module")
def dmat():
    return torch.from_numpy(scipy.io.loadmat(str(ASSETS / "D.mat"))["D"])


def test_analytic_weight_matches_reference(dmat):
    W_ref = np.load(ASSETS / "W.npy")
    assert W_ref.shape == (250, 500)
    W = analytic_weight(dmat)
    assert W.shape == dmat.shape and W.dtype == DT
    rel = np.linalg.norm(W.numpy() - W_ref) / np.linalg.norm(W_ref)
    assert rel < 1e-2
    np.testing.assert_allclose(np.diag(W.numpy().T @ dmat.numpy()), 1.0, atol=1e-6)
    # the reference (computed iteratively) is feasible to about 3e-3 only; rescaled to be
    # feasible, it scores no better than ours on the objective ‖WᵀA‖_F
    d_ref = np.diag(W_ref.T @ dmat.numpy())
    np.testing.assert_allclose(d_ref, 1.0, atol=5e-3)
    W_feas = W_ref / d_ref
    assert np.linalg.norm(W.numpy().T @ dmat.numpy()) <= np.linalg.norm(W_feas.T @ dmat.numpy()) * (1 + 1e-12)


def test_analytic_weight_optimality():
    """min ‖WᵀA‖_F s.t. diag(WᵀA) = 1: feasible, and every feasible perturbation costs more."""
    r = np.random.default_rng(1)
    a = r.standard_normal((12, 30)) / np.sqrt(12)
    W = analytic_weight(torch.tensor(a)).numpy()
    np.testing.assert_allclose(np.diag(W.T @ a), 1.0, atol=1e-12)
    # numpy closed form: w_i ∝ (AAᵀ)⁻¹ a_i
    v = np.linalg.solve(a @ a.T, a)
    np.testing.assert_allclose(W, v / np.sum(a * v, axis=0), rtol=1e-10, atol=1e-12)
    f0 = np.sum((W.T @ a) ** 2)
    for _ in range(20):
        p = r.standard_normal(W.shape)
        p -= a * (np.sum(a * p, axis=0) / np.sum(a * a, axis=0))  # a_iᵀ p_i = 0: stays feasible
        np.testing.assert_allclose(np.diag((W + 1e-3 * p).T @ a), 1.0, atol=1e-12)
        assert np.sum(((W + 1e-3 * p).T @ a) ** 2) > f0
    with pytest.raises(ValueError, match="a:"):
        analytic_weight(torch.tensor(a).T.contiguous())  # A Aᵀ singular (more rows than columns)
    with pytest.raises(ValueError, match="a:"):
        analytic_weight(torch.zeros(3, dtype=DT))


def test_analytic_weight_with_ridge():
    """min ‖WᵀA‖²_F + μ‖W‖²_F s.t. diag(WᵀA) = 1: optimal against feasible perturbations; the
    noise gain ‖w_i‖ falls with μ towards ISTA's direction a_i/‖a_i‖² (gain 1/‖a_i‖)."""
    r = np.random.default_rng(2)
    a = r.standard_normal((12, 30)) / np.sqrt(12)
    at = torch.tensor(a)

    def objective(w, mu):
        return np.sum((w.T @ a) ** 2) + mu * np.sum(w ** 2)

    gains = []
    for mu in (0.0, 0.1, 1.0, 10.0):
        W = analytic_weight(at, ridge=mu).numpy()
        np.testing.assert_allclose(np.diag(W.T @ a), 1.0, atol=1e-12)
        f0 = objective(W, mu)
        for _ in range(10):
            p = r.standard_normal(W.shape)
            p -= a * (np.sum(a * p, axis=0) / np.sum(a * a, axis=0))  # stays feasible
            assert objective(W + 1e-3 * p, mu) > f0
        gains.append(np.linalg.norm(W, axis=0))
    assert all(np.all(g1 < g0) for g0, g1 in zip(gains, gains[1:]))
    ista = a / np.sum(a * a, axis=0)
    np.testing.assert_allclose(analytic_weight(at, ridge=1e9).numpy(), ista, rtol=1e-6, atol=1e-9)
    # a ridge makes the weight exist even where A Aᵀ is singular (more rows than columns)
    tall = torch.tensor(r.standard_normal((30, 12)))
    assert torch.isfinite(analytic_weight(tall, ridge=1.0)).all()
    for bad in (-1.0, float("nan"), True, "1"):
        with pytest.raises(ValueError, match="ridge"):
            analytic_weight(at, ridge=bad)


def test_alista_weight_is_a_buffer_and_state_dict_roundtrip():
    a, x, y = small_problem()
    model = ALISTA(5, operator=a)
    sd = model.state_dict()
    assert "weight" in sd and "weight" not in dict(model.named_parameters())
    torch.testing.assert_close(sd["weight"], analytic_weight(a), rtol=0, atol=0)
    with torch.no_grad():  # move away from the initial values, so that loading matters
        for k, p in enumerate(model.parameters()):
            p.add_(0.1 * (k + 1))
    out = model(y, a)
    fresh = ALISTA(5, operator=a)
    assert not torch.allclose(fresh(y, a), out)
    fresh.load_state_dict(model.state_dict())
    torch.testing.assert_close(fresh(y, a), out, rtol=0, atol=0)


def test_alista_schedule():
    K = 16
    model = ALISTA(K, operator=small_problem()[0])
    ref = [min(1.2 * k, 13.0) for k in range(1, K + 1)]
    np.testing.assert_allclose(model.percents, ref, rtol=1e-12)
    np.testing.assert_allclose([st.percent for st in model.unrolled.steps], ref, rtol=1e-12)
    assert model.percents[-1] == 13.0 and model.percents[0] == pytest.approx(1.2)
    np.testing.assert_allclose(support_selection_schedule(5, 2.0, 7.0), [2.0, 4.0, 6.0, 7.0, 7.0])
    assert ALISTA(4, operator=small_problem()[0], support_selection=False).percents == [0.0] * 4


def test_alista_step_formula(float64_default):
    """One ALISTA layer without support selection is x ← S_θ(x − γ Wᵀ(Ax − y))."""
    a, _, y = small_problem(dtype=DT)
    model = ALISTA(1, operator=a, gamma=0.8, theta=0.05, support_selection=False)
    W = analytic_weight(a).numpy()
    an, yn = a.numpy(), y.numpy()
    x0 = np.random.default_rng(2).standard_normal((y.shape[0], a.shape[1]))
    v = x0 - 0.8 * (x0 @ an.T - yn) @ W
    ref = np.sign(v) * np.maximum(np.abs(v) - 0.05, 0)
    np.testing.assert_allclose(model(y, a, x0=torch.tensor(x0)).detach().numpy(), ref, rtol=1e-12, atol=1e-14)


# --------------------------------------------------------------------------- #
# parameters
# --------------------------------------------------------------------------- #
def test_parameter_counts():
    a, _, _ = small_problem()
    m, n = a.shape
    K = 7
    assert n_params(ALISTA(K, operator=a)) == 2 * K
    assert n_params(LearnedISTA(K)) == 2 * K
    assert n_params(LearnedISTA(K, learn_step=False)) == K
    assert n_params(LearnedISTA(K, learn_threshold=False)) == K
    assert n_params(LearnedIHT(K)) == 2 * K
    assert n_params(LISTA(K, operator=a)) == K * (n * m + n * n + 2)  # threshold + relaxation
    assert n_params(LISTA(K, operator=a, relaxation=False)) == K * (n * m + n * n + 1)


@pytest.mark.filterwarnings("ignore:Converting a tensor with requires_grad")  # steps_and_weights uses float()
def test_learned_parameters_positive_by_construction():
    a, _, y = small_problem()
    models = [LearnedISTA(3), LearnedIHT(3), ALISTA(3, operator=a), LISTA(3, operator=a)]
    for model in models:
        with torch.no_grad():
            for name, p in model.named_parameters():
                if p.dim() == 0:  # the softplus-parametrised scalars
                    p.fill_(-30.0)
        for st in model.unrolled.steps:
            for attr in ("step", "gamma", "theta"):
                if hasattr(st, attr):
                    assert getattr(st, attr)().item() > 0
            if hasattr(st, "prox"):
                assert st.prox.lam.item() > 0
        assert torch.isfinite(model(y, a)).all()
    values = LearnedISTA(3, lam=0.2, step=0.9).steps_and_weights()
    assert len(values) == 3
    for s, lam in values:
        assert s == pytest.approx(0.9, rel=1e-6) and lam == pytest.approx(0.2, rel=1e-6)


# --------------------------------------------------------------------------- #
# training beats the classical iteration
# --------------------------------------------------------------------------- #
def _train(model, a, steps=150, lr=1e-2, seed=1):
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    m, n = a.shape
    for _ in range(steps):
        x = torch.randn(64, n, generator=g) * (torch.rand(64, n, generator=g) < 0.1)
        loss = (model(x @ a.T, a) - x).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model


@pytest.fixture(scope="module")
def training_problem():
    a, x_test, y_test = small_problem(m=30, n=60, batch=500, seed=3)
    x_ista, _ = solvers.ista(a, y_test, 0.1, max_iter=5, tol=None)
    return a, x_test, y_test, float(nmse(x_ista, x_test))


def test_training_learned_ista_beats_ista(training_problem):
    a, x_test, y_test, ista_db = training_problem
    model = LearnedISTA(5, lam=0.1)
    with torch.no_grad():
        assert float(nmse(model(y_test, a), x_test)) == pytest.approx(ista_db, abs=1e-4)
    _train(model, a)
    with torch.no_grad():
        trained_db = float(nmse(model(y_test, a), x_test))
    assert trained_db < ista_db - 1.0


def test_training_alista_beats_ista(training_problem):
    a, x_test, y_test, ista_db = training_problem
    model = ALISTA(5, operator=a)
    with torch.no_grad():
        init_db = float(nmse(model(y_test, a), x_test))
    _train(model, a)
    with torch.no_grad():
        trained_db = float(nmse(model(y_test, a), x_test))
    assert trained_db < ista_db - 1.0
    assert trained_db < init_db - 1.0  # the training did something


# --------------------------------------------------------------------------- #
# input checks
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("name", MODELS)
def test_bad_measurements(name):
    a, _, y = small_problem()
    model = build(name, 3, a)
    for bad in (float("nan"), float("inf")):
        yb = y.clone()
        yb[1, 2] = bad
        with pytest.raises(ValueError, match="^y:"):
            model(yb, a)
    with pytest.raises(ValueError, match="y:"):
        model(torch.zeros(2, a.shape[0] + 1), a)
    with pytest.raises(TypeError, match="y:"):
        model(y.to(torch.complex64), a)


def test_unbound_lista_and_alista():
    a, _, y = small_problem()
    for model in (LISTA(3), ALISTA(3)):
        assert not model.is_bound
        with pytest.raises(RuntimeError, match="bind"):
            model(y, a)
        model.bind(a)
        assert model.is_bound and model(y, a).shape == (y.shape[0], a.shape[1])


def test_bound_model_refuses_another_operator():
    a, _, y = small_problem()
    b, _, _ = small_problem(seed=7)
    model = ALISTA(3, operator=a)
    out = model(y, a)
    with pytest.raises(ValueError, match="A:"):
        model(y, b)
    with pytest.raises(ValueError, match="A:"):
        model(y, MatrixOperator(b))
    with pytest.raises(ValueError, match="A:"):
        model.bind(b)
    # the same matrix (another tensor with equal values) is accepted
    torch.testing.assert_close(model(y, a.clone()), out, rtol=0, atol=0)
    lista = LISTA(2, operator=a)
    a2 = a.clone()
    a2[0, 0] += 1e-3
    with pytest.raises(ValueError, match="A:"):
        lista(y, a2)


def test_other_errors():
    with pytest.raises(ValueError, match="num_layers"):
        LearnedISTA(0)
    with pytest.raises(ValueError, match="num_layers"):
        ALISTA(2.5)
    a, _, _ = small_problem()
    with pytest.raises(TypeError, match="A:"):
        LISTA(2, operator=MatrixOperator(a) @ MatrixOperator(torch.eye(a.shape[1])))


def test_analytic_weight_names_zero_columns_and_rank_deficiency():
    """A zero column of A has no analytic weight (a_iᵀ w_i = 1 is impossible): before, W and every
    output were NaN with only a "check the step size" warning; now the columns are named when the
    weight is built, for ALISTA and the LISTA family's ``init="analytic"``."""
    from unroll.models import LISTACP, TiLISTA

    a, _, y = small_problem()
    a[:, 3] = 0
    a[:, 7] = 0
    for build in (lambda: analytic_weight(a), lambda: ALISTA(3, operator=a),
                  lambda: LISTA(2, operator=a, init="analytic"), lambda: LISTACP(2, operator=a, init="analytic"),
                  lambda: TiLISTA(2, operator=a, init="analytic"), lambda: analytic_weight(a, ridge=0.1)):
        with pytest.raises(ValueError, match=r"column\(s\) 3, 7 of A .* are zero"):
            build()
    assert torch.isfinite(LISTA(2, operator=a, init="ista")(y, a)).all()  # ISTA's weight needs no inverse
    # a column so small that a_iᴴ (AAᴴ)⁻¹ a_i underflows: numerically rank-deficient, named
    b, _, _ = small_problem(dtype=DT)
    b[:, 5] *= 1e-200
    with pytest.raises(ValueError, match=r"rank-deficient.*column\(s\) 5;"):
        analytic_weight(b)
    nan = small_problem()[0]
    nan[0, 0] = float("nan")
    with pytest.raises(ValueError, match="a: expected finite"):
        analytic_weight(nan)


@pytest.mark.parametrize("lam", [-0.4, 0.0, float("nan"), float("inf")])
def test_lam_of_the_lista_family_is_named(lam):
    """``lam: -0.4`` was reported as a bad ``theta`` (the initial threshold lam/L)."""
    from unroll.models import LISTACP, LISTACPSS, LISTASS, TiLISTA

    a, _, _ = small_problem()
    for cls in (LISTA, LISTASS, LISTACP, LISTACPSS, TiLISTA):
        with pytest.raises(ValueError, match=r"^lam: expected a finite number > 0"):
            cls(2, operator=a, lam=lam)
        with pytest.raises(ValueError, match=r"^lam:"):
            cls(2, lam=lam)  # unbound: refused at construction, not at binding


@pytest.mark.parametrize("dtype,tol", [(torch.float16, 5e-3), (torch.bfloat16, 5e-2)])
def test_models_run_in_low_precision(dtype, tol):
    """float16/bfloat16 A and y (the Lipschitz constant in float32, the analytic weight in float64,
    both cast): the outputs are close to float32's."""
    from unroll.models import LISTACP

    a, _, y = small_problem()
    for cls, kw in ((ALISTA, {}), (LISTACP, {"init": "analytic"})):
        ref = cls(3, operator=a, **kw)(y, a).detach()
        out = cls(3, operator=a.to(dtype), **kw).to(dtype)(y.to(dtype), a.to(dtype)).detach()
        assert out.dtype == dtype
        assert float((out.float() - ref).norm() / ref.norm()) < tol
