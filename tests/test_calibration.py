"""Blind gain calibration (issue 19): projection, solver, step, learned variant, data and task."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from unroll import Unrolled
from unroll.calibration import (BlindCalibrationProblem, BlindCalibrationStep, CalibrationState, blind_calibration,
                                calibration_errors, make_calibration_instances, project_gains)
from unroll.models import LearnedBlindCalibration

DT = torch.float64


def instances(B=6, n=8, m=16, p=6, seed=0, rho=0.5):
    return make_calibration_instances(B, n, m, p, rho=rho, generator=torch.Generator().manual_seed(seed), dtype=DT)


def _bisection_projection(v: np.ndarray, rho: float) -> np.ndarray:
    """Independent reference: τ by bisection on the monotone sum of clip(v − τ, 1 − ρ, 1 + ρ)."""
    m, lo, hi = v.size, v.min() - 2 - rho, v.max() + 2 + rho
    for _ in range(200):
        t = 0.5 * (lo + hi)
        if np.clip(v - t, 1 - rho, 1 + rho).sum() > m:
            lo = t
        else:
            hi = t
    return np.clip(v - 0.5 * (lo + hi), 1 - rho, 1 + rho)


@pytest.mark.parametrize("rho", [None, 0.9, 0.3, 0.05])
def test_project_gains_is_the_exact_projection(rho):
    g = torch.Generator().manual_seed(1)
    d = 1 + 0.8 * torch.randn(7, 25, generator=g, dtype=DT)
    P = project_gains(d, rho)
    torch.testing.assert_close(P.sum(1), torch.full((7,), 25.0, dtype=DT), rtol=0, atol=1e-12)
    if rho is None:
        torch.testing.assert_close(P, d - d.mean(1, keepdim=True) + 1)
        return
    assert float((P - 1).abs().max()) <= rho + 1e-15
    ref = np.stack([_bisection_projection(v, rho) for v in d.numpy()])
    np.testing.assert_allclose(P.numpy(), ref, atol=1e-10)
    torch.testing.assert_close(project_gains(P, rho), P, rtol=0, atol=1e-13)  # idempotent
    # variational inequality of a projection onto a convex set: <d − P, z − P> ≤ 0 for feasible z
    z = project_gains(1 + 0.5 * torch.randn(7, 25, generator=g, dtype=DT), rho)
    assert float(((d - P) * (z - P)).sum(1).max()) <= 1e-10


def test_solver_recovers_signal_and_gains_and_stays_feasible():
    A, y, x, d = instances()
    xh, dh, info = blind_calibration(A, y, rho=0.99, max_iter=4000, tol=1e-13, record_objective=True)
    ex, ed = calibration_errors(xh, dh, x, d)
    assert float(ex.max()) < 1e-8 and float(ed.max()) < 1e-8, (ex, ed)
    assert info.method == "blind_calibration" and info.status == "converged"
    # feasible to machine precision: the sum of the gains, and the box
    torch.testing.assert_close(dh.sum(1), torch.full((6,), 16.0, dtype=DT), rtol=0, atol=1e-12)
    assert float((dh - 1).abs().max()) <= 0.99
    # the objective decreases monotonically with the paper's step (μ = 0.25 here) and reaches ~0
    obj = info.objective
    assert bool((obj[:, 1:] <= obj[:, :-1] * (1 + 1e-12)).all())
    assert float(obj[:, -1].max()) < 1e-20


def test_every_iterate_is_feasible_and_errors_name_the_scale_ambiguity():
    A, y, x, d = instances(seed=3)
    problem = BlindCalibrationProblem(A, y, rho=0.2)
    out = Unrolled(BlindCalibrationStep(), num_iters=50)(problem, state0=problem.initial_state(), return_states=True)
    for s in out.states:
        assert isinstance(s, CalibrationState)
        torch.testing.assert_close(s.d.sum(1), torch.full((6,), 16.0, dtype=DT), rtol=0, atol=1e-12)
        assert float((s.d - 1).abs().max()) <= 0.2 + 1e-15
    # errors are measured up to (x c, d / c): a rescaled truth gives the same errors
    ex, ed = calibration_errors(out.x, out.state.d, x, d)
    ex2, ed2 = calibration_errors(out.x, out.state.d, 3 * x, d / 3)
    torch.testing.assert_close((ex, ed), (ex2, ed2))


def test_initial_point_is_the_papers():
    A, y, x, d = instances(B=2, p=3)
    s0 = BlindCalibrationProblem(A, y).initial_state()
    m, p = 16, 3
    ref = sum(A[:, l].transpose(1, 2) @ y[:, l, :, None] for l in range(p))[..., 0] / (m * p)
    torch.testing.assert_close(s0.x, ref)
    torch.testing.assert_close(s0.d, torch.ones(2, m, dtype=DT))


def test_gradients_match_autograd():
    A, y, x, d = instances(B=3, seed=5)
    problem = BlindCalibrationProblem(A, y)
    xs = torch.randn(3, 8, dtype=DT, requires_grad=True)
    ds = project_gains(1 + 0.3 * torch.randn(3, 16, dtype=DT)).requires_grad_()
    gx_ref, gd_ref = torch.autograd.grad(problem.objective(xs, ds).sum(), (xs, ds))
    gx, gd = problem.grads(xs, ds)
    torch.testing.assert_close(gx, gx_ref)
    torch.testing.assert_close(gd, gd_ref - gd_ref.mean(1, keepdim=True))


def test_learned_step_gradient_matches_finite_differences():
    A, y, x, d = instances(B=4, seed=2, p=4)
    model = LearnedBlindCalibration(num_layers=4, step=0.2, rho=0.99).to(DT)

    def loss():
        out = model(y, A)
        ex, ed = calibration_errors(out.x, out.state.d, x, d)
        return (ex.square() + ed.square()).mean()

    params = [p for p in model.parameters()]
    assert len(params) == 8  # (μ_x, μ_d) per layer
    grads = torch.autograd.grad(loss(), params)
    h = 1e-6
    for prm, gr in zip(params[::3], grads[::3]):
        with torch.no_grad():
            prm += h
            up = loss()
            prm -= 2 * h
            down = loss()
            prm += h
        fd = (up - down) / (2 * h)
        torch.testing.assert_close(gr.reshape(()), fd, rtol=1e-5, atol=1e-12)


def test_a_few_training_steps_reduce_the_learned_variants_error():
    torch.manual_seed(0)
    model = LearnedBlindCalibration(num_layers=8, step=0.1, rho=0.99)
    gen = torch.Generator().manual_seed(4)
    A, y, x, d = make_calibration_instances(64, 8, 16, 4, rho=0.5, generator=gen, dtype=torch.float32)

    def error():
        with torch.no_grad():
            out = model(y, A)
            ex, ed = calibration_errors(out.x, out.state.d, x, d)
            return float((ex.square() + ed.square()).log10().mean())

    before = error()
    opt = torch.optim.Adam(model.parameters(), lr=0.02)
    for _ in range(15):
        At, yt, xt, dt = make_calibration_instances(32, 8, 16, 4, rho=0.5, generator=gen, dtype=torch.float32)
        out = model(yt, At)
        ex, ed = calibration_errors(out.x, out.state.d, xt, dt)
        loss = (ex.square() + ed.square()).log10().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = error()
    assert after < before - 0.3, (before, after)  # held-out error down by more than a factor 2
    assert all(sx > 0.1 and sd > 0.1 for sx, sd in model.step_sizes())  # the steps grew, and stay positive


def test_implicit_gradient_mode_runs_at_the_fixed_point():
    """The step is a fixed-point map of (x, d): the implicit mode differentiates the solution
    w.r.t. the data; compared with backpropagation through many iterations."""
    A, y, x, d = instances(B=2, seed=7, p=8)
    y = y.clone().requires_grad_()
    problem = BlindCalibrationProblem(A, y, rho=None)
    layer = Unrolled(BlindCalibrationStep(), num_iters=3000)
    w = torch.randn(2, 8, dtype=DT)
    out = layer(problem, state0=problem.initial_state(), grad_mode="implicit", tol=1e-13)
    (g_imp,) = torch.autograd.grad((out.x * w).sum(), y)
    out = layer(problem, state0=problem.initial_state(), num_iters=1500)
    (g_full,) = torch.autograd.grad((out.x * w).sum(), y)
    torch.testing.assert_close(g_imp, g_full, rtol=1e-4, atol=1e-7)  # full: 1500 steps, not quite at the limit


def test_bad_input_gets_clear_errors():
    A, y, x, d = instances(B=2)
    with pytest.raises(ValueError, match=r"y: expected shape \(B, p, m\) = \(2, 6, 16\).*got \(2, 6, 15\)"):
        blind_calibration(A, y[..., :15])
    with pytest.raises(ValueError, match=r"A: expected a real floating \(B, p, m, n\)"):
        blind_calibration(A[0], y)
    bad = y.clone()
    bad[0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="y: expected finite values, got 1 NaN"):
        blind_calibration(A, bad)
    with pytest.raises(ValueError, match="rho: expected a finite number > 0"):
        blind_calibration(A, y, rho=-0.1)
    with pytest.raises(ValueError, match="max_iter: expected an int >= 1, got 0"):
        blind_calibration(A, y, max_iter=0)
    with pytest.raises(ValueError, match=r"x0: expected shape \(B, n\) = \(2, 8\)"):
        blind_calibration(A, y, x0=torch.zeros(2, 9, dtype=DT))
    with pytest.raises(ValueError, match=r"A: expected positive sizes \(B, p, m, n\), got \(2, 0, 16, 8\)"):
        blind_calibration(A[:, :0], y[:, :0])
    with pytest.raises(TypeError, match="y: expected the dtype of A"):
        blind_calibration(A, y.float())
    for name, kw in (("m", dict(m=0)), ("p", dict(p=-1)), ("n", dict(n=0))):
        args = dict(batch=2, n=4, m=4, p=2)
        args.update(kw)
        with pytest.raises(ValueError, match=f"{name}: expected an int >= 1, got {kw[name]}"):
            make_calibration_instances(**args)
    with pytest.raises(ValueError, match="step_x: expected a finite number > 0"):
        BlindCalibrationStep(step_x=0.0)
    with pytest.raises(ValueError, match="d: the calibration objective needs the gains"):
        BlindCalibrationProblem(A, y).objective(x)


def test_data_module_and_task_train_end_to_end(tmp_path):
    import lightning as L

    from unroll.data import BlindCalibrationDataModule
    from unroll.train import BlindCalibrationTask

    dm = BlindCalibrationDataModule(n=8, m=16, p=4, batch_size=16, train_batches=5, val_size=32, test_size=32,
                                    eval_batch_size=32)
    with pytest.raises(ValueError, match=r"m: expected an integer ≥ 1, got 0"):
        BlindCalibrationDataModule(m=0)
    task = BlindCalibrationTask(LearnedBlindCalibration(num_layers=5, step=0.2))
    trainer = L.Trainer(max_steps=5, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, default_root_dir=tmp_path)
    trainer.fit(task, datamodule=dm)
    trainer.test(task, datamodule=dm, verbose=False)
    r = task.test_results
    assert set(r) >= {"loss", "x_err_db", "d_err_db", "success"} and np.isfinite(r["x_err_db"])
    b = dm.test_split
    assert b.operator["A"].shape == (32, 4, 16, 8) and b.y.shape == (32, 4, 16) and b.meta["gains"].shape == (32, 16)
    torch.testing.assert_close(b.meta["gains"].sum(1), torch.full((32,), 16.0), rtol=0, atol=1e-4)


def test_float32_solver_keeps_its_dtype_and_recovers():
    A, y, x, d = make_calibration_instances(3, 6, 12, 6, generator=torch.Generator().manual_seed(9),
                                            dtype=torch.float32)
    xh, dh, info = blind_calibration(A, y, tol=1e-7)
    assert xh.dtype == dh.dtype == torch.float32
    ex, ed = calibration_errors(xh, dh, x, d)
    assert float(torch.maximum(ex, ed).max()) < 1e-4
    torch.testing.assert_close(dh.sum(1), torch.full((3,), 12.0), rtol=0, atol=1e-4)
