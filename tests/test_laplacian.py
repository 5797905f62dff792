"""The grid Laplacian (matrix-free vs sparse vs an independent reference) and the CG preconditioners."""

import itertools
import math

import numpy as np
import pytest
import torch

import unroll
from unroll import cg
from unroll.operators import Laplacian, adjoint_test
from unroll.preconditioners import IncompleteCholesky, JacobiPreconditioner


def _reference(shape, mask=None):
    """Dense −∇² built cell by cell (independent of the operator's code): Dirichlet outside the grid,
    Neumann walls to solid cells, identity rows on solid cells."""
    n = math.prod(shape)
    fluid = np.ones(shape, bool) if mask is None else mask.numpy()
    A = np.zeros((n, n))
    flat = np.arange(n).reshape(shape)
    for cell in itertools.product(*[range(s) for s in shape]):
        i = flat[cell]
        if not fluid[cell]:
            A[i, i] = 1.0
            continue
        A[i, i] = 2 * len(shape)
        for d in range(len(shape)):
            for step in (-1, 1):
                nb = list(cell)
                nb[d] += step
                if not 0 <= nb[d] < shape[d]:
                    continue  # Dirichlet: counted on the diagonal, no coupling
                nb = tuple(nb)
                if fluid[nb]:
                    A[i, flat[nb]] = -1.0
                else:
                    A[i, i] -= 1.0  # Neumann wall
    return torch.from_numpy(A)


def _obstacle(shape, seed=0):
    """A box obstacle in the middle plus a few random solid cells (every fluid region open to the boundary)."""
    g = torch.Generator().manual_seed(seed)
    mask = torch.rand(shape, generator=g) > 0.1
    centre = tuple(slice(s // 3, s - s // 3) for s in shape)
    mask[centre] = False
    border = torch.zeros(shape, dtype=torch.bool)
    for d in range(len(shape)):
        sl = [slice(None)] * len(shape)
        sl[d] = 0
        border[tuple(sl)] = True
        sl[d] = -1
        border[tuple(sl)] = True
    mask |= border  # an open border ring: no enclosed fluid pocket
    # close off isolated fluid pockets cut off by random solids
    from scipy import ndimage
    labels, _ = ndimage.label(mask.numpy())
    keep = np.isin(labels, np.unique(labels[border.numpy()]))
    return torch.from_numpy(keep & mask.numpy())


CASES = [((7, 9), False), ((7, 9), True), ((5, 6, 4), False), ((5, 6, 4), True)]


@pytest.mark.parametrize("shape,obstacles", CASES)
def test_matrix_free_equals_sparse_and_reference(shape, obstacles):
    mask = _obstacle(shape) if obstacles else None
    A = Laplacian(shape, mask=mask)
    S = A.to_sparse()
    assert S.layout == torch.sparse_coo and S.shape == (math.prod(shape),) * 2 and S.dtype == torch.float64
    ref = _reference(shape, mask)
    torch.testing.assert_close(S.to_dense(), ref, rtol=0, atol=0)
    x = torch.randn(3, *shape, dtype=torch.float64)
    y = A(x)
    assert y.shape == x.shape and y.dtype == torch.float64
    torch.testing.assert_close(y.reshape(3, -1), (S @ x.reshape(3, -1).T).T, rtol=1e-14, atol=1e-12)
    torch.testing.assert_close(A.diagonal(torch.float64).flatten(), torch.diagonal(ref))


@pytest.mark.parametrize("shape,obstacles", CASES)
def test_symmetric_positive_definite_and_adjoint(shape, obstacles):
    mask = _obstacle(shape, seed=1) if obstacles else None
    A = Laplacian(shape, mask=mask)
    D = A.to_sparse().to_dense()
    torch.testing.assert_close(D, D.T, rtol=0, atol=0)
    eig = torch.linalg.eigvalsh(D)
    assert eig.min() > 1e-3
    assert adjoint_test(A.to(torch.float64), x=torch.randn(2, *shape, dtype=torch.float64)) <= 1e-12
    if not obstacles:  # exact constant: λ_max(A)²
        torch.testing.assert_close(A.lipschitz().double(), eig.max() ** 2, rtol=1e-6, atol=0)  # default dtype
    else:  # power iteration on the masked operator
        A64 = Laplacian(shape, mask=mask)
        A64.double()
        assert abs(float(A64.lipschitz(max_iter=2000, tol=1e-12)) / float(eig.max() ** 2) - 1) < 1e-3


def test_enclosed_fluid_region_is_refused():
    mask = torch.ones(8, 8, dtype=torch.bool)
    mask[2:6, 2:6] = False
    mask[3:5, 3:5] = True  # a fluid pocket walled in: singular with Neumann walls
    with pytest.raises(ValueError, match="mask: 1 fluid region"):
        Laplacian((8, 8), mask=mask)


def test_bad_arguments_name_themselves():
    with pytest.raises(ValueError, match=r"mask: expected the grid's shape \(8, 8\).*got \(8, 7\)"):
        Laplacian((8, 8), mask=torch.ones(8, 7, dtype=torch.bool))
    with pytest.raises(TypeError, match="mask: expected dtype torch.bool"):
        Laplacian((8, 8), mask=torch.ones(8, 8))
    with pytest.raises(ValueError, match="shape: expected 2 or 3"):
        Laplacian((8,))
    with pytest.raises(ValueError, match="boundary: 'neumann'.*singular"):
        Laplacian((8, 8), boundary="neumann")
    A = Laplacian((8, 8))
    with pytest.raises(ValueError, match=r"b: expected shape \(B, 8, 8\).*got \(2, 8, 9\)"):
        cg(A, torch.randn(2, 8, 9))
    with pytest.raises(ValueError, match=r"x: expected shape \(B, 8, 8\)"):
        A(torch.randn(8, 8))  # no batch dimension
    with pytest.raises(ValueError, match="preconditioner: is another name for M"):
        cg(A, torch.randn(1, 8, 8), M=JacobiPreconditioner(A), preconditioner=JacobiPreconditioner(A))
    with pytest.raises(ValueError, match=r"M: expected a preconditioner on the shape of b \(B, 8, 8\), got Jacobi"):
        cg(A, torch.randn(1, 8, 8), M=JacobiPreconditioner(Laplacian((8, 9))))
    import numpy as np

    assert Laplacian(np.array([8, 6])).in_shape == (8, 6)  # NumPy ints are grid sizes too
    with pytest.raises(ValueError, match=r"shape: expected 2 or 3 positive ints.*got \(8, 6\.0\)"):
        Laplacian((8, 6.0))


@pytest.mark.parametrize("obstacles", [False, True])
def test_cg_reaches_tolerance(obstacles):
    shape = (24, 20)
    mask = _obstacle(shape, seed=2) if obstacles else None
    A = Laplacian(shape, mask=mask).double()
    b = torch.randn(3, *shape, dtype=torch.float64)
    if mask is not None:
        b = b * mask
    x, info = cg(A, b, tol=1e-8)
    assert info.status == "converged" and bool((info.residual <= 1e-8).all())
    ref = torch.linalg.solve(A.to_sparse().to_dense(), b.reshape(3, -1).T).T.reshape_as(b)
    torch.testing.assert_close(x, ref, rtol=1e-6, atol=1e-7)
    if mask is not None:
        assert bool((x[:, ~mask] == 0).all())  # zero right-hand side on solids → zero solution there


def test_float32_and_batched_3d():
    A = Laplacian((6, 5, 4), mask=_obstacle((6, 5, 4), seed=3))
    x = torch.randn(4, 6, 5, 4)
    y = A(x)
    assert y.dtype == torch.float32
    y64 = A.double()(x.double())
    torch.testing.assert_close(y, y64.float(), rtol=1e-5, atol=1e-5)
    for k in range(4):  # batched = one at a time
        torch.testing.assert_close(A(x[k:k + 1].double()), y64[k:k + 1])


def test_ic0_factor_matches_A_on_its_pattern():
    shape = (6, 5, 4)
    A = Laplacian(shape, mask=_obstacle(shape, seed=4))
    S = A.to_sparse().to_dense().numpy()
    P = IncompleteCholesky(A)
    L = P.L.toarray()
    assert np.allclose(L, np.tril(L)) and (np.diag(L) > 0).all()
    assert ((L != 0) <= (np.tril(S) != 0)).all()  # zero fill
    on = np.tril(S) != 0
    assert np.allclose((L @ L.T)[on], S[on], rtol=0, atol=1e-12)
    r = torch.randn(3, *shape, dtype=torch.float64)
    z = P(r)
    ref = np.linalg.solve(L @ L.T, r.reshape(3, -1).numpy().T).T
    np.testing.assert_allclose(z.reshape(3, -1).numpy(), ref, rtol=1e-10, atol=1e-12)
    assert P(r.float()).dtype == torch.float32
    # a sparse torch tensor and a dense matrix give the same factor
    P2 = IncompleteCholesky(A.to_sparse(), shape=shape)
    P3 = IncompleteCholesky(torch.from_numpy(S))
    assert abs(P2.L - P.L).max() == 0 and abs(P3.L - P.L).max() == 0 and P3.in_shape == (S.shape[0],)


def test_preconditioner_arguments():
    with pytest.raises(ValueError, match="A: IC\\(0\\) broke down"):
        IncompleteCholesky(torch.tensor([[1.0, 2.0], [2.0, 1.0]], dtype=torch.float64))  # indefinite
    with pytest.raises(ValueError, match=r"A: expected a square matrix \(N, N\), got shape \(2, 3\)"):
        IncompleteCholesky(torch.zeros(2, 3))
    with pytest.raises(TypeError, match="A: expected an operator with a diagonal"):
        JacobiPreconditioner(lambda x: x)
    with pytest.raises(ValueError, match="shape: \\(3, 3\\) has 9 entries"):
        JacobiPreconditioner(torch.eye(8), shape=(3, 3))
    S = Laplacian((4, 4)).to_sparse()
    J = JacobiPreconditioner(S, shape=(4, 4))
    torch.testing.assert_close(J.diag, torch.full((4, 4), 0.25, dtype=torch.float64))


def test_pcg_3d_obstacles_fewer_iterations():
    shape = (16, 16, 16)
    mask = _obstacle(shape, seed=5)
    A = Laplacian(shape, mask=mask).double()
    b = torch.randn(2, *shape, dtype=torch.float64) * mask
    x_cg, i_cg = cg(A, b, tol=1e-8)
    jac = unroll.linalg.JacobiPreconditioner(A)
    x_j, i_j = cg(A, b, M=jac, tol=1e-8)
    ic = unroll.linalg.IncompleteCholesky(A)
    x_ic, i_ic = cg(A, b, preconditioner=ic, tol=1e-8)
    for x, info in ((x_cg, i_cg), (x_j, i_j), (x_ic, i_ic)):
        assert info.status == "converged"
        res = torch.linalg.vector_norm((b - A(x)).flatten(1), dim=1) / torch.linalg.vector_norm(b.flatten(1), dim=1)
        assert bool((res <= 1.01e-8).all())
        torch.testing.assert_close(x, x_cg, rtol=1e-6, atol=1e-6)
    assert bool((i_j.iterations <= i_cg.iterations).all())
    assert bool((i_ic.iterations < i_cg.iterations).all())
    assert bool((i_ic.iterations.double() < 0.75 * i_cg.iterations.double()).all())  # IC(0) ~halves the count


def test_gradient_through_preconditioned_cg_and_complex_input():
    shape = (8, 6, 5)
    A = Laplacian(shape, mask=_obstacle(shape, seed=6)).double()
    D = A.to_sparse().to_dense()
    b = torch.randn(2, *shape, dtype=torch.float64, requires_grad=True)
    w = torch.randn(2, *shape, dtype=torch.float64)
    x, info = cg(A, b, preconditioner=IncompleteCholesky(A), tol=1e-12)
    (x * w).sum().backward()
    assert info.backward.status == "converged"
    ref = torch.linalg.solve(D, w.reshape(2, -1).T).T.reshape_as(w)  # ∂/∂b ⟨A⁻¹b, w⟩ = A⁻¹w (A symmetric)
    torch.testing.assert_close(b.grad, ref, rtol=1e-8, atol=1e-9)
    z = torch.randn(2, *shape, dtype=torch.complex128)
    torch.testing.assert_close(A(z), torch.complex(A(z.real), A(z.imag)))
    assert A.to_sparse(dtype=torch.float32).dtype == torch.float32
