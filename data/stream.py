"""A resumable, seeded, never-repeating training stream for any synthetic data module.

A data module gives a function ``make_batch(index, generator) → Batch`` that draws batch
``index`` of the stream from ``generator`` (and nothing else random). :class:`BatchStream`
seeds one generator per batch from the module's seed, the DDP rank and the batch's index,
so the data depend neither on the number of DataLoader workers nor on restarts;
:class:`StreamLoader` starts each epoch where the fit loop stands (restored from the
checkpoint when a run resumes), so a resumed run trains on the data an uninterrupted one
would.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Optional, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

__all__ = ["derive_seed", "make_generator", "BatchStream", "StreamLoader", "fit_position"]


def derive_seed(*keys: int) -> int:
    """A 63-bit seed for ``torch.Generator.manual_seed`` from non-negative integer keys
    (``numpy.random.SeedSequence``: different keys give independent streams)."""
    hi, lo = np.random.SeedSequence([int(k) for k in keys]).generate_state(2, dtype=np.uint32)
    return ((int(hi) & 0x7FFFFFFF) << 32) | int(lo)


def make_generator(*keys: int) -> torch.Generator:
    """A CPU ``torch.Generator`` seeded with :func:`derive_seed` of ``keys``."""
    return torch.Generator().manual_seed(derive_seed(*keys))


def _rank() -> int:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank()
    return 0


class BatchStream(IterableDataset):
    """Endless fresh batches ``make_batch(i, generator_i)``, ``batches`` per epoch.

    Batch ``i`` of the stream (counted from the start of training, across epochs) is drawn
    from its own generator, seeded from ``keys``, the DDP rank and ``i``, so the data do not
    depend on the number of DataLoader workers (worker ``k`` of ``W`` yields batches
    ``start + k, start + k + W, …``). One iteration yields the batches from ``start`` to the
    end of the epoch ``start`` falls in; :class:`StreamLoader` sets ``start`` before each.

    Args:
        make_batch: ``(index, generator) → batch``; it must draw everything random from
            ``generator`` (a CPU ``torch.Generator``). With worker processes it must be picklable
            (a module-level function or a ``functools.partial`` of one).
        batches: batches per epoch (the loader's length).
        keys: non-negative integers that seed the stream (e.g. ``(seed, stream_id)``).
    """

    def __init__(self, make_batch: Callable[[int, torch.Generator], Any], batches: int, keys: Sequence[int]) -> None:
        super().__init__()
        if not callable(make_batch):
            raise TypeError(f"make_batch: expected a callable (index, generator) → batch, got "
                            f"{type(make_batch).__name__}")
        if isinstance(batches, bool) or not isinstance(batches, int) or batches < 1:
            raise ValueError(f"batches: expected an integer ≥ 1, got {batches!r}")
        self.make_batch, self.batches, self.keys = make_batch, batches, tuple(int(k) for k in keys)
        #: stream index of the next batch
        self.start = 0

    def __len__(self) -> int:
        return self.batches

    def generator(self, index: int, rank: int = 0) -> torch.Generator:
        """The generator batch ``index`` of rank ``rank`` is drawn from."""
        return make_generator(*self.keys, rank, index)

    def __iter__(self):
        info = get_worker_info()
        wid, nw = (info.id, info.num_workers) if info is not None else (0, 1)
        rank = _rank()
        start = self.start
        end = (start // self.batches + 1) * self.batches
        for i in range(start + wid, end, nw):
            yield self.make_batch(i, self.generator(i, rank))


def fit_position(trainer) -> Optional[int]:
    """The training batches ``trainer``'s fit loop has processed (restored from the checkpoint
    when a run resumes), or ``None`` without a trainer."""
    try:
        return None if trainer is None else int(trainer.fit_loop.epoch_loop.batch_progress.total.processed)
    except AttributeError:
        return None


class StreamLoader(DataLoader):
    """The DataLoader of a :class:`BatchStream`, resumable mid-epoch.

    Each iteration starts the stream at ``position()`` (e.g. :func:`fit_position` of the
    trainer) when that is known, otherwise where the previous iteration stopped; so a resumed
    run sees the data an uninterrupted one would. Workers are started per epoch (not
    persistent), so each gets the epoch's start. Its ``state_dict`` only records the position:
    the fit loop's own progress is what restores it.
    """

    def __init__(self, dataset: BatchStream, position: Callable[[], Optional[int]], **kwargs) -> None:
        super().__init__(dataset, batch_size=None, **kwargs)
        self._position = position

    def __iter__(self):
        pos = self._position()
        if pos is not None:
            self.dataset.start = int(pos)
        return self._counted(super().__iter__())

    def _counted(self, it):
        for batch in it:
            self.dataset.start += 1  # where the next iteration continues without a fit loop
            yield batch

    def state_dict(self) -> Dict[str, int]:
        return {"position": int(self.dataset.start)}

    def load_state_dict(self, state_dict: Dict[str, int]) -> None:
        """Nothing to restore (see the class docstring)."""
