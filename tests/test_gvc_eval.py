"""``gvc eval``: the whole grid on a small clip, its outputs, the anchor cache, and the BD wiring."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from PIL import Image

from gvc_train.codecs import cli
from gvc_train.data.sample_videos import sample_video
from gvc_train.data.video_io import read_frames
from gvc_train.eval.bdrate import bd_rate
from gvc_train.eval.report import bd_table

FRAMES = 6


@pytest.fixture(scope="module")
def small_video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """6 frames of 70x50 from carphone: padded by the codec (to 72x56, 9 frames) and the anchors."""
    folder = tmp_path_factory.mktemp("eval_video")
    for i, frame in enumerate(read_frames(sample_video("carphone_pristine.mp4"), count=FRAMES)):
        Image.fromarray(frame[40:90, 50:120]).save(folder / f"im{i + 1}.png")
    return folder


@pytest.fixture(scope="module")
def report_dir(tiny_codec_dir: Path, small_video: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("report")
    argv = ["eval", "--codec", str(tiny_codec_dir), "--anchors", "x264", "--video", str(small_video), "--frames", str(FRAMES)]
    assert cli.main([*argv, "--ladder-points", "3", "--no-progress", "--out", str(out)]) == 0
    return out


def test_report_has_every_point_output_and_plot(report_dir: Path) -> None:
    report = json.loads((report_dir / "report.json").read_text())
    codec = [p for p in report["points"] if "quality" in p]
    anchors = [p for p in report["points"] if "crf" in p]
    assert [p["quality"] for p in codec] == [0, 1, 2]
    assert {p["setting"] for p in anchors} == {"low-delay", "random-access"}
    assert len(anchors) == 2 * 3
    for p in report["points"]:
        assert p["frames"] == FRAMES and len(p["per_frame"]["psnr"]) == FRAMES
        assert p["bpp"] == pytest.approx(p["bytes"] * 8 / (FRAMES * 70 * 50))
        assert {"psnr", "psnr_y", "ms_ssim", "vmaf"} <= set(p["metrics"])
    for p in anchors:  # the command line, the preset and what ffmpeg it was
        assert "libx264" in p["command"] and p["preset"] == "medium" and p["ffmpeg_version"]
    # no weights were given: said, not silently left out
    assert {"lpips", "dists", "fvd"} <= set(report["unavailable_metrics"])
    rows = list(csv.DictReader(open(report_dir / "points.csv")))
    assert len(rows) == len(report["points"]) and float(rows[0]["psnr"]) == pytest.approx(codec[0]["metrics"]["psnr"], rel=1e-5)
    summary = (report_dir / "summary.md").read_text()
    assert "BD-rate" in summary and "## Not measured" in summary and "libx264" in summary
    assert {r["anchor"] for r in report["bd"]} == {"x264 (low-delay)", "x264 (random-access)"}
    assert len(report["plots"]) == len(report["metrics"]) >= 4
    for png in report["plots"]:
        assert (report_dir / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_second_run_takes_anchors_from_the_cache(tiny_codec_dir: Path, small_video: Path, report_dir: Path, tmp_path: Path) -> None:
    # the same codec gives the same bpp range, hence the same ladder: every anchor point is a cache hit
    argv = ["eval", "--codec", str(tiny_codec_dir), "--anchors", "x264", "--video", str(small_video), "--frames", str(FRAMES)]
    argv += ["--ladder-points", "3", "--anchor-cache", str(report_dir / "anchor_cache"), "--no-progress", "--out", str(tmp_path)]
    assert cli.main(argv) == 0
    again = [p for p in json.loads((tmp_path / "report.json").read_text())["points"] if "crf" in p]
    first = [p for p in json.loads((report_dir / "report.json").read_text())["points"] if "crf" in p]
    assert all(p["cached"] for p in again)
    assert [(p["crf"], p["bytes"], p["metrics"]["psnr"]) for p in again] == [(p["crf"], p["bytes"], p["metrics"]["psnr"]) for p in first]


def test_bd_table_matches_an_independent_computation() -> None:
    """A codec that needs 0.8x the anchor's bits at every PSNR: BD-rate -20% exactly; an LPIPS
    curve (lower is better) 0.01 better at equal rates: BD-LPIPS -0.01."""
    rates = [0.02, 0.04, 0.08, 0.16]
    psnr = [26.0, 28.5, 31.0, 33.0]
    lpips = [0.30, 0.22, 0.15, 0.10]
    points = [{"video": "v", "codec": "x265", "setting": "low-delay", "crf": i, "bpp": r, "metrics": {"psnr": q, "lpips": l}}
              for i, (r, q, l) in enumerate(zip(rates, psnr, lpips))]  # fmt: skip
    points += [{"video": "v", "codec": "mine", "quality": i, "bpp": r * 0.8, "metrics": {"psnr": q}} for i, (r, q) in enumerate(zip(rates, psnr))]
    points += [{"video": "v", "codec": "lp", "quality": i, "bpp": r, "metrics": {"lpips": l - 0.01}} for i, (r, l) in enumerate(zip(rates, lpips))]
    rows = {(r["codec"], r["metric"]): r for r in bd_table(points, ["psnr", "lpips"])}
    assert rows[("mine", "psnr")]["bd_rate_percent"] == pytest.approx(-20.0, abs=1e-9)
    assert rows[("mine", "psnr")]["bd_rate_percent"] == pytest.approx(bd_rate(rates, psnr, [r * 0.8 for r in rates], psnr).value)
    assert rows[("lp", "lpips")]["bd_metric"] == pytest.approx(-0.01, abs=1e-9)
    assert ("mine", "lpips") not in rows and ("lp", "psnr") not in rows  # only metrics both curves have


def test_eval_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["eval", "--codec", str(tmp_path), "--video", "x.mp4", "--out", str(tmp_path / "r")]) == 2
    assert "not an exported codec folder" in capsys.readouterr().err
    assert cli.main(["eval", "--anchors", "x266", "--video", str(sample_video("carphone_pristine.mp4")), "--frames", "2", "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("gvc: error:") and "x266" in err and "\n" not in err


def test_no_source_frames_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    assert cli.main(["eval", "--anchors", "x264", "--video", str(empty), "--out", str(tmp_path / "r"), "--no-progress"]) == 2
    assert capsys.readouterr().err.startswith("gvc: error:")
