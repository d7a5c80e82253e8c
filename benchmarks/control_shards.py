"""Controls in shards: bytes per frame of each control as stored, and the time they add to gvc-shard.

Shards carphone and bikes (each alone, one worker, clips of ``--clip-frames``) without controls
and with every control that has a coder, at the default settings, caption from a ``.txt`` beside
the video; the bytes come from the sample json (``controls.<name>.bytes``), so they are what a
stream carries. Also the seconds each control's extraction + coding takes on the same clips,
alone. Prints two Markdown tables.

    python benchmarks/control_shards.py [--clip-frames 17] [--max-frames N] [--controls luma,edges,...]
"""

from __future__ import annotations

import argparse
import json
import os
import tarfile
import tempfile
import time
from collections import defaultdict

if __package__ in (None, ""):  # run as a script: make the repository's gvc_train importable
    import sys

    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from gvc_train.coding.controls.registry import BUILTIN_CODERS  # noqa: E402
from gvc_train.data.sample_format import ShardIndex  # noqa: E402
from gvc_train.data.sample_videos import sample_video  # noqa: E402
from gvc_train.data.shard_controls import control_specs, encode_controls  # noqa: E402
from gvc_train.data.shard_writer import write_shards  # noqa: E402
from gvc_train.data.video_io import read_frames  # noqa: E402

VIDEOS = {"carphone": "carphone_pristine.mp4", "bikes": "bikes.mp4"}
CAPTIONS = {"carphone": "a man talking on a mobile phone in a moving car", "bikes": "cyclists riding along a street"}
ORDER = ("luma", "edges", "flow", "segmentation", "pose", "caption")


def captioned_video(folder: str, label: str) -> str:
    """A link to sample video ``label`` (a key of VIDEOS) in ``folder``/``label``, with its caption
    in a ``.txt`` beside it (what the caption extractor keeps); returns the link's path."""
    os.makedirs(os.path.join(folder, label))
    video = os.path.join(folder, label, VIDEOS[label])
    os.symlink(sample_video(VIDEOS[label]), video)
    with open(os.path.splitext(video)[0] + ".txt", "w") as f:
        f.write(CAPTIONS[label])
    return video


def stored_bytes(out: str) -> tuple[dict[str, int], int]:
    """Bytes per control summed over every sample json of the shards, and the frames stored."""
    totals: dict[str, int] = defaultdict(int)
    index = ShardIndex.load(out)
    for path in index.shard_paths(out):
        with tarfile.open(path) as tar:
            for member in tar:
                if member.name.endswith(".json"):
                    for name, entry in json.loads(tar.extractfile(member).read()).get("controls", {}).items():
                        totals[name] += entry["bytes"]
    return dict(totals), index.total_frames


def timed_shard(video: str, out: str, clip_frames: int, max_frames: int | None, specs: tuple) -> float:
    start = time.perf_counter()
    write_shards([video], out, clip_frames=clip_frames, max_frames_per_video=max_frames, workers=1,
                 overwrite=True, controls=specs, log=lambda _: None)  # fmt: skip
    return time.perf_counter() - start


def seconds_per_control(video: str, clip_frames: int, max_frames: int | None, specs: tuple, caption: str) -> dict[str, float]:
    """Extraction + coding time of each control alone, over the clips the shards hold."""
    frames = read_frames(video, count=max_frames)
    clips = [frames[i : i + clip_frames] for i in range(0, len(frames) - clip_frames + 1, clip_frames)]
    seconds = {}
    for spec in specs:
        start = time.perf_counter()
        for clip in clips:
            encode_controls(clip, caption, (spec,))
        seconds[spec.name] = time.perf_counter() - start
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clip-frames", type=int, default=17)
    parser.add_argument("--max-frames", type=int, default=None)
    parser.add_argument("--controls", default=",".join(n for n in ORDER if n in BUILTIN_CODERS))
    args = parser.parse_args()
    names = args.controls.split(",")
    specs = control_specs(names)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for label in VIDEOS:
            video = captioned_video(tmp, label)
            out = os.path.join(tmp, label + "-out")
            timed_shard(video, out, args.clip_frames, args.clip_frames, specs)  # warm-up: imports, mediapipe
            plain = timed_shard(video, out, args.clip_frames, args.max_frames, ())
            with_controls = timed_shard(video, out, args.clip_frames, args.max_frames, specs)
            totals, frames = stored_bytes(out)
            alone = seconds_per_control(video, args.clip_frames, args.max_frames, specs, CAPTIONS[label])
            rows.append((label, frames, totals, plain, with_controls, alone))
    print(f"| video | frames | {' | '.join(names)} | shard s, no controls | with controls | ratio |")
    print("|---" * (len(names) + 5) + "|")
    for label, frames, totals, plain, with_controls, _ in rows:
        cells = " | ".join(f"{totals[n] / frames:.1f}" for n in names)
        print(f"| {label} | {frames} | {cells} | {plain:.2f} | {with_controls:.2f} | {with_controls / plain:.1f}x |")
    print(f"\nbytes per frame of each control as stored (clips of {args.clip_frames}; caption: once per clip)\n")
    print(f"| video | {' | '.join(names)} |")
    print("|---" * (len(names) + 1) + "|")
    for label, frames, *_, alone in rows:
        print(f"| {label} | {' | '.join(f'{1000 * alone[n] / frames:.1f}' for n in names)} |")
    print("\nms per frame to extract and code each control alone (one process)")


if __name__ == "__main__":
    main()
