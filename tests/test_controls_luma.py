"""The luma control: BT.601 luma at a lower resolution, and its predictive coder (lossless or within max_error)."""

from __future__ import annotations

import zlib

import numpy as np
import pytest
import torch

from control_coding_cases import VIDEOS, assert_refuses_damage, clip
from gvc_train.coding.container import BitstreamError
from gvc_train.coding.controls.payload import seal
from gvc_train.coding.controls.registry import build_coder
from gvc_train.controls.registry import build_extractor


@pytest.mark.parametrize("video", VIDEOS)
def test_luma_is_bt601_of_the_area_downsampled_frame(video: str) -> None:
    frames = clip(video)
    luma = build_extractor("luma", factor=4).extract(frames)
    rgb = frames.permute(1, 2, 3, 0).double().numpy() * 255  # T x H x W x 3
    t, h, w, _ = rgb.shape
    blocks = rgb.reshape(t, h // 4, 4, w // 4, 4, 3).mean((2, 4))
    expected = np.round(blocks @ np.array([0.299, 0.587, 0.114]))
    assert luma.dtype == torch.uint8 and tuple(luma.shape) == (t, h // 4, w // 4)
    difference = np.abs(luma.numpy().astype(float) - expected)
    assert difference.max() <= 1 and difference.mean() < 0.01  # float32 vs float64 rounding at .5 only


def test_luma_sizes_and_settings() -> None:
    frames = torch.rand(3, 2, 30, 17)
    assert tuple(build_extractor("luma", factor=4).extract(frames).shape) == (2, 7, 4)
    assert tuple(build_extractor("luma", factor=1).extract(frames).shape) == (2, 30, 17)
    assert build_extractor("luma", factor=3).settings() == {"factor": 3}
    with pytest.raises(ValueError, match="factor"):
        build_extractor("luma", factor=0)
    with pytest.raises(ValueError, match="3 x T x H x W"):
        build_extractor("luma").extract(torch.rand(2, 30, 17))


def _png_bits(luma: torch.Tensor) -> int:
    import cv2

    return sum(8 * len(cv2.imencode(".png", frame, [cv2.IMWRITE_PNG_COMPRESSION, 9])[1]) for frame in luma.numpy())


@pytest.mark.parametrize("video", VIDEOS)
def test_luma_coder_is_lossless_and_beats_zlib_and_png(video: str) -> None:
    luma = build_extractor("luma").extract(clip(video))
    coder = build_coder("luma")
    data = coder.encode(luma)
    assert torch.equal(coder.decode(data), luma)
    assert coder.encode(luma) == data  # deterministic: integer arithmetic only
    bits = 8 * len(data)
    assert bits < 0.8 * 8 * len(zlib.compress(luma.numpy().tobytes(), 9))
    assert bits < 0.8 * _png_bits(luma)
    spatial = build_coder("luma", temporal=False)
    assert torch.equal(spatial.decode(spatial.encode(luma)), luma)


@pytest.mark.parametrize("max_error", [1, 3])
def test_luma_coder_within_max_error(max_error: int) -> None:
    luma = build_extractor("luma").extract(clip("carphone_pristine.mp4"))
    coder = build_coder("luma", max_error=max_error)
    data = coder.encode(luma)
    back = coder.decode(data)
    assert not coder.lossless
    assert int((back.int() - luma.int()).abs().max()) <= max_error
    assert len(data) < len(build_coder("luma").encode(luma))


def test_luma_coder_odd_sizes_extremes_and_no_frames() -> None:
    generator = torch.Generator().manual_seed(0)
    for shape in [(1, 1, 1), (2, 1, 9), (3, 7, 1), (2, 5, 6), (1, 13, 11)]:
        for luma in (torch.randint(0, 256, shape, generator=generator, dtype=torch.uint8),
                     torch.full(shape, 255, dtype=torch.uint8), torch.zeros(shape, dtype=torch.uint8)):
            for coder in (build_coder("luma"), build_coder("luma", max_error=2)):
                back = coder.decode(coder.encode(luma))
                assert int((back.int() - luma.int()).abs().max()) <= coder.max_error
    empty = torch.zeros(0, 4, 5, dtype=torch.uint8)
    assert build_coder("luma").decode(build_coder("luma").encode(empty)).shape == (0, 4, 5)


def test_luma_coder_refuses_damage_and_foreign_payloads() -> None:
    luma = build_extractor("luma").extract(clip("bikes.mp4"))[:2]
    coder = build_coder("luma")
    data = assert_refuses_damage(coder, luma, b"L1", "luma")
    with pytest.raises(BitstreamError, match="max_error"):
        build_coder("luma", max_error=1).decode(data)
    with pytest.raises(BitstreamError, match="not a luma payload"):
        coder.decode(b"E1" + data[2:])
    with pytest.raises(BitstreamError, match="more than"):  # refused before allocating 64k x 16k x 16k
        coder.decode(seal(b"L1", [65535, 16384, 16384, 0, 1], b""))
    with pytest.raises(ValueError, match="torch.uint8"):
        coder.encode(luma.float())
    with pytest.raises(ValueError, match="max_error"):
        build_coder("luma", max_error=-1)


def test_interlaced_order_reads_only_pixels_known_before() -> None:
    """Every pixel is coded once, and every neighbour a phase reads was coded before it."""
    from gvc_train.coding.controls.interlace import TEMPLATES, phases
    from gvc_train.coding.controls.predictive import _PAIRS

    for kind, pairs in _PAIRS.items():
        assert {offset for pair in pairs for offset in pair} <= set(TEMPLATES[kind])
    for height, width in [(1, 1), (1, 7), (6, 1), (2, 3), (5, 8), (9, 9), (13, 6), (36, 44)]:
        known = np.zeros(height * width, dtype=bool)
        for phase in phases(height, width):
            if phase.kind != "base":
                assert known[phase.neighbours(TEMPLATES[phase.kind])].all(), (height, width, phase.level, phase.kind)
            assert not known[phase.index].any()
            known[phase.index] = True
        assert known.all()
