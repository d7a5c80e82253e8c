"""The latent codec at inference: exact round trips, determinism, geometry, rate, no training imports."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from gvc_train.codecs.frame_io import FrameSink
from gvc_train.codecs.latent import LatentCodec, latent_frames_for
from gvc_train.data.sample_videos import sample_video
from gvc_train.data.video_io import read_frames


@pytest.fixture(scope="module")
def odd_video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """10 frames of 37 x 29: neither a multiple of 8 in size nor 1 + 4k in count."""
    folder = tmp_path_factory.mktemp("odd_video")
    for i, frame in enumerate(read_frames(sample_video("carphone_pristine.mp4"), count=10)):
        Image.fromarray(frame[40:69, 60:97]).save(folder / f"im{i + 1}.png")
    return folder


def _encode(codec: LatentCodec, video: Path, out: Path, quality: int = 1, **kw: object) -> tuple[np.ndarray, object]:
    recon: list[np.ndarray] = []
    report = codec.encode(video, out, quality, on_recon=recon.append, **kw)
    return np.stack(recon), report


def _decode(codec: LatentCodec, stream: Path) -> np.ndarray:
    frames: list[np.ndarray] = []
    codec.decode(stream, frames.append)
    return np.stack(frames)


def test_round_trip_keeps_size_and_count_and_matches_encoder(tiny_codec_dir: Path, odd_video: Path, tmp_path: Path) -> None:
    codec = LatentCodec(tiny_codec_dir)
    recon, report = _encode(codec, odd_video, tmp_path / "x.gvc")
    assert recon.shape == (10, 29, 37, 3)
    assert report.frames == 10 and (report.width, report.height) == (37, 29)
    assert report.bpp == pytest.approx((tmp_path / "x.gvc").stat().st_size * 8 / (10 * 29 * 37))
    sink = FrameSink(tmp_path / "out", fps=30)
    codec.decode(tmp_path / "x.gvc", sink.write)
    decoded = read_frames(sink.close())  # through PNG files: exact
    assert decoded.shape == recon.shape
    assert np.array_equal(decoded, recon)
    source = read_frames(odd_video)
    assert np.abs(decoded.astype(int) - source).mean() < 128  # a picture, not garbage of another size


@pytest.mark.parametrize("latents_per_chunk", [1, 3])
def test_decoding_is_identical_with_one_or_two_threads(tiny_codec_dir: Path, tmp_path: Path, latents_per_chunk: int) -> None:
    codec = LatentCodec(tiny_codec_dir)
    video = sample_video("carphone_pristine.mp4")
    recon, report = _encode(codec, video, tmp_path / "x.gvc", quality=2, max_frames=14, latents_per_chunk=latents_per_chunk)
    assert report.chunks == -(-latent_frames_for(14) // latents_per_chunk)
    previous = torch.get_num_threads()
    try:
        decoded = {}
        for threads in (1, 2):
            torch.set_num_threads(threads)
            decoded[threads] = _decode(codec, tmp_path / "x.gvc")
    finally:
        torch.set_num_threads(previous)
    assert np.array_equal(decoded[1], decoded[2])
    assert np.array_equal(decoded[1], recon)
    assert torch.get_num_threads() == previous


def test_output_formats(tiny_codec_dir: Path, odd_video: Path, tmp_path: Path) -> None:
    codec = LatentCodec(tiny_codec_dir)
    recon, _ = _encode(codec, odd_video, tmp_path / "x.gvc", max_frames=5)
    for name in ("out.mp4", "out.y4m"):
        sink = FrameSink(tmp_path / name, fps=25)
        codec.decode(tmp_path / "x.gvc", sink.write)
        frames = read_frames(sink.close())
        assert frames.shape == recon.shape
        if name.endswith(".mp4"):  # x264 RGB at qp 0: lossless
            assert np.array_equal(frames, recon)
        else:  # 4:4:4 YUV: colour conversion rounds
            assert np.abs(frames.astype(int) - recon).max() <= 3


_BLOCKED_RUN = r"""
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in ("lightning", "pytorch_lightning", "webdataset", "wandb"):
            raise ImportError("blocked: " + name)
sys.meta_path.insert(0, Block())
from gvc_train.codecs.cli import main
for command in sys.argv[1:]:  # one process for several commands: torch + compressai import once
    status = main(command.split("\t"))
    if status:
        sys.exit(status)
"""


def test_cli_round_trip_without_training_packages(tiny_codec_dir: Path, odd_video: Path, tmp_path: Path) -> None:
    stream, out = str(tmp_path / "x.gvc"), str(tmp_path / "out")
    commands = [
        ["encode", str(odd_video), stream, "--codec", str(tiny_codec_dir), "--quality", "0", "--frames", "6"],
        ["decode", stream, out, "--codec", str(tiny_codec_dir)],
        ["info", stream],
    ]
    proc = subprocess.run([sys.executable, "-c", _BLOCKED_RUN, *("\t".join(c) for c in commands)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"{out}: 6 frames 37x29" in proc.stdout
    assert len(list((tmp_path / "out").glob("*.png"))) == 6
    assert "latent" in proc.stdout and "FRAMES" in proc.stdout and "CONFIG" in proc.stdout


def test_a_decode_reports_where_its_time_went(tiny_codec_dir: Path, odd_video: Path, tmp_path: Path) -> None:
    codec = LatentCodec(tiny_codec_dir)
    codec.encode(odd_video, tmp_path / "x.gvc", 1)
    report = codec.decode(tmp_path / "x.gvc", lambda frame: None)
    stages = report.stats["stage_seconds"]
    assert set(stages) == {"entropy", "tokenizer", "frames out"}
    assert all(s > 0 for s in stages.values()) and sum(stages.values()) <= report.seconds
    assert report.stats["plan"] == "1 strip(s), all frames at once, cache in RAM"  # no budget: the fastest
