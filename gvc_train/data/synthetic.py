"""``SyntheticVideoDataModule``: deterministic moving-pattern clips, no shards needed.

For smoke tests of a recipe on a cluster (is the launch right, before the data is staged), for
scaling benchmarks that must not measure storage, and for the distributed-equivalence tests.
Each clip is a function of ``(seed, global sample index)`` only: smooth random colour fields
that drift a few pixels per frame.

The global batch of step ``s`` holds samples ``s * G ... s * G + G - 1`` (``G = batch_size x
world_size``) and rank ``r`` gets the contiguous slice ``r * batch_size ...``: the same layout
as :func:`gvc_train.lit.step_guard.step_noise` keys its noise, so a run's result depends on the
global batch, not on how many ranks share it. The training loader is stateful (Lightning saves
its position in checkpoints), so a resumed run continues with the next batch.

Batches follow the ``VideoDataModule`` contract (``video`` ``B x 3 x T x H x W`` in [0, 1],
``key``, ``meta``, ``caption``, ``skipped``, ``worker``) plus ``index``, the global indexes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, IterableDataset

from gvc_train.data.resumable_loader import ResumableEpochs, consumed_batches


def synthetic_clip(index: int, clip_frames: int, height: int, width: int, seed: int = 0) -> torch.Tensor:
    """Clip ``index``: ``3 x T x H x W`` float32 in [0, 1]."""
    digest = hashlib.blake2b(repr((seed, index)).encode(), digest_size=8).digest()
    g = torch.Generator().manual_seed(int.from_bytes(digest, "little") >> 1)
    pad = 8  # the field is larger than the frame, so the drifting window never leaves it
    coarse = torch.rand(1, 3, 6, 6, generator=g)
    field = F.interpolate(coarse, size=(height + 2 * pad, width + 2 * pad), mode="bicubic", align_corners=False)
    field = field.clamp(0, 1)[0]
    dy, dx = (torch.randint(-2, 3, (2,), generator=g)).tolist()
    frames = []
    for t in range(clip_frames):
        top = min(max(pad + dy * t, 0), 2 * pad)
        left = min(max(pad + dx * t, 0), 2 * pad)
        frames.append(field[:, top : top + height, left : left + width])
    return torch.stack(frames, dim=1).contiguous()


class _SyntheticStream(IterableDataset):
    def __init__(self, dm: "SyntheticVideoDataModule", split: str, rank: int, world: int) -> None:
        self.dm, self.split, self.rank, self.world = dm, split, rank, world
        self.epoch, self.skip = 0, 0

    def __iter__(self) -> Iterator[dict[str, Any]]:
        dm = self.dm
        if self.split == "train":
            per_epoch = dm.train_batches_per_epoch(self.world)
            offset = 0
        else:  # the same clips at every validation, so val metrics compare across epochs
            per_epoch = max(1, dm.val_samples // (dm.batch_size * self.world))
            offset = 1 << 40  # validation clips are never training clips
            self.epoch, self.skip = 0, 0
        global_batch = dm.batch_size * self.world
        for step in range(self.skip, per_epoch):
            first = offset + (self.epoch * per_epoch + step) * global_batch + self.rank * dm.batch_size
            index = list(range(first, first + dm.batch_size))
            clips = [synthetic_clip(i, dm.clip_frames, dm.height, dm.width, dm.seed) for i in index]
            yield {
                "video": torch.stack(clips),
                "index": torch.tensor(index),
                "key": [f"synthetic-{i}" for i in index],
                "meta": [{} for _ in index],
                "caption": ["" for _ in index],
                "skipped": {},
                "worker": 0,
            }


class _SyntheticLoader(ResumableEpochs, DataLoader):
    def __init__(self, stream: _SyntheticStream, length: int, trainer: Any) -> None:
        super().__init__(stream, batch_size=None, num_workers=0)
        self._length = length
        train = stream.split == "train"
        self._init_epochs(length, (lambda: consumed_batches(trainer)) if train else None)

    def __len__(self) -> int:
        return self._length

    def __iter__(self) -> Iterator[dict[str, Any]]:
        self.dataset.epoch, self.dataset.skip = self._start_epoch()
        return super().__iter__()


class SyntheticVideoDataModule(L.LightningDataModule):
    """Synthetic clips; see the module docstring.

    Args:
        clip_frames, height, width: clip shape (T, H, W).
        batch_size: clips per batch per rank.
        samples_per_epoch: global training samples per epoch, rounded down to whole global batches.
        val_samples: global validation samples.
        seed: selects the clips.
    """

    def __init__(
        self,
        clip_frames: int = 9,
        height: int = 64,
        width: int = 64,
        batch_size: int = 4,
        samples_per_epoch: int = 256,
        val_samples: int = 8,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if min(clip_frames, height, width, batch_size) < 1:
            raise ValueError("clip_frames, height, width and batch_size must be positive")
        self.clip_frames, self.height, self.width = clip_frames, height, width
        self.batch_size, self.samples_per_epoch, self.val_samples, self.seed = batch_size, samples_per_epoch, val_samples, seed
        self.shard_specs = {"train": f"synthetic(seed={seed})", "val": None, "test": None}

    def _world(self) -> tuple[int, int]:
        if self.trainer is not None:
            return self.trainer.global_rank, self.trainer.world_size
        return 0, 1

    def train_batches_per_epoch(self, world: int | None = None) -> int:
        world = self._world()[1] if world is None else world
        per_epoch = self.samples_per_epoch // (self.batch_size * world)
        if per_epoch < 1:
            raise ValueError(
                f"samples_per_epoch={self.samples_per_epoch} is less than one global batch "
                f"({self.batch_size} x {world} ranks)"
            )
        return per_epoch

    def _loader(self, split: str) -> _SyntheticLoader:
        rank, world = self._world()
        stream = _SyntheticStream(self, split, rank, world)
        length = self.train_batches_per_epoch(world) if split == "train" else max(1, self.val_samples // (self.batch_size * world))
        return _SyntheticLoader(stream, length, self.trainer)

    def train_dataloader(self) -> _SyntheticLoader:
        return self._loader("train")

    def val_dataloader(self) -> _SyntheticLoader:
        return self._loader("val")

    def test_dataloader(self) -> _SyntheticLoader:
        return self._loader("test")
