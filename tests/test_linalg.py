"""Tests for unroll.linalg: batched conjugate gradient with an implicit (adjoint-solve) backward,
against torch.linalg.solve (values and autograd gradients) and finite differences (gradcheck)."""

import pytest
import torch
from torch import nn

from unroll import LinearOperator, MatrixOperator
from unroll.linalg import CGInfo, cg, solve_normal

DT, CDT = torch.float64, torch.complex128


def spd(n, seed=0, dtype=DT, shift=None):
    """``R Rᴴ + n I`` (Hermitian positive definite), real or complex."""
    g = torch.Generator().manual_seed(seed)
    r = torch.randn(n, n, dtype=dtype, generator=g)
    return r @ r.mH + (n if shift is None else shift) * torch.eye(n, dtype=dtype)


def rand(*shape, seed=1, dtype=DT):
    return torch.randn(*shape, dtype=dtype, generator=torch.Generator().manual_seed(seed))


def rel(a, b):
    return float(torch.linalg.vector_norm(a - b) / torch.linalg.vector_norm(b))


class SymOp(LinearOperator):
    """``x ↦ Q x`` with ``Q = (P + Pᵀ)/2 + c I`` built from a learnable ``P``."""

    def __init__(self, p, c):
        super().__init__()
        self.P = nn.Parameter(p.clone())
        self.c = c
        self.in_shape = self.out_shape = (p.shape[0],)

    def matrix(self):
        return sym(self.P, self.c)

    def _forward(self, x):
        return x @ self.matrix().mT

    _adjoint = _forward


def sym(p, c):
    return (p + p.mT) / 2 + c * torch.eye(p.shape[-1], dtype=p.dtype)


# --------------------------------------------------------------------------- values
def test_real_spd_matches_solve():
    n = 12
    q = spd(n)
    b = rand(4, n)
    x, info = cg(MatrixOperator(q), b, tol=1e-12)
    ref = torch.linalg.solve(q, b.T).T
    assert rel(x, ref) < 1e-8
    assert isinstance(info, CGInfo) and info.status == "converged"
    assert info.iterations.shape == (4,) and info.iterations.dtype == torch.long
    assert info.converged.all() and (info.residual_norm < 1e-10).all()
    assert info.backward_info is None


def test_complex_hpd_matches_solve():
    n = 10
    q = spd(n, dtype=CDT)
    assert torch.allclose(q, q.mH)
    b = rand(4, n, dtype=CDT)
    x, info = cg(MatrixOperator(q), b, tol=1e-12)
    ref = torch.linalg.solve(q, b.T).T
    assert x.dtype == CDT and rel(x, ref) < 1e-8
    assert info.residual_norm.dtype == DT and info.status == "converged"


def test_batched_matrices_and_callable():
    n, bsz = 8, 3
    qs = torch.stack([spd(n, seed=s, shift=1.0 + s) for s in range(bsz)])
    b = rand(bsz, n)
    ref = torch.linalg.solve(qs, b.unsqueeze(-1)).squeeze(-1)
    x, _ = cg(MatrixOperator(qs), b, tol=1e-12, max_iter=50)
    assert rel(x, ref) < 1e-8
    x2, _ = cg(lambda v: (qs @ v.unsqueeze(-1)).squeeze(-1), b, tol=1e-12, max_iter=50)
    assert rel(x2, ref) < 1e-8


def test_multidim_samples():
    d = torch.rand(2, 3, 4, dtype=DT, generator=torch.Generator().manual_seed(0)) + 0.5
    b = rand(2, 3, 4)
    x, info = cg(lambda v: d * v, b, tol=1e-12)
    assert x.shape == b.shape and rel(x, b / d) < 1e-10
    assert info.status == "converged"


def test_jacobi_preconditioner_fewer_iterations():
    n = 30
    s = torch.logspace(0, 3, n, dtype=DT)
    q = s[:, None] * (spd(n, shift=0.5) / n) * s[None, :] + torch.diag(s**2)  # badly scaled SPD
    b = rand(3, n)
    op = MatrixOperator(q)
    dinv = 1 / torch.diagonal(q)
    x0, i0 = cg(op, b, tol=1e-10, max_iter=500)
    x1, i1 = cg(op, b, M=lambda r: dinv * r, tol=1e-10, max_iter=500)
    ref = torch.linalg.solve(q, b.T).T
    assert i0.status == i1.status == "converged"
    assert rel(x0, ref) < 1e-6 and rel(x1, ref) < 1e-6
    assert (i1.iterations < i0.iterations).all()
    assert int(i1.iterations.max()) * 2 < int(i0.iterations.min())


def test_per_sample_stopping_eigenvector_and_zero_rhs():
    n = 10
    q = spd(n)
    evals, evecs = torch.linalg.eigh(q)
    b = rand(4, n)
    b[1] = 3.0 * evecs[:, 2]
    b[2] = 0.0
    x, info = cg(MatrixOperator(q), b, tol=1e-10)
    assert int(info.iterations[1]) == 1
    assert int(info.iterations[2]) == 0
    assert (info.iterations[[0, 3]] > 1).all()
    assert torch.isfinite(x).all() and (x[2] == 0).all()
    assert torch.allclose(x[1], 3.0 * evecs[:, 2] / evals[2], atol=1e-12, rtol=0)
    assert float(info.residual_norm[2]) == 0.0 and bool(info.converged[2])
    # a zero rhs with a nonzero x0 still returns x = 0
    x0 = rand(4, n, seed=5)
    x, info = cg(MatrixOperator(q), b, x0=x0, tol=1e-10)
    assert (x[2] == 0).all() and int(info.iterations[2]) == 0
    # the whole batch zero: no iteration, no NaN
    x, info = cg(MatrixOperator(q), torch.zeros(2, n, dtype=DT))
    assert (x == 0).all() and (info.iterations == 0).all() and info.status == "converged"


def test_converges_within_n_iterations():
    n = 10
    q = spd(n)
    b = rand(4, n)
    x, info = cg(MatrixOperator(q), b, tol=1e-10, max_iter=100)
    assert info.status == "converged" and (info.iterations <= n).all()
    assert rel(x, torch.linalg.solve(q, b.T).T) < 1e-8


def test_no_early_exit_and_x0():
    n = 10
    q, b = spd(n), rand(2, n)
    ref = torch.linalg.solve(q, b.T).T
    x, info = cg(MatrixOperator(q), b, tol=1e-10, max_iter=40, check_every=0)
    assert rel(x, ref) < 1e-8 and (info.iterations <= n).all()
    x, info = cg(MatrixOperator(q), b, x0=ref.clone(), tol=1e-10)  # starts at the solution
    assert (info.iterations == 0).all() and rel(x, ref) < 1e-12


def test_max_iter_status():
    n = 20
    q, b = spd(n, shift=0.01), rand(2, n)
    x, info = cg(MatrixOperator(q), b, tol=1e-14, max_iter=2)
    assert info.status == "max_iter" and (info.iterations == 2).all() and not info.converged.any()
    assert info.max_iter == 2


def test_diverged_status():
    op = MatrixOperator(spd(4))
    op.matrix[0, 0] = float("nan")  # after construction, which refuses a matrix with NaN
    _, info = cg(op, rand(2, 4), tol=1e-10)
    assert info.status == "diverged"
    with pytest.raises(ValueError, match="matrix: expected finite"):
        MatrixOperator(op.matrix)


# --------------------------------------------------------------------------- gradients
def test_grad_b_matches_solve():
    n = 8
    q, b = spd(n), rand(3, n)
    w = rand(3, n, seed=7)
    b1 = b.clone().requires_grad_()
    x, info = cg(MatrixOperator(q), b1, tol=1e-13, max_iter=50)
    (x * w).sum().backward()
    b2 = b.clone().requires_grad_()
    (torch.linalg.solve(q, b2.T).T * w).sum().backward()
    assert rel(b1.grad, b2.grad) < 1e-8
    assert info.backward_info is not None and info.backward_info.status == "converged"


def test_grad_learnable_matrix_matches_solve():
    n = 8
    q, b, w = spd(n), rand(3, n), rand(3, n, seed=7)
    op = MatrixOperator(q, learnable=True)
    x, _ = cg(op, b, tol=1e-13, max_iter=50)
    (x * w).sum().backward()
    q2 = q.clone().requires_grad_()
    (torch.linalg.solve(q2, b.T).T * w).sum().backward()
    assert rel(op.matrix.grad, q2.grad) < 1e-7


def test_grad_symmetrised_parameter_matches_solve():
    n, c = 7, 9.0
    p, b, w = rand(n, n, seed=3), rand(4, n), rand(4, n, seed=7)
    op = SymOp(p, c)
    b1 = b.clone().requires_grad_()
    x, _ = cg(op, b1, tol=1e-13, max_iter=50)
    (x * w).sum().backward()
    p2, b2 = p.clone().requires_grad_(), b.clone().requires_grad_()
    (torch.linalg.solve(sym(p2, c), b2.T).T * w).sum().backward()
    assert rel(op.P.grad, p2.grad) < 1e-7
    assert rel(b1.grad, b2.grad) < 1e-8


def test_grad_normal_bound_method_and_buffer():
    """``op.normal`` (a bound method) finds the operator's parameters; a tensor that requires
    grad wrapped as a matrix (a buffer) is found too."""
    n = 6
    a = rand(9, n, seed=2)
    b, w = rand(2, n), rand(2, n, seed=7)
    op = MatrixOperator(a, learnable=True)
    x, _ = cg(op.normal, b, tol=1e-13, max_iter=50)
    (x * w).sum().backward()
    a2 = a.clone().requires_grad_()
    (torch.linalg.solve(a2.T @ a2, b.T).T * w).sum().backward()
    assert rel(op.matrix.grad, a2.grad) < 1e-7

    q = spd(n).requires_grad_()
    x, _ = cg(q, b, tol=1e-13, max_iter=50)  # a tensor A → MatrixOperator buffer
    (x * w).sum().backward()
    q2 = spd(n).requires_grad_()
    (torch.linalg.solve(q2, b.T).T * w).sum().backward()
    assert rel(q.grad, q2.grad) < 1e-7


def test_gradcheck_b_and_parameter():
    n = 5
    q = spd(n)
    b = rand(2, n).requires_grad_()
    assert torch.autograd.gradcheck(lambda bb: cg(MatrixOperator(q), bb, tol=1e-12, max_iter=30)[0], (b,))

    p = rand(n, n, seed=3).requires_grad_()
    b0 = rand(2, n, seed=4)

    def f(pp, bb):
        return cg(lambda x: x @ sym(pp, 6.0).mT, bb, tol=1e-12, max_iter=30, params=[pp])[0]

    assert torch.autograd.gradcheck(f, (p, b0.clone().requires_grad_()))


def test_gradcheck_complex():
    n = 4
    q = spd(n, dtype=CDT)
    b = rand(2, n, dtype=CDT).requires_grad_()
    assert torch.autograd.gradcheck(lambda bb: cg(MatrixOperator(q), bb, tol=1e-12, max_iter=30)[0], (b,))

    # a complex Hermitian matrix built from a learnable complex parameter
    p = rand(n, n, seed=3, dtype=CDT).requires_grad_()
    b0 = rand(2, n, seed=4, dtype=CDT)

    def f(pp):
        h = (pp + pp.mH) / 2 + 6.0 * torch.eye(n, dtype=CDT)
        return cg(lambda x: x @ h.mT, b0, tol=1e-12, max_iter=30, params=[pp])[0]

    assert torch.autograd.gradcheck(f, (p,))


def test_backward_is_one_node_and_records_adjoint_solve():
    n = 8
    op = SymOp(rand(n, n, seed=3), 9.0)
    b = rand(3, n).requires_grad_()
    x, info = cg(op, b, tol=1e-12, max_iter=50)
    assert x.grad_fn is not None and x.grad_fn.name() == "_CGFunctionBackward"
    nexts = [f for f, _ in x.grad_fn.next_functions if f is not None]
    assert nexts and all(type(f).__name__ == "AccumulateGrad" for f in nexts)  # straight to the leaves
    assert {id(f.variable) for f in nexts} == {id(b), id(op.P)}
    assert info.backward_info is None
    x.sum().backward()
    bi = info.backward_info
    assert isinstance(bi, CGInfo) and bi.status == "converged"
    assert (bi.iterations > 0).all() and bi.tol == 1e-12


def test_no_graph_without_grad():
    q, b = spd(5), rand(2, 5)
    x, _ = cg(MatrixOperator(q), b)
    assert x.grad_fn is None and not x.requires_grad
    with torch.no_grad():
        x, _ = cg(MatrixOperator(q, learnable=True), b.requires_grad_())
    assert not x.requires_grad


def test_warns_on_unnamed_captured_tensor():
    q = spd(4).requires_grad_()
    with pytest.warns(UserWarning, match="params"):
        cg(lambda x: x @ q.mT, rand(2, 4))


# --------------------------------------------------------------------------- solve_normal
def test_solve_normal_ridge():
    a, y = rand(15, 6, seed=2), rand(3, 15)
    lam = 0.3
    x, info = solve_normal(MatrixOperator(a), y, lam=lam, tol=1e-12, max_iter=50)
    ref = torch.linalg.solve(a.T @ a + lam * torch.eye(6, dtype=DT), (y @ a).T).T
    assert rel(x, ref) < 1e-9 and info.status == "converged"
    x0, _ = solve_normal(a, y, tol=1e-12, max_iter=50)  # plain least squares, a matrix for A
    assert rel(x0, torch.linalg.lstsq(a, y.T).solution.T) < 1e-8


def test_solve_normal_learnable_lam_and_complex():
    a, y = rand(10, 5, seed=2), rand(2, 10)
    lam = torch.tensor(0.5, dtype=DT, requires_grad=True)
    x, _ = solve_normal(MatrixOperator(a), y, lam=lam, tol=1e-13, max_iter=50)
    x.sum().backward()
    lam2 = torch.tensor(0.5, dtype=DT, requires_grad=True)
    torch.linalg.solve(a.T @ a + lam2 * torch.eye(5, dtype=DT), (y @ a).T).sum().backward()
    assert abs(float(lam.grad - lam2.grad)) < 1e-8 * abs(float(lam2.grad))

    ac, yc = rand(10, 5, seed=2, dtype=CDT), rand(2, 10, dtype=CDT)
    lams = torch.tensor([0.1, 1.0], dtype=DT)  # per sample
    x, _ = solve_normal(MatrixOperator(ac), yc, lam=lams, tol=1e-12, max_iter=50)
    for i in range(2):
        ref = torch.linalg.solve(ac.mH @ ac + lams[i] * torch.eye(5, dtype=CDT), ac.mH @ yc[i])
        assert rel(x[i], ref) < 1e-9


# --------------------------------------------------------------------------- errors
def test_errors_name_the_argument():
    q = spd(4)
    op, b = MatrixOperator(q), rand(2, 4)
    with pytest.raises(TypeError, match="^b:"):
        cg(op, [1.0, 2.0])
    with pytest.raises(ValueError, match="^b:.*0-dim"):
        cg(lambda x: x, torch.tensor(1.0))
    with pytest.raises(ValueError, match="^b:"):
        cg(op, rand(2, 5))
    with pytest.raises(ValueError, match="^x0:"):
        cg(op, b, x0=rand(2, 3))
    with pytest.raises(ValueError, match="^tol:"):
        cg(op, b, tol=-1.0)
    with pytest.raises(ValueError, match="^atol:"):
        cg(op, b, atol=-1.0)
    with pytest.raises(ValueError, match="^max_iter:"):
        cg(op, b, max_iter=0)
    with pytest.raises(ValueError, match="^check_every:"):
        cg(op, b, check_every=-1)
    with pytest.raises(ValueError, match="^A:.*square"):
        cg(MatrixOperator(rand(5, 4)), b)
    with pytest.raises(ValueError, match="^A:.*square"):
        cg(lambda x: x[:, :2], b)
    with pytest.raises(TypeError, match="^A:"):
        cg("not an operator", b)
    with pytest.raises(TypeError, match="^M:"):
        cg(op, b, M=3.0)
    with pytest.raises(ValueError, match="^M:.*square"):
        cg(op, b, M=MatrixOperator(rand(5, 4)))
    with pytest.raises(TypeError, match="^A:"):
        solve_normal(lambda x: x, b)
    with pytest.raises(ValueError, match="^lam:"):
        solve_normal(op, b, lam=-1.0)
    with pytest.raises(ValueError, match="^y:"):
        solve_normal(op, rand(2, 7))
