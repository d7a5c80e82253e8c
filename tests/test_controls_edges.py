"""The edges control: Canny maps on real frames, and their lossless context-adaptive coder."""

from __future__ import annotations

import zlib

import numpy as np
import pytest
import torch

from control_coding_cases import VIDEOS, assert_lossless_and_smaller, assert_refuses_damage, clip
from gvc_train.coding.container import BitstreamError
from gvc_train.coding.controls.payload import seal
from gvc_train.coding.controls.registry import build_coder
from gvc_train.controls.luma import luma_frames
from gvc_train.controls.registry import build_extractor


@pytest.mark.parametrize("video", VIDEOS)
def test_edges_lie_on_strong_gradients(video: str) -> None:
    import cv2

    frames = clip(video)
    edges = build_extractor("edges").extract(frames)
    gray = luma_frames(frames).numpy()
    assert edges.dtype == torch.bool and edges.shape == gray.shape
    for frame, edge in zip(gray, edges.numpy()):
        gx, gy = cv2.Sobel(frame, cv2.CV_32F, 1, 0), cv2.Sobel(frame, cv2.CV_32F, 0, 1)
        magnitude = np.hypot(gx, gy)
        assert 0.001 < edge.mean() < 0.3
        # carphone (11% edges): 3.7-3.9x the frame's mean, median above its 90th percentile; bikes (1%): 18-20x
        assert magnitude[edge].mean() > 3 * magnitude.mean()
        assert np.median(magnitude[edge]) > np.percentile(magnitude, 90)


def test_edges_settings() -> None:
    frames = clip("carphone_pristine.mp4")
    dense = build_extractor("edges", low=20, high=40).extract(frames)
    sparse = build_extractor("edges", low=100, high=200, blur=1.5).extract(frames)
    assert dense.sum() > 2 * sparse.sum()
    assert tuple(build_extractor("edges", factor=2).extract(frames).shape[1:]) == (72, 88)
    assert build_extractor("edges", low=1, high=2).settings()["high"] == 2.0
    with pytest.raises(ValueError, match="low <= high"):
        build_extractor("edges", low=200, high=100)
    with pytest.raises(ValueError, match="aperture"):
        build_extractor("edges", aperture=4)


def _baselines(edges: torch.Tensor) -> dict[str, int]:
    import cv2

    maps = edges.numpy()
    return {
        "zlib": 8 * len(zlib.compress(maps.astype(np.uint8).tobytes(), 9)),
        "packbits+zlib": 8 * len(zlib.compress(np.packbits(maps, axis=-1).tobytes(), 9)),
        "png": sum(8 * len(cv2.imencode(".png", m.astype(np.uint8) * 255, [cv2.IMWRITE_PNG_COMPRESSION, 9])[1]) for m in maps),
    }


@pytest.mark.parametrize("video", VIDEOS)
def test_edges_coder_is_lossless_and_beats_zlib_and_png(video: str) -> None:
    edges = build_extractor("edges").extract(clip(video))
    assert_lossless_and_smaller([build_coder("edges"), build_coder("edges", temporal=False)], edges, _baselines(edges), 0.85)


def test_edges_coder_odd_sizes_and_extremes() -> None:
    generator = torch.Generator().manual_seed(0)
    coder = build_coder("edges")
    for shape in [(1, 1, 1), (2, 1, 9), (3, 7, 1), (2, 5, 6), (2, 13, 11), (1, 33, 2)]:
        for edges in (torch.rand(shape, generator=generator) < 0.3, torch.ones(shape, dtype=torch.bool),
                      torch.zeros(shape, dtype=torch.bool)):
            assert torch.equal(coder.decode(coder.encode(edges)), edges)
    empty = torch.zeros(0, 3, 4, dtype=torch.bool)
    assert coder.decode(coder.encode(empty)).shape == (0, 3, 4)
    nothing = coder.encode(torch.zeros(4, 144, 176, dtype=torch.bool))
    assert len(nothing) < 40  # empty maps cost next to nothing


def test_edges_coder_refuses_damage_and_foreign_payloads() -> None:
    edges = build_extractor("edges").extract(clip("carphone_pristine.mp4"))[:2]
    coder = build_coder("edges")
    data = assert_refuses_damage(coder, edges, b"E1", "edges")
    with pytest.raises(BitstreamError, match="temporal"):
        build_coder("edges", temporal=False).decode(data)
    with pytest.raises(BitstreamError, match="not a edges payload"):
        coder.decode(b"L1" + data[2:])
    with pytest.raises(BitstreamError, match="more than"):
        coder.decode(seal(b"E1", [65535, 16384, 16384, 1], b""))
    with pytest.raises(ValueError, match="torch.bool"):
        coder.encode(edges.to(torch.uint8))
