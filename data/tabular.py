"""Tabular data for bilevel tasks (hyperparameters learned by hypergradient): scikit-learn's
``make_regression`` and its shipped datasets (diabetes, breast cancer, digits), split into an
inner training set, an outer (validation) set — held out, or K folds — and a test set.

Every training "batch" is the whole problem, a :class:`TabularBatch` (one outer step per batch):

* ``X``, ``y``: the inner training rows, ``(K, n, d)`` and ``(K, n)`` — ``K = 1`` for a held-out
  split, ``K = cv`` folds for cross-validation (each fold's training rows; the folds are cut to
  one common size, the remainder rows dropped, so they stack);
* ``Xv``, ``yv``: the outer rows the hyperparameters are scored on, ``(K, m, d)``, ``(K, m)``;
* ``Xt``, ``yt``: the test rows ``(N, d)``, ``(N,)``, never seen while learning;
* ``corrupted``: ``(n,)`` bool, which training labels were corrupted (hyper-cleaning; all
  ``False`` otherwise; only for ``K = 1``).

Regression targets are standardised with the training statistics, features always are (so one
penalty scale fits every feature); classification labels are ``0..C-1`` (as floats in ``y``).
"""

from __future__ import annotations

from typing import Dict, NamedTuple, Optional

import lightning
import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

__all__ = ["TabularBatch", "TabularDataModule", "DATASETS"]

DATASETS = ("make_regression", "diabetes", "breast_cancer", "digits")


class TabularBatch(NamedTuple):
    """One whole bilevel problem (see the module docstring for shapes)."""

    X: Tensor
    y: Tensor
    Xv: Tensor
    yv: Tensor
    Xt: Tensor
    yt: Tensor
    corrupted: Tensor


class _Repeat(Dataset):
    def __init__(self, batch: TabularBatch, length: int) -> None:
        self.batch, self.length = batch, length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> TabularBatch:
        return self.batch


def _identity(items):
    return items[0]


class TabularDataModule(lightning.LightningDataModule):
    """A tabular bilevel problem: inner training rows, outer rows (held out or K folds), test rows.

    Args:
        dataset: ``"make_regression"``, ``"diabetes"``, ``"breast_cancer"`` or ``"digits"``.
        n_samples, n_features, n_informative, noise: ``make_regression``'s arguments (others
            ignore them).
        test_fraction: the share of rows kept for the test set.
        val_fraction: held-out mode (``cv = 0``): the share of the remaining rows the
            hyperparameters are scored on.
        cv: ``0`` for a held-out validation set, else the number of folds ``K >= 2`` of the
            remaining rows.
        corrupt_fraction: the share of training labels replaced by a wrong class
            (hyper-cleaning; classification with ``cv = 0`` only).
        steps_per_epoch: outer steps per epoch (each one sees the whole problem).
        seed: the shuffle, corruption and ``make_regression`` seed.
    """

    def __init__(self, dataset: str = "make_regression", n_samples: int = 500, n_features: int = 100,
                 n_informative: int = 10, noise: float = 40.0, test_fraction: float = 0.3,
                 val_fraction: float = 0.3, cv: int = 0, corrupt_fraction: float = 0.0,
                 steps_per_epoch: int = 10, seed: int = 0) -> None:
        super().__init__()
        if dataset not in DATASETS:
            raise ValueError(f"dataset: expected one of {', '.join(DATASETS)}, got {dataset!r}")
        for name, v in (("test_fraction", test_fraction), ("val_fraction", val_fraction)):
            if not (isinstance(v, (int, float)) and 0 < v < 1):
                raise ValueError(f"{name}: expected a number in (0, 1), got {v!r}")
        if not (isinstance(corrupt_fraction, (int, float)) and 0 <= corrupt_fraction < 1):
            raise ValueError(f"corrupt_fraction: expected a number in [0, 1), got {corrupt_fraction!r}")
        if isinstance(cv, bool) or not isinstance(cv, int) or cv == 1 or cv < 0:
            raise ValueError(f"cv: expected 0 (held-out) or an int >= 2 (folds), got {cv!r}")
        if corrupt_fraction and (cv or dataset in ("make_regression", "diabetes")):
            raise ValueError("corrupt_fraction: label corruption needs a classification dataset "
                             f"(breast_cancer, digits) and cv=0, got dataset={dataset!r}, cv={cv}")
        if not isinstance(steps_per_epoch, int) or steps_per_epoch < 1:
            raise ValueError(f"steps_per_epoch: expected an int >= 1, got {steps_per_epoch!r}")
        self.dataset, self.n_samples, self.n_features = dataset, n_samples, n_features
        self.n_informative, self.noise = n_informative, noise
        self.test_fraction, self.val_fraction, self.cv = test_fraction, val_fraction, cv
        self.corrupt_fraction, self.steps_per_epoch, self.seed = corrupt_fraction, steps_per_epoch, seed
        self._batch: Optional[TabularBatch] = None

    @property
    def classification(self) -> bool:
        return self.dataset in ("breast_cancer", "digits")

    @property
    def n_classes(self) -> int:
        """Number of classes (0 for regression)."""
        return {"breast_cancer": 2, "digits": 10}.get(self.dataset, 0)

    def _load(self):
        from sklearn import datasets as ds

        if self.dataset == "make_regression":
            return ds.make_regression(n_samples=self.n_samples, n_features=self.n_features,
                                      n_informative=self.n_informative, noise=self.noise, random_state=self.seed)
        return getattr(ds, f"load_{self.dataset}")(return_X_y=True)

    def build(self) -> TabularBatch:
        X, y = self._load()
        r = np.random.default_rng(self.seed)
        perm = r.permutation(len(y))
        X, y = X[perm].astype(np.float64), y[perm].astype(np.float64)
        n_test = int(round(self.test_fraction * len(y)))
        Xt, yt, X, y = X[:n_test], y[:n_test], X[n_test:], y[n_test:]
        mu, sd = X.mean(0), X.std(0)
        sd[sd == 0] = 1.0
        X, Xt = (X - mu) / sd, (Xt - mu) / sd
        if not self.classification:
            ym, ys = y.mean(), y.std()
            y, yt = (y - ym) / ys, (yt - ym) / ys
        t = lambda a: torch.tensor(a, dtype=torch.get_default_dtype())  # noqa: E731
        if self.cv == 0:
            n_val = int(round(self.val_fraction * len(y)))
            Xv, yv, Xtr, ytr = X[:n_val], y[:n_val], X[n_val:], y[n_val:].copy()
            bad = np.zeros(len(ytr), dtype=bool)
            if self.corrupt_fraction:
                bad = r.random(len(ytr)) < self.corrupt_fraction
                ytr[bad] = (ytr[bad] + r.integers(1, self.n_classes, int(bad.sum()))) % self.n_classes
            return TabularBatch(t(Xtr)[None], t(ytr)[None], t(Xv)[None], t(yv)[None], t(Xt), t(yt),
                                torch.tensor(bad))
        n = len(y) - len(y) % self.cv
        X, y = X[:n], y[:n]
        folds = np.arange(n).reshape(self.cv, -1)
        tr = [np.setdiff1d(np.arange(n), f) for f in folds]
        return TabularBatch(t(np.stack([X[i] for i in tr])), t(np.stack([y[i] for i in tr])),
                            t(np.stack([X[f] for f in folds])), t(np.stack([y[f] for f in folds])), t(Xt), t(yt),
                            torch.zeros(n - n // self.cv, dtype=torch.bool))

    @property
    def batch(self) -> TabularBatch:
        """The whole problem (built on first use)."""
        if self._batch is None:
            self._batch = self.build()
        return self._batch

    def setup(self, stage: Optional[str] = None) -> None:
        self.batch

    def describe(self) -> Dict[str, object]:
        """A short summary of the data (``unroll evaluate`` compares it between checkpoints)."""
        return {"dataset": self.dataset, "n_samples": self.n_samples, "n_features": self.n_features,
                "cv": self.cv, "corrupt_fraction": self.corrupt_fraction, "seed": self.seed}

    def _loader(self, length: int) -> DataLoader:
        return DataLoader(_Repeat(self.batch, length), batch_size=1, collate_fn=_identity)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.steps_per_epoch)

    def val_dataloader(self) -> DataLoader:
        return self._loader(1)

    def test_dataloader(self) -> DataLoader:
        return self._loader(1)
