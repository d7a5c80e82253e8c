"""The pose coder: within half a grid step, a few bits for empty frames, damage is a BitstreamError.

Synthetic but realistic trajectories (33 keypoints, smooth motion plus jitter, frames without
people, 0 to 2 people), and carphone's real keypoints from the mediapipe pose extractor (its
venv, which `make setup` makes; test_controls_pose_extractor.py tests the extractor itself).
"""

from __future__ import annotations

import zlib

import numpy as np
import pytest
import torch

from gvc_train.coding.container import BitstreamError
from gvc_train.coding.controls.pose import PoseCoder
from gvc_train.coding.controls.registry import build_coder
from gvc_train.controls.registry import build_extractor
from gvc_train.data.sample_videos import sample_video
from gvc_train.data.video_io import read_frames
from gvc_train.frames import frames_to_tensor

JOINTS = 33


def synthetic_pose(people: list[int], seed: int = 0, jitter: float = 0.002, still: bool = False) -> list[torch.Tensor]:
    """One frame per entry of ``people`` (that many people): each person a fixed skeleton drifting
    and swaying (unless ``still``), keypoints jittering by ``jitter`` of the frame side,
    confidences near 0.9."""
    rng = np.random.default_rng(seed)
    skeleton = rng.uniform(-0.15, 0.15, (3, JOINTS, 2))
    centre = np.array([[0.3, 0.5], [0.7, 0.45], [0.5, 0.6]])
    drift = rng.normal(0, 0.003, (3, 2)) * (not still)
    frames = []
    for t, count in enumerate(people):
        frame = np.zeros((count, JOINTS, 3), np.float32)
        for p in range(count):
            sway = 0.0 if still else 0.01 * np.sin(t / 5 + p)
            xy = centre[p] + drift[p] * t + sway + skeleton[p] + rng.normal(0, jitter, (JOINTS, 2))
            frame[p, :, :2] = np.clip(xy, 0, 1)
            frame[p, :, 2] = np.clip(0.9 + rng.normal(0, 0.05, JOINTS), 0, 1)
        frames.append(torch.from_numpy(frame))
    return frames


CLIPS = {
    "one person": [1] * 16,
    "two people": [2] * 12,
    "people come and go": [0] * 3 + [1] * 4 + [2] * 4 + [1] * 2 + [0] * 3,
    "nobody": [0] * 10,
}


@pytest.mark.parametrize("grid, levels", [(256, 8), (500, 2)])
@pytest.mark.parametrize("clip", CLIPS)
def test_round_trip_is_the_quantized_pose_within_half_a_grid_step(clip: str, grid: int, levels: int) -> None:
    pose = synthetic_pose(CLIPS[clip])
    coder = PoseCoder(grid=grid, confidence_levels=levels)
    back = coder.decode(coder.encode(pose))
    assert len(back) == len(pose)
    xy_bound, conf_bound = coder.max_error()
    assert (xy_bound, conf_bound) == (0.5 / grid, 0.5 / (levels - 1))
    for frame, decoded, expected in zip(pose, back, coder.reconstruct(pose)):
        assert decoded.dtype == torch.float32 and decoded.shape == frame.shape
        assert torch.equal(decoded, expected)
        assert torch.all((decoded[..., :2] - frame[..., :2]).abs() <= xy_bound + 1e-6)
        assert torch.all((decoded[..., 2] - frame[..., 2]).abs() <= conf_bound + 1e-6)


def test_it_beats_raw_float32_and_zlib_by_far() -> None:
    pose = synthetic_pose(CLIPS["one person"])
    raw = b"".join(frame.numpy().tobytes() for frame in pose)
    coded = PoseCoder().encode(pose)
    assert len(coded) * 8 < len(zlib.compress(raw, 9))  # ~200 bits a frame against ~2,800
    assert 8 * len(coded) / len(pose) < 300


def test_carphones_real_keypoints_within_the_bound_at_a_tenth_of_zlib() -> None:
    """Measured on 96 frames at the defaults: 109 bits a frame, against 3,168 raw float32, 2,278
    zlib of them and 170 zlib of the quantized frame differences. Here 12 frames and a flat one."""
    clip = frames_to_tensor(read_frames(sample_video("carphone_pristine.mp4"), count=12))[0]
    clip[:, 6] = 0.5  # nobody in frame 6: the person leaves and comes back
    pose = build_extractor("pose").extract(clip)
    assert [len(p) for p in pose] == [1] * 6 + [0] + [1] * 5
    coder = PoseCoder()
    data = coder.encode(pose)
    back = coder.decode(data)
    for frame, decoded in zip(pose, back):
        assert decoded.shape == frame.shape
        assert torch.all((decoded - frame)[..., :2].abs() <= coder.max_error()[0] + 1e-6)
        assert torch.all((decoded - frame)[..., 2].abs() <= coder.max_error()[1] + 1e-6)
    raw = b"".join(frame.numpy().tobytes() for frame in pose)
    assert 8 * len(data) / len(pose) < 400  # the person coded afresh, then ~100 bits a frame
    assert len(data) < 0.2 * len(zlib.compress(raw, 9))


def test_empty_frames_cost_a_few_bits() -> None:
    coder = PoseCoder()
    person = synthetic_pose([1] * 8)
    with_empty = person + [torch.zeros(0, JOINTS, 3)] * 40
    extra_bits = 8 * (len(coder.encode(with_empty)) - len(coder.encode(person)))
    assert extra_bits <= 40 + 32  # one count change, then well under a bit a frame (+ ANS word rounding)
    assert len(coder.encode([torch.zeros(0, JOINTS, 3)] * 40)) <= 12  # the payload frame alone (tag, CRC, fields)


def test_a_person_back_after_a_gap_is_predicted_from_where_they_were() -> None:
    """Detections flicker: a person missed for a few frames comes back near where they were and
    costs a motion, not a fresh skeleton; one who comes back elsewhere is coded afresh."""
    coder = PoseCoder()
    pose = synthetic_pose([1] * 6 + [0] * 3 + [1] * 6, still=True)  # someone seated, missed for 3 frames
    elsewhere = pose[:9] + [f + torch.tensor([0.25, 0.0, 0.0]) for f in pose[9:]]  # another one, elsewhere
    assert len(coder.encode(pose)) < len(coder.encode(elsewhere)) - 20
    for clip in (pose, elsewhere):
        assert all(torch.equal(a, b) for a, b in zip(coder.decode(coder.encode(clip)), coder.reconstruct(clip)))


def test_layout_edges() -> None:
    coder = PoseCoder(grid=256)
    assert coder.decode(coder.encode([])) == []
    off_frame = torch.tensor([[[-0.2, 1.3, 1.5], [0.5, 0.5, -1.0]]])  # clamped into [0, 1]
    assert torch.equal(coder.decode(coder.encode([off_frame]))[0], torch.tensor([[[0.0, 1.0, 1.0], [0.5, 0.5, 0.0]]]))
    with pytest.raises(ValueError, match="P x J x 3"):
        coder.encode([torch.zeros(1, 33, 3), torch.zeros(1, 17, 3)])
    with pytest.raises(ValueError, match="non-finite"):
        coder.encode([torch.full((1, 2, 3), float("nan"))])
    with pytest.raises(ValueError, match="grid"):
        PoseCoder(grid=1)


def test_registry_builds_it_and_settings_are_checked_at_decode() -> None:
    coder = build_coder("pose", grid=512)
    assert isinstance(coder, PoseCoder) and coder.settings() == {"grid": 512, "confidence_levels": 8}
    data = coder.encode(synthetic_pose([1] * 3))
    with pytest.raises(BitstreamError, match="grid 512"):
        PoseCoder(grid=256).decode(data)


def test_damage_decodes_or_is_a_bitstream_error() -> None:
    """Every truncation, many bit flips, junk: one BitstreamError (the CRC), never another exception."""
    coder = PoseCoder()
    data = coder.encode(synthetic_pose([0, 1, 1, 2, 2, 1, 0]))
    rng = np.random.default_rng(0)
    damaged = [data[:n] for n in range(len(data))]
    for _ in range(100):
        flipped = bytearray(data)
        flipped[int(rng.integers(len(data)))] ^= 1 << int(rng.integers(8))
        damaged.append(bytes(flipped))
    damaged += [bytes(rng.integers(0, 256, int(n), dtype=np.uint8)) for n in rng.integers(0, 64, 30)]
    errors = 0
    for payload in damaged:
        try:
            back = coder.decode(payload)
        except BitstreamError:
            errors += 1
        else:
            assert isinstance(back, list) and all(f.dim() == 3 and f.shape[2] == 3 for f in back)
    assert errors == len(damaged)
