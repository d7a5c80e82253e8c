"""Where keyframes sit in a clip's latent, and what latent stands for a keyframe.

One convention for training (``lit/controlled_diffusion.py``) and the codec
(``codecs/controlled.py``), so the model sees at decode time what it saw in training:

* A clip has ``T = 1 + ts (t - 1)`` frames for ``t`` latent frames (``ts``: the tokenizer's
  temporal stride). Latent frame 0 stands for frame 0 alone, latent frame ``k > 0`` for frames
  ``ts (k - 1) + 1 .. ts k``: a keyframe at frame ``f`` belongs to latent frame ``ceil(f / ts)``
  (:func:`latent_frame_of`); latent frame ``k``'s own keyframe position is frame ``ts k``
  (:func:`pixel_frame_of`), the last frame of its group: the first and the last frame of a clip
  are at latent frames 0 and ``t - 1``.
* The latent **of a keyframe** is the tokenizer's encoding of that frame alone (a one-frame
  video: the causal tokenizer's intra latent), times the stage's ``latent_scale``, not the
  clip latent's frame: a decoder has the decoded keyframe, not the frames around it, and the
  intra latent is what it can compute. For frame 0 the two are the same.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from torch import nn

from gvc_train.models.controlled.embeddings import KEY_ROLES


def latent_frame_of(pixel_frame: int, temporal_stride: int) -> int:
    """The latent frame a clip's frame ``pixel_frame`` belongs to."""
    if pixel_frame < 0:
        raise ValueError(f"frame index must be >= 0, got {pixel_frame}")
    return math.ceil(pixel_frame / temporal_stride)


def pixel_frame_of(latent_frame: int, temporal_stride: int) -> int:
    """The clip frame a keyframe of latent frame ``latent_frame`` is: the last of its group."""
    return latent_frame * temporal_stride


def clip_frames_for(latent_frames: int, temporal_stride: int) -> int:
    """Frames of a clip with ``latent_frames`` latent frames."""
    return 1 + temporal_stride * (latent_frames - 1)


@torch.no_grad()
def keyframe_latents(tokenizer: nn.Module, frames_BCTHW: torch.Tensor, latent_scale: float = 1.0) -> torch.Tensor:
    """``B x C x K x h x w``: each of the ``K`` frames of ``frames_BCTHW`` (video in [0, 1])
    encoded alone (posterior mean), times ``latent_scale``. One batched call: the frames are
    independent one-frame videos."""
    B, _, K = frames_BCTHW.shape[:3]
    singles = frames_BCTHW.transpose(1, 2).reshape(B * K, frames_BCTHW.shape[1], 1, *frames_BCTHW.shape[3:])
    latent = tokenizer.encode(singles).mode().float() * latent_scale  # (B K) x C x 1 x h x w
    return latent.view(B, K, *latent.shape[1:]).squeeze(3).transpose(1, 2)


def keyframe_conditions(
    keys: Mapping[int, tuple[str, torch.Tensor]], latent_shape_BCThw: tuple[int, ...], device: torch.device | str = "cpu"
) -> dict[str, torch.Tensor]:
    """The transformer's keyframe inputs for one latent shape: ``keys`` maps a latent frame to
    ``(role, latent_BChw)`` (role in :data:`KEY_ROLES`, not ``"none"``); ``key_BCThw`` holds each
    latent at its frame (zero elsewhere), ``key_mask_B1Thw`` 1 there, ``key_roles_BT`` the role."""
    B, C, T, h, w = latent_shape_BCThw
    key_BCThw = torch.zeros(B, C, T, h, w, device=device)
    mask_B1Thw = torch.zeros(B, 1, T, h, w, device=device)
    roles_BT = torch.zeros(B, T, dtype=torch.long, device=device)
    for frame, (role, latent_BChw) in keys.items():
        if not 0 <= frame < T:
            raise ValueError(f"keyframe at latent frame {frame} is outside the clip's {T} latent frames")
        if role not in KEY_ROLES[1:]:
            raise ValueError(f"keyframe role {role!r}: one of {KEY_ROLES[1:]}")
        key_BCThw[:, :, frame] = latent_BChw.to(device=device, dtype=key_BCThw.dtype)
        mask_B1Thw[:, :, frame] = 1.0
        roles_BT[:, frame] = KEY_ROLES.index(role)
    return {"key_BCThw": key_BCThw, "key_mask_B1Thw": mask_B1Thw, "key_roles_BT": roles_BT}
