"""Tests for unroll.operators.conv (Convolution2d, gaussian_kernel) and unroll.models.blocks.CNNProx.

References: an explicit sum of ``torch.roll``-shifted images over the kernel taps (circular) and
``scipy.signal.convolve2d(mode="same")`` per channel (zeros); the operator is a true convolution.
"""

import copy

import numpy as np
import pytest
import torch
from scipy.signal import convolve2d

from unroll.models.blocks import CNNProx
from unroll.operators import LinearOperator, adjoint_test
from unroll.operators.conv import Convolution2d, gaussian_kernel
from unroll.problem import Problem

DT = torch.float64
CDT = torch.complex128
MODES = ("circular", "zeros")


def _kernel(kh, kw, complex_=False, seed=0):
    g = torch.Generator().manual_seed(seed)
    k = torch.randn(kh, kw, dtype=DT, generator=g)
    if complex_:
        k = torch.complex(k, torch.randn(kh, kw, dtype=DT, generator=g))
    return k


def _image(shape, complex_=False, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, dtype=DT, generator=g)
    if complex_:
        x = torch.complex(x, torch.randn(shape, dtype=DT, generator=g))
    return x


def _roll_reference(x, k):
    """Circular true convolution: Σ_{p,q} k[p,q] · roll(x, (p − kh//2, q − kw//2))."""
    kh, kw = k.shape
    out = torch.zeros_like(x if not k.is_complex() else x.to(CDT))
    for p in range(kh):
        for q in range(kw):
            out = out + k[p, q] * torch.roll(x, shifts=(p - kh // 2, q - kw // 2), dims=(-2, -1))
    return out


# --------------------------------------------------------------------------- adjoint
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("ksize,shape", [((3, 5), (3, 8, 11)), ((5, 3), (2, 9, 7)), ((1, 7), (1, 6, 10)),
                                         ((7, 9), (2, 4, 5))])  # the last: kernel larger than the image
@pytest.mark.parametrize("complex_", [False, True])
def test_adjoint(mode, ksize, shape, complex_):
    op = Convolution2d(_kernel(*ksize, complex_=complex_), shape, padding_mode=mode)
    assert adjoint_test(op, batch=3) < 1e-10
    assert adjoint_test(op.H, batch=2, seed=3) < 1e-10


# --------------------------------------------------------------------------- forward
@pytest.mark.parametrize("ksize,shape", [((3, 5), (3, 8, 11)), ((5, 3), (2, 9, 7)), ((7, 9), (1, 4, 5))])
@pytest.mark.parametrize("complex_", [False, True])
def test_forward_circular_matches_roll_sum(ksize, shape, complex_):
    k = _kernel(*ksize, complex_=complex_)
    op = Convolution2d(k, shape, padding_mode="circular")
    x = _image((2, *shape), complex_=complex_)
    torch.testing.assert_close(op(x), _roll_reference(x, k), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("ksize,shape", [((3, 5), (3, 8, 11)), ((5, 3), (2, 9, 7)), ((1, 7), (1, 6, 10))])
@pytest.mark.parametrize("complex_", [False, True])
def test_forward_zeros_matches_scipy_convolve2d(ksize, shape, complex_):
    k = _kernel(*ksize, complex_=complex_)
    op = Convolution2d(k, shape, padding_mode="zeros")
    x = _image((2, *shape), complex_=complex_)
    out = op(x).numpy()
    for b in range(2):
        for c in range(shape[0]):
            ref = convolve2d(x[b, c].numpy(), k.numpy(), mode="same")
            np.testing.assert_allclose(out[b, c], ref, rtol=1e-12, atol=1e-12)


def test_true_convolution_not_correlation():
    """A delta image returns the kernel itself (centred), not its flip."""
    k = _kernel(3, 5)
    for mode in MODES:
        op = Convolution2d(k, (1, 7, 9), padding_mode=mode)
        x = torch.zeros(1, 1, 7, 9, dtype=DT)
        x[0, 0, 3, 4] = 1.0
        torch.testing.assert_close(op(x)[0, 0, 2:5, 2:7], k)


def test_normal_matches_adjoint_of_forward():
    for mode in MODES:
        op = Convolution2d(_kernel(5, 3), (2, 8, 6), padding_mode=mode)
        x = _image((3, 2, 8, 6))
        torch.testing.assert_close(op.normal(x), op.adjoint(op(x)), rtol=1e-12, atol=1e-12)


# --------------------------------------------------------------------------- lipschitz
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("complex_", [False, True])
def test_lipschitz_matches_power_iteration(mode, complex_):
    op = Convolution2d(_kernel(3, 5, complex_=complex_, seed=4), (2, 10, 12), padding_mode=mode)
    lip = float(op.lipschitz())
    ref = float(LinearOperator.lipschitz(op, recompute=True, max_iter=5000, tol=1e-13))
    assert abs(lip - ref) <= 1e-4 * ref
    assert float(op.lipschitz(recompute=True)) == pytest.approx(lip, rel=1e-12)


def test_lipschitz_circular_is_exact_max_transfer():
    k = _kernel(3, 3, seed=5)
    op = Convolution2d(k, (1, 6, 6))
    psf = torch.zeros(6, 6, dtype=DT)
    psf[:3, :3] = k
    psf = torch.roll(psf, shifts=(-1, -1), dims=(0, 1))
    expected = torch.fft.fft2(psf).abs().square().max()
    torch.testing.assert_close(op.lipschitz(), expected)


def test_gaussian_kernel():
    k = gaussian_kernel(9, 2.0, dtype=DT)
    assert k.shape == (9, 9) and k.dtype == DT
    assert float(k.sum()) == pytest.approx(1.0, abs=1e-14)
    torch.testing.assert_close(k, k.T)
    torch.testing.assert_close(k, torch.flip(k, dims=(0, 1)))
    assert k.argmax() == 4 * 9 + 4
    # a normalised nonnegative kernel: DC gain 1 is the largest, so ‖A‖₂² = 1 (circular)
    assert float(Convolution2d(k, (1, 16, 16)).lipschitz()) == pytest.approx(1.0, rel=1e-12)
    with pytest.raises(ValueError, match="size"):
        gaussian_kernel(4, 1.0)
    with pytest.raises(ValueError, match="sigma"):
        gaussian_kernel(5, 0.0)


# --------------------------------------------------------------------------- checks
def test_bad_input_shape_names_x():
    op = Convolution2d(_kernel(3, 3), (2, 8, 8))
    with pytest.raises(ValueError, match=r"^x:"):
        op(torch.zeros(1, 1, 8, 8, dtype=DT))
    with pytest.raises(ValueError, match=r"^x:"):
        op(torch.zeros(1, 2, 8, 9, dtype=DT))
    with pytest.raises(ValueError, match=r"^y:"):
        op.adjoint(torch.zeros(1, 2, 7, 8, dtype=DT))


def test_bad_dtype_and_complex_input():
    op = Convolution2d(_kernel(3, 3), (1, 8, 8))
    with pytest.raises(TypeError, match=r"^x:.*real operator"):
        op(torch.zeros(1, 1, 8, 8, dtype=CDT))
    with pytest.raises(TypeError, match=r"^x:.*precision"):
        op(torch.zeros(1, 1, 8, 8, dtype=torch.float32))
    op32 = op.to(torch.float32)
    assert op32(torch.ones(1, 1, 8, 8)).dtype == torch.float32
    cop = Convolution2d(_kernel(3, 3, complex_=True), (1, 8, 8))
    with pytest.raises(TypeError, match=r"^x:.*complex operator"):
        cop(torch.zeros(1, 1, 8, 8, dtype=DT))


def test_bad_constructor_arguments():
    with pytest.raises(ValueError, match="kernel"):
        Convolution2d(torch.ones(2, 3), (1, 8, 8))
    with pytest.raises(ValueError, match="kernel"):
        Convolution2d(torch.ones(3), (1, 8, 8))
    with pytest.raises(ValueError, match="image_shape"):
        Convolution2d(torch.ones(3, 3), (8, 8))
    with pytest.raises(ValueError, match="padding_mode"):
        Convolution2d(torch.ones(3, 3), (1, 8, 8), padding_mode="reflect")


def test_state_dict_round_trip_refreshes_transfer_and_fingerprint():
    a = Convolution2d(_kernel(3, 3, seed=1), (1, 8, 8))
    b = Convolution2d(_kernel(3, 3, seed=2), (1, 8, 8))
    assert a.fingerprint() != b.fingerprint()
    assert "transfer" not in a.state_dict()
    b.load_state_dict(a.state_dict())
    x = _image((1, 1, 8, 8))
    torch.testing.assert_close(b(x), a(x))
    assert a.fingerprint() == b.fingerprint()
    z = Convolution2d(_kernel(3, 3, seed=1), (1, 8, 8), padding_mode="zeros")
    assert z.fingerprint() != a.fingerprint()


def test_in_a_problem_gradient():
    op = Convolution2d(gaussian_kernel(5, 1.0, dtype=DT), (1, 12, 12))
    x = _image((2, 1, 12, 12))
    p = Problem.create(op, op(x))
    assert float(p.data_fidelity(x).abs().max()) < 1e-20
    torch.testing.assert_close(p.grad(x + 1), op.adjoint(op(torch.ones_like(x))))


# --------------------------------------------------------------------------- CNNProx
def test_cnnprox_untrained_is_identity_and_keeps_shape():
    torch.manual_seed(0)
    prox = CNNProx(channels=3, features=8)
    x = torch.randn(2, 3, 10, 7)
    out = prox.prox(x, 0.5)
    assert out.shape == x.shape
    torch.testing.assert_close(out, x, rtol=0, atol=0)
    torch.testing.assert_close(prox(x), x, rtol=0, atol=0)
    assert len([m for m in prox.modules() if isinstance(m, torch.nn.Conv2d)]) == 3


def test_cnnprox_depth_and_validation():
    prox = CNNProx(channels=1, features=4, depth=5)
    assert len([m for m in prox.modules() if isinstance(m, torch.nn.Conv2d)]) == 5
    with pytest.raises(ValueError, match="depth"):
        CNNProx(depth=1)
    with pytest.raises(ValueError, match=r"^x:"):
        prox.prox(torch.zeros(1, 2, 5, 5))
    with pytest.raises(NotImplementedError, match="value"):
        prox.value(torch.zeros(1, 1, 5, 5))


def test_cnnprox_trains():
    torch.manual_seed(0)
    prox = CNNProx(channels=1, features=8)
    x = torch.randn(4, 1, 9, 9)
    target = x + 0.1 * torch.randn_like(x)
    loss = torch.mean((prox.prox(x, 1.0) - target) ** 2)
    loss.backward()
    grads = {n: p.grad for n, p in prox.named_parameters()}
    assert all(g is not None for g in grads.values())
    assert float(grads["net.4.weight"].abs().sum()) > 0  # the zero-initialised last layer gets a gradient
    # every parameter's gradient against central finite differences (a float64 copy)
    pd = copy.deepcopy(prox).double()
    _check_finite_differences(lambda: torch.mean((pd.prox(x.double(), 1.0) - target.double()) ** 2), pd, grads)
    opt = torch.optim.SGD(prox.parameters(), lr=0.1)
    opt.step()
    with torch.no_grad():
        out = prox.prox(x, 1.0)
    assert float((out - x).abs().max()) > 0
    assert float(torch.mean((out - target) ** 2)) < float(loss.detach())


def test_cnnprox_in_prox_grad_step():
    from unroll.steps import ProxGradStep
    from unroll.unrolled import Unrolled

    torch.manual_seed(0)
    op = Convolution2d(gaussian_kernel(5, 1.0), (1, 16, 16))
    x = torch.rand(2, 1, 16, 16)
    p = Problem.create(op, op(x))
    layer = Unrolled(ProxGradStep(CNNProx(channels=1, features=4), step=1.0), num_iters=3)
    out = layer(p).x
    assert out.shape == x.shape
    torch.mean((out - x) ** 2).backward()
    grads = {n: p.grad for n, p in layer.named_parameters()}
    assert grads["steps.0.prox.net.4.weight"].abs().sum() > 0
    ld = copy.deepcopy(layer).double()
    pd = Problem.create(op.double(), op.double()(x.double()))
    _check_finite_differences(lambda: torch.mean((ld(pd).x - x.double()) ** 2), ld, grads)


def _check_finite_differences(loss, module, grads, entries=3, h=1e-6):
    """``grads`` (name → gradient of ``loss`` at the float32 parameters) against central finite
    differences of ``loss`` (a float64 copy ``module``) at a few entries of every parameter."""
    for name, p in module.named_parameters():
        flat = p.data.view(-1)
        for i in sorted({0, flat.numel() // 2, flat.numel() - 1})[:entries]:
            old = float(flat[i])
            with torch.no_grad():
                flat[i] = old + h
                up = float(loss())
                flat[i] = old - h
                down = float(loss())
                flat[i] = old
            assert float(grads[name].reshape(-1)[i]) == pytest.approx((up - down) / (2 * h), rel=2e-3, abs=1e-7), \
                (name, i)
