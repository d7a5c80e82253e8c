"""The shard sample layout: the contract between the shard writer and the data pipeline.

One WebDataset sample is one clip:

- ``__key__``: ``{source_stem}-{first_frame:06d}``, with no dots (WebDataset splits on them);
- ``frames.<fmt>``: the clip's frames, coded losslessly by :mod:`gvc_train.data.clip_codec`;
  ``<fmt>`` names the frame format so that a reader can refuse a format it does not know;
- ``json``: :class:`ClipMeta` as JSON (``width``/``height``: the stored frames, after any
  shard-time crop; ``shard_crop``, only with ``gvc-shard --crop``: where they were cut from);
- ``txt`` (optional): a caption, UTF-8;
- ``ctrl.<name>`` (optional, one per control written by ``gvc-shard --controls``): the clip's
  control ``<name>`` (``gvc_train.controls.registry.LAYOUTS``) as its coder wrote it
  (``gvc_train.coding.controls``); the ``json`` then holds ``"controls": {name: {"extractor":
  settings, "coder": settings, "bytes": n}}``, how it was made, how to decode it and its size
  (:class:`ControlSpec`, :func:`control_entry`).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from typing import Any

from gvc_train import strict_json

FRAMES_PREFIX = "frames."
META_KEY = "json"
CAPTION_KEY = "txt"
CONTROL_PREFIX = "ctrl."
CONTROLS_META_KEY = "controls"  # in the sample json: name -> control_entry(...)


@dataclasses.dataclass(frozen=True)
class ClipMeta:
    source: str  # the input path as given to gvc-shard (or its basename when --relative)
    first_frame: int  # index of the clip's first frame in the source
    num_frames: int
    fps: float
    width: int  # of the stored frames (after --resize-short and --crop)
    height: int
    # gvc-shard --crop: (top, left, height, width) of the stored region in the resized frame;
    # None (and absent from the JSON, so uncropped shards are as before): the whole frame
    shard_crop: tuple[int, int, int, int] | None = None

    def to_json(self, extra: dict[str, Any] | None = None) -> bytes:
        """The fields as JSON, with ``extra`` entries beside them (e.g. ``controls``)."""
        fields = dataclasses.asdict(self)
        if self.shard_crop is None:
            del fields["shard_crop"]
        return json.dumps({**fields, **(extra or {})}, sort_keys=True).encode()

    @classmethod
    def from_json(cls, data: bytes | str | dict[str, Any]) -> "ClipMeta":
        raw = data if isinstance(data, dict) else json.loads(data)
        fields = {f.name for f in dataclasses.fields(cls)}
        missing = fields - set(raw) - {"shard_crop"}
        if missing:
            raise ValueError(f"clip metadata lacks {sorted(missing)}")
        values = {k: raw[k] for k in fields if k in raw}
        if values.get("shard_crop") is not None:
            values["shard_crop"] = tuple(values["shard_crop"])
        return cls(**values)


def safe_stem(source_stem: str) -> str:
    """The stem as it appears in keys: runs of characters other than ``[A-Za-z0-9_-]`` become ``_``."""
    return re.sub(r"[^A-Za-z0-9_-]+", "_", source_stem)


def sample_key(source_stem: str, first_frame: int) -> str:
    return f"{safe_stem(source_stem)}-{first_frame:06d}"


def control_field(name: str) -> str:
    """The tar member suffix of control ``name``: ``ctrl.<name>``."""
    return CONTROL_PREFIX + name


@dataclasses.dataclass(frozen=True)
class ControlSpec:
    """One control a shard run writes: its name and the settings of its extractor and coder
    (plain JSON, every setting spelled out: what ``settings()`` of each gives back)."""

    name: str
    extractor: dict[str, Any]
    coder: dict[str, Any]


def control_entry(spec: ControlSpec, size: int) -> dict[str, Any]:
    """What the sample json says of one stored control (``size``: bytes of its member)."""
    return {"extractor": spec.extractor, "coder": spec.coder, "bytes": size}


def frames_field(sample: dict[str, Any]) -> str | None:
    """The name of the frames field in a raw WebDataset sample, or None."""
    for key in sample:
        if key.startswith(FRAMES_PREFIX):
            return key
    return None


# ---- the shard directory index --------------------------------------------------------------

INDEX_FILE = "index.json"
INDEX_VERSION = 1


@dataclasses.dataclass(frozen=True)
class ShardInfo:
    name: str  # file name inside the shard directory
    samples: int
    frames: int
    bytes: int


@dataclasses.dataclass(frozen=True)
class ShardIndex:
    """``index.json`` beside the shards: what ``gvc-shard`` wrote and what it skipped.

    ``sources`` has one entry per input that gave clips (``source``, ``clips``, ``frames``,
    ``frames_read``, ``width``, ``height`` (after ``--resize-short``, before any crop), ``fps``,
    ``caption``, ``error``: why reading stopped early, or None); ``skipped`` one per input that
    gave none (``source``, ``reason``). A run with ``--crop`` adds a top-level ``crop``:
    ``[height, width]``, the size of every stored frame (``ShardIndex.load`` ignores it).
    ``total_frames`` counts stored frames (a frame shared by two overlapping clips twice).
    """

    shards: list[ShardInfo]
    frame_format: str
    clip_frames: int
    overlap: int
    resize_short: int | None
    total_clips: int
    total_frames: int
    total_bytes: int
    sources: list[dict[str, Any]]
    skipped: list[dict[str, Any]]
    version: int = INDEX_VERSION

    def shard_paths(self, shard_dir: str | os.PathLike) -> list[str]:
        return [os.path.join(os.fspath(shard_dir), shard.name) for shard in self.shards]

    def to_json(self) -> str:
        return strict_json.dumps(dataclasses.asdict(self), indent=1, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, data: bytes | str | dict[str, Any]) -> "ShardIndex":
        raw = dict(data) if isinstance(data, dict) else json.loads(data)
        if raw.get("version") != INDEX_VERSION:
            raise ValueError(f"shard index version {raw.get('version')!r} is not {INDEX_VERSION}")
        names = {f.name for f in dataclasses.fields(cls)}
        missing = names - set(raw)
        if missing:
            raise ValueError(f"shard index lacks {sorted(missing)}")
        raw["shards"] = [ShardInfo(**shard) for shard in raw["shards"]]
        return cls(**{k: raw[k] for k in names})

    @classmethod
    def load(cls, shard_dir: str | os.PathLike) -> "ShardIndex":
        path = os.path.join(os.fspath(shard_dir), INDEX_FILE)
        try:
            with open(path, encoding="utf-8") as f:
                return cls.from_json(f.read())
        except (OSError, ValueError, TypeError) as exc:
            raise ValueError(f"{path}: not a readable shard index ({exc})") from None
