"""Plug-and-play (issue 15): TV and wavelet-ℓ1 priors, DnCNN/U-Net denoisers, PnP-ADMM and PnP-PGD,
the unrolled PnP network and its gradient modes, the deblurring data module and configs.

References: PyWavelets' tabulated Daubechies filters; the 1-D TV prox by an independent solve of its
box-constrained dual (scipy's L-BFGS-B); FISTA on the same convex objective for PnP with a true
prox; the closed-form ridge solution and its derivative for the gradient modes.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import scipy.optimize
import torch

from unroll import FISTAStep, Problem, SquaredL2, Unrolled
from unroll.autodiff import GradMode
from unroll.data.images import make_smooth_images
from unroll.models.denoisers import Denoise, DenoiserProx, DnCNN, UNet, as_prox
from unroll.models.pnp import PnPADMMStep, UnrolledPnP, pnp_admm, pnp_pgd
from unroll.operators import GaussianBlur, Identity
from unroll.prox import TotalVariation, WaveletL1, dwt2, idwt2
from unroll.prox.tv import tv_grad, tv_grad_adjoint, tv_value
from unroll.prox.wavelet import WAVELETS, daubechies_lowpass

DT = torch.float64
CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _images(b=2, size=16, seed=0):
    return make_smooth_images(b, 1, size, 2.0, _gen(seed), dtype=DT)


def _problem(b=2, size=16, sigma=1.0, noise=0.01, seed=0):
    op = GaussianBlur((1, size, size), sigma, dtype=DT)
    x = _images(b, size, seed)
    y = op(x) + noise * torch.randn(x.shape, generator=_gen(seed + 1), dtype=DT)
    return op, x, y


# ------------------------------------------------------------------------------------------ wavelets
PYWT_DEC_LO = {  # PyWavelets' tabulated dec_lo (pywt.Wavelet(name).dec_lo)
    "db2": [-0.12940952255126037, 0.2241438680420134, 0.8365163037378079, 0.48296291314453416],
    "db3": [0.035226291882100656, -0.08544127388224149, -0.13501102001039084, 0.4598775021193313,
            0.8068915093133388, 0.3326705529509569],
    "db4": [-0.010597401784997278, 0.032883011666982945, 0.030841381835986965, -0.18703481171888114,
            -0.02798376941698385, 0.6308807679295904, 0.7148465705525415, 0.23037781330885523],
}


@pytest.mark.parametrize("n", [2, 3, 4])
def test_daubechies_filters_match_pywavelets_and_are_orthonormal(n):
    h = np.array(daubechies_lowpass(n))
    np.testing.assert_allclose(h, PYWT_DEC_LO[f"db{n}"], atol=1e-10)
    for m in range(n):  # Σ_k h_k h_{k+2m} = δ_m
        assert abs(float(np.dot(h[:len(h) - 2 * m], h[2 * m:])) - (m == 0)) < 1e-14


@pytest.mark.parametrize("wavelet", WAVELETS)
def test_dwt_is_orthogonal(wavelet):
    x = torch.randn(2, 3, 16, 8, dtype=DT, generator=_gen())
    ll, details = dwt2(x, wavelet, levels=2)
    coeffs = [ll] + [b for bands in details for b in bands]
    assert sum(c.numel() for c in coeffs) == x.numel()
    energy = sum(c.square().sum() for c in coeffs)
    assert float(energy) == pytest.approx(float(x.square().sum()), rel=1e-12)  # ‖Wx‖ = ‖x‖
    torch.testing.assert_close(idwt2(ll, details, wavelet), x, atol=1e-12, rtol=0)  # WᵀW = I
    # WWᵀ = I: random coefficients survive the round trip
    c = [torch.randn_like(t) for t in coeffs]
    back_ll, back = dwt2(idwt2(c[0], [tuple(c[1 + 3 * j:4 + 3 * j]) for j in range(2)], wavelet), wavelet, 2)
    torch.testing.assert_close(back_ll, c[0], atol=1e-12, rtol=0)
    torch.testing.assert_close(back[1][2], c[6], atol=1e-12, rtol=0)


def test_haar_closed_form():
    x = torch.tensor([[1.0, 2.0], [3.0, 5.0]], dtype=DT).view(1, 1, 2, 2)
    ll, ((lh, hl, hh),) = dwt2(x, "haar", 1)
    assert float(ll) == pytest.approx(11 / 2)  # (a + b + c + d)/2
    assert sorted([float(lh), float(hl)]) == pytest.approx(sorted([(1 + 2 - 3 - 5) / 2, (1 - 2 + 3 - 5) / 2]))
    assert abs(float(hh)) == pytest.approx(abs(1 - 2 - 3 + 5) / 2)


def test_wavelet_prox_is_the_prox_of_its_value():
    """For an orthogonal W the prox is exact: it beats every perturbation of itself on the prox
    objective, and thresholds exactly the detail coefficients."""
    g = WaveletL1(0.3, "db2", levels=2)
    x = torch.randn(3, 1, 16, 16, dtype=DT, generator=_gen(2))
    t = 0.7
    z = g.prox(x, t)
    obj = lambda v: 0.5 * (v - x).square().flatten(1).sum(1) + t * g.value(v)  # noqa: E731
    for k in range(20):
        dz = 1e-3 * torch.randn(z.shape, dtype=DT, generator=_gen(10 + k))
        assert bool((obj(z + dz) >= obj(z) - 1e-12).all())
    ll_x, _ = dwt2(x, "db2", 2)
    ll_z, det_z = dwt2(z, "db2", 2)
    torch.testing.assert_close(ll_z, ll_x)  # the approximation band is not penalised
    assert float(min(b.abs()[b != 0].min() for bands in det_z for b in bands)) > 0
    assert float(g.value(x)) if x.shape[0] == 1 else g.value(x).shape == (3,)


def test_wavelet_needs_divisible_sizes():
    with pytest.raises(ValueError, match="divisible by 2\\^3"):
        WaveletL1(0.1, "haar", 3).prox(torch.zeros(1, 1, 12, 16), 1.0)
    with pytest.raises(ValueError, match="wavelet"):
        WaveletL1(0.1, "sym4")


# ------------------------------------------------------------------------------------------ TV
def test_tv_gradient_adjoint():
    z = torch.randn(2, 3, 7, 5, dtype=DT)
    p = torch.randn(2, 3, 2, 7, 5, dtype=DT)
    p[:, :, 0, :, -1] = 0
    p[:, :, 1, -1, :] = 0
    assert float((tv_grad(z) * p).sum()) == pytest.approx(float((z * tv_grad_adjoint(p)).sum()), rel=1e-12)


def _tv1d_reference(x: np.ndarray, t: float) -> np.ndarray:
    """prox of t·TV in 1-D by its dual min_{|a|≤1} ½‖x − t Dᵀa‖², solved by L-BFGS-B."""
    n = x.size
    D = np.diff(np.eye(n), axis=0)  # (n−1, n) forward differences

    def f(a):
        r = x - t * D.T @ a
        return 0.5 * r @ r, -t * D @ r

    res = scipy.optimize.minimize(f, np.zeros(n - 1), jac=True, method="L-BFGS-B", bounds=[(-1, 1)] * (n - 1),
                                  options={"ftol": 1e-15, "gtol": 1e-12, "maxiter": 10000})
    return x - t * D.T @ res.x


def test_tv_prox_in_1d_matches_an_independent_dual_solve():
    x = np.cumsum(np.random.default_rng(0).normal(size=(3, 24)), axis=1)
    tv = TotalVariation(1.0, max_iter=20000, tol=1e-13)
    for t in (0.3, 1.5):
        z = tv.prox(torch.tensor(x, dtype=DT).view(3, 1, 1, 24), t).view(3, 24).numpy()
        for i in range(3):
            np.testing.assert_allclose(z[i], _tv1d_reference(x[i], t), atol=1e-5)


def test_tv_prox_2d_optimality_and_invariants():
    x = torch.randn(2, 2, 12, 12, dtype=DT, generator=_gen(3))
    tv = TotalVariation(0.5, max_iter=5000, tol=1e-12)
    t = torch.tensor([0.2, 1.0], dtype=DT).view(2, 1, 1, 1)  # one step per sample
    z = tv.prox(x, t)
    obj = lambda v: 0.5 * (v - x).square().flatten(1).sum(1) + 0.5 * t.view(-1) * tv_value(v)  # noqa: E731
    for k in range(20):
        dz = 1e-3 * torch.randn(z.shape, dtype=DT, generator=_gen(20 + k))
        assert bool((obj(z + dz) >= obj(z) - 1e-9).all())
    torch.testing.assert_close(z.mean((2, 3)), x.mean((2, 3)))  # the mean is kept (Dᵀp sums to 0)
    assert bool((tv_value(z) < tv_value(x)).all())
    torch.testing.assert_close(tv.prox(x, 0.0), x)
    const = torch.full((1, 1, 8, 8), 0.3, dtype=DT)
    torch.testing.assert_close(tv.prox(const, 1.0), const)
    assert tv.last_iterations.shape == (1,)


def test_tv_prox_is_differentiable():
    x = torch.randn(1, 1, 6, 6, dtype=DT, requires_grad=True)
    lam = torch.tensor(0.3, dtype=DT, requires_grad=True)
    tv = TotalVariation(lam, max_iter=300, tol=0.0)
    z = tv.prox(x, 1.0)
    gx, gl = torch.autograd.grad(z.square().sum(), (x, lam))
    assert torch.isfinite(gx).all() and float(gl) != 0.0


@pytest.mark.parametrize("prior", [TotalVariation(0.1), WaveletL1(0.1, "haar", 2)])
def test_priors_refuse_bad_input(prior):
    x = torch.rand(2, 1, 8, 8, dtype=DT)
    with pytest.raises(ValueError, match="step"):
        prior.prox(x, -0.1)
    with pytest.raises(ValueError, match="step"):
        prior.prox(x, torch.tensor([0.1, -0.1], dtype=DT).view(2, 1, 1, 1))
    bad = x.clone()
    bad[0, 0, 1, 1] = float("nan")
    with pytest.raises(ValueError, match="1 NaN"):
        prior.prox(bad, 0.1)
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        prior.prox(torch.rand(2, 8, 8, dtype=DT), 0.1)


# ------------------------------------------------------------------------------------------ denoisers
@pytest.mark.parametrize("net", [DnCNN(1, 8, 4), DnCNN(2, 8, 3, batch_norm=False), UNet(1, 4, 2)])
def test_denoisers_start_at_the_identity_and_check_input(net):
    net = net.double()
    C = net.channels
    x = torch.rand(2, C, 20, 18, dtype=DT)
    torch.testing.assert_close(net(x), x)  # zero-initialised last layer
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.05 * torch.randn(p.shape, dtype=DT, generator=_gen(4)))
    assert net(x).shape == x.shape and not torch.allclose(net(x), x)
    with pytest.raises(ValueError, match=f"expected {C} channel"):
        net(torch.rand(2, C + 1, 20, 18, dtype=DT))
    bad = x.clone()
    bad[1, 0, 3, 3] = float("nan")
    with pytest.raises(ValueError, match="1 NaN"):
        net(bad)
    with pytest.raises(TypeError, match="dtype"):
        net(x.float())
    with pytest.raises(ValueError, match="step"):
        DenoiserProx(net).prox(x, -1.0)
    torch.testing.assert_close(DenoiserProx(net).prox(x, 0.5), net(x))  # the step is ignored


def test_unet_size_requirement_and_padding():
    net = UNet(1, 4, levels=3).double()
    with pytest.raises(ValueError, match="at least 8×8"):
        net(torch.rand(1, 1, 6, 32, dtype=DT))
    assert net(torch.rand(1, 1, 9, 13, dtype=DT)).shape == (1, 1, 9, 13)  # padded to 16×16, cropped back


def test_as_prox_and_denoise_wrapper():
    net = DnCNN(1, 4, 3).double()
    assert isinstance(as_prox(net), DenoiserProx)
    tv = TotalVariation(0.1)
    assert as_prox(tv) is tv
    model = Denoise(net)
    y = torch.rand(3, 1, 8, 8, dtype=DT)
    out = model(y, Identity(), return_trajectory=True)
    torch.testing.assert_close(out.x, net(y))
    assert len(out.trajectory) == 1 and out.info.iterations.tolist() == [1, 1, 1]
    with pytest.raises(ValueError, match="square"):
        from unroll.operators import MatrixOperator
        model(y, MatrixOperator(torch.randn(3, 64, dtype=DT)))


# ------------------------------------------------------------------------------------------ PnP solvers
def _objective(op, y, reg, x):
    return 0.5 * (op(x) - y).square().flatten(1).sum(1) + reg.value(x)


def test_pnp_admm_with_a_true_prox_converges_to_the_minimiser():
    """Wavelet-ℓ1 is convex with an exact prox: PnP-ADMM converges (its fixed-point residual goes
    to zero) to the minimiser that FISTA finds on the same objective."""
    op, x, y = _problem()
    reg = WaveletL1(0.01, "haar", 2)
    with torch.no_grad():
        x_admm, info = pnp_admm(op, y, reg, rho=0.5, max_iter=3000, tol=1e-9)
        fista = Unrolled(FISTAStep(reg), num_iters=3000)(Problem.create(op, y, reg), op.adjoint(y)).x
    assert info.status == "converged" and int(info.iterations.max()) < 3000
    hist = info.residual_history
    assert hist.shape[0] == 2 and hist.shape[1] >= int(info.iterations.max())
    assert bool((hist[:, -1] <= 1e-9).all()) and bool((hist[:, 5] > 1e-6).all())
    torch.testing.assert_close(_objective(op, y, reg, x_admm), _objective(op, y, reg, fista), rtol=1e-7, atol=0)
    torch.testing.assert_close(x_admm, fista, atol=1e-4, rtol=0)
    # PnP proximal gradient converges to the same point
    with torch.no_grad():
        x_pgd, info_pgd = pnp_pgd(op, y, reg, step=1.0, max_iter=5000, tol=1e-10)
    assert info_pgd.status == "converged"
    torch.testing.assert_close(x_pgd, fista, atol=1e-4, rtol=0)


def test_admm_closed_form_equals_the_cg_data_step():
    op, x, y = _problem()
    tv = TotalVariation(0.02, max_iter=100, tol=1e-8)
    with torch.no_grad():
        a, _ = pnp_admm(op, y, tv, rho=1.0, max_iter=15, tol=None)
        b, _ = pnp_admm(op, y, tv, rho=1.0, max_iter=15, tol=None, closed_form=False)
    torch.testing.assert_close(a, b, atol=1e-6, rtol=0)
    step = PnPADMMStep(tv)
    assert step.uses_closed_form(Problem.create(op, y))
    assert not step.uses_closed_form(Problem.create(GaussianBlur((1, 16, 16), 1.0, padding_mode="zeros", dtype=DT), y))


def test_pnp_admm_with_tv_on_zero_boundary_blur_uses_cg_and_improves_on_the_blurred_image():
    op = GaussianBlur((1, 16, 16), 1.0, padding_mode="zeros", dtype=DT)
    x = _images(2, 16, 5)
    y = op(x) + 0.02 * torch.randn(x.shape, generator=_gen(6), dtype=DT)
    with torch.no_grad():
        xh, info = pnp_admm(op, y, TotalVariation(0.02, max_iter=100, tol=1e-7), rho=1.0, max_iter=200, tol=1e-5)
    assert info.status == "converged"
    err = lambda v: (v - x).square().flatten(1).sum(1)  # noqa: E731
    assert bool((err(xh) < 0.7 * err(y)).all())


def test_pnp_refuses_bad_input():
    op, x, y = _problem()
    bad = y.clone()
    bad[0, 0, 2, 2] = float("nan")
    with pytest.raises(ValueError, match="y: expected finite"):
        pnp_admm(op, bad, TotalVariation(0.1))
    op3 = GaussianBlur((3, 16, 16), 1.0, dtype=DT)
    y3 = op3(torch.rand(1, 3, 16, 16, dtype=DT))
    with pytest.raises(ValueError, match="expected 1 channel"):
        pnp_admm(op3, y3, DnCNN(1, 4, 3).double(), max_iter=2)
    with pytest.raises(ValueError, match="algorithm"):
        UnrolledPnP(TotalVariation(0.1), algorithm="fista")
    model = UnrolledPnP(DnCNN(1, 4, 3, batch_norm=False).double(), num_layers=2)
    with pytest.raises(ValueError, match="expected 1 channel"):
        model(y3, op3)


# ------------------------------------------------------------------------------------------ unrolled PnP
def test_unrolled_pnp_trains_end_to_end():
    torch.manual_seed(0)
    op, x, y = _problem(b=4, noise=0.03, seed=7)
    model = UnrolledPnP(DnCNN(1, 8, 3, batch_norm=False).double(), num_layers=3, rho=1.0).double()
    rho0 = float(model.unrolled.steps[0].rho())
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(30):
        opt.zero_grad()
        loss = (model(y, op) - x).square().mean()
        loss.backward()
        opt.step()
        losses.append(float(loss))
    assert losses[-1] < 0.7 * losses[0], (losses[0], losses[-1])
    assert float(model.unrolled.steps[0].rho()) != rho0  # ρ is learned too


def _ridge_grad(op, y, x_true, lam):
    """d/dλ ‖x*(λ) − x_true‖², x*(λ) = (AᴴA + λI)⁻¹Aᴴy."""
    xs = op.solve_shifted_normal(op.adjoint(y), lam)
    dx = -op.solve_shifted_normal(xs, lam)
    return xs, float(2 * ((xs - x_true) * dx).sum())


@pytest.mark.parametrize("mode", ["full", "implicit", "checkpoint"])
def test_unrolled_pnp_gradient_modes_agree_with_the_closed_form(mode):
    """With g = λ/2‖x‖² ADMM's fixed point is the ridge solution: the loss's derivative in λ by
    backprop through 300 iterations, by checkpointing and by the implicit function theorem on the
    whole (x, z, u) state all equal the closed form."""
    op, x, y = _problem(b=2, noise=0.02, seed=9)
    prior = SquaredL2(0.05, learnable=True).double()
    model = UnrolledPnP(prior, num_layers=300, rho=1.0, learn_rho=False, grad_mode=mode)
    kwargs = {"grad_mode": GradMode("implicit", forward_tol=1e-12, backward_tol=1e-10)} if mode == "implicit" else {}
    out = model(y, op, return_trajectory=True, **kwargs)
    loss = (out.x - x).square().sum()
    (g,) = torch.autograd.grad(loss, prior.raw_lam)
    lam = float(prior.lam)
    xs, dldlam = _ridge_grad(op, y, x, lam)
    torch.testing.assert_close(out.x, xs, atol=1e-8, rtol=0)
    dsoftplus = 1 / (1 + math.exp(-float(prior.raw_lam)))
    assert float(g) == pytest.approx(dldlam * dsoftplus, rel=1e-5)
    if mode == "implicit":
        assert out.info.backward_status == "converged"


def test_unrolled_pnp_gradient_modes_with_a_denoiser():
    """Through a DnCNN prior: checkpointing and truncated(K) give full backprop's gradients; JFB
    and implicit (tied, at the fixed point of the ADMM state) give finite gradients."""
    op, x, y = _problem(b=2, noise=0.02, seed=11)
    net = DnCNN(1, 4, 3, batch_norm=False).double()
    with torch.no_grad():
        for p in net.parameters():
            p.mul_(0.1)
    model = UnrolledPnP(net, num_layers=6, rho=2.0)

    def grads(**kw):
        model.zero_grad()
        (model(y, op, **kw) - x).square().sum().backward()
        return [p.grad.clone() for p in model.parameters()]

    full = grads()
    for mode in ("checkpoint", GradMode("truncated", k=6)):
        for a, b in zip(full, grads(grad_mode=mode)):
            torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-8)
    implicit = GradMode("implicit", forward_tol=1e-6, backward_tol=1e-6, on_failure="ignore")
    for mode in (GradMode("jfb", forward_tol=1e-6), implicit):
        g = grads(grad_mode=mode, num_iters=500)
        assert all(torch.isfinite(t).all() for t in g) and any(float(t.abs().sum()) > 0 for t in g)


def test_unrolled_pnp_with_an_lpn_prior_implicit_gradient_matches_backprop_at_the_fixed_point():
    """An LPN (an exact prox) in PnP-ADMM: 200 tied iterations reach the fixed point of the state
    (x, z, u) to round-off, so backprop through all of them is the fixed point's gradient, which
    the implicit mode computes by one adjoint solve; checkpointing equals backprop exactly."""
    from unroll.models import ConvLPN

    torch.manual_seed(0)
    net = ConvLPN(1, hidden=4, layers=2, downsample=1, beta=5.0, alpha=0.05).double()
    op = GaussianBlur((1, 16, 16), 1.0, dtype=torch.float64)
    x = torch.rand(2, 1, 16, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    y = op(x) + 0.02 * torch.randn(x.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        _, info = pnp_admm(op, y, net, rho=1.0, max_iter=300, tol=1e-10)
    assert info.status == "converged", info
    model = UnrolledPnP(net, num_layers=200, rho=1.0, learn_rho=True)

    def grads(**kw):
        model.zero_grad()
        (model(y, op, **kw) - x).square().sum().backward()
        return torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])

    full = grads()
    torch.testing.assert_close(grads(grad_mode="checkpoint"), full, atol=1e-12, rtol=1e-9)
    implicit = grads(grad_mode=GradMode("implicit", forward_tol=1e-12, backward_tol=1e-12))
    assert float((implicit - full).norm() / full.norm()) < 1e-6


# ------------------------------------------------------------------------------------------ data + configs
def test_deblurring_data_module_holds_test_images_out():
    from unroll.data.deblurring import DeblurringDataModule

    dm = DeblurringDataModule(blur_sigma=2.0, noise_std=0.02, image_size=32, scale=4, val_size=3, batch_size=2,
                              dtype="float64")
    dm.setup()
    op = dm.get_operator()
    assert isinstance(op, GaussianBlur) and op.in_shape == (1, 32, 32)
    t = dm.test_split
    assert t.x.shape == (4, 1, 32, 32) and float(t.x.min()) >= 0 and float(t.x.max()) <= 1
    resid = (t.y - op(t.x)).flatten(1).std(1)
    assert torch.allclose(resid, torch.full_like(resid, 0.02), rtol=0.15)
    again = DeblurringDataModule(blur_sigma=2.0, noise_std=0.02, image_size=32, scale=4, val_size=3, dtype="float64")
    again.setup()
    torch.testing.assert_close(again.test_split.y, t.y)  # seeded
    batch = next(iter(dm.train_dataloader()))
    assert batch.y.shape == (2, 1, 32, 32) and batch.meta["noise_std"].shape == (2,)
    with pytest.raises(ValueError, match="held out"):
        DeblurringDataModule(train_images=["camera", "brick"], test_images=["camera"])
    with pytest.raises(ValueError, match="blur"):
        DeblurringDataModule(blur="gauss")
    blind = DeblurringDataModule(blur="none", noise_std=0.01, noise_std_max=0.1, image_size=16, scale=4, val_size=8)
    blind.setup()
    assert isinstance(blind.get_operator(), Identity)
    s = blind.val_split.meta["noise_std"]
    assert float(s.min()) >= 0.01 and float(s.max()) <= 0.1 and float(s.std()) > 0


_TINY = ["--trainer.max_steps=2", "--trainer.logger=false", "--trainer.limit_val_batches=1",
         "--trainer.num_sanity_val_steps=0", "--trainer.accelerator=cpu", "--trainer.devices=1",
         "--trainer.enable_progress_bar=false"]
_SMALL_DEBLUR = ["--data.init_args.image_size=32", "--data.init_args.batch_size=2", "--data.init_args.val_size=2"]
_SMALL_PATCHES = ["--data.init_args.patch_size=16", "--data.init_args.batch_size=2", "--data.init_args.val_size=2",
                  "--data.init_args.test_size=2"]


@pytest.mark.parametrize("name", ["dncnn_denoise", "unet_denoise", "unrolled_pnp_deblur"])
def test_configs_train_a_few_steps(name, tmp_path, monkeypatch):
    from unroll.train.cli import UnrollCLI

    monkeypatch.chdir(tmp_path)
    small = _SMALL_DEBLUR if "deblur" in name else _SMALL_PATCHES
    cli = UnrollCLI(args=["fit", "--config", str(CONFIGS / f"{name}.yaml"), f"--trainer.default_root_dir={tmp_path}",
                          *_TINY, *small], run=True)
    assert cli.trainer.global_step == 2
    assert all(torch.isfinite(p).all() for p in cli.model.parameters())


def test_pnp_admm_config_runs_to_its_tolerance(tmp_path, monkeypatch):
    from unroll.train.cli import UnrollCLI

    monkeypatch.chdir(tmp_path)
    cli = UnrollCLI(args=["test", "--config", str(CONFIGS / "pnp_admm_deblur.yaml"), "--trainer.accelerator=cpu",
                          "--trainer.enable_progress_bar=false", "--data.init_args.image_size=32",
                          "--model.init_args.model.init_args.tol=1e-3"], run=True)
    res = cli.model.test_results
    assert res["psnr_db"][-1] > 20 and 1 < res["iterations"][-1] < 200
