"""``make bench`` rows for controls: extraction speed per control, and controls decoded from shards
against extracting them on the fly, each beside a baseline measured in the same run.

On ``--clips`` clips of 17 frames from the start of carphone (176x144) and bikes (640x272), at
every control's default settings (caption: from a ``.txt`` beside the video, no captioner):

- **extraction**: frames/s of each control's extractor alone, and with its coder's encode after
  it, beside a 1-thread PyAV decode of the same frames from the mp4 (:func:`bench_data.
  time_plain_decode`), all in one process, torch and OpenCV at 1 thread (as a loader or shard
  worker); pose and segmentation run mediapipe in its worker process (``.venv-mediapipe``,
  :mod:`gvc_train.controls.mediapipe_client`), started once before the timed loops (its start-up
  is timed apart);
- **training side**: the clips sharded with their controls (``gvc-shard --controls``, through
  :func:`control_shards.timed_shard`), then each sample's controls decoded by the data module's
  path (:func:`gvc_train.data.control_batch.decode_controls` on the tar members, held in memory)
  against extracting + coding + decoding them on the fly from the same frames (the same tensors:
  checked equal), in clips/s, per control and for the set luma, edges, flow, pose, segmentation.
  The frames' own decode is the same both ways and is left out of both (recorded apart).

Each side is the best of ``repeats`` interleaved runs (the machine is shared).

    python -m benchmarks.bench_controls [--quick] [--clips 2] [--repeats 2]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from typing import Any

import cv2
import torch

from benchmarks.bench_data import _first_samples, time_plain_decode
from benchmarks.control_shards import CAPTIONS, ORDER, VIDEOS, captioned_video, stored_bytes, timed_shard
from benchmarks.table import print_table
from gvc_train.coding.controls.registry import BUILTIN_CODERS, build_coder
from gvc_train.controls import mediapipe_client
from gvc_train.controls.registry import build_extractor
from gvc_train.data.clip_codec import decode_clip
from gvc_train.data.control_batch import decode_controls
from gvc_train.data.sample_format import FRAMES_PREFIX, frames_field
from gvc_train.data.shard_controls import control_specs
from gvc_train.data.shard_split import expand_shards
from gvc_train.data.video_io import read_frames
from gvc_train.frames import frames_to_tensor

CLIP_FRAMES = 17
TRAINING_SET = ("luma", "edges", "flow", "pose", "segmentation")  # what a controlled-generation stage reads
MEDIAPIPE = ("pose", "segmentation")  # their extractors run mediapipe (in .venv-mediapipe)
STAGES = ("extract", "encode", "decode")


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, list):
        return isinstance(b, list) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


def _time_controls(clips_CThw: list[torch.Tensor], tools: dict[str, tuple], caption: str) -> tuple[dict[str, dict[str, float]], dict[str, list]]:
    """Seconds of each control's extract, encode and decode over ``clips_CThw``, and what the
    decode gave back per clip (the tensors training would get)."""
    seconds: dict[str, dict[str, float]] = {}
    decoded: dict[str, list] = {}
    for name, (extractor, coder) in tools.items():
        spent = dict.fromkeys(STAGES, 0.0)
        decoded[name] = []
        for clip in clips_CThw:
            t0 = time.perf_counter()
            control = extractor.extract(clip, caption)
            t1 = time.perf_counter()
            data = coder.encode(control)
            t2 = time.perf_counter()
            decoded[name].append(coder.decode(data))
            t3 = time.perf_counter()
            spent["extract"] += t1 - t0
            spent["encode"] += t2 - t1
            spent["decode"] += t3 - t2
        seconds[name] = spent
    return seconds, decoded


def _time_shard_decode(samples: list[dict[str, Any]], names: tuple[str, ...]) -> tuple[float, list[dict[str, Any]]]:
    """Seconds to decode ``names`` from every sample's members (the data module's path)."""
    start = time.perf_counter()
    out = [decode_controls(s, names, CLIP_FRAMES) for s in samples]
    return time.perf_counter() - start, out


def _time_frames_decode(samples: list[dict[str, Any]]) -> float:
    start = time.perf_counter()
    for sample in samples:
        field = frames_field(sample)
        decode_clip(field[len(FRAMES_PREFIX) :], sample[field])
    return time.perf_counter() - start


def _worker_start_s(tools: dict[str, tuple], clip_CThw: torch.Tensor) -> float | None:
    """Seconds for a fresh mediapipe worker's first frame (start-up: importing mediapipe, the graph)."""
    name = next((n for n in ("segmentation", "pose") if n in tools), None)
    if name is None:
        return None
    mediapipe_client.stop()
    start = time.perf_counter()
    tools[name][0].extract(clip_CThw[:, :1])
    return time.perf_counter() - start


def _extraction(video: str, label: str, clips: int, repeats: int, tools: dict[str, tuple]) -> tuple[dict[str, Any], dict[str, list]]:
    """Extraction, coding and decoding seconds per control (best of ``repeats``) beside a 1-thread
    PyAV decode of the same frames, and the controls the last repeat decoded (per clip)."""
    frames, file = clips * CLIP_FRAMES, VIDEOS[label]
    metas = [{"source": file, "first_frame": i * CLIP_FRAMES, "num_frames": CLIP_FRAMES} for i in range(clips)]
    pixels = read_frames(video, count=frames)
    clips_CThw = [frames_to_tensor(pixels[i * CLIP_FRAMES : (i + 1) * CLIP_FRAMES])[0] for i in range(clips)]
    # untimed warm-up: imports, OpenCV's first calls, mediapipe's graphs
    _time_controls([clips_CThw[0][:, :2]], tools, CAPTIONS[label])
    time_plain_decode(metas[:1], {file: video}, threads="1")
    best = {n: dict.fromkeys(STAGES, float("inf")) for n in tools}
    best_pyav = float("inf")
    for _ in range(repeats):
        seconds, kept, _ = time_plain_decode(metas, {file: video}, threads="1")
        best_pyav = min(best_pyav, seconds / kept * frames)
        spent, on_the_fly = _time_controls(clips_CThw, tools, CAPTIONS[label])
        for n, stages in spent.items():
            best[n] = {s: min(best[n][s], stages[s]) for s in STAGES}
    entry = {
        "size": f"{pixels.shape[2]}x{pixels.shape[1]}",
        "frames": frames,
        "pyav_1thread_fps": frames / best_pyav,
        "extract_fps": {n: frames / b["extract"] for n, b in best.items()},
        "extract_encode_fps": {n: frames / (b["extract"] + b["encode"]) for n, b in best.items()},
        "on_the_fly_s": best,
    }
    return entry, on_the_fly


def _training_side(video: str, out: str, clips: int, repeats: int, specs: tuple, on_the_fly: dict[str, list],
                   on_the_fly_s: dict[str, dict[str, float]]) -> dict[str, Any]:  # fmt: skip
    """The same clips sharded with their controls; each control decoded from the members (best of
    ``repeats``) against making it on the fly, and checked equal to what the timed loop made."""
    names = tuple(s.name for s in specs)
    entry: dict[str, Any] = {
        "shard_s_without_controls": timed_shard(video, out, CLIP_FRAMES, clips * CLIP_FRAMES, ()),
        "shard_s_with_controls": timed_shard(video, out, CLIP_FRAMES, clips * CLIP_FRAMES, specs),
    }
    totals, stored = stored_bytes(out)
    entry["bytes_per_frame"] = {n: totals[n] / stored for n in totals}
    samples = _first_samples(expand_shards(os.path.join(out, "*.tar")), clips)
    shard_best = dict.fromkeys(names, float("inf"))
    frames_best = float("inf")
    _time_shard_decode(samples[:1], names)  # warm-up: the coders' cache
    for repeat in range(repeats):
        for n in names:
            seconds, from_shards = _time_shard_decode(samples, (n,))
            shard_best[n] = min(shard_best[n], seconds)
            if repeat == 0:
                entry.setdefault("same_as_on_the_fly", {})[n] = all(
                    _same(got[n], want) for got, want in zip(from_shards, on_the_fly[n])
                )
        frames_best = min(frames_best, _time_frames_decode(samples))
    fly = {n: sum(on_the_fly_s[n].values()) for n in names}
    fly_extract = {n: on_the_fly_s[n]["extract"] for n in names}
    wanted = [n for n in TRAINING_SET if n in names]
    if wanted:  # the set, both ways: the sum of its controls' best times (decode_controls runs them one by one)
        for table in (shard_best, fly, fly_extract):
            table["set"] = sum(table[n] for n in wanted)
    return {
        **entry,
        "training_set": wanted,
        "shard_clips_per_s": {n: clips / s for n, s in shard_best.items()},
        "on_the_fly_clips_per_s": {n: clips / s for n, s in fly.items()},
        "extract_only_clips_per_s": {n: clips / s for n, s in fly_extract.items()},
        "shard_over_on_the_fly": {n: fly[n] / shard_best[n] for n in shard_best},
        "frames_decode_clips_per_s": clips / frames_best,
    }


def bench_controls(quick: bool = False, clips: int | None = None, repeats: int | None = None,
                   names: tuple[str, ...] | None = None, videos: tuple[str, ...] = tuple(VIDEOS)) -> dict[str, Any]:  # fmt: skip
    """Extraction frames/s per control vs PyAV, and shard decode vs on the fly (module docstring).
    ``names``: the controls (default: every one with a coder); ``videos``: keys of VIDEOS."""
    clips = clips or (1 if quick else 2)
    repeats = repeats or (1 if quick else 2)
    names = names or tuple(n for n in ORDER if n in BUILTIN_CODERS)
    result: dict[str, Any] = {"clips": clips, "clip_frames": CLIP_FRAMES, "repeats": repeats, "videos": {},
                              "threads": "torch and OpenCV 1 thread; mediapipe in its worker process"}  # fmt: skip
    try:
        mediapipe_client.worker_python()
    except mediapipe_client.MediapipeUnavailable as exc:  # a checkout without `make setup`'s second venv
        names = tuple(n for n in names if n not in MEDIAPIPE)
        result["skipped"] = f"{', '.join(MEDIAPIPE)} not measured: {exc}"
    specs = control_specs(list(names))
    tools = {s.name: (build_extractor(s.name, **s.extractor), build_coder(s.name, **s.coder)) for s in specs}
    threads, cv_threads = torch.get_num_threads(), cv2.getNumThreads()
    torch.set_num_threads(1)  # as in a DataLoader or shard worker
    cv2.setNumThreads(1)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for label in videos:
                video = captioned_video(tmp, label)
                if "mediapipe_worker_start_s" not in result:  # once, before any timed loop
                    first = frames_to_tensor(read_frames(video, count=1))[0]
                    result["mediapipe_worker_start_s"] = _worker_start_s(tools, first)
                entry, on_the_fly = _extraction(video, label, clips, repeats, tools)
                out = os.path.join(tmp, label + "-shards")
                entry.update(_training_side(video, out, clips, repeats, specs, on_the_fly, entry["on_the_fly_s"]))
                result["videos"][label] = entry
    finally:
        torch.set_num_threads(threads)
        cv2.setNumThreads(cv_threads)
        mediapipe_client.stop()  # the worker this run started
    return result


def _num(x: float) -> str:
    """Three significant figures or so: 457,420 / 1,191 / 35.2 / 2.05 / 0.031."""
    return f"{x:,.0f}" if x >= 100 else f"{x:.1f}" if x >= 10 else f"{x:.2f}" if x >= 0.1 else f"{x:.3f}"


def _pair(result: dict[str, Any], get: Any) -> str:
    return " / ".join(_num(get(v)) for v in result["videos"].values())


def table_rows(result: dict[str, Any]) -> list[str]:
    """A row per control's extraction; the training set's decode from shards beside extracting it on
    the fly, and beside the frames' own decode."""
    videos = result["videos"]
    sizes = " / ".join(f"{label} {v['size']}" for label, v in videos.items())
    pyav = _pair(result, lambda v: v["pyav_1thread_fps"])
    rows = []
    first = next(iter(videos.values()))
    for name in first["extract_fps"]:
        what = "caption-from-text" if name == "caption" else name
        if name in MEDIAPIPE and result.get("mediapipe_worker_start_s") is not None:
            what += f" (mediapipe worker; its start, {result['mediapipe_worker_start_s']:.1f} s, untimed)"
        fps = _pair(result, lambda v: v["extract_fps"][name])
        coded = _pair(result, lambda v: v["extract_encode_fps"][name])
        ratio = _pair(result, lambda v: v["extract_fps"][name] / v["pyav_1thread_fps"])
        ratio_coded = _pair(result, lambda v: v["extract_encode_fps"][name] / v["pyav_1thread_fps"])
        rows.append(
            f"| control extraction: {what}, {sizes} | {fps} frames/s (+ coding: {coded}) "
            f"| PyAV decode of the same frames, 1 thread: {pyav} frames/s | {ratio} (+ coding: {ratio_coded}) |"
        )
    if "set" in first["shard_clips_per_s"]:
        what = f"{', '.join(first['training_set'])}; {result['clip_frames']}-frame clips, {sizes}"
        shard = _pair(result, lambda v: v["shard_clips_per_s"]["set"])
        rows.append(
            f"| controls decoded from shards ({what}) | {shard} clips/s | extracted, coded and decoded on the fly from "
            f"the same frames: {_pair(result, lambda v: v['on_the_fly_clips_per_s']['set'])} clips/s (extraction alone: "
            f"{_pair(result, lambda v: v['extract_only_clips_per_s']['set'])}) | {_pair(result, lambda v: v['shard_over_on_the_fly']['set'])} |"
        )
        rows.append(
            f"| controls decoded from shards ({what}) | {shard} clips/s | the same samples' frames decoded: "
            f"{_pair(result, lambda v: v['frames_decode_clips_per_s'])} clips/s "
            f"| {_pair(result, lambda v: v['shard_clips_per_s']['set'] / v['frames_decode_clips_per_s'])} |"
        )
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="one clip per video, one repeat")
    parser.add_argument("--clips", type=int, default=None, help="17-frame clips per video (default 2; --quick 1)")
    parser.add_argument("--repeats", type=int, default=None, help="default 2; --quick 1")
    parser.add_argument("--controls", default=None, help="comma-separated (default: every control with a coder)")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    names = tuple(args.controls.split(",")) if args.controls else None
    result = bench_controls(args.quick, args.clips, args.repeats, names)
    print_table(table_rows(result))
    for label, v in result["videos"].items():
        per = ", ".join(f"{n} {_num(v['shard_clips_per_s'][n])} vs {_num(v['on_the_fly_clips_per_s'][n])}" for n in v["shard_clips_per_s"])
        differ = [n for n, ok in v["same_as_on_the_fly"].items() if not ok]
        same = f"all but {', '.join(differ)}" if differ else "all"
        print(f"\n{label}: clips/s from shards vs on the fly: {per}; the same tensors both ways: {same}; "
              f"the frames' own decode: {v['frames_decode_clips_per_s']:,.0f} clips/s")
    if result.get("skipped"):
        print(f"\n{result['skipped']}")
    if result["mediapipe_worker_start_s"] is not None:
        print(f"\nmediapipe worker start-up and first frame: {result['mediapipe_worker_start_s']:.2f} s (once, untimed loops)")
    print(f"\n({time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
