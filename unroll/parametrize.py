"""Positive learnable scalars, stored unconstrained and mapped through softplus."""

from __future__ import annotations

from typing import Sequence, Union

import torch
from torch import Tensor, nn
from torch.nn.functional import softplus

__all__ = ["PositiveScalar", "inverse_softplus"]


def inverse_softplus(y: Union[float, Tensor]) -> Tensor:
    """``x`` with ``softplus(x) = y`` for ``y > 0``, stable for small and large ``y``
    (``y + log(-expm1(-y))``). Python numbers are computed in float64; returns a tensor of
    ``y``'s shape."""
    if not isinstance(y, Tensor):
        y = torch.tensor(float(y), dtype=torch.float64)
    return y + torch.log(-torch.expm1(-y))


class PositiveScalar(nn.Module):
    """A positive quantity (step size, threshold, weight), fixed or learned.

    Learnable: stored as the unconstrained parameter ``raw`` (default dtype) and returned as
    ``softplus(raw)``, so gradient steps can never make it zero or negative.
    Fixed: stored as a float64 buffer, so the value is exact until ``.to()`` casts it (a 0-dim
    float64 tensor does not promote the float32 tensors it multiplies).

    Args:
        value: initial value (> 0), or a sequence of values for a vector of scalars.
        learnable: whether it is an ``nn.Parameter``.
        name: used in error messages.

    Calling the module returns the value: a 0-dim tensor (or ``(len(value),)``).
    """

    def __init__(self, value: Union[float, Sequence[float], Tensor], learnable: bool = False,
                 name: str = "value") -> None:
        super().__init__()
        v = torch.as_tensor(value, dtype=torch.float64).clone()
        if not torch.isfinite(v).all() or (v <= 0).any():
            raise ValueError(f"{name}: expected a finite value > 0, got {value!r}")
        self.learnable = learnable
        if learnable:
            self.raw = nn.Parameter(inverse_softplus(v).to(torch.get_default_dtype()))
        else:
            self.register_buffer("fixed", v)

    def forward(self) -> Tensor:
        return softplus(self.raw) if self.learnable else self.fixed

    @property
    def value(self) -> Tensor:
        return self()

    def extra_repr(self) -> str:
        return f"learnable={self.learnable}"
