"""scikit-learn-style front ends that choose their regularisation by hypergradient on the K-fold
cross-validation loss: :class:`LassoCV`, :class:`ElasticNetCV`, :class:`LogisticRegressionCV`
(reached as ``unroll.bilevel.LassoCV`` …; this module imports scikit-learn, so ``import unroll``
does not).

Same objective scalings, the same ``alpha`` / ``C`` meaning and the same fold split (contiguous
``KFold`` without shuffling, each training fold centred when ``fit_intercept``) as scikit-learn's
estimators of the same name; but instead of a grid they run a few outer steps on the
hyperparameter, each one

1. solving the K inner problems (one per fold, warm-started from the previous outer step): the
   (elastic-net) Lasso by an exact active-set method (sign-consistent solves on the support,
   KKT checked on all features), logistic regression by Newton–CG;
2. the hypergradient of the CV loss by the implicit function theorem: on the support for the
   Lasso and the elastic net (``dw_S/dα = −(X_SᵀX_S/n + α(1−ρ)I)⁻¹(ρ s + (1−ρ) w_S)``, the
   closed form that ``hypergrad(..., method="implicit")`` computes), by a Hessian solve for
   logistic regression;
3. a step on ``log α``: safeguarded secant search on the hypergradient for one hyperparameter,
   Adam on the log-penalties for one penalty per feature.

Inputs are NumPy arrays or torch tensors (any device: ``device=`` moves the computation, e.g.
``"cuda"``); predictions come back as the type ``X`` came in.
"""

from __future__ import annotations

import math
import time
import warnings
from typing import Callable, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin
from sklearn.utils.validation import check_is_fitted, validate_data
from torch import Tensor

from .linalg import SolverWarning

__all__ = ["LassoCV", "ElasticNetCV", "LogisticRegressionCV", "kfold_indices"]


# ---------------------------------------------------------------------------------- input handling
def _resolve(device, dtype, X) -> Tuple[torch.device, torch.dtype]:
    dev = torch.device(device) if device is not None else (X.device if isinstance(X, Tensor) else torch.device("cpu"))
    if dtype is None:
        dt = X.dtype if isinstance(X, Tensor) and X.dtype in (torch.float32, torch.float64) else torch.float64
    else:
        dt = dtype if isinstance(dtype, torch.dtype) else getattr(torch, str(dtype))
    return dev, dt


def _tensor_xy(est, X, y, classifier: bool):
    """Validate ``X`` ``(n, d)``, ``y`` ``(n,)`` (NumPy through scikit-learn's validation, torch
    tensors here) and return them as torch tensors on the estimator's device."""
    if isinstance(X, Tensor) or isinstance(y, Tensor):
        Xt = X if isinstance(X, Tensor) else torch.as_tensor(np.asarray(X, dtype=np.float64))
        yt = y if isinstance(y, Tensor) else torch.as_tensor(np.asarray(y))
        if Xt.dim() != 2:
            raise ValueError(f"X: expected a 2-D (n_samples, n_features) array, got shape {tuple(Xt.shape)}")
        if yt.dim() == 2 and yt.shape[1] == 1:
            yt = yt[:, 0]
        if yt.dim() != 1:
            raise ValueError(f"y: expected a 1-D (n_samples,) array, got shape {tuple(yt.shape)}")
        if yt.shape[0] != Xt.shape[0]:
            raise ValueError(f"X, y: expected as many targets as rows of X ({Xt.shape[0]}), got {yt.shape[0]}")
        if not bool(torch.isfinite(Xt.double() if not Xt.is_floating_point() else Xt).all()):
            raise ValueError("X: expected finite values, got NaN or infinity")
        est.n_features_in_ = int(Xt.shape[1])
        dev, dt = _resolve(est.device, est.dtype, Xt)
        return Xt.to(dev, dt), yt.to(dev)
    X, y = validate_data(est, X, y, y_numeric=not classifier, dtype=[np.float64, np.float32])
    dev, dt = _resolve(est.device, est.dtype, X)
    y = np.asarray(y)
    return torch.as_tensor(X).to(dev, dt), (torch.as_tensor(y) if y.dtype.kind in "biuf" else y)


def _tensor_x(est, X):
    check_is_fitted(est)
    if isinstance(X, Tensor):
        if X.dim() != 2 or X.shape[1] != est.n_features_in_:
            raise ValueError(f"X: expected shape (n_samples, {est.n_features_in_}), got {tuple(X.shape)}")
        return X.to(est.coef_t_.device, est.coef_t_.dtype), True
    X = validate_data(est, X, reset=False, dtype=[np.float64, np.float32])
    return torch.as_tensor(X).to(est.coef_t_.device, est.coef_t_.dtype), False


class _threads:
    """Run with ``n`` torch CPU threads (restored on exit); ``None`` leaves the setting alone.
    The front ends' tensors are small: one thread avoids the synchronisation cost of a thread
    pool on every one of their many small operations."""

    def __init__(self, n: Optional[int]) -> None:
        if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
            raise ValueError(f"n_threads: expected None or an int >= 1, got {n!r}")
        self.n = n

    def __enter__(self):
        self.old = torch.get_num_threads()
        if self.n is not None:
            torch.set_num_threads(self.n)

    def __exit__(self, *exc):
        if self.n is not None:
            torch.set_num_threads(self.old)


def kfold_indices(n: int, cv: int) -> List[Tuple[np.ndarray, np.ndarray]]:
    """scikit-learn's ``KFold(cv)`` without shuffling: ``cv`` contiguous validation blocks, the
    first ``n % cv`` one sample larger. Returns ``[(train_idx, val_idx), …]``."""
    if isinstance(cv, bool) or not isinstance(cv, (int, np.integer)) or cv < 2:
        raise ValueError(f"cv: expected an int >= 2 (the number of folds), got {cv!r}")
    if cv > n:
        raise ValueError(f"cv: cannot have {cv} folds with only n_samples={n}")
    sizes = np.full(cv, n // cv)
    sizes[: n % cv] += 1
    out, start = [], 0
    idx = np.arange(n)
    for s in sizes:
        val = idx[start:start + s]
        out.append((np.concatenate([idx[:start], idx[start + s:]]), val))
        start += s
    return out


# ---------------------------------------------------------------------------------- 1-D search
def _cubic_min(p1, p2) -> Optional[float]:
    """The minimiser of the cubic through two points ``(t, φ, φ')``, or ``None`` if it has none."""
    (t1, f1, g1), (t2, f2, g2) = p1, p2
    if t1 == t2:
        return None
    d1 = g1 + g2 - 3 * (f1 - f2) / (t1 - t2)
    disc = d1 * d1 - g1 * g2
    if disc < 0:
        return None
    d2 = math.copysign(math.sqrt(disc), t2 - t1)
    den = g2 - g1 + 2 * d2
    if den == 0:
        return None
    return t2 - (t2 - t1) * (g2 + d2 - d1) / den


def _search_log(value_grad: Callable[[float], Tuple[float, float]], t0: float, max_iter: int, xtol: float,
                step0: float = 1.0, lo: float = -math.inf, hi: float = math.inf):
    """Minimise ``φ(t)`` over ``t = log α`` from its values and hypergradients ``φ'(t)``: a
    line search in the manner of Moré–Thuente: steps downhill (cubic extrapolation, at most 4×
    the previous step) until the derivative changes sign, then cubic interpolation inside the
    bracket, bisection when it stalls; stops when the bracket is narrower than ``xtol``.
    Returns the history ``[(t, φ, φ'), …]``."""
    t = min(max(t0, lo), hi)
    f, g = value_grad(t)
    hist = [(t, f, g)]
    a = b = None  # bracket ends: φ'(a) < 0 < φ'(b)
    step = step0
    for _ in range(max_iter - 1):
        cur = hist[-1]
        t, f, g = cur
        if g == 0:
            break
        if g < 0 and (a is None or t > a[0]):
            a = cur
        if g > 0 and (b is None or t < b[0]):
            b = cur
        if a is not None and b is not None and a[0] < b[0]:
            w = b[0] - a[0]
            if w < xtol:
                break
            tc = _cubic_min(a, b)
            ts = 0.5 * (a[0] + b[0]) if tc is None or not (a[0] + 0.02 * w <= tc <= b[0] - 0.02 * w) else tc
        else:
            ts = t - math.copysign(step, g)
            if len(hist) >= 2:
                tc = _cubic_min(hist[-2], cur)
                if tc is not None and (tc - t) * (-g) > 0:  # a minimiser ahead, downhill
                    ts = t + max(min(tc - t, 4 * step), -4 * step)
            step = max(abs(ts - t), xtol)
            ts = min(max(ts, lo), hi)
            if ts == t:
                break
        f2, g2 = value_grad(ts)
        hist.append((ts, f2, g2))
        # a point uphill of a lower one with the wrong slope sign: the minimum lies between them
        if f2 > f and (g2 < 0) == (g < 0) and (ts - t) * (-g) > 0:
            if g2 < 0:
                b = (ts, f2, abs(g2))  # treat as a right end: the function went up going right
            else:
                a = (ts, f2, -abs(g2))
    return hist


# ---------------------------------------------------------------------------------- elastic net
def _rowmat(v: Tensor, M: Tensor) -> Tensor:
    """``v_k M_k`` for ``v`` ``(K, n)``, ``M`` ``(K, n, d)`` → ``(K, d)``."""
    return torch.bmm(v.unsqueeze(1), M).squeeze(1)


class _EnetFolds:
    """The K inner (elastic-net) problems of K-fold CV and their exact active-set solver, all
    folds at once (batched on the first dim; the folds' active sets padded to a common size).

    Per fold ``k``: ``min_w ‖y_k − X_k w‖²/(2n_k) + αρ‖w‖₁ + α(1−ρ)/2·‖w‖²`` on the centred
    training rows; the CV loss is the mean over folds of the validation MSE (the validation rows
    centred by the training means: the intercept ``ȳ − x̄ᵀw``)."""

    def __init__(self, X: Tensor, y: Tensor, folds, fit_intercept: bool, l1_ratio: float, tol: float,
                 max_rounds: int) -> None:
        self.l1_ratio, self.tol, self.max_rounds = float(l1_ratio), float(tol), int(max_rounds)
        K, d = len(folds), X.shape[1]
        m = max(len(tr) for tr, _ in folds)
        mv = max(max(len(va) for _, va in folds), 1)
        self.X, self.y = X.new_zeros(K, m, d), X.new_zeros(K, m)
        self.Xv, self.yv, self.mask_v = X.new_zeros(K, mv, d), X.new_zeros(K, mv), X.new_zeros(K, mv)
        self.n = X.new_zeros(K)
        for k, (tr, va) in enumerate(folds):
            tr_t, va_t = torch.as_tensor(tr, device=X.device), torch.as_tensor(va, device=X.device)
            Xt, yt, Xv, yv = X[tr_t], y[tr_t], X[va_t], y[va_t]
            if fit_intercept:
                xm, ym = Xt.mean(0), yt.mean()
                Xt, yt, Xv, yv = Xt - xm, yt - ym, Xv - xm, yv - ym
            self.X[k, : len(tr)], self.y[k, : len(tr)] = Xt, yt  # zero rows pad: they add nothing
            self.n[k] = len(tr)
            if len(va):
                self.Xv[k, : len(va)], self.yv[k, : len(va)] = Xv, yv
                self.mask_v[k, : len(va)] = 1.0 / len(va)
        # matrix-vector products as (1, n) @ (n, d) row products: the fast path on CPU
        self.XT = self.X.transpose(1, 2).contiguous()  # (K, d, n)
        self.XvT = self.Xv.transpose(1, 2).contiguous()
        self.Xty = _rowmat(self.y, self.X) / self.n[:, None]
        self.w = X.new_zeros(K, d)
        self.inner_rounds = 0
        self.solves = 0

    def alpha_max(self) -> float:
        """The smallest α with all-zero solutions on every fold (``max |Xᵀy|/(nρ)``)."""
        return float(self.Xty.abs().max()) / max(self.l1_ratio, 1e-3)

    def solve(self, alpha: float) -> Tuple[Tensor, Tensor, Tensor, tuple]:
        """Exact solves of every fold, warm-started from the previous ones: sign-consistent
        solves on active sets (coefficients whose solve comes out with the wrong sign leave),
        then the KKT conditions on every feature (the most violating ones enter), until no
        feature violates them. Returns ``(w (K, d), idx (K, m), valid (K, m), LU of M_S)``."""
        X, XT, Xty, n = self.X, self.XT, self.Xty, self.n
        K, _, d = X.shape
        ar = torch.arange(K, device=X.device)[:, None]
        a1, a2 = alpha * self.l1_ratio, alpha * (1 - self.l1_ratio)
        w = self.w
        act = w != 0
        sg = torch.sign(w)
        scale = float(Xty.abs().max())
        for _ in range(self.max_rounds):
            self.inner_rounds += 1
            for _inner in range(d + 1):
                cnt = act.sum(1)
                mm = int(cnt.max())
                if mm == 0:
                    w = torch.zeros_like(w)
                    idx = torch.zeros(K, 0, dtype=torch.long, device=X.device)
                    valid = torch.zeros(K, 0, dtype=torch.bool, device=X.device)
                    lu = None
                    break
                idx = torch.argsort((~act).to(torch.int8), dim=1, stable=True)[:, :mm]
                valid = torch.arange(mm, device=X.device)[None] < cnt[:, None]
                XAT = XT[ar, idx]  # (K, m, n)
                M = XAT @ XAT.transpose(1, 2) / n[:, None, None]
                vv = valid[:, :, None] & valid[:, None, :]
                M = torch.where(vv, M, torch.zeros_like(M))
                M.diagonal(dim1=1, dim2=2).add_(torch.where(valid, M.new_tensor(a2), M.new_tensor(1.0)))
                sA = torch.where(valid, torch.gather(sg, 1, idx), 0.0)
                rhs = torch.where(valid, torch.gather(Xty, 1, idx) - a1 * sA, 0.0)
                lu = torch.linalg.lu_factor(M)
                self.solves += 1
                wA = torch.linalg.lu_solve(*lu, rhs.unsqueeze(-1)).squeeze(-1)
                bad = valid & (wA * sA <= 0)
                if not bool(bad.any()):
                    w = torch.zeros_like(w).scatter_(1, idx, torch.where(valid, wA, 0.0))
                    break
                # the coefficients whose sign came out wrong leave the active set
                drop = torch.zeros_like(act).scatter_(1, idx, bad)
                act = act & ~drop
                sg = torch.where(act, sg, 0.0)
            # KKT on every feature
            r = self.y - (_rowmat(torch.gather(w, 1, idx), XAT) if idx.shape[1] else self.y * 0)
            c = _rowmat(r, X) / n[:, None] - a2 * w
            viol = c.abs() - a1 * (1 + self.tol) - self.tol * 1e-3 * scale
            viol = torch.where(act, -math.inf, viol)
            nv = (viol > 0).sum(1)
            if int(nv.max()) == 0:
                self.w = w
                return w, idx, valid, lu
            k = int(min(int(nv.max()), max(10, int(act.sum(1).max()) // 2)))
            top = torch.topk(viol, k, dim=1)
            enter = torch.zeros_like(act).scatter_(1, top.indices, top.values > 0)
            act = act | enter
            sg = torch.where(enter, torch.sign(c), sg)
        warnings.warn(f"ElasticNet inner solve: the active-set method did not reach the KKT conditions within "
                      f"max_rounds={self.max_rounds} rounds (alpha={alpha:.4g}); the hypergradient is approximate",
                      SolverWarning, stacklevel=4)
        self.w = w
        return w, idx, valid, lu

    def value_grad(self, alpha: float) -> Tuple[float, float]:
        """The CV MSE at ``alpha`` and its derivative w.r.t. ``log alpha`` (warm-started solves)."""
        w, idx, valid, lu = self.solve(alpha)
        r = self.yv - _rowmat(w, self.XvT)
        per_fold = (self.mask_v * r * r).sum(1)
        K = w.shape[0]
        val = float(per_fold.mean())
        if idx.shape[1] == 0 or lu is None:
            return val, 0.0
        XvAT = self.XvT[torch.arange(K, device=w.device)[:, None], idx]  # (K, m, nv)
        gA = -2.0 * _rowmat(self.mask_v * r, XvAT.transpose(1, 2))
        wA = torch.gather(w, 1, idx)
        rhs = torch.where(valid, self.l1_ratio * torch.sign(wA) + (1 - self.l1_ratio) * wA, 0.0)
        dw = -torch.linalg.lu_solve(*lu, rhs.unsqueeze(-1)).squeeze(-1)
        grad = float((gA * dw).sum()) * alpha / K
        return val, grad


class _LinearRegressorCV(RegressorMixin, BaseEstimator):
    _l1_ratio_default = 1.0

    def _l1_ratios(self) -> List[float]:
        return [1.0]

    def fit(self, X, y):
        """Choose ``alpha`` by hypergradient on the K-fold CV MSE, then refit on all the data.

        Args:
            X: ``(n_samples, n_features)`` NumPy array or torch tensor.
            y: ``(n_samples,)`` targets.
        Returns ``self``."""
        with _threads(self.n_threads):
            return self._fit(X, y)

    def _fit(self, X, y):
        """Choose ``alpha`` by hypergradient on the K-fold CV MSE, then refit on all the data.

        Args:
            X: ``(n_samples, n_features)`` NumPy array or torch tensor.
            y: ``(n_samples,)`` targets.
        Returns ``self``."""
        t_start = time.perf_counter()
        Xt, yt = _tensor_xy(self, X, y, classifier=False)
        yt = yt.to(Xt.device, Xt.dtype)
        n = Xt.shape[0]
        if self.max_iter < 1:
            raise ValueError(f"max_iter: expected an int >= 1 (outer steps), got {self.max_iter!r}")
        folds = kfold_indices(n, self.cv)
        best = None
        self.history_ = []
        for rho in self._l1_ratios():
            prob = _EnetFolds(Xt, yt, folds, self.fit_intercept, rho, self.tol, self.max_rounds)
            amax = prob.alpha_max()
            if amax <= 0:
                amax = 1.0
            t0 = math.log(amax * self.alpha_init) if self.alpha is None else math.log(self.alpha)

            def vg(t, prob=prob, rho=rho):
                v, g = prob.value_grad(math.exp(t))
                self.history_.append(dict(alpha=math.exp(t), l1_ratio=rho, cv_mse=v, grad=g,
                                          time=time.perf_counter() - t_start))
                return v, g

            hist = _search_log(vg, t0, self.max_iter, self.xtol, lo=math.log(amax * 1e-6), hi=math.log(amax))
            t_best, v_best, _ = min(hist, key=lambda h: h[1])
            if best is None or v_best < best[1]:
                best = (math.exp(t_best), v_best, rho)
        self.alpha_, self.cv_mse_, self.l1_ratio_ = best[0], best[1], best[2]
        self.n_outer_ = len(self.history_)
        # refit on all the data
        full = _EnetFolds(Xt, yt, [(np.arange(n), np.arange(0))], self.fit_intercept, self.l1_ratio_, self.tol,
                          self.max_rounds)
        w = full.solve(self.alpha_)[0][0]
        self.coef_t_ = w
        self.intercept_t_ = (yt.mean() - Xt.mean(0) @ w) if self.fit_intercept else torch.zeros((), dtype=w.dtype,
                                                                                                   device=w.device)
        self.coef_ = w.detach().cpu().numpy()
        self.intercept_ = float(self.intercept_t_)
        self.fit_time_ = time.perf_counter() - t_start
        return self

    def predict(self, X):
        """``X w + b``: ``(n_samples,)``, a tensor if ``X`` is one, else a NumPy array."""
        Xt, is_t = _tensor_x(self, X)
        out = Xt @ self.coef_t_ + self.intercept_t_
        return out if is_t else out.cpu().numpy()


class LassoCV(_LinearRegressorCV):
    """Lasso with ``alpha`` chosen by hypergradient on the K-fold CV MSE (scikit-learn's
    ``LassoCV`` objective: ``‖y − Xw − b‖²/(2n) + α‖w‖₁``, the intercept not penalised).

    Args:
        cv: number of folds (contiguous, as ``KFold(cv)``).
        fit_intercept: centre each training fold and fit an intercept.
        alpha: the starting ``alpha`` (default ``alpha_init · alpha_max``).
        alpha_init: the start as a fraction of ``alpha_max = max|Xᵀy|/n`` over the folds.
        max_iter: the outer-step budget (inner solves of the K folds).
        xtol: stop when the bracket on ``log alpha`` is narrower than this.
        tol: relative tolerance of the KKT check of the inner solves.
        max_rounds: the active-set rounds allowed per inner solve.
        device, dtype: where and in what precision to compute (default: ``X``'s device;
            float64, or ``X``'s floating dtype for a tensor).
        n_threads: torch CPU threads during ``fit`` (default 1, fastest for these small
            problems; ``None``: torch's setting).

    Attributes (after ``fit``): ``alpha_``, ``coef_`` ``(n_features,)``, ``intercept_``,
    ``cv_mse_`` (the CV MSE at ``alpha_``), ``history_`` (one dict per outer step: ``alpha``,
    ``cv_mse``, ``grad`` = dCV/dlog α, ``time`` since ``fit`` began), ``n_outer_``, ``fit_time_``.
    """

    def __init__(self, cv: int = 5, fit_intercept: bool = True, alpha: Optional[float] = None,
                 alpha_init: float = 0.1, max_iter: int = 30, xtol: float = 1e-3, tol: float = 1e-7,
                 max_rounds: int = 200, device=None, dtype=None,
                 n_threads: Optional[int] = 1) -> None:
        self.cv = cv
        self.fit_intercept = fit_intercept
        self.alpha = alpha
        self.alpha_init = alpha_init
        self.max_iter = max_iter
        self.xtol = xtol
        self.tol = tol
        self.max_rounds = max_rounds
        self.device = device
        self.dtype = dtype
        self.n_threads = n_threads


class ElasticNetCV(_LinearRegressorCV):
    """Elastic net with ``alpha`` chosen by hypergradient on the K-fold CV MSE, for each
    ``l1_ratio`` given (the best pair wins), scikit-learn's ``ElasticNetCV`` objective
    ``‖y − Xw − b‖²/(2n) + αρ‖w‖₁ + α(1 − ρ)/2·‖w‖²``, ``ρ = l1_ratio ∈ (0, 1]``.

    Args: as :class:`LassoCV`, plus ``l1_ratio`` (a number or a list of numbers in ``(0, 1]``).
    Attributes: as :class:`LassoCV`, plus ``l1_ratio_``.
    """

    def __init__(self, l1_ratio: Union[float, Sequence[float]] = 0.5, cv: int = 5, fit_intercept: bool = True,
                 alpha: Optional[float] = None, alpha_init: float = 0.1, max_iter: int = 30, xtol: float = 1e-3,
                 tol: float = 1e-7, max_rounds: int = 200, device=None, dtype=None,
                 n_threads: Optional[int] = 1) -> None:
        self.l1_ratio = l1_ratio
        self.cv = cv
        self.fit_intercept = fit_intercept
        self.alpha = alpha
        self.alpha_init = alpha_init
        self.max_iter = max_iter
        self.xtol = xtol
        self.tol = tol
        self.max_rounds = max_rounds
        self.device = device
        self.dtype = dtype
        self.n_threads = n_threads

    def _l1_ratios(self) -> List[float]:
        ratios = [self.l1_ratio] if np.isscalar(self.l1_ratio) else list(self.l1_ratio)
        for r in ratios:
            if not (isinstance(r, (int, float, np.floating)) and 0 < r <= 1):
                raise ValueError(f"l1_ratio: expected numbers in (0, 1], got {self.l1_ratio!r}")
        return [float(r) for r in ratios]


# ---------------------------------------------------------------------------------- logistic
def _cg(hvp: Callable[[Tensor], Tensor], b: Tensor, tol: float, max_iter: int) -> Tensor:
    """Batched conjugate gradient for ``H x = b`` over the first dim (SPD ``H``)."""
    x = torch.zeros_like(b)
    r = b.clone()
    p = r.clone()
    rs = (r * r).flatten(1).sum(1)
    b2 = rs.clamp_min(torch.finfo(b.dtype).tiny)
    for _ in range(max_iter):
        if bool((rs <= tol * tol * b2).all()):
            break
        Hp = hvp(p)
        shape = (-1,) + (1,) * (b.dim() - 1)
        alpha = (rs / (p * Hp).flatten(1).sum(1).clamp_min(torch.finfo(b.dtype).tiny)).view(shape)
        x = x + alpha * p
        r = r - alpha * Hp
        rs_new = (r * r).flatten(1).sum(1)
        p = r + (rs_new / rs.clamp_min(torch.finfo(b.dtype).tiny)).view(shape) * p
        rs = rs_new
    return x


class _LogisticFolds:
    """K (or one) ℓ2-regularised logistic problems, binary (``W`` ``(K, d)``) or multinomial
    (``(K, d, C)``), padded to a common row count with zero weights; Newton–CG solves and the
    implicit hypergradient w.r.t. per-feature log-penalties."""

    def __init__(self, X: Tensor, Y: Tensor, folds, n_classes: int, intercept: bool = False) -> None:
        self.binary = n_classes == 2
        # the softmax is unchanged by a constant added to every class's intercept: with an
        # unpenalised intercept that direction is a null space of the Hessian, removed by keeping
        # the intercepts' mean over classes at zero (directions projected onto that subspace)
        self.project = intercept and not self.binary
        K = len(folds)
        m = max(len(tr) for tr, _ in folds)
        mv = max(max(len(va) for _, va in folds), 1)
        d = X.shape[1]
        C = 1 if self.binary else n_classes
        self.X = X.new_zeros(K, m, d)
        self.T = X.new_zeros(K, m, C)
        self.s = X.new_zeros(K, m)
        self.Xv = X.new_zeros(K, mv, d)
        self.Tv = X.new_zeros(K, mv, C)
        self.sv = X.new_zeros(K, mv)
        T = Y.unsqueeze(-1).to(X.dtype) if self.binary else torch.nn.functional.one_hot(Y, C).to(X.dtype)
        for k, (tr, va) in enumerate(folds):
            tr, va = torch.as_tensor(tr, device=X.device), torch.as_tensor(va, device=X.device)
            self.X[k, : len(tr)], self.T[k, : len(tr)] = X[tr], T[tr]
            self.s[k, : len(tr)] = 1.0 / len(tr)
            if len(va):
                self.Xv[k, : len(va)], self.Tv[k, : len(va)] = X[va], T[va]
                self.sv[k, : len(va)] = 1.0 / len(va)
        self.W = X.new_zeros(K, d, C)
        self.newton_iters = 0

    def _probs(self, Z: Tensor) -> Tensor:
        return torch.sigmoid(Z) if self.binary else torch.softmax(Z, -1)

    @staticmethod
    def _loss(Z: Tensor, T: Tensor, s: Tensor, binary: bool) -> Tensor:
        if binary:
            per = torch.nn.functional.softplus(Z) - T * Z
            per = per[..., 0]
        else:
            per = torch.logsumexp(Z, -1) - (T * Z).sum(-1)
        return (s * per).sum(-1)

    def _proj(self, V: Tensor) -> Tensor:
        if not self.project:
            return V
        last = V[:, -1:, :]
        return torch.cat([V[:, :-1, :], last - last.mean(-1, keepdim=True)], 1)

    def _hvp(self, P: Tensor, lam: Tensor, V: Tensor) -> Tensor:
        V = self._proj(V)
        U = torch.einsum("knd,kdc->knc", self.X, V)
        if self.binary:
            HU = P * (1 - P) * U
        else:
            PU = P * U
            HU = PU - P * PU.sum(-1, keepdim=True)
        return self._proj(torch.einsum("knd,knc->kdc", self.X, self.s.unsqueeze(-1) * HU) + lam * V)

    def _newton_dir(self, P: Tensor, lam: Tensor, B: Tensor, tol: float) -> Tensor:
        """``H⁻¹B`` at probabilities ``P``: a Cholesky solve of the explicit ``(d, d)`` Hessian
        for two classes, CG on Hessian-vector products for more."""
        if self.binary:
            D = (self.s.unsqueeze(-1) * P * (1 - P))  # (K, n, 1)
            H = self.X.transpose(1, 2) @ (D * self.X)
            H = H + torch.diag_embed(lam[:, 0].expand(H.shape[0], -1))
            L, info = torch.linalg.cholesky_ex(H)
            if not bool((info == 0).all()):
                return _cg(lambda V: self._hvp(P, lam, V), B, tol, 500)
            return torch.cholesky_solve(B, L)
        K, d, C = B.shape
        if d * C <= 400:  # small: the explicit (dC, dC) Hessian, index (j, c) -> j*C + c
            sP = self.s.unsqueeze(-1) * P  # (K, n, C)
            H = torch.einsum("kni,knj,knc->kicj", self.X, self.X, sP)
            H = H.unsqueeze(-1) * torch.eye(C, dtype=H.dtype, device=H.device)[None, None, :, None, :]
            Z = torch.einsum("knc,kni->knic", P, self.X).reshape(K, -1, d * C)
            H = H.reshape(K, d * C, d * C) - Z.transpose(1, 2) @ (self.s.unsqueeze(-1) * Z)
            H = H + torch.diag_embed(lam.expand(d, C).reshape(1, -1).expand(K, -1))
            if self.project:  # + u uᵀ on the null direction (equal intercepts): B is orthogonal to it
                u = torch.zeros(d, C, dtype=H.dtype, device=H.device)
                u[-1] = C ** -0.5
                u = u.reshape(-1)
                H = H + torch.outer(u, u)
            L, info = torch.linalg.cholesky_ex(H)
            if bool((info == 0).all()):
                return torch.cholesky_solve(self._proj(B).reshape(K, -1, 1), L).reshape(K, d, C)
        return _cg(lambda V: self._hvp(P, lam, V), self._proj(B), tol, 500)

    def solve(self, lam: Tensor, tol: float, max_newton: int) -> Tuple[Tensor, bool]:
        """Newton–CG from the current ``W``; ``lam`` ``(d, 1)`` penalties. Returns
        ``(W, converged)``."""
        W = self.W
        for it in range(max_newton):
            Z = torch.einsum("knd,kdc->knc", self.X, W)
            P = self._probs(Z)
            G = torch.einsum("knd,knc->kdc", self.X, self.s.unsqueeze(-1) * (P - self.T)) + lam * W
            gn = float(G.abs().max())
            if gn <= tol:
                self.W = W
                return W, True
            self.newton_iters += 1
            D = self._newton_dir(P, lam, -G, 1e-3 * min(1.0, gn))
            # backtracking on the objective (Newton steps are nearly always accepted)
            f0 = self._loss(Z, self.T, self.s, self.binary) + 0.5 * (lam * W * W).flatten(1).sum(1)
            step = torch.ones(W.shape[0], 1, 1, dtype=W.dtype, device=W.device)
            slope = (G * D).flatten(1).sum(1)
            for _ in range(30):
                Wn = W + step * D
                Zn = torch.einsum("knd,kdc->knc", self.X, Wn)
                fn = self._loss(Zn, self.T, self.s, self.binary) + 0.5 * (lam * Wn * Wn).flatten(1).sum(1)
                ok = fn <= f0 + 1e-4 * step.flatten() * slope
                if bool(ok.all()):
                    break
                step = torch.where(ok.view(-1, 1, 1), step, step * 0.5)
            W = Wn
        self.W = W
        return W, False

    def value_grad(self, lam: Tensor, tol: float, max_newton: int) -> Tuple[float, Tensor, bool]:
        """The CV log-loss (mean over folds) at penalties ``lam`` ``(d, 1)`` and its gradient
        w.r.t. ``log lam`` ``(d, 1)``: ``−Σ_k v_k ⊙ W_k ⊙ lam`` summed over classes, with
        ``H_k v_k = ∇_W F_k``."""
        W, ok = self.solve(lam, tol, max_newton)
        Zv = torch.einsum("knd,kdc->knc", self.Xv, W)
        K = W.shape[0]
        val = self._loss(Zv, self.Tv, self.sv, self.binary)
        Pv = self._probs(Zv)
        gF = torch.einsum("knd,knc->kdc", self.Xv, self.sv.unsqueeze(-1) * (Pv - self.Tv)) / K
        P = self._probs(torch.einsum("knd,kdc->knc", self.X, W))
        v = self._newton_dir(P, lam, gF, 1e-10)
        glam = -(v * W).sum(0).sum(-1, keepdim=True) * lam  # d/d log λ_j
        return float(val.mean()), glam, ok


class LogisticRegressionCV(ClassifierMixin, BaseEstimator):
    """ℓ2-regularised logistic regression (binary or multinomial) with its penalty chosen by
    hypergradient on the K-fold CV log-loss — one penalty for all features, or one per feature
    (``per_feature=True``: a search no grid can do).

    The objective is scikit-learn's ``LogisticRegression``: ``Σ_i CE_i + ½‖w‖²/C`` (the
    intercept not penalised), i.e. ``(1/n)Σ_i CE_i + ½ Σ_j α_j w_j²`` with ``α = 1/(nC)``.
    With ``per_feature=True`` the single best penalty is found first, then one penalty per
    feature is learned from it by Adam on the log-penalties (the CV loss never ends above the
    single-penalty one: the best point seen is kept).

    Args:
        per_feature: learn one penalty per feature.
        cv: number of folds (contiguous, as ``KFold(cv)``; scikit-learn stratifies, so fold
            contents differ for a classifier).
        fit_intercept: fit an unpenalised intercept.
        C: the starting ``C`` (default 1.0, scikit-learn's default).
        max_iter: outer steps of the single-penalty search.
        per_feature_iter, lr: Adam steps and learning rate (on ``log α``) of the per-feature stage.
        xtol: stop when the bracket on ``log α`` is narrower than this.
        tol: Newton tolerance on the gradient's largest entry.
        max_newton: Newton iterations per inner solve.
        device, dtype, n_threads: as :class:`LassoCV`.

    Attributes (after ``fit``): ``classes_``, ``coef_`` ``(1 or n_classes, n_features)``,
    ``intercept_``, ``C_`` (``(1,)``, or ``(n_features,)`` per feature: the penalty on feature
    ``j`` is ``½ w_j²/C_j``), ``alpha_`` (``1/(n C_)``), ``cv_loss_``, ``history_``.
    """

    def __init__(self, per_feature: bool = False, cv: int = 5, fit_intercept: bool = True, C: float = 1.0,
                 max_iter: int = 30, per_feature_iter: int = 50, lr: float = 0.2, xtol: float = 1e-2,
                 tol: float = 1e-8, max_newton: int = 50, device=None, dtype=None,
                 n_threads: Optional[int] = 1) -> None:
        self.per_feature = per_feature
        self.cv = cv
        self.fit_intercept = fit_intercept
        self.C = C
        self.max_iter = max_iter
        self.per_feature_iter = per_feature_iter
        self.lr = lr
        self.xtol = xtol
        self.tol = tol
        self.max_newton = max_newton
        self.device = device
        self.dtype = dtype
        self.n_threads = n_threads

    def _design(self, X: Tensor) -> Tensor:
        return torch.cat([X, X.new_ones(X.shape[0], 1)], 1) if self.fit_intercept else X

    def fit(self, X, y):
        """Choose the penalty (or penalties) by hypergradient on the K-fold CV log-loss, then
        refit on all the data. ``X`` ``(n_samples, n_features)``, ``y`` ``(n_samples,)`` class
        labels (any values). Returns ``self``."""
        with _threads(self.n_threads):
            return self._fit(X, y)

    def _fit(self, X, y):
        """Choose the penalty (or penalties) by hypergradient on the K-fold CV log-loss, then
        refit on all the data. ``X`` ``(n_samples, n_features)``, ``y`` ``(n_samples,)`` class
        labels (any values). Returns ``self``."""
        t_start = time.perf_counter()
        Xt, yt = _tensor_xy(self, X, y, classifier=True)
        y_np = yt.cpu().numpy() if isinstance(yt, Tensor) else np.asarray(yt)
        self.classes_, codes = np.unique(y_np, return_inverse=True)
        if len(self.classes_) < 2:
            raise ValueError(f"y: expected at least 2 classes, got {len(self.classes_)} ({self.classes_.tolist()})")
        if not (isinstance(self.C, (int, float)) and 0 < self.C < math.inf):
            raise ValueError(f"C: expected a finite number > 0, got {self.C!r}")
        codes_t = torch.as_tensor(codes, device=Xt.device)
        n = Xt.shape[0]
        Xd = self._design(Xt)
        d = Xd.shape[1]
        nc = len(self.classes_)
        folds = kfold_indices(n, self.cv)
        prob = _LogisticFolds(Xd, codes_t, folds, nc, self.fit_intercept)
        n_tr = n - n / self.cv
        free = torch.ones(d, 1, dtype=Xt.dtype, device=Xt.device)
        if self.fit_intercept:
            free[-1] = 0  # the intercept is not penalised
        self.history_ = []

        def vg_vec(loglam: Tensor):
            lam = loglam.exp() * free
            v, g, ok = prob.value_grad(lam, self.tol, self.max_newton)
            if not ok:
                warnings.warn(f"LogisticRegressionCV: the Newton inner solve did not converge in max_newton="
                              f"{self.max_newton} iterations; the hypergradient is approximate", SolverWarning,
                              stacklevel=3)
            self.history_.append(dict(alpha=lam[: d - int(self.fit_intercept), 0].detach().cpu().numpy().copy(),
                                      cv_loss=v, time=time.perf_counter() - t_start))
            return v, g * free

        def vg(t: float):
            v, g = vg_vec(torch.full((d, 1), t, dtype=Xt.dtype, device=Xt.device))
            return v, float(g.sum())

        t0 = math.log(1.0 / (n_tr * self.C))
        # C within scikit-learn's default Cs range 1e-4 … 1e4 (separable data push C to infinity)
        hist = _search_log(vg, t0, self.max_iter, self.xtol, lo=math.log(1e-4 / n_tr), hi=math.log(1e4 / n_tr))
        t_best, v_best, _ = min(hist, key=lambda h: h[1])
        best_log = torch.full((d, 1), t_best, dtype=Xt.dtype, device=Xt.device)
        if self.per_feature:
            loglam = best_log.clone()
            m = torch.zeros_like(loglam)
            v2 = torch.zeros_like(loglam)
            b1, b2 = 0.9, 0.999
            for it in range(1, self.per_feature_iter + 1):
                v, g = vg_vec(loglam)
                if v < v_best:
                    v_best, best_log = v, loglam.clone()
                m = b1 * m + (1 - b1) * g
                v2 = b2 * v2 + (1 - b2) * g * g
                loglam = loglam - self.lr * (m / (1 - b1 ** it)) / ((v2 / (1 - b2 ** it)).sqrt() + 1e-12)
                loglam = loglam.clamp(math.log(1e-4 / n_tr), math.log(1e4 / n_tr))
        lam = best_log.exp() * free
        self.cv_loss_ = v_best
        # refit on all the data (warm start: the fold solutions' mean)
        full = _LogisticFolds(Xd, codes_t, [(np.arange(n), np.arange(0))], nc, self.fit_intercept)
        full.W = prob.W.mean(0, keepdim=True)
        W, ok = full.solve(lam, self.tol, self.max_newton * 4)
        W = W[0]  # (d, C)
        coef = W[: d - int(self.fit_intercept)].T  # (C, n_features)
        self.coef_t_ = coef
        self.intercept_t_ = W[-1] if self.fit_intercept else W.new_zeros(W.shape[1])
        alpha = lam[: d - int(self.fit_intercept), 0]
        self.alpha_ = alpha.cpu().numpy() if self.per_feature else float(alpha[0])
        self.C_ = 1.0 / (n * alpha.cpu().numpy()) if self.per_feature else np.array([1.0 / (n * float(alpha[0]))])
        self.coef_ = coef.detach().cpu().numpy()
        self.intercept_ = self.intercept_t_.detach().cpu().numpy()
        self.n_outer_ = len(self.history_)
        self.fit_time_ = time.perf_counter() - t_start
        return self

    def decision_function(self, X):
        """``X Wᵀ + b``: ``(n_samples,)`` for two classes, else ``(n_samples, n_classes)``."""
        Xt, is_t = _tensor_x(self, X)
        Z = Xt @ self.coef_t_.T + self.intercept_t_
        Z = Z[:, 0] if Z.shape[1] == 1 else Z
        return Z if is_t else Z.cpu().numpy()

    def predict_proba(self, X):
        """Class probabilities ``(n_samples, n_classes)``."""
        Xt, is_t = _tensor_x(self, X)
        Z = Xt @ self.coef_t_.T + self.intercept_t_
        P = torch.cat([1 - torch.sigmoid(Z), torch.sigmoid(Z)], 1) if Z.shape[1] == 1 else torch.softmax(Z, 1)
        return P if is_t else P.cpu().numpy()

    def predict(self, X):
        """The most probable class of each row ``(n_samples,)`` (labels from ``classes_``)."""
        P = self.predict_proba(X)
        idx = (P.argmax(1).cpu().numpy() if isinstance(P, Tensor) else P.argmax(1))
        out = self.classes_[idx]
        return torch.as_tensor(out) if isinstance(P, Tensor) and out.dtype.kind in "biuf" else out
