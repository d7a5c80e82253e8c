"""Causal 3D building blocks for the video tokenizer, with explicit streaming state.

Causality (after Wan-VAE and MAGVIT-v2): every layer either works on each frame alone (norms,
attention, spatial resampling) or looks only at the past in time (causal conv3d, temporal
resampling). So output frame ``j`` depends on input frames ``<= j`` and the first frame is coded
alone, which lets an image act as a 1-frame video and lets a video of any length be processed in
chunks with a small per-layer cache.

Streaming: every layer that looks at the past has a ``cache_key`` (its module path, assigned by
:func:`assign_cache_keys`) and reads/writes its cached past frames through a
:class:`StreamContext`. The context reads from the old state and writes a new one, so a
:class:`StreamState` is never mutated in place: a caller may keep an old state and replay from it.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from gvc_train.models.tokenizer.exact_kernels import cat_for_conv, conv_forward, group_norm_per_frame, rms_normalize


@dataclasses.dataclass(frozen=True)
class StreamState:
    """Cached past activations of a streaming encoder or decoder.

    ``cache`` maps a layer's module path to its last few input frames (at most 2 per layer, so
    the state's size does not grow with the video length). ``frames_seen`` counts the frames
    (encoder) or latent frames (decoder) consumed so far; 0 means the stream has not started.
    """

    cache: dict[str, torch.Tensor]
    frames_seen: int = 0

    def num_cached_frames(self) -> int:
        """Total cached frames over all layers (bounded: independent of ``frames_seen``)."""
        return sum(t.shape[2] for t in self.cache.values())

    def num_cached_elements(self) -> int:
        return sum(t.numel() for t in self.cache.values())


class StreamContext:
    """One pass over one chunk: where layers find their past and leave it for the next chunk.

    ``at_start``: this chunk begins the video (its first frame is the first frame).
    ``record``: keep the layers' trailing frames (streaming); a whole-video pass does not need to.
    Cached frames are detached clones: streaming is for bounded-memory inference, and a clone
    keeps a small slice from pinning the whole chunk's activation in memory.
    """

    def __init__(self, state: StreamState | None, at_start: bool, record: bool) -> None:
        self.old: dict[str, torch.Tensor] = dict(state.cache) if state is not None else {}
        self.new: dict[str, torch.Tensor] = dict(self.old)
        self.at_start = at_start
        self.record = record

    @classmethod
    def whole(cls) -> "StreamContext":
        return cls(None, at_start=True, record=False)

    def past(self, key: str) -> torch.Tensor | None:
        return self.old.get(key)

    def store(self, key: str, frames: torch.Tensor) -> None:
        if self.record:
            self.new[key] = frames.detach().clone()
            # The layer has read its past: this pass no longer holds it (the caller's state
            # still does if the caller kept it), so old and new caches are not both in memory.
            self.old.pop(key, None)

    def advance(self) -> None:
        """The next frames of the same pass: they read the caches the previous frames left."""
        self.old, self.new, self.at_start = self.new, dict(self.new), False


class Streaming(nn.Module):
    """Marker base: a layer with a cache slot in the stream state."""

    cache_key: str = ""


def assign_cache_keys(root: nn.Module) -> None:
    for name, module in root.named_modules():
        if isinstance(module, Streaming):
            module.cache_key = name


def frames_to_batch(x_BCThw: torch.Tensor) -> torch.Tensor:
    b, c, t, h, w = x_BCThw.shape
    return x_BCThw.transpose(1, 2).reshape(b * t, c, h, w)


def batch_to_frames(x_NChw: torch.Tensor, b: int) -> torch.Tensor:
    n, c, h, w = x_NChw.shape
    return x_NChw.reshape(b, n // b, c, h, w).transpose(1, 2)


class CausalConv3d(nn.Conv3d, Streaming):
    """Conv3d that pads only on the past side in time (zeros before the first frame).

    Spatial padding is symmetric ("same"); the time kernel ``kt`` sees the current frame and the
    ``kt - 1`` previous ones, taken from the stream cache when the chunk is not the first.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int, int] = 3,
        bias: bool = True,
    ) -> None:
        kt, kh, kw = (kernel_size,) * 3 if isinstance(kernel_size, int) else kernel_size
        super().__init__(in_channels, out_channels, (kt, kh, kw), padding=(0, kh // 2, kw // 2), bias=bias)
        self.time_pad = kt - 1

    def forward(self, x_BCThw: torch.Tensor, ctx: StreamContext) -> torch.Tensor:  # type: ignore[override]
        if self.time_pad:
            past = None if ctx.at_start else ctx.past(self.cache_key)
            if past is None:
                b, c, _, h, w = x_BCThw.shape
                past = x_BCThw.new_zeros(b, c, self.time_pad, h, w)
            x_BCThw = cat_for_conv([past, x_BCThw], dim=2)
            ctx.store(self.cache_key, x_BCThw[:, :, -self.time_pad :])
        return conv_forward(self, x_BCThw)


class FrameNorm(nn.Module):
    """Normalisation within each frame, never across time (that would leak the future).

    ``group``: GroupNorm statistics over (channels in group, h, w) of one frame.
    ``rms``: Wan-VAE's RMS norm over channels at each position.
    """

    def __init__(self, channels: int, kind: str = "group", groups: int = 32, eps: float = 1e-6) -> None:
        super().__init__()
        if kind not in ("group", "rms"):
            raise ValueError(f"norm must be 'group' or 'rms', not {kind!r}")
        self.kind = kind
        self.groups = math.gcd(channels, groups)
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x_BCThw: torch.Tensor) -> torch.Tensor:
        c = x_BCThw.shape[1]
        if self.kind == "group":
            return group_norm_per_frame(x_BCThw, self.groups, self.weight, self.bias, self.eps)
        x = rms_normalize(x_BCThw, self.eps) * math.sqrt(c)
        return x * self.weight.view(1, c, 1, 1, 1) + self.bias.view(1, c, 1, 1, 1)


class CausalResBlock(nn.Module):
    """norm-SiLU-conv, norm-SiLU-dropout-conv, plus a (1x1x1) shortcut: the LDM / Wan-VAE block."""

    def __init__(self, in_ch: int, out_ch: int, dropout: float, norm: str, norm_groups: int) -> None:
        super().__init__()
        self.norm1 = FrameNorm(in_ch, norm, norm_groups)
        self.conv1 = CausalConv3d(in_ch, out_ch, 3)
        self.norm2 = FrameNorm(out_ch, norm, norm_groups)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = CausalConv3d(out_ch, out_ch, 3)
        self.shortcut = CausalConv3d(in_ch, out_ch, 1) if in_ch != out_ch else None

    def forward(self, x_BCThw: torch.Tensor, ctx: StreamContext) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x_BCThw)), ctx)
        h = self.conv2(self.dropout(F.silu(self.norm2(h))), ctx)
        skip = self.shortcut(x_BCThw, ctx) if self.shortcut is not None else x_BCThw
        return skip + h


class FrameAttention(nn.Module):
    """Single-head spatial self-attention within each frame (Wan-VAE's middle attention)."""

    def __init__(self, channels: int, norm: str, norm_groups: int) -> None:
        super().__init__()
        self.norm = FrameNorm(channels, norm, norm_groups)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = nn.Conv2d(channels, channels, 1)
        # Start as the identity so the block only adds what training finds useful.
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x_BCThw: torch.Tensor, ctx: StreamContext | None = None) -> torch.Tensor:
        b, c, _, h, w = x_BCThw.shape
        qkv_NChw = conv_forward(self.qkv, frames_to_batch(self.norm(x_BCThw)))
        q, k, v = qkv_NChw.flatten(2).transpose(1, 2).unsqueeze(1).chunk(3, dim=-1)  # N,1,hw,c each
        out_NLC = F.scaled_dot_product_attention(q, k, v).squeeze(1)
        out_NChw = conv_forward(self.proj, out_NLC.transpose(1, 2).reshape(-1, c, h, w))
        return x_BCThw + batch_to_frames(out_NChw, b)


class CausalDownsample(Streaming):
    """Spatial 2x per frame, then optionally temporal 2x that keeps the first frame alone.

    Temporal part after Wan-VAE: the first frame passes spatial-only; frames ``1..`` go through a
    stride-2 time conv of kernel 3 whose window for output ``j >= 1`` is input frames
    ``2j-2, 2j-1, 2j``; so ``1 + 2m`` frames give ``1 + m`` and output ``j`` sees inputs ``<= 2j``.
    The cache is the last frame of the previous chunk (the left end of the next window).
    """

    def __init__(self, channels: int, temporal: bool) -> None:
        super().__init__()
        # Asymmetric (0, 1) padding as in LDM / Wan: an even side halves exactly.
        self.spatial = nn.Conv2d(channels, channels, 3, stride=2, padding=0)
        self.time_conv = nn.Conv3d(channels, channels, (3, 1, 1), stride=(2, 1, 1)) if temporal else None
        if self.time_conv is not None:
            # Wan-VAE inits its time conv close to "keep the newest frame": training starts from
            # a per-frame image autoencoder on subsampled frames instead of from noise in time.
            with torch.no_grad():
                self.time_conv.weight.zero_()
                self.time_conv.weight[:, :, 2, 0, 0].copy_(torch.eye(channels))
                self.time_conv.bias.zero_()

    def forward(self, x_BCThw: torch.Tensor, ctx: StreamContext) -> torch.Tensor:
        b = x_BCThw.shape[0]
        x_NChw = F.pad(frames_to_batch(x_BCThw), (0, 1, 0, 1))
        x_BCThw = batch_to_frames(conv_forward(self.spatial, x_NChw), b)
        if self.time_conv is None:
            return x_BCThw
        if ctx.at_start:
            head, rest, prev = x_BCThw[:, :, :1], x_BCThw[:, :, 1:], x_BCThw[:, :, :1]
        else:
            head, rest, prev = None, x_BCThw, ctx.past(self.cache_key)
            if prev is None:
                raise RuntimeError(f"{self.cache_key}: stream state lacks this layer's cache")
        if rest.shape[2] % 2:
            raise ValueError(
                f"{self.cache_key}: temporal downsampling needs an even number of frames after the "
                f"first, got {rest.shape[2]}"
            )
        ctx.store(self.cache_key, (rest if rest.shape[2] else prev)[:, :, -1:])
        parts = [head] if head is not None else []
        if rest.shape[2]:
            parts.append(conv_forward(self.time_conv, cat_for_conv([prev, rest], dim=2)))
        return torch.cat(parts, dim=2)


class CausalUpsample(nn.Module):
    """Optionally temporal 2x (channel-to-time), then spatial 2x per frame (nearest + conv).

    Temporal part after Wan-VAE: a causal time conv doubles the channels, which are unfolded into
    two frames per latent frame; the first latent frame yields one frame only (its spatial-only
    path), so ``1 + m`` frames give ``1 + 2m`` and the decoder mirrors the encoder's first-frame rule.
    """

    def __init__(self, channels: int, temporal: bool) -> None:
        super().__init__()
        self.time_conv = CausalConv3d(channels, 2 * channels, (3, 1, 1)) if temporal else None
        if self.time_conv is not None:
            # Wan-VAE's init: both new frames start as copies of the current frame.
            with torch.no_grad():
                self.time_conv.weight.zero_()
                eye = torch.eye(channels)
                self.time_conv.weight[:channels, :, 2, 0, 0].copy_(eye)
                self.time_conv.weight[channels:, :, 2, 0, 0].copy_(eye)
                self.time_conv.bias.zero_()
        self.spatial = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x_BCThw: torch.Tensor, ctx: StreamContext) -> torch.Tensor:
        if self.time_conv is not None:
            b, c, t, h, w = x_BCThw.shape
            y_B2CThw = self.time_conv(x_BCThw, ctx).reshape(b, 2, c, t, h, w)
            y_BCThw = y_B2CThw.permute(0, 2, 3, 1, 4, 5).reshape(b, c, 2 * t, h, w)  # t0a t0b t1a ...
            x_BCThw = torch.cat([x_BCThw[:, :, :1], y_BCThw[:, :, 2:]], dim=2) if ctx.at_start else y_BCThw
        b = x_BCThw.shape[0]
        x_NChw = F.interpolate(frames_to_batch(x_BCThw), scale_factor=2.0, mode="nearest")
        return batch_to_frames(conv_forward(self.spatial, x_NChw), b)


def maybe_checkpoint(
    fn: Callable[[torch.Tensor, StreamContext], torch.Tensor],
    x: torch.Tensor,
    ctx: StreamContext,
    enabled: bool,
) -> torch.Tensor:
    """Activation checkpointing for whole-video training passes (never while recording a stream)."""
    if enabled and not ctx.record and torch.is_grad_enabled():
        return checkpoint(fn, x, ctx, use_reentrant=False)
    return fn(x, ctx)
