"""Data for ``unroll``: the sparse-recovery (LISTA) benchmark as a LightningDataModule.

Depends on the core ``unroll`` package only (never on ``unroll.models`` or ``unroll.train``).
"""

from .batch import Batch
from .sparse import (STANDARD_SHAPE, SparseRecoveryDataModule, load_standard_problem, make_sparse_signals,
                     measure, read_splits_h5, write_splits_h5)

__all__ = [
    "Batch",
    "SparseRecoveryDataModule",
    "load_standard_problem",
    "write_splits_h5",
    "read_splits_h5",
    "make_sparse_signals",
    "measure",
    "STANDARD_SHAPE",
]
