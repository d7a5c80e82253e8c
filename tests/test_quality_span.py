"""Anchor ladders extended into the codecs' quality range (so a BD-rate exists), and BD of codec against codec."""

from __future__ import annotations

import math

import numpy as np
import pytest

from gvc_train.data.sample_videos import sample_video
from gvc_train.data.video_io import read_frames
from gvc_train.eval import anchors as A
from gvc_train.eval.anchor_search import quality_span_crfs
from gvc_train.eval.report import bd_table, codec_vs_codec_bd, quality_span_records
from gvc_train.eval.report_tables import summary_markdown

LIMITS = (0, 51)


def psnr_of(crf: int) -> float:
    return 40.0 - 0.4 * crf  # dB, linear in CRF as near the top of x264's range


def ssim_db_of(crf: int) -> float:
    return 21.0 - 0.4 * crf  # MS-SSIM in dB, lower than PSNR


def bpp_of(crf: int) -> float:
    return 2.0 * math.exp(-0.11 * crf)


class Encoder:
    """A stand-in for the anchor's encode + decode + metrics: counts what it measures."""

    def __init__(self, ladder: range | list[int], budget: int = 8) -> None:
        self.known = {c: {"psnr": psnr_of(c), "ms_ssim_db": ssim_db_of(c)} for c in ladder}
        self.measured: list[int] = []
        self.budget = budget

    def measure(self, crf: int) -> None:
        assert LIMITS[0] <= crf <= LIMITS[1] and crf not in self.known
        self.measured.append(crf)
        self.known[crf] = {"psnr": psnr_of(crf), "ms_ssim_db": ssim_db_of(crf)}

    def left(self) -> int:
        return self.budget - len(self.measured)

    def span(self, codec_range: dict[str, tuple[float, float]]) -> None:
        quality_span_crfs(self.known, codec_range, self.measure, self.left, LIMITS)


def test_ladder_reaches_the_codecs_quality_range_and_fills_it() -> None:
    enc = Encoder(range(23, 44, 5))  # lowest quality 22.8 dB; the codec: 20.5-21.5 dB (CRF 46.25-48.75)
    enc.span({"psnr": (20.5, 21.5)})
    values = {c: q["psnr"] for c, q in enc.known.items()}
    assert 0 < len(enc.measured) <= enc.budget
    assert min(values.values()) < 20.5  # one point past the codecs' lowest: the shared interval is covered
    shared = [c for c in values if 20.5 <= values[c] <= 21.5]
    assert len(shared) >= 2 and max(enc.measured) < 51  # no encode wasted at the limit
    around = sorted(c for c in values if c >= max(c for c in values if values[c] > 21.5))
    assert len(around) >= 4  # the bracket's ends and the points inside


def test_ladder_stops_at_the_crf_limit() -> None:
    enc = Encoder(range(23, 44, 5))
    enc.span({"psnr": (15.0, 16.0)})  # 40 - 0.4 * 51 = 19.6 dB: never reached
    assert max(enc.known) == 51 and len(enc.measured) <= 2
    enc.measured.clear()
    enc.span({"psnr": (15.0, 16.0)})  # the limit is known: nothing more to try
    assert enc.measured == []


def test_a_metric_out_of_reach_does_not_cut_the_span_of_another() -> None:
    """PSNR first: its search ends at CRF 51, below MS-SSIM's range too; MS-SSIM (the codec:
    0.6-1.4 dB, CRF 49-51) still gets its points through the shared interval."""
    enc = Encoder(range(23, 44, 5))
    enc.span({"psnr": (15.0, 16.0), "ms_ssim_db": (0.6, 1.4)})
    assert 51 in enc.measured and len(enc.measured) <= enc.budget
    assert {48, 49, 50, 51} <= set(enc.known)  # from above the codec's range to its bottom, every CRF between


def test_no_extension_when_the_curves_already_overlap_or_budget_is_spent() -> None:
    enc = Encoder(range(23, 44, 5))
    enc.span({"psnr": (20.0, 24.0)})  # the ladder's 22.8 dB is inside the codec's range
    assert enc.measured == []
    enc = Encoder(range(23, 44, 5), budget=0)
    enc.span({"psnr": (20.5, 21.5)})
    assert enc.measured == []


def _points(enc: Encoder, codec_psnr: list[float]) -> list[dict]:
    anchor = [{"video": "v", "codec": "x264", "setting": "low-delay", "crf": c, "bpp": bpp_of(c),
               "metrics": {"psnr": q["psnr"]}, "span": "quality" if c in enc.measured else "rate"} for c, q in sorted(enc.known.items())]  # fmt: skip
    codec = [{"video": "v", "codec": "mine", "quality": i, "bpp": bpp_of(41 - 3 * i), "metrics": {"psnr": q}} for i, q in enumerate(codec_psnr)]
    return anchor + codec


def test_bd_rate_becomes_finite_once_the_ladder_reaches_the_codecs_quality() -> None:
    codec_psnr = [20.5, 21.0, 21.5]
    enc = Encoder(range(23, 44, 5))
    [before] = bd_table(_points(enc, codec_psnr), ["psnr"])
    assert math.isnan(before["bd_rate_percent"]) and math.isfinite(before["bd_metric"])
    enc.span({"psnr": (20.5, 21.5)})
    points = _points(enc, codec_psnr)
    [after] = bd_table(points, ["psnr"])
    assert math.isfinite(after["bd_rate_percent"]) and after["bd_rate_percent"] > 0  # the codec costs more bits
    [record] = quality_span_records(points)
    assert record["overlap"] and record["crfs"] == sorted(enc.measured) and record["crf_limit"] == 51
    report = {"protocol": "p", "frames": 4, "intra_period": -1, "metrics": ["psnr"], "points": points, "bd": [after],
              "unavailable_metrics": {}, "quality_span": [record]}  # fmt: skip
    [line] = [line for line in summary_markdown(report).splitlines() if line.startswith("Quality span:")]
    assert "x264 (low-delay)" in line and "on PSNR" in line and "shares a quality interval" in line and "no BD-rate" not in line


def test_codec_against_a_reference_codec() -> None:
    """A codec that needs half the bits at every PSNR: BD-rate -50% against the one that needs all."""
    rates, psnr = [0.02, 0.04, 0.08, 0.16], [26.0, 28.5, 31.0, 33.0]
    points = [{"video": "v", "codec": "generic", "quality": i, "bpp": r, "metrics": {"psnr": q}} for i, (r, q) in enumerate(zip(rates, psnr))]
    points += [{"video": "v", "codec": "tuned", "quality": i, "bpp": r / 2, "metrics": {"psnr": q}} for i, (r, q) in enumerate(zip(rates, psnr))]
    points += [{"video": "v", "codec": "low", "quality": i, "bpp": r, "metrics": {"psnr": q - 20}} for i, (r, q) in enumerate(zip(rates, psnr))]
    rows = {(r["codec"], r["anchor"]): r for r in bd_table(points, ["psnr"], reference_codec="generic")}
    assert set(rows) == {("tuned", "generic"), ("low", "generic")}
    assert rows[("tuned", "generic")]["bd_rate_percent"] == pytest.approx(-50.0, abs=1e-9)
    assert math.isnan(rows[("low", "generic")]["bd_rate_percent"])  # no shared quality: not computable...
    assert rows[("low", "generic")]["bd_metric"] == pytest.approx(-20.0, abs=1e-9)  # ...and BD-PSNR still given
    assert bd_table(points, ["psnr"]) == []  # no anchors and no reference: no rows
    report = {"points": points, "metrics": ["psnr"]}
    [row] = codec_vs_codec_bd(report, "tuned", "generic")
    assert row["bd_rate_percent"] == pytest.approx(-50.0, abs=1e-9) and row["anchor"] == "generic"
    with pytest.raises(ValueError, match="no codec curve 'generik'"):
        codec_vs_codec_bd(report, "tuned", "generik")


def test_real_ladder_marks_the_points_it_adds() -> None:
    source = np.ascontiguousarray(read_frames(sample_video("carphone_pristine.mp4"), count=6)[:, :48, :64])

    def quality_of(p: A.AnchorPoint) -> dict[str, float]:
        mse = np.mean((p.frames.astype(np.float64) - source) ** 2)
        return {"psnr": 10 * math.log10(255**2 / mse)}

    plain = A.anchor_ladder(source, 30.0, "x264", points=3, cache_dir=False)  # CRF 23, 33, 43
    top = quality_of(plain[-1])["psnr"] - 1.5
    ladder = A.anchor_ladder(source, 30.0, "x264", points=3, cache_dir=False, quality_of=quality_of, quality_range={"psnr": (top - 1.0, top)})
    added = [p for p in ladder if p.span == "quality"]
    assert [p.crf for p in ladder if p.span == "rate"] == [p.crf for p in plain]
    assert 0 < len(added) <= A.MAX_SPAN_ENCODES and all(43 < p.crf <= 51 for p in added)
    assert [p.crf for p in ladder] == sorted(p.crf for p in ladder) and added[0].record()["span"] == "quality"
    assert min(quality_of(p)["psnr"] for p in added) < top


def test_a_reference_codec_mode_the_codec_has_no_curve_for_is_one_line(tiny_codec_dir, tmp_path) -> None:
    from gvc_train.eval.report import EvalOptions, run_eval

    options = EvalOptions(codecs=[str(tiny_codec_dir)], videos=[str(tmp_path / "none.mp4")], out=str(tmp_path / "r"), anchors=[],
                          reference_codec=f"{tiny_codec_dir.name}:i2v", progress=False)  # fmt: skip
    with pytest.raises(ValueError, match=r"draws no curve 'i2v' here \(its curves: one, unlabelled\)"):
        run_eval(options)
