"""Categorical and binary entropy coding: the bits and speed of gvc_train/coding/categorical.py beside compressai's rANS.

The progressive codec codes each token under its own categorical (codebook indexes, ``V`` up to
4096) or Bernoulli (bitwise tokens). The workloads here are that situation without the network:
per-symbol probabilities ``softmax(3 * N(0, 1))`` over ``V`` symbols (a peaked, different
distribution for every symbol), the symbols drawn from them, and the tables
``quantize_probs(p, 24)`` the coder takes; bits are Bernoullis with ``sigmoid(4 * N(0, 1))``.

- **bits**: the stream's bits beside ``-sum log2(f / 2^24)`` of the coded symbols at the
  quantized frequencies (what the coder can reach: the gap is its flush) and beside the float
  cross-entropy ``-sum log2 p`` (the training loss's rate: the gap adds the 24-bit quantization).
- **speed**: encode (checks, tables, coding, flush) and decode (checks, tables, decoding, end
  check) in M symbols/s, from the integer tables as the codec holds them, each the best of
  ``repeats`` interleaved runs after one untimed run.
- **baseline (same tables, same run)**: compressai's rANS (``RansEncoder.encode_with_indexes``,
  the coder behind its entropy models) with one 16-bit CDF per symbol: ``quantize_probs`` of the
  same probabilities plus compressai's escape entry (the last CDF symbol, given the minimum
  frequency 1: without it the coder mis-codes), i.e. the best 16-bit table compressai can take.
  Its times include building the CDF lists from the tensors (it takes Python lists), reported
  apart as well. At ``V = 4096`` its 16-bit precision reserves 4097/65536 of the mass for
  the minimum frequencies: that is its overhead, not the coder's.

All round trips are asserted exact.

    python -m benchmarks.bench_categorical [--quick]
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


def workload(count: int, symbols: int, seed: int = SEED) -> dict[str, torch.Tensor]:
    """``p`` (``count x V`` float64, or ``count`` for bits: P(1)), the drawn ``symbols`` and the
    24-bit ``freqs`` (``count x V`` int32; bits: ``count x 2``)."""
    from gvc_train.models.progressive.token_probs import bit_distributions, quantize_probs

    g = torch.Generator().manual_seed(seed)
    if symbols == 2:
        p = bit_distributions(torch.sigmoid(4.0 * torch.randn(count, generator=g, dtype=torch.float64)))
    else:
        p = torch.softmax(3.0 * torch.randn(count, symbols, generator=g, dtype=torch.float64), dim=-1)
    drawn = torch.multinomial(p, 1, generator=g).squeeze(1)
    return {"p": p, "symbols": drawn, "freqs": quantize_probs(p, 24)}


def _best(fn: Any, repeats: int, box: dict[str, Any], key: str) -> None:
    for _ in range(repeats):
        start = time.perf_counter()
        box[key + "_out"] = fn()
        box[key] = min(box.get(key, math.inf), time.perf_counter() - start)


def _ours(w: dict[str, torch.Tensor]) -> dict[str, Any]:
    from gvc_train.coding.categorical import CategoricalDecoder, CategoricalEncoder

    def encode() -> bytes:
        encoder = CategoricalEncoder()
        encoder.encode(w["symbols"], w["freqs"])
        return encoder.finish()

    def decode(data: bytes) -> torch.Tensor:
        decoder = CategoricalDecoder(data)
        out = decoder.decode(w["freqs"])
        decoder.finish()
        return out

    return {"encode": encode, "decode": decode}


def _compressai(w: dict[str, torch.Tensor]) -> dict[str, Any]:
    from compressai.ans import RansDecoder, RansEncoder

    from gvc_train.models.progressive.token_probs import quantize_probs

    p = w["p"]
    with_escape = quantize_probs(torch.cat([p, torch.zeros(p.shape[0], 1, dtype=p.dtype)], dim=1), 16)
    cdf_tensor = torch.cat([torch.zeros(p.shape[0], 1, dtype=torch.int32), with_escape.cumsum(1, dtype=torch.int32)], dim=1)
    count, length = cdf_tensor.shape
    symbols = w["symbols"].int().tolist()
    indexes = list(range(count))

    def tables() -> tuple[list[list[int]], list[int], list[int]]:
        return cdf_tensor.tolist(), [length] * count, [0] * count

    def encode() -> bytes:
        return RansEncoder().encode_with_indexes(symbols, indexes, *tables())

    def decode(data: bytes) -> torch.Tensor:
        return torch.tensor(RansDecoder().decode_with_indexes(data, indexes, *tables()))

    bits16 = float(-torch.log2(with_escape.gather(1, w["symbols"][:, None]).double() / 65536).sum())
    return {"encode": encode, "decode": decode, "tables": tables, "table_bits": bits16}


def bench_case(count: int, symbols: int, repeats: int, baseline: bool) -> dict[str, Any]:
    from gvc_train.coding.categorical import model_bits

    w = workload(count, symbols)
    ours = _ours(w)
    theirs = _compressai(w) if baseline else None
    times: dict[str, Any] = {}
    ours["decode"](ours["encode"]())  # untimed first runs: the first touches are nobody's cost
    if theirs:
        theirs["decode"](theirs["encode"]())
    for _ in range(repeats):  # interleaved: the cores may be shared
        _best(ours["encode"], 1, times, "ours_encode")
        _best(lambda: ours["decode"](times["ours_encode_out"]), 1, times, "ours_decode")
        assert torch.equal(times["ours_decode_out"], w["symbols"]), "our round trip is not exact"
        if theirs:
            _best(theirs["encode"], 1, times, "compressai_encode")
            _best(lambda: theirs["decode"](times["compressai_encode_out"]), 1, times, "compressai_decode")
            assert torch.equal(times["compressai_decode_out"].long(), w["symbols"]), "compressai's round trip is not exact"
            _best(theirs["tables"], 1, times, "compressai_tables")
    p_true = w["p"].gather(1, w["symbols"][:, None]).squeeze(1)
    r: dict[str, Any] = {
        "symbols": count,
        "alphabet": symbols,
        "bits_written": 8 * len(times["ours_encode_out"]),
        "model_bits_24": model_bits(w["symbols"], w["freqs"]),
        "cross_entropy_bits": float(-torch.log2(p_true).sum()),
        "encode_msym_per_s": count / times["ours_encode"] / 1e6,
        "decode_msym_per_s": count / times["ours_decode"] / 1e6,
        "repeats": repeats,
    }
    r["written_over_model_24"] = r["bits_written"] / r["model_bits_24"]
    r["written_over_cross_entropy"] = r["bits_written"] / r["cross_entropy_bits"]
    if theirs:
        r |= {
            "compressai_bits_written": 8 * len(times["compressai_encode_out"]),
            "compressai_table_bits_16": theirs["table_bits"],
            "compressai_encode_msym_per_s": count / times["compressai_encode"] / 1e6,
            "compressai_decode_msym_per_s": count / times["compressai_decode"] / 1e6,
            "compressai_table_lists_s": times["compressai_tables"],
            "encode_over_compressai": times["compressai_encode"] / times["ours_encode"],
            "decode_over_compressai": times["compressai_decode"] / times["ours_decode"],
        }
        r["compressai_written_over_cross_entropy"] = r["compressai_bits_written"] / r["cross_entropy_bits"]
    return r


def bench_categorical(quick: bool = False, repeats: int | None = None) -> dict[str, Any]:
    repeats = repeats or (1 if quick else 3)
    cases = [(100_000, 16, True), (2_000 if quick else 5_000, 4096, True), (200_000 if quick else 1_000_000, 2, False)]
    return {f"V{v}": bench_case(n, v, repeats, baseline) for n, v, baseline in cases}


def _pct(ratio: float) -> str:
    return f"{100 * (ratio - 1):+.3f}%"


def table_rows(results: dict[str, Any]) -> list[str]:
    """The lines ``benchmarks.run`` prints (when it runs this) and ``main`` prints."""
    rows = []
    for r in results.values():
        what = "bits" if r["alphabet"] == 2 else f"V={r['alphabet']} categorical symbols"
        n = f"{r['symbols'] / 1e6:g}M" if r["symbols"] >= 1e6 else f"{r['symbols'] / 1e3:g}k"
        base = (
            f"compressai rANS, same probabilities as 16-bit CDFs + escape: {r['compressai_bits_written']} bits "
            f"({_pct(r['compressai_written_over_cross_entropy'])} vs cross-entropy)"
            if "compressai_bits_written" in r else f"model cross-entropy (float): {r['cross_entropy_bits']:.0f} bits"
        )
        rows.append(
            f"| categorical coder bits, {n} {what}, per-symbol tables (gvc_train/coding/categorical.py) "
            f"| {r['bits_written']} bits: {_pct(r['written_over_model_24'])} vs the 24-bit tables' "
            f"{r['model_bits_24']:.0f}, {_pct(r['written_over_cross_entropy'])} vs the float cross-entropy | {base} "
            f"| {r['bits_written'] / r.get('compressai_bits_written', r['cross_entropy_bits']):.4f} |"
        )
        if "compressai_bits_written" in r:
            rows.append(
                f"| categorical coder encode / decode, {n} {what} (from int tables; exact round trip) "
                f"| {r['encode_msym_per_s']:.3f} / {r['decode_msym_per_s']:.3f} M symbols/s "
                f"| compressai rANS: {r['compressai_encode_msym_per_s']:.3f} / {r['compressai_decode_msym_per_s']:.3f} M symbols/s "
                f"(of which CDF lists {r['compressai_table_lists_s']:.2f} s a pass) "
                f"| {r['encode_over_compressai']:.2f} / {r['decode_over_compressai']:.2f} |"
            )
        else:
            rows.append(
                f"| categorical coder encode / decode, {n} {what} (from int tables; exact round trip) "
                f"| {r['encode_msym_per_s']:.3f} / {r['decode_msym_per_s']:.3f} M symbols/s | - | - |"
            )
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer symbols, one repeat")
    parser.add_argument("--repeats", type=int, default=None)
    args = parser.parse_args(argv)
    started = time.perf_counter()
    r = bench_categorical(args.quick, args.repeats)
    print(strict_json.dumps(r, indent=2))
    print()
    print_table(table_rows(r))
    print(f"\n({time.perf_counter() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
