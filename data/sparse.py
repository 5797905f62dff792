"""Sparse recovery ``y = A x (+ noise)`` with Bernoulli–Gaussian ``x``: the LISTA benchmark.

* :func:`make_sparse_signals` and :func:`measure` draw signals and measurements; the
  training stream and the fixed validation/test splits both use them.
* :func:`load_standard_problem` loads the 250×500 matrix and the 1000 test signals of the
  LISTA-CP / ALISTA papers shipped in ``assets/lista`` (see the README there).
* :class:`SparseRecoveryDataModule` is the ``LightningDataModule`` (buildable by
  ``LightningCLI``): a fresh, seeded, never-repeating training stream and fixed splits,
  optionally frozen in an HDF5 file (:mod:`unroll.data.h5`).
"""

from __future__ import annotations

import functools
import math
import os
import warnings
from importlib import resources
from typing import Callable, Dict, Literal, Optional, Tuple, Union

import numpy as np
import torch
from torch import Tensor

from unroll.checks import check_finite
from unroll.operators import LinearOperator, MatrixOperator

from .base import SplitData, SyntheticDataModule
from .batch import Batch
from .checks import as_dtype, check_int, check_path, check_probability, check_snr
from .h5 import read_splits_h5, write_splits_h5
from .stream import make_generator

__all__ = [
    "STANDARD_SHAPE",
    "load_standard_problem",
    "make_sparse_signals",
    "measure",
    "SparseRecoveryDataModule",
]

#: ``(m, n)`` of the shipped standard problem.
STANDARD_SHAPE: Tuple[int, int] = (250, 500)
_STANDARD_N_TEST = 1000

# Independent random streams derived from the user's seed (the training stream is
# SyntheticDataModule.TRAIN_STREAM = 3).
_STREAM_A, _STREAM_VAL, _STREAM_TEST = 0, 1, 2


# ---------------------------------------------------------------------------- generation
def make_sparse_signals(n: int, batch: int, p: float, generator: Optional[torch.Generator] = None,
                        dtype: Union[str, torch.dtype] = torch.float32) -> Tensor:
    """Bernoulli–Gaussian signals ``x = Bernoulli(p) ⊙ N(0, 1)``, i.i.d. entries.

    Args:
        n: signal length.
        batch: number of signals.
        p: probability that an entry is nonzero, in ``(0, 1]``.
        generator: CPU ``torch.Generator`` (``None``: the global RNG).
        dtype: floating dtype (``torch.dtype`` or ``"float32"``/``"float64"``).

    Returns:
        ``(batch, n)`` tensor on the CPU.
    """
    check_int("n", n, 1)
    check_int("batch", batch, 1)
    check_probability("p", p, "a support probability")
    dtype = as_dtype(dtype)
    support = torch.rand((batch, n), generator=generator, dtype=dtype) < p
    values = torch.randn((batch, n), generator=generator, dtype=dtype)
    return torch.where(support, values, torch.zeros((), dtype=dtype))


def measure(A: Union[Tensor, LinearOperator], x: Tensor, snr_db: Optional[float] = None,
            generator: Optional[torch.Generator] = None) -> Tensor:
    """Measurements ``y = A x + σ e`` with ``e ~ N(0, I)``.

    ``σ = std(A x) · 10^(−snr_db/20)``, the standard deviation taken over the whole batch,
    so that ``20·log10(std(A x) / σ) = snr_db`` for the batch. (The LISTA-CP / ALISTA code
    takes it per signal, over the ``m`` entries of each ``A x``; the two agree in expectation,
    and on the standard problem at 40 dB the converged LASSO's NMSE differs by 0.1 dB.)

    Args:
        A: ``(m, n)`` matrix or a :class:`~unroll.operators.LinearOperator`.
        x: ``(B, n)`` signals (same dtype as ``A``).
        snr_db: signal-to-noise ratio in dB; ``None`` for noiseless measurements.
        generator: ``torch.Generator`` for the noise (``None``: the global RNG).

    Returns:
        ``(B, m)`` measurements.
    """
    check_snr("snr_db", snr_db)
    if not isinstance(x, Tensor):
        raise TypeError(f"x: expected a torch.Tensor, got {type(x).__name__}")
    if isinstance(A, LinearOperator):
        y = A(x)
    elif isinstance(A, Tensor):
        if A.dim() != 2:
            raise ValueError(f"A: expected a 2-D (m, n) matrix, got shape {tuple(A.shape)}")
        if x.dim() != 2 or x.shape[1] != A.shape[1]:
            raise ValueError(f"x: expected shape (B, {A.shape[1]}) to fit A of shape {tuple(A.shape)}, "
                             f"got {tuple(x.shape)}")
        if x.dtype != A.dtype:
            raise TypeError(f"x: dtype {x.dtype} does not match A's {A.dtype}")
        y = x @ A.mT
    else:
        raise TypeError(f"A: expected a torch.Tensor or LinearOperator, got {type(A).__name__}")
    if snr_db is None:
        return y
    sigma = y.std(correction=0) * 10.0 ** (-float(snr_db) / 20.0)
    gen_device = generator.device if generator is not None else y.device
    noise = torch.randn(y.shape, generator=generator, dtype=y.dtype, device=gen_device).to(y.device)
    return y + sigma * noise


def _gaussian_matrix(m: int, n: int, seed: int) -> Tensor:
    """``(m, n)`` float64, entries N(0, 1/m), columns then scaled to unit ℓ2 norm."""
    A = torch.randn((m, n), generator=make_generator(seed, _STREAM_A), dtype=torch.float64) / math.sqrt(m)
    return A / torch.linalg.vector_norm(A, dim=0, keepdim=True)


# ---------------------------------------------------------------------------- shipped problem
def load_standard_problem() -> Dict[str, Tensor]:
    """The LISTA-CP / ALISTA benchmark problem shipped in ``unroll/data/assets/lista``.

    Returns:
        ``{"A": (250, 500) float64, "W": (250, 500) float64 ALISTA analytic weight,
        "x_test": (1000, 500) float32 test signals, one per row}``.
    """
    import scipy.io

    root = resources.files("unroll.data") / "assets" / "lista"
    with resources.as_file(root / "D.mat") as p:
        A = scipy.io.loadmat(str(p))["D"]
    with resources.as_file(root / "W.npy") as p:
        W = np.load(p)
    with resources.as_file(root / "xtest_n500_p10.npy") as p:
        x = np.load(p)
    m, n = STANDARD_SHAPE
    for name, arr, shape in (("D.mat:D", A, (m, n)), ("W.npy", W, (m, n)),
                             ("xtest_n500_p10.npy", x, (n, _STANDARD_N_TEST))):
        if arr.shape != shape:
            raise ValueError(f"{root / name.split(':')[0]}: expected shape {shape} for {name}, "
                             f"got {arr.shape}; the shipped asset is corrupted")
    return {
        "A": torch.from_numpy(np.ascontiguousarray(A, dtype=np.float64)),
        "W": torch.from_numpy(np.ascontiguousarray(W, dtype=np.float64)),
        "x_test": torch.from_numpy(np.ascontiguousarray(x.T)),
    }


def _sparse_batch(index: int, generator: torch.Generator, A: Tensor, p: float, snr_db: Optional[float],
                  batch_size: int) -> Batch:
    """Training batch ``index`` of the sparse stream: ``batch_size`` fresh signals and their measurements."""
    x = make_sparse_signals(A.shape[1], batch_size, p, generator, A.dtype)
    return Batch(measure(A, x, snr_db, generator), x)


# ---------------------------------------------------------------------------- datamodule
class SparseRecoveryDataModule(SyntheticDataModule):
    """Sparse recovery ``y = A x (+ noise)`` with Bernoulli–Gaussian ``x`` (the LISTA benchmark).

    Training batches are drawn fresh forever (never repeated across epochs); validation
    and test splits are fixed, generated from seeds derived from ``seed`` (independent of
    the training stream) or read from ``h5_path``. Everything is generated on the CPU;
    all batches are :class:`~unroll.data.Batch` ``(y (B, m), x (B, n))`` of the one global
    operator ``A`` (:meth:`get_operator`).

    Args:
        problem: ``"gaussian"``: ``A`` with i.i.d. N(0, 1/m) entries, columns scaled to
            unit ℓ2 norm, drawn from ``seed``. ``"standard"``: the shipped 250×500 matrix
            of the LISTA-CP/ALISTA papers, whose test split is the 1000 shipped signals.
        m: number of measurements; ``None``: from the problem (250 for ``"gaussian"``,
            or from ``h5_path``). For ``"standard"`` it must be ``None`` or 250.
        n: signal length; ``None``: from the problem (500 for ``"gaussian"``, or from
            ``h5_path``). For ``"standard"`` it must be ``None`` or 500.
        p: probability that an entry of ``x`` is nonzero, in ``(0, 1]``.
        snr_db: measurement SNR in dB, noise std ``std(A x)·10^(−snr_db/20)`` over the
            whole batch/split; ``None``: noiseless.
        batch_size: training batch size.
        train_batches: training batches per epoch (each one fresh).
        val_size: number of validation samples.
        test_size: number of test samples (``"standard"``: the first ``test_size`` ≤ 1000
            of the shipped signals).
        eval_batch_size: batch size of the validation, test and predict dataloaders.
        seed: seed from which ``A`` (gaussian), the splits and the training stream derive.
        h5_path: HDF5 file of ``A`` and the val/test splits (see :func:`write_splits_h5`),
            read from it (``val_size``/``test_size`` are then those of the file). A path that
            does not exist is an error, unless ``create_h5`` is set.
        create_h5: when ``h5_path`` does not exist, generate ``A`` and the splits and write them
            there (in ``prepare_data``, so once per node); an existing file is read, never
            overwritten. :meth:`write_h5` writes a file explicitly.
        dtype: ``"float32"`` or ``"float64"``: dtype of ``A``, the operator and the data.
        num_workers: DataLoader worker processes (the training stream starts its workers each
            epoch, at the epoch's position in the stream; the evaluation loaders keep theirs).
    """

    def __init__(
        self,
        problem: Literal["gaussian", "standard"] = "gaussian",
        m: Optional[int] = None,
        n: Optional[int] = None,
        p: float = 0.1,
        snr_db: Optional[float] = None,
        batch_size: int = 64,
        train_batches: int = 200,
        val_size: int = 1000,
        test_size: int = 1000,
        eval_batch_size: int = 1000,
        seed: int = 0,
        h5_path: Optional[str] = None,
        dtype: str = "float32",
        num_workers: int = 0,
        create_h5: bool = False,
    ) -> None:
        super().__init__(batch_size=batch_size, train_batches=train_batches, eval_batch_size=eval_batch_size,
                         seed=seed, num_workers=num_workers)
        if problem not in ("gaussian", "standard"):
            raise ValueError(f"problem: expected 'gaussian' or 'standard', got {problem!r}")
        for name, value in (("m", m), ("n", n)):
            if value is not None:
                check_int(name, value, 1)
        if problem == "standard":
            for name, value, want in (("m", m, STANDARD_SHAPE[0]), ("n", n, STANDARD_SHAPE[1])):
                if value is not None and value != want:
                    raise ValueError(f"{name}: the 'standard' problem has {name}={want}, got {name}={value} "
                                     f"(leave {name} unset to take it from the problem)")
        self.p = check_probability("p", p, "a support probability")
        self.snr_db = check_snr("snr_db", snr_db)
        check_int("val_size", val_size, 1)
        check_int("test_size", test_size, 1)
        if problem == "standard" and test_size > _STANDARD_N_TEST:
            raise ValueError(f"test_size: the 'standard' problem ships {_STANDARD_N_TEST} test signals, "
                             f"got test_size={test_size}")
        self.h5_path = check_path("h5_path", h5_path)
        if not isinstance(create_h5, bool):
            raise ValueError(f"create_h5: expected a bool, got {create_h5!r}")
        self.create_h5 = create_h5
        self._check_h5_exists()
        self.torch_dtype = as_dtype(dtype)
        self.save_hyperparameters()

        self.problem = problem
        self._m_arg, self._n_arg = m, n
        self.val_size, self.test_size = val_size, test_size
        self.dtype = dtype
        self._source = "generated"

    def _check_h5_exists(self) -> None:
        if self.h5_path is not None and not self.create_h5 and not os.path.exists(self.h5_path):
            raise FileNotFoundError(f"h5_path: no such file: {self.h5_path!r} (to generate the splits and write them "
                                    "there, also set create_h5: true)")

    # ------------------------------------------------------------------ building
    def prepare_data(self) -> None:
        """With ``create_h5`` and an ``h5_path`` that does not exist yet: generate the problem and
        write it there (Lightning runs this once per node, before :meth:`setup`)."""
        if self.h5_path is not None and self.create_h5 and not os.path.exists(self.h5_path):
            A64, val64, test64 = self._generate()
            write_splits_h5(self.h5_path, A64, {"val": val64, "test": test64}, self._h5_attrs("generated"))

    def build(self) -> SplitData:
        self._check_h5_exists()
        if self.h5_path is not None:
            self.prepare_data()  # creates the file if asked and missing (without a trainer)
            A64, val64, test64 = self._read_h5()
            self._source = self.h5_path
        else:
            A64, val64, test64 = self._generate()
            self._source = "shipped" if self.problem == "standard" else "generated"

        check_finite(A64, "A")
        for name, split in (("val", val64), ("test", test64)):
            check_finite(split.y, f"{name} split y")
            check_finite(split.x, f"{name} split x")
        self._A64, self._val64, self._test64 = A64, val64, test64
        dt = self.torch_dtype
        self._A = A64.to(dt)
        return SplitData(MatrixOperator(self._A), Batch(val64.y.to(dt), val64.x.to(dt)),
                         Batch(test64.y.to(dt), test64.x.to(dt)))

    def batch_maker(self) -> Callable[[int, torch.Generator], Batch]:
        return functools.partial(_sparse_batch, A=self.A, p=self.p, snr_db=self.snr_db, batch_size=self.batch_size)

    def _generate(self) -> Tuple[Tensor, Batch, Batch]:
        f64 = torch.float64
        if self.problem == "standard":
            std = load_standard_problem()
            A = std["A"]
            x_test = std["x_test"][: self.test_size].to(f64)
        else:
            m = self._m_arg if self._m_arg is not None else STANDARD_SHAPE[0]
            n = self._n_arg if self._n_arg is not None else STANDARD_SHAPE[1]
            A = _gaussian_matrix(m, n, self.seed)
            x_test = None
        n = A.shape[1]

        g = make_generator(self.seed, _STREAM_VAL)
        x_val = make_sparse_signals(n, self.val_size, self.p, g, f64)
        val = Batch(measure(A, x_val, self.snr_db, g), x_val)

        g = make_generator(self.seed, _STREAM_TEST)
        if x_test is None:
            x_test = make_sparse_signals(n, self.test_size, self.p, g, f64)
        test = Batch(measure(A, x_test, self.snr_db, g), x_test)
        return A, val, test

    def _read_h5(self) -> Tuple[Tensor, Batch, Batch]:
        path = self.h5_path
        A, splits, attrs = read_splits_h5(path, ("val", "test"))
        m, n = A.shape
        for name, arg, have in (("m", self._m_arg, m), ("n", self._n_arg, n)):
            if arg is not None and arg != have:
                raise ValueError(f"{name}: got {name}={arg} but 'A' in h5_path {path} has {name}={have}")
        if self.problem == "standard":
            if (m, n) != STANDARD_SHAPE:
                raise ValueError(f"h5_path: {path} holds an A of shape {(m, n)}, but problem='standard' "
                                 f"is {STANDARD_SHAPE}")
            if not torch.equal(A.to(torch.float64), load_standard_problem()["A"]):
                warnings.warn(f"h5_path: the A in {path} differs from the shipped standard matrix; "
                              "using the file's", stacklevel=4)
        made_here = "p" in attrs  # written by write_h5 (a None snr_db is then stored as absent)
        for key, mine in (("problem", self.problem), ("p", self.p), ("snr_db", self.snr_db)):
            theirs = attrs.get(key)
            if made_here and (key in attrs or key == "snr_db"):
                if theirs != mine and not (isinstance(theirs, (int, float)) and isinstance(mine, float)
                                           and math.isclose(theirs, mine)):
                    warnings.warn(f"{key}: the splits in {path} were made with {key}={theirs!r} but this "
                                  f"datamodule has {key}={mine!r} (the training stream uses {mine!r})",
                                  stacklevel=4)
        f64 = torch.float64
        val, test = splits["val"], splits["test"]
        return (A.to(f64), Batch(val.y.to(f64), val.x.to(f64)), Batch(test.y.to(f64), test.x.to(f64)))

    # ------------------------------------------------------------------ accessors
    @property
    def A(self) -> Tensor:
        """The ``(m, n)`` matrix (CPU, ``dtype``); builds the module if needed."""
        self.data
        return self._A

    @property
    def m(self) -> int:
        return self.A.shape[0]

    @property
    def n(self) -> int:
        return self.A.shape[1]

    def describe(self) -> Dict[str, object]:
        """A short summary: problem, sizes, sparsity, SNR, data source and operator fingerprint."""
        self.data
        return {
            "problem": self.problem,
            "m": self.m,
            "n": self.n,
            "p": self.p,
            "snr_db": self.snr_db,
            "seed": self.seed,
            "dtype": self.dtype,
            "source": self._source,
            "operator_fingerprint": self.operator.fingerprint(),
        }

    def _h5_attrs(self, source: str) -> Dict[str, object]:
        return {"problem": self.problem, "p": self.p, "snr_db": self.snr_db, "seed": self.seed, "source": source}

    def write_h5(self, path: Union[str, os.PathLike]) -> None:
        """Write ``A`` and the val/test splits (float64) to ``path`` (see :func:`write_splits_h5`)."""
        self.data
        write_splits_h5(path, self._A64, {"val": self._val64, "test": self._test64}, self._h5_attrs(self._source))
