"""Training input of the latent-codec stage: latent shards vs tokenizing clips on the fly.

The latent codec trains on tokenizer latents. Two ways to feed it, measured on the same clips
(the sample training videos cut as ``make -C data samples`` cuts them: 17 frames, short side 272)
in latent clips per second delivered to the model, batch 4, one torch thread, in this process
(as one DataLoader worker would run, plus the tokenizer forward for the on-the-fly side):

- on the fly: ``VideoDataModule`` (64x64 random crops) + ``tokenizer.encode(video).mode()``
  under ``torch.no_grad``;
- latent shards: ``LatentDataModule`` over shards written by ``write_latent_shards`` of the
  64x64 centre crops (latent 5 x 8 x 8), and, as a second figure, of 128x128 centre crops
  read with random 8x8 latent crops (the larger-latent layout a real run would use: a window
  of a real latent, unlike the latent of a small crop, which has borders everywhere).

The tokenizer is ``exports/tokenizer_tiny`` if it exists, else a randomly initialised
CausalVAE of the tiny tokenizer recipe's size (its speed does not depend on its weights).

    python -m benchmarks.bench_latents [--quick]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from gvc_train import strict_json

REPO = Path(__file__).resolve().parents[1]
# recipes/tiny/tokenizer.yaml's model
TINY_TOKENIZER = dict(
    latent_channels=16, base_channels=8, channel_mults=[1, 2, 4, 4], num_res_blocks=1,
    temporal_downsample=[False, True, True], mid_attention=False, norm="rms", norm_groups=8,
)
CLIP_FRAMES, CROP, BIG, BATCH = 17, 64, 128, 4


def tokenizer_folder(tmp: str) -> tuple[str, str]:
    """(folder, what it is): the exported tiny tokenizer, else a random one of its size."""
    exported = REPO / "exports" / "tokenizer_tiny"
    if (exported / "tokenizer.json").is_file():
        return str(exported), "exports/tokenizer_tiny"
    from gvc_train.components import save_component
    from gvc_train.models import CausalVAE

    torch.manual_seed(0)
    folder = os.path.join(tmp, "tokenizer")
    save_component(CausalVAE(**TINY_TOKENIZER), folder, "tokenizer")
    return folder, "random CausalVAE of the tiny recipe's size"


def _rate(batches: Callable[[], Any], clips: int, repeats: int) -> float:
    """Best clips/s over ``repeats`` runs of ``batches()`` (a generator of per-batch clip counts)."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        got = sum(batches())
        best = min(best, (time.perf_counter() - start) / got)
        assert got == clips, (got, clips)
    return 1.0 / best


def bench_latents(
    frame_shards: str,
    videos: Sequence[str],
    num_clips: int = 48,
    repeats: int = 3,
    workdir: str | None = None,
) -> dict[str, Any]:
    """Clips/s of both ways (see the module docstring) and their ratio; writes the latent
    shards of ``videos`` into ``workdir`` (a temporary folder by default)."""
    from gvc_train.data.datamodule import VideoDataModule
    from gvc_train.data.latent_datamodule import LatentDataModule
    from gvc_train.data.latent_shards import load_tokenizer, write_latent_shards

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            work = workdir or tmp
            folder, which = tokenizer_folder(work)
            tokenizer, _ = load_tokenizer(folder)
            written = {}
            for crop in (CROP, BIG):
                out = os.path.join(work, f"latents{crop}")
                start = time.perf_counter()
                index = write_latent_shards(
                    list(videos), out, tokenizer=folder, clip_frames=CLIP_FRAMES, resize_short=272, crop=crop,
                    maxcount=4, workers=min(2, os.cpu_count() or 1), overwrite=True, progress=False,
                    log=lambda line: None,
                )
                written[crop] = (out, index, time.perf_counter() - start)

            def frames_dm() -> VideoDataModule:
                return VideoDataModule(train_shards=frame_shards, clip_frames=CLIP_FRAMES, crop_size=CROP,
                                       batch_size=BATCH, num_workers=0, samples_per_epoch=num_clips, rank=0,
                                       world_size=1)

            def on_the_fly(encode: bool = True):
                for batch in frames_dm().train_dataloader():
                    if encode:
                        with torch.no_grad():
                            latent = tokenizer.encode(batch["video"]).mode()
                        assert latent.shape[1:] == (16, 5, 8, 8)
                    yield batch["video"].shape[0]

            latent_clips = num_clips * 10  # much faster: more clips for a stable time

            def from_latents(crop: int, crop_size: int | None):
                dm = LatentDataModule(train_shards=written[crop][0], crop_size=crop_size, batch_size=BATCH,
                                      num_workers=0, samples_per_epoch=latent_clips, rank=0, world_size=1,
                                      tokenizer_fingerprint=folder)
                dm.setup("fit")
                for batch in dm.train_dataloader():
                    assert batch["latent"].shape[1:] == (16, 5, 8, 8)
                    yield batch["latent"].shape[0]

            for run in (lambda: on_the_fly(), lambda: from_latents(CROP, None)):  # warm-up, untimed
                for _ in run():
                    break
            fly = _rate(lambda: on_the_fly(), num_clips, repeats)
            frames_only = _rate(lambda: on_the_fly(encode=False), num_clips, repeats)
            lat64 = _rate(lambda: from_latents(CROP, None), latent_clips, repeats)
            lat_big = _rate(lambda: from_latents(BIG, 8), latent_clips, repeats)
            frame_bytes = sum(os.path.getsize(p) for p in _expand(frame_shards))
            frame_clips = _index_clips(frame_shards)
            result = {
                "tokenizer": which,
                "clips": num_clips,
                "clip": f"{CLIP_FRAMES} frames, {CROP}x{CROP} -> latent 16x5x8x8, batch {BATCH}",
                "onthefly_clips_per_s": fly,
                "frames_pipeline_only_clips_per_s": frames_only,
                "tokenizer_encode_ms_per_clip": 1000.0 * (1.0 / fly - 1.0 / frames_only),
                "latent_clips_per_s": lat64,
                f"latent_{BIG}crop_shards_8x8_latent_crops_clips_per_s": lat_big,
                "ratio": lat64 / fly,
                f"ratio_{BIG}crop_shards": lat_big / fly,
                "shard_bytes_per_clip": {
                    "frames (272 short side, whole frames)": frame_bytes / max(1, frame_clips),
                    f"latents {CROP}x{CROP}": written[CROP][1].total_bytes / written[CROP][1].total_clips,
                    f"latents {BIG}x{BIG}": written[BIG][1].total_bytes / written[BIG][1].total_clips,
                },
                "latent_shard_write_clips_per_s": {
                    f"{c}x{c}": written[c][1].total_clips / written[c][2] for c in written
                },
            }
    finally:
        torch.set_num_threads(threads)
    return result


def _expand(spec: str) -> list[str]:
    from gvc_train.data.shard_split import expand_shards

    return expand_shards(spec)


def _index_clips(spec: str) -> int:
    from gvc_train.data.sample_format import ShardIndex

    return ShardIndex.load(os.path.dirname(_expand(spec)[0])).total_clips


def table_row(r: dict[str, Any]) -> str:
    """The line ``benchmarks.run`` prints."""
    return (
        f"| latent-codec training input, {r['clip']} | latent shards: {r['latent_clips_per_s']:.0f} clips/s "
        f"({BIG}x{BIG}-crop shards, 8x8 latent crops: {r[f'latent_{BIG}crop_shards_8x8_latent_crops_clips_per_s']:.0f}) "
        f"| on-the-fly tokenization (VideoDataModule + {r['tokenizer']} encode, 1 thread): "
        f"{r['onthefly_clips_per_s']:.1f} clips/s | {r['ratio']:.0f} |"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer clips and repeats")
    args = parser.parse_args(argv)
    from benchmarks.run import _ensure_sample_shards
    from gvc_train.data.sample_videos import TRAIN, sample_video

    shards = _ensure_sample_shards()
    clips, repeats = (16, 1) if args.quick else (48, 3)
    r = bench_latents(shards["train"], [str(sample_video(v)) for v in TRAIN], num_clips=clips, repeats=repeats)
    print(strict_json.dumps(r, indent=2))
    print()
    print(table_row(r))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
