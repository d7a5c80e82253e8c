"""The ``flow`` extractor: dense optical flow between consecutive frames (OpenCV DIS).

Output layout (``LAYOUTS["flow"]``): ``torch.float32 (T - 1) x 2 x h x w``. ``flow[t]`` lives on
frame ``t + 1``'s pixel grid and points into frame ``t``: channel 0 is dx, channel 1 dy, in
pixels of the ``h x w`` grid, and

    frame[t + 1](y, x) ~= frame[t](y + dy, x + dx)

-- frame ``t`` backward-warped by ``flow[t]`` (sampled at ``x + flow``, :func:`backward_warp`)
approximates frame ``t + 1``. That is the direction a decoder that holds frame ``t`` uses to
predict frame ``t + 1`` (a gather, no holes); it is DIS's ``calc(frame t + 1, frame t)``.

The input of DIS is the frames' BT.601 luma (uint8) area-downsampled by ``factor``
(:func:`gvc_train.controls.luma.luma_frames`); ``preset``: DIS's ``ultrafast`` (4 ms a 640x272
frame), ``fast`` (8 ms) or ``medium`` (25-38 ms, the default: sharper motion boundaries), from
../shared/FACTS.md. A one-frame clip has no flow: ``0 x 2 x h x w``.
"""

from __future__ import annotations

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from gvc_train.controls.luma import check_clip, check_factor, luma_frames
from gvc_train.controls.registry import ControlExtractor, register_extractor

PRESETS = {
    "ultrafast": cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST,
    "fast": cv2.DISOPTICAL_FLOW_PRESET_FAST,
    "medium": cv2.DISOPTICAL_FLOW_PRESET_MEDIUM,
}


def backward_warp(images_NChw: torch.Tensor, flow_N2hw: torch.Tensor) -> torch.Tensor:
    """``images`` sampled at ``(x + dx, y + dy)`` (bilinear, border pixels repeated outside):
    with ``flow[t]`` (this module's layout) it turns frame ``t`` into a prediction of frame ``t + 1``."""
    n, _, height, width = images_NChw.shape
    ys, xs = torch.meshgrid(torch.arange(height, dtype=torch.float32), torch.arange(width, dtype=torch.float32), indexing="ij")
    x = (xs + flow_N2hw[:, 0].float()) * (2.0 / max(width - 1, 1)) - 1.0
    y = (ys + flow_N2hw[:, 1].float()) * (2.0 / max(height - 1, 1)) - 1.0
    grid = torch.stack([x, y], dim=-1)
    return F.grid_sample(images_NChw.float(), grid, mode="bilinear", padding_mode="border", align_corners=True)


@register_extractor("flow")
class FlowExtractor(ControlExtractor):
    """DIS optical flow (``preset``) of consecutive frames' luma, downsampled by ``factor``."""

    def __init__(self, preset: str = "medium", factor: int = 1) -> None:
        if preset not in PRESETS:
            raise ValueError(f"flow: preset must be one of {', '.join(PRESETS)}, got {preset!r}")
        self.preset = preset
        self.factor = check_factor(factor, "flow")

    def extract(self, clip_CThw: torch.Tensor, caption: str | None = None) -> torch.Tensor:
        check_clip(clip_CThw, "flow")
        gray = luma_frames(clip_CThw, self.factor).numpy()
        dis = cv2.DISOpticalFlow_create(PRESETS[self.preset])  # one per clip: no state between clips
        flows = [dis.calc(gray[t + 1], gray[t], None) for t in range(len(gray) - 1)]  # h x w x 2 (dx, dy)
        if not flows:
            return torch.zeros((0, 2, *gray.shape[1:]), dtype=torch.float32)
        return torch.from_numpy(np.ascontiguousarray(np.stack(flows).transpose(0, 3, 1, 2), dtype=np.float32))
