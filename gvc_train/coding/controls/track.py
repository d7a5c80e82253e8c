"""Controls inside a codec bitstream: one control table, then a chunk per control per segment.

A family that sends controls beside its frames (keyframes plus per-frame controls) writes, in
the shared container (:mod:`gvc_train.coding.container`)::

    CONTROL_TABLE  version   varint  TABLE_VERSION
                   count     varint  1..MAX_CONTROLS
                   count x   name      varint length (1..MAX_NAME_BYTES), then [a-z0-9_] ASCII
                             settings  varint length (2..MAX_SETTINGS_BYTES), then the coder's
                                       settings as canonical JSON (:func:`canonical_settings`)
                   nothing after the last entry
    CONTROLS       control   varint  its index in the table
                   segment   varint  which segment (clip, keyframe interval: the family says)
                   coded     the rest: the coder's bytes (``coder.encode(control)``)

Every segment carries one CONTROLS chunk for every table entry, in table order, and segments
come in the order the family reads them (0, 1, 2, ...); a family puts its own chunks (CONFIG,
FRAMES) around them as it likes. The index and segment in each chunk cost 2 bytes and turn a
chunk moved, dropped or repeated (valid CRC and all) into an error instead of a wrong control.

The table is read, and every bound checked, before a coder is built: lengths against what is
left, names against the coder registry, settings as a JSON object in canonical form that the
coder accepts and gives back unchanged (``coder.settings()``), so the decoder's coders are
exactly the encoder's. Each coder checks its own payload (tag, CRC, shape bounds, its settings)
before it allocates. Any damage is one :class:`BitstreamError` in one line.

The container's length bound comes first: read the table chunk with ``max_chunk_bytes`` at
most :data:`MAX_TABLE_BYTES`, and CONTROLS chunks under a bound the family knows (its frame
size and segment length).
"""

from __future__ import annotations

import dataclasses
import io
import json
import re
from collections.abc import Callable, Iterator, Mapping
from typing import Any, BinaryIO

from gvc_train.coding.container import BitstreamError, Chunk, ChunkType, chunk_bytes, encode_varint, iter_chunks, read_varint
from gvc_train.coding.controls.registry import ControlCoder, build_coder, coder_class

TABLE_VERSION = 1
MAX_CONTROLS = 32
MAX_NAME_BYTES = 32
MAX_SETTINGS_BYTES = 1024
# version, count, and per entry two length varints (2 bytes each at most) with their bytes
MAX_TABLE_BYTES = 2 * 10 + MAX_CONTROLS * (2 + MAX_NAME_BYTES + 2 + MAX_SETTINGS_BYTES)

_NAME = re.compile(r"[a-z0-9_]+")

# write_chunk(type, payload) -> bytes written: BitstreamWriter.write_chunk, or a family's own
# ``lambda t, p: out.write(chunk_bytes(t, p))``.
WriteChunk = Callable[[ChunkType, bytes], int]


def canonical_settings(settings: Mapping[str, Any]) -> str:
    """Settings as the table stores them: JSON with sorted keys, no spaces, ASCII, no NaN."""
    return json.dumps(dict(settings), sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)


@dataclasses.dataclass(frozen=True)
class TableEntry:
    name: str
    settings: str  # canonical JSON of the coder's settings


def _check_name(name: str) -> None:
    if not (isinstance(name, str) and _NAME.fullmatch(name) and len(name) <= MAX_NAME_BYTES):
        raise ValueError(f"control name {name!r} is not 1..{MAX_NAME_BYTES} characters of a-z, 0-9 and _")


def table_payload(entries: list[TableEntry]) -> bytes:
    """The CONTROL_TABLE payload of ``entries`` (ValueError for a table no reader would take)."""
    if not 1 <= len(entries) <= MAX_CONTROLS:
        raise ValueError(f"a control table holds 1..{MAX_CONTROLS} controls, got {len(entries)}")
    if len({e.name for e in entries}) != len(entries):
        raise ValueError(f"control names repeat in the table: {[e.name for e in entries]}")
    out = bytearray(encode_varint(TABLE_VERSION) + encode_varint(len(entries)))
    for entry in entries:
        _check_name(entry.name)
        settings = entry.settings.encode("ascii")
        if len(settings) > MAX_SETTINGS_BYTES:
            raise ValueError(f"settings of control {entry.name!r} take {len(settings)} bytes, over {MAX_SETTINGS_BYTES}")
        out += encode_varint(len(entry.name)) + entry.name.encode("ascii") + encode_varint(len(settings)) + settings
    return bytes(out)


def _read_field(stream: io.BytesIO, what: str, low: int, high: int) -> bytes:
    """A varint length in [low, high] that fits what is left, then that many bytes."""
    length = read_varint(stream, f"control table {what}")
    left = len(stream.getbuffer()) - stream.tell()
    if not low <= length <= high:
        raise BitstreamError(f"control table: {what} of {length} bytes, outside {low}..{high}")
    if length > left:
        raise BitstreamError(f"control table: {what} of {length} bytes, only {left} left")
    return stream.read(length)


def parse_table(payload: bytes) -> list[TableEntry]:
    """The entries of a CONTROL_TABLE payload, every field bounded and checked for form (names,
    canonical JSON objects), without building a coder (``gvc info`` needs no torch)."""
    stream = io.BytesIO(payload)
    version = read_varint(stream, "control table version")
    if version != TABLE_VERSION:
        raise BitstreamError(f"control table version {version}; this gvc_train reads {TABLE_VERSION}")
    count = read_varint(stream, "control table count")
    if not 1 <= count <= MAX_CONTROLS:
        raise BitstreamError(f"control table of {count} controls, outside 1..{MAX_CONTROLS}")
    entries: list[TableEntry] = []
    for _ in range(count):
        raw_name = _read_field(stream, "name", 1, MAX_NAME_BYTES)
        name = raw_name.decode("latin-1")  # one char a byte: the check below refuses anything else
        if not _NAME.fullmatch(name):
            raise BitstreamError(f"control table: name {raw_name!r} is not a-z, 0-9 and _")
        if any(e.name == name for e in entries):
            raise BitstreamError(f"control table: {name!r} twice")
        settings = _read_field(stream, f"settings of {name!r}", 2, MAX_SETTINGS_BYTES).decode("latin-1")
        entries.append(TableEntry(name, _canonical_or_error(name, settings)))
    if stream.read(1):
        raise BitstreamError("control table is longer than its entries")
    return entries


def _canonical_or_error(name: str, text: str) -> str:
    """``text`` if it is the canonical JSON of an object (what an encoder writes), else BitstreamError."""

    def refuse(constant: str) -> None:  # NaN, Infinity: json.loads takes them, JSON does not
        raise ValueError(f"{constant} is not JSON")

    try:  # at most MAX_SETTINGS_BYTES of text: bounded time and memory, nesting included
        settings = json.loads(text, parse_constant=refuse)
        same = isinstance(settings, dict) and canonical_settings(settings) == text
    except (ValueError, RecursionError):
        same = False
    if not same:
        raise BitstreamError(f"control table: settings of {name!r} are not a canonical JSON object")
    return text


def build_coders(entries: list[TableEntry]) -> dict[str, ControlCoder]:
    """Each entry's coder, exactly as the encoder had it: a name the registry does not know,
    settings the coder refuses or would not give back unchanged, is a BitstreamError."""
    coders: dict[str, ControlCoder] = {}
    for entry in entries:
        try:
            coder_class(entry.name)
        except ValueError:
            raise BitstreamError(f"control table: no coder for control {entry.name!r}") from None
        try:  # settings from the stream: a coder's own check may raise any of these
            coder = build_coder(entry.name, **json.loads(entry.settings))
            rebuilt = canonical_settings(coder.settings())
        except (ValueError, TypeError, ArithmeticError, RecursionError):
            raise BitstreamError(f"control table: settings of {entry.name!r} are not valid for its coder") from None
        if rebuilt != entry.settings:  # a coder that coerced them (True for "yes"): not what an encoder writes
            raise BitstreamError(f"control table: settings of {entry.name!r} are not the ones its coder keeps")
        coders[entry.name] = coder
    return coders


def controls_payload(control: int, segment: int, coded: bytes) -> bytes:
    return encode_varint(control) + encode_varint(segment) + coded


def parse_controls_chunk(chunk: Chunk) -> tuple[int, int, bytes]:
    """(control index, segment, the coder's bytes) of a CONTROLS chunk."""
    if chunk.type != ChunkType.CONTROLS:
        raise BitstreamError(f"chunk at byte {chunk.offset} is {chunk.type.name}, expected CONTROLS")
    stream = io.BytesIO(chunk.payload)
    control = read_varint(stream, f"CONTROLS chunk at byte {chunk.offset}")
    segment = read_varint(stream, f"CONTROLS chunk at byte {chunk.offset}")
    return control, segment, stream.read()


class ControlWriter:
    """The encoder's side: the table, then each segment's controls, with their bytes counted.

    ``coded_bytes[name]``: the coder's bytes; ``stream_bytes[name]``: the whole chunks (index,
    segment and container overhead included); ``table_bytes``: the table's chunk."""

    def __init__(self, coders: Mapping[str, ControlCoder]) -> None:
        for name, coder in coders.items():
            if getattr(coder, "name", None) != name:
                raise ValueError(f"the coder given for {name!r} is {getattr(coder, 'name', type(coder).__name__)!r}'s")
        self.coders = dict(coders)
        self.entries = [TableEntry(name, canonical_settings(coder.settings())) for name, coder in self.coders.items()]
        self.payload = table_payload(self.entries)
        self.table_bytes = len(chunk_bytes(ChunkType.CONTROL_TABLE, self.payload))
        self.coded_bytes = dict.fromkeys(self.coders, 0)
        self.stream_bytes = dict.fromkeys(self.coders, 0)

    @classmethod
    def build(cls, settings: Mapping[str, Mapping[str, Any]]) -> ControlWriter:
        """From ``{name: coder settings}`` (table order is the mapping's)."""
        return cls({name: build_coder(name, **dict(s)) for name, s in settings.items()})

    def write_table(self, write_chunk: WriteChunk) -> int:
        return write_chunk(ChunkType.CONTROL_TABLE, self.payload)

    def write_controls(self, write_chunk: WriteChunk, segment: int, controls: Mapping[str, Any]) -> int:
        """Code one segment's controls (``{name: control}``, every table name, nothing else) as
        a CONTROLS chunk each, in table order; the bytes written."""
        if set(controls) != set(self.coders):
            raise ValueError(f"segment {segment} has controls {sorted(controls)}, the table {sorted(self.coders)}")
        written = 0
        for index, (name, coder) in enumerate(self.coders.items()):
            coded = coder.encode(controls[name])
            size = write_chunk(ChunkType.CONTROLS, controls_payload(index, segment, coded))
            self.coded_bytes[name] += len(coded)
            self.stream_bytes[name] += size
            written += size
        return written


class ControlReader:
    """The decoder's side: built from the table, it reads each segment's controls back."""

    def __init__(self, table_payload: bytes) -> None:
        self.entries = parse_table(table_payload)
        self.coders = build_coders(self.entries)
        self.names = tuple(self.coders)

    @classmethod
    def from_chunk(cls, chunk: Chunk | None) -> ControlReader:
        if chunk is None:
            raise BitstreamError("stream ends where its control table should be")
        if chunk.type != ChunkType.CONTROL_TABLE:
            raise BitstreamError(f"chunk at byte {chunk.offset} is {chunk.type.name}, expected CONTROL_TABLE")
        return cls(chunk.payload)

    @classmethod
    def read_table(cls, f: BinaryIO) -> ControlReader:
        """From the chunk at ``f``'s position, read alone under :data:`MAX_TABLE_BYTES` (a
        damaged length is refused before it is read); ``f`` is left at the chunk after it."""
        return cls.from_chunk(next(iter_chunks(f, offset=f.tell(), max_chunk_bytes=MAX_TABLE_BYTES), None))

    def read_controls(self, chunks: Iterator[Chunk], segment: int) -> dict[str, Any]:
        """Segment ``segment``'s controls, ``{name: control}``, from the next chunks of
        ``chunks`` (one per table entry, in table order); BitstreamError for anything else."""
        controls: dict[str, Any] = {}
        for index, name in enumerate(self.names):
            chunk = next(chunks, None)
            if chunk is None:
                raise BitstreamError(f"stream ends before control {name!r} of segment {segment}")
            found, found_segment, coded = parse_controls_chunk(chunk)
            if (found, found_segment) != (index, segment):
                raise BitstreamError(
                    f"CONTROLS chunk at byte {chunk.offset} is control {found} of segment {found_segment}, "
                    f"expected control {index} ({name!r}) of segment {segment}"
                )
            try:
                controls[name] = self.coders[name].decode(coded)
            except BitstreamError as e:
                raise BitstreamError(f"CONTROLS chunk at byte {chunk.offset} ({name!r} of segment {segment}): {e}") from None
        return controls


def describe_controls(chunk: Chunk, names: list[str] | None) -> dict[str, Any]:
    """``gvc info``'s fields of a CONTROL_TABLE (``controls``: its names) or CONTROLS chunk
    (``control``, ``segment``, ``coded_bytes``), without building a coder; ``names``: the
    table's, once read (else a CONTROLS chunk's control is its index)."""
    if chunk.type == ChunkType.CONTROL_TABLE:
        return {"controls": [e.name for e in parse_table(chunk.payload)]}
    control, segment, coded = parse_controls_chunk(chunk)
    name = names[control] if names is not None and control < len(names) else str(control)
    return {"control": name, "segment": segment, "coded_bytes": len(coded)}
