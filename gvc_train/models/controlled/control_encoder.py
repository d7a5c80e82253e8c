"""The light encoder of one control modality: its map -> the transformer's token grid.

**Input** (what the caller prepares from the layouts of ``gvc_train.controls.registry.LAYOUTS``):
``map_BCThw`` float, ``C`` the modality's channels (``controls[name]`` in the model's config), on
the video's frame grid: ``T = 1 + (t - 1) * frames_per_latent`` frames of ``H x W = (h * scale) x
(w * scale)`` pixels for a ``t x h x w`` latent, i.e. the tokenizer's own frame count and the
video's size for ``frames_per_latent=4, scale=8`` (the latent grid itself for ``1, 1``). Values
are the caller's to normalise: ``control_maps.control_map`` makes them from each layout (luma /
255, an edge map 0/1, a segmentation one-hot over its classes, flow in grid pixels with a zero
first frame, pose rendered as one heatmap per joint by ``control_maps.pose_heatmaps``, the hook to
replace for another rendering; nothing here reads people).

**Encoder.** Frames are folded into channels the way the causal tokenizer groups them (the first
frame alone, repeated to fill its group; then groups of ``frames_per_latent``), then stride-2
convolutions bring ``H x W`` down to the latent grid (``log2(scale)`` of them), then the same 3D
patchify as the latent gives ``B x N x D`` tokens in (t, h, w) order. Light on purpose: the
context blocks do the thinking; this only puts each map on the grid.
"""

from __future__ import annotations

import torch
from torch import nn


class ControlEncoder(nn.Module):
    """One modality's map ``B x channels x T x H x W`` -> tokens ``B x N x width`` (module docstring)."""

    def __init__(self, channels: int, width: int, hidden: int, patch_size: tuple[int, int, int], frames_per_latent: int, scale: int) -> None:
        super().__init__()
        if scale < 1 or scale & (scale - 1):
            raise ValueError(f"a control's scale over the latent grid must be a power of 2, got {scale}")
        self.frames_per_latent, self.scale = frames_per_latent, scale
        stages: list[nn.Module] = [nn.Conv3d(channels * frames_per_latent, hidden, (1, 3, 3), padding=(0, 1, 1)), nn.SiLU()]
        for _ in range(scale.bit_length() - 1):
            stages += [nn.Conv3d(hidden, hidden, (1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1)), nn.SiLU()]
        self.stages = nn.Sequential(*stages)
        self.patchify = nn.Conv3d(hidden, width, kernel_size=patch_size, stride=patch_size)

    def expected_shape(self, latent_thw: tuple[int, int, int]) -> tuple[int, int, int]:
        """``(T, H, W)`` of the map this encoder takes for a ``t x h x w`` latent."""
        t, h, w = latent_thw
        return 1 + (t - 1) * self.frames_per_latent, h * self.scale, w * self.scale

    def forward(self, map_BCThw: torch.Tensor, latent_thw: tuple[int, int, int]) -> torch.Tensor:
        if tuple(map_BCThw.shape[2:]) != self.expected_shape(latent_thw):
            raise ValueError(
                f"a control map of {tuple(map_BCThw.shape[2:])} (T, H, W) does not fit the latent {latent_thw}: "
                f"expected {self.expected_shape(latent_thw)}"
            )
        r = self.frames_per_latent
        first_BC1hw = map_BCThw[:, :, :1]
        # The first frame fills its group alone (as the causal tokenizer codes it), then groups of r.
        grouped = torch.cat([first_BC1hw.expand(-1, -1, r - 1, -1, -1), map_BCThw], dim=2) if r > 1 else map_BCThw
        B, C, T, H, W = grouped.shape
        folded_BCThw = grouped.view(B, C, T // r, r, H, W).permute(0, 1, 3, 2, 4, 5).reshape(B, C * r, T // r, H, W)
        features = self.stages(folded_BCThw.to(self.patchify.weight.dtype))
        return self.patchify(features).flatten(2).transpose(1, 2)
