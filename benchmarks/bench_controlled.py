"""The controlled-generation family at the tiny recipe's size on the CPU: sampling steps/s,
decode frames/s, and its training stage under Lightning beside a hand-written loop.

The model is the tiny CGVC recipe's transformer (recipes/tiny/controlled_cgvc.yaml: its sizes,
luma control, coding settings), with **random weights**: speed does not depend on them. Every
side runs on one torch thread, as the codecs decode (``codecs/determinism.py``).

- **Sampling**: Euler steps/s of ``models/flow/sampler.sample`` on one 17-frame 176x144 clip
  (latent 16 x 5 x 18 x 22, the luma map at the recipe's control scale, the first and closing
  keyframes placed): the recipe's unguided step (guidance 1: one forward) beside the same step
  with classifier-free guidance (scale 1.5: a conditional and an unconditional forward).
- **Decode**: a controlled codec folder built in a temporary directory from
  ``checkpoints/cgvc_tiny``'s tokenizer and keyframe latent codec (the recipe's) (else random ones of the
  tiny recipes' sizes), the random transformer and the recipe's coding settings; the first
  ``FRAMES`` frames of carphone (176x144) encoded with the recipe's luma and adaptive keyframes,
  then decoded (keyframes, luma, every clip generated at the recipe's 20 steps, frames to a
  callback that drops them), beside the latent codec alone coding the same frames at its
  default rate point (``bench_codec_memory.codec_folder``).
- **Training**: steps/s of the stage under ``trainer.fit`` and in a hand loop doing its own
  work (``bench_train``'s method: the same replayed batches): batch 4 of 17-frame 176x144 clips
  of carphone with their luma (factor 4, as in the control shards), the recipe's model and
  options but fixed clip lengths (no ``latent_frames_range``: both loops see the same shapes)
  and no keyframe codec (not used in training). The recipe's latent cache is kept, and the
  warm-up steps cover every batch, so the timed steps find the tokenizer's latents cached.

Each figure is the best of ``repeats`` interleaved runs.

    python -m benchmarks.bench_controlled [--quick]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import yaml

from benchmarks.table import print_table

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "recipes/tiny/controlled_cgvc.yaml"
LATENT_TINY = REPO / "checkpoints/cgvc_tiny"  # its frozen tokenizer and keyframe coder (the recipe's)
# Without the recipe (its sizes as the issue set them): 16 latent channels, patch (1, 2, 2).
FALLBACK_TRANSFORMER = dict(
    latent_channels=16, patch_size=[1, 2, 2], width=96, depth=4, heads=4, mlp_ratio=4.0, text_dim=32, controls={"luma": 1},
    control_depth=1, control_hidden=16, control_scale=2, max_latent_frames=8,
)  # fmt: skip
FALLBACK_CODING = dict(
    clip_latent_frames=5, keyframes={"name": "adaptive", "max_interval": 16}, end_role="adaptive", controls=["luma"],
    control_settings={"luma": {"extractor": {"factor": 4}, "coder": {"max_error": 0, "temporal": True}}}, keyframe_quality=3, num_steps=20,
)  # fmt: skip
FRAMES = 33  # two 17-frame clips at the adaptive policy's max_interval 16
CLIP_FRAMES, LATENT_THW = 17, (5, 18, 22)
GUIDANCE = 1.5
THREADS = 1


def recipe() -> tuple[dict[str, Any], str]:
    """The tiny CGVC recipe's model ``init_args`` (and what they came from)."""
    if RECIPE.is_file():
        return dict(yaml.safe_load(RECIPE.read_text())["model"]["init_args"]), str(RECIPE.relative_to(REPO))
    return {"transformer": {"init_args": FALLBACK_TRANSFORMER}, "coding": FALLBACK_CODING, "latent_scale": 0.5}, "the issue's sizes (no tiny recipe)"


def transformer(args: dict[str, Any], seed: int = 0) -> torch.nn.Module:
    """The recipe's transformer, random (seeded); its zero-initialised output layers given values
    so that it does not predict zero."""
    from gvc_train.models.controlled.transformer import ControlledVideoTransformer

    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = ControlledVideoTransformer(**args["transformer"]["init_args"])
        with torch.no_grad():
            for param in model.parameters():
                if not param.any():
                    param.copy_(0.02 * torch.randn_like(param))
    return model.eval()


def _best(runs: list[float]) -> float:
    return max(runs) if runs else float("nan")


def _drop(frame: Any) -> None:
    """A frame sink that keeps nothing: the codec's time, not a sink's."""


# ---- sampling ---------------------------------------------------------------------------------


def bench_sampling(steps: int = 8, repeats: int = 2) -> dict[str, Any]:
    """Steps/s of the sampler, unguided and guided (module docstring)."""
    from gvc_train.models.controlled.keyframe_latents import keyframe_conditions
    from gvc_train.models.controlled.transformer import KEYFRAMES
    from gvc_train.models.flow.modality_dropout import drop_masks
    from gvc_train.models.flow.sampler import sample

    args, which = recipe()
    model = transformer(args)
    C, (n, h, w) = model.latent_channels, LATENT_THW
    shape = (1, C, n, h, w)
    g = torch.Generator().manual_seed(0)
    keys = {0: ("first", torch.randn(1, C, h, w, generator=g)), n - 1: ("adaptive", torch.randn(1, C, h, w, generator=g))}
    maps = {  # 1 x C x T x H x W on the grid the control encoder expects
        name: torch.rand(1, int(model.config["controls"][name]), *model.control_encoders[name].expected_shape(LATENT_THW), generator=g)
        for name in model.control_names
    }
    conditions = {**keyframe_conditions(keys, shape), "controls": maps}
    names = [*model.control_names, KEYFRAMES]
    cond = {**conditions, "dropped": drop_masks(names, 1)}
    uncond = {**conditions, "dropped": drop_masks(names, 1, dropped=names)}
    runs: dict[str, list[float]] = {"unguided": [], "guided": []}
    threads = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    try:
        with torch.inference_mode():
            sample(model, shape, cond, generator=torch.Generator().manual_seed(1), num_steps=2)  # untimed: first-call costs
            for _ in range(repeats):  # interleaved, best of each: the cores may be shared
                for name, guidance in (("unguided", 1.0), ("guided", GUIDANCE)):
                    started = time.perf_counter()
                    sample(model, shape, cond, generator=torch.Generator().manual_seed(1), num_steps=steps,
                           guidance_scale=guidance, unconditional=uncond if guidance != 1.0 else None)  # fmt: skip
                    runs[name].append(steps / (time.perf_counter() - started))
    finally:
        torch.set_num_threads(threads)
    config = args["transformer"]["init_args"]
    return {
        "recipe": which, "latent_BCThw": list(shape), "tokens": n * (h // config["patch_size"][1]) * (w // config["patch_size"][2]),
        "width": config["width"], "depth": config["depth"], "steps": steps, "repeats": repeats, "guidance_scale": GUIDANCE,
        "recipe_steps": int(args["coding"].get("num_steps", 20)), "torch_threads": THREADS,
        "unguided_steps_per_s": _best(runs["unguided"]), "guided_steps_per_s": _best(runs["guided"]),
    }  # fmt: skip


# ---- decode -----------------------------------------------------------------------------------


def codec_folder(tmp: str) -> tuple[Path, str]:
    """A controlled codec folder of the recipe's transformer (random) on the recipe's tokenizer
    and keyframe codec (else random ones of their size); what its parts are."""
    from benchmarks.bench_codec_memory import codec_folder as latent_folder
    from gvc_train.codecs.codec_folder import write_codec_json
    from gvc_train.codecs.controlled import ControlledCodec
    from gvc_train.components import load_component, save_component
    from gvc_train.models.controlled.coding_settings import ControlledCodingSettings

    args, which = recipe()
    source, source_which = latent_folder(tmp)
    folder = Path(tmp) / "controlled_random"
    modules = {
        "tokenizer": load_component(source, "tokenizer").eval(),
        "latent_codec": load_component(source, "latent_codec").eval(),
        "transformer": transformer(args),
        "coding": ControlledCodingSettings(latent_scale=float(args.get("latent_scale", 1.0)), **args["coding"]),
    }
    ControlledCodec.check_components(modules, str(folder))
    for name, module in modules.items():
        save_component(module, folder, name)
    write_codec_json(folder, ControlledCodec.family, ControlledCodec.export_extras(modules), {"recipe": f"{which} (random transformer)"})
    return folder, f"{source_which}'s tokenizer and keyframe codec, {which}'s transformer (random weights)"


def bench_decode(frames: int = FRAMES, repeats: int = 2) -> dict[str, Any]:
    """Decode frames/s of a controlled stream beside the latent codec's (module docstring)."""
    from benchmarks.bench_codec_memory import codec_folder as latent_folder
    from gvc_train.codecs.base import describe_stream, open_codec
    from gvc_train.data.sample_videos import HELD_OUT, sample_video
    from gvc_train.data.video_io import probe

    source = sample_video(HELD_OUT)
    info = probe(source)
    runs: dict[str, list[float]] = {"decode": [], "latent_decode": []}
    with tempfile.TemporaryDirectory() as tmp:
        folder, which = codec_folder(tmp)
        ours = open_codec(folder)
        theirs_folder, theirs_which = latent_folder(tmp)
        theirs = open_codec(theirs_folder)
        work = Path(tmp)
        started = time.perf_counter()
        enc = ours.encode(source, work / "controlled.gvc", ours.default_rate_point, max_frames=frames)
        encode_fps = enc.frames / (time.perf_counter() - started)
        lat = theirs.encode(source, work / "latent.gvc", theirs.default_rate_point, max_frames=frames)
        keyframes = [row["keyframe"] for row in describe_stream(enc.path)["chunks"] if "keyframe" in row]
        for _ in range(repeats):  # interleaved, best of each (the first call's set-up costs fall out)
            for name, codec, stream in (("decode", ours, enc.path), ("latent_decode", theirs, lat.path)):
                started = time.perf_counter()
                report = codec.decode(stream, _drop)
                runs[name].append(report.frames / (time.perf_counter() - started))
    return {
        "codec": which, "latent_codec": theirs_which, "video": f"{HELD_OUT} {info.width}x{info.height}", "frames": frames,
        "keyframes": keyframes, "controls": ours.default_controls, "num_steps": ours.settings.num_steps,
        "quality": enc.quality, "bpp": enc.bpp, "latent_quality": lat.quality, "latent_bpp": lat.bpp, "repeats": repeats,
        "encode_fps": encode_fps, "decode_fps": _best(runs["decode"]), "latent_decode_fps": _best(runs["latent_decode"]),
    }  # fmt: skip


# ---- training: Lightning vs a hand loop -------------------------------------------------------


def build_stage(seed: int = 0) -> Any:
    """The recipe's stage (module docstring: fixed clip lengths, no keyframe codec)."""
    from gvc_train.lit.controlled_diffusion import ControlledDiffusionModule

    args, _ = recipe()
    kwargs = {k: v for k, v in args.items() if k not in ("transformer", "latent_codec_path", "latent_frames_range", "tokenizer_path")}
    tokenizer_path = args.get("tokenizer_path", str(LATENT_TINY.relative_to(REPO)))
    tokenizer = str(REPO / tokenizer_path) if (REPO / tokenizer_path / "tokenizer.json").is_file() else None
    torch.manual_seed(seed)
    if tokenizer is None:
        from benchmarks.bench_train import _tokenizer

        return ControlledDiffusionModule(transformer(args, seed), tokenizer=_tokenizer()[0], **kwargs)
    return ControlledDiffusionModule(transformer(args, seed), tokenizer_path=tokenizer, **kwargs)


def training_batches(count: int = 2, batch: int = 4) -> list[dict[str, Any]]:
    """``count`` batches of ``batch`` 17-frame carphone clips and their luma (the shards' layout)."""
    from benchmarks.bench_codec_memory import read_frames
    from gvc_train.controls.registry import build_extractor
    from gvc_train.data.sample_videos import HELD_OUT, sample_video
    from gvc_train.frames import frames_to_tensor

    import numpy as np

    args, _ = recipe()
    luma = build_extractor("luma", **args["coding"].get("control_settings", {}).get("luma", {}).get("extractor", {}))
    frames = np.stack(read_frames(sample_video(HELD_OUT), count * batch * 8 + CLIP_FRAMES))
    out = []
    for b in range(count):
        clips = [frames_to_tensor(frames[s : s + CLIP_FRAMES])[0] for s in range(b * batch * 8, (b + 1) * batch * 8, 8)]
        video = torch.stack(clips)
        out.append({"video": video, "controls": {"luma": torch.stack([luma.extract(c) for c in clips])}})
    return out


def plain_steps_per_second(batches: list[dict[str, Any]], steps: int, warmup: int) -> float:
    """``ControlledDiffusionModule.training_step`` by hand: the tokenizer latents (cached), the
    conditions, keyed dropout and times, the masked flow-matching loss, backward, clip, AdamW,
    warm-up schedule, EMA update."""
    from benchmarks.bench_progressive import _hand_loop
    from gvc_train.lit.step_guard import step_noise

    module = build_stage()

    def loss_of(batch: dict[str, Any]) -> torch.Tensor:
        x0 = module.latent(batch)
        B = x0.shape[0]
        conditions = module.conditions(batch, x0)
        with step_noise(module, B):
            dropped = module.dropout(B, x0.device)
            return module.loss_B(module.transformer, x0, conditions, dropped, module.times.draw(B, x0.device)).mean()

    return _hand_loop(module, batches, steps, warmup, loss_of, input_of=lambda batch: batch, after_step=module.update_ema)


def bench_training(steps: int = 10, repeats: int = 2) -> dict[str, Any]:
    """Steps/s under Lightning and in the hand loop, best of ``repeats`` interleaved runs each."""
    from benchmarks.bench_train import lightning_steps_per_second

    batches = training_batches()
    warmup = len(batches) + 1  # every batch's latents cached before the clock starts
    best_l = best_p = 0.0
    threads = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    try:
        for _ in range(repeats):
            best_p = max(best_p, plain_steps_per_second(batches, steps, warmup))
            best_l = max(best_l, lightning_steps_per_second(build_stage, batches, steps, warmup=warmup))
    finally:
        torch.set_num_threads(threads)
    return {
        "recipe": recipe()[1], "batch_shape_BCTHW": list(batches[0]["video"].shape), "steps": steps, "torch_threads": THREADS,
        "lightning_steps_per_s": best_l, "plain_steps_per_s": best_p, "lightning_over_plain": best_l / best_p,
    }  # fmt: skip


# ---- all of it --------------------------------------------------------------------------------


def bench_controlled(quick: bool = False) -> dict[str, Any]:
    repeats = 1 if quick else 2
    return {
        "sampling": bench_sampling(steps=4 if quick else 8, repeats=repeats),
        "decode": bench_decode(frames=17 if quick else FRAMES, repeats=repeats),
        "training": bench_training(steps=4 if quick else 10, repeats=repeats),
    }


def table_rows(r: dict[str, Any]) -> list[str]:
    """The lines ``benchmarks.run`` prints."""
    s, d, t = r["sampling"], r["decode"], r["training"]
    shape = "x".join(map(str, s["latent_BCThw"]))
    ms = 1000 / s["unguided_steps_per_s"]
    rows = [
        f"| controlled transformer sampling step, {s['recipe']} (width {s['width']}, depth {s['depth']}, random weights; latent {shape}, "
        f"{s['tokens']} tokens: a 17-frame 176x144 clip; {s['torch_threads']} torch thread) | unguided (the recipe's guidance 1): "
        f"{s['unguided_steps_per_s']:.1f} steps/s ({ms:.0f} ms; {s['recipe_steps']} steps a clip: {s['recipe_steps'] * ms / 1000:.1f} s) "
        f"| with classifier-free guidance {s['guidance_scale']} (two forwards a step): {s['guided_steps_per_s']:.1f} steps/s "
        f"| {s['unguided_steps_per_s'] / s['guided_steps_per_s']:.2f} |",
        f"| controlled codec decode, {d['video']}, {d['frames']} frames (keyframes {d['keyframes']}, controls {', '.join(d['controls']) or 'none'}, "
        f"{d['num_steps']} steps a clip; {d['bpp']:.3f} bpp; {d['codec']}) | {d['decode_fps']:.2f} frames/s "
        f"| {d['latent_codec']}, quality {d['latent_quality']} ({d['latent_bpp']:.3f} bpp): {d['latent_decode_fps']:.2f} frames/s "
        f"| {d['decode_fps'] / d['latent_decode_fps']:.2f} |",
        f"| controlled diffusion training step, {t['recipe']} (batch {'x'.join(map(str, t['batch_shape_BCTHW']))} with luma, latents cached, "
        f"fixed clip length, {t['torch_threads']} torch thread) | Lightning: {t['lightning_steps_per_s']:.2f} steps/s "
        f"| hand-written loop: {t['plain_steps_per_s']:.2f} steps/s | {t['lightning_over_plain']:.2f} |",
    ]
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="one repeat, fewer steps and frames")
    args = parser.parse_args(argv)
    os.environ.setdefault("WANDB_MODE", "disabled")
    started = time.perf_counter()
    result = bench_controlled(quick=args.quick)
    print()
    print_table(table_rows(result))
    print(f"\n({time.perf_counter() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
