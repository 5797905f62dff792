"""fastMRI-layout HDF5 data: a slice dataset, batching of variable-size k-space, and
:class:`FastMRIDataModule` (also serving the built-in Colin27 brain data).

Reading (:class:`FastMRISliceDataset`), per file, as fastMRI's ``SliceDataset`` and
``VarNetDataTransform``:

* ``kspace`` ``(slices, coils, H, W)`` (multi-coil) or ``(slices, H, W)`` (single-coil, read
  as one coil), complex64;
* the target ``reconstruction_rss`` (multi-coil) / ``reconstruction_esc`` (single-coil),
  ``(slices, h, w)``; absent in test files, which hold a ``mask`` ``(W,)`` instead (their
  k-space is already undersampled);
* the ``ismrmrd_header`` XML: ``encoding/encodedSpace/matrixSize`` (``x, y``: the k-space
  size), ``encoding/reconSpace/matrixSize`` (the recon size ``(h, w)``, required) and
  ``encodingLimits/kspace_encoding_step_1`` (``center``, ``maximum``): the columns outside
  ``[W_enc // 2 − center, W_enc // 2 − center + maximum + 1)`` are zero padding and are never
  marked as sampled;
* the attributes ``max`` (the target volume's max, the data range of PSNR/SSIM), ``norm``,
  ``acquisition`` and ``patient_id``.

Each sample is a :class:`~unroll.data.Batch` (see ``MRI_CONTRACT``): ``y`` the masked k-space
``(C, H, W)`` complex64; ``x`` the target ``(h, w)`` float32, centre-cropped to the crop size
(the recon size; ``(W, W)`` when the k-space is narrower than it, as fastMRI);
``operator = {"mask": (1, 1, W) float32, "sensitivities": (C, H, W) complex64}`` (maps
estimated from the auto-calibration columns by
:func:`~unroll.operators.mri.estimate_sensitivities`, ``Σ_c |S_c|² = 1``, or read from the
file's ``sensitivity_maps``); ``meta = {"fname", "slice_num", "max", "data_range",
"num_low_freqs", "crop_size" (2,), "scale"}``. :meth:`FastMRIDataModule.build_operator` makes
the batch's :class:`~unroll.operators.SENSE` operator.

Masks: ``mask_func(W, key=fname, index=slice)`` (:class:`~unroll.operators.MaskFunc`) for
validation and test (the same mask for a (file, slice) in every run and worker), a fresh one for
every training sample unless ``seeded``. ``num_low_freqs`` is the number of contiguous sampled
columns around the centre ``W // 2`` (what the sensitivity estimation uses).

Files are scanned once (shapes, header, attributes) when the dataset is built, and opened lazily
for reading in each process (a DataLoader worker opens its own handles). A truncated or
malformed file raises :class:`FastMRIFileError` naming it, or with ``on_error="skip"`` is
skipped with a warning naming it.

Batching: samples of different k-space sizes or coil counts cannot share a batch; with
``batch_size > 1`` :class:`BucketBatchSampler` batches together only samples of one shape
(coils, H, W, h, w).
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
import warnings
import weakref
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any, Dict, Iterator, List, Literal, Mapping, NamedTuple, Optional, Sequence, Tuple, Union

import lightning
import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, RandomSampler, Sampler, SequentialSampler

from unroll.operators import SENSE, LinearOperator, MaskFunc
from unroll.operators.mri import center_crop, estimate_sensitivities

from .batch import Batch
from .checks import check_int

__all__ = ["FastMRIFileError", "FastMRIVolume", "scan_fastmri_file", "FastMRISliceDataset", "collate_fastmri",
           "BucketBatchSampler", "FastMRIDataModule", "BUILTIN_SPLIT", "load_builtin_images",
           "write_builtin_dataset", "num_low_frequencies"]

PathLike = Union[str, os.PathLike]
_NS = {"m": "http://www.ismrm.org/ISMRMRD"}
_ASSET = Path(__file__).with_name("assets") / "mri" / "colin27_axial.npz"
#: the built-in data: 8 slabs (volumes) of 8 axial slices; which slabs form each split
BUILTIN_SPLIT: Dict[str, List[int]] = {"train": [0, 2, 4, 6, 7], "val": [3], "test": [1, 5]}
BUILTIN_SLABS, BUILTIN_SLAB_SLICES = 8, 8


class FastMRIFileError(ValueError):
    """A fastMRI file that cannot be used; the message starts with ``file <path>:``."""


class FastMRIVolume(NamedTuple):
    """What a scan of one file found (no arrays are read)."""

    path: str
    num_slices: int
    coils: int
    kspace_size: Tuple[int, int]  # (H, W)
    recon_size: Tuple[int, int]  # (h, w) from the header
    padding: Tuple[int, int]  # acquired columns [left, right)
    target_key: Optional[str]  # "reconstruction_rss" / "reconstruction_esc", None for a test file
    target_size: Optional[Tuple[int, int]]
    has_mask: bool  # a test file: undersampled k-space and its mask
    has_maps: bool
    attrs: Dict[str, Any]

    @property
    def crop_size(self) -> Tuple[int, int]:
        """fastMRI's crop: the recon size (the target's size when it has one), ``(W, W)`` when the
        k-space is narrower, never more than ``H``."""
        h, w = self.target_size if self.target_size is not None else self.recon_size
        H, W = self.kspace_size
        if W < w:
            h, w = W, W
        return min(h, H), min(w, W)


def _fail(path: PathLike, message: str) -> FastMRIFileError:
    return FastMRIFileError(f"file {path}: {message}")


def _header_int(root: ET.Element, path: Sequence[str], fname: PathLike, what: str) -> int:
    el = root.find("/".join(f"m:{p}" for p in path), _NS)
    if el is None or el.text is None:
        raise _fail(fname, f"the ismrmrd_header has no {'/'.join(path)} ({what})")
    try:
        return int(float(el.text))
    except ValueError:
        raise _fail(fname, f"the ismrmrd_header's {'/'.join(path)} ({what}) is not a number: {el.text!r}") from None


def parse_ismrmrd_header(xml: bytes, fname: PathLike = "<header>") -> Dict[str, Tuple[int, ...]]:
    """``{"encoded_size": (x, y, z), "recon_size": (x, y, z), "padding": (left, right)}`` from an
    ISMRMRD header (fastMRI's reading: ``padding_left = enc_y // 2 − center``, ``padding_right =
    padding_left + maximum + 1`` of ``kspace_encoding_step_1``; all columns when the limits are
    absent). Errors name ``fname``."""
    try:
        root = ET.fromstring(xml)
    except ET.ParseError as e:
        raise _fail(fname, f"the ismrmrd_header is not valid XML ({e})") from None
    enc = ["encoding", "encodedSpace", "matrixSize"]
    rec = ["encoding", "reconSpace", "matrixSize"]
    encoded = tuple(_header_int(root, enc + [a], fname, "the encoded matrix size") for a in "xyz")
    recon = tuple(_header_int(root, rec + [a], fname, "the recon size") for a in "xy") + (1,)
    lims = ["encoding", "encodingLimits", "kspace_encoding_step_1"]
    if root.find("/".join(f"m:{p}" for p in lims + ["center"]), _NS) is not None:
        center = _header_int(root, lims + ["center"], fname, "the phase-encoding centre")
        maximum = _header_int(root, lims + ["maximum"], fname, "the last phase-encoding line") + 1
        left = encoded[1] // 2 - center
        padding = (left, left + maximum)
    else:
        padding = (0, encoded[1])
    return {"encoded_size": encoded, "recon_size": recon, "padding": padding}


def _decode(v: Any) -> Any:
    if isinstance(v, bytes):
        return v.decode("utf-8", "replace")
    if isinstance(v, np.generic):
        return v.item()
    return v


def scan_fastmri_file(path: PathLike, challenge: Literal["multicoil", "singlecoil"] = "multicoil",
                      require_target: bool = True, require_maps: bool = False) -> FastMRIVolume:
    """Check one fastMRI file and read what a dataset needs to index it (shapes, header, attributes).

    Raises :class:`FastMRIFileError` (naming the file) for: a file h5py cannot open (truncated,
    damaged, not HDF5), no ``kspace`` or one of the wrong rank/dtype, no or malformed
    ``ismrmrd_header`` or one without the recon size, a target (or, without target, a ``mask``)
    missing or with another number of slices, a ``mask`` whose width is not the k-space width,
    and (``require_maps``) ``sensitivity_maps`` missing or with another number of coils or size.
    """
    import h5py

    if challenge not in ("multicoil", "singlecoil"):
        raise ValueError(f"challenge: expected 'multicoil' or 'singlecoil', got {challenge!r}")
    try:
        f = h5py.File(path, "r")
    except (OSError, ValueError) as e:
        raise _fail(path, f"cannot be read as HDF5 (truncated or damaged?): {e}") from None
    with f:
        if "kspace" not in f:
            raise _fail(path, f"has no 'kspace' dataset (it holds {sorted(f.keys())})")
        k = f["kspace"]
        rank = 4 if challenge == "multicoil" else 3
        if k.ndim != rank:
            raise _fail(path, f"'kspace' has shape {k.shape}; the {challenge} challenge expects "
                              f"{'(slices, coils, H, W)' if rank == 4 else '(slices, H, W)'}")
        if k.dtype.kind != "c":
            raise _fail(path, f"'kspace' has dtype {k.dtype}; expected complex (complex64)")
        S, (H, W) = k.shape[0], k.shape[-2:]
        coils = k.shape[1] if rank == 4 else 1
        if "ismrmrd_header" not in f:
            raise _fail(path, "has no 'ismrmrd_header' dataset (the recon size and k-space padding are read from it)")
        raw = f["ismrmrd_header"][()]
        if isinstance(raw, np.ndarray):
            raw = raw.item() if raw.size == 1 else raw.tobytes()
        header = parse_ismrmrd_header(raw.encode("utf-8") if isinstance(raw, str) else bytes(raw), path)
        left, right = header["padding"]
        padding = (max(0, min(left, W)), max(0, min(right, W)))
        if padding[1] <= padding[0]:
            raise _fail(path, f"the header's phase-encoding limits leave no acquired column (padding {header['padding']} "
                              f"of a k-space of width {W})")
        key = "reconstruction_esc" if challenge == "singlecoil" else "reconstruction_rss"
        target_key, target_size = (key, tuple(f[key].shape[-2:])) if key in f else (None, None)
        has_mask = "mask" in f
        if target_key is not None and (f[key].ndim != 3 or f[key].shape[0] != S):
            raise _fail(path, f"'{key}' has shape {f[key].shape}; expected ({S}, h, w), one image per k-space slice")
        if target_key is None and require_target:
            raise _fail(path, f"has no '{key}' target (it holds {sorted(f.keys())}); a test file without targets "
                              "can only be predicted")
        if target_key is None and not has_mask:
            raise _fail(path, f"has neither a '{key}' target nor a 'mask' (of an undersampled test file)")
        if has_mask:
            m = f["mask"]
            if m.shape[-1] != W or int(np.prod(m.shape)) != W:
                raise _fail(path, f"'mask' has shape {m.shape}; its width must be the k-space width {W} "
                                  f"(kspace {k.shape})")
        has_maps = "sensitivity_maps" in f
        if require_maps:
            if not has_maps:
                raise _fail(path, "has no 'sensitivity_maps' dataset (sensitivities='file'); use "
                                  "sensitivities='estimate' to estimate them from the k-space centre")
            sm = f["sensitivity_maps"]
            if sm.ndim not in (3, 4) or sm.shape[-3] != coils or tuple(sm.shape[-2:]) != (H, W) \
                    or (sm.ndim == 4 and sm.shape[0] != S):
                raise _fail(path, f"'sensitivity_maps' has shape {sm.shape}; the coil dimension and size must match the "
                                  f"k-space's {coils} coils of {H}×{W} (kspace {k.shape}): expected ({coils}, {H}, {W}) "
                                  f"or ({S}, {coils}, {H}, {W})")
        attrs = {k_: _decode(v) for k_, v in f.attrs.items()}
    return FastMRIVolume(str(path), int(S), int(coils), (int(H), int(W)), tuple(header["recon_size"][:2]), padding,
                         target_key, target_size, has_mask, has_maps, attrs)


def num_low_frequencies(mask: Tensor) -> int:
    """The number of contiguous sampled columns around the centre ``W // 2`` of a ``(..., W)`` mask."""
    m = mask.reshape(-1, mask.shape[-1]).bool().any(0)
    W = m.shape[0]
    c = W // 2
    if not bool(m[c]):
        return 0
    left = c
    while left > 0 and bool(m[left - 1]):
        left -= 1
    right = c
    while right < W - 1 and bool(m[right + 1]):
        right += 1
    return right - left + 1


class FastMRISliceDataset(Dataset):
    """One sample per slice of a set of fastMRI files (see the module's docstring for what a sample is).

    Args:
        files: the ``.h5`` files (or one folder, whose ``*.h5`` are taken in sorted order).
        challenge: ``"multicoil"`` or ``"singlecoil"``.
        mask_func: the undersampling (ignored for test files, which carry their ``mask``).
        seeded: masks seeded by (file name, slice) (validation, test); else fresh per sample.
        sensitivities: ``"estimate"`` (from the centre columns) or ``"file"`` (``sensitivity_maps``).
        maps_threshold: :func:`~unroll.operators.mri.estimate_sensitivities`'s ``threshold``.
        scale_by_max: divide ``y`` and ``x`` by the volume's ``max`` attribute (targets in [0, 1];
            ``meta["max"]`` is then 1 and ``meta["scale"]`` the factor to undo it).
        require_target: refuse files without a target (training, validation, test); ``False`` for
            prediction on test files.
        on_error: ``"raise"`` (a bad file raises :class:`FastMRIFileError`) or ``"skip"`` (it is
            left out with a warning naming it).
    """

    def __init__(self, files: Union[PathLike, Sequence[PathLike]], challenge: Literal["multicoil", "singlecoil"] =
                 "multicoil", mask_func: Optional[MaskFunc] = None, seeded: bool = True,
                 sensitivities: Literal["estimate", "file"] = "estimate", maps_threshold: float = 0.0,
                 scale_by_max: bool = False, require_target: bool = True,
                 on_error: Literal["raise", "skip"] = "raise") -> None:
        if on_error not in ("raise", "skip"):
            raise ValueError(f"on_error: expected 'raise' or 'skip', got {on_error!r}")
        if sensitivities not in ("estimate", "file"):
            raise ValueError(f"sensitivities: expected 'estimate' or 'file', got {sensitivities!r}")
        if mask_func is not None and not isinstance(mask_func, MaskFunc):
            raise TypeError(f"mask_func: expected an unroll.operators.MaskFunc, got {type(mask_func).__name__}")
        if isinstance(files, (str, os.PathLike)) and Path(files).is_dir():
            files = sorted(Path(files).glob("*.h5"))
            if not files:
                raise FileNotFoundError(f"files: no *.h5 file in the folder {files!r}")
        elif isinstance(files, (str, os.PathLike)):
            files = [files]
        self.challenge, self.mask_func, self.seeded = challenge, mask_func or MaskFunc(), bool(seeded)
        self.sensitivities, self.maps_threshold = sensitivities, float(maps_threshold)
        self.scale_by_max = bool(scale_by_max)
        self.volumes: List[FastMRIVolume] = []
        self.skipped: List[Tuple[str, str]] = []
        for p in files:
            try:
                self.volumes.append(scan_fastmri_file(p, challenge, require_target, sensitivities == "file"))
            except FastMRIFileError as e:
                if on_error == "raise":
                    raise
                self.skipped.append((str(p), str(e)))
                warnings.warn(f"skipping a bad fastMRI file: {e}", stacklevel=2)
        if not self.volumes:
            raise FileNotFoundError(f"files: no usable fastMRI file among {len(list(files))} given"
                                    + (f" ({len(self.skipped)} skipped: {self.skipped[0][1]} ...)" if self.skipped else ""))
        self.index: List[Tuple[int, int]] = [(v, s) for v, vol in enumerate(self.volumes) for s in range(vol.num_slices)]
        self._handles: Dict[int, Any] = {}
        self._pid = os.getpid()

    def __len__(self) -> int:
        return len(self.index)

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_handles"] = {}
        return state

    def shape_key(self, i: int) -> Tuple[int, ...]:
        """``(coils, H, W, h, w)`` of sample ``i``: samples batch together only with equal keys."""
        vol = self.volumes[self.index[i][0]]
        return (vol.coils, *vol.kspace_size, *vol.crop_size)

    def _file(self, v: int):
        import h5py

        if self._pid != os.getpid():  # a forked worker: never share the parent's handles
            self._handles, self._pid = {}, os.getpid()
        f = self._handles.get(v)
        if f is None:
            try:
                f = h5py.File(self.volumes[v].path, "r")
            except OSError as e:
                raise _fail(self.volumes[v].path, f"cannot be read as HDF5 (truncated or damaged?): {e}") from None
            self._handles[v] = f
        return f

    def close(self) -> None:
        """Close this process's open files."""
        for f in self._handles.values():
            f.close()
        self._handles = {}

    def __getitem__(self, i: int) -> Batch:
        v, s = self.index[i]
        vol = self.volumes[v]
        f = self._file(v)
        try:
            kspace = torch.from_numpy(np.asarray(f["kspace"][s])).to(torch.complex64)
            target = None if vol.target_key is None else torch.from_numpy(np.asarray(f[vol.target_key][s], np.float32))
            file_mask = torch.from_numpy(np.asarray(f["mask"][()]).reshape(-1).astype(bool)) if vol.has_mask else None
            maps = None
            if self.sensitivities == "file":
                sm = f["sensitivity_maps"]
                maps = torch.from_numpy(np.asarray(sm[s] if sm.ndim == 4 else sm[()])).to(torch.complex64)
        except (OSError, KeyError) as e:
            raise _fail(vol.path, f"slice {s} cannot be read ({e})") from None
        if kspace.dim() == 2:
            kspace = kspace.unsqueeze(0)
        H, W = vol.kspace_size
        fname = Path(vol.path).name
        if file_mask is not None:
            mask = file_mask
        else:
            mask = self.mask_func(W, key=fname, index=s) if self.seeded else self.mask_func(W)
            left, right = vol.padding
            mask = mask.clone()
            mask[:left] = False
            mask[right:] = False
        mask = mask.to(torch.float32).view(1, 1, W)
        y = kspace * mask + 0.0
        nlf = num_low_frequencies(mask)
        if maps is None:
            if self.challenge == "singlecoil":
                maps = torch.ones(1, H, W, dtype=torch.complex64)
            else:
                if nlf < 1:
                    raise _fail(vol.path, f"slice {s}: the mask samples no centre column, so the coil sensitivities "
                                          "cannot be estimated (use a mask with centre_fractions > 0)")
                maps = estimate_sensitivities(y.unsqueeze(0), nlf, self.maps_threshold)[0]
        if "max" in vol.attrs:
            vmax = float(vol.attrs["max"])
        else:  # a file without the attribute: the slice's own max (the volume's is not known here)
            vmax = float(target.max()) if target is not None else float("nan")
        scale = vmax if self.scale_by_max and math.isfinite(vmax) and vmax > 0 else 1.0
        crop = vol.crop_size
        x = None if target is None else center_crop(target, crop).contiguous() / scale
        y = y / scale if scale != 1.0 else y
        meta = {"fname": fname, "slice_num": torch.tensor(s, dtype=torch.long),
                "max": torch.tensor(vmax / scale, dtype=torch.float32),
                "data_range": torch.tensor(vmax / scale, dtype=torch.float32),
                "num_low_freqs": torch.tensor(nlf, dtype=torch.long),
                "crop_size": torch.tensor(crop, dtype=torch.long),
                "scale": torch.tensor(scale, dtype=torch.float32)}
        return Batch(y, x, {"mask": mask, "sensitivities": maps}, meta)


def collate_fastmri(samples: Sequence[Batch]) -> Batch:
    """Stack samples of one shape into a :class:`Batch` (``x`` is ``None`` if any sample has none;
    ``meta["fname"]`` a list)."""
    if not samples:
        raise ValueError("samples: expected at least one sample")
    shapes = {tuple(s.y.shape) for s in samples}
    if len(shapes) > 1:
        raise ValueError(f"samples: k-space shapes {sorted(shapes)} differ within a batch; batch them by shape "
                         "(BucketBatchSampler) or use batch_size=1")
    y = torch.stack([s.y for s in samples])
    x = None if any(s.x is None for s in samples) else torch.stack([s.x for s in samples])
    operator = {k: torch.stack([s.operator[k] for s in samples]) for k in samples[0].operator}
    meta: Dict[str, Any] = {}
    for k, v in samples[0].meta.items():
        vals = [s.meta[k] for s in samples]
        meta[k] = torch.stack(vals) if isinstance(v, Tensor) else list(vals)
    return Batch(y, x, operator, meta)


class BucketBatchSampler(Sampler[List[int]]):
    """Batches of up to ``batch_size`` indices drawn in the order of ``sampler``, each batch holding
    samples of one shape only (``dataset.shape_key(i)``, the dataset being ``sampler.dataset`` or
    ``sampler.data_source``): an index joins the open batch of its shape, which is yielded when
    full; the incomplete batches follow at the end (dropped with ``drop_last``).

    Its signature ``(sampler, batch_size, drop_last)`` lets Lightning rebuild it around a
    ``DistributedSampler`` under DDP.
    """

    def __init__(self, sampler: Sampler[int], batch_size: int, drop_last: bool = False) -> None:
        self.sampler, self.batch_size, self.drop_last = sampler, check_int("batch_size", batch_size, 1), bool(drop_last)
        dataset = getattr(sampler, "dataset", None)
        if dataset is None:
            dataset = getattr(sampler, "data_source", None)
        if dataset is None or not hasattr(dataset, "shape_key"):
            raise TypeError("sampler: expected a sampler over a dataset with shape_key(i) (e.g. RandomSampler("
                            "FastMRISliceDataset))")
        self.dataset = dataset

    def __iter__(self) -> Iterator[List[int]]:
        open_batches: Dict[Tuple[int, ...], List[int]] = {}
        for i in self.sampler:
            key = self.dataset.shape_key(int(i))
            batch = open_batches.setdefault(key, [])
            batch.append(int(i))
            if len(batch) == self.batch_size:
                yield open_batches.pop(key)
        if not self.drop_last:
            yield from (b for b in open_batches.values() if b)

    def __len__(self) -> int:
        indices = range(len(self.dataset)) if isinstance(self.sampler, (RandomSampler, SequentialSampler)) \
            else list(self.sampler)
        counts: Dict[Tuple[int, ...], int] = {}
        for i in indices:
            key = self.dataset.shape_key(int(i))
            counts[key] = counts.get(key, 0) + 1
        div = (lambda n: n // self.batch_size) if self.drop_last else (lambda n: -(-n // self.batch_size))
        return sum(div(n) for n in counts.values())


# ------------------------------------------------------------------ the built-in data
def load_builtin_images() -> np.ndarray:
    """The built-in brain slices ``(64, 128, 128)`` float32 in [0, 1] (real anatomy: Colin27;
    see ``data/assets/mri/README.md``)."""
    with np.load(_ASSET) as d:
        return d["images"].astype(np.float32) / 65535.0


def write_builtin_dataset(folder: PathLike, challenge: Literal["multicoil", "singlecoil"] = "multicoil",
                          num_coils: int = 8, noise: float = 0.01, slabs: Optional[Sequence[int]] = None) -> List[Path]:
    """Write the built-in data as fastMRI files ``folder/colin27_slab{k}.h5`` (``k`` in ``slabs``,
    default all 8): slab ``k`` holds slices ``8k … 8k + 7`` (2 mm apart) of the Colin27 brain,
    turned into ``num_coils``-coil k-space by :func:`~unroll.data.fastmri_writer.write_fastmri_volume`
    (birdcage coils, a smooth phase, noise ``noise`` × max, all seeded by ``k``: the same files
    every time)."""
    from .fastmri_writer import write_fastmri_volume

    images = load_builtin_images()
    out = []
    for k in (range(BUILTIN_SLABS) if slabs is None else slabs):
        if not 0 <= int(k) < BUILTIN_SLABS:
            raise ValueError(f"slabs: expected slab numbers in [0, {BUILTIN_SLABS}), got {k!r}")
        vol = images[int(k) * BUILTIN_SLAB_SLICES:(int(k) + 1) * BUILTIN_SLAB_SLICES]
        out.append(write_fastmri_volume(Path(folder) / f"colin27_slab{int(k)}.h5", vol, challenge=challenge,
                                        num_coils=num_coils, noise=noise, seed=1000 + int(k), acquisition="AXT1",
                                        patient_id=f"colin27-slab{int(k)}"))
    return out


class _TemporaryFolder:
    """A temporary folder removed when the last object referring to it is collected (or at exit);
    the data module and every dataset over the built-in files hold it, so a dataloader outlives the
    data module safely. Copies made by pickling (spawned workers) never remove it."""

    def __init__(self, prefix: str) -> None:
        self.path = Path(tempfile.mkdtemp(prefix=prefix))
        self._finalizer = weakref.finalize(self, shutil.rmtree, str(self.path), True)

    def __getstate__(self):
        return {"path": self.path}

    def __setstate__(self, state) -> None:
        self.path = state["path"]


# ------------------------------------------------------------------ the data module
class FastMRIDataModule(lightning.LightningDataModule):
    """fastMRI-layout data (or the built-in Colin27 brain data) for MRI reconstruction.

    Args:
        root: the folder of the data set, holding fastMRI's ``{challenge}_train``,
            ``{challenge}_val`` and ``{challenge}_test`` folders (or give them with ``train_dir``
            …); ``None``: the built-in data (``builtin``).
        challenge: ``"multicoil"`` or ``"singlecoil"``.
        mask: the undersampling, an :class:`~unroll.operators.MaskFunc` (default: random, centre
            fraction 0.08, 4×); validation and test masks are seeded by (file, slice).
        batch_size: training batch size; eval_batch_size: validation/test/predict (default 1).
        num_workers: DataLoader workers (each opens its own file handles).
        train_dir, val_dir, test_dir, predict_dir: folders (relative to ``root`` or absolute);
            ``predict_dir`` defaults to the test folder. A folder may hold test files (with
            ``mask``, without targets): only ``predict`` accepts them.
        builtin: use the built-in data (also when ``root`` is ``None``): 64 axial slices of the
            Colin27 brain (128 × 128) in 8 volumes of 8 slices, written as fastMRI files with
            ``builtin_coils`` simulated coils and ``builtin_noise`` into ``cache_dir`` (a
            temporary folder by default, removed at exit); split by volume: ``builtin_split``
            (default :data:`BUILTIN_SPLIT`: train 0, 2, 4, 6, 7; val 3; test 1, 5).
        sensitivities: ``"estimate"`` (from the auto-calibration columns) or ``"file"``.
        maps_threshold: relative RSS threshold of the estimation (0: maps everywhere).
        scale_by_max: divide each volume's k-space and target by its ``max`` attribute.
        seed_train_masks: seed training masks by (file, slice) too (the same mask every epoch).
        on_error: ``"raise"`` or ``"skip"`` a bad file (named in the error or warning).
    """

    #: ``unroll predict`` writes one ``reconstruction`` file per input volume
    #: (:class:`unroll.train.FastMRIPredictionWriter`)
    prediction_layout = "fastmri"

    def __init__(self, root: Optional[str] = None, challenge: Literal["multicoil", "singlecoil"] = "multicoil",
                 mask: Optional[MaskFunc] = None, batch_size: int = 1, eval_batch_size: int = 1,
                 num_workers: int = 0, train_dir: Optional[str] = None, val_dir: Optional[str] = None,
                 test_dir: Optional[str] = None, predict_dir: Optional[str] = None, builtin: bool = False,
                 builtin_coils: int = 8, builtin_noise: float = 0.01,
                 builtin_split: Optional[Dict[str, List[int]]] = None, cache_dir: Optional[str] = None,
                 sensitivities: Literal["estimate", "file"] = "estimate", maps_threshold: float = 0.0,
                 scale_by_max: bool = False, seed_train_masks: bool = False,
                 on_error: Literal["raise", "skip"] = "raise") -> None:
        super().__init__()
        if challenge not in ("multicoil", "singlecoil"):
            raise ValueError(f"challenge: expected 'multicoil' or 'singlecoil', got {challenge!r}")
        if mask is not None and not isinstance(mask, MaskFunc):
            raise TypeError(f"mask: expected an unroll.operators.MaskFunc, got {type(mask).__name__}")
        if on_error not in ("raise", "skip"):
            raise ValueError(f"on_error: expected 'raise' or 'skip', got {on_error!r}")
        if sensitivities not in ("estimate", "file"):
            raise ValueError(f"sensitivities: expected 'estimate' or 'file', got {sensitivities!r}")
        self.builtin = bool(builtin) or root is None
        if self.builtin and root is not None:
            raise ValueError(f"root: the built-in data needs no root (got {root!r}); set builtin=false to read it")
        self.root = None if root is None else Path(root)
        if self.root is not None and not self.root.is_dir():
            raise FileNotFoundError(f"root: {str(self.root)!r} is not a folder")
        self.challenge, self.mask = challenge, mask if mask is not None else MaskFunc()
        self.batch_size = check_int("batch_size", batch_size, 1)
        self.eval_batch_size = check_int("eval_batch_size", eval_batch_size, 1)
        self.num_workers = check_int("num_workers", num_workers, 0)
        self.dirs = {"train": train_dir, "val": val_dir, "test": test_dir, "predict": predict_dir}
        self.builtin_coils = check_int("builtin_coils", builtin_coils, 1)
        if not (isinstance(builtin_noise, (int, float)) and math.isfinite(builtin_noise) and builtin_noise >= 0):
            raise ValueError(f"builtin_noise: expected a finite number ≥ 0, got {builtin_noise!r}")
        self.builtin_noise = float(builtin_noise)
        split = dict(BUILTIN_SPLIT if builtin_split is None else builtin_split)
        for stage in ("train", "val", "test"):
            if stage not in split or not split[stage] or any(not 0 <= int(k) < BUILTIN_SLABS for k in split[stage]):
                raise ValueError(f"builtin_split: expected non-empty lists of slabs in [0, {BUILTIN_SLABS}) for "
                                 f"'train', 'val' and 'test', got {builtin_split!r}")
        self.builtin_split = {k: [int(s) for s in v] for k, v in split.items()}
        self.cache_dir = cache_dir
        self.sensitivities, self.maps_threshold = sensitivities, float(maps_threshold)
        self.scale_by_max, self.seed_train_masks, self.on_error = bool(scale_by_max), bool(seed_train_masks), on_error
        self._datasets: Dict[str, FastMRISliceDataset] = {}
        self._builtin_root: Optional[Path] = None
        self._tmp: Optional[_TemporaryFolder] = None
        self.save_hyperparameters(ignore=["mask"])

    # -------------------------------------------------------------- files
    def builtin_root(self) -> Path:
        """The folder of the built-in files (written on first use)."""
        if self._builtin_root is None:
            if self.cache_dir is not None:
                folder = Path(self.cache_dir) / f"{self.challenge}_c{self.builtin_coils}_n{self.builtin_noise:g}"
            else:
                self._tmp = _TemporaryFolder("unroll-fastmri-builtin-")
                folder = self._tmp.path
            missing = [k for k in range(BUILTIN_SLABS) if not (folder / f"colin27_slab{k}.h5").is_file()]
            if missing:
                write_builtin_dataset(folder, self.challenge, self.builtin_coils, self.builtin_noise, missing)
            self._builtin_root = folder
        return self._builtin_root

    def files(self, stage: str) -> List[Path]:
        """The files of ``stage`` (``"train"``, ``"val"``, ``"test"`` or ``"predict"``)."""
        if stage not in self.dirs:
            raise ValueError(f"stage: expected one of {sorted(self.dirs)}, got {stage!r}")
        if self.builtin:
            split = self.builtin_split["test" if stage == "predict" else stage]
            root = self.builtin_root()
            return [root / f"colin27_slab{k}.h5" for k in split]
        given = self.dirs[stage] or (self.dirs["test"] if stage == "predict" else None)
        name = "test" if stage == "predict" else stage
        folder = Path(given) if given is not None else Path(f"{self.challenge}_{name}")
        if not folder.is_absolute():
            folder = self.root / folder
        if not folder.is_dir():
            raise FileNotFoundError(f"{stage}_dir: {str(folder)!r} is not a folder (fastMRI's layout: "
                                    f"root/{self.challenge}_train, _val, _test)")
        files = sorted(folder.glob("*.h5"))
        if not files:
            raise FileNotFoundError(f"{stage}_dir: no *.h5 file in {str(folder)!r}")
        return files

    def dataset(self, stage: str) -> FastMRISliceDataset:
        """The slice dataset of ``stage`` (built once)."""
        if stage not in self._datasets:
            self._datasets[stage] = FastMRISliceDataset(
                self.files(stage), self.challenge, self.mask, seeded=stage != "train" or self.seed_train_masks,
                sensitivities=self.sensitivities, maps_threshold=self.maps_threshold, scale_by_max=self.scale_by_max,
                require_target=stage != "predict", on_error=self.on_error)
            self._datasets[stage].keepalive = self._tmp  # the built-in temporary files live as long as it
        return self._datasets[stage]

    # -------------------------------------------------------------- loaders
    def _loader(self, stage: str, batch_size: int, shuffle: bool) -> DataLoader:
        ds = self.dataset(stage)
        keys = {ds.shape_key(i) for i in range(len(ds))}
        common = dict(num_workers=self.num_workers, collate_fn=collate_fastmri,
                      persistent_workers=self.num_workers > 0)
        if batch_size == 1 or len(keys) == 1:
            return DataLoader(ds, batch_size=batch_size, shuffle=shuffle, **common)
        sampler = RandomSampler(ds) if shuffle else SequentialSampler(ds)
        return DataLoader(ds, batch_sampler=BucketBatchSampler(sampler, batch_size), **common)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", self.eval_batch_size, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", self.eval_batch_size, shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader("predict", self.eval_batch_size, shuffle=False)

    # -------------------------------------------------------------- operators
    def get_operator(self) -> None:
        """No global operator: every batch carries its own (:meth:`build_operator`)."""
        return None

    def build_operator(self, params: Mapping[str, Tensor]) -> LinearOperator:
        """``SENSE(params["sensitivities"], params["mask"])``: the batch's ``(B, C, H, W)`` maps and
        ``(B, 1, 1, W)`` masks."""
        missing = [k for k in ("sensitivities", "mask") if k not in params]
        if missing:
            raise ValueError(f"operator: expected the batch's parameters to hold 'sensitivities' and 'mask', "
                             f"got keys {sorted(params)}")
        return SENSE(params["sensitivities"], params["mask"])

    def describe(self) -> Dict[str, object]:
        """The data's parameters (what makes two test sets the same)."""
        return {"task": "fastmri", "challenge": self.challenge,
                "data": "builtin" if self.builtin else str(self.root), "mask": repr(self.mask),
                "builtin_coils": self.builtin_coils if self.builtin else None,
                "builtin_noise": self.builtin_noise if self.builtin else None,
                "split": self.builtin_split if self.builtin else None, "scale_by_max": self.scale_by_max}

    def teardown(self, stage: str) -> None:
        for ds in self._datasets.values():
            ds.close()
