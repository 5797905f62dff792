"""Batched linear operators (``LinearOperator``) and their self-checks."""

from .base import (AdjointOperator, ComposedOperator, LinearOperator, ScaledOperator, SumOperator,
                   adjoint_test, fmt_shape)
from .convert import as_operator
from .conv import Convolution2d, gaussian_kernel
from .elementwise import Diagonal, Identity
from .laplacian import Laplacian
from .matrix import MatrixOperator
from .fft import FFT2c, fft2c, ifft2c  # MRI (issue 17)
from .masks import Mask, MaskFunc, center_mask, equispaced_mask, mask_seed, poisson_disc_mask, random_mask
from .mri import SENSE, CoilSensitivities, MultiCoilMRI, estimate_sensitivities, rss, sense_combine
from .mri import center_crop  # fastMRI data (issue 17)

__all__ = [
    "LinearOperator",
    "AdjointOperator",
    "ComposedOperator",
    "SumOperator",
    "ScaledOperator",
    "MatrixOperator",
    "Diagonal",
    "Identity",
    "Laplacian",
    "Convolution2d",
    "gaussian_kernel",
    "adjoint_test",
    "as_operator",
    "fmt_shape",
    # MRI (issue 17)
    "FFT2c", "fft2c", "ifft2c", "Mask", "MaskFunc", "mask_seed", "center_mask", "random_mask", "equispaced_mask",
    "poisson_disc_mask", "SENSE", "MultiCoilMRI", "CoilSensitivities", "rss", "sense_combine", "estimate_sensitivities",
    "center_crop",  # fastMRI data (issue 17)
]
