"""The base of the families that stream video through a tokenizer and code its latents.

:class:`TokenizerCodec` holds what such a family does the same way whatever it codes the latents
with: loading its folder, the geometry and memory bound of a run of latent frames (a family's
chunk or group), the whole of ``encode`` (the family gives its ``tokenizer_io.ChunkCoder`` and its
CONFIG), the frame of ``decode`` (the family gives the stream's reading), the checks every such
stream's header and CONFIG must pass, and the tokenizer-alone ceiling. The mechanics are in
``tokenizer_io.py``; the layout pieces in ``stream_layout.py``.
"""

from __future__ import annotations

import abc
import math
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO, ClassVar

import numpy as np
import torch
import torch.nn.functional as F

from gvc_train.codecs.base import Codec, CodingReport, FrameCallback
from gvc_train.codecs.determinism import inference_mode
from gvc_train.codecs.stream_layout import latent_frames_for
from gvc_train.codecs.stage_clock import StageClock
from gvc_train.codecs.tokenizer_io import (
    MAX_CHUNK_PIXELS,
    ChunkCoder,
    StreamingEncode,
    assemble_stream,
    chunk_pixels,
    latent_size,
    stream_body,
    stream_header,
    tokenizer_device,
)
from gvc_train.coding.container import (
    BitstreamError,
    Chunk,
    ChunkType,
    StreamHeader,
    chunk_bytes,
    fingerprint_prefix,
    read_header,
)
from gvc_train.frames import frames_to_tensor, tensor_to_frames
from gvc_train.models.tokenizer.streaming import require_streaming_tokenizer

DEFAULT_LATENTS_PER_RUN = 8
# decode_chunks(header, config, chunks) -> (rate point, payload bytes, chunks read): a family's
# decoding of a stream's FRAMES chunks, given what its _open_stream returned.
ChunksDecoder = Callable[[StreamHeader, Any, Iterator[Chunk]], tuple[int, int, int]]


class TokenizerCodec(Codec):
    """A codec whose folder holds a streaming ``tokenizer`` and whose streams code its latents in
    runs of latent frames (``CONFIG`` then ``FRAMES`` chunks, run by run).

    A family sets ``run_name`` (the word its messages use for a run: "chunk", "group") and
    ``max_latents_per_run``, loads its own components in ``__init__`` after
    :meth:`_load_folder`, and implements :meth:`_chunk_coder` and :meth:`_config_payload` (the
    encoder), :meth:`_open_stream` and its ``decode`` through :meth:`_decode_file` (the decoder).
    """

    run_name: ClassVar[str] = "chunk"
    max_latents_per_run: ClassVar[int] = 64

    tokenizer: Any
    stream_id: int
    spatial: int
    temporal: int
    max_chunk_pixels: int

    def _load_folder(self, folder: str | os.PathLike, deterministic: bool) -> dict[str, Any]:
        """Read ``folder`` (CodecFolderError unless it is this family's and its components fit),
        set the attributes every such codec has, and return the components."""
        modules = super()._load_folder(folder, deterministic)
        self.tokenizer = modules["tokenizer"].eval()
        self.spatial = self.tokenizer.spatial_stride
        self.temporal = self.tokenizer.temporal_stride
        self.max_chunk_pixels = MAX_CHUNK_PIXELS
        self.clock = StageClock()
        return modules

    def _move_to(self, kind: str) -> None:
        """The tokenizer (most of the work) runs on ``kind``, in float32; the streams' entropy
        coding and what sets its probabilities stay on the CPU (tokenizer_io moves the tensors)."""
        self.tokenizer.to(kind)

    @classmethod
    def check_components(cls, modules: dict[str, Any], where: str) -> None:
        """The tokenizer must stream (the encoder and decoder go run by run); a family checks its
        own components after this."""
        require_streaming_tokenizer(modules["tokenizer"], where)

    # ---- geometry and memory -------------------------------------------------------------------

    def chunk_pixels(self, width: int, height: int, latents_per_run: int) -> int:
        """Padded pixels the tokenizer decodes at once for one run of this geometry."""
        return chunk_pixels(width, height, latents_per_run, self.spatial, self.temporal)

    def fitting_latents_per_chunk(self, width: int, height: int) -> int:
        """The largest run length up to the default (8) whose pixels fit ``max_chunk_pixels``;
        ValueError naming the limit when not even one latent frame a run fits."""
        for n in range(DEFAULT_LATENTS_PER_RUN, 0, -1):
            if self.chunk_pixels(width, height, n) <= self.max_chunk_pixels:
                return n
        side = int(math.sqrt(self.max_chunk_pixels / self.temporal * 16 / 9) // 16 * 16)
        raise ValueError(
            f"{width}x{height} frames are over this codec's {self.max_chunk_pixels}-pixel chunk limit even at one latent "
            f"frame ({self.temporal} video frames) a {self.run_name}; scale the video down (largest ~{side}x{side * 9 // 16} at this aspect)"
        )

    def _run_length(self, width: int, height: int, requested: int | None) -> int:
        """The latent frames a run for ``requested`` (None: the largest that fits); ValueError
        over the memory bound."""
        if requested is None:
            return self.fitting_latents_per_chunk(width, height)
        if self.chunk_pixels(width, height, requested) > self.max_chunk_pixels:
            fits = self.fitting_latents_per_chunk(width, height)
            raise ValueError(
                f"{width}x{height} at {requested} latents per chunk is over the "
                f"{self.max_chunk_pixels}-pixel chunk limit: use --latents-per-chunk {fits} (or leave it out)"
            )
        return requested

    @torch.no_grad()
    def ceiling(self, frames_THWC: np.ndarray) -> np.ndarray:
        """The tokenizer alone (latents unquantized): the ceiling of this codec's reconstructions.
        Frames are padded as the encoder pads them (edge pixels to a multiple of the spatial
        stride, the last frame repeated to 1 + 4k) and cropped back."""
        s, t = self.spatial, self.temporal
        x = frames_to_tensor(frames_THWC).to(tokenizer_device(self.tokenizer))
        x = F.pad(x, (0, -x.shape[4] % s, 0, -x.shape[3] % s, 0, -(x.shape[2] - 1) % t), mode="replicate")
        with inference_mode(self.deterministic):
            z = self.tokenizer.encode(x, chunk_frames=DEFAULT_LATENTS_PER_RUN * t).mode()
            recon = self.tokenizer.decode(z, chunk_latents=DEFAULT_LATENTS_PER_RUN).clamp(0, 1)
        height, width = frames_THWC.shape[1:3]
        return tensor_to_frames(recon[0, :, : len(frames_THWC), :height, :width])

    # ---- encoding -----------------------------------------------------------------------------

    def _check_encode(self, rate_point: int, latents_per_chunk: int | None) -> None:
        """ValueError unless an encode can run with these (a family adds its own settings' checks)."""
        if not (isinstance(rate_point, int) and 0 <= rate_point < self.num_rate_points):
            raise ValueError(f"quality must be an integer in 0..{self.num_rate_points - 1}, got {rate_point!r}")
        if latents_per_chunk is not None and not 1 <= latents_per_chunk <= self.max_latents_per_run:
            raise ValueError(f"latents_per_chunk must be in 1..{self.max_latents_per_run}, got {latents_per_chunk}")

    @abc.abstractmethod
    def _chunk_coder(self, rate_point: int, latent_hw: tuple[int, int]) -> ChunkCoder:
        """The family's coder for one encode at ``rate_point`` of latent frames ``latent_hw``."""

    @abc.abstractmethod
    def _config_payload(self, rate_point: int, latents_per_run: int, latent_frames: int, latent_hw: tuple[int, int]) -> bytes:
        """The encoded stream's CONFIG payload."""

    def encode(
        self,
        source: str | os.PathLike,
        output: str | os.PathLike,
        rate_point: int,
        *,
        max_frames: int | None = None,
        on_recon: FrameCallback | None = None,
        latents_per_chunk: int | None = None,
        **options: Any,
    ) -> CodingReport:
        """Code ``source`` (a video file or PNG folder) into ``output``.

        ``latents_per_chunk``: latent frames a run (None picks the largest up to 8 that fits the
        frame size: :meth:`fitting_latents_per_chunk`). ``on_recon`` receives the decoder's
        reconstruction, frame by frame (uint8 H x W x 3), exactly what ``decode`` will produce.
        The file appears only when complete; ``output`` must not be ``source`` (see
        ``gvc_train.safe_output``).
        """
        from gvc_train.data.video_io import VideoReader  # here: decoding reads no video file

        if options:
            raise ValueError(f"the {self.family} codec takes no option {sorted(options)}")
        self._check_encode(rate_point, latents_per_chunk)
        output = Path(output)
        started = time.perf_counter()
        with stream_body(output, source) as body_path:
            with VideoReader(source) as reader, open(body_path, "wb") as body, inference_mode(self.deterministic):
                info = reader.info
                per_run = self._run_length(info.width, info.height, latents_per_chunk)
                coder = self._chunk_coder(rate_point, latent_size(info.width, info.height, self.spatial))
                run = StreamingEncode(self.tokenizer, info.width, info.height, per_run, coder, body, on_recon, self.max_memory)
                for frame in reader.frames(max_frames):
                    run.add_frame(frame)
                run.finish()
            header, fps = stream_header(self.stream_id, self.fingerprint, info.width, info.height, run.frames, info.fps)
            config = self._config_payload(rate_point, per_run, run.latents, run.latent_hw)
            assemble_stream(output, header + chunk_bytes(ChunkType.CONFIG, config), body_path)
        return CodingReport(
            str(output), run.frames, info.width, info.height, fps, rate_point,
            output.stat().st_size, run.payload_bytes, run.chunks, time.perf_counter() - started, coder.model_bits, coder.estimate_bits,
            stats={"plan": run.plan.describe() if run.plan is not None else None, "recon_plan": run.recon.plan.describe() if run.recon.plan is not None else None},
        )  # fmt: skip

    # ---- decoding -----------------------------------------------------------------------------

    @abc.abstractmethod
    def _open_stream(self, f: BinaryIO) -> tuple[StreamHeader, Any, Iterator[Chunk]]:
        """The stream's header and CONFIG, checked against this codec (:meth:`_read_header`,
        :meth:`_check_latent_geometry`, :meth:`_check_chunk_pixels` and the family's own), and
        its FRAMES chunks to come, each under a bound on its length."""

    def _decode_file(self, stream: str | os.PathLike, decode_chunks: ChunksDecoder) -> CodingReport:
        """Open ``stream`` (BitstreamError if there is none) and :meth:`_open_stream` it, then
        ``decode_chunks(header, config, chunks) -> (rate point, payload bytes, chunks)`` in
        inference mode; the decode's report."""
        started = time.perf_counter()
        path = Path(stream)
        if not path.is_file():
            raise BitstreamError(f"no bitstream at {path}")
        self.clock = StageClock()  # the family's decode_chunks times its stages on it
        with open(path, "rb") as f, inference_mode(self.deterministic):
            header, config, chunks = self._open_stream(f)
            rate_point, payload_bytes, count = decode_chunks(header, config, chunks)
        return CodingReport(
            str(path), header.frames, header.width, header.height, header.fps, rate_point,
            path.stat().st_size, payload_bytes, count, time.perf_counter() - started,
            stats={"stage_seconds": self.clock.as_dict(), "plan": self.clock.plan},
        )  # fmt: skip

    def _read_header(self, f: BinaryIO) -> StreamHeader:
        """The stream's header; BitstreamError unless it is this codec's (fingerprint) and family's."""
        header = read_header(f, expected_fingerprint=fingerprint_prefix(self.fingerprint))
        if header.family != self.stream_id:
            raise BitstreamError(f"a stream of codec family {header.family}, not of the {self.family} family ({self.stream_id})")
        return header

    def _latent_hw(self, header: StreamHeader) -> tuple[int, int]:
        return latent_size(header.width, header.height, self.spatial)

    def _check_latent_geometry(self, header: StreamHeader, latent_frames: int, latent_hw: tuple[int, int]) -> None:
        """BitstreamError unless CONFIG's latent count and size are the header's (a stream whose
        header was rewritten with a valid CRC is still refused before decoding)."""
        if (latent_frames, *latent_hw) != (latent_frames_for(header.frames, self.temporal), *self._latent_hw(header)):
            raise BitstreamError("CONFIG chunk does not match the header's size and frame count")

    def _check_chunk_pixels(self, header: StreamHeader, latents_per_run: int) -> None:
        """BitstreamError when a run of this stream is over this decoder's memory bound."""
        if self.chunk_pixels(header.width, header.height, latents_per_run) > self.max_chunk_pixels:
            raise BitstreamError(
                f"{header.width}x{header.height} at {latents_per_run} latents per {self.run_name} is over this "
                f"decoder's {self.max_chunk_pixels}-pixel chunk limit ({type(self).__name__}.max_chunk_pixels)"
            )
