"""Rate-distortion points of an exported codec (what the reference codec's card is made of)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from gvc_train.codecs.latent import LatentCodec
from gvc_train.components import load_component
from gvc_train.data.sample_videos import sample_video
from gvc_train.data.video_io import read_frames
from gvc_train.eval import codec_rd

from conftest import frames_ms_ssim, numpy_psnr


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


def _source(video: Path, frames: int = 7) -> np.ndarray:
    """The PNGs as PIL reads them (not through video_io)."""
    return np.stack([np.asarray(Image.open(video / f"im{i + 1}.png").convert("RGB")) for i in range(frames)])


def test_codec_points_are_the_files_and_what_they_decode_to(tiny_codec_dir: Path, small_video: Path, tmp_path: Path) -> None:
    """Each point, recomputed outside codec_rd: the stream file's size, and the PSNR and MS-SSIM of
    what the file decodes to against the source PNGs."""
    points = codec_rd.codec_points(tiny_codec_dir, small_video, frames=7, qualities=[0, 2])
    assert [p["quality"] for p in points] == [0, 2]
    codec, source = LatentCodec(tiny_codec_dir), _source(small_video)
    for p in points:
        path = tmp_path / f"q{p['quality']}.gvc"
        report = codec.encode(small_video, path, p["quality"], max_frames=7)
        decoded: list[np.ndarray] = []
        codec.decode(path, decoded.append)
        recon = np.stack(decoded)
        assert recon.shape == source.shape
        size = path.stat().st_size
        assert p["bytes"] == size, p["quality"]
        assert p["bpp"] == pytest.approx(size * 8 / (7 * 30 * 44), rel=1e-12)
        assert p["payload_bits"] == report.payload_bytes * 8 and p["overhead_bytes"] == size - report.payload_bytes
        assert p["model_bits"] == pytest.approx(report.model_bits, rel=1e-9)
        # codec_rd averages float32 per-frame PSNRs: 1e-4 dB is float32, not a definition
        assert p["psnr"] == pytest.approx(numpy_psnr(recon, source), abs=1e-4), p["quality"]
        assert p["ms_ssim"] == pytest.approx(frames_ms_ssim(recon, source), abs=1e-6), p["quality"]


def test_tokenizer_ceiling_and_the_cli_table(tiny_codec_dir: Path, small_video: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ceiling = codec_rd.tokenizer_point(tiny_codec_dir, small_video, frames=7)
    assert ceiling["bpp"] is None
    # the same, by hand: edge-padded to 9 frames of 48x32 (numpy), through the tokenizer, cropped back
    source = _source(small_video)
    padded = np.pad(source, ((0, 2), (0, 2), (0, 4), (0, 0)), mode="edge")
    vae = load_component(tiny_codec_dir, "tokenizer").eval()
    with torch.no_grad():
        x = torch.from_numpy(padded).permute(3, 0, 1, 2)[None].float() / 255
        recon = (vae.decode(vae.encode(x).mode()).clamp(0, 1) * 255).round().byte()[0].permute(1, 2, 3, 0).numpy()
    recon = recon[:7, :30, :44]
    assert ceiling["psnr"] == pytest.approx(numpy_psnr(recon, source), abs=1e-3)
    assert ceiling["ms_ssim"] == pytest.approx(frames_ms_ssim(recon, source), abs=1e-5)
    out = tmp_path / "rd.json"
    argv = ["--codec", str(tiny_codec_dir), "--video", str(small_video), "--frames", "7", "--anchors", "", "--tokenizer-ceiling"]
    assert codec_rd.main([*argv, "--out", str(out)]) == 0
    saved = json.loads(out.read_text())
    assert saved["frames"] == 7 and len(saved["points"]) == 3 + 1  # three qualities and the ceiling
    assert saved["points"][-1]["psnr"] == pytest.approx(ceiling["psnr"])
    table = capsys.readouterr().out
    for p in saved["points"][:-1]:
        assert f"| {p['codec']} | quality {p['quality']} | {p['bpp']:.4f} | {p['psnr']:.2f} | {p['ms_ssim']:.4f} |" in table
    assert f"| {tiny_codec_dir.name} tokenizer only | latents unquantized, no bitstream | - |" in table
