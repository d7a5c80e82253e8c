"""The controlled diffusion stage's validation videos: the source clip beside what the EMA model
generates from its conditions (keyframes, controls, captions), for
:class:`~gvc_train.lit.callbacks.ReconstructionVideoLogger`.

Generation is a few Euler steps with a fixed seed: every validation draws the same noise, so the
videos show the model's progress, not new draws; a few steps keep it cheap (it runs on rank zero
while the other ranks wait at the next collective).
"""

from __future__ import annotations

from typing import Any

import torch

from gvc_train.lit.tokenizer_latents import clip_latent, target_pixels

VALIDATION_SAMPLING_STEPS = 8


def first_clips(batch: Any, count: int) -> Any:
    """The first ``count`` clips of a batch: every tensor and list (nested in dicts) cut on its
    first axis; anything else (a scalar, None) as it is."""
    if isinstance(batch, dict):
        return {k: first_clips(v, count) for k, v in batch.items()}
    if isinstance(batch, (torch.Tensor, list, tuple)):
        return batch[:count]
    return batch


def validation_videos(
    module: Any, batch: dict[str, Any], max_clips: int = 2, num_steps: int = VALIDATION_SAMPLING_STEPS, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(source, generated)``, each float ``B x 3 x T x H x W`` in [0, 1] with ``B <= max_clips``.

    ``module`` is a :class:`~gvc_train.lit.controlled_diffusion.ControlledDiffusionModule`; the
    source is the batch's ``video``, or for latent-only batches the frozen tokenizer's decoding of
    the latent; the generated clip is ``module.sample(...)`` (the EMA model, no guidance)."""
    if max_clips < 1 or num_steps < 1:
        raise ValueError(f"validation videos need max_clips >= 1 and num_steps >= 1, got {max_clips} and {num_steps}")
    batch = first_clips(batch, max_clips)
    with torch.no_grad():
        source = batch.get("video")
        if source is None:  # latent-only batch: the tokenizer's decoding (a batch with video needs no encoding here)
            source = target_pixels(module.tokenizer, clip_latent(module.tokenizer, batch, module.stage_name)[0], None)
        generated = module.sample(batch, num_steps=num_steps, guidance_scale=1.0, seed=seed)
    return source.float().clamp(0, 1), generated.float().clamp(0, 1)
