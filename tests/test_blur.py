"""Tests for unroll.operators.blur: FFT-based Gaussian/box/motion blur with circular or zero boundary.

References: ``scipy.signal.convolve2d(mode="same")`` per channel with ``boundary="wrap"``
(circular) or ``"fill"`` (zeros); the operator's dense matrix for the spectral norm.
"""

import copy

import numpy as np
import pytest
import torch
from scipy.signal import convolve2d

from unroll.operators import adjoint_test
from unroll.operators.blur import Blur, BoxBlur, GaussianBlur, MotionBlur, box_kernel, motion_kernel
from unroll.operators.conv import gaussian_kernel

DT = torch.float64
MODES = ("circular", "zeros")


def _ops(mode, shape=(2, 12, 10)):
    return [GaussianBlur(shape, sigma=1.5, padding_mode=mode, dtype=DT),
            BoxBlur(shape, 5, padding_mode=mode, dtype=DT),
            MotionBlur(shape, 6.0, 30.0, padding_mode=mode, dtype=DT),
            Blur(torch.randn(3, 7, dtype=DT, generator=torch.Generator().manual_seed(0)), shape, mode)]


def _scipy(x, k, mode):
    out = np.empty_like(x)
    for b in range(x.shape[0]):
        for c in range(x.shape[1]):
            out[b, c] = convolve2d(x[b, c], k, mode="same", boundary="wrap" if mode == "circular" else "fill")
    return out


@pytest.mark.parametrize("mode", MODES)
def test_blur_adjoints_float64(mode):
    for op in _ops(mode):
        assert adjoint_test(op, batch=3) < 1e-12, type(op).__name__


@pytest.mark.parametrize("mode", MODES)
def test_blur_matches_scipy_convolve2d(mode):
    x = torch.randn(3, 2, 12, 10, dtype=DT, generator=torch.Generator().manual_seed(1))
    for op in _ops(mode):
        ref = _scipy(x.numpy(), op.kernel.numpy(), mode)
        np.testing.assert_allclose(op(x).numpy(), ref, atol=1e-12, err_msg=type(op).__name__)


@pytest.mark.parametrize("mode", MODES)
def test_adjoint_is_the_vjp_and_normal_is_AhA(mode):
    x = torch.randn(2, 2, 12, 10, dtype=DT, requires_grad=True)
    v = torch.randn(2, 2, 12, 10, dtype=DT)
    for op in _ops(mode):
        (g,) = torch.autograd.grad(op(x), x, v)
        torch.testing.assert_close(g, op.adjoint(v), atol=1e-12, rtol=0)
        torch.testing.assert_close(op.normal(x.detach()), op.adjoint(op(x.detach())), atol=1e-12, rtol=0)


def _dense(op):
    n = int(np.prod(op.in_shape))
    eye = torch.eye(n, dtype=DT).reshape(n, *op.in_shape)
    return op(eye).reshape(n, n).T


@pytest.mark.parametrize("mode", MODES)
def test_lipschitz_is_the_squared_spectral_norm(mode):
    for op in _ops(mode, shape=(1, 9, 8)):
        s = torch.linalg.matrix_norm(_dense(op), ord=2) ** 2
        # circular: exact max |k̂|²; zeros: power iteration (run to a tight tolerance here)
        est = op.lipschitz() if mode == "circular" else op.lipschitz(max_iter=5000, tol=1e-13, recompute=True)
        assert float(est) == pytest.approx(float(s), rel=1e-5), type(op).__name__


def test_normalised_kernels_have_unit_gain_with_a_periodic_boundary():
    for op in _ops("circular")[:3]:
        assert float(op.kernel.sum()) == pytest.approx(1.0, abs=1e-12)
        assert float(op.lipschitz()) == pytest.approx(1.0, abs=1e-12)  # DC gain, exact
        ones = torch.ones(1, *op.in_shape, dtype=DT)
        torch.testing.assert_close(op(ones), ones)


def test_solve_shifted_normal_inverts_AhA_plus_rho():
    op = GaussianBlur((2, 16, 12), sigma=2.0, dtype=DT)
    b = torch.randn(3, 2, 16, 12, dtype=DT)
    for rho in (0.1, torch.tensor(0.01, dtype=DT), torch.tensor([0.1, 1.0, 0.001], dtype=DT).view(3, 1, 1, 1)):
        x = op.solve_shifted_normal(b, rho)
        torch.testing.assert_close(op.normal(x) + rho * x, b, atol=1e-9, rtol=0)
    with pytest.raises(ValueError, match="rho"):
        op.solve_shifted_normal(b, -1.0)
    with pytest.raises(ValueError, match="circular"):
        GaussianBlur((2, 16, 12), 2.0, padding_mode="zeros", dtype=DT).solve_shifted_normal(b, 1.0)
    assert op.has_shifted_inverse and not GaussianBlur((1, 8, 8), 1.0, padding_mode="zeros").has_shifted_inverse


def test_kernels():
    k = box_kernel(5, dtype=DT)
    assert k.shape == (5, 5) and torch.allclose(k, torch.full((5, 5), 1 / 25, dtype=DT))
    m = motion_kernel(7.0, 0.0, dtype=DT)
    assert m.shape == (9, 9) and float(m.sum()) == pytest.approx(1.0)
    assert float(m[4].sum()) == pytest.approx(1.0)  # horizontal: all the mass on the centre row
    v = motion_kernel(7.0, 90.0, dtype=DT)
    torch.testing.assert_close(v, m.T, atol=1e-12, rtol=0)  # vertical = transposed horizontal
    d = motion_kernel(9.0, 37.0, dtype=DT)
    torch.testing.assert_close(d, torch.flip(d, (0, 1)))  # centred
    g = GaussianBlur((1, 32, 32), sigma=2.0)
    assert g.kernel.shape == (13, 13)  # ±3σ
    torch.testing.assert_close(g.kernel, gaussian_kernel(13, 2.0))


def test_bad_arguments_name_themselves():
    with pytest.raises(ValueError, match="sigma"):
        GaussianBlur((1, 8, 8), sigma=-1.0)
    with pytest.raises(ValueError, match="size"):
        BoxBlur((1, 8, 8), 4)
    with pytest.raises(ValueError, match="length"):
        MotionBlur((1, 8, 8), 0.0)
    with pytest.raises(ValueError, match="padding_mode"):
        GaussianBlur((1, 8, 8), 1.0, padding_mode="reflect")
    with pytest.raises(TypeError, match="kernel"):
        Blur(torch.ones(3, 3, dtype=torch.complex64), (1, 8, 8))
    op = GaussianBlur((1, 8, 8), 1.0)
    with pytest.raises(ValueError, match=r"x: expected shape \(B, 1, 8, 8\)"):
        op(torch.zeros(2, 3, 8, 8))
    with pytest.raises(TypeError, match="dtype"):
        op(torch.zeros(2, 1, 8, 8, dtype=DT))


def test_state_dict_round_trip_refreshes_the_padded_transfer():
    a = Blur(torch.rand(3, 3, dtype=DT), (1, 8, 8), "zeros")
    b = Blur(torch.rand(3, 3, dtype=DT), (1, 8, 8), "zeros")
    b.load_state_dict(copy.deepcopy(a.state_dict()))
    x = torch.randn(2, 1, 8, 8, dtype=DT)
    torch.testing.assert_close(a(x), b(x))
    assert a.fingerprint() == b.fingerprint()
