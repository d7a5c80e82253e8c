"""Video frames to tokenizer latents and back, streamed, for the families that code latents.

Encoding (:class:`StreamingEncode`): frames are read one at a time, padded to a multiple of the
tokenizer's spatial stride by repeating the last row and column; the tokenizer encodes the first
frame alone and then ``temporal`` frames (one latent frame) at a time through its causal cache;
a frame count that is not ``1 + 4k`` is padded by repeating the last frame. Each latent frame
goes to the family's :class:`ChunkCoder`, and every ``n`` latent frames (a family's chunk or
group) it ends a run with its FRAMES chunks, written to a body file. Memory is bounded by one
latent frame's frames, whatever the video's or the run's length, and by the plan a memory budget
allows for the encoder (untiled, or in strips: models/tokenizer/encoder_tiling.py), which gives
the same latents whatever the plan.

Decoding (:class:`FrameEmitter`): a run's latent frames become pixels one latent frame at a time
through the tokenizer's decoder cache, in the plan a memory budget allows (untiled, or in strips:
models/tokenizer/tiling.py), cropped to the header's size and cut to its frame count. The
encoder's reconstruction (``on_recon``) goes through the same code, so it is what the decoder will
give, float for float; on the CPU every grouping and every plan gives the same bits (the
tokenizer's inference kernels do not depend on the extent of their input:
models/tokenizer/exact_kernels.py), so the two sides may run under different budgets.

:func:`assemble_stream` makes the file: header + CONFIG (known only at the end), the body, END,
renamed into place when whole. :func:`chunk_pixels` is the memory bound's measure.
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO, Protocol

import numpy as np
import torch
import torch.nn.functional as F

from gvc_train.codecs.base import FrameCallback
from gvc_train.coding.container import ChunkType, StreamHeader, chunk_bytes, end_marker, fingerprint_prefix, fps_fraction, header_bytes
from gvc_train.codecs.memory_plan import ENV_VAR, SLACK_BYTES, DefaultBudget, OverBudget, budget_left, describe_bytes
from gvc_train.codecs.stage_clock import StageClock
from gvc_train.frames import frames_to_tensor, tensor_to_frames
from gvc_train.models.tokenizer.encoder_tiling import StripEncoder, choose_encode_plan
from gvc_train.models.tokenizer.tiling import DecodePlan, StripDecoder, choose_plan
from gvc_train.safe_output import atomic_write_with, check_target, temp_beside

# Pixels the tokenizer codes at once (the frames of one run x the padded frame size), and so
# memory: ~360 bytes a pixel for the tiny recipe's tokenizer (bench_codec_memory). The bound is
# 960x544 at the default 8 latents per run, 1080p at 2 (~6 GB with that tokenizer). A stream
# over it is refused before anything is allocated (a forged 16384x16384 header and CONFIG asked
# for tens of GB) and the encoder refuses to write one. Raise a codec's ``max_chunk_pixels`` to
# code larger frames or runs where the memory is there.
MAX_CHUNK_PIXELS = 1920 * 1088 * 4 * 2


def latent_size(width: int, height: int, spatial_stride: int) -> tuple[int, int]:
    """The latent frame's ``(h, w)`` for a ``width x height`` video (padded to the stride)."""
    return math.ceil(height / spatial_stride), math.ceil(width / spatial_stride)


def chunk_pixels(width: int, height: int, latents_per_run: int, spatial_stride: int, temporal_stride: int) -> int:
    """Padded pixels the tokenizer decodes at once for one run of this geometry."""
    h, w = latent_size(width, height, spatial_stride)
    return w * spatial_stride * h * spatial_stride * temporal_stride * latents_per_run


class ChunkCoder(Protocol):
    """A family's per-run coding, fed by :class:`StreamingEncode`.

    ``model_bits`` / ``estimate_bits``: what :class:`gvc_train.codecs.base.CodingReport` reports."""

    model_bits: float
    estimate_bits: float

    def code(self, latent_BChw: torch.Tensor) -> torch.Tensor:
        """Code one latent frame (``1 x C x h x w``); return the latent the decoder will rebuild."""
        ...

    def end_run(self) -> list[tuple[bytes, int]]:
        """End the current run: its FRAMES payloads in stream order, each with the entropy-coded
        bytes it holds (the report's payload bytes); the coder is then ready for the next run."""
        ...


_WARNED: set[tuple[str, int, int]] = set()


def _warn_once(key: tuple[str, int, int], message: str) -> None:
    """One warning a frame size and process (a controlled codec decodes many clips)."""
    if key not in _WARNED:
        _WARNED.add(key)
        print(f"gvc: warning: {message}", file=sys.stderr)


def plan_within(what: str, width: int, height: int, max_memory: int | None, choose: Any, left: int | None) -> tuple[DecodePlan, Any]:
    """The plan ``choose(left)`` gives under ``max_memory``, ``left`` being what the budget leaves
    (:func:`room_left`), and its estimate (None without a budget: untiled). The smallest plan with
    a warning when none fits the unchosen default; :class:`OverBudget` under a chosen one."""
    if max_memory is None:
        return DecodePlan(), None
    plan, need, fits = choose(left)
    if not fits and isinstance(max_memory, DefaultBudget):
        _warn_once(
            (what, width, height),
            f"{what} {width}x{height} needs ~{describe_bytes(need.total)} more than this process holds "
            f"({plan.describe()}), over the default memory budget of {describe_bytes(max_memory)}: set "
            f"--max-memory (or {ENV_VAR}) to choose one",
        )
    elif not fits:
        raise OverBudget(
            f"{what} {width}x{height} needs ~{describe_bytes(need.total)} more than this process holds "
            f"({plan.describe()}), the memory budget of {describe_bytes(max_memory)} leaves "
            f"{describe_bytes(max(0, left))}: raise --max-memory"
        )
    return plan, need


def tokenizer_device(tokenizer: Any) -> torch.device:
    """Where the tokenizer's weights are (``Codec.use_device``); the CPU for one without any."""
    first = next(iter(tokenizer.parameters()), None) if hasattr(tokenizer, "parameters") else None
    return first.device if first is not None else torch.device("cpu")


def room_left(max_memory: int | None, device: torch.device) -> int | None:
    """What plans may add now: on a CUDA device its free memory, on the CPU what the process
    budget leaves (memory_plan.budget_left); None without a budget."""
    if max_memory is None:
        return None
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free) - SLACK_BYTES
    return budget_left(max_memory)


class FrameEmitter:
    """Latent runs to frames: ``emit`` decodes one run's latent frames, one latent frame at a
    time, through the tokenizer's decoder cache and hands the frames, cropped to ``height x
    width``, to ``on_frame`` as uint8 ``H x W x 3``; nothing when ``on_frame`` is None.

    ``max_memory`` (bytes the whole process may hold; None: no limit) picks the decoder's plan:
    untiled, one frame at a time, strips, strips with their caches in a file
    (models/tokenizer/tiling.py); every plan gives the same pixels. :class:`OverBudget` when
    not even the smallest fits.
    """

    def __init__(
        self,
        tokenizer: Any,
        width: int,
        height: int,
        on_frame: FrameCallback | None,
        max_memory: int | None = None,
        clock: StageClock | None = None,
        beside: Any = None,
        left: int | None = None,
    ) -> None:
        self.tokenizer, self.width, self.height, self.on_frame = tokenizer, width, height, on_frame
        self.device = tokenizer_device(tokenizer)
        self.clock = clock or StageClock()
        self.state = self.decoder = self.plan = self.need = None
        self.emitted = 0
        if on_frame is None:
            return
        if not hasattr(getattr(tokenizer, "decoder", None), "tail_stages"):
            self.state = tokenizer.init_decoder_state()
            return
        latent_hw = latent_size(width, height, tokenizer.spatial_stride)
        self.plan, self.need = plan_within(
            "decoding", width, height, max_memory, lambda room: choose_plan(tokenizer, latent_hw, room, beside),
            left if left is not None else room_left(max_memory, self.device),
        )
        if beside is not None and self.need is not None:
            self.need = self.need.own  # its own memory, without what it was chosen beside
        self.decoder = StripDecoder(tokenizer, latent_hw, self.plan)
        self.clock.plan = self.plan.describe()

    def emit(self, latents: list[torch.Tensor], frames: int) -> None:
        """Decode ``latents`` (each ``1 x C x h x w``) and emit their frames, up to ``frames`` in all."""
        if self.on_frame is None:
            return
        for latent_BChw in latents:
            latent_BChw = latent_BChw.to(self.device)  # the entropy decoder's latents are the CPU's
            with self.clock.stage("tokenizer"):
                if self.decoder is not None:
                    pixels_BCThw = self.decoder.step(latent_BChw.unsqueeze(2))
                else:
                    pixels_BCThw, self.state = self.tokenizer.decode_chunk(latent_BChw.unsqueeze(2), self.state)
            with self.clock.stage("frames out"):  # to uint8, and the caller's sink (file writing)
                frames_THWC = tensor_to_frames(pixels_BCThw[0, :, :, : self.height, : self.width])
                del pixels_BCThw
                count = max(0, min(frames - self.emitted, frames_THWC.shape[0]))
                for t in range(count):
                    self.on_frame(frames_THWC[t])
                self.emitted += count

    def close(self) -> None:
        """Let go of a spilled cache's file now (it is removed whatever happens)."""
        if self.decoder is not None:
            self.decoder.close()


def decode_frames(
    tokenizer: Any,
    z_BCthw: torch.Tensor,
    width: int,
    height: int,
    max_memory: int | None = None,
    frames: int | None = None,
    on_plan: Callable[[str], None] | None = None,
) -> np.ndarray:
    """The latent frames of a new stream (the first coded alone) as uint8 ``T x H x W x 3``,
    cropped to ``height x width`` and cut to ``frames``: ``tokenizer.decode``'s pixels, clamped,
    one latent frame at a time in the plan ``max_memory`` allows (:class:`FrameEmitter`), which
    ``on_plan`` hears described (a coding report's ``stats["plan"]``)."""
    out: list[np.ndarray] = []
    emitter = FrameEmitter(tokenizer, width, height, out.append, max_memory)
    if on_plan is not None and emitter.plan is not None:
        on_plan(emitter.plan.describe())
    try:
        emitter.emit([z_BCthw[:, :, i] for i in range(z_BCthw.shape[2])], frames if frames is not None else 1 << 62)
    finally:
        emitter.close()
    return np.stack(out)


class StreamingEncode:
    """One streaming encode: frames in (:meth:`add_frame`, then :meth:`finish`), FRAMES chunks
    out to ``body`` through ``coder``, one run of ``latents_per_run`` latent frames at a time;
    ``on_recon`` gets the decoder's frames. Counts frames, latent frames, chunks and payload bytes."""

    def __init__(
        self,
        tokenizer: Any,
        width: int,
        height: int,
        latents_per_run: int,
        coder: ChunkCoder,
        body: BinaryIO,
        on_recon: FrameCallback | None,
        max_memory: int | None = None,
    ) -> None:
        self.tokenizer, self.per_run, self.coder, self.body = tokenizer, latents_per_run, coder, body
        self.device = tokenizer_device(tokenizer)
        s = tokenizer.spatial_stride
        self.pad_hw = (-height % s, -width % s)
        self.latent_hw = latent_size(width, height, s)
        # The encoder and the reconstruction's decoder take turns, each keeping its caches while
        # the other runs: the decoder's plan leaves room for the encoder's smallest, then the
        # encoder takes the fastest plan that fits beside the decoder's. The encoder runs in strips
        # of the frame with margins: the same latents as a whole pass (encoder_tiling.py).
        self.encoder = self.plan = None
        tiles = hasattr(getattr(tokenizer, "encoder", None), "head_stages")
        frame_hw = (height + self.pad_hw[0], width + self.pad_hw[1])
        smallest = choose_encode_plan(tokenizer, frame_hw, 0)[1] if tiles and max_memory is not None and on_recon is not None else None
        left = room_left(max_memory, self.device)  # measured once: both plans share it
        self.recon = FrameEmitter(tokenizer, width, height, on_recon, max_memory, beside=smallest, left=left)
        if tiles:
            self.plan, _ = plan_within(
                "encoding", width, height, max_memory, lambda room: choose_encode_plan(tokenizer, frame_hw, room, self.recon.need), left
            )
            self.encoder = StripEncoder(tokenizer, frame_hw, self.plan)
        self.pending: list[torch.Tensor] = []
        self.run_latents: list[torch.Tensor] = []  # the decoder's latents of the current run, for on_recon
        self.tok_state = tokenizer.init_encoder_state()
        self.frames = self.latents = self.in_run = self.chunks = self.payload_bytes = 0

    def add_frame(self, frame_HWC: np.ndarray) -> None:
        """One ``H x W x 3`` uint8 frame (a read-only one is copied by ``frames_to_tensor``)."""
        x = frames_to_tensor(frame_HWC[None])[:, :, 0].to(self.device)  # 1 x 3 x H x W
        if any(self.pad_hw):
            x = F.pad(x, (0, self.pad_hw[1], 0, self.pad_hw[0]), mode="replicate")
        self.pending.append(x)
        self.frames += 1
        # One latent frame at a time: memory holds ``temporal_stride`` frames, whatever the run
        # length, and the latents are the same bits as a whole run's (exact_kernels.py).
        if self.frames == 1 or len(self.pending) == self.tokenizer.temporal_stride:
            self._tokenize()

    def finish(self) -> None:
        """Pad to ``1 + 4k`` frames, code what is left, end the last run; ValueError without frames."""
        if self.frames == 0:
            raise ValueError("the input has no frames")
        if self.pending:
            self.pending += [self.pending[-1]] * (-len(self.pending) % self.tokenizer.temporal_stride)
            self._tokenize()
        if self.in_run:
            self._end_run()
        self.close()

    def close(self) -> None:
        """Let go of spilled caches' files now (they are removed whatever happens)."""
        if self.encoder is not None:
            self.encoder.close()
        self.recon.close()

    def _tokenize(self) -> None:
        x_BCThw = torch.stack(self.pending, dim=2)
        self.pending = []
        if self.encoder is not None:
            posterior = self.encoder.step(x_BCThw)
        else:
            posterior, self.tok_state = self.tokenizer.encode_chunk(x_BCThw, self.tok_state)
        del x_BCThw
        latent_BCthw = posterior.mode().cpu()  # the family's coder runs on the CPU
        for i in range(latent_BCthw.shape[2]):
            recon = self.coder.code(latent_BCthw[:, :, i])
            if self.recon.on_frame is not None:
                self.run_latents.append(recon)
            self.latents += 1
            self.in_run += 1
            if self.in_run == self.per_run:
                self._end_run()

    def _end_run(self) -> None:
        for payload, coded_bytes in self.coder.end_run():
            self.body.write(chunk_bytes(ChunkType.FRAMES, payload))
            self.payload_bytes += coded_bytes
            self.chunks += 1
        self.in_run = 0
        self.recon.emit(self.run_latents, self.frames)
        self.run_latents = []


@contextlib.contextmanager
def stream_body(output: Path, source: str | os.PathLike) -> Iterator[Path]:
    """The temporary file an encoder streams its chunks to before :func:`assemble_stream`: checked
    first (``output`` is never ``source``), a new name beside ``output`` (never a user's file), and
    removed whatever happens."""
    check_target(output, inputs=[source], overwrite=True)
    output.parent.mkdir(parents=True, exist_ok=True)
    body_path = temp_beside(output.with_name(output.name + ".body"))
    try:
        yield body_path
    finally:
        body_path.unlink(missing_ok=True)


def stream_header(stream_id: int, fingerprint: str, width: int, height: int, frames: int, fps: float) -> tuple[bytes, float]:
    """A stream's header bytes and the frame rate it records (30 when the source has none)."""
    fps_num, fps_den = fps_fraction(fps if fps > 0 else 30.0)
    header = StreamHeader(stream_id, fingerprint_prefix(fingerprint), width, height, frames, fps_num, fps_den)
    return header_bytes(header), fps_num / fps_den


def assemble_stream(output: Path, head: bytes, body_path: Path) -> None:
    """``head`` (header + CONFIG), the chunks streamed to ``body_path``, END; renamed into place
    when whole (the temporary is a new name beside ``output``: never a user's file)."""

    def write(out: BinaryIO) -> None:
        out.write(head)
        with open(body_path, "rb") as body:
            shutil.copyfileobj(body, out, 1 << 20)
        out.write(end_marker())

    atomic_write_with(output, write)
