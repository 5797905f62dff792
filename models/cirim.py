"""Cascades of independently recurrent inference machines (CIRIM; Karkalousos et al., Phys. Med.
Biol. 2022).

A recurrent inference machine (RIM; Putzky & Welling 2017) iterates in image space: at time
step ``t`` it takes the gradient of the data log-likelihood and the current estimate, and a
recurrent cell proposes the update,

    ``g = ∇_x ½‖M F S x − y‖² = R(M (E x − y))``,
    ``(Δ, h) ← G([x, g], h)``,  ``x ← x + Δ``,

so data consistency is implicit (through ``g``) rather than a projection. ``G`` is a stack of
convolution + ConvGRU layers (:class:`~unroll.models.mri_blocks.ConvGRUStack`) on the (real,
imaginary) channels of ``x`` and ``g``, its hidden state **``h`` of shape
``(B, num_layers, hidden, H, W)``**. A RIM runs ``time_steps`` steps with one shared cell (tied
weights); CIRIM chains ``num_cascades`` RIMs with independent cells, each starting from the
previous cascade's estimate and hidden state (the first from the SENSE-combined zero-filled
image and a zero hidden state). Optionally (``dc_weight``, off by default as in the paper's
CIRIM) each cascade ends with a soft (or, with ``inf``, hard) data-consistency step in k-space.

Training uses the estimate of every time step (:func:`time_step_loss`): per cascade the
losses of its time steps weighted by ``w_t = 10^(−1 + t/(T−1))`` (``logspace(−1, 0, T)``, the
authors' code) and averaged over the time steps, then averaged over the cascades.

Data are divided by a per-sample scale (:func:`~unroll.models.mri_blocks.data_scale`) and the
output multiplied back. Each cascade is an :class:`~unroll.Unrolled` of its RIM step, so
``full``, ``truncated`` and ``checkpoint`` gradients apply per cascade (``implicit``/``jfb`` do
not: the state is no fixed point).
"""

from __future__ import annotations

from typing import Callable, List, Literal, NamedTuple, Optional, Union

import torch
from torch import Tensor, nn

from unroll.autodiff import GradMode, as_grad_mode
from unroll.info import SolverInfo
from unroll.steps import Step
from unroll.unrolled import Unrolled

from .mri_blocks import (ConvGRUStack, DCWeight, MRIProblem, SensitivityNet, check_mri_call, data_scale, expand_coils,
                         hard_dc, reduce_coils, soft_dc)
from .unet import channels_to_complex, complex_to_channels

__all__ = ["CIRIM", "RIMStep", "RIMState", "CIRIMOutput", "time_step_weights", "time_step_loss"]


class RIMState(NamedTuple):
    """A RIM's state. ``x``: image ``(B, H, W)`` complex (normalised units); ``h``: hidden
    state ``(B, num_layers, hidden, H, W)`` real."""

    x: Tensor
    h: Tensor


class CIRIMOutput(NamedTuple):
    """``x``: final image ``(B, H, W)`` complex; ``trajectory``: per cascade, the image after
    each of its time steps (``num_cascades`` lists of ``time_steps`` tensors ``(B, H, W)``);
    ``infos``: the :class:`~unroll.info.SolverInfo` of each cascade; ``state``: the final
    :class:`RIMState` (normalised units)."""

    x: Tensor
    trajectory: List[List[Tensor]]
    infos: List[SolverInfo]
    state: RIMState


class RIMStep(Step):
    """One RIM time step ``x ← x + G([x, ∇½‖Ax − y‖²], h)`` on :class:`RIMState` (see the module).

    It reads ``problem.grad`` of an :class:`~unroll.models.mri_blocks.MRIProblem`.

    Args:
        hidden, num_layers, dilations: of the ConvGRU stack (``dilations`` one per layer).
    """

    fixed_point = False

    def __init__(self, hidden: int = 64, num_layers: int = 2, dilations: Optional[List[int]] = None) -> None:
        super().__init__()
        self.cell = ConvGRUStack(4, 2, hidden, num_layers, dilations)

    def forward(self, state: RIMState, problem: MRIProblem) -> RIMState:
        x = state.x
        g = problem.grad(x)
        inp = torch.cat([complex_to_channels(x.unsqueeze(1)), complex_to_channels(g.unsqueeze(1))], dim=1)
        dx, h = self.cell(inp, state.h)
        return RIMState(x + channels_to_complex(dx).squeeze(1), h)


def time_step_weights(time_steps: int, device=None, dtype=None) -> Tensor:
    """CIRIM's loss weights of the time steps ``(T,)``: ``logspace(−1, 0, T)`` (0.1 … 1)."""
    return torch.logspace(-1, 0, steps=time_steps, device=device, dtype=dtype)


def time_step_loss(trajectory: List[List[Tensor]], loss: Callable[[Tensor], Tensor]) -> Tensor:
    """The CIRIM training loss over the time steps:
    ``(1/N) Σ_cascades (1/T) Σ_t w_t · loss(x_{c,t})`` with ``w`` = :func:`time_step_weights`.

    (The authors' code, mridc/ATOMMIC, multiplies each scalar loss by the whole weight vector
    and sums it, which amounts to equal weights scaled by ``mean(w)``; this follows the stated
    intent, a weight per time step growing to 1 at the last.)

    Args:
        trajectory: ``CIRIMOutput.trajectory`` (per cascade, per time step, images).
        loss: maps one time step's estimate to a scalar loss (e.g. ``lambda x: l1(x.abs(), target)``).
    """
    if not trajectory or any(not steps for steps in trajectory):
        raise ValueError("trajectory: expected a non-empty list (per cascade) of non-empty lists (per time step)")
    total = 0.0
    for steps in trajectory:
        losses = torch.stack([loss(x) for x in steps])
        w = time_step_weights(len(steps), device=losses.device, dtype=losses.dtype)
        total = total + (w * losses).mean()
    return total / len(trajectory)


class CIRIM(nn.Module):
    """CIRIM: ``model(y, op)`` → complex image ``(B, H, W)``.

    Args:
        num_cascades: RIMs in the chain (``N``; the paper's CIRIM uses 1 to 5).
        time_steps: time steps ``T`` per RIM (8 in the paper).
        hidden: ConvGRU channels (64/128 in the paper).
        num_layers: conv + ConvGRU layers of the cell (2 in the paper).
        dilations: of the layers' convolutions (``[1, 2]`` in the paper).
        keep_hidden: carry the hidden state from one cascade to the next (else zeros per cascade).
        sensitivities: ``"operator"`` (the SENSE operator's maps) or ``"learned"``.
        dc_weight: ``None`` (implicit DC only, the paper) or a weight for a soft DC step at the end
            of each cascade (``inf``: hard DC); ``learn_dc_weight`` learns it.
        grad_mode: ``"full"``, ``"truncated"``, ``"checkpoint"`` or a :class:`~unroll.autodiff.GradMode`,
            applied within each cascade.

    Call: ``model(y, op, return_trajectory=False, grad_mode=None)``; with ``return_trajectory``
    a :class:`CIRIMOutput` (every time step's estimate, in the data's units), for
    :func:`time_step_loss`.
    """

    def __init__(self, num_cascades: int = 5, time_steps: int = 8, hidden: int = 64, num_layers: int = 2,
                 dilations: List[int] = [1, 2], keep_hidden: bool = True,
                 sensitivities: Literal["operator", "learned"] = "operator", dc_weight: Optional[float] = None,
                 learn_dc_weight: bool = True, grad_mode: Union[str, GradMode] = "full") -> None:
        super().__init__()
        for name, v in (("num_cascades", num_cascades), ("time_steps", time_steps), ("hidden", hidden),
                        ("num_layers", num_layers)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name}: expected an int >= 1, got {v!r}")
        if sensitivities not in ("learned", "operator"):
            raise ValueError(f"sensitivities: expected 'learned' or 'operator', got {sensitivities!r}")
        self.num_cascades, self.time_steps, self.hidden, self.num_layers = num_cascades, time_steps, hidden, num_layers
        self.keep_hidden = keep_hidden
        self.sensitivities = sensitivities
        self.sens_net = SensitivityNet() if sensitivities == "learned" else None
        mode = as_grad_mode(grad_mode)
        self.cascades = nn.ModuleList(Unrolled(RIMStep(hidden, num_layers, list(dilations)), num_iters=time_steps,
                                               tied=True, grad_mode=mode) for _ in range(num_cascades))
        self.dc = None if dc_weight is None else nn.ModuleList(DCWeight(dc_weight, learn_dc_weight)
                                                               for _ in range(num_cascades))

    def forward(self, y: Tensor, op, *, return_trajectory: bool = False,
                grad_mode: Union[str, GradMode, None] = None) -> Union[Tensor, CIRIMOutput]:
        """``y`` ``(B, C, H, W)`` complex, ``op`` SENSE → image ``(B, H, W)`` complex."""
        mask, maps = check_mri_call(y, op, type(self).__name__)
        if self.sens_net is not None:
            maps = self.sens_net(y, mask)
        scale = data_scale(y, mask, maps)
        yn = y / scale
        problem = MRIProblem(op=op, y=yn, maps=maps, mask=mask)
        x = reduce_coils(mask * yn, maps)
        b, h, w = x.shape
        hidden = x.real.new_zeros(b, self.num_layers, self.hidden, h, w)
        s = scale.view(-1, 1, 1)
        trajectory: List[List[Tensor]] = []
        infos: List[SolverInfo] = []
        state = RIMState(x, hidden)
        for c, cascade in enumerate(self.cascades):
            if c > 0 and not self.keep_hidden:
                state = RIMState(state.x, torch.zeros_like(state.h))
            out = cascade(problem, state0=state, return_trajectory=return_trajectory, grad_mode=grad_mode)
            state = out.state
            steps = [t * s for t in out.trajectory] if return_trajectory else []
            if self.dc is not None:
                k = expand_coils(state.x, maps)
                wgt = self.dc[c]()
                k = hard_dc(k, yn, mask) if wgt is None else k - soft_dc(k, yn, mask, wgt)
                state = RIMState(reduce_coils(k, maps), state.h)
                if return_trajectory:
                    steps[-1] = state.x * s
            trajectory.append(steps)
            infos.append(out.info)
        x = state.x * s
        if not return_trajectory:
            return x
        return CIRIMOutput(x, trajectory, infos, state)

    def extra_repr(self) -> str:
        return (f"num_cascades={self.num_cascades}, time_steps={self.time_steps}, hidden={self.hidden}, "
                f"num_layers={self.num_layers}, keep_hidden={self.keep_hidden}, sensitivities={self.sensitivities!r}")
