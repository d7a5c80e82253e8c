"""``gvc``: the inference command line.

    gvc encode INPUT OUTPUT --codec DIR [--quality Q] [--frames N] [--overwrite]
    gvc decode INPUT OUTPUT [--codec DIR] [--overwrite]   OUTPUT: out.mp4, out.mkv, out.y4m or a PNG folder
    gvc info FILE [--json] [--codec DIR]        header, chunk table, bits per frame (and per scale); the codec and its lineage
    gvc truncate INPUT OUTPUT (--scales K | --bytes N) [--overwrite]   cut a stream after a scale, no model
    gvc eval --codec DIR... --video FILE... --out REPORT_DIR [--anchors x264,x265,svtav1]   (gvc_train/eval/cli.py)

``decode`` finds the codec from the stream's fingerprint when ``--codec`` is not given: it
looks in ``$GVC_CODEC_PATH`` (folders separated by ``:``) and ``checkpoints/``.
Every failure is one line on stderr (``gvc: error: ...``) and exit status 2; set
``GVC_DEBUG=1`` for the traceback.

``gvc eval`` lives in ``gvc_train/eval/cli.py`` and joins this parser through ``gvc_train.gvc_cli``
(the ``gvc`` console script), so that inference never imports evaluation.

Outputs follow ``gvc_train.safe_output``: never the input, an existing output is replaced only
with ``--overwrite``, written beside and moved into place when whole, removed on failure,
Ctrl-C or SIGTERM. This module imports only the standard library at start, so ``--help``,
``--version``, ``info`` and argument errors answer at once; torch comes in with the codec.
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import gvc_train
from gvc_train import strict_json
from gvc_train.cli_parser import OneLineArgumentParser, int_at_least, positive_int
from gvc_train.safe_output import OutputError, atomic_output, raise_on_sigterm

# compressai scripts a function with torch.jit at import; the deprecation notice is not the user's concern.
warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.*", category=FutureWarning)

class UsageError(RuntimeError):
    pass


def _codec_search_path() -> list[Path]:
    extra = [Path(p) for p in os.environ.get("GVC_CODEC_PATH", "").split(":") if p]
    return extra + [Path("checkpoints")]


def find_codec(fingerprint: bytes) -> Path:
    """The exported codec folder whose fingerprint starts with ``fingerprint``; reads only
    codec.json files (torch-free: ``gvc info`` uses it too)."""
    from gvc_train.codecs.codec_meta import CODEC_JSON, read_codec_json
    from gvc_train.component_checks import ComponentError

    for root in _codec_search_path():
        for json_path in sorted(root.glob(f"*/{CODEC_JSON}")) if root.is_dir() else []:
            try:
                meta = read_codec_json(json_path.parent)
            except ComponentError:
                continue
            if bytes.fromhex(meta["fingerprint"])[: len(fingerprint)] == fingerprint:
                return json_path.parent
    raise UsageError(f"no codec with fingerprint {fingerprint.hex()} in {', '.join(map(str, _codec_search_path()))}; pass --codec DIR")


def _load(folder: str | Path, deterministic: bool, max_memory: str | None = None, device: str = "cpu"):
    from gvc_train.codecs.base import open_codec
    from gvc_train.codecs.memory_plan import default_max_memory, parse_memory

    budget = default_max_memory() if max_memory is None else parse_memory(max_memory)
    codec = open_codec(folder, deterministic=deterministic)
    codec.max_memory = budget
    codec.use_device(device)
    return codec


def folder_files(folder: str | Path) -> list[Path]:
    """A codec folder's files: outputs must not land on them either."""
    folder = Path(folder)
    return [folder, *folder.iterdir()] if folder.is_dir() else [folder]


def cmd_encode(args: argparse.Namespace) -> int:
    import dataclasses

    inputs = [args.input, *folder_files(args.codec)]
    # entered before the model loads: a refused output costs no loading time
    with atomic_output(args.output, inputs=inputs, overwrite=args.overwrite) as tmp:
        codec = _load(args.codec, not args.nondeterministic, args.max_memory, args.device)
        quality = codec.default_rate_point if args.quality is None else args.quality
        if not 0 <= quality < codec.num_rate_points:
            raise UsageError(f"--quality {quality} is outside this codec's 0..{codec.num_rate_points - 1}")
        # a family's own flags reach it only when given: a family that has no such setting says so
        given = {"latents_per_chunk": args.latents_per_chunk, "controls": args.controls, "keyframes": args.keyframes, "caption": args.caption,
                 "mode": args.mode, "seed": args.seed, "intra_period": args.intra_period}  # fmt: skip
        options = {name: value for name, value in given.items() if value is not None}
        report = codec.encode(args.input, tmp, quality, max_frames=args.frames, **options)
    report = dataclasses.replace(report, path=str(args.output))
    print(
        f"{report.path}: {report.frames} frames {report.width}x{report.height}, quality {report.quality}, "
        f"{report.file_bytes} bytes, {report.bpp:.5f} bpp, {report.frames / report.seconds:.1f} frames/s"
    )
    return 0


def cmd_decode(args: argparse.Namespace) -> int:
    from gvc_train.coding.container import BitstreamError, read_header
    from gvc_train.codecs.frame_io import FrameSink

    if not Path(args.input).is_file():
        raise BitstreamError(f"no bitstream at {args.input}")
    with open(args.input, "rb") as f:
        header = read_header(f)
    folder = Path(args.codec) if args.codec else find_codec(header.fingerprint)
    # the sink checks the output before the model loads: a refused output costs no loading time
    sink = FrameSink(args.output, header.fps, overwrite=args.overwrite, inputs=[args.input, *folder_files(folder)])
    try:
        codec = _load(folder, not args.nondeterministic, args.max_memory, args.device)
        report = codec.decode(args.input, sink.write)
    except BaseException as e:
        kept = sink.close(partial=True)
        where = f"the {sink.frames} frames decoded before it are in {kept}" if kept is not None else "no frame was decoded"
        if isinstance(e, BitstreamError):
            raise BitstreamError(f"{e} ({where})") from None
        if isinstance(e, KeyboardInterrupt):
            raise type(e)(where) from None
        raise
    path = sink.close()
    print(f"{path}: {report.frames} frames {report.width}x{report.height}, {report.bpp:.5f} bpp, {report.frames / report.seconds:.1f} frames/s")
    return 0


def stream_codec(fingerprint_hex: str, folder: str | None) -> dict[str, Any] | None:
    """The codec a stream was made with: ``folder`` (``--codec``; refused in one line when it
    is another codec) or the one :func:`find_codec` finds; None when none is found. Reads
    codec.json only, never torch: ``{"folder", "fingerprint", "lineage", "rows"}``."""
    from gvc_train.codecs.codec_meta import read_codec_json
    from gvc_train.codecs.lineage import recorded_lineage, lineage_rows

    if folder is None:
        try:
            folder = str(find_codec(bytes.fromhex(fingerprint_hex)))
        except UsageError:
            return None
    meta = read_codec_json(folder)
    if not meta["fingerprint"].startswith(fingerprint_hex):
        raise UsageError(f"--codec {folder} is codec {meta['fingerprint'][:16]}, the stream was made with {fingerprint_hex}")
    return {"folder": folder, "fingerprint": meta["fingerprint"], "lineage": recorded_lineage(meta), "rows": lineage_rows(meta)}


def cmd_info(args: argparse.Namespace) -> int:
    from gvc_train.codecs.base import describe_stream

    summary = describe_stream(args.input)
    rows = summary["chunks"]
    codec = stream_codec(summary["fingerprint"], args.codec)
    if args.json:
        summary["codec"] = None if codec is None else {k: v for k, v in codec.items() if k != "rows"}
        print(strict_json.dumps(summary, indent=2))
        return 0
    for key in ("file", "family", "fingerprint", "width", "height", "frames", "fps", "bytes"):
        print(f"{key:12s} {summary[key]}")
    print(f"{'bpp':12s} {summary['bpp']:.6f}")
    scaled = any("scale" in row for row in rows)  # a family whose chunks are per scale says so in its rows
    print(f"{'chunk':>5s} {'type':7s} {'offset':>8s} {'bytes':>8s} {'frames':>11s} {'bits/frame':>11s}" + (f" {'scale':>5s}" if scaled else ""))
    for i, row in enumerate(rows):
        frames = f"{row['first_frame']}-{row['first_frame'] + row['frames'] - 1}" if row.get("frames") else ""
        bpf = f"{row['bits_per_frame']:.1f}" if "bits_per_frame" in row else ""
        scale = f" {row.get('scale', ''):>5}" if scaled else ""
        print(f"{i:5d} {row['type']:7s} {row['offset']:8d} {row['bytes']:8d} {frames:>11s} {bpf:>11s}{scale}")
    parts: dict[str, int] = {}  # a family whose rows name keyframes and controls: bytes per part
    for row in rows:
        part = (
            "keyframes" if "keyframe" in row else f"control {row['control']}" if "control" in row
            else "atoms" if "gop" in row else "caption" if "caption" in row else None
        )  # fmt: skip
        if part is not None:
            parts[part] = parts.get(part, 0) + row["bytes"]
    for part, size in parts.items():
        print(f"{part:18s} {size:8d} bytes {size * 8 / (summary['width'] * summary['height'] * summary['frames']):.6f} bpp")
    if scaled:
        per_scale: dict[int, int] = {}
        for row in rows:
            if "scale" in row:
                per_scale[row["scale"]] = per_scale.get(row["scale"], 0) + row["bytes"]
        pixels = summary["width"] * summary["height"] * summary["frames"]
        for scale, size in sorted(per_scale.items()):
            print(f"scale {scale:<6d} {size:8d} bytes {size * 8 / pixels:.6f} bpp")
    # last, so that the header rows and the chunk table keep their places
    print(f"{'codec':12s}{'not found (pass --codec DIR)' if codec is None else codec['folder']}")
    for line in [] if codec is None else codec["rows"]:
        print(line)
    return 0


def cmd_truncate(args: argparse.Namespace) -> int:
    """Cut a stream without decoding it: its family (from the stream's family byte, through the
    family table) says how; no model is loaded."""
    from gvc_train.coding.container import BitstreamError, read_header
    from gvc_train.codecs.families import FAMILIES, family_by_stream_id

    if not Path(args.input).is_file():
        raise BitstreamError(f"no bitstream at {args.input}")
    with open(args.input, "rb") as f:
        header = read_header(f)
    entry = family_by_stream_id(header.family)
    if entry is None:
        raise BitstreamError(f"unknown codec family {header.family} (this gvc_train knows {sorted(FAMILIES)})")
    with atomic_output(args.output, inputs=[args.input], overwrite=args.overwrite) as tmp:
        done = entry.codec_class().truncate(args.input, tmp, scales=args.scales, max_bytes=args.bytes)
    print(f"{args.output}: {done['scales']} of {done['of_scales']} scales, {done['bytes']} bytes (from {done['source_bytes']})")
    return 0


OVERWRITE_HELP = "replace an existing output (never the input; a folder only if it holds nothing but this command's output)"


MAX_MEMORY_HELP = (
    "memory the whole process may hold, e.g. 1.5G, 800M, 4GiB (default: $GVC_MAX_MEMORY, else 1.5G): "
    "large frames then decode in strips, their caches in a temporary file, with the same pixels"
)
DEVICE_HELP = (
    "where the networks run (latent and progressive codecs: the tokenizer; the entropy coding stays on the CPU): a stream's latents are "
    "the same on every device, its pixels equal the encoder's reconstruction on the device kind that encoded it"
)


def build_parser(extra_commands: Sequence[Callable[[Any], None]] = ()) -> argparse.ArgumentParser:
    parser = OneLineArgumentParser(prog="gvc", description="Encode and decode video with an exported gvc_train codec.")
    parser.add_argument("--version", action="version", version=f"gvc (gvc_train) {gvc_train.__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    enc = sub.add_parser("encode", help="video file or PNG folder -> bitstream")
    enc.add_argument("input")
    enc.add_argument("output")
    enc.add_argument("--codec", required=True, help="an exported codec folder (codec.json)")
    enc.add_argument(
        "--quality", type=int_at_least(0), default=None,
        help="quality index from 0 to the codec's 'qualities' - 1 (codec.json; 0-3 for checkpoints/latent_tiny): "
        "higher = more bits, better quality. Default: the middle one, qualities // 2",
    )  # fmt: skip
    enc.add_argument("--frames", type=positive_int, default=None, help="code only the first N frames (N >= 1)")
    enc.add_argument(
        "--latents-per-chunk", type=positive_int, default=None,
        help="latent frames per stream chunk (4 video frames each, at most 64). Default: the largest up to 8 "
        "whose frames fit the decoder's chunk memory limit (8 up to 960x544, 4 at 1280x720, 2 at 1920x1080)",
    )  # fmt: skip
    enc.add_argument(
        "--controls", default=None,
        help="controlled codecs: the controls to send, comma-separated (any subset of what the model was trained with; "
        "'' for none). Default: the codec's coding settings",
    )  # fmt: skip
    enc.add_argument("--keyframes", default=None, help='controlled codecs: the keyframe policy as JSON, e.g. \'{"name": "adaptive", "threshold": 8}\'')
    enc.add_argument(
        "--caption", default=None, metavar="TEXT",
        help="controlled codecs with a text model: the video's caption for the caption control. Default: the text file "
        "beside the input (clip.txt for clip.mp4, seq.txt for a PNG folder seq/), else the codec's captioner, if it has one",
    )  # fmt: skip
    enc.add_argument("--mode", default=None, choices=["t2v", "i2v", "flf2v"], help="zero-shot codecs: text-, image- or first-last-frame-to-video (default: the codec's)")
    enc.add_argument("--seed", type=int, default=None, help="zero-shot codecs: the seed of the codebooks (default: the codec's; sent in the stream)")
    enc.add_argument("--intra-period", type=int, default=None, help="codecs with intra refresh (ssf): frames between keyframes, -1 the first only (default: the codec's)")
    enc.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    enc.add_argument("--nondeterministic", action="store_true", help="use all torch threads (exact only at equal thread counts)")
    enc.add_argument("--max-memory", default=None, metavar="SIZE", help=MAX_MEMORY_HELP)
    enc.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help=DEVICE_HELP)
    enc.set_defaults(func=cmd_encode)
    dec = sub.add_parser("decode", help="bitstream -> out.mp4/.mkv (lossless RGB H.264), out.y4m or a PNG folder")
    dec.add_argument("input")
    dec.add_argument("output", help="out.mp4, out.mkv, out.y4m, or a folder name without a suffix for PNG frames")
    dec.add_argument("--codec", default=None, help="exported codec folder (default: found by fingerprint)")
    dec.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    dec.add_argument("--nondeterministic", action="store_true", help="use all torch threads (exact only at equal thread counts)")
    dec.add_argument("--max-memory", default=None, metavar="SIZE", help=MAX_MEMORY_HELP)
    dec.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help=DEVICE_HELP)
    dec.set_defaults(func=cmd_decode)
    info = sub.add_parser("info", help="header, chunk table and bits per frame of a bitstream")
    info.add_argument("input")
    info.add_argument("--json", action="store_true")
    info.add_argument("--codec", default=None, metavar="DIR",
                      help="the stream's codec folder, for its lineage (default: found by fingerprint, as decode does)")
    info.set_defaults(func=cmd_info)
    cut = sub.add_parser("truncate", help="cut a stream after a scale (progressive families), without decoding it")
    cut.add_argument("input")
    cut.add_argument("output")
    budget = cut.add_mutually_exclusive_group(required=True)
    budget.add_argument("--scales", type=positive_int, default=None, help="keep scales 1..K of every group")
    budget.add_argument("--bytes", type=positive_int, default=None, help="keep the most scales whose stream fits N bytes")
    cut.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    cut.set_defaults(func=cmd_truncate)
    for add_command in extra_commands:  # commands of higher layers (gvc eval), added by gvc_train.gvc_cli
        add_command(sub)
    return parser


def _user_errors() -> tuple[type[BaseException], ...]:
    """Bad input, not bugs: one line and exit 2. Imported late: only modules already loaded."""
    errors: list[type[BaseException]] = [UsageError, OutputError, ValueError, OSError]
    for module, name in (
        ("gvc_train.coding.container", "BitstreamError"),
        ("gvc_train.component_checks", "ComponentError"),
        ("gvc_train.data.video_io", "VideoReadError"),
    ):
        if module in sys.modules:
            errors.append(getattr(sys.modules[module], name))
    return tuple(errors)


def main(argv: list[str] | None = None, extra_commands: Sequence[Callable[[Any], None]] = ()) -> int:
    try:
        args = build_parser(extra_commands).parse_args(argv)
    except SystemExit as e:  # --help, --version, argument errors: already printed
        return int(e.code or 0)
    raise_on_sigterm()
    try:
        return args.func(args)
    except KeyboardInterrupt as e:  # Ctrl-C or SIGTERM: temporaries are gone, say what was kept
        what = "terminated" if type(e).__name__ == "Terminated" else "interrupted"
        print(f"gvc: {what}" + (f"; {e}" if str(e) else "; nothing was written"), file=sys.stderr)
        return 130
    except Exception as e:
        if os.environ.get("GVC_DEBUG"):
            raise
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        if isinstance(e, _user_errors()):
            print(f"gvc: error: {first}", file=sys.stderr)
            return 2
        # a bug, not bad input: still one line, the traceback with GVC_DEBUG=1
        print(f"gvc: error: unexpected {type(e).__name__}: {first}", file=sys.stderr)
        return 3


if __name__ == "__main__":
    sys.exit(main())
