"""``ShardDataModule``: what every data module over WebDataset shards shares.

Training streams resampled shards (or, with ``resampled=False``, each stream's own share of the
shards, round and round) for a fixed number of samples per epoch that is the same on every
rank; validation and test read each shard exactly once, split over ranks and workers,
deterministically. A resumed run continues its epoch exactly (:mod:`.resumable_loader`), and
every skipped sample or tar is counted by reason (:mod:`.skip_stats`). The stages are
:mod:`gvc_train.data.pipeline`.

A data module for another kind of shard is a small subclass that provides

- its own constructor arguments (passing the shared ones on, e.g. with
  ``super().__init__(**shared_args(locals()))``),
- ``sample_step(train)``: its per-sample decode step, a :class:`~.pipeline.SampleStep`
  (random windows/crops when ``train``, deterministic ones otherwise),
- optionally ``check_shards(split, urls)``: a refusal at setup of shards it cannot read.

:class:`~gvc_train.data.datamodule.VideoDataModule` (frame shards) and
:class:`~gvc_train.data.latent_datamodule.LatentDataModule` (latent shards) are the two.
"""

from __future__ import annotations

import inspect
import os
import warnings
from typing import Any

import lightning as L
import torch

from gvc_train.data.pipeline import SampleStep, ShardStream, ShardStreamConfig
from gvc_train.data.resumable_loader import SkipCountingLoader, consumed_batches
from gvc_train.data.shard_split import batches_per_stream, check_splittable, expand_shards
from gvc_train.data.skip_stats import REASONS, SkipTotals

# The training loader's length is exact (every worker yields its own share, see
# batches_per_stream); Lightning's generic caution about IterableDataset lengths does not apply.
warnings.filterwarnings("ignore", message="Your `IterableDataset` has `__len__` defined")

ShardSpec = str | list[str] | None
SPLITS = ("train", "val", "test")


class ShardDataModule(L.LightningDataModule):
    """Samples from WebDataset shards; a subclass says how to decode one (see the module docstring).

    Args:
        train_shards, val_shards, test_shards: a shard spec or a list of them: local globs
            (``data/shards/train/*.tar``), brace ranges (``shard-{000000..000009}.tar``), a
            directory (its ``*.tar``), ``pipe:`` commands (``pipe:aws s3 cp s3://b/s.tar -``).
        batch_size: samples per training batch (per rank).
        num_workers: DataLoader worker processes per rank.
        samples_per_epoch: global (all ranks) training samples per epoch; rounded down to a
            multiple of ``world_size * num_workers * batch_size`` (see ``batches_per_stream``).
            Needed with ``resampled=True`` (an endless stream) and with several ranks.
        shuffle_buffer: raw samples held for shuffling in each training stream.
        resampled: draw training shards with replacement; False: split the shards over ranks
            and workers (needs at least ``world_size * num_workers`` shards).
        seed: base seed of every random choice; streams derive theirs from it, rank, worker, epoch.
        val_batch_size: defaults to ``batch_size``.
        pin_memory: None: pin when CUDA is available.
        persistent_workers: keep workers alive between epochs.
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
        batch_size: int = 4,
        num_workers: int = 2,
        samples_per_epoch: int | None = None,
        shuffle_buffer: int = 64,
        resampled: bool = True,
        seed: int = 0,
        val_batch_size: int | None = None,
        pin_memory: bool | None = None,
        persistent_workers: bool = False,
        max_consecutive_skips: int = 1000,
        rank: int | None = None,
        world_size: int | None = None,
    ) -> None:
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {num_workers}")
        if samples_per_epoch is not None and samples_per_epoch < 1:
            raise ValueError(f"samples_per_epoch must be >= 1, got {samples_per_epoch}")
        # collects the arguments of every __init__ up the subclass chain (Lightning walks the frames)
        self.save_hyperparameters()
        self.shard_specs = {"train": train_shards, "val": val_shards, "test": test_shards}
        self.batch_size = batch_size
        self.val_batch_size = val_batch_size or batch_size
        self.num_workers = num_workers
        self.samples_per_epoch = samples_per_epoch
        self.shuffle_buffer = shuffle_buffer
        self.resampled = resampled
        self.seed = seed
        self.pin_memory = torch.cuda.is_available() if pin_memory is None else pin_memory
        self.persistent_workers = persistent_workers and num_workers > 0
        self.max_consecutive_skips = max_consecutive_skips
        self._rank = rank
        self._world_size = world_size
        self._urls: dict[str, list[str]] = {}
        self._shards_checked: set[str] = set()
        self._skips = SkipTotals()

    # -- what a subclass provides

    def sample_step(self, train: bool) -> SampleStep:
        """The per-sample decode step; random windows/crops/flips when ``train``."""
        raise NotImplementedError(f"{type(self).__name__} must define sample_step(train)")

    def check_shards(self, split: str, urls: list[str]) -> None:
        """Refuse, at setup, shards of ``split`` this module cannot read (default: no check).

        Called once per split; a damaged shard is no reason to refuse (the stream skips it).
        """

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
        splits = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",), None: SPLITS}
        for split in splits.get(stage, ()):
            if self.shard_specs[split] is not None:
                self._check(split)

    def _check(self, split: str) -> None:
        urls = self.shard_urls(split)
        _, world = self.dist_info()
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
        if split not in self._shards_checked:
            self.check_shards(split, urls)
            self._shards_checked.add(split)

    def train_batches_per_epoch(self) -> int | None:
        """Training batches per epoch on each rank (the same on all); None for one pass."""
        if self.samples_per_epoch is None:
            return None
        _, world = self.dist_info()
        per_stream = batches_per_stream(self.samples_per_epoch, world, self.num_workers, self.batch_size)
        return per_stream * max(1, self.num_workers)

    # -- loaders

    def _loader(self, split: str) -> SkipCountingLoader:
        self._check(split)
        rank, world = self.dist_info()
        train = split == "train"
        config = ShardStreamConfig(
            split=split,
            urls=tuple(self.shard_urls(split)),
            step=self.sample_step(train),
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
            ShardStream(config),
            totals=self._skips,
            batches_per_epoch=self.train_batches_per_epoch() if train else None,
            progress_fn=self._consumed_batches if train else None,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.persistent_workers,
        )

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


_SHARED_ARGS = tuple(inspect.signature(ShardDataModule.__init__).parameters)[1:]  # all but self


def shared_args(init_locals: dict[str, Any]) -> dict[str, Any]:
    """The :class:`ShardDataModule` arguments out of a subclass ``__init__``'s ``locals()``.

    A subclass lists every argument in its own signature (so that LightningCLI shows them in
    order, with their defaults) and passes the shared ones on with this, not by name again.
    """
    return {name: init_locals[name] for name in _SHARED_ARGS}


class SkipStatsLogger(L.Callback):
    """Logs a shard data module's skip totals (summed over ranks) at each epoch end.

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
        if not isinstance(datamodule, ShardDataModule):
            return
        stats = datamodule.skip_stats(split)
        metrics = {f"data/{split}_skipped_{r}": float(stats[r]) for r in (*REASONS, "total")}
        pl_module.log_dict(metrics, reduce_fx="sum", sync_dist=True, on_epoch=True)
