"""Stream-layout pieces shared by the families that code tokenizer latents, without torch.

A family's layout module (its CONFIG fields, its FRAMES payload, its ``gvc info`` rows) builds on
these: ``gvc info`` and ``gvc truncate`` read streams with them and never import torch.

* CONFIG is a version varint, then one varint per field of the family's frozen dataclass, in
  field order, and nothing after them (:class:`ConfigChunk`); :func:`read_config_chunk` reads it
  first, alone, under a bound the caller gives.
* Latent frames run in time as the tokenizer makes them: the first video frame alone, then
  ``temporal_stride`` frames per latent frame (:func:`latent_frames_for`). A family codes them in
  runs of ``n`` latent frames (a chunk, a group); :func:`run_count`, :func:`run_latents` and
  :func:`video_frames_of_run` say how many runs, how many latent frames in one, and the video
  frames it decodes to.
* :func:`describe_rows`: ``gvc info``'s per-chunk rows, with the family's own FRAMES fields.
"""

from __future__ import annotations

import dataclasses
import io
import math
from collections.abc import Callable, Iterable
from typing import Any, BinaryIO, ClassVar, TypeVar

from gvc_train.coding.container import BitstreamError, Chunk, ChunkType, encode_varint, iter_chunks, read_varint
from gvc_train.coding.controls.track import describe_controls

Config = TypeVar("Config", bound="ConfigChunk")


class ConfigChunk:
    """The base of a family's CONFIG: a frozen dataclass of unsigned integer fields, coded as
    ``version``, then the fields in order, as varints, and nothing after them.

    A family sets ``version`` and ``stream_name`` (for the version error: ``"<stream_name>
    version 3; this gvc_train reads 2"``) and may add bounds in :meth:`check`."""

    version: ClassVar[int]
    stream_name: ClassVar[str]

    def payload(self) -> bytes:
        return b"".join(encode_varint(v) for v in (self.version, *dataclasses.astuple(self)))  # type: ignore[call-overload]

    @classmethod
    def parse(cls: type[Config], payload: bytes) -> Config:
        """The config in a CONFIG payload; BitstreamError on another version, a short payload,
        bytes after the last field, or a field :meth:`check` refuses."""
        stream = io.BytesIO(payload)
        found = read_varint(stream, "CONFIG chunk")
        if found != cls.version:
            raise BitstreamError(f"{cls.stream_name} version {found}; this gvc_train reads {cls.version}")
        fields = [read_varint(stream, "CONFIG chunk") for _ in dataclasses.fields(cls)]  # type: ignore[arg-type]
        if stream.read(1):
            raise BitstreamError("CONFIG chunk is longer than its fields")
        config = cls(*fields)
        config.check()
        return config

    def check(self) -> None:
        """Bounds that need no model: BitstreamError before anything is allocated (none here)."""


def indexed_payload(index: int, check: bytes, body: bytes) -> bytes:
    """A payload that opens with an index (varint) and a fixed-size check: a controlled keyframe
    (frame index, model check), a zero-shot GOP's atoms (GOP index, trajectory check)."""
    return encode_varint(index) + check + body


def parse_indexed(chunk: Chunk, chunk_type: ChunkType, what: str, check_bytes: int) -> tuple[int, bytes, bytes]:
    """``(index, check, body)`` of an :func:`indexed_payload` chunk of type ``chunk_type``;
    BitstreamError (naming ``what``) for another type or a payload shorter than its check."""
    if chunk.type != chunk_type:
        raise BitstreamError(f"chunk at byte {chunk.offset} is {chunk.type.name}, expected {what}")
    stream = io.BytesIO(chunk.payload)
    index = read_varint(stream, f"{what} chunk at byte {chunk.offset}")
    check = stream.read(check_bytes)
    if len(check) != check_bytes:
        raise BitstreamError(f"{what} chunk at byte {chunk.offset} is shorter than its check")
    return index, check, stream.read()


def read_config_chunk(f: BinaryIO, max_bytes: int) -> tuple[bytes, int]:
    """The payload of the CONFIG chunk at ``f``'s position (at most ``max_bytes``: a damaged
    length is refused before it is read) and the offset of the chunk after it."""
    first = next(iter_chunks(f, offset=f.tell(), max_chunk_bytes=max_bytes), None)
    if first is None or first.type != ChunkType.CONFIG:
        raise BitstreamError("stream does not start with a CONFIG chunk")
    return first.payload, first.offset + first.size


def latent_frames_for(frames: int, temporal_stride: int = 4) -> int:
    """Latent frames that cover ``frames`` video frames (the first alone, then 4 per latent)."""
    return 1 + math.ceil((frames - 1) / temporal_stride)


def run_count(latent_frames: int, latents_per_run: int) -> int:
    """Runs (chunks, groups) of ``latents_per_run`` latent frames that hold ``latent_frames``."""
    return math.ceil(latent_frames / latents_per_run)


def run_latents(index: int, latents_per_run: int, latent_frames: int) -> int:
    """Latent frames in run ``index`` (the last may be short)."""
    return min(latents_per_run, latent_frames - index * latents_per_run)


def video_frames_of_run(index: int, latents_per_run: int, frames: int, temporal_stride: int = 4) -> tuple[int, int]:
    """``[first, stop)`` video frames that run ``index`` decodes to (after the count is cut to ``frames``)."""

    def start_of(latent: int) -> int:
        return 0 if latent == 0 else 1 + (latent - 1) * temporal_stride

    return min(start_of(index * latents_per_run), frames), min(start_of((index + 1) * latents_per_run), frames)


# describe_frames(chunk, config, n) -> the FRAMES chunk's own fields, and the [first, stop) video
# frames it covers; n counts the FRAMES chunks before it.
FramesDescriber = Callable[[Chunk, Any, int], tuple[dict[str, Any], tuple[int, int]]]


def describe_rows(chunks: Iterable[Chunk], parse: Callable[[bytes], Any], describe_frames: FramesDescriber) -> list[dict[str, Any]]:
    """Per chunk: type, offset, bytes; CONFIG's fields (``parse``: payload -> the family's config
    dataclass); for FRAMES, the family's fields, the video frames it covers and its bits per
    frame; for the control table and CONTROLS, their names, segment and coded bytes. Reads chunk
    by chunk: memory is one chunk."""
    rows: list[dict[str, Any]] = []
    config: Any = None
    control_names: list[str] | None = None
    frames_index = 0
    for chunk in chunks:
        row: dict[str, Any] = {"type": chunk.type.name, "offset": chunk.offset, "bytes": chunk.size}
        if chunk.type == ChunkType.CONFIG:
            config = parse(chunk.payload)
            row.update(dataclasses.asdict(config))
        elif chunk.type == ChunkType.FRAMES and config is not None:
            fields, (first, stop) = describe_frames(chunk, config, frames_index)
            row.update(fields, first_frame=first, frames=stop - first)
            if stop > first:
                row["bits_per_frame"] = chunk.size * 8 / (stop - first)
            frames_index += 1
        elif chunk.type in (ChunkType.CONTROL_TABLE, ChunkType.CONTROLS):
            row.update(describe_controls(chunk, control_names))
            control_names = row.get("controls", control_names)
        rows.append(row)
    return rows

