"""The text outputs of ``gvc eval``: CSV of points and BD figures, and the Markdown summary."""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from typing import Any

from gvc_train.eval.bd_rows import SPAN_METRICS

POINT_COLUMNS = ("video", "codec", "setting", "quality", "crf", "preset", "intra_period", "frames", "bytes", "bpp")
# bd.csv: each figure beside its own overlap and warning; ``error`` when neither could be computed
BD_COLUMNS = (
    "video", "codec", "anchor", "metric",
    "bd_rate_percent", "bd_rate_overlap", "bd_rate_warning", "bd_metric", "bd_metric_overlap", "bd_metric_warning", "error",
)  # fmt: skip


def points_csv(rows: Sequence[dict[str, Any]], metrics: Sequence[str], columns: Sequence[str] = POINT_COLUMNS) -> str:
    """One row per point: its identity columns, then each metric's mean over frames."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow([*columns, *metrics])
    for row in rows:
        means = row.get("metrics", {})
        writer.writerow([_cell(row.get(c)) for c in columns] + [_cell(means.get(m)) for m in metrics])
    return buffer.getvalue()


def _cell(value: Any) -> str:
    if value is None or (isinstance(value, float) and value != value):
        return ""  # no value (a BD figure without overlap): empty, as in report.json's null
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def _fmt(value: Any, digits: int) -> str:
    if value is None or (isinstance(value, float) and value != value):
        return "-"
    return f"{value:.{digits}f}"


def _truncation_sections(curves: Sequence[dict[str, Any]]) -> list[str]:
    """A table per truncation curve: its one stream cut after each scale, each fill's PSNR and MS-SSIM."""
    from gvc_train.eval.truncation import truncation_markdown

    lines: list[str] = []
    for c in curves:
        lines += ["", f"## Truncation points: {c['video']}, {c['codec']}", ""]
        lines.append(
            f"One stream, coded once at quality {c['quality']} ({c['stream_bytes']} bytes, `{c['stream']}`), cut after each of its "
            f"{c['of_scales']} scales without re-encoding (`gvc truncate`); each cut decoded with each fill of what it lacks "
            f"({', '.join(c['fills'])}; the first is the codec's default). Rate: the cut file's size."
        )
        lines += ["", truncation_markdown(c)]
    return lines


def _ablation_sections(tables: Sequence[dict[str, Any]]) -> list[str]:
    """A table per control ablation: the video coded once per set of controls."""
    from gvc_train.eval.ablation import ablation_markdown

    lines: list[str] = []
    for t in tables:
        lines += ["", f"## Control ablation: {t['video']}, {t['codec']}", ""]
        lines.append(
            f"The same {t['frames']} frames coded once per set of controls, at quality {t['quality']} (the codec's default): "
            "the keyframes, the seed and the sampling settings are the same in every row, so a row differs from another "
            "only by the controls sent, what they cost and what they buy. Rate: the file's size; bytes by part from the "
            "stream's chunks (`gvc info`), the rest being header, config, control table and end."
        )
        lines += ["", ablation_markdown(t)]
    return lines


def _quality_span_lines(records: Sequence[dict[str, Any]]) -> list[str]:
    """One line per anchor curve whose ladder was extended into the codecs' quality range."""
    by_curve: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in records:
        by_curve.setdefault((r["video"], r["anchor"]), []).append(r)
    lines = []
    for (video, anchor), rs in by_curve.items():
        crfs = sorted({c for r in rs for c in r["crfs"]})
        reached = [SPAN_METRICS.get(r["metric"], r["metric"]) for r in rs if r["overlap"]]
        missed = [SPAN_METRICS.get(r["metric"], r["metric"]) for r in rs if not r["overlap"]]
        line = (
            f"Quality span: {anchor} on {video}: the ladder was extended toward the codecs' quality range on "
            f"{' and '.join(reached + missed)} (CRF {', '.join(map(str, crfs)) or 'none left'}; points marked span=quality)"
        )
        if reached:
            line += f"; it now shares a quality interval with them on {' and '.join(reached)}, the interval BD-rate averages over (see its overlap)"
        if missed:
            r = rs[0]
            end = f"at its CRF limit {r['crf_limit']}" if r["last_crf"] >= r["crf_limit"] else f"at CRF {r['last_crf']}, where the encode budget ended"
            line += f"; on {' and '.join(missed)} it is still above them {end}: no BD-rate"
        lines.append(line + ".")
    return ["", *lines] if lines else []


def summary_markdown(report: dict[str, Any]) -> str:
    """Points per video (rate and the metrics), then the BD table, the truncation curves, the
    control ablations, the anchors' commands, what was not measured and the plots."""
    metrics = [m for m in report["metrics"] if m != "ms_ssim_db"]
    lines = ["# gvc eval", "", report["protocol"], ""]
    lines.append(f"Frames per video: {report['frames']}; anchors' intra period: {report['intra_period']} (-1: first frame only).")
    for note in report.get("notes", []):
        lines.append(f"Note: {note}.")
    for video in sorted({p["video"] for p in report["points"]}):
        lines += ["", f"## {video}", "", "| codec | setting | bpp | " + " | ".join(metrics) + " |"]
        lines.append("|---|---|---|" + "---|" * len(metrics))
        for p in (p for p in report["points"] if p["video"] == video):
            setting = f"quality {p['quality']}" if "quality" in p else f"{p['setting']}, crf {p['crf']}"
            setting += " (quality span)" if p.get("span") == "quality" else ""
            values = " | ".join(_fmt(p["metrics"].get(m), 4 if m in ("ms_ssim", "lpips", "dists") else 2) for m in metrics)
            lines.append(f"| {p['codec']} | {setting} | {p['bpp']:.4f} | {values} |")
    lines += _quality_span_lines(report.get("quality_span", []))
    if report["bd"]:
        lines += ["", "## BD-rate (negative: fewer bits than the anchor at equal quality) and BD-metric", ""]
        if report.get("reference_codec"):
            lines += [f"Rows whose anchor is {report['reference_codec']} compare the other codecs with that codec (--reference-codec).", ""]
        lines += [
            "| video | codec | anchor | metric | BD-rate (%) | overlap | BD-rate warning | BD-metric | overlap | BD-metric warning |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in report["bd"]:
            error = f"error: {r['error']}" if r.get("error") else ""  # about both figures
            lines.append(
                f"| {r['video']} | {r['codec']} | {r['anchor']} | {r['metric']} | "
                f"{_fmt(r.get('bd_rate_percent'), 2)} | {_fmt(r.get('bd_rate_overlap'), 2)} | {r.get('bd_rate_warning') or error} | "
                f"{_fmt(r.get('bd_metric'), 3)} | {_fmt(r.get('bd_metric_overlap'), 2)} | {r.get('bd_metric_warning') or error} |"
            )
    lines += _truncation_sections(report.get("truncation", []))
    lines += _ablation_sections(report.get("ablation", []))
    commands = sorted({(p["codec"], p["setting"], p["preset"], p["command"]) for p in report["points"] if "command" in p})
    if commands:
        lines += ["", "## Anchor commands (one per setting; the CRF varies along the ladder)", ""]
        seen = set()
        for codec, setting, preset, command in commands:
            if (codec, setting) in seen:
                continue
            seen.add((codec, setting))
            lines.append(f"- {codec}, {setting}, preset {preset}: `{command}`")
    if report["unavailable_metrics"]:
        lines += ["", "## Not measured", ""]
        lines += [f"- {k}: {v}" for k, v in sorted(report["unavailable_metrics"].items())]
    if report.get("plots"):
        lines += ["", "## Plots", ""] + [f"- `{p}`" for p in report["plots"]]
    return "\n".join(lines) + "\n"
