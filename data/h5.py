"""HDF5 files of a problem: its matrix ``A`` and fixed data splits, written atomically and read
back with validation (:func:`write_splits_h5`, :func:`read_splits_h5`)."""

from __future__ import annotations

import os
from typing import Dict, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import Tensor

from .batch import Batch

__all__ = ["write_splits_h5", "read_splits_h5"]


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
        y, x = batch[0], batch[1]  # a Batch or a (y, x) pair
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
