"""``UnrolledModel``: the one call shape of every reconstruction model, ``model(y, A)``."""

from __future__ import annotations

from typing import List, Optional, Union

from torch import Tensor, nn

from unroll.autodiff import GradMode, as_grad_mode
from unroll.checks import check_measurements
from unroll.operators import LinearOperator, as_operator
from unroll.parametrize import PositiveScalar
from unroll.problem import Problem
from unroll.unrolled import Unrolled, UnrolledOutput

from .weights import check_init, check_lam, check_ridge, dense_matrix, initial_weight

__all__ = ["UnrolledModel", "ThresholdedMatrixModel", "learned_scalar", "support_selection_schedule"]


def learned_scalar(value: float, name: str) -> PositiveScalar:
    """A learned positive scalar (threshold, step size) of the LISTA family, initialised at
    ``value``: softplus with sharpness ``β = 10/value``, i.e. the identity above about a tenth
    of the initial value and exponential below it.

    The papers (Chen et al. 2018; Liu et al. 2019) learn θ and γ as plain variables, so an Adam
    step moves them by about the learning rate. A softplus with ``β = 1`` would, for θ ≈ 0.07,
    move them by only ~7 % of that (and ever less as they shrink; ablation in BENCHMARKS.md). With
    ``β = 10/value`` the value moves as a plain variable would in its working range, and it
    still cannot reach zero or become negative.
    """
    return PositiveScalar(value, learnable=True, name=name, beta=10.0 / float(value))


def support_selection_schedule(num_layers: int, p_step: float = 1.2, p_max: float = 13.0,
                               enabled: bool = True) -> List[float]:
    """Percent of entries passed through per layer by support selection (Chen et al. 2018):
    ``p_k = min(p_step·k, p_max)`` for ``k = 1..K``; all zeros when not ``enabled``."""
    if not enabled:
        return [0.0] * num_layers
    if not (p_step >= 0 and 0 <= p_max <= 100):
        raise ValueError(f"p_step, p_max: expected p_step >= 0 and p_max in [0, 100], got {p_step}, {p_max}")
    return [min(p_step * (k + 1), p_max) for k in range(num_layers)]


class UnrolledModel(nn.Module):
    """Base class of unrolled reconstruction networks.

    Subclasses build ``self.unrolled`` (an :class:`~unroll.unrolled.Unrolled`), either in
    ``__init__`` or, for models whose weights depend on the operator (LISTA's matrices,
    ALISTA's analytic weight), in :meth:`_build` called by :meth:`bind`. A bound model
    remembers the operator's fingerprint and refuses to run on another operator.

    Call: ``model(y, A)`` with ``y`` ``(B, *out_shape)`` and ``A`` a
    :class:`~unroll.operators.LinearOperator` or a ``(m, n)`` tensor; returns the estimate
    ``(B, *in_shape)``, or an :class:`~unroll.unrolled.UnrolledOutput` ``(x, trajectory,
    info)`` with ``return_trajectory=True``.
    """

    #: whether the model's weights depend on the operator (then it must be bound).
    needs_operator: bool = False

    def __init__(self, num_layers: int, grad_mode: Union[str, GradMode] = "full") -> None:
        super().__init__()
        if not isinstance(num_layers, int) or num_layers < 1:
            raise ValueError(f"num_layers: expected an int >= 1, got {num_layers!r}")
        self.num_layers = num_layers
        self.grad_mode = as_grad_mode(grad_mode)
        self.unrolled: Optional[Unrolled] = None
        self._fingerprint: Optional[str] = None
        self._last_matrix: Optional[Tensor] = None
        self._last_op: Optional[LinearOperator] = None
        self._last_version: int = -1
        self._bound_op: Optional[LinearOperator] = None

    # ------------------------------------------------------------------ binding
    @property
    def is_bound(self) -> bool:
        return self.unrolled is not None

    def bind(self, A: Union[LinearOperator, Tensor]) -> "UnrolledModel":
        """Build the operator-dependent weights from ``A`` (idempotent for the same operator; a
        no-op for models whose weights do not depend on it)."""
        if not self.needs_operator:
            return self
        op = as_operator(A)
        fp = op.fingerprint()
        if self.is_bound and self._fingerprint is not None:
            if fp != self._fingerprint:
                raise ValueError(f"A: {type(self).__name__} is already bound to operator {self._fingerprint}, "
                                 f"got operator {fp}; build a new model for another operator")
            return self
        self._build(op)
        self._fingerprint = fp
        self.__dict__["_bound_op"] = op  # plain attribute: the operator is not part of the model's state
        return self

    def _build(self, op: LinearOperator) -> None:
        """Create ``self.unrolled`` for operator ``op`` (models that need it override)."""
        raise NotImplementedError(f"{type(self).__name__} must build self.unrolled in __init__ or _build")

    # ------------------------------------------------------------------ layers
    def layer_parameters(self, k: int) -> List[nn.Parameter]:
        """The parameters of layer ``k`` (0-based) alone: its step's (the single shared step of a
        tied network). Used by stage-wise training (:class:`unroll.train.StageWise`)."""
        if not self.is_bound:
            raise RuntimeError(f"{type(self).__name__} is not bound to an operator yet")
        if not 0 <= k < self.num_layers:
            raise IndexError(f"k: expected a layer index in [0, {self.num_layers}), got {k}")
        steps = self.unrolled.steps
        return list(steps[min(k, len(steps) - 1)].parameters())

    def shared_parameters(self) -> List[nn.Parameter]:
        """Parameters that belong to no single layer (e.g. TiLISTA's tied matrix ``W``)."""
        in_steps = {id(p) for p in self.unrolled.parameters()} if self.is_bound else set()
        return [p for p in self.parameters() if id(p) not in in_steps]

    # ------------------------------------------------------------------ call
    def _operator(self, A) -> LinearOperator:
        if isinstance(A, LinearOperator):
            return A
        if (isinstance(A, Tensor) and A is self._last_matrix and self._last_op is not None
                and A._version == self._last_version):
            return self._last_op  # same, unmodified matrix as last call: keep its cached Lipschitz constant
        op = as_operator(A)
        if isinstance(A, Tensor):  # plain attributes, not submodules
            self.__dict__["_last_matrix"], self.__dict__["_last_op"] = A, op
            self.__dict__["_last_version"] = A._version  # an in-place change makes it another operator
        return op

    def problem(self, y: Tensor, op: LinearOperator) -> Problem:
        """The :class:`~unroll.problem.Problem` the steps read (override to add a regulariser)."""
        return Problem.create(op, y, check=False)

    def forward(self, y: Tensor, A: Union[LinearOperator, Tensor], *, num_iters: Optional[int] = None,
                tol: Optional[float] = None, return_trajectory: bool = False,
                x0: Optional[Tensor] = None, grad_mode=None) -> Union[Tensor, UnrolledOutput]:
        """Reconstruct ``x`` from ``y = A x (+ noise)``.

        Args:
            y: measurements ``(B, *out_shape)`` (checked: shape and dtype before the iterations,
                NaN/Inf after them, on the divergence check's host sync, with an error naming ``y``).
            A: the operator or matrix.
            num_iters: layers to run (default ``num_layers``; more repeats the last layer).
            tol: stop each sample at this relative change (inference).
            return_trajectory: return ``UnrolledOutput(x, trajectory, info)`` instead of ``x``.
            x0: initial estimate ``(B, *in_shape)`` (zeros by default).
            grad_mode: this call's gradient mode (:mod:`unroll.autodiff`), default the layer's.
        """
        op = self._operator(A)
        # shape and dtype here (no host sync); NaN/Inf in y is tested by the layer's divergence check,
        # on the host sync it makes anyway (Unrolled -> problem.inputs_finite), and named there
        check_measurements(y, op, "y", finite=False)
        if not self.is_bound:
            raise RuntimeError(f"{type(self).__name__} is not bound to an operator: pass operator=... at "
                               "construction or call model.bind(A) before training")
        if self._fingerprint is not None and op is not self._bound_op:
            if op.fingerprint() != self._fingerprint:
                raise ValueError(f"A: {type(self).__name__} was built for operator {self._fingerprint}, "
                                 f"got operator {op.fingerprint()}")
            self.__dict__["_bound_op"] = op
        out = self.unrolled(self.problem(y, op), x0, num_iters=num_iters, tol=tol,
                            return_trajectory=return_trajectory, grad_mode=grad_mode)
        return out if return_trajectory else out.x


class ThresholdedMatrixModel(UnrolledModel):
    """Base of the LISTA family: weights built from the dense matrix ``A`` at binding (from
    ISTA's or ALISTA's weight, ``init``), initial thresholds ``λ/L`` and a support-selection
    schedule (all zeros when it is off).

    Subclasses give their own typed ``__init__`` (their defaults) and build ``self.unrolled``
    in :meth:`_build` from ``self.lam`` and ``self.percents``.
    """

    needs_operator = True

    def __init__(self, num_layers: int, operator, lam: float, support_selection: bool, p_step: float,
                 p_max: float, grad_mode: Union[str, GradMode], relaxation: bool = False,
                 init: str = "ista", ridge: float = 0.0) -> None:
        lam = check_lam(lam)  # named as the user wrote it (lam/L would be refused as a bad `theta`)
        super().__init__(num_layers, grad_mode)
        if not isinstance(relaxation, bool):
            raise ValueError(f"relaxation: expected a bool, got {relaxation!r}")
        self.lam = lam
        self.relaxation = relaxation
        self.init = check_init(init)
        self.ridge = check_ridge(ridge)
        if self.ridge and self.init != "analytic":
            raise ValueError(f"ridge: applies to init='analytic' only, got ridge={ridge!r} with init={self.init!r}")
        self.percents = support_selection_schedule(num_layers, p_step, p_max, support_selection)
        if operator is not None:
            self.bind(operator)

    def _initial_weights(self, op: LinearOperator) -> "tuple[Tensor, float, Tensor, float]":
        """``(A, L, W, γ)`` for building the layers: the dense matrix ``(m, n)``, ``L = ‖A‖₂²``,
        and the initial weight ``(m, n)`` and step of ``init`` (ISTA's ``A, 1/L`` or ALISTA's
        analytic weight, with ``ridge``)."""
        a = dense_matrix(op, type(self).__name__).detach()
        lip = float(op.lipschitz())
        w, gamma = initial_weight(a, lip, self.init, self.ridge)
        return a, lip, w, gamma
