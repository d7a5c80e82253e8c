"""The zero-shot family's speed: codebook scoring (where encoding time goes) and the codec's
encode and decode, each beside a baseline measured in the same run.

* **Scoring**: the encoder draws every atom of a step's codebook (``K x D`` counter-based
  Gaussian values) and takes its inner product with the residual; beside it ``torch.randn`` of
  the same count (mt19937 + Box-Muller, not addressable atom by atom), at 1 and 2 threads.
* **Codec**: ``checkpoints/zeroshot_tiny`` (i2v, the default rate point) on the held-out clip,
  encode and decode frames/s, beside ``checkpoints/latent_tiny_v1``'s (the same tokenizer) at its default quality.

    python -m benchmarks.bench_zeroshot [--quick]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks.table import print_table

REPO = Path(__file__).resolve().parents[1]
CODEC, BESIDE = REPO / "checkpoints" / "zeroshot_tiny", REPO / "checkpoints" / "latent_tiny_v1"
LATENT_DIM = 16 * 18 * 22  # one latent frame of a 176x144 video


def _best(fn: Any, repeats: int) -> float:
    runs = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        runs.append(time.perf_counter() - started)
    return min(runs)


def bench_scoring(codebook_size: int = 4096, repeats: int = 3) -> dict[str, Any]:
    from gvc_train.models.codebook.noise_codebook import atom_scores, codebook_key

    residual = torch.randn(LATENT_DIM)
    values = codebook_size * LATENT_DIM
    out: dict[str, Any] = {"codebook_size": codebook_size, "dim": LATENT_DIM}
    previous = torch.get_num_threads()
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            ours = _best(lambda: atom_scores(codebook_key(0, "bench"), residual, codebook_size), repeats)
            randn = _best(lambda: torch.randn(codebook_size, LATENT_DIM, generator=torch.Generator().manual_seed(0)) @ residual, repeats)
            out[f"threads_{threads}"] = {"scored_mvalues_per_s": values / ours / 1e6, "randn_mvalues_per_s": values / randn / 1e6}
    finally:
        torch.set_num_threads(previous)
    return out


def bench_codec(frames: int = 33) -> dict[str, Any]:
    from gvc_train.codecs.base import open_codec
    from gvc_train.data.sample_videos import HELD_OUT, sample_video

    video = sample_video(HELD_OUT)
    result: dict[str, Any] = {"video": HELD_OUT, "frames": frames}
    with tempfile.TemporaryDirectory() as tmp:
        for key, folder, options in (("zeroshot", CODEC, {"mode": "i2v"}), ("latent", BESIDE, {})):
            codec = open_codec(folder)
            q = codec.default_rate_point
            enc = codec.encode(video, Path(tmp) / f"{key}.gvc", q, max_frames=frames, **options)
            dec = codec.decode(Path(tmp) / f"{key}.gvc", lambda frame: None)  # a sink: the latent codec skips pixels without one
            result[key] = {"codec": folder.name, "quality": q, "bpp": enc.bpp, "encode_fps": frames / enc.seconds, "decode_fps": frames / dec.seconds}
            if key == "zeroshot":
                s = codec.settings
                result[key].update(atoms=s.atoms[q], codebook_size=s.codebook_size, num_steps=s.num_steps, gop_frames=s.gop_frames)
    return result


def bench_zeroshot(quick: bool = False) -> dict[str, Any]:
    return {"scoring": bench_scoring(repeats=1 if quick else 2), "codec": bench_codec(frames=17)}  # make bench stays under 15 min


def table_rows(r: dict[str, Any]) -> list[str]:
    s, c = r["scoring"], r["codec"]
    z, lat = c["zeroshot"], c["latent"]
    rows = [
        f"| zero-shot codebook scoring, K = {s['codebook_size']} atoms of {s['dim']} values (one latent frame of 176x144) "
        f"| counter-based atoms drawn and scored: {s['threads_1']['scored_mvalues_per_s']:.1f} M values/s (1 thread), "
        f"{s['threads_2']['scored_mvalues_per_s']:.1f} (2) | torch.randn + the same product: {s['threads_1']['randn_mvalues_per_s']:.1f} / "
        f"{s['threads_2']['randn_mvalues_per_s']:.1f} | {s['threads_2']['scored_mvalues_per_s'] / s['threads_2']['randn_mvalues_per_s']:.2f} |",
        f"| zero-shot codec, {c['video']} {c['frames']} frames, i2v, {z['atoms']} atoms of K = {z['codebook_size']}, {z['num_steps']} steps, "
        f"GOP {z['gop_frames']} ({z['codec']}, {z['bpp']:.3f} bpp) | encode {z['encode_fps']:.2f} frames/s, decode {z['decode_fps']:.2f} "
        f"| {lat['codec']} quality {lat['quality']} ({lat['bpp']:.3f} bpp): encode {lat['encode_fps']:.1f}, decode {lat['decode_fps']:.1f} "
        f"| {z['decode_fps'] / lat['decode_fps']:.2f} |",
    ]
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    result = bench_zeroshot(quick=args.quick)
    print()
    print_table(table_rows(result))
    print(f"\n({time.perf_counter() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
