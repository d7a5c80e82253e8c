"""The progressive token codec (ProGVC family) at inference: a video file to a bitstream file that
can be cut after any scale, and back.

Encoding streams through the tokenizer in groups of G latent frames (``latents_per_chunk``;
``tokenizer_io.py``: frame padding and cropping, ``1 + 4k`` frames, the memory bound, the file).
Each latent frame becomes the quantizer's token pyramid (scales 1..K, coarse to fine); the
context model gives every scale's probabilities through its cached path, and scale k of the
group's frames is coded into the group's k-th FRAMES chunk (``progressive_scales.py``,
``coding/categorical.py``). A rate point r keeps scales ``1..r + 1``. Memory is bounded by one
group of frames, whatever the video's length.

Stream: ``progressive_stream.py`` (CONFIG, then one FRAMES chunk per group and scale,
group-major: the sections of the group's one ANS stack, so a group pays one coder flush). ``gvc truncate`` cuts it after any scale without a model
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

import os
import zlib
from collections.abc import Callable, Iterator
from typing import Any, BinaryIO

import torch

from gvc_train.codecs.base import CodingReport, FrameCallback
from gvc_train.codecs.progressive_scales import FILL_MODES, ScalePyramid
from gvc_train.codecs.progressive_stream import (
    MAX_LATENTS_PER_GROUP,
    ScaleChunk,
    StreamConfig,
    frames_payload,
    read_config,
    read_groups,
    truncate_stream,
)
from gvc_train.codecs.tokenizer_codec import TokenizerCodec
from gvc_train.codecs.tokenizer_io import FrameEmitter
from gvc_train.coding.categorical import CategoricalDecoder, CategoricalEncoder
from gvc_train.coding.container import BitstreamError, Chunk, StreamHeader, iter_chunks
from gvc_train.models.progressive import token_probs

# How the decoder fills in the scales a cut stream lacks. Measured (issue 13) with the reference
# checkpoints/progressive_tiny, one 96-frame carphone stream cut after 1..6 of 7 scales
# (CARD.md): left at zero, the finer scales decode best at every cut but the last (+1.0, +0.6,
# +0.9, +0.2, +0.1 dB PSNR over the expected code vectors with 1..5 kept; -0.1 dB with 6), and the
# expected code vectors beat the most probable tokens at every cut (+0.15 to +0.66 dB): the
# quantizer was trained with scale dropout to reconstruct from a pyramid cut short, so "zero" is
# what its refinements expect, and a context model this small is too unsure of a fine scale for
# its prediction to add more than it blurs. (An earlier, smaller measurement without the zero
# fill had picked the expectation.) Reconsider with a stronger context model: gvc eval's
# truncation points set all three side by side.
DEFAULT_FILL = "zero"


class ProgressiveCodec(TokenizerCodec):
    """An exported progressive codec folder (tokenizer, quantizer, context model).

    ``fill`` (an attribute, default :data:`DEFAULT_FILL`): how the decoder predicts the scales a
    stream does not carry, one of ``progressive_scales.FILL_MODES``; the encoder's ``on_recon``
    uses the same, so set it before both. :meth:`encode` (``TokenizerCodec.encode``) keeps
    scales ``1..rate_point + 1``; ``latents_per_chunk`` is the latent frames per group.
    """

    family = "progressive"
    report_notes = (
        "progressive codecs have no intra refresh: they code each video as one GOP whatever --intra-period says",
        "in a progressive codec's truncation points the scales a cut lacks are predicted by the context model ('expectation': "
        "the expected code vectors under its probabilities; 'argmax': its most probable tokens) or left "
        "at zero ('zero': the finer scales add nothing; the decoder's default)",
    )
    # gvc eval's truncation curve decodes every cut with each: the default, the finer scales
    # left at zero (what the prediction is worth), and the most probable tokens
    cut_fills = tuple(dict.fromkeys((DEFAULT_FILL, "expectation", "zero", "argmax")))
    run_name = "group"
    max_latents_per_run = MAX_LATENTS_PER_GROUP
    # The tokenizer runs on the GPU (TokenizerCodec._move_to); the quantizer, the context model
    # and the entropy coding stay on the CPU, so a stream's tokens are the same whichever device
    # decodes it (each scale's CRC checks them).
    devices = ("cpu", "cuda")

    def __init__(self, folder: str | os.PathLike, deterministic: bool = True) -> None:
        modules = self._load_folder(folder, deterministic)
        self.quantizer = modules["quantizer"].eval()
        self.context_model = modules["context_model"].eval()
        self.fill = DEFAULT_FILL
        # Called with (scale index, flat tokens, their integer frequency tables) for every scale of
        # every frame the encoder codes, in coding order (progressive_baselines.py counts them).
        self.token_sink: Callable[[int, torch.Tensor, torch.Tensor], None] | None = None

    @property
    def num_scales(self) -> int:
        return self.context_model.num_scales

    @property
    def num_rate_points(self) -> int:
        return self.num_scales  # rate point r: scales 1..r + 1

    # ---- the folder ---------------------------------------------------------------------------

    @classmethod
    def check_components(cls, modules: dict[str, Any], where: str) -> None:
        super().check_components(modules, where)
        tokenizer, quantizer, model = modules["tokenizer"], modules["quantizer"], modules["context_model"]
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
            "entropy_coder": "constriction ANS under the context model's probabilities quantized to 24-bit frequencies, one stack per group with a section per scale",
            "qualities": modules["context_model"].num_scales,
            "fill": DEFAULT_FILL,
        }

    @classmethod
    def truncate(cls, stream: str | os.PathLike, output: str | os.PathLike, scales: int | None = None, max_bytes: int | None = None) -> dict[str, Any]:
        return truncate_stream(stream, output, cls.entry().stream_id, scales=scales, max_bytes=max_bytes)

    def _fill_mode(self, fill: str | None) -> str:
        fill = self.fill if fill is None else fill
        if fill not in FILL_MODES:
            raise ValueError(f"fill must be one of {FILL_MODES}, got {fill!r}")
        return fill

    # ---- encoding -----------------------------------------------------------------------------

    def _check_encode(self, rate_point: int, latents_per_chunk: int | None) -> None:
        super()._check_encode(rate_point, latents_per_chunk)
        self._fill_mode(None)

    def _chunk_coder(self, rate_point: int, latent_hw: tuple[int, int]) -> _GroupCoder:
        return _GroupCoder(self, rate_point + 1, latent_hw, self._fill_mode(None))

    def _config_payload(self, rate_point: int, latents_per_run: int, latent_frames: int, latent_hw: tuple[int, int]) -> bytes:
        return StreamConfig(self.num_scales, rate_point + 1, latents_per_run, latent_frames, *latent_hw, rate_point + 1).payload()

    # ---- decoding -----------------------------------------------------------------------------

    def decode(self, stream: str | os.PathLike, on_frame: FrameCallback | None, fill: str | None = None) -> CodingReport:
        """Decode ``stream`` and hand every frame to ``on_frame`` (None: tokens only, no pixels);
        scales the stream does not carry are predicted (``fill``, default :attr:`fill`).
        BitstreamError on bad input."""
        fill = self._fill_mode(fill)
        return self._decode_file(stream, lambda header, config, chunks: self._decode_groups(header, config, chunks, on_frame, fill))

    def decode_cut(self, stream: str | os.PathLike, on_frame: FrameCallback | None, fill: str) -> CodingReport:
        return self.decode(stream, on_frame, fill=fill)

    def _open_stream(self, f: BinaryIO) -> tuple[StreamHeader, StreamConfig, Iterator[Chunk]]:
        header = self._read_header(f)
        config, offset = read_config(f)
        self._check_latent_geometry(header, config.latent_frames, (config.latent_height, config.latent_width))
        if config.num_scales != self.num_scales:
            raise BitstreamError(f"CONFIG says {config.num_scales} scales; this codec has {self.num_scales}")
        self._check_chunk_pixels(header, config.latents_per_group)
        # a scale chunk of a group: every symbol costs at most 24 bits (4 bytes here), and no
        # chunk is longer than the file; a damaged length is refused before it is read
        per_frame = max(ScalePyramid(self.quantizer, self.context_model, self._latent_hw(header), "zero").symbols_per_scale())
        bound = min(1024 + 4 * per_frame * config.latents_per_group, os.fstat(f.fileno()).st_size)
        return header, config, iter_chunks(f, offset=offset, max_chunk_bytes=bound)

    def _decode_groups(
        self, header: StreamHeader, config: StreamConfig, chunks: Iterator[Chunk], on_frame: FrameCallback | None, fill: str
    ) -> tuple[int, int, int]:
        """The groups' latents (and frames): ``(rate point, coded bytes, chunks)``."""
        pyramid = ScalePyramid(self.quantizer, self.context_model, (config.latent_height, config.latent_width), fill)
        pixels = FrameEmitter(self.tokenizer, header.width, header.height, on_frame, self.max_memory, self.clock)
        payload_bytes = count = 0
        for group, parts in read_groups(config, chunks):
            count += len(parts)
            payload_bytes += sum(len(p.coded) for p in parts)
            complete = len(parts) == config.coded_scales  # else cut: no end marker below the last section
            with self.clock.stage("entropy"):  # the context transformer and the categorical decoder
                latents = _decode_group(pyramid, group, parts, config.group_latents(group), complete)
            pixels.emit(latents, header.frames)
        return config.kept_scales - 1, payload_bytes, count


def _decode_group(pyramid: ScalePyramid, group: int, parts: list[ScaleChunk], frames: int, complete: bool) -> list[torch.Tensor]:
    """The latent frames of one group from its scale chunks (the sections of one ANS stack,
    decoded scale-major); BitstreamError unless every section ends on its own words, the stack
    on its end marker (``complete``: the group holds every scale the encoder coded), and the
    tokens match the encoder's model checks."""
    decoder = CategoricalDecoder([p.coded for p in parts], complete=complete)
    checks = [0] * len(parts)
    kind = pyramid.kind

    def decode(k: int, logits: torch.Tensor, freqs: torch.Tensor) -> torch.Tensor:
        symbols = decoder.decode(freqs)
        checks[k] = _crc(symbols, checks[k])
        return token_probs.map_layout(symbols, kind, pyramid.shapes[k])

    def end_scale(k: int) -> None:
        decoder.end_section()
        if checks[k] != parts[k].check:
            raise BitstreamError(
                f"group {group + 1} scale {k + 1}: this decoder's probability model differs from the encoder's (its tokens fail "
                "the stream's model check: another build of this codec, another CPU kind, or a rewritten stream)"
            )

    latents = pyramid.group(frames, len(parts), decode, end_scale)
    decoder.finish()
    return latents


def _crc(symbols: torch.Tensor, crc: int) -> int:
    """The model check over a scale's tokens (flat layout) as int32, continued from ``crc``."""
    return zlib.crc32(symbols.to(torch.int32).contiguous().numpy().tobytes(), crc)


class _GroupCoder:
    """The progressive side of one encode (a ``tokenizer_io.ChunkCoder``): each latent frame's
    scales ``1..kept`` into the group's scale coders; a group ends as one FRAMES chunk a scale."""

    def __init__(self, owner: ProgressiveCodec, kept: int, latent_hw: tuple[int, int], fill: str) -> None:
        self.quantizer, self.kept, self.token_sink = owner.quantizer, kept, owner.token_sink
        self.pyramid = ScalePyramid(owner.quantizer, owner.context_model, latent_hw, fill)
        self.group = 0
        self.model_bits = self.estimate_bits = 0.0
        self._new_group()

    def _new_group(self) -> None:
        self.coder = CategoricalEncoder()  # one stack a group, section k: scale k + 1 of its frames
        self.checks = [0] * self.kept

    def code(self, latent_BChw: torch.Tensor) -> torch.Tensor:
        tokens = self.quantizer.encode_tokens(latent_BChw)
        return self.pyramid.frame(self.kept, lambda k, logits, freqs: self._code(k, logits, freqs, tokens[k]))

    def _code(self, k: int, logits: torch.Tensor, freqs: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        symbols = token_probs.flat_tokens(tokens, self.pyramid.kind)
        self.coder.encode(symbols, freqs, section=k)
        if self.token_sink is not None:
            self.token_sink(k, symbols, freqs)
        self.checks[k] = _crc(symbols, self.checks[k])
        self.estimate_bits += float(token_probs.token_bits(logits, tokens, self.pyramid.kind).sum())
        return tokens

    def end_run(self) -> list[tuple[bytes, int]]:
        self.model_bits += self.coder.model_bits
        parts = []
        for k, coded in enumerate(self.coder.finish_sections(self.kept)):
            parts.append((frames_payload(self.group, k + 1, self.checks[k], coded), len(coded)))
        self.group += 1
        self._new_group()
        return parts
