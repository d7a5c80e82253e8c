"""Rate-distortion points of an exported codec (what the reference codec's card is made of)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from gvc_train.data.sample_videos import sample_video
from gvc_train.data.video_io import read_frames
from gvc_train.eval import codec_rd


@pytest.fixture(scope="module")
def small_video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """7 frames of 44x30: padded to 48x32 and to 9 frames by the codec, cropped back."""
    folder = tmp_path_factory.mktemp("small_video")
    for i, frame in enumerate(read_frames(sample_video("carphone_pristine.mp4"), count=7)):
        Image.fromarray(frame[50:80, 60:104]).save(folder / f"im{i + 1}.png")
    return folder


def test_distortion_of_identical_and_of_shifted_frames() -> None:
    frames = np.random.default_rng(0).integers(0, 250, size=(3, 32, 40, 3), dtype=np.uint8)
    assert codec_rd.distortion(frames, frames)["ms_ssim"] == pytest.approx(1.0, abs=1e-6)
    shifted = codec_rd.distortion(frames + 5, frames)  # MSE 25 on every pixel
    assert shifted["psnr"] == pytest.approx(10 * np.log10(255**2 / 25), abs=1e-3)
    with pytest.raises(ValueError, match="differ"):
        codec_rd.distortion(frames[:2], frames)


def test_codec_points_count_real_file_bits(tiny_codec_dir: Path, small_video: Path) -> None:
    points = codec_rd.codec_points(tiny_codec_dir, small_video, frames=7, qualities=[0, 2])
    assert [p["quality"] for p in points] == [0, 2]
    for p in points:
        assert p["bpp"] == pytest.approx(p["bytes"] * 8 / (7 * 30 * 44))
        assert p["bytes"] == p["payload_bits"] // 8 + p["overhead_bytes"]
        assert 0 < p["psnr"] < 60 and 0 < p["ms_ssim"] <= 1


def test_tokenizer_ceiling_and_the_cli_table(tiny_codec_dir: Path, small_video: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ceiling = codec_rd.tokenizer_point(tiny_codec_dir, small_video, frames=7)
    assert ceiling["bpp"] is None and ceiling["psnr"] > 0
    out = tmp_path / "rd.json"
    argv = ["--codec", str(tiny_codec_dir), "--video", str(small_video), "--frames", "7", "--anchors", "", "--tokenizer-ceiling"]
    assert codec_rd.main([*argv, "--out", str(out)]) == 0
    saved = json.loads(out.read_text())
    assert saved["frames"] == 7 and len(saved["points"]) == 3 + 1  # three qualities and the ceiling
    assert saved["points"][-1]["psnr"] == pytest.approx(ceiling["psnr"])
    table = capsys.readouterr().out
    assert f"| {tiny_codec_dir.name} tokenizer only | latents unquantized, no bitstream | - |" in table
