"""A direction network as its own coarse-grid solve (issue 14): ``Laplacian.coarsen`` and
``unroll.models.MultilevelDirection``, alone and inside ``DCDMTask``."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import unroll
from unroll import Status
from unroll.data import lanczos, obstacle_mask, ritz_rhs
from unroll.data.poisson import _laplacian, _start_vector
from unroll.models import DCDM, MultilevelDirection
from unroll.models.multilevel import _galerkin
from unroll.operators import Laplacian
from unroll.solvers import conjugate_directions


def _system(grid, shape="sphere", num=2, m=60, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    mask = obstacle_mask(grid, shape, 2, g)
    A = _laplacian(grid, mask)
    _, V = lanczos(A, m, _start_vector(mask, g))
    return A, ritz_rhs(V, num, g, dtype=dtype)


class Exact(torch.nn.Module):
    """``A⁻¹r`` by CG to round-off: the ideal direction, on whichever grid it is called."""

    takes_operator = True

    def forward(self, r, A):
        x, info = unroll.cg(A, r, tol=1e-13, max_iter=5000, check_every=1)
        assert info.status == Status.CONVERGED
        return x


class Identity(torch.nn.Module):
    """``q = r``: conjugate directions is then CG."""

    def forward(self, r, A=None):
        return r


def test_coarsen_halves_the_grid_keeps_majority_fluid_cells_and_is_cached():
    plain = Laplacian((9, 8, 5))
    coarse = plain.coarsen()
    assert coarse.shape == (5, 4, 3) and coarse.mask is None and plain.coarsen() is coarse
    mask = torch.ones(8, 8, dtype=torch.bool)
    mask[2:4, 2:5] = False  # fine cells (2..3, 2..4): coarse cell (1, 1) all solid, (1, 2) half solid
    A = Laplacian((8, 8), mask)
    keys = set(A.state_dict())
    Ac = A.coarsen()
    fraction = F.avg_pool2d(mask[None, None].double(), 2)[0, 0]
    assert torch.equal(Ac.mask, fraction >= 0.5)  # (1, 2) is half fluid: fluid
    assert not bool(Ac.mask[1, 1]) and bool(Ac.mask[1, 2])
    assert set(A.state_dict()) == keys  # the cache is not a submodule
    # a coarse fluid region that pooling would enclose in solid cells is made solid (A stays SPD):
    # a fluid island inside a solid shell, open to the outside through a channel one fine cell wide,
    # which is 2 of 8 cells of its coarse cell, so solid there
    shell = torch.ones(12, 12, 12, dtype=torch.bool)
    shell[2:10, 2:10, 2:10] = False
    shell[4:8, 4:8, 4:8] = True
    shell[2:4, 4, 4] = True
    A = Laplacian((12, 12, 12), shell)  # the fine domain is valid: the island reaches the boundary
    Ac = A.coarsen()
    assert not bool(Ac.mask[2:4, 2:4, 2:4].any()) and bool(Ac.mask[0].all())
    fraction = F.avg_pool3d(shell[None, None].double(), 2)[0, 0]
    assert bool(((fraction >= 0.5) & ~Ac.mask).sum() == 8)  # only the island was removed


def test_galerkin_combination_minimises_the_energy_over_the_two_directions():
    """r − A q is orthogonal to q₁ and q₂ (the optimality condition on their span), and a
    multiple of q₁ as q₂ falls back to the line search along q₁."""
    torch.manual_seed(0)
    A, b = _system((6, 7, 5), "box")
    q1, q2 = torch.randn_like(b), torch.randn_like(b)
    q = _galerkin(b, q1, A(q1), q2, A(q2))
    res = b - A(q)
    for u in (q1, q2):
        assert float((u * res).flatten(1).sum(1).abs().max()) < 1e-10
    q = _galerkin(b, q1, A(q1), 3 * q1, A(3 * q1))
    alpha = (q1 * b).flatten(1).sum(1) / (q1 * A(q1)).flatten(1).sum(1)
    torch.testing.assert_close(q, alpha.view(-1, 1, 1, 1) * q1)


def test_levels_follow_the_grid_and_training_size_grids_run_the_network_alone():
    torch.manual_seed(0)
    net = DCDM(mask_input=True).double()
    ml = MultilevelDirection(net, coarsest=8)
    assert [ml.levels((n,) * 3) for n in (8, 14, 15, 16, 32, 64)] == [1, 1, 2, 2, 3, 4]
    assert ml.levels((40, 40, 10)) == 1
    A, b = _system((10, 9, 8), "sphere")
    assert torch.equal(ml(b, A), net(b, A) * A.mask)  # no coarse level: the network, zero on solids


def test_with_the_exact_inverse_as_network_one_iteration_solves():
    """When the network is A⁻¹ on every grid, α q₁ + q₂ = A⁻¹r exactly, so the Galerkin
    combination is the solution whatever the coarse level gave: a check of the cycle's algebra."""
    A, b = _system((16, 16, 12), "blobs", num=2, m=80)
    ml = MultilevelDirection(Exact(), coarsest=3)
    assert ml.levels(A.shape) == 3  # 16x16x12 -> 8x8x6 -> 4x4x3
    _, info = conjugate_directions(A, b, direction=ml, tol=1e-9, max_iter=10)
    assert info.status == Status.CONVERGED and info.iterations.tolist() == [1, 1]


@pytest.mark.parametrize("grid", [(32, 32), (16, 16, 16)])
def test_the_coarse_grid_correction_cuts_the_iterations_of_the_same_direction(grid):
    """The direction q = r (conjugate directions is then CG) inside the cycle is a two-level
    method, and the coarse correction removes the slow modes: far fewer iterations than CG, in
    2-D and 3-D, float32."""
    A, b = _system(grid, "sphere", num=2, m=100, dtype=torch.float32)
    _, cg = conjugate_directions(A, b, direction=Identity(), tol=1e-4, max_iter=500)
    x, info = conjugate_directions(A, b, direction=MultilevelDirection(Identity(), coarsest=4), tol=1e-4,
                                   max_iter=500)
    assert info.status == Status.CONVERGED and x.dtype == torch.float32
    assert float(info.iterations.double().mean()) < 0.6 * float(cg.iterations.double().mean())
    res = (b - A(x)).flatten(1).norm(dim=1) / b.flatten(1).norm(dim=1)
    assert float(res.max()) <= 1.2e-4


def test_a_random_network_in_the_cycle_still_converges():
    torch.manual_seed(0)
    A, b = _system((16, 16, 16), "blobs", num=2, m=60, dtype=torch.float32)
    _, info = conjugate_directions(A, b, direction=MultilevelDirection(DCDM(), coarsest=8), tol=1e-4, max_iter=400)
    assert info.status == Status.CONVERGED


def test_bad_input_gets_clear_errors():
    net = DCDM()
    with pytest.raises(ValueError, match="coarsest: expected an int >= 1 \\(the training grid's size\\), got 0"):
        MultilevelDirection(net, coarsest=0)
    with pytest.raises(ValueError, match="interpolation: expected 'linear' or 'nearest', got 'cubic'"):
        MultilevelDirection(net, interpolation="cubic")
    with pytest.raises(TypeError, match="direction: expected a callable network"):
        MultilevelDirection(3)
    ml = MultilevelDirection(net, coarsest=4)
    r = torch.randn(1, 8, 8, 8)
    with pytest.raises(ValueError, match=r"A: a grid of \(8, 8, 8\) is coarsened \(coarsest=4\), which needs the "
                                         r"operator and its coarsen\(\).*got NoneType"):
        ml(r)
    with pytest.raises(ValueError, match=r"A: expected an operator on the residual's grid \(8, 8, 8\), got one on "
                                         r"\(6, 6, 6\)"):
        ml(r, Laplacian((6, 6, 6)))
    with pytest.raises(ValueError, match=r"r: expected a batch of 2-D or 3-D grids \(B, \*grid\), got \(8,\)"):
        ml(torch.randn(8), Laplacian((8, 8, 8)))


def test_the_task_solves_with_the_cycle_when_asked_and_its_state_dict_is_unchanged():
    from unroll.train import DCDMTask

    net = Identity()  # q = r: the plain task is CG, the multilevel one a two-level method
    plain, multi = DCDMTask(net), DCDMTask(net, multilevel=8)
    assert set(plain.state_dict()) == set(multi.state_dict())  # a checkpoint of either loads into the other
    A, b = _system((16, 16), "sphere", num=2)
    want = MultilevelDirection(net, coarsest=8)(b, A)
    torch.testing.assert_close(multi.direction(b, A) * A.mask, want)
    _, i_plain = plain.solve(A, b)
    _, i_multi = multi.solve(A, b)
    assert i_multi.status == Status.CONVERGED
    assert bool((i_multi.iterations < i_plain.iterations).all())
    with pytest.raises(ValueError, match="multilevel: expected None or an int >= 1 \\(the training grid's size\\), "
                                         "got 0"):
        DCDMTask(net, multilevel=0)
