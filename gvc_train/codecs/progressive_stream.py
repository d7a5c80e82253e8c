"""The progressive family's stream layout, without torch: ``gvc info``, ``gvc truncate`` and the
decoder's checks.

Inside the container of ``coding/container.py`` (the family's stream id)::

    CONFIG   varints: stream version, scales of the model (K), scales kept (K' <= K), latent
             frames per group (G), latent frames, latent h, latent w, scales coded (K'' >= K':
             what the encoder wrote; a cut lowers K' only)
    FRAMES   one per (group of G latent frames, scale), group-major and scale-minor: scales
             1..K' of group 1, then of group 2, ...; payload: varint group index (0-based),
             varint scale (1-based), model check (4 bytes: CRC32 of the scale's tokens over the
             group's frames as the encoder coded them), then the entropy-coded tokens of that
             scale for the group's frames: section k of the group's one ANS stack
             (coding/categorical.py), decoded scale-major (scale 1 of every frame of the
             group, then scale 2, ...), so a group pays one coder flush, not one per scale
    END

**Cutting.** Scale k's chunk of a group codes tokens whose probabilities depend on scales
``<= k`` of that group's frames and of the past frames only (the context model's per-scale past
context), so dropping every chunk of scale ``> K'`` leaves a stream that decodes scales
``1..K'`` exactly; the decoder predicts the rest. :func:`truncate_stream` does that without
decoding anything (``gvc truncate``): it keeps the header, rewrites CONFIG's kept count and ends
the stream again with ``container.end_marker()``. A prefix of a stream cut at a chunk boundary
inside its last group, END appended, is also a valid stream: its last group decodes at the
scales it still has.
"""

from __future__ import annotations

import dataclasses
import io
import os
import struct
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

from gvc_train.codecs.stream_layout import (
    ConfigChunk,
    describe_rows,
    latent_frames_for,
    read_config_chunk,
    run_count,
    run_latents,
    video_frames_of_run,
)
from gvc_train.coding.container import (
    BitstreamError,
    Chunk,
    ChunkType,
    StreamHeader,
    chunk_bytes,
    encode_varint,
    end_marker,
    header_bytes,
    iter_chunks,
    read_header,
    read_varint,
)

STREAM_VERSION = 2  # 2: one ANS stack a group (sections), CONFIG's scales coded
MAX_SCALES = 32  # the context model's own bound on its scale count
MAX_LATENTS_PER_GROUP = 64
MODEL_CHECK_BYTES = 4
MAX_CONFIG_BYTES = 256  # eight varints
_CHECK = struct.Struct(">I")


@dataclasses.dataclass(frozen=True)
class StreamConfig(ConfigChunk):
    version = STREAM_VERSION
    stream_name = "progressive stream"

    num_scales: int  # K: the scales of the codec's pyramid
    kept_scales: int  # K': the scales each group carries (after a cut, fewer than K)
    latents_per_group: int
    latent_frames: int
    latent_height: int
    latent_width: int
    coded_scales: int  # K'': the scales the encoder coded; a group holding all of them ends in the coder's end marker

    def check(self) -> None:
        """Bounds that need no model: BitstreamError before anything is allocated."""
        if not 1 <= self.num_scales <= MAX_SCALES or not 1 <= self.kept_scales <= self.coded_scales <= self.num_scales:
            raise BitstreamError(f"CONFIG: {self.kept_scales} kept of {self.coded_scales} coded of {self.num_scales} scales is out of bounds")
        if not 1 <= self.latents_per_group <= MAX_LATENTS_PER_GROUP:
            raise BitstreamError(f"CONFIG: {self.latents_per_group} latent frames a group is outside 1..{MAX_LATENTS_PER_GROUP}")
        if min(self.latent_frames, self.latent_height, self.latent_width) < 1:
            raise BitstreamError("CONFIG: an empty latent")

    def num_groups(self) -> int:
        return run_count(self.latent_frames, self.latents_per_group)

    def group_latents(self, group: int) -> int:
        """Latent frames in group ``group`` (the last may be short)."""
        return run_latents(group, self.latents_per_group, self.latent_frames)


def frames_payload(group: int, scale: int, check: int, coded: bytes) -> bytes:
    """A FRAMES chunk's payload: group (0-based), scale (1-based), model check, coded tokens."""
    return encode_varint(group) + encode_varint(scale) + _CHECK.pack(check) + coded


@dataclasses.dataclass(frozen=True)
class ScaleChunk:
    group: int
    scale: int  # 1-based
    check: int
    coded: bytes


def parse_frames(chunk: Chunk) -> ScaleChunk:
    if chunk.type != ChunkType.FRAMES:
        raise BitstreamError(f"chunk at byte {chunk.offset} is {chunk.type.name}, expected FRAMES")
    stream = io.BytesIO(chunk.payload)
    group = read_varint(stream, f"FRAMES chunk at byte {chunk.offset}")
    scale = read_varint(stream, f"FRAMES chunk at byte {chunk.offset}")
    check = stream.read(MODEL_CHECK_BYTES)
    if len(check) != MODEL_CHECK_BYTES:
        raise BitstreamError(f"FRAMES chunk at byte {chunk.offset} is shorter than its model check")
    return ScaleChunk(group, scale, _CHECK.unpack(check)[0], stream.read())


def read_groups(config: StreamConfig, chunks: Iterator[Chunk]) -> Iterator[tuple[int, list[ScaleChunk]]]:
    """The stream's groups in order, each as its scale chunks (scales 1..K', in order).

    Every group carries ``kept_scales`` chunks, except that a stream may end (END) inside its
    last group after at least one of them: a chunk-boundary cut. Anything else (a group or
    scale out of order, a missing group, a chunk after the last) is a BitstreamError."""
    pending = next(chunks, None)
    for group in range(config.num_groups()):
        scales: list[ScaleChunk] = []
        while pending is not None and len(scales) < config.kept_scales:
            part = parse_frames(pending)
            if part.group != group or part.scale != len(scales) + 1:
                raise BitstreamError(
                    f"FRAMES chunk at byte {pending.offset} is group {part.group + 1} scale {part.scale}; expected "
                    f"group {group + 1} scale {len(scales) + 1} (of {config.kept_scales} kept)"
                )
            scales.append(part)
            pending = next(chunks, None)
        if not scales or (len(scales) < config.kept_scales and group + 1 < config.num_groups()):
            raise BitstreamError(f"stream ends in group {group + 1} of {config.num_groups()}")
        yield group, scales
    if pending is not None:
        raise BitstreamError(f"more chunks than the {config.num_groups()} groups the stream announces (at byte {pending.offset})")


def describe_chunks(header: StreamHeader, chunks: Iterable[Chunk]) -> list[dict[str, Any]]:
    """Per chunk: type, offset, bytes; CONFIG's fields; for FRAMES its group, scale, the video
    frames it covers and that scale's bits per frame."""

    def frames(chunk: Chunk, config: StreamConfig, index: int) -> tuple[dict[str, Any], tuple[int, int]]:
        part = parse_frames(chunk)
        return {"group": part.group, "scale": part.scale}, video_frames_of_run(part.group, config.latents_per_group, header.frames)

    return describe_rows(chunks, StreamConfig.parse, frames)


# ---- cutting ------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Plan:
    header: StreamHeader
    config: StreamConfig
    scale_bytes: list[int]  # bytes of every FRAMES chunk of each kept scale, over all groups

    def size(self, scales: int) -> int:
        config = dataclasses.replace(self.config, kept_scales=scales)
        fixed = len(header_bytes(self.header)) + len(chunk_bytes(ChunkType.CONFIG, config.payload())) + len(end_marker())
        return fixed + sum(self.scale_bytes[:scales])


def read_config(f: BinaryIO) -> tuple[StreamConfig, int]:
    """The CONFIG chunk at the file's position (at most ``MAX_CONFIG_BYTES``) and the offset after it."""
    payload, offset = read_config_chunk(f, MAX_CONFIG_BYTES)
    return StreamConfig.parse(payload), offset


def _open(f: BinaryIO, stream_id: int) -> tuple[StreamHeader, StreamConfig, Iterator[Chunk]]:
    header = read_header(f)
    if header.family != stream_id:
        raise BitstreamError(f"a stream of codec family {header.family}, not of this family ({stream_id})")
    config, offset = read_config(f)
    # no chunk is longer than the file: a damaged length is refused before a buffer is made for it
    chunks = iter_chunks(f, offset=offset, max_chunk_bytes=os.fstat(f.fileno()).st_size)
    if config.latent_frames != latent_frames_for(header.frames):
        raise BitstreamError("CONFIG chunk does not match the header's frame count")
    return header, config, chunks


def _plan(path: Path, stream_id: int) -> _Plan:
    """Read the whole stream once (CRCs, order, END) and add up its bytes per scale."""
    with open(path, "rb") as f:
        header, config, chunks = _open(f, stream_id)
        scale_bytes = [0] * config.kept_scales
        for _, scales in read_groups(config, chunks):
            for part in scales:
                payload = frames_payload(part.group, part.scale, part.check, part.coded)
                scale_bytes[part.scale - 1] += len(chunk_bytes(ChunkType.FRAMES, payload))
    return _Plan(header, config, scale_bytes)


def truncate_stream(
    source: str | os.PathLike, output: str | os.PathLike, stream_id: int, scales: int | None = None, max_bytes: int | None = None
) -> dict[str, Any]:
    """Write to ``output`` the stream ``source`` cut to its first ``scales`` scales, or to the most
    scales whose stream fits ``max_bytes`` (exactly one of the two). No model, no decoding: the
    FRAMES chunks of finer scales are dropped, CONFIG says how many are kept, END is rewritten.

    Returns ``{"scales", "of_scales", "bytes", "source_bytes"}``. A damaged source is a
    BitstreamError; a cut that cannot be made (more scales than the stream holds, a budget
    below one scale) a ValueError, both in one line. ``output`` is written as given: the
    caller makes it atomic (``gvc truncate`` writes through ``safe_output.atomic_output``).
    """
    if (scales is None) == (max_bytes is None):
        raise ValueError("give the scales to keep or a byte budget (exactly one)")
    source = Path(source)
    if not source.is_file():
        raise BitstreamError(f"no bitstream at {source}")
    plan = _plan(source, stream_id)
    held = plan.config.kept_scales
    if scales is not None:
        if not 1 <= scales <= held:
            raise ValueError(f"--scales {scales}: this stream holds scales 1..{held} (of the codec's {plan.config.num_scales})")
    else:
        fitting = [k for k in range(1, held + 1) if plan.size(k) <= max_bytes]
        if not fitting:
            raise ValueError(f"--bytes {max_bytes}: even one scale needs {plan.size(1)} bytes")
        scales = fitting[-1]
    config = dataclasses.replace(plan.config, kept_scales=scales)
    with open(source, "rb") as f, open(output, "wb") as out:
        header, _, chunks = _open(f, stream_id)
        out.write(header_bytes(header))
        out.write(chunk_bytes(ChunkType.CONFIG, config.payload()))
        for _, parts in read_groups(plan.config, chunks):
            for part in parts[:scales]:
                out.write(chunk_bytes(ChunkType.FRAMES, frames_payload(part.group, part.scale, part.check, part.coded)))
        out.write(end_marker())
    written = Path(output).stat().st_size
    if written != plan.size(scales):  # the source changed between the two reads
        raise BitstreamError(f"{source} changed while it was cut")
    return {"scales": scales, "of_scales": held, "bytes": written, "source_bytes": source.stat().st_size}
