"""The scale schedule of the multi-scale residual quantizer and the resizes between scales.

A schedule is a list of **fractions of the latent size**, strictly increasing, the last one 1.0:
``[1/16, 1/8, 1/4, 3/8, 1/2, 3/4, 1]``. Scale ``k`` of an ``h x w`` latent frame is a token map
of ``round(f_k * h) x round(f_k * w)`` (halves up, at least 1), so one quantizer serves every
video size (176 x 144 gives an 18 x 22 latent, 352 x 288 a 36 x 44 one) and the finest scale is
always the latent itself. At small latents two fractions may round to the same shape: that scale
then quantizes the residual again at the same resolution, which is still a valid (finer) step.

Pure Python arithmetic on the fractions: the encoder and the decoder compute the same shapes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

Shape = tuple[int, int]


def check_schedule(fractions: Sequence[float]) -> tuple[float, ...]:
    """The schedule as a tuple of floats; ValueError unless ``0 < f_1 < ... < f_K = 1``."""
    values = tuple(float(f) for f in fractions)
    if not values:
        raise ValueError("scales: the schedule needs at least one scale")
    if not all(0.0 < f <= 1.0 for f in values):
        raise ValueError(f"scales are fractions of the latent size in (0, 1], got {list(values)}")
    if any(a >= b for a, b in zip(values, values[1:])):
        raise ValueError(f"scales must be strictly increasing, got {list(values)}")
    if values[-1] != 1.0:
        raise ValueError(f"the last scale must be 1 (the latent's own size), got {values[-1]}")
    return values


def side(fraction: float, length: int) -> int:
    """``round(fraction * length)``, halves up, within ``[1, length]``."""
    return max(1, min(length, math.floor(fraction * length + 0.5)))


def scale_shapes(fractions: Sequence[float], h: int, w: int) -> list[Shape]:
    """The token map shape ``(h_k, w_k)`` of every scale of an ``h x w`` latent frame."""
    if h < 1 or w < 1:
        raise ValueError(f"a latent frame of {h} x {w} has no scales")
    return [(side(f, h), side(f, w)) for f in fractions]


def refine_group(scale: int, num_scales: int, num_groups: int) -> int:
    """The refine conv used by ``scale``: the scales split into ``num_groups`` contiguous runs
    of (nearly) equal length, coarse to fine (VAR's partially shared phi)."""
    return min(num_groups - 1, scale * num_groups // num_scales)


def area_down(x_NChw: torch.Tensor, shape: Shape) -> torch.Tensor:
    """Area (box) downsampling to ``shape``; the identity at the same size."""
    if tuple(x_NChw.shape[-2:]) == tuple(shape):
        return x_NChw
    return F.interpolate(x_NChw, size=shape, mode="area")


def bicubic_up(x_NChw: torch.Tensor, shape: Shape) -> torch.Tensor:
    """Bicubic upsampling to ``shape`` (align_corners=False); the identity at the same size."""
    if tuple(x_NChw.shape[-2:]) == tuple(shape):
        return x_NChw
    return F.interpolate(x_NChw, size=shape, mode="bicubic", align_corners=False)
