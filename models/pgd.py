"""Learned projected gradient: projected-gradient iterations onto a constraint set of the core
(:mod:`unroll.prox` indicators) whose per-layer step sizes are trained."""

from __future__ import annotations

from typing import List, Optional

from unroll.prox import Indicator, L1Ball
from unroll.steps import ProxGradStep
from unroll.unrolled import Unrolled

from .base import UnrolledModel

__all__ = ["LearnedPGD"]


class LearnedPGD(UnrolledModel):
    """``x_{k+1} = P_C(x_k − (s_k/L) Aᴴ(A x_k − y))``, ``x_0 = 0``, with a learned step ``s_k``
    per layer (in units of ``1/L``, positive by softplus) and ``C`` a fixed constraint set.

    Untrained (``step=1``) it is classical projected gradient with step ``1/L``
    (:func:`unroll.solvers.projected_gradient`). Works with any operator.

    Args:
        num_layers: ``K``.
        constraint: the set ``C``, an :class:`~unroll.prox.Indicator` (``NonNegative``, ``Box``,
            ``Simplex``, ``L2Ball``, ``L1Ball``, ``LowRank``). Default: the ℓ1 ball of radius
            40, about the mean ℓ1 norm of the standard problem's signals
            (``n·p·√(2/π)`` = 39.9 for n=500, p=0.1).
        step: initial ``s_k``; learn_step: train them (else classical PGD).
        grad_mode: gradient mode of the unrolled layers (see :mod:`unroll.autodiff`).

    Shapes: ``y`` ``(B, *out_shape)`` → ``x`` ``(B, *in_shape)``.
    """

    def __init__(self, num_layers: int = 16, constraint: Optional[Indicator] = None, step: float = 1.0,
                 learn_step: bool = True, grad_mode: str = "full") -> None:
        super().__init__(num_layers, grad_mode)
        constraint = L1Ball(40.0) if constraint is None else constraint
        if not isinstance(constraint, Indicator):
            raise TypeError(f"constraint: expected an unroll.prox.Indicator (a set to project on), "
                            f"got {type(constraint).__name__}")
        self.constraint = constraint
        self.unrolled = Unrolled([ProxGradStep(constraint, step=step, learn_step=learn_step)
                                  for _ in range(num_layers)], grad_mode=self.grad_mode)

    def step_sizes(self) -> List[float]:
        """Per layer ``s_k`` (units of ``1/L``) as floats."""
        return [s.step().item() for s in self.unrolled.steps]
