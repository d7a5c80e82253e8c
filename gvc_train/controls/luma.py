"""The ``luma`` extractor: each frame's BT.601 luma at a lower resolution.

Output layout (``LAYOUTS["luma"]``): ``torch.uint8 T x h x w``, ``Y = 0.299 R + 0.587 G + 0.114 B``
(full range 0..255, the frame's RGB in [0, 1] times 255), area-downsampled by ``factor``
(``h = max(1, H // factor)``, ``w`` likewise: each output pixel the mean of its block, or of its
adaptive-pooling bin where ``factor`` does not divide the size), rounded to the nearest integer.
The luma of the frame and the downsampling commute (both are averages): this is also the
luma of the area-downsampled RGB frame. :func:`luma_frames` is the same computation, shared
with the edges and flow extractors (their gray input).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from gvc_train.controls.registry import ControlExtractor, register_extractor

BT601 = (0.299, 0.587, 0.114)


def check_clip(clip_CThw: torch.Tensor, name: str) -> None:
    if not isinstance(clip_CThw, torch.Tensor) or clip_CThw.dim() != 4 or clip_CThw.shape[0] != 3 or min(clip_CThw.shape) < 1:
        raise ValueError(f"{name}: expected a clip 3 x T x H x W (float RGB in [0, 1]), got "
                         f"{tuple(getattr(clip_CThw, 'shape', ()))}")


def check_factor(factor: object, name: str) -> int:
    if not isinstance(factor, int) or isinstance(factor, bool) or factor < 1:
        raise ValueError(f"{name}: factor must be a positive integer, got {factor!r}")
    return factor


@torch.no_grad()
def luma_frames(clip_CThw: torch.Tensor, factor: int = 1) -> torch.Tensor:
    """``T x h x w`` uint8 BT.601 luma of ``clip_CThw`` (``3 x T x H x W`` in [0, 1]), area-
    downsampled by ``factor`` (module docstring), on the CPU."""
    clip = clip_CThw.detach().to("cpu", torch.float32).clamp(0, 1)
    weights = torch.tensor(BT601, dtype=torch.float32).view(3, 1, 1, 1)
    y_Thw = (clip * weights).sum(0) * 255.0
    _, height, width = y_Thw.shape
    size = (max(1, height // factor), max(1, width // factor))
    if size != (height, width):
        y_Thw = F.interpolate(y_Thw[:, None], size=size, mode="area")[:, 0]
    return y_Thw.round().clamp(0, 255).to(torch.uint8)


@register_extractor("luma")
class LumaExtractor(ControlExtractor):
    """BT.601 luma, area-downsampled by ``factor`` (4: 176x144 -> 44x36, 640x272 -> 160x68)."""

    def __init__(self, factor: int = 4) -> None:
        self.factor = check_factor(factor, "luma")

    def extract(self, clip_CThw: torch.Tensor, caption: str | None = None) -> torch.Tensor:
        check_clip(clip_CThw, "luma")
        return luma_frames(clip_CThw, self.factor)
