"""Encoder and decoder trunks of :class:`gvc_train.models.tokenizer.causal_vae.CausalVAE` (Wan-VAE layout)."""

from __future__ import annotations

import dataclasses
import functools
from typing import Callable, Sequence

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
        h = x_BCThw
        for stage in self.head_stages():
            h = stage.run(h, ctx)
        return self.forward_tail(h, ctx)

    # The encoder as a head of stages down to latent resolution, each reading a bounded
    # neighbourhood of each pixel, and a tail at latent resolution: what spatial tiling needs
    # (models/tokenizer/encoder_tiling.py).

    def head_stages(self) -> list[Stage]:
        """``conv_in`` and every level's blocks and downsampling, up to the last downsampling."""
        ckpt = self.gradient_checkpointing and self.training
        stages = [Stage("in", self.conv_in, self.conv_in.kernel_size[1] // 2, self.conv_in.out_channels, cached_channels(self.conv_in))]
        for level in self.levels:
            if level.down is None:
                break  # the coarsest level: at latent resolution, in the tail
            stages += [Stage.of_block(block, ckpt) for block in level.blocks]
            stages.append(Stage.of_downsample(level.down))
        return stages

    def forward_tail(self, h: torch.Tensor, ctx: StreamContext) -> torch.Tensor:
        """The coarsest level's blocks, the middle block (possibly with frame-wide attention) and
        the output: all at latent resolution."""
        ckpt = self.gradient_checkpointing and self.training
        for level in self.levels:
            if level.down is None:
                for block in level.blocks:
                    h = maybe_checkpoint(block, h, ctx, ckpt)
        h = maybe_checkpoint(self.mid, h, ctx, ckpt)
        return self.conv_out(F.silu(self.norm_out(h)), ctx)

    def tail_modules(self) -> list[nn.Module]:
        """What :meth:`forward_tail` runs (for its cache's size)."""
        coarsest = [block for level in self.levels if level.down is None for block in level.blocks]
        return [*coarsest, self.mid, self.norm_out, self.conv_out]


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
        h = self.forward_head(z_BCthw, ctx)
        for stage in self.tail_stages():
            h = stage.run(h, ctx)
        return h

    # The decoder as a head at latent resolution and a tail of stages that only look at a
    # bounded neighbourhood of each pixel: what spatial tiling needs (models/tokenizer/tiling.py).

    def forward_head(self, z_BCthw: torch.Tensor, ctx: StreamContext) -> torch.Tensor:
        """``conv_in``, the middle block and the coarsest level's blocks (all at latent
        resolution, the middle one possibly with frame-wide attention)."""
        ckpt = self.gradient_checkpointing and self.training
        h = self.conv_in(z_BCthw, ctx)
        h = maybe_checkpoint(self.mid, h, ctx, ckpt)
        for block in self.levels[0].blocks:
            h = maybe_checkpoint(block, h, ctx, ckpt)
        return h

    def tail_stages(self) -> list[Stage]:
        """The rest, in order: each stage's spatial reach and whether it doubles the resolution."""
        ckpt = self.gradient_checkpointing and self.training
        stages: list[Stage] = []
        for i, level in enumerate(self.levels):
            if i > 0:
                stages += [Stage.of_block(block, ckpt) for block in level.blocks]
            if level.up is not None:
                stages.append(Stage.of_upsample(level.up))
        out_channels = self.conv_out.in_channels
        stages.append(Stage("out", self._out, self.conv_out.kernel_size[1] // 2, out_channels, cached_channels(self.conv_out)))
        return stages

    def head_modules(self) -> list[nn.Module]:
        """What :meth:`forward_head` runs (for its cache's size)."""
        return [self.conv_in, self.mid, *self.levels[0].blocks]

    def _out(self, h: torch.Tensor, ctx: StreamContext) -> torch.Tensor:
        return self.conv_out(F.silu(self.norm_out(h)), ctx)


@dataclasses.dataclass(frozen=True)
class Stage:
    """One step of the encoder's head or the decoder's tail, for strip coding: ``run(h, ctx)``;
    ``radius``, the pixels beyond a pixel's own footprint that it reads (at its output
    resolution for the decoder's stages, its input resolution for the encoder's); ``upsample``
    or ``downsample``, 2 when it doubles or halves height and width; ``per_frame``, it may take
    frames one at a time (no temporal resampling). For memory plans: ``channels``, its widest
    activation; ``cached``, channels x frames that its causal convs keep per pixel of its input
    (of its output for a downsampling)."""

    name: str
    run: Callable[[torch.Tensor, StreamContext], torch.Tensor]
    radius: int
    channels: int
    cached: int
    upsample: int = 1
    downsample: int = 1
    per_frame: bool = True

    @classmethod
    def of_block(cls, block: CausalResBlock, ckpt: bool) -> "Stage":
        radius = block.conv1.kernel_size[1] // 2 + block.conv2.kernel_size[1] // 2
        channels = max(block.conv1.in_channels, block.conv2.out_channels)
        return cls("block", functools.partial(maybe_checkpoint, block, enabled=ckpt), radius, channels, cached_channels(block))

    @classmethod
    def of_upsample(cls, up: CausalUpsample) -> "Stage":
        temporal = up.time_conv is not None
        return cls("up", up, up.spatial.kernel_size[0] // 2, up.spatial.in_channels, cached_channels(up), upsample=2, per_frame=not temporal)

    @classmethod
    def of_downsample(cls, down: CausalDownsample) -> "Stage":
        # A 3x3 stride-2 conv padded only at the bottom and right: output row i reads input rows
        # 2i .. 2i + 2, one beyond its footprint.
        temporal = down.time_conv is not None
        cached = down.spatial.out_channels if temporal else 0  # the time conv's last input frame
        return cls("down", down, 1, down.spatial.in_channels, cached, downsample=2, per_frame=not temporal)


def cached_channels(module: nn.Module) -> int:
    """Channels times past frames that the causal convs in ``module`` cache, per input pixel."""
    return sum(m.in_channels * m.time_pad for m in module.modules() if isinstance(m, CausalConv3d))
