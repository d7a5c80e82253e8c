"""The ``edges`` extractor: Canny edge maps (OpenCV).

Output layout (``LAYOUTS["edges"]``): ``torch.bool T x h x w``, True on an edge pixel. The input
of Canny is the frame's BT.601 luma (uint8, :func:`gvc_train.controls.luma.luma_frames`),
area-downsampled by ``factor`` (1: the frame's size) and, with ``blur > 0``, smoothed by a
Gaussian of that sigma (pixels of the downsampled grid) first. ``low``/``high``: Canny's
hysteresis thresholds on the gradient magnitude (of ``aperture``-sized Sobel filters, L1 norm
unless ``l2_gradient``). ~0.6 ms a 640x272 frame (../shared/FACTS.md).
"""

from __future__ import annotations

import cv2
import numpy as np
import torch

from gvc_train.controls.luma import check_clip, check_factor, luma_frames
from gvc_train.controls.registry import ControlExtractor, register_extractor


@register_extractor("edges")
class EdgesExtractor(ControlExtractor):
    """Canny(low, high) of the (optionally blurred, downsampled) luma of every frame."""

    def __init__(self, low: float = 100.0, high: float = 200.0, blur: float = 0.0, factor: int = 1,
                 aperture: int = 3, l2_gradient: bool = False) -> None:
        if not 0 <= low <= high:
            raise ValueError(f"edges: thresholds need 0 <= low <= high, got low={low}, high={high}")
        if aperture not in (3, 5, 7):
            raise ValueError(f"edges: aperture must be 3, 5 or 7 (Sobel sizes), got {aperture!r}")
        if blur < 0:
            raise ValueError(f"edges: blur is a Gaussian sigma >= 0, got {blur}")
        self.low, self.high, self.blur = float(low), float(high), float(blur)
        self.factor = check_factor(factor, "edges")
        self.aperture, self.l2_gradient = aperture, bool(l2_gradient)

    def extract(self, clip_CThw: torch.Tensor, caption: str | None = None) -> torch.Tensor:
        check_clip(clip_CThw, "edges")
        maps = []
        for gray in luma_frames(clip_CThw, self.factor).numpy():
            if self.blur > 0:
                gray = cv2.GaussianBlur(gray, (0, 0), self.blur)
            maps.append(cv2.Canny(gray, self.low, self.high, apertureSize=self.aperture, L2gradient=self.l2_gradient) > 0)
        return torch.from_numpy(np.stack(maps))
