"""The WebDataset pipeline: shard specs -> this stream's shards -> samples -> decoded -> batches.

A *stream* is one (rank, DataLoader worker) pair; each runs :class:`ShardStream` in its own
process. Its stages, in order:

1. shard URLs: resampled with replacement (``wds.ResampledShards``, seeded per stream), or the
   shard list split explicitly by rank and then by worker (our own splitting, from the rank and
   world size we are given: no reliance on webdataset reading env vars; the spec expansion and
   the split are :mod:`gvc_train.data.shard_split`);
2. tar -> raw samples (``wds.tarfile_samples``), one shard at a time, with a ``handler`` that
   counts and skips unreadable or truncated tars;
3. a shuffle buffer over the *raw* (still compressed) samples, so the buffer costs little memory;
4. decode: the data module's :class:`SampleStep` checks the metadata, decodes the payload once
   and cuts a window (frames for video, latents for latent shards); a sample that fails any
   step is skipped and counted under :func:`~gvc_train.data.skip_stats.skip_reason`, never
   passed on;
5. batching: the step's ``collate`` writes the windows straight into the batch tensor.

Only stage 4 and the batch tensor depend on what the shards hold; the rest is shared by every
shard data module (:mod:`gvc_train.data.shard_datamodule`).

Skips are counted per stream. Each batch carries ``skipped``, the counts since the previous
batch of that stream, and a stream that ends with counts not yet carried sends one last
stats-only item; the main process adds them up
(:class:`~gvc_train.data.skip_stats.SkipTotals`) and never yields the stats-only items, so the
totals are exact whatever the number of workers.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import random
from collections.abc import Callable, Iterator
from typing import Any, ClassVar, TypeVar

import numpy as np
import torch
import webdataset as wds
from torch.utils.data import IterableDataset, get_worker_info

from gvc_train.data.control_batch import control_shapes
from gvc_train.data.sample_format import CAPTION_KEY, META_KEY
from gvc_train.data.shard_split import batches_per_stream, split_for_stream, stable_seed
from gvc_train.data.skip_stats import SkipCounter, SkipSample

log = logging.getLogger(__name__)

M = TypeVar("M")  # a sample format's metadata class

STATS_ONLY = "__stats_only__"  # marks the last item of a stream that only carries skip counts


class NoUsableSamples(RuntimeError):
    """An endless stream (resampled, or cycling to fill an epoch) found nothing it could use."""


class _CountTarErrors:
    """webdataset ``handler``: count the error as a ``tar_error`` skip and carry on."""

    def __init__(self, skips: SkipCounter) -> None:
        self.skips = skips

    def __call__(self, exn: Exception) -> bool:
        self.skips.add("tar_error", f"{type(exn).__name__}: {exn}")
        return True


# ---------------------------------------------------------------------------- the per-sample step


@dataclasses.dataclass
class Sample:
    """One decoded sample: its window (the array that goes into the batch) and what describes it."""

    key: str
    window: np.ndarray  # frames: 3 x T x h x w uint8; latents: C x t x h x w float16
    meta: dict[str, Any]
    caption: str
    controls: dict[str, Any] = dataclasses.field(default_factory=dict)  # cut to the window (control_batch)

    def batch_shape(self) -> tuple[Any, ...]:
        """What must agree within a batch: the window's shape and the stacked controls' shapes."""
        return (self.window.shape, control_shapes(self.controls))


class SampleStep:
    """What a stream does with one raw sample; the only stage that differs between data modules.

    A subclass is plain data (a frozen dataclass), so it pickles into worker processes. Its
    ``decode`` raises to skip a sample: :class:`~gvc_train.data.skip_stats.SkipSample` with a
    reason, or a sample format's own error (see ``skip_reason``); errors of the types in
    ``refused`` end the run instead (data that must never be trained on, such as another
    tokenizer's latents).
    """

    batch_field: ClassVar[str]  # the name of the batch tensor: "video", "latent", ...
    settings: ClassVar[str] = "window and crop"  # what to check when nothing is usable
    refused: ClassVar[tuple[type[Exception], ...]] = ()

    def decode(self, sample: dict[str, Any], rng: random.Random | None) -> Sample:
        """A raw WebDataset sample -> its window; random when ``rng`` is given, else deterministic."""
        raise NotImplementedError

    def stack(self, windows: list[np.ndarray]) -> torch.Tensor:
        """Equal-shape windows -> the float32 batch tensor."""
        raise NotImplementedError

    def collate(self, samples: list[Sample], skipped: dict[str, int], worker: int) -> dict[str, Any]:
        """The batch: the stacked windows under ``batch_field``, then per-sample lists."""
        return {
            self.batch_field: self.stack([s.window for s in samples]),
            "key": [s.key for s in samples],
            "meta": [s.meta for s in samples],
            "caption": [s.caption for s in samples],
            "skipped": skipped,  # this stream's skips since its previous batch
            "worker": worker,
        }


def where(sample: dict[str, Any]) -> str:
    """``"{key} in {shard}"``: how skip messages name a sample."""
    return f"{sample.get('__key__')} in {sample.get('__url__')}"


def members(sample: dict[str, Any]) -> list[str]:
    """The sample's fields (tar member suffixes), for a message about a missing one."""
    return sorted(k for k in sample if not k.startswith("__"))


def parse_meta(sample: dict[str, Any], parse: Callable[[bytes], M]) -> M:
    """The sample's JSON through ``parse``; any failure (json, unicode, type) skips it as ``bad_meta``."""
    try:
        raw = sample.get(META_KEY)
        if raw is None:
            raise ValueError("no json member")
        return parse(raw)
    except Exception as exn:
        raise SkipSample("bad_meta", f"{type(exn).__name__}: {exn}") from exn


def check_fits(
    frames: int, height: int, width: int, window: int | None, crop: tuple[int, int] | None, unit: str = ""
) -> None:
    """Skip, from the metadata alone (before any decode), a sample too short for the window
    (``window`` frames) or too small for the crop; None: no limit. ``unit`` names the frames."""
    if window is not None and frames < window:
        raise SkipSample("too_short", f"{frames} {unit}frames < {window}")
    if crop is not None and (height < crop[0] or width < crop[1]):
        raise SkipSample("too_small", f"{unit}{height}x{width} < crop {crop}")


def make_sample(sample: dict[str, Any], window: np.ndarray, meta: Any, **placement: Any) -> Sample:
    """The decoded sample: ``meta``'s fields, then where the window was cut (``placement``) and the shard."""
    info = {**dataclasses.asdict(meta), **placement, "shard": str(sample.get("__url__"))}
    return Sample(str(sample.get("__key__")), window, info, caption_of(sample))


def caption_of(sample: dict[str, Any]) -> str:
    """The sample's caption text, "" where it has none."""
    caption = sample.get(CAPTION_KEY)
    return caption.decode("utf-8", errors="replace") if isinstance(caption, bytes) else ""


# ---------------------------------------------------------------------------- the stream


@dataclasses.dataclass(frozen=True)
class ShardStreamConfig:
    """Everything one stream needs; plain data, so it pickles into worker processes."""

    split: str  # "train", "val", "test": names the skip counts
    urls: tuple[str, ...]
    step: SampleStep
    batch_size: int
    rank: int
    world_size: int
    random_sampling: bool  # True: shuffle + random window/crop/flip; False: deterministic
    resampled: bool
    samples_per_epoch: int | None  # global; None: one pass over this stream's shards
    shuffle_buffer: int = 64
    seed: int = 0
    drop_last: bool = False  # the last partial batch of a one-pass stream
    max_consecutive_skips: int = 1000


class ShardStream(IterableDataset):
    """One epoch of batches for the calling (rank, worker) stream; see the module docstring."""

    def __init__(self, config: ShardStreamConfig) -> None:
        super().__init__()
        self.config = config
        self.epoch = 0
        self._iterations = 0  # since set_epoch: tells epochs apart in persistent workers
        # (epoch, batches this rank already consumed in it): set by the loader when a run
        # resumes mid-epoch, see SkipCountingLoader.load_state_dict
        self.resume: tuple[int, int] | None = None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)
        self._iterations = 0

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        worker, num_workers = (info.id, info.num_workers) if info is not None else (0, 1)
        epoch_key = (self.epoch, self._iterations)
        role, skip = worker, 0
        if self.resume is not None and self.resume[0] == self.epoch and self._iterations == 0:
            role, skip = resumed_role(worker, num_workers, self.resume[1])
        self._iterations += 1
        return self._batches(role, num_workers, epoch_key, skip)

    # -- stages

    def _batches(self, worker: int, num_workers: int, epoch_key: tuple[int, int], skip: int = 0) -> Iterator[dict[str, Any]]:
        cfg = self.config
        skips = SkipCounter(cfg.split)
        base = (cfg.seed, _split_id(cfg.split), *epoch_key)
        stream_seed = stable_seed(*base, cfg.rank, worker)
        limit = (
            batches_per_stream(cfg.samples_per_epoch, cfg.world_size, num_workers, cfg.batch_size)
            if cfg.samples_per_epoch is not None
            else None
        )
        endless = cfg.resampled or limit is not None
        shuffle_rng = random.Random(stable_seed(stream_seed, 4))
        if cfg.resampled:
            raw = self._shuffled(self._resampled_samples(stable_seed(stream_seed, 1), skips), shuffle_rng)
        else:
            # the shard order must be the same on every rank for the split to be a partition,
            # so its seed leaves out rank and worker
            order = list(cfg.urls)
            if cfg.random_sampling:
                random.Random(stable_seed(*base, 2)).shuffle(order)
            mine = split_for_stream(order, cfg.rank, cfg.world_size, worker, num_workers)
            raw = self._split_samples(
                mine, endless, random.Random(stable_seed(stream_seed, 3)), shuffle_rng, skips
            )
        aug_rng = random.Random(stable_seed(stream_seed, 5)) if cfg.random_sampling else None
        decoded = self._decoded(raw, aug_rng, endless, skips)
        count = 0
        for batch in self._batched(decoded, worker, skips):
            count += 1
            if count > skip:  # a resumed epoch re-makes its first batches and drops them
                yield batch
            if limit is not None and count >= limit:
                break
        leftover = skips.drain()
        if leftover:
            yield {STATS_ONLY: True, "skipped": leftover, "worker": worker}

    @staticmethod
    def _shard_samples(url: str, skips: SkipCounter) -> Iterator[dict[str, Any]]:
        # one shard per call, so a truncated shard's half sample cannot merge with the next one
        return wds.tarfile_samples([{"url": url}], handler=_CountTarErrors(skips))

    def _resampled_samples(self, seed: int, skips: SkipCounter) -> Iterator[dict[str, Any]]:
        cfg = self.config
        shards = wds.ResampledShards(list(cfg.urls), seed=seed, worker_seed=lambda: 0, deterministic=True)
        barren = 0  # shards in a row that gave no sample: all broken or empty would spin forever
        give_up = 10 * len(cfg.urls) + 10
        for shard in shards:
            got = 0
            for sample in self._shard_samples(shard["url"], skips):
                got += 1
                yield sample
            barren = 0 if got else barren + 1
            if barren >= give_up:
                raise NoUsableSamples(
                    f"{cfg.split} data: the last {barren} shards read gave no sample; "
                    f"check the shards ({len(cfg.urls)} of them, e.g. {cfg.urls[0]})"
                )

    def _split_samples(
        self,
        mine: list[str],
        endless: bool,
        order_rng: random.Random,
        shuffle_rng: random.Random,
        skips: SkipCounter,
    ) -> Iterator[dict[str, Any]]:
        while True:
            got = 0
            # shuffled within one pass: the buffer drains at the pass end, so when an epoch is
            # one pass every clip of this stream's shards is seen exactly once
            for sample in self._shuffled(self._samples_of(mine, skips), shuffle_rng):
                got += 1
                yield sample
            if not endless:
                return
            if got == 0:
                raise NoUsableSamples(
                    f"{self.config.split} data: this stream's {len(mine)} shard(s) gave no sample, so it "
                    f"cannot fill the epoch; check {mine[:3]}"
                )
            # endless: go round this stream's own shards again, in a new order
            order_rng.shuffle(mine)

    def _samples_of(self, urls: list[str], skips: SkipCounter) -> Iterator[dict[str, Any]]:
        for url in urls:
            yield from self._shard_samples(url, skips)

    def _shuffled(self, raw: Iterator[dict[str, Any]], rng: random.Random) -> Iterator[dict[str, Any]]:
        cfg = self.config
        if not cfg.random_sampling or cfg.shuffle_buffer < 2:
            return raw
        return wds.filters.shuffle(cfg.shuffle_buffer, cfg.shuffle_buffer, rng=rng)(raw)

    def _decoded(
        self, raw: Iterator[dict[str, Any]], rng: random.Random | None, endless: bool, skips: SkipCounter
    ) -> Iterator[Sample]:
        cfg = self.config
        in_a_row = 0
        for raw_sample in raw:
            sample = self._decode_one(raw_sample, rng, skips)
            if sample is not None:
                in_a_row = 0
                yield sample
                continue
            in_a_row += 1
            if endless and in_a_row >= cfg.max_consecutive_skips:
                raise NoUsableSamples(
                    f"{cfg.split} data: {in_a_row} samples in a row were skipped; the shards hold no "
                    f"usable sample for this {cfg.step.settings} (see the skip warnings)"
                )

    def _batched(self, samples: Iterator[Sample], worker: int, skips: SkipCounter) -> Iterator[dict[str, Any]]:
        cfg = self.config
        batch: list[Sample] = []
        for sample in samples:
            if batch and sample.batch_shape() != batch[0].batch_shape():
                mine, theirs = sample.batch_shape(), batch[0].batch_shape()
                which = 0 if mine[0] != theirs[0] else 1  # the window's shapes, else the controls'
                skips.add("size_mismatch", f"{sample.key}: {mine[which]} vs {theirs[which]}")
                continue
            batch.append(sample)
            if len(batch) == cfg.batch_size:
                yield cfg.step.collate(batch, skips.drain(), worker)
                batch = []
        if batch and not cfg.drop_last:
            yield cfg.step.collate(batch, skips.drain(), worker)

    def _decode_one(self, sample: dict[str, Any], rng: random.Random | None, skips: SkipCounter) -> Sample | None:
        step = self.config.step
        try:
            return step.decode(sample, rng)
        except step.refused:
            raise
        except Exception as exn:  # one bad sample must not end a training run
            skips.add_error(where(sample), exn)
            return None


def resumed_role(worker: int, num_workers: int, consumed: int) -> tuple[int, int]:
    """``(role, skip)`` of a DataLoader worker when an epoch resumes after ``consumed`` batches.

    A DataLoader takes batch ``j`` from worker ``j % W`` and a fresh loader starts at worker 0,
    so worker ``w`` plays the stream that made batch ``consumed + w`` (role ``(w + consumed) % W``)
    and drops the batches that stream had already given: then the resumed epoch yields exactly
    the batches ``consumed, consumed + 1, ...`` of the uninterrupted one, in the same order.
    Dropping means re-reading and decoding them (no model work): exactness costs that much I/O.
    """
    w = max(1, num_workers)
    role = (worker + consumed) % w
    skip = (consumed - role + w - 1) // w if consumed > role else 0
    return role, skip


def _split_id(split: str) -> int:
    return int.from_bytes(hashlib.blake2b(split.encode(), digest_size=4).digest(), "little")


def is_stats_only(item: dict[str, Any]) -> bool:
    return bool(item.get(STATS_ONLY))
