"""Isotropic total variation and its proximal operator, by its own inner solver.

``TV(x) = Σ_{c,i,j} √((D_h x)²_{c,i,j} + (D_v x)²_{c,i,j})`` with forward differences and a zero
difference across the last column / row (Neumann boundary; Chambolle 2004's discretisation),
each channel on its own.

``prox_{t·TV}(x) = argmin_z ½‖z − x‖² + t·TV(z)`` has no closed form. Its dual is
``min_{|p_{c,i,j}| ≤ 1} ‖x − t Dᵀp‖²`` (a projection onto per-pixel unit discs), with
``z = x − t Dᵀp``; it is solved by FGP, the fast (Nesterov-accelerated) projected gradient of Beck &
Teboulle (2009, "Fast gradient-based algorithms for constrained total variation image denoising
and deblurring"), step ``1/(8t)`` (``‖D‖² ≤ 8``), stopped per sample at a relative change of
``z`` (batched masks; one host sync every ``check_every`` iterations to stop early). The
iterations are plain tensor operations, so the prox is differentiable by autograd through them
(unrolled), in ``x`` and in ``t``.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from ..batched import flat, per_sample, relative_change
from .checks import check_image, check_step
from .functional import Scalar
from .regularizers import _WeightedRegularizer

__all__ = ["TotalVariation", "tv_grad", "tv_grad_adjoint", "tv_value", "tv_prox"]


def tv_grad(z: Tensor) -> Tensor:
    """Forward differences ``D z``: ``(B, C, H, W) → (B, C, 2, H, W)`` (horizontal, vertical), zero in
    the last column / row."""
    dh = F.pad(z[..., :, 1:] - z[..., :, :-1], (0, 1))
    dv = F.pad(z[..., 1:, :] - z[..., :-1, :], (0, 0, 0, 1))
    return torch.stack((dh, dv), dim=2)


def tv_grad_adjoint(p: Tensor) -> Tensor:
    """``Dᵀ p`` (``= −div p``): ``(B, C, 2, H, W) → (B, C, H, W)``; the last column of ``p_h`` and the
    last row of ``p_v`` are not read (``D`` never writes them)."""
    ph, pv = p[:, :, 0, :, :-1], p[:, :, 1, :-1, :]
    return (F.pad(ph, (1, 0)) - F.pad(ph, (0, 1))) + (F.pad(pv, (0, 0, 1, 0)) - F.pad(pv, (0, 0, 0, 1)))


def tv_value(x: Tensor) -> Tensor:
    """Isotropic TV per sample: ``(B, C, H, W) → (B,)``."""
    g = tv_grad(x)
    return flat(torch.sqrt(g.square().sum(2))).sum(1)


def _project_discs(p: Tensor) -> Tensor:
    """Per-pixel projection of ``(p_h, p_v)`` onto the unit disc: ``(B, C, 2, H, W)``."""
    return p / torch.sqrt(p.square().sum(2, keepdim=True)).clamp_min(1.0)


def tv_prox(x: Tensor, t: Tensor, max_iter: int = 200, tol: float = 1e-5, check_every: int = 10,
            p0: Optional[Tensor] = None):
    """``prox_{t·TV}(x)`` by FGP on the dual (see the module docstring).

    Args:
        x: ``(B, C, H, W)`` real.
        t: ``≥ 0``, a 0-dim tensor or ``(B, 1, 1, 1)`` (``t = 0`` returns ``x``).
        max_iter: iteration budget; tol: per-sample relative change of ``z`` to stop at;
        check_every: test for an early stop every this many iterations (one host sync).
        p0: a dual start ``(B, C, 2, H, W)`` (a warm start; zeros by default).

    Returns:
        ``(z, iterations, p)``: ``z`` ``(B, C, H, W)``, ``iterations`` ``(B,)`` int64 and the dual ``p``.
    """
    t = t.to(dtype=x.dtype, device=x.device)
    t_b = t if t.dim() > 0 else t.expand(x.shape[0]).reshape(-1, 1, 1, 1)
    active = flat(t_b).amax(1) > 0  # (B,)
    t_safe = torch.where(t_b > 0, t_b, torch.ones_like(t_b))
    p = x.new_zeros(x.shape[0], x.shape[1], 2, *x.shape[2:]) if p0 is None else _project_discs(p0)
    r = p
    s = 1.0
    z = x if p0 is None else x - t_safe * tv_grad_adjoint(p)
    done = ~active
    iters = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
    t5 = t_safe.unsqueeze(2)
    for k in range(max_iter):
        z_r = x - t_safe * tv_grad_adjoint(r)
        p_new = _project_discs(r + tv_grad(z_r) / (8.0 * t5))
        s_new = 0.5 * (1.0 + (1.0 + 4.0 * s * s) ** 0.5)
        r_new = p_new + ((s - 1.0) / s_new) * (p_new - p)
        z_new = x - t_safe * tv_grad_adjoint(p_new)
        rel = relative_change(z_new, z)
        keep = per_sample(done, p)
        p, r = torch.where(keep, p, p_new), torch.where(keep, r, r_new)
        z = torch.where(per_sample(done, z), z, z_new)
        iters = iters + (~done).long()
        done = done | (rel <= tol)
        s = s_new
        if check_every and (k + 1) % check_every == 0 and not torch.compiler.is_compiling() and bool(done.all()):
            break
    z = torch.where(per_sample(active, z), z, x)
    return z, iters, p


class TotalVariation(_WeightedRegularizer):
    """``g(x) = lam · TV(x)`` (isotropic, per channel); ``prox`` by FGP on the dual (module docstring).

    Args:
        lam: weight ``≥ 0`` (as :class:`~unroll.prox.L1`: a number, a tensor hyperparameter that
            keeps its graph, or ``learnable=True``); a per-sample weight has shape ``(B, 1, 1, 1)``.
        learnable: learn ``lam`` (softplus).
        max_iter, tol, check_every: the inner solver's budget, per-sample relative-change
            tolerance and early-stop test period.

        warm_start: start the dual from the previous call's solution when the shapes match and no
            graph is being recorded (plug-and-play loops call the prox on slowly changing inputs:
            this cuts the inner iterations several-fold). Stateful, so off by default; with
            gradients enabled it is never used.

    After each :meth:`prox` call ``last_iterations`` ``(B,)`` holds the inner iterations run.

    Shapes: ``value``: ``(B, C, H, W) → (B,)``; ``prox``: ``(B, C, H, W) → (B, C, H, W)``.
    """

    def __init__(self, lam: Scalar = 1.0, learnable: bool = False, max_iter: int = 200, tol: float = 1e-5,
                 check_every: int = 10, warm_start: bool = False) -> None:
        super().__init__(lam, learnable)
        if isinstance(max_iter, bool) or not isinstance(max_iter, int) or max_iter < 1:
            raise ValueError(f"max_iter: expected an int >= 1, got {max_iter!r}")
        if isinstance(tol, bool) or not isinstance(tol, (int, float)) or not 0 <= tol < float("inf"):
            raise ValueError(f"tol: expected a finite number >= 0, got {tol!r}")
        self.max_iter, self.tol, self.check_every = max_iter, float(tol), int(check_every)
        self.warm_start = bool(warm_start)
        self.last_iterations: Optional[Tensor] = None
        self._dual: Optional[Tensor] = None

    def value(self, x: Tensor) -> Tensor:
        """``lam · TV(x)`` per sample: ``(B, C, H, W) → (B,)``."""
        check_image(x, who="TotalVariation.value")
        lam = self._lam_like(x)
        return (flat(lam).reshape(-1) if lam.dim() > 0 else lam) * tv_value(x)

    def prox(self, x: Tensor, step: Scalar = 1.0) -> Tensor:
        """``prox_{step·lam·TV}(x)``: ``(B, C, H, W) → (B, C, H, W)``."""
        check_image(x, who="TotalVariation.prox")
        check_step(step, x, who="TotalVariation.prox")
        t = torch.as_tensor(step, dtype=x.dtype, device=x.device) * self._lam_like(x)
        p0 = None
        warm = self.warm_start and not torch.is_grad_enabled()
        if warm and self._dual is not None and self._dual.shape[:2] == x.shape[:2] \
                and self._dual.shape[3:] == x.shape[2:] and self._dual.dtype == x.dtype:
            p0 = self._dual.to(x.device)
        z, self.last_iterations, p = tv_prox(x, t, self.max_iter, self.tol, self.check_every, p0)
        self._dual = p.detach() if warm else None
        return z

    def extra_repr(self) -> str:
        return super().extra_repr() + f", max_iter={self.max_iter}, tol={self.tol}"
