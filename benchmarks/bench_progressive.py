"""The progressive token codec: coding speed beside the latent codec's and x265's, written bits
beside the model's, and its two training stages under Lightning beside a hand-written loop.

**Coding** (a codec folder: ``checkpoints/progressive_tiny`` by default, ``--codec`` another;
missing, the bench says so in one line and skips these rows). The first 33 frames of the
held-out carphone clip (176x144: ``1 + 4 x 8`` frames, 9 latent frames), in one process:

- encode (the mp4 -> .gvc, the source's decoding included) at the top rate point (every scale);
- decode (.gvc -> uint8 RGB frames handed to a callback that drops them) of that stream, and of
  the stream cut by ``Codec.truncate`` after the scales of the codec's default rate point (the
  decoder predicts the scales the cut dropped); each also without pixels (``on_frame=None``:
  tokens to latents only, no tokenizer decoder, which both families share);
- beside ``checkpoints/latent_tiny_v1`` (its tokenizer is progressive_tiny's; else a random latent
  codec of the tiny recipes' sizes:
  ``bench_codec_memory.codec_folder``) coding the same frames at its default rate point, and
  x265 as ``gvc eval``'s anchors run it (``gvc_train/eval/anchor_commands.py``: medium, crf 35,
  low delay, one GOP, one thread): encoded by libx265 in process with the anchors' options (RGB
  -> yuv420p included) and by the anchors' ffmpeg command (process start included); that
  command's stream decoded by libavcodec in process (-> rgb24 arrays, one thread) and by the
  anchors' ffmpeg decode command (process start included). The ratios are against the
  in-process figures.

One untimed encode and decode of 5 frames by each codec first (first-call costs). Both codecs
code on one intra-op thread (``codecs/determinism.py``), so one x265 thread is the like-for-like
baseline. Each figure is the best of ``repeats`` interleaved runs.

**Bits.** The encoder's ``CodingReport``: the entropy-coded strings' bits (``payload_bytes``)
over ``model_bits`` (-sum log2 p of the coded symbols at the quantized frequencies they were
coded with), and ``model_bits`` over ``estimate_bits`` (the same at the model's exact
probabilities: what quantizing them costs); the container (header, CONFIG, chunk headers, model
checks, CRCs, END) separately as ``overhead_bytes``. The latent codec's report beside.

**Training** (no codec folder needed). Steps/s of each stage under ``trainer.fit`` and in a hand
loop doing the stage's own work, on the same replayed batches (``bench_train``'s method): the
tiny recipes' models (recipes/tiny/progressive_quantizer.yaml, progressive_context.yaml) on
latents of 17-frame crops of the sample shards at the recipes' batch and crop sizes, computed
once by ``bench_train``'s tokenizer (exports/tokenizer_tiny, else a random one of its size).
Stage 2's frozen stage-1 quantizer is the recipe's, freshly initialised (seeded; its tokens cost
the same whatever its weights), given to the stage as a module instead of ``quantizer_path``.
One torch thread (as ``bench_train.CODEC_THREADS``): both steps are many small ops.

    python -m benchmarks.bench_progressive [--codec FOLDER] [--quick] [--part codec|training|both]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import tempfile
import time
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path
from typing import Any

import torch
import yaml

from benchmarks.table import print_table

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CODEC = REPO / "checkpoints" / "progressive_tiny"
SAME_TOKENIZER = REPO / "checkpoints" / "latent_tiny_v1"  # the latent codec on progressive_tiny's tokenizer
QUANTIZER_RECIPE = REPO / "recipes/tiny/progressive_quantizer.yaml"
CONTEXT_RECIPE = REPO / "recipes/tiny/progressive_context.yaml"
FRAMES = 33  # 1 + 4 x 8: whole latent frames, no padding
X265_CRF = 35  # the middle of gvc eval's default x265 ladder (anchor_commands.DEFAULT_CRFS)
TRAIN_THREADS = 1


def _best(runs: list[float]) -> float:
    return max(runs) if runs else float("nan")


def _fps(frames: int, seconds: float) -> float:
    return frames / seconds


# ---- x265 as the anchors run it -------------------------------------------------------------------


def _anchor_options(height: int, width: int, fps: float) -> tuple[dict[str, str], list[str]]:
    """libx265's options for PyAV, read from the anchors' own ffmpeg command (so they cannot
    drift from gvc eval's), and that command."""
    from gvc_train.eval.anchor_commands import encode_command

    cmd = encode_command("x265", X265_CRF, height=height, width=width, fps=fps, low_delay=True, intra_period=-1, threads=1)
    return {"preset": cmd[cmd.index("-preset") + 1], "crf": cmd[cmd.index("-crf") + 1], "x265-params": cmd[cmd.index("-x265-params") + 1]}, cmd


def x265_anchor(frames_THWC: Any, fps: float, repeats: int, work: Path) -> dict[str, Any]:
    """x265 as the anchors code (one thread), best of ``repeats`` of each: libx265 in process
    (PyAV, the anchors' options) and the anchors' ffmpeg encode command (process start
    included) frames/s; that command's stream decoded by libavcodec in process and by the
    anchors' ffmpeg decode command; the stream's size."""
    import av

    from gvc_train.eval.anchor_commands import decode_command, pad_frames, require_encoder, write_raw_input

    require_encoder("x265")  # AnchorError (one line) without an ffmpeg that has libx265
    count = len(frames_THWC)
    height, width = write_raw_input(frames_THWC, "x265", work / "input.rgb")
    frames = pad_frames(frames_THWC, height, width)
    options, encode_cmd = _anchor_options(height, width, fps)
    decode_cmd = decode_command("x265")
    stream_path = work / encode_cmd[-1]
    rate = Fraction(fps).limit_denominator(100000)
    runs: dict[str, list[float]] = {"encode_fps": [], "ffmpeg_cli_encode_fps": [], "decode_fps": [], "ffmpeg_cli_decode_fps": []}
    for _ in range(repeats):
        enc = av.CodecContext.create("libx265", "w")
        enc.width, enc.height, enc.pix_fmt = width, height, "yuv420p"
        enc.time_base, enc.framerate = 1 / rate, rate
        enc.options = dict(options)
        started = time.perf_counter()
        for i, frame in enumerate(frames):
            vf = av.VideoFrame.from_ndarray(frame, format="rgb24").reformat(format="yuv420p")
            vf.pts = i
            enc.encode(vf)
        enc.encode(None)
        runs["encode_fps"].append(_fps(count, time.perf_counter() - started))
        runs["ffmpeg_cli_encode_fps"].append(_fps(count, _timed(lambda: subprocess.run(encode_cmd, cwd=work, check=True, capture_output=True))[0]))
        seconds, decoded = _timed(lambda: _libavcodec_decode(stream_path))
        if decoded != count:
            raise RuntimeError(f"x265 round trip gave {decoded} of {count} frames")
        runs["decode_fps"].append(_fps(count, seconds))
        runs["ffmpeg_cli_decode_fps"].append(_fps(count, _timed(lambda: subprocess.run(decode_cmd, cwd=work, check=True, capture_output=True))[0]))
    size = stream_path.stat().st_size
    return {
        "options": options, "command": " ".join(encode_cmd), **{k: _best(v) for k, v in runs.items()},
        "bytes": size, "bpp": size * 8 / (count * frames_THWC.shape[1] * frames_THWC.shape[2]),
    }  # fmt: skip


def _libavcodec_decode(path: Path) -> int:
    """Decode a raw HEVC file to rgb24 arrays on one thread; the frame count."""
    import av

    with av.open(str(path), format="hevc") as container:
        video = container.streams.video[0]
        video.thread_count = 1
        return sum(1 for frame in container.decode(video) if frame.to_ndarray(format="rgb24") is not None)


# ---- coding ---------------------------------------------------------------------------------------


def _timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    started = time.perf_counter()
    result = fn()
    return time.perf_counter() - started, result


def _drop(frame: Any) -> None:
    """A frame sink that keeps nothing: the codec's time, not a sink's."""


def bench_progressive_codec(folder: str | os.PathLike | None = None, quick: bool = False) -> dict[str, Any]:
    """The coding figures (module docstring); ``{"skipped": why}`` when ``folder`` holds no codec."""
    import numpy as np

    from benchmarks.bench_codec_memory import codec_folder, read_frames
    from gvc_train.codecs.base import CodecError, open_codec
    from gvc_train.data.sample_videos import HELD_OUT, sample_video
    from gvc_train.data.video_io import probe
    from gvc_train.eval.anchor_commands import AnchorError

    folder = Path(folder) if folder is not None else DEFAULT_CODEC
    if not (folder / "codec.json").is_file():
        return {"skipped": f"no codec folder at {folder} (no codec.json): the progressive coding rows are skipped"}
    repeats = 1 if quick else 2
    source = sample_video(HELD_OUT)
    info = probe(source)
    frames_THWC = np.stack(read_frames(source, FRAMES))
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        ours = open_codec(folder)
        # the latent codec on the same tokenizer (the first reference), else latent_tiny's fallback
        latent_folder, latent_which = (str(SAME_TOKENIZER), "checkpoints/latent_tiny_v1") if SAME_TOKENIZER.is_dir() else codec_folder(tmp)
        theirs = open_codec(latent_folder)
        top, cut_point = ours.num_rate_points - 1, ours.default_rate_point
        streams = {"top": work / "top.gvc", "cut": work / "cut.gvc", "latent": work / "latent.gvc"}
        runs: dict[str, list[float]] = {}
        reports: dict[str, Any] = {}
        cut: dict[str, Any] | None = None

        def record(name: str, seconds: float, report: Any) -> None:
            runs.setdefault(name, []).append(_fps(report.frames, seconds))
            reports.setdefault(name, report)

        for codec in (ours, theirs):  # untimed: first-call costs (allocations, lazy set-up) out of the figures
            codec.decode(codec.encode(source, work / "warm.gvc", codec.default_rate_point, max_frames=5).path, _drop)
        for _ in range(repeats):  # interleaved, best of each: the cores may be shared
            record("encode", *_timed(lambda: ours.encode(source, streams["top"], top, max_frames=FRAMES)))
            if cut is None:
                try:
                    cut = ours.truncate(streams["top"], streams["cut"], scales=cut_point + 1)
                except CodecError as e:  # a family whose streams cannot be cut: no cut rows
                    cut = {"error": str(e)}
            record("latent_encode", *_timed(lambda: theirs.encode(source, streams["latent"], theirs.default_rate_point, max_frames=FRAMES)))
            for name, codec, stream in (("decode", ours, "top"), ("cut_decode", ours, "cut"), ("latent_decode", theirs, "latent")):
                if name == "cut_decode" and "error" in cut:
                    continue
                record(name, *_timed(lambda: codec.decode(streams[stream], _drop)))
                record(f"{name}_latents_only", *_timed(lambda: codec.decode(streams[stream], None)))
        try:
            x265: dict[str, Any] = x265_anchor(frames_THWC, info.fps, repeats=1 if quick else 3, work=work)
        except AnchorError as e:
            x265 = {"error": str(e)}

    enc, lat = reports["encode"], reports["latent_encode"]
    result: dict[str, Any] = {
        "codec": str(folder.relative_to(REPO) if folder.is_relative_to(REPO) else folder),
        "family": ours.family,
        "latent_codec": latent_which,
        "video": f"{HELD_OUT} {info.width}x{info.height}",
        "frames": FRAMES,
        "repeats": repeats,
        "rate_points": ours.num_rate_points,
        "top_rate_point": top,
        "cut": cut,
        "fps": {name: _best(values) for name, values in runs.items()},
        "encode_report": enc.as_dict(),
        "latent_encode_report": lat.as_dict(),
        "bits": {name: _bits(report) for name, report in (("codec", enc), ("latent", lat))},
        "cut_bpp": reports["cut_decode"].bpp if "cut_decode" in reports else None,
        "x265": x265,
    }
    return result


def _bits(report: Any) -> dict[str, Any]:
    payload_bits = report.payload_bytes * 8
    return {
        "payload_bits": payload_bits, "model_bits": report.model_bits, "estimate_bits": report.estimate_bits,
        "written_over_model": payload_bits / report.model_bits if report.model_bits else None,
        "model_over_estimate": report.model_bits / report.estimate_bits if report.model_bits and report.estimate_bits else None,
        "overhead_bytes": report.overhead_bytes, "file_bytes": report.file_bytes,
        "overhead_share": report.overhead_bytes / report.file_bytes, "bpp": report.bpp,
    }  # fmt: skip


def codec_rows(r: dict[str, Any]) -> list[str]:
    """The lines ``benchmarks.run`` prints (none when the codec folder was missing)."""
    if "skipped" in r:
        return []
    fps, x, b = r["fps"], r["x265"], r["bits"]
    what = f"{r['video']}, {r['frames']} frames, {r['codec']}"
    lat = f"{r['latent_codec']}, quality {r['latent_encode_report']['quality']} ({b['latent']['bpp']:.3f} bpp)"
    family, top = r["family"], r["rate_points"]

    def vs_x265(ours: float, key: str) -> str:
        return f"; vs x265: {ours / x[key]:.4f}" if "error" not in x else ""

    if "error" in x:
        x_enc = x_dec = f"x265: not measured ({x['error']})"
    else:
        x265 = f"x265 {x['options']['preset']} crf {x['options']['crf']} low delay, 1 thread ({x['bpp']:.3f} bpp)"
        x_enc = f"{x265}: {x['encode_fps']:.0f} frames/s in process (the anchors' ffmpeg command, process start included: {x['ffmpeg_cli_encode_fps']:.0f})"
        x_dec = (f"{x265}, libavcodec in process: {x['decode_fps']:.0f} frames/s (the anchors' ffmpeg command, process start "
                 f"included: {x['ffmpeg_cli_decode_fps']:.0f})")  # fmt: skip
    rows = [
        f"| {family} codec encode, {what}, all {top} scales ({b['codec']['bpp']:.3f} bpp) | {fps['encode']:.2f} frames/s "
        f"| {lat}: {fps['latent_encode']:.2f} frames/s; {x_enc} | {fps['encode'] / fps['latent_encode']:.2f}"
        f"{vs_x265(fps['encode'], 'encode_fps')} |"
    ]
    for name in ("decode", "cut_decode"):
        if name not in fps:
            continue
        if name == "decode":
            label = f"all {top} scales ({b['codec']['bpp']:.3f} bpp)"
        else:
            c = r["cut"]
            label = f"cut after {c['scales']} of {c['of_scales']} scales ({r['cut_bpp']:.3f} bpp; the rest filled as gvc decode does)"
        ours, base, alone = fps[name], fps["latent_decode"], fps[f"{name}_latents_only"]
        rows.append(
            f"| {family} codec decode, {what}, {label} | {ours:.2f} frames/s (latents only, no pixels: {alone:.1f}) "
            f"| {lat}: {base:.2f} frames/s (latents only: {fps['latent_decode_latents_only']:.1f}); {x_dec} "
            f"| {ours / base:.2f} (latents only: {alone / fps['latent_decode_latents_only']:.2f}{vs_x265(ours, 'decode_fps')}) |"
        )
    c, l = b["codec"], b["latent"]

    def side(bits: dict[str, Any]) -> str:
        text = f"container {bits['overhead_bytes']} bytes ({bits['overhead_share'] * 100:.1f}% of the file)"
        if bits["model_over_estimate"] is not None:
            text += f"; model bits / bits at the exact probabilities {bits['model_over_estimate']:.4f}"
        return text

    rows.append(
        f"| {family} codec written bits / model bits, {what}, all {top} scales | {c['payload_bits']} bits of entropy-coded "
        f"strings, model {c['model_bits']:.0f} bits (-sum log2 p at the coded frequencies); {side(c)} "
        f"| {r['latent_codec']}: {l['payload_bits']} / {l['model_bits']:.0f} bits = {l['written_over_model']:.4f}; {side(l)} "
        f"| {c['written_over_model']:.4f} |"
    )
    return rows


# ---- training: Lightning vs a hand loop -----------------------------------------------------------


def _recipe(path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    config = yaml.safe_load(path.read_text())
    return dict(config["model"]["init_args"]), dict(config["data"]["init_args"])


def build_quantizer_stage(tokenizer: torch.nn.Module) -> Any:
    """Stage 1 of the recipe: its quantizer (fresh) on ``tokenizer``."""
    from gvc_train.lit.progressive_quantizer import ProgressiveQuantizerModule
    from gvc_train.models.progressive.quantizer import MultiScaleQuantizer

    args = _recipe(QUANTIZER_RECIPE)[0]
    quantizer = MultiScaleQuantizer(**args["quantizer"]["init_args"])
    kwargs = {k: v for k, v in args.items() if k not in ("quantizer", "tokenizer_path")}
    return ProgressiveQuantizerModule(quantizer=quantizer, tokenizer=tokenizer, **kwargs)


def build_context_stage(tokenizer: torch.nn.Module) -> Any:
    """Stage 2 of the recipe on a stage-1 quantizer of stage 1's recipe (seeded, untrained)."""
    from gvc_train.lit.progressive_context import ProgressiveContextModule
    from gvc_train.models.progressive.context_model import ProgressiveContextModel
    from gvc_train.models.progressive.quantizer import MultiScaleQuantizer

    args = _recipe(CONTEXT_RECIPE)[0]
    with torch.random.fork_rng():
        torch.manual_seed(1)
        quantizer = MultiScaleQuantizer(**_recipe(QUANTIZER_RECIPE)[0]["quantizer"]["init_args"])
    model = ProgressiveContextModel(**args["context_model"]["init_args"])
    kwargs = {k: v for k, v in args.items() if k not in ("context_model", "quantizer_path")}
    return ProgressiveContextModule(context_model=model, quantizer=quantizer, tokenizer=tokenizer, **kwargs)


def _optimizer_and_schedule(module: Any) -> tuple[torch.optim.Optimizer, Any]:
    """The stage's own optimizer and warm-up schedule (``configure_optimizers``)."""
    configured = module.configure_optimizers()
    if isinstance(configured, tuple):  # ([opt], [{"scheduler": ...}])
        return configured[0][0], configured[1][0]["scheduler"]
    return configured[0], None


def _hand_loop(
    module: Any, batches: list[dict], steps: int, warmup: int, loss_of: Callable[[Any], torch.Tensor | None],
    input_of: Callable[[dict], Any] = lambda batch: batch["latent"], after_step: Callable[[], None] | None = None,
) -> float:
    """Steps/s of ``loss_of(input_of(batch))`` (a batch's latent by default), backward, clip,
    optimizer step, schedule and ``after_step`` (an EMA update), after ``warmup`` steps."""
    opt, sched = _optimizer_and_schedule(module)
    params = [p for group in opt.param_groups for p in group["params"]]
    module.train()  # the stage keeps its frozen parts in eval mode
    start = 0.0
    for i in range(steps + warmup):
        if i == warmup:
            start = time.perf_counter()
        inputs = input_of(batches[i % len(batches)])
        if isinstance(inputs, torch.Tensor) and not torch.isfinite(inputs).all():  # the stage checks before its forward too
            continue
        loss = loss_of(inputs)
        if loss is None or not torch.isfinite(loss):
            continue
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if module.hparams.grad_clip:
            torch.nn.utils.clip_grad_norm_(params, module.hparams.grad_clip)
        opt.step()
        if sched is not None:
            sched.step()
        if after_step is not None:
            after_step()
    return steps / (time.perf_counter() - start)


def plain_quantizer_steps_per_second(tokenizer: torch.nn.Module, batches: list[dict], steps: int, warmup: int = 3) -> float:
    """``ProgressiveQuantizerModule.training_step`` by hand: the stage's objective (latent MSE +
    quantizer losses; codebook EMA and scale dropout in the forward), backward, clip, Adam, warm-up."""
    torch.manual_seed(0)
    module = build_quantizer_stage(tokenizer)
    return _hand_loop(module, batches, steps, warmup, lambda latent: module.objective(latent, None)["loss"])


def plain_context_steps_per_second(tokenizer: torch.nn.Module, batches: list[dict], steps: int, warmup: int = 3) -> float:
    """``ProgressiveContextModule.training_step`` by hand: the frozen quantizer's token pyramids,
    the model's bits of every clip and scale, bpp, the training-token histogram, backward, clip,
    AdamW, warm-up."""
    from gvc_train.lit.tokenizer_latents import video_pixels

    torch.manual_seed(0)
    module = build_context_stage(tokenizer)

    def loss_of(latent: torch.Tensor) -> torch.Tensor:
        bits, pyr = module.clip_bits(latent)
        module.train_histogram += module.token_histogram(pyr["tokens"])
        return (bits / video_pixels(module.tokenizer, latent)).sum(1).mean()

    return _hand_loop(module, batches, steps, warmup, loss_of)


def bench_progressive_training(train_shards: str, steps: int = 20, repeats: int = 2) -> dict[str, Any]:
    """Both stages' steps/s, Lightning and hand loop, best of ``repeats`` interleaved runs each."""
    from benchmarks.bench_train import _latent_batches, _tokenizer, lightning_steps_per_second

    tokenizer, which = _tokenizer()
    stages = {
        "quantizer": (QUANTIZER_RECIPE, build_quantizer_stage, plain_quantizer_steps_per_second),
        "context": (CONTEXT_RECIPE, build_context_stage, plain_context_steps_per_second),
    }
    result: dict[str, Any] = {}
    threads = torch.get_num_threads()
    torch.set_num_threads(TRAIN_THREADS)
    try:
        for name, (recipe, build, plain) in stages.items():
            batches = _latent_batches(train_shards, tokenizer, 4, _recipe(recipe)[1])
            best_l = best_p = 0.0
            for _ in range(repeats):  # interleaved, best of each: the cores may be shared
                best_p = max(best_p, plain(tokenizer, batches, steps))
                best_l = max(best_l, lightning_steps_per_second(lambda: build(tokenizer), batches, steps))
            result[name] = {
                "recipe": str(recipe.relative_to(REPO)), "tokenizer": which, "torch_threads": TRAIN_THREADS,
                "batch_shape_BCthw": list(batches[0]["latent"].shape), "steps": steps,
                "lightning_steps_per_s": best_l, "plain_steps_per_s": best_p, "lightning_over_plain": best_l / best_p,
            }  # fmt: skip
    finally:
        torch.set_num_threads(threads)
    return result


def training_rows(r: dict[str, Any]) -> list[str]:
    rows = []
    for name, s in r.items():
        what = f"batch {'x'.join(map(str, s['batch_shape_BCthw']))}, latents of {s['tokenizer']}, {s['torch_threads']} torch thread"
        rows.append(
            f"| progressive {name} training step, {s['recipe']} ({what}) | Lightning: {s['lightning_steps_per_s']:.2f} steps/s "
            f"| hand-written loop: {s['plain_steps_per_s']:.2f} steps/s | {s['lightning_over_plain']:.2f} |"
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--codec", default=str(DEFAULT_CODEC), help="a progressive codec folder (default: %(default)s)")
    parser.add_argument("--shards", default=str(REPO / "data/shards/train/*.tar"))
    parser.add_argument("--quick", action="store_true", help="one repeat, fewer steps")
    parser.add_argument("--steps", type=int, default=None, help="timed training steps (default 20, quick 8)")
    parser.add_argument("--part", choices=("codec", "training", "both"), default="both")
    args = parser.parse_args(argv)
    os.environ.setdefault("WANDB_MODE", "disabled")
    rows: list[str] = []
    started = time.perf_counter()
    if args.part != "training":
        codec = bench_progressive_codec(args.codec, quick=args.quick)
        if "skipped" in codec:
            print(f"bench_progressive: {codec['skipped']}")
        rows += codec_rows(codec)
    if args.part != "codec":
        steps = args.steps or (8 if args.quick else 20)
        rows += training_rows(bench_progressive_training(args.shards, steps, 1 if args.quick else 2))
    if rows:
        print()
        print_table(rows)
    print(f"\n({time.perf_counter() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
