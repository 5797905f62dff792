"""Proximal operators, projections and regulariser modules.

Conventions
-----------
* Tensors are batched on dim 0: ``x`` has shape ``(B, *shape)``.
* Element-wise operators (thresholds, nonneg, box) act entry by entry.
* Per-sample operators (simplex, l1 / l2 balls, support selection) act on the
  flattened trailing dims of each sample, i.e. on ``x.reshape(B, -1)``;
  :func:`project_rank` acts on the last two dims.
* Thresholds ``thr`` and box bounds ``lo`` / ``hi`` are Python numbers or
  tensors broadcastable to ``x``. Radii are Python numbers, 0-d tensors or
  per-sample tensors with ``B`` elements (shape ``(B,)`` or ``(B, 1, ..., 1)``).
* Complex inputs are supported where it makes sense (thresholds, l1 / l2 balls,
  low rank): the operator acts on the magnitude and keeps the phase. Simplex,
  box and nonneg projections are real-only and raise :class:`TypeError`.
* Everything is differentiable with autograd (almost everywhere), device and
  dtype generic, and never synchronises with the host (no ``.item()``).

The ``Regularizer`` modules wrap these as ``g(x)`` with ``value(x)`` (shape
``(B,)``) and ``prox(x, step) = argmin_z 1/2 ||z - x||^2 + step * g(z)``.
"""

from __future__ import annotations

import math
import numbers
from typing import Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from .parametrize import inverse_softplus

__all__ = [
    "soft_threshold",
    "hard_threshold",
    "soft_threshold_support_selection",
    "project_nonneg",
    "project_box",
    "project_simplex",
    "project_l2_ball",
    "project_l1_ball",
    "project_rank",
    "inverse_softplus",
    "Regularizer",
    "L1",
    "L0",
    "SquaredL2",
    "Indicator",
    "NonNegative",
    "Box",
    "Simplex",
    "L2Ball",
    "L1Ball",
    "LowRank",
]

Scalar = Union[float, int, Tensor]


# --------------------------------------------------------------------------- #
# helpers
# --------------------------------------------------------------------------- #
def _real_dtype(x: Tensor) -> torch.dtype:
    return x.real.dtype if x.is_complex() else x.dtype


def _require_real(x: Tensor, name: str, fn: str) -> None:
    if torch.is_tensor(x) and x.is_complex():
        raise TypeError(f"{fn}: argument `{name}` must be real, got complex dtype {x.dtype}")


def _as_real_param(v: Scalar, x: Tensor, name: str, fn: str) -> Scalar:
    """Python numbers are returned unchanged; tensors are moved to x's device / real dtype."""
    if torch.is_tensor(v):
        _require_real(v, name, fn)
        return v.to(device=x.device, dtype=_real_dtype(x))
    if isinstance(v, numbers.Real):
        return float(v)
    raise TypeError(f"{fn}: argument `{name}` must be a real number or a tensor, got {type(v).__name__}")


def _per_sample_radius(radius: Scalar, x: Tensor, fn: str, strict: bool) -> Scalar:
    """Radius as a Python float or a tensor of shape () / (B, 1) for flattened (B, N) samples."""
    r = _as_real_param(radius, x, "radius", fn)
    if not torch.is_tensor(r):
        bad = (r <= 0) if strict else (r < 0)
        if bad or math.isnan(r):
            rel = ">" if strict else ">="
            raise ValueError(f"{fn}: `radius` must be {rel} 0, got {r}")
        return r
    if r.dim() == 0:
        return r
    B = x.shape[0]
    if r.numel() not in (1, B):
        raise ValueError(
            f"{fn}: `radius` must be a scalar or have one entry per sample (B={B}), "
            f"got shape {tuple(r.shape)}"
        )
    return r.reshape(-1, 1)


def _flatten(x: Tensor, fn: str) -> Tensor:
    if x.dim() < 1:
        raise ValueError(f"{fn}: `x` must have a batch dimension, got a 0-d tensor")
    return x.reshape(x.shape[0], -1)


def _simplex_tau(v: Tensor, r: Scalar) -> Tensor:
    """Threshold tau (B, 1) such that sum(max(v - tau, 0)) = r, for real v of shape (B, N).

    Sort-based algorithm of Held et al. (1974) / Duchi et al. (2008).
    """
    n = v.shape[1]
    u, _ = torch.sort(v, dim=1, descending=True)
    css = torch.cumsum(u, dim=1) - r  # (B, N)
    j = torch.arange(1, n + 1, device=v.device, dtype=v.dtype)
    cond = u * j > css  # u_j - css_j / j > 0
    idx = torch.arange(n, device=v.device).expand_as(cond)
    rho = torch.where(cond, idx, torch.zeros_like(idx)).amax(dim=1, keepdim=True)  # (B, 1)
    return css.gather(1, rho) / (rho + 1).to(v.dtype)


def _sample_scale(flat: Tensor) -> Tensor:
    """max(1, ||x||_inf) per sample, shape (B,)."""
    return flat.abs().amax(dim=1).clamp(min=1.0) if flat.shape[1] > 0 else flat.new_ones(flat.shape[0]).real


# --------------------------------------------------------------------------- #
# thresholds
# --------------------------------------------------------------------------- #
class _SoftThreshold(torch.autograd.Function):
    """Real soft thresholding ``x − clip(x, −thr, thr)`` (two kernels) with a lean backward.

    It saves only its output ``z``: the support is ``z ≠ 0`` and ``sign(x) = sign(z)`` there, so
    ``∂z/∂x = 1{z ≠ 0}`` and ``∂z/∂thr = −sign(z)``, the generalised Jacobian used by implicit
    differentiation. (Autograd through ``clamp`` with tensor bounds would build three masked
    gradients with ``where``; in an unrolled network this is a measurable part of the step.)
    Works under ``torch.func`` transforms (``setup_context``) and ``torch.compile``.
    """

    @staticmethod
    def forward(x: Tensor, thr):
        return x - torch.clamp(x, -thr, thr)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        _, thr = inputs
        ctx.save_for_backward(output)
        ctx.thr_shape = thr.shape if torch.is_tensor(thr) else None

    @staticmethod
    def backward(ctx, grad: Tensor):
        (z,) = ctx.saved_tensors
        grad_x = grad_thr = None
        if ctx.needs_input_grad[0]:
            grad_x = grad * (z != 0)
        if ctx.thr_shape is not None and ctx.needs_input_grad[1]:
            grad_thr = (-(grad * torch.sign(z))).sum_to_size(ctx.thr_shape)
        return grad_x, grad_thr


def soft_threshold(x: Tensor, thr: Scalar) -> Tensor:
    """Soft thresholding, the prox of ``thr * |.|`` (entry-wise).

    Real: ``sign(x) * max(|x| - thr, 0)``; complex: ``x * max(1 - thr / |x|, 0)``
    (0 at ``x = 0``, with finite gradients there).

    Args:
        x: ``(B, *shape)`` real or complex.
        thr: float or real tensor broadcastable to ``x`` (``>= 0``).

    Returns:
        Tensor of the shape and dtype of ``x``.
    """
    thr = _as_real_param(thr, x, "thr", "soft_threshold")
    if not x.is_complex():
        return _SoftThreshold.apply(x, thr)
    mag = x.abs()
    nz = mag > 0
    safe = torch.where(nz, mag, torch.ones_like(mag))
    scale = torch.relu(mag - thr) / safe
    return x * scale


def hard_threshold(x: Tensor, thr: Scalar) -> Tensor:
    """Hard thresholding: ``x`` where ``|x| > thr`` else 0 (entry-wise).

    ``hard_threshold(x, sqrt(2 * c))`` is the prox of ``c * ||.||_0``.

    Args:
        x: ``(B, *shape)`` real or complex.
        thr: float or real tensor broadcastable to ``x``.

    Returns:
        Tensor of the shape and dtype of ``x``; gradients flow through the kept entries.
    """
    thr = _as_real_param(thr, x, "thr", "hard_threshold")
    return torch.where(x.abs() > thr, x, torch.zeros_like(x))


def soft_threshold_support_selection(x: Tensor, thr: Scalar, percent: float) -> Tensor:
    """Soft thresholding with support selection (LISTA-CPSS, Chen et al. 2018; ALISTA, Liu et al. 2019).

    Per sample (flattened trailing dims, ``N`` entries), let ``k = floor(percent / 100 * N)``
    and ``c`` the ``k``-th largest magnitude. Entries with ``|x| >= c`` **and** ``|x| > thr``
    pass through unchanged; all other entries are soft-thresholded by ``thr``.
    ``percent = 0`` gives plain :func:`soft_threshold`, ``percent = 100`` gives
    :func:`hard_threshold`. Ties in magnitude at the cut ``c`` may let more than ``k``
    entries through. The selection mask is not differentiated; gradients flow through
    the values (and through ``thr`` for the shrunk entries).

    Args:
        x: ``(B, *shape)`` real or complex.
        thr: float or real tensor broadcastable to ``x``.
        percent: Python float in ``[0, 100]``.

    Returns:
        Tensor of the shape and dtype of ``x``.
    """
    fn = "soft_threshold_support_selection"
    if isinstance(percent, bool) or not isinstance(percent, numbers.Real) or not (0.0 <= float(percent) <= 100.0):
        raise ValueError(f"{fn}: `percent` must be a number in [0, 100], got {percent!r}")
    st = soft_threshold(x, thr)
    flat = _flatten(x, fn)
    n = flat.shape[1]
    k = min(n, int(math.floor(float(percent) / 100.0 * n + 1e-9)))
    if k <= 0:
        return st
    thr = _as_real_param(thr, x, "thr", fn)
    mag = x.detach().abs()
    cut = torch.topk(mag.reshape(x.shape[0], -1), k, dim=1).values[:, -1]  # (B,)
    cut = cut.reshape((x.shape[0],) + (1,) * (x.dim() - 1))
    thr_d = thr.detach() if torch.is_tensor(thr) else thr
    keep = (mag >= cut) & (mag > thr_d)
    return torch.where(keep, x, st)


# --------------------------------------------------------------------------- #
# projections
# --------------------------------------------------------------------------- #
def project_nonneg(x: Tensor) -> Tensor:
    """Projection onto the nonnegative orthant, ``max(x, 0)`` (entry-wise).

    Args:
        x: ``(B, *shape)`` real.

    Returns:
        Tensor of the shape and dtype of ``x``.

    Raises:
        TypeError: if ``x`` is complex.
    """
    _require_real(x, "x", "project_nonneg")
    return torch.relu(x)


def project_box(x: Tensor, lo: Optional[Scalar], hi: Optional[Scalar]) -> Tensor:
    """Projection onto the box ``{lo <= z <= hi}`` (entry-wise clamp).

    Args:
        x: ``(B, *shape)`` real.
        lo: lower bound, float / real tensor broadcastable to ``x``, or ``None`` (no bound).
        hi: upper bound, float / real tensor broadcastable to ``x``, or ``None`` (no bound).

    Returns:
        Tensor of the shape and dtype of ``x``.

    Raises:
        TypeError: if ``x`` (or a bound) is complex.
        ValueError: if ``lo > hi`` when both are Python numbers (tensor bounds are not
            checked, to avoid a host sync; where ``lo > hi`` the result is ``hi``).
    """
    fn = "project_box"
    _require_real(x, "x", fn)
    if lo is not None:
        lo = _as_real_param(lo, x, "lo", fn)
    if hi is not None:
        hi = _as_real_param(hi, x, "hi", fn)
    if isinstance(lo, float) and isinstance(hi, float) and lo > hi:
        raise ValueError(f"{fn}: `lo` must be <= `hi`, got lo={lo} > hi={hi}")
    if torch.is_tensor(lo) or torch.is_tensor(hi):
        # torch.clamp does not mix Python numbers and tensors
        if lo is not None and not torch.is_tensor(lo):
            lo = torch.as_tensor(lo, dtype=x.dtype, device=x.device)
        if hi is not None and not torch.is_tensor(hi):
            hi = torch.as_tensor(hi, dtype=x.dtype, device=x.device)
    if lo is None and hi is None:
        return x
    return torch.clamp(x, min=lo, max=hi)


def project_simplex(x: Tensor, radius: Scalar = 1.0) -> Tensor:
    """Euclidean projection of each sample onto the simplex ``{z >= 0, sum(z) = radius}``.

    Sort-based algorithm (Held et al. 1974; Duchi et al. 2008), vectorised over the batch,
    ``O(N log N)`` per sample.

    Args:
        x: ``(B, *shape)`` real; each sample is flattened to ``N`` entries.
        radius: ``> 0``; float, 0-d tensor or per-sample tensor with ``B`` entries.

    Returns:
        Tensor of the shape and dtype of ``x``.

    Raises:
        TypeError: if ``x`` is complex.
    """
    fn = "project_simplex"
    _require_real(x, "x", fn)
    flat = _flatten(x, fn)
    r = _per_sample_radius(radius, x, fn, strict=True)
    tau = _simplex_tau(flat, r)
    return torch.relu(flat - tau).reshape(x.shape)


def project_l2_ball(x: Tensor, radius: Scalar = 1.0) -> Tensor:
    """Projection of each sample onto the Euclidean ball ``{||z||_2 <= radius}``.

    Samples outside the ball are rescaled to its boundary, samples inside are unchanged.

    Args:
        x: ``(B, *shape)`` real or complex; norms are over the flattened trailing dims.
        radius: ``>= 0``; float, 0-d tensor or per-sample tensor with ``B`` entries.

    Returns:
        Tensor of the shape and dtype of ``x``.
    """
    fn = "project_l2_ball"
    flat = _flatten(x, fn)
    r = _per_sample_radius(radius, x, fn, strict=False)
    norm = torch.linalg.vector_norm(flat, dim=1, keepdim=True)  # (B, 1) real
    out = norm > r
    safe = torch.where(out, norm, torch.ones_like(norm))
    scale = torch.where(out, r / safe, torch.ones_like(norm))
    return (flat * scale).reshape(x.shape)


def project_l1_ball(x: Tensor, radius: Scalar = 1.0) -> Tensor:
    """Euclidean projection of each sample onto the l1 ball ``{||z||_1 <= radius}``.

    Duchi et al. (2008): identity inside the ball, otherwise ``sign(x) * P_simplex(|x|)``,
    i.e. soft thresholding with a per-sample threshold. Complex entries keep their phase.

    Args:
        x: ``(B, *shape)`` real or complex; each sample is flattened to ``N`` entries.
        radius: ``>= 0``; float, 0-d tensor or per-sample tensor with ``B`` entries.

    Returns:
        Tensor of the shape and dtype of ``x``.
    """
    fn = "project_l1_ball"
    flat = _flatten(x, fn)
    r = _per_sample_radius(radius, x, fn, strict=False)
    mag = flat.abs()
    inside = mag.sum(dim=1, keepdim=True) <= r  # (B, 1)
    tau = torch.relu(_simplex_tau(mag, r))
    shrunk = soft_threshold(flat, tau)
    return torch.where(inside, flat, shrunk).reshape(x.shape)


def project_rank(x: Tensor, rank: int) -> Tensor:
    """Best rank-``rank`` approximation (Frobenius / spectral) of the last two dims.

    Truncated SVD (Eckart-Young) with :func:`torch.linalg.svd`; real or complex.
    Gradients are those of the SVD (well defined for distinct singular values).

    Args:
        x: ``(B, ..., M, N)`` real or complex.
        rank: int ``>= 0``; if ``rank >= min(M, N)``, ``x`` is returned unchanged.

    Returns:
        Tensor of shape ``(B, ..., M, N)`` and the dtype of ``x``.
    """
    fn = "project_rank"
    if isinstance(rank, bool) or not isinstance(rank, numbers.Integral) or rank < 0:
        raise ValueError(f"{fn}: `rank` must be an integer >= 0, got {rank!r}")
    if x.dim() < 2:
        raise ValueError(f"{fn}: `x` must have shape (B, ..., M, N), got {tuple(x.shape)}")
    rank = int(rank)
    if rank >= min(x.shape[-2], x.shape[-1]):
        return x
    U, S, Vh = torch.linalg.svd(x, full_matrices=False)
    return (U[..., :rank] * S[..., None, :rank].to(x.dtype)) @ Vh[..., :rank, :]


# --------------------------------------------------------------------------- #
# regularisers
# --------------------------------------------------------------------------- #
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
    """Regulariser with a positive scalar weight ``lam``.

    Fixed: buffer ``fixed_lam`` (0-d). Learnable: parameter ``raw_lam`` (0-d) with
    ``lam = softplus(raw_lam)``, initialised so that ``lam`` equals the given value.
    """

    def __init__(self, lam: float = 1.0, learnable: bool = False) -> None:
        super().__init__()
        name = type(self).__name__
        if torch.is_tensor(lam):
            if lam.numel() != 1 or lam.is_complex():
                raise ValueError(f"{name}: `lam` must be a real scalar, got shape {tuple(lam.shape)}")
            lam = float(lam.detach().cpu())  # construction time only
        if isinstance(lam, bool) or not isinstance(lam, numbers.Real):
            raise ValueError(f"{name}: `lam` must be a real number, got {lam!r}")
        lam = float(lam)
        if not math.isfinite(lam) or lam < 0 or (learnable and lam == 0):
            req = "> 0 when learnable" if learnable else ">= 0"
            raise ValueError(f"{name}: `lam` must be finite and {req}, got {lam}")
        self.learnable = bool(learnable)
        if self.learnable:
            self.raw_lam = nn.Parameter(inverse_softplus(lam).to(torch.get_default_dtype()))
        else:  # exact until .to() casts it; a 0-dim float64 does not promote float32 data
            self.register_buffer("fixed_lam", torch.tensor(lam, dtype=torch.float64))

    @property
    def lam(self) -> Tensor:
        """The positive weight, a 0-d tensor (differentiable w.r.t. ``raw_lam`` if learnable)."""
        return F.softplus(self.raw_lam) if self.learnable else self.fixed_lam

    def _lam_like(self, x: Tensor) -> Tensor:
        return self.lam.to(device=x.device, dtype=_real_dtype(x))

    def extra_repr(self) -> str:
        return f"learnable={self.learnable}"


class L1(_WeightedRegularizer):
    """``g(x) = lam * ||x||_1`` (per sample); prox is soft thresholding by ``step * lam``.

    Args:
        lam: weight, ``>= 0`` (``> 0`` if learnable).
        learnable: store ``lam`` as ``softplus(raw_lam)`` with ``raw_lam`` an ``nn.Parameter``.

    Shapes: ``value``: ``(B, *shape) -> (B,)``; ``prox``: ``(B, *shape) -> (B, *shape)``.
    """

    def value(self, x: Tensor) -> Tensor:
        """``lam * sum |x|`` per sample: ``(B, *shape) -> (B,)``."""
        return self._lam_like(x) * x.abs().reshape(x.shape[0], -1).sum(dim=1)

    def prox(self, x: Tensor, step: Scalar = 1.0) -> Tensor:
        """``soft_threshold(x, step * lam)``: ``(B, *shape) -> (B, *shape)``."""
        return soft_threshold(x, step * self._lam_like(x))


class L0(_WeightedRegularizer):
    """``g(x) = lam * ||x||_0`` (number of nonzeros per sample); prox is hard thresholding
    by ``sqrt(2 * step * lam)``.

    Args:
        lam: weight, ``>= 0`` (``> 0`` if learnable).
        learnable: store ``lam`` as ``softplus(raw_lam)`` with ``raw_lam`` an ``nn.Parameter``.

    Shapes: ``value``: ``(B, *shape) -> (B,)``; ``prox``: ``(B, *shape) -> (B, *shape)``.
    """

    def value(self, x: Tensor) -> Tensor:
        """``lam * #{x != 0}`` per sample: ``(B, *shape) -> (B,)``."""
        lam = self._lam_like(x)
        return lam * (x != 0).reshape(x.shape[0], -1).sum(dim=1).to(lam.dtype)

    def prox(self, x: Tensor, step: Scalar = 1.0) -> Tensor:
        """``hard_threshold(x, sqrt(2 * step * lam))``: ``(B, *shape) -> (B, *shape)``."""
        return hard_threshold(x, torch.sqrt(2 * step * self._lam_like(x)))


class SquaredL2(_WeightedRegularizer):
    """``g(x) = lam/2 * ||x||_2^2`` (Tikhonov / ridge); prox is the shrinkage ``x / (1 + step * lam)``.

    Args:
        lam: weight, ``>= 0`` (``> 0`` if learnable).
        learnable: store ``lam`` as ``softplus(raw_lam)`` with ``raw_lam`` an ``nn.Parameter``.

    Shapes: ``value``: ``(B, *shape) -> (B,)``; ``prox``: ``(B, *shape) -> (B, *shape)``.
    """

    def value(self, x: Tensor) -> Tensor:
        """``lam/2 * sum |x|^2`` per sample: ``(B, *shape) -> (B,)``."""
        return 0.5 * self._lam_like(x) * x.abs().square().reshape(x.shape[0], -1).sum(dim=1)

    def prox(self, x: Tensor, step: Scalar = 1.0) -> Tensor:
        """``x / (1 + step * lam)``: ``(B, *shape) -> (B, *shape)``."""
        return x / (1 + step * self._lam_like(x))


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
        d = torch.linalg.vector_norm((x - self.project(x)).reshape(x.shape[0], -1), dim=1)
        n = torch.linalg.vector_norm(x.reshape(x.shape[0], -1), dim=1)
        return d <= self.tol * n.clamp(min=1.0)

    def value(self, x: Tensor) -> Tensor:
        """0 where the sample is in ``C``, ``+inf`` otherwise: ``(B, *shape) -> (B,)``."""
        inside = self.contains(x)
        zeros = torch.zeros(x.shape[0], dtype=_real_dtype(x), device=x.device)
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


def _check_radius(v: Scalar, cls: str, strict: bool) -> None:
    if not torch.is_tensor(v):
        if isinstance(v, bool) or not isinstance(v, numbers.Real) or math.isnan(float(v)):
            raise ValueError(f"{cls}: `radius` must be a real number, got {v!r}")
        if (strict and v <= 0) or (not strict and v < 0):
            raise ValueError(f"{cls}: `radius` must be {'>' if strict else '>='} 0, got {v}")


def _radius_b(radius: Tensor, flat: Tensor) -> Tensor:
    """Radius buffer as a (B,) or () tensor in flat's real dtype."""
    r = radius.to(device=flat.device, dtype=_real_dtype(flat))
    return r.reshape(-1) if r.dim() > 0 else r


class NonNegative(Indicator):
    """Indicator of ``{x >= 0}`` (real only). ``project``: ``(B, *shape) -> (B, *shape)``."""

    def project(self, x: Tensor) -> Tensor:
        """``max(x, 0)``: ``(B, *shape) -> (B, *shape)``."""
        return project_nonneg(x)

    def contains(self, x: Tensor) -> Tensor:
        """``min(x) >= -tol * max(1, ||x||_inf)`` per sample: ``(B, *shape) -> (B,)`` bool."""
        _require_real(x, "x", "NonNegative.contains")
        flat = _flatten(x, "NonNegative.contains")
        return (flat >= -self.tol * _sample_scale(flat)[:, None]).all(dim=1)


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
        _require_real(x, "x", "Box.contains")
        s = self.tol * _sample_scale(_flatten(x, "Box.contains")).reshape((-1,) + (1,) * (x.dim() - 1))
        lo = self.lo.to(device=x.device, dtype=x.dtype)
        hi = self.hi.to(device=x.device, dtype=x.dtype)
        ok = (x >= lo - s) & (x <= hi + s)
        return ok.reshape(x.shape[0], -1).all(dim=1)


class Simplex(Indicator):
    """Indicator of the simplex ``{x >= 0, sum(x) = radius}`` per sample (real only).

    Args:
        radius: ``> 0``; float or tensor (scalar or ``(B,)``), stored as a buffer.
        tol: membership tolerance.
    """

    def __init__(self, radius: Scalar = 1.0, tol: float = 1e-6) -> None:
        super().__init__(tol)
        _check_radius(radius, "Simplex", strict=True)
        self.register_buffer("radius", _as_buffer(radius, 1.0))

    def project(self, x: Tensor) -> Tensor:
        """Projection onto the simplex: ``(B, *shape) -> (B, *shape)``."""
        return project_simplex(x, self.radius)

    def contains(self, x: Tensor) -> Tensor:
        """``x >= -tol*s`` and ``|sum(x) - r| <= tol*max(1, r)``: ``(B, *shape) -> (B,)`` bool."""
        _require_real(x, "x", "Simplex.contains")
        flat = _flatten(x, "Simplex.contains")
        r = _radius_b(self.radius, flat)
        nonneg = (flat >= -self.tol * _sample_scale(flat)[:, None]).all(dim=1)
        tot = (flat.sum(dim=1) - r).abs() <= self.tol * torch.clamp(r, min=1.0)
        return nonneg & tot


class L2Ball(Indicator):
    """Indicator of the Euclidean ball ``{||x||_2 <= radius}`` per sample (real or complex).

    Args:
        radius: ``>= 0``; float or tensor (scalar or ``(B,)``), stored as a buffer.
        tol: membership tolerance.
    """

    def __init__(self, radius: Scalar = 1.0, tol: float = 1e-6) -> None:
        super().__init__(tol)
        _check_radius(radius, "L2Ball", strict=False)
        self.register_buffer("radius", _as_buffer(radius, 1.0))

    def project(self, x: Tensor) -> Tensor:
        """Radial projection onto the ball: ``(B, *shape) -> (B, *shape)``."""
        return project_l2_ball(x, self.radius)

    def contains(self, x: Tensor) -> Tensor:
        """``||x||_2 <= r + tol*max(1, r)``: ``(B, *shape) -> (B,)`` bool."""
        flat = _flatten(x, "L2Ball.contains")
        r = _radius_b(self.radius, flat)
        return torch.linalg.vector_norm(flat, dim=1) <= r + self.tol * torch.clamp(r, min=1.0)


class L1Ball(Indicator):
    """Indicator of the l1 ball ``{||x||_1 <= radius}`` per sample (real or complex).

    Args:
        radius: ``>= 0``; float or tensor (scalar or ``(B,)``), stored as a buffer.
        tol: membership tolerance.
    """

    def __init__(self, radius: Scalar = 1.0, tol: float = 1e-6) -> None:
        super().__init__(tol)
        _check_radius(radius, "L1Ball", strict=False)
        self.register_buffer("radius", _as_buffer(radius, 1.0))

    def project(self, x: Tensor) -> Tensor:
        """Projection onto the l1 ball: ``(B, *shape) -> (B, *shape)``."""
        return project_l1_ball(x, self.radius)

    def contains(self, x: Tensor) -> Tensor:
        """``||x||_1 <= r + tol*max(1, r)``: ``(B, *shape) -> (B,)`` bool."""
        flat = _flatten(x, "L1Ball.contains")
        r = _radius_b(self.radius, flat)
        return flat.abs().sum(dim=1) <= r + self.tol * torch.clamp(r, min=1.0)


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
        return ok.reshape(x.shape[0], -1).all(dim=1)

    def extra_repr(self) -> str:
        return f"rank={self.rank}, tol={self.tol}"
