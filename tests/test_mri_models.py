"""E2E VarNet, RecurrentVarNet and CIRIM (issue 18): shapes, data consistency, recurrent state,
gradient modes, torch.compile, and a few training steps beating zero-filled.

The data are small: the built-in brain slices (real anatomy) average-pooled to 32×32 and turned
into multi-coil k-space with the project's simulator (birdcage coils, smooth phase), undersampled
by the operators' masks; the operator's maps are estimated from the ACS lines, as the data module
does.
"""

import pytest
import torch
import torch.nn.functional as F

from unroll.metrics import ssim
from unroll.models import CIRIM, RecurrentVarNet, VarNet, acs_mask, time_step_loss, time_step_weights
from unroll.models.mri_blocks import MRIProblem, data_scale, expand_coils, reduce_coils
from unroll.models.unet import NormUNet, UNet, channels_to_complex, complex_to_channels
from unroll.operators import SENSE
from unroll.operators.masks import center_mask, equispaced_mask, poisson_disc_mask
from unroll.operators.mri import estimate_sensitivities

TINY = {
    "varnet": lambda **kw: VarNet(num_cascades=2, channels=4, num_pools=2, sens_channels=4, sens_pools=2, **kw),
    "recurrent_varnet": lambda **kw: RecurrentVarNet(num_steps=3, hidden=6, num_layers=2, init_channels=[6, 6],
                                                     init_dilations=[1, 2], **kw),
    "cirim": lambda **kw: CIRIM(num_cascades=2, time_steps=2, hidden=6, **kw),
}


def random_data(b=2, c=3, h=16, w=16, mask="equispaced", seed=0, dtype=torch.complex64):
    """Random complex images and maps (normalised, Σ|S|² = 1), k-space y = A x."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, h, w, generator=g, dtype=dtype)
    maps = torch.randn(b, c, h, w, generator=g, dtype=dtype)
    maps = maps / maps.abs().square().sum(1, keepdim=True).sqrt()
    if mask == "equispaced":
        m = equispaced_mask((w,), 0.25, 2, offset=1).view(1, 1, 1, w)
    else:
        m = poisson_disc_mask((h, w), 2.5, 0.25, seed=seed).view(1, 1, h, w)
    op = SENSE(maps, m.to(x.real.dtype))
    return x, op, op(x)


def brain_data(slices, c=4, size=32, accel=4):
    """Built-in brain slices (indices ``slices``) at ``size``² with ``c`` coils, equispaced
    ``accel``× (centre 16 %): returns (y, op with ACS-estimated maps, magnitude target)."""
    from unroll.data.fastmri import load_builtin_images
    from unroll.data.fastmri_writer import simulate_multicoil

    imgs = torch.as_tensor(load_builtin_images()[list(slices)])
    imgs = F.adaptive_avg_pool2d(imgs.unsqueeze(1), size).squeeze(1)
    sim = simulate_multicoil(imgs, num_coils=c, noise=0.0, seed=0)
    k = sim["kspace"]
    mask = equispaced_mask((size,), 0.16, accel, offset=1).view(1, 1, 1, size)
    y = k * mask
    n_low = int(center_mask(size, round(size * 0.16)).sum())
    maps = estimate_sensitivities(y, n_low)
    return y, SENSE(maps, mask.float()), sim["reconstruction_rss"]


# ------------------------------------------------------------------------------ building blocks
def test_complex_channels_round_trip():
    x = torch.randn(2, 3, 5, 4, dtype=torch.complex64)
    z = complex_to_channels(x)
    assert z.shape == (2, 6, 5, 4)
    torch.testing.assert_close(z[:, 2], x[:, 1].real)
    torch.testing.assert_close(z[:, 3], x[:, 1].imag)
    torch.testing.assert_close(channels_to_complex(z), x)


@pytest.mark.parametrize("hw", [(16, 16), (17, 13), (9, 30)])
def test_unet_odd_and_even_sizes(hw):
    torch.manual_seed(0)
    assert UNet(2, 3, channels=4, num_pools=2)(torch.randn(2, 2, 16, 20)).shape == (2, 3, 16, 20)
    net = NormUNet(1, channels=4, num_pools=2)
    x = torch.randn(2, 1, *hw, dtype=torch.complex64)
    out = net(x)
    assert out.shape == x.shape and out.is_complex()
    # per-sample normalisation: the map is equivariant to a positive scale
    torch.testing.assert_close(net(7.5 * x), 7.5 * out, rtol=1e-4, atol=1e-5)


def test_acs_mask_finds_the_fully_sampled_centre():
    w = 40
    m = equispaced_mask((w,), 0.2, 4, offset=0)
    n_low = round(w * 0.2)
    found = acs_mask(m.float().view(1, 1, 1, w)).view(w).bool()
    # the ACS region is the centre block, grown only by sampled columns adjacent to it
    centre = center_mask(w, n_low)
    assert bool((found & ~m).sum() == 0) and bool((centre & ~found).sum() == 0)
    idx = torch.nonzero(found).view(-1)
    assert int(idx[-1] - idx[0] + 1) == int(found.sum())  # contiguous
    assert int(found.sum()) <= n_low + 2
    # 2-D (Poisson-disc): contains the fully sampled centre square, only sampled points
    pm = poisson_disc_mask((24, 24), 3.0, 0.25, seed=1)
    found2 = acs_mask(pm.float().view(1, 1, 24, 24)).view(24, 24).bool()
    calib = torch.outer(center_mask(24, 6), center_mask(24, 6))
    assert bool((calib & ~found2).sum() == 0) and bool((found2 & ~pm).sum() == 0)


def test_mri_problem_gradient_is_the_sense_normal_equation():
    """The RIM's likelihood gradient R(M(E x − y)) equals Aᴴ(A x − y) of the SENSE operator."""
    x, op, y = random_data(mask="poisson", dtype=torch.complex128)
    z = torch.randn_like(x)
    p = MRIProblem(op=op, y=y, maps=op.maps, mask=op.mask.to(torch.float64))
    torch.testing.assert_close(p.grad(z), op.adjoint(op(z) - y))
    torch.testing.assert_close(reduce_coils(expand_coils(z, op.maps), op.maps), z)  # Σ|S|² = 1


# ------------------------------------------------------------------------------ shapes
@pytest.mark.parametrize("name", list(TINY))
@pytest.mark.parametrize("shape", [(1, 16, 16), (3, 17, 15), (4, 12, 19)], ids=["c1-even", "c3-odd", "c4-mixed"])
def test_shapes_odd_even_sizes_and_coils(name, shape):
    torch.manual_seed(0)
    c, h, w = shape
    x, op, y = random_data(b=2, c=c, h=h, w=w, seed=c)
    model = TINY[name]()
    out = model(y, op)
    assert out.shape == (2, h, w) and out.dtype == torch.complex64
    assert torch.isfinite(torch.view_as_real(out)).all()
    out.abs().sum().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("name", list(TINY))
def test_two_dimensional_poisson_mask(name):
    torch.manual_seed(0)
    x, op, y = random_data(b=2, c=2, h=20, w=18, mask="poisson")
    assert TINY[name]()(y, op).shape == (2, 20, 18)


def test_bad_input_is_named():
    x, op, y = random_data()
    model = TINY["varnet"]()
    with pytest.raises(ValueError, match="y: VarNet expected complex multi-coil k-space"):
        model(y.abs(), op)
    with pytest.raises(TypeError, match="op: VarNet expected a SENSE operator"):
        model(y, torch.eye(3))
    with pytest.raises(ValueError, match=r"y: k-space of shape \(2, 2, 16, 16\) does not match"):
        model(y[:, :2], op)


@pytest.mark.parametrize("name", ["recurrent_varnet", "cirim"])
def test_recurrent_models_are_scale_equivariant(name):
    """Both divide the data by a per-sample scale and multiply it back: f(a y) = a f(y)."""
    torch.manual_seed(0)
    x, op, y = random_data()
    model = TINY[name]()
    torch.testing.assert_close(model(1e-4 * y, op), 1e-4 * model(y, op), rtol=1e-4, atol=1e-9)


# ------------------------------------------------------------------------------ data consistency
def _sampled(k, op):
    return k * op.mask.float()


def test_varnet_hard_dc_keeps_sampled_kspace_and_soft_dc_moves_it():
    torch.manual_seed(0)
    x, op, y = random_data()
    hard = VarNet(num_cascades=2, channels=4, num_pools=2, sensitivities="operator", dc_weight=float("inf"),
                  identity_init=False)  # refinements not 0 from the start
    out = hard(y, op, return_trajectory=True)
    k = out.state.k
    torch.testing.assert_close(_sampled(k, op), _sampled(y, op), rtol=0, atol=1e-6)  # exactly the measurements
    assert hard.unrolled.steps[0].dc() is None and not list(hard.unrolled.steps[0].dc.parameters())
    # finite weights: the sampled entries move, by an amount that depends on the weight
    moved = []
    for weight in (0.5, 1.0):
        soft = VarNet(num_cascades=2, channels=4, num_pools=2, sensitivities="operator", dc_weight=weight,
                      identity_init=False)
        soft.load_state_dict({k_: v for k_, v in hard.state_dict().items() if "dc" not in k_}, strict=False)
        ks = soft(y, op, return_trajectory=True).state.k
        diff = (_sampled(ks, op) - _sampled(y, op)).abs().max()
        assert diff > 1e-2
        moved.append(ks)
    assert (moved[0] - moved[1]).abs().max() > 1e-3
    # the weight is learned (a parameter with a gradient)
    soft(y, op).abs().sum().backward()
    assert soft.unrolled.steps[0].dc.raw.grad is not None


def test_varnet_cascade_is_the_papers_update():
    """One cascade: k − η M(k − y) − E(U(R(k))), checked against the formula."""
    torch.manual_seed(0)
    x, op, y = random_data(dtype=torch.complex64)
    model = VarNet(num_cascades=1, channels=4, num_pools=2, sensitivities="operator", dc_weight=0.7,
                   identity_init=False)
    cascade = model.unrolled.steps[0]
    k0 = y + 0.1 * torch.randn_like(y)
    problem = MRIProblem(op=op, y=y, maps=op.maps, mask=op.mask.float())
    got = cascade(cascade.init_state(k0, problem), problem).k
    eta = cascade.dc()
    ref = k0 - eta * op.mask * (k0 - y) - expand_coils(cascade.unet(reduce_coils(k0, op.maps)[:, None])[:, 0], op.maps)
    torch.testing.assert_close(got, ref)
    assert float(eta.detach()) == pytest.approx(0.7, rel=1e-5)
    # with identity_init the refinement starts at exactly 0: the untrained VarNet is zero-filled + DC
    zero = VarNet(num_cascades=2, channels=4, num_pools=2, sensitivities="operator")
    torch.testing.assert_close(zero(y, op), op.adjoint(y))


def test_recurrent_varnet_hard_dc_keeps_sampled_kspace():
    torch.manual_seed(0)
    x, op, y = random_data()
    hard = TINY["recurrent_varnet"](dc_weight=float("inf"))
    out = hard(y, op, return_states=True)
    scale = data_scale(y, op.mask.float(), op.maps)
    for state in out.states:  # after every step
        torch.testing.assert_close(_sampled(state.k * scale, op), _sampled(y, op), rtol=0, atol=1e-5)
    soft = TINY["recurrent_varnet"](dc_weight=0.5)
    ks = soft(y, op, return_states=True).state.k * scale
    assert (_sampled(ks, op) - _sampled(y, op)).abs().max() > 1e-2


def test_cirim_optional_dc_step():
    """CIRIM's DC is implicit (the likelihood gradient); the optional k-space DC step at the end of
    each cascade maps the RIM's estimate x' to R(M y + (1 − M) E x') when hard and to
    R(E x' − w M (E x' − y)) when soft (in the model's normalised units)."""
    torch.manual_seed(0)
    x, op, y = random_data()
    m = op.mask.float()
    yn = y / data_scale(y, m, op.maps)
    s = data_scale(y, m, op.maps).view(-1, 1, 1)
    hard = TINY["cirim"](dc_weight=float("inf"))
    soft = TINY["cirim"](dc_weight=0.3)
    shared = {k: v for k, v in hard.state_dict().items() if not k.startswith("dc.")}
    soft.load_state_dict(shared, strict=False)
    for model, weight in ((hard, None), (soft, 0.3)):
        pre = []
        handle = model.cascades[-1].register_forward_hook(lambda mod, args, out: pre.append(out.x))
        out = model(y, op)
        handle.remove()
        k = expand_coils(pre[0], op.maps)
        k = yn * m + (1 - m) * k if weight is None else k - weight * m * (k - yn)
        torch.testing.assert_close(out, reduce_coils(k, op.maps) * s, rtol=1e-4, atol=1e-5)
    base = TINY["cirim"]()
    base.load_state_dict(shared)
    x_none, x_soft, x_hard = base(y, op), soft(y, op), hard(y, op)
    assert (x_soft - x_none).abs().max() > 1e-3 and (x_hard - x_soft).abs().max() > 1e-3
    # with the DC step the sampled k-space of the output is closer to the measurements
    err = lambda z: (m * (expand_coils(z, op.maps) - y)).abs().norm()
    assert err(x_hard) < err(x_soft) < err(x_none)


# ------------------------------------------------------------------------------ recurrent state
def _record_hidden(stacks):
    seen = []
    handles = [s.register_forward_hook(lambda m, args, out: seen.append((args[1], out[1]))) for s in stacks]
    return seen, handles


def test_recurrent_varnet_hidden_state_shape_and_carry():
    torch.manual_seed(0)
    x, op, y = random_data(b=2, c=3, h=17, w=16)
    model = TINY["recurrent_varnet"]()
    seen, handles = _record_hidden([s.block for s in model.unrolled.steps])
    out = model(y, op, return_states=True)
    for h in handles:
        h.remove()
    assert len(seen) == model.num_steps == len(out.states)
    for t, (h_in, h_out) in enumerate(seen):
        assert h_in.shape == h_out.shape == (2, model.num_layers, model.hidden, 17, 16)  # (B, layers, hidden, H, W)
        torch.testing.assert_close(out.states[t].h, h_out)
        if t > 0:  # step t starts from step t-1's hidden state
            assert h_in is seen[t - 1][1] or torch.equal(h_in, seen[t - 1][1])
    # the first step starts from the learned initialiser's output (from the ACS data), not zeros
    assert seen[0][0].abs().sum() > 0
    yn = y / data_scale(y, op.mask.float(), op.maps)
    torch.testing.assert_close(seen[0][0], model.initial_state(yn, op.mask.float(), op.maps).h)
    # and the hidden state matters: resetting it changes the output
    zero = TINY["recurrent_varnet"](learned_init=False)
    zero.load_state_dict(model.state_dict(), strict=False)
    assert (zero(y, op) - out.x).abs().max() > 1e-4


@pytest.mark.parametrize("keep_hidden", [True, False])
def test_cirim_hidden_state_carried_across_time_steps_and_cascades(keep_hidden):
    torch.manual_seed(0)
    x, op, y = random_data(b=2, c=2, h=15, w=16)
    model = CIRIM(num_cascades=2, time_steps=3, hidden=5, num_layers=2, keep_hidden=keep_hidden)
    seen, handles = _record_hidden([c.steps[0].cell for c in model.cascades])
    out = model(y, op, return_trajectory=True)
    for h in handles:
        h.remove()
    assert len(seen) == 6 and [len(t) for t in out.trajectory] == [3, 3]
    assert out.state.h.shape == (2, 2, 5, 15, 16)
    for i, (h_in, h_out) in enumerate(seen):
        assert h_in.shape == h_out.shape == (2, 2, 5, 15, 16)
        if i == 0 or (i == 3 and not keep_hidden):
            assert torch.count_nonzero(h_in) == 0
        else:
            torch.testing.assert_close(h_in, seen[i - 1][1])
    torch.testing.assert_close(out.trajectory[-1][-1], out.x)


def test_cirim_time_step_loss_weights():
    w = time_step_weights(5)
    torch.testing.assert_close(w, torch.tensor([10 ** (-1 + t / 4) for t in range(5)], dtype=w.dtype))
    traj = [[torch.full((1,), float(t + 1)) for t in range(3)], [torch.full((1,), 2.0) for _ in range(3)]]
    w3 = time_step_weights(3)
    expected = ((w3 * torch.tensor([1.0, 2.0, 3.0])).mean() + (w3 * 2.0).mean()) / 2
    torch.testing.assert_close(time_step_loss(traj, lambda x: x.sum()), expected)


# ------------------------------------------------------------------------------ gradient modes
@pytest.mark.parametrize("name", list(TINY))
def test_checkpointing_gives_the_same_gradients(name):
    torch.manual_seed(0)
    x, op, y = random_data(b=2, c=2, h=16, w=16)
    model = TINY[name]()
    params = [p for p in model.parameters() if p.requires_grad]
    grads = {}
    for mode in ("full", "checkpoint"):
        out = model(y, op, grad_mode=mode)
        loss = (out.abs() - x.abs()).square().mean()
        grads[mode] = torch.autograd.grad(loss, params)
    for a, b in zip(grads["full"], grads["checkpoint"]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
    # the layer's own default mode gives the same output
    ck = TINY[name](grad_mode="checkpoint")
    ck.load_state_dict(model.state_dict())
    torch.testing.assert_close(ck(y, op), model(y, op))


@pytest.mark.parametrize("name", list(TINY))
def test_implicit_modes_are_refused_with_a_reason(name):
    x, op, y = random_data()
    with pytest.raises((TypeError, ValueError), match="grad_mode: 'implicit' needs"):
        TINY[name]()(y, op, grad_mode="implicit")


def test_cirim_compiles_fullgraph_and_matches_eager():
    """torch.compile (inductor, fullgraph) of a CIRIM: same output and gradients as eager. (All
    three models compile; CIRIM is the cheapest to compile on a CPU.)"""
    torch._dynamo.reset()
    torch.manual_seed(0)
    x, op, y = random_data(b=2, c=2, h=16, w=16)
    model = CIRIM(num_cascades=1, time_steps=2, hidden=4)
    compiled = torch.compile(model, fullgraph=True)
    torch.testing.assert_close(compiled(y, op), model(y, op), rtol=1e-4, atol=1e-5)
    params = list(model.parameters())
    g_c = torch.autograd.grad(compiled(y, op).abs().square().mean(), params)
    g_e = torch.autograd.grad(model(y, op).abs().square().mean(), params)
    for a, b in zip(g_c, g_e):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-5)


# ------------------------------------------------------------------------------ training
def _zero_filled_ssim(y, op, target):
    zf = op.adjoint(y).abs()
    return ssim(zf, target).mean()


@pytest.mark.parametrize("name", list(TINY))
def test_a_few_training_steps_beat_zero_filled(name):
    """Adam on 1 − SSIM, 60 steps of 2 slices from 8 brain slices; scored on 4 held-out slices
    interleaved with them (the same anatomy range)."""
    torch.manual_seed(0)
    y, op, target = brain_data(range(14, 46, 4))
    yv, opv, tv = brain_data(range(16, 48, 8))
    model = TINY[name]()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for step in range(60):
        i = 2 * (step % 4)
        loss = 1 - ssim(model(y[i:i + 2], SENSE(op.maps[i:i + 2], op.mask)).abs(), target[i:i + 2]).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        got = ssim(model(yv, opv).abs(), tv).mean()
    zf = _zero_filled_ssim(yv, opv, tv)
    assert got > zf + 0.02, (float(got), float(zf))


# ------------------------------------------------------------------------------ configs and the CLI
_CLI_TINY = {
    "varnet": ["--model.init_args.model.init_args.num_cascades=1", "--model.init_args.model.init_args.channels=4",
               "--model.init_args.model.init_args.sens_channels=2"],
    "recurrent_varnet": ["--model.init_args.model.init_args.num_steps=2", "--model.init_args.model.init_args.hidden=4",
                         "--model.init_args.model.init_args.init_channels=[4]",
                         "--model.init_args.model.init_args.init_dilations=[1]"],
    "cirim": ["--model.init_args.model.init_args.num_cascades=1", "--model.init_args.model.init_args.time_steps=2",
              "--model.init_args.model.init_args.hidden=4"],
}


def _cli_common(tmp_path):
    return ["--trainer.max_steps=2", "--trainer.limit_val_batches=1", "--trainer.num_sanity_val_steps=0",
            "--trainer.enable_progress_bar=false", f"--trainer.logger.init_args.save_dir={tmp_path / 'runs'}",
            '--data.init_args.builtin_split={"train": [0], "val": [3], "test": [1]}',
            "--data.init_args.builtin_coils=4", f"--data.init_args.cache_dir={tmp_path / 'data'}"]


@pytest.mark.parametrize("name", list(_CLI_TINY))
def test_config_fits_and_predict_writes_fastmri_layout(name, tmp_path, monkeypatch):
    """`unroll fit --config configs/<model>.yaml` (the config as shipped, with a tiny model and
    budget) trains and checkpoints; `unroll predict` on the checkpoint writes one fastMRI-layout
    reconstruction file per test volume that the reader accepts."""
    from pathlib import Path

    from unroll.train import read_reconstructions
    from unroll.train.cli import main

    monkeypatch.chdir(tmp_path)
    config = str(Path(__file__).resolve().parents[1] / "configs" / f"{name}.yaml")
    main(["fit", "--config", config, *_cli_common(tmp_path), *_CLI_TINY[name]])
    ckpt = sorted(tmp_path.rglob("last.ckpt"))[-1]
    state = torch.load(ckpt, weights_only=False)["state_dict"]
    assert state and all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())
    main(["predict", "--config", config, *_cli_common(tmp_path), *_CLI_TINY[name], "--ckpt_path", str(ckpt)])
    files = [p for p in tmp_path.rglob("*.h5") if "data" not in p.relative_to(tmp_path).parts]
    folders = {p.parent for p in files}
    assert len(folders) == 1
    recons = read_reconstructions(folders.pop())
    assert list(recons) == ["colin27_slab1.h5"]
    assert recons["colin27_slab1.h5"].shape == (8, 128, 128) and torch.isfinite(recons["colin27_slab1.h5"]).all()
