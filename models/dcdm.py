"""``DCDM``: the convolutional network of the Deep Conjugate Direction Method (Kaneda et al., ICML
2023), a residual ``r`` in, a search direction ``q ≈ c·A⁻¹r`` out, for
:func:`unroll.solvers.conjugate_directions`.
"""

from __future__ import annotations

from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["DCDM"]


def _check_int(name: str, value: Any, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name}: expected an int >= {low}, got {value!r}")
    return value


class _Block(nn.Module):
    """``h + ReLU(conv(ReLU(conv(h))))`` (two ``k``-wide convolutions, ``C → C``)."""

    def __init__(self, conv, channels: int) -> None:
        super().__init__()
        self.a = conv(channels, channels, 3, padding=1)
        self.b = conv(channels, channels, 3, padding=1)

    def forward(self, h: Tensor) -> Tensor:
        return h + F.relu(self.b(F.relu(self.a(h))))


class DCDM(nn.Module):
    """Fully convolutional residual network of DCDM: residual in, search direction out.

    ``r`` → a linear ``3×3(×3)`` convolution to ``channels`` feature maps → ``pre`` residual
    blocks (two convolutions, ReLU after each, identity skip) → 2× average pooling → ``low``
    blocks at half resolution → nearest upsampling back to the grid, added to the full-resolution
    features (the skip connection) → ``post`` blocks → a linear convolution to one map. Every
    convolution is ``3×3(×3)`` with zero padding, so any grid size works (odd ones too: the
    pooling keeps the partial last cell, the upsampling returns the exact size). The input is
    scaled per sample to unit root-mean-square (``r / rms(r)``), so the features do not depend
    on the residual's scale or the grid's size (a unit-norm residual on 32³ cells has entries
    of about 0.005, far below the biases); the direction is only defined up to scale anyway.

    With ``levels = L > 1`` the pooling nests (a U-Net): ``pre`` blocks and a pooling at each of
    the ``L`` finer resolutions, ``low`` blocks at the coarsest (``2^L`` times coarser), and on the
    way up an upsampling added to that resolution's features, then ``post`` blocks. Each level
    doubles the distance a residual's information travels in one application, which is what
    finer grids need (the paper's network, and the default, has one level: a receptive field of
    about 30 cells; BENCHMARKS.md measures two). ``levels=1`` has exactly the parameters (and
    state-dict keys) of the one-level network.

    Args:
        dim: 2 or 3 (the grid's dimension; 3 by default, so ``DCDM()`` is the 3-D network).
        channels: feature maps (16 in the paper).
        pre, low, post: residual blocks before pooling, at the coarsest resolution and after the
            skip (per level).
        levels: pooling levels (1 in the paper).
        mask_input: also give the network the domain's geometry: ``A.mask`` (``True`` = fluid; a
            grid of ones when ``A`` has no mask) as a second input channel. The paper's network
            sees the residual only and must infer the walls from it. With it,
            :attr:`takes_operator` is true, so :func:`unroll.solvers.conjugate_directions` calls
            ``direction(r, A)``.

    Shapes:
        ``forward(r, A=None)``: ``(B, *grid) → (B, *grid)`` with ``len(grid) == dim``. ``A`` is
        the operator of the models' common call shape ``model(y, A)``; only ``mask_input`` reads
        it (its ``mask``: ``(*grid)`` bool). Otherwise it is not used: the solver masks solid cells.
    """

    def __init__(self, dim: int = 3, channels: int = 16, pre: int = 1, low: int = 2, post: int = 1,
                 levels: int = 1, mask_input: bool = False) -> None:
        super().__init__()
        if dim not in (2, 3) or isinstance(dim, bool):
            raise ValueError(f"dim: expected 2 or 3 (a 2-D or 3-D grid), got {dim!r}")
        _check_int("channels", channels, 1)
        for name, v in (("pre", pre), ("low", low), ("post", post)):
            _check_int(name, v, 0)
        _check_int("levels", levels, 1)
        if not isinstance(mask_input, bool):
            raise ValueError(f"mask_input: expected a bool, got {mask_input!r}")
        self.dim, self.channels, self.levels, self.mask_input = dim, channels, levels, mask_input
        self.takes_operator = mask_input  # conjugate_directions then calls direction(r, A)
        conv = nn.Conv3d if dim == 3 else nn.Conv2d
        self.first = conv(2 if mask_input else 1, channels, 3, padding=1)  # linear: no activation after it
        self.pre = nn.Sequential(*[_Block(conv, channels) for _ in range(pre)])
        self.low = nn.Sequential(*[_Block(conv, channels) for _ in range(low)])
        self.post = nn.Sequential(*[_Block(conv, channels) for _ in range(post)])
        # levels 2..L (empty for the paper's one level): blocks after each further pooling / skip
        self.down = nn.ModuleList(nn.Sequential(*[_Block(conv, channels) for _ in range(pre)]) for _ in range(levels - 1))
        self.up = nn.ModuleList(nn.Sequential(*[_Block(conv, channels) for _ in range(post)]) for _ in range(levels - 1))
        self.last = conv(channels, 1, 3, padding=1)  # linear output

    def forward(self, r: Tensor, A: Optional[Any] = None) -> Tensor:
        if not isinstance(r, Tensor) or r.dim() != self.dim + 1:
            got = tuple(r.shape) if isinstance(r, Tensor) else type(r).__name__
            raise ValueError(f"r: expected a batch of {self.dim}-D grids (B, {', '.join('n' * self.dim)}), got {got}")
        rms = r.flatten(1).square().mean(1).sqrt()
        rms = torch.where(rms > 0, rms, torch.ones_like(rms)).view(-1, *([1] * self.dim))
        avg_pool = F.avg_pool3d if self.dim == 3 else F.avg_pool2d

        def pool(h: Tensor) -> Tensor:  # 2× per axis; an axis already down to one cell stays (tiny grids, deep U)
            return avg_pool(h, tuple(min(2, n) for n in h.shape[2:]), ceil_mode=True)

        h = (r / rms).unsqueeze(1)  # (B, 1, *grid)
        if self.mask_input:
            h = torch.cat([h, self._geometry(r, A)], dim=1)
        skips = [self.pre(self.first(h))]  # (B, C, *grid) at each finer level
        for down in self.down:
            skips.append(down(pool(skips[-1])))
        h = self.low(pool(skips[-1]))  # the coarsest level
        for skip, up in zip(reversed(skips), [*reversed(self.up), self.post]):
            h = up(skip + F.interpolate(h, size=tuple(skip.shape[2:]), mode="nearest"))
        return self.last(h).squeeze(1)

    @staticmethod
    def _geometry(r: Tensor, A: Optional[Any]) -> Tensor:
        """``A.mask`` as a ``(B, 1, *grid)`` channel of ``r``'s dtype (ones without a mask)."""
        grid = tuple(r.shape[1:])
        if A is None:
            raise ValueError("A: DCDM(mask_input=True) reads the domain from the operator (its .mask); got None "
                             "(call model(r, A), or pass the model itself to conjugate_directions)")
        mask = getattr(A, "mask", None)
        if mask is None:
            return torch.ones((r.shape[0], 1, *grid), dtype=r.dtype, device=r.device)
        if not isinstance(mask, Tensor) or tuple(mask.shape) != grid:
            got = tuple(mask.shape) if isinstance(mask, Tensor) else type(mask).__name__
            raise ValueError(f"A: expected a mask of the residual's grid {grid}, got {got}")
        return mask.to(device=r.device, dtype=r.dtype).expand(r.shape[0], *grid).unsqueeze(1)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, channels={self.channels}, levels={self.levels}, mask_input={self.mask_input}"
