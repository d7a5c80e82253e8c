"""A tiny random controlled-generation codec folder and a synthetic clip for it, shared by the
codec's tests, its fuzz, ``gvc eval``'s control ablation and the bench's quick test.

11 frames of 40x32; keyframes every 4 frames (fixed clips of 5) give keyframes 0, 4, 8, 10: two
whole clips and a 3-frame one padded to 5; the longest clip is 1 + 4 (3 - 1) = 9 frames.
Mechanics, not quality.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from gvc_train.codecs.codec_folder import write_codec_json
from gvc_train.components import save_component
from gvc_train.models import CausalVAE, ControlledVideoTransformer, LatentVideoCodec
from gvc_train.models.controlled.coding_settings import ControlledCodingSettings

FRAMES, WIDTH, HEIGHT = 11, 40, 32
TOKENIZER = dict(latent_channels=4, base_channels=8, channel_mults=[1, 2, 2, 2], num_res_blocks=1, mid_attention=False, norm_groups=8)
LATENT_CODEC = dict(latent_channels=4, channels=8, y_channels=4, z_channels=4, memory_channels=4, num_res_blocks=1, num_qualities=3)
TRANSFORMER = dict(
    latent_channels=4, patch_size=[1, 1, 1], width=16, depth=2, heads=2, mlp_ratio=2.0, text_dim=8,
    controls={"luma": 1, "flow": 2}, control_depth=1, control_hidden=4, control_frames_per_latent=4,
    control_scale=2, max_latent_frames=4,
)  # fmt: skip
SETTINGS = dict(
    latent_scale=1.0, clip_latent_frames=3, keyframes={"name": "fixed", "clip_frames": 5}, end_role="last",
    controls=["luma", "flow"], control_settings={"flow": {"extractor": {"preset": "fast"}}}, keyframe_quality=1,
    num_steps=2, shift=1.0, guidance_scale=1.5, seed=7,
)  # fmt: skip


def write_codec_folder(
    folder: Path, family: str, *, seed: int = 0, transformer: dict[str, Any] | None = None,
    settings: dict[str, Any] | None = None, extra: dict[str, torch.nn.Module] | None = None,
) -> Path:  # fmt: skip
    """Random weights (seeded) for the tokenizer, keyframe codec and transformer, saved with the
    coding settings and ``extra`` components (a text encoder) as an exported ``family`` folder.
    The transformer's zero-initialised layers get values: a fresh one predicts zero."""
    folder.mkdir(parents=True, exist_ok=True)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        modules = {
            "tokenizer": CausalVAE(**TOKENIZER),
            "latent_codec": LatentVideoCodec(**LATENT_CODEC),
            "transformer": ControlledVideoTransformer(**(transformer or TRANSFORMER)),
            "coding": ControlledCodingSettings(**(settings or SETTINGS)),
            **(extra or {}),
        }
        with torch.no_grad():
            for param in modules["transformer"].parameters():
                if not param.any():
                    param.copy_(0.1 * torch.randn_like(param))
    modules["latent_codec"].eval().update(force=True)
    for name, module in modules.items():
        save_component(module.eval(), folder, name)
    write_codec_json(folder, family, {"qualities": LATENT_CODEC["num_qualities"]}, {"recipe": "tests/controlled_codec_fixtures.py (random weights)"})
    return folder


def write_text_codec_folder(folder: Path, **settings: Any) -> Path:
    """The text variant (``controlled_text``): luma and a caption by default, through a tiny
    CLIP text encoder (tests/component_cases.py); ``settings`` override the coding settings."""
    from component_cases import _text_encoder

    return write_codec_folder(
        folder, "controlled_text", seed=1, transformer={**TRANSFORMER, "text_dim": 16},
        settings={**SETTINGS, "controls": ["luma", "caption"], "guidance_scale": 1.0, **settings}, extra={"text_encoder": _text_encoder()},
    )  # fmt: skip


def write_moving_square_clip(folder: Path, frames: int = FRAMES) -> Path:
    """A square moving over a gradient as PNGs: frames that differ, so flow and luma carry something."""
    folder.mkdir(parents=True, exist_ok=True)
    ys, xs = np.mgrid[0:HEIGHT, 0:WIDTH]
    for t in range(frames):
        frame = np.stack([xs * 6, ys * 7, np.full_like(xs, 90)], axis=-1).astype(np.uint8)
        frame[8:20, 2 + 2 * t : 14 + 2 * t] = (230, 40, 40)
        Image.fromarray(frame).save(folder / f"frame_{t + 1:06d}.png")
    return folder
