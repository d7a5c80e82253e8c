"""Controlled-family bitstreams, damaged (as tests/test_latent_bitstream_fuzz.py and
tests/test_progressive_codec.py damage theirs): each ends in one BitstreamError line within a
time and memory bound, or decodes where the damage is a setting no decoder can check.

A 5-frame stream of the tiny codec of tests/controlled_codec_fixtures.py (keyframes 0 and 4,
luma and flow): header, CONFIG, CONTROL_TABLE, FRAMES 0, FRAMES 4, CONTROLS luma, CONTROLS flow,
END. Every chunk is CRC-checked, so a flipped bit or a cut is an error; chunks reordered,
removed, repeated or swapped for others (valid CRCs) are errors of the layout; CONFIG fields out
of bounds, or in bounds but wrong for this stream or codec, are errors (a keyframe quality that
is not the encoder's fails the keyframes' model check). What a decoder cannot tell from a real
stream (CRC-valid rewrites of the seed, the step count, the end role, the guidance or shift, a
frame rate; a keyframe's bytes put in another's place: keyframes are coded alone) decodes to 5
frames. A control table naming a modality this model does not know is one error, through
``gvc decode`` too.
"""

from __future__ import annotations

import dataclasses
import random
import struct
import time
import zlib
from pathlib import Path

import numpy as np
import pytest

from conftest import peak_rss_growth
from gvc_train.codecs.base import open_codec
from gvc_train.codecs.memory_plan import OverBudget
from gvc_train.codecs.controlled_stream import StreamConfig, float_bits
from gvc_train.coding.container import BitstreamError, ChunkType, StreamHeader, encode_varint, end_marker, header_bytes, read_stream
from gvc_train.coding.controls.track import ControlWriter

from controlled_codec_fixtures import HEIGHT, WIDTH, write_codec_folder, write_moving_square_clip

FRAMES = 5
# Hang and blow-up guards, not timings: a case decodes in ~20 ms idle; a forged size that slipped
# through took minutes and 14 GB. Loose enough for a loaded CI machine.
CASE_SECONDS, CASE_MB = 10.0, 64.0


@pytest.fixture(scope="module")
def coded(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("controlled_fuzz")
    codec = open_codec(write_codec_folder(root / "codec", "controlled"))
    clip = write_moving_square_clip(root / "clip", frames=FRAMES)
    codec.encode(clip, root / "s.gvc", 1, max_frames=FRAMES)
    return codec, (root / "s.gvc").read_bytes()


def _chunk(type_byte: int, payload: bytes) -> bytes:
    head = bytes([type_byte]) + encode_varint(len(payload))
    return head + payload + struct.pack("<I", zlib.crc32(payload, zlib.crc32(head)))


def _config(config: StreamConfig, **fields: int) -> bytes:
    values = {**dataclasses.asdict(config), **fields}
    return b"".join(encode_varint(v) for v in (values.pop("version", config.version), *values.values()))


def _variants(data: bytes, rng: random.Random) -> list[tuple[str, bytes, bool]]:
    """(name, bytes, may decode)."""
    header, chunks = read_stream(data)
    head = data[: chunks[0].offset]
    body = [(int(c.type), c.payload) for c in chunks]
    assert [ChunkType(t).name for t, _ in body] == ["CONFIG", "CONTROL_TABLE", "FRAMES", "FRAMES", "CONTROLS", "CONTROLS"]
    config = StreamConfig.parse(chunks[0].payload)
    conf, table, key0, key4, luma, flow = body

    def build(parts: list[tuple[int, bytes]], end: bool = True, at: bytes = head) -> bytes:
        return at + b"".join(_chunk(t, p) for t, p in parts) + (end_marker() if end else b"")

    assert build(body) == data  # the rebuild is byte-exact: every variant differs only where it says
    cases: list[tuple[str, bytes, bool]] = []
    for i in rng.sample(range(len(data) * 8), 200):
        flipped = bytearray(data)
        flipped[i // 8] ^= 1 << (i % 8)
        cases.append((f"flip bit {i}", bytes(flipped), False))
    for cut in sorted(set(range(0, len(data), max(1, len(data) // 60))) | {c.offset + d for c in chunks for d in (-1, 0, 1)}):
        if 0 <= cut < len(data):
            cases.append((f"truncated to {cut}", data[:cut], False))
    for k in range(len(body)):  # cut at a chunk boundary and ended again: never a whole stream
        cases.append((f"prefix of {k} chunks", build(body[:k]), False))
    cases += [
        ("junk after END", data + b"\x00", False), ("junk instead of END", data[:-1] + b"\x07", False),
        ("random bytes", rng.randbytes(len(data)), False), ("empty", b"", False), ("the header alone", head, False),
    ]  # fmt: skip
    for k in range(20):
        run = bytearray(data)
        start, n = rng.randrange(len(head), len(data)), rng.randint(1, 8)
        run[start : start + n] = rng.randbytes(len(run[start : start + n]))
        cases.append((f"random run {k}: {n} bytes at {start}", bytes(run), False))
    layouts = {
        "keyframes swapped": [conf, table, key4, key0, luma, flow], "controls swapped": [conf, table, key0, key4, flow, luma],
        "controls before the closing keyframe": [conf, table, key0, luma, flow, key4], "no control table": [conf, key0, key4, luma, flow],
        "control table twice": [conf, table, table, key0, key4, luma, flow], "no CONFIG": body[1:], "CONFIG twice": [conf, *body],
        "keyframe 0 twice": [conf, table, key0, key0, key4, luma, flow], "no flow": [conf, table, key0, key4, luma],
        "flow twice": [*body, flow], "a SIDE chunk": [conf, table, key0, (int(ChunkType.SIDE), b"x"), key4, luma, flow],
        "unknown chunk type 7": [conf, table, key0, (7, b"x"), key4, luma, flow], "keyframe as CONTROLS": [conf, table, key0, (int(ChunkType.CONTROLS), key4[1]), luma, flow],
        "luma as FRAMES": [conf, table, key0, key4, (int(ChunkType.FRAMES), luma[1]), flow],
    }  # fmt: skip
    for name, parts in layouts.items():
        cases.append((f"chunks: {name}", build(parts), False))
    for name, payload in (("random", rng.randbytes(len(luma[1]))), ("empty", b""), ("cut", luma[1][:-3]), ("garbled", luma[1][:2] + bytes(b ^ 0x5A for b in luma[1][2:]))):
        cases.append((f"CONTROLS luma {name} (valid CRC)", build([conf, table, key0, key4, (luma[0], payload), flow]), False))
    for name, payload in (("random", rng.randbytes(len(key4[1]))), ("empty", b""), ("its index only", key4[1][:1]), ("frame 2", encode_varint(2) + key4[1][1:]),
                          ("frame 9", encode_varint(9) + key4[1][1:])):  # fmt: skip
        cases.append((f"FRAMES 4 {name} (valid CRC)", build([conf, table, key0, (key4[0], payload), luma, flow]), False))
    # a keyframe is coded alone (fresh state), so another keyframe's check and bytes are a valid keyframe
    cases.append(("FRAMES 4 with keyframe 0's check and bytes: consistent, decodes", build([conf, table, key0, (key4[0], encode_varint(4) + key0[1][1:]), luma, flow]), True))
    config_fields = [
        ("keyframe_quality", 0), ("keyframe_quality", 3), ("keyframe_quality", 2**40), ("clip_latent_frames", 1), ("clip_latent_frames", 5),
        ("clip_latent_frames", 2**20), ("keyframes", 0), ("keyframes", 1), ("keyframes", 3), ("keyframes", 6), ("num_steps", 0), ("num_steps", 10**6),
        ("shift_bits", float_bits(0.0)), ("shift_bits", float_bits(float("nan"))), ("guidance_bits", float_bits(-1.0)), ("guidance_bits", float_bits(float("inf"))),
        ("guidance_bits", 2**64), ("seed", 2**63), ("end_role", 2), ("has_controls", 0), ("has_controls", 2), ("version", config.version + 1),
    ]  # fmt: skip
    for name, value in config_fields:
        cases.append((f"CONFIG {name}={value}", build([(conf[0], _config(config, **{name: value})), *body[1:]]), False))
    for name, value in (("seed", config.seed + 1), ("num_steps", 1), ("end_role", 1), ("guidance_bits", float_bits(1.0)), ("shift_bits", float_bits(3.0))):
        cases.append((f"CONFIG {name}={value}: consistent, decodes", build([(conf[0], _config(config, **{name: value})), *body[1:]]), True))
    h = header
    for name, fields in (("frames 4", {"frames": 4}), ("frames 6", {"frames": 6}), ("16384x16384", {"width": 16384, "height": 16384}),
                         ("another family", {"family": 1}), ("another codec", {"fingerprint": bytes(8)})):  # fmt: skip
        cases.append((f"header {name}", build(body, at=header_bytes(dataclasses.replace(h, **fields))), False))
    cases.append(("header fps 25/1: consistent, decodes", build(body, at=header_bytes(dataclasses.replace(h, fps_num=25, fps_den=1))), True))
    for claim in (1 << 20, 1 << 40):  # a length far past the file: refused before a buffer is made
        cases.append((f"FRAMES of {claim} bytes", build(body[:3], end=False) + bytes([int(ChunkType.FRAMES)]) + encode_varint(claim) + bytes(64), False))
    return cases


def test_every_damaged_stream_is_one_bitstream_error(coded, tmp_path: Path) -> None:
    codec, data = coded
    cases = _variants(data, random.Random(15))
    assert len(cases) > 300 and len({name for name, _, _ in cases}) == len(cases)
    case, decoded = tmp_path / "case.gvc", []
    for name, damaged, may_decode in cases:
        case.write_bytes(damaged)
        frames: list[np.ndarray] = []
        started = time.perf_counter()
        try:
            with peak_rss_growth() as memory:
                codec.decode(case, frames.append)
        except (BitstreamError, OverBudget) as e:
            assert str(e) and "\n" not in str(e), name
            assert not may_decode, f"{name}: {e}"
            # refused before a clip's worth of memory is allocated: over the (default) memory budget
            assert isinstance(e, OverBudget) == ("16384x16384" in name), (name, str(e))
        else:
            assert may_decode, f"{name}: decoded {len(frames)} frames, no BitstreamError"
            assert len(frames) == FRAMES and frames[0].shape == (HEIGHT, WIDTH, 3), name
            decoded.append(name)
        assert time.perf_counter() - started < CASE_SECONDS and memory.mb < CASE_MB, (name, memory.mb)
    assert all("decodes" in name for name in decoded) and len(decoded) == 7


def test_a_stream_naming_a_modality_the_model_does_not_know_is_one_line(coded, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from gvc_train.gvc_cli import main

    codec, data = coded
    _, chunks = read_stream(data)
    head = data[: chunks[0].offset]
    for names in ({"luma": {}, "edges": {}}, {"pose": {}}):
        table = ControlWriter.build(names).payload
        forged = head + b"".join(_chunk(int(c.type), table if c.type == ChunkType.CONTROL_TABLE else c.payload) for c in chunks) + end_marker()
        path = tmp_path / "forged.gvc"
        path.write_bytes(forged)
        with pytest.raises(BitstreamError, match="does not know") as e:
            codec.decode(path, None)
        assert "\n" not in str(e.value)
        assert main(["decode", str(path), str(tmp_path / "out"), "--codec", str(codec.folder), "--overwrite"]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("gvc: error:") and "does not know" in err and "\n" not in err, err
