"""unroll.metrics.NMSE accumulated over several batches equals NMSE of the whole set in one
batch (a ratio of sums, not a mean of batch ratios), for one estimate and per iteration."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from unroll.metrics import NMSE, nmse


def data(n=23, d=12, K=4, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g).to(dtype)
    x[:5] *= 10.0  # uneven sample norms: a mean of batch ratios would differ from the ratio of sums
    traj = torch.stack([x + torch.randn(n, d, generator=g).to(dtype) / (k + 1) for k in range(K)])
    return x, traj


def numpy_db(x_hat, x):
    err = np.abs(np.asarray(x_hat, dtype=np.complex128 if np.iscomplexobj(x_hat) else np.float64) - x) ** 2
    return 10 * np.log10(err.sum() / (np.abs(np.asarray(x)) ** 2).sum())


SPLITS = [(23,), (10, 13), (1, 7, 5, 10), (5, 5, 5, 5, 3)]


@pytest.mark.parametrize("sizes", SPLITS)
def test_nmse_over_batches_equals_one_batch(sizes):
    x, traj = data()
    x_hat = traj[-1]
    whole = NMSE()
    whole.update(x_hat, x)
    parts = NMSE()
    for xh, xb in zip(torch.split(x_hat, sizes), torch.split(x, sizes)):
        parts.update(xh, xb)
    assert float(parts.compute()) == pytest.approx(float(whole.compute()), abs=1e-5)
    assert float(whole.compute()) == pytest.approx(numpy_db(x_hat.numpy(), x.numpy()), abs=1e-5)
    assert float(whole.compute()) == pytest.approx(float(nmse(x_hat, x)), abs=1e-4)
    if len(sizes) > 1:  # and it is not the mean of the batch values
        mean_of_batches = np.mean([numpy_db(xh.numpy(), xb.numpy())
                                   for xh, xb in zip(torch.split(x_hat, sizes), torch.split(x, sizes))])
        assert abs(float(parts.compute()) - mean_of_batches) > 1e-3


@pytest.mark.parametrize("sizes", SPLITS)
def test_nmse_per_iteration_over_batches(sizes):
    x, traj = data()
    K = traj.shape[0]
    whole = NMSE(num_iters=K)
    whole.update(traj, x)
    parts = NMSE(num_iters=K)
    for tb, xb in zip(torch.split(traj, sizes, dim=1), torch.split(x, sizes)):
        parts.update(list(tb), xb)  # a sequence of K tensors works as a (K, B, ...) stack
    got = parts.compute()
    assert got.shape == (K,)
    torch.testing.assert_close(got, whole.compute(), rtol=0, atol=1e-5)
    expected = [numpy_db(traj[k].numpy(), x.numpy()) for k in range(K)]
    np.testing.assert_allclose(got.numpy(), expected, atol=1e-5)
    assert (got.diff() < 0).all()  # the synthetic trajectory improves with k


def test_nmse_linear_complex_and_reset():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(9, 6, generator=g, dtype=torch.complex128)
    x_hat = x + 0.1 * torch.randn(9, 6, generator=g, dtype=torch.complex128)
    metric = NMSE(db=False)
    for sl in (slice(0, 4), slice(4, 9)):
        metric.update(x_hat[sl], x[sl])
    expected = (np.abs(x_hat.numpy() - x.numpy()) ** 2).sum() / (np.abs(x.numpy()) ** 2).sum()
    assert float(metric.compute()) == pytest.approx(expected, rel=1e-12)
    metric.reset()
    metric.update(x_hat[:4], x[:4])
    expected4 = (np.abs(x_hat[:4].numpy() - x[:4].numpy()) ** 2).sum() / (np.abs(x[:4].numpy()) ** 2).sum()
    assert float(metric.compute()) == pytest.approx(expected4, rel=1e-12)


def test_nmse_refuses_wrong_shapes():
    x, traj = data()
    with pytest.raises(ValueError, match="preds"):
        NMSE().update(traj, x)
    with pytest.raises(ValueError, match="preds: expected 3 estimates"):
        NMSE(num_iters=3).update(traj, x)
