"""The flow control: DIS flow on real frames (its warp convention), and its quantizing predictive coder."""

from __future__ import annotations

import zlib

import numpy as np
import pytest
import torch

from control_coding_cases import VIDEOS, assert_refuses_damage, clip
from gvc_train.coding.container import BitstreamError
from gvc_train.coding.controls.flow import coded_grid
from gvc_train.coding.controls.payload import seal
from gvc_train.coding.controls.registry import build_coder
from gvc_train.controls.flow import backward_warp
from gvc_train.controls.luma import luma_frames
from gvc_train.controls.registry import build_extractor


def _warp_errors(frames: torch.Tensor, flow: torch.Tensor) -> tuple[float, float]:
    """Mean absolute luma error of frame t + 1 against frame t warped by flow[t], and against frame t."""
    luma = luma_frames(frames).float()[:, None]
    warped = backward_warp(luma[:-1], flow)
    return float((warped - luma[1:]).abs().mean()), float((luma[:-1] - luma[1:]).abs().mean())


@pytest.mark.parametrize("video", VIDEOS)
def test_flow_warps_frame_t_onto_t_plus_1(video: str) -> None:
    frames = clip(video)
    flow = build_extractor("flow").extract(frames)
    t, height, width = frames.shape[1:]
    assert flow.dtype == torch.float32 and tuple(flow.shape) == (t - 1, 2, height, width)
    warped, still = _warp_errors(frames, flow)
    assert warped < 0.6 * still, (warped, still)  # carphone ~0.5x, bikes ~0.25x
    assert _warp_errors(frames, -flow)[0] > warped  # the other sign is the wrong convention
    assert torch.equal(build_extractor("flow").extract(frames), flow)  # DIS is deterministic


def test_flow_convention_on_a_known_shift() -> None:
    """frame[t + 1](y, x) = frame[t](y, x - 3): flow[t] = (-3, 0) (frame t sampled at x + dx)."""
    import cv2

    texture = cv2.GaussianBlur(np.random.default_rng(0).random((72, 104)).astype(np.float32), (0, 0), 2.0)
    texture = (texture - texture.min()) / (texture.max() - texture.min())
    frame0, frame1 = texture[4:-4, 4:-4], np.roll(texture, 3, axis=1)[4:-4, 4:-4]
    frames = torch.from_numpy(np.stack([frame0, frame1]))[None].expand(3, -1, -1, -1).contiguous()
    flow = build_extractor("flow").extract(frames)[0, :, 8:-8, 8:-8]
    assert abs(float(flow[0].median()) + 3) < 0.2 and abs(float(flow[1].median())) < 0.2


def test_flow_of_one_frame_and_settings() -> None:
    frames = clip("carphone_pristine.mp4")
    assert tuple(build_extractor("flow").extract(frames[:, :1]).shape) == (0, 2, 144, 176)
    assert tuple(build_extractor("flow", preset="ultrafast", factor=2).extract(frames[:, :2]).shape) == (1, 2, 72, 88)
    with pytest.raises(ValueError, match="preset"):
        build_extractor("flow", preset="slow")


@pytest.mark.parametrize("video", VIDEOS)
def test_flow_coder_error_is_within_half_a_step_on_the_coded_grid(video: str) -> None:
    flow = build_extractor("flow", preset="ultrafast").extract(clip(video))
    for factor, step in [(8, 0.125), (2, 0.5)]:
        coder = build_coder("flow", factor=factor, step=step)
        data = coder.encode(flow)
        reference = coded_grid(flow, factor)
        coded = coder.decode_coded(data)
        assert coded.shape == reference.shape
        assert float((coded - reference).abs().max()) <= step / 2 + 1e-5
        decoded = coder.decode(data)
        assert decoded.shape == flow.shape and decoded.dtype == torch.float32
        assert coder.encode(flow) == data
        levels = torch.round(reference / step).to(torch.int16).numpy()
        assert 8 * len(data) < 0.85 * 8 * len(zlib.compress(levels.tobytes(), 9))


def test_flow_coder_is_exact_on_the_step_grid_and_odd_sizes() -> None:
    generator = torch.Generator().manual_seed(0)
    for shape in [(0, 2, 5, 6), (1, 2, 1, 1), (3, 2, 7, 1), (2, 2, 9, 13)]:
        flow = torch.randint(-40, 41, shape, generator=generator).float() * 0.25
        coder = build_coder("flow", factor=1, step=0.25)
        assert torch.equal(coder.decode(coder.encode(flow)), flow)
    still = torch.zeros(5, 2, 36, 44)
    assert len(build_coder("flow").encode(still)) < 40
    big = torch.full((1, 2, 8, 8), 1000.0)  # beyond one symbol alphabet: escapes
    coder = build_coder("flow", factor=1, step=0.5)
    assert torch.equal(coder.decode(coder.encode(big)), big)


def test_flow_coder_refuses_damage_and_foreign_payloads() -> None:
    flow = build_extractor("flow", preset="ultrafast").extract(clip("bikes.mp4")[:, :3])
    coder = build_coder("flow")
    data = assert_refuses_damage(coder, flow, b"F1", "flow")
    with pytest.raises(BitstreamError, match="step"):
        build_coder("flow", step=0.25).decode(data)
    with pytest.raises(BitstreamError, match="more than"):
        coder.decode(seal(b"F1", [65535, 16384, 16384, 8, 0], b"\0\0\0\0"))
    with pytest.raises(BitstreamError, match="truncated"):
        coder.decode(seal(b"F1", [1, 8, 8, 8, 0], b"\0\0"))
    with pytest.raises(ValueError, match="NaN"):
        coder.encode(torch.full((1, 2, 4, 4), float("nan")))
    with pytest.raises(ValueError, match="float32"):
        coder.encode(flow.double())
