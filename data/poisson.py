"""Poisson systems ``A x = b`` on 2-D/3-D grids with obstacles, and right-hand sides made as in
DCDM (Kaneda et al., ICML 2023): :class:`PoissonDataModule`.

A *domain* is a grid with a fluid mask (``True`` = fluid); its matrix is
:class:`unroll.operators.Laplacian` ``(grid, mask)``. For each domain a Lanczos run with full
reorthogonalisation (:func:`lanczos`) gives ``m`` Ritz pairs ``(θ_i, v_i)`` of ``A``, ``θ``
ascending; a right-hand side is ``b = Σ c_i v_i / ‖·‖`` with ``c_i ~ N(0, 1)``, the lower half of
the spectrum (``i < m/2``) scaled ×9 (:func:`ritz_rhs`): vectors rich in the smooth modes that
make Poisson systems hard, the training distribution of the paper.

Obstacles (:func:`obstacle_mask`): ``"none"``, ``"sphere"`` (a disc in 2-D), ``"box"`` and
``"blobs"`` (unions of overlapping random balls), ``count`` of them per domain, at random
places; fluid pockets that they enclose are filled (a fluid region cut off from the domain
boundary would make the Laplacian singular).
"""

from __future__ import annotations

import json
import math
import os
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import torch
from torch import Tensor
from torch.utils.data import DataLoader

from unroll.linalg import cg
from unroll.operators import Laplacian, LinearOperator
from unroll.operators.laplacian import fill_enclosed as _fill_enclosed

from .base import SplitData, SplitDataset, SyntheticDataModule
from .batch import Batch
from .checks import as_dtype, check_int
from .stream import make_generator

__all__ = ["PoissonDataModule", "OBSTACLE_SHAPES", "obstacle_mask", "lanczos", "ritz_rhs", "make_poisson_systems"]

#: the obstacle shapes :func:`obstacle_mask` draws
OBSTACLE_SHAPES = ("none", "sphere", "box", "blobs")

#: version of the HDF5 cache layout (part of the settings a cache is checked against)
CACHE_VERSION = 1

_STREAM_TRAIN_DOMAINS, _STREAM_TEST_DOMAINS, _STREAM_VAL, _STREAM_TEST = 11, 12, 13, 14


# ---------------------------------------------------------------------------------- obstacles
def _grid_coords(grid: Sequence[int]) -> List[Tensor]:
    return list(torch.meshgrid(*[torch.arange(n, dtype=torch.float64) for n in grid], indexing="ij"))


def _ball(coords: List[Tensor], centre: Tensor, radius: float) -> Tensor:
    d2 = sum((c - float(o)) ** 2 for c, o in zip(coords, centre))
    return d2 <= radius * radius


def obstacle_mask(grid: Sequence[int], shape: str, count: int = 1,
                  generator: Optional[torch.Generator] = None) -> Tensor:
    """A fluid mask ``(*grid)`` (bool, ``True`` = fluid) with ``count`` obstacles of ``shape``.

    Args:
        grid: 2 or 3 sizes.
        shape: ``"none"`` (all fluid), ``"sphere"`` (radius 10–20 % of the smallest size),
            ``"box"`` (half-sides 8–20 % of each size) or ``"blobs"`` (each a union of 3–5
            overlapping balls of radius 6–12 %).
        count: obstacles per domain, ``≥ 1`` (ignored for ``"none"``).
        generator: the random source (CPU).

    Obstacle centres lie in the middle 60 % of every axis. Fluid cells the obstacles enclose
    (a region not connected to the domain boundary) are made solid, so the Laplacian stays
    positive definite.
    """
    grid = tuple(int(n) for n in grid)
    if shape not in OBSTACLE_SHAPES:
        raise ValueError(f"shape: expected one of {', '.join(map(repr, OBSTACLE_SHAPES))}, got {shape!r}")
    check_int("count", count, 1)
    solid = torch.zeros(grid, dtype=torch.bool)
    if shape == "none":
        return ~solid
    g = generator if generator is not None else torch.Generator().manual_seed(0)
    coords = _grid_coords(grid)
    sizes = torch.tensor(grid, dtype=torch.float64)
    small = float(min(grid))

    def centre() -> Tensor:
        return (0.2 + 0.6 * torch.rand(len(grid), generator=g, dtype=torch.float64)) * (sizes - 1)

    for _ in range(count):
        c = centre()
        if shape == "sphere":
            radius = small * (0.1 + 0.1 * float(torch.rand((), generator=g)))
            solid |= _ball(coords, c, max(radius, 0.75))
        elif shape == "box":
            half = sizes * (0.08 + 0.12 * torch.rand(len(grid), generator=g, dtype=torch.float64))
            half = torch.clamp(half, min=0.5)
            inside = torch.ones(grid, dtype=torch.bool)
            for x, o, h in zip(coords, c, half):
                inside &= (x - o).abs() <= h
            solid |= inside
        else:  # blobs
            parts = 3 + int(torch.randint(3, (), generator=g))
            for _ in range(parts):
                radius = small * (0.06 + 0.06 * float(torch.rand((), generator=g)))
                solid |= _ball(coords, c, max(radius, 0.75))
                c = c + (torch.rand(len(grid), generator=g, dtype=torch.float64) - 0.5) * 2 * radius
    return _fill_enclosed(~solid)


# ---------------------------------------------------------------------------------- Lanczos / Ritz
def lanczos(A: LinearOperator, m: int, start: Tensor) -> Tuple[Tensor, Tensor]:
    """``m`` steps of Lanczos on a symmetric ``A`` with full reorthogonalisation (classical
    Gram–Schmidt, twice per step), float64; stops early when the Krylov space is exhausted.

    Args:
        A: symmetric operator ``(1, *grid) → (1, *grid)``.
        m: steps ``≥ 1`` (at most ``N = prod(grid)`` are possible).
        start: start vector ``(*grid)`` (nonzero).

    Returns:
        ``(θ, V)``: Ritz values ``(k,)`` ascending and Ritz vectors ``(k, *grid)`` (orthonormal
        rows, float64), ``k ≤ m`` the steps run.
    """
    check_int("m", m, 1)
    grid = tuple(start.shape)
    n = start.numel()
    q = start.to(torch.float64).reshape(n)
    qn = torch.linalg.vector_norm(q)
    if not qn > 0:
        raise ValueError("start: expected a nonzero vector")
    q = q / qn
    m = min(m, n)
    Q = torch.empty(m, n, dtype=torch.float64)
    alpha: List[float] = []
    beta: List[float] = []
    scale = None
    for j in range(m):
        Q[j] = q
        w = (A._forward if isinstance(A, LinearOperator) else A)(q.view(1, *grid)).reshape(n)
        a = float(w @ q)
        alpha.append(a)
        w = w - a * q - (beta[-1] * Q[j - 1] if j > 0 else 0.0)
        basis = Q[: j + 1]
        for _ in range(2):
            w = w - basis.T @ (basis @ w)
        bnorm = float(torch.linalg.vector_norm(w))
        scale = max(scale or 0.0, abs(a), bnorm)
        if j == m - 1 or bnorm <= 1e-10 * scale:
            break
        beta.append(bnorm)
        q = w / bnorm
    k = len(alpha)
    T = torch.diag(torch.tensor(alpha, dtype=torch.float64))
    if k > 1:
        off = torch.tensor(beta[: k - 1], dtype=torch.float64)
        T = T + torch.diag(off, 1) + torch.diag(off, -1)
    theta, S = torch.linalg.eigh(T)
    V = S.T @ Q[:k]
    return theta, V.reshape(k, *grid)


def ritz_rhs(ritz_vectors: Tensor, num: int, generator: torch.Generator, low_scale: float = 9.0,
             dtype: torch.dtype = torch.float32) -> Tensor:
    """Right-hand sides ``(num, *grid)``: ``b = Σ_i c_i v_i / ‖Σ_i c_i v_i‖`` with ``c ~ N(0, 1)``
    and ``c_i ×= low_scale`` for the lower half of the spectrum (``i < k/2``; ``ritz_vectors``
    ``(k, *grid)`` in ascending Ritz value order, as :func:`lanczos` returns them)."""
    k = ritz_vectors.shape[0]
    c = torch.randn(num, k, generator=generator, dtype=torch.float64)
    c[:, : k // 2] *= low_scale
    V = ritz_vectors.reshape(k, -1)
    b = c.to(V.dtype) @ V
    b = b / torch.linalg.vector_norm(b, dim=1, keepdim=True).clamp_min(torch.finfo(b.dtype).tiny)
    return b.reshape(num, *ritz_vectors.shape[1:]).to(dtype)


def _laplacian(grid: Sequence[int], mask: Tensor) -> Laplacian:
    return Laplacian(tuple(grid), None if bool(mask.all()) else mask)


def _start_vector(mask: Tensor, generator: torch.Generator) -> Tensor:
    return torch.randn(mask.shape, generator=generator, dtype=torch.float64) * mask


def _solve(A: Laplacian, b: Tensor) -> Tensor:
    """Reference solutions (CG to ``1e-10`` in float64), in ``b``'s dtype."""
    x, _ = cg(A.to(torch.float64), b.to(torch.float64), tol=1e-10, max_iter=20 * b[0].numel(), on_failure="raise")
    return x.to(b.dtype)


def make_poisson_systems(grid: Sequence[int], shape: str, count: int, systems: int, lanczos_vectors: int,
                         generator: torch.Generator, low_scale: float = 9.0, dtype: torch.dtype = torch.float32,
                         solve: bool = True) -> Tuple[Tensor, Tensor, Optional[Tensor]]:
    """One domain and ``systems`` right-hand sides on it, as in the paper.

    Returns:
        ``(mask (*grid) bool, b (systems, *grid), x (systems, *grid) or None)``; ``x`` the
        float64-CG reference solutions when ``solve``.
    """
    mask = obstacle_mask(grid, shape, count, generator)
    A = _laplacian(grid, mask)
    _, V = lanczos(A, lanczos_vectors, _start_vector(mask, generator))
    b = ritz_rhs(V, systems, generator, low_scale, dtype)
    return mask, b, (_solve(A, b) if solve else None)


def _make_train_batch(index: int, generator: torch.Generator, *, masks: Tensor, ritz: List[Tensor],
                      batch_size: int, low_scale: float, dtype: torch.dtype) -> Batch:
    """Training batch ``index``: one training domain (drawn), ``batch_size`` fresh right-hand sides."""
    d = int(torch.randint(len(ritz), (), generator=generator))
    b = ritz_rhs(ritz[d], batch_size, generator, low_scale, dtype)
    mask = masks[d].unsqueeze(0).expand(batch_size, *masks.shape[1:]).clone()
    return Batch(b, None, {"mask": mask}, {"domain": torch.full((batch_size,), d, dtype=torch.long)})


# ---------------------------------------------------------------------------------- the data module
class PoissonDataModule(SyntheticDataModule):
    """Poisson systems for learned conjugate directions (DCDM): right-hand sides from Ritz vectors.

    Training domains: one per entry of ``train_obstacles`` × ``domains_per_shape``; training
    batches draw a domain and ``batch_size`` fresh right-hand sides from its ``lanczos_vectors``
    stored Ritz vectors (:func:`ritz_rhs`), without solutions (the loss is unsupervised).
    Validation: ``val_systems`` right-hand sides on the training domains. Test:
    ``test_systems`` per test domain, one per entry of ``test_obstacles`` × ``domains_per_shape``
    — obstacle shapes not in ``train_obstacles`` (checked) — made the same way from their own
    Lanczos runs (``test_lanczos_vectors``). Validation and test carry reference solutions
    (float64 CG to ``1e-10``).

    Batches: ``Batch(y=b (B, *grid), x=None or the solution, operator={"mask": (B, *grid) bool},
    meta={"domain": (B,), "obstacle": [str]})``; :meth:`build_operator` gives the
    :class:`~unroll.operators.Laplacian`. Every batch holds systems of one domain (a Laplacian is
    shared by the right-hand sides it is applied to): the evaluation loaders never mix domains.

    Args:
        grid: the grid, 2 or 3 sizes.
        lanczos_vectors: Lanczos steps per training domain (about 1000 at 32³; the paper uses
            10,000 at 64³ and 128³).
        test_lanczos_vectors: Lanczos steps per test domain (default: ``lanczos_vectors``).
        train_obstacles, test_obstacles: obstacle shapes of the training and test domains
            (``"none"``, ``"sphere"``, ``"box"``, ``"blobs"``); disjoint.
        obstacles: obstacles per domain.
        domains_per_shape: domains drawn per listed shape.
        val_systems: validation systems (spread over the training domains).
        test_systems: test systems per test domain.
        low_scale: factor on the coefficients of the lower half of the spectrum (9 in the paper).
        dtype: ``"float32"`` or ``"float64"``.
        cache: an HDF5 file for the generated domains and systems (``None``: no cache). Written
            on first use (atomically), with the settings as attributes; a file made with other
            settings is refused.
        batch_size, train_batches, eval_batch_size, seed, num_workers: as
            :class:`~unroll.data.SyntheticDataModule`.

    Cost: each Lanczos run is ``O(m² N)`` (full reorthogonalisation); about a minute at 32³
    with 1000 steps on 2 CPU cores; the cache keeps it from being repeated per run.
    """

    def __init__(self, grid: List[int] = [32, 32, 32], lanczos_vectors: int = 1000,
                 test_lanczos_vectors: Optional[int] = None,
                 train_obstacles: List[str] = ["none", "sphere"], test_obstacles: List[str] = ["box", "blobs"],
                 obstacles: int = 2, domains_per_shape: int = 1, val_systems: int = 8, test_systems: int = 4,
                 low_scale: float = 9.0, dtype: str = "float32", cache: Optional[str] = None,
                 batch_size: int = 8, train_batches: int = 100, eval_batch_size: int = 4, seed: int = 0,
                 num_workers: int = 0) -> None:
        super().__init__(batch_size=batch_size, train_batches=train_batches, eval_batch_size=eval_batch_size,
                         seed=seed, num_workers=num_workers)
        grid = list(grid) if isinstance(grid, (list, tuple)) else grid
        if not isinstance(grid, list) or len(grid) not in (2, 3) \
                or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 2 for n in grid):
            raise ValueError(f"grid: expected 2 or 3 ints >= 2 (a 2-D or 3-D grid), got {grid!r}")
        check_int("lanczos_vectors", lanczos_vectors, 1)
        if test_lanczos_vectors is not None:
            check_int("test_lanczos_vectors", test_lanczos_vectors, 1)
        for name, shapes in (("train_obstacles", train_obstacles), ("test_obstacles", test_obstacles)):
            if isinstance(shapes, str) or not shapes or any(s not in OBSTACLE_SHAPES for s in shapes) \
                    or len(set(shapes)) != len(shapes):
                raise ValueError(f"{name}: expected a non-empty list of distinct shapes from "
                                 f"{', '.join(map(repr, OBSTACLE_SHAPES))}, got {shapes!r}")
        seen = sorted(set(train_obstacles) & set(test_obstacles))
        if seen:
            raise ValueError(f"test_obstacles: the test domains must use obstacle shapes not seen in training, but "
                             f"{seen} are also in train_obstacles {list(train_obstacles)}")
        check_int("obstacles", obstacles, 1)
        check_int("domains_per_shape", domains_per_shape, 1)
        check_int("val_systems", val_systems, 1)
        check_int("test_systems", test_systems, 1)
        if isinstance(low_scale, bool) or not isinstance(low_scale, (int, float)) or not 0 < low_scale < math.inf:
            raise ValueError(f"low_scale: expected a finite number > 0, got {low_scale!r}")
        self.grid, self.lanczos_vectors = [int(n) for n in grid], lanczos_vectors
        self.test_lanczos_vectors = test_lanczos_vectors
        self.train_obstacles, self.test_obstacles = list(train_obstacles), list(test_obstacles)
        self.obstacles, self.domains_per_shape = obstacles, domains_per_shape
        self.val_systems, self.test_systems = val_systems, test_systems
        self.low_scale, self.dtype_name, self.dtype = float(low_scale), dtype, as_dtype(dtype)
        self.cache = cache
        self._train: Optional[Tuple[Tensor, List[Tensor]]] = None

    # ------------------------------------------------------------------ settings
    def settings(self) -> Dict[str, object]:
        """What the generated data depend on (stored as the cache file's attributes)."""
        return {"version": CACHE_VERSION, "grid": self.grid, "lanczos_vectors": self.lanczos_vectors,
                "test_lanczos_vectors": self.test_lanczos_vectors, "train_obstacles": self.train_obstacles,
                "test_obstacles": self.test_obstacles, "obstacles": self.obstacles,
                "domains_per_shape": self.domains_per_shape, "val_systems": self.val_systems,
                "test_systems": self.test_systems, "low_scale": self.low_scale, "dtype": self.dtype_name,
                "seed": self.seed}

    def describe(self) -> Dict[str, object]:
        """The data's parameters (what makes two test sets the same)."""
        return {"task": "poisson", **self.settings()}

    # ------------------------------------------------------------------ generation
    def _generate(self) -> Dict[str, object]:
        grid, m = self.grid, self.lanczos_vectors
        g = make_generator(self.seed, _STREAM_TRAIN_DOMAINS)
        masks, ritz, names = [], [], []
        for shape in self.train_obstacles:
            for _ in range(self.domains_per_shape):
                mask = obstacle_mask(grid, shape, self.obstacles, g)
                _, V = lanczos(_laplacian(grid, mask), m, _start_vector(mask, g))
                masks.append(mask)
                ritz.append(V.to(torch.float32))
                names.append(shape)
        gv = make_generator(self.seed, _STREAM_VAL)
        per = [self.val_systems // len(masks) + (1 if d < self.val_systems % len(masks) else 0)
               for d in range(len(masks))]
        val = self._split([(masks[d], ritz_rhs(ritz[d], n, gv, self.low_scale, self.dtype), d, names[d])
                           for d, n in enumerate(per) if n > 0])
        gt = make_generator(self.seed, _STREAM_TEST_DOMAINS)
        tm = self.test_lanczos_vectors or m
        test_parts = []
        d = 0
        for shape in self.test_obstacles:
            for _ in range(self.domains_per_shape):
                mask, b, _ = make_poisson_systems(grid, shape, self.obstacles, self.test_systems, tm, gt,
                                                  self.low_scale, self.dtype, solve=False)
                test_parts.append((mask, b, d, shape))
                d += 1
        test = self._split(test_parts)
        return {"train_masks": torch.stack(masks), "train_ritz": ritz, "train_names": names, "val": val,
                "test": test}

    def _split(self, parts) -> Dict[str, object]:
        bs, xs, ms, ds, ns = [], [], [], [], []
        for mask, b, d, name in parts:
            bs.append(b)
            xs.append(_solve(_laplacian(self.grid, mask), b))
            ms.append(mask.unsqueeze(0).expand(b.shape[0], *mask.shape))
            ds += [d] * b.shape[0]
            ns += [name] * b.shape[0]
        return {"b": torch.cat(bs), "x": torch.cat(xs), "mask": torch.cat(ms), "domain": torch.tensor(ds),
                "obstacle": ns}

    # ------------------------------------------------------------------ cache
    def _write_cache(self, path: str, data: Dict[str, object]) -> None:
        import h5py

        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        tmp = f"{path}.tmp{os.getpid()}"
        try:
            with h5py.File(tmp, "w") as f:
                for k, v in self.settings().items():
                    f.attrs[k] = json.dumps(v)
                f["train/masks"] = data["train_masks"].numpy()
                f["train/ritz"] = torch.stack(data["train_ritz"]).numpy()
                f["train"].attrs["obstacle"] = json.dumps(data["train_names"])
                for split in ("val", "test"):
                    s = data[split]
                    for key in ("b", "x", "mask", "domain"):
                        f[f"{split}/{key}"] = s[key].numpy()
                    f[split].attrs["obstacle"] = json.dumps(s["obstacle"])
            os.replace(tmp, path)
        finally:  # a failed write (disk full, interrupt) leaves no partial file behind
            if os.path.exists(tmp):
                os.remove(tmp)

    def _read_cache(self, path: str) -> Dict[str, object]:
        import h5py

        try:
            f = h5py.File(path, "r")
        except OSError as e:
            raise ValueError(f"cache: {path!r} exists but is not a readable HDF5 file ({e}); delete it, or give "
                             "another cache path, to generate the data again") from e
        with f:
            stored = {k: json.loads(v) for k, v in f.attrs.items()}
            wanted = json.loads(json.dumps(self.settings()))
            diff = [f"{k}: {stored.get(k, '<missing>')!r} in the file, {v!r} requested"
                    for k, v in wanted.items() if stored.get(k, "<missing>") != v]
            if diff:
                raise ValueError(f"cache: {path!r} was made with other settings ({'; '.join(diff)}); delete it, or "
                                 "give another cache path, to generate the data for these settings")
            out: Dict[str, object] = {"train_masks": torch.from_numpy(f["train/masks"][()]),
                                      "train_ritz": list(torch.from_numpy(f["train/ritz"][()]).unbind(0)),
                                      "train_names": json.loads(f["train"].attrs["obstacle"])}
            for split in ("val", "test"):
                out[split] = {k: torch.from_numpy(f[f"{split}/{k}"][()]) for k in ("b", "x", "mask", "domain")}
                out[split]["obstacle"] = json.loads(f[split].attrs["obstacle"])
        return out

    def load(self) -> Dict[str, object]:
        """The generated data: from the cache when it exists (checked), else generated (and cached)."""
        if self.cache is not None and os.path.exists(self.cache):
            return self._read_cache(self.cache)
        data = self._generate()
        if self.cache is not None:
            self._write_cache(self.cache, data)
        return data

    # ------------------------------------------------------------------ SyntheticDataModule
    @staticmethod
    def _batch(s: Mapping[str, object]) -> Batch:
        return Batch(s["b"], s["x"], {"mask": s["mask"]}, {"domain": s["domain"], "obstacle": list(s["obstacle"])})

    def build(self) -> SplitData:
        data = self.load()
        self._train = (data["train_masks"], data["train_ritz"])
        return SplitData(None, self._batch(data["val"]), self._batch(data["test"]))

    def batch_maker(self) -> Callable[[int, torch.Generator], Batch]:
        import functools

        masks, ritz = self._train
        return functools.partial(_make_train_batch, masks=masks, ritz=ritz, batch_size=self.batch_size,
                                 low_scale=self.low_scale, dtype=self.dtype)

    def build_operator(self, params: Mapping[str, Tensor]) -> LinearOperator:
        """The :class:`~unroll.operators.Laplacian` of a batch from its ``{"mask": (B, *grid)}``
        (every sample of the batch must have the same mask)."""
        if "mask" not in params:
            raise ValueError(f"operator: expected the batch's parameters to hold 'mask', got keys {sorted(params)}")
        mask = params["mask"]
        if mask.dim() != len(self.grid) + 1 or list(mask.shape[1:]) != self.grid:
            raise ValueError(f"operator['mask']: expected shape (B, {', '.join(map(str, self.grid))}), "
                             f"got {tuple(mask.shape)}")
        if not bool((mask == mask[:1]).all()):
            raise ValueError("operator['mask']: the batch mixes domains (different masks); a Laplacian is shared by "
                             "the right-hand sides it is applied to, so batch systems of one domain together")
        return _laplacian(self.grid, mask[0].bool()).to(mask.device)

    def eval_dataloader(self, split: Batch) -> DataLoader:
        """Batches of at most ``eval_batch_size`` systems, in order, never mixing domains."""
        domain = split.meta["domain"].tolist()
        chunks: List[List[int]] = []
        for i, d in enumerate(domain):
            if chunks and domain[chunks[-1][-1]] == d and len(chunks[-1]) < self.eval_batch_size:
                chunks[-1].append(i)
            else:
                chunks.append([i])
        return DataLoader(SplitDataset(split), batch_sampler=chunks, num_workers=self.num_workers,
                          persistent_workers=self.num_workers > 0)
