"""``make readme-figures``: the README's measured figures, written from the committed measurements.

Every figure the README quotes from a measurement sits between ``<!-- gen:NAME -->`` and
``<!-- /gen:NAME -->`` and is produced here from one of these files, never typed by hand:

    docs/results/bench.json            make bench (copied from bench_out/bench.json)
    docs/results/demo_summary.json     make demo (copied from runs/tokenizer_tiny/demo_summary.json)
    checkpoints/latent_tiny/rd.json    the reference codec's card (gvc_train.eval.codec_rd)
    docs/results/carphone/report.json  gvc eval (the Results section)
    docs/results/equal_compute/report.json  gvc eval of latent_tiny and ssf_tiny (the SSF peer section)
    docs/results/vtest/finetune.json   make finetune-demo
    docs/results/frame_sizes.json      make bench-sizes (copied from bench_out/frame_sizes.json)

    python -m benchmarks.readme_figures           # copy newer measurements in, rewrite README.md
    python -m benchmarks.readme_figures --check   # exit 1 and name each block that drifted

``tests/test_readme_figures.py`` runs the check, so a README number that no longer matches its
JSON fails the test suite.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gvc_train.codecs.memory_plan import DEFAULT_MAX_MEMORY

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "docs/results/bench.json"
DEMO = REPO / "docs/results/demo_summary.json"
RD = REPO / "checkpoints/latent_tiny/rd.json"
REPORT = REPO / "docs/results/carphone/report.json"
EQUAL = REPO / "docs/results/equal_compute/report.json"
FINETUNE = REPO / "docs/results/vtest/finetune.json"
FRAME_SIZES = REPO / "docs/results/frame_sizes.json"
FRESH = {
    BENCH: REPO / "bench_out/bench.json",
    DEMO: REPO / "runs/tokenizer_tiny/demo_summary.json",
    FRAME_SIZES: REPO / "bench_out/frame_sizes.json",
}
BLOCK = re.compile(r"(<!-- gen:(?P<name>[a-z0-9_]+) -->)(?P<body>.*?)(<!-- /gen:(?P=name) -->)", re.S)


def _load(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


def _span(values: list[float], fmt: str) -> str:
    lo, hi = format(min(values), fmt), format(max(values), fmt)
    return lo if lo == hi else f"{lo}-{hi}"


# ---- the blocks -------------------------------------------------------------------------------


def demo_block(demo: dict[str, Any]) -> str:
    from gvc_train.demo import summary_lines

    return "\n```\n" + "\n".join(summary_lines(demo)) + "\n```\n"


def _codec_points(rd: dict[str, Any]) -> list[dict[str, Any]]:
    return [p for p in rd["points"] if "quality" in p]


def reference_table(rd: dict[str, Any]) -> str:
    """The codec's points, its tokenizer alone, and for each anchor the two ladder points nearest
    the codec's lowest and highest rate."""
    codec = _codec_points(rd)
    rows = ["| codec | setting | bpp | PSNR (dB) | MS-SSIM |", "|---|---|---|---|---|"]
    for p in codec:
        rows.append(f"| {p['codec']} | quality {p['quality']} | {p['bpp']:.4f} | {p['psnr']:.2f} | {p['ms_ssim']:.4f} |")
    for p in rd["points"]:
        if p.get("bpp") is None:
            rows.append(f"| {p['codec']} | latents unquantized, no bitstream | - | {p['psnr']:.2f} | {p['ms_ssim']:.4f} |")
    lo_bpp, hi_bpp = min(p["bpp"] for p in codec), max(p["bpp"] for p in codec)
    for name in sorted({p["codec"] for p in rd["points"] if "crf" in p}):
        ladder = [p for p in rd["points"] if p["codec"] == name]
        lo = min(ladder, key=lambda p: abs(p["bpp"] - lo_bpp))
        hi = min(ladder, key=lambda p: abs(p["bpp"] - hi_bpp))
        rows.append(
            f"| {name} ({lo.get('preset', 'medium')}, no B-frames) | crf {lo['crf']} / {hi['crf']} | {lo['bpp']:.4f} / {hi['bpp']:.4f} "
            f"| {lo['psnr']:.2f} / {hi['psnr']:.2f} | {lo['ms_ssim']:.4f} / {hi['ms_ssim']:.4f} |"
        )
    return "\n" + "\n".join(rows) + "\n"


def reference_prose(rd: dict[str, Any]) -> str:
    points = _codec_points(rd)
    ratio = [p["payload_bits"] / p["model_bits"] for p in points]
    overhead = sorted({p["overhead_bytes"] for p in points})
    share = [p["overhead_bytes"] / p["bytes"] * 100 for p in points]
    text = (
        f"The rANS strings are {_span(ratio, '.3f')} of the bits the model's likelihoods predict as coded "
        f"(Gaussians at compressai's scale-table entries); the container adds {'/'.join(map(str, overhead))} bytes "
        f"({_span(share, '.1f')}% of these files). Single-threaded, it encodes "
        f"{_span([p['encode_fps'] for p in points], '.0f')} frames/s and decodes {_span([p['decode_fps'] for p in points], '.0f')} "
        f"frames/s here."
    )
    ceiling = [p for p in rd["points"] if p.get("bpp") is None]
    if ceiling:
        gap = abs(ceiling[0]["psnr"] - max(p["psnr"] for p in points))
        text = f"The codec's best quality is within {gap:.2f} dB of its tokenizer's own reconstruction. " + text
    return text


def stream_overhead(rd: dict[str, Any]) -> str:
    p = rd["points"][0]
    return f"{p['overhead_bytes']} bytes for 96 frames of 176x144 ({p['overhead_bytes'] / p['bytes'] * 100:.1f}% of the quality-0 file)"


# BD-rate columns: these always (the metrics the anchors' ladders are extended on, bd_rows.SPAN_METRICS),
# the others only where some anchor row has a finite BD-rate on them.
BD_RATE_ALWAYS = [("psnr", "PSNR"), ("ms_ssim", "MS-SSIM")]
BD_RATE_OPTIONAL = [("psnr_y", "PSNR-Y"), ("vmaf", "VMAF")]


def _finite(value: float | None) -> bool:
    return value is not None and value == value


def _anchor_rows(report: dict[str, Any]) -> list[dict[str, Any]]:
    """``bd`` entries of the codec against an anchor: rows whose anchor is a codec's curve (the
    codec-vs-codec rows of ``--reference-codec``, eval.bd_rows.bd_table) are left out."""
    codecs = {str(p["codec"]) for p in report["points"] if "quality" in p}
    return [e for e in report["bd"] if e["anchor"] not in codecs]


def _bd_rate_cell(entry: dict[str, Any] | None) -> str:
    if entry is None or not _finite(entry.get("bd_rate_percent")):
        return "none: no quality overlap"
    cell = f"{entry['bd_rate_percent']:+.0f}%"
    # a warned figure says how much of the anchor's quality range it averaged over
    return cell + (f" (overlap {entry['bd_rate_overlap'] * 100:.0f}%)" if entry.get("bd_rate_warning") else "")


def bd_table(report: dict[str, Any]) -> str:
    """BD figures of the codec against each anchor and setting (``gvc eval``'s ``bd`` entries)."""
    names = {"x264": "x264", "x265": "x265", "svtav1": "SVT-AV1"}
    metrics = [("psnr", "BD-PSNR (dB)", ".2f"), ("psnr_y", "BD-PSNR-Y (dB)", ".2f"), ("ms_ssim", "BD-MS-SSIM", ".3f"), ("vmaf", "BD-VMAF", ".1f")]
    entries = _anchor_rows(report)
    rated = BD_RATE_ALWAYS + [(m, n) for m, n in BD_RATE_OPTIONAL if any(e["metric"] == m and _finite(e.get("bd_rate_percent")) for e in entries)]
    header = [m[1] for m in metrics] + [f"BD-rate ({name})" for _, name in rated]
    rows = ["| anchor | setting | " + " | ".join(header) + " |", "|---" * (len(header) + 2) + "|"]
    table: dict[tuple[str, str], dict[str, Any]] = {}
    for entry in entries:
        anchor, _, setting = entry["anchor"].partition(" (")
        table.setdefault((anchor, setting.rstrip(")")), {})[entry["metric"]] = entry
    order = list(names)
    for (anchor, setting), by_metric in sorted(table.items(), key=lambda kv: (order.index(kv[0][0]) if kv[0][0] in order else 99, kv[0][1])):
        cells = []
        for metric, _, fmt in metrics:
            value = by_metric.get(metric, {}).get("bd_metric")
            cells.append(format(value, fmt) if _finite(value) else "-")
        cells += [_bd_rate_cell(by_metric.get(metric)) for metric, _ in rated]
        rows.append(f"| {names.get(anchor, anchor)} | {setting} | " + " | ".join(cells) + " |")
    return "\n" + "\n".join(rows) + "\n"


def _quality_span_clause(report: dict[str, Any]) -> str:
    """One sentence from ``quality_span`` (eval.bd_rows.quality_span_records): the CRFs each anchor's
    ladder was extended by, the metrics on which that reached the codec's quality and those it did not."""
    from gvc_train.eval.bd_rows import SPAN_METRICS

    records = report.get("quality_span") or []  # reports before the quality span lack it
    if not records:
        return ""
    names = {"x264": "x264", "x265": "x265", "svtav1": "SVT-AV1"}

    def encoder(label: str) -> str:
        return names.get(label.partition(" (")[0], label)

    crfs: dict[str, list[int]] = {}
    for r in records:
        crfs.setdefault(encoder(r["anchor"]), []).extend(r["crfs"])
    ladders = ", ".join(f"{name} {_span(values, 'd')}" for name, values in crfs.items() if values)
    reached, missed = [], []
    for metric in dict.fromkeys(r["metric"] for r in records):
        on_metric = [r for r in records if r["metric"] == metric]
        label = SPAN_METRICS.get(metric, metric)
        if all(r["overlap"] for r in on_metric):
            reached.append(f"the codec's {label} range")
        elif not any(r["overlap"] for r in on_metric):
            missed.append(label)
        else:  # the encoders all of whose settings reached it, then the single settings that did
            encoders = dict.fromkeys(encoder(r["anchor"]) for r in on_metric)
            whole = [n for n in encoders if all(r["overlap"] for r in on_metric if encoder(r["anchor"]) == n)]
            some = [
                f"{encoder(r['anchor'])} ({r['anchor'].partition(' (')[2]}" for r in on_metric if r["overlap"] and encoder(r["anchor"]) not in whole
            ]
            reached.append(f"the codec's {label} range for {' and '.join(whole + some)} only")
    outcome = f"it reached {' and '.join(reached)}" if reached else ""
    if missed:
        outcome += f", but not its {' and '.join(missed)} range" if reached else f"it did not reach the codec's {' and '.join(missed)} range"
    return (
        f" Where the codec's quality was below an anchor's whole rate ladder, `gvc eval` extended the ladder toward it "
        f"(CRFs added: {ladders or 'none left'}; points marked `span: quality`): {outcome}, and a BD-rate averages over the quality "
        f"interval both curves share only (the overlap: that interval's share of the anchor's quality range)."
    )


def bd_prose(report: dict[str, Any]) -> str:
    codec = [p for p in report["points"] if "quality" in p]
    anchors = [p for p in report["points"] if "crf" in p]
    bpp = [p["bpp"] for p in codec]
    psnr = [p["metrics"]["psnr"] for p in codec]
    names = {"x264": "x264", "x265": "x265", "svtav1": "SVT-AV1"}
    floors = {}  # each anchor's lowest PSNR over its settings and extended ladder
    for p in anchors:
        floors[p["codec"]] = min(floors.get(p["codec"], float("inf")), p["metrics"]["psnr"])
    reach = [a for a, f in floors.items() if f <= max(psnr)]
    above = [a for a in floors if a not in reach]
    head = (
        f"(BD-metric: the mean quality difference over the bit rates both curves cover, {_span(bpp, '.3f')} bpp; "
        f"`gvc eval` took {report['seconds']:.0f} s here.){_quality_span_clause(report)} The reference codec's "
    )
    if not reach:
        return head + f"whole PSNR curve ({_span(psnr, '.1f')} dB) lies below every anchor's lowest point ({min(floors.values()):.1f} dB and up)"
    tail = f"; {' and '.join(names.get(a, a) for a in above)} stays above it ({min(floors[a] for a in above):.1f} dB and up)" if above else ""
    return head + (
        f"PSNR curve ({_span(psnr, '.1f')} dB) meets the lowest rates of the {' and '.join(names.get(a, a) for a in reach)} ladders "
        f"(down to {min(floors[a] for a in reach):.1f} dB){tail}"
    )


def _bd_entry(report: dict[str, Any], codec: str, anchor: str, metric: str) -> dict[str, Any] | None:
    found = [e for e in report["bd"] if e["codec"] == codec and e["anchor"] == anchor and e["metric"] == metric]
    return found[0] if found else None


def equal_compute_table(report: dict[str, Any]) -> str:
    """Each learned codec of the equal-compute report against the low-delay anchors, then the
    peer against the reference (``gvc eval --reference-codec``'s codec-vs-codec rows)."""
    points = [p for p in report["points"] if "quality" in p]
    codecs = list(dict.fromkeys(p["codec"] for p in points))
    reference = report["reference_codec"]
    anchors = [a for a in ("x264 (low-delay)", "x265 (low-delay)") if any(e["anchor"] == a for e in report["bd"])]
    head = ["codec", "bpp", "PSNR (dB)", "MS-SSIM"] + [f"BD-rate vs {a.replace(' (low-delay)', ' LD')}: PSNR / MS-SSIM" for a in anchors]
    rows = ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    for codec in codecs:
        mine = [p for p in points if p["codec"] == codec]
        cells = [f"`{codec}`", _span([p["bpp"] for p in mine], ".3f"), _span([p["metrics"]["psnr"] for p in mine], ".2f"),
                 _span([p["metrics"]["ms_ssim"] for p in mine], ".3f")]  # fmt: skip
        cells += [f"{_bd_rate_cell(_bd_entry(report, codec, a, 'psnr'))} / {_bd_rate_cell(_bd_entry(report, codec, a, 'ms_ssim'))}" for a in anchors]
        rows.append("| " + " | ".join(cells) + " |")
    lines = []
    for codec in (c for c in codecs if c != reference):
        psnr, ssim = _bd_entry(report, codec, reference, "psnr"), _bd_entry(report, codec, reference, "ms_ssim")
        metric = psnr["bd_metric"] if psnr and _finite(psnr.get("bd_metric")) else None
        bd_psnr = f"BD-PSNR {metric:+.2f} dB" if metric is not None else "no BD-PSNR (their rates share no interval either)"
        lines.append(
            f"`{codec}` against `{reference}` on the same frames: BD-rate {_bd_rate_cell(psnr)} on PSNR and {_bd_rate_cell(ssim)} on "
            f"MS-SSIM (positive: more bits for the same quality); {bd_psnr} (`gvc eval` took {report['seconds']:.0f} s)."
        )
    return "\n" + "\n".join(rows) + "\n\n" + " ".join(lines) + "\n"


def finetune_block(summary: dict[str, Any]) -> str:
    from gvc_train.finetune_demo import summary_lines, training_line

    lines = summary_lines(summary["bd"], summary["held_out_frames"])
    lines.append(training_line(summary["tokenizer_finetune"], summary["codec_finetune"]))
    return "\n```\n" + "\n".join(lines) + "\n```\n"


def frame_sizes_table(results: list[dict[str, Any]]) -> str:
    """make bench-sizes: each codec's peak and speed at each size (the longest run), the growth of
    the peak from the shortest run to it, and x265's speed on the same frames."""
    rows = [
        "| codec | size | encode: peak MB, frames/s | decode: peak MB, frames/s | decode plan | peak growth | x265 1 thread: encode / decode frames/s |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        short, long = str(r["short"]), str(r["long"])
        for size, row in r["sizes"].items():
            enc, dec = row[long]["encode"], row[long]["decode"]
            x = row["x265_1thread"]
            if "refused" in enc:
                rows.append(f"| `{Path(r['codec']).name}` ({r['family']}) | {size} | refused: {enc['refused']} | - | - | - | {x['encode_fps']:.1f} / {x['decode_fps']:.1f} |")
                continue
            growth = "-" if short == long else f"{max(row[long][k]['peak_mb'] / row[short][k]['peak_mb'] for k in ('encode', 'decode')):.3f} ({short} to {long} frames)"
            plan = (dec.get("plan") or "-") + ("; whole-frame norms, no strips" if dec.get("tiles") is False else "")
            rows.append(
                f"| `{Path(r['codec']).name}` ({r['family']}) | {size} | {_peak_cell(enc)}, {enc['fps']:.2f} | {_peak_cell(dec)}, {dec['fps']:.2f} "
                f"| {plan} | {growth} | {x['encode_fps']:.1f} / {x['decode_fps']:.1f} |"
            )
    return "\n" + "\n".join(rows) + "\n"


def _peak_cell(run: dict[str, Any]) -> str:
    """A peak in MiB, marked where it passed the budget the run had (1.5 GiB: rows from before the
    budget was recorded ran under the default)."""
    over = run["peak_mb"] > run.get("budget_mb", DEFAULT_MAX_MEMORY / 2**20)
    return f"{run['peak_mb']:,.0f}{' (over budget)' if over else ''}"


def bench_table(bench: dict[str, Any]) -> str:
    from benchmarks.table import HEADER

    parts = ", ".join(f"{k.replace('_', ' ')} {v:.0f} s" for k, v in bench["section_seconds"].items())
    return (
        f"\nA run on this {bench['machine']['cpus']}-core machine ({bench['seconds'] / 60:.0f} min; {parts}):\n\n"
        + HEADER + "\n" + "\n".join(bench["table_rows"]) + "\n"
    )


def bench_summary(bench: dict[str, Any]) -> str:
    pipeline = bench["pipeline"]
    train = [bench[k]["lightning_over_plain"] for k in ("tokenizer_training", "latent_codec_training")]
    train += [stage["lightning_over_plain"] for stage in bench.get("progressive_training", {}).values()]
    train += [bench["controlled"]["training"]["lightning_over_plain"]] if "controlled" in bench else []
    e, lat, ddp = bench["entropy"], bench["latents"], bench["ddp_scaling"]
    mem = bench["codec"]["memory"]
    speed = list(bench["codec"]["speed"].values())
    enc = [s["gvc"]["encode_fps"] / s["x265_1thread"]["encode_fps"] for s in speed]
    dec = [s["gvc"]["decode_fps"] / s["x265_1thread"]["decode_fps"] for s in speed]
    sample = [r["ratio"] for name, r in pipeline.items() if name.startswith("sample")]
    source = [r["ratio"] for name, r in pipeline.items() if "source pixels" in name]
    default_growth = [1 + mem[f"{k}_default_malloc_growth"] for k in ("encode", "decode")]
    growth = [1 + mem[f"{k}_growth"] for k in ("encode", "decode")]
    controls = _controls_summary(bench["controls"]) if "controls" in bench else ""  # runs before issue 14 lack it
    progressive = _progressive_summary(bench["progressive_codec"]) if "fps" in bench.get("progressive_codec", {}) else ""
    controlled = _controlled_summary(bench["controlled"]) if "controlled" in bench else ""  # runs before issue 15 lack it
    zeroshot = _zeroshot_summary(bench["zeroshot"]) if "zeroshot" in bench else ""  # runs before issue 16 lack it
    return (
        f"\n- **Data.** The sample shards come out of the pipeline at {_span(sample, '.2f')}x the speed of a PyAV "
        f"decode of the same clips per worker; at source pixels (bikes 640x272, bigbuckbunny 1280x720) at "
        f"{_span(source, '.2f')}x: zstd's entropy decoding of the lossless frames is most of that time "
        f"(`data/README.md`), so 720p training wants a downscaled shard set (`--resize-short`) or more loader "
        f"workers. Latent shards feed the latent-codec stage {lat['ratio']:.0f}x faster than tokenizing on the fly.\n"
        f"- **Training.** Lightning runs at {_span(train, '.2f')} of the speed of hand-written loops of the same "
        f"stages. Two gloo processes at the same global batch run {ddp['ratio']:.2f}x one process using both "
        f"cores: on 2 cores DDP has little to gain over intra-op threads; the row watches the distributed path.\n"
        f"- **Entropy coding.** The coder writes {e['written_over_table_ce']:.4f}x the model's cross-entropy at "
        f"the scale-table entries it codes with ({e['written_over_exact_ce']:.4f}x the exact scales), at "
        f"{e['encode_over_compressai']:.2f}x compressai's encode and {e['decode_over_compressai']:.2f}x its decode speed.\n"
        f"- **Codec.** Memory does not grow with the video: 4x the frames peak at {_span(growth, '.3f')}x (with a "
        f"fixed mmap threshold; with glibc's default one the peak moves by {_span(default_growth, '.3f')}x). On a CPU "
        f"the tiny codec is far slower than x265 (encode {_span(enc, '.3f')}x, decode {_span(dec, '.3f')}x of one "
        f"x265 thread): its tokenizer decoder's 3D convolutions dominate. It is meant for GPUs; the rows are here to "
        f"catch regressions.\n" + progressive + controls + controlled + zeroshot
    )


def _progressive_summary(p: dict[str, Any]) -> str:
    fps, bits = p["fps"], p["bits"]["codec"]
    return (
        f"- **Progressive codec.** Decoding with pixels runs at {fps['decode'] / fps['latent_decode']:.2f}x the latent "
        f"codec's speed (the shared tokenizer decoder dominates); tokens to latents alone at "
        f"{fps['decode_latents_only'] / fps['latent_decode_latents_only']:.2f}x (the context transformer's cost, one "
        f"pass per scale), and a stream cut after {p['cut']['scales']} of {p['cut']['of_scales']} scales decodes its "
        f"latents {fps['cut_decode_latents_only'] / fps['decode_latents_only']:.1f}x faster. Its ANS strings are "
        f"{bits['written_over_model']:.4f}x the model's bits on {p['frames']} frames (one flush a group).\n"
    )


def _controls_summary(c: dict[str, Any]) -> str:
    videos = list(c["videos"].values())
    if not videos or "set" not in videos[0]["shard_clips_per_s"]:
        return ""
    names = videos[0]["training_set"]
    extract = [v["extract_fps"][n] / v["pyav_1thread_fps"] for v in videos for n in names]
    coded = [v["extract_encode_fps"][n] / v["pyav_1thread_fps"] for v in videos for n in names]
    return (
        f"- **Controls.** Extracting {', '.join(names)} runs at {_span(extract, '.2f')}x the speed of a 1-thread PyAV "
        f"decode of the same frames ({_span(coded, '.2f')}x with each control's coding). Decoding them all from shards "
        f"is {_span([v['shard_over_on_the_fly']['set'] for v in videos], '.1f')}x faster than making them on the fly, "
        f"but at {_span([v['shard_clips_per_s']['set'] for v in videos], '.2f')} clips/s per worker it is "
        f"{_span([v['frames_decode_clips_per_s'] / v['shard_clips_per_s']['set'] for v in videos], '.0f')}x slower than "
        f"decoding the same clips' frames (one process, 17-frame clips of carphone and bikes).\n"
    )


def _controlled_summary(c: dict[str, Any]) -> str:
    s, d = c["sampling"], c["decode"]
    return (
        f"- **Controlled codec.** At the tiny CGVC recipe's size (random weights) a sampling step on a 17-frame 176x144 "
        f"clip takes {1000 / s['unguided_steps_per_s']:.0f} ms ({s['unguided_steps_per_s'] / s['guided_steps_per_s']:.2f}x "
        f"faster than with classifier-free guidance), and decoding {d['frames']} frames of carphone (keyframes coded, every "
        f"other frame generated in {d['num_steps']} steps) runs at {d['decode_fps'] / d['latent_decode_fps']:.2f}x the "
        f"latent codec's speed.\n"
    )


def _zeroshot_summary(z: dict[str, Any]) -> str:
    s, c = z["scoring"], z["codec"]
    two = s["threads_2"]
    return (
        f"- **Zero-shot codec.** The encoder draws and scores {two['scored_mvalues_per_s']:.0f} M codebook values/s on 2 "
        f"threads ({two['scored_mvalues_per_s'] / two['randn_mvalues_per_s']:.2f}x torch.randn's rate for the same work, "
        f"whose atoms could not be drawn one by one), so a step of K = {s['codebook_size']} atoms on one 176x144 latent "
        f"frame takes {s['codebook_size'] * s['dim'] / two['scored_mvalues_per_s'] / 1e6 * 1000:.0f} ms; "
        f"{c['zeroshot']['codec']} decodes at {c['zeroshot']['decode_fps'] / c['latent']['decode_fps']:.2f}x the latent "
        f"codec's speed (20 transformer steps a GOP) and encodes at {c['zeroshot']['encode_fps']:.2f} frames/s.\n"
    )


def latent_speed(bench: dict[str, Any]) -> str:
    r = bench["latents"]
    return f"{r['latent_clips_per_s']:.0f} clips/s against {r['onthefly_clips_per_s']:.1f} clips/s when it tokenizes on the fly ({r['ratio']:.0f}x"


BLOCKS: dict[str, tuple[Path, Callable[[dict[str, Any]], str]]] = {
    "demo": (DEMO, demo_block),
    "reference_table": (RD, reference_table),
    "reference_prose": (RD, reference_prose),
    "stream_overhead": (RD, stream_overhead),
    "bd_table": (REPORT, bd_table),
    "bd_prose": (REPORT, bd_prose),
    "equal_compute": (EQUAL, equal_compute_table),
    "finetune": (FINETUNE, finetune_block),
    "frame_sizes": (FRAME_SIZES, frame_sizes_table),
    "bench_table": (BENCH, bench_table),
    "bench_summary": (BENCH, bench_summary),
    "latent_speed": (BENCH, latent_speed),
}


def render(readme: str) -> tuple[str, list[str]]:
    """README text with every block regenerated, and the names of blocks whose text changed."""
    cache: dict[Path, dict[str, Any]] = {}
    changed: list[str] = []
    seen: set[str] = set()

    def fill(m: re.Match[str]) -> str:
        name = m.group("name")
        if name not in BLOCKS:
            raise SystemExit(f"readme_figures: unknown block gen:{name} in README.md")
        seen.add(name)
        source, make = BLOCKS[name]
        if source not in cache:
            cache[source] = _load(source)
        body = make(cache[source])
        if body != m.group("body"):
            changed.append(name)
        return m.group(1) + body + m.group(4)

    text = BLOCK.sub(fill, readme)
    missing = sorted(set(BLOCKS) - seen)
    if missing:
        raise SystemExit(f"readme_figures: README.md lacks the blocks {missing}")
    return text, changed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 if a block differs from its JSON")
    args = parser.parse_args(argv)
    readme = REPO / "README.md"
    if not args.check:
        for committed, fresh in FRESH.items():
            if fresh.is_file() and (not committed.is_file() or fresh.stat().st_mtime > committed.stat().st_mtime):
                shutil.copyfile(fresh, committed)
                print(f"readme_figures: {committed.relative_to(REPO)} <- {fresh.relative_to(REPO)}")
    text, changed = render(readme.read_text())
    if args.check:
        for name in changed:
            print(f"README.md: block gen:{name} does not match {BLOCKS[name][0].relative_to(REPO)} (make readme-figures)")
        return 1 if changed else 0
    readme.write_text(text)
    print(f"readme_figures: {len(changed)} block(s) rewritten: {', '.join(changed) or 'none'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
