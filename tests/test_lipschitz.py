"""The Jacobian-norm estimate and the Lipschitz training penalty (issue 15: a learned prox that
plug-and-play can rely on): the power iteration against the spectral norm of the dense Jacobian
(a general map and an LPN's symmetric Hessian), the penalty's gradient against finite
differences, a short training that brings an LPN's Jacobian under the bound, and the errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from unroll.lipschitz import LipschitzPenalty, jacobian_norm
from unroll.models import LPN, ConvLPN

DT = torch.float64


def test_power_iteration_matches_the_dense_jacobian_of_a_general_map():
    g = torch.Generator().manual_seed(0)
    W = torch.randn(3, 5, 5, generator=g, dtype=DT)  # one matrix per sample: a block-diagonal Jacobian
    f = lambda z: torch.tanh(torch.einsum("bij,bj->bi", W, z))  # noqa: E731
    x = 0.3 * torch.randn(3, 5, generator=g, dtype=DT)
    sigma, v = jacobian_norm(f, x, iters=200, generator=torch.Generator().manual_seed(1))
    J = torch.func.vmap(torch.func.jacrev(lambda z, w: torch.tanh(w @ z)))(x, W)
    exact = torch.linalg.matrix_norm(J, ord=2)
    torch.testing.assert_close(sigma, exact, rtol=1e-6, atol=0)
    torch.testing.assert_close(v.norm(dim=1), torch.ones(3, dtype=DT))


def test_symmetric_mode_finds_the_top_eigenvalue_of_an_lpn_hessian():
    torch.manual_seed(0)
    net = LPN(4, hidden=16, layers=3, beta=3.0, alpha=0.05).to(DT)
    x = torch.randn(6, 4, dtype=DT)
    sigma, _ = jacobian_norm(net, x, iters=300, symmetric=True, generator=torch.Generator().manual_seed(2))
    H = torch.stack([torch.func.hessian(lambda z: net.potential(z[None])[0])(xi) for xi in x])
    top = torch.linalg.eigvalsh(H)[:, -1]  # PSD: the largest eigenvalue is the spectral norm
    torch.testing.assert_close(sigma, top, rtol=1e-6, atol=1e-9)


def test_penalty_is_differentiable_and_its_gradient_matches_finite_differences():
    torch.manual_seed(0)
    net = ConvLPN(1, hidden=4, layers=2, downsample=1, beta=5.0, alpha=0.05, init="default").to(DT)
    y = torch.rand(2, 1, 8, 8, dtype=DT)
    pen = LipschitzPenalty(weight=1.0, bound=1e-3, iters=3, symmetric=True, interpolate=False)
    v0 = torch.randn(y.shape, generator=torch.Generator().manual_seed(3), dtype=DT)
    _, v = jacobian_norm(net, y, 3, symmetric=True, v0=v0)  # fix the direction: the penalty at that v

    def value():
        _, jv = torch.func.jvp(net, (y,), (v,))
        s = jv.flatten(1).norm(dim=1)
        return pen.weight * torch.relu(s - pen.bound).square().mean()

    p = net.skips[0].weight
    (g,) = torch.autograd.grad(value(), [p])
    i, eps = (1, 0, 1, 2), 1e-6
    with torch.no_grad():
        p[i] += eps
        up = value()
        p[i] -= 2 * eps
        down = value()
        p[i] += eps
    assert float(g[i]) == pytest.approx(float((up - down) / (2 * eps)), rel=1e-5)
    val, sigma = pen(net, y)
    assert val.requires_grad and sigma.shape == (2,) and not sigma.requires_grad
    assert float(val) == pytest.approx(float(torch.relu(sigma - 1e-3).square().mean()), rel=1e-9)


def test_a_short_training_with_the_penalty_brings_the_jacobian_under_the_bound():
    """An LPN fitted to a map steeper than 1 (f(x) = 2x near 0) exceeds the bound; with the
    penalty it stays at it, without it does not."""
    def train(weight):
        torch.manual_seed(0)
        net = LPN(2, hidden=16, layers=3, beta=5.0, alpha=0.0).to(DT)
        opt = torch.optim.Adam(net.parameters(), lr=1e-2)
        pen = LipschitzPenalty(weight=weight, bound=0.9, iters=5, symmetric=True, interpolate=False)
        g = torch.Generator().manual_seed(1)
        for _ in range(150):
            x = torch.randn(32, 2, generator=g, dtype=DT)
            loss = (net(x) - 2 * x).square().mean()
            if weight:
                loss = loss + pen(net, x)[0]
            opt.zero_grad()
            loss.backward()
            opt.step()
            net.project_()
        x = torch.randn(64, 2, generator=torch.Generator().manual_seed(5), dtype=DT)
        return jacobian_norm(net, x, 100, symmetric=True)[0].max()

    free, bounded = train(0.0), train(1000.0)
    assert float(free) > 1.5
    assert float(bounded) < 1.05


def test_bad_input_gets_a_clear_error():
    with pytest.raises(ValueError, match="bound: expected a finite number > 0, got 0"):
        LipschitzPenalty(bound=0)
    with pytest.raises(ValueError, match="weight: expected a finite number >= 0"):
        LipschitzPenalty(weight=float("nan"))
    with pytest.raises(ValueError, match="iters: expected an int >= 1, got 0"):
        LipschitzPenalty(iters=0)
    with pytest.raises(ValueError, match="samples: expected None or an int >= 1"):
        LipschitzPenalty(samples=0)
    with pytest.raises(ValueError, match="x: expected a real floating batch"):
        jacobian_norm(lambda z: z, torch.ones(2, 3, dtype=torch.long))
    with pytest.raises(ValueError, match=r"v0: expected the shape of x \(2, 3\), got \(3,\)"):
        jacobian_norm(lambda z: z, torch.ones(2, 3), v0=torch.ones(3))
    with pytest.raises(ValueError, match=r"x: expected the clean signal of y's shape \(B, 3\), got \(2, 4\)"):
        LipschitzPenalty()(lambda z: z, torch.ones(2, 3), torch.ones(2, 4))
    with pytest.raises(ValueError, match="not finite at 1 sample"):
        jacobian_norm(lambda z: z / z.sum(1, keepdim=True), torch.tensor([[1.0, -1.0], [1.0, 2.0]]), 2)


def test_denoising_task_trains_with_the_penalty_through_the_cli(tmp_path, monkeypatch):
    from unroll.train.unroll_cli import UnrollCLI

    monkeypatch.chdir(tmp_path)
    cfg = Path(__file__).resolve().parents[1] / "configs" / "lpn_patches.yaml"
    cli = UnrollCLI(args=["fit", "--config", str(cfg), f"--trainer.default_root_dir={tmp_path}",
                          "--trainer.max_steps=2", "--trainer.val_check_interval=2",
                          "--trainer.enable_progress_bar=false", "--trainer.logger=false",
                          "--trainer.enable_checkpointing=false", "--trainer.callbacks=null",
                          "--data.init_args.val_size=4", "--data.init_args.test_size=4",
                          "--data.init_args.batch_size=4",
                          "--model.init_args.model.init_args.hidden=4",
                          "--model.init_args.lipschitz=unroll.lipschitz.LipschitzPenalty",
                          "--model.init_args.lipschitz.init_args.symmetric=true",
                          "--model.init_args.lipschitz.init_args.samples=2"])
    m = cli.trainer.callback_metrics
    assert isinstance(cli.model.lipschitz, LipschitzPenalty) and cli.model.lipschitz.samples == 2
    assert float(m["train/jacobian_norm"]) > 0 and float(m["val/jacobian_norm"]) > 0
    assert float(m["train/lipschitz_penalty"]) >= 0
