"""``Problem``: everything an iteration needs besides its own state.

Built once per forward call and read (never mutated) by the steps. For the composite
problem ``min_x ½‖A x − y‖² + g(x)`` it holds the operator ``A``, the measurements ``y``,
the regulariser ``g`` (optional) and the Lipschitz constant of the data-term gradient.
Per-sample extras (masks, coil maps) live inside the operator.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import torch
from torch import Tensor, nn

from .checks import check_measurements
from .operators.base import LinearOperator, as_operator

__all__ = ["Problem"]


@dataclass(frozen=True)
class Problem:
    """A least-squares data term plus an optional regulariser.

    Attributes:
        op: the forward operator ``A: (B, *in_shape) → (B, *out_shape)``.
        y: measurements ``(B, *out_shape)``.
        reg: regulariser with ``value(x) → (B,)`` and ``prox(x, step)``, or ``None``.
        lipschitz: ``‖A‖₂²`` (0-dim tensor), the Lipschitz constant of ``∇½‖Ax − y‖²``.
    """

    op: LinearOperator
    y: Tensor
    reg: Optional[nn.Module] = None
    lipschitz: Tensor = field(default=None)  # type: ignore[assignment]

    @classmethod
    def create(cls, op, y: Tensor, reg: Optional[nn.Module] = None, check: bool = True, **extra) -> "Problem":
        """Build a problem from an operator (or a matrix) and measurements.

        Args:
            op: a :class:`LinearOperator` or a ``(m, n)`` tensor.
            y: ``(B, *out_shape)`` measurements.
            reg: optional regulariser.
            check: validate ``y`` against ``op`` (shape, dtype, NaN/Inf; one host sync).
            extra: the further fields of a subclass (e.g. a model's fixed weight).
        """
        op = as_operator(op)
        if check:
            check_measurements(y, op, "y")
        lip = op.lipschitz()
        lip = lip.to(device=y.device, dtype=y.real.dtype) if isinstance(lip, Tensor) else torch.tensor(lip)
        return cls(op=op, y=y, reg=reg, lipschitz=lip, **extra)

    @property
    def batch_size(self) -> int:
        return self.y.shape[0]

    # The iterations call the operator's unchecked _forward/_adjoint: y was checked against the
    # operator when the problem was built, and the iterates keep the shape of x0 (Python-side
    # checks at every application would cost more than the arithmetic of a small problem).
    def residual(self, x: Tensor) -> Tensor:
        """``A x − y``: ``(B, *in_shape) → (B, *out_shape)``."""
        return self.op._forward(x) - self.y

    def grad(self, x: Tensor) -> Tensor:
        """``∇ ½‖A x − y‖² = Aᴴ(A x − y)``: ``(B, *in_shape) → (B, *in_shape)``."""
        return self.op._adjoint(self.residual(x))

    def data_fidelity(self, x: Tensor) -> Tensor:
        """``½‖A x − y‖²`` per sample: ``(B, *in_shape) → (B,)``."""
        r = self.residual(x)
        return 0.5 * r.abs().square().flatten(1).sum(1)

    def objective(self, x: Tensor) -> Tensor:
        """``½‖A x − y‖² + g(x)`` per sample, ``(B,)``."""
        f = self.data_fidelity(x)
        return f if self.reg is None else f + self.reg.value(x)

    def zeros(self) -> Tensor:
        """A zero initial estimate ``(B, *in_shape)`` with the measurements' dtype and device."""
        if self.op.in_shape is not None:
            return self.y.new_zeros((self.batch_size, *self.op.in_shape))
        return torch.zeros_like(self.op.adjoint(self.y))
