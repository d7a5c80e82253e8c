"""A tiny controlled diffusion stage and its clips, for the stage's scale-out, resume and
validation-video tests (tests/test_controlled_scale_out.py, tests/test_controlled_validation.py)."""

from __future__ import annotations

from typing import Any

import torch

from gvc_train.lit.controlled_diffusion import ControlledDiffusionModule
from gvc_train.models import CausalVAE
from gvc_train.models.controlled.transformer import ControlledVideoTransformer

from progressive_fixtures import FRAMES, HEIGHT, TOKENIZER, WIDTH

# 9 frames of 32 x 40 -> a 4 x 3 x 4 x 5 latent; patch (1, 1, 1) since 5 is odd.
TINY_TRANSFORMER = dict(
    latent_channels=4, patch_size=(1, 1, 1), width=16, depth=2, heads=2, mlp_ratio=2.0, text_dim=8,
    controls={"luma": 1, "edges": 1}, control_depth=1, control_hidden=8, max_latent_frames=8,
)  # fmt: skip


def tiny_controlled_module(seed: int = 0, **kwargs: Any) -> ControlledDiffusionModule:
    """Dropout high enough that every modality is dropped for some clips and kept for others,
    a warm-up (a scheduler state to compare), a fast EMA (it moves visibly in a few steps)."""
    torch.manual_seed(seed)
    args = dict(
        lr=2e-3, warmup_steps=2, ema_decay=0.5, time_kind="uniform", default_dropout=0.4, dropout_all_p=0.2,
    )  # fmt: skip
    return ControlledDiffusionModule(ControlledVideoTransformer(**TINY_TRANSFORMER), tokenizer=CausalVAE(**TOKENIZER), **{**args, **kwargs})


def controlled_clips(clips: int, seed: int = 3) -> dict[str, Any]:
    """``clips`` different clips with their luma and edges controls in the data module's layouts."""
    g = torch.Generator().manual_seed(seed)
    ramp = torch.linspace(0, 1, WIDTH).view(1, 1, 1, 1, WIDTH)
    video = (0.6 * ramp + 0.4 * torch.rand(clips, 3, FRAMES, HEIGHT, WIDTH, generator=g)).clamp(0, 1)
    luma = (video.mean(1) * 255).round().to(torch.uint8)  # B x T x H x W
    edges = luma.float().diff(dim=-1, prepend=luma[..., :1].float()).abs() > 40  # B x T x H x W bool
    return {"video": video, "controls": {"luma": luma, "edges": edges}}


def clip_slice(batch: Any, start: int, count: int) -> Any:
    """Clips ``start .. start + count`` of a batch (tensors and lists, nested in dicts)."""
    if isinstance(batch, dict):
        return {k: clip_slice(v, start, count) for k, v in batch.items()}
    return batch[start : start + count]
