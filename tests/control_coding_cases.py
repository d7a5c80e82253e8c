"""Shared by the luma, edges and flow control tests: a few real frames, and the fuzz check of a payload."""

from __future__ import annotations

import functools
import struct
import zlib
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from gvc_train.coding.container import BitstreamError

VIDEOS = ("carphone_pristine.mp4", "bikes.mp4")


@functools.lru_cache(maxsize=4)
def clip(name: str, frames: int = 4) -> torch.Tensor:
    """The first ``frames`` frames of a sample video: ``3 x T x H x W`` float32 in [0, 1]."""
    from gvc_train.data.sample_videos import sample_video
    from gvc_train.data.video_io import read_frames
    from gvc_train.frames import frames_to_tensor

    return frames_to_tensor(read_frames(sample_video(name), count=frames))[0]


def resealed(data: bytes) -> bytes:
    """``data`` with its CRC recomputed: a forged payload, which only the decoder's own checks stop."""
    return data[:2] + struct.pack("<I", zlib.crc32(data[6:])) + data[6:]


def fuzz(decode: Callable[[bytes], Any], data: bytes, body_start: int, seed: int = 0, flips: int = 12) -> dict[str, int]:
    """Truncations and byte flips of ``data``: each must decode or raise BitstreamError (nothing
    else). Flips of the body are also tried with the CRC made valid again (only the entropy
    decoder's checks left). Returns how many of each outcome, for the caller to check."""
    rng = np.random.default_rng(seed)
    outcomes = {"decoded": 0, "refused": 0}
    damaged = [data[:n] for n in sorted({0, 1, 2, 5, 6, body_start, len(data) // 2, len(data) - 4, len(data) - 1})]
    for position in rng.integers(0, len(data), flips):
        flipped = bytearray(data)
        flipped[position] ^= 1 << int(rng.integers(0, 8))
        damaged.append(bytes(flipped))
    for position in rng.integers(body_start, len(data), flips):
        flipped = bytearray(data)
        flipped[position] ^= 1 << int(rng.integers(0, 8))
        damaged.append(resealed(bytes(flipped)))
    damaged.append(resealed(data[: (body_start + len(data)) // 2]))  # truncated body, CRC valid
    for payload in damaged:
        try:
            decode(payload)
        except BitstreamError as error:
            assert "\n" not in str(error)
            outcomes["refused"] += 1
        else:
            outcomes["decoded"] += 1
    return outcomes


def assert_lossless_and_smaller(coders: list[Any], control: torch.Tensor, baselines: dict[str, float], ratio: float) -> bytes:
    """Each coder round-trips ``control`` exactly, writes the same bytes twice (integer arithmetic
    only) and fewer than ``ratio`` times every baseline's bits; the first coder's bytes."""
    first = None
    for coder in coders:
        data = coder.encode(control)
        assert torch.equal(coder.decode(data), control), coder.settings()
        assert coder.encode(control) == data, "coding twice gives other bytes"
        for name, bits in baselines.items():
            assert 8 * len(data) < ratio * bits, (coder.settings(), name, 8 * len(data), bits)
        first = data if first is None else first
    return first


def assert_refuses_damage(coder: Any, control: Any, tag: bytes, name: str) -> bytes:
    """Truncations and flips of ``coder``'s payload of ``control`` are refused at least as often as
    they decode, each in one BitstreamError (``fuzz``); the payload."""
    from gvc_train.coding.controls.payload import PayloadReader

    data = coder.encode(control)
    outcomes = fuzz(coder.decode, data, len(data) - len(PayloadReader(data, tag, name).body()))
    assert outcomes["refused"] >= outcomes["decoded"], outcomes
    return data
