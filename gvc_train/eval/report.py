"""``gvc eval``: exported codecs and traditional anchors through one protocol, into one report.

    gvc eval --codec checkpoints/latent_tiny --anchors x264,x265,svtav1 \
             --video carphone_pristine.mp4 --frames 96 --intra-period -1 --out report/

For every video: the same ``frames`` RGB frames go to every exported codec at each of its
qualities (through ``encode``/``decode`` to real files) and to every anchor at a CRF ladder
that spans the learned codecs' bits-per-pixel range on that video, in the low-delay and the
random-access setting. Where the codecs' quality (PSNR, MS-SSIM) is below every point of that
ladder, so that the curves share no quality and no BD-rate exists, the ladder is extended toward
the encoder's CRF limit into the codecs' quality range (the quality span: points marked
``"span": "quality"``, one summary line per anchor setting; ``--no-quality-span`` turns it off);
a BD-rate there averages over the quality interval the curves share, which its overlap states.
Every reconstruction is measured against the source by the same metric suite
(``eval.metric_suite``); BD-rate and BD-metric of each codec against each anchor setting, and
with ``--reference-codec`` of each codec against that codec, follow (``eval.bd_rows``,
``eval.bdrate``). A codec whose streams can be cut (``Codec.can_cut``) also gets its
truncation curve (``eval.truncation``): its top rate point's stream cut after every scale, each
cut decoded with each of the codec's fills. A codec that sends controls
(``Codec.known_controls``) also gets its control ablation (``eval.ablation``): the video coded
once per set of controls (``--control-subsets``; by default its default set and none) at its
default rate point. Written to ``--out``: ``report.json`` (every point with its per-frame
metrics, commands, presets, the truncation curves, the ablation tables, what was not available
and why), ``points.csv``, ``summary.md`` and ``plots/<video>_<metric>.png`` (the truncation
curves beside the codecs' and anchors' curves).
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

# The BD rows live in bd_rows (re-exported: scripts import them from here too).
from gvc_train.eval.bd_rows import (  # noqa: F401 (re-exported)
    LOWER_IS_BETTER, SPAN_METRICS, bd_table, codec_vs_codec_bd, quality_range, quality_span_records,
)  # fmt: skip
from gvc_train.eval.report_tables import BD_COLUMNS, points_csv, summary_markdown
from gvc_train.strict_json import write_json

if TYPE_CHECKING:
    from gvc_train.codecs.base import Codec

PROTOCOL = (
    "RGB in: every codec and anchor gets the same decoded source frames. Frames are padded (edge pixels) to what "
    "each codec needs and cropped back before measuring. Learned codecs: rate is the size of the gvc bitstream "
    "file (container included); anchors: the size of the elementary video stream (Annex-B H.264/HEVC, AV1 OBUs; no "
    "container, and without the encoder-information SEI that x264 writes, which is not coded video). Anchors decode "
    "with the ffmpeg CLI to rgb24. Bits per pixel count every source pixel of every frame. Metrics per frame, "
    "averaged over frames."
)
# What the cuts of a truncation curve are measured with (a dozen or more decodes a codec): the
# frame metrics without VMAF and without the networks, which the codec's own points carry.
TRUNCATION_METRICS = {"vmaf": False}


@dataclasses.dataclass
class EvalOptions:
    codecs: Sequence[str]
    videos: Sequence[str]
    out: str
    anchors: Sequence[str] = ("x264", "x265", "svtav1")
    frames: int = 96
    intra_period: int = -1
    settings: Sequence[str] = ("low-delay", "random-access")
    ladder_points: int = 5
    anchor_cache: str | None = None
    metric_options: dict[str, Any] = dataclasses.field(default_factory=dict)
    progress: bool = True
    # The sets of controls a codec that sends controls is coded with for its ablation table
    # (eval.ablation); None: each such codec's default set and none.
    control_subsets: Sequence[Sequence[str]] | None = None
    # The modes a codec with modes (Codec.curves) is coded in, a curve each; None: all it has.
    modes: Sequence[str] | None = None
    shown_out: str | None = None  # the name to print for ``out`` (gvc eval writes beside it, then moves it there)
    # Extend each anchor's ladder into the codecs' quality range where the two share none (SPAN_METRICS).
    quality_span: bool = True
    # A codec curve (its folder name, or name:mode) every other codec is also compared with (BD rows).
    reference_codec: str | None = None
    png_fps: float = 30.0  # (gvc_train.data.video_io.DEFAULT_PNG_FPS) the frame rate of a PNG-folder video (the anchors encode at it)


class _Progress:
    """tqdm over the whole grid; anchors' ladders are sized up front by ``ladder_points``."""

    def __init__(self, total: int, enabled: bool) -> None:
        from tqdm import tqdm

        self.bar = tqdm(total=total, unit="point", disable=not enabled, dynamic_ncols=True)

    def step(self, what: str) -> None:
        self.bar.set_description(what[:60])
        self.bar.update(1)

    def grow(self, steps: int) -> None:
        """Steps learnt of once a codec is open (its control ablation)."""
        self.bar.total += steps
        self.bar.refresh()

    def close(self) -> None:
        self.bar.close()


def _codec_points(
    options: EvalOptions, video: Path, source_THWC: np.ndarray, streams: Path, progress: _Progress
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
    """Every codec's points at each rate point, the truncation curve of each that can be cut and
    the control ablation of each that sends controls."""
    from gvc_train.codecs.base import open_codec
    from gvc_train.eval.metric_suite import compute_metrics

    points, curves, ablations = [], [], []
    for codec_dir in options.codecs:
        codec = open_codec(codec_dir)
        name = Path(codec_dir).name
        curves_of_codec = codec.curves(None if options.modes is None else list(options.modes))
        if len(curves_of_codec) > 1:
            progress.grow((len(curves_of_codec) - 1) * codec.num_rate_points)
        if codec.takes_intra_period:  # the codec refreshes where the anchors do (the protocol's intra period)
            curves_of_codec = [(label, {**opts, "intra_period": options.intra_period}) for label, opts in curves_of_codec]
        for label, encode_options in curves_of_codec:
            curve_name = f"{name}:{label}" if label else name
            for q in range(codec.num_rate_points):
                stream = streams / f"{video.stem}.{curve_name.replace(':', '.')}.q{q}.gvc"
                decoded: list[np.ndarray] = []
                enc = codec.encode(video, stream, q, max_frames=options.frames, **encode_options)
                dec = codec.decode(stream, decoded.append)
                per_frame, mean, unavailable = compute_metrics(np.stack(decoded), source_THWC, options.metric_options)
                points.append(
                    {
                        "video": video.name, "codec": curve_name, "codec_dir": str(codec_dir), "family": codec.family,
                        "quality": q, "bytes": enc.file_bytes, "bpp": enc.bpp, "frames": enc.frames,
                        "intra_period": encode_options.get("intra_period", codec.intra_period), "encode_seconds": enc.seconds, "decode_seconds": dec.seconds,
                        "stream": str(stream.relative_to(streams.parent)), "metrics": mean, "per_frame": per_frame, "unavailable": unavailable,
                        **({"mode": label} if label else {}), **enc.stats,
                    }
                )  # fmt: skip
                progress.step(f"{video.name} {curve_name} q{q}")
        if codec.can_cut():  # the last stream coded above, at the top rate point
            curves.append(_truncation(codec, name, str(codec_dir), video, stream, source_THWC, progress))
        if codec.known_controls:
            ablations += _ablation(codec, name, str(codec_dir), options, video, source_THWC, streams, points[-codec.num_rate_points :], progress)
    return points, curves, ablations


def _ablation(
    codec: Codec, name: str, codec_dir: str, options: EvalOptions, video: Path, source_THWC: np.ndarray, streams: Path,
    own_points: list[dict[str, Any]], progress: _Progress,
) -> list[dict[str, Any]]:  # fmt: skip
    """The codec's control ablation on ``video`` (none when no subset is asked), its paths relative
    to the report folder; the rate point's own point stands for the default controls' row."""
    from gvc_train.eval.ablation import control_ablation, default_subsets
    from gvc_train.eval.metric_suite import compute_metrics

    subsets = default_subsets(codec) if options.control_subsets is None else [list(s) for s in options.control_subsets]
    if not subsets:
        return []
    point = next(p for p in own_points if p["quality"] == codec.default_rate_point)
    reused = (streams.parent / point["stream"], dict(point["metrics"]))
    progress.grow(sum(list(s) != list(codec.default_controls) for s in subsets))
    table = control_ablation(
        codec, video, options.frames, source_THWC, subsets, lambda recon: compute_metrics(recon, source_THWC, options.metric_options)[1],
        streams, reused=reused, on_row=lambda subset: progress.step(f"{video.name} {name} controls {','.join(subset) or 'none'}"),
    )  # fmt: skip
    for row in table["rows"]:
        row["stream"] = str(Path(row["stream"]).relative_to(streams.parent))
    with_derived_metrics(table["rows"])
    return [{"video": video.name, "codec": name, "codec_dir": codec_dir, "family": codec.family, "frames": int(source_THWC.shape[0]), **table}]


def _check_control_subsets(options: EvalOptions) -> None:
    """Asked subsets fit every codec that sends controls, and one does at least: ValueError
    (one line) before any work."""
    from gvc_train.codecs.base import open_codec
    from gvc_train.eval.ablation import check_subsets

    if options.control_subsets is None:
        return
    senders = 0
    for codec_dir in options.codecs:
        codec = open_codec(codec_dir)
        if codec.known_controls:
            senders += 1
            check_subsets(codec, options.control_subsets, str(codec_dir))
    if not senders:
        raise ValueError(f"--control-subsets: none of the codecs ({', '.join(map(str, options.codecs)) or 'none given'}) sends controls")


def _truncation(
    codec: Codec, name: str, codec_dir: str, video: Path, stream: Path, source_THWC: np.ndarray, progress: _Progress
) -> dict[str, Any]:
    """The truncation curve of ``stream`` (coded at the codec's top rate point), its paths relative to the report folder."""
    from gvc_train.eval.metric_suite import compute_metrics
    from gvc_train.eval.truncation import truncation_curve

    curve = truncation_curve(
        codec, stream, source_THWC, lambda recon: compute_metrics(recon, source_THWC, TRUNCATION_METRICS)[1], stream.parent,
        on_point=lambda scales, fill: progress.step(f"{video.name} {name} cut {scales} {fill}"),
    )  # fmt: skip
    out = stream.parent.parent
    curve["stream"] = str(stream.relative_to(out))
    for p in curve["points"]:
        p["stream"] = str(Path(p["stream"]).relative_to(out))
    with_derived_metrics(curve["points"])
    return {"video": video.name, "codec": name, "codec_dir": codec_dir, "family": codec.family, "quality": codec.num_rate_points - 1, **curve}


def _decodes_per_video(meta: dict[str, Any]) -> int:
    """The progress bar's steps for one codec (its codec.json) on one video: a point per rate
    point and, for a family that can cut, as many cuts (one a scale) decoded with each fill.
    An unknown family counts its points alone (open_codec refuses it when its turn comes)."""
    from gvc_train.codecs.families import FAMILIES

    qualities, entry = int(meta["qualities"]), FAMILIES.get(meta.get("family"))
    return qualities * (1 + (len(entry.codec_class().cut_fills) if entry is not None else 0))


def _codec_notes(points: Sequence[dict[str, Any]]) -> list[str]:
    """What each coded family says about its points (e.g. no intra refresh), once per family:
    from the families the points name, so no codec folder is read again."""
    from gvc_train.codecs.families import FAMILIES

    notes: list[str] = []
    for family in dict.fromkeys(p["family"] for p in points if "family" in p):
        for note in FAMILIES[family].codec_class().report_notes:
            if note not in notes:
                notes.append(note)
    return notes


def _anchor_points(
    options: EvalOptions, video: Path, source_THWC: np.ndarray, fps: float, codec_points: list[dict[str, Any]], progress: _Progress
) -> list[dict[str, Any]]:
    from gvc_train.eval.anchors import anchor_ladder
    from gvc_train.eval.metric_suite import compute_metrics

    rates = [p["bpp"] for p in codec_points]
    bpp_range = (min(rates), max(rates)) if rates else None
    with_derived_metrics(codec_points)
    span_range = quality_range(codec_points) if options.quality_span else None
    points = []
    for anchor in options.anchors:
        for setting in options.settings:
            low_delay = setting == "low-delay"
            measured: dict[int, tuple[dict[str, list[float]], dict[str, float], dict[str, str]]] = {}

            def quality_of(a: Any) -> dict[str, float]:
                """The point's metrics, measured once (kept for its report record below)."""
                measured[a.crf] = compute_metrics(a.frames, source_THWC, options.metric_options)
                point = {"metrics": dict(measured[a.crf][1])}
                with_derived_metrics([point])
                return point["metrics"]

            ladder = anchor_ladder(
                source_THWC, fps, anchor, low_delay=low_delay, intra_period=options.intra_period, bpp_range=bpp_range,
                points=options.ladder_points, cache_dir=options.anchor_cache, quality_of=quality_of, quality_range=span_range,
            )  # fmt: skip
            progress.grow(sum(a.span == "quality" for a in ladder))
            for a in ladder:
                if a.crf not in measured:
                    measured[a.crf] = compute_metrics(a.frames, source_THWC, options.metric_options)
                per_frame, mean, unavailable = measured[a.crf]
                record = a.record()  # command, input recipe, decode command, ffmpeg version, coded size...
                record.pop("anchor", None)
                points.append(
                    {
                        **record, "video": video.name, "codec": anchor, "setting": setting,
                        "bpp": a.bytes * 8 / source_THWC[..., 0].size, "frames": int(source_THWC.shape[0]),
                        "metrics": mean, "per_frame": per_frame, "unavailable": unavailable,
                    }
                )  # fmt: skip
                progress.step(f"{video.name} {anchor} {setting} crf {a.crf}")
    return points


def with_derived_metrics(points: list[dict[str, Any]]) -> None:
    """MS-SSIM in dB (-10 log10(1 - MS-SSIM)), the scale BD-rate on MS-SSIM is usually quoted on."""
    for p in points:
        m = p["metrics"]
        if m.get("ms_ssim") is not None:
            m["ms_ssim_db"] = -10 * math.log10(max(1e-10, 1 - m["ms_ssim"]))


def metric_settings_for(options: EvalOptions) -> dict[str, dict[str, str]]:
    """How each metric was computed, per video frame size (MS-SSIM's window depends on it)."""
    from gvc_train.data.video_io import probe
    from gvc_train.eval.metric_suite import metric_settings

    settings = {}
    for video in options.videos:
        info = probe(video)
        settings[Path(video).name] = metric_settings(info.height, info.width, options.metric_options)
    return settings


def run_eval(options: EvalOptions, log: Callable[[str], None] = print) -> dict[str, Any]:
    from gvc_train.data.video_io import probe, read_frames
    from gvc_train.eval.plots import plot_rd

    from gvc_train.eval.anchors import anchor_spec

    for anchor in options.anchors:  # bad names fail before any work (and before the progress bar)
        anchor_spec(anchor)
    names = [Path(c).name for c in options.codecs]
    if options.reference_codec is not None and options.reference_codec.split(":")[0] not in names:
        raise ValueError(f"--reference-codec {options.reference_codec}: not one of the codecs' folder names ({', '.join(names) or 'none given'})")
    if options.reference_codec is not None and ":" in options.reference_codec:  # a mode the codec draws a curve for
        from gvc_train.codecs.base import open_codec

        name, mode = options.reference_codec.split(":", 1)
        folder = options.codecs[names.index(name)]
        labels = [label for label, _ in open_codec(folder).curves(None if options.modes is None else list(options.modes))]
        if mode not in labels:
            raise ValueError(f"--reference-codec {options.reference_codec}: {name} draws no curve {mode!r} here (its curves: {', '.join(l for l in labels if l) or 'one, unlabelled'})")
    for video in options.videos:
        if not Path(video).exists():
            raise FileNotFoundError(f"no video at {video}")
    _check_control_subsets(options)
    out = Path(options.out)
    streams = out / "streams"
    streams.mkdir(parents=True, exist_ok=True)
    if options.anchor_cache is None:
        options = dataclasses.replace(options, anchor_cache=str(out / "anchor_cache"))
    qualities = 0
    for codec_dir in options.codecs:
        qualities += _decodes_per_video(json.loads((Path(codec_dir) / "codec.json").read_text()))
    total = len(options.videos) * (qualities + len(options.anchors) * len(options.settings) * options.ladder_points)
    progress = _Progress(total, options.progress)
    started = time.perf_counter()
    points: list[dict[str, Any]] = []
    truncation: list[dict[str, Any]] = []
    ablation: list[dict[str, Any]] = []
    try:
        for video_path in options.videos:
            video = Path(video_path)
            source_THWC = read_frames(video, count=options.frames)
            fps = probe(video, png_fps=options.png_fps).fps or 30.0
            codec_points, curves, tables = _codec_points(options, video, source_THWC, streams, progress)
            truncation += curves
            ablation += tables
            points += codec_points + _anchor_points(options, video, source_THWC, fps, codec_points, progress)
    finally:
        progress.close()
    with_derived_metrics(points)
    metrics = sorted({k for p in points for k, v in p["metrics"].items() if v is not None})
    unavailable = {k: v for p in points for k, v in p.get("unavailable", {}).items()}
    bd = bd_table(points, metrics, options.reference_codec)
    plots = []
    for video in sorted({p["video"] for p in points}):
        for metric in metrics:
            on_video = [p for p in points if p["video"] == video]
            cuts = [c for c in truncation if c["video"] == video]
            png = plot_rd(on_video, metric, video, out / "plots" / f"{Path(video).stem}_{metric}.png", cuts=cuts)
            if png is not None:
                plots.append(str(png.relative_to(out)))
    report = {
        "protocol": PROTOCOL,
        "frames": options.frames,
        "intra_period": options.intra_period,
        "settings": list(options.settings),
        "videos": [str(v) for v in options.videos],
        "codecs": [str(c) for c in options.codecs],
        "anchors": list(options.anchors),
        "metrics": metrics,
        "metric_settings": metric_settings_for(options),
        "unavailable_metrics": unavailable,
        "notes": _codec_notes(points),
        "seconds": round(time.perf_counter() - started, 1),
        "points": points,
        "bd": bd,
        "reference_codec": options.reference_codec,
        "quality_span": quality_span_records(points),
        "truncation": truncation,
        "ablation": ablation,
        "plots": plots,
    }
    write_json(out / "report.json", report, indent=1)
    (out / "points.csv").write_text(points_csv(points, metrics))
    (out / "bd.csv").write_text(points_csv(bd, [], columns=BD_COLUMNS))
    (out / "summary.md").write_text(summary_markdown(report))
    log(f"gvc eval: {len(points)} points, {len(bd)} BD figures, {len(plots)} plots in {options.shown_out or out} ({report['seconds']:.0f} s)")
    return report
