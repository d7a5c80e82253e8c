"""Encode a causal tokenizer one step of frames at a time, in horizontal strips, in bounded memory.

The mirror of tiling.py's strip decoding. The encoder splits into a head of stages that go down
from the frame's resolution to the latent's (``CausalEncoder.head_stages``: each reads a bounded
neighbourhood of each pixel) and a tail at latent resolution (the middle block, possibly with
frame-wide attention, and the output), which runs untiled on the whole latent frame. A strip of
latent rows needs the frame's rows plus a margin covering the head's reach; after each stage the
activation is cut back to what the stages after it need. The margin at a downsampling's input is
even, so a strip samples the same grid as the whole frame. Each strip keeps its own causal
cache, in RAM or in a file between steps; the stages before the first temporal downsampling may
take the frames one at a time. With the tokenizer's extent-independent inference kernels
(exact_kernels.py) the latents equal an untiled encode's, bit for bit
(tests/test_tokenizer_encoder_tiling.py).

Memory is one strip's activations plus the caches: at full resolution the activations of a
step's frames dominate (the base-16 reference tokenizer held 6.7 GB untiled for one step at
1920x1080), which strips and frames one at a time divide.
"""

from __future__ import annotations

import dataclasses
import math
import operator
import os
from typing import Any

import torch

from gvc_train.models.tokenizer.causal_layers import StreamContext, StreamState
from gvc_train.models.tokenizer.causal_vae_nets import cached_channels
from gvc_train.models.tokenizer.distributions import DiagonalGaussian
from gvc_train.models.tokenizer.tiling import FIXED_BYTES, FLOAT_BYTES, DecodePlan, StripCaches, cheapest_fitting_plan, strip_counts, strip_rows, tileable, with_other

# The plan has the decoder's fields: strips, frames at once (before the first temporal
# downsampling), caches spilled to a file.
EncodePlan = DecodePlan

# Live activation bytes at a head stage, in units of its widest activation (input, its concatenation
# with the cached past, a norm's and an activation's output, a conv's output, the residual sum).
ACTIVATIONS_ALIVE = 6


def encoder_tileable(vae: Any) -> bool:
    return hasattr(getattr(vae, "encoder", None), "head_stages") and tileable(vae)


def encoder_margins(stages: list[Any]) -> list[tuple[int, int]]:
    """Rows above and below a strip's own that each stage's input needs (in that stage's input
    pixels), walked back from the latent rows (the last entry, ``(0, 0)``). A 3x3 stride-2
    downsampling padded at the bottom reads input rows ``2i .. 2i + 2`` for output row ``i``:
    twice the margin above (so even: a strip samples the whole frame's grid), twice plus one below."""
    need = [(0, 0)] * (len(stages) + 1)
    for s in range(len(stages) - 1, -1, -1):
        above, below = need[s + 1]
        if stages[s].downsample > 1:
            need[s] = (2 * above + 2 * stages[s].radius - 2, 2 * below + stages[s].radius)
        else:
            need[s] = (above + stages[s].radius, below + stages[s].radius)
    return need


def _rows(f: int, r0: int, r1: int, latent_h: int, need: tuple[int, int]) -> tuple[int, int]:
    """The rows at resolution ``f`` (over the latent's) that latent rows ``[r0, r1)`` need."""
    return max(0, f * r0 - need[0]), min(f * latent_h, f * r1 + need[1])


def head_stride(stages: list[Any]) -> int:
    """The frame's resolution over the latent's: the product of the head's downsamplings."""
    return math.prod(st.downsample for st in stages)


def _first_temporal_stage(stages: list[Any]) -> int:
    """Stages before this one may take the frames one at a time."""
    end = 0
    while end < len(stages) and stages[end].per_frame:
        end += 1
    return end


class StripEncoder:
    """A causal tokenizer's encoder for one stream: ``step(x_BCThw)`` takes the next frames (the
    first step 1 + 4m of them, later steps multiples of the temporal stride, in [0, 1], padded to
    the spatial stride) and gives their posterior, the values of ``encode_chunk``."""

    def __init__(self, vae: Any, frame_hw: tuple[int, int], plan: EncodePlan = EncodePlan(), spill_dir: str | os.PathLike | None = None) -> None:
        if plan.strips > 1 and not encoder_tileable(vae):
            raise ValueError("this tokenizer normalises over whole frames (GroupNorm): it cannot encode in strips")
        self.vae, self.encoder, self.plan = vae, vae.encoder, plan
        self.stages = self.encoder.head_stages()
        self.need = encoder_margins(self.stages)
        self.scale_in = [head_stride(self.stages)]  # each stage's input resolution over the latent's
        for stage in self.stages:
            self.scale_in.append(self.scale_in[-1] // stage.downsample)
        stride = self.scale_in[0]
        if frame_hw[0] % stride or frame_hw[1] % stride:
            raise ValueError(f"frames must be padded to a multiple of {stride}, got {frame_hw}")
        self.latent_h = frame_hw[0] // stride
        self.per_frame_to = _first_temporal_stage(self.stages)
        self.rows = strip_rows(self.latent_h, plan.strips)
        self.tail_state = vae.init_encoder_state()
        self.store = StripCaches(plan.spill, spill_dir)
        self.frames_seen = 0

    def close(self) -> None:
        self.store.close()

    def __enter__(self) -> "StripEncoder":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def step(self, x_BCThw: torch.Tensor) -> DiagonalGaussian:
        at_start = self.frames_seen == 0
        out = None
        for k, (r0, r1) in enumerate(self.rows):
            piece = self._strip(k, r0, r1, x_BCThw, at_start)
            if len(self.rows) == 1:
                out = piece
                break
            if out is None:
                b, c, t, _, w = piece.shape
                out = piece.new_empty(b, c, t, self.latent_h, w)
            out[:, :, :, r0:r1] = piece
            del piece
        # The context alone holds the old cache, so each layer's old entry goes once it is read.
        state, self.tail_state = self.tail_state, None
        ctx = StreamContext(state, at_start=at_start, record=True)
        del state
        moments = self.encoder.forward_tail(out, ctx)
        self.tail_state = StreamState(ctx.new, self.frames_seen + 1)
        self.frames_seen += 1
        return DiagonalGaussian.from_moments(moments)

    def _strip(self, k: int, r0: int, r1: int, x_BCThw: torch.Tensor, at_start: bool) -> torch.Tensor:
        """Latent rows ``[r0, r1)`` of the head's output, from the frame's rows with margins, cut
        back after every stage, through strip ``k``'s own cache."""
        top, bottom = _rows(self.scale_in[0], r0, r1, self.latent_h, self.need[0])
        x = x_BCThw[:, :, :, top:bottom] * 2.0 - 1.0  # a strip's copy in [-1, 1], not the whole frame's
        ctx = StreamContext(self.store.take(k), at_start=at_start, record=True)
        if self.per_frame_to > 0 and self.plan.frames_at_once is not None and x.shape[2] > self.plan.frames_at_once:
            x, top = self._per_frame_head(x, top, r0, r1, ctx)
            ctx.at_start = at_start  # the later stages see the whole step, as a whole pass would
            first = self.per_frame_to
        else:
            first = 0
        for s in range(first, len(self.stages)):
            x, top = self._stage(s, x, top, r0, r1, ctx)
        self.store.put(k, StreamState(ctx.new, self.frames_seen + 1))
        return x

    def _stage(self, s: int, x: torch.Tensor, top: int, r0: int, r1: int, ctx: StreamContext) -> tuple[torch.Tensor, int]:
        """Run stage ``s`` on rows starting at ``top`` (its input pixels); keep the rows the stages
        after it need (at its output resolution)."""
        x = self.stages[s].run(x, ctx)
        top //= self.stages[s].downsample  # even at a downsampling's input: the grids agree
        keep0, keep1 = _rows(self.scale_in[s + 1], r0, r1, self.latent_h, self.need[s + 1])
        return x[:, :, :, keep0 - top : keep1 - top], keep0

    def _per_frame_head(self, x: torch.Tensor, top: int, r0: int, r1: int, ctx: StreamContext) -> tuple[torch.Tensor, int]:
        """The stages before the first temporal downsampling, ``frames_at_once`` frames at a time:
        causal layers see the same past either way, so the values are the same."""
        step = self.plan.frames_at_once
        outs, out_top = [], top
        for t0 in range(0, x.shape[2], step):
            if t0:
                ctx.advance()
            y, out_top = x[:, :, t0 : t0 + step], top
            for s in range(self.per_frame_to):
                y, out_top = self._stage(s, y, out_top, r0, r1, ctx)
            outs.append(y)
        return torch.cat(outs, dim=2), out_top


@dataclasses.dataclass(frozen=True)
class EncodeMemory:
    """Bytes a plan holds at its peak beyond the loaded model: ``cache`` (all strips' caches in
    RAM, or one strip's when they spill, and the tail's), ``transient`` (one strip's activations
    at its largest stage, and the step's input frames), ``fixed`` (oneDNN primitives, scratch)."""

    cache: int
    transient: int
    fixed: int = 0

    @property
    def total(self) -> int:
        return self.cache + self.transient + self.fixed


def estimate_encode_memory(vae: Any, frame_hw: tuple[int, int], plan: EncodePlan, frames: int | None = None) -> EncodeMemory:
    """What :class:`StripEncoder` with ``plan`` holds at its peak for steps of ``frames`` frames
    (the temporal stride by default), from the architecture alone."""
    encoder = vae.encoder
    stages = encoder.head_stages()
    need = encoder_margins(stages)
    f0 = head_stride(stages)
    h, w = frame_hw[0] // f0, frame_hw[1] // f0
    frames = frames or int(getattr(vae, "temporal_stride", 4))
    per_frame_to = _first_temporal_stage(stages)
    strip_cache, transient = [], 0
    for r0, r1 in strip_rows(h, plan.strips):
        f, t, cache = f0, frames, 0
        if plan.frames_at_once is not None:
            t = min(t, plan.frames_at_once)
        for s, stage in enumerate(stages):
            if s == per_frame_to:
                t = frames  # the whole step again: no temporal downsampling before this stage
            out_f = f // stage.downsample
            area_in = -operator.sub(*_rows(f, r0, r1, h, need[s])) * f * w
            area_out = -operator.sub(*_rows(out_f, r0, r1, h, need[s + 1])) * out_f * w
            cache += stage.cached * (area_out if stage.downsample > 1 else area_in) * FLOAT_BYTES
            out_t = t if stage.per_frame else math.ceil(t / 2)
            live = stage.channels * max((t + 2) * area_in, out_t * area_out)
            transient = max(transient, ACTIVATIONS_ALIVE * live * FLOAT_BYTES)
            f, t = out_f, out_t
        strip_cache.append(cache)
    held = (max(strip_cache) if plan.spill else sum(strip_cache)) + max(strip_cache) // 4
    tail_cached = sum(cached_channels(m) for m in encoder.tail_modules())
    latent_frames = max(1, frames // int(getattr(vae, "temporal_stride", 4)))
    tail_live = ACTIVATIONS_ALIVE * max(st.channels for st in stages) * (latent_frames + 2) * h * w * FLOAT_BYTES
    # The step's frames as floats (the caller's; a strip's [-1, 1] copy is in its transient).
    frames_in = frames * 3 * frame_hw[0] * frame_hw[1] * FLOAT_BYTES
    return EncodeMemory(
        cache=held + tail_cached * h * w * FLOAT_BYTES * 5 // 4,  # a layer's old and new overlap briefly
        transient=max(transient, tail_live) + frames_in,
        fixed=FIXED_BYTES,
    )


def relative_encode_compute(vae: Any, frame_hw: tuple[int, int], strips: int) -> float:
    """The head's work with ``strips`` strips over its work untiled (channels squared x area)."""
    stages = vae.encoder.head_stages()
    need = encoder_margins(stages)
    f = head_stride(stages)
    h, w = frame_hw[0] // f, frame_hw[1] // f
    tiled = untiled = 0.0
    for s, stage in enumerate(stages):
        weight = stage.channels**2 * f * w
        untiled += weight * f * h
        tiled += weight * sum(-operator.sub(*_rows(f, r0, r1, h, need[s])) for r0, r1 in strip_rows(h, strips))
        f //= stage.downsample
    return tiled / untiled


def choose_encode_plan(vae: Any, frame_hw: tuple[int, int], budget: int, beside: Any = None) -> tuple[EncodePlan, Any, bool]:
    """The fastest plan whose estimate fits ``budget`` bytes (next to ``beside``'s memory, when
    given): ``(plan, estimate, True)``; when none does, the smallest: ``(plan, estimate, False)``."""
    stride = head_stride(vae.encoder.head_stages())
    return cheapest_fitting_plan(
        strip_counts(frame_hw[0] // stride, encoder_tileable(vae)),
        lambda strips: relative_encode_compute(vae, frame_hw, strips),
        lambda plan: with_other(estimate_encode_memory(vae, frame_hw, plan), beside),
        budget,
    )
