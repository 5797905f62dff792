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

# Poisson systems for learned conjugate directions (issue 14)
from .poisson import (  # noqa: E402
    OBSTACLE_SHAPES, PoissonDataModule, lanczos, make_poisson_systems, obstacle_mask, ritz_rhs)

__all__ += ["PoissonDataModule", "OBSTACLE_SHAPES", "obstacle_mask", "lanczos", "ritz_rhs", "make_poisson_systems"]
# Deblurring / denoising of scikit-image's bundled images (issue 15)
from .deblurring import DeblurringDataModule, load_image, make_blur  # noqa: E402

__all__ += ["DeblurringDataModule", "load_image", "make_blur"]

# Denoising data for learned proximal networks (issue 15)
from .denoising import (SHIPPED_IMAGES, LaplaceDenoisingDataModule, PatchDenoisingDataModule,  # noqa: E402
                        load_shipped_image, make_laplace_batch, make_patch_batch)

__all__ += ["PatchDenoisingDataModule", "LaplaceDenoisingDataModule", "load_shipped_image", "SHIPPED_IMAGES",
            "make_patch_batch", "make_laplace_batch"]

# bilevel (issue 16)
from .tabular import TabularBatch, TabularDataModule  # noqa: E402

__all__ += ["TabularBatch", "TabularDataModule"]

# adversarial training (issue 19): digits as images in [0, 1]
from .digits import DigitsDataModule, ImageClassBatch, load_digits_images  # noqa: E402

__all__ += ["DigitsDataModule", "ImageClassBatch", "load_digits_images"]

# blind gain calibration instances (issue 19)
from .calibration import BlindCalibrationDataModule, make_calibration_batch  # noqa: E402

__all__ += ["BlindCalibrationDataModule", "make_calibration_batch"]
