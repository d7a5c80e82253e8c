"""Tiny progressive codec folders and a tiny clip, for the tests that code with the progressive
family (test_progressive_codec.py, test_truncation_curve.py): one copy of the builders.

Random components (a 4-channel CausalVAE, a 3-scale quantizer, a one-block context model):
mechanics, not quality. A 40x32 clip of 9 frames is 3 latent frames of 5x4.
"""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image

from gvc_train.codecs.codec_folder import write_codec_json
from gvc_train.components import save_component
from gvc_train.models import CausalVAE, MultiScaleQuantizer, ProgressiveContextModel

FRAMES, WIDTH, HEIGHT = 9, 40, 32
SCALES = 3
GROUP = 2  # latent frames per group: 3 latent frames make groups of 2 and 1
KINDS = ("codebook", "bitwise")
TOKENIZER = dict(latent_channels=4, base_channels=8, channel_mults=[1, 2, 2, 2], num_res_blocks=1, mid_attention=False, norm_groups=8)
QUANTIZER = dict(latent_channels=4, code_dim=4, codebook_size=16, scales=[0.25, 0.5, 1.0], refine_groups=2)
CONTEXT = dict(num_scales=SCALES, code_dim=4, codebook_size=16, width=16, depth=1, heads=2, mlp_ratio=2.0, pos_grid=2, context_grid=2, past_frames=1)


def components(kind: str) -> dict[str, torch.nn.Module]:
    """The three components of a folder of quantizer ``kind`` (seeded: the same every call)."""
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return {
            "tokenizer": CausalVAE(**TOKENIZER).eval(),
            "quantizer": MultiScaleQuantizer(**QUANTIZER, kind=kind).eval(),
            "context_model": ProgressiveContextModel(**CONTEXT, kind=kind).eval(),
        }


def write_codec_dir(folder: Path, kind: str) -> Path:
    """An exported progressive codec folder of quantizer ``kind`` in ``folder``."""
    for name, module in components(kind).items():
        save_component(module, folder, name)
    write_codec_json(folder, "progressive", {"qualities": SCALES}, {"recipe": "tests/progressive_fixtures.py (random weights)"})
    return folder


def write_clip(folder: Path) -> Path:
    """FRAMES PNGs of WIDTH x HEIGHT cut from the held-out carphone clip into ``folder``."""
    from gvc_train.data.sample_videos import sample_video
    from gvc_train.data.video_io import VideoReader

    with VideoReader(sample_video("carphone_pristine.mp4")) as reader:
        for i, frame in enumerate(reader.frames(FRAMES)):
            Image.fromarray(frame[40 : 40 + HEIGHT, 60 : 60 + WIDTH]).save(folder / f"im{i + 1}.png")
    return folder
