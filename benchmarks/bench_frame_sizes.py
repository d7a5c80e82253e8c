"""The latent codec at real frame sizes: peak memory, plan and speed of encode and decode under the
default memory budget, beside x265 on the same frames.

Sizes: carphone 176x144 and bikes 640x272 (their mp4s), bigbuckbunny 1280x720 (its mp4) and
1920x1080 (bigbuckbunny's frames upscaled with lanczos, written losslessly once: libx264rgb qp 0).
Each job runs in a fresh process (``--child``) under the budget ``gvc`` uses when none is chosen
(1.5 GiB, codecs/memory_plan.py) with glibc's mmap threshold fixed (the peak of live memory,
the same every run: bench_codec_memory.py says why), and reports ``VmHWM`` after imports and
the codec load and at the end, the plan the budget chose, frames/s and, for decodes, the share
of time per stage (entropy decoding with its networks, tokenizer decoder, frames out). An encode
job loads the encoder's model (with compressai), a decode job only what decoding needs. Memory
must not grow with length: every size is coded at 5 and 13 frames (2 and 4 latent steps; every
cache is full after the second) and the ratio of the two peaks is reported (bench_codec_memory.py
has 96 against 384 frames at 176x144). x265: preset medium on one thread and on all, the same frames
from memory (bench_codec_memory.x265_fps).

    python -m benchmarks.bench_frame_sizes [--sizes 176x144,1920x1080] [--codec FOLDER]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.bench_codec_memory import FIXED_MALLOC, vmhwm_mb, codec_folder, read_frames, run_job, write_lossless, x265_fps
from benchmarks.table import print_table
from gvc_train import strict_json

SOURCES = {
    "176x144": ("carphone_pristine.mp4", None),
    "640x272": ("bikes.mp4", None),
    "1280x720": ("bigbuckbunny.mp4", None),
    "1920x1080": ("bigbuckbunny.mp4", (1920, 1080)),
}
SHORT, LONG = 5, 13


def _child(job: dict[str, Any]) -> dict[str, Any]:
    from gvc_train.codecs.latent import LatentCodec
    from gvc_train.codecs.memory_plan import default_max_memory

    codec = LatentCodec(job["codec"])
    if job["kind"] == "encode":
        codec.codec  # the encoder's model, built on first use: part of the load (a decode loads less)
    codec.max_memory = default_max_memory()  # what `gvc encode` / `gvc decode` use when none is chosen
    loaded = vmhwm_mb()
    started = time.perf_counter()
    if job["kind"] == "encode":
        report = codec.encode(job["input"], job["output"], job["quality"], max_frames=job["frames"])
    else:
        report = codec.decode(job["input"], lambda frame: None)
    seconds = time.perf_counter() - started
    return {"frames": report.frames, "seconds": seconds, "fps": report.frames / seconds, "peak_mb": vmhwm_mb(), "loaded_mb": loaded,
            "bpp": report.bpp, "plan": report.stats.get("plan"), "stage_seconds": report.stats.get("stage_seconds")}  # fmt: skip


def run_child(**job: Any) -> dict[str, Any]:
    return run_job(FIXED_MALLOC, module="benchmarks.bench_frame_sizes", **job)


def source_frames(size: str, count: int) -> tuple[list[Any], float, str]:
    """``count`` frames at ``size``, the frame rate and where they come from."""
    from gvc_train.data.sample_videos import sample_video
    from gvc_train.data.video_io import probe

    name, upscale = SOURCES[size]
    path = sample_video(name)
    frames = read_frames(path, count)
    if upscale is not None:
        import numpy as np
        from PIL import Image

        frames = [np.asarray(Image.fromarray(f).resize(upscale, Image.LANCZOS)) for f in frames]
    return frames, probe(path).fps, f"{name}, upscaled with lanczos" if upscale else name


def bench_sizes(sizes: list[str], codec: str | None = None) -> dict[str, Any]:
    result: dict[str, Any] = {"short": SHORT, "long": LONG, "sizes": {}}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        folder, which = (codec, codec) if codec else codec_folder(tmp)
        quality = json.loads((Path(folder) / "codec.json").read_text()).get("qualities", 2) // 2
        result.update(codec=which, quality=quality)
        for size in sizes:
            frames, fps, origin = source_frames(size, LONG)
            video = work / f"{size}.mkv"
            write_lossless(frames, video, fps)
            row: dict[str, Any] = {"source": origin}
            for count in (SHORT, LONG):
                print(f"frame sizes: {size}, {count} frames ...", flush=True)
                stream = work / f"{size}_{count}.gvc"
                row[count] = {
                    "encode": run_child(kind="encode", codec=folder, input=video, output=stream, quality=quality, frames=count),
                    "decode": run_child(kind="decode", codec=folder, input=stream),
                }
            row["x265_1thread"] = x265_fps(frames, fps, 1, 1)
            row["x265_threads"] = x265_fps(frames, fps, None, 1)
            result["sizes"][size] = row
    return result


def table_rows(r: dict[str, Any]) -> list[str]:
    rows = []
    for size, row in r["sizes"].items():
        for kind in ("encode", "decode"):
            short, long = row[SHORT][kind], row[LONG][kind]
            shares = ""
            if long.get("stage_seconds"):
                total = sum(long["stage_seconds"].values()) or 1.0
                shares = "; time: " + ", ".join(f"{k} {v / total:.0%}" for k, v in long["stage_seconds"].items())
            x1, xn = row["x265_1thread"][f"{kind}_fps"], row["x265_threads"][f"{kind}_fps"]
            rows.append(
                f"| latent codec {kind}, {size} ({row['source']}), default budget 1.5 GiB, {r['codec']} "
                f"| peak {long['peak_mb']:.0f} MB at {LONG} frames ({long['loaded_mb']:.0f} MB after imports + load), "
                f"{long['fps']:.2f} frames/s, plan: {long['plan']}{shares} "
                f"| x265 medium on the {LONG} frames: 1 thread {x1:.1f} frames/s, all threads {xn:.1f} "
                f"| peak {LONG} vs {SHORT} frames: {long['peak_mb'] / short['peak_mb']:.3f}; speed vs x265 1 thread: {long['fps'] / x1:.3f} |"
            )
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default=",".join(SOURCES), help=f"comma-separated, of {', '.join(SOURCES)}")
    parser.add_argument("--codec", help="a latent codec folder (default: checkpoints/latent_tiny)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(strict_json.dumps(_child(json.loads(args.child))))
        return 0
    sizes = [s for s in args.sizes.split(",") if s]
    unknown = [s for s in sizes if s not in SOURCES]
    if unknown:
        parser.error(f"unknown sizes {unknown}: choose from {', '.join(SOURCES)}")
    r = bench_sizes(sizes, args.codec)
    print(strict_json.dumps(r, indent=2, default=str))
    print()
    print_table(table_rows(r))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
