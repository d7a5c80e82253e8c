"""One source -> its clips, losslessly coded, then its report: the work of a shard worker.

:func:`shard_source` runs in a worker process (:mod:`gvc_train.data.shard_workers`) for each
input of :func:`~gvc_train.data.shard_writer.write_shards`; it never raises for bad input, it
reports it. :class:`ShardOptions` are the options of a whole run, read here and by the writer.
With ``ShardOptions.controls`` each clip's controls are extracted and coded here too
(:mod:`gvc_train.data.shard_controls`, loaded only then: it brings torch). With
``ShardOptions.crop`` the frames are centre-cropped right after ``resize_short``, before the
controls are extracted, so the stored frames and controls cover the same pixels; the sample's
``ClipMeta`` then has the cropped size and ``shard_crop``. A source whose frames are smaller
than the crop gives no clip (its report says why).
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Iterator

import numpy as np

from gvc_train.data import clip_codec
from gvc_train.data.sample_format import (
    CAPTION_KEY, CONTROLS_META_KEY, FRAMES_PREFIX, META_KEY, ClipMeta, ControlSpec, sample_key,
)  # fmt: skip
from gvc_train.data.shard_sources import Source
from gvc_train.data.transforms import ClipTooSmall, crop_box
from gvc_train.data.video_io import DEFAULT_PNG_FPS, VideoReader, VideoReadError

_PREFIX_RE = re.compile(r"^[A-Za-z0-9_-]+$")


@dataclasses.dataclass(frozen=True)
class ShardOptions:
    clip_frames: int = 17
    overlap: int = 0  # frames shared by consecutive clips of a video
    maxcount: int = 10_000  # samples per shard
    maxsize: int = 1 << 30  # bytes per shard (a lone sample bigger than this still gets a shard)
    workers: int = 1
    resize_short: int | None = None  # area-downscale so the short side is this; never upscales
    crop: tuple[int, int] | None = None  # centre crop (height, width) after resize_short; None: whole frame
    max_frames_per_video: int | None = None
    prefix: str = "shard"
    relative: bool = False  # ClipMeta.source relative to its input (a file input: its basename)
    png_fps: float = DEFAULT_PNG_FPS
    level: int = clip_codec.DEFAULT_LEVEL
    overwrite: bool = False
    # controls stored beside the frames (gvc_train.data.shard_controls.control_specs makes them)
    controls: tuple[ControlSpec, ...] = ()

    def with_crop_pair(self) -> "ShardOptions":
        """These options with an int ``crop`` (a square) as ``(crop, crop)``."""
        return dataclasses.replace(self, crop=(self.crop, self.crop)) if isinstance(self.crop, int) else self

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
        if self.crop is not None and (len(self.crop) != 2 or min(self.crop) < 1):
            raise ValueError(f"crop must be (height, width), both positive, got {self.crop!r}")
        if self.max_frames_per_video is not None and self.max_frames_per_video < 1:
            raise ValueError(f"max_frames_per_video must be >= 1, got {self.max_frames_per_video}")
        if not _PREFIX_RE.match(self.prefix):
            raise ValueError(f"prefix must match [A-Za-z0-9_-]+, got {self.prefix!r}")
        if not all(isinstance(c, ControlSpec) for c in self.controls):
            raise ValueError("controls must be ControlSpecs (gvc_train.data.shard_controls.control_specs)")
        names = [c.name for c in self.controls]
        if len(set(names)) != len(names):
            raise ValueError(f"a control is named twice in {names}")


@dataclasses.dataclass(frozen=True)
class EncodedClip:
    key: str
    fmt: str
    payload: bytes
    meta: ClipMeta
    caption: str | None
    controls: dict[str, bytes] = dataclasses.field(default_factory=dict)  # tar member -> coded control
    control_entries: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)  # for the json

    def sample(self) -> dict[str, Any]:
        extra = {CONTROLS_META_KEY: self.control_entries} if self.control_entries else None
        sample: dict[str, Any] = {
            "__key__": self.key,
            FRAMES_PREFIX + self.fmt: self.payload,
            META_KEY: self.meta.to_json(extra),
            **self.controls,
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


def shard_source(source: Source, opts: ShardOptions) -> Iterator[EncodedClip | SourceReport]:
    """Yield the encoded clips of one source, then its report; never raises for bad input."""
    n, stride = opts.clip_frames, opts.clip_frames - opts.overlap
    clips = frames_read = 0
    info = None
    error: str | None = None
    try:
        if opts.controls:
            from gvc_train.data.shard_controls import encode_controls
        # FFmpeg picks the decoder thread count, in workers as inline: with other counts a
        # truncated stream can end with a different error, and reports must not depend on it.
        with VideoReader(source.path, opts.resize_short, opts.png_fps) as reader:
            info = reader.info
            top, left, ch, cw = (0, 0, info.height, info.width) if opts.crop is None else crop_box(info.height, info.width, opts.crop)
            shard_crop = None if opts.crop is None else (top, left, ch, cw)
            window: list[np.ndarray] = []
            first = 0
            for frame in reader.frames(opts.max_frames_per_video):
                window.append(frame if shard_crop is None else frame[top : top + ch, left : left + cw])
                frames_read += 1
                if len(window) < n:
                    continue
                clip = np.stack(window)  # one contiguous copy: of the cropped pixels only
                fmt, payload = clip_codec.encode_clip(clip, opts.level)
                meta = ClipMeta(source.name, first, n, info.fps, cw, ch, shard_crop)
                members: dict[str, bytes] = {}
                entries: dict[str, dict[str, Any]] = {}
                if opts.controls:
                    try:
                        members, entries = encode_controls(clip, source.caption, opts.controls)
                    except Exception as exc:  # a clip without its controls is of no use: stop here
                        error = f"controls of frames {first}..{first + n - 1}: {type(exc).__name__}: {' '.join(str(exc).split())}"
                        break
                yield EncodedClip(sample_key(source.stem, first), fmt, payload, meta, source.caption, members, entries)
                clips += 1
                window = window[stride:]  # keep the `overlap` frames the next clip shares
                first += stride
    except VideoReadError as exc:
        error = exc.reason
    except ClipTooSmall as exc:  # --crop bigger than this source's (resized) frames
        error = str(exc)
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


def lost_report(source: Source, reason: str, opts: ShardOptions, clips: int) -> SourceReport:
    """The report of a source whose worker died after sending ``clips`` clips (they are kept)."""
    n, stride = opts.clip_frames, opts.clip_frames - opts.overlap
    frames_read = (clips - 1) * stride + n if clips else 0
    return SourceReport(source.name, clips, clips * n, frames_read, None, None, None, source.caption is not None, reason)
