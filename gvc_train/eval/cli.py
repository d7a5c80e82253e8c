"""``gvc eval``: codecs and anchors on the same frames, RD points, BD-rate, plots.

    gvc eval --codec DIR... --video FILE... --out REPORT_DIR [--anchors x264,x265,svtav1]
             [--control-subsets 'luma;luma,flow;none'] [--reference-codec NAME] [--no-quality-span]

The command lives here, above ``codecs/``, and joins the ``gvc`` parser through
``gvc_train.gvc_cli``: ``codecs/`` (what a user who only decodes installs) never imports
``eval/``. Standard library only at import, so ``gvc --help`` stays fast; the report code comes
in when the command runs.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from pathlib import Path
from typing import Any

from gvc_train.cli_parser import positive_int
from gvc_train.codecs.cli import OVERWRITE_HELP, UsageError, folder_files
from gvc_train.safe_output import atomic_output

# What a report folder holds: a folder holding anything else is never replaced.
EVAL_FILES = {"report.json", "points.csv", "bd.csv", "summary.md", "streams", "plots", "anchor_cache"}


def cmd_eval(args: argparse.Namespace) -> int:
    if not args.codec and not args.anchors:
        raise UsageError("nothing to evaluate: give --codec DIR and/or --anchors")
    for folder in args.codec:
        if not (Path(folder) / "codec.json").is_file():
            raise UsageError(f"{folder} is not an exported codec folder (no codec.json)")
    control_subsets = None
    if args.control_subsets is not None:
        from gvc_train.eval.ablation import parse_control_subsets

        try:
            control_subsets = parse_control_subsets(args.control_subsets)
        except ValueError as e:
            raise UsageError(f"--control-subsets: {e}") from None
    inputs = [*args.video, *(p for c in args.codec for p in folder_files(c))]
    out = Path(args.out)
    owns = lambda p: p.name in EVAL_FILES  # noqa: E731
    # entered before the report code is imported: a refused output costs nothing
    with atomic_output(out, inputs=inputs, overwrite=args.overwrite, folder=True, owns=owns) as tmp:
        from gvc_train.eval.anchors import AnchorError
        from gvc_train.eval.report import EvalOptions, run_eval

        metric_options = {"lpips_backbone": args.lpips_backbone, "dists_backbone": args.dists_backbone, "i3d_path": args.i3d}
        options = EvalOptions(
            codecs=args.codec, videos=args.video, out=args.out, anchors=[a for a in args.anchors.split(",") if a],
            frames=args.frames, intra_period=args.intra_period, ladder_points=args.ladder_points,
            anchor_cache=args.anchor_cache, metric_options=metric_options, progress=not args.no_progress,
            control_subsets=control_subsets, modes=[m for m in args.modes.split(",") if m] if args.modes else None,
            reference_codec=args.reference_codec, quality_span=not args.no_quality_span, png_fps=args.png_fps,
        )  # fmt: skip
        # A rerun into the same report folder keeps its anchor cache (the anchors' encodes are
        # the slow part): moved into the new folder, and back if the run fails.
        kept_cache = args.anchor_cache is None and (out / "anchor_cache").is_dir()
        if kept_cache:
            os.rename(out / "anchor_cache", tmp / "anchor_cache")
        try:
            run_eval(dataclasses.replace(options, out=str(tmp), shown_out=str(out)))
        except BaseException as e:
            if kept_cache:
                os.rename(tmp / "anchor_cache", out / "anchor_cache")
            if isinstance(e, AnchorError):
                raise UsageError(str(e)) from None
            raise
    return 0


def add_eval_command(subparsers: Any) -> None:
    """Add ``eval`` to the ``gvc`` parser's subcommands."""
    ev = subparsers.add_parser("eval", help="codecs and anchors on the same frames: RD points, BD-rate, plots")
    ev.add_argument("--codec", nargs="*", default=[], help="exported codec folders")
    ev.add_argument("--anchors", default="x264,x265,svtav1", help="comma-separated: x264, x265, svtav1 ('' for none)")
    ev.add_argument("--video", nargs="+", required=True, help="video files or PNG folders")
    ev.add_argument("--frames", type=positive_int, default=96, help="the first N frames of each video")
    ev.add_argument("--png-fps", type=float, default=30.0, help="frame rate of PNG-folder videos (they carry none; the anchors encode at it)")
    ev.add_argument("--intra-period", type=int, default=-1, help="anchors' intra period in frames (-1: first frame only)")
    ev.add_argument("--ladder-points", type=positive_int, default=5, help="CRF points per anchor and setting")
    ev.add_argument("--anchor-cache", default=None, help="cache folder for anchor results (default: OUT/anchor_cache, kept by --overwrite)")
    ev.add_argument("--lpips-backbone", default=None, help="local torchvision VGG16 state dict for LPIPS")
    ev.add_argument("--dists-backbone", default=None, help="local torchvision VGG16 state dict for DISTS")
    ev.add_argument("--i3d", default=None, help="local I3D TorchScript for FVD; a TorchScript file is code that runs on the videos: use a trusted file only")
    ev.add_argument(
        "--control-subsets", default=None, metavar="SETS",
        help="codecs that send controls: the sets of controls of the ablation table, ';' between sets, ',' between names, "
        "'none' for no controls, e.g. 'luma;luma,flow;none' (default: each such codec's default set and none)",
    )  # fmt: skip
    ev.add_argument(
        "--modes", default=None, metavar="MODES",
        help="codecs with modes (zero-shot: t2v, i2v, flf2v): the modes to code, one rate curve each, comma-separated (default: all a codec has)",
    )  # fmt: skip
    ev.add_argument(
        "--reference-codec", default=None, metavar="NAME",
        help="also the BD-rate / BD-metric of every other codec against this one (its folder name, or name:mode)",
    )  # fmt: skip
    ev.add_argument(
        "--no-quality-span", action="store_true",
        help="anchors' ladders span the codecs' rates only (default: also extended into the codecs' PSNR / MS-SSIM range "
        "where the two share none, so a BD-rate exists)",
    )  # fmt: skip
    ev.add_argument("--no-progress", action="store_true")
    ev.add_argument("--out", required=True, help="report folder (new or empty; a previous report with --overwrite)")
    ev.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    ev.set_defaults(func=cmd_eval)
