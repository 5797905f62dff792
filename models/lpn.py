"""Learned Proximal Networks (Fang, Buchanan & Sulam, ICLR 2024).

An LPN is an input-convex network ``ψ`` (ICNN) whose gradient ``f = ∇ψ`` is the network's
output. The gradient of a convex function is the proximal operator of *some* (possibly
non-convex) regulariser ``R`` (Gribonval & Nikolova 2020), so ``f`` is an exact prox that
drops into every proximal algorithm of the library (:class:`~unroll.ProxGradStep`,
:class:`~unroll.ADMMStep`, …), and the regulariser it is the prox of can be evaluated:

    ``R(x) = ⟨y, x⟩ − ½‖x‖² − ψ(y)``  at  ``y = f⁻¹(x)``,

the inverse by a convex inner solve (``min_y ψ(y) − ⟨x, y⟩``) with the core's solvers,
differentiable (implicit gradient at the minimiser).

Convexity of ``ψ`` holds by construction: every hidden-to-hidden weight (and the output
weight) is non-negative, the activation (softplus with sharpness ``β``) is convex and
non-decreasing, the skip connections from the input are affine (unconstrained), plus
``α‖x‖²``. Non-negativity is kept either by projection (``nonneg="project"``, the paper's
choice: call :meth:`project_` after each optimiser step, which
:class:`unroll.train.ProjectLPN` does in training) or by a softplus parametrisation
(``nonneg="softplus"``: always non-negative, no projection needed).

``f(x) = ∇ψ(x)`` is computed with ``torch.func.grad``, so it composes with ``vmap``, ``vjp``
(the implicit gradient mode) and ordinary autograd (training through ``f``).
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from typing import List, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from unroll.autodiff import implicit
from unroll.batched import broadcasts_to, per_sample
from unroll.info import SolverInfo
from unroll.linalg import CG
from unroll.problem import SmoothProblem
from unroll.steps import GradientStep
from unroll.unrolled import Unrolled

__all__ = ["LPN", "ConvLPN", "LearnedProxNet"]

_NONNEG = ("project", "softplus")


def _is_transformed(x: Tensor) -> bool:
    """Whether ``x`` is a torch.func-wrapped tensor (inside vmap/grad/vjp) or we are being
    compiled: data-dependent checks (``.item()``) are skipped there."""
    if torch.compiler.is_compiling():
        return True
    try:
        return bool(torch._C._functorch.is_functorch_wrapped_tensor(x))
    except AttributeError:  # pragma: no cover - older torch
        return False


def _check_real_number(name: str, value, minimum: float, strict: bool) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(float(value)) \
            or (float(value) <= minimum if strict else float(value) < minimum):
        op = ">" if strict else ">="
        raise ValueError(f"{name}: expected a finite number {op} {minimum:g}, got {value!r}")
    return float(value)


def _check_int(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name}: expected an int >= {minimum}, got {value!r}")
    return int(value)


class LearnedProxNet(nn.Module):
    """What :class:`LPN` and :class:`ConvLPN` share: ``ψ``, ``f = ∇ψ``, ``prox``, the
    projection, the inverse and the learned regulariser. Subclasses implement
    :meth:`_potential` (unchecked, ``(B, *shape) → (B,)``), :meth:`_check_shape` and
    :meth:`constrained_weights`.

    Args (common):
        beta: sharpness of the softplus activations ``softplus_β(t) = log(1 + e^{βt}) / β``.
        alpha: weight of the strongly convex term ``α‖x‖²`` (``>= 0``).
        nonneg: ``"project"`` (weights stored as they are, clipped at 0 by :meth:`project_`)
            or ``"softplus"`` (weights are ``softplus(raw)``, non-negative by construction).
        check_input: check inputs (shape, channels, size, finiteness) on the public calls
            (one host synchronisation for the NaN test; skipped inside ``torch.func``
            transforms and ``torch.compile``).
    """

    def __init__(self, beta: float, alpha: float, nonneg: str, check_input: bool) -> None:
        super().__init__()
        self.beta = _check_real_number("beta", beta, 0.0, strict=True)
        self.alpha = _check_real_number("alpha", alpha, 0.0, strict=False)
        if nonneg not in _NONNEG:
            raise ValueError(f"nonneg: expected one of {', '.join(_NONNEG)}, got {nonneg!r}")
        self.nonneg = nonneg
        if not isinstance(check_input, bool):
            raise ValueError(f"check_input: expected true or false, got {check_input!r}")
        self.check_input = check_input

    # ------------------------------------------------------------------ what subclasses give
    def _potential(self, x: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def _check_shape(self, x: Tensor, name: str) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def constrained_weights(self) -> List[nn.Parameter]:  # pragma: no cover - abstract
        """The parameters that must be non-negative for ``ψ`` to be convex."""
        raise NotImplementedError

    # ------------------------------------------------------------------ helpers
    def _act(self, t: Tensor) -> Tensor:
        return F.softplus(t, beta=self.beta)

    def _pos(self, w: Tensor) -> Tensor:
        """A constrained weight as used: itself (projected) or ``softplus(raw)``."""
        return F.softplus(w) if self.nonneg == "softplus" else w

    def _quadratic(self, x: Tensor) -> Tensor:
        return self.alpha * x.reshape(x.shape[0], -1).square().sum(1)

    def _check(self, x: Tensor, name: str = "x") -> None:
        if not self.check_input:
            return
        if not isinstance(x, Tensor):
            raise TypeError(f"{name}: expected a tensor, got {type(x).__name__}")
        if x.is_complex() or not x.is_floating_point():
            raise ValueError(f"{name}: expected a real floating tensor, got dtype {x.dtype}")
        p = next(self.parameters(), None)
        if p is not None and x.dtype != p.dtype:
            raise TypeError(f"{name}: expected the network's dtype {p.dtype}, got {x.dtype} (convert one of the two, "
                            f"e.g. net.to({x.dtype}))")
        self._check_shape(x, name)
        if x.shape[0] == 0:
            raise ValueError(f"{name}: expected at least one sample, got an empty batch (shape {tuple(x.shape)})")
        if not _is_transformed(x):
            bad = ~torch.isfinite(x)
            if bool(bad.any()):
                n_nan = int(torch.isnan(x).sum())
                raise ValueError(f"{name}: expected finite values, got {n_nan} NaN and {int(bad.sum()) - n_nan} Inf "
                                 f"entries (shape {tuple(x.shape)})")

    # ------------------------------------------------------------------ the network
    def potential(self, x: Tensor) -> Tensor:
        """The convex potential ``ψ(x)`` per sample: ``(B, *shape) → (B,)``."""
        self._check(x)
        return self._potential(x)

    def gradient(self, x: Tensor) -> Tensor:
        """``∇ψ(x)`` without input checks (``torch.func.grad`` of ``Σ_b ψ(x_b)``; the samples are
        independent): ``(B, *shape) → (B, *shape)``.

        Inside ``torch.utils.checkpoint`` (the ``checkpoint`` gradient mode), whose saved-tensor
        hooks ``torch.func`` does not support, the same gradient is taken by
        ``torch.autograd.grad(..., create_graph=True)``."""
        try:
            return torch.func.grad(lambda z: self._potential(z).sum())(x)
        except RuntimeError as e:
            if "saved tensor hooks" not in str(e):
                raise
        with torch.enable_grad():
            z = x if x.requires_grad else x.detach().requires_grad_(True)
            return torch.autograd.grad(self._potential(z).sum(), z, create_graph=True)[0]

    def forward(self, x: Tensor) -> Tensor:
        """``f(x) = ∇ψ(x)``, the learned proximal operator: ``(B, *shape) → (B, *shape)``."""
        self._check(x)
        return self.gradient(x)

    def prox(self, x: Tensor, step: Union[float, Tensor] = 1.0) -> Tensor:
        """The learned prox ``f(x)`` in a proximal algorithm's place: ``(B, *shape) → (B, *shape)``.

        An LPN is the proximal operator of its learned regulariser ``R`` at the noise level it
        was trained for, whatever ``step`` a solver passes: with ``step = α`` a solver that calls
        ``prox_{α g}`` gets ``f = prox_R``, i.e. it runs with ``g = R / α`` (the plug-and-play
        convention: the strength of the prior is the training noise level). ``step`` must be
        positive and finite (a float, or a tensor broadcastable to ``x``).
        """
        self._check_step(step)
        self._check(x)
        if isinstance(step, Tensor) and not broadcasts_to(step.shape, x.shape):
            raise ValueError(f"step: expected a number or a tensor broadcastable to x {tuple(x.shape)} (e.g. "
                             f"(B, 1, ...) per sample), got shape {tuple(step.shape)}")
        return self.gradient(x)

    def _check_step(self, step) -> None:
        if isinstance(step, Tensor):
            if step.is_complex() or not (step.is_floating_point() or step.dtype in (torch.int32, torch.int64)):
                raise ValueError(f"step: expected a real tensor, got dtype {step.dtype}")
            if self.check_input and not _is_transformed(step):
                if not bool(torch.isfinite(step).all()) or bool((step <= 0).any()):
                    raise ValueError(f"step: expected finite values > 0, got min {float(step.min()):g} "
                                     f"(shape {tuple(step.shape)})")
            return
        if isinstance(step, bool) or not isinstance(step, numbers.Real) or not math.isfinite(step) or step <= 0:
            raise ValueError(f"step: expected a finite number > 0, got {step!r}")

    @torch.no_grad()
    def project_(self) -> "LearnedProxNet":
        """Clip the constrained weights at 0 (in place), so ``ψ`` is convex; a no-op with
        ``nonneg="softplus"``. Call after each optimiser step (:class:`unroll.train.ProjectLPN`)."""
        if self.nonneg == "project":
            for w in self.constrained_weights():
                w.clamp_(min=0)
        return self

    def is_convex(self) -> bool:
        """Whether every constrained weight is non-negative (``ψ`` convex by construction)."""
        if self.nonneg == "softplus":
            return True
        return all(bool((w >= 0).all()) for w in self.constrained_weights())

    # ------------------------------------------------------------------ inverse and regulariser
    def inverse(self, x: Tensor, *, max_iter: int = 5000, tol: float = 1e-7,
                lipschitz: Union[float, Tensor, None] = None, y0: Optional[Tensor] = None, return_info: bool = False,
                accelerate: bool = True) -> Union[Tensor, Tuple[Tensor, SolverInfo]]:
        """``y = f⁻¹(x)``: the minimiser of the convex ``ψ(y) − ⟨x, y⟩`` (``∇ψ(y) = x``).

        Gradient descent on the problem as a :class:`~unroll.SmoothProblem`, run to ``tol``
        (relative change) by :class:`~unroll.Unrolled` in the ``implicit`` gradient mode: the
        result is differentiable w.r.t. ``x`` and the network's parameters through the implicit
        function theorem (``dy/dx = ∇²ψ(y)⁻¹``, adjoint solved by CG: the Jacobian of a gradient
        step is symmetric), with memory independent of the iterations. With ``accelerate`` (the
        default) the start comes from Nesterov's method with adaptive restart (O'Donoghue &
        Candès 2015), run without a graph to the same ``tol`` within the same budget: on a weakly
        convex ``ψ`` (an image LPN's ``α`` is 1e-6) plain steps need ``√κ`` times more
        iterations. The gradient is unchanged (it depends on the fixed point only); the info's
        ``iterations`` count both phases.

        Args:
            x: ``(B, *shape)``, a point in the range of ``f``.
            max_iter: iteration budget.
            tol: relative-change tolerance.
            lipschitz: the smoothness constant ``L`` of ``∇ψ`` (steps are ``1/L``); by default
                ``max(1, 1.5·λ_max(∇²ψ(y0)))`` with the largest Hessian eigenvalue by power
                iteration at the start (``1`` is the bound for the prox of a convex function,
                which a trained LPN approximates).
            y0: starting point (default ``x``).
            return_info: also return the :class:`~unroll.SolverInfo` of the solve.

        Returns:
            ``y`` ``(B, *shape)`` (and the info).
        """
        self._check(x)
        _check_int("max_iter", max_iter, 1)
        _check_real_number("tol", tol, 0.0, strict=True)
        start = x.detach() if y0 is None else y0.detach()

        def objective(y: Tensor, data: Tensor) -> Tensor:
            return self._potential(y) - (y * data).reshape(y.shape[0], -1).sum(1)

        if lipschitz is None:
            probe = SmoothProblem(objective, x.detach(), like=x, vmap=False)
            est = probe.estimate_lipschitz(start, max_iter=30)
            lipschitz = torch.clamp(1.5 * est, min=1.0).detach()
        problem = SmoothProblem(objective, x, like=x, lipschitz=lipschitz, vmap=False)
        warm = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
        if accelerate and max_iter > 1:
            start, warm = self._nesterov_inverse(x.detach(), start, lipschitz, max_iter - 1, tol)
        solver = Unrolled(GradientStep(1.0), num_iters=max(1, max_iter - int(warm.max())),
                          grad_mode=implicit(backward_solver=CG(tol=1e-8, max_iter=500), forward_tol=tol))
        out = solver(problem, x0=start, tol=tol)
        if not return_info:
            return out.x
        return out.x, dataclasses.replace(out.info, iterations=out.info.iterations + warm, max_iter=max_iter)

    @torch.no_grad()
    def _nesterov_inverse(self, x: Tensor, y: Tensor, lipschitz, max_iter: int, tol: float) -> Tuple[Tensor, Tensor]:
        """Nesterov's accelerated gradient on ``ψ(y) − ⟨x, y⟩`` from ``y`` with step ``1/L``,
        restarted per sample when the momentum points uphill; stops a sample at relative change
        ``≤ tol``. Returns ``(y, iterations per sample)``."""
        B = x.shape[0]
        inv_l = per_sample(1.0 / torch.as_tensor(lipschitz, dtype=x.real.dtype, device=x.device).expand(B), x)
        z, t = y.clone(), torch.ones(B, dtype=x.real.dtype, device=x.device)
        active = torch.ones(B, dtype=torch.bool, device=x.device)
        iters = torch.zeros(B, dtype=torch.long, device=x.device)
        for k in range(max_iter):
            g = self.gradient(z) - x
            y_new = z - inv_l * g
            uphill = (g * (y_new - y)).reshape(B, -1).sum(1) > 0
            t_new = torch.where(uphill, torch.ones_like(t), 0.5 * (1 + torch.sqrt(1 + 4 * t * t)))
            beta = torch.where(uphill, torch.zeros_like(t), (t - 1) / t_new)
            z_new = y_new + per_sample(beta, y_new) * (y_new - y)
            change = (y_new - y).reshape(B, -1).norm(dim=1) / y_new.reshape(B, -1).norm(dim=1).clamp_min(1e-30)
            keep = per_sample(active, y)
            y, z, t = torch.where(keep, y_new, y), torch.where(keep, z_new, z), torch.where(active, t_new, t)
            iters = iters + active.long()
            active = active & ~(change <= tol)
            if k % 10 == 9 and not bool(active.any()):  # a host sync every 10 iterations, not every one
                break
        return y, iters

    def regularizer(self, x: Tensor, preimage: Optional[Tensor] = None, **inverse_kwargs) -> Tensor:
        """The learned regulariser ``R(x) = ⟨y, x⟩ − ½‖x‖² − ψ(y)`` at ``y = f⁻¹(x)``, the function
        ``f`` is the proximal operator of (``f = prox_R``), per sample: ``(B, *shape) → (B,)``.
        Defined up to an additive constant (that of ``ψ``). ``inverse_kwargs`` go to
        :meth:`inverse`; ``preimage``: ``y`` when it is known (``x = f(y)``, e.g. an iterate of
        ``z ← f(z)``), which skips the inverse solve. Differentiable (``∇R(x) = y − x``)."""
        y = self.inverse(x, **inverse_kwargs) if preimage is None else preimage
        B = x.shape[0]
        return ((y * x).reshape(B, -1).sum(1) - 0.5 * x.reshape(B, -1).square().sum(1) - self._potential(y))

    def value(self, x: Tensor) -> Tensor:
        """:meth:`regularizer` (the :class:`~unroll.prox.Regularizer` name): ``(B, *shape) → (B,)``."""
        return self.regularizer(x)


class LPN(LearnedProxNet):
    """A learned proximal network on vectors ``(B, dim)``.

    ``z₁ = σ(A₀x + b₀)``, ``z_{l+1} = σ(W_l z_l + A_l x + b_l)`` for ``l = 1..layers`` (``W_l ≥ 0``),
    ``ψ(x) = wᵀ z_{L+1} + aᵀx + c + α‖x‖²`` (``w ≥ 0``), ``σ`` = softplus with sharpness ``β``
    (the 1-D network of the paper's Laplacian experiment is ``LPN(1, hidden=50, layers=4,
    beta=10, alpha=0)``).

    Args:
        dim: input dimension.
        hidden: width of every hidden layer.
        layers: number of hidden-to-hidden layers (non-negative weights).
        beta, alpha, nonneg, check_input: see :class:`LearnedProxNet`.

    Shapes: ``potential``: ``(B, dim) → (B,)``; ``forward``/``prox``/``inverse``: ``(B, dim) →
    (B, dim)``; ``regularizer``: ``(B, dim) → (B,)``.
    """

    def __init__(self, dim: int, hidden: int = 50, layers: int = 4, beta: float = 10.0, alpha: float = 0.0,
                 nonneg: str = "project", check_input: bool = True) -> None:
        super().__init__(beta, alpha, nonneg, check_input)
        self.dim = _check_int("dim", dim, 1)
        self.hidden = _check_int("hidden", hidden, 1)
        self.layers = _check_int("layers", layers, 0)
        self.inp = nn.Linear(dim, hidden)  # A₀, b₀: unconstrained
        self.skips = nn.ModuleList([nn.Linear(dim, hidden) for _ in range(layers)])  # A_l, b_l
        self.out_skip = nn.Linear(dim, 1)  # a, c
        self.weights = nn.ParameterList()
        for _ in range(layers):
            w = torch.empty(hidden, hidden)
            nn.init.kaiming_uniform_(w, a=math.sqrt(5))  # nn.Linear's default, then clipped / mapped
            self.weights.append(nn.Parameter(w))
        w = torch.empty(1, hidden)
        nn.init.kaiming_uniform_(w, a=math.sqrt(5))
        self.out_weight = nn.Parameter(w)
        if nonneg == "softplus":
            with torch.no_grad():  # start from the same magnitudes: raw = softplus⁻¹(|w|)
                for p in self.constrained_weights():
                    p.copy_(torch.log(torch.expm1(p.abs().clamp_min(1e-4))))
        self.project_()

    def constrained_weights(self) -> List[nn.Parameter]:
        return [*self.weights, self.out_weight]

    def _check_shape(self, x: Tensor, name: str) -> None:
        if x.dim() != 2 or x.shape[1] != self.dim:
            raise ValueError(f"{name}: expected shape (B, {self.dim}) (dim={self.dim}), got {tuple(x.shape)}")

    def _potential(self, x: Tensor) -> Tensor:
        z = self._act(self.inp(x))
        for w, skip in zip(self.weights, self.skips):
            z = self._act(F.linear(z, self._pos(w)) + skip(x))
        psi = F.linear(z, self._pos(self.out_weight)) + self.out_skip(x)  # (B, 1)
        return psi.squeeze(1) + self._quadratic(x)


class ConvLPN(LearnedProxNet):
    """A convolutional learned proximal network on images ``(B, C, H, W)`` of any size
    ``H, W ≥ min_size``.

    ``z₁ = σ(conv(x))``; ``z_{l+1} = σ(W_l ⊛ₛ z_l + A_l ⊛ P_l(x) + b_l)`` with non-negative
    kernels ``W_l`` (stride ``s`` = 2 on the first ``downsample`` even-numbered layers, else 1),
    unconstrained skip convolutions ``A_l`` from the input average-pooled to the layer's
    resolution (``P_l``, linear); ``ψ(x) = (HW / hw) Σ_{c,h,w} w_c z_{L+1}[c, h, w] + α‖x‖²``
    (``w ≥ 0``: a sum over the last map, scaled by the area each of its pixels covers, so ``ψ``
    grows with the image and ``f`` keeps its scale at any size). Zero padding throughout
    (linear, so convexity holds). Unlike the paper's 128×128 network (whose last layer is a
    16×16 convolution), nothing fixes the image size.

    Args:
        channels: ``C``.
        hidden: feature channels of every layer.
        layers: hidden-to-hidden layers (non-negative kernels).
        downsample: how many of them have stride 2 (layers 1, 3, 5, …); ``<= ceil(layers / 2)``.
        kernel_size: odd kernel size of every convolution.
        init: how the non-negative weights start. ``"small"`` (default, the paper's
            ``init_weights(-10, 0.1)``): every entry ``exp(N(−10, 0.1²)) ≈ 4.5e-5``, so each layer
            starts driven by its unconstrained skip from the input (softplus units switching on
            and off with the image, ``ψ`` curved everywhere) and the non-negative path grows as it
            trains. ``"default"``: PyTorch's convolution initialisation clipped at 0 (about half
            the entries zero), the output weights scaled by ``1 / (hidden · 4^downsample)``; the
            non-negative path then dominates from the start, most units sit on the linear side of
            the softplus and ``f = ∇ψ`` is nearly constant in ``x``, which trained far more slowly
            as a denoiser (``BENCHMARKS.md``).
        quadratic: odd kernel size ``q`` of a learned convolution ``Q`` (``quadratic_channels``
            outputs, unconstrained) whose ``½‖Q ⊛ x‖²`` is added to ``ψ``; ``0`` (default, the
            paper's network): none. Any ``Q`` keeps ``ψ`` convex, and ``f`` gains the linear term
            ``QᵀQ x``, a learned symmetric positive semi-definite filter (the paper's ``α‖x‖²`` is
            ``Q = √(2α) I``). Softplus units approximate the identity and smooth linear filters only
            coarsely (a denoiser trained at σ = 0.02 scored below its noisy input without it), and
            under a Jacobian bound (:class:`unroll.lipschitz.LipschitzPenalty`) the term is worth
            1.7–3.3 dB to the bounded LPN in plug-and-play at the same bound (``BENCHMARKS.md``). ``Q`` starts with
            ``½‖Q x‖² = ½‖x‖²`` (its first ``C`` outputs copy the channels, when
            ``quadratic_channels >= C``), so ``f`` starts near ``x``.
        quadratic_channels: output channels of ``Q`` (``>= 1``).

    ``min_size = kernel_size · 2^downsample``: images must be at least that high and wide, so
    that every convolution of the coarsest map sees the image and not only its zero padding.
    Shapes: ``potential``: ``(B, C, H, W) → (B,)``; ``forward``/``prox``/``inverse``:
    ``(B, C, H, W) → (B, C, H, W)``.
    """

    def __init__(self, channels: int = 1, hidden: int = 32, layers: int = 4, downsample: int = 2,
                 kernel_size: int = 3, init: str = "small", beta: float = 100.0, alpha: float = 1e-6,
                 nonneg: str = "project", check_input: bool = True, quadratic: int = 0,
                 quadratic_channels: int = 4) -> None:
        super().__init__(beta, alpha, nonneg, check_input)
        if init not in ("small", "default"):
            raise ValueError(f"init: expected 'small' or 'default', got {init!r}")
        self.init = init
        self.channels = _check_int("channels", channels, 1)
        self.hidden = _check_int("hidden", hidden, 1)
        self.layers = _check_int("layers", layers, 1)
        self.downsample = _check_int("downsample", downsample, 0)
        if downsample > (layers + 1) // 2:
            raise ValueError(f"downsample: expected at most ceil(layers / 2) = {(layers + 1) // 2} stride-2 layers "
                             f"for layers={layers}, got {downsample}")
        self.kernel_size = _check_int("kernel_size", kernel_size, 1)
        if kernel_size % 2 == 0:
            raise ValueError(f"kernel_size: expected an odd size (centred kernels), got {kernel_size}")
        self.strides = [2 if i % 2 == 0 and i // 2 < downsample else 1 for i in range(layers)]
        k, p = kernel_size, kernel_size // 2
        self.inp = nn.Conv2d(channels, hidden, k, padding=p)
        self.skips = nn.ModuleList([nn.Conv2d(channels, hidden, k, padding=p) for _ in range(layers)])
        self.weights = nn.ParameterList()
        for _ in range(layers):
            conv = nn.Conv2d(hidden, hidden, k, bias=False)  # for its default initialisation
            self.weights.append(nn.Parameter(conv.weight.detach().clone()))
        # small output weights, so that f = ∇ψ starts at the scale of the images rather than ~100×
        # it (the sum over the last map adds up hidden · 4^downsample contributions per pixel)
        w = torch.rand(1, hidden) / (hidden * 4 ** downsample)
        self.out_weight = nn.Parameter(w)
        if init == "small":
            with torch.no_grad():
                for q in self.constrained_weights():
                    q.normal_(-10.0, 0.1).exp_()
        if nonneg == "softplus":
            with torch.no_grad():
                for q in self.constrained_weights():
                    q.copy_(torch.log(torch.expm1(q.abs().clamp_min(1e-4))))
        self.project_()
        self.quadratic = _check_int("quadratic", quadratic, 0)
        if quadratic % 2 == 0 and quadratic != 0:
            raise ValueError(f"quadratic: expected 0 (none) or an odd kernel size, got {quadratic}")
        self.quadratic_channels = _check_int("quadratic_channels", quadratic_channels, 1)
        self.quad: Optional[nn.Conv2d] = None
        if quadratic:
            self.quad = nn.Conv2d(channels, quadratic_channels, quadratic, padding=quadratic // 2, bias=False)
            with torch.no_grad():
                self.quad.weight.zero_()
                for c in range(min(channels, quadratic_channels)):  # ½‖x‖² on the first channels
                    self.quad.weight[c, c, quadratic // 2, quadratic // 2] = 1.0

    @property
    def min_size(self) -> int:
        """The smallest image height and width the network takes."""
        return self.kernel_size * 2 ** self.downsample

    def constrained_weights(self) -> List[nn.Parameter]:
        return [*self.weights, self.out_weight]

    def _check_shape(self, x: Tensor, name: str) -> None:
        if x.dim() != 4:
            raise ValueError(f"{name}: expected an image batch (B, C, H, W) with C={self.channels}, "
                             f"got shape {tuple(x.shape)}")
        if x.shape[1] != self.channels:
            raise ValueError(f"{name}: expected {self.channels} channel(s) (B, {self.channels}, H, W), got "
                             f"{x.shape[1]} (shape {tuple(x.shape)})")
        h, w = x.shape[-2:]
        if min(h, w) < self.min_size:
            raise ValueError(f"{name}: expected an image of at least {self.min_size}×{self.min_size} (kernel_size "
                             f"{self.kernel_size} × 2^downsample={2 ** self.downsample}: the coarsest map must be "
                             f"at least one kernel wide), got {h}×{w}")

    def _potential(self, x: Tensor) -> Tensor:
        p = self.kernel_size // 2
        z = self._act(self.inp(x))
        for w, skip, s in zip(self.weights, self.skips, self.strides):
            h = F.conv2d(z, self._pos(w), stride=s, padding=p)
            xs = x if h.shape[-2:] == x.shape[-2:] else F.adaptive_avg_pool2d(x, h.shape[-2:])
            z = self._act(h + skip(xs))
        area = (x.shape[-2] * x.shape[-1]) / (z.shape[-2] * z.shape[-1])
        psi = area * torch.einsum("bchw,c->b", z, self._pos(self.out_weight)[0])
        if self.quad is not None:
            psi = psi + 0.5 * self.quad(x).square().flatten(1).sum(1)
        return psi + self._quadratic(x)
