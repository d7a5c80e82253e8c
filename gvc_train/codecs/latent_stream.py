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
from collections.abc import Iterable
from typing import Any

from gvc_train.codecs.stream_layout import ConfigChunk, describe_rows, latent_frames_for, run_count, video_frames_of_run  # noqa: F401 (re-exported)
from gvc_train.coding.container import Chunk, StreamHeader

STREAM_VERSION = 2


@dataclasses.dataclass(frozen=True)
class StreamConfig(ConfigChunk):
    version = STREAM_VERSION
    stream_name = "latent stream"

    quality: int
    latents_per_chunk: int
    latent_frames: int
    latent_height: int
    latent_width: int

    def num_chunks(self) -> int:
        return run_count(self.latent_frames, self.latents_per_chunk)


video_frames_of_chunk = video_frames_of_run  # [first, stop) video frames of a chunk of latent frames


def describe_chunks(header: StreamHeader, chunks: Iterable[Chunk]) -> list[dict[str, Any]]:
    """Per chunk: type, offset, bytes, and for FRAMES chunks the video frames it covers and bits/frame."""

    def frames(chunk: Chunk, config: StreamConfig, index: int) -> tuple[dict[str, Any], tuple[int, int]]:
        return {}, video_frames_of_chunk(index, config.latents_per_chunk, header.frames)

    return describe_rows(chunks, StreamConfig.parse, frames)
