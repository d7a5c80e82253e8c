"""``VideoDataModule``: WebDataset clip shards -> batches of ``B x 3 x T x H x W`` float video.

Training streams resampled shards (or, with ``resampled=False``, each stream's own share of the
shards, round and round) for a fixed number of samples per epoch that is the same on every
rank; validation and test read each shard exactly once, split over ranks and workers, with a
deterministic window and centre crop. See :mod:`gvc_train.data.pipeline` for the stages.

A batch is a dict::

    video    float32 B x 3 x T x H x W, RGB in [0, 1]   (the contract)
    key      list[str]    the sample keys ("{source}-{first_frame:06d}")
    meta     list[dict]   ClipMeta fields + window_start, frame_stride, crop_top, crop_left,
                          flipped, shard
    caption  list[str]    "" where the sample has none
    skipped  dict[str, int]  skips in this batch's worker since its previous batch (already
                          added to ``skip_stats()``: do not add them again)
    worker   int          the DataLoader worker that made it
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader

from gvc_train.data.pipeline import ClipStream, StreamConfig, is_stats_only
from gvc_train.data.shard_split import batches_per_stream, check_splittable, expand_shards
from gvc_train.data.skip_stats import REASONS, SkipTotals
from gvc_train.data.transforms import ClipSampler, as_hw

log = logging.getLogger(__name__)

# The training loader's length is exact (every worker yields its own share, see
# batches_per_stream); Lightning's generic caution about IterableDataset lengths does not apply.
warnings.filterwarnings("ignore", message="Your `IterableDataset` has `__len__` defined")

ShardSpec = str | list[str] | None


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
    """A DataLoader over a :class:`ClipStream` that tallies the skip counts batches carry.

    Runs in the main process, after the worker boundary, so every worker's counts arrive here
    exactly once; the stats-only items that end a stream are counted and not yielded. It also
    hands the epoch to the stream before the workers start, and knows the epoch length.
    """

    def __init__(
        self,
        stream: ClipStream,
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


class VideoDataModule(L.LightningDataModule):
    """Clips from WebDataset shards written by ``gvc-shard``.

    Args:
        train_shards, val_shards, test_shards: a shard spec or a list of them: local globs
            (``data/shards/train/*.tar``), brace ranges (``shard-{000000..000009}.tar``), a
            directory (its ``*.tar``), ``pipe:`` commands (``pipe:aws s3 cp s3://b/s.tar -``).
        clip_frames: T, frames per clip. Must be ``1 + k * latent_time_stride``.
        frame_stride: take every n-th frame of the source clip.
        crop_size: ``int``, ``(height, width)`` or None for the full frame (then all clips of
            a batch must share one size).
        batch_size: clips per training batch (per rank).
        num_workers: DataLoader worker processes per rank.
        samples_per_epoch: global (all ranks) training samples per epoch; rounded down to a
            multiple of ``world_size * num_workers * batch_size`` (see ``batches_per_stream``).
            Needed with ``resampled=True`` (an endless stream) and with several ranks.
        shuffle_buffer: raw samples held for shuffling in each training stream.
        resampled: draw training shards with replacement; False: split the shards over ranks
            and workers (needs at least ``world_size * num_workers`` shards).
        flip: random horizontal flips in training.
        seed: base seed of every random choice; streams derive theirs from it, rank, worker, epoch.
        val_batch_size: defaults to ``batch_size``.
        pin_memory: None: pin when CUDA is available.
        persistent_workers: keep workers alive between epochs.
        latent_time_stride: the tokenizer's causal temporal stride that T must fit; None
            allows any ``T >= 1`` (leaving the check to the model).
        max_consecutive_skips: an endless stream that skips this many samples in a row stops
            with an error instead of spinning on unusable data.
        rank, world_size: override the distributed rank and world size (tests, custom
            launchers); by default they come from the trainer, then torch.distributed, then the
            RANK/WORLD_SIZE environment variables.
    """

    def __init__(
        self,
        train_shards: ShardSpec = None,
        val_shards: ShardSpec = None,
        test_shards: ShardSpec = None,
        clip_frames: int = 17,
        frame_stride: int = 1,
        crop_size: int | tuple[int, int] | None = 128,
        batch_size: int = 4,
        num_workers: int = 2,
        samples_per_epoch: int | None = None,
        shuffle_buffer: int = 64,
        resampled: bool = True,
        flip: bool = True,
        seed: int = 0,
        val_batch_size: int | None = None,
        pin_memory: bool | None = None,
        persistent_workers: bool = False,
        latent_time_stride: int | None = 4,
        max_consecutive_skips: int = 1000,
        rank: int | None = None,
        world_size: int | None = None,
    ) -> None:
        super().__init__()
        if clip_frames < 1:
            raise ValueError(f"clip_frames must be >= 1, got {clip_frames}")
        if latent_time_stride is not None and (clip_frames - 1) % latent_time_stride != 0:
            raise ValueError(
                f"clip_frames={clip_frames} must be 1 + {latent_time_stride}k for the causal tokenizer "
                f"(e.g. {clip_frames - (clip_frames - 1) % latent_time_stride}); "
                "pass latent_time_stride=None to allow any T"
            )
        for name, value in (("frame_stride", frame_stride), ("batch_size", batch_size)):
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        if num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {num_workers}")
        if samples_per_epoch is not None and samples_per_epoch < 1:
            raise ValueError(f"samples_per_epoch must be >= 1, got {samples_per_epoch}")
        self.save_hyperparameters()
        self.shard_specs = {"train": train_shards, "val": val_shards, "test": test_shards}
        self.clip_frames = clip_frames
        self.frame_stride = frame_stride
        self.crop_size = as_hw(crop_size)
        self.batch_size = batch_size
        self.val_batch_size = val_batch_size or batch_size
        self.num_workers = num_workers
        self.samples_per_epoch = samples_per_epoch
        self.shuffle_buffer = shuffle_buffer
        self.resampled = resampled
        self.flip = flip
        self.seed = seed
        self.pin_memory = torch.cuda.is_available() if pin_memory is None else pin_memory
        self.persistent_workers = persistent_workers and num_workers > 0
        self.max_consecutive_skips = max_consecutive_skips
        self._rank = rank
        self._world_size = world_size
        self._urls: dict[str, list[str]] = {}
        self._skips = SkipTotals()

    # -- distributed context

    def dist_info(self) -> tuple[int, int]:
        """(rank, world_size): the overrides, else the trainer, torch.distributed, the env."""
        if self._rank is not None or self._world_size is not None:
            rank, world = self._rank or 0, self._world_size or 1
        elif self.trainer is not None:
            rank, world = self.trainer.global_rank, self.trainer.world_size
        elif torch.distributed.is_available() and torch.distributed.is_initialized():
            rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
        else:
            rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
        if not 0 <= rank < world:
            raise ValueError(f"rank {rank} is not in a world of size {world}")
        return rank, world

    def _consumed_batches(self) -> int | None:
        return consumed_batches(self.trainer)

    # -- setup

    def shard_urls(self, split: str) -> list[str]:
        """The expanded shard list of a split (expanded once, then cached)."""
        if split not in self._urls:
            spec = self.shard_specs[split]
            if spec is None:
                raise ValueError(f"no {split}_shards were given")
            self._urls[split] = expand_shards(spec)
        return self._urls[split]

    def setup(self, stage: str | None = None) -> None:
        """Expand the shard specs and refuse, now rather than mid-epoch, splits that cannot work."""
        splits = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",), None: ("train", "val", "test")}
        for split in splits.get(stage, ()):
            if self.shard_specs[split] is not None:
                self._check(split)

    def _check(self, split: str) -> None:
        urls = self.shard_urls(split)
        rank, world = self.dist_info()
        if split == "train":
            if self.resampled and self.samples_per_epoch is None:
                raise ValueError("resampled=True streams training shards forever: set samples_per_epoch")
            if not self.resampled:
                check_splittable(len(urls), world, self.num_workers)
                if world > 1 and self.samples_per_epoch is None:
                    raise ValueError(
                        "resampled=False over several ranks needs samples_per_epoch: one pass would give "
                        "ranks unequal batch counts and DDP would hang at the epoch end"
                    )
            self.train_batches_per_epoch()  # raises if samples_per_epoch is below one batch/stream
        elif len(urls) < world:
            # a rank with no shard runs no validation step, and a sync_dist log would then hang
            raise ValueError(
                f"{len(urls)} {split} shards cannot be split over {world} ranks; make more shards "
                "with gvc-shard --maxcount"
            )

    def train_batches_per_epoch(self) -> int | None:
        """Training batches per epoch on each rank (the same on all); None for one pass."""
        if self.samples_per_epoch is None:
            return None
        _, world = self.dist_info()
        per_stream = batches_per_stream(self.samples_per_epoch, world, self.num_workers, self.batch_size)
        return per_stream * max(1, self.num_workers)

    # -- loaders

    def _sampler(self, train: bool) -> ClipSampler:
        return ClipSampler(self.clip_frames, self.frame_stride, self.crop_size, flip=self.flip and train)

    def _loader(self, split: str) -> SkipCountingLoader:
        self._check(split)
        rank, world = self.dist_info()
        train = split == "train"
        config = StreamConfig(
            split=split,
            urls=tuple(self.shard_urls(split)),
            sampler=self._sampler(train),
            batch_size=self.batch_size if train else self.val_batch_size,
            rank=rank,
            world_size=world,
            random_sampling=train,
            resampled=train and self.resampled,
            samples_per_epoch=self.samples_per_epoch if train else None,
            shuffle_buffer=self.shuffle_buffer,
            seed=self.seed,
            drop_last=train,
            max_consecutive_skips=self.max_consecutive_skips,
        )
        return SkipCountingLoader(
            self._make_stream(config),
            totals=self._skips,
            batches_per_epoch=self.train_batches_per_epoch() if train else None,
            progress_fn=self._consumed_batches if train else None,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.persistent_workers,
        )

    def _make_stream(self, config: StreamConfig) -> ClipStream:
        return ClipStream(config)

    def train_dataloader(self) -> SkipCountingLoader:
        return self._loader("train")

    def val_dataloader(self) -> SkipCountingLoader:
        return self._loader("val")

    def test_dataloader(self) -> SkipCountingLoader:
        return self._loader("test")

    # -- skip statistics

    def skip_stats(self, split: str | None = None) -> dict[str, int]:
        """Samples/tars skipped in this process, by reason (all reasons) and ``total``.

        Per rank; :class:`SkipStatsLogger` sums them over ranks.
        """
        return self._skips.totals(split)


class SkipStatsLogger(L.Callback):
    """Logs the data module's skip totals (summed over ranks) at each epoch end.

    Every reason is logged, zeros included, so all ranks log the same names (a name logged on
    one rank only would hang the ``sync_dist`` reduction).
    """

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._log(trainer, pl_module, "train")

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._log(trainer, pl_module, "val")

    @staticmethod
    def _log(trainer: L.Trainer, pl_module: L.LightningModule, split: str) -> None:
        datamodule = trainer.datamodule
        if not isinstance(datamodule, VideoDataModule):
            return
        stats = datamodule.skip_stats(split)
        metrics = {f"data/{split}_skipped_{r}": float(stats[r]) for r in (*REASONS, "total")}
        pl_module.log_dict(metrics, reduce_fx="sum", sync_dist=True, on_epoch=True)
