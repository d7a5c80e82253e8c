"""The progressive codec at inference (codecs/progressive.py, progressive_scales.py,
progressive_stream.py): round trips at every rate point, file bits against the model's own bits,
thread-count independence, cuts at every scale (``gvc truncate --scales`` and ``--bytes``),
``gvc info``'s bits per scale, export through ``gvc-export``, and damaged streams (each one
BitstreamError, or a valid decode where the damage is a chunk-boundary cut).

Tiny random components (tests/progressive_fixtures.py: a 4-channel CausalVAE, a 3-scale
quantizer, a one-block context model): mechanics, not quality. A 40x32 clip of 9 frames is 3
latent frames of 5x4.
"""

from __future__ import annotations

import json
import math
import random
import struct
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import peak_rss_growth
from progressive_fixtures import CONTEXT, FRAMES, GROUP, HEIGHT, KINDS, SCALES, WIDTH, write_clip, write_codec_dir
from progressive_fixtures import components as _components

from gvc_train import gvc_cli
from gvc_train.codecs.base import open_codec
from gvc_train.codecs.progressive import ProgressiveCodec
from gvc_train.codecs.progressive_scales import FILL_MODES
from gvc_train.codecs.progressive_stream import StreamConfig, frames_payload, parse_frames
from gvc_train.coding.container import BitstreamError, Chunk, ChunkType, StreamHeader, encode_varint, end_marker, header_bytes, read_stream
from gvc_train.export import main as export_main
from gvc_train.lit.checkpoint_meta import CHECKPOINT_KEY
from gvc_train.models import ProgressiveContextModel


@pytest.fixture(scope="module")
def codec_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return {kind: write_codec_dir(tmp_path_factory.mktemp(f"progressive_{kind}"), kind) for kind in KINDS}


@pytest.fixture(scope="module")
def video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_clip(tmp_path_factory.mktemp("video"))


@pytest.fixture(scope="module")
def codecs(codec_dirs: dict[str, Path]) -> dict[str, ProgressiveCodec]:
    return {kind: open_codec(folder) for kind, folder in codec_dirs.items()}


def _decode(codec: ProgressiveCodec, path: Path, **kw) -> list[np.ndarray]:
    frames: list[np.ndarray] = []
    codec.decode(path, frames.append, **kw)
    return frames


def _container_bytes(data: bytes) -> int:
    """Bytes of the stream that are not entropy-coded tokens: header, chunk framing, CONFIG,
    the FRAMES chunks' group/scale/model-check fields, END."""
    header, chunks = read_stream(data)
    coded = sum(len(parse_frames(c).coded) for c in chunks if c.type == ChunkType.FRAMES)
    return len(data) - coded


# ---- round trips ------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_every_rate_point_round_trips_and_costs_what_the_model_says(kind: str, codecs, video: Path, tmp_path: Path) -> None:
    codec = codecs[kind]
    assert codec.num_rate_points == SCALES and codec.family == "progressive"
    sizes = []
    for rate in range(SCALES):
        path, recon = tmp_path / f"r{rate}.gvc", []
        report = codec.encode(video, path, rate, on_recon=recon.append, latents_per_chunk=GROUP)
        decoded = _decode(codec, path)
        assert len(decoded) == FRAMES and decoded[0].shape == (HEIGHT, WIDTH, 3) and decoded[0].dtype == np.uint8
        assert all(np.array_equal(a, b) for a, b in zip(recon, decoded)), "on_recon is exactly what decode gives"
        data = path.read_bytes()
        assert report.file_bytes == len(data) and report.chunks == 2 * (rate + 1)
        # the coder writes the model's bits at the quantized frequencies plus its flush (a 32-bit
        # word rounding, the end marker) per chunk; everything else is the container's
        assert report.model_bits <= report.payload_bytes * 8 <= report.model_bits + 96 * report.chunks, report
        assert abs(report.estimate_bits - report.model_bits) <= 1e-3 * report.model_bits + 0.1
        assert report.file_bytes == report.payload_bytes + _container_bytes(data)
        sizes.append(report.file_bytes)
    assert sizes[0] < sizes[1] < sizes[2]


def test_decoding_is_the_same_with_one_and_two_caller_threads(codecs, video: Path, tmp_path: Path) -> None:
    codec, path = codecs["codebook"], tmp_path / "s.gvc"
    codec.encode(video, path, SCALES - 1, latents_per_chunk=GROUP)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = _decode(codec, path)
        torch.set_num_threads(2)
        two = _decode(codec, path)
    finally:
        torch.set_num_threads(threads)
    assert len(one) == FRAMES and all(np.array_equal(a, b) for a, b in zip(one, two))


# ---- cuts -------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_a_cut_at_every_scale_is_the_stream_coded_at_that_rate_and_decodes(kind: str, codecs, video: Path, tmp_path: Path) -> None:
    codec = codecs[kind]
    full = tmp_path / "full.gvc"
    codec.encode(video, full, SCALES - 1, latents_per_chunk=GROUP)
    sizes: list[int] = []
    for scales in range(1, SCALES + 1):
        cut, coded, recon = tmp_path / f"cut{scales}.gvc", tmp_path / f"coded{scales}.gvc", []
        done = ProgressiveCodec.truncate(full, cut, scales=scales)
        assert done == {"scales": scales, "of_scales": SCALES, "bytes": cut.stat().st_size, "source_bytes": full.stat().st_size}
        codec.encode(video, coded, scales - 1, on_recon=recon.append, latents_per_chunk=GROUP)
        # the cut keeps the full stack's top (its state) where the stream coded at that rate has
        # its own: other bytes, about the same size, and the same frames
        sizes.append(cut.stat().st_size - coded.stat().st_size)
        decoded = _decode(codec, cut)
        assert len(decoded) == FRAMES and all(np.array_equal(a, b) for a, b in zip(recon, decoded)), scales
        assert all(np.array_equal(a, b) for a, b in zip(decoded, _decode(codec, coded))), scales
    assert sizes[-1] == 0 and all(abs(d) <= 8 * 2 for d in sizes), sizes  # within 2 words a group (2 groups)
    by_fill = {fill: _decode(codec, tmp_path / "cut1.gvc", fill=fill) for fill in FILL_MODES}
    assert not np.array_equal(by_fill["argmax"][-1], by_fill["zero"][-1])


def test_gvc_truncate_bytes_info_and_the_family_that_cannot_be_cut(codec_dirs, video: Path, tmp_path: Path, capsys) -> None:
    codec_dir, full = codec_dirs["codebook"], tmp_path / "full.gvc"
    assert gvc_cli.main(["encode", str(video), str(full), "--codec", str(codec_dir), "--quality", str(SCALES - 1), "--latents-per-chunk", str(GROUP)]) == 0
    sizes = {}
    for k in range(1, SCALES + 1):
        assert gvc_cli.main(["truncate", str(full), str(tmp_path / f"k{k}.gvc"), "--scales", str(k)]) == 0
        sizes[k] = (tmp_path / f"k{k}.gvc").stat().st_size
    assert sizes[SCALES] == full.stat().st_size and sizes[1] < sizes[2] < sizes[3]
    capsys.readouterr()
    assert gvc_cli.main(["truncate", str(full), str(tmp_path / "b.gvc"), "--bytes", str(sizes[2] + 1)]) == 0
    assert capsys.readouterr().out.strip().endswith(f"2 of {SCALES} scales, {sizes[2]} bytes (from {sizes[SCALES]})")
    assert (tmp_path / "b.gvc").read_bytes() == (tmp_path / "k2.gvc").read_bytes()
    assert gvc_cli.main(["truncate", str(full), str(tmp_path / "b.gvc"), "--bytes", str(sizes[1] - 1), "--overwrite"]) == 2
    assert f"even one scale needs {sizes[1]} bytes" in capsys.readouterr().err
    assert gvc_cli.main(["truncate", str(tmp_path / "k2.gvc"), str(tmp_path / "x.gvc"), "--scales", "3"]) == 2
    assert "holds scales 1..2" in capsys.readouterr().err and not (tmp_path / "x.gvc").exists()
    assert gvc_cli.main(["truncate", str(full), str(full), "--scales", "1", "--overwrite"]) == 2  # never the input
    assert full.stat().st_size == sizes[SCALES]
    # a family without cuts: the default Codec.truncate, one line, nothing written
    other = tmp_path / "latent.gvc"
    other.write_bytes(header_bytes(StreamHeader(1, bytes(8), 16, 16, 1, 25)) + end_marker())
    capsys.readouterr()
    assert gvc_cli.main(["truncate", str(other), str(tmp_path / "y.gvc"), "--scales", "1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot be cut" in err and not (tmp_path / "y.gvc").exists()

    assert gvc_cli.main(["decode", str(tmp_path / "k1.gvc"), str(tmp_path / "k1_frames"), "--codec", str(codec_dir)]) == 0
    assert len(list((tmp_path / "k1_frames").glob("*.png"))) == FRAMES
    capsys.readouterr()
    assert gvc_cli.main(["info", str(full), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)["chunks"]
    assert [(r["group"], r["scale"]) for r in rows[1:]] == [(g, s) for g in range(2) for s in range(1, SCALES + 1)]
    assert rows[0]["kept_scales"] == SCALES and all(r["bits_per_frame"] > 0 for r in rows[1:])
    assert gvc_cli.main(["info", str(tmp_path / "k2.gvc")]) == 0
    out = capsys.readouterr().out
    assert "scale 1 " in out and "scale 2 " in out and "scale 3 " not in out and " bpp" in out


# ---- export -----------------------------------------------------------------------------------


def _checkpoint(path: Path, modules: dict[str, torch.nn.Module]) -> Path:
    """What the context-model stage's checkpoint holds for its components (lit/checkpoint_meta.py)."""
    state, components = {}, {}
    for name, module in modules.items():
        state |= {f"{name}.{k}": v for k, v in module.state_dict().items()}
        components[name] = {"class": type(module).__name__, "config": module.config, "state_prefix": f"{name}."}
    torch.save({"state_dict": state, CHECKPOINT_KEY: {"components": components, "provenance": {"recipe": "test"}}}, path)
    return path


def test_gvc_export_writes_a_progressive_folder_and_refuses_parts_that_do_not_fit(video: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "exported"
    assert export_main([str(_checkpoint(tmp_path / "stage2.ckpt", _components("bitwise"))), "--out", str(out)]) == 0
    meta = json.loads((out / "codec.json").read_text())
    assert meta["family"] == "progressive" and meta["qualities"] == SCALES and meta["fill"] in FILL_MODES
    codec = open_codec(out)
    assert isinstance(codec, ProgressiveCodec) and codec.default_rate_point == 1
    assert codec.encode(video, tmp_path / "s.gvc", 0, max_frames=1).frames == 1

    parts = _components("codebook")
    parts["context_model"] = ProgressiveContextModel(**{**CONTEXT, "num_scales": 2})
    capsys.readouterr()
    assert export_main([str(_checkpoint(tmp_path / "bad.ckpt", parts)), "--out", str(tmp_path / "bad")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "the quantizer's num_scales is 3, the context model's 2" in err and not (tmp_path / "bad").exists()


# ---- damaged streams --------------------------------------------------------------------------


def _chunk(type_byte: int, payload: bytes) -> bytes:
    head = bytes([type_byte]) + encode_varint(len(payload))
    return head + payload + struct.pack("<I", zlib.crc32(payload, zlib.crc32(head)))


def _config(config: StreamConfig, **fields: int) -> bytes:
    values = {"version": config.version, **config.__dict__, **fields}
    return b"".join(encode_varint(values[k]) for k in ("version", *config.__dict__))


def _variants(data: bytes, rng: random.Random) -> list[tuple[str, bytes, bool]]:
    """(name, bytes, may decode) for a stream of two groups of 3 scale chunks."""
    header, chunks = read_stream(data)
    head = data[: chunks[0].offset]
    body = [(int(c.type), c.payload) for c in chunks]
    config = StreamConfig.parse(chunks[0].payload)

    def build(parts: list[tuple[int, bytes]], end: bool = True) -> bytes:
        return head + b"".join(_chunk(t, p) for t, p in parts) + (end_marker() if end else b"")

    cases: list[tuple[str, bytes, bool]] = []
    for i in rng.sample(range(len(data) * 8), 160):
        flipped = bytearray(data)
        flipped[i // 8] ^= 1 << (i % 8)
        cases.append((f"flip bit {i}", bytes(flipped), False))
    for cut in range(0, len(data), 3):
        cases.append((f"truncated to {cut}", data[:cut], False))
    for k in range(1, len(body) + 1):  # cut at every chunk boundary, END appended: valid inside the last group only
        cases.append((f"prefix of {k} chunks", build(body[:k]), k > 1 + SCALES))
    cases += [
        ("junk after END", data + b"\x00", False),
        ("junk instead of END", data[:-1] + b"\x07", False),
        ("random bytes", bytes(rng.randrange(256) for _ in range(len(data))), False),
        ("empty", b"", False),
    ]
    for name, value in [("num_scales", 2), ("num_scales", 4), ("kept_scales", 2), ("kept_scales", 4), ("latents_per_group", 2), ("latents_per_group", 3),
                        ("latents_per_group", 0), ("latents_per_group", 1 << 20), ("latent_frames", 3), ("latent_height", 1 << 30), ("version", StreamConfig.version + 1),
                        ("coded_scales", 2), ("coded_scales", 4), ("coded_scales", 0)]:  # fmt: skip
        cases.append((f"CONFIG {name}={value}", build([(int(ChunkType.CONFIG), _config(config, **{name: value}))] + body[1:]), False))
    frames = [parse_frames(Chunk(ChunkType(t), p, 0, 0)) for t, p in body[1:]]
    for i, part in enumerate(frames):
        others = [(t, p) for t, p in body]
        for label, payload in [
            ("random payload", frames_payload(part.group, part.scale, part.check, bytes(rng.randrange(256) for _ in range(len(part.coded))))),
            ("wrong check", frames_payload(part.group, part.scale, part.check ^ 1, part.coded)),
            ("other scale", frames_payload(part.group, part.scale % SCALES + 1, part.check, part.coded)),
            ("other group", frames_payload(part.group ^ 1, part.scale, part.check, part.coded)),
            ("empty coded", frames_payload(part.group, part.scale, part.check, b"")),
            ("short", frames_payload(part.group, part.scale, part.check, b"")[:-2]),
        ]:
            if payload == body[i + 1][1]:
                continue  # a section with no words of its own (its symbols live in the stack's state): nothing to damage
            others[i + 1] = (int(ChunkType.FRAMES), payload)
            cases.append((f"chunk {i + 1}: {label}", build(others), False))
    cases += [
        ("two chunks swapped", build([body[0], body[2], body[1], *body[3:]]), False),
        ("a chunk twice", build([*body[:3], body[2], *body[3:]]), False),
        ("a SIDE chunk", build([*body[:2], (int(ChunkType.SIDE), b"x"), *body[2:]]), False),
        ("no CONFIG", build(body[1:]), False),
        ("CONFIG twice", build([body[0], *body]), False),
        ("header frames 9", _header_with(header, frames=9) + data[len(head) :], False),
        ("header giant", _header_with(header, width=16384, height=16384) + data[len(head) :], False),
        ("header other family", _header_with(header, family=1) + data[len(head) :], False),
    ]
    for claim in (1 << 20, 1 << 28, (1 << 63) - 1):  # a length far past the file: refused before a buffer is made
        giant = head + bytes([int(ChunkType.FRAMES)]) + encode_varint(claim)
        cases.append((f"FRAMES of {claim} bytes", build(body[:2], end=False) + giant[len(head) :] + b"\x00" * 64, False))
        cases.append((f"CONFIG of {claim} bytes", head + bytes([int(ChunkType.CONFIG)]) + encode_varint(claim) + b"\x00" * 64, False))
    return cases


def _header_with(header: StreamHeader, **fields: int) -> bytes:
    return header_bytes(StreamHeader(**{**header.__dict__, **fields}))


def test_every_damaged_stream_is_one_bitstream_error_or_a_chunk_boundary_cut(codecs, video: Path, tmp_path: Path) -> None:
    codec, path = codecs["codebook"], tmp_path / "s.gvc"
    codec.encode(video, path, SCALES - 1, max_frames=5, latents_per_chunk=1)  # 2 latent frames: 2 groups of 1
    data = path.read_bytes()
    cases = _variants(data, random.Random(13))
    assert len(cases) > 250
    decoded, cut = [], []
    case, cut_path = tmp_path / "case.gvc", tmp_path / "cut.gvc"
    for name, damaged, may_decode in cases:
        case.write_bytes(damaged)
        frames: list[np.ndarray] = []
        started = time.perf_counter()
        try:
            with peak_rss_growth() as memory:
                codec.decode(case, frames.append)
        except BitstreamError as e:
            assert str(e) and "\n" not in str(e), name
        else:
            assert may_decode, f"{name}: decoded {len(frames)} frames"
            assert len(frames) == 5 and frames[0].shape == (HEIGHT, WIDTH, 3), name
            decoded.append(name)
        assert time.perf_counter() - started < 2.0 and memory.mb < 32, (name, memory.mb)
        try:  # gvc truncate reads the same damage without a model: the same one error, or a cut that decodes
            ProgressiveCodec.truncate(case, cut_path, scales=1)
        except BitstreamError as e:
            assert str(e) and "\n" not in str(e), name
        else:
            try:  # the cut keeps what the model alone can tell (a CONFIG for another codec, say)
                assert len(_decode(codec, cut_path)) == 5, name
                cut.append(name)
            except BitstreamError as e:
                assert str(e) and "\n" not in str(e), name
    assert decoded == [f"prefix of {k} chunks" for k in range(2 + SCALES, 2 * SCALES + 2)]
    # every stream that decodes can be cut; a cut may also drop the damage (a finer scale's chunk)
    assert set(decoded) <= set(cut) and all(n.startswith(("prefix", "chunk 2", "chunk 3", "chunk 5", "chunk 6")) for n in cut), cut


@pytest.mark.parametrize("kind", KINDS)
def test_rate_baselines_count_the_coded_tokens_under_three_models(kind: str, codec_dirs, video: Path) -> None:
    from gvc_train.codecs.progressive_baselines import rate_baselines

    r = rate_baselines(codec_dirs[kind], video, FRAMES)
    pixels = FRAMES * WIDTH * HEIGHT
    codec = open_codec(codec_dirs[kind])
    report = codec.encode(video, video.parent / f"baselines_{kind}.gvc", SCALES - 1, max_frames=FRAMES)
    assert r["bpp_model"] * pixels == pytest.approx(report.model_bits, rel=1e-9)  # the coded frequencies' bits
    assert r["payload_bits"] == report.payload_bytes * 8 and r["file_bytes"] == report.file_bytes
    per_token = 4 if kind == "bitwise" else math.log2(16)  # code_dim bits, or log2 of the codebook
    for row in r["per_scale"]:
        assert row["bpp_uniform"] * pixels == pytest.approx(row["tokens"] * per_token)
        assert 0 <= row["bpp_unigram"] <= row["bpp_uniform"] + 1e-12  # an entropy never exceeds the uniform code
    assert sum(row["tokens"] for row in r["per_scale"]) > 0 and r["model_vs_uniform"] == pytest.approx(r["bpp_model"] / r["bpp_uniform"])
