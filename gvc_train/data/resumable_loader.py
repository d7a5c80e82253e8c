"""The training loader's position: what Lightning's checkpoints save so that a resumed epoch
continues exactly where it stopped, and the loader that also adds up the skip counts.

Shared by every shard data module (:mod:`gvc_train.data.shard_datamodule`) and by the synthetic
one (:mod:`gvc_train.data.synthetic`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import lightning as L
from torch.utils.data import DataLoader

from gvc_train.data.pipeline import ShardStream, is_stats_only
from gvc_train.data.skip_stats import SkipTotals


def consumed_batches(trainer: L.Trainer | None) -> int | None:
    """Training batches consumed in the current epoch at a checkpoint: what a resumed run skips.

    ``processed``, not a count of yielded batches: Lightning prefetches one batch ahead, and a
    batch skipped for a non-finite loss was consumed although it made no optimizer step.
    """
    if trainer is None:
        return None
    return int(trainer.fit_loop.epoch_loop.batch_progress.current.processed)


class ResumableEpochs:
    """The data epoch and resume position of a training loader, kept for Lightning's checkpoints.

    Lightning saves a train loader's ``state_dict()`` in every checkpoint and hands it back to
    ``load_state_dict()`` before iterating a resumed run, so the epoch continues where it
    stopped. The data epoch is the loader's own count of its iterations, not
    ``trainer.current_epoch``: Lightning resumed from a checkpoint taken after an epoch's last
    batch starts its epoch counter one further than an uninterrupted run does (2.6), and the
    data must not jump. Only with a fixed epoch length: then every worker's stream has the same
    length and batch j came from worker j % W, which the resume relies on. A one-pass epoch
    (one rank only) resumes from its start, as Lightning does with any unstateful loader.
    """

    def _init_epochs(self, per_epoch: int | None, consumed_fn: Callable[[], int | None] | None) -> None:
        self._per_epoch, self._consumed_fn = per_epoch, consumed_fn
        self._resume: tuple[int, int] | None = None
        self._epoch: int | None = None  # the data epoch being iterated
        self._next_epoch = 0

    def _start_epoch(self) -> tuple[int, int]:
        """``(data epoch, batches of it already consumed)`` for the iteration that starts now."""
        epoch, consumed = self._next_epoch, 0
        if self._resume is not None:
            epoch, consumed = self._resume
            if self._per_epoch is not None and consumed >= self._per_epoch:  # saved after its last batch
                epoch, consumed = epoch + 1, 0
        self._resume = None
        self._epoch, self._next_epoch = epoch, epoch + 1
        return epoch, consumed

    def state_dict(self) -> dict[str, int]:
        consumed = self._consumed_fn() if self._consumed_fn is not None else None
        if consumed is None or self._epoch is None or self._per_epoch is None:
            return {}
        return {"epoch": self._epoch, "batches": consumed}

    def load_state_dict(self, state: dict[str, int]) -> None:
        if "epoch" in state and "batches" in state:
            self._resume = (int(state["epoch"]), int(state["batches"]))


class SkipCountingLoader(ResumableEpochs, DataLoader):
    """A DataLoader over a :class:`ShardStream` that tallies the skip counts batches carry.

    Runs in the main process, after the worker boundary, so every worker's counts arrive here
    exactly once; the stats-only items that end a stream are counted and not yielded. It also
    hands the epoch to the stream before the workers start, and knows the epoch length.
    """

    def __init__(
        self,
        stream: ShardStream,
        *,
        totals: SkipTotals,
        batches_per_epoch: int | None,
        progress_fn: Callable[[], int | None] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(stream, batch_size=None, **kwargs)  # the stream batches itself
        self._totals = totals
        self._init_epochs(batches_per_epoch, progress_fn)

    def __len__(self) -> int:
        if self._per_epoch is None:
            # one pass over shards of unknown size: no length, as for any unsized iterable
            raise TypeError(f"{self.dataset.config.split} loader has no length (one pass over the shards)")
        return self._per_epoch

    def __iter__(self) -> Iterator[dict[str, Any]]:
        epoch, consumed = self._start_epoch()
        self.dataset.set_epoch(epoch)
        self.dataset.resume = (epoch, consumed) if consumed else None
        split = self.dataset.config.split
        for item in super().__iter__():
            self._totals.add(split, item["skipped"])
            if not is_stats_only(item):
                yield item
