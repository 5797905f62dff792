"""Sparse recovery ``y = A x (+ noise)`` with Bernoulli–Gaussian ``x``: the LISTA benchmark.

* :func:`make_sparse_signals` and :func:`measure` draw signals and measurements; the
  training stream and the fixed validation/test splits both use them.
* :func:`load_standard_problem` loads the 250×500 matrix and the 1000 test signals of the
  LISTA-CP / ALISTA papers shipped in ``assets/lista`` (see the README there).
* :func:`write_splits_h5` / :func:`read_splits_h5` freeze a problem (``A`` and its fixed
  splits) in an HDF5 file and read it back with validation.
* :class:`SparseRecoveryDataModule` is the ``LightningDataModule`` (buildable by
  ``LightningCLI``): a fresh, seeded, never-repeating training stream and fixed splits.
"""

from __future__ import annotations

import math
import os
import warnings
from importlib import resources
from typing import Callable, Dict, Literal, Mapping, Optional, Sequence, Tuple, Union

import lightning
import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, IterableDataset, get_worker_info

from unroll.checks import check_finite
from unroll.operators import LinearOperator, MatrixOperator

from .batch import Batch

__all__ = [
    "STANDARD_SHAPE",
    "load_standard_problem",
    "make_sparse_signals",
    "measure",
    "write_splits_h5",
    "read_splits_h5",
    "SparseRecoveryDataModule",
]

#: ``(m, n)`` of the shipped standard problem.
STANDARD_SHAPE: Tuple[int, int] = (250, 500)
_STANDARD_N_TEST = 1000

_DTYPES = {"float32": torch.float32, "float64": torch.float64}

# Independent random streams derived from the user's seed.
_STREAM_A, _STREAM_VAL, _STREAM_TEST, _STREAM_TRAIN = 0, 1, 2, 3


def _derive_seed(*keys: int) -> int:
    """A 63-bit seed for ``torch.Generator.manual_seed`` from non-negative integer keys."""
    hi, lo = np.random.SeedSequence([int(k) for k in keys]).generate_state(2, dtype=np.uint32)
    return ((int(hi) & 0x7FFFFFFF) << 32) | int(lo)


def _generator(*keys: int) -> torch.Generator:
    return torch.Generator().manual_seed(_derive_seed(*keys))


def _as_dtype(dtype: Union[str, torch.dtype], name: str = "dtype") -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        if not dtype.is_floating_point:
            raise ValueError(f"{name}: expected a floating-point dtype, got {dtype}")
        return dtype
    if dtype not in _DTYPES:
        raise ValueError(f"{name}: expected one of {', '.join(repr(k) for k in _DTYPES)}, got {dtype!r}")
    return _DTYPES[dtype]


def _check_int(name: str, value, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name}: expected an integer ≥ {minimum}, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name}: expected an integer ≥ {minimum}, got {value}")


def _check_p(p, name: str = "p") -> None:
    if isinstance(p, bool) or not isinstance(p, (int, float, np.floating, np.integer)) \
            or not math.isfinite(p) or not 0.0 < p <= 1.0:
        raise ValueError(f"{name}: expected a support probability in (0, 1], got {p!r}")


def _check_snr(snr_db, name: str = "snr_db") -> None:
    if snr_db is None:
        return
    if isinstance(snr_db, bool) or not isinstance(snr_db, (int, float, np.floating, np.integer)) \
            or not math.isfinite(snr_db):
        raise ValueError(f"{name}: expected a finite SNR in dB or None (noiseless), got {snr_db!r}")


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
    _check_int("n", n, 1)
    _check_int("batch", batch, 1)
    _check_p(p)
    dtype = _as_dtype(dtype)
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
    _check_snr(snr_db)
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
    A = torch.randn((m, n), generator=_generator(seed, _STREAM_A), dtype=torch.float64) / math.sqrt(m)
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


# ---------------------------------------------------------------------------- HDF5
def _to_numpy(t, name: str) -> np.ndarray:
    if isinstance(t, Tensor):
        t = t.detach().cpu()
        if t.layout != torch.strided:
            t = t.to_dense()
        return t.numpy()
    if isinstance(t, np.ndarray):
        return t
    raise TypeError(f"{name}: expected a torch.Tensor or numpy array, got {type(t).__name__}")


def write_splits_h5(path: Union[str, os.PathLike], A: Tensor, splits: Mapping[str, Batch],
                    attrs: Optional[Mapping[str, object]] = None) -> None:
    """Write ``A`` and data splits to an HDF5 file, atomically.

    Layout: dataset ``A`` ``(m, n)``; for each split a group ``<split>`` with datasets
    ``y`` ``(N, m)`` and ``x`` ``(N, n)``; ``attrs`` on the root (entries whose value is
    ``None`` are skipped). The file is written to ``path + ".tmp"`` and then renamed, so
    a reader never sees a half-written file.

    Raises:
        ValueError: inconsistent shapes or a bad split name.
    """
    import h5py

    path = os.fspath(path)
    a = _to_numpy(A, "A")
    if a.ndim != 2:
        raise ValueError(f"A: expected a 2-D (m, n) matrix, got shape {a.shape}")
    m, n = a.shape
    arrays = {}
    for name, batch in splits.items():
        if not isinstance(name, str) or not name or "/" in name or name == "A":
            raise ValueError(f"splits: bad split name {name!r} (non-empty, no '/', not 'A')")
        y, x = batch
        y, x = _to_numpy(y, f"{name}/y"), _to_numpy(x, f"{name}/x")
        if y.ndim != 2 or y.shape[1] != m:
            raise ValueError(f"splits[{name!r}].y: expected shape (N, {m}) with m from A, got {y.shape}")
        if x.shape != (y.shape[0], n):
            raise ValueError(f"splits[{name!r}].x: expected shape ({y.shape[0]}, {n}) with N from y and n "
                             f"from A, got {x.shape}")
        arrays[name] = (y, x)

    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    tmp = path + ".tmp"
    try:
        with h5py.File(tmp, "w") as f:
            f.create_dataset("A", data=a)
            for name, (y, x) in arrays.items():
                g = f.create_group(name)
                g.create_dataset("y", data=y)
                g.create_dataset("x", data=x)
            for key, value in (attrs or {}).items():
                if value is None:
                    continue
                try:
                    f.attrs[key] = value
                except (TypeError, ValueError) as e:
                    raise TypeError(f"attrs[{key!r}]: cannot store a {type(value).__name__} as an HDF5 "
                                    f"attribute ({e})") from e
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def _attr_value(v):
    if isinstance(v, bytes):
        return v.decode()
    if isinstance(v, np.ndarray):
        return v.tolist()
    if isinstance(v, np.generic):
        return v.item()
    return v


def read_splits_h5(path: Union[str, os.PathLike], splits: Sequence[str] = ("val", "test")
                   ) -> Tuple[Tensor, Dict[str, Batch], Dict[str, object]]:
    """Read and validate a file written by :func:`write_splits_h5`.

    Checks that ``A`` is a 2-D floating-point matrix, that each requested split has
    ``y`` ``(N, m)`` and ``x`` ``(N, n)`` with ``N ≥ 1`` and ``m, n`` from ``A``, and that
    every value is finite.

    Returns:
        ``(A, {split: Batch(y, x)}, attrs)`` as CPU tensors in the stored dtype.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: not an HDF5 file, a missing dataset, a wrong shape or dtype, or
            NaN/Inf values; the message names the file, the dataset and what was expected.
    """
    import h5py

    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no such HDF5 file")
    if isinstance(splits, str):
        splits = (splits,)
    expected = ", ".join(["A"] + [f"{s}/{{x,y}}" for s in splits])
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise ValueError(f"{path}: not a readable HDF5 file ({e})") from e

    with f:
        found = []
        f.visititems(lambda name, obj: found.append(name) if isinstance(obj, h5py.Dataset) else None)
        found_str = ", ".join(sorted(found)) or "no datasets"

        def dataset(key: str):
            try:
                obj = f[key]
            except Exception:
                obj = None
            if not isinstance(obj, h5py.Dataset):
                raise ValueError(f"{path}: missing dataset '{key}' (expected datasets {expected}); "
                                 f"found: {found_str}")
            if obj.dtype.kind != "f":
                raise ValueError(f"{path}: '{key}' has dtype {obj.dtype}, expected a floating-point dtype")
            return obj

        def load(key: str, ds) -> Tensor:
            arr = ds[()]
            bad = int((~np.isfinite(arr)).sum())
            if bad:
                raise ValueError(f"{path}: '{key}' contains {bad} NaN/Inf values")
            return torch.from_numpy(np.ascontiguousarray(arr))

        dA = dataset("A")
        if dA.ndim != 2:
            raise ValueError(f"{path}: 'A' has shape {dA.shape}, expected a 2-D (m, n) matrix")
        m, n = dA.shape
        A = load("A", dA)

        out: Dict[str, Batch] = {}
        for s in splits:
            yk, xk = f"{s}/y", f"{s}/x"
            dy, dx = dataset(yk), dataset(xk)
            if dy.ndim != 2:
                raise ValueError(f"{path}: '{yk}' has shape {dy.shape}, expected a 2-D (N, m) array "
                                 f"with m={m} from 'A'")
            N = dy.shape[0]
            if dy.shape[1] != m:
                raise ValueError(f"{path}: '{yk}' has shape {dy.shape}, expected {(N, m)} (N, m) "
                                 f"with m={m} from 'A'")
            if N < 1:
                raise ValueError(f"{path}: '{yk}' has shape {dy.shape}, expected at least one sample")
            if dx.shape != (N, n):
                raise ValueError(f"{path}: '{xk}' has shape {dx.shape}, expected {(N, n)} (N, n) "
                                 f"with N={N} from '{yk}' and n={n} from 'A'")
            out[s] = Batch(load(yk, dy), load(xk, dx))
        attrs = {k: _attr_value(v) for k, v in f.attrs.items()}
    return A, out, attrs


# ---------------------------------------------------------------------------- datasets
class _SparseStream(IterableDataset):
    """Endless fresh Bernoulli–Gaussian batches, ``batches`` per epoch.

    Batch ``i`` of the stream (counted from the start of training, across epochs) is drawn
    from its own generator, seeded from the seed, the DDP rank and ``i``, so the data do not
    depend on the number of DataLoader workers (worker ``k`` of ``W`` yields batches
    ``start + k, start + k + W, …``). One iteration yields the batches from ``start`` to the end
    of the epoch ``start`` falls in; :class:`_StreamLoader` sets ``start`` before each.
    """

    def __init__(self, A: Tensor, p: float, snr_db: Optional[float], batch_size: int, batches: int,
                 seed: int) -> None:
        super().__init__()
        self.A, self.p, self.snr_db = A, p, snr_db
        self.batch_size, self.batches, self.seed = batch_size, batches, seed
        #: stream index of the next batch
        self.start = 0

    def __len__(self) -> int:
        return self.batches

    def __iter__(self):
        info = get_worker_info()
        wid, nw = (info.id, info.num_workers) if info is not None else (0, 1)
        rank = 0
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            rank = torch.distributed.get_rank()
        start = self.start
        end = (start // self.batches + 1) * self.batches
        n = self.A.shape[1]
        for i in range(start + wid, end, nw):
            g = _generator(self.seed, _STREAM_TRAIN, rank, i)
            x = make_sparse_signals(n, self.batch_size, self.p, g, self.A.dtype)
            yield Batch(measure(self.A, x, self.snr_db, g), x)


class _StreamLoader(DataLoader):
    """The training stream's DataLoader, resumable mid-epoch.

    Each iteration starts the stream at ``position()`` (the batches the fit loop has trained
    on, restored from a checkpoint on resume) when that is known, otherwise where the previous
    iteration stopped; so a resumed run sees the data an uninterrupted one would. Workers are
    started per epoch (not persistent), so each gets the epoch's start. Its ``state_dict`` only
    records the position: the fit loop's own progress is what restores it.
    """

    def __init__(self, dataset: _SparseStream, position: Callable[[], Optional[int]], **kwargs) -> None:
        super().__init__(dataset, batch_size=None, **kwargs)
        self._position = position

    def __iter__(self):
        pos = self._position()
        if pos is not None:
            self.dataset.start = int(pos)
        return self._counted(super().__iter__())

    def _counted(self, it):
        for batch in it:
            self.dataset.start += 1  # where the next iteration continues without a fit loop
            yield batch

    def state_dict(self) -> Dict[str, int]:
        return {"position": int(self.dataset.start)}

    def load_state_dict(self, state_dict: Dict[str, int]) -> None:
        """Nothing to restore (see the class docstring)."""


class _SplitDataset(Dataset):
    """Map-style view of a fixed split: item ``i`` is ``Batch(y[i], x[i])``."""

    def __init__(self, split: Batch) -> None:
        self.split = split

    def __len__(self) -> int:
        return self.split.y.shape[0]

    def __getitem__(self, i: int) -> Batch:
        return Batch(self.split.y[i], self.split.x[i])


# ---------------------------------------------------------------------------- datamodule
class SparseRecoveryDataModule(lightning.LightningDataModule):
    """Sparse recovery ``y = A x (+ noise)`` with Bernoulli–Gaussian ``x`` (the LISTA benchmark).

    Training batches are drawn fresh forever (never repeated across epochs); validation
    and test splits are fixed, generated from seeds derived from ``seed`` (independent of
    the training stream) or read from ``h5_path``. Everything is generated on the CPU;
    all batches are :class:`~unroll.data.Batch` ``(y (B, m), x (B, n))``.

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
        h5_path: HDF5 file of ``A`` and the val/test splits (see :func:`write_splits_h5`);
            if it exists they are read from it (``val_size``/``test_size`` are then those
            of the file), otherwise generated; :meth:`write_h5` writes one.
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
    ) -> None:
        super().__init__()
        if problem not in ("gaussian", "standard"):
            raise ValueError(f"problem: expected 'gaussian' or 'standard', got {problem!r}")
        for name, value in (("m", m), ("n", n)):
            if value is not None:
                _check_int(name, value, 1)
        if problem == "standard":
            for name, value, want in (("m", m, STANDARD_SHAPE[0]), ("n", n, STANDARD_SHAPE[1])):
                if value is not None and value != want:
                    raise ValueError(f"{name}: the 'standard' problem has {name}={want}, got {name}={value} "
                                     f"(leave {name} unset to take it from the problem)")
        _check_p(p)
        _check_snr(snr_db)
        for name, value, minimum in (("batch_size", batch_size, 1), ("train_batches", train_batches, 1),
                                     ("val_size", val_size, 1), ("test_size", test_size, 1),
                                     ("eval_batch_size", eval_batch_size, 1), ("seed", seed, 0),
                                     ("num_workers", num_workers, 0)):
            _check_int(name, value, minimum)
        if problem == "standard" and test_size > _STANDARD_N_TEST:
            raise ValueError(f"test_size: the 'standard' problem ships {_STANDARD_N_TEST} test signals, "
                             f"got test_size={test_size}")
        if h5_path is not None and not isinstance(h5_path, (str, os.PathLike)):
            raise ValueError(f"h5_path: expected a path or None, got {h5_path!r}")
        self.torch_dtype = _as_dtype(dtype)
        self.save_hyperparameters()

        self.problem, self.p, self.snr_db = problem, float(p), None if snr_db is None else float(snr_db)
        self._m_arg, self._n_arg = m, n
        self.batch_size, self.train_batches = batch_size, train_batches
        self.val_size, self.test_size, self.eval_batch_size = val_size, test_size, eval_batch_size
        self.seed, self.num_workers = seed, num_workers
        self.h5_path = None if h5_path is None else os.fspath(h5_path)
        self.dtype = dtype

        self._built = False
        self._source = "generated"
        self._train_ds: Optional[_SparseStream] = None

    # ------------------------------------------------------------------ building
    def prepare_data(self) -> None:
        """Nothing to download: everything is generated or shipped with the package."""

    def setup(self, stage: Optional[str] = None) -> None:
        """Build ``A``, the operator and the fixed splits (once; later calls do nothing)."""
        self._build()

    def _build(self) -> None:
        if self._built:
            return
        if self.h5_path is not None and os.path.exists(self.h5_path):
            A64, val64, test64 = self._read_h5()
            self._source = self.h5_path
        else:
            if self.h5_path is not None:
                warnings.warn(f"h5_path: {self.h5_path} does not exist; generating A and the splits from "
                              f"seed={self.seed} (call write_h5 to save them)", stacklevel=3)
            A64, val64, test64 = self._generate()
            self._source = "shipped" if self.problem == "standard" else "generated"

        check_finite(A64, "A")
        for name, split in (("val", val64), ("test", test64)):
            check_finite(split.y, f"{name} split y")
            check_finite(split.x, f"{name} split x")
        self._A64, self._val64, self._test64 = A64, val64, test64
        dt = self.torch_dtype
        self._A = A64.to(dt)
        self._val = Batch(val64.y.to(dt), val64.x.to(dt))
        self._test = Batch(test64.y.to(dt), test64.x.to(dt))
        self._operator = MatrixOperator(self._A)
        self._built = True

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

        g = _generator(self.seed, _STREAM_VAL)
        x_val = make_sparse_signals(n, self.val_size, self.p, g, f64)
        val = Batch(measure(A, x_val, self.snr_db, g), x_val)

        g = _generator(self.seed, _STREAM_TEST)
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
        self._build()
        return self._A

    @property
    def operator(self) -> MatrixOperator:
        """``MatrixOperator`` of ``A``; builds the module if needed."""
        self._build()
        return self._operator

    def get_operator(self) -> MatrixOperator:
        """``MatrixOperator`` of ``A`` (runs :meth:`setup` if it has not run)."""
        return self.operator

    @property
    def m(self) -> int:
        return self.A.shape[0]

    @property
    def n(self) -> int:
        return self.A.shape[1]

    @property
    def val_split(self) -> Batch:
        """The fixed validation split ``Batch(y (N, m), x (N, n))``."""
        self._build()
        return self._val

    @property
    def test_split(self) -> Batch:
        """The fixed test split ``Batch(y (N, m), x (N, n))``."""
        self._build()
        return self._test

    def describe(self) -> Dict[str, object]:
        """A short summary: problem, sizes, sparsity, SNR, data source and operator fingerprint."""
        self._build()
        return {
            "problem": self.problem,
            "m": self.m,
            "n": self.n,
            "p": self.p,
            "snr_db": self.snr_db,
            "seed": self.seed,
            "dtype": self.dtype,
            "source": self._source,
            "operator_fingerprint": self._operator.fingerprint(),
        }

    def write_h5(self, path: Union[str, os.PathLike]) -> None:
        """Write ``A`` and the val/test splits (float64) to ``path`` (see :func:`write_splits_h5`)."""
        self._build()
        attrs = {"problem": self.problem, "p": self.p, "snr_db": self.snr_db, "seed": self.seed,
                 "source": self._source}
        write_splits_h5(path, self._A64, {"val": self._val64, "test": self._test64}, attrs)

    # ------------------------------------------------------------------ dataloaders
    def train_dataloader(self) -> DataLoader:
        self._build()
        if self._train_ds is None:  # one stream for the module's lifetime: epochs continue it
            self._train_ds = _SparseStream(self._A, self.p, self.snr_db, self.batch_size,
                                           self.train_batches, self.seed)
        # Lightning warns for any IterableDataset with a length that its workers may duplicate
        # data; this stream deals its batches out between the workers, so its length holds.
        warnings.filterwarnings("ignore", message="Your `IterableDataset` has `__len__` defined", category=UserWarning)
        return _StreamLoader(self._train_ds, self._stream_position, num_workers=self.num_workers)

    def _stream_position(self) -> Optional[int]:
        """The training batches the fit loop has trained on (restored from the checkpoint when a
        run resumes), or ``None`` without a trainer."""
        trainer = self.trainer
        try:
            return None if trainer is None else int(trainer.fit_loop.epoch_loop.batch_progress.total.processed)
        except AttributeError:
            return None

    def _eval_loader(self, split: Batch) -> DataLoader:
        return DataLoader(_SplitDataset(split), batch_size=self.eval_batch_size, shuffle=False,
                          num_workers=self.num_workers, persistent_workers=self.num_workers > 0)

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader(self.val_split)

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader(self.test_split)

    def predict_dataloader(self) -> DataLoader:
        return self._eval_loader(self.test_split)
