"""The Scale-Space Flow family's stream layout, without torch: ``gvc info`` and the decoder's parsing.

Inside the container of ``coding/container.py`` (family SSF)::

    CONFIG   varints: stream version, quality, intra period (0: the first frame only), pad multiple
    FRAMES   one per video frame: model check (4 bytes), then compressai rANS strings, each a
             varint length and its bytes: a keyframe's z and y; an inter frame's motion z and y,
             then residual z and y
    END

Frame ``i`` is a keyframe when ``i`` is 0 or a multiple of the intra period: the decoder knows a
frame's kind from CONFIG alone, and a FRAMES chunk with another number of strings is refused.
The frames are coded padded (edge replication) to multiples of the pad multiple; the header
holds the real size, which the decoder crops back to. The model check is a CRC32 of the frame's
index, the quality and every symbol and scale index the entropy coder saw (``codecs/ssf.py``).
"""

from __future__ import annotations

import dataclasses
import io
from collections.abc import Iterable
from typing import Any

from gvc_train.codecs.stream_layout import ConfigChunk, describe_rows
from gvc_train.coding.container import BitstreamError, Chunk, StreamHeader, encode_varint, read_varint

STREAM_VERSION = 1
MODEL_CHECK_BYTES = 4
KEYFRAME_STRINGS = ("keyframe z", "keyframe y")
INTER_STRINGS = ("motion z", "motion y", "residual z", "residual y")
MAX_INTRA_PERIOD = 1 << 20  # CONFIG bound (a frame count: 0 stands for "first frame only")
MAX_PAD_MULTIPLE = 4096


@dataclasses.dataclass(frozen=True)
class StreamConfig(ConfigChunk):
    version = STREAM_VERSION
    stream_name = "ssf stream"

    quality: int
    intra_period: int  # 0: only the first frame is a keyframe
    pad_multiple: int

    def check(self) -> None:
        if self.intra_period > MAX_INTRA_PERIOD:
            raise BitstreamError(f"intra period {self.intra_period} is over the {MAX_INTRA_PERIOD} limit")
        if not 1 <= self.pad_multiple <= MAX_PAD_MULTIPLE:
            raise BitstreamError(f"pad multiple {self.pad_multiple} is outside 1..{MAX_PAD_MULTIPLE}")

    def is_keyframe(self, index: int) -> bool:
        return index == 0 or (self.intra_period > 0 and index % self.intra_period == 0)


def frame_payload(check: int, strings: list[bytes]) -> bytes:
    """A FRAMES payload: the 4-byte model check, then each string as a varint length and its bytes."""
    return check.to_bytes(MODEL_CHECK_BYTES, "big") + b"".join(encode_varint(len(s)) + s for s in strings)


def parse_frame_payload(chunk: Chunk, count: int | None = None) -> tuple[int, list[bytes]]:
    """``(model check, strings)`` of a FRAMES chunk; BitstreamError when it is short, a length
    runs past its end, or (``count`` given) it holds another number of strings."""
    stream = io.BytesIO(chunk.payload)
    check = stream.read(MODEL_CHECK_BYTES)
    if len(check) != MODEL_CHECK_BYTES:
        raise BitstreamError(f"FRAMES chunk at byte {chunk.offset} is shorter than its model check")
    strings = []
    while stream.tell() < len(chunk.payload):
        if count is not None and len(strings) == count:
            raise BitstreamError(f"FRAMES chunk at byte {chunk.offset} holds more than the {count} strings of its frame kind")
        length = read_varint(stream, f"FRAMES chunk at byte {chunk.offset}")
        data = stream.read(length)
        if len(data) != length:
            raise BitstreamError(f"FRAMES chunk at byte {chunk.offset}: a string runs past the chunk's end")
        strings.append(data)
    if count is not None and len(strings) != count:
        raise BitstreamError(f"FRAMES chunk at byte {chunk.offset} holds {len(strings)} strings; its frame kind has {count}")
    return int.from_bytes(check, "big"), strings


def describe_chunks(header: StreamHeader, chunks: Iterable[Chunk]) -> list[dict[str, Any]]:
    """Per chunk: type, offset, bytes; CONFIG's fields; per FRAMES chunk (one frame) its kind
    and the bytes of its keyframe, motion and residual strings (``keyframe``: the frame's index,
    on keyframes, so ``gvc info`` sums the keyframes' bytes)."""

    def frames(chunk: Chunk, config: StreamConfig, index: int) -> tuple[dict[str, Any], tuple[int, int]]:
        key = config.is_keyframe(index)
        _, strings = parse_frame_payload(chunk, len(KEYFRAME_STRINGS if key else INTER_STRINGS))
        if key:
            fields: dict[str, Any] = {"frame_type": "intra", "keyframe": index, "keyframe_bytes": sum(map(len, strings))}
        else:
            fields = {"frame_type": "inter", "motion_bytes": len(strings[0]) + len(strings[1]), "residual_bytes": len(strings[2]) + len(strings[3])}
        return fields, (min(index, header.frames), min(index + 1, header.frames))

    return describe_rows(chunks, StreamConfig.parse, frames)
