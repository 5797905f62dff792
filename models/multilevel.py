"""``MultilevelDirection``: a learned search direction trained on one grid size, used on finer
grids with itself as the coarse-grid solve (a two-grid cycle, recursively).

A direction network such as :class:`unroll.models.DCDM` learns ``q ≈ c·A⁻¹r`` on the grid it is
trained on. On a grid twice as fine the slowest modes of ``A`` are four times slower and twice as
wide, beyond what the network learned, and its iteration count grows (BENCHMARKS.md, DCDM). A
multigrid cycle handles exactly that: solve for the smooth part on the coarse grid, interpolate,
and let a fine-grid step take the rest. Here both steps are the trained network::

    r_c = restrict(r)                      average of the 2^d fine cells (zero on coarse solids)
    q_1 = interpolate(direction_c(r_c))    direction_c: this rule again on the coarse grid
    q_2 = direction(r − α A q_1)           α: the exact line search along q_1
    q   = a_1 q_1 + a_2 q_2                (a_1, a_2) minimise ½qᵀAq − qᵀr (a 2×2 Galerkin solve)

``A`` on the coarse grid is ``A.coarsen()`` (:meth:`unroll.operators.Laplacian.coarsen`). The
network's directions are only defined up to scale; the line search and the Galerkin solve
remove the scales, so no stencil factor (``4`` for a second-order operator) is assumed. The rule
recurses until the coarse grid would be smaller than ``coarsest`` along its shortest axis, and
there the network runs alone: with ``coarsest`` set to the training grid's size it is exactly
the trained network on grids of that size, and a two-grid (three-grid, ...) cycle on grids
twice (four times, ...) as fine. Cost per application on a grid of ``N`` cells: the network on
``N`` cells plus on ``N/2^d`` (and so on), two applications of ``A`` and four inner products.
"""

from __future__ import annotations

from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["MultilevelDirection"]


def _dot(u: Tensor, v: Tensor) -> Tensor:
    return (u * v).flatten(1).sum(1)


class MultilevelDirection(nn.Module):
    """A direction network used as its own coarse-grid solve on grids finer than it was trained on.

    Args:
        direction: the network, ``direction(r)`` or, when its ``takes_operator`` attribute is
            true, ``direction(r, A)`` (``DCDM(mask_input=True)``), ``(B, *grid) → (B, *grid)``.
        coarsest: the smallest grid (cells along the shortest axis) a coarse level may have:
            the training grid's size (the network alone on that grid), or half of it (a cycle on
            the training grid too, with the network on a grid smaller than it saw: better on 32³
            with obstacles in BENCHMARKS.md). A grid whose halving (``ceil(n / 2)``) is smaller
            runs the network alone.
        interpolation: ``"linear"`` (bi-/trilinear, the default: one iteration fewer than
            nearest on 64³ in our runs) or ``"nearest"`` for the coarse direction's prolongation.

    Shapes:
        ``forward(r, A)``: ``r`` ``(B, *grid)`` with ``A`` an operator on ``grid`` that has a
        ``coarsen()`` method (:class:`unroll.operators.Laplacian`) and, for masks, a ``mask``
        attribute; returns ``(B, *grid)``, zero on solid cells.
    """

    takes_operator = True  # conjugate_directions calls direction(r, A)

    def __init__(self, direction: nn.Module, coarsest: int = 32, interpolation: str = "linear") -> None:
        super().__init__()
        if not callable(direction):
            raise TypeError(f"direction: expected a callable network r -> q, got {type(direction).__name__}")
        if isinstance(coarsest, bool) or not isinstance(coarsest, int) or coarsest < 1:
            raise ValueError(f"coarsest: expected an int >= 1 (the training grid's size), got {coarsest!r}")
        if interpolation not in ("linear", "nearest"):
            raise ValueError(f"interpolation: expected 'linear' or 'nearest', got {interpolation!r}")
        self.direction, self.coarsest, self.interpolation = direction, coarsest, interpolation

    def levels(self, grid: tuple) -> int:
        """Grids the rule visits on ``grid``: 1 (the network alone) plus one per coarsening."""
        n, levels = min(grid), 1
        while (n + 1) // 2 >= self.coarsest:
            n, levels = (n + 1) // 2, levels + 1
        return levels

    def _net(self, r: Tensor, A: Any) -> Tensor:
        return self.direction(r, A) if getattr(self.direction, "takes_operator", False) else self.direction(r)

    def forward(self, r: Tensor, A: Optional[Any] = None) -> Tensor:
        if not isinstance(r, Tensor) or r.dim() not in (3, 4):
            got = tuple(r.shape) if isinstance(r, Tensor) else type(r).__name__
            raise ValueError(f"r: expected a batch of 2-D or 3-D grids (B, *grid), got {got}")
        return _masked(self._cycle(r, A), A)

    def _cycle(self, r: Tensor, A: Any) -> Tensor:
        """The direction before the solid cells are zeroed: the coarse one is interpolated with
        the network's values in the walls, which extrapolate the fluid's (zero-flux walls) better
        than zeros do (one iteration fewer with obstacles at 64³ in our runs)."""
        grid = tuple(r.shape[1:])
        if self.levels(grid) == 1:
            return self._net(r, A)
        if A is None or not callable(getattr(A, "coarsen", None)):
            raise ValueError(f"A: a grid of {grid} is coarsened (coarsest={self.coarsest}), which needs the operator "
                             f"and its coarsen() (unroll.operators.Laplacian); got {type(A).__name__}")
        if tuple(getattr(A, "shape", grid)) != grid:
            raise ValueError(f"A: expected an operator on the residual's grid {grid}, got one on {tuple(A.shape)}")
        Ac = A.coarsen()
        pool = F.avg_pool3d if r.dim() == 4 else F.avg_pool2d
        rc = _masked(pool(r.unsqueeze(1), 2, ceil_mode=True).squeeze(1), Ac)
        qc = self._cycle(rc, Ac)  # the coarse grid: this rule again (the network alone once coarse enough)
        mode = "nearest" if self.interpolation == "nearest" else ("trilinear" if r.dim() == 4 else "bilinear")
        kw = {} if mode == "nearest" else {"align_corners": False}
        q1 = _masked(F.interpolate(qc.unsqueeze(1), size=grid, mode=mode, **kw).squeeze(1), A)
        Aq1 = A(q1)
        curv1 = _dot(q1, Aq1)
        tiny = torch.finfo(r.dtype).tiny
        alpha = torch.where(curv1 > 0, _dot(q1, r) / curv1.clamp_min(tiny), torch.zeros_like(curv1))
        q2 = _masked(self._net(r - alpha.view(-1, *[1] * len(grid)) * Aq1, A), A)
        return _galerkin(r, q1, Aq1, q2, A(q2))


def _masked(q: Tensor, A: Any) -> Tensor:
    mask = getattr(A, "mask", None)
    return q if mask is None else q * mask.to(device=q.device, dtype=q.dtype)


def _galerkin(r: Tensor, q1: Tensor, Aq1: Tensor, q2: Tensor, Aq2: Tensor) -> Tensor:
    """``a_1 q_1 + a_2 q_2`` with ``(a_1, a_2)`` minimising ``½qᵀAq − qᵀr`` over the span (in float64);
    where the 2×2 Gram matrix is singular (``q_2`` parallel to ``q_1``, or zero) the best multiple
    of whichever of the two has positive curvature."""
    g11, g12, g22 = (_dot(u, v).double() for u, v in ((q1, Aq1), (q1, Aq2), (q2, Aq2)))
    c1, c2 = _dot(q1, r).double(), _dot(q2, r).double()
    det = g11 * g22 - g12 * g12
    ok = (det > 1e-10 * (g11 * g22).abs()) & (g11 > 0) & (g22 > 0)
    safe = torch.where(ok, det, torch.ones_like(det))
    a1 = torch.where(ok, (g22 * c1 - g12 * c2) / safe, torch.where(g11 > 0, c1 / g11.where(g11 > 0, 1.0), 0.0))
    a2 = torch.where(ok, (g11 * c2 - g12 * c1) / safe,
                     torch.where(g11 > 0, 0.0, torch.where(g22 > 0, c2 / g22.where(g22 > 0, 1.0), 0.0)))
    shape = (-1, *[1] * (r.dim() - 1))
    return a1.to(r.dtype).view(shape) * q1 + a2.to(r.dtype).view(shape) * q2
