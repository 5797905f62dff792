"""The local Lipschitz constant of a network, per sample, and a training penalty that bounds it.

A denoiser ``f`` used as a proximal step makes plug-and-play converge when it is non-expansive
(or firmly non-expansive); for a learned proximal network ``f = ∇ψ`` with ``ψ`` convex, the
Jacobian is ``ψ``'s Hessian (symmetric, PSD) and ``‖J_f‖ ≤ 1`` everywhere means ``f`` is the
proximal operator of a *convex* regulariser (Moreau; Gribonval & Nikolova 2020), so PnP-ADMM
converges for every penalty. Nothing in the architecture gives that bound, so it is trained in,
as Pesquet et al. (SIAM J. Imaging Sci. 2021, "Learning maximally monotone operators for image
recovery") and Ryu et al. (ICML 2019) do for their denoisers: estimate ``‖J_f(x)‖₂`` by power
iteration at points near the data and penalise what exceeds the bound.

* :func:`jacobian_norm`: ``‖J_f(x_b)‖₂`` for every sample ``b`` of a batch, by power iteration
  with ``torch.func.jvp`` (and ``torch.func.vjp`` unless ``J`` is symmetric); optionally
  differentiable with respect to ``f``'s parameters (one more product, with a graph).
* :class:`LipschitzPenalty`: ``weight · mean_b max(σ_b − bound, 0)²`` at points between the clean
  and the noisy signal, for :class:`unroll.train.DenoisingTask`'s ``lipschitz`` argument.
"""

from __future__ import annotations

import math
from typing import Callable, Optional, Tuple

import torch
from torch import Tensor

from .batched import batch_norm, per_sample

__all__ = ["jacobian_norm", "LipschitzPenalty"]


def _unit(v: Tensor) -> Tensor:
    n = batch_norm(v)
    return v / per_sample(torch.where(n > 0, n, torch.ones_like(n)), v)


def jacobian_norm(f: Callable[[Tensor], Tensor], x: Tensor, iters: int = 10, *, symmetric: bool = False,
                  v0: Optional[Tensor] = None, generator: Optional[torch.Generator] = None,
                  create_graph: bool = False) -> Tuple[Tensor, Tensor]:
    """Spectral norm of the Jacobian of ``f`` at each sample, by power iteration.

    ``f`` maps ``(B, *shape) → (B, *shape)`` with the samples independent (its Jacobian is block
    diagonal, one block per sample), e.g. a denoiser or :class:`unroll.models.ConvLPN`. Each
    iteration is ``v ← JᵀJv/‖JᵀJv‖`` per sample (one ``jvp`` and one ``vjp``), or with
    ``symmetric=True`` (``J = Jᵀ``, e.g. ``f = ∇ψ``) ``v ← Jv/‖Jv‖`` (one ``jvp``; it converges
    to the eigenvector of largest ``|λ|``). The estimate ``σ = ‖Jv‖`` is a lower bound that
    tightens with ``iters``.

    Args:
        f: the map; called on ``x`` and through ``torch.func.jvp``/``vjp``.
        x: the points ``(B, *shape)``, real floating.
        iters: power iterations ``>= 0`` (no graph).
        symmetric: whether ``J`` is symmetric (saves the ``vjp``).
        v0: start vectors ``(B, *shape)`` (default: standard normal from ``generator``).
        create_graph: make ``σ`` differentiable with respect to the parameters ``f`` closes over
            (and to ``x``): the last product ``Jv`` (``v`` fixed) is taken with a graph.

    Returns:
        ``(σ, v)``: ``σ`` ``(B,)`` the estimates, ``v`` ``(B, *shape)`` the unit right singular
        (eigen) vectors found, without a graph.
    """
    if not isinstance(x, Tensor) or not x.is_floating_point() or x.is_complex() or x.dim() < 1:
        got = f"dtype {x.dtype}, shape {tuple(x.shape)}" if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"x: expected a real floating batch (B, *shape), got {got}")
    if isinstance(iters, bool) or not isinstance(iters, int) or iters < 0:
        raise ValueError(f"iters: expected an int >= 0, got {iters!r}")
    if v0 is None:
        dev = x.device if generator is None else generator.device
        v = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=dev).to(x.device)
    else:
        if not isinstance(v0, Tensor) or v0.shape != x.shape:
            got = tuple(v0.shape) if isinstance(v0, Tensor) else type(v0).__name__
            raise ValueError(f"v0: expected the shape of x {tuple(x.shape)}, got {got}")
        v = v0.detach().to(x.dtype)
    xd = x.detach()
    v = _unit(v)
    with torch.no_grad():
        for _ in range(iters):
            if symmetric:
                _, w = torch.func.jvp(f, (xd,), (v,))
            else:
                _, jv = torch.func.jvp(f, (xd,), (v,))
                _, vjp_fn = torch.func.vjp(f, xd)
                (w,) = vjp_fn(jv)
            if w.shape != x.shape:
                raise ValueError(f"f: expected an output of the input's shape {tuple(x.shape)}, got {tuple(w.shape)}")
            bad = ~torch.isfinite(w.reshape(w.shape[0], -1)).all(1)
            if bool(bad.any()):
                raise ValueError(f"f: its Jacobian-vector product is not finite at {int(bad.sum())} sample(s) of x")
            v = torch.where(per_sample(batch_norm(w) > 0, w), _unit(w), v)
    if create_graph:
        _, jv = torch.func.jvp(f, (x,), (v,))
    else:
        with torch.no_grad():
            _, jv = torch.func.jvp(f, (xd,), (v,))
    return batch_norm(jv), v


class LipschitzPenalty:
    """``weight · mean_b max(‖J_f(x̃_b)‖₂ − bound, 0)²``: a training penalty that keeps a
    network's local Lipschitz constant at most ``bound`` where it is used.

    ``x̃`` are points between the clean and the noisy signal, ``x̃ = x + t (y − x)`` with
    ``t ~ U(0, 1)`` per sample (Pesquet et al. 2021), so the bound holds on the denoiser's
    inputs and on cleaner ones (those a plug-and-play solver feeds it late in its run); without
    a clean signal, ``x̃ = y``. ``‖J_f‖`` is estimated by :func:`jacobian_norm` (``iters`` power
    iterations without a graph, then one differentiable product), on the first ``samples``
    samples of the batch to bound the cost.

    Args:
        weight: ``>= 0``, the penalty's factor.
        bound: ``> 0``; 1 asks for a non-expansive map (a gradient ``f = ∇ψ`` of a convex ``ψ``
            with ``‖J‖ ≤ 1`` is then the prox of a convex regulariser). Power iteration
            underestimates, so a bound a little below the one needed leaves a margin.
        iters: power iterations ``>= 1`` per estimate.
        samples: how many samples of each batch to use (``None``: all).
        symmetric: whether the network's Jacobian is symmetric (``f = ∇ψ``: an LPN).
        interpolate: sample ``x̃`` between clean and noisy (``False``: at the noisy input).

    Call: ``penalty(f, y, x=None) → (value, σ)``, ``value`` a scalar with a graph, ``σ`` ``(n,)``
    the estimates (detached).
    """

    def __init__(self, weight: float = 1.0, bound: float = 1.0, iters: int = 5, samples: Optional[int] = None,
                 symmetric: bool = False, interpolate: bool = True) -> None:
        for name, value, strict in (("weight", weight, False), ("bound", bound, True)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                    or value < 0 or (strict and value == 0):
                raise ValueError(f"{name}: expected a finite number {'> 0' if strict else '>= 0'}, got {value!r}")
        if isinstance(iters, bool) or not isinstance(iters, int) or iters < 1:
            raise ValueError(f"iters: expected an int >= 1, got {iters!r}")
        if samples is not None and (isinstance(samples, bool) or not isinstance(samples, int) or samples < 1):
            raise ValueError(f"samples: expected None or an int >= 1, got {samples!r}")
        for name, value in (("symmetric", symmetric), ("interpolate", interpolate)):
            if not isinstance(value, bool):
                raise ValueError(f"{name}: expected true or false, got {value!r}")
        self.weight, self.bound, self.iters, self.samples = float(weight), float(bound), iters, samples
        self.symmetric, self.interpolate = symmetric, interpolate

    def points(self, y: Tensor, x: Optional[Tensor] = None) -> Tensor:
        """Where the penalty is evaluated: ``(n, *shape)``."""
        n = y.shape[0] if self.samples is None else min(self.samples, y.shape[0])
        y = y[:n].detach()
        if x is None or not self.interpolate:
            return y
        if x.shape[1:] != y.shape[1:]:
            raise ValueError(f"x: expected the clean signal of y's shape (B, {', '.join(map(str, y.shape[1:]))}), "
                             f"got {tuple(x.shape)}")
        x = x[:n].detach()
        t = per_sample(torch.rand(n, dtype=y.dtype, device=y.device), y)
        return x + t * (y - x)

    def __call__(self, f: Callable[[Tensor], Tensor], y: Tensor, x: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
        pts = self.points(y, x)
        sigma, _ = jacobian_norm(f, pts, self.iters, symmetric=self.symmetric, create_graph=True)
        value = self.weight * torch.relu(sigma - self.bound).square().mean()
        return value, sigma.detach()

    def __repr__(self) -> str:
        return (f"LipschitzPenalty(weight={self.weight:g}, bound={self.bound:g}, iters={self.iters}, "
                f"samples={self.samples}, symmetric={self.symmetric}, interpolate={self.interpolate})")
