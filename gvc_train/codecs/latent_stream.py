"""The latent family's stream layout, without torch: ``gvc info`` and the decoder's checks.

Inside the container of ``coding/container.py`` (family LATENT)::

    CONFIG   varints: stream version, quality, latents per chunk, latent frames, latent h, latent w
    FRAMES   one per chunk of latent frames: model check (CRC32 of the chunk's y scale indexes and
             reconstructed latents, 4 bytes), then compressai rANS, per latent frame z then y symbols
    END

Version 2 added the model check (and the fixed-point entropy parameters it checks).
"""

from __future__ import annotations

import dataclasses
import io
import math
from collections.abc import Iterable
from typing import Any

from gvc_train.coding.container import BitstreamError, Chunk, ChunkType, StreamHeader, encode_varint, read_varint

STREAM_VERSION = 2


@dataclasses.dataclass(frozen=True)
class StreamConfig:
    quality: int
    latents_per_chunk: int
    latent_frames: int
    latent_height: int
    latent_width: int

    def payload(self) -> bytes:
        values = (STREAM_VERSION, self.quality, self.latents_per_chunk, self.latent_frames, self.latent_height, self.latent_width)
        return b"".join(encode_varint(v) for v in values)

    @classmethod
    def parse(cls, payload: bytes) -> "StreamConfig":
        stream = io.BytesIO(payload)
        version = read_varint(stream, "CONFIG chunk")
        if version != STREAM_VERSION:
            raise BitstreamError(f"latent stream version {version}; this gvc_train reads {STREAM_VERSION}")
        fields = [read_varint(stream, "CONFIG chunk") for _ in range(5)]
        if stream.read(1):
            raise BitstreamError("CONFIG chunk is longer than its fields")
        return cls(*fields)

    def num_chunks(self) -> int:
        return math.ceil(self.latent_frames / self.latents_per_chunk)


def latent_frames_for(frames: int, temporal_stride: int = 4) -> int:
    """Latent frames that cover ``frames`` video frames (the first alone, then 4 per latent)."""
    return 1 + math.ceil((frames - 1) / temporal_stride)


def video_frames_of_chunk(index: int, latents_per_chunk: int, frames: int, temporal_stride: int = 4) -> tuple[int, int]:
    """``[first, stop)`` video frames that chunk ``index`` decodes to (after the count is cut to ``frames``)."""
    first_latent, stop_latent = index * latents_per_chunk, (index + 1) * latents_per_chunk

    def start_of(latent: int) -> int:
        return 0 if latent == 0 else 1 + (latent - 1) * temporal_stride

    return min(start_of(first_latent), frames), min(start_of(stop_latent), frames)


def describe_chunks(header: StreamHeader, chunks: Iterable[Chunk]) -> list[dict[str, Any]]:
    """Per chunk: type, offset, bytes, and for FRAMES chunks the video frames it covers and bits/frame."""
    rows: list[dict[str, Any]] = []
    config: StreamConfig | None = None
    frames_index = 0
    for chunk in chunks:
        row: dict[str, Any] = {"type": chunk.type.name, "offset": chunk.offset, "bytes": chunk.size}
        if chunk.type == ChunkType.CONFIG:
            config = StreamConfig.parse(chunk.payload)
            row.update(dataclasses.asdict(config))
        elif chunk.type == ChunkType.FRAMES and config is not None:
            first, stop = video_frames_of_chunk(frames_index, config.latents_per_chunk, header.frames)
            row.update(first_frame=first, frames=stop - first)
            if stop > first:
                row["bits_per_frame"] = chunk.size * 8 / (stop - first)
            frames_index += 1
        rows.append(row)
    return rows
