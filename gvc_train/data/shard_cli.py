"""``gvc-shard``: cut videos into clips and write them as WebDataset shards.

    gvc-shard INPUT... --out DIR [--clip-frames 17] [--overlap 0] [--maxcount N] [--maxsize 1G]
              [--workers W] [--resize-short S] [--max-frames-per-video N] [--prefix NAME]
              [--inputs-from FILE] [--relative] [--overwrite] [--level 6] [--png-fps 30]
              [--crop N|HxW] [--tokenizer DIR] [--controls NAMES [--control-settings JSON]]

INPUTs are video files (mp4, mkv, webm, y4m, ...), folders of PNG frames (one video each), or
directories walked for both. A ``.txt`` beside a video (same stem) or beside a PNG folder
(``folder.txt``) is carried as the caption of each of its clips. Unreadable inputs are
reported and skipped; the exit status is non-zero only if nothing was written.

``--crop N|HxW`` centre-crops every frame after ``--resize-short`` (before any control is
extracted), so all clips have one size: what whole-frame batches (controls) need. The sample
json records the crop (``shard_crop``), index.json the size (``crop``); an input whose frames
are smaller than the crop is reported and skipped.

With ``--tokenizer DIR`` (a ``gvc-export`` folder) each clip is stored as the tokenizer's latent
instead of its frames (:mod:`gvc_train.data.latent_shards`), centre-cropped to ``--crop`` (a
multiple of the tokenizer's stride 8; default: the largest one that fits).

With ``--controls luma,edges,flow,pose,segmentation,caption`` each clip's controls are extracted
in the workers and stored beside its frames in their coded form, one member ``<key>.ctrl.<name>``
each, with the extractor's and coder's settings and the bytes in the sample json
(:mod:`gvc_train.data.shard_controls`); ``--control-settings`` sets them per control, e.g.
``'{"luma": {"extractor": {"factor": 8}}, "flow": {"coder": {"step": 0.25}}}'``. ``caption``
keeps an input's own caption (its ``.txt``); inputs without one need a captioner
(``{"caption": {"extractor": {"model_path": DIR}}}``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import sys

from gvc_train.cli_parser import OneLineArgumentParser, int_at_least, positive_int
from gvc_train.data.sample_format import ControlSpec, ShardIndex
from gvc_train.data.shard_writer import NothingWrittenError, ShardOptions, write_shards
from gvc_train.data.video_io import DEFAULT_PNG_FPS
from gvc_train.safe_output import check_target, raise_on_sigterm

_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d*)?(?:e\d+)?)\s*([kmgt]?)i?b?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def parse_size(text: str) -> int:
    """``1G`` / ``500M`` / ``1e9`` -> bytes (K, M, G, T are powers of 1024)."""
    match = _SIZE_RE.match(text)
    if not match:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (examples: 1G, 500M, 100000000)")
    value = int(float(match.group(1)) * _UNITS[match.group(2).lower()])
    if value < 1:
        raise argparse.ArgumentTypeError(f"size must be positive: {text!r}")
    return value


_positive = positive_int
_non_negative = int_at_least(0)


def parse_crop(text: str) -> tuple[int, int]:
    """``256`` -> (256, 256); ``144x176`` -> (144, 176): height x width."""
    parts = text.lower().split("x")
    try:
        values = tuple(int(p) for p in parts)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a crop size: {text!r} (examples: 256, 144x176)") from None
    if len(values) not in (1, 2) or min(values) < 1:
        raise argparse.ArgumentTypeError(f"not a crop size: {text!r} (examples: 256, 144x176)")
    return (values[0], values[-1])


def format_summary(index: ShardIndex, out_dir: str) -> str:
    """A few lines for the end of a run: what was written, what was skipped and why."""
    lines = [
        f"wrote {index.total_clips} clips ({index.total_frames} frames) from {len(index.sources)} inputs "
        f"into {len(index.shards)} shards, {index.total_bytes / 1e6:.1f} MB, in {out_dir}"
    ]
    damaged = [s for s in index.sources if s["error"]]
    if damaged:
        lines.append(f"damaged ({len(damaged)}; clips before the damage kept):")
        lines += [f"  {s['source']}: {s['error']}" for s in damaged]
    if index.skipped:
        lines.append(f"skipped ({len(index.skipped)}):")
        lines += [f"  {s['source']}: {s['reason']}" for s in index.skipped]
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    defaults = ShardOptions()
    p = OneLineArgumentParser(
        prog="gvc-shard",
        description="Cut videos into clips, code them losslessly and write WebDataset tar shards.",
    )
    p.add_argument("inputs", nargs="*", metavar="INPUT", help="video files, PNG-frame folders or directories to walk")
    p.add_argument("--inputs-from", metavar="FILE", default=None,
                   help="more INPUTs, one per line (blank lines and # comments skipped): for lists too long "
                        "for a command line, like Vimeo-90k's sep_trainlist.txt")
    p.add_argument("--out", required=True, metavar="DIR", help="output directory for the shards and index.json")
    p.add_argument("--clip-frames", type=_positive, default=defaults.clip_frames, help="frames per clip (default %(default)s)")
    p.add_argument("--overlap", type=_non_negative, default=defaults.overlap,
                   help="frames shared by consecutive clips (default %(default)s)")
    p.add_argument("--maxcount", type=_positive, default=defaults.maxcount, help="samples per shard (default %(default)s)")
    p.add_argument("--maxsize", type=parse_size, default=defaults.maxsize,
                   help="bytes per shard, e.g. 500M or 1G (default 1G)")
    p.add_argument("--workers", type=_positive, default=min(4, os.cpu_count() or 1),
                   help="worker processes reading videos (default min(4, CPUs) = %(default)s)")
    p.add_argument("--resize-short", type=_positive, default=None, metavar="S",
                   help="area-downscale so the short side is S pixels (never upscales; default: source pixels)")
    p.add_argument("--max-frames-per-video", type=_positive, default=None, metavar="N",
                   help="read at most the first N frames of each video")
    p.add_argument("--prefix", default=defaults.prefix, help="shard names are PREFIX-000000.tar ... (default %(default)s)")
    p.add_argument("--relative", action="store_true",
                   help="record sources relative to their INPUT (a file INPUT: its basename) instead of as given")
    p.add_argument("--png-fps", type=float, default=DEFAULT_PNG_FPS,
                   help="frame rate recorded for PNG folders (default %(default)s)")
    p.add_argument("--level", type=int, default=defaults.level, help="zstd level of the clip coder (default %(default)s)")
    p.add_argument("--tokenizer", metavar="DIR", default=None,
                   help="store each clip as this tokenizer's latent (a gvc-export folder with tokenizer.json "
                        "+ tokenizer.safetensors) instead of its frames; --clip-frames must be 1 + 4k")
    p.add_argument("--crop", type=parse_crop, default=None, metavar="N|HxW",
                   help="centre crop (pixels, after --resize-short, before controls) of every frame stored; "
                        "inputs smaller than it are skipped. Default: the whole frame, or with --tokenizer "
                        "the largest multiple of 8 that fits (a given crop must be multiples of 8 then)")
    p.add_argument("--controls", metavar="NAMES", default=None,
                   help="store these controls beside the frames, coded: a comma list of luma, edges, flow, pose, "
                        "segmentation, caption")
    p.add_argument("--control-settings", metavar="JSON", default=None,
                   help='with --controls: per-control settings, name -> {"extractor": {...}, "coder": {...}}')
    p.add_argument("--overwrite", action="store_true", help="replace shards and index.json already in --out")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def read_input_list(path: str) -> list[str]:
    with open(path, encoding="utf-8") as f:
        lines = (line.strip() for line in f)
        return [line for line in lines if line and not line.startswith("#")]


def parse_controls(parser: argparse.ArgumentParser, args: argparse.Namespace) -> tuple[ControlSpec, ...]:
    """The ControlSpecs of ``--controls`` and ``--control-settings``; a mistake is a one-line error."""
    if args.controls is None:
        if args.control_settings is not None:
            parser.error("--control-settings needs --controls")
        return ()
    if args.tokenizer:
        parser.error("--controls applies to frame shards, not to latent shards (--tokenizer)")
    # only now: the extractors bring torch, which a plain run does without
    from gvc_train.data.shard_controls import control_specs, parse_control_names

    try:
        names = parse_control_names(args.controls)
        settings = None if args.control_settings is None else json.loads(args.control_settings)
        return control_specs(names, settings)
    except json.JSONDecodeError as exc:
        parser.error(f"--control-settings is not JSON: {exc}")
    except ValueError as exc:
        parser.error(f"--controls: {exc}")
    raise AssertionError("unreachable")  # parser.error exits


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    inputs = list(args.inputs)
    if args.inputs_from:
        try:
            inputs += read_input_list(args.inputs_from)
        except (OSError, UnicodeDecodeError) as exc:
            parser.error(f"--inputs-from {args.inputs_from}: {getattr(exc, 'strerror', None) or exc}")
    if not inputs:
        parser.error("no INPUT given (name files or directories, or --inputs-from FILE)")
    controls = parse_controls(parser, args)
    options = ShardOptions(
        clip_frames=args.clip_frames,
        overlap=args.overlap,
        maxcount=args.maxcount,
        maxsize=args.maxsize,
        workers=args.workers,
        resize_short=args.resize_short,
        crop=args.crop,
        max_frames_per_video=args.max_frames_per_video,
        prefix=args.prefix,
        relative=args.relative,
        png_fps=args.png_fps,
        level=args.level,
        overwrite=args.overwrite,
        controls=controls,
    )
    raise_on_sigterm()  # SIGTERM cleans up like Ctrl-C: the shard being written is removed
    try:
        # shards go into --out beside whatever it holds; never into (or onto) an input
        check_target(args.out, inputs=inputs, overwrite=True, folder=True, owns=lambda p: True)
        if args.tokenizer:
            from gvc_train.data.latent_shards import LatentShardOptions, write_latent_shards

            latent_options = LatentShardOptions(**dataclasses.asdict(options), tokenizer=args.tokenizer)
            index = write_latent_shards(inputs, args.out, latent_options, progress=False if args.no_progress else None)
        else:
            index = write_shards(inputs, args.out, options, progress=False if args.no_progress else None)
    except NothingWrittenError as exc:
        print(format_summary(exc.index, args.out), file=sys.stderr)
        print(f"gvc-shard: {exc}", file=sys.stderr)
        return 1
    except (ValueError, FileExistsError, OSError) as exc:  # OutputError is a ValueError
        print(f"gvc-shard: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"gvc-shard: interrupted; the finished shards are kept in {args.out} (no index.json written)", file=sys.stderr)
        return 130
    print(format_summary(index, args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
