"""Random clip lengths for the controlled diffusion stage: train on clips of several lengths.

The controlled codec cuts a video into clips at its keyframes, so the clips it generates are
often shorter than the longest (``clip_latent_frames``): the model must see short clips too. With
``latent_frames_range=[lo, hi]`` each training batch keeps only its first ``n`` latent frames,
``n`` drawn uniformly in ``lo..hi`` by :func:`draw_latent_frames` from a generator seeded by the
global step alone: every DDP rank draws the same ``n`` (one shape per step), and a resumed run
draws what the uninterrupted one did.

:func:`cut_batch` cuts everything the batch holds in time the same way: ``video`` to its first
``1 + ts (n - 1)`` frames, ``latent`` to ``n`` latent frames, and each control by its time axis
(``gvc_train.data.control_batch.TIME_AXIS``): per-frame ones to those frames, flow (one item per
pair of consecutive frames) to ``frames - 1`` pairs, pose's per-clip lists cut alike, a caption
(one per clip) kept. The closing keyframe (``"last"`` or ``-1``) then sits at latent frame ``n - 1``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from gvc_train.data.control_batch import TIME_AXIS
from gvc_train.models.controlled.keyframe_latents import clip_frames_for

_SALT = 0x6C656E67  # the draws' own stream: not the step's other seeded draws


def check_range(latent_frames_range: Sequence[int] | None, max_latent_frames: int) -> tuple[int, int] | None:
    """``(lo, hi)`` of a valid range (None stays None); one line for a bad one."""
    if latent_frames_range is None:
        return None
    if len(latent_frames_range) != 2:
        raise ValueError(f"latent_frames_range must be [lo, hi], got {list(latent_frames_range)}")
    lo, hi = (int(v) for v in latent_frames_range)
    if not 2 <= lo <= hi <= max_latent_frames:
        raise ValueError(f"latent_frames_range [{lo}, {hi}] must satisfy 2 <= lo <= hi <= the transformer's max_latent_frames {max_latent_frames}")
    return lo, hi


def draw_latent_frames(step: int, lo: int, hi: int) -> int:
    """The latent frames of step ``step``'s clips: uniform in ``lo..hi``, a function of the step only."""
    generator = torch.Generator().manual_seed(_SALT * 1_000_003 + int(step))
    return int(torch.randint(lo, hi + 1, (1,), generator=generator))


def _cut_control(name: str, control: Any, frames: int) -> Any:
    axis = TIME_AXIS.get(name)
    if axis is None:
        raise ValueError(f"cannot cut control {name!r} in time: unknown time axis (known: {sorted(TIME_AXIS)})")
    if axis == "clip":
        return control
    keep = frames if axis == "frames" else frames - 1
    if isinstance(control, torch.Tensor):  # B x T x ... (stacked)
        return control[:, :keep]
    return [clip[:keep] for clip in control]  # pose: B lists of T per-frame tensors


def cut_batch(batch: dict[str, Any], latent_frames: int, temporal_stride: int) -> dict[str, Any]:
    """The batch's first ``latent_frames`` latent frames: video, latent and controls (module docstring)."""
    frames = clip_frames_for(latent_frames, temporal_stride)
    out = dict(batch)
    video = batch.get("video")
    if video is not None:
        if video.shape[2] < frames:
            raise ValueError(f"a clip of {latent_frames} latent frames needs {frames} frames, the batch has {video.shape[2]}")
        out["video"] = video[:, :, :frames]
    latent = batch.get("latent")
    if latent is not None:
        if latent.shape[2] < latent_frames:
            raise ValueError(f"a clip of {latent_frames} latent frames: the batch's latent has {latent.shape[2]}")
        out["latent"] = latent[:, :, :latent_frames]
    if batch.get("controls"):
        out["controls"] = {name: _cut_control(name, control, frames) for name, control in batch["controls"].items()}
    return out
