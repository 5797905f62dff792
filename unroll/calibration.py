"""Blind gain calibration by projected gradient descent on a bilinear least-squares problem.

Model (Cambareri & Jacques, "Through the Haze: a Non-Convex Approach to Blind Gain Calibration
for Linear Random Sensing Models", Information and Inference 8(2), 2019; arXiv:1610.09028):
``p`` snapshots of an unknown signal ``x ∈ Rⁿ``, each through its own random sensing matrix
``A_l ∈ R^{m×n}`` (i.i.d. Gaussian entries), recorded by ``m`` sensors with unknown positive gains
``d ∈ Rᵐ``::

    y_l = diag(d) A_l x,        l = 1..p.

``(x, d)`` and ``(x·c, d/c)`` give the same data, so the gains are normalised to mean one,
``1ᵀd = m`` (the paper's set ``1 + 1^⊥ ∩ ρ B∞``: gains on the hyperplane ``1ᵀd = m`` within
``ρ < 1`` of one in every entry, hence positive). The estimate solves

    min_{ξ, γ}  f(ξ, γ) = 1/(2mp) Σ_l ‖diag(γ) A_l ξ − y_l‖²   s.t.  γ ∈ G_ρ = {1ᵀγ = m, ‖γ − 1‖∞ ≤ ρ}

by the paper's projected gradient descent (its Algorithm 1): start from ``ξ₀ = (1/mp) Σ_l A_lᵀ y_l``
(an unbiased estimate of ``x`` when ``1ᵀd = m``, since ``E[A_lᵀ diag(d) A_l] = (1ᵀd) I``) and
``γ₀ = 1``, then

    ξ ← ξ − μ_ξ ∇_ξ f(ξ, γ),        γ ← P_{G_ρ}(γ − μ_γ ∇^⊥_γ f(ξ, γ)),

with ``∇^⊥_γ f = P_{1^⊥} ∇_γ f`` (the gradient with its mean removed, so ``1ᵀγ`` stays ``m``) and
the paper's step sizes ``μ_ξ = μ``, ``μ_γ = μ m/‖x‖²`` (the two blocks' curvatures are about
``‖d‖²/m ≈ 1`` and ``‖x‖²/m``). ``‖x‖`` is unknown: here it is replaced by ``‖ξ₀‖``, its
initial estimate. The paper proves convergence to ``(x, d)`` once ``mp`` grows linearly with
``n + m`` up to log factors; ``benchmarks/blind_calibration.py`` measures where this happens.

Pieces: :func:`project_gains` (exact Euclidean projection onto ``G_ρ``),
:class:`BlindCalibrationProblem` (data, objective, block gradients, the initial point),
:class:`CalibrationState` ``(x, d)``, :class:`BlindCalibrationStep` (one iteration, a
:class:`~unroll.steps.Step` usable in :class:`~unroll.Unrolled`, learnable step sizes),
:func:`blind_calibration` (the solver, ``(x, d, info)``), :func:`calibration_errors` and
:func:`make_calibration_instances` (random instances with known truth).
"""

from __future__ import annotations

import math
from typing import NamedTuple, Optional, Tuple, Union

import torch
from torch import Tensor

from .autodiff import GradMode
from .batched import batch_norm, safe_ratio
from .checks import check_finite, check_tol
from .info import SolverInfo
from .parametrize import PositiveScalar
from .problem import Problem
from .steps import Step
from .unrolled import Unrolled

__all__ = ["CalibrationState", "BlindCalibrationProblem", "BlindCalibrationStep", "blind_calibration",
           "project_gains", "calibration_errors", "make_calibration_instances"]


def _check_rho(rho) -> Optional[float]:
    if rho is None:
        return None
    if isinstance(rho, bool) or not isinstance(rho, (int, float)) or not (0 < rho < float("inf")):
        raise ValueError(f"rho: expected a finite number > 0 (the largest |d_i - 1|) or None, got {rho!r}")
    return float(rho)


def project_gains(d: Tensor, rho: Optional[float] = None) -> Tensor:
    """Euclidean projection of each row onto ``G_ρ = {γ ∈ Rᵐ : 1ᵀγ = m, ‖γ − 1‖∞ ≤ ρ}``.

    With ``rho=None`` the set is the hyperplane ``1ᵀγ = m`` (the projection subtracts the excess
    mean). Otherwise the projection is ``clip(d − τ, 1 − ρ, 1 + ρ)`` with the scalar ``τ`` at
    which the sum is ``m``: the sum is piecewise linear and decreasing in ``τ``, with kinks at
    ``d_i − 1 ± ρ``; it is evaluated at every kink (sorting and ``searchsorted``, ``O(m log m)``
    per row) and ``τ`` interpolated exactly in the bracketing piece, so ``1ᵀγ = m`` holds to
    rounding error and every entry is inside the box.

    Args:
        d: ``(B, m)`` real.
        rho: the box half-width ``ρ > 0`` (``ρ < 1`` keeps the gains positive), or ``None``.

    Returns:
        ``(B, m)``, the dtype of ``d``.
    """
    if not isinstance(d, Tensor) or d.dim() != 2 or not d.is_floating_point():
        got = f"{tuple(d.shape)} {d.dtype}" if isinstance(d, Tensor) else type(d).__name__
        raise ValueError(f"d: expected a real floating (B, m) tensor of gains, got {got}")
    rho = _check_rho(rho)
    m = d.shape[1]
    if rho is None:
        return d - (d.sum(1, keepdim=True) - m) / m
    lo, hi = 1.0 - rho, 1.0 + rho
    vs, _ = torch.sort(d, dim=1)  # (B, m)
    csum = torch.cat([vs.new_zeros(vs.shape[0], 1), vs.cumsum(1)], dim=1)  # (B, m + 1)
    kinks, _ = torch.sort(torch.cat([vs - hi, vs - lo], dim=1), dim=1)  # (B, 2m)
    # at τ: entries with d_i − τ ≤ lo sit at lo, those with d_i − τ ≥ hi at hi, the rest are free
    n_lo = torch.searchsorted(vs, kinks + lo, right=True)  # (B, 2m) count of d_i ≤ τ + lo
    n_below_hi = torch.searchsorted(vs, kinks + hi, right=False)  # count of d_i < τ + hi
    s_free = csum.gather(1, n_below_hi) - csum.gather(1, n_lo)
    n_lo_f, n_hi_f = n_lo.to(d.dtype), (m - n_below_hi).to(d.dtype)  # (a Python float times int64 is float32)
    free = (n_below_hi - n_lo).clamp_min(0).to(d.dtype)
    total = lo * n_lo_f + hi * n_hi_f + s_free - kinks * free  # the sum at each kink, decreasing in τ
    k = ((total >= m).sum(1, keepdim=True) - 1).clamp(0, 2 * m - 2)  # the last kink with sum ≥ m
    ta, tb = kinks.gather(1, k), kinks.gather(1, k + 1)
    ga, gb = total.gather(1, k), total.gather(1, k + 1)
    slope = ga - gb
    tau = torch.where(slope > 0, ta + (ga - m) * (tb - ta) / torch.where(slope > 0, slope, torch.ones_like(slope)),
                      ta)
    return torch.clamp(d - tau, lo, hi)


class CalibrationState(NamedTuple):
    """The iterate of blind calibration: signal ``x`` ``(B, n)`` and gains ``d`` ``(B, m)``."""

    x: Tensor
    d: Tensor


def _check_data(A: Tensor, y: Tensor) -> Tuple[int, int, int, int]:
    if not isinstance(A, Tensor) or A.dim() != 4 or not A.is_floating_point():
        got = f"shape {tuple(A.shape)}, {A.dtype}" if isinstance(A, Tensor) else type(A).__name__
        raise ValueError(f"A: expected a real floating (B, p, m, n) tensor (p sensing matrices m×n per sample), "
                         f"got {got}")
    B, p, m, n = A.shape
    if min(B, p, m, n) < 1:
        raise ValueError(f"A: expected positive sizes (B, p, m, n), got {tuple(A.shape)}")
    if not isinstance(y, Tensor) or tuple(y.shape) != (B, p, m):
        got = tuple(y.shape) if isinstance(y, Tensor) else type(y).__name__
        raise ValueError(f"y: expected shape (B, p, m) = {(B, p, m)} to match A {tuple(A.shape)}, got {got}")
    if y.dtype != A.dtype:
        raise TypeError(f"y: expected the dtype of A ({A.dtype}), got {y.dtype}")
    return B, p, m, n


class BlindCalibrationProblem(Problem):
    """``f(x, d) = 1/(2mp) Σ_l ‖diag(d) A_l x − y_l‖²`` with gains constrained to ``G_ρ``.

    Args:
        A: ``(B, p, m, n)`` sensing matrices, ``p`` per sample.
        y: ``(B, p, m)`` measurements ``y_l = diag(d) A_l x``.
        rho: the gains' box half-width ``ρ`` (``‖d − 1‖∞ ≤ ρ``), or ``None`` for the
            hyperplane ``1ᵀd = m`` alone.
        check: validate shapes, dtypes and finiteness (one host sync).

    A read-only problem (built once per call, read by the steps). The estimate a step exposes
    is ``x``; the objective and gradients take the whole state.
    """

    def __init__(self, A: Tensor, y: Tensor, rho: Optional[float] = None, check: bool = True) -> None:
        B, p, m, n = _check_data(A, y)
        if check:
            check_finite(A, "A")
            check_finite(y, "y")
        object.__setattr__(self, "A", A)
        object.__setattr__(self, "y", y)
        object.__setattr__(self, "rho", _check_rho(rho))
        object.__setattr__(self, "sizes", (B, p, m, n))

    def __setattr__(self, name, value):
        raise AttributeError(f"BlindCalibrationProblem is read-only: build a new problem instead of setting {name!r}")

    @property
    def batch_size(self) -> int:
        return self.sizes[0]

    def _like(self) -> Tensor:
        return self.y

    def inputs_finite(self) -> Tensor:
        return torch.isfinite(self.y).all() & torch.isfinite(self.A).all()

    def check_inputs_finite(self) -> None:
        check_finite(self.A, "A")
        check_finite(self.y, "y")

    # ------------------------------------------------------------------ model and objective
    def sense(self, x: Tensor) -> Tensor:
        """``A_l x`` for every snapshot: ``(B, n) → (B, p, m)``."""
        return torch.einsum("bpmn,bn->bpm", self.A, x)

    def forward_model(self, x: Tensor, d: Tensor) -> Tensor:
        """``diag(d) A_l x``: ``(B, n), (B, m) → (B, p, m)``."""
        return d[:, None, :] * self.sense(x)

    def _scale(self) -> float:
        _, p, m, _ = self.sizes
        return 1.0 / (m * p)

    def smooth(self, x, d: Optional[Tensor] = None) -> Tensor:
        """``f(x, d)`` per sample ``(B,)``; ``x`` may be a :class:`CalibrationState`."""
        if isinstance(x, CalibrationState):
            x, d = x
        if d is None:
            raise ValueError("d: the calibration objective needs the gains: call objective(x, d) or objective(state)")
        r = self.forward_model(x, d) - self.y
        return 0.5 * self._scale() * r.square().flatten(1).sum(1)

    objective = smooth  # the constraint's indicator is zero on the feasible iterates

    def grads(self, x: Tensor, d: Tensor) -> Tuple[Tensor, Tensor]:
        """``(∇_x f, ∇^⊥_d f)``: ``(B, n)`` and ``(B, m)``, the gains' gradient projected on
        ``1^⊥`` (mean removed)."""
        ax = self.sense(x)  # (B, p, m)
        r = d[:, None, :] * ax - self.y
        s = self._scale()
        gx = s * torch.einsum("bpmn,bpm->bn", self.A, d[:, None, :] * r)
        gd = s * (ax * r).sum(1)
        return gx, gd - gd.mean(1, keepdim=True)

    def grad(self, x: Tensor) -> Tensor:
        raise TypeError("BlindCalibrationProblem: the gradient depends on the gains too; use grads(x, d)")

    # ------------------------------------------------------------------ initial point
    def initial_state(self) -> CalibrationState:
        """The paper's start: ``x₀ = (1/mp) Σ_l A_lᵀ y_l``, ``d₀ = 1``."""
        x0 = self._scale() * torch.einsum("bpmn,bpm->bn", self.A, self.y)
        return CalibrationState(x0, torch.ones(self.sizes[0], self.sizes[2], dtype=self.y.dtype,
                                               device=self.y.device))

    def zeros(self) -> Tensor:
        return self.initial_state().x

    def x0_norm2(self) -> Tensor:
        """``‖x₀‖²`` per sample ``(B,)``, the estimate of ``‖x‖²`` in the gains' step (cached)."""
        cache = self.__dict__.get("_x0n2")
        if cache is None:
            cache = self.initial_state().x.square().sum(1)
            cache = torch.where(cache > 0, cache, torch.ones_like(cache))
            object.__setattr__(self, "_x0n2", cache)
        return cache


class BlindCalibrationStep(Step):
    """One iteration of the paper's projected gradient descent on ``(x, d)``:

    ``x ← x − μ_x ∇_x f``,   ``d ← P_{G_ρ}(d − μ_d (m/‖x₀‖²) ∇^⊥_d f)``

    (both gradients at the current ``(x, d)``; ``ρ`` is the problem's). Untrained,
    ``step_x = step_d = μ`` are the paper's ``μ_ξ = μ``, ``μ_γ = μ m/‖x‖²`` with ``‖x‖`` estimated
    by ``‖x₀‖``.

    Args:
        step_x, step_d: ``μ_x`` and ``μ_d`` (``> 0``; the gains' step in units of ``‖x₀‖²/m``).
        learn_step: learn both (positive by softplus of sharpness ``10/value``, so an optimiser
            step moves them about as it would a plain parameter).

    The state is :class:`CalibrationState`; its estimate is ``x``; the residual is the relative
    change of the whole state. A fixed point is a stationary point of ``f`` on ``G_ρ``, so the
    ``implicit`` and ``jfb`` gradient modes apply.
    """

    def __init__(self, step_x: float = 0.25, step_d: float = 0.25, learn_step: bool = False) -> None:
        super().__init__()
        for name, v in (("step_x", step_x), ("step_d", step_d)):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not (0 < v < float("inf")):
                raise ValueError(f"{name}: expected a finite number > 0, got {v!r}")
        beta = (lambda v: 10.0 / float(v)) if learn_step else (lambda v: 1.0)
        self.step_x = PositiveScalar(step_x, learnable=learn_step, name="step_x", beta=beta(step_x))
        self.step_d = PositiveScalar(step_d, learnable=learn_step, name="step_d", beta=beta(step_d))

    def init_state(self, x0: Tensor, problem: BlindCalibrationProblem) -> CalibrationState:
        """``(x0, 1)``: gains start at one (use ``problem.initial_state()`` for the paper's start)."""
        return CalibrationState(x0, torch.ones(x0.shape[0], problem.sizes[2], dtype=x0.dtype, device=x0.device))

    def forward(self, state: CalibrationState, problem: BlindCalibrationProblem) -> CalibrationState:
        x, d = state
        gx, gd = problem.grads(x, d)
        m = problem.sizes[2]
        mu_x = self.step_x().to(x.dtype)
        mu_d = self.step_d().to(x.dtype) * (m / problem.x0_norm2())[:, None]
        return CalibrationState(x - mu_x * gx, project_gains(d - mu_d * gd, problem.rho))

    def residual(self, new: CalibrationState, old: CalibrationState, problem: Problem) -> Tensor:
        """``‖s_new − s_old‖ / ‖s_old‖`` over both fields, ``(B,)``."""
        num = (batch_norm(new.x - old.x).square() + batch_norm(new.d - old.d).square()).sqrt()
        den = (batch_norm(old.x).square() + batch_norm(old.d).square()).sqrt()
        return safe_ratio(num, den)


def _check_int(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name}: expected an int >= {minimum}, got {value!r}")
    return value


def blind_calibration(A: Tensor, y: Tensor, rho: Optional[float] = 0.99, step: float = 0.25,
                      max_iter: int = 5000, tol: Optional[float] = 1e-10, x0: Optional[Tensor] = None,
                      d0: Optional[Tensor] = None, record_objective: bool = False,
                      grad_mode: Union[str, GradMode, None] = None) -> Tuple[Tensor, Tensor, SolverInfo]:
    """Blind gain calibration by the paper's projected gradient descent (see the module notes).

    Args:
        A: ``(B, p, m, n)`` sensing matrices; y: ``(B, p, m)`` measurements.
        rho: gains' box half-width (``‖d − 1‖∞ ≤ ρ``; the default 0.99 keeps them positive, as the
            paper's ``ρ < 1``), ``None``: the hyperplane ``1ᵀd = m`` only.
        step: ``μ`` (``μ_ξ = μ``, ``μ_γ = μ m/‖x₀‖²``). The paper's theory asks for a small
            enough ``μ``; 0.25 decreased ``f`` monotonically on every instance we ran (0.5 did
            not when ``mp`` is close to ``n + m``: the curvature of ``f`` fluctuates more with few
            measurements), see ``tests/test_calibration.py`` and BENCHMARKS.md.
        max_iter: iteration budget. tol: stop a sample once the relative change of ``(x, d)`` is
            ``≤ tol`` (``None``: run ``max_iter``).
        x0, d0: start (default the paper's: ``x₀ = (1/mp) Σ_l A_lᵀ y_l``, ``d₀ = 1``); ``d0`` is
            projected onto ``G_ρ``.
        record_objective: store ``f`` after every iteration in ``info.objective`` ``(B, K)``.
        grad_mode: gradient mode through the iterations (:mod:`unroll.autodiff`).

    Returns:
        ``(x, d, info)``: ``x`` ``(B, n)``, ``d`` ``(B, m)`` with ``1ᵀd = m``, ``info`` a
        :class:`~unroll.info.SolverInfo` (``method = "blind_calibration"``).
    """
    max_iter = _check_int("max_iter", max_iter, 1)
    tol = check_tol(tol, "tol")
    problem = BlindCalibrationProblem(A, y, rho)
    start = problem.initial_state()
    B, _, m, n = problem.sizes
    if x0 is not None:
        if not isinstance(x0, Tensor) or tuple(x0.shape) != (B, n):
            got = tuple(x0.shape) if isinstance(x0, Tensor) else type(x0).__name__
            raise ValueError(f"x0: expected shape (B, n) = {(B, n)}, got {got}")
        start = start._replace(x=x0.to(A.dtype))
    if d0 is not None:
        if not isinstance(d0, Tensor) or tuple(d0.shape) != (B, m):
            got = tuple(d0.shape) if isinstance(d0, Tensor) else type(d0).__name__
            raise ValueError(f"d0: expected shape (B, m) = {(B, m)}, got {got}")
        start = start._replace(d=project_gains(d0.to(A.dtype), problem.rho))
    layer = Unrolled(BlindCalibrationStep(step, step), num_iters=max_iter).to(device=A.device)
    out = layer(problem, state0=start, tol=tol, return_states=record_objective, grad_mode=grad_mode)
    info = out.info
    info.method = "blind_calibration"
    if record_objective:
        info.objective = torch.stack([problem.objective(s) for s in out.states], dim=1)
    return out.state.x, out.state.d, info


def calibration_errors(x_hat: Tensor, d_hat: Tensor, x: Tensor, d: Tensor) -> Tuple[Tensor, Tensor]:
    """Relative errors ``‖x̂ − x‖/‖x‖`` and ``‖d̂ − d‖/‖d‖`` per sample, ``(B,)`` each, after
    moving both pairs to the normalisation ``1ᵀd = m`` (``(x·c, d/c)`` are the same data, so
    errors are measured up to that scale; estimates from :func:`blind_calibration` already
    have it)."""
    for name, t, like in (("x_hat", x_hat, x), ("d_hat", d_hat, d)):
        if not isinstance(t, Tensor) or t.shape != like.shape:
            got = tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__
            raise ValueError(f"{name}: expected the shape of the truth {tuple(like.shape)}, got {got}")
    m = d.shape[1]

    def normalise(xx, dd):
        c = dd.sum(1, keepdim=True) / m
        c = torch.where(c != 0, c, torch.ones_like(c))
        return xx * c, dd / c

    xh, dh = normalise(x_hat, d_hat)
    xt, dt = normalise(x, d)
    return safe_ratio(batch_norm(xh - xt), batch_norm(xt)), safe_ratio(batch_norm(dh - dt), batch_norm(dt))


def make_calibration_instances(batch: int, n: int, m: int, p: int, rho: float = 0.5,
                               generator: Optional[torch.Generator] = None, dtype: torch.dtype = torch.float64,
                               noise_std: float = 0.0, device=None) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """Random blind-calibration instances with known truth.

    ``A_l`` has i.i.d. ``N(0, 1)`` entries, ``x ~ N(0, Iₙ)``, and ``d = 1 + ε`` with ``ε`` drawn
    uniformly in ``[−1, 1]ᵐ``, its mean removed and scaled so that ``‖ε‖∞ = ρ`` (gains in
    ``G_ρ``, ``1ᵀd = m``); ``y_l = diag(d) A_l x`` plus, if ``noise_std > 0``, white Gaussian
    noise of that standard deviation relative to the RMS of the clean measurements.

    Returns:
        ``(A, y, x, d)``: ``(B, p, m, n)``, ``(B, p, m)``, ``(B, n)``, ``(B, m)`` on ``device``.
    """
    for name, v in (("batch", batch), ("n", n), ("m", m), ("p", p)):
        _check_int(name, v, 1)
    if isinstance(rho, bool) or not isinstance(rho, (int, float)) or not (0 <= rho < 1):
        raise ValueError(f"rho: expected a number in [0, 1) (gains within rho of one, positive), got {rho!r}")
    if isinstance(noise_std, bool) or not isinstance(noise_std, (int, float)) or not (0 <= noise_std < math.inf):
        raise ValueError(f"noise_std: expected a finite number >= 0, got {noise_std!r}")
    kw = dict(generator=generator, dtype=dtype)
    A = torch.randn(batch, p, m, n, **kw)
    x = torch.randn(batch, n, **kw)
    eps = 2 * torch.rand(batch, m, **kw) - 1
    eps = eps - eps.mean(1, keepdim=True)
    peak = eps.abs().amax(1, keepdim=True)
    eps = torch.where(peak > 0, eps * (rho / torch.where(peak > 0, peak, torch.ones_like(peak))), eps)
    d = 1 + eps
    y = d[:, None, :] * torch.einsum("bpmn,bn->bpm", A, x)
    if noise_std > 0:
        rms = y.square().flatten(1).mean(1).sqrt()[:, None, None]
        y = y + noise_std * rms * torch.randn(y.shape, **kw)
    return tuple(t.to(device) if device is not None else t for t in (A, y, x, d))
