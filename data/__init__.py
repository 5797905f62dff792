"""Data for ``unroll``: batches, resumable synthetic streams, HDF5 splits and LightningDataModules.

* :class:`Batch`: what every dataloader yields (measurements, targets, the batch's own
  operator or what builds it, metadata).
* :mod:`~unroll.data.stream`: the resumable, seeded training stream any synthetic module uses.
* :mod:`~unroll.data.h5`: HDF5 files of a problem's matrix and fixed splits.
* :class:`SparseRecoveryDataModule`: the sparse-recovery (LISTA) benchmark, one global matrix.
* :class:`InpaintingDataModule`: small synthetic images with a random mask per sample
  (an operator carried by every batch), scored with PSNR/SSIM.

Depends on the core ``unroll`` package only (never on ``unroll.models`` or ``unroll.train``).
"""

from .base import SplitData, SplitDataset, SyntheticDataModule
from .batch import Batch
from .h5 import read_splits_h5, write_splits_h5
from .images import InpaintingDataModule, make_inpainting_batch, make_smooth_images
from .sparse import STANDARD_SHAPE, SparseRecoveryDataModule, load_standard_problem, make_sparse_signals, measure
from .stream import BatchStream, StreamLoader, derive_seed, fit_position, make_generator

__all__ = [
    "Batch",
    "SparseRecoveryDataModule",
    "InpaintingDataModule",
    "make_smooth_images",
    "make_inpainting_batch",
    "SyntheticDataModule",
    "SplitData",
    "SplitDataset",
    "BatchStream",
    "StreamLoader",
    "derive_seed",
    "make_generator",
    "fit_position",
    "load_standard_problem",
    "write_splits_h5",
    "read_splits_h5",
    "make_sparse_signals",
    "measure",
    "STANDARD_SHAPE",
]

# fastMRI data (issue 17)
from .fastmri import (BUILTIN_SPLIT, BucketBatchSampler, FastMRIDataModule, FastMRIFileError, FastMRISliceDataset,
                      collate_fastmri, load_builtin_images, scan_fastmri_file, write_builtin_dataset)
from .fastmri_writer import birdcage_maps, ismrmrd_header, simulate_multicoil, write_fastmri_file, write_fastmri_volume

__all__ += ["FastMRIDataModule", "FastMRISliceDataset", "FastMRIFileError", "BucketBatchSampler", "collate_fastmri",
            "scan_fastmri_file", "load_builtin_images", "write_builtin_dataset", "BUILTIN_SPLIT", "birdcage_maps",
            "ismrmrd_header", "simulate_multicoil", "write_fastmri_file", "write_fastmri_volume"]
