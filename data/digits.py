"""scikit-learn's handwritten digits as images for classification (adversarial training).

1797 grey-level images ``8×8`` of the digits 0–9 (they ship with scikit-learn: no download),
scaled from ``0..16`` to ``[0, 1]`` and shaped ``(1, 8, 8)``, so that attacks can keep the
valid input box ``[0, 1]``. (The bilevel tasks' :class:`~unroll.data.TabularDataModule` reads
the same data set but standardises the features, which has no valid box; only the loading is
shared, through scikit-learn.)
"""

from __future__ import annotations

from typing import Dict, NamedTuple

import lightning
import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

__all__ = ["ImageClassBatch", "DigitsDataModule", "load_digits_images"]


class ImageClassBatch(NamedTuple):
    """Images ``x`` ``(B, 1, 8, 8)`` in ``[0, 1]`` and their labels ``y`` ``(B,)`` (int64)."""

    x: Tensor
    y: Tensor


class _Images(Dataset):
    def __init__(self, x: Tensor, y: Tensor) -> None:
        self.x, self.y = x, y

    def __len__(self) -> int:
        return self.x.shape[0]

    def __getitem__(self, i: int) -> ImageClassBatch:
        return ImageClassBatch(self.x[i], self.y[i])


def load_digits_images(dtype: torch.dtype = torch.float32):
    """All of scikit-learn's digits as ``(x (1797, 1, 8, 8) in [0, 1], y (1797,) int64)``."""
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    x = torch.tensor(X / 16.0, dtype=dtype).reshape(-1, 1, 8, 8)
    return x, torch.tensor(y, dtype=torch.long)


class DigitsDataModule(lightning.LightningDataModule):
    """Digits images split into training, validation and test sets (a seeded permutation).

    Args:
        batch_size: training batch size (evaluation batches are whole splits up to 512).
        val_fraction, test_fraction: shares of the 1797 images.
        seed: the split's seed (and the training shuffle's).
        dtype: ``"float32"`` or ``"float64"``.
    """

    def __init__(self, batch_size: int = 64, val_fraction: float = 0.15, test_fraction: float = 0.25,
                 seed: int = 0, dtype: str = "float32") -> None:
        super().__init__()
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size: expected an int >= 1, got {batch_size!r}")
        for name, v in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v < 1:
                raise ValueError(f"{name}: expected a number in (0, 1), got {v!r}")
        if val_fraction + test_fraction >= 1:
            raise ValueError(f"val_fraction, test_fraction: expected a sum < 1, got {val_fraction} + {test_fraction}")
        if dtype not in ("float32", "float64"):
            raise ValueError(f"dtype: expected 'float32' or 'float64', got {dtype!r}")
        self.batch_size, self.val_fraction, self.test_fraction = batch_size, float(val_fraction), float(test_fraction)
        self.seed, self.dtype = int(seed), dtype
        self._splits: Dict[str, _Images] = {}

    def setup(self, stage: str = "") -> None:
        if self._splits:
            return
        x, y = load_digits_images(getattr(torch, self.dtype))
        perm = torch.tensor(np.random.default_rng(self.seed).permutation(len(y)))
        n_test = int(round(self.test_fraction * len(y)))
        n_val = int(round(self.val_fraction * len(y)))
        idx = {"test": perm[:n_test], "val": perm[n_test:n_test + n_val], "train": perm[n_test + n_val:]}
        self._splits = {k: _Images(x[i], y[i]) for k, i in idx.items()}

    def split(self, name: str) -> _Images:
        """The dataset of split ``name`` (``"train"``, ``"val"``, ``"test"``)."""
        self.setup()
        return self._splits[name]

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.split("train"), batch_size=self.batch_size, shuffle=True, drop_last=False,
                          generator=torch.Generator().manual_seed(self.seed))

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.split("val"), batch_size=512)

    def test_dataloader(self) -> DataLoader:
        return DataLoader(self.split("test"), batch_size=512)

    def predict_dataloader(self) -> DataLoader:
        return self.test_dataloader()

    def describe(self) -> Dict[str, object]:
        """The data's parameters (what makes two test sets the same)."""
        return {"task": "digits_classification", "val_fraction": self.val_fraction,
                "test_fraction": self.test_fraction, "seed": self.seed, "dtype": self.dtype}
