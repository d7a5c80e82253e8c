"""Entropy coding: the bits the project's rANS coder writes and how fast, beside the model and compressai.

The latent codec's y symbols are coded under a Gaussian conditional: each symbol has a mean and a
scale the network predicts, compressai's ``GaussianConditional`` rounds the scale up to the next
entry of its 64-step scale table (0.11 to 256, log spaced) and codes with that entry's 16-bit
CDF. The workload here is that situation without the network: ``symbols`` (10^6 by default)
values, each drawn from a Gaussian with a scale log-uniform over the scale table's range and a
mean uniform in [-8, 8), coded as the codec codes them (``gvc_train/coding/rans.py``:
``CdfTables.of``, ``SymbolEncoder.put/flush``, ``SymbolDecoder.get``; the quantization and the
scale indexes as in ``LatentVideoCodec.compress_frame``).

- **bits**: the stream's bits beside the model's cross-entropy ``-sum log2 p`` of the coded
  symbols, under the scale-table entries actually coded (what the coder can reach: the gap is
  the CDFs' 16-bit precision, the coder's flush and its escapes) and under the exact scales (the
  training loss's rate: the gap adds the table's rounding of the scales);
- **speed**: encode (quantize + CDF tables to lists + coding + flush) and decode (tables +
  decoding + dequantize) in M symbols/s, beside compressai's own ``GaussianConditional.compress`` and
  ``decompress`` of the same symbols (one string: batch 1), the same C++ rANS core behind a
  per-call API. Each side is the best of ``repeats`` interleaved runs, after one untimed run of
  each. Our decode pads the stream with zeros first (``SymbolDecoder``: a forged stream must not
  make the coder read past its buffer), measured at ~15% of its time.

Both round trips must be exact (asserted).

    python -m benchmarks.bench_entropy [--quick] [--symbols 1000000]
"""

from __future__ import annotations

import argparse
import math
import time
from typing import Any

import torch

from benchmarks.table import print_table
from gvc_train import strict_json

SEED = 0
CHANNELS = 64  # the workload as one 1 x 64 x H x W tensor, like a latent frame's y


def workload(symbols: int, seed: int = SEED) -> dict[str, torch.Tensor]:
    """``values``, ``means``, ``scales`` (``1 x 64 x n``, float32): ``symbols`` Gaussian draws."""
    from compressai.models.google import SCALES_MAX, SCALES_MIN

    if symbols % CHANNELS:
        raise ValueError(f"symbols must be a multiple of {CHANNELS}, got {symbols}")
    g = torch.Generator().manual_seed(seed)
    shape = (1, CHANNELS, symbols // CHANNELS)
    log_lo, log_hi = math.log(SCALES_MIN), math.log(SCALES_MAX)
    scales = torch.exp(log_lo + (log_hi - log_lo) * torch.rand(shape, generator=g))
    means = 16.0 * torch.rand(shape, generator=g) - 8.0
    values = means + scales * torch.randn(shape, generator=g)
    return {"values": values, "means": means, "scales": scales}


def gaussian_conditional() -> Any:
    """compressai's ``GaussianConditional`` with the default scale table and its CDFs (as
    ``LatentVideoCodec.update()`` leaves it)."""
    from compressai.entropy_models import GaussianConditional
    from compressai.models.google import get_scale_table

    gc = GaussianConditional(None)
    gc.update_scale_table(get_scale_table(), force=True)
    return gc


def _bits(gc: Any, values: torch.Tensor, scales: torch.Tensor, means: torch.Tensor) -> float:
    """``-sum log2 p`` of the rounded values (eval-mode quantization) under ``scales``."""
    with torch.no_grad():
        _, likelihoods = gc(values, scales, means, training=False)
    return float(torch.log2(likelihoods.double()).sum().neg())


def _timed(fn: Any) -> tuple[float, Any]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def bench_entropy(symbols: int = 1_000_000, repeats: int = 3) -> dict[str, Any]:
    from gvc_train.coding.rans import CdfTables, SymbolDecoder, SymbolEncoder

    w = workload(symbols)
    values, means, scales = w["values"], w["means"], w["scales"]
    gc = gaussian_conditional()
    indexes = gc.build_indexes(scales)
    table_scales = gc.scale_table[indexes.long()]
    truth = gc.quantize(values, "symbols", means)

    def ours_encode() -> bytes:
        coder = SymbolEncoder()
        coder.put(gc.quantize(values, "symbols", means), indexes, CdfTables.of(gc))
        return coder.flush()

    def ours_decode(data: bytes) -> torch.Tensor:
        decoder = SymbolDecoder(data, indexes.numel())
        return gc.dequantize(decoder.get(indexes, CdfTables.of(gc)), means)

    best = {"ours_encode": math.inf, "ours_decode": math.inf, "compressai_encode": math.inf, "compressai_decode": math.inf}
    # One untimed round of each first: ours runs first in every repeat and would otherwise pay
    # the first touches (allocator, caches) alone.
    ours_decode(ours_encode())
    gc.decompress(gc.compress(values, indexes, means), indexes, means=means)
    for _ in range(repeats):  # interleaved, best of each: the cores may be shared
        seconds, data = _timed(ours_encode)
        best["ours_encode"] = min(best["ours_encode"], seconds)
        seconds, decoded = _timed(lambda: ours_decode(data))
        best["ours_decode"] = min(best["ours_decode"], seconds)
        # exact round trip: the dequantized values are round(values - means) + means
        assert torch.equal(decoded, gc.dequantize(truth, means)), "our rANS round trip is not exact"
        seconds, strings = _timed(lambda: gc.compress(values, indexes, means))
        best["compressai_encode"] = min(best["compressai_encode"], seconds)
        seconds, theirs = _timed(lambda: gc.decompress(strings, indexes, means=means))
        best["compressai_decode"] = min(best["compressai_decode"], seconds)
        assert torch.equal(theirs, gc.dequantize(truth, means)), "compressai's round trip is not exact"

    written = 8 * len(data)
    compressai_written = 8 * sum(len(s) for s in strings)
    ce_table = _bits(gc, values, table_scales, means)
    ce_exact = _bits(gc, values, scales, means)
    speeds = {k: symbols / v / 1e6 for k, v in best.items()}
    # symbols outside their CDF's range: coded by the escape (bypass) path of the coder
    shifted = truth - gc._offset[indexes.long()]
    escapes = int(((shifted < 0) | (shifted >= gc._cdf_length[indexes.long()] - 2)).sum())
    return {
        "symbols": symbols,
        "workload": f"{symbols} symbols, Gaussian: scale log-uniform over [0.11, 256] (compressai's scale table), "
                    "mean uniform in [-8, 8)",
        "escaped_symbols": escapes,
        "bits_written": written,
        "bits_per_symbol": written / symbols,
        "cross_entropy_bits_table_scales": ce_table,
        "cross_entropy_bits_exact_scales": ce_exact,
        "written_over_table_ce": written / ce_table,
        "written_over_exact_ce": written / ce_exact,
        "compressai_bits_written": compressai_written,
        "encode_msym_per_s": speeds["ours_encode"],
        "decode_msym_per_s": speeds["ours_decode"],
        "compressai_encode_msym_per_s": speeds["compressai_encode"],
        "compressai_decode_msym_per_s": speeds["compressai_decode"],
        "encode_over_compressai": best["compressai_encode"] / best["ours_encode"],
        "decode_over_compressai": best["compressai_decode"] / best["ours_decode"],
        "repeats": repeats,
    }


def table_rows(r: dict[str, Any]) -> list[str]:
    """The lines ``benchmarks.run`` prints."""
    n = f"{r['symbols'] / 1e6:g}M"
    return [
        f"| rANS bits written, {n} Gaussian-conditional symbols (gvc_train/coding/rans.py) "
        f"| {r['bits_written']} bits ({r['bits_per_symbol']:.3f} bits/symbol; compressai's own: "
        f"{r['compressai_bits_written']}) | model cross-entropy at the coded scale-table entries: "
        f"{r['cross_entropy_bits_table_scales']:.0f} bits; at the exact scales: {r['cross_entropy_bits_exact_scales']:.0f} "
        f"| {r['written_over_table_ce']:.4f} (vs exact scales: {r['written_over_exact_ce']:.4f}) |",
        f"| rANS encode, {n} symbols (quantize, tables, code, flush) | {r['encode_msym_per_s']:.2f} M symbols/s "
        f"| compressai GaussianConditional.compress: {r['compressai_encode_msym_per_s']:.2f} M symbols/s "
        f"| {r['encode_over_compressai']:.2f} |",
        f"| rANS decode, {n} symbols (decode, dequantize; exact round trip) | {r['decode_msym_per_s']:.2f} M symbols/s "
        f"| compressai GaussianConditional.decompress: {r['compressai_decode_msym_per_s']:.2f} M symbols/s "
        f"| {r['decode_over_compressai']:.2f} |",
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="one repeat")
    parser.add_argument("--symbols", type=int, default=1_000_000, help=f"a multiple of {CHANNELS}")
    parser.add_argument("--repeats", type=int, default=None)
    args = parser.parse_args(argv)
    repeats = args.repeats or (1 if args.quick else 3)
    r = bench_entropy(args.symbols, repeats)
    print(strict_json.dumps(r, indent=2))
    print()
    print_table(table_rows(r))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
