"""What the context model buys: the bits of a progressive stream's tokens under the context model
beside the same tokens under simpler models (the gain that is the point of the family).

One ``gvc encode`` at the top rate point records every token it codes and the integer
frequencies it coded it with (``ProgressiveCodec.token_sink``), then sets three rates side by
side, per scale and in all, in bits per video pixel:

- ``model``: the context model's bits as coded (``-log2`` of the coded frequency: what the ANS
  strings cost before their flush);
- ``uniform``: ``log2 V`` a token (codebook) or one bit a bit (bitwise);
- ``unigram``: a per-scale histogram of these very tokens (per scale and bit channel for the
  bitwise kind), its empirical entropy: an oracle that fits the tokens it codes and sends no
  table, so any unigram model a coder could ship costs at least this much.

    python -m gvc_train.codecs.progressive_baselines --codec checkpoints/progressive_tiny --frames 96 [--out rate.json]
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gvc_train.coding.categorical import model_bits


def _entropy_bits(counts: np.ndarray) -> float:
    """``sum -c log2(c / n)`` over the counts of one distribution (0 log 0 = 0)."""
    counts = counts[counts > 0].astype(np.float64)
    return float(-(counts * np.log2(counts / counts.sum())).sum()) if counts.size else 0.0


def rate_baselines(codec_dir: str | Path, video: str | Path, frames: int) -> dict[str, Any]:
    """The three rates (module docstring) of the first ``frames`` frames of ``video`` coded at
    the codec's top rate point, and the file's own figures."""
    from gvc_train.codecs.base import open_codec

    codec = open_codec(codec_dir)
    kind, scales = codec.context_model.kind, codec.num_scales
    bits_per_token = codec.context_model.code_dim if kind == "bitwise" else 1
    symbols = codec.context_model.outputs if kind == "codebook" else 2
    counts = np.zeros((scales, bits_per_token, symbols), dtype=np.int64)  # per scale (and bit channel)
    model = np.zeros(scales)

    def sink(k: int, tokens: torch.Tensor, freqs: torch.Tensor) -> None:
        model[k] += model_bits(tokens, freqs)
        flat = tokens.reshape(-1, bits_per_token).numpy()
        for channel in range(bits_per_token):
            counts[k, channel] += np.bincount(flat[:, channel], minlength=symbols)

    codec.token_sink = sink
    with tempfile.TemporaryDirectory() as tmp:
        report = codec.encode(video, Path(tmp) / "top.gvc", codec.num_rate_points - 1, max_frames=frames)
    pixels = report.frames * report.width * report.height
    tokens = counts[:, 0].sum(1)  # positions a scale coded
    uniform = tokens * bits_per_token * math.log2(symbols)
    unigram = np.array([sum(_entropy_bits(counts[k, c]) for c in range(bits_per_token)) for k in range(scales)])
    per_scale = [
        {"scale": k + 1, "tokens": int(tokens[k]), "bpp_model": model[k] / pixels, "bpp_uniform": uniform[k] / pixels, "bpp_unigram": unigram[k] / pixels}
        for k in range(scales)
    ]
    return {
        "codec": Path(codec_dir).name,
        "video": Path(video).name,
        "frames": report.frames,
        "quality": report.quality,
        "file_bytes": report.file_bytes,
        "payload_bits": report.payload_bytes * 8,
        "overhead_bytes": report.overhead_bytes,
        "bpp_file": report.bpp,
        "bpp_model": float(model.sum()) / pixels,
        "bpp_uniform": float(uniform.sum()) / pixels,
        "bpp_unigram": float(unigram.sum()) / pixels,
        "model_vs_uniform": float(model.sum() / uniform.sum()),
        "model_vs_unigram": float(model.sum() / unigram.sum()),
        "per_scale": per_scale,
    }


def main(argv: list[str] | None = None) -> int:
    from gvc_train.data.sample_videos import HELD_OUT, sample_video
    from gvc_train.strict_json import write_json

    parser = argparse.ArgumentParser(prog="gvc_train.codecs.progressive_baselines", description=__doc__.split("\n\n")[0])
    parser.add_argument("--codec", required=True, help="a progressive codec folder")
    parser.add_argument("--video", default=None, help=f"default: the held-out {HELD_OUT}")
    parser.add_argument("--frames", type=int, default=96)
    parser.add_argument("--out", default=None, help="write the figures as JSON here")
    args = parser.parse_args(argv)
    result = rate_baselines(args.codec, args.video or sample_video(HELD_OUT), args.frames)
    print(f"{result['codec']} on {result['frames']} frames of {result['video']}, quality {result['quality']}: bits per pixel")
    print("| scale | tokens | context model | uniform | per-scale unigram (oracle) |\n|---|---|---|---|---|")
    for row in [*result["per_scale"], {"scale": "all", "tokens": sum(r["tokens"] for r in result["per_scale"]), **result}]:
        print(f"| {row['scale']} | {row['tokens']} | {row['bpp_model']:.5f} | {row['bpp_uniform']:.5f} | {row['bpp_unigram']:.5f} |")
    print(f"context model / uniform {result['model_vs_uniform']:.3f}, / unigram {result['model_vs_unigram']:.3f}; "
          f"file {result['bpp_file']:.5f} bpp ({result['file_bytes']} bytes, payload {result['payload_bits']} bits)")  # fmt: skip
    if args.out:
        write_json(args.out, result, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
