"""Positive learnable scalars, stored unconstrained and mapped through softplus."""

from __future__ import annotations

from typing import Sequence, Union

import torch
from torch import Tensor, nn
from torch.nn.functional import softplus

__all__ = ["PositiveScalar", "inverse_softplus"]


def inverse_softplus(y: Union[float, Tensor], beta: float = 1.0) -> Tensor:
    """``x`` with ``softplus(x, beta) = log(1 + exp(beta·x))/beta = y`` for ``y > 0``, stable for
    small and large ``y`` (``(βy + log(-expm1(-βy)))/β``). Python numbers are computed in
    float64; returns a tensor of ``y``'s shape."""
    if not isinstance(y, Tensor):
        y = torch.tensor(float(y), dtype=torch.float64)
    by = y * beta
    return (by + torch.log(-torch.expm1(-by))) / beta


def _positive(value, name: str) -> Tensor:
    """``value`` as a float64 tensor, checked finite and > 0 (the error names ``name``)."""
    v = torch.as_tensor(value, dtype=torch.float64)
    if not torch.isfinite(v).all() or (v <= 0).any():
        raise ValueError(f"{name}: expected a finite value > 0, got {value!r}")
    return v


class PositiveScalar(nn.Module):
    """A positive quantity (step size, threshold, weight), fixed or learned.

    Learnable: stored as the unconstrained parameter ``raw`` (default dtype) and returned as
    ``softplus(raw, beta) = log(1 + exp(β·raw))/β``, so gradient steps can never make it zero or
    negative. The sharpness ``β`` sets the scale: above about ``1/β`` the map is the identity
    (an optimiser step moves the value itself by about the learning rate, as for a plain
    parameter), below it is exponential (a step changes the value by a factor, at a relative
    rate of about ``β·lr``). With the default ``β = 1`` a value of 0.01 moves by only ~1 % of the
    learning rate per Adam step; for small quantities such as LISTA's thresholds choose
    ``β`` of the order of ``10/value``.
    Fixed: stored as a float64 buffer, so the value is exact until ``.to()`` casts it (a 0-dim
    float64 tensor does not promote the float32 tensors it multiplies).

    Args:
        value: initial value (> 0), or a sequence of values for a vector of scalars.
        learnable: whether it is an ``nn.Parameter``.
        name: used in error messages.
        beta: the softplus sharpness ``β > 0`` (learnable values only).

    Calling the module returns the value: a 0-dim tensor (or ``(len(value),)``).
    """

    def __init__(self, value: Union[float, Sequence[float], Tensor], learnable: bool = False,
                 name: str = "value", beta: float = 1.0) -> None:
        super().__init__()
        v = _positive(value, name).clone()
        if isinstance(beta, bool) or not isinstance(beta, (int, float)) or not (0 < beta < float("inf")):
            raise ValueError(f"beta: expected a finite number > 0 for {name}, got {beta!r}")
        self.learnable = learnable
        self.beta = float(beta)
        if learnable:
            self.raw = nn.Parameter(inverse_softplus(v, self.beta).to(torch.get_default_dtype()))
        else:
            self.register_buffer("fixed", v)

    def forward(self) -> Tensor:
        if not self.learnable:
            return self.fixed
        # softplus underflows to 0 for β·raw below about -88 (float32): adding the dtype's tiny keeps
        # it strictly positive and changes no representable value above ~1e-30 (an add costs one
        # kernel and a free backward, where clamp_min's backward builds a mask every step)
        return softplus(self.raw, beta=self.beta) + torch.finfo(self.raw.dtype).tiny

    @torch.no_grad()
    def set_(self, value: Union[float, Tensor]) -> "PositiveScalar":
        """Set the value in place (``value > 0``); returns ``self``."""
        v = _positive(value, "value")
        if self.learnable:
            self.raw.copy_(inverse_softplus(v, self.beta).to(self.raw.dtype))
        else:
            self.fixed.copy_(v)
        return self

    @property
    def value(self) -> Tensor:
        return self()

    def extra_repr(self) -> str:
        return f"learnable={self.learnable}" + (f", beta={self.beta:g}" if self.beta != 1.0 else "")
