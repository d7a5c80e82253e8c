"""Latent codec bitstreams, damaged every way we can think of: each one ends in one BitstreamError.

Valid streams of a tiny random codec (9 frames of 40x24 from carphone) are mutated: every single
bit flipped, truncated at every length, junk before and after, byte runs overwritten, header
fields and the CONFIG chunk rewritten *with valid CRCs*, chunks removed, duplicated, reordered
and inserted, streams of another codec, files that are not gvc streams. Each case must raise
:class:`BitstreamError` from ``LatentCodec.decode`` within ``CASE_SECONDS``, and none may make
the process's resident memory peak more than ``CASE_MB`` above where it started (no giant
allocation; the peak is each case's own, see ``conftest.peak_rss_growth``).

A few CRC-valid rewrites make a consistent stream that no decoder can tell from a real one.
They are listed in ``_undetectable`` with what they decode to, not skipped:

- header frame rate rewritten (any in-bounds fraction): the same frames;
- header width 33..39 or height 17..23 (same latent size): the same frames, cropped;
- header frame count 6..8 (same latent count): the first frames;
- CONFIG latents-per-chunk 3..64 on a one-chunk, three-latent stream: the same frames.

Rewrites that used to decode to garbage of the right size (stream version 1) now fail each
FRAMES chunk's model check (a CRC32 of the scale indexes and latents the encoder computed, see
``codecs/latent.py``) and are among the damaged cases: CONFIG quality set to another valid
quality, FRAMES chunks reordered, a FRAMES chunk from another stream, a FRAMES payload replaced
by random bytes, and a FRAMES payload crafted so that the rANS decoder's bypass count runs over
the whole payload (before ``coding/rans.py`` padded 16 bytes per payload byte, this read far
past the decoder's buffer and killed the process: SIGSEGV; it is still decoded to the end of
the chunk before the check fails).

``tests/test_latent_cli_errors.py`` puts the same streams through ``gvc`` itself.
"""

from __future__ import annotations

import dataclasses
import random
import shutil
import struct
import time
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import bounded_decode

from gvc_train.codecs.latent import LatentCodec, StreamConfig
from gvc_train.codecs.latent_stream import STREAM_VERSION
from gvc_train.coding.container import (
    FORMAT_VERSION,
    MAGIC,
    BitstreamError,
    ChunkType,
    StreamHeader,
    encode_varint,
    end_marker,
    read_stream,
)

CASE_SECONDS = 2.0
# every case of a 9-frame 40x24 stream peaks at most ~7 MB above its start (measured); a
# runaway allocation (a forged size reaching the tokenizer) is hundreds of MB
CASE_MB = 32.0
FRAMES, WIDTH, HEIGHT = 9, 40, 24


# ---- fixtures -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """9 PNG frames, 40x24, cut from carphone (3 latent frames, 5x3 latent)."""
    from gvc_train.data.sample_videos import sample_video
    from gvc_train.data.video_io import VideoReader

    folder = tmp_path_factory.mktemp("tiny_video")
    with VideoReader(sample_video("carphone_pristine.mp4")) as reader:
        for i, frame in enumerate(reader.frames(FRAMES)):
            Image.fromarray(frame[40 : 40 + HEIGHT, 60 : 60 + WIDTH]).save(folder / f"im{i + 1}.png")
    return folder


@pytest.fixture(scope="module")
def codec(tiny_codec_dir: Path) -> LatentCodec:
    return LatentCodec(tiny_codec_dir)


@pytest.fixture(scope="module")
def other_codec_dir(tiny_codec_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> str:
    """The tiny codec with one latent-codec weight changed: another fingerprint."""
    from gvc_train.codecs.codec_folder import write_codec_json
    from gvc_train.components import load_component, save_component

    folder = tmp_path_factory.mktemp("other_codec")
    for suffix in (".json", ".safetensors"):
        shutil.copy(Path(tiny_codec_dir) / f"tokenizer{suffix}", folder)
    model = load_component(tiny_codec_dir, "latent_codec").eval()
    with torch.no_grad():
        model.no_past.add_(0.5)
    save_component(model, folder, "latent_codec")
    write_codec_json(folder, "latent", {"qualities": 3}, {})
    return str(folder)


@dataclasses.dataclass(frozen=True)
class Stream:
    data: bytes
    header: StreamHeader
    head: bytes  # the header's bytes
    chunks: list[tuple[int, bytes]]  # (type, payload), END excluded
    frames: list[np.ndarray]  # what it decodes to

    def build(self, chunks: list[tuple[int, bytes]] | None = None, head: bytes | None = None, end: bool = True) -> bytes:
        body = b"".join(_chunk(t, p) for t, p in (self.chunks if chunks is None else chunks))
        return (self.head if head is None else head) + body + (end_marker() if end else b"")


def _encode(codec: LatentCodec, video: Path, path: Path, latents_per_chunk: int) -> Stream:
    codec.encode(video, path, quality=1, latents_per_chunk=latents_per_chunk)
    data = path.read_bytes()
    header, chunks = read_stream(data, expected_fingerprint=bytes.fromhex(codec.fingerprint))
    frames: list[np.ndarray] = []
    codec.decode(path, frames.append)
    assert len(frames) == FRAMES and frames[0].shape == (HEIGHT, WIDTH, 3)
    return Stream(data, header, data[: chunks[0].offset], [(int(c.type), c.payload) for c in chunks], frames)


@pytest.fixture(scope="module")
def streams(codec: LatentCodec, tiny_video: Path, other_codec_dir: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Stream]:
    """``chunked``: 1 latent per chunk (CONFIG + 3 FRAMES); ``single``: the default 8 (CONFIG + 1 FRAMES);
    ``other``: ``chunked`` made by ``other_codec_dir``."""
    root = tmp_path_factory.mktemp("streams")
    out = {"chunked": _encode(codec, tiny_video, root / "chunked.gvc", 1), "single": _encode(codec, tiny_video, root / "single.gvc", 8)}
    out["other"] = _encode(LatentCodec(other_codec_dir), tiny_video, root / "other.gvc", 1)
    assert [t for t, _ in out["chunked"].chunks] == [ChunkType.CONFIG] + [ChunkType.FRAMES] * 3
    assert [t for t, _ in out["single"].chunks] == [ChunkType.CONFIG, ChunkType.FRAMES]
    return out


# ---- stream surgery -----------------------------------------------------------------------


def _chunk(type_byte: int, payload: bytes) -> bytes:
    """Any chunk type (END and unknown ones included) with a valid CRC."""
    head = bytes([type_byte]) + encode_varint(len(payload))
    return head + payload + struct.pack("<I", zlib.crc32(payload, zlib.crc32(head)))


def _header(h: StreamHeader, **fields: Any) -> bytes:
    """A header with any field values (bounds not checked) and a valid CRC."""
    v = dict(magic=MAGIC, version=FORMAT_VERSION, family=int(h.family), fingerprint=h.fingerprint, width=h.width,
             height=h.height, frames=h.frames, fps_num=h.fps_num, fps_den=h.fps_den)  # fmt: skip
    v.update(fields)
    body = v["magic"] + bytes([v["version"], v["family"]]) + v["fingerprint"]
    body += b"".join(encode_varint(v[k]) for k in ("width", "height", "frames", "fps_num", "fps_den"))
    return body + struct.pack("<I", zlib.crc32(body))


def _config(s: Stream, **fields: int) -> bytes:
    """The stream's CONFIG payload with fields replaced (``version`` included)."""
    config = dataclasses.asdict(StreamConfig.parse(s.chunks[0][1]))
    values = {"version": STREAM_VERSION, **config, **fields}
    return b"".join(encode_varint(values[k]) for k in ("version", *config))


def _with_config(s: Stream, payload: bytes) -> list[tuple[int, bytes]]:
    return [(int(ChunkType.CONFIG), payload)] + s.chunks[1:]


def _escape_payload(codec: LatentCodec, size: int) -> bytes:
    """A FRAMES payload whose first symbol is a bypass escape with a count of 15s all along.

    The rANS state (the first 8 bytes) decodes to the escape of the first z table and leaves
    2**35 - 1: its low 4 bits, and every 0xff word read after it, count 15 more bypass values.
    """
    z = codec.tables["z"]
    cdf, length = z.cdfs[0], z.lengths[0]
    start, freq = cdf[length - 2], cdf[length - 1] - cdf[length - 2]
    target = 2**35 - 1
    state = ((target // freq) << 16) | (start + target % freq)
    return struct.pack("<Q", state) + b"\xff" * (size - 8)


def _damaged(
    codec: LatentCodec, s: Stream, single: Stream, other: Stream, rng: random.Random, tiny_video: Path
) -> list[tuple[str, bytes]]:
    """(name, bytes) cases that must each raise BitstreamError."""
    cases: list[tuple[str, bytes]] = []
    # every bit of the one-chunk stream (header, CONFIG, FRAMES, every CRC, END); a sample of the other
    every_bit, some_bits = range(len(single.data) * 8), rng.sample(range(len(s.data) * 8), 80)
    for data, label, bits in ((single.data, "single", every_bit), (s.data, "chunked", some_bits)):
        for i in bits:
            flipped = bytearray(data)
            flipped[i // 8] ^= 1 << (i % 8)
            cases.append((f"{label}: flip bit {i}", bytes(flipped)))
    for cut in range(len(single.data)):
        cases.append((f"single: truncated to {cut}", single.data[:cut]))
    boundaries = {len(s.head)} | {len(s.build(s.chunks[:k], end=False)) for k in range(1, 5)}
    for cut in sorted({b + d for b in boundaries for d in (-1, 0, 1)} | set(rng.sample(range(len(s.data)), 15))):
        if 0 <= cut < len(s.data):
            cases.append((f"chunked: truncated to {cut}", s.data[:cut]))
    for n in (1, 2, 7, 40):
        cases.append((f"{n} junk bytes appended", s.data + rng.randbytes(n)))
    cases += [("END appended again", s.data + b"\x01"), ("zeros appended", single.data + bytes(16)),
              ("a whole stream appended", single.data + single.data)]  # fmt: skip
    for prefix in (b"\x00", rng.randbytes(5), b"GVC", s.head, single.data):
        cases.append((f"prefix {prefix[:8].hex()}.. ({len(prefix)} bytes)", prefix + s.data))
    for k in range(40):
        data = bytearray(rng.choice((s.data, single.data)))
        start, n = rng.randrange(len(data)), rng.randint(1, 16)
        data[start : start + n] = rng.randbytes(len(data[start : start + n]))
        cases.append((f"random run {k}: {n} bytes at {start}", bytes(data)))
    for fill in (0x00, 0xFF):
        cases.append((f"CONFIG+FRAMES overwritten with {fill:#x}", s.data[: len(s.head)] + bytes([fill]) * (len(s.data) - len(s.head))))

    # header fields rewritten, CRC recomputed
    h = s.header
    header_fields: list[dict[str, Any]] = [
        *({"width": w} for w in (0, 32, 41, 48, 80, 16384, 16385, 2**40)),
        *({"height": v} for v in (0, 16, 25, 144, 16384, 16385)),
        {"width": 16384, "height": 16384},
        *({"frames": n} for n in (0, 1, 5, 10, 96, 10_000_000, 10_000_001)),
        *({"fps_num": n} for n in (0, 1_000_001)), {"fps_den": 0}, {"fps_den": 2**40},
        *({"family": f} for f in (0, 2, 3, 4, 5, 255)),
        *({"version": v} for v in (0, 2, 255)),
        {"magic": b"GVD"}, {"magic": b"gvc"},
        {"fingerprint": h.fingerprint[:7]}, {"fingerprint": h.fingerprint + b"\x00"},
    ]  # fmt: skip
    for fields in header_fields:
        cases.append((f"header {fields}", s.build(head=_header(h, **fields))))
    for name, fp in (("zeros", bytes(8)), ("reversed", h.fingerprint[::-1]), ("of the other codec", other.header.fingerprint)):
        cases.append((f"header fingerprint {name}: another codec", s.build(head=_header(h, fingerprint=fp))))

    # CONFIG rewritten with a valid CRC but fields that do not fit the header or the codec
    config_fields: list[dict[str, int]] = [
        *({"version": v} for v in sorted({0, STREAM_VERSION - 1, STREAM_VERSION + 1, 2**63})),
        *({"quality": q} for q in (3, 4, 1000, 2**63)),
        *({"latents_per_chunk": n} for n in (0, 2, 3, 8, 64, 65, 2**40)),
        *({"latent_frames": n} for n in (0, 2, 4, 2**40)),
        *({"latent_height": n} for n in (0, 2, 4, 18)),
        *({"latent_width": n} for n in (0, 4, 6, 22)),
    ]  # fmt: skip
    for fields in config_fields:
        cases.append((f"CONFIG {fields}", s.build(_with_config(s, _config(s, **fields)))))
    full = _config(s)
    for name, payload in (("empty", b""), ("cut", full[:-1]), ("extra field", full + b"\x00"), ("11-byte varint", b"\xff" * 10 + b"\x01")):
        cases.append((f"CONFIG {name}", s.build(_with_config(s, payload))))
    for n in (1, 2):
        forged = single.build(_with_config(single, _config(single, latents_per_chunk=n)))
        cases.append((f"single: CONFIG latents_per_chunk={n} (more chunks than there are)", forged))
    # the header blown up to 16384x16384 (or 10M frames) with a CONFIG that agrees: refused before decoding
    big = _header(dataclasses.replace(h, width=16384, height=16384))
    for label, t in (("", s), ("single: ", single)):
        forged = t.build(_with_config(t, _config(t, latent_height=2048, latent_width=2048)), big)
        cases.append((f"{label}header and CONFIG both 16384x16384", forged))
    forged = s.build(_with_config(s, _config(s, latent_frames=2_500_000)), _header(dataclasses.replace(h, frames=9_999_997)))
    cases.append(("header and CONFIG both 10M frames", forged))

    # chunks removed, duplicated, reordered, inserted, all with valid CRCs
    c, f1, f2, f3 = s.chunks
    side, unknown, zero = (int(ChunkType.SIDE), b"x"), (7, b"x"), (0, b"")
    end_chunk = (int(ChunkType.END), b"")
    layouts = {
        "no CONFIG": [f1, f2, f3], "no chunks": [], "CONFIG only": [c], "no FRAMES 1": [c, f2, f3],
        "no FRAMES 2": [c, f1, f3], "no FRAMES 3": [c, f1, f2], "CONFIG twice": [c, c, f1, f2, f3],
        "FRAMES 1 twice": [c, f1, f1, f2, f3], "FRAMES 3 twice": [c, f1, f2, f3, f3], "CONFIG last": [f1, f2, f3, c],
        "CONFIG after FRAMES 1": [f1, c, f2, f3], "CONFIG again at the end": [c, f1, f2, f3, c],
        "SIDE first": [side, c, f1, f2, f3], "SIDE after CONFIG": [c, side, f1, f2, f3], "SIDE last": [c, f1, f2, f3, side],
        "unknown chunk type 7": [c, f1, unknown, f2, f3], "chunk type 0": [c, f1, zero, f2, f3],
        "END with a length in the middle": [c, f1, end_chunk, f2, f3],
        "FRAMES 1 as SIDE": [c, (int(ChunkType.SIDE), f1[1]), f2, f3],
        "CONFIG as FRAMES": [(int(ChunkType.FRAMES), c[1]), f1, f2, f3],
        "other stream's chunks": other.chunks + [f3],
    }  # fmt: skip
    for name, chunks in layouts.items():
        cases.append((f"chunks: {name}", s.build(chunks)))
    cases.append(("chunks: END after FRAMES 1", s.build([c, f1]) + s.build([f2, f3], head=b"")))
    cases.append(("chunks: no END", s.build(end=False)))
    oversize = 64 * 1024 + 8 * codec.codec.symbols_per_frame(3, 5) * 64 + 1  # one byte over what a 5x3-latent chunk may claim
    cases.append(("chunks: FRAMES payload over the size limit", s.build([c, (int(ChunkType.FRAMES), bytes(oversize)), f2, f3])))

    # other codecs, other files
    cases.append(("a stream of another codec", other.data))
    cases.append(("other stream's header: another codec", s.build(head=other.head)))
    cases.append(("empty file", b""))
    cases.append(("a PNG", (tiny_video / "im1.png").read_bytes()))
    cases.append(("an mp4's head", b"\x00\x00\x00\x20ftypisom" + rng.randbytes(200)))
    cases.append(("text", b"GVC is a video codec\n" * 4))
    cases.append(("the header alone", s.head))

    # consistent rewrites that only the FRAMES chunks' model check can tell (all valid CRCs)
    for q in (0, 2):
        cases.append((f"CONFIG quality {q}: model check", s.build(_with_config(s, _config(s, quality=q)))))
    for name, chunks in (("FRAMES 2 and 3 swapped", [c, f1, f3, f2]), ("FRAMES 3, 1, 2", [c, f3, f1, f2]),
                         ("FRAMES 2 from the other codec's stream", [c, f1, other.chunks[2], f3])):  # fmt: skip
        cases.append((f"chunks: {name}: model check", s.build(chunks)))
    for n in (0, 1, 30, 3000):
        cases.append((f"FRAMES 2 payload: {n} random bytes", s.build([c, f1, (int(ChunkType.FRAMES), rng.randbytes(n)), f3])))
    for n in (4, 30, 3000):
        payload = f1[1][:4] + rng.randbytes(n - 4)  # FRAMES 1's own check, then garbage
        cases.append((f"FRAMES 1 payload: its check and {n - 4} random bytes: model check", s.build([c, (int(ChunkType.FRAMES), payload), f2, f3])))
    crafted = s.build([c, (int(ChunkType.FRAMES), f1[1][:4] + _escape_payload(codec, 60_000)), f2, f3])
    cases.append(("FRAMES 1 payload: 60 KB crafted escape (SIGSEGV before rans.py's fix): model check", crafted))
    return cases


def _undetectable(codec: LatentCodec, s: Stream, single: Stream, other: Stream, rng: random.Random) -> list[tuple[str, bytes, Any]]:
    """(name, bytes, expected) CRC-valid rewrites that make a consistent stream.

    ``expected``: the frames it must decode to exactly, or None for garbage of the header's size.
    """
    h, (c, f1, f2, f3) = s.header, s.chunks
    cases: list[tuple[str, bytes, Any]] = []
    for num, den in ((25, 1), (30000, 1001), (1, 1_000_000), (1_000_000, 1)):
        cases.append((f"header fps {num}/{den}", s.build(head=_header(h, fps_num=num, fps_den=den)), s.frames))
    for w in (33, 39):
        cases.append((f"header width {w}", s.build(head=_header(h, width=w)), [f[:, :w] for f in s.frames]))
    for hh in (17, 23):
        cases.append((f"header height {hh}", s.build(head=_header(h, height=hh)), [f[:hh] for f in s.frames]))
    for n in (6, 8):
        cases.append((f"header frames {n}", s.build(head=_header(h, frames=n)), s.frames[:n]))
    for n in (3, 9, 64):
        forged = single.build(_with_config(single, _config(single, latents_per_chunk=n)))
        cases.append((f"single: CONFIG latents_per_chunk {n}", forged, single.frames))
    return cases


def _decode(codec: LatentCodec, data: bytes, path: Path) -> tuple[list[np.ndarray], float]:
    """Decode ``data``; the time and the memory peak of each call, failed or not, are bounded."""
    path.write_bytes(data)
    return bounded_decode(codec, path, CASE_SECONDS, CASE_MB)


# ---- the fuzz tests -----------------------------------------------------------------------


def test_every_damaged_stream_is_one_bitstream_error(
    codec: LatentCodec, streams: dict[str, Stream], tiny_video: Path, tmp_path: Path
) -> None:
    cases = _damaged(codec, streams["chunked"], streams["single"], streams["other"], random.Random(7), tiny_video)
    assert len(cases) >= 1000 and len({name for name, _ in cases}) == len(cases)
    slowest = (0.0, "")
    for name, data in cases:
        started = time.perf_counter()
        try:
            frames, _ = _decode(codec, data, tmp_path / "case.gvc")
        except BitstreamError as e:
            message = str(e)
        except AssertionError as e:  # _decode's time or memory bound
            pytest.fail(f"{name}: {e}")
        else:
            pytest.fail(f"{name}: decoded {len(frames)} frames, no BitstreamError")
        slowest = max(slowest, (time.perf_counter() - started, name))
        assert message and "\n" not in message, name
        if "another codec" in name:
            assert "another codec" in message, (name, message)
        if "16384x16384" in name:
            assert "chunk limit" in message, (name, message)
        if "model check" in name:
            assert "probability model differs" in message, (name, message)
    assert slowest[0] < CASE_SECONDS, slowest


def test_forged_giant_frames_are_refused_before_decoding(codec: LatentCodec, streams: dict[str, Stream], tmp_path: Path) -> None:
    """16384x16384 in both the header and CONFIG is a consistent stream: the chunk-pixel bound refuses it
    (without it: ~24 s of rANS decoding, then tens of GB for the tokenizer)."""
    s = streams["chunked"]
    big = _header(dataclasses.replace(s.header, width=16384, height=16384))
    forged = s.build(_with_config(s, _config(s, latent_height=2048, latent_width=2048)), big)
    with pytest.raises(BitstreamError, match="chunk limit"):
        _decode(codec, forged, tmp_path / "big.gvc")
    with pytest.raises(BitstreamError, match="does not match"):  # the header alone
        _decode(codec, s.build(head=big), tmp_path / "big.gvc")


def test_encoder_refuses_chunks_over_the_decoders_bound(tiny_codec_dir: Path, tiny_video: Path, tmp_path: Path) -> None:
    small = LatentCodec(tiny_codec_dir)
    small.max_chunk_pixels = small.chunk_pixels(WIDTH, HEIGHT, 2)
    small.encode(tiny_video, tmp_path / "ok.gvc", 1, latents_per_chunk=2)
    with pytest.raises(ValueError, match="chunk limit"):
        small.encode(tiny_video, tmp_path / "big.gvc", 1, latents_per_chunk=3)
    assert not (tmp_path / "big.gvc").exists() and sorted(p.name for p in tmp_path.iterdir()) == ["ok.gvc"]


def test_undetectable_rewrites_decode_to_a_consistent_video(codec: LatentCodec, streams: dict[str, Stream], tmp_path: Path) -> None:
    s = streams["chunked"]
    cases = _undetectable(codec, s, streams["single"], streams["other"], random.Random(11))
    for name, data, expected in cases:
        try:
            frames, _ = _decode(codec, data, tmp_path / "case.gvc")
        except AssertionError as e:
            pytest.fail(f"{name}: {e}")
        header, _ = read_stream(data)
        assert len(frames) == header.frames and all(f.shape == (header.height, header.width, 3) for f in frames), name
        if expected is not None:
            assert len(frames) == len(expected) and all(np.array_equal(a, b) for a, b in zip(frames, expected)), name


def test_a_stream_of_another_codec_says_so(codec: LatentCodec, other_codec_dir: str, streams: dict[str, Stream], tmp_path: Path) -> None:
    with pytest.raises(BitstreamError, match="another codec"):
        _decode(codec, streams["other"].data, tmp_path / "other.gvc")
    with pytest.raises(BitstreamError, match="another codec"):
        _decode(LatentCodec(other_codec_dir), streams["chunked"].data, tmp_path / "mine.gvc")
    for missing in (tmp_path / "nothing.gvc", tmp_path):
        with pytest.raises(BitstreamError, match="no bitstream"):
            codec.decode(missing, lambda frame: None)
