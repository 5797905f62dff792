"""Proximal operators and projections as pure functions.

Conventions
-----------
* Tensors are batched on dim 0: ``x`` has shape ``(B, *shape)`` (any ``B``, 0 included).
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
* Everything is differentiable with autograd (almost everywhere), including with respect to
  tensor thresholds and radii (hyperparameters keep their graph), device and dtype generic,
  and never synchronises with the host (no ``.item()``).
"""

from __future__ import annotations

import math
import numbers
from typing import Optional, Union

import torch
from torch import Tensor

from ..batched import flat as batch_flat

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
    "Scalar",
    "real_dtype",
    "require_real",
    "as_real_param",
    "per_sample_radius",
    "flatten_samples",
    "sample_scale",
]

Scalar = Union[float, int, Tensor]


# --------------------------------------------------------------------------- #
# helpers
# --------------------------------------------------------------------------- #
def real_dtype(x: Tensor) -> torch.dtype:
    """The real dtype of ``x`` (``float32`` for ``complex64``)."""
    return x.real.dtype if x.is_complex() else x.dtype


def require_real(x: Tensor, name: str, fn: str) -> None:
    """``TypeError`` naming ``fn`` and ``name`` if ``x`` is a complex tensor."""
    if torch.is_tensor(x) and x.is_complex():
        raise TypeError(f"{fn}: argument `{name}` must be real, got complex dtype {x.dtype}")


def as_real_param(v: Scalar, x: Tensor, name: str, fn: str) -> Scalar:
    """Python numbers are returned unchanged; tensors are moved to x's device / real dtype."""
    if torch.is_tensor(v):
        require_real(v, name, fn)
        return v.to(device=x.device, dtype=real_dtype(x))
    if isinstance(v, numbers.Real):
        return float(v)
    raise TypeError(f"{fn}: argument `{name}` must be a real number or a tensor, got {type(v).__name__}")


def per_sample_radius(radius: Scalar, x: Tensor, fn: str, strict: bool) -> Scalar:
    """Radius as a Python float or a tensor of shape () / (B, 1) for flattened (B, N) samples."""
    r = as_real_param(radius, x, "radius", fn)
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


def flatten_samples(x: Tensor, fn: str) -> Tensor:
    """``(B, *shape) → (B, N)`` (``B = 0`` included); a 0-d ``x`` is an error naming ``fn``."""
    if x.dim() < 1:
        raise ValueError(f"{fn}: `x` must have a batch dimension, got a 0-d tensor")
    return batch_flat(x)


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


def sample_scale(flat: Tensor) -> Tensor:
    """max(1, ||x||_inf) per sample, shape (B,)."""
    return flat.abs().amax(dim=1).clamp(min=1.0) if flat.shape[1] > 0 else flat.new_ones(flat.shape[0]).real


# --------------------------------------------------------------------------- #
# thresholds
# --------------------------------------------------------------------------- #
def _clip(x: Tensor, thr, inplace: bool) -> Tensor:
    """``clip(x, −thr, thr)``. A tensor ``thr`` goes through ``clamp_min``/``clamp_max``: on the
    CPU ``torch.clamp`` with tensor bounds takes a non-vectorised three-operand path, about 3×
    the two one-bound kernels (measured on a (64, 500) float32 batch, one thread: 58 against
    20 µs), same values bit for bit."""
    if not torch.is_tensor(thr):
        return torch.clamp(x, -thr, thr)
    c = x.clamp_min(-thr)
    return c.clamp_max_(thr) if inplace else c.clamp_max(thr)


def _soft_threshold_backward(ctx, grad: Tensor, inplace: bool):
    """``∂z/∂x = 1{z ≠ 0} = sign(z)²`` and ``∂z/∂thr = −sign(z)``, from the saved output ``z``.

    Both from one ``sign(z)``: ``g·s`` is reduced for ``thr`` and multiplied by ``s`` once more
    for ``x`` (``s² `` is the support mask). ``inplace`` reuses the intermediates (plain eager
    autograd only: in-place updates are not for ``torch.func`` transforms, where ``grad`` may
    be batched and ``z`` not)."""
    (z,) = ctx.saved_tensors
    need_x = ctx.needs_input_grad[0]
    need_thr = ctx.thr_shape is not None and ctx.needs_input_grad[1]
    if not (need_x or need_thr):
        return None, None
    s = torch.sign(z)
    if not need_thr:
        return (s.mul_(s).mul_(grad) if inplace else grad * (s * s)), None
    gs = grad * s
    grad_thr = gs.sum_to_size(ctx.thr_shape).neg()  # negate the reduced sum
    if not need_x:
        return None, grad_thr
    return (gs.mul_(s) if inplace else gs * s), grad_thr


class _SoftThreshold(torch.autograd.Function):
    """Real soft thresholding ``x − clip(x, −thr, thr)`` with a lean backward.

    It saves only its output ``z``: the support is ``z ≠ 0`` and ``sign(x) = sign(z)`` there, so
    ``∂z/∂x = 1{z ≠ 0}`` and ``∂z/∂thr = −sign(z)``, the generalised Jacobian used by implicit
    differentiation. (Autograd through ``clamp`` with tensor bounds would build three masked
    gradients with ``where``; in an unrolled network this is a measurable part of the step.)
    Works under ``torch.func`` transforms (``setup_context``; ``vmap`` by the generated rule)
    and ``torch.compile``.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(x: Tensor, thr):
        return x - _clip(x, thr, inplace=False)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        _, thr = inputs
        ctx.save_for_backward(output)
        ctx.thr_shape = thr.shape if torch.is_tensor(thr) else None

    @staticmethod
    def backward(ctx, grad: Tensor):
        return _soft_threshold_backward(ctx, grad, inplace=False)


class _SoftThresholdEager(torch.autograd.Function):
    """:class:`_SoftThreshold` in the classic form (``forward(ctx, …)``), used in plain eager
    autograd: ``Function.apply`` binds a new-style function's arguments with
    ``inspect.signature`` on every call (about 4 % of an unrolled training step, measured by
    ``benchmarks/overhead.py``); the classic form skips that, and its forward and backward
    reuse their intermediates in place. ``torch.func`` transforms and ``torch.compile`` get
    the new-style one."""

    @staticmethod
    def forward(ctx, x: Tensor, thr):
        c = _clip(x, thr, inplace=True)
        z = torch.sub(x, c, out=c)  # c is this call's own buffer: write z over it
        _SoftThreshold.setup_context(ctx, (x, thr), z)
        return z

    @staticmethod
    def backward(ctx, grad: Tensor):
        return _soft_threshold_backward(ctx, grad, inplace=True)


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
    thr = as_real_param(thr, x, "thr", "soft_threshold")
    if not x.is_complex():
        if torch.compiler.is_compiling() or torch._C._are_functorch_transforms_active():
            return _SoftThreshold.apply(x, thr)
        return _SoftThresholdEager.apply(x, thr)
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
    thr = as_real_param(thr, x, "thr", "hard_threshold")
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
    flat = flatten_samples(x, fn)
    n = flat.shape[1]
    k = min(n, int(math.floor(float(percent) / 100.0 * n + 1e-9)))
    if k <= 0:
        return st
    thr = as_real_param(thr, x, "thr", fn)
    mag = x.detach().abs()
    cut = torch.topk(batch_flat(mag), k, dim=1).values[:, -1]  # (B,)
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
    require_real(x, "x", "project_nonneg")
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
    require_real(x, "x", fn)
    if lo is not None:
        lo = as_real_param(lo, x, "lo", fn)
    if hi is not None:
        hi = as_real_param(hi, x, "hi", fn)
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
    require_real(x, "x", fn)
    flat = flatten_samples(x, fn)
    r = per_sample_radius(radius, x, fn, strict=True)
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
    flat = flatten_samples(x, fn)
    r = per_sample_radius(radius, x, fn, strict=False)
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
    flat = flatten_samples(x, fn)
    r = per_sample_radius(radius, x, fn, strict=False)
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


