"""Scale-Space Flow's pixel synthesis in horizontal strips, bit-identical to the whole frame.

Why it is exact: a synthesis transform (``img_decoder``, ``motion_decoder``, ``res_decoder``: four
5x5 stride-2 deconvolutions with ReLUs) reads a bounded neighbourhood of each output row. For a
strip of output rows, :func:`rows_needed` walks the layers back from the output and gives, per
layer, the input rows that strip depends on (the strip's own and a margin that covers the
layers' reach, computed from each layer's kernel, stride and padding); the strip runs on those
rows and is cut back after every layer to what the layers after it still need. On the CPU,
``F.conv_transpose2d`` gives each output pixel the same arithmetic whatever the extent of the
tensor around it (:func:`strips_exact` checks this once per process; where it fails only the
whole-frame plan is offered), so a strip's rows equal the same rows of the whole-frame output.

Only the synthesis is tiled: the hyperpriors and the entropy coding run at 1/16 of the
resolution and below and stay whole (their probabilities never depend on the plan), and the
scale-space volume and its warp (``grid_sample`` reads anywhere in the reference) stay whole-frame.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import torch
from torch import nn

FLOAT_BYTES = 4
# Layers that map each position to itself: a strip passes through them unchanged.
_POINTWISE = (nn.ReLU, nn.LeakyReLU, nn.Identity, nn.Sigmoid, nn.Tanh)


def _height_after(layer: nn.Module, h: int) -> int:
    if isinstance(layer, nn.ConvTranspose2d):
        (k, s, p, op, d) = (layer.kernel_size[0], layer.stride[0], layer.padding[0], layer.output_padding[0], layer.dilation[0])
        return (h - 1) * s - 2 * p + d * (k - 1) + op + 1
    if isinstance(layer, nn.Conv2d):
        (k, s, p, d) = (layer.kernel_size[0], layer.stride[0], layer.padding[0], layer.dilation[0])
        return (h + 2 * p - d * (k - 1) - 1) // s + 1
    if isinstance(layer, _POINTWISE):
        return h
    raise ValueError(f"{type(layer).__name__}: not a layer the strip synthesis knows the reach of")


def _input_rows(layer: nn.Module, o0: int, o1: int, h_in: int) -> tuple[int, int]:
    """Input rows ``[i0, i1)`` that output rows ``[o0, o1)`` of ``layer`` read (within the input),
    ``i0`` where the layer's output rows then start at a known offset (:func:`_first_output_row`)."""
    if isinstance(layer, nn.ConvTranspose2d):
        # output o = s * i + d * t - p for a tap t in [0, k): i in [(o + p - d(k-1)) / s, (o + p) / s]
        k, s, p, d = layer.kernel_size[0], layer.stride[0], layer.padding[0], layer.dilation[0]
        i0, i1 = math.ceil((o0 + p - d * (k - 1)) / s), (o1 - 1 + p) // s + 1
    elif isinstance(layer, nn.Conv2d):
        # output o reads s * o - p + d * t; the crop starts on the stride's grid so rows stay aligned
        k, s, p, d = layer.kernel_size[0], layer.stride[0], layer.padding[0], layer.dilation[0]
        i0, i1 = s * o0 - p, s * (o1 - 1) - p + d * (k - 1) + 1
        i0 = max(0, i0) // s * s
    else:
        i0, i1 = o0, o1
    return max(0, i0), min(h_in, i1)


def _first_output_row(layer: nn.Module, i0: int) -> int:
    """The whole-frame row of the first output row that ``layer`` gives on input rows from ``i0``."""
    if isinstance(layer, nn.ConvTranspose2d):
        return layer.stride[0] * i0
    if isinstance(layer, nn.Conv2d):
        return i0 // layer.stride[0]
    return i0


def rows_needed(layers: list[nn.Module], h_in: int, out_rows: tuple[int, int]) -> list[tuple[int, int]]:
    """Per layer input (and last, the output): the rows the output rows ``out_rows`` depend on."""
    heights = [h_in]
    for layer in layers:
        heights.append(_height_after(layer, heights[-1]))
    ranges = [out_rows]
    for layer, h in zip(reversed(layers), reversed(heights[:-1])):
        ranges.append(_input_rows(layer, *ranges[-1], h))
    return ranges[::-1]


def margin_rows(decoder: nn.Sequential, h_in: int = 64) -> int:
    """Input rows a strip reads beyond its own, on the worse side (in the synthesis' input rows)."""
    layers = list(decoder)
    up = _height_after_all(layers, h_in) // h_in
    mid = h_in // 2
    (i0, i1) = rows_needed(layers, h_in, (mid * up, (mid + 1) * up))[0]
    return max(mid - i0, i1 - (mid + 1))


def _height_after_all(layers: list[nn.Module], h: int) -> int:
    for layer in layers:
        h = _height_after(layer, h)
    return h


def strip_edges(h_in: int, strips: int) -> list[tuple[int, int]]:
    """``strips`` bands of nearly equal height covering ``h_in`` input rows."""
    strips = max(1, min(strips, h_in))
    edges = [round(i * h_in / strips) for i in range(strips + 1)]
    return [(edges[i], edges[i + 1]) for i in range(strips)]


def synthesize(decoder: nn.Sequential, x_BChw: torch.Tensor, strips: int) -> torch.Tensor:
    """``decoder(x_BChw)`` computed in ``strips`` horizontal strips (1: the whole frame at once)."""
    if strips <= 1:
        return decoder(x_BChw)
    layers, h_in = list(decoder), x_BChw.shape[-2]
    h_out = _height_after_all(layers, h_in)
    if h_out % h_in:
        raise ValueError(f"strip synthesis needs a whole upsampling factor, got {h_in} -> {h_out} rows")
    up, out = h_out // h_in, None
    for r0, r1 in strip_edges(h_in, strips):
        ranges = rows_needed(layers, h_in, (up * r0, up * r1))
        top, x = ranges[0][0], x_BChw[:, :, ranges[0][0] : ranges[0][1]]
        if isinstance(layers[0], _POINTWISE):
            x = x.clone()  # an in-place first layer would write into the caller's tensor
        for layer, (k0, k1) in zip(layers, ranges[1:]):
            x, first = layer(x), _first_output_row(layer, top)
            if k0 < first or k1 > first + x.shape[-2]:
                raise RuntimeError(f"{type(layer).__name__}: the strip's rows {k0}..{k1} are outside what it computed")
            x, top = x[:, :, k0 - first : k1 - first], k0
        if out is None:
            out = x.new_empty(*x.shape[:2], h_out, x.shape[-1])
        out[:, :, up * r0 : up * r1] = x
    return out


@functools.cache
def strips_exact() -> bool:
    """A transposed convolution's rows here do not depend on how many rows are around them.

    Checked once per process on a small case (a crop of the input gives the matching rows of the
    output, bit for bit), so a platform where the property fails decodes whole frames only.
    """
    gen = torch.Generator().manual_seed(0)
    layer = nn.ConvTranspose2d(8, 8, 5, stride=2, padding=2, output_padding=1)
    x = torch.randn(1, 8, 12, 20, generator=gen)
    with torch.no_grad():
        nn.init.normal_(layer.weight, generator=gen)
        full, part = layer(x), layer(x[:, :, 3:9])
    return bool(torch.equal(full[:, :, 7:16], part[:, :, 1:10]))


# ---- memory ---------------------------------------------------------------------------------

# Whole-frame float planes alive at a frame's peak, in units of H x W floats, beside the
# scale-space volume's 3 per level: the reference (3), the motion field (3) and the volume's
# blur temporaries (oneDNN pads a depthwise blur's 3 channels to a block of 8 or 16), or later the
# warp's grid and its temporaries, the prediction, the residual and their sum. Calibrated against
# measured peaks (tests/test_ssf_budget.py; 1280x720: 188 MB measured in 8 strips).
WHOLE_FRAME_PLANES = 30
# The encoder also holds the source frame and its residual against the prediction.
ENCODER_PLANES = 6
# Whole-frame planes held while a synthesis or the entropy coder runs (reference, prediction, motion field).
HELD_PLANES = 12
# A synthesis layer's input and output, each once more in oneDNN's blocked layout (measured: an
# untiled 1280x720 decode peaks at 443 MB, 2.5x its largest layer's input and output).
SYNTHESIS_COPIES = 2.75
# Bytes the first frame adds whatever its size: oneDNN's primitives and scratch, allocator arenas.
FIXED_BYTES = 24 * 2**20
# Entropy decoding of one latent: Python lists of symbols and indexes and their arrays, per symbol.
ENTROPY_BYTES_PER_SYMBOL = 48


@dataclasses.dataclass(frozen=True)
class SynthesisPlan:
    """How to synthesise frames: ``strips`` horizontal strips of the latent's rows (1: whole)."""

    strips: int = 1

    def describe(self) -> str:
        return "whole frames" if self.strips == 1 else f"{self.strips} synthesis strips"


@dataclasses.dataclass(frozen=True)
class CodingMemory:
    """Bytes coding one frame adds at its peak, which is the largest of three phases: the
    scale-space volume and warp (``whole_frame``), a synthesis strip beside the frames held then
    (``held + synthesis``), the entropy coder's buffers for one latent (``held + entropy``); plus
    ``fixed`` (first use) and ``analysis`` (the encoder's whole-frame analysis; 0 when decoding)."""

    whole_frame: int
    held: int
    synthesis: int
    entropy: int
    analysis: int
    fixed: int

    @property
    def total(self) -> int:
        return self.fixed + max(self.whole_frame, self.held + self.synthesis, self.held + self.entropy) + self.analysis


def estimate_memory(model: nn.Module, padded_hw: tuple[int, int], plan: SynthesisPlan, encoding: bool = False) -> CodingMemory:
    """What coding one frame of ``padded_hw`` with ``plan`` adds, from the widths alone."""
    h, w = padded_hw
    planes = WHOLE_FRAME_PLANES + 3 * (int(model.num_levels) + 1) + (ENCODER_PLANES if encoding else 0)
    synthesis = max(_strip_bytes(getattr(model, name), h, w, plan.strips) for name in ("img_decoder", "motion_decoder", "res_decoder"))
    analysis = max(_layer_bytes(getattr(model, n), h, w) for n in ("img_encoder", "motion_encoder", "res_encoder")) if encoding else 0
    analysis = int(SYNTHESIS_COPIES * analysis)
    symbols = int(model.planes) * (h // 16) * (w // 16)
    held = (HELD_PLANES + (ENCODER_PLANES if encoding else 0)) * h * w * FLOAT_BYTES
    return CodingMemory(
        planes * h * w * FLOAT_BYTES, held, int(SYNTHESIS_COPIES * synthesis), ENTROPY_BYTES_PER_SYMBOL * symbols, analysis, FIXED_BYTES
    )


def _layer_bytes(layers: nn.Sequential, h: int, w: int) -> int:
    """A whole-frame pass's largest layer: its input and output activations."""
    worst, channels = 0, _in_channels(layers[0])
    for layer in layers:
        if isinstance(layer, _POINTWISE):
            continue
        h_out, w_out = _height_after(layer, h), _height_after(layer, w)
        worst = max(worst, channels * h * w + layer.out_channels * h_out * w_out)
        h, w, channels = h_out, w_out, layer.out_channels
    return worst * FLOAT_BYTES


def _strip_bytes(decoder: nn.Sequential, h: int, w: int, strips: int) -> int:
    """One strip's largest layer (the tallest strip's): its input crop, its output and the
    output's cut-back rows, which the next layer's output joins before the old ones go."""
    layers = list(decoder)
    up = _height_after_all(layers, 64) // 64
    h_in, w_in = h // up, w // up
    if strips <= 1:
        return _layer_bytes(decoder, h_in, w_in)
    worst = 0
    for r0, r1 in strip_edges(h_in, strips):
        ranges = rows_needed(layers, h_in, (up * r0, up * r1))
        rows, width, channels = ranges[0][1] - ranges[0][0], w_in, _in_channels(layers[0])
        for layer, (k0, k1) in zip(layers, ranges[1:]):
            if isinstance(layer, _POINTWISE):
                continue
            made = layer.out_channels * _height_after(layer, rows) * _height_after(layer, width)
            worst = max(worst, channels * rows * width + made)
            rows, width, channels = k1 - k0, _height_after(layer, width), layer.out_channels
    return worst * FLOAT_BYTES


def _in_channels(layer: nn.Module) -> int:
    return getattr(layer, "in_channels", 0)


def choose_plan(model: nn.Module, padded_hw: tuple[int, int], budget: int, encoding: bool = False) -> tuple[SynthesisPlan, CodingMemory, bool]:
    """The fewest strips whose estimate fits ``budget`` bytes: ``(plan, estimate, True)``; when
    none does, the smallest: ``(plan, estimate, False)``."""
    h_latent = padded_hw[0] // 16
    counts = [1] + ([n for n in (2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64) if n <= h_latent] if strips_exact() else [])
    candidates = [(SynthesisPlan(n), estimate_memory(model, padded_hw, SynthesisPlan(n), encoding)) for n in counts]
    for plan, memory in candidates:
        if memory.total <= budget:
            return plan, memory, True
    plan, memory = min(candidates, key=lambda c: c[1].total)
    return plan, memory, False
