"""The README's measured figures are the committed measurements' (benchmarks/readme_figures.py):
a number typed by hand, or a measurement that changed without `make readme-figures`, fails here."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest

from conftest import REPO

sys.path.insert(0, str(REPO))  # benchmarks/ is a folder of the checkout, not an installed package
from benchmarks import readme_figures  # noqa: E402


def test_every_generated_block_matches_its_measurement() -> None:
    _, changed = readme_figures.render((REPO / "README.md").read_text())
    assert not changed, f"README blocks differ from their JSON: {changed} (run make readme-figures)"


def test_a_number_changed_in_the_readme_is_caught() -> None:
    readme = (REPO / "README.md").read_text()
    for name in readme_figures.BLOCKS:
        m = re.search(rf"<!-- gen:{name} -->(.*?)<!-- /gen:{name} -->", readme, re.S)
        assert m is not None
        digit = re.search(r"\d", m.group(1))
        assert digit is not None, f"block {name} holds no figure"
        i = m.start(1) + digit.start()
        edited = readme[:i] + str((int(readme[i]) + 1) % 10) + readme[i + 1 :]
        assert readme_figures.render(edited)[1] == [name]


def test_a_changed_measurement_is_caught(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rd = json.loads(readme_figures.RD.read_text())
    rd["points"][0]["psnr"] += 0.01
    forged = tmp_path / "rd.json"
    forged.write_text(json.dumps(rd))
    blocks = {name: ((forged, make) if source == readme_figures.RD else (source, make)) for name, (source, make) in readme_figures.BLOCKS.items()}
    monkeypatch.setattr(readme_figures, "BLOCKS", blocks)
    assert "reference_table" in readme_figures.render((REPO / "README.md").read_text())[1]


def _bd_entry(anchor: str, metric: str, rate: float | None, overlap: float, warning: str | None) -> dict[str, object]:
    return {
        "video": "v.mp4", "codec": "tiny", "anchor": anchor, "metric": metric, "bd_metric": -1.0,
        "bd_rate_percent": rate, "bd_rate_overlap": overlap, "bd_rate_warning": warning,
    }  # fmt: skip


def _report(quality_span: list[dict[str, object]]) -> dict[str, object]:
    codec = {"codec": "tiny", "quality": 0, "family": "latent", "bpp": 0.03, "metrics": {"psnr": 15.4}}
    tuned = {"codec": "tuned", "quality": 0, "family": "latent", "bpp": 0.03, "metrics": {"psnr": 16.0}}
    anchor = {"codec": "x264", "crf": 51, "setting": "low-delay", "bpp": 0.05, "metrics": {"psnr": 20.4}}
    bd = [
        _bd_entry("x264 (low-delay)", "psnr", None, 0.0, "curves do not overlap"),
        _bd_entry("x264 (low-delay)", "ms_ssim", 116.4, 0.09, "curves overlap on only 9%"),
        _bd_entry("x265 (random-access)", "ms_ssim", -3.2, 0.8, None),
        _bd_entry("tiny", "ms_ssim", 55.0, 1.0, None),  # --reference-codec: tuned against tiny
    ]
    return {"points": [codec, tuned, anchor], "bd": bd, "seconds": 12.0, "quality_span": quality_span}


def test_bd_table_gives_a_bd_rate_per_metric_and_leaves_codec_rows_out() -> None:
    lines = readme_figures.bd_table(_report([])).strip().splitlines()
    assert lines[0].endswith("| BD-rate (PSNR) | BD-rate (MS-SSIM) |")
    assert len(lines) == 4, lines  # header, rule, x264, x265: the row against codec "tiny" is not an anchor
    assert lines[2].startswith("| x264 | low-delay |")
    assert lines[2].endswith("| none: no quality overlap | +116% (overlap 9%) |")
    assert lines[3].endswith("| none: no quality overlap | -3% |")  # no warning: no overlap note


def test_bd_prose_says_what_the_quality_span_reached() -> None:
    span = [
        {"video": "v.mp4", "anchor": "x264 (low-delay)", "metric": "psnr", "crfs": [48, 51], "crf_limit": 51, "last_crf": 51, "overlap": False},
        {"video": "v.mp4", "anchor": "x264 (low-delay)", "metric": "ms_ssim_db", "crfs": [44, 47], "crf_limit": 51, "last_crf": 47, "overlap": True},
    ]
    text = readme_figures.bd_prose(_report(span))
    assert "(CRFs added: x264 44-51;" in text
    assert "it reached the codec's MS-SSIM range, but not its PSNR range" in text
    assert "shared" not in readme_figures.bd_prose(_report([])) and "span" not in readme_figures.bd_prose(_report([]))
    assert text.endswith("lies below every anchor's lowest point (20.4 dB and up)")


def test_bd_prose_names_the_anchor_settings_that_reached_a_metric() -> None:
    span = [
        {"video": "v.mp4", "anchor": a, "metric": "ms_ssim_db", "crfs": [63], "crf_limit": 63, "last_crf": 63, "overlap": ok}
        for a, ok in [("x264 (low-delay)", True), ("x264 (random-access)", True), ("svtav1 (low-delay)", True), ("svtav1 (random-access)", False)]
    ]
    assert "it reached the codec's MS-SSIM range for x264 and SVT-AV1 (low-delay) only," in readme_figures.bd_prose(_report(span))


def test_frame_sizes_marks_a_peak_over_the_budget_and_a_tokenizer_that_cannot_tile() -> None:
    def run(peak: float, tiles: bool | None, plan: str = "1 strip(s), 1 frame(s) at once, cache in RAM") -> dict:
        return {"peak_mb": peak, "fps": 0.5, "plan": plan, "budget_mb": 1536.0, "tiles": tiles}

    x265 = {"encode_fps": 9.0, "decode_fps": 90.0}
    results = [
        {"codec": "checkpoints/a", "family": "latent", "short": 5, "long": 5,
         "sizes": {"1920x1080": {"5": {"encode": run(1400, True), "decode": run(1200, True)}, "x265_1thread": x265}}},
        {"codec": "checkpoints/b", "family": "progressive", "short": 5, "long": 5,
         "sizes": {"1920x1080": {"5": {"encode": run(2264, False), "decode": run(3566, False)}, "x265_1thread": x265}}},
    ]  # fmt: skip
    results.append({"codec": "checkpoints/c", "family": "controlled", "short": 5, "long": 5,
                    "sizes": {"1920x1080": {"5": {"encode": {"refused": "over the clip limit"}, "decode": {"refused": "over the clip limit"}}, "x265_1thread": x265}}})  # fmt: skip
    a, b, c = readme_figures.frame_sizes_table(results).strip().splitlines()[2:]
    assert c == "| `c` (controlled) | 1920x1080 | refused: over the clip limit | - | - | - | 9.0 / 90.0 |"
    assert "over budget" not in a and "no strips" not in a
    assert "| 2,264 (over budget), 0.50 | 3,566 (over budget), 0.50 | 1 strip(s), 1 frame(s) at once, cache in RAM; whole-frame norms, no strips |" in b
