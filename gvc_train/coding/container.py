"""The bitstream container shared by every codec family (DESIGN.md, "Bitstream").

Layout (all multi-byte integers are unsigned LEB128 varints unless sized)::

    header  magic     3s   b"GVC"
            version   B    FORMAT_VERSION
            family    B    the codec family's stream id (codecs/families.py; 0 is never one)
            print     8s   the first 8 bytes of the codec's sha256 weights fingerprint
            width     varint
            height    varint
            frames    varint
            fps_num   varint
            fps_den   varint
            crc       I    CRC32 (little-endian) of every header byte before it
    chunk*  type      B    ChunkType (0 is reserved: never a chunk)
            length    varint
            payload   length bytes
            crc       I    CRC32 of type, length and payload
    end     type      B    ChunkType.END, no length, no payload: the stream is complete

The fixed cost is ~21 bytes of header plus 1 end byte, and 5 + len(varint) bytes a chunk; a
codec chooses how much to put in one chunk (a frame, a group of frames). Eight bytes of
fingerprint are enough to tell codecs apart (a 2^-64 collision chance) at a quarter of the cost
of the whole digest, which matters at 0.01 bpp where a 96-frame CIF file is ~3 KB.

The reader checks the magic, version, header CRC and every bound before it allocates or
reads a payload; any damage (flipped bits, truncation, junk, a foreign or other-codec stream)
is one :class:`BitstreamError`, never another exception, a hang or a giant allocation.
"""

from __future__ import annotations

import dataclasses
import enum
import io
import struct
import zlib
from collections.abc import Iterator
from typing import BinaryIO

MAGIC = b"GVC"
FORMAT_VERSION = 1
FINGERPRINT_BYTES = 8

# Bounds checked before anything is allocated: larger than any real video, small enough that a
# damaged field cannot ask for gigabytes.
MAX_SIDE = 16384
MAX_FRAMES = 10_000_000
MAX_FPS_TERM = 1_000_000
MAX_CHUNK_BYTES = 256 << 20
_MAX_VARINT_BYTES = 10

_CRC = struct.Struct("<I")


class BitstreamError(ValueError):
    """A bitstream that cannot be decoded: damaged, truncated, foreign or for another codec."""


class ChunkType(enum.IntEnum):
    END = 1  # the stream is complete
    CONFIG = 2  # codec-side parameters of this stream (quality index, padding, ...)
    FRAMES = 3  # coded data for one or more frames
    SIDE = 4  # side information a family defines (a hyperprior, ...)
    CONTROL_TABLE = 5  # the controls a stream carries and their coders' settings (coding/controls/track.py)
    CONTROLS = 6  # one control of one segment, coded (coding/controls/track.py)
    ATOMS = 7  # the codebook atoms a zero-shot stream chose for one group of frames (coding/atom_sets.py)
    TEXT = 8  # a caption sent as UTF-8 text


@dataclasses.dataclass(frozen=True)
class StreamHeader:
    family: int  # the family's stream id; which family that is, the family table says (codecs/)
    fingerprint: bytes  # FINGERPRINT_BYTES, the prefix of the codec's sha256 hex digest
    width: int
    height: int
    frames: int
    fps_num: int
    fps_den: int = 1

    @property
    def fps(self) -> float:
        return self.fps_num / self.fps_den

    def check(self) -> None:
        if not 1 <= self.family <= 255:
            raise BitstreamError(f"codec family {self.family} is outside 1..255")
        if len(self.fingerprint) != FINGERPRINT_BYTES:
            raise BitstreamError(f"fingerprint must be {FINGERPRINT_BYTES} bytes, got {len(self.fingerprint)}")
        if not (1 <= self.width <= MAX_SIDE and 1 <= self.height <= MAX_SIDE):
            raise BitstreamError(f"frame size {self.width}x{self.height} is outside 1..{MAX_SIDE}")
        if not 1 <= self.frames <= MAX_FRAMES:
            raise BitstreamError(f"frame count {self.frames} is outside 1..{MAX_FRAMES}")
        if not (1 <= self.fps_num <= MAX_FPS_TERM and 1 <= self.fps_den <= MAX_FPS_TERM):
            raise BitstreamError(f"frame rate {self.fps_num}/{self.fps_den} is out of bounds")


def fingerprint_prefix(sha256_hex: str) -> bytes:
    """The bytes a stream carries for a codec whose weights fingerprint is ``sha256_hex``."""
    return bytes.fromhex(sha256_hex)[:FINGERPRINT_BYTES]


def fps_fraction(fps: float) -> tuple[int, int]:
    """A frame rate as a small fraction: 29.97... -> 30000/1001, 25.0 -> 25/1."""
    for den in (1, 1001, 1000, 100):
        num = round(fps * den)
        if num >= 1 and abs(num / den - fps) < 1e-6 * max(1.0, fps):
            return num, den
    from fractions import Fraction

    f = Fraction(fps).limit_denominator(MAX_FPS_TERM)
    return max(1, f.numerator), f.denominator


# ---- varints ------------------------------------------------------------------------------


def encode_varint(value: int) -> bytes:
    """``value`` as an unsigned LEB128 varint (7 bits a byte, low first): every length and header
    field of the container, and what codecs use inside their own payloads."""
    if value < 0:
        raise ValueError(f"varints are unsigned, got {value}")
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _read_exact(stream: BinaryIO, n: int, what: str) -> bytes:
    data = stream.read(n)
    if len(data) != n:
        raise BitstreamError(f"truncated stream: {what} needs {n} bytes, {len(data)} left")
    return data


def read_varint(stream: BinaryIO, what: str, raw: bytearray | None = None) -> int:
    """The varint at the stream's position; ``raw`` (if given) collects its bytes (for a CRC).
    Truncation or more than ``_MAX_VARINT_BYTES`` bytes is a :class:`BitstreamError` naming ``what``."""
    value = shift = 0
    for _ in range(_MAX_VARINT_BYTES):
        byte = _read_exact(stream, 1, what)[0]
        if raw is not None:
            raw.append(byte)
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value
        shift += 7
    raise BitstreamError(f"{what}: varint longer than {_MAX_VARINT_BYTES} bytes")


# ---- writing ------------------------------------------------------------------------------


def header_bytes(header: StreamHeader) -> bytes:
    header.check()
    body = (
        MAGIC
        + bytes([FORMAT_VERSION, int(header.family)])
        + header.fingerprint
        + b"".join(encode_varint(v) for v in (header.width, header.height, header.frames, header.fps_num, header.fps_den))
    )
    return body + _CRC.pack(zlib.crc32(body))


def end_marker() -> bytes:
    """The END byte that completes a stream (no length, no payload). Everything that finishes a
    stream writes it through here: :meth:`BitstreamWriter.close`, a codec assembling its file from
    parts, a progressive family that cuts a stream at a chunk boundary and ends it again."""
    return bytes([int(ChunkType.END)])


def chunk_bytes(chunk_type: ChunkType, payload: bytes) -> bytes:
    """One chunk: type, varint length, payload, CRC32 of all three (END is :func:`end_marker`)."""
    if chunk_type == ChunkType.END:
        raise ValueError("END is not a chunk: write end_marker()")
    if len(payload) > MAX_CHUNK_BYTES:
        raise ValueError(f"chunk of {len(payload)} bytes is over the {MAX_CHUNK_BYTES}-byte limit")
    head = bytes([int(chunk_type)]) + encode_varint(len(payload))
    return head + payload + _CRC.pack(zlib.crc32(payload, zlib.crc32(head)))


class BitstreamWriter:
    """Write a stream chunk by chunk to a binary file object (streaming: nothing is buffered)."""

    def __init__(self, stream: BinaryIO, header: StreamHeader) -> None:
        self._stream = stream
        self._closed = False
        self.bytes_written = stream.write(header_bytes(header)) or 0

    def write_chunk(self, chunk_type: ChunkType, payload: bytes) -> int:
        if self._closed:
            raise ValueError("write to a closed BitstreamWriter")
        data = chunk_bytes(chunk_type, payload)
        self._stream.write(data)
        self.bytes_written += len(data)
        return len(data)

    def close(self) -> None:
        if not self._closed:
            end = end_marker()
            self._stream.write(end)
            self.bytes_written += len(end)
            self._closed = True

    def __enter__(self) -> "BitstreamWriter":
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        if exc_type is None:  # an encoder that failed must not leave a stream that looks complete
            self.close()


# ---- reading ------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Chunk:
    type: ChunkType
    payload: bytes
    offset: int  # byte offset of the chunk's type byte in the stream
    size: int  # bytes the chunk takes in the stream, overhead included


def read_header(stream: BinaryIO, expected_fingerprint: bytes | None = None) -> StreamHeader:
    raw = bytearray(_read_exact(stream, len(MAGIC) + 2 + FINGERPRINT_BYTES, "header"))
    if bytes(raw[: len(MAGIC)]) != MAGIC:
        raise BitstreamError("not a gvc bitstream (bad magic)")
    version, family = raw[len(MAGIC)], raw[len(MAGIC) + 1]
    fields = [read_varint(stream, "header", raw) for _ in range(5)]
    (crc,) = _CRC.unpack(_read_exact(stream, _CRC.size, "header CRC"))
    if crc != zlib.crc32(bytes(raw)):
        raise BitstreamError("damaged header (CRC mismatch)")
    if version != FORMAT_VERSION:
        raise BitstreamError(f"bitstream format version {version}; this gvc_train reads {FORMAT_VERSION}")
    start = len(MAGIC) + 2
    header = StreamHeader(family, bytes(raw[start : start + FINGERPRINT_BYTES]), *fields)
    header.check()
    if expected_fingerprint is not None and header.fingerprint != expected_fingerprint[:FINGERPRINT_BYTES]:
        raise BitstreamError(
            f"made with another codec (fingerprint {header.fingerprint.hex()}, "
            f"this codec {expected_fingerprint[:FINGERPRINT_BYTES].hex()})"
        )
    return header


def iter_chunks(stream: BinaryIO, offset: int = 0, max_chunk_bytes: int = MAX_CHUNK_BYTES) -> Iterator[Chunk]:
    """Yield the chunks after the header until END; raise BitstreamError on any damage.

    ``max_chunk_bytes`` lets a caller that knows its chunks are small (a decoder for a given
    frame size) refuse a damaged length before reading it.
    """
    while True:
        start = offset
        type_byte = _read_exact(stream, 1, "chunk type")[0]
        if type_byte == ChunkType.END:
            if stream.read(1):
                raise BitstreamError(f"junk after the end of the stream at byte {offset + 1}")
            return
        try:
            chunk_type = ChunkType(type_byte)
        except ValueError:
            raise BitstreamError(f"unknown chunk type {type_byte} at byte {start}") from None
        raw = bytearray([type_byte])
        length = read_varint(stream, "chunk length", raw)
        if length > max_chunk_bytes:
            raise BitstreamError(f"chunk at byte {start} claims {length} bytes, over the {max_chunk_bytes} limit")
        payload = _read_exact(stream, length, f"chunk at byte {start}")
        (crc,) = _CRC.unpack(_read_exact(stream, _CRC.size, f"CRC of the chunk at byte {start}"))
        if crc != zlib.crc32(payload, zlib.crc32(bytes(raw))):
            raise BitstreamError(f"damaged chunk at byte {start} (CRC mismatch)")
        size = len(raw) + length + _CRC.size
        offset += size
        yield Chunk(chunk_type, payload, start, size)


def read_stream(data: bytes, expected_fingerprint: bytes | None = None) -> tuple[StreamHeader, list[Chunk]]:
    """Parse a whole stream held in memory (``gvc info``, tests)."""
    stream = io.BytesIO(data)
    header = read_header(stream, expected_fingerprint)
    chunks = list(iter_chunks(stream, offset=stream.tell()))
    return header, chunks
