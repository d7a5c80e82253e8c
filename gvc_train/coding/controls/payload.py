"""The frame of a control payload (luma, edges, flow): a tag, a CRC, the shape (bounds checked
before anything is allocated) and the entropy-coded body.

Layout: ``tag`` (2 bytes: the coder and its format version), ``crc`` (CRC32 of everything
after it, 4 bytes little-endian), varint fields (the shape first, then the coder's own), then
the body (:mod:`gvc_train.coding.categorical`'s stream, to the end of the payload). A payload
is self-delimiting in content (the shape is inside); its length is its container's (a shard
entry, a stream chunk). The CRC (32 bits a clip) turns any damage or truncation into one
BitstreamError before a single value is decoded, however the entropy coder would have taken it.
"""

from __future__ import annotations

import io
import struct
import zlib

from gvc_train.coding.container import MAX_SIDE, BitstreamError, encode_varint, read_varint

MAX_FRAMES = 1 << 16
MAX_ELEMENTS = 1 << 27  # frames x height x width (x channels) a payload may announce: 134 M, ~0.5 GB as int32


_CRC = struct.Struct("<I")


def seal(tag: bytes, fields: list[int], body: bytes) -> bytes:
    """The payload: ``tag``, the CRC, ``fields`` as varints, ``body``."""
    rest = b"".join(encode_varint(f) for f in fields) + body
    return tag + _CRC.pack(zlib.crc32(rest)) + rest


class PayloadReader:
    """Reads a payload's head: :meth:`field` for each varint, :meth:`shape` for a checked shape,
    :meth:`body` for the rest. Every failure is a one-line BitstreamError naming ``what``."""

    def __init__(self, data: bytes, tag: bytes, what: str) -> None:
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise BitstreamError(f"{what} payload must be bytes, got {type(data).__name__}")
        self.what = what
        data = bytes(data)
        found = data[:len(tag)]
        if found != tag:
            raise BitstreamError(f"not a {what} payload (tag {found!r}, expected {tag!r})")
        if len(data) < len(tag) + _CRC.size:
            raise BitstreamError(f"{what} payload is truncated ({len(data)} bytes)")
        (crc,) = _CRC.unpack_from(data, len(tag))
        rest = data[len(tag) + _CRC.size:]
        if zlib.crc32(rest) != crc:
            raise BitstreamError(f"{what} payload is damaged or truncated (CRC mismatch over its {len(rest)} bytes)")
        self._stream = io.BytesIO(rest)

    def field(self, name: str, low: int = 0, high: int = 1 << 32) -> int:
        value = read_varint(self._stream, f"{self.what} payload {name}")
        if not low <= value <= high:
            raise BitstreamError(f"{self.what} payload: {name} {value} outside [{low}, {high}]")
        return value

    def shape(self, *names: str, channels: int = 1, min_frames: int = 0) -> tuple[int, ...]:
        """``frames`` then the sides named after it (each checked), their product bounded by
        :data:`MAX_ELEMENTS` (times ``channels``) before the caller allocates it."""
        frames = self.field("frames", min_frames, MAX_FRAMES)
        sides = tuple(self.field(name, 1, MAX_SIDE) for name in names)
        elements = frames * channels
        for side in sides:
            elements *= side
        if elements > MAX_ELEMENTS:
            raise BitstreamError(f"{self.what} payload announces {elements} values, more than {MAX_ELEMENTS}")
        return (frames, *sides)

    def body(self) -> bytes:
        return self._stream.read()
