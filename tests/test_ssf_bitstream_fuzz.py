"""Scale-Space Flow bitstreams, damaged: each case ends in one BitstreamError, within time and memory.

The latent family's harness (tests/test_latent_bitstream_fuzz.py: its chunk and header surgery,
the per-case time and memory bounds) on a 3-frame 72x56 stream of a tiny random SSF codec
(keyframe, inter frame, keyframe at intra period 2): sampled bit flips and truncations, junk,
header and CONFIG fields rewritten *with valid CRCs*, FRAMES chunks reordered, removed,
duplicated, with another number of strings, random strings, and a crafted string whose rANS
escape count runs over its whole length (compressai's decoder reads without bounds checks: the
codec pads every string before decoding). Rewrites that parse cleanly are caught by the frames'
model check. A few rewrites make a consistent stream (another frame rate, a width or height
within the same 128-padded size): they decode to the same frames, cropped.
"""

from __future__ import annotations

import dataclasses
import random
import struct
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from conftest import bounded_decode
from test_latent_bitstream_fuzz import _chunk, _header
from test_ssf_codec import FRAMES, HEIGHT, WIDTH, export_ssf

from gvc_train.codecs.ssf import SSFCodec
from gvc_train.codecs.ssf_stream import StreamConfig
from gvc_train.coding.container import BitstreamError, ChunkType, StreamHeader, encode_varint, end_marker, read_stream
from gvc_train.data.sample_videos import sample_video
from gvc_train.data.video_io import read_frames

CASE_SECONDS = 2.0
CASE_MB = 64.0  # a 3-frame 128x128-padded decode peaks at a few MB; a forged giant frame is GBs
CODED = 3
FRAMES_TYPE = int(ChunkType.FRAMES)


@dataclasses.dataclass(frozen=True)
class Stream:
    data: bytes
    header: StreamHeader
    head: bytes
    chunks: list[tuple[int, bytes]]
    frames: list[np.ndarray]

    def build(self, chunks: list[tuple[int, bytes]] | None = None, head: bytes | None = None, end: bool = True) -> bytes:
        body = b"".join(_chunk(t, p) for t, p in (self.chunks if chunks is None else chunks))
        return (self.head if head is None else head) + body + (end_marker() if end else b"")

    def config(self, **fields: int) -> list[tuple[int, bytes]]:
        """The chunks with CONFIG's fields replaced (``version`` too)."""
        values = {"version": StreamConfig.version, **dataclasses.asdict(StreamConfig.parse(self.chunks[0][1])), **fields}
        payload = b"".join(encode_varint(v) for v in values.values())
        return [(int(ChunkType.CONFIG), payload)] + self.chunks[1:]


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> tuple[SSFCodec, dict[str, Stream]]:
    from PIL import Image

    root = tmp_path_factory.mktemp("ssf_fuzz")
    video = root / "video"
    video.mkdir()
    for i, frame in enumerate(read_frames(sample_video("carphone_pristine.mp4"), count=FRAMES)):
        Image.fromarray(frame[40 : 40 + HEIGHT, 50 : 50 + WIDTH]).save(video / f"im{i + 1}.png")
    codec = SSFCodec(export_ssf(root, "mine", seed=0))
    other = SSFCodec(export_ssf(root, "other", seed=1))
    streams = {}
    for name, c in (("mine", codec), ("other", other)):
        path = root / f"{name}.gvc"
        c.encode(video, path, 1, max_frames=CODED, intra_period=2)
        data = path.read_bytes()
        header, chunks = read_stream(data)
        frames: list[np.ndarray] = []
        c.decode(path, frames.append)
        streams[name] = Stream(data, header, data[: chunks[0].offset], [(int(k.type), k.payload) for k in chunks], frames)
    assert [t for t, _ in streams["mine"].chunks] == [int(ChunkType.CONFIG)] + [FRAMES_TYPE] * CODED
    return codec, streams


def _strings(count: int, rng: random.Random, size: int = 12) -> bytes:
    return b"".join(encode_varint(size) + rng.randbytes(size) for _ in range(count))


def _escape_string(codec: SSFCodec, size: int) -> bytes:
    """A z string whose first symbol is a bypass escape whose 4-bit count reads 15 all along
    (tests/test_latent_bitstream_fuzz.py's crafted payload, for the keyframe's z table 0)."""
    eb = codec.model.img_hyperprior.entropy_bottleneck
    cdf, length = eb._quantized_cdf[0].tolist(), int(eb._cdf_length[0])
    start, freq = cdf[length - 2], cdf[length - 1] - cdf[length - 2]
    target = 2**35 - 1
    state = ((target // freq) << 16) | (start + target % freq)
    return struct.pack("<Q", state) + b"\xff" * (size - 8)


def _damaged(codec: SSFCodec, s: Stream, other: Stream, rng: random.Random) -> list[tuple[str, bytes]]:
    cases: list[tuple[str, bytes]] = []
    for i in rng.sample(range(len(s.data) * 8), 60):
        flipped = bytearray(s.data)
        flipped[i // 8] ^= 1 << (i % 8)
        cases.append((f"flip bit {i}", bytes(flipped)))
    for cut in sorted(rng.sample(range(len(s.data)), 25)):
        cases.append((f"truncated to {cut}", s.data[:cut]))
    cases += [("junk appended", s.data + rng.randbytes(5)), ("a stream appended", s.data + s.data), ("prefix", b"\x00" + s.data),
              ("empty file", b""), ("text", b"not a stream\n" * 3), ("the header alone", s.head)]  # fmt: skip

    h = s.header
    for fields in ({"width": 16384, "height": 16384}, {"width": 2000}, {"width": 0}, {"frames": 0}, {"frames": 2},
                   {"frames": 4}, {"frames": 10_000_000}, {"family": 1}, {"fingerprint": other.header.fingerprint}):  # fmt: skip
        cases.append((f"header {fields}", s.build(head=_header(h, **fields))))
    for fields in ({"version": 0}, {"version": 2}, {"quality": 2}, {"quality": 2**40}, {"intra_period": 0}, {"intra_period": 1}, {"intra_period": 3},
                   {"intra_period": 2**21}, {"pad_multiple": 0}, {"pad_multiple": 64}, {"pad_multiple": 256}, {"pad_multiple": 5000}):  # fmt: skip
        cases.append((f"CONFIG {fields}", s.build(s.config(**fields))))
    for name, payload in (("empty", b""), ("cut", s.chunks[0][1][:-1]), ("extra field", s.chunks[0][1] + b"\x00")):
        cases.append((f"CONFIG {name}", s.build([(int(ChunkType.CONFIG), payload)] + s.chunks[1:])))

    c, f0, f1, f2 = s.chunks
    side = (int(ChunkType.SIDE), b"x")
    layouts = {
        "no CONFIG": [f0, f1, f2], "CONFIG only": [c], "no frame 1": [c, f0, f2], "frame 2 twice": [c, f0, f1, f2, f2],
        "CONFIG twice": [c, c, f0, f1, f2], "SIDE between frames": [c, f0, side, f1, f2],
        "CONFIG as FRAMES": [(FRAMES_TYPE, c[1]), f0, f1, f2], "other stream's chunks": other.chunks,
        "frame 1 (inter) where keyframe 2 goes": [c, f0, f2, f1],
    }  # fmt: skip
    for name, chunks in layouts.items():
        cases.append((f"chunks: {name}", s.build(chunks)))
    cases.append(("chunks: no END", s.build(end=False)))
    cases.append(("FRAMES over the size limit", s.build([c, (FRAMES_TYPE, bytes(200_000)), f1, f2])))
    check0 = f0[1][:4]
    payloads = {
        "shorter than its check": b"\x01\x02",
        "its check alone": check0,
        "one string too many": f0[1] + encode_varint(1) + b"x",
        "a string running past the end": check0 + encode_varint(100) + b"x" * 10,
        "an 11-byte varint length": check0 + b"\xff" * 10 + b"\x01",
    }
    for name, payload in payloads.items():
        cases.append((f"keyframe 0: {name}", s.build([c, (FRAMES_TYPE, payload), f1, f2])))
    # parse cleanly, so only the model check can tell
    for k in range(8):
        cases.append((f"keyframe 0: its check and random strings {k}: model check", s.build([c, (FRAMES_TYPE, check0 + _strings(2, rng)), f1, f2])))
        cases.append((f"inter 1: its check and random strings {k}: model check", s.build([c, f0, (FRAMES_TYPE, f1[1][:4] + _strings(4, rng)), f2])))
    z, y = _split(f0[1])
    escape = check0 + encode_varint(60_000) + _escape_string(codec, 60_000) + encode_varint(len(y)) + y
    cases.append(("keyframe 0: 60 KB crafted escape z string: model check", s.build([c, (FRAMES_TYPE, escape), f1, f2])))
    cases.append(("CONFIG quality 0: model check", s.build(s.config(quality=0))))
    cases.append(("keyframes 0 and 2 swapped: model check", s.build([c, f2, f1, f0])))
    cases.append(("keyframe 0 of the other codec: model check", s.build([c, other.chunks[1], f1, f2])))
    cases.append(("a stream of another codec", other.data))
    return cases


def _split(payload: bytes) -> tuple[bytes, bytes]:
    """A keyframe payload's z and y strings."""
    from gvc_train.coding.container import Chunk
    from gvc_train.codecs.ssf_stream import parse_frame_payload

    _, (z, y) = parse_frame_payload(Chunk(ChunkType.FRAMES, payload, 0, 0), 2)
    return z, y


def _decode(codec: SSFCodec, data: bytes, path: Path) -> list[np.ndarray]:
    path.write_bytes(data)
    return bounded_decode(codec, path, CASE_SECONDS, CASE_MB)[0]


def test_every_damaged_stream_is_one_bitstream_error(setup: tuple[SSFCodec, dict[str, Stream]], tmp_path: Path) -> None:
    codec, streams = setup
    cases = _damaged(codec, streams["mine"], streams["other"], random.Random(5))
    assert len(cases) >= 150 and len({name for name, _ in cases}) == len(cases)
    for name, data in cases:
        try:
            frames = _decode(codec, data, tmp_path / "case.gvc")
        except BitstreamError as e:
            message = str(e)
        except AssertionError as e:
            pytest.fail(f"{name}: {e}")
        else:
            pytest.fail(f"{name}: decoded {len(frames)} frames, no BitstreamError")
        assert message and "\n" not in message, name
        if "another codec" in name:
            assert "another codec" in message, (name, message)
        if "16384" in name:
            assert "frame limit" in message, (name, message)
        if "model check" in name:
            assert "probability model differs" in message, (name, message)


def test_consistent_rewrites_decode_to_the_same_frames(setup: tuple[SSFCodec, dict[str, Stream]], tmp_path: Path) -> None:
    codec, streams = setup
    s = streams["mine"]
    cases: list[tuple[str, bytes, Any]] = [
        ("fps 25/1", s.build(head=_header(s.header, fps_num=25, fps_den=1)), s.frames),
        ("width 65", s.build(head=_header(s.header, width=65)), [f[:, :65] for f in s.frames]),
        ("height 33", s.build(head=_header(s.header, height=33)), [f[:33] for f in s.frames]),
    ]
    for name, data, expected in cases:
        try:
            frames = _decode(codec, data, tmp_path / "case.gvc")
        except BitstreamError as e:
            pytest.fail(f"{name}: {e}")
        assert len(frames) == CODED and all(np.array_equal(a, b) for a, b in zip(frames, expected)), name
