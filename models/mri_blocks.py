"""Parts shared by the MRI models (:mod:`.varnet`, :mod:`.recurrent_varnet`, :mod:`.cirim`).

* :func:`acs_mask`: the auto-calibration (fully sampled centre) region of a SENSE operator's
  mask, found with tensor operations (no host sync, so it compiles);
* :func:`reduce_coils` / :func:`expand_coils`: ``R(k) = Σ_c conj(S_c) F⁻¹ k_c`` and
  ``E(x) = F(S_c x)`` between multi-coil k-space and the coil-combined image;
* :func:`soft_dc`: the k-space data-consistency term with a weight, ``∞`` meaning hard DC;
* :class:`MRIProblem`: the least-squares problem ``½‖A x − y‖²`` of a SENSE operator plus the
  sensitivity maps a model uses (its own estimate, or the operator's), read by the steps;
* :class:`SensitivityNet`: maps from the ACS lines refined by a U-Net (E2E VarNet);
* :class:`ConvGRUCell` / :class:`ConvGRUStack`: convolutional GRUs (RecurrentVarNet, CIRIM);
* :func:`check_mri_call` and :func:`data_scale`: the common input check and the per-sample
  scale that makes the recurrent models independent of the k-space data's units.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import List, Optional, Tuple

import torch
from torch import Tensor, nn

from unroll.operators import LinearOperator
from unroll.operators.fft import fft2c, ifft2c
from unroll.problem import LeastSquares

from .unet import NormUNet

__all__ = ["acs_mask", "reduce_coils", "expand_coils", "soft_dc", "hard_dc", "MRIProblem", "SensitivityNet",
           "ConvGRUCell", "ConvGRUStack", "check_mri_call", "data_scale", "DCWeight"]


def check_mri_call(y: Tensor, op, model: str) -> Tuple[Tensor, Tensor]:
    """Check ``model(y, op)`` arguments: ``y`` complex ``(B, C, H, W)`` k-space and ``op`` a SENSE
    operator (``mask`` and ``maps`` attributes) of the same size. Returns ``(mask, maps)`` as
    ``(B|1, 1, H|1, W)`` real 0/1 (the data's real dtype) and ``(B|1, C, H, W)`` complex."""
    if not isinstance(y, Tensor) or not y.is_complex() or y.dim() != 4:
        got = f"{y.dtype} of shape {tuple(y.shape)}" if isinstance(y, Tensor) else type(y).__name__
        raise ValueError(f"y: {model} expected complex multi-coil k-space (B, C, H, W), got {got}")
    mask, maps = getattr(op, "mask", None), getattr(op, "maps", None)
    if not isinstance(op, LinearOperator) or mask is None or maps is None:
        raise TypeError(f"op: {model} expected a SENSE operator (unroll.operators.SENSE(maps, mask)), "
                        f"got {type(op).__name__}")
    maps = maps if maps.dim() == 4 else maps.unsqueeze(0)
    if maps.shape[1:] != y.shape[1:]:
        raise ValueError(f"y: k-space of shape {tuple(y.shape)} does not match the operator's sensitivity maps "
                         f"{tuple(maps.shape)} (coils, H, W)")
    if maps.shape[0] not in (1, y.shape[0]) or mask.shape[0] not in (1, y.shape[0]):
        raise ValueError(f"y: batch {y.shape[0]} does not match the operator's maps {tuple(maps.shape)} / mask "
                         f"{tuple(mask.shape)}")
    return mask.to(y.real.dtype), maps


def _centre_run(v: Tensor) -> Tensor:
    """``(..., n)`` 0/1 → ``(..., n)`` 0/1: the contiguous run of ones containing index ``n // 2``."""
    c = v.shape[-1] // 2
    right = torch.cumprod(v[..., c:], dim=-1)
    left = torch.cumprod(v[..., :c + 1].flip(-1), dim=-1).flip(-1)
    return torch.cat([left[..., :c], right], dim=-1)


def acs_mask(mask: Tensor) -> Tensor:
    """The auto-calibration region of a k-space mask.

    For a column mask ``(B|1, 1, 1, W)`` (Cartesian): the contiguous sampled columns around the
    centre column ``W // 2`` (fastMRI's fully sampled centre), all rows. For a 2-D mask
    ``(B|1, 1, H, W)`` (Poisson-disc): the rectangle spanned by the contiguous sampled run
    through the centre along the centre row and along the centre column, intersected with the
    mask. Found with cumulative products, so it needs no host sync and compiles.

    Args:
        mask: real 0/1 ``(B|1, 1, H|1, W)``.

    Returns:
        real 0/1 of the same shape.
    """
    hm, w = mask.shape[-2:]
    cols = _centre_run(mask[..., hm // 2, :])  # (B, 1, W)
    if hm == 1:
        return cols.unsqueeze(-2)
    rows = _centre_run(mask[..., :, w // 2])  # (B, 1, H)
    return rows.unsqueeze(-1) * cols.unsqueeze(-2) * mask


def reduce_coils(k: Tensor, maps: Tensor) -> Tensor:
    """``R(k) = Σ_c conj(S_c) F⁻¹ k_c``: multi-coil k-space ``(B, C, H, W)`` → image ``(B, H, W)``.

    ``conj_physical``, not ``conj``: under ``torch.compile`` (inductor, torch 2.13) the lazy
    conjugate view of ``conj()`` gave wrong values once the image came out of a convolution."""
    return torch.sum(torch.conj_physical(maps) * ifft2c(k), dim=1)


def expand_coils(x: Tensor, maps: Tensor) -> Tensor:
    """``E(x) = (F S_c x)_c``: image ``(B, H, W)`` → multi-coil k-space ``(B, C, H, W)``."""
    return fft2c(maps * x.unsqueeze(1))


def soft_dc(k: Tensor, y: Tensor, mask: Tensor, weight: Optional[Tensor]) -> Tensor:
    """The data-consistency term ``weight · M (k − y)`` (``(B, C, H, W)``) that a cascade subtracts.

    ``weight=None`` stands for an infinite weight (hard DC): the caller replaces the sampled
    entries by ``y`` instead (:func:`hard_dc`); this function then returns zeros.
    """
    if weight is None:
        return torch.zeros_like(k)
    return weight * mask * (k - y)


def hard_dc(k: Tensor, y: Tensor, mask: Tensor) -> Tensor:
    """Hard data consistency ``(1 − M) k + M y`` ``(B, C, H, W)``: the sampled entries are ``y``."""
    return k + mask * (y - k)


class DCWeight(nn.Module):
    """The data-consistency weight of one cascade: learned and positive (softplus of a raw
    parameter, initialised at ``value``), fixed, or infinite (hard DC).

    Args:
        value: initial (or fixed) weight ``> 0``; ``float("inf")`` for hard DC (nothing learned).
        learnable: learn it (ignored for an infinite weight).

    Calling it returns the weight as a 0-dim tensor, or ``None`` for hard DC.
    """

    def __init__(self, value: float = 1.0, learnable: bool = True) -> None:
        super().__init__()
        if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value) or value <= 0:
            raise ValueError(f"dc_weight: expected a number > 0 or float('inf') for hard DC, got {value!r}")
        self.hard = math.isinf(value)
        self.learnable = bool(learnable) and not self.hard
        if self.hard:
            self.register_buffer("raw", torch.zeros(()))
        elif self.learnable:
            self.raw = nn.Parameter(torch.tensor(math.log(math.expm1(value)) if value < 20 else float(value)))
        else:
            self.register_buffer("raw", torch.tensor(float(value)))

    def forward(self) -> Optional[Tensor]:
        if self.hard:
            return None
        if self.learnable:
            return nn.functional.softplus(self.raw)
        return self.raw

    def extra_repr(self) -> str:
        return "hard (infinite)" if self.hard else f"learnable={self.learnable}"


@dataclass(frozen=True, eq=False)
class MRIProblem(LeastSquares):
    """``½‖A x − y‖²`` for a SENSE operator ``A``, with what the MRI steps read besides it.

    Attributes (besides :class:`~unroll.problem.LeastSquares`' ``op``, ``y``):
        maps: the sensitivity maps the model uses ``(B|1, C, H, W)`` complex (estimated by the
            model or the operator's).
        mask: the k-space mask ``(B|1, 1, H|1, W)``, real 0/1.
    """

    maps: Optional[Tensor] = None
    mask: Optional[Tensor] = None

    def grad(self, x: Tensor) -> Tensor:
        """``∇ ½‖M F S x − y‖² = R(M (E x − y))`` with the problem's maps ``(B, H, W) → (B, H, W)``."""
        return reduce_coils(self.mask * (expand_coils(x, self.maps) - self.y), self.maps)


class SensitivityNet(nn.Module):
    """Coil sensitivity maps from the auto-calibration lines, refined by a U-Net (E2E VarNet).

    ``y`` ``(B, C, H, W)`` → keep the ACS region (:func:`acs_mask`) → inverse FFT → low-resolution
    coil images → each coil separately (coils folded into the batch) through a
    :class:`~unroll.models.unet.NormUNet` (1 complex channel) → divided by their
    root-sum-of-squares, so ``Σ_c |S_c|² = 1``. Training end to end refines it (the
    reconstruction loss flows into the maps).

    Args:
        channels, num_pools: of the U-Net.
        identity_init: the U-Net is residual and starts as the identity, so the untrained maps are
            the low-resolution ratio estimate (:func:`~unroll.operators.mri.estimate_sensitivities`
            without its window); ``False``: a randomly initialised U-Net, as fastMRI's.
    """

    def __init__(self, channels: int = 8, num_pools: int = 4, identity_init: bool = True) -> None:
        super().__init__()
        self.unet = NormUNet(1, channels, num_pools, zero_init=identity_init, residual=identity_init)

    def forward(self, y: Tensor, mask: Tensor) -> Tensor:
        """``y`` ``(B, C, H, W)`` complex, ``mask`` ``(B|1, 1, H|1, W)`` 0/1 → maps ``(B, C, H, W)``."""
        b, c, h, w = y.shape
        low = ifft2c(y * acs_mask(mask))
        maps = self.unet(low.reshape(b * c, 1, h, w)).reshape(b, c, h, w)
        norm = torch.sqrt(torch.sum(maps.abs() ** 2, dim=1, keepdim=True))
        return maps / (norm + 1e-12 * norm.flatten(1).amax(1).view(b, 1, 1, 1) + 1e-30)


def data_scale(y: Tensor, mask: Tensor, maps: Tensor) -> Tensor:
    """A per-sample scale ``(B, 1, 1, 1)`` of the data (detached): the largest magnitude of the
    zero-filled image ``R(M y)``. The recurrent models divide ``y`` by it and multiply their
    output back, so they are equivariant to the units of the k-space data."""
    with torch.no_grad():
        s = reduce_coils(mask * y, maps).abs().flatten(1).amax(dim=1)
        s = torch.where(s > 0, s, torch.ones_like(s))
    return s.view(-1, 1, 1, 1)


class ConvGRUCell(nn.Module):
    """A convolutional GRU cell (Ballas et al. 2016): ``(x, h) → h'`` with ``k×k`` convolutions.

    ``r = σ(W_r * [x, h])``, ``z = σ(W_z * [x, h])``, ``n = tanh(W_x * x + r ⊙ (W_h * h))``,
    ``h' = (1 − z) ⊙ n + z ⊙ h``.

    Args:
        in_channels: channels of ``x``.
        hidden: channels of ``h``.
        kernel_size, dilation: of the convolutions (the padding keeps the size).

    Shapes: ``x`` ``(B, in_channels, H, W)``, ``h`` ``(B, hidden, H, W)`` → ``(B, hidden, H, W)``.
    """

    def __init__(self, in_channels: int, hidden: int, kernel_size: int = 3, dilation: int = 1) -> None:
        super().__init__()
        pad = dilation * (kernel_size - 1) // 2
        self.hidden = hidden
        self.gates = nn.Conv2d(in_channels + hidden, 2 * hidden, kernel_size, padding=pad, dilation=dilation)
        self.cand_x = nn.Conv2d(in_channels, hidden, kernel_size, padding=pad, dilation=dilation)
        self.cand_h = nn.Conv2d(hidden, hidden, kernel_size, padding=pad, dilation=dilation, bias=False)

    def forward(self, x: Tensor, h: Tensor) -> Tensor:
        r, z = torch.sigmoid(self.gates(torch.cat([x, h], dim=1))).chunk(2, dim=1)
        n = torch.tanh(self.cand_x(x) + r * self.cand_h(h))
        return (1 - z) * n + z * h


class ConvGRUStack(nn.Module):
    """``num_layers`` × (convolution → ReLU → :class:`ConvGRUCell`), then a ``3×3`` output
    convolution: the recurrent block of RecurrentVarNet and the RIM cell of CIRIM.

    The hidden state of the stack is one tensor ``(B, num_layers, hidden, H, W)`` (layer ``l``'s
    GRU state at ``h[:, l]``), so a model's state stays a flat ``NamedTuple`` of tensors.

    Args:
        in_channels, out_channels: real channels in and out.
        hidden: channels of every layer's features and GRU state.
        num_layers: number of conv + GRU layers.
        dilations: dilation of each layer's convolution (length ``num_layers``; default all 1).
        kernel_size: of the input convolutions (the GRUs use 3×3, the output conv 3×3).
    """

    def __init__(self, in_channels: int, out_channels: int, hidden: int = 64, num_layers: int = 2,
                 dilations: Optional[List[int]] = None, kernel_size: int = 3) -> None:
        super().__init__()
        for name, v in (("in_channels", in_channels), ("out_channels", out_channels), ("hidden", hidden),
                        ("num_layers", num_layers)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name}: expected an int >= 1, got {v!r}")
        dilations = [1] * num_layers if dilations is None else [int(d) for d in dilations]
        if len(dilations) != num_layers:
            raise ValueError(f"dilations: expected {num_layers} values (one per layer), got {dilations}")
        self.hidden, self.num_layers = hidden, num_layers
        self.convs = nn.ModuleList()
        self.grus = nn.ModuleList()
        cin = in_channels
        for d in dilations:
            self.convs.append(nn.Conv2d(cin, hidden, kernel_size, padding=d * (kernel_size - 1) // 2, dilation=d))
            self.grus.append(ConvGRUCell(hidden, hidden))
            cin = hidden
        self.out = nn.Conv2d(hidden, out_channels, 3, padding=1)

    def init_hidden(self, like: Tensor) -> Tensor:
        """Zero hidden state ``(B, num_layers, hidden, H, W)`` for input ``like`` ``(B, ·, H, W)``."""
        b, _, h, w = like.shape
        return like.new_zeros(b, self.num_layers, self.hidden, h, w)

    def forward(self, x: Tensor, h: Tensor) -> Tuple[Tensor, Tensor]:
        """``x`` ``(B, in_channels, H, W)``, ``h`` ``(B, num_layers, hidden, H, W)`` →
        ``(out (B, out_channels, H, W), h' (B, num_layers, hidden, H, W))``."""
        new = []
        for l, (conv, gru) in enumerate(zip(self.convs, self.grus)):
            hl = gru(torch.relu(conv(x)), h[:, l])
            new.append(hl)
            x = hl
        return self.out(x), torch.stack(new, dim=1)
