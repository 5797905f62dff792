"""Learned proximal networks (issue 15): ψ convex (convexity inequality on random pairs, PSD
Hessian), f = ∇ψ equal to autograd's gradient (values and training gradients), the learned prox
monotone and non-expansive, f⁻¹(f(x)) = x with implicit gradients equal to ∇²ψ⁻¹, R the function
f is the prox of (global minimality), proximal matching moving the toy's map toward soft
thresholding, the losses and the γ schedule against closed forms, the data modules, the configs
through the CLI, and the errors on bad input."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import pytest
import torch

from unroll import ProxGradStep, Problem, Unrolled
from unroll.losses import L1Loss, L2Loss, MSELoss, ProximalMatchingLoss, proximal_matching
from unroll.info import Status
from unroll.models import LPN, ConvLPN
from unroll.operators import MatrixOperator
from unroll.prox import soft_threshold

DT = torch.float64
CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def lpn(dim=3, seed=0, **kw):
    torch.manual_seed(seed)
    kw = {"hidden": 16, "layers": 3, "beta": 3.0, "alpha": 0.05, **kw}
    return LPN(dim, **kw).to(DT)


def conv_lpn(seed=0, **kw):
    torch.manual_seed(seed)
    # init="default": the non-negative path as strong as the unconstrained one, the harder case
    kw = {"hidden": 6, "layers": 3, "downsample": 1, "beta": 5.0, "alpha": 0.05, "init": "default", **kw}
    net = ConvLPN(1, **kw).to(DT)
    if net.quad is not None:  # a random learned quadratic, not its identity start
        with torch.no_grad():
            net.quad.weight.normal_(0.0, 0.5)
    return net


def randn(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=DT)


# ---------------------------------------------------------------------- convexity
@pytest.mark.parametrize("kind", ["lpn", "lpn_softplus", "conv", "conv_softplus", "conv_small", "conv_quadratic"])
def test_potential_satisfies_the_convexity_inequality_on_random_pairs(kind):
    net = (lpn(nonneg="softplus") if kind == "lpn_softplus" else lpn() if kind == "lpn"
           else conv_lpn(nonneg="softplus") if kind == "conv_softplus"
           else conv_lpn(quadratic=3) if kind == "conv_quadratic"
           else conv_lpn(init="small", alpha=0.0) if kind == "conv_small" else conv_lpn())
    shape = (64, 3) if kind.startswith("lpn") else (16, 1, 9, 7)
    x, y = 2 * randn(*shape, seed=1), 2 * randn(*shape, seed=2)
    t = torch.rand(shape[0], generator=torch.Generator().manual_seed(3), dtype=DT)
    tb = t.view(-1, *[1] * (len(shape) - 1))
    with torch.no_grad():
        lhs = net.potential(tb * x + (1 - tb) * y)
        rhs = t * net.potential(x) + (1 - t) * net.potential(y)
    gap = rhs - lhs
    assert bool((gap >= -1e-10).all()), gap.min()
    # α‖x‖² makes ψ 2α-strongly convex: the gap is at least α t(1−t)‖x − y‖²
    strong = net.alpha * t * (1 - t) * (x - y).reshape(shape[0], -1).square().sum(1)
    assert bool((gap >= strong - 1e-9).all())


def test_hessian_is_psd_and_a_negative_weight_breaks_convexity():
    net = lpn(dim=4, beta=2.0)
    x = 1.5 * randn(6, 4, seed=4)
    for xi in x:
        h = torch.autograd.functional.hessian(lambda v: net.potential(v[None])[0], xi)
        assert torch.allclose(h, h.T, atol=1e-12)
        assert float(torch.linalg.eigvalsh(h).min()) >= 2 * net.alpha - 1e-9  # strongly convex
    assert net.is_convex()
    # the projection is what keeps ψ convex: a negative hidden weight breaks it, project_() restores it
    broken = copy.deepcopy(net)
    with torch.no_grad():
        for w in broken.constrained_weights():
            w.copy_(-w.abs() - 0.5)
    assert not broken.is_convex()
    mins = [float(torch.linalg.eigvalsh(torch.autograd.functional.hessian(
        lambda v: broken.potential(v[None])[0], xi)).min()) for xi in 3 * randn(20, 4, seed=5)]
    assert min(mins) < 2 * net.alpha - 1e-6
    broken.project_()
    assert broken.is_convex()


# ---------------------------------------------------------------------- f = ∇ψ
@pytest.mark.parametrize("kind", ["lpn", "lpn_softplus_alpha0", "conv", "conv_quadratic"])
def test_output_is_the_autograd_gradient_of_the_potential_and_trains_like_it(kind):
    # both take torch.func.grad of ψ; compare with plain autograd (and its second derivatives)
    net = (lpn() if kind == "lpn" else lpn(nonneg="softplus", alpha=0.0) if kind.startswith("lpn")
           else conv_lpn(quadratic=3) if kind == "conv_quadratic" else conv_lpn())
    x = randn(*((5, 3) if kind.startswith("lpn") else (2, 1, 8, 10)), seed=6).requires_grad_(True)
    f = net(x)
    ref = torch.autograd.grad(net.potential(x).sum(), x, create_graph=True)[0]
    assert f.shape == x.shape
    assert torch.allclose(f, ref, atol=1e-12, rtol=1e-10)
    assert torch.allclose(net.prox(x, 0.3), ref, atol=1e-12, rtol=1e-10)
    # training through f: the parameters' gradients equal those of the double-backprop reference
    params = [p for p in net.parameters()]
    g1 = torch.autograd.grad(f.square().sum(), params, allow_unused=True, retain_graph=True)
    g2 = torch.autograd.grad(ref.square().sum(), params, allow_unused=True, retain_graph=True)
    for a, b in zip(g1, g2):
        assert (a is None) == (b is None)
        if a is not None:
            assert torch.allclose(a, b, atol=1e-10, rtol=1e-8)
    # and gradients w.r.t. the input (Hessian-vector products) too
    assert torch.allclose(torch.autograd.grad(f.sum(), x)[0], torch.autograd.grad(ref.sum(), x)[0], atol=1e-10)


def test_works_under_vmap_and_as_the_prox_of_an_unrolled_solver_in_every_grad_mode():
    net = lpn(dim=6, alpha=0.2)
    x = randn(4, 6, seed=7)
    per_sample = torch.func.vmap(lambda v: net(v[None])[0])(x)
    assert torch.allclose(per_sample, net(x), atol=1e-12)
    # plug-and-play proximal gradient, x ← f(x − α Aᵀ(Ax − y)): the same gradients in full and
    # checkpointed modes, and finite ones through the implicit mode
    torch.manual_seed(0)
    A = MatrixOperator(torch.eye(6, dtype=DT) + 0.1 * randn(6, 6, seed=8))
    y = randn(4, 6, seed=9)
    grads = {}
    for mode in ("full", "checkpoint", "implicit"):
        net.zero_grad()
        solver = Unrolled(ProxGradStep(net, step=0.5), num_iters=30, grad_mode=mode)
        out = solver(Problem.create(A, y), tol=1e-10 if mode == "implicit" else None)
        out.x.square().sum().backward()
        grads[mode] = torch.cat([p.grad.flatten() for p in net.parameters() if p.grad is not None])
        assert bool(torch.isfinite(grads[mode]).all())
    assert torch.allclose(grads["full"], grads["checkpoint"], atol=1e-10)
    # at the fixed point, the implicit gradient is the limit of backprop through ever more iterations
    # (the iteration contracts: both runs reach 1e-10), and the Jacobian-free one is finite too
    net.zero_grad()
    out = Unrolled(ProxGradStep(net, step=0.5), num_iters=400, grad_mode="full")(Problem.create(A, y))
    out.x.square().sum().backward()
    deep = torch.cat([p.grad.flatten() for p in net.parameters() if p.grad is not None])
    assert float((grads["implicit"] - deep).norm() / deep.norm()) < 1e-6
    for mode in ("jfb", "truncated"):
        net.zero_grad()
        solver = Unrolled(ProxGradStep(net, step=0.5), num_iters=30, grad_mode=mode)
        solver(Problem.create(A, y)).x.square().sum().backward()
        assert all(bool(torch.isfinite(p.grad).all()) for p in net.parameters() if p.grad is not None)


# ---------------------------------------------------------------------- the prox: monotone, non-expansive
def test_learned_prox_is_monotone_at_random_pairs():
    for net, shape in ((lpn(beta=8.0), (200, 3)), (conv_lpn(), (20, 1, 8, 8))):
        x, y = 2 * randn(*shape, seed=10), 2 * randn(*shape, seed=11)
        with torch.no_grad():
            d = (net(x) - net(y)).reshape(shape[0], -1)
        inner = (d * (x - y).reshape(shape[0], -1)).sum(1)
        # monotone, in fact 2α-strongly: ⟨f(x) − f(y), x − y⟩ ≥ 2α‖x − y‖²
        assert bool((inner >= 2 * net.alpha * (x - y).reshape(shape[0], -1).square().sum(1) - 1e-9).all())


def _toy_stages(seed: int) -> dict:
    """A small LPN trained on the Laplace toy: ℓ1 warm start, then proximal matching (γ 0.5 → 0.2)
    with the library's schedule, batches of 4000; the two stages' models."""
    from unroll.data.denoising import make_laplace_batch
    from unroll.train import ProximalMatchingSchedule

    torch.manual_seed(seed)
    net = LPN(1, hidden=32, layers=3, beta=10.0, alpha=0.0)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    loss = ProximalMatchingLoss(0.5)
    sched = ProximalMatchingSchedule(warmup_steps=300, gamma_start=0.5, gamma_end=0.2, decay_steps=400, stages=3,
                                     warmup_lr=3e-3, lr=1e-3)
    gen = torch.Generator().manual_seed(seed)
    stages = {}
    for step in range(700):
        if step == 300:
            stages["l1"] = copy.deepcopy(net)
        sched.apply(loss, step, [opt])
        b = make_laplace_batch(step, gen, 4000, 1, 1.0, 1.0, torch.float32)
        opt.zero_grad()
        loss(net(b.y), b.x).backward()
        opt.step()
        net.project_()
    stages["pm"] = net
    return {k: v.double() for k, v in stages.items()}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_proximal_matching_moves_the_toy_map_toward_soft_thresholding(seed):
    """At every seed (a short sampled run is noisy: at batch 1000 one seed in three missed)."""
    x = torch.linspace(-4, 4, 801, dtype=DT)[:, None]
    soft = soft_threshold(x, 1.0)
    maps = {k: m(x).detach() for k, m in _toy_stages(seed).items()}
    # the ℓ1 map (≈ the posterior median) shrinks but does not threshold; within the dead zone of
    # soft thresholding (|x| < 1, where it is 0) proximal matching flattens the map toward 0
    dead = x.abs() < 0.8
    flat = {k: float(f[dead].abs().max()) for k, f in maps.items()}
    assert flat["pm"] < 0.65 * flat["l1"], flat
    core = x.abs() <= 2.5  # where a short run has seen enough samples
    err = {k: float((f - soft)[core].abs().mean()) for k, f in maps.items()}
    assert err["pm"] < 0.75 * err["l1"], err


def test_learned_prox_of_a_true_prox_is_non_expansive_within_tolerance():
    """An LPN fitted to soft thresholding (a true, firmly non-expansive prox) is monotone and
    non-expansive at random pairs, up to the overshoot of a finite-β softplus at the kinks."""
    torch.manual_seed(0)
    net = LPN(1, hidden=16, layers=2, beta=10.0)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(0)
    for _ in range(400):
        y = 8 * torch.rand(512, 1, generator=gen) - 4
        loss = (net(y) - soft_threshold(y, 1.0)).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        net.project_()
    net = net.double()
    x = 4 * randn(4000, 1, seed=12)
    y = x + 0.3 * randn(4000, 1, seed=13)
    with torch.no_grad():
        ratio = ((net(x) - net(y)) / (x - y)).squeeze(1)
    assert float(ratio.min()) >= 0.0  # monotone
    assert float(ratio.max()) <= 1.25, float(ratio.max())  # non-expansive within tolerance
    assert float(ratio.mean()) <= 0.8  # and contracting on average (slope 0 on the dead zone)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_learned_prox_trained_under_the_jacobian_bound_is_non_expansive(seed):
    """The same fit with ψ's Hessian penalised above 0.95 (``LipschitzPenalty(symmetric=True)``,
    as the bounded ConvLPN of the PnP benchmark is trained): at 20 000 random pairs, far apart
    (independent N(0, 16)) and near (0.3 apart), ``0 ≤ (f(x) − f(y))/(x − y) ≤ 1``: monotone and
    non-expansive, with no tolerance needed, at every seed."""
    from unroll.lipschitz import LipschitzPenalty

    torch.manual_seed(seed)
    net = LPN(1, hidden=16, layers=2, beta=10.0)
    penalty = LipschitzPenalty(weight=10.0, bound=0.95, iters=3, samples=256, symmetric=True)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(400):
        y = 8 * torch.rand(512, 1, generator=gen) - 4
        value, _ = penalty(net, y)
        loss = (net(y) - soft_threshold(y, 1.0)).square().mean() + value
        opt.zero_grad()
        loss.backward()
        opt.step()
        net.project_()
    net = net.double()
    x, far = 4 * randn(20000, 1, seed=100 + seed), 4 * randn(20000, 1, seed=200 + seed)
    near = x + 0.3 * randn(20000, 1, seed=300 + seed)
    with torch.no_grad():
        for y in (far, near):
            ratio = ((net(x) - net(y)) / (x - y)).squeeze(1)
            assert float(ratio.min()) >= 0.0 and float(ratio.max()) <= 1.0, (float(ratio.min()), float(ratio.max()))


# ---------------------------------------------------------------------- inverse and regulariser
def test_inverse_of_the_default_image_lpn_converges_where_plain_gradient_steps_stall():
    """ConvLPN's defaults (α = 1e-6: ψ is barely strongly convex) make f⁻¹ ill-conditioned: the
    accelerated start reaches the tolerance within the default budget, plain steps do not."""
    torch.manual_seed(0)
    net = ConvLPN(1).double()
    x0 = torch.rand(2, 1, 16, 16, dtype=DT, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        x = net(x0)
        y, info = net.inverse(x, return_info=True)
        _, plain = net.inverse(x, return_info=True, accelerate=False, max_iter=int(info.iterations.max()))
        residual = float((net(y) - x).abs().max())
    assert info.status == Status.CONVERGED and plain.status == Status.MAX_ITER
    assert residual < 1e-6
    assert float((y - x0).abs().max()) < 0.05 * float((x - x0).abs().max()) + 1e-3


@pytest.mark.parametrize("kind", ["lpn", "conv", "conv_quadratic"])
def test_inverse_recovers_x_from_f_of_x(kind):
    net = lpn(alpha=0.2) if kind == "lpn" else conv_lpn(alpha=0.2, quadratic=3 if kind == "conv_quadratic" else 0)
    x = randn(*((6, 3) if kind == "lpn" else (2, 1, 8, 8)), seed=14)
    with torch.no_grad():
        y, info = net.inverse(net(x), tol=1e-10, max_iter=5000, return_info=True)
    assert info.status == "converged", info
    assert torch.allclose(y, x, atol=1e-6), (y - x).abs().max()


def test_inverse_is_differentiable_with_the_inverse_hessian_as_jacobian():
    net = lpn(dim=3, alpha=0.3)
    x = randn(1, 3, seed=15)
    target = net(x).detach().requires_grad_(True)
    jac = []
    for i in range(3):
        y = net.inverse(target, tol=1e-12, max_iter=20000)
        (g,) = torch.autograd.grad(y[0, i], target)
        jac.append(g[0])
    jac = torch.stack(jac)
    h = torch.autograd.functional.hessian(lambda v: net.potential(v[None])[0], x[0])
    assert torch.allclose(jac, torch.linalg.inv(h), atol=1e-5), (jac, torch.linalg.inv(h))


def test_f_is_the_prox_of_the_learned_regulariser():
    """f(x) = argmin_z ½‖z − x‖² + R(z): the objective at f(x) is below its value at random z."""
    net = lpn(dim=2, alpha=0.3, beta=2.0)
    x = randn(8, 2, seed=16)
    with torch.no_grad():
        fx = net(x)
        best = 0.5 * (fx - x).square().sum(1) + net.regularizer(fx, tol=1e-12, max_iter=20000)
        for seed in range(5):
            z = fx + 0.5 * randn(8, 2, seed=100 + seed)
            other = 0.5 * (z - x).square().sum(1) + net.regularizer(z, tol=1e-12, max_iter=20000)
            assert bool((best <= other + 1e-7).all()), (best, other)
    # and R is differentiable with ∇R(x) = f⁻¹(x) − x
    z = randn(3, 2, seed=17).requires_grad_(True)
    (g,) = torch.autograd.grad(net.regularizer(z, tol=1e-12, max_iter=20000).sum(), z)
    assert torch.allclose(g, net.inverse(z.detach(), tol=1e-12, max_iter=20000) - z.detach(), atol=1e-6)


# ---------------------------------------------------------------------- losses and the schedule
def test_losses_match_closed_forms():
    a, b = randn(4, 1, 3, 3, seed=18), randn(4, 1, 3, 3, seed=19)
    assert float(L1Loss()(a, b)) == pytest.approx(float(torch.nn.functional.l1_loss(a, b)))
    assert L2Loss is MSELoss
    d = (a - b).reshape(4, -1).norm(dim=1) / 3.0  # ‖·‖ / √N, N = 9
    for gamma in (0.1, 0.5, 2.0):
        expected = (1 - torch.exp(-(d / gamma) ** 2)).mean()
        assert float(ProximalMatchingLoss(gamma)(a, b)) == pytest.approx(float(expected), rel=1e-12)
    plain = proximal_matching(a, b, 0.5, normalize=False)
    assert torch.allclose(plain, 1 - torch.exp(-((a - b).reshape(4, -1).norm(dim=1) / 0.5) ** 2))
    pm = ProximalMatchingLoss(0.5, l1_warmup=True)
    assert float(pm(a, b)) == pytest.approx(float(L1Loss()(a, b)))
    with pytest.raises(ValueError, match="gamma"):
        ProximalMatchingLoss(0.0)
    with pytest.raises(ValueError, match="target"):
        ProximalMatchingLoss(0.5)(a, None)


def test_gamma_schedule():
    from unroll.train import ProximalMatchingSchedule

    s = ProximalMatchingSchedule(warmup_steps=100, gamma_start=0.5, gamma_end=0.1, decay_steps=1000, stages=5)
    assert s.in_warmup(99) and not s.in_warmup(100)
    assert [round(s.gamma_at(k), 10) for k in (0, 100, 299, 300, 500, 900, 1099, 5000)] == \
        [0.5, 0.5, 0.5, 0.4, 0.3, 0.1, 0.1, 0.1]
    lin = ProximalMatchingSchedule(warmup_steps=0, gamma_start=0.5, gamma_end=0.1, decay_steps=100)
    assert lin.gamma_at(50) == pytest.approx(0.3) and lin.gamma_at(100) == pytest.approx(0.1)
    loss, opt = ProximalMatchingLoss(0.9), torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    s2 = ProximalMatchingSchedule(warmup_steps=10, decay_steps=10, warmup_lr=1e-3, lr=1e-4)
    s2.apply(loss, 3, [opt])
    assert loss.l1_warmup and opt.param_groups[0]["lr"] == 1e-3
    s2.apply(loss, 10, [opt])
    assert not loss.l1_warmup and loss.gamma == 0.5 and opt.param_groups[0]["lr"] == 1e-4
    for kwargs, name in (({"gamma_end": 0.6}, "gamma_end"), ({"stages": 1}, "stages"),
                         ({"warmup_steps": -1}, "warmup_steps"), ({"lr": -1.0}, "lr")):
        with pytest.raises(ValueError, match=name):
            ProximalMatchingSchedule(**kwargs)
    # its learning rates together with a task's scheduler: refused, not silently overridden
    from types import SimpleNamespace

    class Task:
        loss = ProximalMatchingLoss(0.5)
    with pytest.raises(ValueError, match="lr / warmup_lr set the learning rate at every batch.*lr_scheduler"):
        s2.on_fit_start(SimpleNamespace(lr_scheduler_configs=[object()]), Task())
    s2.on_fit_start(SimpleNamespace(lr_scheduler_configs=[]), Task())


def test_the_schedule_switches_from_l1_to_proximal_matching_inside_a_lightning_fit(tmp_path):
    """Through a real Trainer: ℓ1 with warmup_lr for the warm start, then proximal matching at
    the scheduled γ and lr from the first step after it; ProjectLPN keeps the weights
    non-negative after every optimiser step."""
    import lightning as L

    from unroll.data import LaplaceDenoisingDataModule
    from unroll.train import DenoisingTask, ProjectLPN, ProximalMatchingSchedule

    seen = []

    class Record(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            loss = pl_module.loss
            seen.append((trainer.global_step - 1, loss.l1_warmup, loss.gamma, trainer.optimizers[0].param_groups[0]["lr"],
                         min(float(w.detach().min()) for w in pl_module.model.constrained_weights())))

    torch.manual_seed(0)
    task = DenoisingTask(LPN(1, hidden=8, layers=3, beta=10.0), loss=ProximalMatchingLoss(0.5))
    data = LaplaceDenoisingDataModule(dim=1, batch_size=64, train_batches=10, val_size=16, test_size=16)
    sched = ProximalMatchingSchedule(warmup_steps=3, gamma_start=0.5, gamma_end=0.1, decay_steps=4, stages=3,
                                     warmup_lr=1e-2, lr=1e-3)
    trainer = L.Trainer(max_steps=8, callbacks=[ProjectLPN(), sched, Record()], logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        limit_val_batches=0, accelerator="cpu", default_root_dir=tmp_path)
    trainer.fit(task, datamodule=data)
    assert [k for k, *_ in seen] == list(range(8))
    assert [w for _, w, *_ in seen] == [True] * 3 + [False] * 5
    assert [lr for *_, lr, _ in seen] == [1e-2] * 3 + [1e-3] * 5
    assert [round(g, 6) for _, _, g, *_ in seen[3:]] == [round(sched.gamma_at(k), 6) for k in range(3, 8)]
    assert seen[-1][2] == pytest.approx(0.1) and seen[3][2] == pytest.approx(0.5)
    assert min(m for *_, m in seen) >= 0.0  # projected after every step


# ---------------------------------------------------------------------- data
def test_patch_data_module_holds_out_its_test_images_and_adds_the_noise_asked_for():
    from unroll.data import PatchDenoisingDataModule, load_shipped_image
    from unroll.data.denoising import TEST_IMAGES, TRAIN_IMAGES, VAL_IMAGES

    assert not set(TEST_IMAGES) & set(TRAIN_IMAGES) and not set(VAL_IMAGES) & set(TRAIN_IMAGES)
    dm = PatchDenoisingDataModule(patch_size=24, noise_std=0.05, batch_size=16, val_size=8, test_size=8)
    dm.setup()
    b = next(iter(dm.train_dataloader()))
    assert b.y.shape == b.x.shape == (16, 1, 24, 24)
    assert float(b.x.min()) >= 0 and float(b.x.max()) <= 1
    assert float((b.y - b.x).std()) == pytest.approx(0.05, rel=0.1)
    # test patches are cut from the held-out images: each one occurs in camera or coins
    cams = {n: load_shipped_image(n, torch.float32) for n in TEST_IMAGES}
    patch = dm.test_split.x[0, 0]
    found = any(bool((im.unfold(0, 24, 1).unfold(1, 24, 1) - patch).abs().amax((-1, -2)).min() < 1e-6)
                for im in cams.values())
    assert found
    assert set(dm.test_images()) == set(TEST_IMAGES)
    with pytest.raises(ValueError, match="train_images"):
        PatchDenoisingDataModule(train_images=["nope"])
    with pytest.raises(ValueError, match="patch_size"):
        PatchDenoisingDataModule(patch_size=5000)


def test_laplace_data_module_draws_the_toy():
    from unroll.data import LaplaceDenoisingDataModule

    dm = LaplaceDenoisingDataModule(val_size=20000, test_size=10)
    dm.setup()
    v = dm.val_split
    assert v.x.shape == (20000, 1)
    assert float(v.x.abs().mean()) == pytest.approx(1.0, abs=0.03)  # E|x| = b
    assert float(v.x.median()) == pytest.approx(0.0, abs=0.03)
    assert float((v.y - v.x).std()) == pytest.approx(1.0, abs=0.03)


@pytest.mark.parametrize("scale,noise", [(1.0, 1.0), (0.5, 0.3)])
def test_laplace_posterior_draws_match_quadrature(scale, noise):
    """sample_laplace_posterior against p(x | y) ∝ exp(−|x|/b − (y − x)²/(2σ²)) on a fine grid:
    mean, standard deviation and P(x > 0), from the kink to far in the tails (y = ±6)."""
    from unroll.data.denoising import sample_laplace_posterior

    gen = torch.Generator().manual_seed(3)
    t = torch.linspace(-12, 12, 24001, dtype=DT)
    n = 50000
    for y0 in (-6.0, -1.0, 0.0, 0.6, 1.0, 2.5, 6.0):
        x = sample_laplace_posterior(torch.full((n,), y0), gen, scale, noise)
        assert x.dtype == DT and bool(torch.isfinite(x).all())
        w = torch.softmax(-t.abs() / scale - (y0 - t) ** 2 / (2 * noise ** 2), 0)
        mean = float((w * t).sum())
        sd = float(((w * t * t).sum() - mean ** 2).sqrt())
        se = 5 * sd / n ** 0.5
        assert float(x.mean()) == pytest.approx(mean, abs=se), y0
        assert float(x.std()) == pytest.approx(sd, rel=0.02), y0
        assert float((x > 0).double().mean()) == pytest.approx(float(w[t > 0].sum()), abs=0.006), y0
    with pytest.raises(ValueError, match="noise_std"):
        sample_laplace_posterior(torch.zeros(3), gen, 1.0, 0.0)


@pytest.mark.parametrize("scale,noise", [(1.0, 1.0), (0.5, 0.7)])
def test_laplace_posterior_kernel_mean_matches_quadrature_and_the_sampled_loss(scale, noise):
    """laplace_posterior_kernel_log_mean (the conditional expectation of proximal matching's kernel,
    in closed form) against a quadrature of the kernel over p(x | y), from the kink to the tails
    and down to γ = 0.02; its gradient in c against central differences; and 1 − exp(it) against
    the sampled loss averaged over exact posterior draws."""
    from unroll.data.denoising import laplace_posterior_kernel_log_mean, sample_laplace_posterior

    t = torch.linspace(-25, 25, 500001, dtype=DT)
    for y0 in (-3.0, -1.0, 0.2, 1.0, 2.5, 6.0):
        w = torch.softmax(-t.abs() / scale - (y0 - t) ** 2 / (2 * noise ** 2), 0)
        for gamma in (0.5, 0.1, 0.02):
            c = torch.tensor([-1.0, 0.0, 0.3, y0 - 1.0], dtype=DT)
            ref = torch.log(w @ torch.exp(-((c[None, :] - t[:, None]) / gamma) ** 2))
            got = laplace_posterior_kernel_log_mean(c, torch.full_like(c, y0), gamma, scale, noise)
            assert torch.allclose(got, ref, rtol=1e-6, atol=1e-8), (y0, gamma, got, ref)
    c = torch.tensor([0.05, 0.7, 1.9], dtype=DT, requires_grad=True)
    y = torch.tensor([0.9, 1.6, 3.0], dtype=DT)
    g, = torch.autograd.grad(laplace_posterior_kernel_log_mean(c, y, 0.1, scale, noise).sum(), c)
    h = 1e-6
    fd = (laplace_posterior_kernel_log_mean(c.detach() + h, y, 0.1, scale, noise)
          - laplace_posterior_kernel_log_mean(c.detach() - h, y, 0.1, scale, noise)) / (2 * h)
    assert torch.allclose(g, fd, rtol=1e-5, atol=1e-7)
    gen = torch.Generator().manual_seed(0)
    x = sample_laplace_posterior(torch.full((200000,), 1.3, dtype=DT), gen, scale, noise)
    sampled = float((1 - torch.exp(-((0.4 - x) / 0.3) ** 2)).mean())
    exact = 1 - float(laplace_posterior_kernel_log_mean(torch.tensor(0.4, dtype=DT), torch.tensor(1.3, dtype=DT),
                                                         0.3, scale, noise).exp())
    assert sampled == pytest.approx(exact, abs=4e-3)
    with pytest.raises(ValueError, match="gamma"):
        laplace_posterior_kernel_log_mean(c, y, 0.0)


# ---------------------------------------------------------------------- configs through the CLI
@pytest.mark.parametrize("name", ["lpn_laplace_toy", "lpn_patches"])
def test_configs_run_through_the_cli(name, tmp_path, monkeypatch):
    from unroll.train.cli import main
    from unroll.train.unroll_cli import UnrollCLI  # noqa: F401 - the CLI the command uses

    monkeypatch.chdir(tmp_path)
    small = ["--data.init_args.val_size=16", "--data.init_args.test_size=16", "--data.init_args.batch_size=8"]
    if name == "lpn_patches":
        small += ["--model.init_args.model.init_args.hidden=4"]
    main(["fit", "--config", str(CONFIGS / f"{name}.yaml"), f"--trainer.default_root_dir={tmp_path}",
          "--trainer.max_steps=3", "--trainer.val_check_interval=3", "--trainer.enable_progress_bar=false", *small])
    ckpts = list(tmp_path.glob(f"runs/{name}/version_0/checkpoints/last.ckpt"))
    assert ckpts, list(tmp_path.rglob("*"))
    state = torch.load(ckpts[0], weights_only=True)["state_dict"]
    weights = [v for k, v in state.items() if k.startswith("model.weights.")]
    assert weights and all(bool((w >= 0).all()) for w in weights)  # projected: ψ convex


# ---------------------------------------------------------------------- bad input
def test_bad_input_gets_a_clear_error():
    net, conv = lpn(dim=3), conv_lpn(downsample=1)  # conv: min size 3·2 = 6
    with pytest.raises(ValueError, match=r"x: expected shape \(B, 3\)"):
        net(randn(4, 5))
    with pytest.raises(ValueError, match="channel"):
        conv(randn(2, 3, 16, 16))
    with pytest.raises(ValueError, match=r"at least 6×6.*got 5×16"):
        conv(randn(2, 1, 5, 16))
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        conv(randn(16, 16))
    bad = randn(4, 3)
    bad[1, 2] = float("nan")
    with pytest.raises(ValueError, match="1 NaN"):
        net(bad)
    with pytest.raises(ValueError, match="NaN"):
        net.prox(bad, 1.0)
    img = randn(1, 1, 8, 8)
    img[0, 0, 0, 0] = float("inf")
    with pytest.raises(ValueError, match="Inf"):
        conv.potential(img)
    with pytest.raises(ValueError, match="step"):
        net.prox(randn(4, 3), -0.5)
    with pytest.raises(ValueError, match="step"):
        net.prox(randn(4, 3), torch.tensor([[1.0], [-1.0], [1.0], [1.0]], dtype=DT))
    with pytest.raises(ValueError, match="step"):
        net.prox(randn(4, 3), float("nan"))
    with pytest.raises(ValueError,
                       match=r"step: expected a number or a tensor broadcastable to x \(4, 3\).*got shape \(2,\)"):
        net.prox(randn(4, 3), torch.ones(2, dtype=DT))
    with pytest.raises(TypeError, match=r"x: expected the network's dtype torch.float64, got torch.float32"):
        conv(randn(1, 1, 8, 8).float())
    with pytest.raises(ValueError, match="x: expected at least one sample, got an empty batch"):
        conv(randn(0, 1, 8, 8))
    with pytest.raises(ValueError, match="beta"):
        LPN(2, beta=0.0)
    with pytest.raises(ValueError, match="alpha"):
        LPN(2, alpha=-1.0)
    with pytest.raises(ValueError, match="nonneg"):
        LPN(2, nonneg="clip")
    with pytest.raises(ValueError, match="downsample"):
        ConvLPN(1, layers=2, downsample=3)
    with pytest.raises(ValueError, match=r"init: expected 'small' or 'default', got 'paper'"):
        ConvLPN(1, init="paper")
    with pytest.raises(ValueError, match="kernel_size"):
        ConvLPN(1, kernel_size=4)
    assert conv.min_size == 6 and conv(randn(1, 1, 6, 9)).shape == (1, 1, 6, 9)  # any size from min_size
    with pytest.raises(ValueError, match="quadratic: expected 0 .none. or an odd kernel size, got 4"):
        ConvLPN(1, quadratic=4)


def test_learned_quadratic_adds_a_psd_filter_and_starts_as_half_the_squared_norm():
    net = conv_lpn(quadratic=3, alpha=0.0)
    x = randn(2, 1, 8, 8, seed=31)
    base = copy.deepcopy(net)
    base.quad = None
    with torch.no_grad():
        q = net.quad(x)
        # ψ = ψ_ICNN + ½‖Qx‖², f = ∇ψ_ICNN + QᵀQx (QᵀQ by the adjoint of the convolution)
        torch.testing.assert_close(net.potential(x), base.potential(x) + 0.5 * q.square().sum((1, 2, 3)))
        qtq = torch.nn.functional.conv_transpose2d(q, net.quad.weight, padding=1)
        torch.testing.assert_close(net(x), base(x) + qtq)
    fresh = ConvLPN(3, hidden=4, layers=1, downsample=0, quadratic=5, quadratic_channels=4).to(DT)
    z = randn(2, 3, 7, 7, seed=32)
    with torch.no_grad():
        torch.testing.assert_close(0.5 * fresh.quad(z).square().sum((1, 2, 3)), 0.5 * z.square().sum((1, 2, 3)))


def _toy_benchmark():
    """benchmarks/lpn_toy.py imported afresh as a module (its helpers and ``main``)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("_bench_lpn_toy", Path(__file__).resolve().parents[1]
                                                  / "benchmarks" / "lpn_toy.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("estimate", ["sample", "kernel", "conditional"])
def test_toy_benchmark_runs_in_its_smallest_mode(tmp_path, monkeypatch, estimate):
    import json
    import sys

    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "benchmarks"))
    mod = _toy_benchmark()
    threads = torch.get_num_threads()
    out, fig = tmp_path / "toy.json", tmp_path / "toy.png"
    monkeypatch.setattr(sys, "argv", ["lpn_toy.py", "--scale", "0.0002", "--batch", "64", "--grid", "11",
                                      "--inverse-iters", "50", "--pm-estimate", estimate,
                                      "--runs", str(tmp_path / "runs"), "--out", str(out), "--figure", str(fig)])
    try:
        mod.main()
    finally:
        torch.set_num_threads(threads)
    res = json.loads(out.read_text())
    assert set(res["maps"]) == {"l2", "l1", "pm_paper", "pm"}
    assert res["budget_steps"]["pm"] > res["budget_steps"]["pm_paper"] > res["budget_steps"]["l1"] > 0
    assert res["maps"]["pm"]["final_gamma"] < res["maps"]["pm_paper"]["final_gamma"]
    assert all(math.isfinite(v["max_err_soft_threshold"]) for v in res["maps"].values())
    assert res["schedules"]["pm"]["pm_estimate"] == res["schedules"]["pm_paper"]["pm_estimate"] == estimate
    assert fig.read_bytes()[:4] == b"\x89PNG"


def test_toy_kernel_estimate_uses_samples_only_and_matches_the_closed_form_expectation():
    """KernelProximalMatching estimates E[exp(−((f(y) − x)/γ)²) | y] from a batch's clean x and
    the noise model: with many references it agrees with the closed form (which knows the
    prior); its gradient is not empty at small γ where the sampled loss's mostly is."""
    from unroll.data.denoising import make_laplace_batch

    mod = _toy_benchmark()
    b = make_laplace_batch(0, torch.Generator().manual_seed(0), 4000, 1, 1.0, 1.0, torch.float64)
    f = (0.6 * b.y).requires_grad_(True)
    for gamma in (0.5, 0.1, 0.03):
        kern = mod.KernelProximalMatching(gamma, references=4000).batch_loss(f, b.y, b.x)
        exact = mod.ConditionalProximalMatching(gamma)(f, b.y)
        assert float(kern.detach()) == pytest.approx(float(exact.detach()), abs=5e-3), gamma
    g_kern = torch.autograd.grad(mod.KernelProximalMatching(0.03, references=4000).batch_loss(f, b.y, b.x), f)[0]
    g_samp = torch.autograd.grad(ProximalMatchingLoss(0.03)(f, b.x), f)[0]
    moved = {k: float((g.abs() > 1e-4 * g.abs().max()).double().mean()) for k, g in (("kern", g_kern), ("samp", g_samp))}
    assert moved["kern"] > 0.99 and moved["samp"] < 0.2, moved  # the share of the batch whose f(y) gets a gradient


def test_toy_benchmark_posterior_sampling_spreads_y_and_keeps_the_posterior():
    """--sampling posterior: y uniform on [−y_range, y_range], x given y the toy's posterior (whose
    mean is below y in magnitude, shrunk by about 1 in the tails)."""
    mod = _toy_benchmark()
    gen = torch.Generator().manual_seed(0)
    b = mod.toy_batch(0, gen, 20000, "posterior", 5.0)
    assert b.y.shape == b.x.shape == (20000, 1) and b.y.dtype == torch.float32
    assert float(b.y.abs().max()) <= 5.0 and float((b.y.abs() > 4).float().mean()) == pytest.approx(0.2, abs=0.02)
    tail = b.y[:, 0] > 3.5
    assert float((b.y - b.x)[tail].mean()) == pytest.approx(1.0, abs=0.05)  # posterior mean ≈ y − 1 there
    j = mod.toy_batch(0, gen, 20000, "joint", 5.0)
    assert float((j.y.abs() > 4).float().mean()) < 0.05


def test_toy_benchmark_best_map_at_a_given_gamma_matches_brute_force_quadrature(monkeypatch):
    """The closed-form minimiser of the expected proximal-matching loss on the toy (the yardstick
    of BENCHMARKS.md: no map can beat it at that γ) against a plain grid search over c of a
    quadrature over x; it tends to soft thresholding as γ → 0, slowest at the kink y = 1."""
    mod = _toy_benchmark()
    y = torch.tensor([-2.0, -0.5, 0.3, 1.0, 1.4, 3.0], dtype=DT)
    t = torch.linspace(-9, 9, 9001, dtype=DT)
    post = torch.softmax(-t.abs()[None] - 0.5 * (y[:, None] - t[None]) ** 2, dim=1)  # p(x | y) on the grid
    c = torch.linspace(-2.5, 2.5, 1001, dtype=DT)
    for gamma in (0.3, 0.1):
        score = post @ torch.exp(-((c[None, :] - t[:, None]) / gamma) ** 2)  # (Y, C)
        brute = c[score.argmax(1)]
        closed = mod.proximal_matching_optimum(y, gamma)
        assert torch.allclose(closed, brute, atol=6e-3), (gamma, closed, brute)
    grid = torch.linspace(-4, 4, 401, dtype=DT)
    errs = [float((mod.proximal_matching_optimum(grid, g) - soft_threshold(grid, 1.0)).abs().max()) for g in
            (0.5, 0.1, 0.02)]
    assert errs[0] > errs[1] > errs[2] and 0.10 < errs[1] < 0.12 and errs[2] < 0.035, errs
