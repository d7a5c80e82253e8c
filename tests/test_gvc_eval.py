"""``gvc eval``: the whole grid on a small clip, its outputs, the anchor cache, and the BD wiring."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from PIL import Image

from gvc_train import gvc_cli as cli
from gvc_train.data.sample_videos import sample_video
from gvc_train.data.video_io import read_frames
from gvc_train.eval.bdrate import bd_rate
from gvc_train.eval.report import bd_table
from gvc_train.eval.report_tables import BD_COLUMNS, points_csv, summary_markdown
from gvc_train.strict_json import dumps, write_json

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


def _strict_loads(text: str):
    """What a strict parser (JSON.parse, jq, serde_json) accepts: no NaN, Infinity or -Infinity."""

    def refuse(word: str):
        raise ValueError(f"not JSON: {word}")

    return json.loads(text, parse_constant=refuse)


def test_report_has_every_point_output_and_plot(report_dir: Path) -> None:
    report = _strict_loads((report_dir / "report.json").read_text())
    codec = [p for p in report["points"] if "quality" in p]
    anchors = [p for p in report["points"] if "crf" in p]
    assert [p["quality"] for p in codec] == [0, 1, 2]
    assert {p["setting"] for p in anchors} == {"low-delay", "random-access"}
    assert len([p for p in anchors if p["span"] == "rate"]) == 2 * 3
    # the tiny codec is far below x264's quality: each ladder reached for it (CRF points up to x264's 51)
    for p in anchors:
        ladder_end = max(q["crf"] for q in anchors if q["setting"] == p["setting"] and q["span"] == "rate")
        assert p["span"] == "rate" or (p["span"] == "quality" and ladder_end < p["crf"] <= 51)
    assert {(r["anchor"], r["metric"]) for r in report["quality_span"]} <= {(a, m) for a in ("x264 (low-delay)", "x264 (random-access)") for m in ("psnr", "ms_ssim_db")}
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
    assert report["truncation"] == [] and "Truncation" not in summary  # a latent codec's streams cannot be cut
    assert report["ablation"] == [] and "Control ablation" not in summary  # nor does it send controls
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


def _non_overlapping_points() -> list[dict]:
    """A codec far below the anchor in PSNR (no common PSNR range: no BD-rate) at the anchor's
    rates (a full common rate range: a valid BD-PSNR), as on carphone in docs/results."""
    rates = [0.02, 0.04, 0.08, 0.16]
    points = [{"video": "v", "codec": "x264", "setting": "low-delay", "crf": i, "bpp": r, "metrics": {"psnr": q}}
              for i, (r, q) in enumerate(zip(rates, [26.0, 28.5, 31.0, 33.0]))]  # fmt: skip
    points += [{"video": "v", "codec": "mine", "quality": i, "bpp": r, "metrics": {"psnr": q}} for i, (r, q) in enumerate(zip(rates, [15.0, 15.5, 16.0, 16.4]))]
    return points


def test_each_bd_warning_names_its_figure() -> None:
    [row] = bd_table(_non_overlapping_points(), ["psnr"])
    assert row["bd_rate_percent"] != row["bd_rate_percent"] and "do not overlap on the metric axis" in row["bd_rate_warning"]
    assert row["bd_metric"] == pytest.approx(-13.7, abs=0.5) and row["bd_metric_overlap"] == 1.0
    assert row["bd_metric_warning"] is None  # the valid BD-PSNR carries no warning meant for the BD-rate

    [csv_row] = list(csv.DictReader(points_csv([row], [], columns=BD_COLUMNS).splitlines()))
    assert csv_row["bd_rate_percent"] == "" and "do not overlap" in csv_row["bd_rate_warning"]
    assert float(csv_row["bd_metric"]) == pytest.approx(row["bd_metric"], rel=1e-5) and csv_row["bd_metric_warning"] == ""

    report = {"protocol": "p", "frames": 4, "intra_period": -1, "metrics": ["psnr"], "points": [], "bd": [row], "unavailable_metrics": {}}
    table = [line for line in summary_markdown(report).splitlines() if line.startswith("| v |")]
    header = next(line for line in summary_markdown(report).splitlines() if "BD-rate warning" in line)
    cells = dict(zip([c.strip() for c in header.split("|")], [c.strip() for c in table[0].split("|")]))
    assert cells["BD-rate (%)"] == "-" and "do not overlap" in cells["BD-rate warning"]
    assert cells["BD-metric"] == f"{row['bd_metric']:.3f}" and cells["BD-metric warning"] == ""


def test_reports_are_strict_json(tmp_path: Path) -> None:
    """NaN and infinities become null, nested anywhere; a value the conversion misses raises
    rather than writing a file that strict parsers reject."""
    rows = bd_table(_non_overlapping_points(), ["psnr"])
    write_json(tmp_path / "r.json", {"bd": rows, "x": [float("inf"), (-float("inf"), 1.5)], "ok": 0.25}, indent=1)
    back = _strict_loads((tmp_path / "r.json").read_text())
    assert back["bd"][0]["bd_rate_percent"] is None and back["bd"][0]["bd_metric"] == pytest.approx(rows[0]["bd_metric"])
    assert back["x"] == [None, [None, 1.5]] and back["ok"] == 0.25
    with pytest.raises(ValueError):
        dumps({"v": object()}, default=lambda o: float("nan"))
    with pytest.raises(ValueError, match="not JSON: NaN"):
        _strict_loads(json.dumps(float("nan")))  # the parse really is strict


def test_shard_index_is_strict_json() -> None:
    from gvc_train.data.sample_format import ShardIndex

    index = ShardIndex(
        shards=[], frame_format="png", clip_frames=5, overlap=0, resize_short=None, total_clips=1, total_frames=5,
        total_bytes=10, sources=[{"source": "a.y4m", "fps": float("nan")}], skipped=[],
    )  # fmt: skip
    assert _strict_loads(index.to_json())["sources"][0]["fps"] is None


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
