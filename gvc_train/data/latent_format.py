"""The latent shard sample layout: the contract between the latent shard writer and its reader.

A latent shard is a WebDataset tar like a frame shard (:mod:`gvc_train.data.sample_format`),
but each clip sample holds the tokenizer's posterior mean instead of the frames:

- ``__key__``: ``{source_stem}-{first_frame:06d}``, as in the frame shards (so a latent sample
  and the frame sample of the same clip share a key);
- ``latent.f16``: the latent ``C x t x h x w``, float16, little-endian, C order, raw bytes
  (no pickle, no header: the shape is in the JSON);
- ``json``: :class:`LatentMeta`: the clip's source fields, the pixel crop that was encoded, the
  latent shape, a CRC32 of the latent bytes and the tokenizer fingerprint;
- ``txt`` (optional): the caption.

``index.json`` is the frame shards' :class:`~gvc_train.data.sample_format.ShardIndex` with
``frame_format = "latent.f16"`` and one more top-level entry, ``latent`` (:func:`index_latent_info`):
the tokenizer's fingerprint, class, config and strides, and the shard-time crop.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import zlib
from typing import Any

import numpy as np

LATENT_FORMAT = "latent.f16"
LATENT_FIELD = "latent.f16"  # the tar member suffix: "KEY.latent.f16"
LATENT_DTYPE = np.dtype("<f2")
INDEX_LATENT_KEY = "latent"
# A latent holds at most this many elements (4 GiB of float16): bounds a damaged meta's claim.
MAX_LATENT_ELEMENTS = 2 << 30

_FINGERPRINT_RE = re.compile(r"^[0-9a-f]{64}$")


class LatentDecodeError(ValueError):
    """A latent payload that does not match its metadata (length, CRC) or is out of bounds."""


class TokenizerMismatch(ValueError):
    """Latent shards made by another tokenizer than the one the training stage expects."""


@dataclasses.dataclass(frozen=True)
class LatentMeta:
    source: str  # as ClipMeta: the input as given to gvc-shard (or relative with --relative)
    first_frame: int
    num_frames: int  # frames encoded (1 + 4k)
    fps: float
    width: int  # frame size after --resize-short, before the crop
    height: int
    crop_top: int  # the encoded region of the (resized) frames, in pixels
    crop_left: int
    crop_height: int
    crop_width: int
    latent_shape: tuple[int, int, int, int]  # C, t, h, w
    latent_crc32: int
    tokenizer_fingerprint: str

    def to_json(self) -> bytes:
        return json.dumps(dataclasses.asdict(self), sort_keys=True).encode()

    @classmethod
    def from_json(cls, data: bytes | str | dict[str, Any]) -> "LatentMeta":
        """Parse and check the types; raises ValueError (or a JSON/Unicode error) when unusable."""
        raw = data if isinstance(data, dict) else json.loads(data)
        if not isinstance(raw, dict):
            raise ValueError("latent metadata is not a JSON object")
        names = [f.name for f in dataclasses.fields(cls)]
        missing = set(names) - set(raw)
        if missing:
            if "tokenizer_fingerprint" in missing and "num_frames" in raw:
                raise ValueError("no tokenizer_fingerprint: a frame shard sample, not a latent one")
            raise ValueError(f"latent metadata lacks {sorted(missing)}")
        values = {k: raw[k] for k in names}
        shape = values["latent_shape"]
        if not (isinstance(shape, list) and len(shape) == 4 and all(_is_int(v) and v >= 1 for v in shape)):
            raise ValueError(f"latent_shape={shape!r} is not four positive integers")
        values["latent_shape"] = tuple(shape)
        for name in ("first_frame", "num_frames", "width", "height", "crop_top", "crop_left", "crop_height",
                     "crop_width", "latent_crc32"):
            if not _is_int(values[name]) or values[name] < 0:
                raise ValueError(f"{name}={values[name]!r} is not a non-negative integer")
        if not isinstance(values["fps"], (int, float)) or isinstance(values["fps"], bool):
            raise ValueError(f"fps={values['fps']!r} is not a number")
        if not isinstance(values["tokenizer_fingerprint"], str) or not isinstance(values["source"], str):
            raise ValueError("source and tokenizer_fingerprint must be strings")
        return cls(**values)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def encode_latent(latent_Cthw: np.ndarray) -> tuple[bytes, int]:
    """A float latent -> (float16 little-endian bytes, their CRC32). Refuses values float16
    cannot hold (inf/nan after the cast): a tokenizer giving them is broken."""
    arr = np.asarray(latent_Cthw)
    if arr.ndim != 4:
        raise ValueError(f"latent must be C x t x h x w, got shape {arr.shape}")
    half = np.ascontiguousarray(arr, dtype=LATENT_DTYPE)
    if not np.isfinite(half).all():
        raise ValueError(f"latent has values float16 cannot hold (max |z| = {float(np.abs(arr).max()):.4g})")
    payload = half.tobytes()
    return payload, zlib.crc32(payload)


def decode_latent(payload: bytes, meta: LatentMeta) -> np.ndarray:
    """The ``C x t x h x w`` float16 array of a sample (a read-only view of ``payload``)."""
    if not isinstance(payload, (bytes, bytearray, memoryview)):
        raise LatentDecodeError(f"latent payload must be bytes, got {type(payload).__name__}")
    count = int(np.prod(meta.latent_shape))
    if count > MAX_LATENT_ELEMENTS:
        raise LatentDecodeError(f"latent shape {meta.latent_shape} exceeds {MAX_LATENT_ELEMENTS} elements")
    if len(payload) != count * LATENT_DTYPE.itemsize:
        raise LatentDecodeError(
            f"latent payload of {len(payload)} bytes, shape {meta.latent_shape} needs {count * LATENT_DTYPE.itemsize}"
        )
    if zlib.crc32(payload) != meta.latent_crc32:
        raise LatentDecodeError("latent payload CRC32 mismatch: damaged")
    return np.frombuffer(payload, dtype=LATENT_DTYPE).reshape(meta.latent_shape)


# ---- tokenizer fingerprints ------------------------------------------------------------------


def resolve_fingerprint(value: str | os.PathLike) -> str:
    """A tokenizer fingerprint from itself (64 hex digits), an exported folder holding
    ``tokenizer.json`` (as written by ``gvc-export``), or the path of such a JSON file."""
    text = os.fspath(value).strip()
    if _FINGERPRINT_RE.match(text.lower()) and not os.path.exists(text):
        return text.lower()
    path = os.path.join(text, "tokenizer.json") if os.path.isdir(text) else text
    if os.path.isfile(path):
        try:
            with open(path, encoding="utf-8") as f:
                fingerprint = json.load(f).get("fingerprint")
        except (OSError, ValueError, AttributeError) as exc:
            raise ValueError(f"tokenizer_fingerprint: cannot read a fingerprint from {path} ({exc})") from None
        if isinstance(fingerprint, str) and _FINGERPRINT_RE.match(fingerprint):
            return fingerprint
        raise ValueError(f"tokenizer_fingerprint: {path} has no sha256 'fingerprint'")
    raise ValueError(
        f"tokenizer_fingerprint={text!r} is neither a sha256 fingerprint (64 hex digits) nor an exported "
        "tokenizer folder / tokenizer.json"
    )


def index_latent_info(index_json: dict[str, Any]) -> dict[str, Any] | None:
    """The ``latent`` entry of a parsed index.json; None for a frame shard directory."""
    info = index_json.get(INDEX_LATENT_KEY)
    return info if isinstance(info, dict) else None
