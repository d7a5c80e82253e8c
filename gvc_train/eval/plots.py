"""Rate-distortion plots: one PNG per (video, metric), every codec and anchor setting a curve,
and every truncation curve (``eval.truncation``: one stream cut after each scale) one dotted
curve per fill.

matplotlib with the Agg backend (no display needed); bits per pixel on a log axis because the
ladders span an order of magnitude and BD-rate integrates in log-rate.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

# metric key -> (axis label, True when higher is better)
METRIC_LABELS: dict[str, tuple[str, bool]] = {
    "psnr": ("PSNR RGB (dB)", True),
    "psnr_y": ("PSNR Y (dB)", True),
    "ms_ssim": ("MS-SSIM", True),
    "ms_ssim_db": ("MS-SSIM (dB, -10 log10(1 - MS-SSIM))", True),
    "vmaf": ("VMAF", True),
    "lpips": ("LPIPS (lower is better)", False),
    "dists": ("DISTS (lower is better)", False),
    "fvd": ("FVD (lower is better)", False),
}


def curve_label(point: dict[str, Any]) -> str:
    """The curve a point belongs to: a codec, or an anchor in one setting."""
    if "quality" in point:
        return str(point["codec"])
    return f"{point['codec']} ({point.get('setting', 'low-delay' if point.get('low_delay') else 'random-access')})"


def group_curves(points: Sequence[dict[str, Any]], metric: str) -> dict[str, list[tuple[float, float]]]:
    """``{curve label: [(bpp, metric value), ...]}`` sorted by rate; points without the metric are left out."""
    curves: dict[str, list[tuple[float, float]]] = {}
    for p in points:
        value = p.get("metrics", p).get(metric)
        if value is None or p.get("bpp") is None:
            continue
        curves.setdefault(curve_label(p), []).append((float(p["bpp"]), float(value)))
    return {k: sorted(v) for k, v in curves.items()}


def cut_curves(cuts: Sequence[dict[str, Any]], metric: str) -> dict[str, list[tuple[float, float]]]:
    """``{"<codec> cut, <fill> fill": [(bpp, metric value), ...]}`` of truncation curves (each with
    its ``codec``), by scales kept; fills without the metric are left out."""
    from gvc_train.eval.truncation import fill_curves

    return {f"{c['codec']} cut, {fill} fill": xy for c in cuts for fill, xy in fill_curves(c, metric).items()}


def plot_rd(points: Sequence[dict[str, Any]], metric: str, video: str, out_png: str | Path, cuts: Sequence[dict[str, Any]] = ()) -> Path | None:
    """Write one RD plot (``cuts``: truncation curves to draw too); None when no curve has the metric."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves, cut = group_curves(points, metric), cut_curves(cuts, metric)
    if not curves and not cut:
        return None
    label, _ = METRIC_LABELS.get(metric, (metric, True))
    fig, ax = plt.subplots(figsize=(6.4, 4.4), dpi=120)
    try:
        for name, xy in curves.items():
            learned = not name.endswith(")")
            ax.plot(
                [x for x, _ in xy], [y for _, y in xy], marker="o" if learned else ".", linewidth=2.0 if learned else 1.2,
                linestyle="-" if learned or "low-delay" in name else "--", label=name,
            )  # fmt: skip
        for name, xy in cut.items():
            ax.plot([x for x, _ in xy], [y for _, y in xy], marker="x", markersize=5, linewidth=1.2, linestyle=":", label=name)
        ax.set_xscale("log")
        ax.set_xlabel("bits per pixel")
        ax.set_ylabel(label)
        ax.set_title(f"{video}: {label}")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        out_png = Path(out_png)
        out_png.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(out_png)
    finally:
        plt.close(fig)
    return out_png
