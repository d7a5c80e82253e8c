"""The truncation curve of a codec whose streams can be cut (``Codec.can_cut``).

One stream, coded once at the codec's top rate point, is cut after each of its scales
(``Codec.truncate``: no model, no re-encoding), and every cut is decoded with each way the
decoder can fill in what the cut lacks (``Codec.cut_fills``, the family's default first: e.g.
the missing scales predicted, against the missing scales left at zero). Rate is the cut
file's size (container included) over every source pixel of every frame; what is measured is
what ``Codec.decode_cut`` writes, against the source frames, by the caller's ``measure``
(``gvc eval``: its metric suite; ``eval.codec_rd``: PSNR and MS-SSIM).

A curve (JSON-ready)::

    {"stream": str, "stream_bytes": int, "of_scales": K, "fills": [fill, ...],
     "points": [{"scales": k, "of_scales": K, "fill": fill, "bytes": int, "bpp": float,
                 "stream": the cut file, "metrics": {name: mean over frames}}, ...]}

with one point per (scale k in 1..K, fill), scale-major. The last scale's cut is the whole stream.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from gvc_train.codecs.base import Codec

# reconstruction (uint8 T x H x W x 3, the source's shape) -> {metric: mean over frames}
Measure = Callable[[np.ndarray], dict[str, float]]
# called after each decode of a cut: (scales kept, fill)
OnPoint = Callable[[int, str], None]


def truncation_curve(
    codec: Codec,
    stream: str | os.PathLike,
    source_THWC: np.ndarray,
    measure: Measure,
    work: str | os.PathLike,
    on_point: OnPoint | None = None,
) -> dict[str, Any]:
    """The curve (module doc) of ``stream``, which ``codec`` coded from ``source_THWC`` (uint8
    ``T x H x W x 3``, the frames it was given): cuts are written into ``work`` beside it as
    ``<stream stem>.cut<k>.gvc``. ValueError for a codec whose streams cannot be cut."""
    if not codec.can_cut():
        raise ValueError(f"streams of the {codec.family} family cannot be cut: there is no truncation curve")
    stream, work = Path(stream), Path(work)
    work.mkdir(parents=True, exist_ok=True)
    pixels = source_THWC[..., 0].size
    points: list[dict[str, Any]] = []
    scales = of_scales = 1
    while scales <= of_scales:  # of_scales comes with the first cut
        cut = work / f"{stream.stem}.cut{scales}.gvc"
        done = codec.truncate(stream, cut, scales=scales)
        of_scales = done["of_scales"]
        for fill in codec.cut_fills:
            frames: list[np.ndarray] = []
            codec.decode_cut(cut, frames.append, fill)
            point = {"scales": scales, "of_scales": of_scales, "fill": fill, "bytes": done["bytes"], "bpp": done["bytes"] * 8 / pixels}
            points.append({**point, "stream": str(cut), "metrics": measure(np.stack(frames))})
            if on_point is not None:
                on_point(scales, fill)
        scales += 1
    return {"stream": str(stream), "stream_bytes": stream.stat().st_size, "of_scales": of_scales, "fills": list(codec.cut_fills), "points": points}


def fill_curves(curve: dict[str, Any], metric: str) -> dict[str, list[tuple[float, float]]]:
    """``{fill: [(bpp, metric value), ...]}`` by scales kept; points without the metric are left out."""
    curves: dict[str, list[tuple[float, float]]] = {}
    for p in curve["points"]:
        value = p["metrics"].get(metric)
        if value is not None:
            curves.setdefault(p["fill"], []).append((float(p["bpp"]), float(value)))
    return curves


def truncation_markdown(curve: dict[str, Any]) -> str:
    """One row per cut: scales kept, bytes, bpp, then PSNR and MS-SSIM under each fill."""
    fills = curve["fills"]
    lines = [
        "| scales kept | bytes | bpp | " + " | ".join(f"PSNR (dB), {f} | MS-SSIM, {f}" for f in fills) + " |",
        "|---|---|---|" + "---|---|" * len(fills),
    ]
    rows: dict[int, dict[str, dict[str, Any]]] = {}
    for p in curve["points"]:
        rows.setdefault(p["scales"], {})[p["fill"]] = p
    for scales, by_fill in rows.items():
        first = next(iter(by_fill.values()))
        cells = []
        for fill in fills:
            m = by_fill[fill]["metrics"] if fill in by_fill else {}
            cells += [_fmt(m.get("psnr"), 2), _fmt(m.get("ms_ssim"), 4)]
        lines.append(f"| {scales} of {first['of_scales']} | {first['bytes']} | {first['bpp']:.4f} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _fmt(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"
