"""Learned ISTA and learned IHT: classical iterations whose per-layer step sizes and
thresholds are trained (positive by construction)."""

from __future__ import annotations

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

    Args:
        num_layers: ``K``.
        lam: initial ``λ_k``.
        step: initial ``s_k`` (1 = the classical ``1/L``).
        learn_step, learn_threshold: which of the two to train.
        grad_mode: gradient mode of the unrolled layers (``"full"``, ``"truncated"``,
            ``"checkpoint"``; untied weights, so not ``"implicit"``/``"jfb"``).

    Shapes: ``y`` ``(B, *out_shape)`` → ``x`` ``(B, *in_shape)``.
    """

    prox_class = L1

    def __init__(self, num_layers: int = 16, lam: float = 0.1, step: float = 1.0, learn_step: bool = True,
                 learn_threshold: bool = True, grad_mode: str = "full") -> None:
        super().__init__(num_layers, grad_mode)
        self.unrolled = Unrolled([ProxGradStep(self.prox_class(lam, learnable=learn_threshold), step=step,
                                               learn_step=learn_step) for _ in range(num_layers)],
                                 grad_mode=self.grad_mode)

    def steps_and_weights(self):
        """Per layer ``(s_k, λ_k)`` as floats (for inspection)."""
        return [(s.step().item(), s.prox.lam.item()) for s in self.unrolled.steps]


class LearnedIHT(LearnedISTA):
    """Learned iterative hard thresholding: as :class:`LearnedISTA` with the ℓ0 prox,
    ``x_{k+1} = H_{√(2 α_k λ_k)}(x_k − α_k Aᴴ(A x_k − y))``.

    Args: as :class:`LearnedISTA` (``lam`` weighs ‖x‖₀).
    """

    prox_class = L0
