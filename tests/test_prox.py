"""Tests for unroll.prox: each operator against a closed form or its optimality condition."""

import numpy as np
import pytest
import torch
from scipy import optimize

from unroll.prox import (
    L0,
    L1,
    Box,
    Indicator,
    L1Ball,
    L2Ball,
    LowRank,
    NonNegative,
    Regularizer,
    Simplex,
    hard_threshold,
    inverse_softplus,
    project_box,
    project_l1_ball,
    project_l2_ball,
    project_nonneg,
    project_rank,
    project_simplex,
    soft_threshold,
    soft_threshold_support_selection,
)

DT = torch.float64
CDT = torch.complex128


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def t(a, dtype=None):
    a = np.asarray(a)
    if dtype is None:
        dtype = CDT if np.iscomplexobj(a) else DT
    return torch.as_tensor(a, dtype=dtype)


# --------------------------------------------------------------------------- #
# references written in numpy / scipy, independent of the implementation
# --------------------------------------------------------------------------- #
def ref_simplex(v, r):
    """Projection onto {z >= 0, sum z = r}: solve sum(max(v - tau, 0)) = r with brentq."""
    v = np.asarray(v, dtype=float)
    f = lambda tau: np.maximum(v - tau, 0.0).sum() - r
    lo, hi = v.min() - r / v.size - 1.0, v.max()
    tau = optimize.brentq(f, lo, hi, xtol=1e-15, rtol=4 * np.finfo(float).eps, maxiter=500)
    return np.maximum(v - tau, 0.0)


def ref_simplex_slsqp(v, r):
    n = v.size
    res = optimize.minimize(
        lambda z: 0.5 * np.sum((z - v) ** 2),
        np.full(n, r / n),
        jac=lambda z: z - v,
        method="SLSQP",
        bounds=[(0, None)] * n,
        constraints=[{"type": "eq", "fun": lambda z: z.sum() - r, "jac": lambda z: np.ones(n)}],
        options={"ftol": 1e-15, "maxiter": 500},
    )
    return res.x


def ref_l1_ball(v, r):
    v = np.asarray(v)
    a = np.abs(v)
    if a.sum() <= r:
        return v.copy()
    m = ref_simplex(a, r)
    with np.errstate(invalid="ignore", divide="ignore"):
        phase = np.where(a > 0, v / np.where(a > 0, a, 1.0), 0.0)
    return phase * m


def sample_simplex(rng, n_samples, n, r):
    z = rng.dirichlet(np.full(n, 0.5), size=n_samples) * r
    verts = np.eye(n) * r
    # sparse points on faces
    face = rng.dirichlet(np.ones(2), size=n_samples)
    sparse = np.zeros((n_samples, n))
    idx = rng.integers(0, n, size=(n_samples, 2))
    for i in range(n_samples):
        sparse[i, idx[i, 0]] += face[i, 0] * r
        sparse[i, idx[i, 1]] += face[i, 1] * r
    return np.concatenate([z, verts, sparse])


def sample_l1_ball(rng, n_samples, n, r, complex_=False):
    m = sample_simplex(rng, n_samples, n, r) * rng.uniform(0, 1, size=(1, 1))
    m[: n_samples // 2] *= rng.uniform(0, 1, size=(n_samples // 2, 1))
    if complex_:
        phase = np.exp(1j * rng.uniform(0, 2 * np.pi, size=m.shape))
    else:
        phase = rng.choice([-1.0, 1.0], size=m.shape)
    return m * phase


def sample_l2_ball(rng, n_samples, n, r, complex_=False):
    g = rng.standard_normal((n_samples, n))
    if complex_:
        g = g + 1j * rng.standard_normal((n_samples, n))
    g /= np.linalg.norm(g, axis=1, keepdims=True)
    rad = r * rng.uniform(0, 1, size=(n_samples, 1)) ** (1.0 / n)
    rad[: n_samples // 4] = r  # on the sphere
    return g * rad


def check_variational_inequality(x, p, zs):
    """<x - P(x), z - P(x)> <= 0 for all z in the set (real part for complex)."""
    x, p = np.asarray(x).ravel(), np.asarray(p).ravel()
    zs = np.asarray(zs).reshape(len(zs), -1)
    ip = np.real(np.sum(np.conj(x - p)[None, :] * (zs - p[None, :]), axis=1))
    assert ip.max() <= 1e-10, ip.max()


# --------------------------------------------------------------------------- #
# thresholds
# --------------------------------------------------------------------------- #
def test_soft_threshold_matches_grid_argmin(rng):
    v = rng.uniform(-3, 3, size=40)
    thr = rng.uniform(0, 2, size=40)
    z = np.linspace(-5, 5, 100001)  # spacing 1e-4
    obj = 0.5 * (z[None, :] - v[:, None]) ** 2 + thr[:, None] * np.abs(z[None, :])
    brute = z[obj.argmin(axis=1)]
    out = soft_threshold(t(v)[None], t(thr)[None])[0].numpy()
    np.testing.assert_allclose(out, brute, atol=1.5e-4)


def test_soft_threshold_subdifferential(rng):
    v = rng.standard_normal((5, 30)) * 2
    thr = 0.7
    z = soft_threshold(t(v), thr).numpy()
    nz = z != 0
    # v - z in thr * d|z|: equals thr*sign(z) on the support, |v| <= thr off it
    np.testing.assert_allclose((v - z)[nz], thr * np.sign(z[nz]), atol=1e-12)
    assert np.all(np.abs(v[~nz]) <= thr + 1e-12)
    assert nz.any() and (~nz).any()


def test_soft_threshold_tensor_thr_broadcast(rng):
    v = rng.standard_normal((4, 6))
    thr = np.abs(rng.standard_normal((4, 1)))
    out = soft_threshold(t(v), t(thr)).numpy()
    np.testing.assert_allclose(out, np.sign(v) * np.maximum(np.abs(v) - thr, 0), atol=1e-14)


def test_soft_threshold_complex_closed_form(rng):
    v = rng.standard_normal((3, 20)) + 1j * rng.standard_normal((3, 20))
    v[0, :3] = 0
    thr = 0.9
    with np.errstate(divide="ignore", invalid="ignore"):
        ref = np.where(np.abs(v) > 0, v * np.maximum(1 - thr / np.abs(v), 0), 0)
    out = soft_threshold(t(v), thr)
    assert out.dtype == CDT
    np.testing.assert_allclose(out.numpy(), ref, atol=1e-14)
    assert not torch.isnan(out).any()


@pytest.mark.parametrize("dtype", [DT, CDT])
def test_soft_threshold_gradient_finite_at_zero(dtype):
    x = torch.tensor([[0.0, 0.5, -2.0, 0.0]], dtype=dtype, requires_grad=True)
    thr = torch.tensor(0.3, dtype=DT, requires_grad=True)
    out = soft_threshold(x, thr)
    w = torch.tensor([[1.0, 2.0, 3.0, 4.0]], dtype=dtype)
    loss = (out * w).real.sum() + (out.abs() ** 2).sum()
    loss.backward()
    assert torch.isfinite(torch.view_as_real(x.grad) if x.is_complex() else x.grad).all()
    assert torch.isfinite(thr.grad)
    assert x.grad[0, 0] == 0 and x.grad[0, 3] == 0
    assert not torch.isnan(out).any()


def test_soft_threshold_gradcheck(rng):
    x = t(rng.standard_normal((2, 5))).requires_grad_()
    thr = t(0.4).requires_grad_()
    assert torch.autograd.gradcheck(soft_threshold, (x, thr))


@pytest.mark.parametrize("thr_shape", [(), (2, 1), (5,)])
@pytest.mark.parametrize("need", ["x", "thr", "both"])
def test_soft_threshold_backward_branches_match_autograd_reference(rng, thr_shape, need):
    # the custom backward (eager and torch.func forms, each gradient alone or both) against
    # autograd through the textbook formula sign(x)·relu(|x| − thr)
    from torch.func import grad as fgrad
    x0 = t(rng.standard_normal((2, 5)))
    thr0 = t(0.2 + 0.5 * rng.random(thr_shape))
    w = t(rng.standard_normal((2, 5)))
    xr, thr_r = x0.clone().requires_grad_(need != "thr"), thr0.clone().requires_grad_(need != "x")
    (w * torch.sign(xr) * torch.relu(xr.abs() - thr_r)).sum().backward()
    xs, thr_s = x0.clone().requires_grad_(need != "thr"), thr0.clone().requires_grad_(need != "x")
    (w * soft_threshold(xs, thr_s)).sum().backward()
    gx, gt = fgrad(lambda a, b: (w * soft_threshold(a, b)).sum(), argnums=(0, 1))(x0, thr0)
    if need != "thr":
        assert torch.equal(xs.grad, xr.grad) and torch.equal(gx, xr.grad)
    if need != "x":
        torch.testing.assert_close(thr_s.grad, thr_r.grad, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(gt, thr_r.grad, rtol=1e-12, atol=1e-12)


def test_soft_threshold_under_vmap_of_jacobians(rng):
    from torch.func import jacrev, vmap
    x = t(rng.standard_normal((3, 4)))
    thr = t(0.5)
    jx = vmap(jacrev(lambda a: soft_threshold(a, thr)))(x)
    assert torch.equal(jx, torch.diag_embed((soft_threshold(x, thr) != 0).to(x.dtype)))
    jt = vmap(jacrev(soft_threshold, argnums=1), in_dims=(0, None))(x, thr)
    assert torch.equal(jt, -torch.sign(soft_threshold(x, thr)))


def test_hard_threshold_is_prox_of_l0(rng):
    v = rng.standard_normal((4, 50)) * 2
    for c in [0.1, 0.5, 2.0]:  # prox of c * ||.||_0
        z = hard_threshold(t(v), np.sqrt(2 * c)).numpy()
        assert np.all((z == 0) | (z == v))
        obj = 0.5 * (z - v) ** 2 + c * (z != 0)
        best = np.minimum(0.5 * v**2, c)  # candidates: zero vs keep
        np.testing.assert_allclose(obj, best, atol=1e-14)


def test_hard_threshold_complex_and_grad():
    x = torch.tensor([[1 + 1j, 0.1j, -2.0]], dtype=CDT)
    np.testing.assert_array_equal(hard_threshold(x, 0.5).numpy(), [[1 + 1j, 0, -2]])
    xr = torch.tensor([[1.0, 0.1, -2.0]], dtype=DT, requires_grad=True)
    hard_threshold(xr, 0.5).sum().backward()
    np.testing.assert_array_equal(xr.grad.numpy(), [[1, 0, 1]])


# --------------------------------------------------------------------------- #
# support selection
# --------------------------------------------------------------------------- #
def test_support_selection_hand_made():
    x = t([[5, -4, 3, 0.5, -0.2, 2, 0, 0, 0, 0]])
    out = soft_threshold_support_selection(x, 1.0, 20.0)
    np.testing.assert_allclose(out.numpy(), [[5, -4, 2, 0, 0, 1, 0, 0, 0, 0]], atol=1e-15)
    # 30 % -> also 3 passes unchanged
    out = soft_threshold_support_selection(x, 1.0, 30.0)
    np.testing.assert_allclose(out.numpy(), [[5, -4, 3, 0, 0, 1, 0, 0, 0, 0]], atol=1e-15)


def test_support_selection_per_sample_and_shapes():
    x = t([[5, -4, 3, 0.5, -0.2, 2, 0, 0, 0, 0], [0, 0, 0, 0, 6, 0, 0, -7, 0.5, 1.5]]).reshape(2, 2, 5)
    out = soft_threshold_support_selection(x, 1.0, 20.0).reshape(2, -1)
    np.testing.assert_allclose(
        out.numpy(),
        [[5, -4, 2, 0, 0, 1, 0, 0, 0, 0], [0, 0, 0, 0, 6, 0, 0, -7, 0, 0.5]],
        atol=1e-15,
    )


def test_support_selection_limits(rng):
    x = t(rng.standard_normal((3, 4, 5)) * 2)
    np.testing.assert_array_equal(
        soft_threshold_support_selection(x, 0.8, 0.0).numpy(), soft_threshold(x, 0.8).numpy()
    )
    # percent=100: every entry above thr passes -> hard thresholding
    np.testing.assert_array_equal(
        soft_threshold_support_selection(x, 0.8, 100.0).numpy(), hard_threshold(x, 0.8).numpy()
    )
    # the large entries only pass if also |x| > thr
    y = t([[0.5, 0.4, 0.1, 0.0]])
    np.testing.assert_allclose(soft_threshold_support_selection(y, 1.0, 50.0).numpy(), [[0, 0, 0, 0]])


def test_support_selection_grad_and_complex():
    x = t([[5, -4, -3, 0.5]]).requires_grad_()
    thr = t(1.0).requires_grad_()
    out = soft_threshold_support_selection(x, thr, 25.0)
    np.testing.assert_allclose(out.detach().numpy(), [[5, -3, -2, 0]])
    out.sum().backward()
    np.testing.assert_array_equal(x.grad.numpy(), [[1, 1, 1, 0]])
    # 5 passes (no thr dependence); -4 + thr and -3 + thr are shrunk: d/dthr = 2
    assert thr.grad.item() == pytest.approx(2.0)
    xc = t([[3j, -1 + 0j, 0.5, 2.0]])
    out = soft_threshold_support_selection(xc, 1.5, 25.0)
    np.testing.assert_allclose(out.numpy(), [[3j, 0, 0, 0.5]], atol=1e-15)


def test_support_selection_bad_percent():
    with pytest.raises(ValueError, match="percent"):
        soft_threshold_support_selection(torch.ones(1, 3, dtype=DT), 0.1, 101.0)


# --------------------------------------------------------------------------- #
# elementwise projections
# --------------------------------------------------------------------------- #
def test_project_nonneg(rng):
    x = rng.standard_normal((2, 7))
    p = project_nonneg(t(x)).numpy()
    np.testing.assert_array_equal(p, np.maximum(x, 0))
    assert (p >= 0).all()
    for b in range(2):
        zs = np.maximum(rng.standard_normal((300, 7)), 0) * rng.uniform(0, 3, (300, 1))
        check_variational_inequality(x[b], p[b], zs)
    np.testing.assert_array_equal(project_nonneg(t(p)).numpy(), p)
    with pytest.raises(TypeError, match="`x`"):
        project_nonneg(torch.ones(1, 2, dtype=CDT))


def test_project_box(rng):
    x = rng.standard_normal((3, 8)) * 2
    lo, hi = -0.5, 1.2
    p = project_box(t(x), lo, hi).numpy()
    np.testing.assert_array_equal(p, np.clip(x, lo, hi))
    assert (p >= lo).all() and (p <= hi).all()
    for b in range(3):
        zs = rng.uniform(lo, hi, (300, 8))
        corners = np.where(rng.random((100, 8)) < 0.5, lo, hi)
        check_variational_inequality(x[b], p[b], np.concatenate([zs, corners]))
    np.testing.assert_array_equal(project_box(t(p), lo, hi).numpy(), p)


def test_project_box_tensor_bounds_and_errors(rng):
    x = rng.standard_normal((2, 3, 4))
    lo = -np.abs(rng.standard_normal((3, 1)))
    hi = np.abs(rng.standard_normal((1, 4)))
    p = project_box(t(x), t(lo), t(hi)).numpy()
    np.testing.assert_array_equal(p, np.clip(x, lo, hi))
    np.testing.assert_array_equal(project_box(t(x), t(lo), 0.3).numpy(), np.clip(x, lo, 0.3))
    np.testing.assert_array_equal(project_box(t(x), None, 0.3).numpy(), np.minimum(x, 0.3))
    with pytest.raises(ValueError, match="`lo`.*`hi`"):
        project_box(t(x), 1.0, 0.0)
    with pytest.raises(TypeError, match="`x`"):
        project_box(torch.ones(1, 2, dtype=CDT), 0.0, 1.0)
    with pytest.raises(ValueError, match="`lo`"):
        Box(2.0, 1.0)


# --------------------------------------------------------------------------- #
# simplex
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("r", [1.0, 2.5, 0.1])
def test_project_simplex_optimality(rng, r):
    x = rng.standard_normal((4, 9)) * 1.5
    x[3] = x[3] * 0.01 + 10  # all entries positive and large
    p = project_simplex(t(x), r).numpy()
    for b in range(4):
        assert (p[b] >= 0).all()
        assert abs(p[b].sum() - r) < 1e-12
        np.testing.assert_allclose(p[b], ref_simplex(x[b], r), atol=1e-10)
        check_variational_inequality(x[b], p[b], sample_simplex(rng, 300, 9, r))
    np.testing.assert_allclose(project_simplex(t(p), r).numpy(), p, atol=1e-14)


def test_project_simplex_vs_slsqp(rng):
    x = rng.standard_normal((3, 6))
    p = project_simplex(t(x), 1.0).numpy()
    for b in range(3):
        np.testing.assert_allclose(p[b], ref_simplex_slsqp(x[b], 1.0), atol=1e-8)


def test_project_simplex_batched_4d_and_per_sample_radius(rng):
    x = rng.standard_normal((3, 2, 4, 5))
    r = np.array([1.0, 2.0, 0.5])
    p = project_simplex(t(x), t(r))
    assert p.shape == x.shape
    for b in range(3):
        np.testing.assert_allclose(p[b].numpy().ravel(), ref_simplex(x[b].ravel(), r[b]), atol=1e-10)
    with pytest.raises(TypeError, match="`x`"):
        project_simplex(torch.ones(2, 3, dtype=CDT))
    with pytest.raises(ValueError, match="radius"):
        project_simplex(t(x), -1.0)


def test_project_simplex_gradcheck(rng):
    x = t(rng.standard_normal((2, 5))).requires_grad_()
    r = t([1.0, 2.0]).requires_grad_()
    assert torch.autograd.gradcheck(project_simplex, (x, r))


# --------------------------------------------------------------------------- #
# l1 / l2 balls
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("complex_", [False, True])
def test_project_l1_ball(rng, complex_):
    n, r = 10, 1.5
    x = rng.standard_normal((4, n)) * 1.0
    if complex_:
        x = x + 1j * rng.standard_normal((4, n))
    x[1] *= 0.05  # inside the ball
    p = project_l1_ball(t(x), r).numpy()
    assert np.abs(x[1]).sum() < r
    np.testing.assert_array_equal(p[1], x[1])  # unchanged inside
    for b in range(4):
        assert np.abs(p[b]).sum() <= r + 1e-12
        if b != 1:
            assert abs(np.abs(p[b]).sum() - r) < 1e-12
        np.testing.assert_allclose(p[b], ref_l1_ball(x[b], r), atol=1e-10)
        check_variational_inequality(x[b], p[b], sample_l1_ball(rng, 300, n, r, complex_))
    np.testing.assert_allclose(project_l1_ball(t(p), r).numpy(), p, atol=1e-14)


@pytest.mark.parametrize("complex_", [False, True])
def test_project_l2_ball(rng, complex_):
    n, r = 12, 2.0
    x = rng.standard_normal((3, n)) * 2
    if complex_:
        x = x + 1j * rng.standard_normal((3, n))
    x[0] *= 0.01
    p = project_l2_ball(t(x), r).numpy()
    nrm = np.linalg.norm(x, axis=1, keepdims=True)
    np.testing.assert_allclose(p, x * r / np.maximum(nrm, r), atol=1e-14)
    np.testing.assert_array_equal(p[0], x[0])
    for b in range(3):
        assert np.linalg.norm(p[b]) <= r + 1e-12
        check_variational_inequality(x[b], p[b], sample_l2_ball(rng, 400, n, r, complex_))
    np.testing.assert_allclose(project_l2_ball(t(p), r).numpy(), p, atol=1e-14)


def test_balls_batched_4d_per_sample(rng):
    x = rng.standard_normal((3, 2, 3, 4)) * 2
    r = np.array([0.5, 1.0, 100.0])
    p1 = project_l1_ball(t(x), t(r)).numpy()
    p2 = project_l2_ball(t(x), t(r).reshape(3, 1, 1, 1)).numpy()
    assert p1.shape == p2.shape == x.shape
    for b in range(3):
        np.testing.assert_allclose(p1[b].ravel(), ref_l1_ball(x[b].ravel(), r[b]), atol=1e-10)
        nb = np.linalg.norm(x[b])
        np.testing.assert_allclose(p2[b], x[b] * r[b] / max(nb, r[b]), atol=1e-14)


def test_balls_gradcheck_and_zero_radius(rng):
    x = t(rng.standard_normal((2, 6))).requires_grad_()
    assert torch.autograd.gradcheck(lambda a: project_l1_ball(a, 1.0), (x,))
    assert torch.autograd.gradcheck(lambda a: project_l2_ball(a, 1.0), (x,))
    z = torch.zeros(2, 3, dtype=DT, requires_grad=True)
    out = project_l2_ball(z, 0.0) + project_l1_ball(z, 0.0)
    out.sum().backward()
    assert torch.isfinite(z.grad).all() and (out == 0).all()
    np.testing.assert_array_equal(project_l1_ball(x.detach(), 0.0).numpy(), 0)


# --------------------------------------------------------------------------- #
# rank
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("complex_", [False, True])
def test_project_rank_eckart_young(rng, complex_):
    x = rng.standard_normal((2, 3, 6, 4))
    if complex_:
        x = x + 1j * rng.standard_normal(x.shape)
    k = 2
    p = project_rank(t(x), k).numpy()
    U, S, Vh = np.linalg.svd(x, full_matrices=False)
    ref = (U[..., :k] * S[..., None, :k]) @ Vh[..., :k, :]
    np.testing.assert_allclose(p, ref, atol=1e-12)
    assert (np.linalg.matrix_rank(p, tol=1e-9) == k).all()
    np.testing.assert_allclose(project_rank(t(p), k).numpy(), p, atol=1e-12)
    np.testing.assert_array_equal(project_rank(t(x), 4).numpy(), x)
    with pytest.raises(ValueError, match="rank"):
        project_rank(t(x), -1)


def test_project_rank_gradcheck(rng):
    x = t(rng.standard_normal((1, 4, 3))).requires_grad_()
    assert torch.autograd.gradcheck(lambda a: project_rank(a, 1), (x,))


# --------------------------------------------------------------------------- #
# regularizers
# --------------------------------------------------------------------------- #
def test_base_regularizer_abstract():
    with pytest.raises(NotImplementedError, match="value"):
        Regularizer().value(torch.ones(1, 2))
    with pytest.raises(NotImplementedError, match="prox"):
        Regularizer().prox(torch.ones(1, 2), 1.0)
    with pytest.raises(NotImplementedError, match="project"):
        Indicator().prox(torch.ones(1, 2), 1.0)


def test_l1_l0_values_and_prox(rng):
    x = t([[1.0, -2.0, 0.0], [0.0, 0.0, 3.0]])
    np.testing.assert_allclose(L1(0.5).double().value(x).numpy(), [1.5, 1.5])
    np.testing.assert_allclose(L0(2.0).double().value(x).numpy(), [4.0, 2.0])
    xc = t([[3 + 4j, 0], [1j, -1]])
    np.testing.assert_allclose(L1(1.0).value(xc).numpy(), [5.0, 2.0])
    assert L1(1.0).value(xc).dtype == DT

    v = t(rng.standard_normal((4, 5)) * 2)
    step = t([[0.1], [0.5], [1.0], [2.0]])
    reg = L1(0.7).double()  # buffer stored in the default dtype, then cast
    assert reg.lam.item() == pytest.approx(0.7, rel=1e-7)
    np.testing.assert_allclose(reg.prox(v, step).numpy(), soft_threshold(v, step * reg.lam).numpy(), atol=1e-15)
    # L0 prox: objective 1/2 (z - v)^2 + step * lam * 1[z != 0] at its minimum
    lam = 0.3
    reg0 = L0(lam).double()
    z = reg0.prox(v, step).numpy()
    vn, c = v.numpy(), step.numpy() * reg0.lam.item()
    obj = 0.5 * (z - vn) ** 2 + c * (z != 0)
    np.testing.assert_allclose(obj, np.minimum(0.5 * vn**2, c), atol=1e-14)
    # calling the module is the prox
    np.testing.assert_array_equal(L1(0.7)(v, step).numpy(), L1(0.7).prox(v, step).numpy())


def test_inverse_softplus_roundtrip():
    y = t([1e-8, 1e-3, 0.5, 1.0, 10.0, 30.0])
    np.testing.assert_allclose(torch.nn.functional.softplus(inverse_softplus(y)).numpy(), y.numpy(), rtol=1e-12)
    assert torch.nn.functional.softplus(inverse_softplus(0.3)).item() == pytest.approx(0.3, rel=1e-14)


@pytest.mark.parametrize("cls", [L1, L0])
def test_learnable_lam(cls):
    reg = cls(0.3, learnable=True).double()
    params = dict(reg.named_parameters())
    assert list(params) == ["raw_lam"]
    assert reg.lam.item() == pytest.approx(0.3, rel=1e-6)
    assert reg.lam.item() > 0
    x = t([[1.0, -0.2, 3.0, 0.05]])
    out = reg.prox(x, 0.5)
    (dlam,) = torch.autograd.grad(reg.lam, params["raw_lam"])  # d lam / d raw_lam, the parametrisation's
    if cls is L1:  # gradient reaches raw_lam through the threshold 0.5 lam = 0.15:
        out.sum().backward()  # d/dlam Σ (|x_i| − 0.5 lam) sign(x_i) over |x_i| > 0.15 = −0.5 (1 − 1 + 1)
        assert params["raw_lam"].grad.abs().item() > 0
        torch.testing.assert_close(params["raw_lam"].grad, -0.5 * dlam, rtol=1e-12, atol=0)
    else:  # hard thresholding: lam only selects the support (zero gradient a.e.)
        (reg.value(x).sum() + out.sum()).backward()  # d/dlam (lam · ‖x‖₀) = 4, the prox adds nothing
        torch.testing.assert_close(params["raw_lam"].grad, 4 * dlam, rtol=1e-12, atol=0)
    fixed = cls(0.3)
    assert list(fixed.parameters()) == [] and len(list(fixed.buffers())) == 1
    assert fixed.double().lam.dtype == DT
    assert cls(0.0).lam.item() == 0.0


def test_l1_grad_wrt_lam_value():
    reg = L1(0.3, learnable=True).double()
    x = t([[1.0, -2.0, 3.0, 0.05]])
    reg.prox(x, 0.5).sum().backward()
    # sum(sign(x) (|x| - 0.5 lam)) over kept = const - 0.5 lam * (1 - 1 + 1); dlam/draw = sigmoid(raw)
    expected = -0.5 * 1.0 * torch.sigmoid(reg.raw_lam.detach())
    assert reg.raw_lam.grad.item() == pytest.approx(expected.item(), rel=1e-12)


@pytest.mark.parametrize("cls", [L1, L0])
def test_bad_lam(cls):
    with pytest.raises(ValueError, match="`lam`"):
        cls(-1.0)
    with pytest.raises(ValueError, match="`lam`"):
        cls(0.0, learnable=True)


def _indicator_cases():
    return [
        (NonNegative(), lambda x: project_nonneg(x), [[0.0, 1.0, 2.0]], [[0.0, -0.1, 2.0]]),
        (Box(-1.0, 1.0), lambda x: project_box(x, -1.0, 1.0), [[-1.0, 0.3, 1.0]], [[-1.0, 0.3, 1.01]]),
        (Simplex(2.0), lambda x: project_simplex(x, 2.0), [[0.5, 1.5, 0.0]], [[0.5, 1.0, 0.0]]),
        (L2Ball(1.0), lambda x: project_l2_ball(x, 1.0), [[0.6, 0.8, 0.0]], [[0.6, 0.8, 0.1]]),
        (L1Ball(1.0), lambda x: project_l1_ball(x, 1.0), [[0.5, -0.5, 0.0]], [[0.5, -0.5, 0.01]]),
    ]


@pytest.mark.parametrize("case", range(5))
def test_indicator_value_and_prox(rng, case):
    reg, proj, inside, outside = _indicator_cases()[case]
    reg = reg.double()
    x = t(inside + outside)
    val = reg.value(x)
    assert val.shape == (2,) and val.dtype == DT
    assert val[0].item() == 0.0 and val[1].item() == float("inf")
    # tiny violation within tolerance is still inside
    assert reg.value(t(inside) * (1 + 1e-9)).item() == 0.0
    v = t(rng.standard_normal((4, 3)) * 2)
    np.testing.assert_array_equal(reg.prox(v, 123.0).numpy(), proj(v).numpy())
    np.testing.assert_array_equal(reg.project(v).numpy(), proj(v).numpy())
    assert (reg.value(reg.prox(v, 0.1)) == 0).all()
    assert reg.contains(x).tolist() == [True, False]


def test_low_rank_indicator(rng):
    reg = LowRank(1)
    a = rng.standard_normal((4, 1))
    inside = a @ rng.standard_normal((1, 3))
    outside = rng.standard_normal((4, 3))
    x = t(np.stack([inside, outside]))
    np.testing.assert_array_equal(reg.value(x).numpy(), [0.0, np.inf])
    np.testing.assert_array_equal(reg.prox(x, 0.5).numpy(), project_rank(x, 1).numpy())
    assert (reg.value(reg.prox(x, 1.0)) == 0).all()
    with pytest.raises(ValueError, match="rank"):
        LowRank(-2)


def test_indicator_buffers_follow_dtype():
    for reg in [Box(0.0, 1.0), Simplex(1.0), L2Ball(2.0), L1Ball(3.0)]:
        bufs = list(reg.double().buffers())
        assert bufs and all(b.dtype == DT for b in bufs)
    # per-sample tensor radius in an indicator
    s = Simplex(torch.tensor([1.0, 2.0])).double()
    p = s.prox(t([[0.3, 0.3], [5.0, -1.0]]), 1.0).numpy()
    np.testing.assert_allclose(p, [[0.5, 0.5], [2.0, 0.0]], atol=1e-14)
    assert (s.value(t(p)) == 0).all()


def test_real_only_indicators_reject_complex():
    xc = torch.ones(2, 3, dtype=CDT)
    with pytest.raises(TypeError, match="`x`"):
        Simplex().prox(xc, 1.0)
    with pytest.raises(TypeError, match="`x`"):
        Simplex().value(xc)
    with pytest.raises(TypeError, match="`x`"):
        NonNegative().value(xc)
    with pytest.raises(TypeError, match="`x`"):
        Box(0.0, 1.0).prox(xc, 1.0)
    with pytest.raises(ValueError, match="radius"):
        L2Ball(-1.0)
    # complex balls are fine
    assert L2Ball(1.0).value(xc * 0.1).tolist() == [0.0, 0.0]
    assert L1Ball(1.0).value(xc).tolist() == [float("inf")] * 2


def test_float32_dtype_preserved(rng):
    x = torch.randn(3, 4, 5)
    for f in [
        lambda a: soft_threshold(a, 0.1),
        lambda a: project_simplex(a, 1.0),
        lambda a: project_l1_ball(a, 1.0),
        lambda a: project_l2_ball(a, t([1.0, 2.0, 3.0])),
        lambda a: project_rank(a, 2),
    ]:
        assert f(x).dtype == torch.float32
    assert L1(0.5).double().prox(x, 1.0).dtype == torch.float32
