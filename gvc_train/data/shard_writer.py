"""Cut videos into clips, code them losslessly and write WebDataset shards: ``write_shards``.

Each input video is read and its clips encoded in a worker process (the pool is
:mod:`gvc_train.data.shard_workers`); the shards are written by the calling process, always in
input order (clips of input 0, then input 1, ...), so a given input list gives the same shards
byte for byte whatever the worker count. Clips of sources ahead of the one being written are
held up to ``shard_workers.HELD_BYTES``, which keeps memory bounded.

Shards are ``{prefix}-%06d.tar``, each written as ``.partial`` and renamed when complete;
``index.json`` (:class:`~gvc_train.data.sample_format.ShardIndex`) is written last, also by
rename, so its presence means the directory is complete.
"""

from __future__ import annotations

import dataclasses
import io
import os
import re
import sys
import tarfile
from collections import defaultdict
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np
from tqdm import tqdm

from gvc_train import strict_json
from gvc_train.data import clip_codec, shard_workers
from gvc_train.data.sample_format import (
    CAPTION_KEY,
    FRAMES_PREFIX,
    INDEX_FILE,
    META_KEY,
    ClipMeta,
    ShardIndex,
    ShardInfo,
    safe_stem,
    sample_key,
)
from gvc_train.data.video_io import DEFAULT_PNG_FPS, VideoReader, VideoReadError, find_sources

_TAR_BLOCK = 512
_PREFIX_RE = re.compile(r"^[A-Za-z0-9_-]+$")


class NothingWrittenError(ValueError):
    """No input gave a single clip; ``index`` lists what was skipped and why."""

    def __init__(self, message: str, index: ShardIndex) -> None:
        super().__init__(message)
        self.index = index


@dataclasses.dataclass(frozen=True)
class ShardOptions:
    clip_frames: int = 17
    overlap: int = 0  # frames shared by consecutive clips of a video
    maxcount: int = 10_000  # samples per shard
    maxsize: int = 1 << 30  # bytes per shard (a lone sample bigger than this still gets a shard)
    workers: int = 1
    resize_short: int | None = None  # area-downscale so the short side is this; never upscales
    max_frames_per_video: int | None = None
    prefix: str = "shard"
    relative: bool = False  # ClipMeta.source relative to its input (a file input: its basename)
    png_fps: float = DEFAULT_PNG_FPS
    level: int = clip_codec.DEFAULT_LEVEL
    overwrite: bool = False

    def check(self) -> None:
        if self.clip_frames < 1:
            raise ValueError(f"clip_frames must be >= 1, got {self.clip_frames}")
        if not 0 <= self.overlap < self.clip_frames:
            raise ValueError(f"overlap must be in [0, clip_frames), got {self.overlap} with clip_frames {self.clip_frames}")
        if self.maxcount < 1 or self.maxsize < 1:
            raise ValueError(f"maxcount and maxsize must be >= 1, got {self.maxcount} and {self.maxsize}")
        if self.workers < 1:
            raise ValueError(f"workers must be >= 1, got {self.workers}")
        if self.resize_short is not None and self.resize_short < 2:
            raise ValueError(f"resize_short must be >= 2, got {self.resize_short}")
        if self.max_frames_per_video is not None and self.max_frames_per_video < 1:
            raise ValueError(f"max_frames_per_video must be >= 1, got {self.max_frames_per_video}")
        if not _PREFIX_RE.match(self.prefix):
            raise ValueError(f"prefix must match [A-Za-z0-9_-]+, got {self.prefix!r}")


@dataclasses.dataclass(frozen=True)
class Source:
    """One video to shard: where to read it, what to record, its key stem and caption."""

    path: str
    name: str  # ClipMeta.source
    stem: str  # unique among the run's sources, already key-safe
    caption: str | None


@dataclasses.dataclass(frozen=True)
class EncodedClip:
    key: str
    fmt: str
    payload: bytes
    meta: ClipMeta
    caption: str | None

    def sample(self) -> dict[str, Any]:
        sample: dict[str, Any] = {
            "__key__": self.key,
            FRAMES_PREFIX + self.fmt: self.payload,
            META_KEY: self.meta.to_json(),
        }
        if self.caption:
            sample[CAPTION_KEY] = self.caption.encode("utf-8")
        return sample


@dataclasses.dataclass(frozen=True)
class SourceReport:
    source: str
    clips: int
    frames: int  # stored in clips (overlapping frames counted in each clip)
    frames_read: int
    width: int | None
    height: int | None
    fps: float | None
    caption: bool
    error: str | None  # why reading stopped (or why there is no clip), None when all went well


# ---- inputs ------------------------------------------------------------------------------


def collect_sources(
    inputs: Sequence[str | os.PathLike], relative: bool = False
) -> tuple[list[Source], list[dict[str, str]]]:
    """Expand inputs (files, PNG folders, directory trees) into sources; also the inputs skipped."""
    found_sources: list[tuple[str, str, str | None]] = []  # path, path relative to its input, caption
    skipped: list[dict[str, str]] = []
    seen_paths: set[str] = set()
    for given in map(os.fspath, inputs):
        if not os.path.exists(given):
            skipped.append({"source": given, "reason": "no such file or directory"})
            continue
        found = find_sources(given)
        if not found:
            skipped.append({"source": given, "reason": "directory holds no videos or PNG folders"})
            continue
        walked = os.path.isdir(given) and found != [given]
        for path in found:
            real = os.path.realpath(path)
            if real in seen_paths:
                skipped.append({"source": path, "reason": "given more than once"})
                continue
            seen_paths.add(real)
            rel = os.path.relpath(path, given) if walked else os.path.basename(os.path.normpath(path))
            try:
                caption = _read_caption(path)
            except ValueError as exc:
                skipped.append({"source": path, "reason": str(exc)})
                continue
            found_sources.append((path, rel, caption))
    stems = _key_stems([(path, rel) for path, rel, _ in found_sources])
    sources = [
        Source(path, rel if relative else path, stem, caption)
        for (path, rel, caption), stem in zip(found_sources, stems)
    ]
    return sources, skipped


def _key_stems(paths: list[tuple[str, str]]) -> list[str]:
    """Unique, key-safe stems: the path relative to its input (a file input: its name), without
    the video extension; names that collide take parent folders until they differ, so that
    Vimeo-90k's many ``0001`` folders become ``00001_0001``, ``00002_0001``, ...
    """

    def parts_of(path: str) -> list[str]:
        full = os.path.abspath(path)
        if not os.path.isdir(full):
            full = os.path.splitext(full)[0]
        return [p for p in full.split(os.sep) if p]

    parts = [parts_of(path) for path, _ in paths]
    depth = [len([p for p in rel.split(os.sep) if p not in ("", ".")]) or 1 for _, rel in paths]
    while True:
        stems = [safe_stem("_".join(p[-d:])) for p, d in zip(parts, depth)]
        counts: dict[str, int] = defaultdict(int)
        for stem in stems:
            counts[stem] += 1
        grow = [i for i, stem in enumerate(stems) if counts[stem] > 1 and depth[i] < len(parts[i])]
        if not grow:
            break
        for i in grow:
            depth[i] += 1
    seen: set[str] = set()
    unique = []
    for stem in stems:  # still equal (e.g. "a b" and "a_b"): number them, in input order
        candidate, n = stem, 2
        while candidate in seen:
            candidate, n = f"{stem}_{n}", n + 1
        seen.add(candidate)
        unique.append(candidate)
    return unique


def caption_path(path: str) -> str:
    """``clip.mp4`` -> ``clip.txt``; a PNG folder ``seq/`` -> ``seq.txt`` beside it."""
    path = os.path.normpath(path)
    return path + ".txt" if os.path.isdir(path) else os.path.splitext(path)[0] + ".txt"


def _read_caption(path: str) -> str | None:
    txt = caption_path(path)
    if not os.path.isfile(txt):
        return None
    try:
        with open(txt, encoding="utf-8") as f:
            text = f.read().strip()
    except UnicodeDecodeError:
        raise ValueError(f"caption {txt} is not UTF-8 text") from None
    except OSError as exc:
        raise ValueError(f"caption {txt} cannot be read ({exc.strerror})") from None
    return text or None


# ---- one source -> clips (runs in a worker) ------------------------------------------------


def shard_source(source: Source, opts: ShardOptions) -> Iterator[EncodedClip | SourceReport]:
    """Yield the encoded clips of one source, then its report; never raises for bad input."""
    n, stride = opts.clip_frames, opts.clip_frames - opts.overlap
    clips = frames_read = 0
    info = None
    error: str | None = None
    try:
        # FFmpeg picks the decoder thread count, in workers as inline: with other counts a
        # truncated stream can end with a different error, and reports must not depend on it.
        with VideoReader(source.path, opts.resize_short, opts.png_fps) as reader:
            info = reader.info
            window: list[np.ndarray] = []
            first = 0
            for frame in reader.frames(opts.max_frames_per_video):
                window.append(frame)
                frames_read += 1
                if len(window) < n:
                    continue
                fmt, payload = clip_codec.encode_clip(np.stack(window), opts.level)
                meta = ClipMeta(source.name, first, n, info.fps, info.width, info.height)
                yield EncodedClip(sample_key(source.stem, first), fmt, payload, meta, source.caption)
                clips += 1
                window = window[stride:]  # keep the `overlap` frames the next clip shares
                first += stride
    except VideoReadError as exc:
        error = exc.reason
    except Exception as exc:  # a bug or an odd library failure: report it, keep the run going
        error = f"unexpected {type(exc).__name__}: {' '.join(str(exc).split())}"
    if clips == 0 and error is None:
        error = f"only {frames_read} frames, fewer than clip_frames={n}"
    yield SourceReport(
        source.name,
        clips,
        clips * n,
        frames_read,
        info.width if info else None,
        info.height if info else None,
        info.fps if info else None,
        source.caption is not None,
        error,
    )


# ---- many sources, in order, through worker processes (gvc_train.data.shard_workers) -----


def _run(
    sources: list[Source], opts: ShardOptions, workers: int, work: Callable[..., Iterator[Any]] = shard_source
) -> Iterator[Any]:
    """Every source's clips then its report, in input order; ``workers > 1``: in worker processes."""
    if workers <= 1:
        return shard_workers.run_inline(sources, work, opts)
    return shard_workers.run_parallel(
        sources,
        work,
        opts,
        workers,
        is_last=lambda item: isinstance(item, SourceReport),
        held_bytes=lambda item: 0 if isinstance(item, SourceReport) else len(item.payload),
        lost=lambda index, clips, reason: _lost(sources[index], reason, opts, clips),
    )


def _lost(source: Source, reason: str, opts: ShardOptions, clips: int) -> SourceReport:
    """The report of a source whose worker died after sending ``clips`` clips (they are kept)."""
    n, stride = opts.clip_frames, opts.clip_frames - opts.overlap
    frames_read = (clips - 1) * stride + n if clips else 0
    return SourceReport(source.name, clips, clips * n, frames_read, None, None, None, source.caption is not None, reason)


# ---- shards -------------------------------------------------------------------------------


class ShardSink:
    """Writes samples into ``{prefix}-%06d.tar`` files, rotating on count and size."""

    def __init__(self, out_dir: str, prefix: str, maxcount: int, maxsize: int) -> None:
        self.out_dir, self.prefix, self.maxcount, self.maxsize = out_dir, prefix, maxcount, maxsize
        self.shards: list[ShardInfo] = []
        self._tar: Any = None
        self._file: Any = None
        self._count = self._frames = self._size = 0

    def write(self, clip: EncodedClip) -> None:
        sample = clip.sample()
        size = sum(_TAR_BLOCK + -(-len(v) // _TAR_BLOCK) * _TAR_BLOCK for k, v in sample.items() if k != "__key__")
        end = 2 * _TAR_BLOCK  # the end-of-archive blocks
        if self._tar is not None and (
            self._count >= self.maxcount or self._size + size + end > self.maxsize
        ):
            self._finish()
        if self._tar is None:
            self._start()
        self._add(sample)
        self._count += 1
        self._frames += clip.meta.num_frames
        self._size += size

    def close(self) -> list[ShardInfo]:
        if self._tar is not None:
            self._finish()
        return self.shards

    def abort(self) -> None:
        """Drop the shard being written (its ``.partial`` file); finished shards stay."""
        if self._tar is None:
            return
        self._tar = None
        try:
            self._file.close()
        finally:
            if os.path.exists(self._partial):
                os.remove(self._partial)

    def _start(self) -> None:
        self._name = f"{self.prefix}-{len(self.shards):06d}.tar"
        self._partial = os.path.join(self.out_dir, self._name + ".partial")
        self._file = open(self._partial, "wb")
        self._tar = tarfile.open(fileobj=self._file, mode="w|", format=tarfile.USTAR_FORMAT)
        self._count = self._frames = self._size = 0

    def _add(self, sample: dict[str, Any]) -> None:
        # The layout of webdataset.TarWriter (members "<key>.<field>", fields sorted, ustar),
        # written with tarfile directly: importing webdataset pulls in torch (3 s, 500 MB per
        # process) for what is a plain tar. mtime is fixed so that shards are reproducible.
        key = sample["__key__"]
        for field in sorted(k for k in sample if k != "__key__"):
            data = sample[field]
            info = tarfile.TarInfo(f"{key}.{field}")
            info.size, info.mtime, info.mode = len(data), 0, 0o444
            self._tar.addfile(info, io.BytesIO(data))

    def _finish(self) -> None:
        self._tar.close()
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        final = os.path.join(self.out_dir, self._name)
        os.replace(self._partial, final)
        self.shards.append(ShardInfo(self._name, self._count, self._frames, os.path.getsize(final)))
        self._tar = None


def _prepare_out_dir(out_dir: str, prefix: str, overwrite: bool) -> None:
    os.makedirs(out_dir, exist_ok=True)
    ours = re.compile(rf"^{re.escape(prefix)}-\d{{6}}\.tar(\.partial)?$")
    existing = sorted(n for n in os.listdir(out_dir) if ours.match(n) or n == INDEX_FILE)
    finished = [n for n in existing if not n.endswith(".partial")]
    if finished and not overwrite:
        raise FileExistsError(
            f"{out_dir} already holds {', '.join(finished[:3])}{' ...' if len(finished) > 3 else ''}; "
            "pass overwrite=True (--overwrite) to replace them"
        )
    # The index goes first: a run interrupted while deleting must not leave a stale "complete" marker.
    for name in sorted(existing, key=lambda n: n != INDEX_FILE):
        os.remove(os.path.join(out_dir, name))


# ---- the whole run ------------------------------------------------------------------------


def write_shards(
    inputs: Iterable[str | os.PathLike],
    out_dir: str | os.PathLike,
    options: ShardOptions | None = None,
    progress: bool | None = None,
    log: Callable[[str], None] | None = None,
    **overrides: Any,
) -> ShardIndex:
    """Shard ``inputs`` into ``out_dir``; returns the index also written as ``out_dir/index.json``.

    ``options`` fields can also be given as keywords (``clip_frames=9, workers=2``).
    ``progress``: a tqdm bar (None: only on a terminal). ``log`` receives one line per input
    skipped or damaged (default: stderr). Raises ValueError for bad options, FileExistsError
    for an occupied ``out_dir`` without ``overwrite``, and NothingWrittenError (its ``index``
    holds the reasons) when no input gave a clip; in that case no index.json is written.
    """
    opts = dataclasses.replace(options or ShardOptions(), **overrides)
    opts.check()
    return write_samples(inputs, out_dir, opts, shard_source, progress=progress, log=log)


def write_samples(
    inputs: Iterable[str | os.PathLike],
    out_dir: str | os.PathLike,
    opts: ShardOptions,
    work: Callable[[Source, Any], Iterator[Any]],
    *,
    progress: bool | None = None,
    log: Callable[[str], None] | None = None,
    frame_format: str = clip_codec.FORMAT_RGBDZ,
    index_extra: dict[str, Any] | None = None,
) -> ShardIndex:
    """``write_shards`` for any ``work(source, opts)`` (module-level, it runs in workers) that
    yields a source's samples (objects with ``payload``, ``meta.num_frames`` and ``sample()``,
    like :class:`EncodedClip`) then its :class:`SourceReport`. ``index_extra``: more top-level
    entries for index.json (``ShardIndex.load`` ignores them). The latent shard writer
    (:mod:`gvc_train.data.latent_shards`) is the other user.
    """
    out_dir = os.fspath(out_dir)
    say = log or (lambda line: tqdm.write(line, file=sys.stderr))
    _prepare_out_dir(out_dir, opts.prefix, opts.overwrite)
    sources, skipped = collect_sources(list(inputs), opts.relative)
    for entry in skipped:
        say(f"skipped {entry['source']}: {entry['reason']}")

    sink = ShardSink(out_dir, opts.prefix, opts.maxcount, opts.maxsize)
    reports: list[SourceReport] = []
    workers = min(opts.workers, len(sources))
    items = _run(sources, opts, workers, work)
    bar = tqdm(total=len(sources), unit="video", disable=None if progress is None else not progress, file=sys.stderr)
    clips = 0
    try:
        for item in items:
            if not isinstance(item, SourceReport):
                sink.write(item)
                clips += 1
                continue
            reports.append(item)
            bar.update(1)
            bar.set_postfix(clips=clips, refresh=False)
            if item.error and item.clips:
                say(f"damaged {item.source}: {item.error} (clips kept from before it: {item.clips})")
            elif item.error:
                say(f"skipped {item.source}: {item.error}")
        shards = sink.close()
    except BaseException:
        sink.abort()
        raise
    finally:
        bar.close()
        if hasattr(items, "close"):
            items.close()  # stops worker processes if we leave early

    index = _make_index(opts, shards, reports, skipped, frame_format)
    if index.total_clips == 0:
        first = index.skipped[0]["reason"] if index.skipped else "no inputs"
        raise NothingWrittenError(
            f"nothing written: none of {len(index.skipped)} inputs gave a clip (first: {first})", index
        )
    tmp = os.path.join(out_dir, INDEX_FILE + ".partial")
    text = index.to_json()
    if index_extra:
        text = strict_json.dumps({**dataclasses.asdict(index), **index_extra}, indent=1, sort_keys=True) + "\n"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, os.path.join(out_dir, INDEX_FILE))
    return index


def _make_index(
    opts: ShardOptions,
    shards: list[ShardInfo],
    reports: list[SourceReport],
    skipped: list[dict[str, str]],
    frame_format: str = clip_codec.FORMAT_RGBDZ,
) -> ShardIndex:
    written = [dataclasses.asdict(r) for r in reports if r.clips]
    skipped = skipped + [{"source": r.source, "reason": r.error or "no clip"} for r in reports if not r.clips]
    return ShardIndex(
        shards=shards,
        frame_format=frame_format,
        clip_frames=opts.clip_frames,
        overlap=opts.overlap,
        resize_short=opts.resize_short,
        total_clips=sum(s.samples for s in shards),
        total_frames=sum(s.frames for s in shards),
        total_bytes=sum(s.bytes for s in shards),
        sources=written,
        skipped=skipped,
    )
