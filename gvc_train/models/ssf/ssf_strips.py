"""Scale-Space Flow's pixel-resolution transforms in horizontal strips, bit-identical to whole frames.

Why it is exact: a synthesis transform (``img_decoder``, ``motion_decoder``, ``res_decoder``: four
5x5 stride-2 deconvolutions with ReLUs) reads a bounded neighbourhood of each output row. For a
strip of output rows, :func:`rows_needed` walks the layers back from the output and gives, per
layer, the input rows that strip depends on (the strip's own and a margin that covers the
layers' reach, computed from each layer's kernel, stride and padding); the strip runs on those
rows and is cut back after every layer to what the layers after it still need. On the CPU,
``F.conv_transpose2d`` and ``F.conv2d`` on one thread give each output pixel the same arithmetic
whatever the extent of the tensor around it (:func:`strips_exact` checks this once per process
and thread count; where it fails only the whole-frame plan is offered), so a strip's rows equal
the same rows of the whole-frame output. The encoder's analysis transforms (``*_encoder``: 5x5
stride-2 convolutions) run in the same strips, so its latents too are the same whatever the plan.

Only the synthesis is tiled: the hyperpriors and the entropy coding run at 1/16 of the
resolution and below and stay whole (their probabilities never depend on the plan), and the
scale-space volume and its warp (``grid_sample`` reads anywhere in the reference) stay whole-frame.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import torch
import torch.nn.functional as F
from compressai.models.video.google import gaussian_blur, gaussian_kernel2d
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


def output_strips(h_in: int, h_out: int, strips: int) -> list[tuple[int, int]]:
    """Output rows of ``strips`` bands on the coarser side's row grid (a latent row is never split)."""
    coarse = min(h_in, h_out)
    if max(h_in, h_out) % coarse:
        raise ValueError(f"strips need a whole scale factor between input and output, got {h_in} -> {h_out} rows")
    f = h_out // coarse
    return [(f * a, f * b) for a, b in strip_edges(coarse, strips)]


def run_in_strips(layers: nn.Sequential, x_BChw: torch.Tensor, strips: int) -> torch.Tensor:
    """``layers(x_BChw)`` computed in ``strips`` horizontal strips (1: the whole frame at once)."""
    if strips <= 1:
        return layers(x_BChw)
    layers_, h_in, out = list(layers), x_BChw.shape[-2], None
    h_out = _height_after_all(layers_, h_in)
    for o0, o1 in output_strips(h_in, h_out, strips):
        ranges = rows_needed(layers_, h_in, (o0, o1))
        top, x = ranges[0][0], x_BChw[:, :, ranges[0][0] : ranges[0][1]]
        if isinstance(layers_[0], _POINTWISE):
            x = x.clone()  # an in-place first layer would write into the caller's tensor
        for layer, (k0, k1) in zip(layers_, ranges[1:]):
            x, first = layer(x), _first_output_row(layer, top)
            if k0 < first or k1 > first + x.shape[-2]:
                raise RuntimeError(f"{type(layer).__name__}: the strip's rows {k0}..{k1} are outside what it computed")
            x, top = x[:, :, k0 - first : k1 - first], k0
        if out is None:
            out = x.new_empty(*x.shape[:2], h_out, x.shape[-1])
        out[:, :, o0:o1] = x
    return out


def blur_in_rows(x_BChw: torch.Tensor, kernel: torch.Tensor, rows: int = 64) -> torch.Tensor:
    """compressai's ``gaussian_blur`` (edge-replicated, one kernel per channel), ``rows`` output
    rows at a time: the whole-frame blur's temporaries (oneDNN pads its 3 channels to a block of
    16) shrink to a band's. Same values on one thread (:func:`strips_exact` checks)."""
    p, channels = kernel.size(0) // 2, x_BChw.size(1)
    padded = F.pad(x_BChw, (p, p, p, p), mode="replicate")
    weight = kernel.expand(channels, 1, kernel.size(0), kernel.size(1))
    out = x_BChw.new_empty(x_BChw.shape)
    for r0 in range(0, x_BChw.shape[-2], rows):
        r1 = min(x_BChw.shape[-2], r0 + rows)
        out[:, :, r0:r1] = F.conv2d(padded[:, :, r0 : r1 + 2 * p], weight, groups=channels)
    return out


def strips_exact() -> bool:
    """Convolutions' rows here (transposed and strided) do not depend on how many rows are around
    them, at the current intra-op thread count.

    Checked once per process and thread count on small stacks (strips equal the whole output,
    bit for bit). It holds on one thread (the codecs' deterministic mode); with more, oneDNN
    splits a transposed convolution's work by the tensor's extent and rows round differently,
    so there (and on any platform where the check fails) only whole frames are offered.
    """
    return _strips_exact(torch.get_num_threads())


@functools.cache
def _strips_exact(threads: int) -> bool:
    gen = torch.Generator().manual_seed(0)
    up = nn.Sequential(nn.ConvTranspose2d(8, 8, 5, 2, 2, 1), nn.ReLU(), nn.ConvTranspose2d(8, 3, 5, 2, 2, 1))
    down = nn.Sequential(nn.Conv2d(3, 8, 5, 2, 2), nn.ReLU(), nn.Conv2d(8, 8, 5, 2, 2))
    with torch.no_grad():
        for layer in (up[0], up[2], down[0], down[2]):
            nn.init.normal_(layer.weight, generator=gen)
        y, x = torch.randn(1, 8, 12, 20, generator=gen), torch.randn(1, 3, 48, 40, generator=gen)
        image, kernel = torch.rand(1, 3, 40, 24, generator=gen), gaussian_kernel2d(11, 1.5, torch.device("cpu"), torch.float32)
        return (
            torch.equal(run_in_strips(up, y, 3), up(y))
            and torch.equal(run_in_strips(down, x, 5), down(x))
            and torch.equal(blur_in_rows(image, kernel, rows=7), gaussian_blur(image, kernel=kernel))
        )


# ---- memory ---------------------------------------------------------------------------------

# Whole-frame float planes alive at a frame's peak, in units of H x W floats, beside the
# scale-space volume's 3 per level: the reference (3), the motion field (3) and the volume's
# blur temporaries (oneDNN pads a depthwise blur's 3 channels to a block of 8 or 16), or later the
# warp's grid and its temporaries, the prediction, the residual and their sum. Calibrated against
# measured peaks (tests/test_ssf_budget.py; 1280x720: 188 MB measured in 8 strips).
WHOLE_FRAME_PLANES = 30
# The same under a strip plan, where the blurs run in row bands (blur_in_rows) and the volume is
# written in place: the warp's grid and temporaries are then the peak (1920x1080: 319 MB measured).
BANDED_PLANES = 20
# The encoder also holds the source frame and its residual against the prediction.
ENCODER_PLANES = 6
# Whole-frame planes held while a synthesis or the entropy coder runs (reference, prediction, motion field).
HELD_PLANES = 12
# A synthesis layer's input and output, each once more in oneDNN's blocked layout (measured: an
# untiled 1280x720 decode peaks at 443 MB, 2.5x its largest layer's input and output).
SYNTHESIS_COPIES = 2.75
# Bytes the first frame adds whatever its size: oneDNN's primitives and scratch, allocator arenas
# (24 MiB covered one thread; a clean clone's CI, at two threads, measured ~4 MB over that).
FIXED_BYTES = 40 * 2**20
# Entropy decoding of one latent: Python lists of symbols and indexes and their arrays, per symbol.
ENTROPY_BYTES_PER_SYMBOL = 48


@dataclasses.dataclass(frozen=True)
class StripPlan:
    """How to synthesise frames: ``strips`` horizontal strips of the latent's rows (1: whole)."""

    strips: int = 1

    def describe(self) -> str:
        return "whole frames" if self.strips == 1 else f"{self.strips} strips"


@dataclasses.dataclass(frozen=True)
class CodingMemory:
    """Bytes coding one frame adds at its peak, which is the largest of its phases: the
    scale-space volume and warp (``whole_frame``), a synthesis strip beside the frames held then
    (``held + synthesis``), the entropy coder's buffers for one latent (``held + entropy``); plus
    ``fixed`` (first use); an encoder's analysis strip (``held + analysis``; 0 when decoding)."""

    whole_frame: int
    held: int
    synthesis: int
    entropy: int
    analysis: int
    fixed: int

    @property
    def total(self) -> int:
        return self.fixed + max(self.whole_frame, self.held + max(self.synthesis, self.entropy, self.analysis))


def estimate_memory(model: nn.Module, padded_hw: tuple[int, int], plan: StripPlan, encoding: bool = False) -> CodingMemory:
    """What coding one frame of ``padded_hw`` with ``plan`` adds, from the widths alone."""
    h, w = padded_hw
    extra = ENCODER_PLANES if encoding else 0
    planes = (WHOLE_FRAME_PLANES if plan.strips <= 1 else BANDED_PLANES) + 3 * (int(model.num_levels) + 1) + extra
    latent_hw = (h // 16, w // 16)  # the encoders' stride (check_frame: multiples of 128)
    synthesis = max(_strip_bytes(getattr(model, n), latent_hw, plan.strips) for n in ("img_decoder", "motion_decoder", "res_decoder"))
    analysis = max(_strip_bytes(getattr(model, n), padded_hw, plan.strips) for n in ("img_encoder", "motion_encoder", "res_encoder")) if encoding else 0
    symbols = int(model.planes) * latent_hw[0] * latent_hw[1]
    held = (HELD_PLANES + extra) * h * w * FLOAT_BYTES
    return CodingMemory(
        planes * h * w * FLOAT_BYTES, held, int(SYNTHESIS_COPIES * synthesis), ENTROPY_BYTES_PER_SYMBOL * symbols,
        int(SYNTHESIS_COPIES * analysis), FIXED_BYTES,
    )  # fmt: skip


def _strip_bytes(transform: nn.Sequential, hw_in: tuple[int, int], strips: int) -> int:
    """The tallest strip's largest layer: its input rows and the rows it makes (whole frames:
    the layer's whole input and output)."""
    layers, (h_in, w_in) = list(transform), hw_in
    worst = 0
    for o0, o1 in output_strips(h_in, _height_after_all(layers, h_in), strips):
        ranges = rows_needed(layers, h_in, (o0, o1))
        rows, width, channels = ranges[0][1] - ranges[0][0], w_in, getattr(layers[0], "in_channels", 0)
        for layer, (k0, k1) in zip(layers, ranges[1:]):
            if isinstance(layer, _POINTWISE):
                continue
            made = layer.out_channels * _height_after(layer, rows) * _height_after(layer, width)
            worst = max(worst, channels * rows * width + made)
            rows, width, channels = k1 - k0, _height_after(layer, width), layer.out_channels
    return worst * FLOAT_BYTES


def choose_plan(model: nn.Module, padded_hw: tuple[int, int], budget: int, encoding: bool = False) -> tuple[StripPlan, CodingMemory, bool]:
    """The fewest strips whose estimate fits ``budget`` bytes: ``(plan, estimate, True)``; when
    none does, the smallest: ``(plan, estimate, False)``."""
    h_latent = padded_hw[0] // 16
    counts = [1] + ([n for n in (2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64) if n <= h_latent] if strips_exact() else [])
    candidates = [(StripPlan(n), estimate_memory(model, padded_hw, StripPlan(n), encoding)) for n in counts]
    for plan, memory in candidates:
        if memory.total <= budget:
            return plan, memory, True
    plan, memory = min(candidates, key=lambda c: c[1].total)
    return plan, memory, False
