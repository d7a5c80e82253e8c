"""Embeddings of the controlled video transformer: timestep, 3D rotary positions, roles.

* :class:`TimestepEmbedding`: the flow-matching time ``t_B`` in [0, 1] -> ``B x D`` (sinusoids
  of ``1000 t``, as DiT / SD3, then an MLP).
* :func:`rope_3d` / :func:`apply_rope`: rotary position encoding factorised over (frame, row,
  column) of the token grid: the head's channels are split in three even parts, each rotated by
  its own axis' index. Relative in every axis, so a model trained on short clips attends the
  same way on longer ones; nothing to learn, nothing sized by a maximum grid.
* :data:`KEY_ROLES`: the role of each latent frame of the keyframe input.
"""

from __future__ import annotations

import math

import torch
from torch import nn

# Role of a latent frame in the keyframe input (``key_roles_BT``): 0 = nothing known there
# (a frame to generate), then the kinds of keyframe the two published designs send.
KEY_ROLES = ("none", "first", "last", "adaptive")
KEY_ROLE_NONE = 0


def sinusoids(values_B: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """``B x dim`` float32 [cos | sin] features of ``values_B`` (any real numbers)."""
    half = dim // 2
    freqs_F = torch.exp(-math.log(max_period) * torch.arange(half, device=values_B.device, dtype=torch.float32) / half)
    angles_BF = values_B.float()[:, None] * freqs_F[None]
    return torch.cat([angles_BF.cos(), angles_BF.sin()], dim=-1)


class TimestepEmbedding(nn.Module):
    """``t_B`` in [0, 1] -> ``B x width``: sinusoids of ``1000 t`` (the usual scale of the
    frequencies) through a two-layer MLP."""

    def __init__(self, width: int, frequency_dim: int = 256) -> None:
        super().__init__()
        self.frequency_dim = frequency_dim
        self.mlp = nn.Sequential(nn.Linear(frequency_dim, width), nn.SiLU(), nn.Linear(width, width))

    def forward(self, t_B: torch.Tensor) -> torch.Tensor:
        features_BF = sinusoids(1000.0 * t_B, self.frequency_dim)
        return self.mlp(features_BF.to(self.mlp[0].weight.dtype))


def rope_axes_dims(head_dim: int) -> tuple[int, int, int]:
    """How a head's channels split over (frame, row, column): even parts, frames a little
    smaller (as Wan: a clip has fewer latent frames than rows or columns)."""
    if head_dim % 2 or head_dim < 6:
        raise ValueError(f"3D RoPE needs an even head dimension of at least 6, got {head_dim}")
    pairs = head_dim // 2
    spatial = (pairs - pairs // 3) // 2  # pairs per spatial axis
    return 2 * (pairs - 2 * spatial), 2 * spatial, 2 * spatial


def rope_3d(grid_thw: tuple[int, int, int], head_dim: int, theta: float, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """``(cos_NK, sin_NK)`` float32, ``N = t * h * w`` tokens in (t, h, w) order, ``K = head_dim / 2``
    rotation pairs: pair k of axis a turns by ``index_a * theta^(-2k / dim_a)``."""
    angles = []
    for size, dim in zip(grid_thw, rope_axes_dims(head_dim)):
        freqs_K = theta ** (-torch.arange(0, dim, 2, device=device, dtype=torch.float32) / dim)
        angles.append(torch.arange(size, device=device, dtype=torch.float32)[:, None] * freqs_K[None])
    t, h, w = grid_thw
    angle_thwK = torch.cat(
        [
            angles[0][:, None, None, :].expand(t, h, w, -1),
            angles[1][None, :, None, :].expand(t, h, w, -1),
            angles[2][None, None, :, :].expand(t, h, w, -1),
        ],
        dim=-1,
    )
    angle_NK = angle_thwK.reshape(t * h * w, -1)
    return angle_NK.cos(), angle_NK.sin()


def apply_rope(x_BHNd: torch.Tensor, cos_NK: torch.Tensor, sin_NK: torch.Tensor) -> torch.Tensor:
    """Rotate consecutive channel pairs (x0, x1) of every head by the token's angles; in float32
    (bf16 angles would blur far positions), back in ``x``'s dtype."""
    x = x_BHNd.float().unflatten(-1, (-1, 2))
    x0, x1 = x[..., 0], x[..., 1]
    rotated = torch.stack([x0 * cos_NK - x1 * sin_NK, x0 * sin_NK + x1 * cos_NK], dim=-1)
    return rotated.flatten(-2).to(x_BHNd.dtype)
