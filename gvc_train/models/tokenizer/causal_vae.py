"""CausalVAE: the continuous video tokenizer (causal 3D conv VAE, 8x spatial, 4x temporal).

Layout after Wan-VAE (itself after MAGVIT-v2's causal 3D CNN and LDM's KL autoencoder):
``T = 1 + 4k`` frames give ``1 + k`` latent frames; the first frame is coded alone so that a
still image is a 1-frame video; latent frame ``j`` depends on frames ``<= 4j`` only, which lets
the encoder and decoder run over a video of any length chunk by chunk with a bounded cache.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from gvc_train.models.registry import register_component
from gvc_train.models.tokenizer.causal_layers import StreamContext, StreamState, assign_cache_keys
from gvc_train.models.tokenizer.causal_vae_nets import CausalDecoder, CausalEncoder
from gvc_train.models.tokenizer.distributions import DiagonalGaussian
from gvc_train.models.tokenizer.streaming import StreamingTokenizer
from gvc_train.models.tokenizer.video_vae_base import VideoVAEBase


@register_component("CausalVAE")
class CausalVAE(VideoVAEBase, nn.Module, StreamingTokenizer):
    """Causal 3D convolutional VAE over ``B x 3 x T x H x W`` video in [0, 1]; a
    :class:`StreamingTokenizer` (the chunked API below), so codecs can be paired with it.

    ``channel_mults`` has one entry per resolution level; each level but the last halves H and
    W, so the spatial stride is ``2 ** (len(channel_mults) - 1)`` (8 by default).
    ``temporal_downsample[i]`` says whether the step after level ``i`` also halves time (Wan-VAE
    does it at the two coarser steps, where it is cheap); the temporal stride is
    ``2 ** sum(temporal_downsample)`` (4 by default). The decoder mirrors the encoder.

    Defaults are Wan-VAE's sizes (base 96, mults 1-2-4-4, 2 blocks, ~132M parameters). A CPU
    test size is ``base_channels=8, num_res_blocks=1``.
    """

    # named parts for finetune.train / freeze (gvc_train.lit.finetune): part -> sub-modules
    parts = {"encoder": ("encoder",), "decoder": ("decoder",)}

    # What a loaded config may hold (gvc_train.components checks them before building): generous
    # for real models, small enough that a forged file cannot ask for terabytes or hours.
    config_bounds = {
        "in_channels": (1, 16), "latent_channels": (1, 1024), "base_channels": (1, 4096),
        "channel_mults": (1, 64), "len(channel_mults)": (1, 8), "len(temporal_downsample)": (0, 7),
        "num_res_blocks": (0, 16), "dropout": (0.0, 1.0), "norm": {"group", "rms"}, "norm_groups": (1, 1024),
    }  # fmt: skip

    def __init__(
        self,
        in_channels: int = 3,
        latent_channels: int = 16,
        base_channels: int = 96,
        channel_mults: Sequence[int] = (1, 2, 4, 4),
        num_res_blocks: int = 2,
        temporal_downsample: Sequence[bool] = (False, True, True),
        dropout: float = 0.0,
        mid_attention: bool = True,
        norm: str = "group",
        norm_groups: int = 32,
    ) -> None:
        super().__init__()
        channel_mults = [int(m) for m in channel_mults]
        temporal_downsample = [bool(t) for t in temporal_downsample]
        if len(channel_mults) < 1:
            raise ValueError("channel_mults needs at least one level")
        if len(temporal_downsample) != len(channel_mults) - 1:
            raise ValueError(
                f"temporal_downsample needs one flag per downsampling step "
                f"({len(channel_mults) - 1}), got {len(temporal_downsample)}"
            )
        self.in_channels = in_channels
        self._latent_channels = latent_channels
        self._spatial_stride = 2 ** (len(channel_mults) - 1)
        self._temporal_stride = 2 ** sum(temporal_downsample)
        trunk = dict(
            z_channels=latent_channels,
            base_channels=base_channels,
            channel_mults=channel_mults,
            num_res_blocks=num_res_blocks,
            temporal_downsample=temporal_downsample,
            dropout=dropout,
            mid_attention=mid_attention,
            norm=norm,
            norm_groups=norm_groups,
        )
        self.encoder = CausalEncoder(in_channels=in_channels, **trunk)
        self.decoder = CausalDecoder(out_channels=in_channels, **trunk)
        assign_cache_keys(self)

    # ---- geometry -------------------------------------------------------------------------

    @property
    def last_layer_weight(self) -> torch.Tensor:
        """The decoder's final conv weight: VQGAN's adaptive GAN weight differentiates w.r.t. it."""
        return self.decoder.conv_out.weight

    def set_gradient_checkpointing(self, enabled: bool = True) -> None:
        """Recompute res-block activations in backward (whole-video training passes only)."""
        self.encoder.gradient_checkpointing = enabled
        self.decoder.gradient_checkpointing = enabled

    def _check_latent_shape(self, z_BCthw: torch.Tensor) -> None:
        if z_BCthw.dim() != 5 or z_BCthw.shape[1] != self._latent_channels:
            raise ValueError(
                f"expected latent B x {self._latent_channels} x t x h x w, got shape {tuple(z_BCthw.shape)}"
            )
        if z_BCthw.shape[2] < 1:
            raise ValueError("latent has no frames")

    # ---- whole-video API ------------------------------------------------------------------

    def encode(self, x_BCThw: torch.Tensor, chunk_frames: int | None = None) -> DiagonalGaussian:
        """Video in [0, 1] -> posterior over the latent ``B x C x (1 + (T-1)/4) x H/8 x W/8``.

        ``chunk_frames`` (a multiple of 4): encode the first frame, then ``chunk_frames`` frames
        at a time through the streaming state; same result, memory bounded by the chunk.
        """
        self.check_video_shape(x_BCThw)
        if chunk_frames is None:
            return DiagonalGaussian.from_moments(self.encoder(x_BCThw * 2.0 - 1.0, StreamContext.whole()))
        if chunk_frames < 1 or chunk_frames % self._temporal_stride:
            raise ValueError(f"chunk_frames must be a positive multiple of {self._temporal_stride}, got {chunk_frames}")
        state = self.init_encoder_state()
        parts = []
        for start, stop in _chunk_bounds(x_BCThw.shape[2], chunk_frames):
            posterior, state = self.encode_chunk(x_BCThw[:, :, start:stop], state)
            parts.append(posterior)
        return DiagonalGaussian.cat(parts, dim=2)

    def decode(self, z_BCthw: torch.Tensor, chunk_latents: int | None = None) -> torch.Tensor:
        """Latent -> video ``B x 3 x (1 + 4(t-1)) x 8h x 8w`` in [0, 1]-ish, NOT clamped.

        ``chunk_latents``: decode the first latent frame, then that many at a time (streaming).
        """
        self._check_latent_shape(z_BCthw)
        if chunk_latents is None:
            return (self.decoder(z_BCthw, StreamContext.whole()) + 1.0) * 0.5
        if chunk_latents < 1:
            raise ValueError(f"chunk_latents must be positive, got {chunk_latents}")
        state = self.init_decoder_state()
        parts = []
        for start, stop in _chunk_bounds(z_BCthw.shape[2], chunk_latents):
            x_chunk, state = self.decode_chunk(z_BCthw[:, :, start:stop], state)
            parts.append(x_chunk)
        return torch.cat(parts, dim=2)

    # ---- streaming API --------------------------------------------------------------------

    def init_encoder_state(self) -> StreamState:
        return StreamState(cache={}, frames_seen=0)

    # The decoder's state has the same (empty) shape at the start of a stream.
    init_decoder_state = init_encoder_state

    def encode_chunk(
        self, x_BCThw: torch.Tensor, state: StreamState
    ) -> tuple[DiagonalGaussian, StreamState]:
        """Encode the next frames of a stream; returns their posterior and a new state.

        The first chunk is ``1 + 4m`` frames (normally exactly 1: the first frame is coded alone),
        every later chunk a positive multiple of 4 frames; a chunk of ``n`` frames after the first
        gives ``n / 4`` latent frames. ``state`` is not modified. Cached frames are detached:
        streaming is for inference (use ``encode`` to train).
        """
        if x_BCThw.dim() != 5:
            raise ValueError(f"expected video B x C x T x H x W, got shape {tuple(x_BCThw.shape)}")
        t, ts = x_BCThw.shape[2], self._temporal_stride
        at_start = state.frames_seen == 0
        if at_start:
            self.check_video_shape(x_BCThw)
        else:
            if t < 1 or t % ts:
                raise ValueError(f"after the first chunk, chunks must be a positive multiple of {ts} frames, got {t}")
            self.check_video_shape(x_BCThw[:, :, :1])
        ctx = StreamContext(state, at_start=at_start, record=True)
        moments = self.encoder(x_BCThw * 2.0 - 1.0, ctx)
        return DiagonalGaussian.from_moments(moments), StreamState(ctx.new, state.frames_seen + t)

    def decode_chunk(self, z_BCthw: torch.Tensor, state: StreamState) -> tuple[torch.Tensor, StreamState]:
        """Decode the next latent frames of a stream: the first latent frame gives 1 frame, each
        later one 4 frames. ``state`` is not modified."""
        self._check_latent_shape(z_BCthw)
        at_start = state.frames_seen == 0
        ctx = StreamContext(state, at_start=at_start, record=True)
        x_BCThw = (self.decoder(z_BCthw, ctx) + 1.0) * 0.5
        return x_BCThw, StreamState(ctx.new, state.frames_seen + z_BCthw.shape[2])


def _chunk_bounds(length: int, chunk: int) -> list[tuple[int, int]]:
    """``[0, 1)`` then ``chunk``-sized pieces: the first frame (or latent frame) goes alone."""
    bounds = [(0, 1)]
    start = 1
    while start < length:
        bounds.append((start, min(start + chunk, length)))
        start += chunk
    return bounds
