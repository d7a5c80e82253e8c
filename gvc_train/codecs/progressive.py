"""The progressive token codec (ProGVC family) at inference: a video file to a bitstream file that
can be cut after any scale, and back.

Encoding streams as the latent family does: frames are read one at a time, the tokenizer encodes
the first frame alone and then ``4 x G`` frames at a time through its causal cache (G: latent
frames per group, ``latents_per_chunk``). Each latent frame becomes the quantizer's token
pyramid (scales 1..K, coarse to fine); the context model gives every scale's probabilities
through its cached path, and scale k of the group's frames is coded into the group's k-th
FRAMES chunk (``progressive_scales.py``, ``coding/categorical.py``). A rate point r keeps scales
``1..r + 1``. Memory is bounded by one group of frames, whatever the video's length.

Geometry: frames are padded to a multiple of the tokenizer's spatial stride (8) by repeating the
last row and column and cropped back after decoding; a frame count that is not ``1 + 4k`` is
padded by repeating the last frame, and the decoder emits exactly the header's count.

Stream: ``progressive_stream.py`` (CONFIG, then one FRAMES chunk per group and scale,
group-major). ``gvc truncate`` cuts it after any scale without a model
(:meth:`ProgressiveCodec.truncate`); the decoder predicts the scales a stream does not carry
(:attr:`ProgressiveCodec.fill`).

**Exactness.** The decoder recomputes the probabilities exactly as the encoder did (same
inputs, shapes and order, one intra-op thread: ``codecs/determinism.py``) and quantizes them to
integers (``token_probs.quantize_probs``), so decoding is bit-exact whatever the caller's
thread count on one machine. The networks run in float32 (MKL), whose rounding may differ on
another CPU kind: a stream decoded there may fail a chunk's model check (a CRC32 of the tokens
as the encoder coded them, per group and scale) and stops with a BitstreamError at that chunk
rather than decode garbage. A fixed-point port of the context model's cached path (as the
latent family has for its entropy parameters) would make it exact across CPUs.
"""

from __future__ import annotations

import math
import os
import shutil
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch
import torch.nn.functional as F

from gvc_train.codecs.base import Codec, CodingReport, FrameCallback
from gvc_train.codecs.codec_folder import CodecFolderError, load_codec_components
from gvc_train.codecs.determinism import inference_mode
from gvc_train.codecs.progressive_scales import FILL_MODES, ScalePyramid
from gvc_train.codecs.progressive_stream import (
    MAX_LATENTS_PER_GROUP,
    ScaleChunk,
    StreamConfig,
    frames_payload,
    latent_frames_for,
    read_config,
    read_groups,
    truncate_stream,
)
from gvc_train.coding.categorical import CategoricalDecoder, CategoricalEncoder
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
from gvc_train.data.video_io import VideoReader
from gvc_train.frames import frames_to_tensor, tensor_to_frames
from gvc_train.models.progressive import token_probs
from gvc_train.models.tokenizer.streaming import require_streaming_tokenizer
from gvc_train.safe_output import atomic_write_with, check_target, temp_beside

DEFAULT_LATENTS_PER_GROUP = 8
# Pixels the tokenizer decodes at once (a group's frames x the padded frame size), as the latent
# family bounds its chunks: a forged header asking for more is refused before any allocation.
MAX_CHUNK_PIXELS = 1920 * 1088 * 4 * 2
# How a cut stream's missing scales are predicted. Measured (issue 13) on carphone, 17 frames,
# latent_tiny's tokenizer with a 7-scale codebook quantizer (V = 256) and a 2-block context model
# trained a few minutes on bikes: the expected code vectors beat the most probable tokens at
# every cut (+1.4, +1.9, +1.3, +0.8, +0.4, +0.1 dB PSNR with 1..6 of 7 scales kept); with a
# bitwise quantizer, at the coarse cuts (+0.5, +0.3, +0.1 dB with 1..3 kept; within 0.06 dB
# after). Argmax commits to a token the model is unsure of; the expectation shrinks towards the mean.
DEFAULT_FILL = "expectation"


class ProgressiveCodec(Codec):
    """An exported progressive codec folder (tokenizer, quantizer, context model).

    ``fill`` (an attribute, default :data:`DEFAULT_FILL`): how the decoder predicts the scales a
    stream does not carry, one of ``progressive_scales.FILL_MODES``; the encoder's ``on_recon``
    uses the same, so set it before both.
    """

    family = "progressive"
    report_notes = ("progressive codecs have no intra refresh: they code each video as one GOP whatever --intra-period says",)

    def __init__(self, folder: str | os.PathLike, deterministic: bool = True) -> None:
        meta, modules = load_codec_components(folder)
        if meta["family"] != self.family:
            raise CodecFolderError(f"{folder} holds a {meta['family']!r} codec, not a {self.family} one")
        try:
            self.check_components(modules, str(folder))
        except ValueError as e:
            raise CodecFolderError(str(e)) from None
        self.folder, self.meta, self.deterministic = Path(folder), meta, deterministic
        self.fingerprint = meta["fingerprint"]
        self.tokenizer = modules["tokenizer"].eval()
        self.quantizer = modules["quantizer"].eval()
        self.context_model = modules["context_model"].eval()
        self.stream_id = self.entry().stream_id
        self.spatial = self.tokenizer.spatial_stride
        self.temporal = self.tokenizer.temporal_stride
        self.max_chunk_pixels = MAX_CHUNK_PIXELS
        self.fill = DEFAULT_FILL

    @property
    def num_scales(self) -> int:
        return self.context_model.num_scales

    @property
    def num_rate_points(self) -> int:
        return self.num_scales  # rate point r: scales 1..r + 1

    # ---- the folder ---------------------------------------------------------------------------

    @classmethod
    def check_components(cls, modules: dict[str, Any], where: str) -> None:
        tokenizer, quantizer, model = modules["tokenizer"], modules["quantizer"], modules["context_model"]
        require_streaming_tokenizer(tokenizer, where)
        if quantizer.latent_channels != tokenizer.latent_channels:
            raise ValueError(f"{where}: the quantizer takes {quantizer.latent_channels} latent channels, the tokenizer makes {tokenizer.latent_channels}")
        pairs = [("code_dim", quantizer.code_dim, model.code_dim), ("num_scales", quantizer.num_scales, model.num_scales), ("kind", quantizer.kind, model.kind)]
        if quantizer.kind == "codebook":
            pairs.append(("codebook_size", quantizer.codebook.size, model.outputs))
        for name, mine, theirs in pairs:
            if mine != theirs:
                raise ValueError(f"{where}: the quantizer's {name} is {mine!r}, the context model's {theirs!r}")

    @classmethod
    def export_extras(cls, modules: dict[str, Any]) -> dict[str, Any]:
        return {
            "quality_direction": "quality r keeps scales 1..r+1 of the token pyramid: a higher one gives more bits and a better reconstruction",
            "entropy_coder": "constriction ANS under the context model's probabilities quantized to 24-bit frequencies, one stream per group and scale",
            "qualities": modules["context_model"].num_scales,
            "fill": DEFAULT_FILL,
        }

    @classmethod
    def truncate(cls, stream: str | os.PathLike, output: str | os.PathLike, scales: int | None = None, max_bytes: int | None = None) -> dict[str, Any]:
        return truncate_stream(stream, output, cls.entry().stream_id, scales=scales, max_bytes=max_bytes)

    def chunk_pixels(self, width: int, height: int, latents_per_group: int) -> int:
        s = self.spatial
        return math.ceil(width / s) * s * math.ceil(height / s) * s * self.temporal * latents_per_group

    def fitting_latents_per_group(self, width: int, height: int) -> int:
        for n in range(DEFAULT_LATENTS_PER_GROUP, 0, -1):
            if self.chunk_pixels(width, height, n) <= self.max_chunk_pixels:
                return n
        raise ValueError(f"{width}x{height} frames are over this codec's {self.max_chunk_pixels}-pixel chunk limit even at one latent frame a group")

    @torch.no_grad()
    def ceiling(self, frames_THWC: np.ndarray) -> np.ndarray:
        """The tokenizer alone (latents unquantized), padded and cropped as the encoder does."""
        s, t = self.spatial, self.temporal
        x = frames_to_tensor(frames_THWC)
        x = F.pad(x, (0, -x.shape[4] % s, 0, -x.shape[3] % s, 0, -(x.shape[2] - 1) % t), mode="replicate")
        with inference_mode(self.deterministic):
            z = self.tokenizer.encode(x, chunk_frames=DEFAULT_LATENTS_PER_GROUP * t).mode()
            recon = self.tokenizer.decode(z, chunk_latents=DEFAULT_LATENTS_PER_GROUP).clamp(0, 1)
        height, width = frames_THWC.shape[1:3]
        return tensor_to_frames(recon[0, :, : len(frames_THWC), :height, :width])

    def _fill_mode(self, fill: str | None) -> str:
        fill = self.fill if fill is None else fill
        if fill not in FILL_MODES:
            raise ValueError(f"fill must be one of {FILL_MODES}, got {fill!r}")
        return fill

    # ---- encoding -----------------------------------------------------------------------------

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
        """Code ``source`` (a video file or PNG folder) into ``output``, keeping scales
        ``1..rate_point + 1``. ``latents_per_chunk``: latent frames per group (None: the largest
        up to 8 that fits ``max_chunk_pixels``). ``on_recon`` gets what :meth:`decode` will give."""
        if options:
            raise ValueError(f"the {self.family} codec takes no option {sorted(options)}")
        if not (isinstance(rate_point, int) and 0 <= rate_point < self.num_rate_points):
            raise ValueError(f"quality must be an integer in 0..{self.num_rate_points - 1}, got {rate_point!r}")
        if latents_per_chunk is not None and not 1 <= latents_per_chunk <= MAX_LATENTS_PER_GROUP:
            raise ValueError(f"latents_per_chunk must be in 1..{MAX_LATENTS_PER_GROUP}, got {latents_per_chunk}")
        fill = self._fill_mode(None)
        output = Path(output)
        check_target(output, inputs=[source], overwrite=True)
        output.parent.mkdir(parents=True, exist_ok=True)
        body_path = temp_beside(output.with_name(output.name + ".body"))
        started = time.perf_counter()
        try:
            with VideoReader(source) as reader, open(body_path, "wb") as body, inference_mode(self.deterministic):
                info = reader.info
                group = latents_per_chunk or self.fitting_latents_per_group(info.width, info.height)
                if self.chunk_pixels(info.width, info.height, group) > self.max_chunk_pixels:
                    raise ValueError(f"{info.width}x{info.height} at {group} latents per chunk is over the {self.max_chunk_pixels}-pixel chunk limit")
                run = _EncodeRun(self, rate_point + 1, group, info.width, info.height, body, on_recon, fill)
                for frame in reader.frames(max_frames):
                    run.add_frame(frame)
                run.finish()
            fps_num, fps_den = fps_fraction(info.fps if info.fps > 0 else 30.0)
            header = StreamHeader(self.stream_id, fingerprint_prefix(self.fingerprint), info.width, info.height, run.frames, fps_num, fps_den)
            config = StreamConfig(self.num_scales, rate_point + 1, group, run.latents, *run.latent_hw)
            _assemble(output, header_bytes(header) + chunk_bytes(ChunkType.CONFIG, config.payload()), body_path)
        finally:
            body_path.unlink(missing_ok=True)
        return CodingReport(
            str(output), run.frames, info.width, info.height, fps_num / fps_den, rate_point,
            output.stat().st_size, run.payload_bytes, run.chunks, time.perf_counter() - started, run.model_bits, run.estimate_bits,
        )  # fmt: skip

    # ---- decoding -----------------------------------------------------------------------------

    def decode(self, stream: str | os.PathLike, on_frame: FrameCallback | None, fill: str | None = None) -> CodingReport:
        """Decode ``stream`` and hand every frame to ``on_frame`` (None: tokens only, no pixels);
        scales the stream does not carry are predicted (``fill``, default :attr:`fill`).
        BitstreamError on bad input."""
        fill = self._fill_mode(fill)
        started = time.perf_counter()
        path = Path(stream)
        if not path.is_file():
            raise BitstreamError(f"no bitstream at {path}")
        with open(path, "rb") as f, inference_mode(self.deterministic):
            header, config, chunks = self._open_stream(f)
            payload_bytes, count = self._decode_groups(header, config, chunks, on_frame, fill)
        return CodingReport(
            str(path), header.frames, header.width, header.height, header.fps, config.kept_scales - 1,
            path.stat().st_size, payload_bytes, count, time.perf_counter() - started,
        )  # fmt: skip

    def _open_stream(self, f: BinaryIO) -> tuple[StreamHeader, StreamConfig, Iterator[Chunk]]:
        header = read_header(f, expected_fingerprint=fingerprint_prefix(self.fingerprint))
        if header.family != self.stream_id:
            raise BitstreamError(f"a stream of codec family {header.family}, not of the {self.family} family ({self.stream_id})")
        latent_hw = (math.ceil(header.height / self.spatial), math.ceil(header.width / self.spatial))
        config, offset = read_config(f)
        if (config.latent_frames, config.latent_height, config.latent_width) != (latent_frames_for(header.frames, self.temporal), *latent_hw):
            raise BitstreamError("CONFIG chunk does not match the header's size and frame count")
        if config.num_scales != self.num_scales:
            raise BitstreamError(f"CONFIG says {config.num_scales} scales; this codec has {self.num_scales}")
        if self.chunk_pixels(header.width, header.height, config.latents_per_group) > self.max_chunk_pixels:
            raise BitstreamError(
                f"{header.width}x{header.height} at {config.latents_per_group} latents per group is over this "
                f"decoder's {self.max_chunk_pixels}-pixel chunk limit (ProgressiveCodec.max_chunk_pixels)"
            )
        # a scale chunk of a group: every symbol costs at most 24 bits (4 bytes here), and no
        # chunk is longer than the file; a damaged length is refused before it is read
        per_frame = max(ScalePyramid(self.quantizer, self.context_model, latent_hw, "zero").symbols_per_scale())
        bound = min(1024 + 4 * per_frame * config.latents_per_group, os.fstat(f.fileno()).st_size)
        return header, config, iter_chunks(f, offset=offset, max_chunk_bytes=bound)

    def _decode_groups(
        self, header: StreamHeader, config: StreamConfig, chunks: Iterator[Chunk], on_frame: FrameCallback | None, fill: str
    ) -> tuple[int, int]:
        pyramid = ScalePyramid(self.quantizer, self.context_model, (config.latent_height, config.latent_width), fill)
        pixel_state = self.tokenizer.init_decoder_state()
        emitted = payload_bytes = count = 0
        for group, parts in read_groups(config, chunks):
            count += len(parts)
            payload_bytes += sum(len(p.coded) for p in parts)
            latents = _decode_group(pyramid, group, parts, config.group_latents(group))
            if on_frame is not None:
                pixels, pixel_state = self.tokenizer.decode_chunk(torch.stack(latents, dim=2), pixel_state)
                emitted += _emit(pixels, header.height, header.width, header.frames - emitted, on_frame)
        return payload_bytes, count


def _decode_group(pyramid: ScalePyramid, group: int, parts: list[ScaleChunk], frames: int) -> list[torch.Tensor]:
    """The latent frames of one group from its scale chunks; BitstreamError unless every chunk
    decodes to its end and to the tokens the encoder checked."""
    decoders = [CategoricalDecoder(p.coded) for p in parts]
    checks = [0] * len(parts)
    kind = pyramid.kind

    def decode(k: int, logits: torch.Tensor, freqs: torch.Tensor) -> torch.Tensor:
        symbols = decoders[k].decode(freqs)
        checks[k] = _crc(symbols, checks[k])
        return token_probs.map_layout(symbols, kind, pyramid.shapes[k])

    latents = [pyramid.frame(len(parts), decode)[0] for _ in range(frames)]
    for k, (decoder, part) in enumerate(zip(decoders, parts)):
        decoder.finish()
        if checks[k] != part.check:
            raise BitstreamError(
                f"group {group + 1} scale {k + 1}: this decoder's probability model differs from the encoder's (its tokens fail "
                "the stream's model check: another build of this codec, another CPU kind, or a rewritten stream)"
            )
    return latents


def _crc(symbols: torch.Tensor, crc: int) -> int:
    """The model check over a scale's tokens (flat layout) as int32, continued from ``crc``."""
    return zlib.crc32(symbols.to(torch.int32).contiguous().numpy().tobytes(), crc)


class _EncodeRun:
    """The state of one streaming encode: pending frames, the scale coders of the current group, counters."""

    def __init__(
        self, owner: ProgressiveCodec, kept: int, group: int, width: int, height: int, body: BinaryIO, on_recon: FrameCallback | None, fill: str
    ) -> None:
        self.o, self.kept, self.per_group = owner, kept, group
        self.width, self.height, self.body, self.on_recon = width, height, body, on_recon
        s = owner.spatial
        self.pad_hw = (-height % s, -width % s)
        self.latent_hw = (math.ceil(height / s), math.ceil(width / s))
        self.pyramid = ScalePyramid(owner.quantizer, owner.context_model, self.latent_hw, fill)
        self.pending: list[torch.Tensor] = []
        self.tok_state = owner.tokenizer.init_encoder_state()
        self.pix_state = owner.tokenizer.init_decoder_state()
        self.frames = self.latents = self.chunks = self.payload_bytes = self.emitted = self.group = 0
        self.model_bits = self.estimate_bits = 0.0
        self._new_group()

    def _new_group(self) -> None:
        self.coders = [CategoricalEncoder() for _ in range(self.kept)]
        self.checks = [0] * self.kept
        self.recon_latents: list[torch.Tensor] = []

    def add_frame(self, frame_HWC: np.ndarray) -> None:
        x = frames_to_tensor(frame_HWC[None])[:, :, 0]  # 1 x 3 x H x W
        if any(self.pad_hw):
            x = F.pad(x, (0, self.pad_hw[1], 0, self.pad_hw[0]), mode="replicate")
        self.pending.append(x)
        self.frames += 1
        if self.frames == 1 or len(self.pending) == self.o.temporal * self.per_group:
            self._tokenize()

    def finish(self) -> None:
        if self.frames == 0:
            raise ValueError("the input has no frames")
        if self.pending:
            self.pending += [self.pending[-1]] * (-len(self.pending) % self.o.temporal)
            self._tokenize()
        if self.recon_latents:
            self._flush()

    def _tokenize(self) -> None:
        x_BCThw = torch.stack(self.pending, dim=2)
        self.pending = []
        posterior, self.tok_state = self.o.tokenizer.encode_chunk(x_BCThw, self.tok_state)
        latent_BCthw = posterior.mode()
        for i in range(latent_BCthw.shape[2]):
            tokens = self.o.quantizer.encode_tokens(latent_BCthw[:, :, i])
            latent, _ = self.pyramid.frame(self.kept, lambda k, logits, freqs: self._code(k, logits, freqs, tokens[k]))
            self.recon_latents.append(latent)
            self.latents += 1
            if len(self.recon_latents) == self.per_group:
                self._flush()

    def _code(self, k: int, logits: torch.Tensor, freqs: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        symbols = token_probs.flat_tokens(tokens, self.pyramid.kind)
        self.coders[k].encode(symbols, freqs)
        self.checks[k] = _crc(symbols, self.checks[k])
        self.estimate_bits += float(token_probs.token_bits(logits, tokens, self.pyramid.kind).sum())
        return tokens

    def _flush(self) -> None:
        for k, coder in enumerate(self.coders):
            self.model_bits += coder.model_bits
            coded = coder.finish()
            self.body.write(chunk_bytes(ChunkType.FRAMES, frames_payload(self.group, k + 1, self.checks[k], coded)))
            self.payload_bytes += len(coded)
            self.chunks += 1
        if self.on_recon is not None:
            # the decoder's calls on the same tensors: one group's latents at a time
            pixels, self.pix_state = self.o.tokenizer.decode_chunk(torch.stack(self.recon_latents, dim=2), self.pix_state)
            self.emitted += _emit(pixels, self.height, self.width, self.frames - self.emitted, self.on_recon)
        self.group += 1
        self._new_group()


def _emit(pixels_BCThw: torch.Tensor, height: int, width: int, limit: int, on_frame: FrameCallback) -> int:
    """Hand frames (cropped to ``height x width``, at most ``limit``) to ``on_frame`` as uint8."""
    frames_THWC = tensor_to_frames(pixels_BCThw[0, :, :, :height, :width])
    count = max(0, min(limit, frames_THWC.shape[0]))
    for t in range(count):
        on_frame(frames_THWC[t])
    return count


def _assemble(output: Path, head: bytes, body_path: Path) -> None:
    """Header + CONFIG, the chunks streamed to ``body_path``, END; renamed into place when whole."""

    def write(out: BinaryIO) -> None:
        out.write(head)
        with open(body_path, "rb") as body:
            shutil.copyfileobj(body, out, 1 << 20)
        out.write(end_marker())

    atomic_write_with(output, write)
