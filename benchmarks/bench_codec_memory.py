"""The latent codec at inference: peak memory against video length, and speed beside x265.

**Memory.** Encoding and decoding stream (a chunk of frames at a time), so peak memory must not
grow with the video's length. Each job runs in a fresh process (``--child``) that loads the
codec, reads ``VmHWM`` (peak RSS: the imports of torch, compressai and PyAV and the codec),
runs the job and reads ``VmHWM`` again. Jobs: encode the held-out carphone clip (176x144) at
96 frames and looped to 384 frames (the loop written once, losslessly: libx264rgb qp 0 in .mkv,
so both read the same pixels through the same reader), and decode both streams (frames handed
to a callback that drops them: the codec's memory, not a sink's). The target: < 20% growth
from 96 to 384 frames.

glibc's malloc makes the peak of one job vary from run to run (measured: 1144-1513 MB for the
same decode) through its dynamic mmap threshold: freed large blocks raise it, later ones then
come from the heap and fragment it. So each job runs once with ``MALLOC_MMAP_THRESHOLD_=131072``
(large blocks always mmapped and returned: the peak of live memory, the same every run; the
growth ratio is taken from these) and ``repeats`` times with the default malloc (what a user
sees: min and max reported).

**Memory at two frame sizes.** The same fixed-threshold peak of one encode and one decode of 96
frames of bikes (640x272, from its mp4), beside carphone's 96-frame jobs above (176x144; the
same peak, within 1 MB, as from carphone's mp4). Two extra jobs: bikes' speed runs use the
default malloc, which is faster (measured: 19 vs 10 frames/s for carphone's encode).

**Speed.** Frames/s of encode (video file -> .gvc, the source's decoding included) and decode
(.gvc -> uint8 RGB frames) for 96 frames of carphone (176x144) and of bikes (640x272), beside
x265 (PyAV's libx265, preset medium, default CRF 28; RGB -> yuv420p conversion included)
coding and FFmpeg's HEVC decoder decoding the same frames held in memory (-> rgb24 arrays),
on one thread (like the codec, which codes on one intra-op thread for bit-exactness) and with
the encoder's and decoder's own threading.

The codec is ``checkpoints/latent_tiny`` if it exists (the reference), else a random codec of
the tiny recipes' sizes (recipes/tiny/tokenizer.yaml, recipes/tiny/latent_codec.yaml): its
speed and memory do not depend on its weights, its bits do.

    python -m benchmarks.bench_codec_memory [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from fractions import Fraction
from pathlib import Path
from typing import Any

from benchmarks.table import print_table
from gvc_train import strict_json

REPO = Path(__file__).resolve().parents[1]
REFERENCE = REPO / "checkpoints" / "latent_tiny"
TINY_TOKENIZER = dict(
    latent_channels=16, base_channels=8, channel_mults=[1, 2, 4, 4], num_res_blocks=1,
    temporal_downsample=[False, True, True], mid_attention=False, norm_groups=8,
)  # fmt: skip
TINY_CODEC = dict(latent_channels=16, channels=32, y_channels=32, z_channels=16, memory_channels=16, num_res_blocks=1, num_qualities=4)
CLIP_FRAMES, LOOPS = 96, 4


def codec_folder(tmp: str) -> tuple[str, str]:
    """(folder, what it is): the reference codec, else a random one of the tiny recipes' sizes."""
    if (REFERENCE / "codec.json").is_file():
        return str(REFERENCE), "checkpoints/latent_tiny"
    import torch

    from gvc_train.codecs.codec_folder import write_codec_json
    from gvc_train.components import save_component
    from gvc_train.models import CausalVAE, LatentVideoCodec

    folder = os.path.join(tmp, "latent_codec_random")
    with torch.random.fork_rng():
        torch.manual_seed(0)
        vae, codec = CausalVAE(**TINY_TOKENIZER).eval(), LatentVideoCodec(**TINY_CODEC).eval()
    codec.update(force=True)
    save_component(vae, folder, "tokenizer")
    save_component(codec, folder, "latent_codec")
    write_codec_json(folder, "latent", {"qualities": TINY_CODEC["num_qualities"]}, {"recipe": "random, benchmarks/bench_codec_memory.py"})
    return folder, "random codec of the tiny recipes' sizes (no checkpoints/latent_tiny)"


def read_frames(video: str | Path, count: int) -> list[Any]:
    from gvc_train.data.video_io import VideoReader

    with VideoReader(video) as reader:
        frames = [f.copy() for f in reader.frames(count)]
    if len(frames) != count:
        raise RuntimeError(f"{video} has {len(frames)} frames, {count} wanted")
    return frames


def write_lossless(frames: list[Any], path: Path, fps: float) -> None:
    """RGB frames into .mkv with libx264rgb at qp 0: mathematically lossless, read back exactly."""
    import av

    with av.open(str(path), mode="w", format="matroska") as container:
        stream = container.add_stream("libx264rgb", rate=Fraction(fps).limit_denominator(1001))
        stream.width, stream.height, stream.pix_fmt = frames[0].shape[1], frames[0].shape[0], "rgb24"
        stream.options = {"qp": "0", "preset": "veryfast"}
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())


# ---- one job in a fresh process ---------------------------------------------------------------


def vmhwm_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _child(job: dict[str, Any]) -> dict[str, Any]:
    from gvc_train.codecs.latent import LatentCodec

    codec = LatentCodec(job["codec"])
    base = vmhwm_mb()
    started = time.perf_counter()
    if job["kind"] == "encode":
        report = codec.encode(job["input"], job["output"], job["quality"], max_frames=job["frames"])
    else:
        report = codec.decode(job["input"], lambda frame: None)
    seconds = time.perf_counter() - started
    return {"frames": report.frames, "seconds": seconds, "fps": report.frames / seconds, "peak_mb": vmhwm_mb(),
            "loaded_mb": base, "bytes": report.file_bytes, "bpp": report.bpp}  # fmt: skip


FIXED_MALLOC = {"MALLOC_MMAP_THRESHOLD_": "131072"}


def run_job(env_extra: dict[str, str] | None = None, module: str = "benchmarks.bench_codec_memory", **job: Any) -> dict[str, Any]:
    """``module``'s ``--child job`` (this one's :func:`_child` by default) in a fresh interpreter
    (its environment plus ``env_extra``); its result."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    env.pop("MALLOC_MMAP_THRESHOLD_", None)
    env.update(env_extra or {})
    proc = subprocess.run(
        [sys.executable, "-W", "ignore", "-m", module, "--child", json.dumps(job, default=str)],
        cwd=REPO, env=env, capture_output=True, text=True,
    )  # fmt: skip
    if proc.returncode != 0:
        raise RuntimeError(f"{job['kind']} job failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ---- x265 -----------------------------------------------------------------------------------


def x265_fps(frames: list[Any], fps: float, threads: int | None, repeats: int) -> dict[str, Any]:
    """libx265 (preset medium) encode and HEVC decode of in-memory RGB frames: best frames/s of each.

    ``threads``: 1 for one thread (x265 pools=1, frame-threads=1; decoder thread_count=1), None
    for the libraries' defaults (every core).
    """
    import av

    height, width = frames[0].shape[:2]
    best_enc = best_dec = float("inf")
    for _ in range(repeats):
        enc = av.CodecContext.create("libx265", "w")
        enc.width, enc.height, enc.pix_fmt = width, height, "yuv420p"
        rate = Fraction(fps).limit_denominator(1001)
        enc.time_base, enc.framerate = 1 / rate, rate
        params = "log-level=error" + (":pools=1:frame-threads=1" if threads == 1 else "")
        enc.options = {"preset": "medium", "x265-params": params}
        packets = []
        started = time.perf_counter()
        for i, frame in enumerate(frames):
            vf = av.VideoFrame.from_ndarray(frame, format="rgb24").reformat(format="yuv420p")
            vf.pts = i
            packets += enc.encode(vf)
        packets += enc.encode(None)
        best_enc = min(best_enc, time.perf_counter() - started)
        data = [bytes(p) for p in packets]
        dec = av.CodecContext.create("hevc", "r")
        if threads == 1:
            dec.thread_count = 1
        else:
            dec.thread_type = "AUTO"
        started = time.perf_counter()
        out = []
        for chunk in data:
            for frame in dec.decode(av.Packet(chunk)):
                out.append(frame.to_ndarray(format="rgb24"))
        for frame in dec.decode(None):
            out.append(frame.to_ndarray(format="rgb24"))
        best_dec = min(best_dec, time.perf_counter() - started)
        if len(out) != len(frames):
            raise RuntimeError(f"x265 round trip gave {len(out)} of {len(frames)} frames")
    size = sum(len(d) for d in data)
    return {"encode_fps": len(frames) / best_enc, "decode_fps": len(frames) / best_dec, "bytes": size,
            "bpp": size * 8 / (len(frames) * width * height)}  # fmt: skip


# ---- the benchmark --------------------------------------------------------------------------


def bench_codec(quick: bool = False, workdir: str | None = None) -> dict[str, Any]:
    from gvc_train.data.sample_videos import sample_video
    from gvc_train.data.video_io import probe

    # One default-malloc run per memory job; speed rows reuse the memory jobs' runs of the same
    # 96 frames instead of coding them again: make bench must stay under 15 minutes.
    repeats, x265_repeats = 1, 1 if quick else 2
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(workdir or tmp)
        folder, which = codec_folder(str(work))
        quality = json.loads((Path(folder) / "codec.json").read_text()).get("qualities", 2) // 2
        result: dict[str, Any] = {"codec": which, "quality": quality, "memory": {}, "speed": {}}

        carphone = sample_video("carphone_pristine.mp4")
        fps = probe(carphone).fps
        clip = read_frames(carphone, CLIP_FRAMES)
        loop = work / f"carphone_{CLIP_FRAMES}x{LOOPS}.mkv"
        write_lossless(clip * LOOPS, loop, fps)
        for frames in (CLIP_FRAMES, CLIP_FRAMES * LOOPS):
            print(f"codec memory: encode, decode {frames} frames ...", flush=True)
            stream = work / f"carphone_{frames}.gvc"
            jobs = {"encode": dict(kind="encode", codec=folder, input=loop, output=stream, quality=quality, frames=frames),
                    "decode": dict(kind="decode", codec=folder, input=stream)}  # fmt: skip
            runs: dict[str, list[dict[str, Any]]] = {kind: [] for kind in jobs}
            for env in [FIXED_MALLOC] + [{}] * repeats:  # the encode first: it writes the stream
                for kind, job in jobs.items():
                    runs[kind].append(run_job(env, **job))
            if frames == CLIP_FRAMES:
                carphone_runs = runs
            result["memory"][frames] = {
                kind: {**r[0], "default_malloc_peak_mb": [min(x["peak_mb"] for x in r[1:]), max(x["peak_mb"] for x in r[1:])],
                       "default_malloc_fps": max(x["fps"] for x in r[1:])}
                for kind, r in runs.items()
            }  # fmt: skip
        for kind in ("encode", "decode"):
            short, long = (result["memory"][n][kind] for n in (CLIP_FRAMES, CLIP_FRAMES * LOOPS))
            result["memory"][f"{kind}_growth"] = long["peak_mb"] / short["peak_mb"] - 1
            result["memory"][f"{kind}_job_growth"] = (long["peak_mb"] - long["loaded_mb"]) / (short["peak_mb"] - short["loaded_mb"]) - 1
            result["memory"][f"{kind}_default_malloc_growth"] = long["default_malloc_peak_mb"][0] / short["default_malloc_peak_mb"][0] - 1

        for name in ("carphone_pristine.mp4", "bikes.mp4"):
            source = sample_video(name)
            frames = read_frames(source, CLIP_FRAMES)
            info = probe(source)
            print(f"codec speed: {name} ...", flush=True)
            peak = None
            if name != carphone.name:  # carphone's: the memory rows' 96-frame jobs above
                # peak memory at this frame size, measured like the memory rows (fixed mmap threshold)
                stream = work / f"memory_{name}.gvc"
                peak = {"encode": run_job(FIXED_MALLOC, kind="encode", codec=folder, input=source, output=stream,
                                          quality=quality, frames=CLIP_FRAMES)}  # fmt: skip
                peak["decode"] = run_job(FIXED_MALLOC, kind="decode", codec=folder, input=stream)
            # speed: the default-malloc runs of the memory jobs (carphone), else the peak runs
            enc_runs, dec_runs = (carphone_runs["encode"][1:], carphone_runs["decode"][1:]) if peak is None else ([peak["encode"]], [peak["decode"]])
            ours: dict[str, Any] = {
                "encode_fps": max(r["fps"] for r in enc_runs), "decode_fps": max(r["fps"] for r in dec_runs),
                "bpp": enc_runs[0]["bpp"], "encode_peak_mb": enc_runs[0]["peak_mb"], "decode_peak_mb": dec_runs[0]["peak_mb"],
            }  # fmt: skip
            result["speed"][name] = {
                "name": name,
                "size": f"{info.width}x{info.height}",
                "frames": CLIP_FRAMES,
                "pixels": info.width * info.height,
                "gvc": ours,
                "gvc_peak_fixed_malloc": peak or {kind: result["memory"][CLIP_FRAMES][kind] for kind in ("encode", "decode")},
                "gvc_peak_from": "its mp4" if peak else f"the memory rows' {CLIP_FRAMES}-frame jobs",
                "x265_1thread": x265_fps(frames, info.fps, 1, x265_repeats),
                "x265_threads": x265_fps(frames, info.fps, None, x265_repeats),
            }
    return result


def table_rows(r: dict[str, Any]) -> list[str]:
    """The lines ``benchmarks.run`` prints."""
    m, n, rows = r["memory"], CLIP_FRAMES, []
    for kind in ("encode", "decode"):
        short, long = m[n][kind], m[n * LOOPS][kind]

        def default(x: dict[str, Any]) -> str:
            return "{:.0f}-{:.0f} MB".format(*x["default_malloc_peak_mb"])

        rows.append(
            f"| latent codec {kind} peak memory (VmHWM of a fresh process; fixed mmap threshold), carphone 176x144, "
            f"{r['codec']} | {n * LOOPS} frames: {long['peak_mb']:.0f} MB ({long['default_malloc_fps']:.1f} frames/s; "
            f"default malloc {default(long)}) | {n} frames: {short['peak_mb']:.0f} MB ({short['default_malloc_fps']:.1f} "
            f"frames/s; default malloc {default(short)}); after imports + codec load: {short['loaded_mb']:.0f} MB "
            f"| {1 + m[f'{kind}_growth']:.3f} (the job's own: {1 + m[f'{kind}_job_growth']:.3f}; default malloc, "
            f"min/min: {1 + m[f'{kind}_default_malloc_growth']:.3f}) |"
        )
    speed = list(r["speed"].values())
    small, big = min(speed, key=lambda s: s["pixels"]), max(speed, key=lambda s: s["pixels"])
    for kind in ("encode", "decode"):
        one, base = big["gvc_peak_fixed_malloc"][kind], small["gvc_peak_fixed_malloc"][kind]
        rows.append(
            f"| latent codec {kind} peak memory (VmHWM of a fresh process; fixed mmap threshold), {n} frames, "
            f"{big['size']} ({big['name']}, {r['codec']}) | {one['peak_mb']:.0f} MB (the job's own, above imports + codec load: "
            f"{one['peak_mb'] - one['loaded_mb']:.0f} MB; default malloc: {big['gvc'][f'{kind}_peak_mb']:.0f} MB) "
            f"| {small['size']} ({small['name']}, {small['gvc_peak_from']}): {base['peak_mb']:.0f} MB (the job's own: "
            f"{base['peak_mb'] - base['loaded_mb']:.0f} MB) | {one['peak_mb'] / base['peak_mb']:.2f} (the job's own: "
            f"{(one['peak_mb'] - one['loaded_mb']) / (base['peak_mb'] - base['loaded_mb']):.2f}; pixels per frame: "
            f"x{big['pixels'] / small['pixels']:.2f}) |"
        )
    for name, s in r["speed"].items():
        for kind in ("encode", "decode"):
            ours, one, many = s["gvc"][f"{kind}_fps"], s["x265_1thread"][f"{kind}_fps"], s["x265_threads"][f"{kind}_fps"]
            rows.append(
                f"| latent codec {kind}, {name} {s['size']}, {s['frames']} frames ({s['gvc']['bpp']:.3f} bpp) "
                f"| {ours:.2f} frames/s | x265 medium, 1 thread: {one:.1f} frames/s; all threads: {many:.1f} "
                f"({s['x265_1thread']['bpp']:.3f} bpp) | {ours / one:.3f} (vs all threads: {ours / many:.3f}) |"
            )
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="one repeat")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(strict_json.dumps(_child(json.loads(args.child))))
        return 0
    r = bench_codec(quick=args.quick)
    print(strict_json.dumps(r, indent=2, default=str))
    print()
    print_table(table_rows(r))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
