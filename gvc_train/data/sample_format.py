"""The shard sample layout: the contract between the shard writer and the data pipeline.

One WebDataset sample is one clip:

- ``__key__``: ``{source_stem}-{first_frame:06d}``, with no dots (WebDataset splits on them);
- ``frames.<fmt>``: the clip's frames, coded losslessly by :mod:`gvc_train.data.clip_codec`;
  ``<fmt>`` names the frame format so that a reader can refuse a format it does not know;
- ``json``: :class:`ClipMeta` as JSON;
- ``txt`` (optional): a caption, UTF-8;
- later issues add precomputed controls as ``ctrl.<name>.<fmt>``.
"""

from __future__ import annotations

import dataclasses
import json
import re
from typing import Any

FRAMES_PREFIX = "frames."
META_KEY = "json"
CAPTION_KEY = "txt"


@dataclasses.dataclass(frozen=True)
class ClipMeta:
    source: str  # the input path as given to gvc-shard (or its basename when --relative)
    first_frame: int  # index of the clip's first frame in the source
    num_frames: int
    fps: float
    width: int
    height: int

    def to_json(self) -> bytes:
        return json.dumps(dataclasses.asdict(self), sort_keys=True).encode()

    @classmethod
    def from_json(cls, data: bytes | str | dict[str, Any]) -> "ClipMeta":
        raw = data if isinstance(data, dict) else json.loads(data)
        fields = {f.name for f in dataclasses.fields(cls)}
        missing = fields - set(raw)
        if missing:
            raise ValueError(f"clip metadata lacks {sorted(missing)}")
        return cls(**{k: raw[k] for k in fields})


def sample_key(source_stem: str, first_frame: int) -> str:
    stem = re.sub(r"[^A-Za-z0-9_-]+", "_", source_stem)
    return f"{stem}-{first_frame:06d}"


def frames_field(sample: dict[str, Any]) -> str | None:
    """The name of the frames field in a raw WebDataset sample, or None."""
    for key in sample:
        if key.startswith(FRAMES_PREFIX):
            return key
    return None
