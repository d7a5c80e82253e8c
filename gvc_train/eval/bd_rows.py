"""The BD rows of ``gvc eval``: every codec curve against every anchor curve and against a
reference codec, and what the anchors' quality span did (``eval.anchors.anchor_ladder``).

Functions of the report's points (the dicts of ``report.json``), so a script can use them on a
loaded report: ``codec_vs_codec_bd(json.load(open("report/report.json")), "tuned", "generic")``.
Standard library only at import; the BD computation (``eval.bdrate``) comes in when called.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

# BD figures of these are computed with the curves flipped (bdrate's higher_is_better=False).
LOWER_IS_BETTER = {"lpips", "dists", "fvd"}
# The metrics an anchor's ladder is extended on when the codecs' quality is below all of it (the
# quality span, eval.anchors.anchor_ladder), each on its dB scale, with its name in the summary.
SPAN_METRICS = {"psnr": "PSNR", "ms_ssim_db": "MS-SSIM"}


def quality_range(codec_points: Sequence[dict[str, Any]]) -> dict[str, tuple[float, float]]:
    """(lowest, highest) of each SPAN_METRICS metric over the codecs' points (with derived metrics)."""
    ranges = {}
    for metric in SPAN_METRICS:
        values = [p["metrics"][metric] for p in codec_points if p["metrics"].get(metric) is not None]
        if values:
            ranges[metric] = (min(values), max(values))
    return ranges


def _curves_by_video(points: Sequence[dict[str, Any]]) -> dict[str, dict[str, list[dict[str, Any]]]]:
    """``{video: {curve label: its points}}``, videos sorted, curves in the points' order."""
    from gvc_train.eval.plots import curve_label

    by_video: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for p in sorted(points, key=lambda p: p["video"]):
        by_video.setdefault(p["video"], {}).setdefault(curve_label(p), []).append(p)
    return by_video


def _bd_row(
    video: str, test: str, anchor: str, metric: str, anchor_points: list[dict[str, Any]], test_points: list[dict[str, Any]]
) -> dict[str, Any] | None:
    """BD-rate and BD-metric of ``test`` against ``anchor`` on one metric; None when a point lacks it."""
    from gvc_train.eval.bdrate import bd_metric, bd_rate

    a = [(p["bpp"], p["metrics"].get(metric)) for p in anchor_points]
    t = [(p["bpp"], p["metrics"].get(metric)) for p in test_points]
    if any(v is None for _, v in a + t):
        return None
    args = ([r for r, _ in a], [v for _, v in a], [r for r, _ in t], [v for _, v in t])
    higher = metric not in LOWER_IS_BETTER
    try:
        rate, delta = bd_rate(*args, higher_is_better=higher), bd_metric(*args, higher_is_better=higher)
    except ValueError as e:
        return {"video": video, "codec": test, "anchor": anchor, "metric": metric, "error": str(e)}
    return {
        "video": video, "codec": test, "anchor": anchor, "metric": metric,
        # each figure with its own overlap and warning: the two integrate
        # over different axes, so one can be valid while the other has no overlap
        "bd_rate_percent": rate.value, "bd_rate_overlap": rate.overlap, "bd_rate_warning": rate.warning,
        "bd_metric": delta.value, "bd_metric_overlap": delta.overlap, "bd_metric_warning": delta.warning,
    }  # fmt: skip


def bd_table(points: list[dict[str, Any]], metrics: Sequence[str], reference_codec: str | None = None) -> list[dict[str, Any]]:
    """BD-rate and BD-metric of every codec curve against every anchor curve, per video and
    metric; with ``reference_codec``, then of every other codec curve against that one (rows
    whose ``anchor`` is the reference codec's name)."""
    rows = []
    for video, curves in _curves_by_video(points).items():
        learned = [k for k, v in curves.items() if "quality" in v[0]]
        anchors = [k for k, v in curves.items() if "quality" not in v[0]]
        pairs = [(test, anchor) for test in learned for anchor in anchors]
        if reference_codec in learned:
            pairs += [(test, reference_codec) for test in learned if test != reference_codec]
        for test, anchor in pairs:
            for metric in metrics:
                row = _bd_row(video, test, anchor, metric, curves[anchor], curves[test])
                rows += [row] if row is not None else []
    return rows


def codec_vs_codec_bd(report: dict[str, Any], codec: str, reference: str, metrics: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """BD rows (as in ``report["bd"]``) of codec curve ``codec`` against codec curve ``reference``,
    one per video holding both and per metric (default: the report's), from a ``gvc eval``
    report (its ``report.json``, loaded). Negative BD-rate: ``codec`` needs fewer bits than
    ``reference`` at equal quality; without a shared quality interval it is nan (None once
    written as JSON) with a warning, and BD-metric is still given where the rates overlap."""
    by_video = _curves_by_video(report["points"])
    names = sorted({k for curves in by_video.values() for k, v in curves.items() if "quality" in v[0]})
    for name in (codec, reference):
        if name not in names:
            raise ValueError(f"no codec curve {name!r} in the report (it has: {', '.join(names) or 'none'})")
    rows = []
    for video, curves in by_video.items():
        if codec in curves and reference in curves:
            for metric in report["metrics"] if metrics is None else metrics:
                row = _bd_row(video, codec, reference, metric, curves[reference], curves[codec])
                rows += [row] if row is not None else []
    return rows


def quality_span_records(points: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each anchor curve and SPAN_METRICS metric on which the rate ladder's lowest quality was
    above the codecs' highest: the CRFs added (``span: "quality"``) and whether the curves now
    share a quality interval (else the CRF limit or the encode budget came first)."""
    from gvc_train.eval.anchors import ANCHORS

    records = []
    for video, curves in _curves_by_video(points).items():
        codec_range = quality_range([p for v in curves.values() for p in v if "quality" in p])
        for label, curve in curves.items():
            if "quality" in curve[0]:
                continue
            for metric, (_, top) in codec_range.items():
                rate_values = [p["metrics"][metric] for p in curve if p.get("span", "rate") == "rate" and metric in p["metrics"]]
                if not rate_values or min(rate_values) <= top:
                    continue
                records.append(
                    {
                        "video": video, "anchor": label, "metric": metric, "crf_limit": ANCHORS[curve[0]["codec"]].crf_limits[1],
                        "crfs": sorted(p["crf"] for p in curve if p.get("span") == "quality"), "last_crf": max(p["crf"] for p in curve),
                        "overlap": min(p["metrics"][metric] for p in curve if metric in p["metrics"]) <= top,
                    }
                )  # fmt: skip
    return records
