"""Controls in a bitstream (coding/controls/track.py): a round trip with counted bytes, and damage.

The stream: header, a control table (luma, edges, pose), then 2 segments of 2 carphone frames,
each a CONTROLS chunk per control, then END, read the way a family reads it: the table alone
under its bound, then chunk by chunk under the family's, each segment's controls decoded as
they come. It is damaged in every way the latent and progressive fuzz tests damage theirs (bits
flipped, truncated, junk, chunks dropped, repeated, swapped, retyped, random payloads, giant
length claims) and forged: table entries with unknown names, absurd or non-canonical settings,
settings valid but not the encoder's, CONTROLS chunks with another index or segment. Each case
either decodes to exactly what the undamaged stream decodes to, or raises one BitstreamError in
one line, never another exception, within ``CASE_SECONDS`` and ``CASE_MB``.

A payload forged with a valid CRC of its own (both CRCs) is the coders' fuzz tests' concern
(control_coding_cases.fuzz): inside a coder's payload, only the coder knows what is damage.
"""

from __future__ import annotations

import dataclasses
import io
import json
import random
import struct
import time
import zlib
from typing import Any

import pytest
import torch

from conftest import peak_rss_growth

from gvc_train.coding.container import (
    MAX_CHUNK_BYTES,
    BitstreamError,
    BitstreamWriter,
    ChunkType,
    StreamHeader,
    encode_varint,
    end_marker,
    header_bytes,
    iter_chunks,
    read_header,
    read_stream,
)
from gvc_train.coding.controls.track import (
    MAX_SETTINGS_BYTES,
    MAX_TABLE_BYTES,
    ControlReader,
    ControlWriter,
    TableEntry,
    canonical_settings,
    describe_controls,
    table_payload,
)

SEGMENTS, FRAMES_PER_SEGMENT = 2, 2
CONTROL_CHUNK_BYTES = 16 << 10  # the mini-family's bound on a CONTROLS chunk (its frames are 176x144)
FINGERPRINT = bytes.fromhex("0123456789abcdef")
HEADER = StreamHeader(200, FINGERPRINT, 176, 144, SEGMENTS * FRAMES_PER_SEGMENT, 30, 1)
SETTINGS = {"luma": {}, "edges": {}, "pose": {"grid": 256}}
CASE_SECONDS, CASE_MB = 2.0, 32.0


@dataclasses.dataclass(frozen=True)
class Stream:
    data: bytes
    head: bytes
    chunks: list[tuple[int, bytes]]  # (type, payload), END excluded
    decoded: list[dict[str, Any]]  # what the undamaged stream decodes to
    writer: ControlWriter

    def build(self, chunks: list[tuple[int, bytes]] | None = None, head: bytes | None = None, end: bool = True) -> bytes:
        body = b"".join(_chunk(t, p) for t, p in (self.chunks if chunks is None else chunks))
        return (self.head if head is None else head) + body + (end_marker() if end else b"")


def _chunk(type_byte: int, payload: bytes) -> bytes:
    """Any chunk type (END and unknown ones included) with a valid CRC."""
    head = bytes([type_byte]) + encode_varint(len(payload))
    return head + payload + struct.pack("<I", zlib.crc32(payload, zlib.crc32(head)))


def decode(data: bytes) -> list[dict[str, Any]]:
    """What a family's decoder does: header (its fingerprint), the table alone, then each segment."""
    f = io.BytesIO(data)
    read_header(f, expected_fingerprint=FINGERPRINT)
    reader = ControlReader.read_table(f)
    chunks = iter_chunks(f, offset=f.tell(), max_chunk_bytes=CONTROL_CHUNK_BYTES)
    segments = [reader.read_controls(chunks, segment) for segment in range(SEGMENTS)]
    if next(chunks, None) is not None:
        raise BitstreamError(f"more chunks than the {SEGMENTS} segments")
    return segments


def _same(a: list[dict[str, Any]], b: list[dict[str, Any]]) -> bool:
    def equal(x: Any, y: Any) -> bool:
        if isinstance(x, torch.Tensor):
            return isinstance(y, torch.Tensor) and x.dtype == y.dtype and x.shape == y.shape and bool(torch.equal(x, y))
        return isinstance(y, list) and len(x) == len(y) and all(equal(p, q) for p, q in zip(x, y))

    return len(a) == len(b) and all(x.keys() == y.keys() and all(equal(x[k], y[k]) for k in x) for x, y in zip(a, b))


@pytest.fixture(scope="module")
def controls() -> list[dict[str, Any]]:
    """2 segments of 2 carphone frames: luma at 1/8 size, edges at 1/4, pose (mediapipe, real)."""
    from gvc_train.controls.registry import build_extractor
    from gvc_train.data.sample_videos import sample_video
    from gvc_train.data.video_io import read_frames
    from gvc_train.frames import frames_to_tensor

    clip = frames_to_tensor(read_frames(sample_video("carphone_pristine.mp4"), count=SEGMENTS * FRAMES_PER_SEGMENT))[0]
    extractors = {"luma": build_extractor("luma", factor=8), "edges": build_extractor("edges", factor=4), "pose": build_extractor("pose")}
    pose = extractors.pop("pose").extract(clip)  # one worker start for the whole clip
    assert all(len(p) == 1 for p in pose), "carphone has one person in every frame"
    segments = []
    for s in range(SEGMENTS):
        frames = slice(s * FRAMES_PER_SEGMENT, (s + 1) * FRAMES_PER_SEGMENT)
        segments.append({name: e.extract(clip[:, frames]) for name, e in extractors.items()} | {"pose": pose[frames]})
    return segments


@pytest.fixture(scope="module")
def stream(controls: list[dict[str, Any]]) -> Stream:
    writer = ControlWriter.build(SETTINGS)
    out = io.BytesIO()
    with BitstreamWriter(out, HEADER) as bw:
        writer.write_table(bw.write_chunk)
        for segment, segment_controls in enumerate(controls):
            writer.write_controls(bw.write_chunk, segment, segment_controls)
    data = out.getvalue()
    _, chunks = read_stream(data)
    return Stream(data, data[: chunks[0].offset], [(int(c.type), c.payload) for c in chunks], decode(data), writer)


# ---- the round trip -------------------------------------------------------------------------


def test_controls_round_trip_with_their_bytes_counted(stream: Stream, controls: list[dict[str, Any]]) -> None:
    w = stream.writer
    assert [t for t, _ in stream.chunks] == [ChunkType.CONTROL_TABLE] + [ChunkType.CONTROLS] * 3 * SEGMENTS
    assert len(stream.data) == len(stream.head) + w.table_bytes + sum(w.stream_bytes.values()) + len(end_marker())
    for index, (name, coder) in enumerate(w.coders.items()):  # the coder's bytes; the chunks with their overhead
        assert w.coded_bytes[name] == sum(len(coder.encode(c[name])) for c in controls)
        assert w.stream_bytes[name] == sum(len(_chunk(t, p)) for t, p in stream.chunks[1:] if p[0] == index)
        assert w.stream_bytes[name] == w.coded_bytes[name] + SEGMENTS * 8 + sum(len(p) > 127 for t, p in stream.chunks[1:] if p[0] == index)
    xy, confidence = w.coders["pose"].max_error()
    for back, source in zip(stream.decoded, controls):
        assert torch.equal(back["luma"], source["luma"]) and torch.equal(back["edges"], source["edges"])  # lossless
        for b, p in zip(back["pose"], source["pose"], strict=True):
            assert (b - p)[..., :2].abs().max() <= xy + 1e-6 and (b - p)[..., 2].abs().max() <= confidence + 1e-6
    reader = ControlReader(table_payload(w.entries))
    assert reader.names == ("luma", "edges", "pose")
    assert {n: c.settings() for n, c in reader.coders.items()} == {n: c.settings() for n, c in w.coders.items()}


def test_the_writer_refuses_what_no_reader_would_read(controls: list[dict[str, Any]]) -> None:
    from gvc_train.coding.controls.registry import build_coder

    writer = ControlWriter.build({"luma": {}, "edges": {}})
    with pytest.raises(ValueError, match="the table"):
        writer.write_controls(lambda t, p: len(p), 0, controls[0])  # pose is not in the table
    with pytest.raises(ValueError, match="'edges'"):
        ControlWriter({"luma": build_coder("edges")})
    with pytest.raises(ValueError, match="1..32"):
        table_payload([])
    with pytest.raises(ValueError, match="repeat"):
        table_payload([TableEntry("luma", "{}")] * 2)
    with pytest.raises(ValueError, match="control name"):
        table_payload([TableEntry("Luma", "{}")])


def test_gvc_info_fields_of_control_chunks(stream: Stream) -> None:
    _, chunks = read_stream(stream.data)
    rows = [describe_controls(chunk, ["luma", "edges", "pose"]) for chunk in chunks]
    assert rows[0] == {"controls": ["luma", "edges", "pose"]}
    assert [(r["control"], r["segment"]) for r in rows[1:]] == [(n, s) for s in range(SEGMENTS) for n in ("luma", "edges", "pose")]
    assert sum(r["coded_bytes"] for r in rows[1:]) == sum(stream.writer.coded_bytes.values())
    # the rows gvc info prints for a family built on stream_layout: the same fields, names from the table
    from gvc_train.codecs.stream_layout import describe_rows

    described = describe_rows(chunks, lambda payload: None, lambda chunk, config, n: ({}, (0, 0)))
    assert [{k: r[k] for k in r if k not in ("type", "offset", "bytes")} for r in described] == rows
    assert [r["type"] for r in described] == ["CONTROL_TABLE"] + ["CONTROLS"] * 3 * SEGMENTS


# ---- damage ---------------------------------------------------------------------------------


def _table(entries: list[tuple[bytes, bytes]], version: int = 1, count: int | None = None, tail: bytes = b"") -> bytes:
    """A table payload of raw (name, settings) entries: any bytes, any count, no checks."""
    out = encode_varint(version) + encode_varint(len(entries) if count is None else count)
    for name, settings in entries:
        out += encode_varint(len(name)) + name + encode_varint(len(settings)) + settings
    return out + tail


def _entries(s: Stream) -> list[tuple[bytes, bytes]]:
    return [(e.name.encode(), e.settings.encode()) for e in s.writer.entries]


def _forged_tables(s: Stream) -> list[tuple[str, bytes]]:
    """(name, table payload): each must be refused (or, for valid other settings, fail at the payload)."""
    good = _entries(s)
    luma, edges, pose = good
    cases: list[tuple[str, bytes]] = []
    for version in (0, 2, 2**63):
        cases.append((f"version {version}", _table(good, version=version)))
    for count in (0, 2, 4, 33, 2**40):
        cases.append((f"count {count}", _table(good, count=count)))
    for name in (b"depth", b"lumaa", b"Luma", b"lu-ma", b"", b"x" * 33, b"\xff", b"luma\n", b"__class__", b"a" * 32):
        cases.append((f"name {name[:12]!r} ({len(name)} bytes)", _table([(name, b"{}"), edges, pose])))
    cases.append(("luma twice", _table([luma, luma, pose])))
    cases.append(("a fourth entry (flow)", _table([*good, (b"flow", canonical_settings({"factor": 10**18, "step": 0.125}).encode())])))
    absurd = {
        "luma": [{"max_error": v, "temporal": True} for v in (10**9, -1, "x", None, 1.5, True, 10**400)]
        + [{"max_error": 0, "temporal": v} for v in ("yes", 2, None, [], {})] + [{}, {"max_error": 0}, {"max_error": 0, "temporal": True, "foo": 1}],
        "pose": [{"grid": v, "confidence_levels": 8} for v in (0, 1, 10**300, 1e308, -(2**64), "256")]
        + [{"grid": 256, "confidence_levels": v} for v in (1, 257, 2.5)] + [{"grid": 256}, {"grid": 256, "confidence_levels": 8, "self": 1}],
    }
    for control, forged in absurd.items():
        for i, settings in enumerate(forged):
            text = json.dumps(settings, sort_keys=True, separators=(",", ":")).encode()
            entries = [(control.encode(), text) if n.decode() == control else (n, t) for n, t in good]
            cases.append((f"settings of {control} {i}: {text[:40]!r}", _table(entries)))
    nested = b"[" * 500 + b"]" * 500
    for label, text in (("spaces", b'{"max_error": 0, "temporal": true}'), ("keys reversed", b'{"temporal":true,"max_error":0}'),
                        ("NaN", b'{"max_error":NaN,"temporal":true}'), ("Infinity", b'{"max_error":Infinity,"temporal":true}'),
                        ("a list", b"[0,true]"), ("a number", b"10"), ("a string", b'"luma"'), ("nested 500 deep", nested),
                        ("not UTF-8", b'{"max_error":0,"temporal":true,"\xff":1}'), ("a bare key", b'{"max_error"}'),
                        ("over the bound", b'{"max_error":0,"temporal":true,"x":"' + b"y" * MAX_SETTINGS_BYTES + b'"}'),
                        ("one byte", b"{"), ("empty", b""), ("escaped unicode", b'{"max_error":0,"temporal":true,"\\u00e9":1}')):  # fmt: skip
        cases.append((f"settings of luma: {label}", _table([(b"luma", text), edges, pose])))
    for label, entries in (("luma max_error 2", [(b"luma", b'{"max_error":2,"temporal":true}'), edges, pose]),
                           ("edges temporal false", [luma, (b"edges", b'{"temporal":false}'), pose]),
                           ("pose grid 128", [luma, edges, (b"pose", b'{"confidence_levels":8,"grid":128}')]),
                           ("entries reordered", [edges, luma, pose])):  # fmt: skip
        cases.append((f"valid other table: {label}", _table(entries)))
    full = _table(good)
    cases += [("a byte after the entries", full + b"\x00"), ("cut by a byte", full[:-1]), ("cut to its count", full[:2]), ("empty", b""),
              ("name length 2**40", b"\x01\x03" + encode_varint(2**40) + b"luma"),
              ("settings length past the end", full[:2] + encode_varint(4) + b"luma" + encode_varint(900) + b"{}"),
              ("an 11-byte varint", b"\xff" * 10 + b"\x01")]  # fmt: skip
    return cases


def _damaged(s: Stream, rng: random.Random) -> list[tuple[str, bytes]]:
    cases: list[tuple[str, bytes]] = []
    table_end = len(s.build(s.chunks[:1], end=False))  # flips up to here fail before any control is decoded: all of them
    for i in [*range(table_end * 8), *rng.sample(range(table_end * 8, len(s.data) * 8), 60)]:
        flipped = bytearray(s.data)
        flipped[i // 8] ^= 1 << (i % 8)
        cases.append((f"flip bit {i}", bytes(flipped)))
    boundaries = {len(s.build(s.chunks[:k], end=False)) for k in range(len(s.chunks) + 1)}
    cuts = {b + d for b in boundaries for d in (-1, 0, 1)} | set(range(len(s.head) + 8)) | set(rng.sample(range(len(s.data)), 12))
    cases += [(f"truncated to {cut}", s.data[:cut]) for cut in sorted(cuts) if 0 <= cut < len(s.data)]
    cases += [(f"{n} junk bytes appended", s.data + rng.randbytes(n)) for n in (1, 7)]
    cases += [("END appended again", s.data + end_marker()), ("the stream twice", s.data + s.data),
              ("a byte before it", b"\x00" + s.data), ("empty file", b""), ("random bytes", rng.randbytes(len(s.data))),
              ("text", b"GVC controls\n" * 8), ("the header alone", s.head)]  # fmt: skip

    t, a0, b0, c0, a1, b1, c1 = s.chunks
    side, config, frames = (int(ChunkType.SIDE), b"x"), (int(ChunkType.CONFIG), b"\x01"), (int(ChunkType.FRAMES), b"x")
    unknown, zero = (7, b"x"), (0, b"")
    layouts = {
        "no table": [a0, b0, c0, a1, b1, c1], "table twice": [t, t, a0, b0, c0, a1, b1, c1], "table last": [a0, b0, c0, a1, b1, c1, t],
        "table between segments": [t, a0, b0, c0, t, a1, b1, c1], "table only": [t], "no chunks": [],
        "segment 1 missing": [t, a0, b0, c0], "segment 0 missing": [t, a1, b1, c1], "segments swapped": [t, a1, b1, c1, a0, b0, c0],
        "luma of the two segments swapped": [t, a1, b0, c0, a0, b1, c1], "edges and luma swapped": [t, b0, a0, c0, a1, b1, c1],
        "segment 0 twice": [t, a0, b0, c0, a0, b0, c0, a1, b1, c1], "a chunk after the last segment": [t, a0, b0, c0, a1, b1, c1, c1],
        "CONFIG after the table": [t, config, a0, b0, c0, a1, b1, c1], "FRAMES between segments": [t, a0, b0, c0, frames, a1, b1, c1],
        "SIDE last": [t, a0, b0, c0, a1, b1, c1, side], "unknown type 7": [t, a0, unknown, b0, c0, a1, b1, c1],
        "type 0": [t, a0, b0, c0, zero, a1, b1, c1], "END with a length": [t, a0, b0, c0, (int(ChunkType.END), b""), a1, b1, c1],
        "table as CONTROLS": [(int(ChunkType.CONTROLS), t[1]), a0, b0, c0, a1, b1, c1],
        "luma as the table": [(int(ChunkType.CONTROL_TABLE), a0[1]), a0, b0, c0, a1, b1, c1],
        "luma as FRAMES": [t, (int(ChunkType.FRAMES), a0[1]), b0, c0, a1, b1, c1],
    }  # fmt: skip
    for i in range(1, len(s.chunks)):
        layouts[f"control chunk {i} dropped"] = s.chunks[:i] + s.chunks[i + 1 :]
    cases += [(f"chunks: {name}", s.build(chunks)) for name, chunks in layouts.items()]
    cases.append(("chunks: END after segment 0", s.build([t, a0, b0, c0]) + s.build([a1, b1, c1], head=b"")))
    cases.append(("chunks: no END", s.build(end=False)))

    # CONTROLS payloads rewritten, chunk CRC valid
    for i, (_, payload) in enumerate(s.chunks[1:], start=1):
        index, segment, coded = payload[0], payload[1], payload[2:]  # both varints are one byte here
        middle = len(coded) // 2
        others = list(s.chunks)

        def with_payload(new: bytes) -> bytes:
            others[i] = (int(ChunkType.CONTROLS), new)
            return s.build(others)

        for n in (0, 1, 2, 40, 600):
            cases.append((f"chunk {i}: {n} random bytes", with_payload(rng.randbytes(n))))
        for label, new in (("index 3", b"\x03" + payload[1:]), ("index 2**40", encode_varint(2**40) + payload[1:]),
                           ("segment 5", payload[:1] + b"\x05" + coded), ("segment 2**63", payload[:1] + encode_varint(2**63) + coded),
                           ("an 11-byte index", b"\xff" * 10 + b"\x01" + payload[1:]), ("no coded bytes", payload[:2]),
                           ("coded cut by a byte", payload[:-1]), ("a byte after the coded", payload + b"\x00"),
                           ("coded flipped", payload[:2] + coded[:middle] + bytes([coded[middle] ^ 0x10]) + coded[middle + 1 :]),
                           ("coded of the next control", payload[:2] + s.chunks[i % 6 + 1][1][2:])):  # fmt: skip
            cases.append((f"chunk {i}: {label} (index {index}, segment {segment})", with_payload(new)))
    for label, table in _forged_tables(s):
        cases.append((f"table: {label}", s.build([(int(ChunkType.CONTROL_TABLE), table), *s.chunks[1:]])))

    # lengths claimed past every bound or past the file: refused before a buffer is made
    for claim in (MAX_TABLE_BYTES + 1, 1 << 28, (1 << 63) - 1):
        cases.append((f"table of {claim} bytes", s.head + bytes([int(ChunkType.CONTROL_TABLE)]) + encode_varint(claim) + bytes(64)))
    for claim in (CONTROL_CHUNK_BYTES + 1, MAX_CHUNK_BYTES, 1 << 40):
        giant = bytes([int(ChunkType.CONTROLS)]) + encode_varint(claim) + bytes(64)
        cases.append((f"CONTROLS of {claim} bytes", s.build(s.chunks[:4], end=False) + giant))
    cases.append(("header: another codec's fingerprint", header_bytes(dataclasses.replace(HEADER, fingerprint=bytes(8))) + s.data[len(s.head) :]))
    return cases


def test_every_damaged_stream_is_one_bitstream_error_or_decodes_exactly(stream: Stream) -> None:
    cases = _damaged(stream, random.Random(14))
    rewritten = header_bytes(dataclasses.replace(HEADER, fps_num=25, frames=9)) + stream.data[len(stream.head) :]
    cases.append(("header: other fps and frame count (the controls do not read them)", rewritten))
    assert len(cases) > 1000 and len({name for name, _ in cases}) == len(cases)
    decoded, slowest = [], (0.0, "")
    for name, data in cases:
        started = time.perf_counter()
        try:
            with peak_rss_growth() as memory:
                back = decode(data)
        except BitstreamError as e:
            message = str(e)
            assert message and "\n" not in message, name
            if name.startswith("table: name"):
                assert "name" in message or "no coder" in message, (name, message)
            if name.startswith("table: settings"):  # the table's check, or the payload's (a setting the coder takes as another)
                assert "settings of" in message or "coded with" in message, (name, message)
            if "another codec" in name:
                assert "another codec" in message, (name, message)
        else:
            assert _same(back, stream.decoded), f"{name}: decoded to something else"
            decoded.append(name)
        elapsed = time.perf_counter() - started
        assert elapsed < CASE_SECONDS and memory.mb < CASE_MB, (name, elapsed, memory.mb)
        slowest = max(slowest, (elapsed, name))
    assert decoded == [cases[-1][0]], decoded
