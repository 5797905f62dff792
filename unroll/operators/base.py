"""The linear-operator contract every solver and layer in ``unroll`` is written against.

A :class:`LinearOperator` is an ``nn.Module`` that maps a batch ``x`` of shape
``(B, *in_shape)`` to ``A x`` of shape ``(B, *out_shape)``. It knows its adjoint, so
``A.H`` and ``A.normal(x) = Aᴴ A x`` are always available, and it composes
(``A @ B``, ``A + B``, ``c * A``). Being a module, it moves with ``.to(device, dtype)``
and its parameters (if any) are learnable.

Subclasses implement :meth:`_forward` and :meth:`_adjoint` and set ``in_shape`` /
``out_shape`` (per-sample shapes, or ``None`` for "any shape", e.g. the identity) and
``is_complex`` (``True``/``False``, or ``None`` when the operator acts on real and
complex data alike, e.g. a real mask). The public :meth:`forward` and :meth:`adjoint`
check the input against those (metadata only: no host synchronisation) so that a
wrong shape or dtype fails with a message that names the argument.
"""

from __future__ import annotations

import hashlib
from numbers import Number
from typing import Optional, Tuple

import torch
from torch import Tensor, nn

Shape = Optional[Tuple[int, ...]]

__all__ = ["LinearOperator", "adjoint_test", "fmt_shape"]


def fmt_shape(shape: Shape) -> str:
    """``(B, n, m)`` for a per-sample shape ``(n, m)``; ``(B, *)`` for ``None`` (any shape)."""
    return "(B, *)" if shape is None else "(B, " + ", ".join(str(s) for s in shape) + ")"


class LinearOperator(nn.Module):
    """Base class of batched linear operators ``A: (B, *in_shape) → (B, *out_shape)``.

    Attributes:
        in_shape: per-sample shape of the domain, or ``None`` if any shape is accepted.
        out_shape: per-sample shape of the range, or ``None`` if it equals the input's.
        is_complex: ``True`` if the operator works on complex data only, ``False`` if on
            real data only, ``None`` if it accepts both.
    """

    in_shape: Shape = None
    out_shape: Shape = None
    is_complex: Optional[bool] = None

    def __init__(self) -> None:
        super().__init__()
        self._lipschitz_cache: Optional[Tensor] = None
        self._lipschitz_key: Optional[tuple] = None

    @property
    def per_sample(self) -> bool:
        """Whether the operator differs between the samples of a batch (a ``(B, m, n)`` matrix
        stack, per-sample masks or coil maps): then :meth:`lipschitz_batch` gives each sample its
        own constant. ``False`` by default; composite operators inherit it from their parts;
        subclasses set it (``self.per_sample = ...``)."""
        own = self.__dict__.get("_per_sample")
        if own is not None:
            return own
        return any(m.per_sample for m in self.children() if isinstance(m, LinearOperator))

    @per_sample.setter
    def per_sample(self, value: bool) -> None:
        self.__dict__["_per_sample"] = bool(value)

    def check_input(self, x: Tensor, name: str = "x") -> None:
        """Check ``x`` ``(B, *in_shape)`` against the domain (shape, real/complex), naming ``name``."""
        self._check(x, self.in_shape, name, "domain")

    def _cached_lipschitz_valid(self) -> bool:
        """Whether the cached constant still describes the operator (inside ``torch.compile``
        the version counters cannot be read, and a compiled graph sees a fixed operator)."""
        if self._lipschitz_cache is None:
            return False
        return torch.compiler.is_compiling() or self._lipschitz_key == self._state_key()

    def _state_key(self) -> tuple:
        """Identity and version counters of the operator's tensors: changes when a parameter or
        buffer is replaced or modified in place (an optimiser step), so cached constants can tell
        they are stale without comparing values."""
        return tuple((id(t), t._version) for t in list(self.parameters()) + list(self.buffers()))

    # ------------------------------------------------------------------ to implement
    def _forward(self, x: Tensor) -> Tensor:
        raise NotImplementedError(f"{type(self).__name__} must implement _forward(x)")

    def _adjoint(self, y: Tensor) -> Tensor:
        raise NotImplementedError(f"{type(self).__name__} must implement _adjoint(y)")

    # ------------------------------------------------------------------ public API
    def forward(self, x: Tensor) -> Tensor:
        """``A x``: ``(B, *in_shape) → (B, *out_shape)``."""
        self._check(x, self.in_shape, "x", "domain")
        return self._forward(x)

    def adjoint(self, y: Tensor) -> Tensor:
        """``Aᴴ y``: ``(B, *out_shape) → (B, *in_shape)``."""
        self._check(y, self.out_shape, "y", "range")
        return self._adjoint(y)

    def normal(self, x: Tensor) -> Tensor:
        """``Aᴴ A x``: ``(B, *in_shape) → (B, *in_shape)``. Override when cheaper."""
        return self.adjoint(self.forward(x))

    @property
    def H(self) -> "LinearOperator":
        """The adjoint operator ``Aᴴ`` as a :class:`LinearOperator`."""
        return AdjointOperator(self)

    def __matmul__(self, other: "LinearOperator") -> "LinearOperator":
        if not isinstance(other, LinearOperator):
            return NotImplemented
        return ComposedOperator(self, other)

    def __add__(self, other: "LinearOperator") -> "LinearOperator":
        if not isinstance(other, LinearOperator):
            return NotImplemented
        return SumOperator(self, other)

    def __sub__(self, other: "LinearOperator") -> "LinearOperator":
        if not isinstance(other, LinearOperator):
            return NotImplemented
        return SumOperator(self, ScaledOperator(other, -1.0))

    def __neg__(self) -> "LinearOperator":
        return ScaledOperator(self, -1.0)

    def __mul__(self, c) -> "LinearOperator":
        if isinstance(c, (Number, Tensor)):
            return ScaledOperator(self, c)
        return NotImplemented

    __rmul__ = __mul__

    # ------------------------------------------------------------------ checks
    def _check(self, t: Tensor, shape: Shape, name: str, space: str) -> None:
        if not isinstance(t, Tensor):
            raise TypeError(f"{name}: expected a torch.Tensor for {self.describe()}, got {type(t).__name__}")
        if shape is not None and tuple(t.shape[1:]) != tuple(shape):
            raise ValueError(
                f"{name}: expected shape {fmt_shape(shape)} for the {space} of {self.describe()}, "
                f"got {tuple(t.shape)}"
            )
        if self.is_complex is False and t.is_complex():
            raise TypeError(
                f"{name}: {self.describe()} is a real operator but got a complex tensor ({t.dtype}); "
                "build the operator from complex data to apply it to complex inputs"
            )
        if self.is_complex is True and not t.is_complex():
            raise TypeError(f"{name}: {self.describe()} is a complex operator but got a real tensor ({t.dtype})")

    def describe(self) -> str:
        """``"Name (B, n) → (B, m)"``: the operator as error messages name it."""
        return f"{type(self).__name__} {fmt_shape(self.in_shape)} → {fmt_shape(self.out_shape)}"

    def extra_repr(self) -> str:
        return f"in_shape={self.in_shape}, out_shape={self.out_shape}"

    # ------------------------------------------------------------------ spectral norm
    def _example_input(self, batch: int = 1, like: Optional[Tensor] = None,
                       generator: Optional[torch.Generator] = None) -> Tensor:
        """A random ``(batch, *in_shape)`` tensor of the operator's device and dtype."""
        if like is not None:
            shape, dtype, device = (batch, *like.shape[1:]), like.dtype, like.device
        else:
            if self.in_shape is None:
                raise ValueError(f"{self.describe()} accepts any shape: pass an example input `x`")
            dtype, device = self._dtype_device()
            shape = (batch, *self.in_shape)
        return torch.randn(shape, dtype=dtype, generator=generator).to(device)

    def _dtype_device(self) -> Tuple[torch.dtype, torch.device]:
        for t in list(self.buffers()) + list(self.parameters()):
            if t.is_floating_point() or t.is_complex():
                dtype = t.dtype
                if self.is_complex and not dtype.is_complex:
                    dtype = torch.complex128 if dtype == torch.float64 else torch.complex64
                return dtype, t.device
        dtype = torch.complex64 if self.is_complex else torch.get_default_dtype()
        return dtype, torch.device("cpu")

    def lipschitz(self, x: Optional[Tensor] = None, max_iter: int = 100, tol: float = 1e-6,
                  recompute: bool = False) -> Tensor:
        """Largest eigenvalue of ``Aᴴ A`` (``= ‖A‖₂²``), the Lipschitz constant of the
        gradient of ``½‖Ax − y‖²``, by power iteration.

        Computed once and cached on the operator; recomputed when one of its parameters or
        buffers has changed since (an optimiser step, an in-place edit), or with
        ``recompute=True``. Runs without a graph: the result is a constant. For a per-sample
        operator it is the largest over the batch (:meth:`lipschitz_batch` gives each its own).

        Args:
            x: optional example input ``(1, *in_shape)`` (needed only when ``in_shape`` is None).
            max_iter, tol: power-iteration budget and relative tolerance on the estimate.

        Returns:
            a 0-dim real tensor on the operator's device.
        """
        if not recompute and self._cached_lipschitz_valid():
            return self._lipschitz_cache
        with torch.no_grad():
            gen = torch.Generator(device="cpu").manual_seed(0)
            v = self._example_input(1, like=x, generator=None if x is not None else gen)
            v = v / torch.linalg.vector_norm(v)
            est = torch.zeros((), dtype=v.real.dtype, device=v.device)
            for _ in range(max_iter):
                w = self.normal(v)
                new = torch.linalg.vector_norm(w)
                if new == 0:
                    est = new
                    break
                v = w / new
                done = torch.abs(new - est) <= tol * new
                est = new
                if done:  # one host sync per power iteration (setup cost, not a solver loop)
                    break
        self._lipschitz_cache, self._lipschitz_key = est, self._state_key()
        return est

    def lipschitz_batch(self, batch: int, x: Optional[Tensor] = None, max_iter: int = 100,
                        tol: float = 1e-6) -> Tensor:
        """``‖A_i‖₂²`` for each sample ``i`` of a batch of ``batch`` samples, ``(batch,)``.

        For an operator shared by the batch it is :meth:`lipschitz` repeated; for a per-sample
        operator a batched power iteration (every sample from the same seeded start, so a
        sample's constant never depends on its batch mates), run without a graph.
        """
        if not self.per_sample:
            return self.lipschitz(x).expand(batch)
        with torch.no_grad():
            gen = torch.Generator(device="cpu").manual_seed(0)
            v = self._example_input(1, like=x, generator=gen).expand(batch, *self._example_shape(x)).clone()
            tiny = torch.finfo(v.real.dtype).tiny
            v = v / torch.linalg.vector_norm(v.flatten(1), dim=1).clamp_min(tiny).view(-1, *[1] * (v.dim() - 1))
            est = torch.zeros(batch, dtype=v.real.dtype, device=v.device)
            for _ in range(max_iter):
                w = self.normal(v)
                new = torch.linalg.vector_norm(w.flatten(1), dim=1)
                v = w / new.clamp_min(tiny).view(-1, *[1] * (w.dim() - 1))
                done = bool(((new - est).abs() <= tol * new).all())  # one sync per iteration (set-up cost)
                est = new
                if done:
                    break
        return est

    def _example_shape(self, x: Optional[Tensor]) -> Tuple[int, ...]:
        return tuple(x.shape[1:]) if x is not None else tuple(self.in_shape)

    def _apply(self, fn, *args, **kwargs):  # keep the cached constant on the module's device
        out = super()._apply(fn, *args, **kwargs)
        if self._lipschitz_cache is not None:
            cache = fn(self._lipschitz_cache)
            self._lipschitz_cache = cache.real if cache.is_complex() else cache
            self._lipschitz_key = self._state_key()  # moved, not changed: the constant still holds
        return out

    def norm(self, **kwargs) -> Tensor:
        """Spectral norm ``‖A‖₂`` (square root of :meth:`lipschitz`)."""
        return torch.sqrt(self.lipschitz(**kwargs))

    # ------------------------------------------------------------------ identity
    def fingerprint(self) -> str:
        """A hash of the operator's class, shapes and tensors (buffers and parameters).

        Two operators with the same fingerprint compute the same map; used to tell whether a
        checkpoint was trained on the problem it is being evaluated on.
        """
        h = hashlib.sha256()
        h.update(type(self).__qualname__.encode())
        h.update(repr((self.in_shape, self.out_shape)).encode())
        for name, mod in self.named_modules():  # the structure, e.g. (A + B) @ C vs (A @ B) @ C
            h.update(f"{name}:{type(mod).__qualname__}".encode())
            if isinstance(mod, LinearOperator):
                h.update(mod._fingerprint_extra().encode())
        for name, t in sorted(self.state_dict(keep_vars=False).items()):
            h.update(name.encode())
            t = t.detach().to("cpu")
            if t.is_sparse or t.layout != torch.strided:
                t = t.to_dense()
            t = t.to(torch.complex128 if t.is_complex() else torch.float64).contiguous()
            h.update(t.numpy().tobytes())
        return h.hexdigest()[:16]

    def _fingerprint_extra(self) -> str:
        """Non-tensor state that changes the map (hashed by :meth:`fingerprint`); none by default."""
        return ""


class AdjointOperator(LinearOperator):
    """``Aᴴ`` of an operator ``A`` (shares its parameters)."""

    def __init__(self, op: LinearOperator) -> None:
        super().__init__()
        self.op = op
        self.in_shape, self.out_shape, self.is_complex = op.out_shape, op.in_shape, op.is_complex

    def _forward(self, x: Tensor) -> Tensor:
        return self.op._adjoint(x)

    def _adjoint(self, y: Tensor) -> Tensor:
        return self.op._forward(y)

    @property
    def H(self) -> LinearOperator:
        return self.op

    def lipschitz(self, *args, **kwargs) -> Tensor:
        return self.op.lipschitz(*args, **kwargs)  # ‖Aᴴ‖ = ‖A‖


def _merge_complex(a: Optional[bool], b: Optional[bool]) -> Optional[bool]:
    return a if b is None else b if a is None else (a or b)


class ComposedOperator(LinearOperator):
    """``A @ B``: ``x ↦ A(B x)``."""

    def __init__(self, a: LinearOperator, b: LinearOperator) -> None:
        super().__init__()
        if a.in_shape is not None and b.out_shape is not None and tuple(a.in_shape) != tuple(b.out_shape):
            raise ValueError(
                f"A @ B: the domain of A {fmt_shape(a.in_shape)} does not match the range of B "
                f"{fmt_shape(b.out_shape)}"
            )
        self.a, self.b = a, b
        self.in_shape = b.in_shape
        self.out_shape = a.out_shape if a.out_shape is not None else b.out_shape
        self.is_complex = _merge_complex(a.is_complex, b.is_complex)

    def _forward(self, x: Tensor) -> Tensor:
        return self.a(self.b._forward(x))

    def _adjoint(self, y: Tensor) -> Tensor:
        return self.b.adjoint(self.a._adjoint(y))


class SumOperator(LinearOperator):
    """``A + B``: ``x ↦ A x + B x`` (same domain and range)."""

    def __init__(self, a: LinearOperator, b: LinearOperator) -> None:
        super().__init__()
        for attr in ("in_shape", "out_shape"):
            sa, sb = getattr(a, attr), getattr(b, attr)
            if sa is not None and sb is not None and tuple(sa) != tuple(sb):
                raise ValueError(f"A + B: {attr} differ: {fmt_shape(sa)} vs {fmt_shape(sb)}")
        self.a, self.b = a, b
        self.in_shape = a.in_shape if a.in_shape is not None else b.in_shape
        self.out_shape = a.out_shape if a.out_shape is not None else b.out_shape
        self.is_complex = _merge_complex(a.is_complex, b.is_complex)

    def _forward(self, x: Tensor) -> Tensor:
        return self.a._forward(x) + self.b._forward(x)

    def _adjoint(self, y: Tensor) -> Tensor:
        return self.a._adjoint(y) + self.b._adjoint(y)


class ScaledOperator(LinearOperator):
    """``c * A`` for a scalar ``c`` (Python number or 0-dim tensor, possibly learnable)."""

    def __init__(self, op: LinearOperator, c) -> None:
        super().__init__()
        if isinstance(c, Tensor) and c.dim() != 0:
            raise ValueError(f"c * A: c must be a scalar (0-dim tensor or number), got shape {tuple(c.shape)}")
        self.op = op
        if isinstance(c, nn.Parameter):
            self.c = c
        elif isinstance(c, Tensor):
            self.register_buffer("c", c)
        else:
            self.c = c
        self.in_shape, self.out_shape = op.in_shape, op.out_shape
        self.is_complex = _merge_complex(op.is_complex, True if isinstance(c, complex) or
                                         (isinstance(c, Tensor) and c.is_complex()) else None)

    def _forward(self, x: Tensor) -> Tensor:
        return self.c * self.op._forward(x)

    def _fingerprint_extra(self) -> str:
        return "" if isinstance(self.c, Tensor) else repr(self.c)  # a tensor c is in the state_dict

    def _adjoint(self, y: Tensor) -> Tensor:
        c = self.c.conj() if isinstance(self.c, Tensor) else (self.c.conjugate() if isinstance(self.c, complex) else self.c)
        return c * self.op._adjoint(y)


def _inner(a: Tensor, b: Tensor) -> Tensor:
    """⟨a, b⟩ = Σ conj(a)·b over all entries (batch included)."""
    return torch.sum(a.conj() * b) if a.is_complex() or b.is_complex() else torch.sum(a * b)


def adjoint_test(op: LinearOperator, x: Optional[Tensor] = None, y: Optional[Tensor] = None,
                 batch: int = 2, seed: int = 0) -> float:
    """Relative error of the adjoint identity ``⟨A x, y⟩ = ⟨x, Aᴴ y⟩``.

    Args:
        op: the operator to test.
        x: a domain sample ``(B, *in_shape)``; random (seeded) if omitted.
        y: a range sample ``(B, *out_shape)``; random, shaped like ``A x``, if omitted.

    Returns:
        ``|⟨Ax, y⟩ − ⟨x, Aᴴy⟩| / max(|⟨Ax, y⟩|, |⟨x, Aᴴy⟩|)`` as a Python float
        (about machine precision for a correct adjoint).
    """
    gen = torch.Generator(device="cpu").manual_seed(seed)
    with torch.no_grad():
        if x is None:
            x = op._example_input(batch, generator=gen)
        ax = op(x)
        if y is None:
            y = torch.randn(ax.shape, dtype=ax.dtype, generator=gen).to(ax.device)
        aty = op.adjoint(y)
        lhs, rhs = _inner(ax, y), _inner(x, aty)
        scale = torch.maximum(lhs.abs(), rhs.abs()).clamp_min(torch.finfo(lhs.real.dtype).tiny)
        return float((lhs - rhs).abs() / scale)
