"""``gvc``: the inference command line.

    gvc encode INPUT OUTPUT --codec DIR --quality Q [--frames N]
    gvc decode INPUT OUTPUT [--codec DIR]       OUTPUT: out.mp4, out.y4m or a folder of PNGs
    gvc info FILE [--json]                      header, chunk table, bits per frame
    gvc eval --codec DIR... --video FILE... --out REPORT_DIR [--anchors x264,x265,svtav1]

``decode`` finds the codec from the stream's fingerprint when ``--codec`` is not given: it
looks in ``$GVC_CODEC_PATH`` (folders separated by ``:``) and ``checkpoints/``.
Every failure is one line on stderr (``gvc: error: ...``) and exit status 2; set
``GVC_DEBUG=1`` for the traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from pathlib import Path

# compressai scripts a function with torch.jit at import; the deprecation notice is not the user's concern.
warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.*", category=FutureWarning)

from gvc_train.coding.container import FINGERPRINT_BYTES, BitstreamError, read_header, read_stream
from gvc_train.components import ComponentError
from gvc_train.data.video_io import VideoReadError


class UsageError(RuntimeError):
    pass


def _codec_search_path() -> list[Path]:
    extra = [Path(p) for p in os.environ.get("GVC_CODEC_PATH", "").split(":") if p]
    return extra + [Path("checkpoints")]


def find_codec(fingerprint: bytes) -> Path:
    """The exported codec folder whose fingerprint starts with ``fingerprint``."""
    from gvc_train.codecs.codec_folder import CODEC_JSON, read_codec_json

    for root in _codec_search_path():
        for json_path in sorted(root.glob(f"*/{CODEC_JSON}")) if root.is_dir() else []:
            try:
                meta = read_codec_json(json_path.parent)
            except ComponentError:
                continue
            if bytes.fromhex(meta["fingerprint"])[:FINGERPRINT_BYTES] == fingerprint:
                return json_path.parent
    raise UsageError(f"no codec with fingerprint {fingerprint.hex()} in {', '.join(map(str, _codec_search_path()))}; pass --codec DIR")


def _load(folder: str | Path, deterministic: bool):
    from gvc_train.codecs.codec_folder import read_codec_json
    from gvc_train.codecs.latent import LatentCodec

    family = read_codec_json(folder)["family"]
    if family == "latent":
        return LatentCodec(folder, deterministic=deterministic)
    raise UsageError(f"{folder}: no inference module for the {family!r} family yet")


def cmd_encode(args: argparse.Namespace) -> int:
    codec = _load(args.codec, not args.nondeterministic)
    report = codec.encode(args.input, args.output, args.quality, max_frames=args.frames, latents_per_chunk=args.latents_per_chunk)
    print(
        f"{report.path}: {report.frames} frames {report.width}x{report.height}, quality {report.quality}, "
        f"{report.file_bytes} bytes, {report.bpp:.5f} bpp, {report.frames / report.seconds:.1f} frames/s"
    )
    return 0


def cmd_decode(args: argparse.Namespace) -> int:
    from gvc_train.codecs.frame_io import FrameSink

    if not Path(args.input).is_file():
        raise BitstreamError(f"no bitstream at {args.input}")
    with open(args.input, "rb") as f:
        header = read_header(f)
    codec = _load(Path(args.codec) if args.codec else find_codec(header.fingerprint), not args.nondeterministic)
    sink = FrameSink(args.output, header.fps)
    try:
        report = codec.decode(args.input, sink.write)
    except BaseException as e:
        kept = sink.close(partial=True)
        if kept is not None and isinstance(e, BitstreamError):
            raise BitstreamError(f"{e} (the {sink.frames} frames decoded before it are in {kept})") from None
        raise
    path = sink.close()
    print(f"{path}: {report.frames} frames {report.width}x{report.height}, {report.bpp:.5f} bpp, {report.frames / report.seconds:.1f} frames/s")
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from gvc_train.codecs.latent import describe_chunks

    data = Path(args.input).read_bytes() if Path(args.input).is_file() else None
    if data is None:
        raise BitstreamError(f"no bitstream at {args.input}")
    header, chunks = read_stream(data)
    rows = describe_chunks(header, chunks)
    summary = {
        "file": args.input,
        "family": header.family.name.lower(),
        "fingerprint": header.fingerprint.hex(),
        "width": header.width,
        "height": header.height,
        "frames": header.frames,
        "fps": f"{header.fps_num}/{header.fps_den}",
        "bytes": len(data),
        "bpp": len(data) * 8 / (header.width * header.height * header.frames),
        "chunks": rows,
    }
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    for key in ("file", "family", "fingerprint", "width", "height", "frames", "fps", "bytes"):
        print(f"{key:12s} {summary[key]}")
    print(f"{'bpp':12s} {summary['bpp']:.6f}")
    print(f"{'chunk':>5s} {'type':7s} {'offset':>8s} {'bytes':>8s} {'frames':>11s} {'bits/frame':>11s}")
    for i, row in enumerate(rows):
        frames = f"{row['first_frame']}-{row['first_frame'] + row['frames'] - 1}" if row.get("frames") else ""
        bpf = f"{row['bits_per_frame']:.1f}" if "bits_per_frame" in row else ""
        print(f"{i:5d} {row['type']:7s} {row['offset']:8d} {row['bytes']:8d} {frames:>11s} {bpf:>11s}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from gvc_train.eval.anchors import AnchorError
    from gvc_train.eval.report import EvalOptions, run_eval

    if not args.codec and not args.anchors:
        raise UsageError("nothing to evaluate: give --codec DIR and/or --anchors")
    for folder in args.codec:
        if not (Path(folder) / "codec.json").is_file():
            raise UsageError(f"{folder} is not an exported codec folder (no codec.json)")
    metric_options = {"lpips_backbone": args.lpips_backbone, "dists_backbone": args.dists_backbone, "i3d_path": args.i3d}
    options = EvalOptions(
        codecs=args.codec, videos=args.video, out=args.out, anchors=[a for a in args.anchors.split(",") if a],
        frames=args.frames, intra_period=args.intra_period, ladder_points=args.ladder_points,
        anchor_cache=args.anchor_cache, metric_options=metric_options, progress=not args.no_progress,
    )  # fmt: skip
    try:
        run_eval(options)
    except AnchorError as e:
        raise UsageError(str(e)) from None
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gvc", description="Encode and decode video with an exported gvc_train codec.")
    sub = parser.add_subparsers(dest="command", required=True)
    enc = sub.add_parser("encode", help="video file or PNG folder -> bitstream")
    enc.add_argument("input")
    enc.add_argument("output")
    enc.add_argument("--codec", required=True, help="an exported codec folder (codec.json)")
    enc.add_argument("--quality", type=int, required=True, help="quality index: higher = more bits, better quality")
    enc.add_argument("--frames", type=int, default=None, help="code only the first N frames")
    enc.add_argument("--latents-per-chunk", type=int, default=8, help="latent frames per stream chunk (4 video frames each)")
    enc.add_argument("--nondeterministic", action="store_true", help="use all torch threads (exact only at equal thread counts)")
    enc.set_defaults(func=cmd_encode)
    dec = sub.add_parser("decode", help="bitstream -> out.mp4 (lossless RGB H.264), out.y4m or a PNG folder")
    dec.add_argument("input")
    dec.add_argument("output")
    dec.add_argument("--codec", default=None, help="exported codec folder (default: found by fingerprint)")
    dec.add_argument("--nondeterministic", action="store_true", help="use all torch threads (exact only at equal thread counts)")
    dec.set_defaults(func=cmd_decode)
    info = sub.add_parser("info", help="header, chunk table and bits per frame of a bitstream")
    info.add_argument("input")
    info.add_argument("--json", action="store_true")
    info.set_defaults(func=cmd_info)
    ev = sub.add_parser("eval", help="codecs and anchors on the same frames: RD points, BD-rate, plots")
    ev.add_argument("--codec", nargs="*", default=[], help="exported codec folders")
    ev.add_argument("--anchors", default="x264,x265,svtav1", help="comma-separated: x264, x265, svtav1 ('' for none)")
    ev.add_argument("--video", nargs="+", required=True, help="video files or PNG folders")
    ev.add_argument("--frames", type=int, default=96, help="the first N frames of each video")
    ev.add_argument("--intra-period", type=int, default=-1, help="anchors' intra period in frames (-1: first frame only)")
    ev.add_argument("--ladder-points", type=int, default=5, help="CRF points per anchor and setting")
    ev.add_argument("--anchor-cache", default=None, help="cache folder for anchor results (default: OUT/anchor_cache)")
    ev.add_argument("--lpips-backbone", default=None, help="local torchvision VGG16 state dict for LPIPS")
    ev.add_argument("--dists-backbone", default=None, help="local torchvision VGG16 state dict for DISTS")
    ev.add_argument("--i3d", default=None, help="local TorchScript I3D for FVD")
    ev.add_argument("--no-progress", action="store_true")
    ev.add_argument("--out", required=True, help="report folder")
    ev.set_defaults(func=cmd_eval)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (BitstreamError, ComponentError, VideoReadError, UsageError, ValueError, OSError) as e:
        if os.environ.get("GVC_DEBUG"):
            raise
        message = str(e).splitlines()[0] if str(e) else type(e).__name__
        print(f"gvc: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("gvc: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # a bug, not bad input: still one line, the traceback with GVC_DEBUG=1
        if os.environ.get("GVC_DEBUG"):
            raise
        print(f"gvc: error: unexpected {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}", file=sys.stderr)
        return 3


if __name__ == "__main__":
    sys.exit(main())
