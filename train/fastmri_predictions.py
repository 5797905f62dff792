"""``unroll predict`` on fastMRI data: reconstructions in fastMRI's submission layout.

fastMRI's layout (``fastmri.save_reconstructions``): one HDF5 file per input file, with the input
file's name, holding one dataset ``reconstruction`` ``(slices, h, w)`` float32 — the magnitude
image of every slice, cropped to the recon size, in the input's slice order.

:class:`FastMRIPredictionWriter` collects the model's output of every predicted batch by
``(meta["fname"], meta["slice_num"])``; a complex output (the MRI models' ``(B, H, W)`` image) is
turned into its magnitude, centre-cropped to ``meta["crop_size"]`` and multiplied back by
``meta["scale"]`` (the data module's ``scale_by_max``). At the end of the predict epoch every
volume is written atomically (a temporary file renamed over the target, as checkpoints are), by
rank 0 after gathering the slices of all processes under DDP. :func:`read_reconstructions` reads
such a folder back, :func:`score_reconstructions` scores it against the fastMRI files it was
predicted from (fastMRI's ``evaluate.py``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Union

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import BasePredictionWriter
from torch import Tensor

from unroll.metrics import fastmri_nmse, fastmri_psnr, fastmri_ssim
from unroll.operators.mri import center_crop

from .callbacks import say
from .io import atomic_write

__all__ = ["FastMRIPredictionWriter", "read_reconstructions", "score_reconstructions"]

PathLike = Union[str, os.PathLike]


class FastMRIPredictionWriter(BasePredictionWriter):
    """Write ``reconstruction`` ``(slices, h, w)`` float32 per input volume to ``output_dir/<fname>``.

    Batches must carry ``meta["fname"]`` (``[str] * B``) and ``meta["slice_num"]`` ``(B,)`` (as
    :class:`unroll.data.FastMRIDataModule`'s do); optional ``meta["crop_size"]`` ``(B, 2)`` and
    ``meta["scale"]`` ``(B,)``. Predictions: ``(B, H, W)`` complex or real images (or a model
    output with an ``.x`` field), cropped to the crop size.

    Args:
        output_dir: the folder of the reconstructions (created).
    """

    def __init__(self, output_dir: str = "predictions") -> None:
        super().__init__(write_interval="batch")
        self.output_dir = output_dir
        self._slices: Dict[str, Dict[int, np.ndarray]] = {}
        #: the files written by the last predict run
        self.written: List[Path] = []

    def on_predict_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._slices = {}

    def write_on_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, prediction: Any,
                           batch_indices: Optional[Sequence[int]], batch: Any, batch_idx: int,
                           dataloader_idx: int) -> None:
        images = getattr(prediction, "x", prediction)
        if not isinstance(images, Tensor) or images.dim() != 3:
            raise ValueError(f"prediction: expected images (B, H, W) from predict_step, got "
                             f"{tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__}")
        meta = getattr(batch, "meta", None) or {}
        if "fname" not in meta or "slice_num" not in meta:
            raise ValueError(f"batch.meta: the fastMRI prediction writer needs 'fname' and 'slice_num' per sample, got "
                             f"keys {sorted(meta)}")
        images = images.detach()
        if images.is_complex():
            images = images.abs()
        names, slices = list(meta["fname"]), torch.as_tensor(meta["slice_num"]).reshape(-1).tolist()
        if len(names) != images.shape[0]:
            raise ValueError(f"batch.meta: {len(names)} file names for {images.shape[0]} predicted images")
        crops = meta.get("crop_size") if "crop_size" in meta else None
        scales = torch.as_tensor(meta["scale"]).reshape(-1).tolist() if "scale" in meta else [1.0] * len(names)
        for i, (name, s) in enumerate(zip(names, slices)):
            img = images[i]
            if crops is not None:
                h, w = (int(v) for v in torch.as_tensor(crops[i]).tolist())
                if img.shape[-2] < h or img.shape[-1] < w:
                    raise ValueError(f"prediction: image {tuple(img.shape)} of {name} slice {s} is smaller than its "
                                     f"crop size {(h, w)}")
                img = center_crop(img, (h, w))
            self._slices.setdefault(str(name), {})[int(s)] = (img.float() * float(scales[i])).cpu().numpy()

    def on_predict_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        slices = self._slices
        if trainer.world_size > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
            gathered: List[Any] = [None] * trainer.world_size
            torch.distributed.all_gather_object(gathered, slices)
            slices = {}
            for part in gathered:
                for name, per in part.items():
                    slices.setdefault(name, {}).update(per)
        self._slices = {}
        self.written = []
        if trainer.global_rank != 0:
            return
        import h5py

        for name, per in sorted(slices.items()):
            order = sorted(per)
            volume = np.stack([per[s] for s in order]).astype(np.float32)
            if order != list(range(len(order))):
                say(trainer, f"predictions: {name} has slices {order[0]}..{order[-1]} with gaps; writing the "
                             f"{len(order)} predicted slices in order", log=False)

            def write(tmp: str, volume=volume) -> None:
                with h5py.File(tmp, "w") as f:
                    f.create_dataset("reconstruction", data=volume)

            self.written.append(atomic_write(Path(self.output_dir) / name, write))
        say(trainer, f"predictions: {len(self.written)} reconstruction files in {os.path.abspath(self.output_dir)}",
            log=False)


def read_reconstructions(folder: PathLike) -> Dict[str, Tensor]:
    """``{file name: reconstruction (slices, h, w)}`` of a folder in fastMRI's submission layout;
    a file without a ``reconstruction`` dataset raises ``ValueError`` naming it."""
    import h5py

    folder = Path(folder)
    files = sorted(folder.glob("*.h5"))
    if not files:
        raise FileNotFoundError(f"folder: no *.h5 reconstruction file in {str(folder)!r}")
    out = {}
    for p in files:
        try:
            with h5py.File(p, "r") as f:
                if "reconstruction" not in f:
                    raise ValueError(f"file {p}: has no 'reconstruction' dataset (it holds {sorted(f.keys())})")
                out[p.name] = torch.from_numpy(f["reconstruction"][()])
        except OSError as e:
            raise ValueError(f"file {p}: cannot be read as HDF5 (truncated or damaged?): {e}") from None
    return out


def score_reconstructions(predictions: PathLike, targets: PathLike,
                          challenge: str = "multicoil") -> Dict[str, Dict[str, float]]:
    """Score a submission folder against the fastMRI files it was predicted from, as fastMRI's
    ``evaluate.py``: per volume NMSE, PSNR and SSIM (data range: the target volume's max), and
    their means over the volumes under ``"mean"``.

    Returns:
        ``{file name: {"nmse", "psnr", "ssim"}, ..., "mean": {...}}``.
    """
    import h5py

    key = "reconstruction_esc" if challenge == "singlecoil" else "reconstruction_rss"
    recons = read_reconstructions(predictions)
    scores: Dict[str, Dict[str, float]] = {}
    for name, recon in recons.items():
        path = Path(targets) / name
        if not path.is_file():
            raise FileNotFoundError(f"targets: no target file {str(path)!r} for the reconstruction {name}")
        with h5py.File(path, "r") as f:
            if key not in f:
                raise ValueError(f"file {path}: has no '{key}' target")
            target = torch.from_numpy(f[key][()])
        if target.shape != recon.shape:
            raise ValueError(f"predictions: {name} has shape {tuple(recon.shape)}, its target {tuple(target.shape)}")
        # as fastMRI's evaluate.py: both cropped to (w, w) (brain targets), data range the target's max
        w = target.shape[-1]
        crop = (min(target.shape[-2], w), w)
        target, recon = center_crop(target, crop).double(), center_crop(recon, crop).double()
        scores[name] = {"nmse": float(fastmri_nmse(target, recon)), "psnr": float(fastmri_psnr(target, recon)),
                        "ssim": float(fastmri_ssim(target, recon))}
    scores["mean"] = {m: float(np.mean([v[m] for v in scores.values()])) for m in ("nmse", "psnr", "ssim")}
    return scores
