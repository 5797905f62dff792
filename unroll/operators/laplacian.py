"""The negative Laplacian on a 2-D or 3-D grid (5- / 7-point stencil), matrix-free, with obstacles.

``A = −∇²`` discretised with unit spacing (no ``1/h²``): ``2d`` on the diagonal (4 in 2-D, 6 in
3-D) and ``−1`` to each of the ``2d`` face neighbours, Dirichlet (zero) values outside the grid.
It is symmetric positive definite: the system of a pressure projection / Poisson solve.

Obstacles: a boolean ``mask`` of the grid's shape marks fluid cells (``True``) and solid cells
(``False``). Walls between a fluid and a solid cell are Neumann (zero flux): the fluid cell
neither couples to its solid neighbour nor counts it on its diagonal (its diagonal is ``2d``
minus its number of solid neighbours), as in the pressure Poisson equation of fluid simulation
(Kaneda et al., DCDM, ICML 2023). The domain boundary stays Dirichlet, which keeps the fluid
block positive definite as long as every connected fluid region touches the domain boundary;
a region enclosed by solid cells would make ``A`` singular (its constant is a null vector) and
is refused at construction. Solid cells are kept in the vector as *identity rows*
(``(A x)_s = x_s``, decoupled from the fluid), so the operator stays square on the whole grid
``(B, *shape)`` and SPD; give right-hand sides that are zero on solid cells and the solution is
zero there. (Removing solid cells from the system would change the vector length per mask and
break batching over grids; identity rows cost one multiply per cell.)

``boundary="neumann"`` on the domain boundary is not offered: with Neumann walls everywhere the
constant vector is in the null space, so ``A`` is singular and CG's contract (SPD) does not hold.
"""

from __future__ import annotations

import math
import operator
from typing import Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from .base import LinearOperator

__all__ = ["Laplacian"]


def _check_shape(shape) -> Tuple[int, ...]:
    try:
        out = tuple(shape)
    except TypeError:
        raise TypeError(f"shape: expected a sequence of 2 or 3 grid sizes, got {type(shape).__name__}") from None
    try:  # NumPy and 0-dim tensor ints are ints; floats and bools are not
        out = tuple(s if isinstance(s, bool) else operator.index(s) for s in out)
    except TypeError:
        pass  # reported below, with the value
    if len(out) not in (2, 3) or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 1 for s in out):
        raise ValueError(f"shape: expected 2 or 3 positive ints (a 2-D or 3-D grid), got {shape!r}")
    return out


class Laplacian(LinearOperator):
    """The negative Laplacian ``A = −∇²`` (integer stencil) on a 2-D or 3-D grid, matrix-free.

    Args:
        shape: the grid, ``(n1, n2)`` or ``(n1, n2, n3)``.
        mask: optional bool tensor of shape ``shape``: ``True`` for fluid cells, ``False`` for
            solid cells (obstacles). Neumann walls between fluid and solid, identity rows on
            solid cells (see the module notes). Every connected fluid region must touch the
            domain boundary (checked; otherwise ``A`` would be singular).
        boundary: the condition on the domain boundary; only ``"dirichlet"`` (see the module
            notes for why ``"neumann"`` is refused).

    Shapes:
        ``forward`` / ``adjoint``: ``(B, *shape) → (B, *shape)``, real or complex, any float
        dtype and device (the mask buffers follow ``.to()``; a call casts them to the input's
        dtype).

    ``A`` is symmetric, so ``adjoint = forward``. :meth:`to_sparse` gives the same matrix as a
    sparse COO tensor ``(N, N)``, ``N = prod(shape)``, in row-major (C) order of the grid.
    """

    def __init__(self, shape: Sequence[int], mask: Optional[Tensor] = None, boundary: str = "dirichlet") -> None:
        super().__init__()
        shape = _check_shape(shape)
        if boundary == "neumann":
            raise ValueError("boundary: 'neumann' on the whole domain boundary makes the Laplacian singular "
                             "(constants are in its null space), so CG cannot solve it; use 'dirichlet' and "
                             "mark obstacles with `mask` (Neumann walls)")
        if boundary != "dirichlet":
            raise ValueError(f"boundary: expected 'dirichlet', got {boundary!r}")
        self.shape, self.ndim, self.boundary = shape, len(shape), boundary
        self.in_shape = self.out_shape = shape
        self.is_complex = None
        if mask is None:
            self.mask = self.fluid = self.diag = None
            return
        if not isinstance(mask, Tensor):
            raise TypeError(f"mask: expected a bool torch.Tensor of shape {shape}, got {type(mask).__name__}")
        if mask.dtype != torch.bool:
            raise TypeError(f"mask: expected dtype torch.bool (True = fluid, False = solid), got {mask.dtype}")
        if tuple(mask.shape) != shape:
            raise ValueError(f"mask: expected the grid's shape {shape} (argument `shape`), got {tuple(mask.shape)}")
        _check_connected(mask)
        fluid = mask.to(torch.get_default_dtype())
        nb = _neighbour_sum(fluid.unsqueeze(0), self.ndim)[0]  # fluid neighbours of each cell
        boundary_faces = _neighbour_sum(torch.ones_like(fluid).unsqueeze(0), self.ndim)[0]  # in-grid neighbours
        solid_nb = boundary_faces - nb
        diag = torch.where(mask, 2 * self.ndim - solid_nb, torch.ones_like(fluid))
        self.register_buffer("mask", mask)
        self.register_buffer("fluid", fluid)
        self.register_buffer("diag", diag)

    # ------------------------------------------------------------------ application
    def _forward(self, x: Tensor) -> Tensor:
        if self.mask is None:
            return (2 * self.ndim) * x - _neighbour_sum(x, self.ndim)
        dtype = x.real.dtype if x.is_complex() else x.dtype
        fluid, diag = self.fluid.to(dtype), self.diag.to(dtype)
        return diag * x - fluid * _neighbour_sum(fluid * x, self.ndim)

    def _adjoint(self, y: Tensor) -> Tensor:
        return self._forward(y)  # symmetric (real)

    def normal(self, x: Tensor) -> Tensor:
        self._check(x, self.in_shape, "x", "domain")
        ax = self._forward(x)
        return self._forward(ax)

    # ------------------------------------------------------------------ matrix views
    def diagonal(self, dtype: Optional[torch.dtype] = None, device=None) -> Tensor:
        """The diagonal of ``A`` as a grid ``(*shape)`` (``2d`` on open fluid cells, fewer next to
        walls, ``1`` on solid cells)."""
        if self.diag is None:
            return torch.full(self.shape, float(2 * self.ndim), dtype=dtype or torch.get_default_dtype(),
                              device=device)
        return self.diag.to(dtype=dtype or self.diag.dtype, device=device or self.diag.device)

    def to_sparse(self, dtype: torch.dtype = torch.float64, device=None) -> Tensor:
        """``A`` as a coalesced sparse COO tensor ``(N, N)``, ``N = prod(shape)``, grid cells in
        row-major order (``x.reshape(B, N)``)."""
        if device is None:
            device = self.mask.device if self.mask is not None else torch.device("cpu")
        n = math.prod(self.shape)
        idx = torch.arange(n, device=device).view(self.shape)
        fluid = (self.mask.to(device) if self.mask is not None
                 else torch.ones(self.shape, dtype=torch.bool, device=device))
        rows, cols, vals = [idx.flatten()], [idx.flatten()], [self.diagonal(dtype, device).flatten()]
        for d in range(self.ndim):
            lo = [slice(None)] * self.ndim
            hi = [slice(None)] * self.ndim
            lo[d], hi[d] = slice(0, -1), slice(1, None)
            a, b = idx[tuple(lo)], idx[tuple(hi)]
            both = fluid[tuple(lo)] & fluid[tuple(hi)]
            a, b = a[both], b[both]
            minus = -torch.ones(a.numel(), dtype=dtype, device=device)
            rows += [a, b]
            cols += [b, a]
            vals += [minus, minus]
        indices = torch.stack([torch.cat(rows), torch.cat(cols)])
        return torch.sparse_coo_tensor(indices, torch.cat(vals), (n, n), check_invariants=False).coalesce()

    # ------------------------------------------------------------------ spectrum
    def lipschitz(self, *args, recompute: bool = False, **kwargs) -> Tensor:
        """``‖A‖₂² = λ_max(A)²``: exact without a mask (``λ_max = Σ_i 2 + 2cos(π/(n_i+1))``), by the
        base power iteration with one (a slight underestimate at the default budget: 0.2 % on a
        16³ grid with obstacles; the mask-free value of the same grid is an upper bound). Cached."""
        if self.mask is not None:
            return super().lipschitz(*args, recompute=recompute, **kwargs)
        lam = sum(2.0 + 2.0 * math.cos(math.pi / (n + 1)) for n in self.shape)
        return torch.tensor(lam * lam, dtype=torch.get_default_dtype())

    # ------------------------------------------------------------------ multigrid
    def coarsen(self) -> "Laplacian":
        """The same problem on the grid twice as coarse, ``ceil(n / 2)`` cells per axis (cell
        ``i`` covers fine cells ``2i, 2i + 1``), for a coarse-grid correction: a coarse cell is
        fluid when at least half of the fine cells it covers are, and a coarse fluid region that
        would be enclosed by solid cells is made solid (its Laplacian would be singular). Without
        a mask it is the mask-free Laplacian of the coarse grid. Cached per operator (on the
        mask's device). The coarse ``A`` is the same integer stencil, so it approximates
        ``4·A`` of the fine grid on smooth functions (spacing ``2h``); callers that combine coarse
        and fine directions should not rely on that scale (a line search or Galerkin
        combination removes it)."""
        cached = self.__dict__.get("_coarse")
        if cached is not None and (self.mask is None or cached.mask.device == self.mask.device):
            return cached
        shape = tuple((n + 1) // 2 for n in self.shape)
        if self.mask is None:
            coarse = Laplacian(shape)
        else:
            pool = F.avg_pool3d if self.ndim == 3 else F.avg_pool2d
            fraction = pool(self.mask[None, None].to(torch.float64), 2, ceil_mode=True)[0, 0]
            fluid = fill_enclosed((fraction >= 0.5).cpu())
            coarse = Laplacian(shape, fluid.to(self.mask.device))
        self.__dict__["_coarse"] = coarse  # not a submodule: no state-dict entries, no fingerprint change
        return coarse

    def _fingerprint_extra(self) -> str:
        return self.boundary

    def extra_repr(self) -> str:
        return f"shape={self.shape}, boundary={self.boundary!r}, mask={'yes' if self.mask is not None else 'no'}"


def _neighbour_sum(x: Tensor, ndim: int) -> Tensor:
    """``Σ`` of the ``2·ndim`` face neighbours of every cell of ``x`` ``(B, *grid)``, zero outside."""
    xp = F.pad(x, (1, 1) * ndim)
    out = None
    for d in range(ndim):
        for lo, hi in ((0, -2), (2, None)):
            sl = [slice(None)] + [slice(1, -1)] * ndim
            sl[1 + d] = slice(lo, hi)
            term = xp[tuple(sl)]
            out = term if out is None else out + term
    return out


def fluid_regions(fluid):
    """Connected regions of a boolean domain mask (NumPy ``(*grid)``, ``True`` = fluid), with face
    connectivity as the stencil's: ``(labels, count, touching)``, ``labels`` as from
    ``scipy.ndimage.label`` and ``touching`` the labels of the regions that reach the domain's
    boundary (a region that does not is enclosed: ``A`` is singular there)."""
    import numpy as np
    from scipy import ndimage

    labels, count = ndimage.label(fluid)  # default structure: face neighbours
    border = np.zeros_like(fluid, dtype=bool)
    for d in range(fluid.ndim):
        sl = [slice(None)] * fluid.ndim
        sl[d] = 0
        border[tuple(sl)] = True
        sl[d] = -1
        border[tuple(sl)] = True
    return labels, count, np.unique(labels[border & fluid])


def fill_enclosed(fluid: Tensor) -> Tensor:
    """``fluid`` (bool ``(*grid)``, on the CPU) with every fluid region that does not touch the
    domain boundary made solid: a mask the Laplacian accepts."""
    import numpy as np

    m = fluid.numpy()
    if m.all() or not m.any():
        return fluid
    labels, _, touching = fluid_regions(m)
    return torch.from_numpy(m & np.isin(labels, touching))


def _check_connected(mask: Tensor) -> None:
    """Refuse a mask with a fluid region that does not touch the domain boundary (``A`` singular).
    Runs once at construction, on the CPU (``scipy.ndimage.label``, face connectivity)."""
    m = mask.detach().to("cpu").numpy()
    if not m.any():
        return
    labels, count, touching = fluid_regions(m)
    enclosed = sorted(set(range(1, count + 1)) - set(touching.tolist()))
    if enclosed:
        cells = int(sum((labels == k).sum() for k in enclosed))
        raise ValueError(f"mask: {len(enclosed)} fluid region(s) ({cells} cells) are enclosed by solid cells and do "
                         "not touch the domain boundary; with Neumann walls the Laplacian is singular on them. Mark "
                         "them solid (False) or open them to the boundary")
