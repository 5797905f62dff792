"""Problems: everything an iteration needs besides its own state.

A problem is built once per forward call and read (never mutated) by the steps. Every problem
has a smooth part ``f`` and an optional regulariser ``g`` (a module with ``value(x) → (B,)`` and
``prox(x, step)``), and gives

* ``objective(x) → (B,)``: ``f(x) + g(x)`` per sample,
* ``grad(x)``: ``∇f(x)``, the shape of ``x``,
* ``lipschitz``: ``(B,)``, the Lipschitz constant of ``∇f`` per sample, where it is known or
  can be computed; lazy (computed the first time a step asks), given explicitly when the user
  knows it, and never mixing samples (a sample's constant does not depend on its batch mates).

Concrete problems:

* :class:`LeastSquares`: ``½‖Ax − y‖² + g(x)`` (``Problem.create(A, y, reg)`` builds one),
* :class:`SmoothProblem`: any batched objective ``f(x, data) → (B,)``, gradients by
  ``torch.func.grad`` vmapped over the batch, Hessian-vector products forward-over-reverse,
* :class:`QuadraticProblem`: ``½xᴴQx − Re⟨b, x⟩`` for a Hermitian positive-definite ``Q`` (the
  conjugate-gradient family; its gradient ``Qx − b`` is the negative residual).

Per-sample extras (masks, coil maps) live inside the operator the batch carries.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional, Union

import torch
from torch import Tensor, nn
from torch.utils._pytree import tree_map

from .batched import batch_dot, batch_norm, per_sample
from .checks import check_finite, check_measurements
from .operators.base import LinearOperator
from .operators.convert import as_operator

__all__ = ["Problem", "LeastSquares", "SmoothProblem", "QuadraticProblem"]


class Problem:
    """Base class of problems ``min_x f(x) + g(x)`` over a batch ``x`` ``(B, *shape)``.

    Subclasses give :meth:`smooth` (``f`` per sample), :meth:`grad` (``∇f``), :meth:`zeros`
    (a zero start) and, where it exists, :meth:`_compute_lipschitz`. ``reg`` is the
    regulariser ``g`` or ``None``.
    """

    reg: Optional[nn.Module] = None

    # ------------------------------------------------------------------ construction
    @classmethod
    def create(cls, op, y: Tensor, reg: Optional[nn.Module] = None, check: bool = True,
               lipschitz: Union[float, Tensor, None] = None, **extra) -> "LeastSquares":
        """The least-squares problem ``½‖Ax − y‖² + g(x)`` (``Problem.create`` builds a
        :class:`LeastSquares`; a subclass of it builds itself, with its ``extra`` fields).

        Args:
            op: a :class:`~unroll.operators.LinearOperator` or a ``(m, n)`` / ``(B, m, n)`` tensor.
            y: ``(B, *out_shape)`` measurements.
            reg: optional regulariser ``g``.
            check: validate ``y`` against ``op`` (shape, dtype, NaN/Inf; one host sync).
            lipschitz: ``‖A‖₂²`` when known (a number, 0-dim or ``(B,)`` tensor); otherwise it is
                computed (and cached on the operator) the first time a step needs it.
            extra: the further fields of a subclass (e.g. a model's fixed weight).
        """
        target = LeastSquares if cls is Problem else cls
        op = as_operator(op)
        if check:
            check_measurements(y, op, "y")
        return target(op=op, y=y, reg=reg, known_lipschitz=lipschitz, **extra)

    # ------------------------------------------------------------------ interface
    @property
    def batch_size(self) -> int:
        raise NotImplementedError

    def smooth(self, x: Tensor) -> Tensor:
        """``f(x)`` per sample: ``(B, *shape) → (B,)``."""
        raise NotImplementedError(f"{type(self).__name__} must implement smooth(x)")

    def grad(self, x: Tensor) -> Tensor:
        """``∇f(x)``: ``(B, *shape) → (B, *shape)``."""
        raise NotImplementedError(f"{type(self).__name__} must implement grad(x)")

    def objective(self, x: Tensor) -> Tensor:
        """``f(x) + g(x)`` per sample: ``(B, *shape) → (B,)``."""
        f = self.smooth(x)
        return f if self.reg is None else f + self.reg.value(x)

    def zeros(self) -> Tensor:
        """A zero initial estimate ``(B, *shape)``."""
        raise NotImplementedError(f"{type(self).__name__} cannot make a zero start: pass x0")

    def _compute_lipschitz(self) -> Tensor:
        raise NotImplementedError(f"{type(self).__name__} has no Lipschitz constant: pass lipschitz=... when "
                                  "building it, or use steps that do not need one")

    #: the Lipschitz constant the user gave (a number, 0-dim or ``(B,)`` tensor), or ``None``
    known_lipschitz: Union[float, Tensor, None] = None

    def _given_lipschitz(self) -> Optional[Tensor]:
        return None if self.known_lipschitz is None else torch.as_tensor(self.known_lipschitz)

    def inputs_finite(self) -> Optional[Tensor]:
        """Whether the problem's data are finite, a 0-dim bool tensor (no host sync), or ``None``
        when there is nothing to check. :class:`~unroll.Unrolled` folds it into its divergence
        check, so a NaN input costs no synchronisation of its own."""
        return None

    def check_inputs_finite(self) -> None:
        """Raise a ``ValueError`` naming the field if the problem's data hold NaN/Inf (one host
        sync); called once :meth:`inputs_finite` said they do not."""

    def _lipschitz_cached(self) -> Tensor:
        """The constant as computed: 0-dim (shared by the batch) or ``(B,)``; cached."""
        cache = self.__dict__.get("_lip")
        if cache is None:
            cache = self._given_lipschitz()
            if cache is None:
                cache = self._compute_lipschitz()
            cache = self._as_batch(cache, "lipschitz")
            object.__setattr__(self, "_lip", cache)
        return cache

    @property
    def lipschitz(self) -> Tensor:
        """``(B,)`` Lipschitz constant of ``∇f`` per sample (computed once, then cached)."""
        lip = self._lipschitz_cached()
        return lip if lip.dim() == 1 else lip.expand(self.batch_size)

    def lipschitz_for(self, x: Optional[Tensor] = None) -> Tensor:
        """The Lipschitz constant shaped to broadcast against ``x`` ``(B, *shape)``: a 0-dim
        tensor when it is the same for every sample (a shared operator), else ``(B, 1, …, 1)``
        (``(B,)`` without ``x``)."""
        lip = self._lipschitz_cached()
        return lip if lip.dim() == 0 or x is None else per_sample(lip, x)

    def _as_batch(self, value, name: str) -> Tensor:
        like = self._like()
        t = torch.as_tensor(value).detach()
        t = t.to(device=like.device, dtype=like.real.dtype)
        if t.dim() > 1 or (t.dim() == 1 and t.shape[0] != self.batch_size):
            raise ValueError(f"{name}: expected a number, a 0-dim or a (B,) = ({self.batch_size},) tensor, "
                             f"got shape {tuple(t.shape)}")
        return t

    def _like(self) -> Tensor:
        raise NotImplementedError


def _frozen_setattr(self, name, value):  # problems are read-only once built
    raise AttributeError(f"{type(self).__name__} is read-only: build a new problem instead of setting {name!r}")


@dataclass(frozen=True, eq=False)
class LeastSquares(Problem):
    """``½‖A x − y‖² + g(x)``.

    Attributes:
        op: the forward operator ``A: (B, *in_shape) → (B, *out_shape)``.
        y: measurements ``(B, *out_shape)``.
        reg: regulariser with ``value(x) → (B,)`` and ``prox(x, step)``, or ``None``.
        known_lipschitz: ``‖A‖₂²`` when given (``Problem.create(..., lipschitz=...)``), else
            ``None`` and :attr:`lipschitz` asks the operator (cached there).
    """

    op: LinearOperator
    y: Tensor
    reg: Optional[nn.Module] = None
    known_lipschitz: Union[float, Tensor, None] = None

    @property
    def batch_size(self) -> int:
        return self.y.shape[0]

    def _like(self) -> Tensor:
        return self.y

    def inputs_finite(self) -> Tensor:
        return torch.isfinite(self.y).all()

    def check_inputs_finite(self) -> None:
        check_finite(self.y, "y")

    def _compute_lipschitz(self) -> Tensor:
        if self.op.per_sample:
            return self.op.lipschitz_batch(self.batch_size)  # (B,), each sample its own operator
        return self.op.lipschitz()  # one operator for all: a 0-dim constant shared by every sample

    # The iterations call the operator's unchecked _forward/_adjoint: y was checked against the
    # operator when the problem was built, and the iterates keep the shape of x0 (Python-side
    # checks at every application would cost more than the arithmetic of a small problem).
    def residual(self, x: Tensor) -> Tensor:
        """``A x − y``: ``(B, *in_shape) → (B, *out_shape)``."""
        return self.op._forward(x) - self.y

    def grad(self, x: Tensor) -> Tensor:
        """``∇ ½‖A x − y‖² = Aᴴ(A x − y)``: ``(B, *in_shape) → (B, *in_shape)``."""
        return self.op._adjoint(self.residual(x))

    def data_fidelity(self, x: Tensor) -> Tensor:
        """``½‖A x − y‖²`` per sample: ``(B, *in_shape) → (B,)``."""
        r = self.residual(x)
        return 0.5 * r.abs().square().flatten(1).sum(1)

    smooth = data_fidelity

    def zeros(self) -> Tensor:
        """A zero initial estimate ``(B, *in_shape)`` with the measurements' dtype and device."""
        if self.op.in_shape is not None:
            return self.y.new_zeros((self.batch_size, *self.op.in_shape))
        return torch.zeros_like(self.op.adjoint(self.y))


class SmoothProblem(Problem):
    """``f(x; data) + g(x)`` for any smooth, batched objective written by the user.

    ``∇f`` is ``torch.func.grad`` of the per-sample objective, vmapped over the batch, so a
    sample's gradient never depends on its batch mates (even if ``f`` would mix them), and it
    composes with the gradient modes (``implicit`` differentiates through it) and with autograd
    w.r.t. tensors ``f`` or ``data`` hold (hyperparameters). Hessian-vector products
    (:meth:`hvp`) are forward-over-reverse (``torch.func.jvp`` of the gradient).

    Args:
        f: ``f(x, data) → (B,)`` with ``x`` ``(B, *shape)`` and ``data`` a pytree of batched
            tensors (or ``None``). It is called on one sample at a time with batch size 1 under
            ``vmap`` (so no ``.item()``, no in-place changes of ``data``).
        data: the per-sample data ``f`` reads (features, labels, measurements…): a tensor, a
            tuple/dict of tensors with the batch first, or ``None``.
        reg: optional regulariser ``g`` (``value``/``prox``), for proximal steps.
        lipschitz: the Lipschitz constant of ``∇f`` (a number, 0-dim or ``(B,)`` tensor) when
            known (e.g. ``‖X‖²/4`` for logistic regression); needed by steps sized in ``1/L``.
            :meth:`estimate_lipschitz` gives a local estimate.
        like: a ``(B, *shape)`` tensor giving the shape, dtype and device of ``x`` (for
            :meth:`zeros`; otherwise pass ``x0`` to the solver).
        vmap: compute per-sample gradients with ``vmap`` (default); ``False`` differentiates
            ``f(x, data).sum()`` instead (for an ``f`` that ``vmap`` cannot run, and whose samples
            are independent).
    """

    def __init__(self, f: Callable[[Tensor, Any], Tensor], data: Any = None, reg: Optional[nn.Module] = None,
                 lipschitz: Union[float, Tensor, None] = None, like: Optional[Tensor] = None,
                 vmap: bool = True) -> None:
        if not callable(f):
            raise TypeError(f"f: expected a callable f(x, data) -> (B,), got {type(f).__name__}")
        if reg is not None and not callable(getattr(reg, "prox", None)):
            raise TypeError(f"reg: expected a regulariser with value(x) and prox(x, step), got {type(reg).__name__}")
        object.__setattr__(self, "f", f)
        object.__setattr__(self, "data", data)
        object.__setattr__(self, "reg", reg)
        object.__setattr__(self, "known_lipschitz", lipschitz)
        object.__setattr__(self, "like", like)
        object.__setattr__(self, "use_vmap", bool(vmap))
        object.__setattr__(self, "_batch", self._infer_batch(data, like))

    __setattr__ = _frozen_setattr

    @staticmethod
    def _infer_batch(data, like) -> Optional[int]:
        if like is not None:
            return like.shape[0]
        leaves = [t for t in torch.utils._pytree.tree_leaves(data) if isinstance(t, Tensor) and t.dim() > 0]
        return leaves[0].shape[0] if leaves else None

    @property
    def batch_size(self) -> int:
        if self._batch is None:
            raise ValueError("SmoothProblem: the batch size is unknown (no batched data and no `like`)")
        return self._batch

    def _like(self) -> Tensor:
        if self.like is not None:
            return self.like
        leaves = [t for t in torch.utils._pytree.tree_leaves(self.data) if isinstance(t, Tensor)]
        if not leaves:
            raise ValueError("SmoothProblem: pass `like` (a (B, *shape) tensor) to say the dtype and device of x")
        return leaves[0]

    def _float_leaves(self):
        leaves, _ = torch.utils._pytree.tree_flatten(self.data)
        return [t for t in leaves if isinstance(t, Tensor) and (t.is_floating_point() or t.is_complex())]

    def inputs_finite(self) -> Optional[Tensor]:
        flags = [torch.isfinite(t).all() for t in self._float_leaves()]
        return torch.stack(flags).all() if flags else None

    def check_inputs_finite(self) -> None:
        leaves, _ = torch.utils._pytree.tree_flatten(self.data)
        for i, t in enumerate(leaves):
            if isinstance(t, Tensor) and (t.is_floating_point() or t.is_complex()):
                check_finite(t, "data" if len(leaves) == 1 else f"data[{i}]")

    # ------------------------------------------------------------------ f and its derivatives
    def _per_sample(self) -> Callable[[Tensor, Any], Tensor]:
        f = self.f

        def f1(xi: Tensor, di: Any) -> Tensor:  # one sample: (*shape) -> ()
            out = f(xi.unsqueeze(0), tree_map(lambda t: t.unsqueeze(0) if isinstance(t, Tensor) else t, di))
            return out.reshape(())

        return f1

    def smooth(self, x: Tensor) -> Tensor:
        """``f(x, data)`` per sample: ``(B, *shape) → (B,)``."""
        out = self.f(x, self.data)
        if not isinstance(out, Tensor) or out.shape != (x.shape[0],):
            got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
            raise ValueError(f"f: expected f(x, data) of shape (B,) = ({x.shape[0]},), got {got}")
        return out

    def grad(self, x: Tensor) -> Tensor:
        """``∇f(x)`` per sample: ``(B, *shape) → (B, *shape)`` (``torch.func.grad``, vmapped)."""
        if not self.use_vmap:
            return torch.func.grad(lambda z: self.f(z, self.data).sum())(x)
        g = torch.func.grad(self._per_sample())
        in_dims = (0, tree_map(lambda t: 0 if isinstance(t, Tensor) and t.dim() > 0 else None, self.data))
        return torch.func.vmap(g, in_dims=in_dims)(x, self.data)

    def hvp(self, x: Tensor, v: Tensor) -> Tensor:
        """Hessian-vector product ``∇²f(x) v`` per sample (forward-over-reverse):
        ``(B, *shape), (B, *shape) → (B, *shape)``."""
        return torch.func.jvp(self.grad, (x,), (v,))[1]

    def zeros(self) -> Tensor:
        if self.like is None:
            raise ValueError("SmoothProblem: no zero start without `like`; pass x0 to the solver or like=... here")
        return torch.zeros_like(self.like)

    def estimate_lipschitz(self, x: Tensor, max_iter: int = 50, seed: int = 0) -> Tensor:
        """A local estimate of the Lipschitz constant of ``∇f``: the largest Hessian eigenvalue
        at ``x`` per sample, ``(B,)``, by power iteration on :meth:`hvp` (exact for quadratics;
        for other ``f`` only a local value, not a bound — pass a proven bound when there is one)."""
        gen = torch.Generator(device="cpu").manual_seed(seed)
        with torch.no_grad():
            v = torch.randn(x.shape, generator=gen, dtype=x.dtype).to(x.device)
            v = v / per_sample(batch_norm(v).clamp_min(torch.finfo(x.real.dtype).tiny), v)
            est = torch.zeros(x.shape[0], dtype=x.real.dtype, device=x.device)
            for _ in range(max_iter):
                w = self.hvp(x.detach(), v)
                est = batch_dot(v, w).real
                v = w / per_sample(batch_norm(w).clamp_min(torch.finfo(x.real.dtype).tiny), w)
        return est


class QuadraticProblem(Problem):
    """``½⟨x, Qx⟩ − Re⟨b, x⟩`` for a Hermitian positive-definite ``Q``: minimised by
    ``x = Q⁻¹b``; the gradient ``Qx − b`` is the negative residual, so Krylov steps measure
    convergence by ``‖b − Qx‖/‖b‖``.

    Args:
        Q: a square :class:`~unroll.operators.LinearOperator` (e.g. a Laplacian, ``AᴴA + λI``)
            or a callable ``x ↦ Qx`` on ``(B, *shape)``.
        b: right-hand sides ``(B, *shape)``.
        reg: optional regulariser (rarely used here).
        lipschitz: ``λ_max(Q)`` when known; otherwise ``‖Q‖₂`` from the operator (power
            iteration, cached on it). A plain callable needs it given.
    """

    def __init__(self, Q: Union[LinearOperator, Callable[[Tensor], Tensor]], b: Tensor,
                 reg: Optional[nn.Module] = None, lipschitz: Union[float, Tensor, None] = None) -> None:
        if not isinstance(b, Tensor) or b.dim() < 1:
            raise ValueError(f"b: expected a (B, *shape) tensor, got {type(b).__name__ if not isinstance(b, Tensor) else tuple(b.shape)}")
        if isinstance(Q, Tensor):
            Q = as_operator(Q)
        if not callable(Q):
            raise TypeError(f"Q: expected a LinearOperator or a callable x -> Qx, got {type(Q).__name__}")
        if isinstance(Q, LinearOperator):
            Q.check_input(b, "b")
        object.__setattr__(self, "Q", Q)
        object.__setattr__(self, "b", b)
        object.__setattr__(self, "reg", reg)
        object.__setattr__(self, "known_lipschitz", lipschitz)

    __setattr__ = _frozen_setattr

    @property
    def batch_size(self) -> int:
        return self.b.shape[0]

    def _like(self) -> Tensor:
        return self.b

    def _compute_lipschitz(self) -> Tensor:
        if not isinstance(self.Q, LinearOperator):
            return super()._compute_lipschitz()
        if self.Q.per_sample:
            return self.Q.lipschitz_batch(self.batch_size).sqrt()
        return self.Q.lipschitz().sqrt()  # ‖Q‖₂ = λ_max(Q) for Hermitian PSD Q (lipschitz() is ‖Q‖₂²)

    def inputs_finite(self) -> Tensor:
        return torch.isfinite(self.b).all()

    def check_inputs_finite(self) -> None:
        check_finite(self.b, "b")

    def apply(self, x: Tensor) -> Tensor:
        """``Qx``: ``(B, *shape) → (B, *shape)``."""
        return self.Q._forward(x) if isinstance(self.Q, LinearOperator) else self.Q(x)

    def smooth(self, x: Tensor) -> Tensor:
        return 0.5 * batch_dot(x, self.apply(x)).real - batch_dot(self.b, x).real

    def grad(self, x: Tensor) -> Tensor:
        """``Qx − b``."""
        return self.apply(x) - self.b

    def residual(self, x: Tensor) -> Tensor:
        """``b − Qx``: ``(B, *shape) → (B, *shape)``."""
        return self.b - self.apply(x)

    def relative_residual(self, x: Tensor) -> Tensor:
        """``‖b − Qx‖ / ‖b‖`` per sample ``(B,)`` (``‖b − Qx‖`` where ``b = 0``)."""
        bn = batch_norm(self.b)
        return batch_norm(self.residual(x)) / torch.where(bn > 0, bn, torch.ones_like(bn))

    def zeros(self) -> Tensor:
        return torch.zeros_like(self.b)
