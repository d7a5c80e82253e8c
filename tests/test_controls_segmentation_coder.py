"""The segmentation coder: lossless on carphone's real selfie segmentation (mediapipe, in its
own venv) and on a synthetic 5-class map, smaller than zlib and PNG; ``factor``'s stated
error; damaged payloads refused in one line."""

from __future__ import annotations

import functools
import zlib

import numpy as np
import pytest
import torch

from control_coding_cases import assert_lossless_and_smaller, assert_refuses_damage, clip
from gvc_train.coding.container import BitstreamError
from gvc_train.coding.controls.payload import seal
from gvc_train.coding.controls.registry import build_coder
from gvc_train.coding.controls.segmentation import block_modes
from gvc_train.controls.registry import build_extractor


@functools.lru_cache(maxsize=1)
def _carphone_selfie() -> torch.Tensor:
    return build_extractor("segmentation").extract(clip("carphone_pristine.mp4"))


def _moving_blobs(frames: int = 6, height: int = 144, width: int = 176, classes: int = 5) -> torch.Tensor:
    """Labels 1..classes-1 on discs that move 0-2 pixels a frame over a background 0."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:height, 0:width]
    discs = [(rng.uniform(0, height), rng.uniform(0, width), rng.uniform(15, 40), rng.uniform(-2, 2, 2), 1 + k % (classes - 1))
             for k in range(6)]
    maps = np.zeros((frames, height, width), dtype=np.uint8)
    for t in range(frames):
        for cy, cx, radius, (vy, vx), label in discs:
            maps[t][(yy - cy - vy * t) ** 2 + ((xx - cx - vx * t) * 1.3) ** 2 < radius**2] = label
    return torch.from_numpy(maps)


def _baselines(labels: torch.Tensor) -> dict[str, int]:
    import cv2

    maps = labels.numpy()
    found = {
        "zlib": 8 * len(zlib.compress(maps.tobytes(), 9)),
        "png": sum(8 * len(cv2.imencode(".png", m, [cv2.IMWRITE_PNG_COMPRESSION, 9])[1]) for m in maps),
    }
    if maps.max() <= 1:
        found["packbits+zlib"] = 8 * len(zlib.compress(np.packbits(maps, axis=-1).tobytes(), 9))
    return found


@pytest.mark.parametrize("case", ["carphone selfie", "5-class blobs"])
def test_segmentation_coder_is_lossless_and_beats_zlib_and_png(case: str) -> None:
    labels = _carphone_selfie() if case == "carphone selfie" else _moving_blobs()
    assert len(labels.unique()) == (2 if case == "carphone selfie" else 5)
    # measured: carphone (4 frames) 0.36x packbits+zlib, blobs 0.2x zlib
    coders = [build_coder("segmentation"), build_coder("segmentation", temporal=False)]
    assert_lossless_and_smaller(coders, labels, _baselines(labels), 0.5)


def test_segmentation_factor_keeps_each_blocks_most_common_label() -> None:
    labels = _moving_blobs(frames=3, height=37, width=45)
    for factor in (2, 3, 8):
        coder = build_coder("segmentation", factor=factor)
        assert not coder.lossless
        data = coder.encode(labels)
        decoded = coder.decode(data)
        assert decoded.shape == labels.shape and decoded.dtype == torch.uint8
        modes = block_modes(labels.numpy().astype(np.int64), factor, 5)
        assert np.array_equal(decoded.numpy()[:, ::factor, ::factor], modes)
        for y0 in range(0, 37, factor):  # every decoded label is one of its own block's
            for x0 in range(0, 45, factor):
                block = labels[:, y0:y0 + factor, x0:x0 + factor].reshape(3, -1)
                chosen = decoded[:, y0, x0]
                assert all(chosen[t] in block[t] for t in range(3))
        assert len(data) < len(build_coder("segmentation").encode(labels))
    noise = np.random.default_rng(0).integers(0, 4, (2, 11, 13))  # many ties: the lowest label wins
    for factor in (2, 3, 5):
        modes = block_modes(noise, factor, 4)
        for y in range(modes.shape[1]):
            for x in range(modes.shape[2]):
                block = noise[:, y * factor:(y + 1) * factor, x * factor:(x + 1) * factor].reshape(2, -1)
                assert [np.bincount(b, minlength=4).argmax() for b in block] == modes[:, y, x].tolist()


def test_segmentation_coder_odd_sizes_and_extremes() -> None:
    generator = torch.Generator().manual_seed(0)
    coder = build_coder("segmentation")
    for shape in [(1, 1, 1), (2, 1, 9), (3, 7, 1), (2, 13, 11), (1, 33, 2)]:
        for classes in (2, 3, 256):
            labels = torch.randint(0, classes, shape, generator=generator, dtype=torch.uint8)
            assert torch.equal(coder.decode(coder.encode(labels)), labels)
        for value in (0, 1, 255):
            flat = torch.full(shape, value, dtype=torch.uint8)
            assert torch.equal(coder.decode(coder.encode(flat)), flat)
    assert coder.decode(coder.encode(torch.zeros(0, 3, 4, dtype=torch.uint8))).shape == (0, 3, 4)
    assert len(coder.encode(torch.zeros(16, 272, 640, dtype=torch.uint8))) < 20  # bikes: selfie finds no one
    assert len(coder.encode(torch.ones(8, 144, 176, dtype=torch.uint8))) < 40


def test_segmentation_coder_settings_round_trip() -> None:
    coder = build_coder("segmentation", factor=4, temporal=False)
    assert coder.settings() == {"factor": 4, "temporal": False}
    again = build_coder("segmentation", **coder.settings())
    labels = _moving_blobs(frames=2, height=20, width=24)
    assert again.decode(coder.encode(labels)).shape == labels.shape
    assert build_coder("segmentation").lossless
    for factor in (0, 65, 1.5, True):
        with pytest.raises(ValueError, match="factor"):
            build_coder("segmentation", factor=factor)


def test_segmentation_coder_refuses_damage_and_foreign_payloads() -> None:
    labels = _moving_blobs(frames=2, height=48, width=64)
    coder = build_coder("segmentation")
    data = assert_refuses_damage(coder, labels, b"S1", "segmentation")
    with pytest.raises(BitstreamError, match="temporal"):
        build_coder("segmentation", temporal=False).decode(data)
    with pytest.raises(BitstreamError, match="factor"):
        build_coder("segmentation", factor=2).decode(data)
    with pytest.raises(BitstreamError, match="not a segmentation payload"):
        coder.decode(b"E1" + data[2:])
    with pytest.raises(BitstreamError, match="more than"):  # refused before anything is allocated
        coder.decode(seal(b"S1", [65535, 16384, 16384, 1, 2, 1], b""))
    with pytest.raises(BitstreamError, match="classes"):
        coder.decode(seal(b"S1", [1, 4, 4, 1, 257, 1], b""))
    with pytest.raises(ValueError, match="torch.uint8"):
        coder.encode(labels.to(torch.bool))
