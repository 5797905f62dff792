"""unroll.losses against independent computations: ObjectiveLoss (NumPy and its closed-form
gradient), iteration_weights (closed forms), trajectory_loss (an explicit sum), and the
task's ``weighting != "last"`` branch (the loss of ``training_step`` recomputed by hand)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from unroll import L0, L1, MSELoss, ObjectiveLoss
from unroll.losses import iteration_weights, trajectory_loss
from unroll.problem import Problem

DT = torch.float64


def problem(m=6, n=10, batch=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(m, n, generator=g, dtype=DT)
    y = torch.randn(batch, m, generator=g, dtype=DT)
    x_hat = torch.randn(batch, n, generator=g, dtype=DT)
    x_hat[:, ::3] = 0  # some exact zeros for ‖·‖₀
    return a, y, x_hat


# ---------------------------------------------------------------------- ObjectiveLoss
@pytest.mark.parametrize("reg", ["none", "l1", "l0"])
def test_objective_loss_matches_numpy(reg):
    a, y, x_hat = problem()
    lam = 0.3
    regularizer = {"none": None, "l1": L1(lam), "l0": L0(lam)}[reg]
    loss = ObjectiveLoss(regularizer)
    assert loss.requires_target is False
    got = loss(x_hat, None, Problem.create(a, y))  # no target needed
    A, Y, X = a.numpy(), y.numpy(), x_hat.numpy()
    per_sample = 0.5 * ((X @ A.T - Y) ** 2).sum(1)
    if reg == "l1":
        per_sample = per_sample + lam * np.abs(X).sum(1)
    elif reg == "l0":
        per_sample = per_sample + lam * (X != 0).sum(1)
    assert got.dim() == 0
    assert float(got) == pytest.approx(per_sample.mean(), rel=1e-12)


def test_objective_loss_gradient_is_the_closed_form():
    """∂/∂x̂ of mean_b(½‖A x̂_b − y_b‖² + λ‖x̂_b‖₁) = (Aᵀ(A x̂_b − y_b) + λ sign(x̂_b)) / B."""
    a, y, x_hat = problem()
    x_hat = x_hat + 0.1  # no zeros: ‖·‖₁ is differentiable there
    x_hat.requires_grad_(True)
    lam = 0.3
    ObjectiveLoss(L1(lam))(x_hat, None, Problem.create(a, y)).backward()
    B = x_hat.shape[0]
    expected = ((x_hat.detach() @ a.T - y) @ a + lam * torch.sign(x_hat.detach())) / B
    torch.testing.assert_close(x_hat.grad, expected, rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------------- iteration_weights
def test_iteration_weights_closed_forms():
    K = 5
    assert iteration_weights("last", K) == [0.0, 0.0, 0.0, 0.0, 1.0]
    assert iteration_weights("uniform", K) == pytest.approx([0.2] * 5)
    assert iteration_weights("linear", K) == pytest.approx([2 * k / (K * (K + 1)) for k in range(1, K + 1)])
    assert iteration_weights([1, 0, 3, 0, 4], K) == pytest.approx([0.125, 0.0, 0.375, 0.0, 0.5])
    assert iteration_weights("last", 1) == [1.0]
    for w in ("uniform", "linear", [2.0, 1.0, 1.0, 0.5, 0.5]):
        assert sum(iteration_weights(w, K)) == pytest.approx(1.0)


@pytest.mark.parametrize("bad", ["cubic", [1.0, 2.0], [1.0, -1.0, 1.0, 1.0, 1.0], [0.0] * 5])
def test_iteration_weights_refuses(bad):
    with pytest.raises(ValueError, match="iteration_weights"):
        iteration_weights(bad, 5)


# ---------------------------------------------------------------------- trajectory_loss
def test_trajectory_loss_is_the_weighted_sum_and_skips_zero_weights():
    g = torch.Generator().manual_seed(1)
    target = torch.randn(3, 8, generator=g, dtype=DT)
    traj = [torch.randn(3, 8, generator=g, dtype=DT) for _ in range(4)]
    w = [0.1, 0.0, 0.3, 0.6]
    got = trajectory_loss(MSELoss(), traj, target, None, w)
    expected = sum(wk * float(((xk - target) ** 2).mean()) for wk, xk in zip(w, traj))
    assert float(got) == pytest.approx(expected, rel=1e-12)

    calls = []

    class Counting(MSELoss):
        def forward(self, x_hat, target, problem=None):
            calls.append(x_hat)
            return super().forward(x_hat, target, problem)

    trajectory_loss(Counting(), traj, target, None, w)
    assert len(calls) == 3 and all(c is not traj[1] for c in calls)  # the zero-weight iterate is not scored
    # "last" through the trajectory is the plain loss of the last iterate
    last = trajectory_loss(MSELoss(), traj, target, None, iteration_weights("last", 4))
    assert float(last) == float(MSELoss()(traj[-1], target))
    with pytest.raises(ValueError, match="weights: expected 4"):
        trajectory_loss(MSELoss(), traj, target, None, [0.5, 0.5])


# ---------------------------------------------------------------------- the task's weighting branch
@pytest.mark.parametrize("weighting", ["uniform", "linear", [0.0, 1.0, 3.0]])
def test_task_weighting_over_iterates(weighting):
    """``ReconstructionTask(weighting=...)``: training_step's loss is Σ_k w_k MSE(x_k, x) over
    the iterates x_1..x_K of the model, recomputed here from an independent ISTA iteration."""
    import warnings

    from unroll.data import Batch
    from unroll.models import LearnedISTA
    from unroll.train import ReconstructionTask

    g = torch.Generator().manual_seed(2)
    a = torch.randn(8, 16, generator=g) / 8 ** 0.5
    x = torch.randn(5, 16, generator=g) * (torch.rand(5, 16, generator=g) < 0.2)
    y = x @ a.T
    lam, K = 0.05, 3
    task = ReconstructionTask(LearnedISTA(K, lam=lam), weighting=weighting, operator=a)
    with warnings.catch_warnings():  # self.log without a trainer warns
        warnings.simplefilter("ignore")
        got = task.training_step(Batch(y, x), 0).detach()

    # ISTA by hand (the untrained LearnedISTA is ISTA with step 1/L, threshold λ/L)
    A, Y, X = a.double().numpy(), y.double().numpy(), x.double().numpy()
    L = np.linalg.norm(A, 2) ** 2
    xk, mses = np.zeros_like(X), []
    for _ in range(K):
        v = xk - (xk @ A.T - Y) @ A / L
        xk = np.sign(v) * np.maximum(np.abs(v) - lam / L, 0)
        mses.append(((xk - X) ** 2).mean())
    w = {"uniform": [1, 1, 1], "linear": [1, 2, 3]}[weighting] if isinstance(weighting, str) else weighting
    w = np.asarray(w, dtype=float) / np.sum(w)
    assert float(got) == pytest.approx(float(w @ np.asarray(mses)), rel=1e-4)
    assert float(got) != pytest.approx(mses[-1], rel=1e-3)  # not the "last" branch
