"""The latent codec (GLVC family) at inference: a video file to a bitstream file and back.

Encoding streams: frames are read one at a time, the tokenizer encodes the first frame alone
and then ``4 x latents_per_chunk`` frames at a time through its causal cache, the latent codec
codes each latent frame into a shared rANS stream, and every ``latents_per_chunk`` latent frames
become one FRAMES chunk. Memory is bounded by one chunk of frames, whatever the video's length.

Geometry: frames are padded to a multiple of the tokenizer's spatial stride (8) by repeating
the last row and column, and cropped back after decoding; a frame count that is not ``1 + 4k``
is padded by repeating the last frame, and the decoder emits exactly the header's count.

Stream (inside the container of ``coding/container.py``, family LATENT)::

    CONFIG   varints: stream version, quality, latents per chunk, latent frames, latent h, latent w
    FRAMES   one per chunk of latent frames: model check (4 bytes), then compressai rANS, per
             latent frame z then y symbols
    END

The CONFIG fields the header also implies (latent count and size) are checked against it, so a
stream whose header was rewritten with a valid CRC is still refused before decoding.

**Across machines.** The decoder recomputes the entropy parameters in fixed point
(``models/fixed_point.py``), so the scale indexes, the means and the reconstructed latents are
the same integers on every CPU kind, thread count and device. The model check is a CRC32 of the
chunk's y scale indexes and reconstructed latents as the encoder computed them
(``fixed_point.ModelCheck``): a decoder that computes anything else (another build of the
model, an altered decoder, a stream made for other weights or rewritten consistently) stops
with a BitstreamError at that chunk instead of decoding garbage. The pixels are the tokenizer
decoder's float arithmetic on those latents: bounded, not bit-exact, across CPU kinds.
"""

from __future__ import annotations

import math
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch
import torch.nn.functional as F

from gvc_train.coding.container import (
    BitstreamError,
    Chunk,
    ChunkType,
    StreamHeader,
    chunk_bytes,
    end_marker,
    fingerprint_prefix,
    fps_fraction,
    header_bytes,
    iter_chunks,
    read_header,
)
from gvc_train.coding.rans import SymbolDecoder, SymbolEncoder
from gvc_train.codecs.latent_stream import STREAM_VERSION, StreamConfig, describe_chunks, latent_frames_for, video_frames_of_chunk  # noqa: F401 (re-exported)
from gvc_train.codecs.base import Codec, CodingReport, FrameCallback
from gvc_train.codecs.codec_folder import CodecFolderError, load_codec_components
from gvc_train.codecs.determinism import inference_mode
from gvc_train.data.video_io import VideoReader
from gvc_train.frames import frames_to_tensor, tensor_to_frames
from gvc_train.models.tokenizer.streaming import require_streaming_tokenizer
from gvc_train.models.fixed_point import FixedPointError, FrameObserver, ModelCheck
from gvc_train.safe_output import atomic_write_with, check_target, temp_beside

DEFAULT_LATENTS_PER_CHUNK = 8
MAX_LATENTS_PER_CHUNK = 64
# Pixels the tokenizer codes at once (the frames of one chunk x the padded frame size), and so
# memory: ~360 bytes a pixel for the tiny recipe's tokenizer (bench_codec_memory). The bound is
# 960x544 at the default 8 latents per chunk, 1080p at 2 (~6 GB with that tokenizer). A stream
# over it is refused before anything is allocated (a forged 16384x16384 header and CONFIG asked
# for tens of GB) and the encoder refuses to write one. Raise ``LatentCodec.max_chunk_pixels``
# to code larger frames or chunks where the memory is there.
MAX_CHUNK_PIXELS = 1920 * 1088 * 4 * 2
MODEL_CHECK_BYTES = 4  # CRC32 of the chunk's scale indexes and latents (fixed_point.ModelCheck)


class LatentCodec(Codec):
    """An exported latent codec folder, ready to encode and decode.

    ``deterministic`` (the default) runs the networks on one intra-op thread so that decoding
    is bit-exact whatever the thread settings (see ``codecs/determinism.py``).
    """

    family = "latent"
    report_notes = ("latent codecs have no intra refresh: they code each video as one GOP whatever --intra-period says",)

    def __init__(self, folder: str | os.PathLike, deterministic: bool = True) -> None:
        meta, modules = load_codec_components(folder)
        if meta["family"] != self.family:
            raise CodecFolderError(f"{folder} holds a {meta['family']!r} codec, not a {self.family} one")
        self.folder = Path(folder)
        self.meta = meta
        try:
            self.check_components(modules, str(folder))
        except ValueError as e:
            raise CodecFolderError(str(e)) from None
        self.tokenizer = modules["tokenizer"].eval()
        self.codec = modules["latent_codec"].eval()
        self.stream_id = self.entry().stream_id
        try:
            self.tables = self.codec.cdf_tables()
            self.net = self.codec.fixed_point()
        except (ValueError, FixedPointError) as e:
            raise CodecFolderError(f"{folder}: {e}") from None
        self.deterministic = deterministic
        self.fingerprint = meta["fingerprint"]
        self.spatial = self.tokenizer.spatial_stride
        self.temporal = self.tokenizer.temporal_stride
        self.max_chunk_pixels = MAX_CHUNK_PIXELS

    @property
    def num_qualities(self) -> int:
        return self.codec.num_qualities

    @property
    def num_rate_points(self) -> int:
        return self.codec.num_qualities

    @classmethod
    def check_components(cls, modules: dict[str, Any], where: str) -> None:
        tokenizer, codec = modules["tokenizer"], modules["latent_codec"]
        require_streaming_tokenizer(tokenizer, where)  # the encoder and decoder stream chunk by chunk
        if codec.latent_channels != tokenizer.latent_channels:
            raise ValueError(f"{where}: latent codec takes {codec.latent_channels} channels, tokenizer makes {tokenizer.latent_channels}")

    @classmethod
    def export_extras(cls, modules: dict[str, Any]) -> dict[str, Any]:
        return {
            "quality_direction": "a higher quality index gives more bits and a better reconstruction",
            "entropy_coder": "compressai rANS, one stream per chunk; CDF tables from update() in the safetensors",
            "qualities": modules["latent_codec"].num_qualities,
        }

    def chunk_pixels(self, width: int, height: int, latents_per_chunk: int) -> int:
        """Padded pixels the tokenizer decodes at once for one chunk of this geometry."""
        s = self.spatial
        return math.ceil(width / s) * s * math.ceil(height / s) * s * self.temporal * latents_per_chunk

    def fitting_latents_per_chunk(self, width: int, height: int) -> int:
        """The largest chunk length up to the default (8) whose pixels fit ``max_chunk_pixels``;
        ValueError naming the limit when not even one latent frame a chunk fits."""
        for n in range(DEFAULT_LATENTS_PER_CHUNK, 0, -1):
            if self.chunk_pixels(width, height, n) <= self.max_chunk_pixels:
                return n
        raise ValueError(
            f"{width}x{height} frames are over this codec's {self.max_chunk_pixels}-pixel chunk limit even at one latent "
            f"frame ({self.temporal} video frames) a chunk; scale the video down (largest ~{self._largest_frame()} at this aspect)"
        )

    @torch.no_grad()
    def ceiling(self, frames_THWC: np.ndarray) -> np.ndarray:
        """The tokenizer alone (latents unquantized): the ceiling of this codec's reconstructions.
        Frames are padded as the encoder pads them (edge pixels to a multiple of the spatial
        stride, the last frame repeated to 1 + 4k) and cropped back."""
        s, t = self.spatial, self.temporal
        x = frames_to_tensor(frames_THWC)
        x = F.pad(x, (0, -x.shape[4] % s, 0, -x.shape[3] % s, 0, -(x.shape[2] - 1) % t), mode="replicate")
        with inference_mode(self.deterministic):
            z = self.tokenizer.encode(x, chunk_frames=DEFAULT_LATENTS_PER_CHUNK * t).mode()
            recon = self.tokenizer.decode(z, chunk_latents=DEFAULT_LATENTS_PER_CHUNK).clamp(0, 1)
        height, width = frames_THWC.shape[1:3]
        return tensor_to_frames(recon[0, :, : len(frames_THWC), :height, :width])

    def _largest_frame(self) -> str:
        side = int(math.sqrt(self.max_chunk_pixels / self.temporal * 16 / 9) // 16 * 16)
        return f"{side}x{side * 9 // 16}"

    # ---- encoding -----------------------------------------------------------------------------

    def encode(
        self,
        source: str | os.PathLike,
        output: str | os.PathLike,
        quality: int,
        max_frames: int | None = None,
        latents_per_chunk: int | None = None,
        on_recon: FrameCallback | None = None,
        **options: Any,
    ) -> CodingReport:
        """Code ``source`` (a video file or PNG folder) into ``output``.

        ``latents_per_chunk``: None picks the largest up to 8 that fits the frame size
        (:meth:`fitting_latents_per_chunk`). ``on_recon`` receives the decoder's reconstruction,
        frame by frame (uint8 H x W x 3), exactly what ``decode`` will produce. The file appears
        only when complete; ``output`` must not be ``source`` (see ``gvc_train.safe_output``).
        """
        if options:
            raise ValueError(f"the {self.family} codec takes no option {sorted(options)}")
        if not (isinstance(quality, int) and 0 <= quality < self.num_qualities):
            raise ValueError(f"quality must be an integer in 0..{self.num_qualities - 1}, got {quality!r}")
        if latents_per_chunk is not None and not 1 <= latents_per_chunk <= MAX_LATENTS_PER_CHUNK:
            raise ValueError(f"latents_per_chunk must be in 1..{MAX_LATENTS_PER_CHUNK}, got {latents_per_chunk}")
        output = Path(output)
        check_target(output, inputs=[source], overwrite=True)
        output.parent.mkdir(parents=True, exist_ok=True)
        body_path = temp_beside(output.with_name(output.name + ".body"))  # a new name: never a user's file
        started = time.perf_counter()
        try:
            with VideoReader(source) as reader, open(body_path, "wb") as body, inference_mode(self.deterministic):
                info = reader.info
                if latents_per_chunk is None:
                    latents_per_chunk = self.fitting_latents_per_chunk(info.width, info.height)
                elif self.chunk_pixels(info.width, info.height, latents_per_chunk) > self.max_chunk_pixels:
                    fits = self.fitting_latents_per_chunk(info.width, info.height)
                    raise ValueError(
                        f"{info.width}x{info.height} at {latents_per_chunk} latents per chunk is over the "
                        f"{self.max_chunk_pixels}-pixel chunk limit: use --latents-per-chunk {fits} (or leave it out)"
                    )
                run = _EncodeRun(self, quality, latents_per_chunk, info.width, info.height, body, on_recon)
                for frame in reader.frames(max_frames):
                    run.add_frame(frame)
                run.finish()
            fps_num, fps_den = fps_fraction(info.fps if info.fps > 0 else 30.0)
            header = StreamHeader(self.stream_id, fingerprint_prefix(self.fingerprint), info.width, info.height, run.frames, fps_num, fps_den)
            config = StreamConfig(quality, latents_per_chunk, run.latents, *run.latent_hw)
            _assemble(output, header_bytes(header) + chunk_bytes(ChunkType.CONFIG, config.payload()), body_path)
        finally:
            body_path.unlink(missing_ok=True)
        return CodingReport(
            str(output), run.frames, info.width, info.height, fps_num / fps_den, quality,
            output.stat().st_size, run.payload_bytes, run.chunks, time.perf_counter() - started, run.model_bits, run.estimate_bits,
        )  # fmt: skip

    # ---- decoding -----------------------------------------------------------------------------

    def decode(
        self, bitstream: str | os.PathLike, on_frame: FrameCallback | None, on_latent: FrameObserver | None = None
    ) -> CodingReport:
        """Decode ``bitstream`` and hand every frame to ``on_frame``; BitstreamError on bad input.

        ``on_latent`` sees each latent frame as entropy-decoded, ``(y symbols, y scale indexes,
        latent)``, all integers (the latent at ``2^-fixed_point.FRAC_BITS``): the same on every
        machine. ``on_frame=None`` skips the tokenizer (latents only).
        """
        started = time.perf_counter()
        path = Path(bitstream)
        if not path.is_file():
            raise BitstreamError(f"no bitstream at {path}")
        with open(path, "rb") as f, inference_mode(self.deterministic):
            header, config, chunks = self._open_stream(f)
            payload_bytes = self._decode_chunks(header, config, chunks, on_frame, on_latent)
        return CodingReport(
            str(path), header.frames, header.width, header.height, header.fps, config.quality,
            path.stat().st_size, payload_bytes, config.num_chunks(), time.perf_counter() - started,
        )  # fmt: skip

    def _open_stream(self, f: BinaryIO) -> tuple[StreamHeader, StreamConfig, Iterator[Chunk]]:
        header = read_header(f, expected_fingerprint=fingerprint_prefix(self.fingerprint))
        if header.family != self.stream_id:
            raise BitstreamError(f"a stream of codec family {header.family}, not of the {self.family} family ({self.stream_id})")
        # A chunk holds at most MAX_LATENTS_PER_CHUNK latent frames at (far less than) 8 bytes a
        # symbol: a damaged length above that is refused before it is read.
        max_chunk = 64 * 1024 + 8 * self._symbols_per_latent(header) * MAX_LATENTS_PER_CHUNK
        chunks = iter_chunks(f, offset=f.tell(), max_chunk_bytes=max_chunk)
        first = next(chunks, None)
        if first is None or first.type != ChunkType.CONFIG:
            raise BitstreamError("stream does not start with a CONFIG chunk")
        config = StreamConfig.parse(first.payload)
        expected = (
            latent_frames_for(header.frames, self.temporal),
            math.ceil(header.height / self.spatial),
            math.ceil(header.width / self.spatial),
        )
        if (config.latent_frames, config.latent_height, config.latent_width) != expected:
            raise BitstreamError("CONFIG chunk does not match the header's size and frame count")
        if not 0 <= config.quality < self.num_qualities:
            raise BitstreamError(f"quality {config.quality} is outside this codec's 0..{self.num_qualities - 1}")
        if not 1 <= config.latents_per_chunk <= MAX_LATENTS_PER_CHUNK:
            raise BitstreamError(f"latents per chunk {config.latents_per_chunk} is out of bounds")
        if self.chunk_pixels(header.width, header.height, config.latents_per_chunk) > self.max_chunk_pixels:
            raise BitstreamError(
                f"{header.width}x{header.height} at {config.latents_per_chunk} latents per chunk is over this "
                f"decoder's {self.max_chunk_pixels}-pixel chunk limit (LatentCodec.max_chunk_pixels)"
            )
        return header, config, chunks

    def _symbols_per_latent(self, header: StreamHeader) -> int:
        return self.codec.symbols_per_frame(math.ceil(header.height / self.spatial), math.ceil(header.width / self.spatial))

    def _decode_chunks(
        self, header: StreamHeader, config: StreamConfig, chunks: Iterator[Chunk], on_frame: FrameCallback | None, on_latent: FrameObserver | None
    ) -> int:
        size_hw = (config.latent_height, config.latent_width)
        per_latent = self.codec.symbols_per_frame(*size_hw)
        codec_state, pixel_state = self.net.init_state(), self.tokenizer.init_decoder_state()
        check = ModelCheck()

        def observe(symbols: torch.Tensor, indexes: torch.Tensor, latent: torch.Tensor) -> None:
            check(symbols, indexes, latent)
            if on_latent is not None:
                on_latent(symbols, indexes, latent)

        emitted = payload_bytes = 0
        for index in range(config.num_chunks()):
            chunk = next(chunks, None)
            if chunk is None:
                raise BitstreamError(f"stream ends after {index} of {config.num_chunks()} frame chunks")
            if chunk.type != ChunkType.FRAMES:
                raise BitstreamError(f"chunk at byte {chunk.offset} is {chunk.type.name}, expected FRAMES")
            if len(chunk.payload) < MODEL_CHECK_BYTES:
                raise BitstreamError(f"FRAMES chunk at byte {chunk.offset} is shorter than its model check")
            expected_check = int.from_bytes(chunk.payload[:MODEL_CHECK_BYTES], "big")
            rans = chunk.payload[MODEL_CHECK_BYTES:]
            payload_bytes += len(rans)
            count = min(config.latents_per_chunk, config.latent_frames - index * config.latents_per_chunk)
            decoder = SymbolDecoder(rans, count * per_latent)
            latents = []
            for _ in range(count):
                latent, codec_state = self.codec.decompress_frame(
                    codec_state, config.quality, size_hw, decoder, self.tables, self.net, observe
                )
                latents.append(latent)
            if check.take() != expected_check:
                raise BitstreamError(
                    f"FRAMES chunk {index + 1}: this decoder's probability model differs from the encoder's (its scale "
                    "indexes or latents fail the stream's model check: another build of this codec, or a rewritten stream)"
                )
            if on_frame is None:
                continue
            pixels, pixel_state = self.tokenizer.decode_chunk(torch.stack(latents, dim=2), pixel_state)
            emitted += _emit(pixels, header.height, header.width, header.frames - emitted, on_frame)
        if next(chunks, None) is not None:
            raise BitstreamError(f"more chunks than the {config.num_chunks()} the stream announces")
        return payload_bytes


class _EncodeRun:
    """The state of one streaming encode: pending frames, coder states, counters."""

    def __init__(
        self, owner: LatentCodec, quality: int, latents_per_chunk: int, width: int, height: int, body: BinaryIO, on_recon: FrameCallback | None
    ) -> None:
        self.o, self.quality, self.per_chunk = owner, quality, latents_per_chunk
        self.width, self.height, self.body, self.on_recon = width, height, body, on_recon
        s = owner.spatial
        self.pad_hw = (-height % s, -width % s)
        self.latent_hw = (math.ceil(height / s), math.ceil(width / s))
        self.pending: list[torch.Tensor] = []
        self.tok_state = owner.tokenizer.init_encoder_state()
        self.pix_state = owner.tokenizer.init_decoder_state()
        self.codec_state = owner.net.init_state()
        self.coder = SymbolEncoder()
        self.check = ModelCheck()
        self.in_chunk = self.frames = self.latents = self.chunks = self.payload_bytes = self.emitted = 0
        self.model_bits = self.estimate_bits = 0.0
        self.recon_latents: list[torch.Tensor] = []

    def add_frame(self, frame_HWC: np.ndarray) -> None:
        # a read-only frame (PNG via PIL) is copied: torch warns on stderr about non-writable arrays
        x = frames_to_tensor(frame_HWC[None])[:, :, 0]  # 1 x 3 x H x W
        if any(self.pad_hw):
            x = F.pad(x, (0, self.pad_hw[1], 0, self.pad_hw[0]), mode="replicate")
        self.pending.append(x)
        self.frames += 1
        if self.frames == 1 or len(self.pending) == self.o.temporal * self.per_chunk:
            self._tokenize()

    def finish(self) -> None:
        if self.frames == 0:
            raise ValueError("the input has no frames")
        if self.pending:
            self.pending += [self.pending[-1]] * (-len(self.pending) % self.o.temporal)
            self._tokenize()
        if self.in_chunk:
            self._flush()

    def _tokenize(self) -> None:
        x_BCThw = torch.stack(self.pending, dim=2)
        self.pending = []
        posterior, self.tok_state = self.o.tokenizer.encode_chunk(x_BCThw, self.tok_state)
        latent_BCthw = posterior.mode()
        for i in range(latent_BCthw.shape[2]):
            recon, self.codec_state, bits = self.o.codec.compress_frame(
                latent_BCthw[:, :, i], self.codec_state, self.quality, self.coder, self.o.tables, self.o.net, self.check
            )
            self.model_bits += bits[0]
            self.estimate_bits += bits[1]
            self.latents += 1
            self.in_chunk += 1
            if self.on_recon is not None:
                self.recon_latents.append(recon)
            if self.in_chunk == self.per_chunk:
                self._flush()

    def _flush(self) -> None:
        payload = self.coder.flush()
        self.body.write(chunk_bytes(ChunkType.FRAMES, self.check.take().to_bytes(MODEL_CHECK_BYTES, "big") + payload))
        self.payload_bytes += len(payload)
        self.chunks += 1
        self.in_chunk = 0
        self._emit_recon()

    def _emit_recon(self) -> None:
        # Pixels are decoded one chunk's latents at a time, as the decoder does: the same
        # calls on the same tensors, so the same floats (other groupings agree only to ~1e-6).
        if self.on_recon is None or not self.recon_latents:
            return
        pixels, self.pix_state = self.o.tokenizer.decode_chunk(torch.stack(self.recon_latents, dim=2), self.pix_state)
        self.recon_latents = []
        self.emitted += _emit(pixels, self.height, self.width, self.frames - self.emitted, self.on_recon)


def _emit(pixels_BCThw: torch.Tensor, height: int, width: int, limit: int | None, on_frame: FrameCallback) -> int:
    """Hand frames (cropped to ``height x width``, at most ``limit``) to ``on_frame`` as uint8."""
    frames_THWC = tensor_to_frames(pixels_BCThw[0, :, :, :height, :width])
    count = frames_THWC.shape[0] if limit is None else max(0, min(limit, frames_THWC.shape[0]))
    for t in range(count):
        on_frame(frames_THWC[t])
    return count


def _assemble(output: Path, head: bytes, body_path: Path) -> None:
    """Header + CONFIG, the chunks streamed to ``body_path``, END; renamed into place when whole
    (the temporary is a new name beside ``output``: never a user's file)."""

    def write(out: BinaryIO) -> None:
        out.write(head)
        with open(body_path, "rb") as body:
            shutil.copyfileobj(body, out, 1 << 20)
        out.write(end_marker())

    atomic_write_with(output, write)
