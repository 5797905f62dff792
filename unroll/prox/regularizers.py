"""Regulariser modules ``g`` with ``value(x) → (B,)`` and ``prox(x, step)``.

``prox(x, step) = argmin_z ½‖z − x‖² + step·g(z)``; any module with the same ``prox``
signature (a learned proximal network) takes a regulariser's place in the steps.

Weights are hyperparameters that stay tensors: ``L1(lam)`` with a tensor ``lam`` that requires
grad keeps its graph (bilevel methods differentiate through it), and a ``lam`` of shape
broadcastable to a sample (``(n,)``: one weight per feature) or to the batch (``(B, 1)``: one
per sample) weights entries or samples separately.
"""

from __future__ import annotations

import math
import numbers
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..batched import batch_norm, broadcasts_to, flat
from ..parametrize import inverse_softplus
from .functional import (Scalar, hard_threshold, project_box, project_l1_ball, project_l2_ball, project_nonneg,
                         project_rank, project_simplex, real_dtype, require_real, sample_scale, soft_threshold)

__all__ = ["Regularizer", "L1", "L0", "SquaredL2", "ElasticNet", "Indicator", "NonNegative", "Box", "Simplex", "L2Ball", "L1Ball",
           "LowRank"]


class Regularizer(nn.Module):
    """Base class for a (possibly non-smooth) regulariser ``g``.

    Subclasses implement ``value(x)`` (shape ``(B,)``, per-sample ``g(x)`` including any
    weight) and ``prox(x, step)``. Calling the module is the same as ``prox``.
    """

    def value(self, x: Tensor) -> Tensor:
        """Per-sample value ``g(x)``: ``x`` of shape ``(B, *shape)`` -> ``(B,)``."""
        raise NotImplementedError(f"{type(self).__name__} must implement value(x)")

    def prox(self, x: Tensor, step: Scalar = 1.0) -> Tensor:
        """``prox_{step * g}(x) = argmin_z 1/2 ||z - x||^2 + step * g(z)``.

        Args:
            x: ``(B, *shape)``.
            step: float or tensor broadcastable to ``x`` (e.g. ``()`` or ``(B, 1, ...)``).

        Returns:
            Tensor of the shape of ``x``.
        """
        raise NotImplementedError(f"{type(self).__name__} must implement prox(x, step)")

    def forward(self, x: Tensor, step: Scalar = 1.0) -> Tensor:
        """Alias for :meth:`prox`: ``(B, *shape) -> (B, *shape)``."""
        return self.prox(x, step)


class _WeightedRegularizer(Regularizer):
    """Regulariser with a non-negative weight ``lam``.

    * A number: fixed, a float64 buffer ``fixed_lam`` (0-d), exact until ``.to()`` casts it.
    * ``learnable=True``: the parameter ``raw_lam`` with ``lam = softplus(raw_lam)`` (positive).
    * A tensor: a hyperparameter that keeps its graph when it requires grad (it is used as
      given, so gradients reach whatever it was computed from), or a buffer when it does not.
      Its shape must broadcast against the samples ``(B, *shape)``: ``()``, ``(n,)`` per
      feature, ``(B, 1)`` per sample.
    """

    def __init__(self, lam: Scalar = 1.0, learnable: bool = False) -> None:
        super().__init__()
        name = type(self).__name__
        self.learnable = bool(learnable)
        self.hyper: Optional[Tensor] = None
        if torch.is_tensor(lam) and (lam.numel() != 1 or lam.requires_grad):
            if lam.is_complex() or not lam.is_floating_point():
                raise ValueError(f"{name}: `lam` must be a real floating tensor, got dtype {lam.dtype}")
            if learnable:
                raise ValueError(f"{name}: `learnable` takes a number as `lam`; a tensor `lam` is a hyperparameter "
                                 "already (pass learnable=False and keep the tensor's graph)")
            with torch.no_grad():
                if not bool(torch.isfinite(lam).all()) or bool((lam < 0).any()):
                    raise ValueError(f"{name}: `lam` must be finite and >= 0, got {lam.detach().cpu()}")
            if lam.requires_grad:
                self.hyper = lam  # a plain attribute: not a buffer, so its graph is kept
            else:
                self.register_buffer("fixed_lam", lam.detach().clone())
            return
        if torch.is_tensor(lam):
            lam = float(lam.detach().cpu())  # a 1-element constant: construction time only
        if isinstance(lam, bool) or not isinstance(lam, numbers.Real):
            raise ValueError(f"{name}: `lam` must be a real number or tensor, got {lam!r}")
        lam = float(lam)
        if not math.isfinite(lam) or lam < 0 or (learnable and lam == 0):
            req = "> 0 when learnable" if learnable else ">= 0"
            raise ValueError(f"{name}: `lam` must be finite and {req}, got {lam}")
        if self.learnable:
            self.raw_lam = nn.Parameter(inverse_softplus(lam).to(torch.get_default_dtype()))
        else:
            self.register_buffer("fixed_lam", torch.tensor(lam, dtype=torch.float64))

    @property
    def lam(self) -> Tensor:
        """The weight: a tensor (differentiable w.r.t. ``raw_lam`` if learnable, w.r.t. the given
        tensor's graph if it is a hyperparameter)."""
        if self.hyper is not None:
            return self.hyper
        return F.softplus(self.raw_lam) if self.learnable else self.fixed_lam

    def _lam_like(self, x: Tensor) -> Tensor:
        lam = self.lam
        if lam.dim() > 0 and not broadcasts_to(lam.shape, x.shape):
            raise ValueError(f"{type(self).__name__}: `lam` of shape {tuple(lam.shape)} does not broadcast "
                             f"against x of shape {tuple(x.shape)} (expected (), a sample's shape for one "
                             "weight per entry, or (B, 1, ...) for one per sample)")
        return lam.to(device=x.device, dtype=real_dtype(x))

    def _weighted_sum(self, x: Tensor, entries: Tensor) -> Tensor:
        """``Σ lam·entries`` per sample ``(B,)`` (``entries`` of the shape of ``x``)."""
        lam = self._lam_like(x)
        if lam.dim() == 0:
            return lam * flat(entries).sum(dim=1)
        return flat(lam * entries).sum(dim=1)

    def extra_repr(self) -> str:
        return "hyperparameter tensor" if self.hyper is not None else f"learnable={self.learnable}"


class L1(_WeightedRegularizer):
    """``g(x) = Σ lam·|x|`` (per sample); prox is soft thresholding by ``step * lam``.

    Args:
        lam: weight, ``>= 0`` (``> 0`` if learnable): a number, or a tensor (see
            :class:`_WeightedRegularizer`: a hyperparameter keeping its graph, per feature or
            per sample).
        learnable: store ``lam`` as ``softplus(raw_lam)`` with ``raw_lam`` an ``nn.Parameter``.

    Shapes: ``value``: ``(B, *shape) -> (B,)``; ``prox``: ``(B, *shape) -> (B, *shape)``.
    """

    def value(self, x: Tensor) -> Tensor:
        """``Σ lam·|x|`` per sample: ``(B, *shape) -> (B,)``."""
        return self._weighted_sum(x, x.abs())

    def prox(self, x: Tensor, step: Scalar = 1.0) -> Tensor:
        """``soft_threshold(x, step * lam)``: ``(B, *shape) -> (B, *shape)``."""
        return soft_threshold(x, step * self._lam_like(x))


class L0(_WeightedRegularizer):
    """``g(x) = Σ lam·[x ≠ 0]`` (number of nonzeros per sample); prox is hard thresholding
    by ``sqrt(2 * step * lam)``.

    Args: as :class:`L1`.

    Shapes: ``value``: ``(B, *shape) -> (B,)``; ``prox``: ``(B, *shape) -> (B, *shape)``.
    """

    def value(self, x: Tensor) -> Tensor:
        """``lam * #{x != 0}`` per sample: ``(B, *shape) -> (B,)``."""
        return self._weighted_sum(x, (x != 0).to(real_dtype(x)))

    def prox(self, x: Tensor, step: Scalar = 1.0) -> Tensor:
        """``hard_threshold(x, sqrt(2 * step * lam))``: ``(B, *shape) -> (B, *shape)``."""
        return hard_threshold(x, torch.sqrt(2 * step * self._lam_like(x)))


class SquaredL2(_WeightedRegularizer):
    """``g(x) = Σ lam/2·|x|²`` (Tikhonov / ridge); prox is the shrinkage ``x / (1 + step * lam)``.

    Args: as :class:`L1`.

    Shapes: ``value``: ``(B, *shape) -> (B,)``; ``prox``: ``(B, *shape) -> (B, *shape)``.
    """

    def value(self, x: Tensor) -> Tensor:
        """``lam/2 * sum |x|^2`` per sample: ``(B, *shape) -> (B,)``."""
        return 0.5 * self._weighted_sum(x, x.abs().square())

    def prox(self, x: Tensor, step: Scalar = 1.0) -> Tensor:
        """``x / (1 + step * lam)``: ``(B, *shape) -> (B, *shape)``."""
        return x / (1 + step * self._lam_like(x))


class ElasticNet(Regularizer):
    """``g(x) = Σ l1·|x| + Σ l2/2·|x|²``; prox is soft thresholding by ``step·l1`` then the
    shrinkage ``1/(1 + step·l2)``.

    Args:
        l1, l2: the two weights, as for :class:`L1` and :class:`SquaredL2` (numbers, tensors that
            keep their graph, per feature or per sample).
        learnable: learn both (softplus parametrisations).

    Shapes: ``value``: ``(B, *shape) -> (B,)``; ``prox``: ``(B, *shape) -> (B, *shape)``.
    """

    def __init__(self, l1: Scalar = 1.0, l2: Scalar = 1.0, learnable: bool = False) -> None:
        super().__init__()
        self.l1 = L1(l1, learnable=learnable)
        self.l2 = SquaredL2(l2, learnable=learnable)

    def value(self, x: Tensor) -> Tensor:
        """``Σ l1·|x| + Σ l2/2·|x|²`` per sample: ``(B, *shape) -> (B,)``."""
        return self.l1.value(x) + self.l2.value(x)

    def prox(self, x: Tensor, step: Scalar = 1.0) -> Tensor:
        """``soft_threshold(x, step·l1) / (1 + step·l2)``: ``(B, *shape) -> (B, *shape)``."""
        return self.l2.prox(self.l1.prox(x, step), step)


class Indicator(Regularizer):
    """Indicator of a closed convex set ``C``: 0 on ``C``, ``+inf`` outside.

    Subclasses implement ``project(x)`` and ``contains(x)``. ``prox(x, step)`` is the
    projection (``step`` is ignored). Membership is tested with tolerance ``tol``
    (relative to ``max(1, scale)`` of the data / set).

    Args:
        tol: membership tolerance (default ``1e-6``).
    """

    def __init__(self, tol: float = 1e-6) -> None:
        super().__init__()
        self.tol = float(tol)

    def project(self, x: Tensor) -> Tensor:
        """Euclidean projection onto ``C``: ``(B, *shape) -> (B, *shape)``."""
        raise NotImplementedError(f"{type(self).__name__} must implement project(x)")

    def contains(self, x: Tensor) -> Tensor:
        """Membership per sample: ``(B, *shape) -> (B,)`` bool.

        Default: ``||x - P(x)||_2 <= tol * max(1, ||x||_2)`` per sample.
        """
        return batch_norm(x - self.project(x)) <= self.tol * batch_norm(x).clamp(min=1.0)

    def value(self, x: Tensor) -> Tensor:
        """0 where the sample is in ``C``, ``+inf`` otherwise: ``(B, *shape) -> (B,)``."""
        inside = self.contains(x)
        zeros = torch.zeros(x.shape[0], dtype=real_dtype(x), device=x.device)
        return zeros.masked_fill(~inside, float("inf"))

    def prox(self, x: Tensor, step: Scalar = 1.0) -> Tensor:
        """Projection onto ``C`` (``step`` ignored): ``(B, *shape) -> (B, *shape)``."""
        return self.project(x)

    def extra_repr(self) -> str:
        return f"tol={self.tol}"


def _as_buffer(v: Optional[Scalar], default: float) -> Tensor:
    if v is None:
        return torch.tensor(default, dtype=torch.get_default_dtype())
    if torch.is_tensor(v):
        return v.detach().clone()
    return torch.tensor(float(v), dtype=torch.get_default_dtype())


class NonNegative(Indicator):
    """Indicator of ``{x >= 0}`` (real only). ``project``: ``(B, *shape) -> (B, *shape)``."""

    def project(self, x: Tensor) -> Tensor:
        """``max(x, 0)``: ``(B, *shape) -> (B, *shape)``."""
        return project_nonneg(x)

    def contains(self, x: Tensor) -> Tensor:
        """``min(x) >= -tol * max(1, ||x||_inf)`` per sample: ``(B, *shape) -> (B,)`` bool."""
        require_real(x, "x", "NonNegative.contains")
        f = flat(x)
        return (f >= -self.tol * sample_scale(f)[:, None]).all(dim=1)


class Box(Indicator):
    """Indicator of the box ``{lo <= x <= hi}`` (real only).

    Args:
        lo, hi: floats, ``None`` (unbounded) or tensors broadcastable to ``x``; stored as
            buffers. ``lo > hi`` raises ``ValueError`` for Python numbers.
        tol: membership tolerance.
    """

    def __init__(self, lo: Optional[Scalar], hi: Optional[Scalar], tol: float = 1e-6) -> None:
        super().__init__(tol)
        for name, v in (("lo", lo), ("hi", hi)):
            if torch.is_tensor(v) and v.is_complex():
                raise TypeError(f"Box: argument `{name}` must be real, got complex dtype {v.dtype}")
        if isinstance(lo, numbers.Real) and isinstance(hi, numbers.Real) and lo > hi:
            raise ValueError(f"Box: `lo` must be <= `hi`, got lo={lo} > hi={hi}")
        self.register_buffer("lo", _as_buffer(lo, -math.inf))
        self.register_buffer("hi", _as_buffer(hi, math.inf))

    def project(self, x: Tensor) -> Tensor:
        """Clamp to ``[lo, hi]``: ``(B, *shape) -> (B, *shape)``."""
        return project_box(x, self.lo, self.hi)

    def contains(self, x: Tensor) -> Tensor:
        """``lo - tol*s <= x <= hi + tol*s`` entry-wise, ``s = max(1, ||x||_inf)``: ``(B,)`` bool."""
        require_real(x, "x", "Box.contains")
        s = self.tol * sample_scale(flat(x)).reshape((-1,) + (1,) * (x.dim() - 1))
        lo = self.lo.to(device=x.device, dtype=x.dtype)
        hi = self.hi.to(device=x.device, dtype=x.dtype)
        return flat((x >= lo - s) & (x <= hi + s)).all(dim=1)


class _RadiusSet(Indicator):
    """A per-sample set of a given radius (simplex, balls): the radius is a buffer (a number,
    0-d or ``(B,)`` tensor), ``project`` is the set's projection function with it, and
    ``contains`` compares a per-sample measure of ``x`` with it."""

    #: the projection ``(x, radius) → x``
    projection: Callable[[Tensor, Scalar], Tensor]
    #: whether the radius must be > 0 (else >= 0)
    strict: bool = False

    def __init__(self, radius: Scalar = 1.0, tol: float = 1e-6) -> None:
        super().__init__(tol)
        name = type(self).__name__
        if not torch.is_tensor(radius):
            if isinstance(radius, bool) or not isinstance(radius, numbers.Real) or math.isnan(float(radius)):
                raise ValueError(f"{name}: `radius` must be a real number, got {radius!r}")
            if (self.strict and radius <= 0) or (not self.strict and radius < 0):
                raise ValueError(f"{name}: `radius` must be {'>' if self.strict else '>='} 0, got {radius}")
        self.register_buffer("radius", _as_buffer(radius, 1.0))

    def project(self, x: Tensor) -> Tensor:
        """Projection onto the set: ``(B, *shape) -> (B, *shape)``."""
        return type(self).projection(x, self.radius)

    def _radius_for(self, f: Tensor) -> Tensor:
        """The radius as a ``(B,)`` or ``()`` tensor in ``f``'s real dtype and device."""
        r = self.radius.to(device=f.device, dtype=real_dtype(f))
        return r.reshape(-1) if r.dim() > 0 else r

    def _slack(self, r: Tensor) -> Tensor:
        return self.tol * torch.clamp(r, min=1.0)


class Simplex(_RadiusSet):
    """Indicator of the simplex ``{x >= 0, sum(x) = radius}`` per sample (real only).

    Args:
        radius: ``> 0``; float or tensor (scalar or ``(B,)``), stored as a buffer.
        tol: membership tolerance.
    """

    projection = staticmethod(project_simplex)
    strict = True

    def contains(self, x: Tensor) -> Tensor:
        """``x >= -tol*s`` and ``|sum(x) - r| <= tol*max(1, r)``: ``(B, *shape) -> (B,)`` bool."""
        require_real(x, "x", "Simplex.contains")
        f = flat(x)
        r = self._radius_for(f)
        nonneg = (f >= -self.tol * sample_scale(f)[:, None]).all(dim=1)
        return nonneg & ((f.sum(dim=1) - r).abs() <= self._slack(r))


class L2Ball(_RadiusSet):
    """Indicator of the Euclidean ball ``{||x||_2 <= radius}`` per sample (real or complex).

    Args:
        radius: ``>= 0``; float or tensor (scalar or ``(B,)``), stored as a buffer.
        tol: membership tolerance.
    """

    projection = staticmethod(project_l2_ball)

    def contains(self, x: Tensor) -> Tensor:
        """``||x||_2 <= r + tol*max(1, r)``: ``(B, *shape) -> (B,)`` bool."""
        f = flat(x)
        r = self._radius_for(f)
        return torch.linalg.vector_norm(f, dim=1) <= r + self._slack(r)


class L1Ball(_RadiusSet):
    """Indicator of the l1 ball ``{||x||_1 <= radius}`` per sample (real or complex).

    Args:
        radius: ``>= 0``; float or tensor (scalar or ``(B,)``), stored as a buffer.
        tol: membership tolerance.
    """

    projection = staticmethod(project_l1_ball)

    def contains(self, x: Tensor) -> Tensor:
        """``||x||_1 <= r + tol*max(1, r)``: ``(B, *shape) -> (B,)`` bool."""
        f = flat(x)
        r = self._radius_for(f)
        return f.abs().sum(dim=1) <= r + self._slack(r)


class LowRank(Indicator):
    """Indicator of ``{rank(X) <= rank}`` on the last two dims (non-convex; the prox is
    still the projection, a truncated SVD). Real or complex.

    Args:
        rank: int ``>= 0``.
        tol: singular values ``<= tol * max(1, sigma_max)`` count as zero.

    Shapes: ``x`` is ``(B, ..., M, N)``; ``contains`` / ``value`` return ``(B,)``.
    """

    def __init__(self, rank: int, tol: float = 1e-6) -> None:
        super().__init__(tol)
        if isinstance(rank, bool) or not isinstance(rank, numbers.Integral) or rank < 0:
            raise ValueError(f"LowRank: `rank` must be an integer >= 0, got {rank!r}")
        self.rank = int(rank)

    def project(self, x: Tensor) -> Tensor:
        """Truncated SVD: ``(B, ..., M, N) -> (B, ..., M, N)``."""
        return project_rank(x, self.rank)

    def contains(self, x: Tensor) -> Tensor:
        """All matrices of the sample have ``sigma_{rank+1} <= tol * max(1, sigma_1)``: ``(B,)`` bool."""
        if x.dim() < 3:
            raise ValueError(f"LowRank.contains: `x` must have shape (B, ..., M, N), got {tuple(x.shape)}")
        if self.rank >= min(x.shape[-2], x.shape[-1]):
            return torch.ones(x.shape[0], dtype=torch.bool, device=x.device)
        s = torch.linalg.svdvals(x)  # (B, ..., K), descending
        ok = s[..., self.rank] <= self.tol * s[..., 0].clamp(min=1.0)
        return flat(ok).all(dim=1)

    def extra_repr(self) -> str:
        return f"rank={self.rank}, tol={self.tol}"
