"""LatentVideoCodec: codes the tokenizer's latent, one latent frame at a time (GLVC family).

One network codes every latent frame (no separate intra model), DCVC-style conditional coding:

    ctx_t   = no_past embedding (all-zero context)               if t == 0
            = ctx_net([x_hat_{t-1}, m_{t-1}])                     otherwise
    y_t     = g_a([x_t, ctx_t]) * gain[q]                         (stride 1, M channels)
    z_t     = h_a(y_t)                                            (stride 2)
    z_hat   = EntropyBottleneck(z_t)
    mu, s   = entropy_params([h_s(z_hat), ctx_t])
    y_hat   = GaussianConditional(y_t, s, mu)
    x_hat_t = g_s([y_hat * inv_gain[q], ctx_t])
    m_t     = ConvGRU(x_hat_t, m_{t-1})                           (the recurrent memory)

**Stride.** g_a and g_s work at stride 1: the tokenizer latent is already 8x smaller than the
video (176 x 144 gives 22 x 18), so a further stride would cost detail and padding at odd sizes.
The hyperprior is stride 2 (subpixel up, cropped to y's size: any h, w work, odd included).

**Quantization.** Training uses additive uniform noise for both likelihoods and y_hat (compressai's
train mode); ``train_quantizer="ste"`` instead feeds g_s the straight-through rounded
``round(y - mu) + mu`` while the likelihoods still see noise (DCVC-HEM/ELIC's mixed quantizer).
In eval, y_hat is the mean-subtracted rounding ``round(y - mu) + mu`` and z_hat is
``round(z - median) + median``: exactly what compressai's ``compress``/``decompress`` give the
decoder, so the context and the memory are built from the decoder's own reconstruction.

**Variable rate.** ``quality`` in ``[0, num_qualities)`` selects a learned per-channel gain
(applied to y before quantization) and inverse gain (applied to y_hat before g_s), as DCVC's
q_scale. Gains are initialised geometrically increasing with the index, so a **higher quality
index means a larger gain, finer effective quantization, a higher rate and a higher quality**;
training with a lambda that increases with the index keeps it that way.

Life cycle as any compressai ``CompressionModel``: train (``aux_loss()`` in its own optimizer),
``update()`` to build the entropy tables, then code. ``load_state_dict`` resizes the tables.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from compressai.models import CompressionModel
from torch import nn

from gvc_train.coding.rans import CdfTables, SymbolDecoder, SymbolEncoder
from gvc_train.models.registry import register_component
from gvc_train.models.fixed_point import FixedPointNet, FixedPointState, FrameObserver, to_float
from gvc_train.models.latent.latent_codec_config import CONFIG_BOUNDS, LatentCodecConfig, symbols_per_frame
from gvc_train.models.latent.latent_decoding import decompress_frame
from gvc_train.models.latent.latent_codec_parts import (
    ConvGRUCell,
    HyperAnalysis,
    HyperSynthesis,
    KeyedEntropyBottleneck,
    KeyedGaussianConditional,
    LatentCodecState,
    trunk,
)

Quality = int | torch.Tensor


@register_component("LatentVideoCodec")
class LatentVideoCodec(CompressionModel):
    """Conditional latent-frame codec with hyperprior, ConvGRU memory and a quality index.

    ``latent_channels``: the tokenizer's latent channels (16 for CausalVAE's default).
    ``channels``: width of the transforms and of the temporal context. ``y_channels`` (M) and
    ``z_channels``: channels of the coded latent and of the side information.
    ``memory_channels``: ConvGRU hidden channels. ``num_qualities``: rate points in one model;
    ``gain_range``: (lowest, highest) initial gain, spaced geometrically.
    A CPU test size is ``channels=16, y_channels=8, z_channels=8, memory_channels=8``.
    """

    # named parts for finetune.train / freeze (gvc_train.lit.finetune): part -> sub-modules
    parts = {
        "transforms": ("g_a", "g_s"),
        "entropy_models": ("h_a", "h_s", "entropy_params", "entropy_bottleneck", "gaussian_conditional"),
        "context_model": ("ctx_net", "memory"),
    }

    # What a loaded config may hold (checked by gvc_train.components before building); a decoder
    # checks a config against LatentCodecConfig instead, which shares these and the checks below.
    config_bounds = CONFIG_BOUNDS

    def __init__(
        self,
        latent_channels: int = 16,
        channels: int = 64,
        y_channels: int = 64,
        z_channels: int = 32,
        memory_channels: int = 32,
        num_res_blocks: int = 2,
        num_qualities: int = 4,
        gain_range: Sequence[float] = (0.5, 4.0),  # jsonargparse: a Sequence, so a YAML list round-trips
        train_quantizer: str = "noise",
    ) -> None:
        super().__init__()
        checked = LatentCodecConfig(
            latent_channels, channels, y_channels, z_channels, memory_channels, num_res_blocks, num_qualities, gain_range, train_quantizer
        )
        lo, hi = checked.gain_range
        self.latent_channels = latent_channels
        self.y_channels = y_channels
        self.num_qualities = num_qualities
        self.train_quantizer = train_quantizer

        # Temporal context: from [previous decoded latent, memory]; first frame: learned embedding.
        self.ctx_net = trunk(latent_channels + memory_channels, channels, channels, num_res_blocks)
        self.no_past = nn.Parameter(torch.zeros(channels))
        self.memory = ConvGRUCell(latent_channels, memory_channels)

        self.g_a = trunk(latent_channels + channels, channels, y_channels, num_res_blocks)
        self.g_s = trunk(y_channels + channels, channels, latent_channels, num_res_blocks)
        self.h_a = HyperAnalysis(y_channels, channels, z_channels)
        self.h_s = HyperSynthesis(z_channels, channels)
        self.entropy_params = trunk(2 * channels, channels, 2 * y_channels, 1)
        self.entropy_bottleneck = KeyedEntropyBottleneck(z_channels)
        self.gaussian_conditional = KeyedGaussianConditional(None)

        gains = torch.logspace(math.log10(lo), math.log10(hi), num_qualities)
        self.y_gain = nn.Parameter(gains[:, None].repeat(1, y_channels))
        self.y_inv_gain = nn.Parameter(1.0 / gains[:, None].repeat(1, y_channels))

    # ---- pieces the future compress/decompress share with forward ---------------------------

    def init_state(self) -> LatentCodecState:
        """The state before the first latent frame: no past, empty memory."""
        return LatentCodecState()

    def gains(self, quality: Quality, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(gain, inv_gain)``, each ``(1 or B) x M x 1 x 1``, for an int or a ``B`` tensor of indexes."""
        if isinstance(quality, torch.Tensor):
            q = quality.to(device=self.y_gain.device, dtype=torch.long).reshape(-1)
            if q.numel() not in (1, batch):
                raise ValueError(f"quality tensor must hold 1 or {batch} indexes, got {q.numel()}")
            lo, hi = int(q.min()), int(q.max())
        elif isinstance(quality, int) and not isinstance(quality, bool):
            q = torch.tensor([quality], device=self.y_gain.device)
            lo = hi = quality
        else:
            raise TypeError(f"quality must be an int or a tensor of ints, got {type(quality).__name__}")
        if lo < 0 or hi >= self.num_qualities:
            raise ValueError(f"quality index must be in [0, {self.num_qualities}), got {quality}")
        return self.y_gain[q][:, :, None, None], self.y_inv_gain[q][:, :, None, None]

    def context(self, state: LatentCodecState, like: torch.Tensor) -> torch.Tensor:
        """Temporal context ``B x channels x h x w`` for the next frame (``like``: that frame)."""
        if state.frames_seen == 0 or state.prev is None or state.memory is None:
            b, _, h, w = like.shape
            return self.no_past.to(like.dtype)[None, :, None, None].expand(b, -1, h, w)
        return self.ctx_net(torch.cat([state.prev, state.memory], dim=1))

    def entropy_parameters(self, z_hat: torch.Tensor, ctx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(scales, means)`` of y (in the gained domain) from the hyperprior and the context."""
        hyper = self.h_s(z_hat, (ctx.shape[-2], ctx.shape[-1]))
        scales, means = self.entropy_params(torch.cat([hyper, ctx], dim=1)).chunk(2, dim=1)
        return scales, means

    def synthesize(self, y_hat: torch.Tensor, inv_gain: torch.Tensor, ctx: torch.Tensor) -> torch.Tensor:
        """g_s: gained-domain y_hat and context -> reconstructed latent frame."""
        return self.g_s(torch.cat([y_hat * inv_gain, ctx], dim=1))

    def advance(self, state: LatentCodecState, recon: torch.Tensor) -> LatentCodecState:
        """The state after decoding ``recon``: it becomes ``prev`` and updates the memory."""
        memory = state.memory
        if memory is None:
            b, _, h, w = recon.shape
            memory = recon.new_zeros(b, self.memory.hidden_channels, h, w)
        return LatentCodecState(recon, self.memory(recon, memory), state.frames_seen + 1)

    # ---- forward ------------------------------------------------------------------------------

    def forward_frame(
        self, frame_BChw: torch.Tensor, state: LatentCodecState, quality: Quality
    ) -> tuple[dict[str, Any], LatentCodecState]:
        """Code one latent frame. Returns ``({"recon", "likelihoods": {"y", "z"}, "bits"}, new_state)``.

        ``bits`` is ``B``: the model's bits (y and z) of each batch element's frame. ``state`` is
        not modified.
        """
        if frame_BChw.dim() != 4 or frame_BChw.shape[1] != self.latent_channels:
            raise ValueError(
                f"expected a latent frame B x {self.latent_channels} x h x w, got shape {tuple(frame_BChw.shape)}"
            )
        gain, inv_gain = self.gains(quality, frame_BChw.shape[0])
        ctx = self.context(state, frame_BChw)
        y = self.g_a(torch.cat([frame_BChw, ctx], dim=1)) * gain
        z = self.h_a(y)
        z_hat, z_likelihoods = self.entropy_bottleneck(z)
        scales, means = self.entropy_parameters(z_hat, ctx)
        y_hat, y_likelihoods = self.gaussian_conditional(y, scales, means)
        if self.training and self.train_quantizer == "ste":
            centred = y - means
            y_hat = centred + (torch.round(centred) - centred).detach() + means
        recon = self.synthesize(y_hat, inv_gain, ctx)
        bits = _bits_per_item(y_likelihoods) + _bits_per_item(z_likelihoods)
        out = {"recon": recon, "likelihoods": {"y": y_likelihoods, "z": z_likelihoods}, "bits": bits}
        return out, self.advance(state, recon)

    def forward(self, latent_BCthw: torch.Tensor, quality: Quality) -> dict[str, Any]:
        """Code a latent ``B x C x t x h x w`` frame by frame from an empty state.

        Returns ``recon`` (same shape), ``likelihoods`` ``{"y": [t tensors], "z": [t tensors]}``
        and ``bits`` (``B x t``, the model's bits per latent frame).
        """
        if latent_BCthw.dim() != 5 or latent_BCthw.shape[1] != self.latent_channels or latent_BCthw.shape[2] < 1:
            raise ValueError(
                f"expected latent B x {self.latent_channels} x t x h x w with t >= 1, got shape {tuple(latent_BCthw.shape)}"
            )
        state = self.init_state()
        recons, y_lik, z_lik, bits = [], [], [], []
        for i in range(latent_BCthw.shape[2]):
            out, state = self.forward_frame(latent_BCthw[:, :, i], state, quality)
            recons.append(out["recon"])
            y_lik.append(out["likelihoods"]["y"])
            z_lik.append(out["likelihoods"]["z"])
            bits.append(out["bits"])
        return {
            "recon": torch.stack(recons, dim=2),
            "likelihoods": {"y": y_lik, "z": z_lik},
            "bits": torch.stack(bits, dim=1),
        }

    # ---- entropy coding (after update()) ------------------------------------------------------
    # compress_frame and decompress_frame run everything the decoder recomputes (context, scales,
    # means, reconstruction, memory) in fixed point (models/fixed_point.py): the same integers on
    # every CPU kind and device, so the scale indexes cannot differ between encoder and decoder.
    # The arithmetic is forward_frame's in eval mode (z_hat = round(z - median) + median,
    # y_hat = round(y - mu) + mu) up to the fixed-point roundings; g_a, h_a and the rates stay
    # float: only the encoder runs them.

    def cdf_tables(self) -> dict[str, CdfTables]:
        """The coder's view of both entropy models' tables (build once, after update()); a
        decoder builds the same from the state dict alone (``latent_decoding.decoder_parts``)."""
        return {"z": CdfTables.of(self.entropy_bottleneck), "y": CdfTables.of(self.gaussian_conditional)}

    def fixed_point(self) -> FixedPointNet:
        """The decoder side in fixed point (build once, after update(); FixedPointError if a
        weight is too large to run exactly)."""
        return FixedPointNet(self)

    def symbols_per_frame(self, height: int, width: int) -> int:
        """Symbols one latent frame of ``height x width`` puts in the stream (y and z)."""
        return symbols_per_frame(self.y_channels, self.entropy_bottleneck.channels, height, width)

    @torch.no_grad()
    def compress_frame(
        self,
        frame_BChw: torch.Tensor,
        state: FixedPointState,
        quality: int,
        coder: SymbolEncoder,
        tables: dict[str, CdfTables],
        net: FixedPointNet,
        observer: FrameObserver | None = None,
    ) -> tuple[torch.Tensor, FixedPointState, tuple[float, float]]:
        """Put one latent frame's symbols (z, then y) into ``coder``. Returns the decoder's
        reconstruction of the frame (float32), the next state (``net.init_state()`` first) and
        ``(model_bits, estimate_bits)``:

        - ``model_bits``: ``-sum log2 p`` under the model as it codes, i.e. each Gaussian at the
          scale-table entry its index selects (compressai rounds scales up to its 64-step table);
          what the coder's output should match, up to the CDFs' 16-bit precision;
        - ``estimate_bits``: the same at the exact predicted scales, the training loss's rate.

        ``observer`` sees ``(y symbols, y scale indexes, latent at 2^-FRAC_BITS)``.
        """
        b, _, h, w = frame_BChw.shape
        gain, _ = self.gains(quality, b)
        ctx_fixed = net.context(state, b, h, w)
        ctx = to_float(ctx_fixed).to(frame_BChw.device)
        y = self.g_a(torch.cat([frame_BChw, ctx], dim=1)) * gain
        z = self.h_a(y)
        eb, gc = self.entropy_bottleneck, self.gaussian_conditional
        z_symbols = eb.quantize(z, "symbols", eb._get_medians().detach())
        coder.put(z_symbols.cpu(), eb._build_indexes(z.size()), tables["z"])
        scales_fixed, means_fixed = net.entropy_parameters(z_symbols, ctx_fixed)
        scales, means = to_float(scales_fixed).to(y.device), to_float(means_fixed).to(y.device)
        y_symbols = gc.quantize(y, "symbols", means)
        indexes = net.scale_indexes(scales_fixed)
        coder.put(y_symbols.cpu(), indexes, tables["y"])
        recon_fixed = net.synthesize(y_symbols, means_fixed, quality, ctx_fixed)
        if observer is not None:
            observer(y_symbols, indexes, recon_fixed)
        _, z_likelihoods = eb(z, training=False)
        _, y_likelihoods = gc(y, gc.scale_table[indexes.long()].to(scales), means, training=False)
        _, y_estimate = gc(y, scales, means, training=False)
        z_bits = self.rate_bits(z_likelihoods)
        bits = (float(z_bits + self.rate_bits(y_likelihoods)), float(z_bits + self.rate_bits(y_estimate)))
        return to_float(recon_fixed).to(frame_BChw.device), net.advance(state, recon_fixed), bits

    @torch.no_grad()
    def decompress_frame(
        self,
        state: FixedPointState,
        quality: int,
        size_hw: tuple[int, int],
        decoder: SymbolDecoder,
        tables: dict[str, CdfTables],
        net: FixedPointNet,
        observer: FrameObserver | None = None,
    ) -> tuple[torch.Tensor, FixedPointState]:
        """Read one latent frame (batch 1) of ``size_hw`` from ``decoder``; return it and the next
        state (``latent_decoding.decompress_frame``: what a decoder runs without this module)."""
        self.gains(quality, 1)  # checks the index
        return decompress_frame(
            state, quality, size_hw, decoder, tables, net, self.num_qualities, self.entropy_bottleneck.channels, observer, self.y_gain.device
        )

    @staticmethod
    def rate_bits(likelihoods: Any) -> torch.Tensor:
        """Total bits ``-sum log2 p`` over a likelihood tensor or any dict/list nesting of them."""
        if isinstance(likelihoods, torch.Tensor):
            return torch.log(likelihoods).sum() / -math.log(2.0)
        if isinstance(likelihoods, dict):
            parts = list(likelihoods.values())
        elif isinstance(likelihoods, (list, tuple)):
            parts = list(likelihoods)
        else:
            raise TypeError(f"likelihoods must be tensors in dicts/lists, got {type(likelihoods).__name__}")
        if not parts:
            raise ValueError("no likelihoods")
        return torch.stack([LatentVideoCodec.rate_bits(p) for p in parts]).sum()

    # aux_loss() and update(scale_table=None, force=False) come from CompressionModel:
    # the entropy bottleneck's aux loss, and the CDF tables of both entropy models.


def _bits_per_item(likelihoods: torch.Tensor) -> torch.Tensor:
    return torch.log(likelihoods).flatten(1).sum(dim=1) / -math.log(2.0)
