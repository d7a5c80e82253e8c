"""Split one video into PNG-frame folders by frame range, e.g. train / val / held-out frames.

    python -m gvc_train.data.split_video VIDEO --range train=0:560 --range val=560:600
           --range heldout=600:795 [--resize-short S] --out DIR [--overwrite]

Each range ``NAME=START:STOP`` (frames START..STOP-1, counted from 0) becomes ``DIR/NAME/``, one
PNG per frame named by its frame number in the source (``000600.png``), so a folder says which
frames it holds and ``gvc-shard`` and ``gvc eval --video`` read it as one video in that order.
``DIR/splits.json`` records the source, its frame rate (PNG folders carry none: pass it to
``gvc-shard --png-fps``), the frame size and the ranges.

The video is decoded once, through :class:`~gvc_train.data.video_io.VideoReader` with
``resize_short``: the very call ``gvc-shard --resize-short`` makes, so training shards cut from
these folders and a held-out folder given to ``gvc eval`` hold the pixels ``gvc-shard`` would
have made from the video itself. Ranges must not overlap (held-out frames never reach training)
and must lie inside the video; a bad range is one line, before anything is decoded where it can
be. Every folder is written beside its target and moved into place only when all are complete.
"""

from __future__ import annotations

import contextlib
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from gvc_train.cli_parser import OneLineArgumentParser, positive_int
from gvc_train.safe_output import atomic_output, atomic_write_bytes, check_target, raise_on_sigterm

SPLITS_FILE = "splits.json"
_RANGE_RE = re.compile(r"^([A-Za-z0-9][A-Za-z0-9_-]*)=(\d+):(\d+)$")


@dataclass(frozen=True)
class FrameRange:
    name: str
    start: int
    stop: int  # exclusive

    def __str__(self) -> str:
        return f"{self.name}={self.start}:{self.stop}"


def frame_png_name(index: int) -> str:
    return f"{index:06d}.png"


def parse_range(text: str) -> FrameRange:
    """``train=0:560`` -> FrameRange("train", 0, 560); ValueError in one line otherwise."""
    match = _RANGE_RE.match(text.strip())
    if not match:
        raise ValueError(f"--range {text!r} is not NAME=START:STOP (e.g. train=0:560; NAME of letters, digits, _ and -)")
    name, start, stop = match.group(1), int(match.group(2)), int(match.group(3))
    if stop <= start:
        raise ValueError(f"--range {text}: STOP must be after START (frames START..STOP-1)")
    return FrameRange(name, start, stop)


def check_ranges(ranges: list[FrameRange], num_frames: int | None = None) -> list[FrameRange]:
    """The ranges sorted by start; ValueError in one line for a repeated name, an overlap or
    (with ``num_frames``) a range past the end of the video."""
    if not ranges:
        raise ValueError("no --range given")
    names = [r.name for r in ranges]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ValueError(f"range name {repeated[0]!r} is given more than once")
    ordered = sorted(ranges, key=lambda r: r.start)
    for before, after in zip(ordered, ordered[1:]):
        if after.start < before.stop:
            raise ValueError(f"ranges {before} and {after} overlap (frames {after.start}..{min(before.stop, after.stop) - 1})")
    if num_frames is not None and ordered[-1].stop > num_frames:
        last = max(ordered, key=lambda r: r.stop)
        raise ValueError(f"range {last} ends past the video's {num_frames} frames (0..{num_frames - 1})")
    return ordered


def _owns_png(path: Path) -> bool:
    """A range folder holds only its frames: anything else in it is never replaced."""
    return path.suffix.lower() == ".png"


def split_video(
    video: str | Path, ranges: list[FrameRange], out: str | Path, resize_short: int | None = None, overwrite: bool = False
) -> dict[str, object]:
    """Write each range's frames as a PNG folder ``out/NAME``; return what splits.json records."""
    from PIL import Image  # here, so that a bad command line answers before the heavy imports

    from gvc_train.data.video_io import VideoReader

    out = Path(out)
    for r in ranges:
        check_target(out / r.name, inputs=[video], overwrite=overwrite, folder=True, owns=_owns_png)
    check_target(out / SPLITS_FILE, inputs=[video], overwrite=overwrite)
    with VideoReader(video, resize_short=resize_short) as reader:
        info = reader.info
        ordered = check_ranges(ranges, info.num_frames)  # the declared count; the decode checks again
        with contextlib.ExitStack() as outputs:
            folders = [outputs.enter_context(atomic_output(out / r.name, inputs=[video], overwrite=overwrite, folder=True, owns=_owns_png)) for r in ordered]
            decoded = 0
            for index, frame_HWC in enumerate(reader.frames(max_frames=ordered[-1].stop)):
                decoded = index + 1
                for r, folder in zip(ordered, folders):
                    if r.start <= index < r.stop:
                        Image.fromarray(frame_HWC).save(folder / frame_png_name(index), compress_level=1)  # speed over size: lossless either way
            check_ranges(ordered, decoded if decoded < ordered[-1].stop else None)
    record = {
        "source": str(video),
        "fps": info.fps,
        "resize_short": resize_short,
        "width": info.width,
        "height": info.height,
        "ranges": {r.name: [r.start, r.stop] for r in ordered},
    }
    atomic_write_bytes(out / SPLITS_FILE, (json.dumps(record, indent=2) + "\n").encode())
    return record


def build_parser() -> OneLineArgumentParser:
    p = OneLineArgumentParser(prog="split_video", description="Split a video into PNG-frame folders by frame range.")
    p.add_argument("video", metavar="VIDEO", help="a video file or PNG folder")
    p.add_argument("--range", dest="ranges", action="append", default=[], metavar="NAME=START:STOP",
                   help="frames START..STOP-1 go to OUT/NAME; repeat for each split; ranges may not overlap")
    p.add_argument("--resize-short", type=positive_int, default=None, metavar="S",
                   help="area-downscale so the short side is S pixels, as gvc-shard --resize-short (never upscales)")
    p.add_argument("--out", required=True, metavar="DIR", help="the folder for the range folders and splits.json")
    p.add_argument("--overwrite", action="store_true", help="replace range folders and splits.json already in --out")
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        ranges = check_ranges([parse_range(text) for text in args.ranges])
    except ValueError as exc:
        parser.error(str(exc))
    raise_on_sigterm()  # SIGTERM cleans up like Ctrl-C: no half-written folder is left
    from gvc_train.data.video_io import VideoReadError

    try:
        record = split_video(args.video, ranges, args.out, args.resize_short, args.overwrite)
    except (ValueError, VideoReadError, OSError) as exc:  # OutputError is a ValueError
        print(f"split_video: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("split_video: interrupted; nothing was written", file=sys.stderr)
        return 130
    sizes = ", ".join(f"{name} {stop - start}" for name, (start, stop) in record["ranges"].items())  # type: ignore[union-attr]
    print(f"split_video: {record['width']}x{record['height']} frames at {record['fps']:g} fps into {args.out}: {sizes}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
