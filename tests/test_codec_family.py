"""The codec-family interface: a second family, written here, goes through every tool unchanged.

``ToyCodec`` is a real (if crude) codec: 4x4 block means of each frame, quantized with a step
that its rate point picks, zlib-coded one FRAMES chunk per frame inside the shared container.
Registering it (one component class, one family-table line) must be all it takes for
``gvc-export``, ``gvc encode/decode/info`` and ``gvc eval`` to work on it: none of them names a
family. The house rule that nothing else names one is tests/test_house_rules.py's.
"""

from __future__ import annotations

import json
import os
import zlib
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from gvc_train import gvc_cli
from gvc_train.codecs.base import Codec, CodingReport, open_codec
from gvc_train.codecs.codec_folder import CodecFolderError, load_codec_components
from gvc_train.codecs.families import FamilyEntry, register_family, unregister_family
from gvc_train.coding.container import (
    BitstreamError,
    BitstreamWriter,
    Chunk,
    ChunkType,
    StreamHeader,
    fingerprint_prefix,
    iter_chunks,
    read_header,
)
from gvc_train.data.sample_videos import sample_video
from gvc_train.data.video_io import VideoReader, read_frames
from gvc_train.export import main as export_main
from gvc_train.lit.checkpoint_meta import CHECKPOINT_KEY
from gvc_train.models.registry import register_component

FAMILY = "toy"
STREAM_ID = 250  # far from the ids the real families take
BLOCK = 4
FRAMES = 5


@register_component("ToyBlockQuantizer")
class ToyBlockQuantizer(nn.Module):
    """The toy family's one component: quantization steps per rate point (finest last)."""

    config_bounds = {"len(steps)": (1, 8)}

    def __init__(self, steps: tuple[int, ...] = (48, 16, 4)) -> None:
        super().__init__()
        self.register_buffer("steps", torch.tensor(steps, dtype=torch.int64))


def describe_toy_chunks(header: StreamHeader, chunks: Iterable[Chunk]) -> list[dict[str, Any]]:
    rows, frame = [], 0
    for chunk in chunks:
        row: dict[str, Any] = {"type": chunk.type.name, "offset": chunk.offset, "bytes": chunk.size}
        if chunk.type == ChunkType.FRAMES:
            row.update(first_frame=frame, frames=1, bits_per_frame=chunk.size * 8.0)
            frame += 1
        rows.append(row)
    return rows


class ToyCodec(Codec):
    family = FAMILY
    report_notes = ("toy: block means, no motion",)

    def __init__(self, folder: str | os.PathLike, deterministic: bool = True) -> None:
        self.meta, modules = load_codec_components(folder)
        self.folder, self.deterministic = Path(folder), deterministic
        self.fingerprint = self.meta["fingerprint"]
        self.steps = [int(s) for s in modules["quantizer"].steps]

    @property
    def num_rate_points(self) -> int:
        return len(self.steps)

    @classmethod
    def export_extras(cls, modules: dict[str, Any]) -> dict[str, Any]:
        return {"qualities": len(modules["quantizer"].steps)}

    def _code(self, frame_HWC: np.ndarray, step: int) -> tuple[bytes, np.ndarray]:
        h, w = frame_HWC.shape[0] // BLOCK * BLOCK, frame_HWC.shape[1] // BLOCK * BLOCK
        means = frame_HWC[:h, :w].reshape(h // BLOCK, BLOCK, w // BLOCK, BLOCK, 3).mean(axis=(1, 3))
        q = np.round(means / step).astype(np.uint8)
        return zlib.compress(q.tobytes(), 9), self._reconstruct(q, step, frame_HWC.shape)

    @staticmethod
    def _reconstruct(q: np.ndarray, step: int, shape: tuple[int, ...]) -> np.ndarray:
        up = np.repeat(np.repeat(q.astype(np.int32) * step, BLOCK, axis=0), BLOCK, axis=1)
        out = np.zeros(shape, np.uint8)
        out[: up.shape[0], : up.shape[1]] = np.clip(up, 0, 255)
        return out

    def encode(self, source, output, rate_point, *, max_frames=None, on_recon=None, **options) -> CodingReport:
        if options:
            raise ValueError(f"the toy codec takes no option {sorted(options)}")
        frames = read_frames(source, count=max_frames)
        with VideoReader(source) as reader:
            fps = reader.info.fps or 30.0
        t, h, w = frames.shape[:3]
        header = StreamHeader(STREAM_ID, fingerprint_prefix(self.fingerprint), w, h, t, round(fps))
        payload = 0
        with open(output, "wb") as f, BitstreamWriter(f, header) as writer:
            writer.write_chunk(ChunkType.CONFIG, bytes([rate_point]))
            for frame in frames:
                data, recon = self._code(frame, self.steps[rate_point])
                writer.write_chunk(ChunkType.FRAMES, data)
                payload += len(data)
                if on_recon is not None:
                    on_recon(recon)
        return CodingReport(str(output), t, w, h, float(round(fps)), rate_point, Path(output).stat().st_size, payload, t, 1e-3)

    def decode(self, stream, on_frame) -> CodingReport:
        with open(stream, "rb") as f:
            header = read_header(f, expected_fingerprint=fingerprint_prefix(self.fingerprint))
            if header.family != STREAM_ID:
                raise BitstreamError(f"not a toy stream (family {header.family})")
            chunks = list(iter_chunks(f, offset=f.tell()))
        rate_point = chunks[0].payload[0]
        shape = (header.height, header.width, 3)
        qshape = (header.height // BLOCK, header.width // BLOCK, 3)
        for chunk in chunks[1:]:
            q = np.frombuffer(zlib.decompress(chunk.payload), np.uint8).reshape(qshape)
            if on_frame is not None:
                on_frame(self._reconstruct(q, self.steps[rate_point], shape))
        payload = sum(len(c.payload) for c in chunks[1:])
        return CodingReport(str(stream), header.frames, header.width, header.height, header.fps, rate_point, Path(stream).stat().st_size, payload, len(chunks) - 1, 1e-3)


@pytest.fixture
def toy_family():
    register_family(FamilyEntry(FAMILY, STREAM_ID, ("quantizer",), f"{__name__}:ToyCodec", f"{__name__}:describe_toy_chunks"))
    yield
    unregister_family(FAMILY)


@pytest.fixture
def toy_video(tmp_path: Path) -> Path:
    folder = tmp_path / "video"
    folder.mkdir()
    for i, frame in enumerate(read_frames(sample_video("carphone_pristine.mp4"), count=FRAMES)):
        Image.fromarray(frame[:64, :96]).save(folder / f"im{i + 1}.png")
    return folder


def _training_checkpoint(path: Path) -> Path:
    """What a stage's checkpoint holds for its components (lit/checkpoint_meta.py), no Lightning."""
    quantizer = ToyBlockQuantizer((40, 12, 3))
    state = {f"quant.{k}": v for k, v in quantizer.state_dict().items()}
    meta = {"components": {"quantizer": {"class": "ToyBlockQuantizer", "config": quantizer.config, "state_prefix": "quant."}}, "provenance": {"recipe": "test"}}
    torch.save({"state_dict": state, CHECKPOINT_KEY: meta}, path)
    return path


def test_a_second_family_runs_through_export_encode_decode_info_and_eval(toy_family, toy_video, tmp_path, capsys) -> None:
    codec_dir = tmp_path / "toy_codec"
    assert export_main([str(_training_checkpoint(tmp_path / "toy.ckpt")), "--out", str(codec_dir)]) == 0
    codec_json = json.loads((codec_dir / "codec.json").read_text())
    assert codec_json["family"] == FAMILY and codec_json["qualities"] == 3
    codec = open_codec(codec_dir)
    assert isinstance(codec, ToyCodec) and codec.default_rate_point == 1

    sizes = []
    for q in range(3):
        stream = tmp_path / f"q{q}.gvc"
        assert gvc_cli.main(["encode", str(toy_video), str(stream), "--codec", str(codec_dir), "--quality", str(q)]) == 0
        sizes.append(stream.stat().st_size)
    assert sizes[0] < sizes[1] < sizes[2], sizes  # a higher rate point costs more bits

    frames_dir = tmp_path / "decoded"
    assert gvc_cli.main(["decode", str(tmp_path / "q2.gvc"), str(frames_dir), "--codec", str(codec_dir)]) == 0
    decoded = sorted(frames_dir.glob("*.png"))
    assert len(decoded) == FRAMES
    source = np.asarray(Image.open(toy_video / "im1.png")).astype(float)
    error = np.abs(np.asarray(Image.open(decoded[0])).astype(float) - source).mean()
    assert error < 12, error  # 4x4 block means at step 3: close to the source, not garbage

    capsys.readouterr()
    assert gvc_cli.main(["info", str(tmp_path / "q1.gvc"), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["family"] == FAMILY and info["frames"] == FRAMES
    assert [row["type"] for row in info["chunks"]] == ["CONFIG"] + ["FRAMES"] * FRAMES
    assert info["chunks"][1]["bits_per_frame"] > 0

    # a family's own flag given to another family is one clear line, nothing written
    assert gvc_cli.main(["encode", str(toy_video), str(tmp_path / "x.gvc"), "--codec", str(codec_dir), "--latents-per-chunk", "2"]) == 2
    assert "takes no option ['latents_per_chunk']" in capsys.readouterr().err
    assert not (tmp_path / "x.gvc").exists()

    report_dir = tmp_path / "report"
    argv = ["eval", "--codec", str(codec_dir), "--anchors", "", "--video", str(toy_video), "--frames", str(FRAMES), "--no-progress", "--out", str(report_dir)]
    assert gvc_cli.main(argv) == 0
    report = json.loads((report_dir / "report.json").read_text())
    points = [p for p in report["points"] if p["codec"] == codec_dir.name]
    assert [p["quality"] for p in points] == [0, 1, 2] and {p["family"] for p in points} == {FAMILY}
    assert [p["bytes"] for p in points] == sizes
    assert points[0]["metrics"]["psnr"] < points[2]["metrics"]["psnr"]
    assert report["notes"] == ["toy: block means, no motion"]


def test_a_folder_of_an_unregistered_family_is_refused_in_one_line(toy_family, tmp_path) -> None:
    codec_dir = tmp_path / "toy_codec"
    assert export_main([str(_training_checkpoint(tmp_path / "toy.ckpt")), "--out", str(codec_dir)]) == 0
    unregister_family(FAMILY)
    with pytest.raises(CodecFolderError, match="unknown codec family 'toy'"):
        open_codec(codec_dir)
    assert gvc_cli.main(["encode", str(tmp_path), str(tmp_path / "x.gvc"), "--codec", str(codec_dir)]) == 2


def test_the_family_table_refuses_a_reused_stream_id() -> None:
    with pytest.raises(ValueError, match="stream id 1 is 'latent'"):
        register_family(FamilyEntry("other", 1, ("x",), "m:C", "m:f"))


def test_export_refuses_a_codec_whose_tokenizer_cannot_stream(tmp_path, capsys) -> None:
    """The streaming-tokenizer contract is checked when the codec is exported, not at gvc encode:
    a DiffusersVAE (no chunk state across calls) paired with a latent codec is one line."""
    from component_cases import TINY_LATENT_CODEC, TINY_WAN_CONFIG

    from gvc_train.models import DiffusersVAE, LatentVideoCodec

    tokenizer, codec = DiffusersVAE(config=TINY_WAN_CONFIG), LatentVideoCodec(**TINY_LATENT_CODEC)
    state = {f"vae.{k}": v for k, v in tokenizer.state_dict().items()} | {f"codec.{k}": v for k, v in codec.state_dict().items()}
    components = {
        "tokenizer": {"class": "DiffusersVAE", "config": tokenizer.config, "state_prefix": "vae."},
        "latent_codec": {"class": "LatentVideoCodec", "config": codec.config, "state_prefix": "codec."},
    }
    torch.save({"state_dict": state, CHECKPOINT_KEY: {"components": components, "provenance": {}}}, tmp_path / "wan.ckpt")
    capsys.readouterr()
    assert export_main([str(tmp_path / "wan.ckpt"), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "the tokenizer DiffusersVAE is not a streaming tokenizer (it lacks" in err, err
    assert not (tmp_path / "out").exists()
