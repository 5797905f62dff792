"""End-to-end variational network (E2E VarNet; Sriram et al., MICCAI 2020).

The state is the multi-coil k-space ``k`` ``(B, C, H, W)``, initialised with the measured
``y``. Cascade ``t`` (its own weights) computes

    ``k ← k − η_t · M (k − y) − E(U_t(R(k)))``

with ``R(k) = Σ_c conj(S_c) F⁻¹ k_c`` (reduce to one image), ``U_t`` a U-Net on the complex
image (:class:`~unroll.models.unet.NormUNet`), ``E(x) = (F S_c x)_c`` (expand back to coils)
and ``η_t > 0`` the learned data-consistency weight (initialised at ``dc_weight``). With
``dc_weight=float("inf")`` the data consistency is hard instead: ``k ← (1 − M)(k − E(U_t(R(k)))) + M y``,
so the sampled entries are exactly the measurements after every cascade.

The sensitivity maps ``S`` are estimated end to end by :class:`~unroll.models.mri_blocks.SensitivityNet`
(a U-Net on each coil's low-resolution image from the auto-calibration lines, normalised to
``Σ_c |S_c|² = 1``), or taken from the operator (``sensitivities="operator"``). The output is
``R(k)`` after the last cascade, a complex image ``(B, H, W)``.

The cascades are the steps of an :class:`~unroll.Unrolled` (untied weights), so the gradient
modes ``full``, ``truncated`` and ``checkpoint`` apply (``implicit``/``jfb`` do not: the
cascades have untied weights and are no fixed-point map).
"""

from __future__ import annotations

from typing import List, Literal, NamedTuple, Union

from torch import Tensor, nn

from unroll.autodiff import GradMode, as_grad_mode
from unroll.steps import Step
from unroll.unrolled import Unrolled, UnrolledOutput

from .mri_blocks import (DCWeight, MRIProblem, SensitivityNet, check_mri_call, expand_coils, hard_dc,
                         reduce_coils, soft_dc)
from .unet import NormUNet

__all__ = ["VarNet", "VarNetCascade", "KSpaceState"]


class KSpaceState(NamedTuple):
    """The state of a k-space cascade: ``k``, multi-coil k-space ``(B, C, H, W)`` complex."""

    k: Tensor


class VarNetCascade(Step):
    """One E2E VarNet cascade ``k ↦ k − η M(k − y) − E(U(R(k)))`` as a :class:`~unroll.steps.Step`.

    It reads ``problem.y``, ``problem.mask`` and ``problem.maps`` of an
    :class:`~unroll.models.mri_blocks.MRIProblem`.

    Args:
        channels, num_pools: of the U-Net (:class:`~unroll.models.unet.NormUNet`).
        dc_weight: initial data-consistency weight ``η > 0``; ``float("inf")`` for hard DC.
        learn_dc_weight: learn ``η`` (softplus-positive).
        zero_init: the U-Net's refinement starts at exactly 0 (see :class:`~unroll.models.unet.NormUNet`).

    Shapes: state ``KSpaceState(k (B, C, H, W))`` → same.
    """

    fixed_point = False

    def __init__(self, channels: int = 18, num_pools: int = 4, dc_weight: float = 1.0,
                 learn_dc_weight: bool = True, zero_init: bool = False) -> None:
        super().__init__()
        self.unet = NormUNet(1, channels, num_pools, zero_init=zero_init)
        self.dc = DCWeight(dc_weight, learn_dc_weight)

    def init_state(self, x0: Tensor, problem) -> KSpaceState:
        return KSpaceState(x0)

    def estimate(self, state: KSpaceState) -> Tensor:
        return state.k

    def refinement(self, k: Tensor, maps: Tensor) -> Tensor:
        """``E(U(R(k)))`` ``(B, C, H, W)``."""
        return expand_coils(self.unet(reduce_coils(k, maps).unsqueeze(1)).squeeze(1), maps)

    def forward(self, state: KSpaceState, problem: MRIProblem) -> KSpaceState:
        k = state.k
        refined = k - self.refinement(k, problem.maps)
        w = self.dc()
        if w is None:
            return KSpaceState(hard_dc(refined, problem.y, problem.mask))
        return KSpaceState(refined - soft_dc(k, problem.y, problem.mask, w))


class VarNet(nn.Module):
    """E2E VarNet: ``model(y, op)`` → complex image ``(B, H, W)``.

    Args:
        num_cascades: number of cascades (12 in the paper).
        channels, num_pools: U-Net of each cascade (18, 4 in the paper).
        sens_channels, sens_pools: U-Net of the sensitivity network (8, 4 in the paper).
        sensitivities: ``"learned"`` (the paper: estimated from the ACS lines by a U-Net and
            trained end to end) or ``"operator"`` (the maps the SENSE operator carries).
        dc_weight: initial data-consistency weight of every cascade; ``float("inf")``: hard DC.
        learn_dc_weight: learn one weight per cascade.
        identity_init: start from a network that does nothing learned: the cascades' refinements
            are exactly 0 (so the untrained VarNet returns the SENSE-combined zero-filled image
            with its DC) and the sensitivity U-Net is the identity on the ACS ratio estimate.
            Helps small training budgets; ``False`` is fastMRI's random initialisation.
        grad_mode: gradient mode (:mod:`unroll.autodiff`): ``"full"``, ``"truncated"``,
            ``"checkpoint"`` (one cascade per segment by default: ``GradMode("checkpoint",
            segments=num_cascades)``) or a :class:`~unroll.autodiff.GradMode`.

    Call: ``model(y, op, return_trajectory=False, grad_mode=None)`` with ``y`` ``(B, C, H, W)``
    complex k-space (zero where not sampled) and ``op`` a :class:`~unroll.operators.SENSE`
    operator (its ``mask`` ``(B|1, 1, H|1, W)``; its ``maps`` used only with
    ``sensitivities="operator"``). Returns the image ``(B, H, W)``, or with
    ``return_trajectory=True`` an :class:`~unroll.unrolled.UnrolledOutput` whose ``x`` is the
    image and ``trajectory`` the image after each cascade.
    """

    def __init__(self, num_cascades: int = 12, channels: int = 18, num_pools: int = 4, sens_channels: int = 8,
                 sens_pools: int = 4, sensitivities: Literal["learned", "operator"] = "learned",
                 dc_weight: float = 1.0, learn_dc_weight: bool = True, identity_init: bool = True,
                 grad_mode: Union[str, GradMode] = "full") -> None:
        super().__init__()
        if isinstance(num_cascades, bool) or not isinstance(num_cascades, int) or num_cascades < 1:
            raise ValueError(f"num_cascades: expected an int >= 1, got {num_cascades!r}")
        if sensitivities not in ("learned", "operator"):
            raise ValueError(f"sensitivities: expected 'learned' or 'operator', got {sensitivities!r}")
        mode = as_grad_mode(grad_mode)
        if mode.mode == "checkpoint" and mode.segments is None:
            mode = GradMode("checkpoint", segments=num_cascades, on_failure=mode.on_failure)
        self.num_cascades = num_cascades
        self.sensitivities = sensitivities
        self.sens_net = (SensitivityNet(sens_channels, sens_pools, identity_init) if sensitivities == "learned"
                         else None)
        cascades: List[VarNetCascade] = [VarNetCascade(channels, num_pools, dc_weight, learn_dc_weight, identity_init)
                                         for _ in range(num_cascades)]
        self.unrolled = Unrolled(cascades, grad_mode=mode)

    @property
    def grad_mode(self) -> GradMode:
        return self.unrolled.grad_mode

    def sensitivity_maps(self, y: Tensor, op) -> Tensor:
        """The maps the model uses ``(B|1, C, H, W)``: estimated from ``y``'s ACS lines, or ``op.maps``."""
        mask, maps = check_mri_call(y, op, type(self).__name__)
        return self.sens_net(y, mask) if self.sens_net is not None else maps

    def forward(self, y: Tensor, op, *, return_trajectory: bool = False,
                grad_mode: Union[str, GradMode, None] = None) -> Union[Tensor, UnrolledOutput]:
        """``y`` ``(B, C, H, W)`` complex, ``op`` SENSE → image ``(B, H, W)`` complex (see the class)."""
        mask, op_maps = check_mri_call(y, op, type(self).__name__)
        maps = self.sens_net(y, mask) if self.sens_net is not None else op_maps
        problem = MRIProblem(op=op, y=y, maps=maps, mask=mask)
        out = self.unrolled(problem, state0=KSpaceState(y), return_trajectory=return_trajectory,
                            grad_mode=grad_mode)
        x = reduce_coils(out.x, maps)
        if not return_trajectory:
            return x
        return UnrolledOutput(x, [reduce_coils(k, maps) for k in out.trajectory], out.info, out.state)

    def extra_repr(self) -> str:
        return f"num_cascades={self.num_cascades}, sensitivities={self.sensitivities!r}"
