"""Encoder and decoder trunks of :class:`gvc_train.models.tokenizer.causal_vae.CausalVAE` (Wan-VAE layout)."""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from gvc_train.models.tokenizer.causal_layers import (
    CausalConv3d,
    CausalDownsample,
    CausalResBlock,
    CausalUpsample,
    FrameAttention,
    FrameNorm,
    StreamContext,
    maybe_checkpoint,
)


class MidBlock(nn.Module):
    """ResBlock, optional per-frame attention, ResBlock: at the coarsest resolution, as in LDM."""

    def __init__(self, ch: int, dropout: float, attention: bool, norm: str, norm_groups: int) -> None:
        super().__init__()
        self.res1 = CausalResBlock(ch, ch, dropout, norm, norm_groups)
        self.attn = FrameAttention(ch, norm, norm_groups) if attention else None
        self.res2 = CausalResBlock(ch, ch, dropout, norm, norm_groups)

    def forward(self, x_BCThw: torch.Tensor, ctx: StreamContext) -> torch.Tensor:
        x_BCThw = self.res1(x_BCThw, ctx)
        if self.attn is not None:
            x_BCThw = self.attn(x_BCThw)
        return self.res2(x_BCThw, ctx)


class CausalEncoder(nn.Module):
    """``B x in_ch x T x H x W`` in [-1, 1] -> moments ``B x 2*z x t x h x w`` (mean, logvar)."""

    def __init__(
        self,
        in_channels: int,
        z_channels: int,
        base_channels: int,
        channel_mults: Sequence[int],
        num_res_blocks: int,
        temporal_downsample: Sequence[bool],
        dropout: float,
        mid_attention: bool,
        norm: str,
        norm_groups: int,
    ) -> None:
        super().__init__()
        widths = [base_channels * m for m in channel_mults]
        self.conv_in = CausalConv3d(in_channels, widths[0], 3)
        self.levels = nn.ModuleList()
        ch = widths[0]
        for i, width in enumerate(widths):
            level = nn.Module()
            level.blocks = nn.ModuleList()
            for _ in range(num_res_blocks):
                level.blocks.append(CausalResBlock(ch, width, dropout, norm, norm_groups))
                ch = width
            level.down = CausalDownsample(ch, temporal_downsample[i]) if i < len(widths) - 1 else None
            self.levels.append(level)
        self.mid = MidBlock(ch, dropout, mid_attention, norm, norm_groups)
        self.norm_out = FrameNorm(ch, norm, norm_groups)
        self.conv_out = CausalConv3d(ch, 2 * z_channels, 3)
        self.gradient_checkpointing = False

    def forward(self, x_BCThw: torch.Tensor, ctx: StreamContext) -> torch.Tensor:
        ckpt = self.gradient_checkpointing and self.training
        h = self.conv_in(x_BCThw, ctx)
        for level in self.levels:
            for block in level.blocks:
                h = maybe_checkpoint(block, h, ctx, ckpt)
            if level.down is not None:
                h = level.down(h, ctx)
        h = maybe_checkpoint(self.mid, h, ctx, ckpt)
        return self.conv_out(F.silu(self.norm_out(h)), ctx)


class CausalDecoder(nn.Module):
    """Latent ``B x z x t x h x w`` -> video ``B x out_ch x T x H x W`` in [-1, 1] (not clamped)."""

    def __init__(
        self,
        out_channels: int,
        z_channels: int,
        base_channels: int,
        channel_mults: Sequence[int],
        num_res_blocks: int,
        temporal_downsample: Sequence[bool],
        dropout: float,
        mid_attention: bool,
        norm: str,
        norm_groups: int,
    ) -> None:
        super().__init__()
        widths = [base_channels * m for m in channel_mults]
        ch = widths[-1]
        self.conv_in = CausalConv3d(z_channels, ch, 3)
        self.mid = MidBlock(ch, dropout, mid_attention, norm, norm_groups)
        self.levels = nn.ModuleList()
        # Mirror of the encoder: level i (coarse to fine) has one block more than the encoder,
        # as in LDM, and its upsample undoes the encoder's downsample between levels i-1 and i.
        for i in reversed(range(len(widths))):
            level = nn.Module()
            level.blocks = nn.ModuleList()
            for _ in range(num_res_blocks + 1):
                level.blocks.append(CausalResBlock(ch, widths[i], dropout, norm, norm_groups))
                ch = widths[i]
            level.up = CausalUpsample(ch, temporal_downsample[i - 1]) if i > 0 else None
            self.levels.append(level)
        self.norm_out = FrameNorm(ch, norm, norm_groups)
        self.conv_out = CausalConv3d(ch, out_channels, 3)
        self.gradient_checkpointing = False

    def forward(self, z_BCthw: torch.Tensor, ctx: StreamContext) -> torch.Tensor:
        ckpt = self.gradient_checkpointing and self.training
        h = self.conv_in(z_BCthw, ctx)
        h = maybe_checkpoint(self.mid, h, ctx, ckpt)
        for level in self.levels:
            for block in level.blocks:
                h = maybe_checkpoint(block, h, ctx, ckpt)
            if level.up is not None:
                h = level.up(h, ctx)
        return self.conv_out(F.silu(self.norm_out(h)), ctx)
