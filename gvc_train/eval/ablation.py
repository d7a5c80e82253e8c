"""The control ablation of a codec that sends controls (``Codec.known_controls``): which control
buys what.

The same frames are coded once per set of controls (``encode(controls=...)``) at one rate point,
the codec's default, so every row has the same keyframes, seed and sampling settings and differs
only in the controls sent. Each stream is decoded and measured by the caller's ``measure``
(``gvc eval``: its metric suite). Rate is the file's size over every source pixel of every
frame; the bytes by part come from the stream's own chunk rows (``gvc info``): the keyframes,
each control, and the rest (header, config, control table, end), which sum to the file.

A table (JSON-ready)::

    {"quality": q, "subsets": [[name, ...], ...],
     "rows": [{"controls": [name, ...], "bytes": int, "bpp": float, "parts": {part: bytes},
               "stream": the file, "reused": bool, "metrics": {name: mean over frames}}, ...]}

with one row per subset, in the order asked. ``parts`` keys: ``keyframes``, ``control <name>``
for each control sent, ``other``. A row whose subset is what the codec sends by default at that
rate point may reuse a stream already coded and measured (``reused``).

Standard library only at import: ``gvc eval``'s parser reads :func:`parse_control_subsets`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np

    from gvc_train.codecs.base import Codec

NO_CONTROLS = "none"
# reconstruction (uint8 T x H x W x 3, the source's shape) -> {metric: mean over frames}
Measure = Callable[["np.ndarray"], dict[str, float]]
# a stream already coded with the codec's default controls at the ablation's rate point: (path, metrics)
Reused = tuple[Path, dict[str, Any]]


def parse_control_subsets(text: str) -> list[list[str]]:
    """``"luma;luma,flow;none"`` -> ``[["luma"], ["luma", "flow"], []]``: subsets separated by
    ``;``, names by ``,``, ``none`` for no controls. ValueError (one line) for an empty subset, a
    name twice in one subset, or a subset given twice."""
    subsets: list[list[str]] = []
    for part in text.split(";"):
        names = [n.strip() for n in part.split(",")]
        if names == [NO_CONTROLS]:
            names = []
        elif any(not n for n in names) or NO_CONTROLS in names:
            raise ValueError(f"{part.strip()!r} in {text!r} is not a subset: names separated by ',', subsets by ';', {NO_CONTROLS!r} for no controls")
        if len(set(names)) != len(names):
            raise ValueError(f"a control is named twice in the subset {part.strip()!r}")
        if any(set(names) == set(s) for s in subsets):
            raise ValueError(f"the subset {part.strip()!r} is given twice in {text!r}")
        subsets.append(names)
    return subsets


def default_subsets(codec: Codec) -> list[list[str]]:
    """What ``gvc eval`` compares when not told: the codec's default controls and none (one row
    when its default is none); nothing for a codec that sends no controls."""
    if not codec.known_controls:
        return []
    full = list(codec.default_controls)
    return [full, []] if full else [[]]


def check_subsets(codec: Codec, subsets: Sequence[Sequence[str]], where: str) -> None:
    """ValueError (one line) for a subset naming a control ``codec`` cannot send."""
    for subset in subsets:
        unknown = [n for n in subset if n not in codec.known_controls]
        if unknown:
            raise ValueError(f"control subset {label(subset)!r}: {where} cannot send {unknown} (it sends {codec.known_controls})")


def label(subset: Sequence[str]) -> str:
    return ",".join(subset) if subset else NO_CONTROLS


def control_ablation(
    codec: Codec,
    source: str | os.PathLike,
    frames: int,
    source_THWC: np.ndarray,
    subsets: Sequence[Sequence[str]],
    measure: Measure,
    work: str | os.PathLike,
    reused: Reused | None = None,
    on_row: Callable[[Sequence[str]], None] | None = None,
    options: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The table (module doc) of ``codec`` on the first ``frames`` frames of ``source``
    (``source_THWC``, uint8 ``T x H x W x 3``: what is measured against), at its default rate
    point. Streams are written into ``work`` as ``<source stem>.controls-<subset>.gvc``;
    ``reused`` stands for the row of the codec's default controls. ``on_row`` is called after
    each stream coded here; ``options`` go to every ``encode`` (a text model's ``caption``)."""
    from gvc_train.codecs.base import describe_stream

    check_subsets(codec, subsets, "this codec")
    work = Path(work)
    work.mkdir(parents=True, exist_ok=True)
    quality, pixels = codec.default_rate_point, source_THWC[..., 0].size
    rows: list[dict[str, Any]] = []
    for subset in subsets:
        reuse = reused is not None and list(subset) == list(codec.default_controls)
        if reused is not None and reuse:
            stream, metrics = reused
        else:
            import numpy as np

            stream = work / f"{Path(source).stem}.controls-{label(subset).replace(',', '+')}.gvc"
            decoded: list[np.ndarray] = []
            codec.encode(source, stream, quality, max_frames=frames, controls=list(subset), **(options or {}))
            codec.decode(stream, decoded.append)
            metrics = measure(np.stack(decoded))
            if on_row is not None:
                on_row(subset)
        size = stream.stat().st_size
        rows.append(
            {
                "controls": list(subset), "bytes": size, "bpp": size * 8 / pixels, "parts": bytes_by_part(describe_stream(stream)["chunks"], size),
                "stream": str(stream), "reused": reuse, "metrics": metrics,
            }
        )  # fmt: skip
    return {"quality": quality, "subsets": [list(s) for s in subsets], "rows": rows}


def bytes_by_part(chunk_rows: Sequence[dict[str, Any]], file_bytes: int) -> dict[str, int]:
    """``keyframes``, ``control <name>`` and ``other`` (the rest of ``file_bytes``), from a
    stream's chunk rows (a row naming a ``keyframe`` or a ``control``, as ``gvc info`` reads them)."""
    parts: dict[str, int] = {"keyframes": 0}
    for row in chunk_rows:
        part = "keyframes" if "keyframe" in row else f"control {row['control']}" if "control" in row else None
        if part is not None:
            parts[part] = parts.get(part, 0) + int(row["bytes"])
    parts["other"] = file_bytes - sum(parts.values())
    return parts


def ablation_markdown(table: dict[str, Any]) -> str:
    """One row per subset: controls, bytes, bpp, PSNR, MS-SSIM, VMAF (where measured), then the
    bytes of the keyframes, of each control and of the rest."""
    rows = table["rows"]
    metrics = [(m, name, digits) for m, name, digits in (("psnr", "PSNR (dB)", 2), ("ms_ssim", "MS-SSIM", 4), ("vmaf", "VMAF", 2))
               if any(r["metrics"].get(m) is not None for r in rows)]  # fmt: skip
    parts = list(dict.fromkeys(p for r in rows for p in r["parts"] if p != "other")) + ["other"]
    lines = [
        "| controls | bytes | bpp | " + " | ".join(name for _, name, _ in metrics) + " | " + " | ".join(f"{p} (bytes)" for p in parts) + " |",
        "|---|---|---|" + "---|" * (len(metrics) + len(parts)),
    ]
    for r in rows:
        values = [_fmt(r["metrics"].get(m), digits) for m, _, digits in metrics]
        sizes = [str(r["parts"].get(p, 0)) for p in parts]
        lines.append(f"| {label(r['controls'])} | {r['bytes']} | {r['bpp']:.4f} | " + " | ".join(values + sizes) + " |")
    return "\n".join(lines)


def _fmt(value: float | None, digits: int) -> str:
    return "-" if value is None or value != value else f"{value:.{digits}f}"
