"""Rate-distortion points of an exported codec and of anchors on the same frames.

    python -m gvc_train.eval.codec_rd --codec checkpoints/latent_tiny --frames 96 --anchors x264,x265 --out RD.json

For the learned codec the rate is the size of the ``gvc encode`` file (container included) and
the reconstruction is what ``gvc decode`` writes; for anchors, the elementary stream's size. PSNR
is per frame in RGB and averaged over frames; MS-SSIM likewise, with the window and scales
fitted to the frame size (``eval.metrics.ms_ssim_params``). Bits per pixel count every pixel of
every frame.

``--truncation`` adds the codec's truncation curve (``eval.truncation``), for a codec whose
streams can be cut: one stream coded at the top rate point, cut after each scale, every cut
decoded with each of the codec's fills (the missing scales predicted, or left at zero), each
cut's file size and PSNR / MS-SSIM as above.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from gvc_train.data.video_io import probe, read_frames
from gvc_train.eval.anchors import DEFAULT_CRFS, encode_anchor
from gvc_train.eval.metrics import frame_psnr, ms_ssim
from gvc_train.frames import frames_to_tensor
from gvc_train.strict_json import write_json


def distortion(recon_THWC: np.ndarray, source_THWC: np.ndarray) -> dict[str, float]:
    if recon_THWC.shape != source_THWC.shape:
        raise ValueError(f"reconstruction {recon_THWC.shape} and source {source_THWC.shape} differ")
    x, y = frames_to_tensor(recon_THWC), frames_to_tensor(source_THWC)
    return {"psnr": float(frame_psnr(x, y).mean()), "ms_ssim": float(ms_ssim(x, y).mean())}


def codec_points(
    codec_dir: str | Path, video: str | Path, frames: int, qualities: list[int] | None = None, intra_period: int = -1
) -> list[dict[str, Any]]:
    """``intra_period`` applies to a codec that takes one (as ``gvc eval``'s protocol): the
    anchors' (-1: the first frame only), so that both refresh alike."""
    from gvc_train.codecs.base import open_codec

    codec = open_codec(codec_dir)
    source = read_frames(video, count=frames)
    options = {"intra_period": intra_period} if codec.takes_intra_period else {}
    points = []
    with tempfile.TemporaryDirectory() as tmp:
        for q in qualities if qualities is not None else range(codec.num_rate_points):
            decoded: list[np.ndarray] = []
            enc = codec.encode(video, Path(tmp) / f"q{q}.gvc", q, max_frames=frames, **options)
            dec = codec.decode(enc.path, decoded.append)
            points.append(
                {
                    "codec": Path(codec_dir).name,
                    "quality": q,
                    "bytes": enc.file_bytes,
                    "bpp": enc.bpp,
                    "model_bits": enc.model_bits,
                    "estimate_bits": enc.estimate_bits,
                    "payload_bits": enc.payload_bytes * 8,
                    "overhead_bytes": enc.overhead_bytes,
                    "encode_fps": enc.frames / enc.seconds,
                    "decode_fps": dec.frames / dec.seconds,
                    **distortion(np.stack(decoded), source),
                }
            )
    return points


def tokenizer_point(codec_dir: str | Path, video: str | Path, frames: int) -> dict[str, Any]:
    """The codec with no rate limit (its tokenizer alone, latents unquantized): the ceiling of its
    reconstructions (``Codec.ceiling``). ValueError for a family that has none."""
    from gvc_train.codecs.base import open_codec

    codec = open_codec(codec_dir)
    source = read_frames(video, count=frames)
    recon_THWC = codec.ceiling(source)
    if recon_THWC is None:
        raise ValueError(f"{codec_dir}: the {codec.family} family has no reconstruction without a rate limit")
    return {"codec": f"{Path(codec_dir).name} tokenizer only", "bpp": None, **distortion(recon_THWC, source)}


def truncation_points(codec_dir: str | Path, video: str | Path, frames: int) -> dict[str, Any]:
    """The truncation curve of one stream of the codec (``eval.truncation``) on the first
    ``frames`` frames of ``video``; stream paths are the (temporary) files' names.
    ValueError for a codec whose streams cannot be cut."""
    from gvc_train.codecs.base import open_codec
    from gvc_train.eval.truncation import truncation_curve

    codec = open_codec(codec_dir)
    if not codec.can_cut():
        raise ValueError(f"{codec_dir}: streams of the {codec.family} family cannot be cut: there is no truncation curve")
    source = read_frames(video, count=frames)
    top = codec.num_rate_points - 1
    with tempfile.TemporaryDirectory() as tmp:
        enc = codec.encode(video, Path(tmp) / f"q{top}.gvc", top, max_frames=frames)
        curve = truncation_curve(codec, enc.path, source, lambda recon: distortion(recon, source), tmp)
    curve["stream"] = Path(curve["stream"]).name
    for p in curve["points"]:
        p["stream"] = Path(p["stream"]).name
    return {"codec": Path(codec_dir).name, "quality": top, **curve}


def anchor_points(video: str | Path, frames: int, anchors: list[str], low_delay: bool = True, intra_period: int = -1) -> list[dict[str, Any]]:
    source = read_frames(video, count=frames)
    fps = probe(video).fps or 30.0
    points = []
    for anchor in anchors:
        for crf in DEFAULT_CRFS[anchor]:
            p = encode_anchor(source, fps, anchor, crf, low_delay=low_delay, intra_period=intra_period)
            points.append(
                {
                    "codec": anchor,
                    "crf": crf,
                    "preset": p.preset,
                    "low_delay": low_delay,
                    "bytes": p.bytes,
                    "bpp": p.bytes * 8 / source[..., 0].size,
                    "command": p.command,
                    **distortion(p.frames, source),
                }
            )
    return points


def markdown_table(points: list[dict[str, Any]]) -> str:
    lines = ["| codec | setting | bpp | PSNR (dB) | MS-SSIM |", "|---|---|---|---|---|"]
    for p in points:
        if "quality" in p:
            setting = f"quality {p['quality']}"
        elif "crf" in p:
            setting = f"crf {p['crf']}" + (" (no B-frames)" if p.get("low_delay") else "")
        else:
            setting = "latents unquantized, no bitstream"
        bpp = "-" if p["bpp"] is None else f"{p['bpp']:.4f}"
        lines.append(f"| {p['codec']} | {setting} | {bpp} | {p['psnr']:.2f} | {p['ms_ssim']:.4f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from gvc_train.data.sample_videos import HELD_OUT, sample_video

    parser = argparse.ArgumentParser(prog="gvc_train.eval.codec_rd", description=__doc__.split("\n\n")[0])
    parser.add_argument("--codec", required=True)
    parser.add_argument("--video", default=None, help=f"default: the held-out {HELD_OUT}")
    parser.add_argument("--frames", type=int, default=96)
    parser.add_argument("--anchors", default="x264,x265", help="comma-separated, or '' for none")
    parser.add_argument("--out", default=None, help="write the points as JSON here")
    parser.add_argument(
        "--intra-period", type=int, default=-1,
        help="frames between the anchors' intra frames, and the codec's where it takes one (SSF); -1: the first frame only",
    )  # fmt: skip
    parser.add_argument("--tokenizer-ceiling", action="store_true", help="add the tokenizer alone (no quantization, no rate)")
    parser.add_argument(
        "--truncation", action="store_true",
        help="add the truncation curve: the top rate point's stream cut after each scale, decoded with each fill (codecs whose streams can be cut)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    if args.truncation and not _can_cut(args.codec):
        parser.error(f"--truncation: the streams of {args.codec} cannot be cut (its family has no gvc truncate)")
    video = args.video or str(sample_video(HELD_OUT))
    points = codec_points(args.codec, video, args.frames, intra_period=args.intra_period)
    if args.tokenizer_ceiling:
        points.append(tokenizer_point(args.codec, video, args.frames))
    anchors = [a for a in args.anchors.split(",") if a]
    if anchors:
        points += anchor_points(video, args.frames, anchors, intra_period=args.intra_period)
    print(markdown_table(points))
    saved: dict[str, Any] = {"video": Path(video).name, "frames": args.frames, "intra_period": args.intra_period, "points": points}
    if args.truncation:
        from gvc_train.eval.truncation import truncation_markdown

        saved["truncation"] = truncation_points(args.codec, video, args.frames)
        print(f"\nTruncation points of one stream coded at quality {saved['truncation']['quality']}:\n")
        print(truncation_markdown(saved["truncation"]))
    if args.out:
        write_json(args.out, saved, indent=2)
    return 0


def _can_cut(codec_dir: str) -> bool:
    """From codec.json and the family table, without loading the codec."""
    from gvc_train.codecs.codec_folder import read_codec_json
    from gvc_train.codecs.families import FAMILIES

    return FAMILIES[read_codec_json(codec_dir)["family"]].codec_class().can_cut()


if __name__ == "__main__":
    sys.exit(main())
