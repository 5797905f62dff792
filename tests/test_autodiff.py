"""Gradient modes of Unrolled: agreement with full backprop, gradchecks, closed forms, failures."""

from __future__ import annotations

import pytest
import torch

from unroll import (L1, GradMode, MatrixOperator, Problem, ProxGradStep, SolverWarning, SquaredL2, Unrolled)
from unroll.autodiff import checkpointed, implicit, jfb, truncated
from unroll.steps import FISTAStep

DT = torch.float64


def setup(m=8, n=12, batch=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(m, n, generator=g, dtype=DT) / m ** 0.5
    x = torch.randn(batch, n, generator=g, dtype=DT) * (torch.rand(batch, n, generator=g, dtype=DT) < 0.4)
    y = x @ a.T + 0.05 * torch.randn(batch, m, generator=g, dtype=DT)
    return MatrixOperator(a), y


def grads(layer, y, op, mode, K=None):
    y = y.clone().requires_grad_()
    out = layer(Problem.create(op, y), num_iters=K, grad_mode=mode)
    loss = (out.x * torch.linspace(-1, 1, out.x.shape[1], dtype=DT)).sum() + out.x.square().sum()
    params = [p for p in layer.parameters() if p.requires_grad]
    return torch.autograd.grad(loss, [y, *params]), out.info


def untied_ista(K=6):
    return Unrolled(ProxGradStep(L1(0.05, learnable=True), step=0.9, learn_step=True), num_iters=K, tied=False).double()


@pytest.mark.parametrize("mode", ["truncated_K", "checkpoint", "checkpoint_2"])
def test_modes_equal_full_backprop(mode):
    op, y = setup()
    layer = untied_ista(K=7)
    ref, _ = grads(layer, y, op, "full")
    m = {"truncated_K": truncated(7), "checkpoint": "checkpoint", "checkpoint_2": checkpointed(2)}[mode]
    got, info = grads(layer, y, op, m)
    for a, b in zip(ref, got):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)


def test_truncated_only_reaches_the_last_k_layers():
    op, y = setup()
    layer = untied_ista(K=6)
    out = layer(Problem.create(op, y), grad_mode=truncated(2))
    out.x.sum().backward()
    got = [s.step.raw.grad for s in layer.steps]
    assert all(g is None for g in got[:4]) and all(g is not None and g.abs() > 0 for g in got[4:])
    # = full backprop through the last 2 layers started from the first 4's output, held constant
    for s in layer.steps:
        s.step.raw.grad = None
    problem = Problem.create(op, y)
    with torch.no_grad():
        x4 = Unrolled(list(layer.steps[:4]))(problem).x
    Unrolled(list(layer.steps[4:]))(problem, x4).x.sum().backward()
    for a, s in zip(got[4:], layer.steps[4:]):
        torch.testing.assert_close(a, s.step.raw.grad, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("mode", ["full", truncated(5), "checkpoint", checkpointed(2)])
def test_gradcheck_unrolled_modes(mode):
    """The exact modes (truncated with k = K is full backprop) pass gradcheck; truncated with
    k < K is a deliberate approximation (see test_truncated_only_reaches_the_last_k_layers)."""
    op, y = setup(m=5, n=7, batch=2)
    layer = untied_ista(K=5)
    y = y.clone().requires_grad_()
    assert torch.autograd.gradcheck(lambda y_: layer(Problem.create(op, y_), grad_mode=mode).x, (y,))


def _lasso_fixed_point(op, lam, learnable=True, mode="implicit", **kw):
    reg = L1(lam, learnable=learnable).double()
    layer = Unrolled(ProxGradStep(reg, step=1.0), num_iters=5000,
                     grad_mode=GradMode(mode, forward_tol=1e-13, backward_tol=1e-12, **kw))
    return layer, reg


def test_implicit_lasso_gradient_equals_closed_form():
    op, y = setup(m=10, n=14, batch=2, seed=3)
    lam = 0.08
    layer, reg = _lasso_fixed_point(op, lam)
    y = y.clone().requires_grad_()
    out = layer(Problem.create(op, y))
    c = torch.randn(out.x.shape, generator=torch.Generator().manual_seed(1), dtype=DT)
    loss = (c * out.x).sum()
    gy, graw = torch.autograd.grad(loss, [y, reg.raw_lam])
    a = op.dense()
    g_lam = 0.0
    for i in range(y.shape[0]):
        xs = out.x[i].detach()
        S = xs.abs() > 1e-9
        As = a[:, S]
        G = torch.linalg.inv(As.T @ As)
        # x_S = G (A_Sᵀ y − λ sign(x_S)) on the support, 0 off it
        torch.testing.assert_close(gy[i], As @ G @ c[i, S], rtol=1e-7, atol=1e-9)
        g_lam = g_lam - c[i, S] @ G @ torch.sign(xs[S])
    dlam_draw = torch.sigmoid(reg.raw_lam.detach())
    torch.testing.assert_close(graw, g_lam * dlam_draw, rtol=1e-7, atol=1e-9)
    assert out.info.grad_mode == "implicit" and out.info.backward_status == "converged"
    assert out.info.backward_iterations >= 1


@pytest.mark.parametrize("solver", ["bicgstab", "fixed_point"])
def test_implicit_ridge_gradient_equals_closed_form(solver):
    op, y = setup(m=6, n=9, batch=3, seed=5)
    reg = SquaredL2(0.3, learnable=True).double()
    layer = Unrolled(ProxGradStep(reg, step=1.0), num_iters=20000,
                     grad_mode=implicit(forward_tol=1e-14, backward_tol=1e-12, backward_solver=solver,
                                        backward_max_iter=20000))
    y = y.clone().requires_grad_()
    out = layer(Problem.create(op, y))
    c = torch.randn(out.x.shape, generator=torch.Generator().manual_seed(2), dtype=DT)
    gy, graw = torch.autograd.grad((c * out.x).sum(), [y, reg.raw_lam])
    a = op.dense()
    lam = reg.lam.item()
    H = a.T @ a + lam * torch.eye(a.shape[1], dtype=DT)
    x_ref = torch.linalg.solve(H, (y.detach() @ a).T).T
    torch.testing.assert_close(out.x.detach(), x_ref, rtol=1e-10, atol=1e-12)
    Hc = torch.linalg.solve(H, c.T).T  # (B, n)
    torch.testing.assert_close(gy, Hc @ a.T, rtol=1e-8, atol=1e-10)
    g_lam = -(Hc * x_ref).sum()
    torch.testing.assert_close(graw, g_lam * torch.sigmoid(reg.raw_lam.detach()), rtol=1e-8, atol=1e-10)


def test_gradcheck_implicit_ridge():
    op, y = setup(m=4, n=6, batch=2, seed=7)
    layer = Unrolled(ProxGradStep(SquaredL2(0.5), step=1.0), num_iters=5000,
                     grad_mode=implicit(forward_tol=1e-15, backward_tol=1e-13))
    y = y.clone().requires_grad_()
    assert torch.autograd.gradcheck(lambda y_: layer(Problem.create(op, y_)).x, (y,), atol=1e-7, rtol=1e-6)


def test_gradcheck_implicit_and_jfb_when_exact():
    """Orthonormal A and step 1/L = 1: T(x) = S(Aᵀy) does not depend on x, so ∂T/∂x = 0 and the
    JFB gradient is exact too."""
    q, _ = torch.linalg.qr(torch.randn(6, 6, generator=torch.Generator().manual_seed(0), dtype=DT))
    op = MatrixOperator(q)
    y = torch.randn(2, 6, generator=torch.Generator().manual_seed(1), dtype=DT) + 0.3
    y.requires_grad_()
    for mode in (implicit(forward_tol=1e-14), jfb(forward_tol=1e-14)):
        layer = Unrolled(ProxGradStep(L1(0.1), step=1.0), num_iters=50, grad_mode=mode)
        assert torch.autograd.gradcheck(lambda y_: layer(Problem.create(op, y_)).x, (y,))


def test_jfb_is_one_step_at_the_fixed_point():
    op, y = setup(seed=4)
    reg = L1(0.05, learnable=True).double()
    layer = Unrolled(ProxGradStep(reg), num_iters=3000, grad_mode=jfb(forward_tol=1e-6))
    out = layer(Problem.create(op, y))
    (g_jfb,) = torch.autograd.grad(out.x.sum(), [reg.raw_lam])
    x_star = out.x.detach()
    one = layer.steps[0](__import__("unroll").State(x_star), Problem.create(op, y)).x
    (g_ref,) = torch.autograd.grad(one.sum(), [reg.raw_lam])
    torch.testing.assert_close(g_jfb, g_ref)
    assert out.info.backward_iterations == 0


def test_per_call_override_and_info():
    op, y = setup()
    layer = Unrolled(ProxGradStep(L1(0.05, learnable=True)), num_iters=5000).double()
    assert layer.grad_mode.mode == "full"
    out = layer(Problem.create(op, y), grad_mode=implicit(forward_tol=1e-8))
    assert out.info.grad_mode == "implicit" and out.info.backward_status == "not_run"
    out.x.sum().backward()
    assert out.info.backward_status == "converged" and out.info.backward_residual.shape == (y.shape[0],)
    assert int(out.info.iterations.max()) < 5000 and out.info.status == "converged"


def test_implicit_needs_tied_fixed_point_map():
    op, y = setup()
    with pytest.raises(ValueError, match="tied weights"):
        untied_ista(4)(Problem.create(op, y), grad_mode="implicit")
    with pytest.raises(TypeError, match="not a fixed-point map|is not \\(e.g. FISTA"):
        Unrolled(FISTAStep(L1(0.05)), num_iters=10)(Problem.create(op, y), grad_mode="jfb")


def test_diverging_step_warns_or_raises():
    op, y = setup()
    step = ProxGradStep(L1(0.01), step=2.5)  # above 2/L: the iteration blows up
    problem = Problem.create(op, y)
    with pytest.raises(RuntimeError, match="diverged"):
        Unrolled(step, num_iters=3000, grad_mode=GradMode("full", on_failure="raise"))(problem)
    with pytest.warns(SolverWarning, match="diverged"):
        Unrolled(step, num_iters=3000)(problem)


def test_backward_not_converging_warns_or_raises():
    op, y = setup(seed=2)
    reg = L1(0.02, learnable=True).double()
    problem = Problem.create(op, y)
    for on_failure, ctx in (("warn", pytest.warns(SolverWarning, match="did not converge")),
                            ("raise", pytest.raises(RuntimeError, match="did not converge"))):
        layer = Unrolled(ProxGradStep(reg), num_iters=3000,
                         grad_mode=implicit(forward_tol=1e-12, backward_max_iter=1, backward_solver="fixed_point",
                                            on_failure=on_failure))
        out = layer(problem)
        with ctx:
            out.x.sum().backward()
        assert out.info.backward_status == "max_iter"


def test_forward_not_converging_warns():
    op, y = setup()
    layer = Unrolled(ProxGradStep(L1(0.05)), num_iters=3, grad_mode=implicit(forward_tol=1e-12))
    with pytest.warns(SolverWarning, match="did not reach the fixed point"):
        layer(Problem.create(op, y))


def test_truncated_with_tolerance_keeps_a_graph():
    """Even when every sample converges during the no-graph part, the last k steps still run
    with a graph (frozen samples simply get zero gradient)."""
    op, y = setup()
    reg = L1(0.05, learnable=True).double()
    layer = Unrolled(ProxGradStep(reg), num_iters=3000)
    out = layer(Problem.create(op, y), tol=1e-6, grad_mode=truncated(8))
    assert out.x.requires_grad
    out.x.sum().backward()
    assert reg.raw_lam.grad is not None and reg.raw_lam.grad == 0  # all three samples froze
    # with 500 iterations samples 0 and 1 converge (~150) and sample 2 does not (~1150): the batch's
    # gradient is sample 2's own, as if it had run alone without a tolerance (same 500 steps)
    reg.raw_lam.grad = None
    layer = Unrolled(ProxGradStep(reg), num_iters=500)
    out = layer(Problem.create(op, y), tol=1e-6, grad_mode=truncated(8))
    assert out.info.iterations.tolist()[2] == 500 and max(out.info.iterations.tolist()[:2]) < 500
    out.x.sum().backward()
    batch_grad, reg.raw_lam.grad = reg.raw_lam.grad.clone(), None
    layer(Problem.create(op, y[2:]), tol=None, grad_mode=truncated(8)).x.sum().backward()
    assert batch_grad != 0
    torch.testing.assert_close(batch_grad, reg.raw_lam.grad, rtol=1e-10, atol=0)


def test_classical_solver_with_implicit_gradient_matches_full_backprop():
    """unroll.solvers.ista(..., grad_mode="implicit"): the gradient of the Lasso solution w.r.t. y
    equals backprop through all the (converged) iterations."""
    from unroll import solvers

    op, y = setup(seed=6)
    y1 = y.clone().requires_grad_()
    x_imp, info = solvers.ista(op, y1, 0.05, max_iter=5000, tol=1e-13, grad_mode="implicit")
    (g_imp,) = torch.autograd.grad(x_imp.square().sum(), [y1])
    y2 = y.clone().requires_grad_()
    x_full, _ = solvers.ista(op, y2, 0.05, max_iter=int(info.iterations.max()) + 200, tol=None)
    (g_full,) = torch.autograd.grad(x_full.square().sum(), [y2])
    torch.testing.assert_close(g_imp, g_full, rtol=1e-6, atol=1e-9)
    assert info.grad_mode == "implicit" and info.backward_status == "converged"
