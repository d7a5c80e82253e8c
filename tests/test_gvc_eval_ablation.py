"""``gvc eval``'s control ablation (eval/ablation.py) on the tiny controlled codec of
tests/controlled_codec_fixtures.py: 5 frames (keyframes 0 and 4, one generated clip), no anchors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gvc_train import gvc_cli as cli
from gvc_train.eval.ablation import parse_control_subsets

from controlled_codec_fixtures import write_codec_folder, write_moving_square_clip

FRAMES = 5


@pytest.fixture(scope="module")
def codec_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_codec_folder(tmp_path_factory.mktemp("controlled_codec"), "controlled")


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_moving_square_clip(tmp_path_factory.mktemp("clip"), frames=FRAMES)


def _eval(codec_dir: Path, clip_dir: Path, out: Path, *extra: str) -> int:
    argv = ["eval", "--codec", str(codec_dir), "--anchors", "", "--video", str(clip_dir), "--frames", str(FRAMES), "--no-progress"]
    return cli.main([*argv, *extra, "--out", str(out)])


@pytest.fixture(scope="module")
def default_report(codec_dir: Path, clip_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("report")
    assert _eval(codec_dir, clip_dir, out) == 0
    return out, json.loads((out / "report.json").read_text())


def test_by_default_the_full_set_and_no_controls_are_compared(default_report) -> None:
    out, report = default_report
    [table] = report["ablation"]
    assert table["quality"] == 1 and table["frames"] == FRAMES  # the settings' keyframe quality
    full, none = table["rows"]
    assert (full["controls"], none["controls"]) == (["luma", "flow"], [])
    # the full set is the quality-1 point's own stream, not coded again
    point = next(p for p in report["points"] if p["quality"] == 1)
    assert full["reused"] and full["stream"] == point["stream"] and full["bytes"] == point["bytes"]
    assert full["metrics"]["psnr"] == point["metrics"]["psnr"]
    for row in (full, none):
        assert sum(row["parts"].values()) == row["bytes"] == (out / row["stream"]).stat().st_size
        assert row["bpp"] == pytest.approx(row["bytes"] * 8 / (FRAMES * 40 * 32))
        assert {"psnr", "ms_ssim", "vmaf"} <= set(row["metrics"])
    assert set(full["parts"]) == {"keyframes", "control luma", "control flow", "other"}
    assert set(none["parts"]) == {"keyframes", "other"} and none["parts"]["keyframes"] == full["parts"]["keyframes"]
    assert none["metrics"]["psnr"] != full["metrics"]["psnr"]  # the controls change the generated frames
    summary = (out / "summary.md").read_text()
    section = summary[summary.index("## Control ablation"):]
    assert "| controls | bytes | bpp | PSNR (dB) | MS-SSIM | VMAF | keyframes (bytes) | control luma (bytes) | control flow (bytes) | other (bytes) |" in section
    assert f"| luma,flow | {full['bytes']} |" in section and f"| none | {none['bytes']} |" in section


def test_asked_subsets_are_coded_in_order(codec_dir: Path, clip_dir: Path, default_report, tmp_path: Path) -> None:
    _, first = default_report
    assert _eval(codec_dir, clip_dir, tmp_path, "--control-subsets", "flow; none ;luma,flow") == 0
    [table] = json.loads((tmp_path / "report.json").read_text())["ablation"]
    assert [r["controls"] for r in table["rows"]] == [["flow"], [], ["luma", "flow"]]
    assert set(table["rows"][0]["parts"]) == {"keyframes", "control flow", "other"} and not table["rows"][0]["reused"]
    none = first["ablation"][0]["rows"][1]
    assert (table["rows"][1]["bytes"], table["rows"][1]["metrics"]["psnr"]) == (none["bytes"], none["metrics"]["psnr"])  # deterministic


def test_bad_subsets_are_one_line_errors_before_any_work(
    codec_dir: Path, clip_dir: Path, tiny_codec_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for subsets, codec, expected in (
        ("luma;luma,edges", codec_dir, "cannot send ['edges']"),
        ("luma,,flow", codec_dir, "--control-subsets: 'luma,,flow'"),
        ("luma;none", tiny_codec_dir, "none of the codecs"),  # a latent codec sends no controls
    ):
        assert _eval(codec, clip_dir, tmp_path / "r", "--control-subsets", subsets) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("gvc: error:") and expected in err and "\n" not in err, err
        assert not (tmp_path / "r").exists()


def test_parse_control_subsets() -> None:
    assert parse_control_subsets("luma;luma,flow;none") == [["luma"], ["luma", "flow"], []]
    assert parse_control_subsets(" flow , luma ") == [["flow", "luma"]]
    for bad, why in (("luma;;flow", "not a subset"), ("luma,luma", "named twice"), ("luma,flow;flow,luma", "given twice"), ("none,luma", "not a subset")):
        with pytest.raises(ValueError, match=why):
            parse_control_subsets(bad)
