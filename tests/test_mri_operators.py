"""MRI operators (issue 17, operators): centred FFT, undersampling masks, SENSE, coil combination
and sensitivity estimation."""

import math

import numpy as np
import pytest
import torch

import unroll
from unroll.operators import (FFT2c, SENSE, Mask, adjoint_test, center_mask, equispaced_mask, estimate_sensitivities,
                              fft2c, ifft2c, mask_seed, poisson_disc_mask, random_mask, rss, sense_combine)

C128 = torch.complex128
TOL = 1e-10


def crandn(*shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, dtype=C128, generator=g)


# --------------------------------------------------------------------------- FFT
@pytest.mark.parametrize("shape", [(8, 10), (7, 9), (6, 5)])
def test_fft2c_matches_numpy_centred_fft(shape):
    x = crandn(3, *shape)
    a = x.numpy()
    ref = np.fft.fftshift(np.fft.fft2(np.fft.ifftshift(a, axes=(-2, -1)), norm="ortho"), axes=(-2, -1))
    iref = np.fft.fftshift(np.fft.ifft2(np.fft.ifftshift(a, axes=(-2, -1)), norm="ortho"), axes=(-2, -1))
    assert np.abs(fft2c(x).numpy() - ref).max() < 1e-12
    assert np.abs(ifft2c(x).numpy() - iref).max() < 1e-12


@pytest.mark.parametrize("shape", [(8, 10), (7, 9)])
def test_fft2c_is_orthonormal_and_inverted_by_ifft2c(shape):
    x = crandn(2, 3, *shape, seed=1)
    y = fft2c(x)
    assert torch.allclose(torch.linalg.vector_norm(y), torch.linalg.vector_norm(x), rtol=1e-12)
    assert (ifft2c(y) - x).abs().max() < 1e-12
    assert (fft2c(ifft2c(x)) - x).abs().max() < 1e-12
    # the zero frequency of a constant image sits at (H // 2, W // 2)
    k = fft2c(torch.ones(*shape, dtype=C128))
    assert abs(k[shape[0] // 2, shape[1] // 2] - math.sqrt(shape[0] * shape[1])) < 1e-10
    assert k.abs().sum() - k.abs()[shape[0] // 2, shape[1] // 2] < 1e-10


@pytest.mark.parametrize("shape", [(8, 10), (3, 7, 9)])
def test_fft2c_operator_adjoint_and_lipschitz(shape):
    op = FFT2c(shape)
    x = crandn(2, *shape, seed=2)
    assert adjoint_test(op, x=x) <= TOL
    assert torch.equal(op.normal(x), x)
    assert float(op.lipschitz()) == 1.0
    assert (op.H(op(x)) - x).abs().max() < 1e-12


def test_fft2c_refuses_real_input_naming_it():
    with pytest.raises(TypeError, match=r"^x: fft2c expected a native complex tensor"):
        fft2c(torch.randn(4, 4))
    with pytest.raises(TypeError, match="complex operator"):
        FFT2c((4, 4))(torch.randn(1, 4, 4))


# --------------------------------------------------------------------------- masks
def test_random_mask_expected_acceleration_and_centre():
    width, cf, accel = 368, 0.08, 4
    n_low = round(width * cf)
    counts = []
    for s in range(300):
        m = random_mask(width, cf, accel, seed=s)
        assert m.shape == (width,) and m.dtype == torch.bool
        pad = (width - n_low + 1) // 2
        assert m[pad:pad + n_low].all()
        counts.append(int(m.sum()))
    mean = sum(counts) / len(counts)
    assert abs(mean - width / accel) / (width / accel) < 0.03
    assert len(set(counts)) > 5  # really random


@pytest.mark.parametrize("width,cf,accel", [(368, 0.08, 4), (320, 0.04, 8), (640, 0.08, 4), (97, 0.1, 3)])
def test_equispaced_mask_total_fraction_and_centre(width, cf, accel):
    n_low = round(width * cf)
    pad = (width - n_low + 1) // 2
    for s in range(10):
        m = equispaced_mask(width, cf, accel, seed=s)
        assert m[pad:pad + n_low].all()
        # total fraction 1/accel, up to the rounding of the spacing (a column or two)
        assert abs(int(m.sum()) - width / accel) <= 2, (int(m.sum()), width / accel)


def _fastmri_equispaced_fraction(num_cols, cf, accel, offset):
    """fastMRI's EquispacedMaskFractionFunc (NumPy), for a given offset."""
    n_low = round(num_cols * cf)
    mask = np.zeros(num_cols, dtype=np.float32)
    pad = (num_cols - n_low + 1) // 2
    mask[pad:pad + n_low] = 1
    adjusted = (accel * (n_low - num_cols)) / (n_low * accel - num_cols)
    samples = np.around(np.arange(offset, num_cols - 1, adjusted)).astype(np.uint)
    mask[samples] = 1.0
    return mask.astype(bool)


@pytest.mark.parametrize("offset", [0, 1, 3])
def test_equispaced_mask_matches_fastmri_for_a_given_offset(offset):
    ours = equispaced_mask(368, 0.08, 4, offset=offset).numpy()
    assert (ours == _fastmri_equispaced_fraction(368, 0.08, 4, offset)).all()


def test_masks_are_deterministic_per_file_and_slice():
    a = random_mask(368, 0.08, 4, seed=mask_seed("file1000001.h5", 3))
    b = random_mask(368, 0.08, 4, seed=mask_seed("file1000001.h5", 3))
    c = random_mask(368, 0.08, 4, seed=mask_seed("file1000001.h5", 4))
    d = random_mask(368, 0.08, 4, seed=mask_seed("file1000002.h5", 3))
    assert torch.equal(a, b) and not torch.equal(a, c) and not torch.equal(a, d)
    assert mask_seed("f", 1) == mask_seed("f", 1) != mask_seed("f", 2)
    e1 = equispaced_mask(368, 0.08, 4, seed=mask_seed("file1000001.h5", 3))
    e2 = equispaced_mask(368, 0.08, 4, seed=mask_seed("file1000001.h5", 3))
    assert torch.equal(e1, e2)
    offsets = {int(torch.nonzero(equispaced_mask(368, 0.08, 4, seed=mask_seed("f.h5", s)))[0]) for s in range(20)}
    assert len(offsets) > 1  # the offset does depend on the slice


def test_mask_2d_shape_repeats_columns():
    m = random_mask((6, 40), 0.1, 4, seed=0)
    assert m.shape == (6, 40) and (m == m[0]).all()


def test_mask_argument_errors():
    with pytest.raises(ValueError, match="^center_fraction"):
        random_mask(100, 0.5, 4, seed=0)
    with pytest.raises(ValueError, match="^acceleration"):
        equispaced_mask(100, 0.08, 0.5, seed=0)
    with pytest.raises(ValueError, match="^shape"):
        random_mask((2, 3, 4), 0.08, 4, seed=0)


def test_poisson_disc_mask_fraction_density_and_seed():
    h, w, accel = 96, 80, 4
    m = poisson_disc_mask((h, w), accel, center_fraction=0.08, seed=7)
    assert m.shape == (h, w) and m.dtype == torch.bool
    assert abs(m.float().mean().item() - 1 / accel) < 0.05 / accel
    calib = torch.outer(center_mask(h, round(h * 0.08)), center_mask(w, round(w * 0.08)))
    assert m[calib].all()
    ii, jj = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    rho = torch.sqrt(((ii - h // 2) / (h / 2)) ** 2 + ((jj - w // 2) / (w / 2)) ** 2)
    inner = m[(rho < 0.35) & ~calib].float().mean()
    outer = m[rho > 0.7].float().mean()
    assert inner > 1.5 * outer
    assert torch.equal(m, poisson_disc_mask((h, w), accel, center_fraction=0.08, seed=7))
    assert not torch.equal(m, poisson_disc_mask((h, w), accel, center_fraction=0.08, seed=8))


def test_mask_operator_adjoint_shared_and_per_sample():
    m = random_mask(10, 0.2, 3, seed=0)
    op = Mask(m, shape=(4, 6, 10))
    assert adjoint_test(op, x=crandn(2, 4, 6, 10)) <= TOL
    x = crandn(2, 4, 6, 10, seed=3)
    assert torch.equal(op(x), x * m) and torch.equal(op.normal(x), op(x))
    per = torch.stack([random_mask((6, 10), 0.2, 3, seed=s) for s in range(2)])  # (B, H, W)
    op2 = Mask(per, per_sample=True)
    assert op2.per_sample and adjoint_test(op2, x=x) <= TOL
    assert torch.equal(op2(x)[1], x[1] * per[1])
    assert torch.equal(op2.lipschitz_batch(2), torch.ones(2))
    # the mask is bool: it keeps the data's dtype
    assert op(x.to(torch.complex64)).dtype == torch.complex64


def test_mask_operator_refuses_a_different_width_and_non_binary_values():
    op = Mask(torch.ones(10, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"^x: k-space width 12 does not match the mask width 10"):
        op(crandn(1, 4, 6, 12))
    with pytest.raises(ValueError, match="^mask: expected only 0 and 1"):
        Mask(torch.full((10,), 0.5))


# --------------------------------------------------------------------------- SENSE
B, NC, H, W = 2, 4, 12, 10


def _maps(batch=None, seed=5):
    return crandn(*(() if batch is None else (batch,)), NC, H, W, seed=seed)


def _cases():
    col = random_mask(W, 0.2, 3, seed=1)
    per_mask = torch.stack([random_mask(W, 0.2, 3, seed=s) for s in range(B)]).view(B, 1, 1, W)
    pd = poisson_disc_mask((H, W), 2, center_fraction=0.2, seed=0)
    return {
        "shared maps, shared mask": (_maps(), col, False),
        "per-sample maps, shared mask": (_maps(B), col, True),
        "shared maps, per-sample mask": (_maps(), per_mask, True),
        "per-sample maps and mask": (_maps(B), per_mask, True),
        "shared maps, 2-D Poisson mask": (_maps(), pd, False),
        "per-sample maps, float 0/1 (1, 1, H, W) mask": (_maps(B), pd.double().view(1, 1, H, W), True),
    }


@pytest.mark.parametrize("case", list(_cases()))
def test_sense_adjoint_normal_and_per_sample(case):
    maps, mask, per_sample = _cases()[case]
    op = SENSE(maps, mask)
    assert op.per_sample is per_sample
    x = crandn(B, H, W, seed=9)
    assert adjoint_test(op, x=x) <= TOL
    assert adjoint_test(op, x=x, y=crandn(B, NC, H, W, seed=11)) <= TOL
    assert (op.normal(x) - op.adjoint(op(x))).abs().max() < 1e-12
    # forward against its definition M · F(S_c x)
    m = maps if maps.dim() == 4 else maps.expand(B, *maps.shape)
    ref = fft2c(m * x[:, None]) * mask.bool()
    assert (op(x) - ref).abs().max() < 1e-12


def _dense_norm2(op, batch_index):
    """‖A_i‖₂² from the explicit matrix of sample i (an independent check of lipschitz)."""
    n = H * W
    eye = torch.eye(n, dtype=C128).view(n, H, W)
    cols = []
    for k in range(n):
        x = torch.zeros(op.batch or 1, H, W, dtype=C128)
        x[batch_index] = eye[k]
        cols.append(op(x)[batch_index].flatten())
    a = torch.stack(cols, dim=1)
    return torch.linalg.matrix_norm(a, ord=2) ** 2


def test_sense_lipschitz_matches_dense_matrix():
    maps, mask, _ = _cases()["per-sample maps and mask"]
    op = SENSE(maps, mask)
    per = op.lipschitz_batch(B, max_iter=2000, tol=1e-12)
    dense = torch.stack([_dense_norm2(op, i) for i in range(B)])
    assert torch.allclose(per, dense, rtol=1e-6)
    assert torch.allclose(op.lipschitz(max_iter=2000, tol=1e-12), dense.max(), rtol=1e-6)
    shared = SENSE(maps[0], mask[0:1])
    assert torch.allclose(shared.lipschitz(max_iter=2000, tol=1e-12), _dense_norm2(shared, 0), rtol=1e-6)
    # full sampling: AᴴA = diag(Σ|S_c|²), so ‖A‖² = max Σ|S_c|²
    full = SENSE(maps[0])
    assert torch.allclose(full.lipschitz(max_iter=2000, tol=1e-14), (maps[0].abs() ** 2).sum(0).max(), rtol=1e-6)


def test_sense_keeps_single_precision():
    op = SENSE(_maps().to(torch.complex64), random_mask(W, 0.2, 3, seed=1))
    x = crandn(B, H, W).to(torch.complex64)
    assert op(x).dtype == torch.complex64 and op.adjoint(op(x)).dtype == torch.complex64


def test_sense_errors_name_the_argument():
    maps = _maps()
    with pytest.raises(ValueError, match=r"^mask: width 12 .* does not match the k-space width 10"):
        SENSE(maps, torch.ones(12, dtype=torch.bool))
    op = SENSE(maps, random_mask(W, 0.2, 3, seed=1))
    with pytest.raises(ValueError, match=r"^y: 3 coils .* do not match the 4 coils of the sensitivity maps"):
        op.adjoint(crandn(B, 3, H, W))
    with pytest.raises(ValueError, match=r"^y: k-space width 12 .* does not match"):
        op.adjoint(crandn(B, NC, H, 12))
    with pytest.raises(ValueError, match=r"^coil_images: 3 coils .* do not match the 4 coils"):
        sense_combine(crandn(B, 3, H, W), maps)
    with pytest.raises(ValueError, match=r"^x: batch size 3 does not match"):
        SENSE(_maps(B), None)(crandn(3, H, W))
    with pytest.raises(TypeError, match="^maps: expected complex"):
        SENSE(maps.real, None)


def test_exports():
    assert unroll.SENSE is SENSE and unroll.fft2c is fft2c and unroll.operators.random_mask is random_mask


# --------------------------------------------------------------------------- coils
def _phantom(h, w):
    ii, jj = torch.meshgrid(torch.linspace(-1, 1, h, dtype=torch.float64),
                            torch.linspace(-1, 1, w, dtype=torch.float64), indexing="ij")
    img = ((ii / 0.85) ** 2 + (jj / 0.7) ** 2 < 1).double() * (1.0 + 0.3 * jj)
    img = img + 0.5 * (((ii - 0.2) / 0.25) ** 2 + (jj / 0.15) ** 2 < 1).double()
    img = img - 0.4 * (((ii + 0.35) / 0.15) ** 2 + ((jj + 0.2) / 0.2) ** 2 < 1).double()
    return img.to(C128), ii, jj


def _birdcage_maps(nc, ii, jj):
    """Smooth maps: Gaussian profiles around a circle with a smooth phase, normalised so
    Σ_c |S_c|² = 1."""
    maps = []
    for c in range(nc):
        t = 2 * math.pi * c / nc
        px, py = 1.3 * math.cos(t), 1.3 * math.sin(t)
        mag = torch.exp(-((ii - py) ** 2 + (jj - px) ** 2) / (2 * 0.9 ** 2))
        phase = t + 0.5 * (ii * math.cos(t) - jj * math.sin(t))
        maps.append(mag * torch.exp(1j * phase))
    maps = torch.stack(maps)
    return maps / rss(maps, dim=0)


def test_rss_closed_form():
    x = crandn(2, 3, 4, 5)
    assert torch.allclose(rss(x), torch.sqrt((x.real ** 2 + x.imag ** 2).sum(1)))
    assert rss(x).dtype == torch.float64


def test_sensitivity_estimation_and_sense_combination():
    h, w, nc, n_low = 64, 64, 8, 24
    img, ii, jj = _phantom(h, w)
    maps = _birdcage_maps(nc, ii, jj)
    coil_images = maps[None] * img
    # sense_combine with the true maps is exact
    assert (sense_combine(coil_images, maps) - img).abs().max() < 1e-12
    kspace = fft2c(coil_images)
    est = estimate_sensitivities(kspace, n_low)[0]
    assert est.shape == (nc, h, w)
    support = img.abs() > 0.1
    s, e = maps[:, support], est[:, support]
    corr = (torch.sum(e.conj() * s).abs() / (torch.linalg.vector_norm(e) * torch.linalg.vector_norm(s))).item()
    assert corr > 0.95, corr
    per_coil = (torch.sum(e.conj() * s, dim=1).abs()
                / (torch.linalg.vector_norm(e, dim=1) * torch.linalg.vector_norm(s, dim=1)))
    assert per_coil.min() > 0.95, per_coil
    rec = sense_combine(coil_images, est[None])[0]
    err = (torch.linalg.vector_norm((rec - img)[support]) / torch.linalg.vector_norm(img[support])).item()
    assert err < 0.05, err
    # the maps of the ratio method are RSS-normalised on the support
    assert torch.allclose(rss(est, dim=0)[support], torch.ones(int(support.sum()), dtype=torch.float64))
    # only the ACS columns are used: an undersampled k-space with the same centre gives the same maps
    mask = random_mask(w, n_low / w, 2.5, seed=0)
    est_under = estimate_sensitivities(kspace * mask, n_low)[0]
    assert (est_under - est).abs().max() < 1e-10


def test_estimate_sensitivities_errors():
    with pytest.raises(ValueError, match="^kspace: expected complex multi-coil k-space"):
        estimate_sensitivities(torch.randn(1, 2, 8, 8), 4)
    with pytest.raises(ValueError, match="^num_low_freqs"):
        estimate_sensitivities(crandn(1, 2, 8, 8), 0)


def test_sense_in_the_core_problem_and_cg():
    """A per-sample SENSE operator plugs into the core: per-sample Lipschitz constants in the
    problem, and CG on the regularised normal equations (MoDL's data consistency)."""
    maps, mask, _ = _cases()["per-sample maps and mask"]
    op = SENSE(maps, mask)
    x = crandn(B, H, W, seed=4)
    y = op(x)
    problem = unroll.Problem.create(op, y)
    assert problem.lipschitz.shape == (B,)
    assert torch.allclose(problem.lipschitz, op.lipschitz_batch(B), rtol=1e-4)
    lam = 0.1
    xs, info = unroll.solve_normal(op, y, lam=lam, tol=1e-12, max_iter=500)
    assert info.status == "converged"
    assert (op.normal(xs) + lam * xs - op.adjoint(y)).abs().max() < 1e-9


@pytest.mark.parametrize("per_sample", [False, True])
def test_coil_sensitivities_and_the_composition_equal_sense(per_sample):
    from unroll.operators import CoilSensitivities
    maps = _maps(B if per_sample else None)
    mask = random_mask(W, 0.2, 3, seed=1)
    s = CoilSensitivities(maps)
    x = crandn(B, H, W, seed=6)
    assert s.per_sample is per_sample and adjoint_test(s, x=x) <= TOL
    assert (s.normal(x) - s.adjoint(s(x))).abs().max() < 1e-12
    m2 = (maps.abs() ** 2).sum(-3)
    assert torch.allclose(s.lipschitz(), m2.max())
    if per_sample:
        assert torch.allclose(s.lipschitz_batch(B), m2.flatten(1).amax(1))
    composed = Mask(mask) @ FFT2c((NC, H, W)) @ s
    sense = SENSE(maps, mask)
    y = crandn(B, NC, H, W, seed=8)
    assert (composed(x) - sense(x)).abs().max() < 1e-12
    assert (composed.adjoint(y) - sense.adjoint(y)).abs().max() < 1e-12
    assert unroll.MultiCoilMRI is SENSE
    with pytest.raises(ValueError, match=r"^y: 3 coils"):
        s.adjoint(crandn(B, 3, H, W))


def test_sense_is_differentiable_in_the_image_and_the_maps():
    maps = _maps(B).requires_grad_(True)
    x = crandn(B, H, W, seed=12).requires_grad_(True)
    mask = random_mask(W, 0.2, 3, seed=1)
    assert torch.autograd.gradcheck(lambda x, s: SENSE(s, mask)(x), (x, maps), eps=1e-6, atol=1e-7)
    y = crandn(B, NC, H, W).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda y: SENSE(maps.detach(), mask).adjoint(y), (y,), eps=1e-6, atol=1e-7)


def test_mask_func_draws_a_pair_per_call_deterministically():
    from unroll.operators import MaskFunc
    f = MaskFunc("equispaced", center_fractions=[0.08, 0.04], accelerations=[4, 8])
    masks = [f(368, key="file1.h5", index=s) for s in range(40)]
    assert torch.equal(masks[3], f(368, key="file1.h5", index=3))
    counts = {int(m.sum()) for m in masks}
    # both pairs are used: about 368/4 = 92 and 368/8 = 46 columns
    assert any(abs(c - 92) <= 2 for c in counts) and any(abs(c - 46) <= 2 for c in counts)
    assert all(abs(c - 92) <= 2 or abs(c - 46) <= 2 for c in counts)
    with pytest.raises(ValueError, match="^center_fractions: expected one per acceleration"):
        MaskFunc("random", center_fractions=[0.08], accelerations=[4, 8])
    with pytest.raises(ValueError, match="^kind"):
        MaskFunc("radial")
