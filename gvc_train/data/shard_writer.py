"""Cut videos into clips, code them losslessly and write WebDataset shards: ``write_shards``.

Each input video is read and its clips encoded in a worker process (the pool is
:mod:`gvc_train.data.shard_workers`); the shards are written by the calling process, always in
input order (clips of input 0, then input 1, ...), so a given input list gives the same shards
byte for byte whatever the worker count. Clips of sources ahead of the one being written are
held up to ``shard_workers.HELD_BYTES``, which keeps memory bounded.

Shards are ``{prefix}-%06d.tar``, each written as ``.partial`` and renamed when complete;
``index.json`` (:class:`~gvc_train.data.sample_format.ShardIndex`) is written last, also by
rename, so its presence means the directory is complete.

The pieces: the inputs (:mod:`.shard_sources`), one source -> its coded clips
(:mod:`.shard_encode`, run in the workers), the tar files (:mod:`.shard_sink`); this module
runs them in order and writes the index.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from typing import Any, Callable, Iterable, Iterator

from tqdm import tqdm

from gvc_train import strict_json
from gvc_train.data import clip_codec, shard_workers
from gvc_train.data.sample_format import CONTROLS_META_KEY, INDEX_FILE, ShardIndex, ShardInfo

# the pieces of a run, importable from here as before the split
from gvc_train.data.shard_encode import EncodedClip, ShardOptions, SourceReport, lost_report, shard_source
from gvc_train.data.shard_sink import ShardSink, prepare_out_dir
from gvc_train.data.shard_sources import Source, caption_path, collect_sources

__all__ = [
    "EncodedClip", "NothingWrittenError", "ShardOptions", "ShardSink", "Source", "SourceReport",
    "caption_path", "collect_sources", "shard_source", "write_samples", "write_shards",
]  # fmt: skip


class NothingWrittenError(ValueError):
    """No input gave a single clip; ``index`` lists what was skipped and why."""

    def __init__(self, message: str, index: ShardIndex) -> None:
        super().__init__(message)
        self.index = index


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
        lost=lambda index, clips, reason: lost_report(sources[index], reason, opts, clips),
    )


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

    ``options`` fields can also be given as keywords (``clip_frames=9, workers=2``). With
    ``controls`` (:func:`gvc_train.data.shard_controls.control_specs`) each clip's controls are
    stored beside its frames and index.json lists their settings under ``controls``. With
    ``crop`` (``(h, w)`` or an int) every frame is centre-cropped to it after ``resize_short``
    (before any control is extracted) and index.json records it as ``crop: [h, w]``.
    ``progress``: a tqdm bar (None: only on a terminal). ``log`` receives one line per input
    skipped or damaged (default: stderr). Raises ValueError for bad options, FileExistsError
    for an occupied ``out_dir`` without ``overwrite``, and NothingWrittenError (its ``index``
    holds the reasons) when no input gave a clip; in that case no index.json is written.
    """
    opts = dataclasses.replace(options or ShardOptions(), **overrides).with_crop_pair()
    opts.check()
    index_extra: dict[str, Any] = {"crop": list(opts.crop)} if opts.crop else {}
    if opts.controls:
        from gvc_train.data.shard_controls import check_captions

        inputs = list(inputs)
        check_captions(opts.controls, collect_sources(inputs, opts.relative)[0])  # before any work
        index_extra[CONTROLS_META_KEY] = {c.name: {"extractor": c.extractor, "coder": c.coder} for c in opts.controls}
    return write_samples(inputs, out_dir, opts, shard_source, progress=progress, log=log, index_extra=index_extra or None)


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
    prepare_out_dir(out_dir, opts.prefix, opts.overwrite)
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
