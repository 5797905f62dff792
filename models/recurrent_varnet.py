"""Recurrent variational network (RecurrentVarNet; Yiasemis et al., CVPR 2022).

The state is the multi-coil k-space ``k`` ``(B, C, H, W)`` and the hidden state ``h`` of the
recurrent block, **``h`` of shape ``(B, num_layers, hidden, H, W)``** (real; layer ``l``'s ConvGRU
state at ``h[:, l]``). Time step ``t`` computes

    ``(u, h) ← G_t(R(k), h)``,  ``k ← k − λ_t · M (k − y) + E(u)``

with ``R(k) = Σ_c conj(S_c) F⁻¹ k_c``, ``E(u) = (F S_c u)_c`` and ``G_t`` a stack of
convolution + ConvGRU layers (:class:`~unroll.models.mri_blocks.ConvGRUStack`) on the image's
(real, imaginary) channels; ``λ_t > 0`` is learned (initialised at ``dc_weight``;
``float("inf")`` is hard DC, ``k ← (1 − M)(k + E(u)) + M y``). The k-space starts at the
measurements ``y`` and the hidden state at the output of the learned initialiser
(:class:`RecurrentInit`): dilated convolutions on the SENSE-combined image of the
auto-calibration data (the ACS region of ``y``), one ``1×1`` head per recurrent layer.

Data are divided by a per-sample scale (the largest magnitude of the zero-filled image,
:func:`~unroll.models.mri_blocks.data_scale`) before the network and the output multiplied by
it, so the model does not depend on the units of the k-space. The maps are the operator's
(estimated from the ACS lines by the data module); ``sensitivities="learned"`` estimates them
with the E2E VarNet's U-Net instead. Steps have untied weights (the paper's default) or one
shared block (``shared_weights=True``); they run in an :class:`~unroll.Unrolled`, so ``full``,
``truncated`` and ``checkpoint`` gradients apply (``implicit``/``jfb`` do not: the state is no
fixed point).
"""

from __future__ import annotations

from typing import List, Literal, NamedTuple, Sequence, Union

import torch
from torch import Tensor, nn

from unroll.autodiff import GradMode, as_grad_mode
from unroll.steps import Step
from unroll.unrolled import Unrolled, UnrolledOutput

from .mri_blocks import (ConvGRUStack, DCWeight, MRIProblem, SensitivityNet, acs_mask, check_mri_call, data_scale,
                         expand_coils, hard_dc, reduce_coils, soft_dc)
from .unet import channels_to_complex, complex_to_channels

__all__ = ["RecurrentVarNet", "RecurrentVarNetStep", "RecurrentInit", "RecurrentState"]


class RecurrentState(NamedTuple):
    """RecurrentVarNet's state. ``k``: multi-coil k-space ``(B, C, H, W)`` complex (in the
    model's normalised units); ``h``: hidden state ``(B, num_layers, hidden, H, W)`` real."""

    k: Tensor
    h: Tensor


class RecurrentInit(nn.Module):
    """The learned initialiser of the hidden state: ``x`` ``(B, 2, H, W)`` (the ACS image's real
    and imaginary channels) → ``h₀`` ``(B, num_layers, hidden, H, W)``.

    Convolutions ``3×3`` with ``dilations`` and ReLUs (``channels`` features each), then per
    recurrent layer a ``1×1`` convolution to ``hidden`` channels and a ReLU (as in the paper).
    """

    def __init__(self, hidden: int, num_layers: int, channels: Sequence[int] = (32, 32, 64, 64),
                 dilations: Sequence[int] = (1, 1, 2, 4)) -> None:
        super().__init__()
        if len(channels) != len(dilations) or not channels:
            raise ValueError(f"channels, dilations: expected two non-empty sequences of equal length, got "
                             f"{list(channels)} and {list(dilations)}")
        layers: List[nn.Module] = []
        cin = 2
        for c, d in zip(channels, dilations):
            layers += [nn.Conv2d(cin, int(c), 3, padding=int(d), dilation=int(d)), nn.ReLU()]
            cin = int(c)
        self.body = nn.Sequential(*layers)
        self.heads = nn.ModuleList(nn.Conv2d(cin, hidden, 1) for _ in range(num_layers))

    def forward(self, x: Tensor) -> Tensor:
        f = self.body(x)
        return torch.stack([torch.relu(head(f)) for head in self.heads], dim=1)


class RecurrentVarNetStep(Step):
    """One RecurrentVarNet time step on :class:`RecurrentState` (see the module docstring).

    It reads ``problem.y``, ``problem.mask`` and ``problem.maps`` of an
    :class:`~unroll.models.mri_blocks.MRIProblem`.

    Args:
        hidden, num_layers: of the ConvGRU stack.
        dc_weight, learn_dc_weight: the data-consistency weight ``λ`` (``inf``: hard DC).
    """

    fixed_point = False

    def __init__(self, hidden: int = 64, num_layers: int = 4, dc_weight: float = 1.0,
                 learn_dc_weight: bool = True) -> None:
        super().__init__()
        self.block = ConvGRUStack(2, 2, hidden, num_layers)
        self.dc = DCWeight(dc_weight, learn_dc_weight)

    def estimate(self, state: RecurrentState) -> Tensor:
        return state.k

    def forward(self, state: RecurrentState, problem: MRIProblem) -> RecurrentState:
        k, maps = state.k, problem.maps
        u, h = self.block(complex_to_channels(reduce_coils(k, maps).unsqueeze(1)), state.h)
        update = expand_coils(channels_to_complex(u).squeeze(1), maps)
        w = self.dc()
        if w is None:
            return RecurrentState(hard_dc(k + update, problem.y, problem.mask), h)
        return RecurrentState(k - soft_dc(k, problem.y, problem.mask, w) + update, h)


class RecurrentVarNet(nn.Module):
    """RecurrentVarNet: ``model(y, op)`` → complex image ``(B, H, W)``.

    Args:
        num_steps: recurrent time steps ``T`` (8 in the paper).
        hidden: ConvGRU channels (64 in the paper).
        num_layers: conv + ConvGRU layers per block (4 in the paper).
        shared_weights: one block for every step (``False``: the paper's untied steps).
        learned_init: initialise the hidden state with :class:`RecurrentInit` (else zeros).
        init_channels, init_dilations: of :class:`RecurrentInit`.
        sensitivities: ``"operator"`` (the operator's maps) or ``"learned"`` (a
            :class:`~unroll.models.mri_blocks.SensitivityNet`, trained end to end).
        dc_weight, learn_dc_weight: the data-consistency weight of every step (``inf``: hard DC).
        grad_mode: ``"full"``, ``"truncated"``, ``"checkpoint"`` or a :class:`~unroll.autodiff.GradMode`.

    Call: ``model(y, op, return_trajectory=False, return_states=False, grad_mode=None)``; returns
    the image ``(B, H, W)``, or an :class:`~unroll.unrolled.UnrolledOutput` (``x`` the image,
    ``trajectory`` the image after each step, ``state`` the final :class:`RecurrentState` and,
    with ``return_states=True``, ``states`` every step's state, hidden state included).
    """

    def __init__(self, num_steps: int = 8, hidden: int = 64, num_layers: int = 4, shared_weights: bool = False,
                 learned_init: bool = True, init_channels: List[int] = [32, 32, 64, 64],
                 init_dilations: List[int] = [1, 1, 2, 4],
                 sensitivities: Literal["operator", "learned"] = "operator", dc_weight: float = 1.0,
                 learn_dc_weight: bool = True, grad_mode: Union[str, GradMode] = "full") -> None:
        super().__init__()
        for name, v in (("num_steps", num_steps), ("hidden", hidden), ("num_layers", num_layers)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name}: expected an int >= 1, got {v!r}")
        if sensitivities not in ("learned", "operator"):
            raise ValueError(f"sensitivities: expected 'learned' or 'operator', got {sensitivities!r}")
        self.num_steps, self.hidden, self.num_layers = num_steps, hidden, num_layers
        self.sensitivities = sensitivities
        self.sens_net = SensitivityNet() if sensitivities == "learned" else None
        self.init = RecurrentInit(hidden, num_layers, init_channels, init_dilations) if learned_init else None
        steps = [RecurrentVarNetStep(hidden, num_layers, dc_weight, learn_dc_weight)
                 for _ in range(1 if shared_weights else num_steps)]
        self.unrolled = Unrolled(steps if not shared_weights else steps[0], num_iters=num_steps,
                                 grad_mode=as_grad_mode(grad_mode))

    @property
    def grad_mode(self) -> GradMode:
        return self.unrolled.grad_mode

    def initial_state(self, y: Tensor, mask: Tensor, maps: Tensor) -> RecurrentState:
        """``RecurrentState(y, h₀)`` for normalised ``y``: ``h₀`` from the ACS image (or zeros)."""
        b, _, hh, ww = y.shape
        if self.init is None:
            h0 = y.real.new_zeros(b, self.num_layers, self.hidden, hh, ww)
        else:
            acs = reduce_coils(y * acs_mask(mask), maps)
            h0 = self.init(complex_to_channels(acs.unsqueeze(1)))
        return RecurrentState(y, h0)

    def forward(self, y: Tensor, op, *, return_trajectory: bool = False, return_states: bool = False,
                grad_mode: Union[str, GradMode, None] = None) -> Union[Tensor, UnrolledOutput]:
        """``y`` ``(B, C, H, W)`` complex, ``op`` SENSE → image ``(B, H, W)`` complex."""
        mask, maps = check_mri_call(y, op, type(self).__name__)
        if self.sens_net is not None:
            maps = self.sens_net(y, mask)
        scale = data_scale(y, mask, maps)
        yn = y / scale
        problem = MRIProblem(op=op, y=yn, maps=maps, mask=mask)
        out = self.unrolled(problem, state0=self.initial_state(yn, mask, maps), return_trajectory=return_trajectory,
                            return_states=return_states, grad_mode=grad_mode)
        s = scale.view(-1, 1, 1)
        x = reduce_coils(out.x, maps) * s
        if not (return_trajectory or return_states):
            return x
        traj = None if out.trajectory is None else [reduce_coils(k, maps) * s for k in out.trajectory]
        return UnrolledOutput(x, traj, out.info, out.state, out.states)

    def extra_repr(self) -> str:
        return (f"num_steps={self.num_steps}, hidden={self.hidden}, num_layers={self.num_layers}, "
                f"sensitivities={self.sensitivities!r}")
