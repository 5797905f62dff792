"""Input checks shared by the image priors (TV, wavelet-ℓ1) and learned denoisers used as a prox."""

from __future__ import annotations

import math
import numbers

import torch
from torch import Tensor

__all__ = ["check_image", "check_step"]


def check_image(x: Tensor, name: str = "x", who: str = "prox", channels=None) -> None:
    """``x`` must be a real floating ``(B, C, H, W)`` tensor (with ``C = channels`` when given).
    Metadata only: no host synchronisation."""
    if not isinstance(x, Tensor):
        raise TypeError(f"{name}: {who} expected a torch.Tensor (B, C, H, W), got {type(x).__name__}")
    if x.is_complex() or not x.is_floating_point():
        raise TypeError(f"{name}: {who} works on real floating images, got {x.dtype}")
    if x.dim() != 4:
        raise ValueError(f"{name}: {who} expected an image batch (B, C, H, W), got shape {tuple(x.shape)}")
    if channels is not None and x.shape[1] != channels:
        raise ValueError(f"{name}: {who} expected {channels} channel(s), (B, {channels}, H, W), got shape "
                         f"{tuple(x.shape)}")


def check_step(step, x: Tensor, who: str = "prox", finite_x: bool = True) -> None:
    """``step`` must be a finite number ``>= 0`` or a tensor of them broadcastable to ``x`` (e.g.
    ``()`` or ``(B, 1, 1, 1)``); with ``finite_x``, ``x`` must hold no NaN/Inf. Tensor checks cost
    one host synchronisation (skipped inside ``torch.compile``)."""
    if isinstance(step, Tensor):
        try:
            torch.broadcast_shapes(step.shape, x.shape)
        except RuntimeError:
            raise ValueError(f"step: {who} expected a number or a tensor broadcastable to x {tuple(x.shape)} "
                             f"(e.g. () or (B, 1, 1, 1)), got shape {tuple(step.shape)}") from None
        if step.is_complex():
            raise TypeError(f"step: {who} expected a real step, got {step.dtype}")
        if torch.compiler.is_compiling():
            return
        s = step.detach()
        bad_step = (s < 0).any() | ~torch.isfinite(s).all()
        bad_x = ~torch.isfinite(x).all() if finite_x else torch.zeros((), dtype=torch.bool, device=x.device)
        if bool(bad_step.to(x.device) | bad_x):  # one sync for both
            if bool(bad_step):
                raise ValueError(f"step: {who} expected finite steps >= 0, got min {float(s.min())}")
            _raise_nonfinite(x, who)
        return
    if isinstance(step, bool) or not isinstance(step, numbers.Real) or not math.isfinite(step) or step < 0:
        raise ValueError(f"step: {who} expected a finite number >= 0, got {step!r}")
    if finite_x and not torch.compiler.is_compiling() and not bool(torch.isfinite(x).all()):
        _raise_nonfinite(x, who)


def _raise_nonfinite(x: Tensor, who: str) -> None:
    n_nan = int(torch.isnan(x).sum())
    n_inf = int((~torch.isfinite(x)).sum()) - n_nan
    raise ValueError(f"x: {who} expected finite values, got {n_nan} NaN and {n_inf} Inf entries "
                     f"(shape {tuple(x.shape)})")
