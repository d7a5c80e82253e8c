"""The bitstream container: round trip, overhead, and one clear error for every kind of damage."""

from __future__ import annotations

import io
import random
import time

import pytest

from gvc_train.coding.container import (
    FINGERPRINT_BYTES,
    BitstreamError,
    BitstreamWriter,
    ChunkType,
    StreamHeader,
    encode_varint,
    end_marker,
    fingerprint_prefix,
    fps_fraction,
    header_bytes,
    read_stream,
)

FP = fingerprint_prefix("0123456789abcdef" * 4)
FAMILY = 1  # any stream id: the container does not know families
HEADER = StreamHeader(FAMILY, FP, width=176, height=144, frames=96, fps_num=30000, fps_den=1001)


def _stream(chunks: list[tuple[ChunkType, bytes]], header: StreamHeader = HEADER) -> bytes:
    buf = io.BytesIO()
    with BitstreamWriter(buf, header) as writer:
        for chunk_type, payload in chunks:
            writer.write_chunk(chunk_type, payload)
    assert writer.bytes_written == len(buf.getvalue())
    return buf.getvalue()


def _valid_streams() -> list[bytes]:
    rng = random.Random(0)
    streams = [_stream([(ChunkType.CONFIG, b"\x03")] + [(ChunkType.FRAMES, rng.randbytes(rng.randint(0, 300))) for _ in range(6)])]
    streams.append(_stream([(ChunkType.FRAMES, rng.randbytes(5000))]))
    streams.append(_stream([]))
    return streams


def test_round_trip() -> None:
    payloads = [(ChunkType.CONFIG, b"q=3"), (ChunkType.FRAMES, bytes(range(256)) * 3), (ChunkType.SIDE, b"")]
    header, chunks = read_stream(_stream(payloads), expected_fingerprint=FP)
    assert header == HEADER and abs(header.fps - 29.97) < 0.01
    assert [(c.type, c.payload) for c in chunks] == payloads
    assert chunks[1].offset == chunks[0].offset + chunks[0].size


@pytest.mark.parametrize("value", [0, 1, 127, 128, 300, 2**32, 2**63])
def test_varints_round_trip(value: int) -> None:
    from gvc_train.coding.container import read_varint

    assert read_varint(io.BytesIO(encode_varint(value)), "test") == value


def test_a_stream_cut_at_a_chunk_boundary_and_ended_again_is_valid() -> None:
    """What a progressive family does: keep a prefix of whole chunks, write END after it."""
    data = _stream([(ChunkType.CONFIG, b"q"), (ChunkType.FRAMES, b"coarse"), (ChunkType.FRAMES, b"fine")])
    assert data.endswith(end_marker()) and len(end_marker()) == 1
    _, chunks = read_stream(data)
    cut = data[: chunks[1].offset + chunks[1].size] + end_marker()
    assert [c.payload for c in read_stream(cut)[1]] == [b"q", b"coarse"]
    with pytest.raises(ValueError, match="end_marker"):
        BitstreamWriter(io.BytesIO(), HEADER).write_chunk(ChunkType.END, b"")


def test_fps_fractions() -> None:
    assert fps_fraction(25.0) == (25, 1)
    assert fps_fraction(30000 / 1001) == (30000, 1001)
    assert fps_fraction(23.976023976) == (24000, 1001)


def test_fixed_overhead_is_under_2_percent_at_001_bpp() -> None:
    """96 frames of 176x144 at 0.01 bpp are ~3 KB; header, one chunk per latent frame (24) and END."""
    payload_bytes = round(0.01 * 176 * 144 * 96 / 8)
    per_chunk = payload_bytes // 24
    stream = _stream([(ChunkType.FRAMES, bytes(per_chunk))] * 24)
    overhead = len(stream) - 24 * per_chunk
    fixed = len(header_bytes(HEADER)) + 1  # header and END marker
    assert fixed <= 28 and fixed / (payload_bytes + fixed) < 0.01
    # 24 chunks cost 6 bytes each: a codec at this rate should group latent frames per chunk
    grouped = _stream([(ChunkType.FRAMES, bytes(payload_bytes // 4))] * 4)
    grouped_overhead = len(grouped) - 4 * (payload_bytes // 4)
    assert grouped_overhead / len(grouped) < 0.02, grouped_overhead
    assert overhead > grouped_overhead


def _mutations(data: bytes, rng: random.Random) -> list[tuple[str, bytes]]:
    cases = []
    for _ in range(60):
        i = rng.randrange(len(data) * 8)
        flipped = bytearray(data)
        flipped[i // 8] ^= 1 << (i % 8)
        cases.append((f"flip bit {i}", bytes(flipped)))
    for _ in range(30):
        cut = rng.randrange(len(data))
        cases.append((f"truncate to {cut}", data[:cut]))
    for _ in range(10):
        cases.append(("junk appended", data + rng.randbytes(rng.randint(1, 40))))
        cases.append(("junk", rng.randbytes(rng.randint(0, 200))))
        start = rng.randrange(len(data))
        burst = bytearray(data)
        burst[start : start + 8] = rng.randbytes(len(burst[start : start + 8]))
        if bytes(burst) != data:
            cases.append((f"burst at {start}", bytes(burst)))
    # header fields swapped or enlarged, CRC left as it was
    swapped = bytearray(data)
    swapped[5:13] = swapped[5:13][::-1]
    cases.append(("fingerprint reversed", bytes(swapped)))
    big = header_bytes(StreamHeader(FAMILY, FP, 16384, 16384, 10_000_000, 1)) + data[len(header_bytes(HEADER)) :]
    big = bytearray(big)
    big[-5] ^= 0xFF
    cases.append(("huge frame size with damaged tail", bytes(big)))
    cases.append(("another codec", data.replace(FP, b"\x00" * FINGERPRINT_BYTES, 1)))
    return cases


def test_fuzzed_streams_all_end_in_one_clear_error() -> None:
    rng = random.Random(1234)
    cases = [case for data in _valid_streams() for case in _mutations(data, rng)]
    assert len(cases) >= 300
    slowest = 0.0
    for name, data in cases:
        started = time.perf_counter()
        with pytest.raises(BitstreamError) as info:
            read_stream(data, expected_fingerprint=FP)
        slowest = max(slowest, time.perf_counter() - started)
        message = str(info.value)
        assert message and "\n" not in message, name
    assert slowest < 0.5  # no hang, no giant allocation


def test_claimed_giant_chunk_is_refused_before_reading() -> None:
    head = header_bytes(HEADER)
    forged = head + bytes([int(ChunkType.FRAMES)]) + encode_varint(2**40) + b"x" * 10
    with pytest.raises(BitstreamError, match="over the"):
        read_stream(forged)


def test_a_failed_encode_leaves_no_end_marker() -> None:
    buf = io.BytesIO()
    with pytest.raises(RuntimeError):
        with BitstreamWriter(buf, HEADER) as writer:
            writer.write_chunk(ChunkType.FRAMES, b"abc")
            raise RuntimeError("encoder crashed")
    with pytest.raises(BitstreamError, match="truncated"):
        read_stream(buf.getvalue())
