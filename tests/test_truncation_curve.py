"""The truncation curve (eval/truncation.py): one stream cut after each scale, every cut decoded
with each fill; in ``gvc eval``'s report (JSON, summary.md, plots) and in ``eval.codec_rd
--truncation``. Tiny random progressive codecs (tests/progressive_fixtures.py): mechanics, not
quality. A codec that cannot be cut (the tiny latent codec) has no curve."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from progressive_fixtures import FRAMES, GROUP, SCALES, write_clip, write_codec_dir

from gvc_train import gvc_cli
from gvc_train.codecs.base import CodecError, open_codec
from gvc_train.codecs.progressive_scales import FILL_MODES
from gvc_train.data.video_io import read_frames
from gvc_train.eval import codec_rd
from gvc_train.eval.truncation import truncation_curve, truncation_markdown


@pytest.fixture(scope="module")
def codec_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_codec_dir(tmp_path_factory.mktemp("progressive_codebook"), "codebook")


@pytest.fixture(scope="module")
def video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_clip(tmp_path_factory.mktemp("clip"))


def _decode(codec, path: Path, fill: str | None = None) -> np.ndarray:
    frames: list[np.ndarray] = []
    codec.decode_cut(path, frames.append, fill) if fill else codec.decode(path, frames.append)
    return np.stack(frames)


def test_one_point_per_scale_and_fill_and_the_last_is_the_whole_stream(codec_dir: Path, video: Path, tmp_path: Path) -> None:
    codec = open_codec(codec_dir)
    assert codec.can_cut() and codec.cut_fills[0] == codec.fill and set(codec.cut_fills) == set(FILL_MODES)
    source = read_frames(video, count=FRAMES)
    stream = tmp_path / "full.gvc"
    codec.encode(video, stream, codec.num_rate_points - 1, latents_per_chunk=GROUP)
    decoded: list[np.ndarray] = []  # what each point measured, in the points' order

    def measure(recon: np.ndarray) -> dict[str, float]:
        decoded.append(recon)
        return codec_rd.distortion(recon, source)

    curve = truncation_curve(codec, stream, source, measure, tmp_path / "cuts")
    fills, points = list(codec.cut_fills), curve["points"]
    assert curve["of_scales"] == SCALES and curve["fills"] == fills and curve["stream_bytes"] == stream.stat().st_size
    assert [(p["scales"], p["fill"]) for p in points] == [(k, f) for k in range(1, SCALES + 1) for f in fills]
    for p in points:  # rate: the cut file's size over every source pixel
        assert p["bytes"] == Path(p["stream"]).stat().st_size and p["bpp"] == pytest.approx(p["bytes"] * 8 / source[..., 0].size)
    sizes = [p["bpp"] for p in points if p["fill"] == fills[0]]
    assert sizes == sorted(set(sizes)), "bpp grows with every scale kept"
    by = {(p["scales"], p["fill"]): (p, frames) for p, frames in zip(points, decoded)}
    whole = _decode(codec, stream)
    for fill in fills:  # all scales kept: nothing to fill in, the full stream's decode whatever the fill
        p, frames = by[(SCALES, fill)]
        assert p["bytes"] == stream.stat().st_size and np.array_equal(frames, whole)
        assert p["metrics"] == codec_rd.distortion(whole, source)
    for k in range(1, SCALES):  # scales missing: predicted and left at zero differ
        predicted, zero = by[(k, "expectation")], by[(k, "zero")]
        assert not np.array_equal(predicted[1], zero[1]) and predicted[0]["metrics"]["psnr"] != zero[0]["metrics"]["psnr"], k
        default = by[(k, fills[0])]
        assert np.array_equal(default[1], _decode(codec, Path(default[0]["stream"]))), "the default fill is what gvc decode writes"
    table = truncation_markdown(curve).splitlines()
    assert len(table) == 2 + SCALES and all(f"PSNR (dB), {f}" in table[0] for f in fills)
    first = by[(1, fills[0])][0]
    assert table[2].startswith(f"| 1 of {SCALES} | {first['bytes']} | {first['bpp']:.4f} | {first['metrics']['psnr']:.2f} |")


def test_a_codec_that_cannot_be_cut_has_no_curve(tiny_codec_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    codec = open_codec(tiny_codec_dir)
    assert not codec.can_cut() and codec.cut_fills == ()
    with pytest.raises(CodecError, match="cannot be cut"):
        codec.decode_cut(tmp_path / "x.gvc", None, "zero")
    with pytest.raises(ValueError, match="cannot be cut"):
        truncation_curve(codec, tmp_path / "x.gvc", np.zeros((1, 8, 8, 3), np.uint8), lambda r: {}, tmp_path)
    with pytest.raises(SystemExit) as exit_:
        codec_rd.main(["--codec", str(tiny_codec_dir), "--truncation", "--anchors", "", "--frames", "1"])
    assert exit_.value.code == 2 and "cannot be cut" in capsys.readouterr().err


def test_gvc_eval_reports_the_truncation_points(codec_dir: Path, video: Path, tmp_path: Path) -> None:
    out = tmp_path / "report"
    argv = ["eval", "--codec", str(codec_dir), "--anchors", "", "--video", str(video), "--frames", str(FRAMES), "--no-progress", "--out", str(out)]
    assert gvc_cli.main(argv) == 0
    report = json.loads((out / "report.json").read_text())
    [curve] = report["truncation"]
    fills = curve["fills"]
    assert curve["codec"] == codec_dir.name and curve["quality"] == SCALES - 1 and curve["of_scales"] == SCALES
    assert curve["stream"] == f"streams/{video.stem}.{codec_dir.name}.q{SCALES - 1}.gvc" and (out / curve["stream"]).is_file()
    assert len(curve["points"]) == SCALES * len(fills) and all((out / p["stream"]).is_file() for p in curve["points"])
    # a cut decodes as the stream coded at that rate point (the same frames; its bytes differ by
    # the top of the coder's stack, a word or two a group): the default fill's curve is the codec's own points
    own = {p["quality"]: p for p in report["points"]}
    for p in (p for p in curve["points"] if p["fill"] == fills[0]):
        assert abs(p["bytes"] - own[p["scales"] - 1]["bytes"]) <= 16 and p["metrics"]["psnr"] == pytest.approx(own[p["scales"] - 1]["metrics"]["psnr"])
        assert {"psnr", "psnr_y", "ms_ssim", "ms_ssim_db"} <= set(p["metrics"])
    summary = (out / "summary.md").read_text()
    assert f"## Truncation points: {video.name}, {codec_dir.name}" in summary and truncation_markdown(curve) in summary
    assert any("'zero'" in note for note in report["notes"])  # what each fill means, from the family
    assert len(report["plots"]) == len(report["metrics"])  # the cut curves are drawn in every metric's plot


def test_codec_rd_truncation_flag(codec_dir: Path, video: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "rd.json"
    assert codec_rd.main(["--codec", str(codec_dir), "--video", str(video), "--frames", str(FRAMES), "--anchors", "", "--truncation", "--out", str(out)]) == 0
    saved = json.loads(out.read_text())
    curve = saved["truncation"]
    assert len(saved["points"]) == SCALES and curve["quality"] == SCALES - 1 and len(curve["points"]) == SCALES * len(curve["fills"])
    top = [p for p in curve["points"] if p["scales"] == SCALES]
    assert {p["bytes"] for p in top} == {saved["points"][-1]["bytes"]} and {p["metrics"]["psnr"] for p in top} == {saved["points"][-1]["psnr"]}
    assert truncation_markdown(curve) in capsys.readouterr().out
