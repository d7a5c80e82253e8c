"""The latent codec (GLVC family) at inference: a video file to a bitstream file and back.

Encoding streams through the tokenizer in chunks of ``latents_per_chunk`` latent frames
(``tokenizer_io.py``: frame padding and cropping, ``1 + 4k`` frames, the memory bound, the file);
the latent codec codes each latent frame into the chunk's shared rANS stream, and each chunk
becomes one FRAMES chunk. Memory is bounded by one chunk of frames, whatever the video's length.

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

import os
from collections.abc import Iterator
from typing import Any, BinaryIO

import torch

from gvc_train.codecs.base import CodingReport, FrameCallback
from gvc_train.codecs.codec_folder import CodecFolderError
from gvc_train.codecs.latent_stream import STREAM_VERSION, StreamConfig, describe_chunks, latent_frames_for, video_frames_of_chunk  # noqa: F401 (re-exported)
from gvc_train.codecs.stream_layout import read_config_chunk, run_latents
from gvc_train.codecs.tokenizer_codec import TokenizerCodec
from gvc_train.codecs.tokenizer_io import FrameEmitter
from gvc_train.coding.container import BitstreamError, Chunk, ChunkType, StreamHeader, iter_chunks
from gvc_train.coding.rans import SymbolDecoder, SymbolEncoder
from gvc_train.components import ComponentState
from gvc_train.models.fixed_point import FixedPointError, FrameObserver, ModelCheck
from gvc_train.models.latent.latent_codec_config import LatentCodecConfig, symbols_per_frame
from gvc_train.models.latent.latent_decoding import decoder_parts, decompress_frame

MAX_LATENTS_PER_CHUNK = 64
MODEL_CHECK_BYTES = 4  # CRC32 of the chunk's scale indexes and latents (fixed_point.ModelCheck)


class LatentCodec(TokenizerCodec):
    """An exported latent codec folder, ready to encode and decode.

    ``deterministic`` (the default) runs the networks on one intra-op thread so that decoding
    is bit-exact whatever the thread settings (see ``codecs/determinism.py``).
    """

    family = "latent"
    # The tokenizer may run on a GPU (float32); the entropy model's decoder side is fixed point on
    # the CPU, so a stream's latents are the same integers whichever device coded it.
    devices = ("cpu", "cuda")
    report_notes = ("latent codecs have no intra refresh: they code each video as one GOP whatever --intra-period says",)
    run_name = "chunk"
    max_latents_per_run = MAX_LATENTS_PER_CHUNK

    # The decoder runs the latent codec from its weights (fixed-point net, saved CDF tables):
    # decoding never imports compressai's package nor builds the module; encoding builds it.
    state_only_components = {"latent_codec": LatentCodecConfig}

    def __init__(self, folder: str | os.PathLike, deterministic: bool = True) -> None:
        modules = self._load_folder(folder, deterministic)
        self._codec_state: ComponentState = modules["latent_codec"]
        self._codec: Any = None
        self.codec_config = LatentCodecConfig(**self._codec_state.config)
        try:
            self.tables, self.net = decoder_parts(self._codec_state.config, self._codec_state.tensors)
        except (ValueError, FixedPointError) as e:
            raise CodecFolderError(f"{folder}: {e}") from None

    @property
    def codec(self) -> Any:
        """The ``LatentVideoCodec`` module (compressai's), built on first use: the encoder runs
        g_a, h_a and the rates in float; the decoder never needs it."""
        if self._codec is None:
            self._codec = self._codec_state.build()
        return self._codec

    @property
    def num_qualities(self) -> int:
        return self.codec_config.num_qualities

    @property
    def num_rate_points(self) -> int:
        return self.codec_config.num_qualities

    def symbols_per_frame(self, height: int, width: int) -> int:
        return symbols_per_frame(self.codec_config.y_channels, self.codec_config.z_channels, height, width)

    @classmethod
    def check_components(cls, modules: dict[str, Any], where: str) -> None:
        super().check_components(modules, where)
        tokenizer, channels = modules["tokenizer"], modules["latent_codec"].config["latent_channels"]
        if channels != tokenizer.latent_channels:
            raise ValueError(f"{where}: latent codec takes {channels} channels, tokenizer makes {tokenizer.latent_channels}")

    @classmethod
    def export_extras(cls, modules: dict[str, Any]) -> dict[str, Any]:
        return {
            "quality_direction": "a higher quality index gives more bits and a better reconstruction",
            "entropy_coder": "compressai rANS, one stream per chunk; CDF tables from update() in the safetensors",
            "qualities": modules["latent_codec"].num_qualities,
        }

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
        """:meth:`TokenizerCodec.encode` at quality index ``quality`` (this family's signature:
        ``quality`` by name, ``max_frames`` and ``latents_per_chunk`` by position too)."""
        return super().encode(source, output, quality, max_frames=max_frames, on_recon=on_recon, latents_per_chunk=latents_per_chunk, **options)

    def _chunk_coder(self, rate_point: int, latent_hw: tuple[int, int]) -> _ChunkCoder:
        return _ChunkCoder(self, rate_point)

    def _config_payload(self, rate_point: int, latents_per_run: int, latent_frames: int, latent_hw: tuple[int, int]) -> bytes:
        return StreamConfig(rate_point, latents_per_run, latent_frames, *latent_hw).payload()

    # ---- decoding -----------------------------------------------------------------------------

    def decode(
        self, bitstream: str | os.PathLike, on_frame: FrameCallback | None, on_latent: FrameObserver | None = None
    ) -> CodingReport:
        """Decode ``bitstream`` and hand every frame to ``on_frame``; BitstreamError on bad input.

        ``on_latent`` sees each latent frame as entropy-decoded, ``(y symbols, y scale indexes,
        latent)``, all integers (the latent at ``2^-fixed_point.FRAC_BITS``): the same on every
        machine. ``on_frame=None`` skips the tokenizer (latents only).
        """
        return self._decode_file(bitstream, lambda header, config, chunks: self._decode_chunks(header, config, chunks, on_frame, on_latent))

    def _open_stream(self, f: BinaryIO) -> tuple[StreamHeader, StreamConfig, Iterator[Chunk]]:
        header = self._read_header(f)
        # A chunk holds at most MAX_LATENTS_PER_CHUNK latent frames at (far less than) 8 bytes a
        # symbol: a damaged length above that is refused before it is read.
        max_chunk = 64 * 1024 + 8 * self.symbols_per_frame(*self._latent_hw(header)) * MAX_LATENTS_PER_CHUNK
        payload, offset = read_config_chunk(f, max_chunk)
        config = StreamConfig.parse(payload)
        self._check_latent_geometry(header, config.latent_frames, (config.latent_height, config.latent_width))
        if not 0 <= config.quality < self.num_qualities:
            raise BitstreamError(f"quality {config.quality} is outside this codec's 0..{self.num_qualities - 1}")
        if not 1 <= config.latents_per_chunk <= MAX_LATENTS_PER_CHUNK:
            raise BitstreamError(f"latents per chunk {config.latents_per_chunk} is out of bounds")
        self._check_chunk_pixels(header, config.latents_per_chunk)
        return header, config, iter_chunks(f, offset=offset, max_chunk_bytes=max_chunk)

    def _decode_chunks(
        self, header: StreamHeader, config: StreamConfig, chunks: Iterator[Chunk], on_frame: FrameCallback | None, on_latent: FrameObserver | None
    ) -> tuple[int, int, int]:
        """The chunks' latents (and frames): ``(quality, rANS bytes, chunks)``."""
        size_hw = (config.latent_height, config.latent_width)
        per_latent = self.symbols_per_frame(*size_hw)
        codec_state = self.net.init_state()
        pixels = FrameEmitter(self.tokenizer, header.width, header.height, on_frame, self.max_memory, self.clock)
        check = ModelCheck()

        def observe(symbols: torch.Tensor, indexes: torch.Tensor, latent: torch.Tensor) -> None:
            check(symbols, indexes, latent)
            if on_latent is not None:
                on_latent(symbols, indexes, latent)

        payload_bytes = 0
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
            count = run_latents(index, config.latents_per_chunk, config.latent_frames)
            decoder = SymbolDecoder(rans, count * per_latent)
            latents = []
            for _ in range(count):
                with self.clock.stage("entropy"):  # rANS and the fixed-point context and hyperprior nets
                    latent, codec_state = decompress_frame(
                        codec_state, config.quality, size_hw, decoder, self.tables, self.net, self.num_qualities, self.codec_config.z_channels, observe
                    )
                latents.append(latent)
            if check.take() != expected_check:
                raise BitstreamError(
                    f"FRAMES chunk {index + 1}: this decoder's probability model differs from the encoder's (its scale "
                    "indexes or latents fail the stream's model check: another build of this codec, or a rewritten stream)"
                )
            pixels.emit(latents, header.frames)
        if next(chunks, None) is not None:
            raise BitstreamError(f"more chunks than the {config.num_chunks()} the stream announces")
        return config.quality, payload_bytes, config.num_chunks()


class _ChunkCoder:
    """The latent codec's side of one encode (a ``tokenizer_io.ChunkCoder``): each latent frame
    into the chunk's rANS stream through the latent codec's recurrent state; a chunk's FRAMES
    payload is its model check, then the rANS bytes."""

    def __init__(self, owner: LatentCodec, quality: int) -> None:
        self.o, self.quality = owner, quality
        self.codec_state = owner.net.init_state()
        self.coder = SymbolEncoder()
        self.check = ModelCheck()
        self.model_bits = self.estimate_bits = 0.0

    def code(self, latent_BChw: torch.Tensor) -> torch.Tensor:
        recon, self.codec_state, bits = self.o.codec.compress_frame(
            latent_BChw, self.codec_state, self.quality, self.coder, self.o.tables, self.o.net, self.check
        )
        self.model_bits += bits[0]
        self.estimate_bits += bits[1]
        return recon

    def end_run(self) -> list[tuple[bytes, int]]:
        payload = self.coder.flush()
        return [(self.check.take().to_bytes(MODEL_CHECK_BYTES, "big") + payload, len(payload))]
