"""Exported codecs at real frame sizes: peak memory, plan and speed of encode and decode under the
default memory budget, beside x265 on the same frames. Any family: the latent reference codec by
default, ``--codec`` for others (``--codec all``: every codec folder in checkpoints/).

Sizes: carphone 176x144 and bikes 640x272 (their mp4s), bigbuckbunny 1280x720 (its mp4) and
1920x1080 (bigbuckbunny's frames upscaled with lanczos, written losslessly once: libx264rgb qp 0).
Each job runs in a fresh process (``--child``) under the budget ``gvc`` uses when none is chosen
(1.5 GiB, codecs/memory_plan.py) with glibc's mmap threshold fixed (the peak of live memory,
the same every run: bench_codec_memory.py says why), and reports ``VmHWM`` after imports and
the codec load and at the end, the plan the budget chose, frames/s and, for decodes, the share
of time per stage (entropy decoding with its networks, tokenizer decoder, frames out) where the
family reports them. An encode job of the latent family loads the encoder's model (with
compressai) before the first reading, a decode job only what decoding needs; other families load
their encoders on first use (inside the job's peak, not its "after load" reading). Every codec
codes at its default rate point (the middle one) with its family's default options. Memory
must not grow with length: every size is coded at 5 and 13 frames (2 and 4 latent steps; every
cache is full after the second) and the ratio of the two peaks is reported (bench_codec_memory.py
has 96 against 384 frames at 176x144). x265: preset medium on one thread and on all, the same frames
from memory (bench_codec_memory.x265_fps).

    python -m benchmarks.bench_frame_sizes [--sizes 176x144,1920x1080] [--codec FOLDER[,FOLDER] | all]
        [--lengths 5,13] [--other-lengths 5] [--out bench_out/frame_sizes.json]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.bench_codec_memory import FIXED_MALLOC, REPO, vmhwm_mb, codec_folder, read_frames, run_job, write_lossless, x265_fps
from benchmarks.table import print_table
from gvc_train import strict_json
from gvc_train.codecs.memory_plan import DEFAULT_MAX_MEMORY

SOURCES = {
    "176x144": ("carphone_pristine.mp4", None),
    "640x272": ("bikes.mp4", None),
    "1280x720": ("bigbuckbunny.mp4", None),
    "1920x1080": ("bigbuckbunny.mp4", (1920, 1080)),
}
SHORT, LONG = 5, 13


def _child(job: dict[str, Any]) -> dict[str, Any]:
    from gvc_train.codecs.base import open_codec
    from gvc_train.codecs.memory_plan import default_max_memory
    from gvc_train.models.tokenizer.tiling import tileable

    codec = open_codec(job["codec"])
    if job["kind"] == "encode" and codec.family == "latent":
        codec.codec  # the encoder's model, built on first use: part of the load (a decode loads less)
    codec.max_memory = default_max_memory()  # what `gvc encode` / `gvc decode` use when none is chosen
    loaded = vmhwm_mb()
    started = time.perf_counter()
    if job["kind"] == "encode":
        try:
            report = codec.encode(job["input"], job["output"], codec.default_rate_point, max_frames=job["frames"])
        except ValueError as e:  # a size the codec refuses in one line (a limit, a budget): a row that says so
            return {"refused": str(e)}
    else:
        report = codec.decode(job["input"], lambda frame: None)
    seconds = time.perf_counter() - started
    tokenizer = getattr(codec, "tokenizer", None)
    return {"frames": report.frames, "seconds": seconds, "fps": report.frames / seconds, "peak_mb": vmhwm_mb(), "loaded_mb": loaded,
            "bpp": report.bpp, "plan": report.stats.get("plan"), "stage_seconds": report.stats.get("stage_seconds"),
            "budget_mb": codec.max_memory / 2**20,
            # False: the tokenizer normalises whole frames (GroupNorm), so its only plans are untiled
            "tiles": None if tokenizer is None or not hasattr(tokenizer, "decoder") else tileable(tokenizer)}  # fmt: skip


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


def all_codecs() -> list[str]:
    """Every exported codec folder in checkpoints/ (a codec.json), the reference first."""
    folders = (str(p.parent.relative_to(REPO)) for p in (REPO / "checkpoints").glob("*/codec.json"))
    return sorted(folders, key=lambda f: (f != "checkpoints/latent_tiny", f))


def bench_sizes(
    sizes: list[str], codec: str | None = None, x265: dict[str, Any] | None = None, lengths: tuple[int, ...] | None = None
) -> dict[str, Any]:
    """One codec (default: the latent reference) at ``sizes``, coding each of ``lengths`` frames
    (two: the growth of the peak between them; one: the cost of a slow family at large sizes).
    ``x265``: x265's figures by size (on LONG frames), filled in here where missing, so that several
    codecs' runs measure x265 once."""
    x265 = {} if x265 is None else x265
    lengths = lengths or (SHORT, LONG)
    result: dict[str, Any] = {"short": min(lengths), "long": max(lengths), "sizes": {}}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        folder, which = (codec, codec) if codec else codec_folder(tmp)
        meta = json.loads((Path(folder) / "codec.json").read_text())
        result.update(codec=which, family=meta["family"], quality=meta.get("qualities", 2) // 2)
        for size in sizes:
            frames, fps, origin = source_frames(size, LONG)
            video = work / f"{size}.mkv"
            write_lossless(frames, video, fps)
            # a codec with a caption control reads the source's caption beside it (data/captions/)
            video.with_suffix(".txt").write_text((REPO / "data" / "captions" / Path(SOURCES[size][0]).with_suffix(".txt").name).read_text())
            row: dict[str, Any] = {"source": origin}
            for count in sorted(set(lengths)):
                print(f"frame sizes: {which}, {size}, {count} frames ...", flush=True)
                stream = work / f"{size}_{count}.gvc"
                encode = run_child(kind="encode", codec=folder, input=video, output=stream, frames=count)
                decode = encode if "refused" in encode else run_child(kind="decode", codec=folder, input=stream)
                row[count] = {"encode": encode, "decode": decode}
            if size not in x265:
                x265[size] = {"x265_1thread": x265_fps(frames, fps, 1, 1), "x265_threads": x265_fps(frames, fps, None, 1)}
            row.update(x265[size])
            result["sizes"][size] = row
    return result


def table_rows(r: dict[str, Any]) -> list[str]:
    rows = []
    n_short, n_long = r["short"], r["long"]
    for size, row in r["sizes"].items():
        for kind in ("encode", "decode"):
            short, long = row[n_short][kind], row[n_long][kind]
            if "refused" in long:
                rows.append(f"| {r.get('family', 'latent')} codec {kind}, {size}, {r['codec']} | refused: {long['refused']} | - | - |")
                continue
            growth = f"peak {n_long} vs {n_short} frames: {long['peak_mb'] / short['peak_mb']:.3f}" if n_long != n_short else f"one length ({n_long} frames)"
            shares = ""
            if long.get("stage_seconds"):
                total = sum(long["stage_seconds"].values()) or 1.0
                shares = "; time: " + ", ".join(f"{k} {v / total:.0%}" for k, v in long["stage_seconds"].items())
            x1, xn = row["x265_1thread"][f"{kind}_fps"], row["x265_threads"][f"{kind}_fps"]
            if long["peak_mb"] > long.get("budget_mb", DEFAULT_MAX_MEMORY / 2**20):
                over = "its tokenizer normalises whole frames, so it cannot decode in strips" if long.get("tiles") is False else "the estimate fell short"
                shares += f"; OVER the budget ({over})"
            rows.append(
                f"| {r.get('family', 'latent')} codec {kind}, {size} ({row['source']}), default budget 1.5 GiB, {r['codec']} "
                f"| peak {long['peak_mb']:.0f} MB at {n_long} frames ({long['loaded_mb']:.0f} MB after imports + load), "
                f"{long['fps']:.2f} frames/s{f', plan: ' + long['plan'] if long['plan'] else ''}{shares} "
                f"| x265 medium on the {LONG} frames: 1 thread {x1:.1f} frames/s, all threads {xn:.1f} "
                f"| {growth}; speed vs x265 1 thread: {long['fps'] / x1:.3f} |"
            )
    return rows


def _lengths(text: str, parser: argparse.ArgumentParser, flag: str) -> tuple[int, ...]:
    lengths = tuple(int(n) for n in text.split(",") if n)
    if not lengths or min(lengths) < 1 or max(lengths) > LONG:
        parser.error(f"{flag}: frame counts from 1 to {LONG}, got {text!r}")
    return lengths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default=",".join(SOURCES), help=f"comma-separated, of {', '.join(SOURCES)}")
    parser.add_argument("--codec", help="codec folders, comma-separated, or 'all' (every codec in checkpoints/); default: checkpoints/latent_tiny")
    parser.add_argument("--lengths", default=f"{SHORT},{LONG}", help="frame counts to code at each size (one: no growth figure)")
    parser.add_argument("--other-lengths", default=None, help="--lengths for every codec after the first (default: --lengths)")
    parser.add_argument("--out", type=Path, default=None, help="also write the results (a list, one per codec) as JSON here")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(strict_json.dumps(_child(json.loads(args.child))))
        return 0
    sizes = [s for s in args.sizes.split(",") if s]
    unknown = [s for s in sizes if s not in SOURCES]
    if unknown:
        parser.error(f"unknown sizes {unknown}: choose from {', '.join(SOURCES)}")
    codecs = all_codecs() if args.codec == "all" else [c for c in (args.codec or "").split(",") if c] or [None]
    first = _lengths(args.lengths, parser, "--lengths")
    others = _lengths(args.other_lengths, parser, "--other-lengths") if args.other_lengths else first
    x265: dict[str, Any] = {}
    results = [bench_sizes(sizes, codec, x265, first if i == 0 else others) for i, codec in enumerate(codecs)]
    print(strict_json.dumps(results if len(results) > 1 else results[0], indent=2, default=str))
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(strict_json.dumps(results, indent=2, default=str))
    print()
    print_table([row for r in results for row in table_rows(r)])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
