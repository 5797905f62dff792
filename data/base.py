"""``SyntheticDataModule``: what every synthetic data module of ``unroll.data`` shares.

A subclass says how to build its fixed splits and its optional global operator
(:meth:`~SyntheticDataModule.build`) and how to draw training batch ``i`` from a generator
(:meth:`~SyntheticDataModule.batch_maker`); the base builds once on first use, serves the
accessors (``operator``/``get_operator()``, ``val_split``, ``test_split``) and the
dataloaders: a resumable, never-repeating training stream (:mod:`unroll.data.stream`) and
map-style loaders over the fixed splits (default collate).
"""

from __future__ import annotations

import functools
import warnings
from typing import Callable, Mapping, NamedTuple, Optional

import lightning
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from unroll.operators import LinearOperator

from .batch import Batch
from .checks import check_int
from .stream import BatchStream, StreamLoader, fit_position, make_generator

__all__ = ["SplitData", "SplitDataset", "SyntheticDataModule"]


class SplitData(NamedTuple):
    """What :meth:`SyntheticDataModule.build` returns: the global operator (``None`` when every
    batch carries its own) and the fixed validation and test splits (whole-split batches)."""

    operator: Optional[LinearOperator]
    val: Batch
    test: Batch


class SplitDataset(Dataset):
    """Map-style view of a fixed split (a :class:`Batch` of ``N`` samples): item ``i`` is
    ``split.select(i)``, so the default collate rebuilds batches of the split."""

    def __init__(self, split: Batch) -> None:
        self.split = split

    def __len__(self) -> int:
        return self.split.batch_size

    def __getitem__(self, i: int) -> Batch:
        return self.split.select(i)


class SyntheticDataModule(lightning.LightningDataModule):
    """Base of the synthetic data modules: built once, fixed splits, a fresh training stream.

    Args:
        batch_size: training batch size.
        train_batches: training batches per epoch (each one fresh).
        eval_batch_size: batch size of the validation, test and predict dataloaders.
        seed: seed of everything the module draws (subclasses derive independent streams).
        num_workers: DataLoader worker processes (the training stream starts its workers each
            epoch, at the epoch's position in the stream; the evaluation loaders keep theirs).

    Subclasses implement :meth:`draw` (or :meth:`build` and :meth:`batch_maker`), and :meth:`build_operator`
    when their batches carry what builds their operator.
    """

    #: stream id of the training stream: batch ``i`` is drawn from ``(seed, TRAIN_STREAM, rank, i)``
    TRAIN_STREAM = 3

    def __init__(self, batch_size: int = 64, train_batches: int = 200, eval_batch_size: int = 1000,
                 seed: int = 0, num_workers: int = 0) -> None:
        super().__init__()
        for name, value, minimum in (("batch_size", batch_size, 1), ("train_batches", train_batches, 1),
                                     ("eval_batch_size", eval_batch_size, 1), ("seed", seed, 0),
                                     ("num_workers", num_workers, 0)):
            check_int(name, value, minimum)
        self.batch_size, self.train_batches, self.eval_batch_size = batch_size, train_batches, eval_batch_size
        self.seed, self.num_workers = seed, num_workers
        self._data: Optional[SplitData] = None
        self._train_stream: Optional[BatchStream] = None

    #: stream ids of the fixed validation and test draws of the default :meth:`build`
    VAL_STREAM, TEST_STREAM = 1, 2

    # ------------------------------------------------------------------ what subclasses give
    def draw(self) -> Callable[..., Batch]:
        """``draw(index, generator, batch_size=…) → Batch``, for modules whose every split is drawn
        from one generator function (picklable for workers): the default :meth:`build` and
        :meth:`batch_maker` use it. Others override those two instead."""
        raise NotImplementedError(f"{type(self).__name__} must implement draw(), or build() and batch_maker()")

    def build(self) -> SplitData:
        """Build the global operator and the fixed splits (called once, on first use). Default:
        no global operator, and validation and test sets of ``val_size``/``test_size`` drawn
        by :meth:`draw` from their own streams."""
        draw = self.draw()
        val = draw(0, make_generator(self.seed, self.VAL_STREAM), batch_size=self.val_size)
        test = draw(0, make_generator(self.seed, self.TEST_STREAM), batch_size=self.test_size)
        return SplitData(None, val, test)

    def batch_maker(self) -> Callable[[int, torch.Generator], Batch]:
        """``make_batch(index, generator) → Batch`` of the training stream (picklable for workers);
        called once, after :meth:`build`. Default: :meth:`draw` at ``batch_size``."""
        return functools.partial(self.draw(), batch_size=self.batch_size)

    def build_operator(self, params: Mapping[str, Tensor]) -> LinearOperator:
        """The operator of a batch from what the batch carries (``batch.operator``, a mapping of
        batched tensors, on the batch's device)."""
        raise NotImplementedError(f"operator: {type(self).__name__}'s batches carry no operator parameters "
                                  f"(got keys {sorted(params)})")

    # ------------------------------------------------------------------ accessors
    @property
    def data(self) -> SplitData:
        """The built operator and splits (builds them on first access)."""
        if self._data is None:
            self._data = self.build()
        return self._data

    def setup(self, stage: Optional[str] = None) -> None:
        """Build the operator and the fixed splits (once; later calls do nothing)."""
        self.data

    @property
    def operator(self) -> Optional[LinearOperator]:
        """The global operator (``None`` when every batch carries its own)."""
        return self.data.operator

    def get_operator(self) -> Optional[LinearOperator]:
        """The global operator (``None`` when every batch carries its own); builds if needed."""
        return self.data.operator

    @property
    def val_split(self) -> Batch:
        """The fixed validation split, one :class:`Batch` of all its samples."""
        return self.data.val

    @property
    def test_split(self) -> Batch:
        """The fixed test split, one :class:`Batch` of all its samples."""
        return self.data.test

    # ------------------------------------------------------------------ dataloaders
    def train_stream(self) -> BatchStream:
        """The training stream (one for the module's lifetime: epochs continue it)."""
        if self._train_stream is None:
            self.data
            self._train_stream = BatchStream(self.batch_maker(), self.train_batches, (self.seed, self.TRAIN_STREAM))
        return self._train_stream

    def train_dataloader(self) -> DataLoader:
        stream = self.train_stream()
        # Lightning warns for any IterableDataset with a length that its workers may duplicate
        # data; this stream deals its batches out between the workers, so its length holds.
        warnings.filterwarnings("ignore", message="Your `IterableDataset` has `__len__` defined", category=UserWarning)
        return StreamLoader(stream, lambda: fit_position(self.trainer), num_workers=self.num_workers)

    def eval_dataloader(self, split: Batch) -> DataLoader:
        """A loader over a fixed split, in order, ``eval_batch_size`` samples per batch."""
        return DataLoader(SplitDataset(split), batch_size=self.eval_batch_size, shuffle=False,
                          num_workers=self.num_workers, persistent_workers=self.num_workers > 0)

    def val_dataloader(self) -> DataLoader:
        return self.eval_dataloader(self.val_split)

    def test_dataloader(self) -> DataLoader:
        return self.eval_dataloader(self.test_split)

    def predict_dataloader(self) -> DataLoader:
        return self.eval_dataloader(self.test_split)
