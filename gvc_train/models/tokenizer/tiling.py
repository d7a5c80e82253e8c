"""Decode a causal tokenizer one latent frame at a time, in horizontal strips, in bounded memory.

Why it is exact: the decoder splits into a head at latent resolution (run on the whole frame) and
a tail whose every stage reads a bounded neighbourhood of each pixel (``Stage.radius``). A
strip of the output needs the head's output on the strip's rows plus a margin that covers the
tail's reach; after each stage the activation is cut back to what the stages after it still
need. Each strip keeps its own causal cache (its rows of every cached layer), and since the
tokenizer's inference kernels give each pixel the same arithmetic whatever the extent of the
tensor (exact_kernels.py), a strip's pixels equal the same rows of an untiled decode, bit for
bit (tests/test_tokenizer_tiling.py). Time does not widen the margin: a cached frame of a strip
was computed with the same margin.

Memory is one strip's activations for the frames of one latent step (or one frame at a time
after the last temporal upsampling: ``frames_at_once=1``) plus the caches, which stay in RAM or
go to a file between steps (``spill_dir``): then RAM holds only one strip's cache at a time.

Per-frame normalisation (GroupNorm) needs the whole frame's statistics, so such a tokenizer
decodes untiled (one strip): :func:`tileable` says which.
"""

from __future__ import annotations

import dataclasses
import math
import os
import tempfile
from typing import Any

import torch

from gvc_train.models.tokenizer.causal_layers import FrameNorm, StreamContext, StreamState
from gvc_train.models.tokenizer.causal_vae_nets import cached_channels

FLOAT_BYTES = 4


def tileable(vae: Any) -> bool:
    """The tail normalises each position alone (RMS), so strips decode exactly."""
    decoder = getattr(vae, "decoder", None)
    if decoder is None or not hasattr(decoder, "tail_stages"):
        return False
    return all(m.kind == "rms" for m in decoder.modules() if isinstance(m, FrameNorm))


@dataclasses.dataclass(frozen=True)
class DecodePlan:
    """How to decode: ``strips`` horizontal bands of latent rows (1: untiled); ``frames_at_once``,
    frames per pass after the last temporal upsampling (None: all of a step's); ``spill``, keep
    the strips' caches in a file between steps rather than in RAM."""

    strips: int = 1
    frames_at_once: int | None = None
    spill: bool = False

    def describe(self) -> str:
        frames = "all frames" if self.frames_at_once is None else f"{self.frames_at_once} frame(s)"
        return f"{self.strips} strip(s), {frames} at once, cache in {'a file' if self.spill else 'RAM'}"


def strip_rows(latent_h: int, strips: int) -> list[tuple[int, int]]:
    """``strips`` bands of nearly equal height covering ``latent_h`` latent rows."""
    strips = max(1, min(strips, latent_h))
    edges = [round(i * latent_h / strips) for i in range(strips + 1)]
    return [(edges[i], edges[i + 1]) for i in range(strips)]


def margins(stages: list[Any]) -> list[int]:
    """Rows each stage's input needs beyond a strip's own (in that stage's input pixels), and
    the last entry 0 for the output: walked back from the output through each stage's reach."""
    need = [0] * (len(stages) + 1)
    for s in range(len(stages) - 1, -1, -1):
        need[s] = math.ceil((need[s + 1] + stages[s].radius) / stages[s].upsample)
    return need


def _last_temporal_stage(stages: list[Any]) -> int:
    """Index of the first stage from which every stage may take frames one at a time."""
    start = len(stages)
    while start > 0 and stages[start - 1].per_frame:
        start -= 1
    return start


class StripCaches:
    """The strips' caches between steps: in RAM, or in one file rewritten in place each step."""

    def __init__(self, spill: bool, spill_dir: str | os.PathLike | None = None) -> None:
        self.states: dict[int, StreamState] = {}
        self.layout: dict[int, list[tuple[str, tuple[int, ...], int]]] = {}
        self.frames_seen: dict[int, int] = {}
        self.file = None
        self.device = torch.device("cpu")
        if spill:
            self.file = tempfile.TemporaryFile(dir=spill_dir or tempfile.gettempdir(), prefix="gvc-strip-cache-")
            self.end = 0

    def put(self, k: int, state: StreamState) -> None:
        if self.file is None:
            self.states[k] = state
            return
        if k not in self.layout:
            entries = []
            for key, t in state.cache.items():
                entries.append((key, tuple(t.shape), self.end))
                self.end += t.numel() * FLOAT_BYTES
            self.layout[k] = entries
        fd = self.file.fileno()
        for key, shape, offset in self.layout[k]:
            t = state.cache[key]
            if tuple(t.shape) != shape or t.dtype != torch.float32:
                raise RuntimeError(f"decoder cache {key}: shape {tuple(t.shape)} changed from {shape}")
            os.pwrite(fd, memoryview(t.contiguous().cpu().numpy()).cast("B"), offset)
            self.device = t.device
        self.frames_seen[k] = state.frames_seen

    def take(self, k: int) -> StreamState | None:
        """Strip ``k``'s cache, which the store no longer holds (None before its first step)."""
        if self.file is None:
            return self.states.pop(k, None)
        if k not in self.layout:
            return None
        fd, cache = self.file.fileno(), {}
        for key, shape, offset in self.layout[k]:
            t = torch.empty(shape, dtype=torch.float32)
            view = memoryview(t.numpy()).cast("B")
            if os.preadv(fd, [view], offset) != len(view):
                raise RuntimeError("the decoder's cache file was cut short")
            cache[key] = t.to(self.device)  # back to a GPU where the caches came from one
        return StreamState(cache, self.frames_seen[k])

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None


class StripDecoder:
    """A causal tokenizer's decoder for one stream, stepped one latent frame at a time.

    ``step(z_BC1hw)`` gives that latent frame's video frames (1 for the first, ``temporal
    stride`` after), in [0, 1]-ish, not clamped: the same values as ``decode_chunk``.
    """

    def __init__(self, vae: Any, latent_hw: tuple[int, int], plan: DecodePlan = DecodePlan(), spill_dir: str | os.PathLike | None = None) -> None:
        if plan.strips > 1 and not tileable(vae):
            raise ValueError("this tokenizer normalises over whole frames (GroupNorm): it cannot decode in strips")
        self.vae, self.decoder, self.plan = vae, vae.decoder, plan
        self.latent_h, self.latent_w = latent_hw
        self.stages = self.decoder.tail_stages()
        self.need = margins(self.stages)
        self.scale_in = [1]  # each stage's input resolution relative to the latent
        for stage in self.stages:
            self.scale_in.append(self.scale_in[-1] * stage.upsample)
        self.per_frame_from = _last_temporal_stage(self.stages)
        self.rows = strip_rows(self.latent_h, plan.strips)
        self.head_state = vae.init_decoder_state()
        self.store = StripCaches(plan.spill, spill_dir)
        self.latents_seen = 0

    def close(self) -> None:
        self.store.close()

    def __enter__(self) -> "StripDecoder":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def step(self, z_BC1hw: torch.Tensor) -> torch.Tensor:
        if z_BC1hw.dim() != 5 or z_BC1hw.shape[2] != 1 or tuple(z_BC1hw.shape[3:]) != (self.latent_h, self.latent_w):
            raise ValueError(f"expected one latent frame B x C x 1 x {self.latent_h} x {self.latent_w}, got {tuple(z_BC1hw.shape)}")
        at_start = self.latents_seen == 0
        # The context alone holds the old cache, so each layer's old entry goes once it is read.
        state, self.head_state = self.head_state, None
        ctx = StreamContext(state, at_start=at_start, record=True)
        del state
        h_BCthw = self.decoder.forward_head(z_BC1hw, ctx)
        self.head_state = StreamState(ctx.new, self.latents_seen + 1)
        out = None
        for k, (r0, r1) in enumerate(self.rows):
            piece = self._strip(k, r0, r1, h_BCthw)
            if len(self.rows) == 1:
                out = piece
                break
            if out is None:
                b, c, t, _, w = piece.shape
                out = piece.new_empty(b, c, t, self.scale_in[-1] * self.latent_h, w)
            out[:, :, :, self.scale_in[-1] * r0 : self.scale_in[-1] * r1] = piece
        self.latents_seen += 1
        return out.add_(1.0).mul_(0.5)  # the values of (x + 1) * 0.5, without a second buffer

    def _strip(self, k: int, r0: int, r1: int, h_BCthw: torch.Tensor) -> torch.Tensor:
        """The output rows of latent rows ``[r0, r1)``: the tail on the head's rows with margins,
        cut back after every stage, through strip ``k``'s own cache."""
        top = max(0, r0 - self.need[0])
        x = h_BCthw[:, :, :, top : min(self.latent_h, r1 + self.need[0])]
        # The store lets go of the strip's old cache: the pass drops each layer's old entry once
        # the layer has read it, so old and new caches are not both held in full.
        ctx = StreamContext(self.store.take(k), at_start=self.latents_seen == 0, record=True)
        for s in range(self.per_frame_from):
            x, top = self._stage(s, x, top, r0, r1, ctx)
        if self.per_frame_from < len(self.stages):
            x = self._per_frame_tail(x, top, r0, r1, ctx)
        self.store.put(k, StreamState(ctx.new, self.latents_seen + 1))
        return x

    def _stage(self, s: int, x: torch.Tensor, top: int, r0: int, r1: int, ctx: StreamContext) -> tuple[torch.Tensor, int]:
        """Run stage ``s`` on rows starting at ``top`` (its input pixels); keep the rows the stages
        after it need (at its output resolution)."""
        x = self.stages[s].run(x, ctx)
        f, need = self.scale_in[s + 1], self.need[s + 1]
        top *= self.stages[s].upsample
        keep0, keep1 = max(0, f * r0 - need), min(f * self.latent_h, f * r1 + need)
        return x[:, :, :, keep0 - top : keep1 - top], keep0

    def _per_frame_tail(self, x: torch.Tensor, top: int, r0: int, r1: int, ctx: StreamContext) -> torch.Tensor:
        """The stages after the last temporal upsampling, ``frames_at_once`` frames at a time:
        causal layers see the same past either way, so the values are the same."""
        step = self.plan.frames_at_once or x.shape[2]
        outs = []
        for t0 in range(0, x.shape[2], step):
            if t0:
                ctx.advance()
            y, y_top = x[:, :, t0 : t0 + step], top
            for s in range(self.per_frame_from, len(self.stages)):
                y, y_top = self._stage(s, y, y_top, r0, r1, ctx)
            outs.append(y)
        return outs[0] if len(outs) == 1 else torch.cat(outs, dim=2)


# Live activation bytes at a tail stage, in units of its widest activation: the input, its
# concatenation with the cached past, a norm's and an activation's output, a conv's output and
# the residual sum. Calibrated against measured peaks (tests/test_tokenizer_tiling.py).
ACTIVATIONS_ALIVE = 6
# Measured at two threads in a clean clone's CI: untiled and strip plans went 0.04-1.5 MB over
# the estimate without it.
FIXED_BYTES = 32 * 2**20


@dataclasses.dataclass(frozen=True)
class DecodeMemory:
    """Bytes a plan holds at its peak, beyond the loaded model: ``cache`` (the caches in RAM: all
    strips', or one strip's old and new when they spill to a file, and the head's),
    ``transient`` (one strip's activations at its largest stage), ``output`` (one step's frames
    as floats and as uint8), ``fixed`` (what the first step adds whatever the size: oneDNN's
    primitives and per-thread scratch, allocator arenas)."""

    cache: int
    transient: int
    output: int
    fixed: int = 0

    @property
    def total(self) -> int:
        return self.cache + self.transient + self.output + self.fixed


def estimate_memory(vae: Any, latent_hw: tuple[int, int], plan: DecodePlan) -> DecodeMemory:
    """What :class:`StripDecoder` with ``plan`` holds at its peak, from the architecture alone."""
    decoder = vae.decoder
    stages = decoder.tail_stages()
    need, (h, w) = margins(stages), latent_hw
    temporal = int(getattr(vae, "temporal_stride", 4))
    per_frame_from = _last_temporal_stage(stages)
    head_cached = sum(cached_channels(m) for m in decoder.head_modules())
    strip_cache, transient = [], 0
    for r0, r1 in strip_rows(h, plan.strips):
        f, frames, cache = 1, 1, 0  # resolution over the latent's, frames at a stage's input
        for s, stage in enumerate(stages):
            if s >= per_frame_from and plan.frames_at_once is not None:
                frames = min(frames, plan.frames_at_once)
            area_in = (min(f * h, f * r1 + need[s]) - max(0, f * r0 - need[s])) * f * w
            cache += stage.cached * area_in * FLOAT_BYTES
            out_f, out_frames = f * stage.upsample, frames * (1 if stage.per_frame else 2)
            area_out = (min(out_f * h, out_f * r1 + need[s + 1]) - max(0, out_f * r0 - need[s + 1])) * out_f * w
            # A temporal upsampling's conv first doubles the channels at the input resolution.
            live = stage.channels * max(frames * area_in * (1 if stage.per_frame else 2), out_frames * area_out)
            transient = max(transient, ACTIVATIONS_ALIVE * live * FLOAT_BYTES)
            f, frames = out_f, out_frames
        strip_cache.append(cache)
    # The strips' caches wait in RAM (or one strip's at a time is read from the file); while a
    # strip runs, a layer's old and new cache coexist only until the layer has run (the old one
    # is dropped then), which a quarter of a strip's cache bounds with room to spare.
    held = (max(strip_cache) if plan.spill else sum(strip_cache)) + max(strip_cache) // 4
    scale = decoder_scale(stages)
    out_pixels = temporal * h * scale * w * scale
    return DecodeMemory(
        cache=held + head_cached * h * w * FLOAT_BYTES * 5 // 4,  # a layer's old and new overlap briefly
        transient=transient,
        # The step's frames as floats, two temporaries of the uint8 conversion, the uint8 frames.
        output=out_pixels * 3 * (3 * FLOAT_BYTES + 1),
        fixed=FIXED_BYTES,
    )


def decoder_scale(stages: list[Any]) -> int:
    return math.prod(stage.upsample for stage in stages)



# A spilled cache costs a write and a read per step, a small share of the step's compute (~5%
# at 1920x1080 here); one frame at a time costs a little call overhead.
SPILL_COST = 1.08
FRAME_AT_A_TIME_COST = 1.02


def relative_compute(vae: Any, latent_hw: tuple[int, int], strips: int) -> float:
    """The tail's work with ``strips`` strips over its work untiled (margins are recomputed),
    weighting each stage by channels squared times its area, as a conv's cost goes."""
    stages, (h, w) = vae.decoder.tail_stages(), latent_hw
    need = margins(stages)
    tiled = untiled = 0.0
    f = 1
    for s, stage in enumerate(stages):
        weight = stage.channels**2 * f * w
        untiled += weight * f * h
        tiled += weight * sum(min(f * h, f * r1 + need[s]) - max(0, f * r0 - need[s]) for r0, r1 in strip_rows(h, strips))
        f *= stage.upsample
    return tiled / untiled


@dataclasses.dataclass(frozen=True)
class BesideOther:
    """A plan's memory next to another part of the same job that runs in turn with it (an encoder's
    and its reconstruction's decoder): each one's caches stay while the other runs."""

    own: Any
    other: Any

    @property
    def cache(self) -> int:
        return self.own.cache + self.other.cache

    @property
    def total(self) -> int:
        return max(self.own.total + self.other.cache, self.other.total + self.own.cache)


def choose_plan(vae: Any, latent_hw: tuple[int, int], budget: int, beside: Any = None) -> tuple[DecodePlan, Any, bool]:
    """The fastest plan whose estimate fits ``budget`` bytes (next to ``beside``'s memory, when
    given: :class:`BesideOther`): ``(plan, estimate, True)``; when none does, the smallest one:
    ``(plan, estimate, False)``."""
    return cheapest_fitting_plan(
        strip_counts(latent_hw[0], tileable(vae)),
        lambda strips: relative_compute(vae, latent_hw, strips),
        lambda plan: with_other(estimate_memory(vae, latent_hw, plan), beside),
        budget,
    )


def with_other(memory: Any, beside: Any) -> Any:
    return memory if beside is None else BesideOther(memory, beside)


def strip_counts(latent_h: int, tiles: bool) -> list[int]:
    """The strip counts worth trying for ``latent_h`` latent rows (1 alone when ``tiles`` is False)."""
    if not tiles:
        return [1]
    return [1] + sorted({n for n in (2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128) if n <= latent_h} | ({latent_h} if latent_h > 1 else set()))


def cheapest_fitting_plan(counts: list[int], compute: Any, estimate: Any, budget: int) -> tuple[DecodePlan, Any, bool]:
    """Of every plan with ``counts`` strips (frames all at once or one at a time, caches in RAM or a
    file), the one of least ``compute(strips)`` (with the spilling and per-frame costs) whose
    ``estimate(plan).total`` fits ``budget``; when none does, the smallest."""
    candidates = []
    for strips in counts:
        work = compute(strips)
        for frames_at_once in (None, 1):
            for spill in (False, True):
                if spill and strips == 1:
                    continue  # one strip's cache is the whole cache: spilling saves nothing
                plan = DecodePlan(strips, frames_at_once, spill)
                cost = work * (SPILL_COST if spill else 1.0) * (FRAME_AT_A_TIME_COST if frames_at_once else 1.0)
                candidates.append((cost, plan, estimate(plan)))
    fitting = [c for c in candidates if c[2].total <= budget]
    if fitting:
        _, plan, memory = min(fitting, key=lambda c: c[0])
        return plan, memory, True
    _, plan, memory = min(candidates, key=lambda c: c[2].total)
    return plan, memory, False
