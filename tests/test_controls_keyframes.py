"""Keyframe policies (fixed and colour-distance adaptive) and keyframes coded by a real codec."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from gvc_train.controls.keyframes import (
    AdaptiveKeyframes,
    FixedKeyframes,
    build_keyframe_policy,
    srgb_to_lab,
)
from gvc_train.frames import frames_to_tensor

REFERENCE = Path(__file__).resolve().parents[1] / "checkpoints" / "latent_tiny"
CUT = 23


def cut_video(frames: int = 40, cut: int = CUT, seed: int = 0) -> np.ndarray:
    """A red-ish scene, then a blue-ish one from frame ``cut``: a moving square and mild noise."""
    rng = np.random.default_rng(seed)
    video = np.empty((frames, 32, 48, 3), np.uint8)
    for t in range(frames):
        base = np.array([190, 70, 50] if t < cut else [40, 80, 200], np.float64)
        frame = base + rng.normal(0, 6, (32, 48, 3))
        x = 4 + t % 20
        frame[8:18, x : x + 10] += 40  # a bright square crossing the scene
        video[t] = np.clip(np.rint(frame), 0, 255).astype(np.uint8)
    return video


def test_srgb_to_lab_matches_the_reference_values() -> None:
    lab = srgb_to_lab(np.array([[255, 255, 255], [0, 0, 0], [255, 0, 0], [0, 0, 255]], np.uint8))
    expected = [[100, 0, 0], [0, 0, 0], [53.24, 80.09, 67.20], [32.30, 79.19, -107.86]]
    np.testing.assert_allclose(lab, expected, atol=0.02)


def test_fixed_policy_keys_every_clips_shared_ends_and_the_last_frame() -> None:
    video = cut_video()
    assert FixedKeyframes(16).select(video) == [0, 15, 30, 39]
    assert FixedKeyframes(4).select(video[:10]) == [0, 3, 6, 9]  # the last frame on the grid: not twice
    assert FixedKeyframes(16).select(video[:1]) == [0]


@pytest.mark.parametrize("distance", ["lab", "hist_chi2", "hist_bhattacharyya"])
def test_adaptive_policy_keys_the_cut_and_the_fixed_one_does_not(distance: str) -> None:
    video = cut_video()
    keys = AdaptiveKeyframes(distance=distance, max_interval=64).select(video)
    assert keys == [0, CUT, 39], keys  # the noise and the moving square stay below the threshold
    assert CUT not in FixedKeyframes(16).select(video)


def test_both_layouts_and_the_stream_give_the_same_keyframes() -> None:
    video = cut_video()
    policy = AdaptiveKeyframes(max_interval=64)
    clip_CThw = frames_to_tensor(video)[0]
    assert policy.select(clip_CThw) == policy.select(video)
    selector = policy.selector()
    pushed = [t for t, frame in enumerate(video) if selector.push(frame)]
    assert pushed == [0, CUT] and selector.finish() == 39 and selector.keyframes == [0, CUT, 39]
    with pytest.raises(ValueError, match="3 x T x H x W"):
        policy.select(clip_CThw.permute(1, 0, 2, 3))


def test_max_and_min_interval() -> None:
    video = np.repeat(cut_video()[:1], 40, axis=0)  # nothing changes: only the intervals key frames
    assert AdaptiveKeyframes(max_interval=10).select(video) == [0, 10, 20, 30, 39]
    keys = AdaptiveKeyframes(max_interval=7).select(cut_video())
    assert CUT in keys and all(b - a <= 7 for a, b in zip(keys, keys[1:])), keys
    # A cut too soon after a keyframe waits for min_interval.
    assert AdaptiveKeyframes(max_interval=20, min_interval=5).select(cut_video(cut=22)) == [0, 20, 25, 39]


def test_settings_round_trip_as_plain_json() -> None:
    for policy in (FixedKeyframes(32), AdaptiveKeyframes(distance="hist_chi2", threshold=0.3, max_interval=24, min_interval=2)):
        config = json.loads(json.dumps(policy.config()))
        rebuilt = build_keyframe_policy(config)
        assert type(rebuilt) is type(policy) and rebuilt.config() == config
    assert build_keyframe_policy({"name": "adaptive"}).settings()["threshold"] == 18.0  # the distance's default, stated
    with pytest.raises(ValueError, match="unknown keyframe policy"):
        build_keyframe_policy({"name": "every_frame"})
    with pytest.raises(ValueError, match="clip_length"):
        build_keyframe_policy({"name": "fixed", "clip_length": 8})
    with pytest.raises(ValueError, match="colour distance"):
        AdaptiveKeyframes(distance="ssim")


def test_keyframes_coded_alone_by_the_reference_codec(tmp_path: Path) -> None:
    from gvc_train.codecs.base import open_codec
    from gvc_train.codecs.keyframe_coding import code_keyframes
    from gvc_train.data.sample_videos import sample_video
    from gvc_train.data.video_io import read_frames

    video = sample_video("carphone_pristine.mp4")
    frames = read_frames(video, count=2)
    codec = open_codec(REFERENCE)
    coded = code_keyframes(codec, frames, [1, 0], rate_point=1)
    assert len(coded) == 2
    for keyframe in coded:
        assert keyframe.num_bytes > 0
        assert keyframe.frame.shape == frames.shape[1:] and keyframe.frame.dtype == np.uint8
    # Frame 0 coded alone is what the codec makes of the video cut to its first frame: the
    # temporary PNG is lossless and nothing of frame 1 leaks in.
    alone: list[np.ndarray] = []
    report = codec.encode(video, tmp_path / "first.gvc", 1, max_frames=1, on_recon=alone.append)
    np.testing.assert_array_equal(coded[1].frame, alone[0])
    assert abs(coded[1].num_bytes - report.file_bytes) <= 8  # the same frame's stream; the PNG's 30 fps is another header
    with pytest.raises(ValueError, match="outside"):
        code_keyframes(codec, frames, [2], rate_point=1)


def test_the_tensor_path_rejects_uint8_tensors() -> None:
    with pytest.raises(ValueError):
        FixedKeyframes().select(torch.zeros(3, 4, 8, 8, dtype=torch.uint8))
