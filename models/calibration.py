"""Learned blind gain calibration: the paper's projected gradient descent (Cambareri & Jacques
2019, :mod:`unroll.calibration`) unrolled for ``K`` layers with per-layer step sizes trained."""

from __future__ import annotations

from typing import List, Optional, Tuple, Union

from torch import Tensor, nn

from unroll.autodiff import GradMode, as_grad_mode
from unroll.calibration import BlindCalibrationProblem, BlindCalibrationStep
from unroll.unrolled import Unrolled, UnrolledOutput

__all__ = ["LearnedBlindCalibration"]


class LearnedBlindCalibration(nn.Module):
    """``K`` layers of ``x ← x − μ_x^k ∇_x f``, ``d ← P_{G_ρ}(d − μ_d^k (m/‖x₀‖²) ∇^⊥_d f)`` from
    the paper's start ``(x₀, 1)``, each layer with its own ``(μ_x^k, μ_d^k)`` (learned, positive).

    Untrained (``step=0.25``, the solver's default) it is ``K`` iterations of
    :func:`unroll.calibration.blind_calibration`. The per-layer steps are what training changes:
    with a small ``K`` the fixed step stops far from the solution, and larger (and varying) steps
    get closer (BENCHMARKS.md).

    Args:
        num_layers: ``K``.
        step: initial ``μ_x^k = μ_d^k``.
        learn_step: train them.
        rho: the gains' box half-width ``ρ`` (``None``: only ``1ᵀd = m``).
        grad_mode: gradient mode of the unrolled layers (:mod:`unroll.autodiff`).

    Call: ``model(y, A)`` with ``y`` ``(B, p, m)`` and ``A`` ``(B, p, m, n)``; returns an
    :class:`~unroll.unrolled.UnrolledOutput` whose ``x`` is the signal ``(B, n)`` and whose
    ``state.d`` the gains ``(B, m)``.
    """

    def __init__(self, num_layers: int = 20, step: float = 0.25, learn_step: bool = True,
                 rho: Optional[float] = 0.99, grad_mode: Union[str, GradMode] = "full") -> None:
        super().__init__()
        if isinstance(num_layers, bool) or not isinstance(num_layers, int) or num_layers < 1:
            raise ValueError(f"num_layers: expected an int >= 1, got {num_layers!r}")
        self.num_layers = num_layers
        self.rho = rho
        self.unrolled = Unrolled([BlindCalibrationStep(step, step, learn_step=learn_step) for _ in range(num_layers)],
                                 grad_mode=as_grad_mode(grad_mode))

    def forward(self, y: Tensor, A: Tensor, *, num_iters: Optional[int] = None, return_trajectory: bool = False,
                check: bool = True) -> UnrolledOutput:
        problem = BlindCalibrationProblem(A, y, self.rho, check=check)
        return self.unrolled(problem, state0=problem.initial_state(), num_iters=num_iters,
                             return_trajectory=return_trajectory)

    def step_sizes(self) -> List[Tuple[float, float]]:
        """Per layer ``(μ_x^k, μ_d^k)`` as floats."""
        return [(float(s.step_x().detach()), float(s.step_d().detach())) for s in self.unrolled.steps]
