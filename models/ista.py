"""Learned ISTA and learned IHT: classical iterations whose per-layer step sizes and
thresholds are trained (positive by construction)."""

from __future__ import annotations

import torch

from unroll.parametrize import PositiveEntry, PositiveScalar
from unroll.prox import L0, L1
from unroll.steps import ProxGradStep
from unroll.unrolled import Unrolled

from .base import UnrolledModel

__all__ = ["LearnedISTA", "LearnedIHT"]


class LearnedISTA(UnrolledModel):
    """``x_{k+1} = S_{α_k λ_k}(x_k − α_k Aᴴ(A x_k − y))`` with ``α_k = s_k / ‖A‖₂²``.

    Per layer a learned step ``s_k`` (in units of ``1/L``) and a learned weight ``λ_k``, so the
    threshold ``α_k λ_k`` is positive; both softplus-parametrised. Works with any operator
    (nothing depends on ``A`` but ``L``, read from the problem).

    The learned ``s_k`` (and ``λ_k``) are stored as one ``(K,)`` parameter each
    (``step_values.raw``, ``lam_values.raw``) that the layers index (``packed=True``): training
    then costs the optimiser two tensors instead of ``2K`` 0-dim ones (Adam's per-tensor work is
    about 5 % of a training step of the 16-layer model; ``benchmarks/overhead.py``). The values,
    the arithmetic and the gradients are those of per-layer scalars. :meth:`unpack_scalars`
    turns them into per-layer parameters (``packed=False``), which stage-wise training
    (:class:`unroll.train.StageWise`, which freezes layers by parameter) does by itself;
    checkpoints of either form load into either.

    Args:
        num_layers: ``K``.
        lam: initial ``λ_k``.
        step: initial ``s_k`` (1 = the classical ``1/L``).
        learn_step, learn_threshold: which of the two to train.
        grad_mode: gradient mode of the unrolled layers (``"full"``, ``"truncated"``,
            ``"checkpoint"``; untied weights, so not ``"implicit"``/``"jfb"``).
        packed: store the learned per-layer scalars as ``(K,)`` vectors (see above).

    Shapes: ``y`` ``(B, *out_shape)`` → ``x`` ``(B, *in_shape)``.
    """

    prox_class = L1

    def __init__(self, num_layers: int = 16, lam: float = 0.1, step: float = 1.0, learn_step: bool = True,
                 learn_threshold: bool = True, grad_mode: str = "full", packed: bool = True) -> None:
        super().__init__(num_layers, grad_mode)
        if not isinstance(packed, bool):
            raise ValueError(f"packed: expected true or false, got {packed!r}")
        self._lam, self._step = lam, step
        self.learn_step, self.learn_threshold = learn_step, learn_threshold
        self.packed = False
        if packed and (learn_step or learn_threshold):
            self.packed = True
            if learn_step:
                self.step_values = PositiveScalar([step] * num_layers, learnable=True, name="step")
            if learn_threshold:
                self.lam_values = PositiveScalar([lam] * num_layers, learnable=True, name="lam")
        self.unrolled = Unrolled([self._layer(k) for k in range(num_layers)], grad_mode=self.grad_mode)
        self._register_load_state_dict_pre_hook(self._convert_state)

    def _layer(self, k: int) -> ProxGradStep:
        if self.packed and self.learn_threshold:
            prox = self.prox_class(PositiveEntry(self.lam_values, k))
        else:
            prox = self.prox_class(self._lam, learnable=self.learn_threshold)
        if self.packed and self.learn_step:
            return ProxGradStep(prox, step=PositiveEntry(self.step_values, k))
        return ProxGradStep(prox, step=self._step, learn_step=self.learn_step)

    @torch.no_grad()
    def unpack_scalars(self) -> "LearnedISTA":
        """Give every layer its own 0-dim parameters (the same values, bit for bit); returns
        ``self``. Call it before building the optimiser (stage-wise training does)."""
        if not self.packed:
            return self
        raw_step = self.step_values.raw.detach().clone() if self.learn_step else None
        raw_lam = self.lam_values.raw.detach().clone() if self.learn_threshold else None
        self.packed = False
        for name in ("step_values", "lam_values"):
            if hasattr(self, name):
                delattr(self, name)
        layers = []
        for k in range(self.num_layers):
            layer = self._layer(k)
            if raw_step is not None:
                layer.step.raw.data = raw_step[k].clone()
            if raw_lam is not None:
                layer.prox.raw_lam.data = raw_lam[k].clone()
            layers.append(layer)
        self.unrolled = Unrolled(layers, grad_mode=self.grad_mode)
        return self

    def _convert_state(self, state_dict, prefix, *args) -> None:
        """Load checkpoints of the other storage: per-layer ``unrolled.steps.k.step.raw`` /
        ``...prox.raw_lam`` into the packed vectors, or the vectors into per-layer entries."""
        per_layer = {"step": "unrolled.steps.{}.step.raw", "lam": "unrolled.steps.{}.prox.raw_lam"}
        learned = {"step": self.learn_step, "lam": self.learn_threshold}
        for what, pattern in per_layer.items():
            if not learned[what]:
                continue
            vector_key = f"{prefix}{what}_values.raw"
            layer_keys = [prefix + pattern.format(k) for k in range(self.num_layers)]
            if self.packed and vector_key not in state_dict and all(k in state_dict for k in layer_keys):
                state_dict[vector_key] = torch.stack([state_dict.pop(k).reshape(()) for k in layer_keys])
            elif not self.packed and vector_key in state_dict and not any(k in state_dict for k in layer_keys):
                vector = state_dict.pop(vector_key)
                if vector.shape == (self.num_layers,):
                    state_dict.update({k: vector[i].clone() for i, k in enumerate(layer_keys)})
                else:
                    state_dict[vector_key] = vector  # let load_state_dict report the mismatch

    def layer_parameters(self, k: int):
        if self.packed:
            raise RuntimeError(f"{type(self).__name__} stores its per-layer scalars as vectors (packed=True): "
                               "call unpack_scalars() first (before the optimiser is built) to train it by layer")
        return super().layer_parameters(k)

    def steps_and_weights(self):
        """Per layer ``(s_k, λ_k)`` as floats (for inspection)."""
        return [(s.step().item(), s.prox.lam.item()) for s in self.unrolled.steps]


class LearnedIHT(LearnedISTA):
    """Learned iterative hard thresholding: as :class:`LearnedISTA` with the ℓ0 prox,
    ``x_{k+1} = H_{√(2 α_k λ_k)}(x_k − α_k Aᴴ(A x_k − y))``.

    Args: as :class:`LearnedISTA` (``lam`` weighs ‖x‖₀).
    """

    prox_class = L0
