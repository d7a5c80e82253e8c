"""What every stage that trains on a frozen tokenizer's latents does with a batch.

A batch holds ``latent`` (latent shards: float B x C x t x h x w) or ``video`` (B x 3 x T x H x
W in [0, 1], tokenized here), or both. The rate of a clip is counted per video pixel that its
latent stands for, and a pixel loss compares the frozen tokenizer's decoding of a reconstructed
latent with the video (or, for latent-only batches, with the tokenizer's decoding of the
latent itself).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


def clip_latent(tokenizer: nn.Module, batch: dict[str, Any], who: str = "the stage") -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(latent float32 B x C x t x h x w, video or None)`` of a batch: its ``latent``, else the
    tokenizer's posterior mean of its ``video``."""
    video = batch.get("video")
    if "latent" in batch:
        latent = batch["latent"]
    elif video is not None:
        with torch.no_grad():
            latent = tokenizer.encode(video).mode()
    else:
        raise ValueError(f"{who}: a batch needs 'latent' (B x C x t x h x w) or 'video' (B x 3 x T x H x W)")
    if latent.dim() != 5:
        raise ValueError(f"{who}: expected a latent B x C x t x h x w, got {tuple(latent.shape)}")
    return latent.float(), video


def video_pixels(tokenizer: nn.Module, latent: torch.Tensor) -> int:
    """Video pixels (frames x height x width) one clip's ``B x C x t x h x w`` latent stands for:
    ``(1 + ts (t - 1)) x (s h) x (s w)`` with the tokenizer's temporal and spatial strides."""
    t, h, w = latent.shape[-3:]
    s, ts = tokenizer.spatial_stride, tokenizer.temporal_stride
    return (1 + ts * (t - 1)) * (s * h) * (s * w)


def target_pixels(tokenizer: nn.Module, latent: torch.Tensor, video: torch.Tensor | None) -> torch.Tensor:
    """The pixels a reconstruction is compared with: the batch's video, or (no source video) the
    tokenizer's own decoding of the latent."""
    if video is not None:
        return video
    with torch.no_grad():
        return tokenizer.decode(latent)


def decoded_pixel_mse(tokenizer: nn.Module, recon_latent: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(video_recon, per-clip pixel MSE)``: the reconstructed latent through the frozen decoder."""
    video_recon = tokenizer.decode(recon_latent)
    return video_recon, (video_recon.float() - target.float()).pow(2).flatten(1).mean(dim=1)
