"""The WebDataset pipeline: shard specs -> this stream's shards -> samples -> clips -> batches.

A *stream* is one (rank, DataLoader worker) pair; each runs :class:`ClipStream` in its own
process. Its stages, in order:

1. shard URLs: resampled with replacement (``wds.ResampledShards``, seeded per stream), or the
   shard list split explicitly by rank and then by worker (our own splitting, from the rank and
   world size we are given: no reliance on webdataset reading env vars);
2. tar -> raw samples (``wds.tarfile_samples``), one shard at a time, with a ``handler`` that
   counts and skips unreadable or truncated tars;
3. a shuffle buffer over the *raw* (still compressed) samples, so the buffer costs little memory;
4. decode: meta checked, frames decoded once, a T-frame window cropped (uint8); a sample that
   fails any step is skipped and counted, never passed on;
5. batching: windows are converted to float straight into the batch tensor.

Skips are counted per stream. Each batch carries ``skipped``, the counts since the previous
batch of that stream, and a stream that ends with counts not yet carried sends one last
stats-only item; the main process adds them up (:class:`SkipTotals`) and never yields the
stats-only items, so the totals are exact whatever the number of workers.
"""

from __future__ import annotations

import collections
import dataclasses
import glob
import hashlib
import logging
import math
import os
import random
import re
import time
from collections.abc import Iterator, Sequence
from typing import Any

import braceexpand
import numpy as np
import torch
import webdataset as wds
from torch.utils.data import IterableDataset, get_worker_info

from gvc_train.data.clip_codec import ClipDecodeError, decode_clip
from gvc_train.data.sample_format import CAPTION_KEY, FRAMES_PREFIX, META_KEY, ClipMeta, frames_field
from gvc_train.data.transforms import ClipSampler, ClipTooShort, ClipTooSmall, to_video_batch

log = logging.getLogger(__name__)

# Why a sample (or a whole tar) was skipped. Fixed, so every rank logs the same metric names.
REASONS = (
    "tar_error",  # a shard that cannot be opened or read to its end (truncated, corrupt, missing)
    "bad_meta",  # json missing, unparsable, incomplete, or disagreeing with the decoded frames
    "missing_frames",  # no frames.<fmt> member (e.g. the tail of a truncated tar)
    "decode_error",  # ClipDecodeError: the frames payload is damaged or of an unknown format
    "too_short",  # fewer frames than clip_frames at frame_stride need
    "too_small",  # frames smaller than the crop
    "size_mismatch",  # full-frame batches (crop_size=None) whose clips differ in size
    "other",  # any other exception while decoding one sample (logged with its traceback)
)
STATS_ONLY = "__stats_only__"  # marks the last item of a stream that only carries skip counts
_DETAIL_LOGS_PER_REASON = 5  # per process: the first few skips are logged with key and error


class NoUsableSamples(RuntimeError):
    """An endless stream (resampled, or cycling to fill an epoch) found nothing it could use."""


# ---------------------------------------------------------------------------- shard specs


_REMOTE = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]+:")  # pipe:, s3://, http://; not C:\ paths


def expand_shards(spec: str | os.PathLike | Sequence[str | os.PathLike]) -> list[str]:
    """Shard specs -> the ordered list of shard URLs.

    Each spec is brace-expanded (``shard-{000000..000009}.tar``), then a local one is globbed
    (webdataset does not glob); a directory stands for the ``*.tar`` files in it. ``pipe:``
    and ``scheme://`` URLs are passed through after brace expansion. Glob matches are sorted so
    every rank builds the same list, which the rank/worker split relies on; duplicates are
    dropped for the same reason (a shard listed twice would be read twice).
    """
    specs = [spec] if isinstance(spec, (str, os.PathLike)) else list(spec)
    if not specs:
        raise ValueError("no shard spec given")
    urls: list[str] = []
    for one in specs:
        for item in braceexpand.braceexpand(os.fspath(one)):
            if _REMOTE.match(item):
                urls.append(item)
                continue
            path = os.path.expanduser(item)
            if os.path.isdir(path):
                found = sorted(glob.glob(os.path.join(glob.escape(path), "*.tar")))
                if not found:
                    raise FileNotFoundError(f"shard directory {item!r} holds no *.tar file")
            elif glob.has_magic(path):
                found = sorted(p for p in glob.glob(path) if os.path.isfile(p))
                if not found:
                    raise FileNotFoundError(f"no shard matches {item!r}")
            elif os.path.isfile(path):
                found = [path]
            else:
                raise FileNotFoundError(f"shard {item!r} does not exist")
            urls.extend(found)
    unique = list(dict.fromkeys(urls))
    if len(unique) < len(urls):
        log.info("shard specs name %d shard(s) more than once; each is read once", len(urls) - len(unique))
    return unique


def streams_per_epoch(world_size: int, num_workers: int) -> int:
    """Independent streams feeding one epoch: every DataLoader worker of every rank."""
    return world_size * max(1, num_workers)


def batches_per_stream(samples_per_epoch: int, world_size: int, num_workers: int, batch_size: int) -> int:
    """Batches each stream yields so that the epoch is (at most) ``samples_per_epoch`` samples.

    ``samples_per_epoch`` is global (all ranks). Each of the ``world_size * num_workers``
    streams yields ``samples_per_epoch // (world_size * num_workers * batch_size)`` batches;
    the floor makes the count the same on every rank (it depends on nothing rank-specific), so
    no rank reaches the epoch end while another still waits in a gradient all-reduce. The real
    epoch is that count times ``world_size * num_workers * batch_size`` samples, rounded down
    from the request by less than one batch per stream.
    """
    per = samples_per_epoch // (streams_per_epoch(world_size, num_workers) * batch_size)
    if per < 1:
        raise ValueError(
            f"samples_per_epoch={samples_per_epoch} is less than one batch for each of "
            f"{world_size} rank(s) x {max(1, num_workers)} worker(s) x batch_size {batch_size}"
        )
    return per


def split_for_stream(urls: Sequence[str], rank: int, world_size: int, worker: int, num_workers: int) -> list[str]:
    """This stream's shards: every ``world_size``-th from ``rank``, then every worker-th of those.

    Over all (rank, worker) pairs this is a partition of ``urls``: disjoint, covering all.
    """
    return list(urls)[rank::world_size][worker::num_workers]


def check_splittable(num_shards: int, world_size: int, num_workers: int) -> None:
    """Refuse (clearly, at setup) a split that would leave a training stream without shards."""
    streams = streams_per_epoch(world_size, num_workers)
    if num_shards < streams:
        raise ValueError(
            f"{num_shards} shards cannot be split over {world_size} ranks x {max(1, num_workers)} "
            "workers; make more shards with gvc-shard --maxcount or use resampled=True"
        )


def stable_seed(*parts: int) -> int:
    """A 63-bit seed from integers, the same in every process (``hash()`` of str is not)."""
    digest = hashlib.blake2b(repr(tuple(int(p) for p in parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


# ---------------------------------------------------------------------------- skip counting


_logged_per_reason: collections.Counter[str] = collections.Counter()  # this process's detail logs


class SkipCounter:
    """One stream's skips not yet carried by a batch.

    One per stream iteration, never module-global: counts cannot leak from a stream that was
    abandoned (an exception, a ``break``) into another, or into a forked worker.
    """

    def __init__(self, split: str) -> None:
        self.split = split
        self._pending: collections.Counter[str] = collections.Counter()

    def add(self, reason: str, detail: str) -> None:
        assert reason in REASONS, reason
        self._pending[reason] += 1
        _logged_per_reason[reason] += 1
        logged = _logged_per_reason[reason]
        log.log(
            logging.WARNING if logged <= _DETAIL_LOGS_PER_REASON else logging.DEBUG,
            "%s data: skipped (%s): %s", self.split, reason, detail,
        )
        if logged == _DETAIL_LOGS_PER_REASON:
            log.warning("%s data: further %s skips in this process are logged at DEBUG", self.split, reason)

    def drain(self) -> dict[str, int]:
        counts, self._pending = dict(self._pending), collections.Counter()
        return counts


class SkipTotals:
    """Skip totals of the main process, fed by the counts that batches carry.

    Warns when new skips arrive, at most once per ``warn_every_s`` seconds.
    """

    def __init__(self, warn_every_s: float = 60.0) -> None:
        self.warn_every_s = warn_every_s
        self._counts: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
        self._last_warning = -math.inf

    def add(self, split: str, counts: dict[str, int]) -> None:
        if not counts:
            return
        self._counts[split].update(counts)
        now = time.monotonic()
        if now - self._last_warning >= self.warn_every_s:
            self._last_warning = now
            totals = self.totals(split)
            detail = ", ".join(f"{r}={totals[r]}" for r in REASONS if totals[r])
            log.warning("%s data: %d sample(s)/tar(s) skipped so far (%s)", split, totals["total"], detail)

    def totals(self, split: str | None = None) -> dict[str, int]:
        """Counts per reason (every reason, zeros included) and ``total``; all splits if None."""
        merged: collections.Counter[str] = collections.Counter()
        for name, counts in self._counts.items():
            if split is None or name == split:
                merged.update(counts)
        out = {reason: merged[reason] for reason in REASONS}
        out["total"] = sum(out.values())
        return out


class _CountTarErrors:
    """webdataset ``handler``: count the error as a ``tar_error`` skip and carry on."""

    def __init__(self, skips: SkipCounter) -> None:
        self.skips = skips

    def __call__(self, exn: Exception) -> bool:
        self.skips.add("tar_error", f"{type(exn).__name__}: {exn}")
        return True


# ---------------------------------------------------------------------------- the stream


@dataclasses.dataclass(frozen=True)
class StreamConfig:
    """Everything one stream needs; plain data, so it pickles into worker processes."""

    split: str  # "train", "val", "test": names the skip counts
    urls: tuple[str, ...]
    sampler: ClipSampler
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


@dataclasses.dataclass
class _Clip:
    key: str
    window: np.ndarray  # 3 x T x h x w uint8
    meta: dict[str, Any]
    caption: str


class ClipStream(IterableDataset):
    """One epoch of batches for the calling (rank, worker) stream; see the module docstring."""

    def __init__(self, config: StreamConfig) -> None:
        super().__init__()
        self.config = config
        self.epoch = 0
        self._iterations = 0  # since set_epoch: tells epochs apart in persistent workers

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)
        self._iterations = 0

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        worker, num_workers = (info.id, info.num_workers) if info is not None else (0, 1)
        epoch_key = (self.epoch, self._iterations)
        self._iterations += 1
        return self._batches(worker, num_workers, epoch_key)

    # -- stages

    def _batches(self, worker: int, num_workers: int, epoch_key: tuple[int, int]) -> Iterator[dict[str, Any]]:
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
        clips = self._decoded(raw, aug_rng, endless, skips)
        count = 0
        for batch in self._batched(clips, worker, skips):
            yield batch
            count += 1
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
    ) -> Iterator[_Clip]:
        cfg = self.config
        in_a_row = 0
        for sample in raw:
            clip = decode_sample(sample, cfg.sampler, rng, skips)
            if clip is not None:
                in_a_row = 0
                yield clip
                continue
            in_a_row += 1
            if endless and in_a_row >= cfg.max_consecutive_skips:
                raise NoUsableSamples(
                    f"{cfg.split} data: {in_a_row} samples in a row were skipped; the shards hold no "
                    "usable clip for this clip_frames/frame_stride/crop_size (see the skip warnings)"
                )

    def _batched(self, clips: Iterator[_Clip], worker: int, skips: SkipCounter) -> Iterator[dict[str, Any]]:
        cfg = self.config
        batch: list[_Clip] = []
        for clip in clips:
            if batch and clip.window.shape != batch[0].window.shape:
                skips.add("size_mismatch", f"{clip.key}: {clip.window.shape} vs {batch[0].window.shape}")
                continue
            batch.append(clip)
            if len(batch) == cfg.batch_size:
                yield collate(batch, skips.drain(), worker)
                batch = []
        if batch and not cfg.drop_last:
            yield collate(batch, skips.drain(), worker)


def _split_id(split: str) -> int:
    return int.from_bytes(hashlib.blake2b(split.encode(), digest_size=4).digest(), "little")


# ---------------------------------------------------------------------------- one sample


def _checked_meta(raw: bytes | None) -> ClipMeta:
    if raw is None:
        raise ValueError("no json member")
    meta = ClipMeta.from_json(raw)
    for name in ("first_frame", "num_frames", "width", "height"):
        value = getattr(meta, name)
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise ValueError(f"{name}={value!r} is not a non-negative integer")
    if not isinstance(meta.fps, (int, float)) or isinstance(meta.fps, bool):
        raise ValueError(f"fps={meta.fps!r} is not a number")
    return meta


def decode_sample(
    sample: dict[str, Any], sampler: ClipSampler, rng: random.Random | None, skips: SkipCounter
) -> _Clip | None:
    """A raw WebDataset sample -> a cropped clip, or None (the skip counted under its reason).

    Length and size are checked from the metadata before the frames are decoded, so a clip that
    cannot be used costs no decode.
    """
    key = str(sample.get("__key__"))
    where = f"{key} in {sample.get('__url__')}"
    try:
        meta = _checked_meta(sample.get(META_KEY))
    except Exception as exn:  # json/unicode/type errors all mean the same: unusable metadata
        skips.add("bad_meta", f"{where}: {type(exn).__name__}: {exn}")
        return None
    field = frames_field(sample)
    if field is None:
        skips.add("missing_frames", f"{where}: members {sorted(k for k in sample if not k.startswith('__'))}")
        return None
    if meta.num_frames < sampler.span:
        skips.add("too_short", f"{where}: {meta.num_frames} frames < {sampler.span}")
        return None
    if sampler.crop_size is not None and (meta.height < sampler.crop_size[0] or meta.width < sampler.crop_size[1]):
        skips.add("too_small", f"{where}: {meta.height}x{meta.width} < crop {sampler.crop_size}")
        return None
    try:
        frames = decode_clip(field[len(FRAMES_PREFIX) :], sample[field])
        if frames.shape[:3] != (meta.num_frames, meta.height, meta.width):
            skips.add("bad_meta", f"{where}: frames {frames.shape} disagree with {meta}")
            return None
        window, win = sampler(frames, rng)
    except ClipDecodeError as exn:
        skips.add("decode_error", f"{where}: {exn}")
        return None
    except ClipTooShort as exn:
        skips.add("too_short", f"{where}: {exn}")
        return None
    except ClipTooSmall as exn:
        skips.add("too_small", f"{where}: {exn}")
        return None
    except Exception as exn:  # one bad sample must not end a training run
        log.debug("unexpected error decoding %s", where, exc_info=True)
        skips.add("other", f"{where}: {type(exn).__name__}: {exn}")
        return None
    caption = sample.get(CAPTION_KEY)
    info = dataclasses.asdict(meta)
    info.update(
        window_start=win.start,
        frame_stride=sampler.frame_stride,
        crop_top=win.top,
        crop_left=win.left,
        flipped=win.flipped,
        shard=str(sample.get("__url__")),
    )
    return _Clip(
        key=key,
        window=window,
        meta=info,
        caption=caption.decode("utf-8", errors="replace") if isinstance(caption, bytes) else "",
    )


def collate(clips: list[_Clip], skipped: dict[str, int], worker: int) -> dict[str, Any]:
    """The batch contract: ``video`` B x 3 x T x H x W float32 in [0, 1], then per-clip lists."""
    return {
        "video": to_video_batch([c.window for c in clips]),
        "key": [c.key for c in clips],
        "meta": [c.meta for c in clips],
        "caption": [c.caption for c in clips],
        "skipped": skipped,  # this stream's skips since its previous batch
        "worker": worker,
    }


def is_stats_only(item: dict[str, Any]) -> bool:
    return bool(item.get(STATS_ONLY))

