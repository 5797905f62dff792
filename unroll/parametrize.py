"""Learnable quantities kept in their domain by a parametrisation: positive scalars (softplus),
penalties on a log scale, weights on the simplex (softmax) or in [0, 1] (sigmoid).

Each one stores an unconstrained parameter ``raw`` and maps it into the domain when called, so
no optimiser step can leave the domain; building one from a value outside the domain is an
error that names the argument.
"""

from __future__ import annotations

from typing import Sequence, Union

import torch
from torch import Tensor, nn
from torch.nn.functional import softplus

__all__ = ["PositiveScalar", "inverse_softplus", "LogScale", "SimplexWeights", "UnitWeights"]


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


def _as_float_tensor(value, name: str) -> Tensor:
    if isinstance(value, Tensor):
        v = value.detach()
        if not v.is_floating_point():
            v = v.to(torch.get_default_dtype())
        return v.clone()
    try:
        return torch.as_tensor(value, dtype=torch.get_default_dtype())
    except (TypeError, ValueError, RuntimeError):
        raise TypeError(f"{name}: expected a number, a sequence of numbers or a tensor, got {type(value).__name__}") from None


class LogScale(nn.Module):
    """A positive hyperparameter (a penalty ``λ``, ``α``, one per feature…) on a log scale:
    stored as ``raw = log λ`` and returned as ``exp(raw)``. A gradient step on ``raw`` changes
    ``λ`` by a factor, which suits penalties spanning decades; the gradient w.r.t. ``raw`` is
    ``λ·∂F/∂λ``.

    Args:
        value: the initial value(s) ``> 0``: a number, a sequence or a tensor of any shape
            (``()``, ``(d,)`` per feature…); the dtype and device of a tensor are kept.
        name: used in error messages.
        learnable: whether ``raw`` is an ``nn.Parameter`` (else a buffer).

    Calling the module returns ``λ``, shaped like ``value``.
    """

    def __init__(self, value: Union[float, Sequence[float], Tensor], name: str = "value",
                 learnable: bool = True) -> None:
        super().__init__()
        self.name = name
        v = self._check(_as_float_tensor(value, name))
        raw = v.log()
        if learnable:
            self.raw = nn.Parameter(raw)
        else:
            self.register_buffer("raw", raw)

    def _check(self, v: Tensor) -> Tensor:
        if v.numel() == 0 or not torch.isfinite(v).all() or (v <= 0).any():
            bad = v[~(torch.isfinite(v) & (v > 0))] if v.numel() else v
            raise ValueError(f"{self.name}: expected finite values > 0 (a log-scale parametrisation), got "
                             f"{bad.flatten()[:4].tolist()}{' among others' if bad.numel() > 4 else ''}"
                             f"{' (empty)' if v.numel() == 0 else ''}")
        return v

    def forward(self) -> Tensor:
        return self.raw.exp()

    @property
    def value(self) -> Tensor:
        return self()

    @torch.no_grad()
    def set_(self, value) -> "LogScale":
        """Set the value in place (``> 0``, shaped like the current one); returns ``self``."""
        v = self._check(_as_float_tensor(value, self.name)).to(self.raw)
        self.raw.copy_(v.log().expand_as(self.raw))
        return self

    def extra_repr(self) -> str:
        return f"name={self.name!r}, shape={tuple(self.raw.shape)}"


class SimplexWeights(nn.Module):
    """Non-negative weights with a fixed total (per-sample weights, mixture weights):
    ``w = total · softmax(raw)``, so ``w ≥ 0`` (strictly, for finite ``raw``) and ``Σw = total``.
    With ``total = n`` (the default) the uniform start is ``w = 1`` for every sample, the
    unweighted problem.

    Args:
        value: the initial weights ``(n,)``, all ``> 0`` (softmax cannot represent a zero), or an
            int ``n`` for uniform weights.
        total: the sum of the weights (default: ``n``, or the sum of ``value``'s weights).
        name: used in error messages.
    """

    def __init__(self, value: Union[int, Sequence[float], Tensor], total: Union[float, None] = None,
                 name: str = "weights") -> None:
        super().__init__()
        self.name = name
        if isinstance(value, int) and not isinstance(value, bool):
            if value < 1:
                raise ValueError(f"{name}: expected a number of weights >= 1, got {value}")
            value = torch.ones(value, dtype=torch.get_default_dtype())
        v = _as_float_tensor(value, name)
        if v.dim() != 1 or v.numel() == 0:
            raise ValueError(f"{name}: expected a (n,) vector of weights, got shape {tuple(v.shape)}")
        if not torch.isfinite(v).all() or (v <= 0).any():
            raise ValueError(f"{name}: expected finite weights > 0 (a softmax parametrisation cannot reach 0), "
                             f"got min {float(v.min()):g}")
        t = float(v.sum()) if total is None else total
        if not (isinstance(t, (int, float)) and 0 < t < float("inf")):
            raise ValueError(f"total: expected a finite number > 0, got {total!r}")
        self.total = float(t)
        self.raw = nn.Parameter(v.log() - v.log().mean())

    def forward(self) -> Tensor:
        return self.total * torch.softmax(self.raw, dim=0)

    @property
    def value(self) -> Tensor:
        return self()

    def extra_repr(self) -> str:
        return f"n={self.raw.shape[0]}, total={self.total:g}"


class UnitWeights(nn.Module):
    """Weights in ``(0, 1)`` each on its own (per-sample weights of data hyper-cleaning):
    ``w = sigmoid(raw)``; a weight near 0 drops its sample, near 1 keeps it.

    Args:
        value: the initial weights, each in ``(0, 1)`` (e.g. ``0.5``), any shape, or an int ``n``
            for ``n`` weights of 0.5.
        name: used in error messages.
    """

    def __init__(self, value: Union[int, float, Sequence[float], Tensor], name: str = "weights") -> None:
        super().__init__()
        self.name = name
        if isinstance(value, int) and not isinstance(value, bool):
            if value < 1:
                raise ValueError(f"{name}: expected a number of weights >= 1, got {value}")
            value = torch.full((value,), 0.5, dtype=torch.get_default_dtype())
        v = _as_float_tensor(value, name)
        if not torch.isfinite(v).all() or (v <= 0).any() or (v >= 1).any():
            raise ValueError(f"{name}: expected weights strictly inside (0, 1) (a sigmoid parametrisation), got "
                             f"min {float(v.min()):g}, max {float(v.max()):g}")
        self.raw = nn.Parameter(torch.logit(v))

    def forward(self) -> Tensor:
        return torch.sigmoid(self.raw)

    @property
    def value(self) -> Tensor:
        return self()

    def extra_repr(self) -> str:
        return f"shape={tuple(self.raw.shape)}"
