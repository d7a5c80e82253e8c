"""Zero-shot bitstreams, damaged (as the other families' fuzz tests damage theirs): every case ends
in one BitstreamError line within a time and memory bound. Unlike the controlled family, a
CRC-valid rewrite of a sampling setting (seed, steps, shift, g(t), codebook size, atoms) cannot
decode to another video: the trajectory check of each GOP refuses it. (A GOP length over the
video's 5 frames is the one setting a rewrite may change without changing the stream's meaning.)

A 5-frame flf2v stream of a tiny zero-shot codec on checkpoints/cgvc_tiny: header, CONFIG,
FRAMES 0, FRAMES 4, ATOMS (GOP 0), END.
"""

from __future__ import annotations

import dataclasses
import random
import struct
import time
import zlib
from pathlib import Path

import pytest

from conftest import peak_rss_growth
from gvc_train.codecs.base import open_codec
from gvc_train.codecs.zeroshot_folder import make_zeroshot_codec
from gvc_train.codecs.zeroshot_stream import ZeroShotConfig, float_bits
from gvc_train.coding.container import BitstreamError, ChunkType, encode_varint, end_marker, read_stream
from gvc_train.data.sample_videos import sample_video

CASE_SECONDS, CASE_MB = 20.0, 512.0  # hang and blow-up guards, not timings (a whole decode of the 5 frames peaks ~+210 MB)


@pytest.fixture(scope="module")
def coded(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("zeroshot_fuzz")
    settings = {"codebook_size": 64, "atoms": [1, 3], "num_steps": 3, "ode_tail": 1, "gop_frames": 5, "mode": "flf2v"}
    make_zeroshot_codec(root / "codec", model="checkpoints/cgvc_tiny", settings=settings)
    codec = open_codec(root / "codec")
    codec.encode(sample_video("carphone_pristine.mp4"), root / "s.gvc", 1, max_frames=5)
    return codec, (root / "s.gvc").read_bytes()


def _chunk(type_byte: int, payload: bytes) -> bytes:
    head = bytes([type_byte]) + encode_varint(len(payload))
    return head + payload + struct.pack("<I", zlib.crc32(payload, zlib.crc32(head)))


def _config(config: ZeroShotConfig, **fields: int) -> bytes:
    values = {**dataclasses.asdict(config), **fields}
    return b"".join(encode_varint(v) for v in (values.pop("version", config.version), *values.values()))


def _with_frames(data: bytes, frames: int) -> bytes:
    """The stream with another frame count in its header (valid CRC)."""
    from gvc_train.coding.container import header_bytes, read_stream

    header, chunks = read_stream(data)
    return header_bytes(dataclasses.replace(header, frames=frames)) + data[chunks[0].offset :]


def _variants(data: bytes, rng: random.Random) -> list[tuple[str, bytes]]:
    _, chunks = read_stream(data)
    head = data[: chunks[0].offset]
    body = [(int(c.type), c.payload) for c in chunks]
    assert [ChunkType(t).name for t, _ in body] == ["CONFIG", "FRAMES", "FRAMES", "ATOMS"]
    config = ZeroShotConfig.parse(chunks[0].payload)
    conf, key0, key4, atoms = body

    def build(parts: list[tuple[int, bytes]]) -> bytes:
        return head + b"".join(_chunk(t, p) for t, p in parts) + end_marker()

    assert build(body) == data
    cases = []
    for i in rng.sample(range(len(data) * 8), 120):
        flipped = bytearray(data)
        flipped[i // 8] ^= 1 << (i % 8)
        cases.append((f"flip bit {i}", bytes(flipped)))
    for cut in sorted(set(range(0, len(data), max(1, len(data) // 30))) | {c.offset + d for c in chunks for d in (-1, 0, 1)}):
        if 0 <= cut < len(data):
            cases.append((f"truncated to {cut}", data[:cut]))
    cases += [("junk after END", data + b"\x00"), ("random bytes", rng.randbytes(len(data))), ("empty", b""), ("the header alone", head)]
    layouts = {
        "keyframes swapped": [conf, key4, key0, atoms], "no ATOMS": [conf, key0, key4], "ATOMS twice": [*body, atoms],
        "ATOMS before the keyframes": [conf, atoms, key0, key4], "no CONFIG": body[1:], "a TEXT chunk": [conf, (int(ChunkType.TEXT), b"a caption"), key0, key4, atoms],
        "keyframe as ATOMS": [conf, key0, key4, (int(ChunkType.ATOMS), key4[1])], "ATOMS as FRAMES": [conf, key0, key4, (int(ChunkType.FRAMES), atoms[1])],
    }  # fmt: skip
    cases += [(f"chunks: {name}", build(parts)) for name, parts in layouts.items()]
    gop, check, packed = atoms[1][:1], atoms[1][1:5], atoms[1][5:]
    for name, payload in (("random", rng.randbytes(len(atoms[1]))), ("empty", b""), ("cut", atoms[1][:-1]), ("GOP 1", encode_varint(1) + atoms[1][1:]),
                          ("another check", gop + bytes(b ^ 0xFF for b in check) + packed), ("other atoms", gop + check + bytes(b ^ 0x01 for b in packed))):  # fmt: skip
        cases.append((f"ATOMS {name} (valid CRC)", build([conf, key0, key4, (atoms[0], payload)])))
    fields = [
        ("mode", 3), ("codebook_size", 1), ("codebook_size", 2**30), ("atoms", 0), ("atoms", 65), ("tail_atoms", 0), ("num_steps", 0),
        ("ode_tail", 0), ("ode_tail", 4), ("gop_frames", 1), ("gop_frames", 10**6), ("shift_bits", float_bits(float("nan"))),
        ("g_scale_bits", float_bits(-1.0)), ("guidance_bits", float_bits(float("inf"))), ("seed", 2**63), ("has_caption", 2),
        ("keyframe_quality", 9), ("version", config.version + 1), ("atoms", 4097), ("tail_atoms", 4097),
        # the reviewer's hostile settings: a huge codebook with huge atom sets must be refused before any big-integer work
        ("codebook_size", 2**24), ("guidance_bits", float_bits(7.5)),
        # in bounds, but not what the stream was coded with: the trajectory check (or the atoms' size) refuses them
        ("seed", config.seed + 1), ("num_steps", 4), ("shift_bits", float_bits(2.0)), ("g_scale_bits", float_bits(2.0)),
        ("g_power_bits", float_bits(1.0)), ("codebook_size", 65), ("atoms", 2), ("mode", 1), ("gop_frames", 3), ("has_caption", 1),
    ]  # fmt: skip
    cases += [(f"CONFIG {name}={value}", build([(conf[0], _config(config, **{name: value})), *body[1:]])) for name, value in fields]
    huge = {"codebook_size": 2**24, "atoms": 4096, "tail_atoms": 4096, "num_steps": 1000, "ode_tail": 1}
    cases.append(("CONFIG K=2^24, M=4096, 1000 steps", build([(conf[0], _config(config, **huge)), *body[1:]])))
    cases.append(("header: 10^7 frames", _with_frames(data, 10**7)))
    return cases


def test_the_settings_and_the_stream_agree_on_the_atoms_limit() -> None:
    from gvc_train.codecs.zeroshot_stream import MAX_ATOMS
    from gvc_train.models.codebook import settings

    assert settings.MAX_ATOMS == MAX_ATOMS


def test_every_damaged_zero_shot_stream_is_one_error(coded, tmp_path: Path) -> None:
    codec, data = coded
    failures = []
    for name, variant in _variants(data, random.Random(16)):
        path = tmp_path / "v.gvc"
        path.write_bytes(variant)
        started = time.perf_counter()
        with peak_rss_growth() as growth:
            try:
                codec.decode(path, None)
                failures.append(f"{name}: decoded")
            except BitstreamError as e:
                if "\n" in str(e) or not str(e):
                    failures.append(f"{name}: not one line: {e!r}")
            except Exception as e:  # noqa: BLE001 - anything else is the failure this test looks for
                failures.append(f"{name}: {type(e).__name__}: {e}")
        if time.perf_counter() - started > CASE_SECONDS or growth.mb > CASE_MB:
            failures.append(f"{name}: {time.perf_counter() - started:.1f} s, +{growth.mb:.0f} MB")
    assert not failures, failures
