"""Rate-distortion points of an exported codec and of anchors on the same frames.

    python -m gvc_train.eval.codec_rd --codec checkpoints/latent_tiny --frames 96 --anchors x264,x265 --out RD.json

For the learned codec the rate is the size of the ``gvc encode`` file (container included) and
the reconstruction is what ``gvc decode`` writes; for anchors, the elementary stream's size. PSNR
is per frame in RGB and averaged over frames; MS-SSIM likewise, with the window and scales
fitted to the frame size (``eval.metrics.ms_ssim_params``). Bits per pixel count every pixel of
every frame.
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


def codec_points(codec_dir: str | Path, video: str | Path, frames: int, qualities: list[int] | None = None) -> list[dict[str, Any]]:
    from gvc_train.codecs.base import open_codec

    codec = open_codec(codec_dir)
    source = read_frames(video, count=frames)
    points = []
    with tempfile.TemporaryDirectory() as tmp:
        for q in qualities if qualities is not None else range(codec.num_rate_points):
            decoded: list[np.ndarray] = []
            enc = codec.encode(video, Path(tmp) / f"q{q}.gvc", q, max_frames=frames)
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


def anchor_points(video: str | Path, frames: int, anchors: list[str], low_delay: bool = True) -> list[dict[str, Any]]:
    source = read_frames(video, count=frames)
    fps = probe(video).fps or 30.0
    points = []
    for anchor in anchors:
        for crf in DEFAULT_CRFS[anchor]:
            p = encode_anchor(source, fps, anchor, crf, low_delay=low_delay)
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
    parser.add_argument("--tokenizer-ceiling", action="store_true", help="add the tokenizer alone (no quantization, no rate)")
    args = parser.parse_args(argv)
    video = args.video or str(sample_video(HELD_OUT))
    points = codec_points(args.codec, video, args.frames)
    if args.tokenizer_ceiling:
        points.append(tokenizer_point(args.codec, video, args.frames))
    anchors = [a for a in args.anchors.split(",") if a]
    if anchors:
        points += anchor_points(video, args.frames, anchors)
    print(markdown_table(points))
    if args.out:
        write_json(args.out, {"video": Path(video).name, "frames": args.frames, "points": points}, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
