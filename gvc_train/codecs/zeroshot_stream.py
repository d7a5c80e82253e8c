"""The zero-shot family's stream layout, without torch (``gvc info`` reads it).

::

    header                      family, codec fingerprint, size, frames, fps (coding/container.py)
    CONFIG                      ZeroShotConfig: mode, codebook size, atoms per step (and the I2V
                                tail's), sampler settings, seed, GOP length, keyframe quality
    TEXT                        the caption (UTF-8), when the stream sends one
    per GOP g, in order:
      FRAMES                    a coded keyframe (frame index, model check, rANS bytes: the
                                controlled family's keyframe payload): frame 0 of GOP 0 for i2v
                                and flf2v, and every GOP's closing frame for flf2v
      ATOMS                     varint g, a 4-byte trajectory check, the GOP's atom sets
                                (coding/atom_sets.py), step-major then latent frame
    END

GOPs share their boundary frame: GOP ``g`` runs from frame ``s_g`` to ``s_g + gop_frames - 1``
(the last one to the video's end), ``s_{g+1}`` is GOP ``g``'s last frame.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Iterator
from typing import Any

from gvc_train.codecs.controlled_stream import MAX_STEPS, bits_float, float_bits, parse_keyframe
from gvc_train.codecs.stream_layout import ConfigChunk, indexed_payload, parse_indexed
from gvc_train.coding.container import BitstreamError, Chunk, ChunkType, StreamHeader

STREAM_VERSION = 1
MODES = ("t2v", "i2v", "flf2v")  # models/codebook/generator.py's, by index (no torch here)
TRAJECTORY_CHECK_BYTES = 4
MAX_CODEBOOK = 1 << 24
MAX_ATOMS = 4096  # atoms a step and latent frame: bounds what a decoder draws (M x D values) and unranks
# A GOP's atoms are one mixed-radix integer (coding/atom_sets.py): its arithmetic grows with the
# square of its size, so a GOP's atoms are bounded (coding.atom_sets.size_bound, checked before
# any big-integer work): 256 kB, ten times GVC's 720p i2v GOP at M = 128 (~25 kB).
MAX_ATOM_BYTES = 1 << 18
MAX_GOP_FRAMES = 4097
MAX_CAPTION_BYTES = 4096

__all__ = ["float_bits", "ZeroShotConfig", "gop_bounds", "atoms_payload", "parse_atoms", "describe_chunks"]


@dataclasses.dataclass(frozen=True)
class ZeroShotConfig(ConfigChunk):
    version = STREAM_VERSION
    stream_name = "zero-shot stream"

    mode: int
    codebook_size: int
    atoms: int  # atoms per step and coded latent frame
    tail_frames: int  # i2v: the last latent frames that get tail_atoms instead
    tail_atoms: int
    num_steps: int
    ode_tail: int  # the last steps are deterministic
    shift_bits: int
    g_scale_bits: int
    g_power_bits: int
    guidance_bits: int
    seed: int
    gop_frames: int
    keyframe_quality: int
    has_caption: int

    @property
    def mode_name(self) -> str:
        return MODES[self.mode]

    @property
    def shift(self) -> float:
        return bits_float(self.shift_bits)

    @property
    def g_scale(self) -> float:
        return bits_float(self.g_scale_bits)

    @property
    def g_power(self) -> float:
        return bits_float(self.g_power_bits)

    @property
    def guidance_scale(self) -> float:
        return bits_float(self.guidance_bits)

    def check(self) -> None:
        if self.mode >= len(MODES) or self.has_caption > 1:
            raise BitstreamError("CONFIG chunk: mode or caption flag out of range")
        if not 2 <= self.codebook_size <= MAX_CODEBOOK:
            raise BitstreamError(f"codebook size {self.codebook_size} outside 2..{MAX_CODEBOOK}")
        top = min(self.codebook_size, MAX_ATOMS)
        if not (1 <= self.atoms <= top and 1 <= self.tail_atoms <= top):
            raise BitstreamError(f"atoms per step {self.atoms} / {self.tail_atoms} outside 1..{top} (the codebook, at most {MAX_ATOMS})")
        if not (1 <= self.num_steps <= MAX_STEPS and 1 <= self.ode_tail <= self.num_steps):
            raise BitstreamError(f"sampling steps {self.num_steps} with a deterministic tail of {self.ode_tail}: out of range")
        if not 2 <= self.gop_frames <= MAX_GOP_FRAMES or self.tail_frames > MAX_GOP_FRAMES or self.seed >= 2**63:
            raise BitstreamError(f"GOP of {self.gop_frames} frames, tail of {self.tail_frames} or seed out of range")
        if any(b >= 2**64 for b in (self.shift_bits, self.g_scale_bits, self.g_power_bits, self.guidance_bits)):
            raise BitstreamError("CONFIG chunk: a sampling setting is out of range")
        values = (self.shift, self.g_scale, self.g_power, self.guidance_scale)
        if not (all(math.isfinite(v) for v in values) and 1e-3 <= self.shift <= 1e3 and 0 <= self.g_scale <= 100
                and -10 <= self.g_power <= 10 and 0 <= self.guidance_scale <= 100):  # fmt: skip
            raise BitstreamError(f"CONFIG chunk: shift, g(t) or guidance out of bounds ({values})")


def gop_bounds(frames: int, gop_frames: int) -> Iterator[tuple[int, int]]:
    """``(first, last)`` frames of each GOP in turn (both included; neighbours share a frame). One
    frame alone is one GOP ``(0, 0)``. A generator: a forged frame count costs nothing up front."""
    if frames < 1:
        raise ValueError("a video has one frame at least")
    start = 0
    while True:
        last = min(start + gop_frames - 1, frames - 1)
        yield start, last
        if last == frames - 1:
            return
        start = last


def atoms_payload(gop: int, check: bytes, packed: bytes) -> bytes:
    return indexed_payload(gop, check, packed)


def parse_atoms(chunk: Chunk) -> tuple[int, bytes, bytes]:
    """``(gop, trajectory check, packed atom sets)`` of an ATOMS chunk."""
    return parse_indexed(chunk, ChunkType.ATOMS, "ATOMS", TRAJECTORY_CHECK_BYTES)


def parse_caption(chunk: Chunk) -> str:
    if chunk.type != ChunkType.TEXT:
        raise BitstreamError(f"chunk at byte {chunk.offset} is {chunk.type.name}, expected the caption's TEXT")
    try:
        return chunk.payload.decode("utf-8")
    except UnicodeDecodeError:
        raise BitstreamError(f"the caption at byte {chunk.offset} is not UTF-8 text") from None


def describe_chunks(header: StreamHeader, chunks: Iterable[Chunk]) -> list[dict[str, Any]]:
    """``gvc info``'s rows (header, CONFIG with its settings, TEXT, a row per keyframe and per GOP's
    atoms, END); their ``bytes`` sum to the file's size. Reads chunk by chunk."""
    rows: list[dict[str, Any]] = []
    end = 0
    for chunk in chunks:
        if not rows:
            rows.append({"type": "HEADER", "offset": 0, "bytes": chunk.offset})
        row: dict[str, Any] = {"type": chunk.type.name, "offset": chunk.offset, "bytes": chunk.size}
        if chunk.type == ChunkType.CONFIG:
            config = ZeroShotConfig.parse(chunk.payload)
            row.update(
                mode=config.mode_name, codebook_size=config.codebook_size, atoms=config.atoms, tail_frames=config.tail_frames,
                tail_atoms=config.tail_atoms, num_steps=config.num_steps, ode_tail=config.ode_tail, shift=config.shift,
                g_scale=config.g_scale, g_power=config.g_power, guidance_scale=config.guidance_scale, seed=config.seed,
                gop_frames=config.gop_frames, keyframe_quality=config.keyframe_quality,
            )  # fmt: skip
        elif chunk.type == ChunkType.FRAMES:
            frame, _, _ = parse_keyframe(chunk)
            row.update(keyframe=frame)
        elif chunk.type == ChunkType.ATOMS:
            gop, _, packed = parse_atoms(chunk)
            row.update(gop=gop, atom_bytes=len(packed))
        elif chunk.type == ChunkType.TEXT:
            row.update(caption=parse_caption(chunk))
        rows.append(row)
        end = chunk.offset + chunk.size
    rows.append({"type": "END", "offset": end, "bytes": 1})
    return rows
