"""Hypergradients: the gradient of an outer loss with respect to hyperparameters, through an
inner problem solved by an iterative solver.

``hypergrad(inner, outer, hparams, method=...)`` where

* ``inner(*hparams) → Problem`` builds the inner problem from the hyperparameters (tensors that
  keep their graph: a regulariser's weight, per-feature weights, sample weights…),
* ``outer(x, *hparams) → 0-dim tensor`` scores the inner solution ``x*(θ)`` (a validation loss),

and ``method`` is

* ``"unrolled"``: differentiate the inner iterations (``grad_mode`` ``"full"``,
  ``"truncated"`` or ``"checkpoint"`` of :mod:`unroll.autodiff`);
* ``"implicit"``: the implicit function theorem at the inner fixed point ``x* = T(x*, θ)`` of the
  solver's step (gradient or proximal-gradient step): the adjoint system ``(I − ∂T/∂x)ᵀ v = g``
  by ``torch.func`` vector-Jacobian products (Hessian-vector products for a smooth inner
  problem) and a solver object (``CG``, ``BiCGSTAB``, ``Neumann``); for a non-smooth inner problem
  the prox's generalised Jacobian restricts it to the support / active set (the Lasso's closed
  form on its support);
* ``"penalty"``: first order, no second derivatives (the value-function penalty of the
  F2SA/BOME family, Kwon et al. 2023): with ``x_ρ = argmin_x G(x, θ) + F(x, θ)/ρ`` and
  ``x* = argmin_x G(x, θ)``, the estimate ``∇_θF(x_ρ, θ) + ρ(∇_θG(x_ρ, θ) − ∇_θG(x*, θ))``, whose
  error is ``O(1/ρ)``: it approaches the implicit hypergradient as the penalty ``ρ`` grows.

Returns the hypergradients (one per hyperparameter) and a :class:`BilevelInfo`.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Callable, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn

from .autodiff import GradMode, as_grad_mode
from .checks import check_tol
from .info import SolverInfo, Status
from .linalg import LinearSolver, SolverWarning, as_linear_solver
from .operators.matrix import MatrixOperator
from .problem import Problem, SmoothProblem
from .prox import L1, ElasticNet, SquaredL2
from .steps import GradientStep, ProxGradStep
from .unrolled import Unrolled

__all__ = ["hypergrad", "BilevelInfo", "METHODS", "ridge", "lasso", "elastic_net", "logistic", "multinomial_logistic",
           "LassoCV", "ElasticNetCV", "LogisticRegressionCV"]

METHODS = ("unrolled", "implicit", "penalty")


@dataclass
class BilevelInfo:
    """What a hypergradient computation did.

    Attributes:
        method: ``"unrolled"``, ``"implicit"`` or ``"penalty"``.
        outer: the outer loss at the inner solution (a float).
        inner: the inner solve's :class:`~unroll.info.SolverInfo` (iterations, residual, status);
            its ``backward`` holds the adjoint solve's (``implicit``).
        penalized: the penalised inner solve's info (``penalty`` only).
        penalty: the penalty ``ρ`` (``penalty`` only).
        x: the inner solution ``(B, *shape)``, detached (a warm start for the next outer step).
    """

    method: str
    outer: float
    inner: SolverInfo
    penalized: Optional[SolverInfo] = None
    penalty: Optional[float] = None
    x: Optional[Tensor] = None

    @property
    def backward(self) -> Optional[SolverInfo]:
        """The adjoint solve's info (``implicit``), else ``None``."""
        return self.inner.backward


def _default_step(problem: Problem) -> nn.Module:
    return ProxGradStep(problem.reg) if problem.reg is not None else GradientStep(1.0)


class _Penalized(Problem):
    """``G(x) + F(x)/ρ``: the inner problem with the outer loss added at weight ``1/ρ`` (its
    gradient through autograd). Lipschitz constant: the inner one (``F/ρ`` is a small perturbation
    for large ρ; pass a smaller step otherwise)."""

    def __init__(self, base: Problem, outer: Callable[[Tensor], Tensor], rho: float) -> None:
        object.__setattr__(self, "base", base)
        object.__setattr__(self, "outer", outer)
        object.__setattr__(self, "rho", float(rho))
        object.__setattr__(self, "reg", base.reg)

    @property
    def batch_size(self) -> int:
        return self.base.batch_size

    def _like(self) -> Tensor:
        return self.base._like()

    def _lipschitz_cached(self) -> Tensor:
        return self.base._lipschitz_cached()

    def smooth(self, x: Tensor) -> Tensor:
        return self.base.smooth(x) + self.outer(x) / (self.rho * x.shape[0])

    def grad(self, x: Tensor) -> Tensor:
        with torch.enable_grad():
            xr = x.detach().requires_grad_(True)
            g, = torch.autograd.grad(self.outer(xr), xr)
        return self.base.grad(x) + g / self.rho

    def zeros(self) -> Tensor:
        return self.base.zeros()


def _check_hparams(hparams: Sequence[Tensor]) -> Tuple[Tensor, ...]:
    if isinstance(hparams, Tensor):
        hparams = (hparams,)
    hparams = tuple(hparams)
    if not hparams:
        raise ValueError("hparams: expected at least one tensor hyperparameter, got none")
    for i, h in enumerate(hparams):
        if not isinstance(h, Tensor) or not (h.is_floating_point() or h.is_complex()):
            raise TypeError(f"hparams[{i}]: expected a floating-point tensor, got "
                            f"{type(h).__name__ if not isinstance(h, Tensor) else h.dtype}")
        if not h.requires_grad:
            raise ValueError(f"hparams[{i}]: expected a tensor that requires grad (a leaf with requires_grad=True "
                             "or a parametrisation of one), got one that does not")
    return hparams


def hypergrad(inner: Callable[..., Problem], outer: Callable[..., Tensor], hparams: Union[Tensor, Sequence[Tensor]],
              method: str = "implicit", *, step: Optional[nn.Module] = None, x0: Optional[Tensor] = None,
              num_iters: int = 1000, tol: float = 1e-10, check_every: int = 10,
              grad_mode: Union[str, GradMode] = "full", backward_solver: Union[str, LinearSolver] = "bicgstab",
              backward_tol: float = 1e-10, backward_max_iter: int = 1000, penalty: float = 1e4,
              on_failure: str = "warn") -> Tuple[Tuple[Tensor, ...], BilevelInfo]:
    """The hypergradient ``d outer(x*(θ), θ) / dθ`` of an outer loss through an inner problem.

    Args:
        inner: ``inner(*hparams) → Problem`` (e.g. ``Problem.create(X, y, L1(lam))`` or a
            :class:`~unroll.problem.SmoothProblem`); built with the hyperparameters as tensors.
        outer: ``outer(x, *hparams) → 0-dim tensor``, the outer (validation) loss at ``x``
            ``(B, *shape)``.
        hparams: the hyperparameters: tensors that require grad (or one tensor).
        method: ``"unrolled"``, ``"implicit"`` or ``"penalty"`` (see the module docstring).
        step: the inner iteration (default: proximal gradient with the problem's regulariser, or
            a gradient step for a smooth problem; step size ``1/L``).
        x0: the inner start (zeros by default).
        num_iters: the inner iteration budget (``unrolled``: the iterations differentiated).
        tol: the inner tolerance on the step's residual (``implicit``/``penalty``; ``unrolled``
            runs ``num_iters`` iterations).
        check_every: how often the inner loop tests for convergence.
        grad_mode: ``unrolled`` only: ``"full"``, ``"truncated"`` or ``"checkpoint"`` (a
            :class:`~unroll.autodiff.GradMode`).
        backward_solver, backward_tol, backward_max_iter: ``implicit``: the adjoint solve
            (``"cg"`` for a symmetric Jacobian, e.g. a smooth inner problem; ``"bicgstab"`` in
            general; ``"neumann"``; or a solver object).
        penalty: ``penalty``: the weight ``ρ > 0``.
        on_failure: ``"warn"``, ``"raise"`` or ``"ignore"`` when the inner or the adjoint solve
            does not converge (never a silently wrong gradient).

    Returns:
        ``(grads, info)``: one gradient per hyperparameter (shaped like it) and a
        :class:`BilevelInfo`.
    """
    if method not in METHODS:
        raise ValueError(f"method: expected one of {', '.join(repr(m) for m in METHODS)}, got {method!r}")
    hparams = _check_hparams(hparams)
    tol = check_tol(tol, "tol", allow_none=False)
    if not (isinstance(penalty, (int, float)) and 0 < penalty < float("inf")):
        raise ValueError(f"penalty: expected a finite number > 0, got {penalty!r}")
    if on_failure not in ("warn", "raise", "ignore"):
        raise ValueError(f"on_failure: expected 'warn', 'raise' or 'ignore', got {on_failure!r}")

    def build() -> Tuple[Problem, nn.Module]:
        problem = inner(*hparams)
        if not isinstance(problem, Problem):
            raise TypeError(f"inner: expected a callable returning a unroll.Problem, got {type(problem).__name__}")
        return problem, step if step is not None else _default_step(problem)

    if method == "unrolled":
        mode = as_grad_mode(grad_mode)
        if mode.mode in ("implicit", "jfb"):
            raise ValueError(f"grad_mode: method='unrolled' differentiates the iterations ('full', 'truncated', "
                             f"'checkpoint'); got {mode.mode!r} (use method='implicit')")
        problem, st = build()
        out = Unrolled(st, num_iters=num_iters)(problem, x0, grad_mode=mode)
        loss = outer(out.x, *hparams)
        grads = torch.autograd.grad(loss, hparams, allow_unused=True)
        return _fill(grads, hparams), BilevelInfo("unrolled", float(loss.detach()), out.info, x=out.x.detach())

    if method == "implicit":
        mode = GradMode("implicit", forward_tol=tol, backward_solver=as_linear_solver(
            backward_solver, backward_tol, backward_max_iter), on_failure=on_failure)
        problem, st = build()
        out = Unrolled(st, num_iters=num_iters)(problem, x0, check_every=check_every, grad_mode=mode)
        loss = outer(out.x, *hparams)
        grads = torch.autograd.grad(loss, hparams, allow_unused=True)
        return _fill(grads, hparams), BilevelInfo("implicit", float(loss.detach()), out.info, x=out.x.detach())

    # penalty: two inner solves without a graph, then first-order terms only
    problem, st = build()
    fixed = GradMode("full", on_failure=on_failure)
    with torch.no_grad():
        star = Unrolled(st, num_iters=num_iters)(problem, x0, tol=tol, check_every=check_every, grad_mode=fixed)
        pen_problem = _Penalized(problem, lambda x: outer(x, *[h.detach() for h in hparams]), penalty)
        pen = Unrolled(st, num_iters=num_iters)(pen_problem, star.x, tol=tol, check_every=check_every,
                                                grad_mode=fixed)
    for name, info in (("inner", star.info), ("penalised inner", pen.info)):
        if info.status != Status.CONVERGED:
            _fail(on_failure, f"hypergrad: the {name} solve did not converge ({info.status}, largest residual "
                              f"{float(info.residual.max()):.3g} > tol={tol:g} after {int(info.iterations.max())} "
                              "iterations): the penalty hypergradient assumes both solutions")
    x_rho, x_star = pen.x.detach(), star.x.detach()
    problem, _ = build()  # with a graph to the hyperparameters
    value = outer(x_rho, *hparams) + penalty * (problem.objective(x_rho).sum() - problem.objective(x_star).sum())
    grads = torch.autograd.grad(value, hparams, allow_unused=True)
    with torch.no_grad():
        loss = float(outer(x_star, *hparams))
    return _fill(grads, hparams), BilevelInfo("penalty", loss, star.info, penalized=pen.info, penalty=float(penalty),
                                         x=x_star)


def _fill(grads, hparams) -> Tuple[Tensor, ...]:
    return tuple(torch.zeros_like(h) if g is None else g for g, h in zip(grads, hparams))


def _fail(on_failure: str, message: str) -> None:
    if on_failure == "raise":
        raise RuntimeError(message)
    if on_failure == "warn":
        warnings.warn(message, SolverWarning, stacklevel=3)


# ---------------------------------------------------------------------------- ready-made inner problems
# With scikit-learn's objective scalings, so that ``alpha`` means what it means there (the
# estimators of the same name, no intercept). ``X`` is ``(n, d)`` (one design shared by the
# batch) or ``(B, n, d)``; ``y`` is ``(n,)`` or ``(B, n)``; hyperparameters are numbers or tensors
# (kept in the graph): ``()``, ``(d,)`` per feature or ``(B, 1)`` per problem.
def _design(X: Tensor, y: Tensor, scale: float = 1.0) -> Tuple[MatrixOperator, Tensor]:
    if not isinstance(X, Tensor) or X.dim() not in (2, 3):
        raise ValueError(f"X: expected a (n, d) or (B, n, d) tensor, got "
                         f"{tuple(X.shape) if isinstance(X, Tensor) else type(X).__name__}")
    if not isinstance(y, Tensor) or y.dim() not in (1, 2):
        raise ValueError(f"y: expected a (n,) or (B, n) tensor, got "
                         f"{tuple(y.shape) if isinstance(y, Tensor) else type(y).__name__}")
    y = y.unsqueeze(0) if y.dim() == 1 else y
    if y.shape[-1] != X.shape[-2]:
        raise ValueError(f"y: expected {X.shape[-2]} targets per problem (the rows of X {tuple(X.shape)}), "
                         f"got shape {tuple(y.shape)}")
    return MatrixOperator(X * scale), (y * scale).to(X.dtype)


def _sample_weight(sample_weight, n: int, like: Tensor) -> Optional[Tensor]:
    """``sample_weight`` as a ``(n,)`` or ``(B, n)`` tensor (kept in the graph), checked."""
    if sample_weight is None:
        return None
    s = torch.as_tensor(sample_weight, dtype=like.dtype, device=like.device) if not isinstance(
        sample_weight, Tensor) else sample_weight
    if s.dim() not in (1, 2) or s.shape[-1] != n:
        raise ValueError(f"sample_weight: expected ({n},) or (B, {n}) weights (one per row of X), got shape "
                         f"{tuple(s.shape)}")
    if bool((s.detach() < 0).any()) or not bool(torch.isfinite(s.detach()).all()):
        raise ValueError("sample_weight: expected finite weights >= 0")
    return s


def ridge(X: Tensor, y: Tensor, alpha, sample_weight=None) -> Problem:
    """scikit-learn's ``Ridge(alpha, fit_intercept=False)``: ``Σ_i s_i(y_i − x_iᵀw)² + α‖w‖²``
    (as its half, ``½‖S^½(Xw − y)‖² + α/2·‖w‖²``, the same minimiser), with per-sample weights
    ``s`` ``(n,)`` (``sample_weight``, default 1; a tensor keeps its graph). Returns a
    least-squares :class:`Problem`."""
    op, yy = _design(X, y)
    s = _sample_weight(sample_weight, X.shape[-2], op.matrix)
    if s is not None:
        r = s.sqrt()
        op, yy = MatrixOperator(op.matrix * r.unsqueeze(-1)), yy * r
    return Problem.create(op, yy, SquaredL2(alpha))


def lasso(X: Tensor, y: Tensor, alpha) -> Problem:
    """scikit-learn's ``Lasso(alpha, fit_intercept=False)``: ``‖y − Xw‖²/(2n) + α‖w‖₁``."""
    op, yy = _design(X, y, X.shape[-2] ** -0.5)
    return Problem.create(op, yy, L1(alpha))


def elastic_net(X: Tensor, y: Tensor, alpha, l1_ratio: float = 0.5) -> Problem:
    """scikit-learn's ``ElasticNet(alpha, l1_ratio, fit_intercept=False)``:
    ``‖y − Xw‖²/(2n) + α·ρ‖w‖₁ + α(1 − ρ)/2·‖w‖²`` with ``ρ = l1_ratio``."""
    if not (isinstance(l1_ratio, (int, float)) and 0 <= l1_ratio <= 1):
        raise ValueError(f"l1_ratio: expected a number in [0, 1], got {l1_ratio!r}")
    op, yy = _design(X, y, X.shape[-2] ** -0.5)
    return Problem.create(op, yy, ElasticNet(alpha * l1_ratio, alpha * (1 - l1_ratio)))


def _weighted_mean(loss: Tensor, s: Optional[Tensor]) -> Tensor:
    """``(1/n) Σ_i s_i loss_i`` over the last dim of ``loss`` ``(B, n)``."""
    return loss.mean(-1) if s is None else (s * loss).mean(-1)


def logistic(X: Tensor, y: Tensor, lam, sample_weight=None) -> SmoothProblem:
    """Binary ℓ2-regularised logistic regression (labels 0/1, no intercept):
    ``(1/n) Σ_i s_i log(1 + exp(−t_i x_iᵀw)) + ½ Σ_j λ_j w_j²`` with ``t_i = 2y_i − 1``; a scalar
    ``λ`` is scikit-learn's ``LogisticRegression(C=1/(n·λ), fit_intercept=False)`` (and
    ``sample_weight=s``). ``λ`` may be per feature ``(d,)`` (a zero entry leaves that feature
    unpenalised, e.g. an intercept column); ``s`` ``(n,)`` are per-sample weights (default 1;
    a tensor keeps its graph: hyper-cleaning). The Lipschitz constant
    ``max s·‖X‖²/(4n) + max λ`` is given to the problem. The unknown ``w`` is ``(B, d)``."""
    op, yy = _design(X, y)
    Xb = op.matrix if op.matrix.dim() == 3 else op.matrix.unsqueeze(0).expand(yy.shape[0], *op.matrix.shape)
    if bool(((yy != 0) & (yy != 1)).any()):
        raise ValueError("y: expected binary labels 0/1")
    n = Xb.shape[1]
    lam_t = _check_penalty(lam, Xb, "lam")
    s = _sample_weight(sample_weight, n, Xb)
    s_b = None if s is None else (s.unsqueeze(0) if s.dim() == 1 else s).expand(yy.shape[0], n)

    def f(w: Tensor, data) -> Tensor:
        X_, t, sw = data
        z = torch.einsum("bnd,bd->bn", X_, w)
        return _weighted_mean(torch.nn.functional.softplus(z) - t * z, sw) + 0.5 * (lam_t * w * w).sum(1)

    with torch.no_grad():
        smax = 1.0 if s is None else float(s.detach().max())
        lip = torch.linalg.matrix_norm(Xb.detach(), ord=2) ** 2 * smax / (4 * n) + lam_t.detach().max()
    return SmoothProblem(f, (Xb, yy, s_b), lipschitz=lip, like=Xb.new_zeros(Xb.shape[0], Xb.shape[2]))


def _check_penalty(lam, like: Tensor, name: str) -> Tensor:
    lam_t = lam if isinstance(lam, Tensor) else torch.as_tensor(lam, dtype=like.dtype, device=like.device)
    if not bool(torch.isfinite(lam_t.detach()).all()) or bool((lam_t.detach() < 0).any()):
        raise ValueError(f"{name}: expected finite penalties >= 0, got {lam_t.detach().flatten()[:4].tolist()}")
    return lam_t


def multinomial_logistic(X: Tensor, y: Tensor, lam, n_classes: Optional[int] = None,
                         sample_weight=None) -> SmoothProblem:
    """Multiclass (multinomial, softmax) ℓ2-regularised logistic regression, no intercept:
    ``(1/n) Σ_i s_i CE(Wᵀx_i, y_i) + ½ Σ_j λ_j ‖W_j‖²`` over ``W`` ``(d, C)`` (the unknown is
    ``(B, d, C)``); a scalar ``λ`` is scikit-learn's multinomial
    ``LogisticRegression(C=1/(n·λ), fit_intercept=False)``, ``λ`` may be per feature ``(d,)``
    or ``(d, C)``, and ``s`` ``(n,)`` are per-sample weights (a tensor keeps its graph).

    Args:
        X: ``(n, d)`` or ``(B, n, d)`` features.
        y: ``(n,)`` or ``(B, n)`` integer labels in ``0..C-1``.
        lam: the penalty (number, ``()``, ``(d,)``, ``(d, C)``; ``>= 0``).
        n_classes: ``C`` (default: ``max(y) + 1``).
        sample_weight: ``(n,)`` or ``(B, n)`` weights ``>= 0``.

    The Lipschitz constant ``max s·‖X‖²/(2n) + max λ`` is given to the problem.
    """
    if not isinstance(y, Tensor):
        raise ValueError(f"y: expected a tensor of integer labels, got {type(y).__name__}")
    if y.is_floating_point():
        if not bool((y == y.round()).all()):
            raise ValueError("y: expected integer class labels 0..C-1, got non-integer values")
        y = y.long()
    op, yy = _design(X, y.to(X.dtype))
    yy = yy.long()
    Xb = op.matrix if op.matrix.dim() == 3 else op.matrix.unsqueeze(0).expand(yy.shape[0], *op.matrix.shape)
    C = int(yy.max()) + 1 if n_classes is None else int(n_classes)
    if C < 2 or bool((yy < 0).any()) or bool((yy >= C).any()):
        raise ValueError(f"y: expected labels in 0..{C - 1} (n_classes={C}), got min {int(yy.min())}, max {int(yy.max())}")
    n = Xb.shape[1]
    lam_t = _check_penalty(lam, Xb, "lam")
    if lam_t.dim() == 1:
        lam_t = lam_t.unsqueeze(-1)  # per feature: the same for every class
    s = _sample_weight(sample_weight, n, Xb)
    s_b = None if s is None else (s.unsqueeze(0) if s.dim() == 1 else s).expand(yy.shape[0], n)
    onehot = torch.nn.functional.one_hot(yy, C).to(Xb.dtype)

    def f(W: Tensor, data) -> Tensor:
        X_, Y, sw = data
        z = torch.einsum("bnd,bdc->bnc", X_, W)
        ce = torch.logsumexp(z, -1) - (Y * z).sum(-1)
        return _weighted_mean(ce, sw) + 0.5 * (lam_t * W * W).flatten(1).sum(1)

    with torch.no_grad():
        smax = 1.0 if s is None else float(s.detach().max())
        lip = torch.linalg.matrix_norm(Xb.detach(), ord=2) ** 2 * smax / (2 * n) + lam_t.detach().max()
    return SmoothProblem(f, (Xb, onehot, s_b), lipschitz=lip, like=Xb.new_zeros(Xb.shape[0], Xb.shape[2], C))


_FRONT_ENDS = ("LassoCV", "ElasticNetCV", "LogisticRegressionCV")


def __getattr__(name: str):
    # the scikit-learn front ends live in unroll.bilevel_cv, imported on first use so that
    # ``import unroll`` does not import scikit-learn
    if name in _FRONT_ENDS:
        from . import bilevel_cv

        return getattr(bilevel_cv, name)
    raise AttributeError(f"module 'unroll.bilevel' has no attribute {name!r}")
