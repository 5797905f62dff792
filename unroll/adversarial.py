"""Adversarial attacks as unrolled projected gradient, and the linear reference with a closed form.

**PGD attack.** For a classifier ``model`` and a loss ``ℓ``, the attack solves

    max_δ ℓ(model(x + δ), y)   subject to   ‖δ‖_p ≤ ε  and  lo ≤ x + δ ≤ hi

per sample by projected gradient (Madry et al. 2018, "Towards Deep Learning Models Resistant to
Adversarial Attacks"). Here it is the core's machinery: the perturbation is the state of an
:class:`~unroll.Unrolled` loop of :class:`AttackStep` s on an :class:`AttackProblem` (a
:class:`~unroll.SmoothProblem` of ``f(δ) = −ℓ``, so the loop minimises as every solver of the core
does), and the feasible set is an :class:`~unroll.Indicator`, :class:`PerturbationSet`, whose
prox is the projection. :class:`PGDAttack` is the layer users call.

* Steps: ``"sign"`` (ℓ∞ steepest ascent, FGSM's direction, Goodfellow et al. 2015),
  ``"normalized"`` (ℓ2 steepest ascent ``g/‖g‖₂``) and ``"plain"`` (``g`` itself). Step sizes
  are in units of ``ε`` (``α = step·ε``; Madry et al.'s rule of thumb ``2.5 ε / K`` is the
  default).
* Projection onto ``{‖δ‖∞ ≤ ε} ∩ box`` is one clamp (both are boxes). Onto ``{‖δ‖₂ ≤ ε} ∩ box``
  it is exact too (not the usual "project on the ball, then clip"): ``δ = clamp(s·v, l, u)``
  with ``s ∈ (0, 1]`` the root of ``‖clamp(s·v, l, u)‖₂ = ε`` (KKT of the two constraints: the
  ball's multiplier only rescales ``v``), found by bisection without a graph and then written
  in closed form on the free set, so it is differentiable with the right derivative.
* Low rank (Savostianova, Zangrando & Tudisco 2024, "Low-Rank Adversarial PGD Attack"):
  ``rank=r`` keeps every ``(H, W)`` matrix of each sample's perturbation at rank ``≤ r``: after
  the step, the truncated SVD (:func:`~unroll.prox.functional.project_rank`, Eckart–Young), then
  the radial retraction ``δ ← t·δ`` with the largest ``t ∈ [0, 1]`` that puts ``δ`` in the ball
  (exact projection for ℓ2; scaling keeps the rank). The box is then enforced on the input, as
  image pipelines do: the model sees ``clip(x + δ, lo, hi)``, and that is ``x_adv``. A low-rank
  ``δ`` is dense, so requiring ``x + δ`` in the box as well would shrink it to nothing on images
  with saturated pixels (digits' background is exactly 0); clipping only lowers ``|x_adv − x|``
  entrywise, so ``x_adv`` stays in the ball, while ``δ`` (``AttackResult.delta``) is the rank-``r``
  perturbation itself.
* Gradient modes: ``"none"`` treats the attack as a constant (Madry et al.; Danskin's theorem
  makes ``∇θ ℓ(θ, δ*)`` the gradient of the inner maximum at a maximiser); ``"full"``,
  ``"truncated"``, ``"checkpoint"`` or a :class:`~unroll.autodiff.GradMode` differentiate
  through the unrolled steps (the core's modes). Note that with sign steps the iterates are
  piecewise constant in the model's weights (``sign`` has zero derivative), so the gradient
  through a sign-step attack equals the ``"none"`` one almost everywhere; differentiating
  through the attack is meaningful with ``"normalized"`` or ``"plain"`` steps.

**Linear reference.** For a linear model ``z = wᵀx + b`` the inner maximum has a closed form
(:func:`linear_worst_case`): for labels ``y ∈ {−1, +1}`` the worst margin is
``y(wᵀx + b) − ε‖w‖_*`` (``‖·‖_*`` the dual norm: ``ℓ1`` for ℓ∞ attacks, ``ℓ2`` for ℓ2), reached
at ``δ = −ε·y·sign(w)`` (ℓ∞) or ``−ε·y·w/‖w‖₂`` (ℓ2); for regression the worst absolute
residual is ``|r| + ε‖w‖_*``. :func:`robust_logistic_fit` solves robust (adversarial) logistic
regression exactly with the core's FISTA on a smooth reformulation; tests check the PGD
inner loop against the closed form on its solution.
"""

from __future__ import annotations

import math
import numbers
from typing import Any, Callable, NamedTuple, Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .autodiff import GradMode
from .batched import batch_norm, flat, per_sample
from .info import SolverInfo
from .problem import SmoothProblem
from .prox.functional import project_rank
from .prox.regularizers import Box, Indicator
from .steps import FISTAStep, State, Step
from .unrolled import Unrolled

__all__ = ["NORMS", "STEPS", "PerturbationSet", "AttackProblem", "AttackStep", "PGDAttack", "AttackResult",
           "cross_entropy_loss", "logistic_loss", "misclassified", "project_l2_ball_box", "dual_norm",
           "linear_worst_case", "LinearWorstCase", "robust_logistic_fit", "robust_logistic_objective",
           "RobustLinearFit", "check_norm", "check_eps"]

NORMS = ("linf", "l2")
STEPS = ("sign", "normalized", "plain")
_NORM_ALIASES = {"linf": "linf", "inf": "linf", "l_inf": "linf", "l2": "l2", "2": "l2"}


# ---------------------------------------------------------------------------- argument checks
def check_norm(norm: Any, name: str = "norm") -> str:
    """``"linf"`` or ``"l2"`` from ``norm`` (also ``"inf"``, ``float("inf")``, ``2``); a clear
    ``ValueError`` otherwise."""
    key = None
    if isinstance(norm, str):
        key = _NORM_ALIASES.get(norm.strip().lower())
    elif isinstance(norm, numbers.Real) and not isinstance(norm, bool):
        key = "linf" if math.isinf(float(norm)) and norm > 0 else ("l2" if float(norm) == 2.0 else None)
    if key is None:
        raise ValueError(f"{name}: expected one of 'linf' or 'l2' (the ℓ∞ or ℓ2 ball), got {norm!r}")
    return key


def check_eps(eps: Any, name: str = "eps") -> float:
    """``eps`` as a float ``≥ 0`` (finite); a clear ``ValueError`` otherwise."""
    if isinstance(eps, Tensor) and eps.numel() == 1:
        eps = float(eps)
    if isinstance(eps, bool) or not isinstance(eps, numbers.Real) or not math.isfinite(float(eps)) or eps < 0:
        raise ValueError(f"{name}: expected a finite number >= 0 (the attack radius), got {eps!r}")
    return float(eps)


def _check_bound(v: Any, name: str) -> Optional[float]:
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, numbers.Real) or math.isnan(float(v)):
        raise ValueError(f"{name}: expected a number or None (no bound), got {v!r}")
    return None if math.isinf(float(v)) else float(v)


# ---------------------------------------------------------------------------- projections
def project_l2_ball_box(v: Tensor, eps: Union[float, Tensor], lower: Optional[Tensor],
                        upper: Optional[Tensor], bisection_iters: int = 64) -> Tensor:
    """Euclidean projection of each sample of ``v`` onto ``{‖δ‖₂ ≤ ε} ∩ {lower ≤ δ ≤ upper}``.

    The box must contain 0 (``lower ≤ 0 ≤ upper``: the clean input is valid), so the set is
    never empty. The KKT conditions give ``δ = clamp(s·v, lower, upper)`` with ``s = 1/(1+μ)``,
    ``μ ≥ 0`` the ball's multiplier: ``s = 1`` if the clamp of ``v`` is in the ball, else the root
    of ``‖clamp(s·v)‖₂ = ε`` (nondecreasing in ``s``). The root is bracketed by bisection without
    a graph; ``s`` is then recomputed in closed form on the free entries
    (``s² Σ_F v² = ε² − Σ_C clamp²``), so autograd sees the derivative of the exact projection.

    Args:
        v: ``(B, *shape)`` real.
        eps: the radius, a number or a ``(B,)`` tensor (``≥ 0``).
        lower, upper: ``(B, *shape)`` bounds (or ``None``: unbounded), ``lower ≤ 0 ≤ upper``.

    Returns:
        ``(B, *shape)``, in the set (up to rounding of the last bit).
    """
    f = flat(v)
    lo = None if lower is None else flat(lower).to(f.dtype)
    hi = None if upper is None else flat(upper).to(f.dtype)

    def clamp(t: Tensor) -> Tensor:
        return t if lo is None and hi is None else torch.clamp(t, min=lo, max=hi)

    e = torch.as_tensor(eps, dtype=f.dtype, device=f.device)
    e = e.reshape(-1, 1) if e.dim() > 0 else e
    c = clamp(f)
    inside = torch.linalg.vector_norm(c, dim=1, keepdim=True) <= e  # (B, 1)
    if bool(inside.all()):
        return c.reshape(v.shape)
    with torch.no_grad():  # bracket the root s* of ‖clamp(s v)‖ = ε in (0, 1]
        fd = f.detach()
        a = torch.zeros_like(fd[:, :1])
        b = torch.ones_like(a)
        ed = e.detach() if isinstance(e, Tensor) else e
        for _ in range(bisection_iters):
            m = 0.5 * (a + b)
            big = torch.linalg.vector_norm(clamp(m * fd), dim=1, keepdim=True) > ed
            b = torch.where(big, m, b)
            a = torch.where(big, a, m)
        s_star = a
        z = s_star * fd
        free = torch.ones_like(fd, dtype=torch.bool)
        if lo is not None:
            free = free & (z > lo)
        if hi is not None:
            free = free & (z < hi)
    clamped_part = torch.where(free, torch.zeros_like(f), clamp(s_star * f))  # the clamped entries: bounds
    fixed = clamped_part.square().sum(1, keepdim=True)
    vf = torch.where(free, f, torch.zeros_like(f)).square().sum(1, keepdim=True)
    ok = vf > 0
    s = torch.where(ok, ((e * e - fixed).clamp_min(0) / torch.where(ok, vf, torch.ones_like(vf))).sqrt(), s_star)
    proj = clamp(torch.where(free, s * f, clamped_part))  # the clamp only guards rounding
    return torch.where(inside, c, proj).reshape(v.shape)


class PerturbationSet(Indicator):
    """The feasible perturbations of an attack on inputs ``x`` ``(B, *shape)``:
    ``{δ : ‖δ‖_p ≤ ε, lo ≤ x + δ ≤ hi}`` per sample; with ``rank``, ``{δ : ‖δ‖_p ≤ ε, rank ≤ r}``
    per ``(H, W)`` matrix, the box being enforced by clipping the input (:attr:`clip_input`).
    ``project`` is the Euclidean projection (ℓ∞, ℓ2; see the module docstring), or for ``rank``
    the truncated SVD followed by the radial retraction into the ball; ``prox(δ, step)`` is
    ``project(δ)``.

    Args:
        x: the clean inputs ``(B, *shape)``, inside ``[lo, hi]``.
        eps: the radius ``ε ≥ 0``.
        norm: ``"linf"`` or ``"l2"``.
        lo, hi: the valid input range (``None``: unbounded).
        rank: ``None`` (any perturbation) or ``r ≥ 1``.
        tol: membership tolerance of :meth:`contains` (relative to ``max(1, ε)``).
    """

    def __init__(self, x: Tensor, eps: float, norm: str = "linf", lo: Optional[float] = 0.0,
                 hi: Optional[float] = 1.0, rank: Optional[int] = None, tol: float = 1e-6) -> None:
        super().__init__(tol)
        self.eps = check_eps(eps)
        self.norm = check_norm(norm)
        self.rank = rank
        self.lo, self.hi = _check_bound(lo, "lo"), _check_bound(hi, "hi")
        self.x = x
        #: the model sees ``clip(x + δ, lo, hi)`` (low rank); else the box is part of the set
        self.clip_input = rank is not None
        box = not self.clip_input
        self.lower = None if self.lo is None or not box else self.lo - x  # bounds on δ: lo - x <= δ <= hi - x
        self.upper = None if self.hi is None or not box else self.hi - x

    def inputs(self, d: Tensor) -> Tensor:
        """What the model sees for perturbations ``d``: ``x + d``, clipped to ``[lo, hi]`` for
        ``rank`` (``(B, *shape)``)."""
        return _clamp(self.x + d, self.lo, self.hi) if self.clip_input else self.x + d

    def _box(self, v: Tensor) -> Tensor:
        if self.lower is None and self.upper is None:
            return v
        return torch.clamp(v, min=self.lower, max=self.upper)

    def project(self, v: Tensor) -> Tensor:
        """``(B, *shape) → (B, *shape)``: onto the set (rank: truncated SVD, then retraction)."""
        if self.rank is not None:
            return self.retract(project_rank(v, self.rank))
        if self.norm == "linf":
            return self._box(torch.clamp(v, -self.eps, self.eps))
        return project_l2_ball_box(v, self.eps, self.lower, self.upper)

    def retract(self, v: Tensor) -> Tensor:
        """``t·v`` with the largest ``t ∈ [0, 1]`` that puts each sample in the ball and (when the
        box is part of the set) the box; keeps the rank of ``v``: ``(B, *shape) → (B, *shape)``."""
        f = flat(v)
        tiny = torch.finfo(f.dtype).tiny
        size = f.abs().amax(1) if self.norm == "linf" else torch.linalg.vector_norm(f, dim=1)
        t = torch.where(size > self.eps, self.eps / size.clamp_min(tiny), torch.ones_like(size))
        big = torch.full_like(f, math.inf)
        if self.upper is not None:
            up = flat(self.upper).to(f.dtype)
            t = torch.minimum(t, torch.where(f > 0, up / f.clamp_min(tiny), big).amin(1))
        if self.lower is not None:
            low = flat(self.lower).to(f.dtype)
            t = torch.minimum(t, torch.where(f < 0, low / f.clamp_max(-tiny), big).amin(1))
        return self._box(per_sample(t.clamp(0.0, 1.0), v) * v)

    def contains(self, d: Tensor) -> Tensor:
        """Per-sample membership ``(B,)`` bool, with tolerance ``tol·max(1, ε)`` on the norm and
        the box (and, for ``rank``, on the ``(r+1)``-th singular value)."""
        f = flat(d)
        slack = self.tol * max(1.0, self.eps)
        size = f.abs().amax(1) if self.norm == "linf" else torch.linalg.vector_norm(f, dim=1)
        ok = size <= self.eps + slack
        if self.lower is not None:
            ok = ok & (f >= flat(self.lower) - slack).all(1)
        if self.upper is not None:
            ok = ok & (f <= flat(self.upper) + slack).all(1)
        if self.rank is not None and self.rank < min(d.shape[-2:]):
            s = torch.linalg.svdvals(d)
            ok = ok & flat(s[..., self.rank] <= self.tol * s[..., 0].clamp(min=1.0)).all(1)
        return ok

    def random(self, like: Tensor, generator: Optional[torch.Generator] = None) -> Tensor:
        """A random feasible start ``(B, *shape)``: uniform in the ℓ∞ ball, uniform in the ℓ2 ball
        (a Gaussian direction, radius ``ε·U^{1/N}``), or for ``rank`` a Gaussian rank-``r`` matrix
        per channel at a uniform random size; then projected (retracted) into the set."""
        def draw(shape, kind="normal"):
            t = torch.empty(shape, dtype=like.dtype, device="cpu")
            t = t.normal_(generator=generator) if kind == "normal" else t.uniform_(-1, 1, generator=generator)
            return t.to(like.device)

        B = like.shape[0]
        u = draw((B,), "uniform").abs()
        if self.rank is not None:
            H, W = like.shape[-2:]
            r = min(self.rank, H, W)
            d = draw((*like.shape[:-2], H, r)) @ draw((*like.shape[:-2], r, W))
            f = flat(d)
            size = f.abs().amax(1) if self.norm == "linf" else torch.linalg.vector_norm(f, dim=1)
            d = d * per_sample(self.eps * u / size.clamp_min(torch.finfo(d.dtype).tiny), d)
            return self.retract(d)
        if self.norm == "linf":
            return self.project(self.eps * draw(like.shape, "uniform"))
        d = draw(like.shape)
        n = flat(d).shape[1]
        radius = self.eps * u.pow(1.0 / max(n, 1))
        d = d * per_sample(radius / batch_norm(d).clamp_min(torch.finfo(d.dtype).tiny), d)
        return self.project(d)

    def extra_repr(self) -> str:
        return f"eps={self.eps}, norm={self.norm!r}, lo={self.lo}, hi={self.hi}, rank={self.rank}"


# ---------------------------------------------------------------------------- losses
def cross_entropy_loss(logits: Tensor, y: Tensor) -> Tensor:
    """Per-sample cross-entropy: logits ``(B, C)``, labels ``(B,)`` int → ``(B,)``."""
    return F.cross_entropy(logits, y.long(), reduction="none")


def logistic_loss(logits: Tensor, y: Tensor) -> Tensor:
    """Per-sample binary logistic loss ``log(1 + exp(−y·z))``: ``z`` ``(B,)`` or ``(B, 1)``,
    labels ``y ∈ {−1, +1}`` ``(B,)`` → ``(B,)``."""
    z = logits.reshape(logits.shape[0])
    return F.softplus(-y.to(z.dtype) * z)


def misclassified(logits: Tensor, y: Tensor) -> Tensor:
    """Per-sample error ``(B,)`` bool: ``argmax ≠ y`` for logits ``(B, C)`` with ``C ≥ 2``; for one
    logit per sample (``(B,)``/``(B, 1)``) the sign against ``y ∈ {−1, +1}`` (or ``{0, 1}``)."""
    if logits.dim() == 2 and logits.shape[1] >= 2:
        return logits.argmax(1) != y.long()
    z = logits.reshape(logits.shape[0])
    yy = y.to(z.dtype)
    yy = torch.where(yy > 0, torch.ones_like(yy), -torch.ones_like(yy))  # {0, 1} and {-1, +1} alike
    return z * yy <= 0


# ---------------------------------------------------------------------------- problem and step
class AttackProblem(SmoothProblem):
    """The inner problem of an attack in the core's (minimising) convention:
    ``f(δ) = −ℓ(model(x + δ), y)`` per sample, ``g`` = the indicator of a :class:`PerturbationSet`.

    ``grad`` is ``∇δ f`` by autograd, with a graph (``create_graph``) when gradients are enabled,
    so the attack can be differentiated through; under ``torch.func`` transforms (the
    ``implicit``/``jfb`` modes' vjps) it is :class:`~unroll.SmoothProblem`'s ``torch.func.grad``.
    Samples must be independent in ``model`` (no batch-norm statistics of the batch: call
    ``model.eval()`` for such models).

    Args:
        model: any ``nn.Module`` (or callable) ``x → logits``.
        x: clean inputs ``(B, *shape)``.
        y: labels ``(B,)`` (or targets the loss reads).
        loss: ``loss(logits, y) → (B,)`` per-sample losses.
        pset: the feasible set (built from ``x``).
    """

    def __init__(self, model: Callable[[Tensor], Tensor], x: Tensor, y: Tensor,
                 loss: Callable[[Tensor, Tensor], Tensor], pset: PerturbationSet) -> None:
        def f(d: Tensor, data) -> Tensor:
            xx, yy = data
            inputs = _clamp(xx + d, pset.lo, pset.hi) if pset.clip_input else xx + d
            return -loss(model(inputs), yy)

        super().__init__(f, data=(x, y), reg=pset, like=x, vmap=False)
        object.__setattr__(self, "model", model)
        object.__setattr__(self, "loss_fn", loss)

    def grad(self, d: Tensor) -> Tensor:
        """``∇δ f(δ) = −∇δ ℓ``: ``(B, *shape) → (B, *shape)``."""
        if torch._C._are_functorch_transforms_active():
            return super().grad(d)
        create = torch.is_grad_enabled()
        with torch.enable_grad():
            dd = d if d.requires_grad else d.detach().requires_grad_(True)
            val = self.f(dd, self.data)
            (g,) = torch.autograd.grad(val.sum(), dd, create_graph=create)
        return g

    def objective(self, d: Tensor) -> Tensor:
        """``f(δ) = −ℓ`` per sample ``(B,)`` (the iterates are feasible by construction: the
        indicator, 0 on them, is not evaluated)."""
        return self.smooth(d)


class AttackStep(Step):
    """One projected step of an attack: ``δ ← P(δ − α·dir(∇f(δ)))`` with ``f = −ℓ`` (so an ascent
    step on the loss), ``α = step·ε`` and ``P`` the problem's :class:`PerturbationSet`.

    Args:
        step: the step size in units of ``ε`` (``> 0``).
        direction: ``"sign"`` (ℓ∞ steepest ascent), ``"normalized"`` (``g/‖g‖₂`` per sample, ℓ2
            steepest ascent; 0 where ``g = 0``) or ``"plain"`` (``g``).
    """

    def __init__(self, step: float = 0.25, direction: str = "sign") -> None:
        super().__init__()
        if isinstance(step, bool) or not isinstance(step, numbers.Real) or not (0 < step < math.inf):
            raise ValueError(f"step: expected a finite number > 0 (in units of eps), got {step!r}")
        if direction not in STEPS:
            raise ValueError(f"direction: expected one of {', '.join(STEPS)}, got {direction!r}")
        self.step, self.direction = float(step), direction

    def forward(self, state: State, problem: AttackProblem) -> State:
        g = problem.grad(state.x)
        if self.direction == "sign":
            d = torch.sign(g)
        elif self.direction == "normalized":
            n = batch_norm(g)
            d = g / per_sample(torch.where(n > 0, n, torch.ones_like(n)), g)
        else:
            d = g
        return State(problem.reg.prox(state.x - (self.step * problem.reg.eps) * d))

    def extra_repr(self) -> str:
        return f"step={self.step}, direction={self.direction!r}"


# ---------------------------------------------------------------------------- the attack layer
class AttackResult(NamedTuple):
    """What :class:`PGDAttack` returns.

    Attributes:
        x_adv: adversarial inputs ``(B, *shape)`` in ``[lo, hi]``.
        delta: the perturbation ``δ`` ``(B, *shape)``, ``x_adv = clip(x + δ, lo, hi)`` (for
            ℓ∞/ℓ2 the set already keeps ``x + δ`` in the box, so ``x_adv − x = δ`` up to
            rounding; for ``rank`` it is the rank-``r`` perturbation before clipping).
        success: ``(B,)`` bool, misclassified after the attack (``None`` with ``record=False``).
        loss: ``(B,)`` loss at ``x_adv`` (``None`` with ``record=False``).
        losses: ``(B, K + 1)`` the loss at the start and after every step (``None`` with
            ``record=False``).
        info: the :class:`~unroll.info.SolverInfo` of the unrolled loop (``grad_mode`` is
            ``"none"`` for an attack treated as a constant).
    """

    x_adv: Tensor
    delta: Tensor
    success: Optional[Tensor]
    loss: Optional[Tensor]
    losses: Optional[Tensor]
    info: SolverInfo


class PGDAttack(nn.Module):
    """Projected-gradient attack (Madry et al. 2018) as an unrolled layer, batched, any model and
    loss; ``rank=r`` gives the low-rank attack (Savostianova et al. 2024).

    Args:
        eps: the radius ``ε ≥ 0`` (in input units).
        norm: ``"linf"`` or ``"l2"``.
        num_steps: ``K ≥ 1`` steps.
        step_size: ``α/ε`` (default ``2.5 / K``, Madry et al.'s rule of thumb).
        direction: ``"sign"``, ``"normalized"``, ``"plain"`` or ``"auto"`` (sign for ℓ∞,
            normalized for ℓ2).
        random_start: start from a random feasible perturbation (else ``δ = 0``).
        rank: ``None``, or ``r ≥ 1`` for perturbations of rank ``≤ r`` per ``(H, W)`` matrix.
        lo, hi: the valid input range (``None``: unbounded); inputs outside it are refused.
        loss: ``loss(logits, y) → (B,)``; cross-entropy by default.
        grad_mode: ``"none"`` (the attack is a constant, Madry et al.), or a core mode
            (``"full"``, ``"truncated"``, ``"checkpoint"``, ``"jfb"``, a ``GradMode``) to
            differentiate through the steps.
        seed: seed of the random start (``None``: the global generator, so every call differs).
        restarts: run the attack from this many random starts and keep, per sample, a successful
            one if any, else the one with the highest final loss (Madry et al.'s restarts;
            ``info`` and ``losses`` are those of the kept run where per-sample, ``info`` the
            last run's).

    Call: ``attack(model, x, y)`` with ``x`` ``(B, *shape)``, ``y`` ``(B,)`` →
    :class:`AttackResult`. Call-time ``eps``, ``num_steps``, ``grad_mode`` and ``record``
    override the layer's.
    """

    def __init__(self, eps: float = 0.1, norm: str = "linf", num_steps: int = 10,
                 step_size: Optional[float] = None, direction: str = "auto", random_start: bool = True,
                 rank: Optional[int] = None, lo: Optional[float] = 0.0, hi: Optional[float] = 1.0,
                 loss: Optional[Callable[[Tensor, Tensor], Tensor]] = None,
                 grad_mode: Union[str, GradMode] = "none", seed: Optional[int] = None, restarts: int = 1) -> None:
        super().__init__()
        self.eps = check_eps(eps)
        self.norm = check_norm(norm)
        self.num_steps = _check_steps(num_steps)
        if direction == "auto":
            direction = "sign" if self.norm == "linf" else "normalized"
        step_size = 2.5 / self.num_steps if step_size is None else step_size
        if rank is not None and (isinstance(rank, bool) or not isinstance(rank, numbers.Integral) or rank < 1):
            raise ValueError(f"rank: expected None or an int >= 1, got {rank!r}")
        self.rank = None if rank is None else int(rank)
        self.lo, self.hi = _check_bound(lo, "lo"), _check_bound(hi, "hi")
        if self.lo is not None and self.hi is not None and self.lo > self.hi:
            raise ValueError(f"lo, hi: expected lo <= hi, got lo={lo} > hi={hi}")
        if loss is not None and not callable(loss):
            raise TypeError(f"loss: expected a callable loss(logits, y) -> (B,), got {type(loss).__name__}")
        self.loss = loss if loss is not None else cross_entropy_loss
        self.random_start = bool(random_start)
        self.seed = seed
        if isinstance(restarts, bool) or not isinstance(restarts, numbers.Integral) or restarts < 1:
            raise ValueError(f"restarts: expected an int >= 1, got {restarts!r}")
        self.restarts = int(restarts)
        self.grad_mode = _check_grad_mode(grad_mode)
        self.unrolled = Unrolled(AttackStep(step_size, direction), num_iters=self.num_steps, check_finite=True)

    @property
    def step(self) -> AttackStep:
        return self.unrolled.steps[0]

    def feasible_set(self, x: Tensor, eps: Optional[float] = None) -> PerturbationSet:
        """The :class:`PerturbationSet` around ``x`` ``(B, *shape)``."""
        return PerturbationSet(x, self.eps if eps is None else eps, self.norm, self.lo, self.hi, self.rank)

    def check_inputs(self, x: Tensor, y: Tensor) -> None:
        """Refuse inputs of the wrong type, shape, or outside ``[lo, hi]`` (one host sync)."""
        if not isinstance(x, Tensor) or not x.is_floating_point() or x.dim() < 2:
            got = f"shape {tuple(x.shape)}, dtype {x.dtype}" if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"x: expected a real floating tensor (B, *shape) with at least 2 dims, got {got}")
        if not isinstance(y, Tensor) or y.dim() < 1 or y.shape[0] != x.shape[0]:
            got = f"shape {tuple(y.shape)}" if isinstance(y, Tensor) else type(y).__name__
            raise ValueError(f"y: expected labels (B,) = ({x.shape[0]},) matching x's batch, got {got}")
        if self.rank is not None and x.dim() < 3:
            raise ValueError(f"x: the low-rank attack (rank={self.rank}) needs matrix inputs (B, ..., H, W), "
                             f"got shape {tuple(x.shape)}")
        if x.numel() and (self.lo is not None or self.hi is not None):
            lo_x, hi_x = float(x.detach().min()), float(x.detach().max())
            if (self.lo is not None and lo_x < self.lo) or (self.hi is not None and hi_x > self.hi) or lo_x != lo_x:
                raise ValueError(f"x: expected inputs in the valid box [lo, hi] = [{self.lo}, {self.hi}], got values "
                                 f"in [{lo_x:.6g}, {hi_x:.6g}]")

    def forward(self, model: Callable[[Tensor], Tensor], x: Tensor, y: Tensor, *, eps: Optional[float] = None,
                num_steps: Optional[int] = None, grad_mode: Union[str, GradMode, None] = None,
                record: bool = True, generator: Optional[torch.Generator] = None) -> AttackResult:
        """Attack ``model`` at ``(x, y)``.

        Args:
            model: ``x → logits`` (any ``nn.Module``).
            x: ``(B, *shape)`` inputs in ``[lo, hi]``.
            y: ``(B,)`` labels.
            eps, num_steps, grad_mode: override the layer's for this call.
            record: also compute the loss trajectory and per-sample success (one forward per
                step, without a graph). Adversarial training turns it off.
            generator: the random start's generator (default: from ``seed``, or the global one).
        """
        eps = self.eps if eps is None else check_eps(eps)
        n = self.num_steps if num_steps is None else _check_steps(num_steps)
        mode = self.grad_mode if grad_mode is None else _check_grad_mode(grad_mode)
        restarts = self.restarts if (self.random_start and eps > 0) else 1
        self.check_inputs(x, y)
        pset = self.feasible_set(x, eps)
        if generator is None and self.seed is not None:
            generator = torch.Generator().manual_seed(int(self.seed))
        best = None
        for _ in range(restarts):
            run = self._run_once(model, x, y, pset, n, mode, record or restarts > 1, generator)
            best = run if best is None else _better(run, best)
        if not record:
            best = best._replace(success=None, loss=None, losses=None)
        return best

    def _run_once(self, model, x: Tensor, y: Tensor, pset: PerturbationSet, n: int, mode, record: bool,
                  generator: Optional[torch.Generator]) -> AttackResult:
        """One attack from one (random) start."""
        with torch.no_grad():
            d0 = pset.random(x, generator) if self.random_start and pset.eps > 0 else torch.zeros_like(x)
        problem = AttackProblem(model, x, y, self._loss_checked(model, x, y), pset)
        if mode == "none":
            with torch.no_grad():
                out = self.unrolled(problem, d0, num_iters=n, record_objective=record, grad_mode="full")
            delta = out.x.detach()
            info = out.info
            info.grad_mode = "none"
        else:
            out = self.unrolled(problem, d0, num_iters=n, record_objective=record, grad_mode=mode)
            delta, info = out.x, out.info
        x_adv = _clamp(x + delta, self.lo, self.hi)
        if mode == "none":
            x_adv = x_adv.detach()
        success = loss = losses = None
        if record:
            with torch.no_grad():
                logits = model(x_adv)
                loss = self.loss(logits, y).detach()
                success = misclassified(logits, y)
                first = self.loss(model(_clamp(x + d0, self.lo, self.hi)), y).detach()
            losses = torch.cat([first[:, None], -info.objective.detach()], dim=1)
        return AttackResult(x_adv, delta, success, loss, losses, info)

    def _loss_checked(self, model, x: Tensor, y: Tensor) -> Callable[[Tensor, Tensor], Tensor]:
        checked = [False]

        def loss(logits: Tensor, yy: Tensor) -> Tensor:
            out = self.loss(logits, yy)
            if not checked[0]:
                if not isinstance(out, Tensor) or out.shape != (x.shape[0],):
                    got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
                    raise ValueError(f"loss: expected per-sample losses of shape (B,) = ({x.shape[0]},), got {got}")
                checked[0] = True
            return out

        return loss

    def extra_repr(self) -> str:
        return (f"eps={self.eps}, norm={self.norm!r}, num_steps={self.num_steps}, step={self.step.step}, "
                f"direction={self.step.direction!r}, random_start={self.random_start}, rank={self.rank}, "
                f"lo={self.lo}, hi={self.hi}, grad_mode={self.grad_mode!r}, restarts={self.restarts}")


def _better(new: AttackResult, old: AttackResult) -> AttackResult:
    """Per sample, the better of two runs: a success over a failure, else the higher loss."""
    take = (new.success & ~old.success) | ((new.success == old.success) & (new.loss > old.loss))

    def pick(a: Tensor, b: Tensor) -> Tensor:
        return torch.where(per_sample(take, a), a, b)

    return AttackResult(pick(new.x_adv, old.x_adv), pick(new.delta, old.delta), new.success | old.success,
                        pick(new.loss, old.loss), pick(new.losses, old.losses), new.info)


def _clamp(x: Tensor, lo: Optional[float], hi: Optional[float]) -> Tensor:
    return x if lo is None and hi is None else torch.clamp(x, min=lo, max=hi)


def _check_steps(n: Any) -> int:
    if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 1:
        raise ValueError(f"num_steps: expected an int >= 1, got {n!r}")
    return int(n)


def _check_grad_mode(mode: Any) -> Union[str, GradMode]:
    if isinstance(mode, GradMode):
        return mode
    if mode == "none":
        return "none"
    if mode in ("full", "truncated", "checkpoint", "implicit", "jfb"):
        return mode
    raise ValueError(f"grad_mode: expected 'none' (the attack is a constant) or a gradient mode through it "
                     f"('full', 'truncated', 'checkpoint', 'jfb', a GradMode), got {mode!r}")


# ---------------------------------------------------------------------------- the linear reference
def dual_norm(w: Tensor, norm: str) -> Tensor:
    """``‖w‖_*`` over the last dim: ``‖w‖₁`` for ℓ∞ attacks, ``‖w‖₂`` for ℓ2: ``(..., d) → (...)``."""
    norm = check_norm(norm)
    return w.abs().sum(-1) if norm == "linf" else torch.linalg.vector_norm(w, dim=-1)


def _worst_direction(w: Tensor, norm: str) -> Tensor:
    """The unit-ball maximiser of ``⟨w, u⟩``: ``sign(w)`` (ℓ∞) or ``w/‖w‖₂`` (ℓ2), ``(d,)``."""
    if norm == "linf":
        return torch.sign(w)
    n = torch.linalg.vector_norm(w)
    return w / n if bool(n > 0) else torch.zeros_like(w)


class LinearWorstCase(NamedTuple):
    """The closed-form inner maximum for a linear model: ``loss`` ``(N,)`` at the worst ``delta``
    ``(N, d)``; ``margin`` ``(N,)`` the worst margin (classification) or worst absolute residual
    (regression)."""

    loss: Tensor
    delta: Tensor
    margin: Tensor


def linear_worst_case(w: Tensor, b: Union[float, Tensor], X: Tensor, y: Tensor, eps: float, norm: str = "linf",
                      loss: str = "logistic") -> LinearWorstCase:
    """Closed-form worst case of ``‖δ‖ ≤ ε`` perturbations (no input box) of a linear model.

    Args:
        w: ``(d,)`` weights; ``b``: the bias.
        X: ``(N, d)`` inputs; ``y``: ``(N,)`` labels in ``{−1, +1}`` (``"logistic"``, ``"hinge"``)
            or targets (``"squared"``).
        eps: the radius; norm: ``"linf"`` or ``"l2"`` (the dual norm is ``ℓ1`` / ``ℓ2``).
        loss: ``"logistic"`` ``log(1 + e^{−m})``, ``"hinge"`` ``max(0, 1 − m)`` with the worst
            margin ``m = y(wᵀx + b) − ε‖w‖_*``, or ``"squared"`` ``½(|y − wᵀx − b| + ε‖w‖_*)²``.
    """
    eps, norm = check_eps(eps), check_norm(norm)
    if loss not in ("logistic", "hinge", "squared"):
        raise ValueError(f"loss: expected 'logistic', 'hinge' or 'squared', got {loss!r}")
    if X.dim() != 2 or w.shape != (X.shape[1],) or y.shape != (X.shape[0],):
        raise ValueError(f"X, w, y: expected (N, d), (d,), (N,), got {tuple(X.shape)}, {tuple(w.shape)}, "
                         f"{tuple(y.shape)}")
    u = _worst_direction(w, norm)
    z = X @ w + b
    yy = y.to(z.dtype)
    if loss == "squared":
        r = yy - z
        worst = r.abs() + eps * dual_norm(w, norm)
        delta = -eps * torch.sign(r)[:, None] * u[None, :]
        return LinearWorstCase(0.5 * worst.square(), delta, worst)
    m = yy * z - eps * dual_norm(w, norm)
    value = F.softplus(-m) if loss == "logistic" else torch.relu(1 - m)
    return LinearWorstCase(value, -eps * yy[:, None] * u[None, :], m)


class RobustLinearFit(NamedTuple):
    """Robust logistic regression's solution: ``w`` ``(d,)``, ``b`` (0-dim), the robust
    ``objective`` at it (0-dim) and the solver's :class:`~unroll.info.SolverInfo`."""

    w: Tensor
    b: Tensor
    objective: Tensor
    info: SolverInfo


def robust_logistic_objective(w: Tensor, b: Union[float, Tensor], X: Tensor, y: Tensor, eps: float,
                              norm: str = "linf", l2: float = 1e-2) -> Tensor:
    """``mean_i log(1 + exp(ε‖w‖_* − y_i(wᵀx_i + b))) + (l2/2)‖w‖²``: the adversarial-training
    objective of logistic regression under ``‖δ‖ ≤ ε`` (the inner maximum in closed form). 0-dim."""
    return linear_worst_case(w, b, X, y, eps, norm).loss.mean() + 0.5 * l2 * w.square().sum()


class _SecondOrderCone(Indicator):
    """Projection onto ``{(w, t, b): ‖w‖₂ ≤ t}`` (``b`` free), per sample ``(B, d + 2)``."""

    def __init__(self, d: int) -> None:
        super().__init__()
        self.d = d

    def project(self, z: Tensor) -> Tensor:
        w, t, rest = z[:, :self.d], z[:, self.d:self.d + 1], z[:, self.d + 1:]
        nw = torch.linalg.vector_norm(w, dim=1, keepdim=True)
        scale = 0.5 * (nw + t)
        inside = nw <= t
        zero = nw <= -t
        safe = torch.where(nw > 0, nw, torch.ones_like(nw))
        w_new = torch.where(inside, w, torch.where(zero, torch.zeros_like(w), scale * w / safe))
        t_new = torch.where(inside, t, torch.where(zero, torch.zeros_like(t), scale))
        return torch.cat([w_new, t_new, rest], dim=1)

    def contains(self, z: Tensor) -> Tensor:
        nw = torch.linalg.vector_norm(z[:, :self.d], dim=1)
        return nw <= z[:, self.d] + self.tol * nw.clamp(min=1.0)


def robust_logistic_fit(X: Tensor, y: Tensor, eps: float, norm: str = "linf", l2: float = 1e-2,
                        num_iters: int = 20000, tol: float = 1e-10) -> RobustLinearFit:
    """Adversarial training of binary logistic regression, solved exactly by the core's FISTA.

    Minimises :func:`robust_logistic_objective`. Its ``ε‖w‖_*`` term is not smooth, so FISTA runs
    on a smooth reformulation with a simple constraint (the loss grows with the norm term, so the
    constraint is tight at the optimum):

    * ℓ∞ (dual ``ℓ1``): ``w = p − q`` with ``p, q ≥ 0`` and ``‖w‖₁`` replaced by ``Σ(p + q)``
      (:class:`~unroll.Box` constraint);
    * ℓ2: an epigraph variable ``t ≥ ‖w‖₂`` (projection onto the second-order cone).

    The smooth part's gradient is Lipschitz with ``L = ‖A‖₂²/(4N) + c·l2`` (``A`` the rows of
    the margins' linear map), which sizes FISTA's step.

    Args:
        X: ``(N, d)``; y: ``(N,)`` in ``{−1, +1}``; eps, norm: the attack; l2: ridge weight ``> 0``.
        num_iters, tol: FISTA's budget and relative-change tolerance.
    """
    eps, norm = check_eps(eps), check_norm(norm)
    if X.dim() != 2 or y.shape != (X.shape[0],):
        raise ValueError(f"X, y: expected (N, d) and (N,), got {tuple(X.shape)} and {tuple(y.shape)}")
    if not bool(((y == 1) | (y == -1)).all()):
        raise ValueError("y: expected labels in {-1, +1}")
    N, d = X.shape
    yy = y.to(X.dtype)
    ones = torch.ones(N, 1, dtype=X.dtype, device=X.device)
    yX = yy[:, None] * X
    eye = torch.eye(d, dtype=X.dtype, device=X.device)
    if norm == "linf":
        # z = (p, q, b): margin_i = y_i(x_i·(p − q) + b) − ε·1ᵀ(p + q); w = p − q
        A = torch.cat([-yX + eps, yX + eps, -yy[:, None]], dim=1)  # the loss is softplus(A z) per row
        M = torch.cat([eye, -eye, torch.zeros(1, d, dtype=X.dtype, device=X.device)])  # w = z M
        lo = torch.cat([torch.zeros(2 * d, dtype=X.dtype), torch.full((1,), -math.inf, dtype=X.dtype)])
        reg: Indicator = Box(lo.to(X.device), None)
        curvature = 2.0 * l2  # (l2/2)‖p − q‖² has Hessian norm 2·l2
    else:
        # z = (w, t, b): margin_i = y_i(x_i·w + b) − ε t
        A = torch.cat([-yX, eps * ones, -yy[:, None]], dim=1)
        M = torch.cat([eye, torch.zeros(2, d, dtype=X.dtype, device=X.device)])
        reg = _SecondOrderCone(d)
        curvature = l2
    lip = torch.linalg.matrix_norm(A, ord=2) ** 2 / (4 * N) + curvature
    problem = _SoftplusProblem(A, M, l2, lip)
    z0 = torch.zeros(1, A.shape[1], dtype=X.dtype, device=X.device)
    out = Unrolled(FISTAStep(reg), num_iters=num_iters)(problem, z0, tol=tol, check_every=50)
    w, b = (out.x @ M)[0], out.x[0, -1]
    return RobustLinearFit(w, b, robust_logistic_objective(w, b, X, y, eps, norm, l2), out.info)


class _SoftplusProblem(SmoothProblem):
    """``f(z) = mean_i softplus((A z)_i) + (l2/2)‖z M‖²`` for ``z`` ``(B, n)``, with its gradient
    in closed form (``Aᵀσ(Az)/N + l2 (zM)Mᵀ``; no autograd in FISTA's loop)."""

    def __init__(self, A: Tensor, M: Tensor, l2: float, lipschitz: Tensor) -> None:
        def f(z: Tensor, data) -> Tensor:
            return F.softplus(z @ A.T).mean(1) + 0.5 * l2 * (z @ M).square().sum(1)

        super().__init__(f, lipschitz=lipschitz, like=torch.zeros(1, A.shape[1], dtype=A.dtype, device=A.device),
                         vmap=False)
        object.__setattr__(self, "A", A)
        object.__setattr__(self, "M", M)
        object.__setattr__(self, "l2", l2)

    def grad(self, z: Tensor) -> Tensor:
        return torch.sigmoid(z @ self.A.T) @ self.A / self.A.shape[0] + self.l2 * (z @ self.M) @ self.M.T
