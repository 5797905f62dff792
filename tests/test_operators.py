"""Tests for unroll.operators: adjointness, products against numpy, spectral norms, checks.

Every reference is computed with numpy in the test (dense products, ``np.linalg.norm(., 2)``).
"""

import warnings

import numpy as np
import pytest
import torch

from unroll.operators import (AdjointOperator, ComposedOperator, Diagonal, Identity, LinearOperator,
                              MatrixOperator, ScaledOperator, SumOperator, adjoint_test, as_operator)

DT = torch.float64
CDT = torch.complex128
M, N = 7, 5


def _rng(seed=0):
    return np.random.default_rng(seed)


def _real(shape, seed=0):
    return _rng(seed).standard_normal(shape)


def _cplx(shape, seed=0):
    r = _rng(seed)
    return r.standard_normal(shape) + 1j * r.standard_normal(shape)


def t(a):
    a = np.asarray(a)
    return torch.as_tensor(a, dtype=CDT if np.iscomplexobj(a) else DT)


# --------------------------------------------------------------------------- #
# operator zoo: name -> (operator, dense per-sample matrix or None, batch, complex input?)
# --------------------------------------------------------------------------- #
A_NP = _real((M, N), 1)
B_NP = _real((M, N), 2)
AC_NP = _cplx((M, N), 3)
BC_NP = _cplx((M, N), 4)
D_NP = _rng(5).uniform(0.5, 2.0, N)
DC_NP = _cplx(N, 6)
ABATCH_NP = _real((2, M, N), 7)
ACBATCH_NP = _cplx((2, M, N), 8)
DPS_NP = _real((2, N), 9)


def zoo():
    """Operators with their dense (m, n) matrices (or (B, m, n) for per-sample ones)."""
    A, B = MatrixOperator(t(A_NP)), MatrixOperator(t(B_NP))
    Ac, Bc = MatrixOperator(t(AC_NP)), MatrixOperator(t(BC_NP))
    D, Dc = Diagonal(t(D_NP)), Diagonal(t(DC_NP))
    return {
        "dense_real": (A, A_NP, False),
        "dense_complex": (Ac, AC_NP, True),
        "sparse_real": (MatrixOperator(t(A_NP).to_sparse()), A_NP, False),
        "sparse_complex": (MatrixOperator(t(AC_NP).to_sparse()), AC_NP, True),
        "sparse_csr": (MatrixOperator(t(A_NP).to_sparse_csr()), A_NP, False),
        "batched_real": (MatrixOperator(t(ABATCH_NP)), ABATCH_NP, False),
        "batched_complex": (MatrixOperator(t(ACBATCH_NP)), ACBATCH_NP, True),
        "diag_real": (D, np.diag(D_NP), False),
        "diag_real_on_complex": (Diagonal(t(D_NP)), np.diag(D_NP), True),
        "diag_complex": (Dc, np.diag(DC_NP), True),
        "diag_per_sample": (Diagonal(t(DPS_NP), per_sample=True), np.stack([np.diag(d) for d in DPS_NP]), False),
        "identity": (Identity((N,)), np.eye(N), False),
        "composed": (A @ D, A_NP @ np.diag(D_NP), False),
        "composed_complex": (Ac @ Dc, AC_NP @ np.diag(DC_NP), True),
        "sum": (A + B, A_NP + B_NP, False),
        "sum_complex": (Ac + Bc, AC_NP + BC_NP, True),
        "difference": (A - B, A_NP - B_NP, False),
        "negation": (-A, -A_NP, False),
        "scaled_float": (2.5 * A, 2.5 * A_NP, False),
        "scaled_float_right": (A * -0.75, -0.75 * A_NP, False),
        "scaled_complex": ((1.5 - 2j) * Ac, (1.5 - 2j) * AC_NP, True),
        "scaled_complex_diag": ((0.5 + 1j) * Diagonal(t(D_NP)), (0.5 + 1j) * np.diag(D_NP), True),
        "scaled_tensor": (torch.tensor(-1.25, dtype=DT) * A, -1.25 * A_NP, False),
        "adjoint": (A.H, A_NP.T, False),
        "adjoint_complex": (Ac.H, AC_NP.conj().T, True),
        "composed_adjoint": ((A @ D).H, (A_NP @ np.diag(D_NP)).T, False),
        "composed_adjoint_complex": ((Ac @ Dc).H, (AC_NP @ np.diag(DC_NP)).conj().T, True),
        "nested": ((A @ D - 0.5 * (B @ D)).H @ A, (A_NP @ np.diag(D_NP) - 0.5 * B_NP @ np.diag(D_NP)).T @ A_NP,
                   False),
    }


with warnings.catch_warnings():  # "Sparse CSR tensor support is in beta"
    warnings.simplefilter("ignore", UserWarning)
    ZOO_NAMES = list(zoo())

pytestmark = pytest.mark.filterwarnings("ignore:Sparse CSR tensor support is in beta")


def _sample(shape, cplx, seed):
    return t(_cplx(shape, seed) if cplx else _real(shape, seed))


def _apply(mat, v):
    """Dense products in numpy: mat (m, n) or (B, m, n), v (B, n) -> (B, m)."""
    if mat.ndim == 3:
        return np.einsum("bmn,bn->bm", mat, v)
    return v @ mat.T


# --------------------------------------------------------------------------- #
# adjointness and products
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("name", ZOO_NAMES)
def test_adjoint_identity(name):
    op, mat, cplx = zoo()[name]
    m, n = mat.shape[-2:]
    x = _sample((2, n), cplx, 10)
    y = _sample((2, m), cplx or np.iscomplexobj(mat), 11)
    assert adjoint_test(op, x=x, y=y) < 1e-10
    # default random samples (drawn by adjoint_test itself) too, where they fit the operator
    if not (name == "identity" or name == "diag_real_on_complex" or name == "scaled_complex_diag"):
        assert adjoint_test(op) < 1e-10


@pytest.mark.parametrize("name", ZOO_NAMES)
def test_forward_adjoint_normal_match_numpy(name):
    op, mat, cplx = zoo()[name]
    m, n = mat.shape[-2:]
    x_np = _cplx((2, n), 12) if cplx else _real((2, n), 12)
    y_np = _cplx((2, m), 13) if (cplx or np.iscomplexobj(mat)) else _real((2, m), 13)
    mat_h = np.conj(np.swapaxes(mat, -1, -2))
    ax = op(t(x_np))
    aty = op.adjoint(t(y_np))
    assert tuple(ax.shape) == (2, m) and tuple(aty.shape) == (2, n)
    np.testing.assert_allclose(ax.numpy(), _apply(mat, x_np), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(aty.numpy(), _apply(mat_h, y_np), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(op.normal(t(x_np)).numpy(), _apply(mat_h, _apply(mat, x_np)), rtol=1e-12,
                               atol=1e-12)
    # the adjoint operator's forward is the adjoint
    np.testing.assert_allclose(op.H(t(y_np)).numpy(), _apply(mat_h, y_np), rtol=1e-12, atol=1e-12)


def test_adjoint_of_adjoint_is_the_operator():
    A = MatrixOperator(t(A_NP))
    assert A.H.H is A
    assert isinstance(A.H, AdjointOperator)
    assert A.H.in_shape == (M,) and A.H.out_shape == (N,)


def test_composition_types_and_shapes():
    A, D = MatrixOperator(t(A_NP)), Diagonal(t(D_NP))
    assert isinstance(A @ D, ComposedOperator)
    assert isinstance(A + A, SumOperator)
    assert isinstance(3.0 * A, ScaledOperator)
    AtA = A.H @ A
    assert AtA.in_shape == (N,) and AtA.out_shape == (N,)
    x = t(_real((3, N), 20))
    torch.testing.assert_close(AtA(x), A.normal(x), rtol=1e-13, atol=1e-13)
    # an identity of free shape composes with anything and keeps the other's shapes
    free = Identity()
    assert (A @ free).in_shape is None and (A @ free).out_shape == (M,)
    torch.testing.assert_close((free @ A)(x), A(x), rtol=0, atol=0)


def test_as_operator():
    A = MatrixOperator(t(A_NP))
    assert as_operator(A) is A
    wrapped = as_operator(t(A_NP))
    assert isinstance(wrapped, MatrixOperator)
    with pytest.raises(TypeError, match="A:"):
        as_operator(A_NP)  # a numpy array is not accepted


def test_sparse_matches_dense():
    dense = MatrixOperator(t(AC_NP))
    sparse = MatrixOperator(t(AC_NP).to_sparse())
    assert sparse.sparse and not dense.sparse
    x = _sample((4, N), True, 21)
    y = _sample((4, M), True, 22)
    torch.testing.assert_close(sparse(x), dense(x), rtol=1e-13, atol=1e-13)
    torch.testing.assert_close(sparse.adjoint(y), dense.adjoint(y), rtol=1e-13, atol=1e-13)
    torch.testing.assert_close(sparse.dense(), dense.dense(), rtol=0, atol=0)


# --------------------------------------------------------------------------- #
# spectral norm
# --------------------------------------------------------------------------- #
def _spec2(mat):
    return np.linalg.norm(mat, 2) ** 2


@pytest.mark.parametrize("mat", [A_NP, AC_NP, _real((N, M), 30), _real((40, 25), 31)],
                         ids=["real", "complex", "wide", "larger"])
def test_lipschitz_dense_exact(mat):
    lip = MatrixOperator(t(mat)).lipschitz()
    assert lip.dim() == 0 and not lip.is_complex()
    assert float(lip) == pytest.approx(_spec2(mat), rel=1e-6)
    assert float(MatrixOperator(t(mat)).norm()) == pytest.approx(np.linalg.norm(mat, 2), rel=1e-6)


def test_lipschitz_batched_is_max_over_batch():
    lip = MatrixOperator(t(ABATCH_NP)).lipschitz()
    assert float(lip) == pytest.approx(max(_spec2(a) for a in ABATCH_NP), rel=1e-6)


def test_lipschitz_diagonal_and_identity():
    assert float(Diagonal(t(D_NP)).lipschitz()) == pytest.approx(np.max(np.abs(D_NP)) ** 2, rel=1e-12)
    assert float(Diagonal(t(DC_NP)).lipschitz()) == pytest.approx(np.max(np.abs(DC_NP)) ** 2, rel=1e-12)
    assert float(Identity((N,)).lipschitz()) == 1.0


def _gapped(m, n, seed):
    """A random matrix with a clear gap between its two largest singular values."""
    r = _rng(seed)
    g = r.standard_normal((m, n)) / np.sqrt(m)
    u, v = r.standard_normal(m), r.standard_normal(n)
    return g + 2.0 * np.outer(u / np.linalg.norm(u), v / np.linalg.norm(v))


def test_lipschitz_power_iteration_composed():
    a = _gapped(15, 12, 32)
    d = _rng(33).uniform(0.5, 1.5, 12)
    op = MatrixOperator(t(a)) @ Diagonal(t(d))
    ref = _spec2(a @ np.diag(d))
    assert float(LinearOperator.lipschitz(op, recompute=True)) == pytest.approx(ref, rel=1e-4)
    assert float(op.lipschitz()) == pytest.approx(ref, rel=1e-4)


def test_lipschitz_power_iteration_complex_and_sparse():
    r = _rng(34)
    a = _gapped(15, 12, 35) + 1j * r.standard_normal((15, 12)) / 10
    op = MatrixOperator(t(a))
    assert float(LinearOperator.lipschitz(op, recompute=True)) == pytest.approx(_spec2(a), rel=1e-4)
    sp = MatrixOperator(t(_gapped(15, 12, 36)).to_sparse())
    assert float(sp.lipschitz()) == pytest.approx(_spec2(_gapped(15, 12, 36)), rel=1e-4)


def test_lipschitz_cached_and_recomputed():
    a = _gapped(15, 12, 37)
    op = MatrixOperator(t(a)) @ Diagonal(torch.ones(12, dtype=DT))
    calls = []
    orig = op.normal

    def counting(x):
        calls.append(1)
        return orig(x)

    op.normal = counting
    first = op.lipschitz()
    n_first = len(calls)
    assert n_first > 0
    second = op.lipschitz()
    assert second is first and len(calls) == n_first  # cached: no new power iteration
    third = op.lipschitz(recompute=True)
    assert len(calls) > n_first and third is not first
    assert float(third) == pytest.approx(float(first), rel=1e-10)


def test_lipschitz_cache_follows_changes_of_the_operator():
    # cached while the operator is unchanged; recomputed after an in-place change of its tensors
    # (an optimiser step on a learnable operator), without recompute=True
    op = MatrixOperator(t(A_NP).clone())
    first = op.lipschitz()
    assert op.lipschitz() is first
    with torch.no_grad():
        op.matrix.mul_(2.0)
    fresh = op.lipschitz()
    assert fresh is not first
    assert float(fresh) == pytest.approx(4.0 * _spec2(A_NP), rel=1e-10)
    assert op.lipschitz() is fresh
    learn = MatrixOperator(t(A_NP).clone(), learnable=True)
    l0 = float(learn.lipschitz())
    opt = torch.optim.SGD(learn.parameters(), lr=0.5)
    (learn.matrix ** 2).sum().backward()
    opt.step()  # matrix *= 0 here (lr 0.5, gradient 2A): the constant must follow
    assert float(learn.lipschitz()) == pytest.approx(0.0, abs=1e-12) and l0 > 0
    d = Diagonal(t(D_NP).clone())
    d0 = d.lipschitz()
    assert d.lipschitz() is d0
    with torch.no_grad():
        d.diag.mul_(3.0)
    assert float(d.lipschitz()) == pytest.approx(9.0 * float(d0), rel=1e-12)
    assert float(d.lipschitz(recompute=True)) == pytest.approx(9.0 * float(d0), rel=1e-12)


def test_adjoint_lipschitz_equals_operator_lipschitz():
    A = MatrixOperator(t(A_NP))
    assert float(A.H.lipschitz()) == pytest.approx(_spec2(A_NP), rel=1e-10)


# --------------------------------------------------------------------------- #
# input checks
# --------------------------------------------------------------------------- #
def test_forward_wrong_size():
    A = MatrixOperator(t(A_NP))
    with pytest.raises(ValueError) as e:
        A(torch.zeros(2, N + 1, dtype=DT))
    msg = str(e.value)
    assert msg.startswith("x:") and f"(B, {N})" in msg and f"(2, {N + 1})" in msg


def test_adjoint_wrong_size():
    A = MatrixOperator(t(A_NP))
    with pytest.raises(ValueError) as e:
        A.adjoint(torch.zeros(3, M - 2, dtype=DT))
    msg = str(e.value)
    assert msg.startswith("y:") and f"(B, {M})" in msg and f"(3, {M - 2})" in msg


def test_wrong_size_composed_and_diagonal():
    op = MatrixOperator(t(A_NP)) @ Diagonal(t(D_NP))
    with pytest.raises(ValueError, match=r"x:.*\(B, 5\).*\(4, 3\)"):
        op(torch.zeros(4, 3, dtype=DT))
    with pytest.raises(ValueError, match=r"y:.*\(B, 7\).*\(4, 5\)"):
        op.adjoint(torch.zeros(4, 5, dtype=DT))


def test_complex_input_to_real_operator():
    A = MatrixOperator(t(A_NP))
    with pytest.raises(TypeError, match="real operator"):
        A(torch.zeros(2, N, dtype=CDT))
    with pytest.raises(TypeError, match="real operator"):
        A.adjoint(torch.zeros(2, M, dtype=CDT))


def test_real_input_to_complex_operator():
    with pytest.raises(TypeError, match="complex operator"):
        MatrixOperator(t(AC_NP))(torch.zeros(2, N, dtype=DT))


def test_dtype_mismatch():
    A = MatrixOperator(t(A_NP))
    with pytest.raises(TypeError, match="float32"):
        A(torch.zeros(2, N, dtype=torch.float32))
    A32 = MatrixOperator(t(A_NP).float())
    with pytest.raises(TypeError, match="float64"):
        A32.adjoint(torch.zeros(2, M, dtype=DT))


def test_batch_size_mismatch_for_per_sample_operators():
    with pytest.raises(ValueError, match="batch"):
        MatrixOperator(t(ABATCH_NP))(torch.zeros(3, N, dtype=DT))
    with pytest.raises(ValueError, match="batch"):
        Diagonal(t(DPS_NP), per_sample=True)(torch.zeros(3, N, dtype=DT))


def test_mismatched_compositions():
    A, B = MatrixOperator(t(A_NP)), MatrixOperator(t(B_NP))  # both (7, 5)
    with pytest.raises(ValueError):
        A @ B
    with pytest.raises(ValueError):
        A + MatrixOperator(t(_real((M, N + 1), 40)))
    with pytest.raises(ValueError):
        A - MatrixOperator(t(_real((M + 1, N), 41)))
    with pytest.raises(ValueError):
        A @ Diagonal(t(_real(N + 2, 42)))


def test_bad_matrices():
    with pytest.raises(ValueError, match="matrix"):
        MatrixOperator(torch.zeros(5, dtype=DT))
    with pytest.raises(ValueError, match="matrix"):
        MatrixOperator(torch.zeros(2, 2, 2, 2, dtype=DT))
    with pytest.raises(TypeError, match="matrix"):
        MatrixOperator(torch.zeros(3, 3, dtype=torch.int64))
    with pytest.raises(TypeError, match="matrix"):
        MatrixOperator(A_NP)
    with pytest.raises(ValueError):
        ScaledOperator(MatrixOperator(t(A_NP)), torch.ones(2))
    with pytest.raises(ValueError, match="per_sample"):
        Diagonal(t(D_NP), per_sample=True)


def test_non_tensor_input():
    with pytest.raises(TypeError, match="x:"):
        MatrixOperator(t(A_NP))(np.zeros((2, N)))


# --------------------------------------------------------------------------- #
# fingerprint
# --------------------------------------------------------------------------- #
def test_fingerprint_equal_for_same_matrix():
    a = t(A_NP)
    f1 = MatrixOperator(a).fingerprint()
    f2 = MatrixOperator(a.clone()).fingerprint()
    assert f1 == f2 and isinstance(f1, str) and len(f1) == 16
    assert MatrixOperator(a).fingerprint() == f1  # deterministic


def test_fingerprint_changes_with_one_entry():
    a = t(A_NP)
    f1 = MatrixOperator(a).fingerprint()
    b = a.clone()
    b[3, 2] += 1e-9
    assert MatrixOperator(b).fingerprint() != f1
    op = MatrixOperator(a.clone())
    with torch.no_grad():
        op.matrix[0, 0] = -op.matrix[0, 0]
    assert op.fingerprint() != f1


def test_fingerprint_sparse_and_diagonal():
    a = t(A_NP)
    assert MatrixOperator(a.to_sparse()).fingerprint() == MatrixOperator(a.to_sparse()).fingerprint()
    d = t(D_NP)
    e = d.clone()
    e[0] += 1.0
    assert Diagonal(d).fingerprint() == Diagonal(d.clone()).fingerprint()
    assert Diagonal(d).fingerprint() != Diagonal(e).fingerprint()


def test_fingerprint_distinguishes_different_maps():
    """Operators computing different maps must not share a fingerprint."""
    A = MatrixOperator(t(A_NP))
    assert (2.0 * A).fingerprint() != (3.0 * A).fingerprint()
    assert (2.0 * A).fingerprint() == (2.0 * MatrixOperator(t(A_NP))).fingerprint()
    b, c, d = (MatrixOperator(t(_real((4, 4), s))) for s in (50, 51, 52))
    assert ((b + c) @ d).fingerprint() != ((b @ c) @ d).fingerprint()
    assert ((b + c) @ d).fingerprint() == ((b + c) @ d).fingerprint()


# --------------------------------------------------------------------------- #
# dtype conversion
# --------------------------------------------------------------------------- #
def test_to_float64_keeps_adjointness():
    a32 = torch.as_tensor(A_NP, dtype=torch.float32)
    op = MatrixOperator(a32) @ Diagonal(torch.as_tensor(D_NP, dtype=torch.float32))
    lip32 = op.lipschitz()
    assert lip32.dtype == torch.float32
    op64 = op.to(torch.float64)
    assert op64 is op
    assert op.a.matrix.dtype == DT and op.b.diag.dtype == DT
    assert op.lipschitz().dtype == DT  # the cached constant followed the conversion
    assert adjoint_test(op) < 1e-10
    x = t(_real((2, N), 60))
    ref = _apply(a32.double().numpy() @ np.diag(torch.as_tensor(D_NP, dtype=torch.float32).double().numpy()),
                 x.numpy())
    np.testing.assert_allclose(op(x).numpy(), ref, rtol=1e-12, atol=1e-12)
    with pytest.raises(TypeError):
        op.a(x.float())  # the matrix now wants float64


def test_to_float64_sparse_and_batched():
    sp = MatrixOperator(torch.as_tensor(A_NP, dtype=torch.float32).to_sparse()).to(torch.float64)
    assert sp.matrix.dtype == DT and sp.matrix_h.dtype == DT
    assert adjoint_test(sp) < 1e-10
    bt = MatrixOperator(torch.as_tensor(ABATCH_NP, dtype=torch.float32)).to(torch.float64)
    assert adjoint_test(bt) < 1e-10


def test_learnable_matrix_is_a_parameter():
    op = MatrixOperator(t(A_NP), learnable=True)
    assert isinstance(op.matrix, torch.nn.Parameter)
    x = t(_real((2, N), 61))
    op(x).sum().backward()
    np.testing.assert_allclose(op.matrix.grad.numpy(), np.tile(x.sum(0).numpy(), (M, 1)), rtol=1e-12)
    fixed = MatrixOperator(t(A_NP))
    assert len(list(fixed.parameters())) == 0 and "matrix" in fixed.state_dict()
    with pytest.raises(ValueError, match="learnable"):
        MatrixOperator(t(A_NP).to_sparse(), learnable=True)


def test_non_finite_matrix_refused_once_at_construction():
    """NaN/Inf in A is refused when the operator is built, naming ``matrix`` (before: a raw
    ``linalg.svd`` traceback from the classical solvers)."""
    from unroll import solvers

    bad = t(A_NP).clone()
    bad[2, 3] = float("nan")
    with pytest.raises(ValueError, match=r"matrix: expected finite entries, got 1 NaN and 0 Inf.*\(2, 3\)"):
        MatrixOperator(bad)
    with pytest.raises(ValueError, match="matrix: expected finite"):
        solvers.ista(bad, torch.zeros(2, M, dtype=DT), 0.1)
    inf = t(ABATCH_NP).clone()
    inf[1, 0, 0] = float("inf")
    with pytest.raises(ValueError, match="matrix: .*0 NaN and 1 Inf"):
        MatrixOperator(inf)
    with pytest.raises(ValueError, match="matrix: .*1 NaN"):
        MatrixOperator(bad.to_sparse())
    with pytest.raises(ValueError, match="matrix: .*1 NaN"):
        MatrixOperator(bad, learnable=True)


@pytest.mark.parametrize("dtype,tol", [(torch.float16, 0.02), (torch.bfloat16, 0.3)])
def test_low_precision_matrices_work(dtype, tol):
    """float16/bfloat16: the Lipschitz constant is computed in float32 (torch.linalg refuses
    half precision), and ISTA runs in the low precision, close to float64 ISTA on the same data."""
    from unroll import solvers

    g = torch.Generator().manual_seed(0)
    a = (torch.randn(20, 40, generator=g) / 20 ** 0.5).to(dtype)
    x = torch.randn(4, 40, generator=g) * (torch.rand(4, 40, generator=g) < 0.1)
    y = (x @ a.float().T).to(dtype)
    lip = MatrixOperator(a).lipschitz()
    assert lip.dtype == torch.float32
    assert float(lip) == pytest.approx(float(torch.linalg.matrix_norm(a.double(), ord=2)) ** 2, rel=1e-5)
    x_low, _ = solvers.ista(a, y, 0.01, max_iter=200, tol=None)
    x_ref, _ = solvers.ista(a.double(), y.double(), 0.01, max_iter=200, tol=None)
    assert x_low.dtype == dtype
    assert float((x_low.double() - x_ref).norm() / x_ref.norm()) < tol


def test_measurements_in_another_dtype_than_the_matrix():
    """``y`` float32 with ``A`` float64: a TypeError naming ``y`` and both dtypes (before: torch's
    "expected m1 and m2 to have the same dtype" from inside the iteration)."""
    from unroll import solvers
    from unroll.checks import check_measurements

    a = t(A_NP)  # float64
    with pytest.raises(TypeError, match=r"y: dtype torch.float32 does not match the dtype torch.float64 of the matrix A"):
        solvers.ista(a, torch.zeros(2, M, dtype=torch.float32), 0.1)
    with pytest.raises(TypeError, match=r"y: dtype torch.float64 .* torch.float32"):
        solvers.fista(a.float(), torch.zeros(2, M, dtype=DT), 0.1)
    with pytest.raises(TypeError, match=r"meas: dtype torch.complex64 .* torch.complex128"):
        check_measurements(torch.zeros(2, M, dtype=torch.complex64), MatrixOperator(t(AC_NP)), "meas")
    check_measurements(torch.zeros(2, M, dtype=DT), MatrixOperator(a), "y")  # matching dtypes pass
