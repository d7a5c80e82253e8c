"""The latent codec's decoder side in fixed point: the same integers on every CPU and device.

Why: the decoder must pick the same CDF (scale index) for every symbol as the encoder did, on
another machine. Computed in floats, the scales depend on the CPU's vector kernels (summation
order, FMA, vectorised vs scalar ``exp``/``tanh``): measured on the reference codec, decoding
under ``ATEN_CPU_CAPABILITY=default`` and ``avx512`` gave latents that differ in 80% of their
values (by up to 2e-5), and a scale that lands that close to a table boundary picks another CDF
and the decode turns to garbage. Here everything from the decoded symbols to the scale
indexes, the means, the reconstructed latent, the context and the memory is integer
arithmetic, so it is bit-exact by construction:

- activations are integers at ``2^-FRAC_BITS``, clamped to ``+-ACT_LIMIT`` at every conv input;
- conv weights are the float32 weights rounded to integers at ``2^-WEIGHT_BITS`` (the same
  integers everywhere: nothing new is stored), biases at ``2^-(FRAC_BITS + WEIGHT_BITS)``;
- a convolution is an integer-valued float64 GEMM (im2col + ``mm``): every product and partial
  sum is an integer below 2^53, so it is exact in any summation order, with or without FMA, on
  any BLAS or device (when one GEMM could pass 2^53, the activations' high and low 20 bits go
  through two; the bound is checked per layer when the net is built, :class:`FixedPointError`
  otherwise), then rounded back to ``2^-FRAC_BITS`` by an exact round-shift;
- LeakyReLU(0.1) is an integer multiply by ``round(0.1 * 2^16)`` and a floor;
- sigmoid and tanh are tables over the clamped input range, interpolated in integers, built
  with a fixed sequence of IEEE float64 ``+ * /`` (Taylor ``exp`` with range reduction), so
  identical on every IEEE machine (nothing new is stored); the GRU's gating and the inverse
  gain are integer products and round-shifts;
- the scale index is a ``searchsorted`` of the integer scale in the scale table converted once
  to integers, with compressai's ``build_indexes`` semantics (smallest entry >= scale, after its
  lower bound).

Integer-valued tensors are kept as float64 (exact below 2^53, and fast matmuls everywhere).
Training stays in float32 (``LatentVideoCodec.forward``); this path is inference only. Against
the float path on the reference codec (carphone, 96 frames): scales within 4e-5 and means within
8e-5 on the first latent frame (no scale index of 12,672 moved; 1 on the second), per-frame rates
equal to 0.01% until the closed loop first rounds a symbol the other way, then +-1% per frame
either way; over 25 latent frames the rate estimate moved -0.3..+1.0% and the latent MSE
-0.4..+0.1% per quality. Decoding costs ~20 ms more per latent frame of 22x18 (1 thread).
"""

from __future__ import annotations

import functools
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

# Activations at 2^-20 (~1e-6): the rounding of the activations is what moves the outputs most
# (measured on the reference codec: scales off the float path by 9e-4 at 2^-14, 5e-5 at 2^-18).
FRAC_BITS = 20
WEIGHT_BITS = 20  # weights at 2^-20: ~2e-5 relative for a typical 0.05 weight
ACT_LIMIT = float(2 ** (FRAC_BITS + 16))  # |activation| <= 65536 at every conv input
# A conv multiplies the activation's high and low 20 bits separately (two exact GEMMs), so an
# output's partial sums stay below sum|w_int| * 2^20: weights up to sum|w| ~ 8000 per output.
SPLIT_BITS = WEIGHT_BITS
GAIN_BITS = 16
LEAK_BITS = 16
LEAK = float(round(0.1 * 2**LEAK_BITS))  # LeakyReLU(0.1) as 6554 / 65536
# sigmoid and tanh: tables at 2^-12 steps of the input, linearly interpolated (error < 1e-9)
TABLE_BITS = 12
SIGMOID_RANGE = 16  # 1 - sigmoid(16) < 2^-21: beyond, the table's end value is exact
TANH_RANGE = 8  # 1 - tanh(8) < 2^-21
ONE = float(2**FRAC_BITS)


class FixedPointError(ValueError):
    """A network that the fixed-point path cannot run exactly (weights too large for 2^53)."""


def to_fixed(x: torch.Tensor, bits: int | None = None) -> torch.Tensor:
    """``round(x * 2^bits)`` (default ``FRAC_BITS``) as an integer-valued float64 tensor
    (float32 -> float64 is exact)."""
    bits = FRAC_BITS if bits is None else bits
    return torch.round(x.detach().double() * float(2**bits))


def to_float(x: torch.Tensor, bits: int | None = None) -> torch.Tensor:
    """An integer tensor at ``2^-bits`` (default ``FRAC_BITS``) as float32 (one correctly
    rounded conversion)."""
    bits = FRAC_BITS if bits is None else bits
    return (x * float(2.0**-bits)).float()


def round_shift(x: torch.Tensor, bits: int) -> torch.Tensor:
    """``floor(x / 2^bits + 1/2)`` of integers: exact (power-of-two scaling, integers < 2^53)."""
    return torch.floor((x + float(2 ** (bits - 1))) * float(2.0**-bits))


def split(x: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(hi, lo)`` with ``x = hi * 2^bits + lo`` and ``0 <= lo < 2^bits``: exact."""
    hi = torch.floor(x * float(2.0**-bits))
    return hi, x - hi * float(2**bits)


def mul_shift(x: torch.Tensor, m: torch.Tensor | float, bits: int, rounding: bool = True) -> torch.Tensor:
    """``round(x * m / 2^bits)`` (``floor`` if not ``rounding``) of integers, exactly, for any
    ``|x| < 2^53`` with ``|m| * 2^bits < 2^53``: ``x`` is split at ``bits`` so that no product
    reaches 2^53 (``x * m`` itself may)."""
    hi, lo = split(x, bits)
    low = lo * m
    low = round_shift(low, bits) if rounding else torch.floor(low * float(2.0**-bits))
    return hi * m + low


def leaky_relu(x: torch.Tensor) -> torch.Tensor:
    return torch.where(x < 0, mul_shift(x, LEAK, LEAK_BITS, rounding=False), x)


def _exp(x: torch.Tensor) -> torch.Tensor:
    """exp of float64 ``|x| <= 32`` with only IEEE ``+ * /`` in a fixed order, one op per kernel:
    the same bits on every machine (libm's and Sleef's ``exp`` may differ in the last bit)."""
    t = x * float(2.0**-10)  # exact; |t| <= 1/32
    p = torch.ones_like(t)
    for k in range(12, 0, -1):  # Taylor, Horner form
        p = p * t
        p = p / float(k)
        p = p + 1.0
    for _ in range(10):  # undo the range reduction: exp(x) = exp(x / 1024)^1024
        p = p * p
    return p


@functools.lru_cache(maxsize=None)
def _tables() -> tuple[torch.Tensor, torch.Tensor]:
    """``(sigmoid, tanh)`` tables: entry ``i`` is the function at ``i / 2^TABLE_BITS - R``,
    rounded to ``2^-FRAC_BITS``; built on the CPU in float64 with :func:`_exp` only."""

    def grid(half_range: int) -> torch.Tensor:
        n = half_range * 2**TABLE_BITS
        return torch.arange(-n, n + 2, dtype=torch.float64) * float(2.0**-TABLE_BITS)  # + 1 beyond the end

    sigmoid = 1.0 / (1.0 + _exp(-grid(SIGMOID_RANGE)))
    e = _exp(-2.0 * grid(TANH_RANGE))
    tanh = (1.0 - e) / (1.0 + e)
    return torch.floor(sigmoid * ONE + 0.5), torch.floor(tanh * ONE + 0.5)


def _lookup(table: torch.Tensor, x: torch.Tensor, half_range: int) -> torch.Tensor:
    """The table linearly interpolated at the integers ``x`` (at 2^-F), clamped to its range."""
    r = float(half_range * 2**FRAC_BITS)
    index, frac = split(torch.clamp(x, -r, r) + r, FRAC_BITS - TABLE_BITS)
    table = table.to(x.device)
    index = index.long()
    below, above = table[index], table[index + 1]
    return below + round_shift((above - below) * frac, FRAC_BITS - TABLE_BITS)


def sigmoid(x: torch.Tensor) -> torch.Tensor:
    return _lookup(_tables()[0], x, SIGMOID_RANGE)


def tanh(x: torch.Tensor) -> torch.Tensor:
    return _lookup(_tables()[1], x, TANH_RANGE)


class FixedConv:
    """A 3x3 ``nn.Conv2d`` (padding 1) as an exact integer convolution."""

    def __init__(self, conv: nn.Conv2d, name: str) -> None:
        if conv.kernel_size != (3, 3) or conv.padding != (1, 1) or conv.groups != 1 or conv.dilation != (1, 1):
            raise FixedPointError(f"{name}: only 3x3 convolutions with padding 1 run in fixed point")
        self._set(conv.weight, conv.bias, conv.stride[0], name)

    @classmethod
    def from_weights(cls, weight: torch.Tensor, bias: torch.Tensor | None, stride: int, name: str) -> "FixedConv":
        """The convolution of a 3x3, padding 1 ``nn.Conv2d`` with these weights (a state dict's
        ``weight`` ``out x in x 3 x 3`` and ``bias``), without building the module."""
        if weight.dim() != 4 or tuple(weight.shape[2:]) != (3, 3):
            raise FixedPointError(f"{name}: only 3x3 convolutions run in fixed point, got weight {list(weight.shape)}")
        if bias is not None and tuple(bias.shape) != (weight.shape[0],):
            raise FixedPointError(f"{name}: bias {list(bias.shape)} does not fit weight {list(weight.shape)}")
        conv = cls.__new__(cls)
        conv._set(weight, bias, stride, name)
        return conv

    def _set(self, weight: torch.Tensor, bias: torch.Tensor | None, stride: int, name: str) -> None:
        self.stride = stride
        self.kernel = 3
        out_channels = weight.shape[0]
        self.weight = to_fixed(weight, WEIGHT_BITS).reshape(out_channels, -1)  # out x (in * 9)
        bias = bias if bias is not None else weight.new_zeros(out_channels)
        self.bias = to_fixed(bias, FRAC_BITS + WEIGHT_BITS)[:, None]
        # The largest partial sum of either GEMM, whatever the order: sum |w| * max |a part|
        # (+ |b| for the low part). Integers here, so the check itself is exact. It also keeps
        # every output below 2^50, so the residual adds, LeakyReLU, gains and means after it
        # are exact as well.
        self.l1 = int(self.weight.abs().to(torch.int64).sum(dim=1).max())
        self.max_bias = int(self.bias.abs().max())
        high = int(ACT_LIMIT) >> SPLIT_BITS
        worst = max(self.l1 * high, self.l1 * 2**SPLIT_BITS + self.max_bias)
        if worst >= 2**53:
            raise FixedPointError(
                f"{name}: weights too large for exact fixed point (sum |w| = {self.l1 / 2**WEIGHT_BITS:.0f} for one output, "
                f"at most {2**53 / max(high, 2**SPLIT_BITS) / 2**WEIGHT_BITS:.0f})"
            )

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        s = self.stride
        oh, ow = (h - 1) // s + 1, (w - 1) // s + 1
        x = torch.clamp(x, -ACT_LIMIT, ACT_LIMIT)
        # One GEMM is exact when this input's partial sums stay below 2^53 (typical: |x| < ~100);
        # otherwise x's high and low SPLIT_BITS go through separate GEMMs. Both give the exactly
        # rounded sum, so which one runs does not change a bit.
        whole = self.l1 * int(x.abs().max()) + self.max_bias < 2**53 if x.numel() else True
        parts = [x] if whole else list(split(x, SPLIT_BITS))
        padded = F.pad(torch.cat(parts, dim=1), (1, 1, 1, 1))  # B x (parts * C) x (h+2) x (w+2)
        # im2col by nine strided slices (unfold's CPU kernel is ~10x slower at these sizes):
        # rows ordered (part, in channel, ky, kx), columns (batch, y, x)
        taps = [padded[:, :, i : i + s * (oh - 1) + 1 : s, j : j + s * (ow - 1) + 1 : s] for i in range(3) for j in range(3)]
        n = len(parts)
        cols = torch.stack(taps, dim=2).reshape(b, n, c * 9, oh * ow).permute(1, 2, 0, 3).reshape(n, c * 9, b * oh * ow)
        weight, bias = self.weight.to(x.device), self.bias.to(x.device)
        if whole:
            out = round_shift(torch.mm(weight, cols[0]) + bias, WEIGHT_BITS)
        else:  # x * w / 2^W = hi * w + lo * w / 2^W (SPLIT_BITS == WEIGHT_BITS): only the low part rounds
            out = torch.mm(weight, cols[0]) + round_shift(torch.mm(weight, cols[1]) + bias, WEIGHT_BITS)
        return out.reshape(-1, b, oh, ow).permute(1, 0, 2, 3)


class FixedTrunk:
    """:func:`latent_codec_parts.trunk` (conv, ResBlocks, LeakyReLU, conv) in fixed point, from
    its state dict entries: ``{name}.0``, ``{name}.{i}.conv1/conv2`` for the ``num_res_blocks``
    blocks, then the last conv at ``{name}.{num_res_blocks + 2}`` (index ``num_res_blocks + 1`` is
    the LeakyReLU)."""

    def __init__(self, tensors: StateTensors, name: str, num_res_blocks: int) -> None:
        self.conv_in = _conv(tensors, f"{name}.0")
        self.blocks = [
            (_conv(tensors, f"{name}.{i}.conv1"), _conv(tensors, f"{name}.{i}.conv2")) for i in range(1, num_res_blocks + 1)
        ]
        self.conv_out = _conv(tensors, f"{name}.{num_res_blocks + 2}")

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv_in(x)
        for conv1, conv2 in self.blocks:
            x = x + conv2(leaky_relu(conv1(leaky_relu(x))))
        return self.conv_out(leaky_relu(x))


StateTensors = Mapping[str, torch.Tensor]  # a state dict (a module's, or a safetensors file's)


def _conv(tensors: StateTensors, name: str, stride: int = 1) -> FixedConv:
    if f"{name}.weight" not in tensors:
        raise FixedPointError(f"{name}: no such convolution in the weights")
    return FixedConv.from_weights(tensors[f"{name}.weight"], tensors.get(f"{name}.bias"), stride, name)


@dataclass(frozen=True)
class FixedPointState:
    """:class:`LatentCodecState` of the coding path: integer tensors at ``2^-FRAC_BITS``."""

    prev: torch.Tensor | None = None
    memory: torch.Tensor | None = None
    frames_seen: int = 0


# (y symbols, y scale indexes, reconstructed latent at 2^-FRAC_BITS): what a frame decoded to
FrameObserver = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], None]


class ModelCheck:
    """CRC32 of the y scale indexes and the reconstructed latents, frame after frame: the
    encoder writes it in each FRAMES chunk and the decoder compares, so a decoder whose
    probability model differs from the encoder's says so instead of emitting garbage."""

    def __init__(self) -> None:
        self.crc = 0

    def __call__(self, symbols: torch.Tensor, indexes: torch.Tensor, latent: torch.Tensor) -> None:
        self.crc = zlib.crc32(indexes.cpu().to(torch.int32).numpy().astype("<i4").tobytes(), self.crc)
        self.crc = zlib.crc32(latent.cpu().to(torch.int64).numpy().astype("<i8").tobytes(), self.crc)

    def take(self) -> int:
        """The CRC so far; the check starts again from zero (one per chunk)."""
        crc, self.crc = self.crc, 0
        return crc


class FixedPointNet:
    """Everything of a :class:`LatentVideoCodec` that the decoder recomputes, in fixed point:
    ``ctx_net``, the ConvGRU memory, ``h_s``, ``entropy_params``, ``g_s``, the "no past"
    embedding, the inverse gains, the z medians and the scale table. Built from the codec's
    float32 weights after ``update()``; rebuild it after changing them.

    The codec's state dict is all it reads (:meth:`from_state`), so a decoder builds the very
    same integers from the weights file without building the codec (nor importing compressai)."""

    def __init__(self, codec: nn.Module) -> None:
        self._load(codec.config, codec.state_dict())

    @classmethod
    def from_state(cls, config: Mapping[str, Any], tensors: StateTensors) -> "FixedPointNet":
        """The net of a ``LatentVideoCodec`` of constructor ``config`` whose state dict is
        ``tensors`` (after ``update()``)."""
        net = cls.__new__(cls)
        net._load(config, tensors)
        return net

    def _load(self, config: Mapping[str, Any], tensors: StateTensors) -> None:
        blocks = int(config["num_res_blocks"])
        self.ctx_net = FixedTrunk(tensors, "ctx_net", blocks)
        self.gates = _conv(tensors, "memory.gates")
        self.candidate = _conv(tensors, "memory.candidate")
        self.memory_channels = int(config["memory_channels"])
        self.hs_in, self.hs_up = _conv(tensors, "h_s.conv_in"), _conv(tensors, "h_s.up")
        self.hs_out = _conv(tensors, "h_s.conv_out")
        self.entropy_params = FixedTrunk(tensors, "entropy_params", 1)
        self.g_s = FixedTrunk(tensors, "g_s", blocks)
        self.no_past = to_fixed(tensors["no_past"])
        self.inv_gain = to_fixed(tensors["y_inv_gain"], GAIN_BITS)  # qualities x M
        if float(self.inv_gain.abs().max()) * max(2**GAIN_BITS, ACT_LIMIT / 2**GAIN_BITS) >= 2**53:
            raise FixedPointError("y_inv_gain: too large for exact fixed point")
        # compressai's EntropyBottleneck._get_medians(): the middle quantile of each channel
        self.medians = to_fixed(tensors["entropy_bottleneck.quantiles"][:, :, 1:2]).reshape(1, -1, 1, 1)
        table = tensors["gaussian_conditional.scale_table"].detach().cpu().float()
        if table.numel() == 0:
            raise ValueError("GaussianConditional has no scale table: call update() on the codec before coding")
        if table.numel() > 1 and not bool((table[1:] >= table[:-1]).all()):
            raise FixedPointError("the scale table is not sorted")
        # compressai: index = #{entries s of table[:-1] with s < max(scale, bound)}. For an integer
        # S at 2^-F: s < S / 2^F  <=>  floor(s * 2^F) < S (s * 2^F is exact in float64).
        self.scale_thresholds = torch.floor(table[:-1].double() * ONE).to(torch.int64)
        bound = tensors["gaussian_conditional.lower_bound_scale.bound"].detach().cpu().float()
        self.below_bound = int((table[:-1] < bound).sum())

    def init_state(self) -> FixedPointState:
        return FixedPointState()

    def context(self, state: FixedPointState, batch: int, height: int, width: int) -> torch.Tensor:
        if state.frames_seen == 0 or state.prev is None or state.memory is None:
            return self.no_past[None, :, None, None].expand(batch, -1, height, width)
        return self.ctx_net(torch.cat([state.prev, state.memory], dim=1))

    def entropy_parameters(self, z_symbols: torch.Tensor, ctx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(scales, means)`` at ``2^-F`` from the z symbols and the context."""
        z_hat = z_symbols.to(ctx.device).double() * ONE + self.medians.to(ctx.device)
        x = self.hs_up(leaky_relu(self.hs_in(z_hat)))
        x = F.pixel_shuffle(x, 2)[..., : ctx.shape[-2], : ctx.shape[-1]]
        hyper = self.hs_out(leaky_relu(x))
        scales, means = self.entropy_params(torch.cat([hyper, ctx], dim=1)).chunk(2, dim=1)
        return scales, means

    def scale_indexes(self, scales: torch.Tensor) -> torch.Tensor:
        """compressai's ``build_indexes`` of the scales ``S / 2^F``, in integers (int32, CPU)."""
        counts = torch.searchsorted(self.scale_thresholds, scales.cpu().to(torch.int64).contiguous())
        return torch.clamp(counts, min=self.below_bound).to(torch.int32)

    def synthesize(self, y_symbols: torch.Tensor, means: torch.Tensor, quality: int, ctx: torch.Tensor) -> torch.Tensor:
        """g_s of ``(symbol + mean) * inv_gain[quality]`` and the context: the latent at ``2^-F``."""
        y_hat = torch.clamp(y_symbols.to(means.device).double() * ONE + means, -ACT_LIMIT, ACT_LIMIT)
        inv_gain = self.inv_gain[quality].to(means.device)[None, :, None, None]
        return self.g_s(torch.cat([mul_shift(y_hat, inv_gain, GAIN_BITS), ctx], dim=1))

    def advance(self, state: FixedPointState, recon: torch.Tensor) -> FixedPointState:
        """The ConvGRU: ``h' = (1 - u) h + u tanh(W_c [x, r h])``, ``u, r = sigmoid(W_g [x, h])``."""
        h = state.memory
        if h is None:
            h = recon.new_zeros(recon.shape[0], self.memory_channels, *recon.shape[2:])
        u, r = sigmoid(self.gates(torch.cat([recon, h], dim=1))).chunk(2, dim=1)
        c = tanh(self.candidate(torch.cat([recon, round_shift(r * h, FRAC_BITS)], dim=1)))
        memory = round_shift((ONE - u) * h + u * c, FRAC_BITS)
        return FixedPointState(recon, memory, state.frames_seen + 1)
