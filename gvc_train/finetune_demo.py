"""``make finetune-demo``: what a domain fine-tune buys, measured with real bitstreams.

The domain is OpenCV's ``vtest.avi`` (a static camera over a pedestrian walkway; Debian's
opencv-doc), cut by ``make -C data vtest-shards`` into frames 0-559 (training), 560-599
(validation during training) and 600-794 (held out, never trained on). Then:

1. fine-tune the reference codec's tokenizer DECODER on the training frames
   (``recipes/finetune/tokenizer_decoder.yaml``; the encoder stays the parent's, so the latent
   space does too) and export it;
2. shard the training and validation frames as that tokenizer's latents;
3. fine-tune the reference latent codec from ``checkpoints/latent_tiny`` on them
   (``recipes/finetune/latent_codec.yaml``) and export it, tokenizer included;
4. ``gvc eval`` the generic and the fine-tuned codec on the held-out frames, with x264 and x265;
5. print the BD-rate of the fine-tuned codec against the generic one (negative: the fine-tune
   saves bits at equal quality) and write it to ``docs/results/vtest/``.

Both trainings are bounded by steps (their recipes), so the figures reproduce.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

from gvc_train.safe_output import keep_aside
from gvc_train.strict_json import write_json

PARENT = Path("checkpoints/latent_tiny")
SPLITS = Path("data/vtest")
PIXEL_SHARDS = Path("data/vtest_shards")
LATENT_SHARDS = Path("data/vtest_latent")
TOKENIZER_RECIPE = "recipes/finetune/tokenizer_decoder.yaml"
CODEC_RECIPE = "recipes/finetune/latent_codec.yaml"
TOKENIZER_RUN = Path("runs/tokenizer_decoder_vtest")
CODEC_RUN = Path("runs/latent_codec_vtest")
TOKENIZER_EXPORT = Path("exports/tokenizer_vtest")
CODEC_EXPORT = Path("exports/latent_vtest")
REPORT = Path("reports/vtest")
RESULTS = Path("docs/results/vtest")
VTEST_FPS = 10.0
EVAL_FRAMES = 96  # held-out frames 600-695, the reference card's clip length
METRICS = ("psnr", "ms_ssim")


def _train(recipe: str, run_dir: Path, overrides: list[str]) -> dict[str, Any]:
    from gvc_train.cli import run as train

    kept = keep_aside(run_dir)  # gvc-train never writes into an earlier run: the demo's is kept
    if kept is not None:
        print(f"   the earlier run in {run_dir} is kept in {kept}", flush=True)
    started = time.perf_counter()
    cli = train(["fit", "--config", recipe, *overrides])
    return {"recipe": recipe, "steps": cli.trainer.global_step, "train_seconds": round(time.perf_counter() - started, 1)}


def _export(run_dir: Path, out: Path) -> int:
    """gvc-export's own --overwrite: an earlier export is replaced, a folder holding anything
    else is refused."""
    from gvc_train.export import main as export

    return export([str(run_dir / "checkpoints" / "last.ckpt"), "--out", str(out), "--overwrite"])


def _latent_shards() -> None:
    from gvc_train.data.latent_shards import write_latent_shards

    for split, overlap in (("train", 12), ("val", 0)):  # overwrite: replaces the demo's own shards only
        write_latent_shards([str(SPLITS / split)], str(LATENT_SHARDS / split), tokenizer=str(TOKENIZER_EXPORT), clip_frames=17,
                            overlap=overlap, png_fps=VTEST_FPS, prefix=split, maxcount=16, workers=1, overwrite=True,
                            progress=False, log=lambda line: None)  # fmt: skip


def _earlier_tokenizer() -> dict[str, Any] | None:
    """What an earlier run's steps 1-2 left (the tokenizer export, its latent shards), described
    as :func:`_train` describes a run; None when they are not all there."""
    if not (TOKENIZER_EXPORT / "tokenizer.json").is_file() or not all((LATENT_SHARDS / s / "index.json").is_file() for s in ("train", "val")):
        return None
    prov = json.loads((TOKENIZER_EXPORT / "tokenizer.json").read_text()).get("provenance", {})
    return {"recipe": TOKENIZER_RECIPE, "steps": prov.get("global_step"), "train_seconds": prov.get("train_seconds")}


def finetune_rows(report: dict[str, Any], codec: str, reference: str) -> list[dict[str, Any]]:
    """BD rows of ``codec`` against ``reference`` in a ``gvc eval`` report, one per metric."""
    from gvc_train.eval.report import codec_vs_codec_bd

    return codec_vs_codec_bd(report, codec, reference, list(METRICS))


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _fmt(value: Any, unit: str, decimals: int = 1) -> str:
    return "n/a" if _missing(value) else f"{value:+.{decimals}f}{unit}"


def summary_lines(rows: list[dict[str, Any]], frames: str) -> list[str]:
    lines = []
    for row in rows:
        metric, rate = row["metric"], row.get("bd_rate_percent")
        if _missing(rate):
            rate_text = f"none (the curves share no {metric} interval)"
        else:
            overlap = row.get("bd_rate_overlap")
            shared = f", over {overlap:.0%} of the generic codec's {metric} range" if row.get("bd_rate_warning") and overlap is not None else ""
            rate_text = f"{_fmt(rate, '%')}{shared}"
        bd_metric = _fmt(row.get("bd_metric"), " dB", 2) if metric == "psnr" else _fmt(row.get("bd_metric"), "", 3)
        lines.append(f"BD-rate ({metric}) fine-tuned vs generic on vtest frames {frames}: {rate_text}; BD-{metric} {bd_metric}")
    return lines


def training_line(tokenizer: dict[str, Any], codec: dict[str, Any]) -> str:
    """The two fine-tunes' steps and wall time, as :func:`_train` describes them."""
    return (f"training     tokenizer decoder {tokenizer['steps']} steps {tokenizer['train_seconds']:.0f} s, "
            f"latent codec {codec['steps']} steps {codec['train_seconds']:.0f} s")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gvc_train.finetune_demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokenizer-steps", type=int, default=None, help="override the tokenizer recipe's max_steps")
    parser.add_argument("--codec-steps", type=int, default=None, help="override the codec recipe's max_steps")
    parser.add_argument("--frames", type=int, default=EVAL_FRAMES, help="held-out frames gvc eval codes")
    parser.add_argument("--anchors", default="x264,x265")
    parser.add_argument("--results", type=Path, default=RESULTS, help="where the BD figures are written")
    parser.add_argument(
        "--reuse-tokenizer", action="store_true",
        help=f"start at step 3 with the tokenizer already fine-tuned and exported ({TOKENIZER_EXPORT}) and its latent shards written",
    )  # fmt: skip
    args = parser.parse_args(argv)

    for split in ("train", "val"):
        if not (PIXEL_SHARDS / split / "index.json").is_file() or not (SPLITS / split).is_dir():
            print(f"gvc_train.finetune_demo: no vtest shards in {PIXEL_SHARDS / split}; run `make -C data vtest-shards` first", file=sys.stderr)
            return 2
    if not (PARENT / "codec.json").is_file():
        print(f"gvc_train.finetune_demo: the reference codec {PARENT} is missing (it ships in the repository)", file=sys.stderr)
        return 2

    steps = lambda n: [f"--trainer.max_steps={n}", f"--model.init_args.decay_steps={n}"] if n is not None else []  # noqa: E731
    if args.reuse_tokenizer:
        tokenizer = _earlier_tokenizer()
        if tokenizer is None:
            print(f"gvc_train.finetune_demo: --reuse-tokenizer: no tokenizer export in {TOKENIZER_EXPORT} or no latent shards in {LATENT_SHARDS}", file=sys.stderr)
            return 2
        print(f"== 1-2/5 reusing {TOKENIZER_EXPORT} ({tokenizer['steps']} steps) and its latent shards", flush=True)
    else:
        print(f"== 1/5 fine-tuning the tokenizer decoder: {TOKENIZER_RECIPE}", flush=True)
        tokenizer = _train(TOKENIZER_RECIPE, TOKENIZER_RUN, steps(args.tokenizer_steps))
        if _export(TOKENIZER_RUN, TOKENIZER_EXPORT) != 0:
            return 2
        print(f"== 2/5 latent shards of the vtest training and validation frames ({TOKENIZER_EXPORT})", flush=True)
        _latent_shards()
    print(f"== 3/5 fine-tuning the latent codec from {PARENT}: {CODEC_RECIPE}", flush=True)
    codec = _train(CODEC_RECIPE, CODEC_RUN, steps(args.codec_steps))
    if _export(CODEC_RUN, CODEC_EXPORT) != 0:
        return 2

    print(f"== 4/5 gvc eval of {PARENT.name} and {CODEC_EXPORT.name} on {args.frames} held-out frames with {args.anchors}", flush=True)
    from gvc_train.gvc_cli import main as gvc

    code = gvc([
        "eval", "--codec", str(PARENT), str(CODEC_EXPORT), "--video", str(SPLITS / "heldout"), "--frames", str(args.frames),
        "--png-fps", str(VTEST_FPS), "--anchors", args.anchors, "--reference-codec", PARENT.name, "--out", str(REPORT), "--overwrite",
    ])  # fmt: skip
    if code != 0:
        return code
    report = json.loads((REPORT / "report.json").read_text())
    rows = finetune_rows(report, CODEC_EXPORT.name, PARENT.name)
    first = json.loads((SPLITS / "splits.json").read_text())["ranges"]["heldout"][0]
    frames = f"{first}-{first + args.frames - 1}"

    print("== 5/5 fine-tuned vs generic", flush=True)
    summary = {
        "parent": str(PARENT),
        "tokenizer_finetune": tokenizer,
        "codec_finetune": codec,
        "held_out_frames": frames,
        "bd": rows,
        "command": "make finetune-demo",
    }
    args.results.mkdir(parents=True, exist_ok=True)
    write_json(args.results / "finetune.json", summary, indent=2)
    for name in ("summary.md", "bd.csv"):
        if (REPORT / name).is_file():
            (args.results / name).write_text((REPORT / name).read_text())
    print()
    for line in summary_lines(rows, frames):
        print(line)
    print(training_line(tokenizer, codec))
    print(f"report       {REPORT / 'summary.md'}; figures in {args.results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
