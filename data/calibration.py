"""Random blind gain calibration instances (Cambareri & Jacques 2019) for training and testing
:class:`unroll.models.LearnedBlindCalibration`.

Each sample: ``p`` Gaussian sensing matrices ``A_l`` ``(m, n)``, a signal ``x ~ N(0, Iₙ)``, gains
``d`` with ``1ᵀd = m`` and ``‖d − 1‖∞ = ρ`` and measurements ``y_l = diag(d) A_l x`` (+ noise),
drawn by :func:`unroll.calibration.make_calibration_instances`. Batches are
``Batch(y (B, p, m), x (B, n), operator={"A": (B, p, m, n)}, meta={"gains": (B, m)})``.
"""

from __future__ import annotations

import functools
from typing import Callable, Dict

import torch

from unroll.calibration import make_calibration_instances

from .base import SyntheticDataModule
from .batch import Batch
from .checks import as_dtype, check_finite_number, check_int

__all__ = ["make_calibration_batch", "BlindCalibrationDataModule"]


def make_calibration_batch(index: int, generator: torch.Generator, batch_size: int, n: int, m: int, p: int,
                           rho: float, noise_std: float, dtype: torch.dtype) -> Batch:
    """One batch of instances drawn from ``generator`` (``index`` unused: each batch of a stream
    has its own generator). Shapes as in the module notes."""
    A, y, x, d = make_calibration_instances(batch_size, n, m, p, rho=rho, generator=generator, dtype=dtype,
                                            noise_std=noise_std)
    return Batch(y, x, {"A": A}, {"gains": d})


class BlindCalibrationDataModule(SyntheticDataModule):
    """Blind-calibration instances: a fresh training stream and fixed validation/test splits.

    Args:
        n: signal length; m: sensors; p: snapshots (sensing matrices per sample).
        rho: ``‖d − 1‖∞`` of the true gains, in ``[0, 1)``.
        noise_std: noise standard deviation relative to the RMS of the clean measurements.
        batch_size, train_batches, eval_batch_size, seed, num_workers: as
            :class:`~unroll.data.SyntheticDataModule`.
        val_size, test_size: samples of the fixed splits.
        dtype: ``"float32"`` or ``"float64"``.

    There is no global operator: every batch carries its matrices (``batch.operator["A"]``).
    """

    def __init__(self, n: int = 16, m: int = 32, p: int = 4, rho: float = 0.5, noise_std: float = 0.0,
                 batch_size: int = 32, train_batches: int = 50, val_size: int = 128, test_size: int = 256,
                 eval_batch_size: int = 128, seed: int = 0, dtype: str = "float32", num_workers: int = 0) -> None:
        super().__init__(batch_size=batch_size, train_batches=train_batches, eval_batch_size=eval_batch_size,
                         seed=seed, num_workers=num_workers)
        self.n, self.m, self.p = check_int("n", n, 1), check_int("m", m, 1), check_int("p", p, 1)
        self.rho = check_finite_number("rho", rho, 0.0)
        if not self.rho < 1:
            raise ValueError(f"rho: expected a number in [0, 1) (positive gains), got {rho!r}")
        self.noise_std = check_finite_number("noise_std", noise_std, 0.0)
        self.val_size = check_int("val_size", val_size, 1)
        self.test_size = check_int("test_size", test_size, 1)
        self.torch_dtype = as_dtype(dtype)
        self.dtype = dtype
        self.save_hyperparameters()

    def draw(self) -> Callable[..., Batch]:
        return functools.partial(make_calibration_batch, n=self.n, m=self.m, p=self.p, rho=self.rho,
                                 noise_std=self.noise_std, dtype=self.torch_dtype)

    def describe(self) -> Dict[str, object]:
        """The task's parameters (what makes two test sets the same)."""
        return {"task": "blind_calibration", "n": self.n, "m": self.m, "p": self.p, "rho": self.rho,
                "noise_std": self.noise_std, "seed": self.seed, "test_size": self.test_size, "dtype": self.dtype}
