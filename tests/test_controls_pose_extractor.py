"""The pose extractor (gvc_train/controls/pose.py; its coder's tests: test_controls_pose.py) runs
mediapipe's bundled pose model for real, in .venv-mediapipe, which `make setup` makes: a person in
carphone, nobody in a flat frame, and the worker's venv is exactly requirements-mediapipe.txt."""

from __future__ import annotations

import json
import subprocess

import numpy as np
import pytest
import torch

from gvc_train.controls import mediapipe_client
from gvc_train.controls.registry import LAYOUTS, build_extractor
from gvc_train.data.sample_videos import sample_video
from gvc_train.data.video_io import read_frames
from gvc_train.frames import frames_to_tensor

from conftest import REPO

NOSE, LEFT_SHOULDER, RIGHT_SHOULDER = 0, 11, 12  # mediapipe's PoseLandmark


@pytest.fixture(scope="module")
def carphone_CThw() -> torch.Tensor:
    return frames_to_tensor(read_frames(sample_video("carphone_pristine.mp4"), count=4))[0]


def flat(value: float, frames: int = 2, h: int = 144, w: int = 176) -> torch.Tensor:
    return torch.full((3, frames, h, w), value)


def test_pose_finds_the_person_in_carphone_with_the_head_above_the_shoulders(carphone_CThw: torch.Tensor) -> None:
    assert "pose" in LAYOUTS
    people = build_extractor("pose").extract(carphone_CThw)
    assert len(people) == carphone_CThw.shape[1]
    for keypoints_PJ3 in people:
        assert keypoints_PJ3.dtype == torch.float32 and keypoints_PJ3.shape == (1, 33, 3)
        assert keypoints_PJ3.min() >= 0 and keypoints_PJ3.max() <= 1
        nose, left, right = keypoints_PJ3[0, [NOSE, LEFT_SHOULDER, RIGHT_SHOULDER]]
        assert min(nose[2], left[2], right[2]) > 0.5  # all three are in view
        assert nose[1] < min(left[1], right[1])  # y grows downwards: the head is above the shoulders
        assert min(left[0], right[0]) < nose[0] < max(left[0], right[0])  # and between them


@pytest.mark.parametrize("value", [0.0, 0.5])
def test_pose_finds_nobody_in_a_flat_frame(value: float) -> None:
    people = build_extractor("pose").extract(flat(value))
    assert [p.shape for p in people] == [(0, 33, 3)] * 2
    assert all(p.dtype == torch.float32 for p in people)


def test_pose_is_per_frame_within_a_clip(carphone_CThw: torch.Tensor) -> None:
    # person, person, nobody, person: tracking does not carry the person into the flat frame
    clip = torch.cat([carphone_CThw[:, :2], flat(0.5, 1), carphone_CThw[:, 2:3]], dim=1)
    assert [len(p) for p in build_extractor("pose").extract(clip)] == [1, 1, 0, 1]


def test_pose_settings_are_plain_json_and_only_the_bundled_model_is_accepted() -> None:
    extractor = build_extractor("pose", min_detection_confidence=0.6)
    assert json.loads(json.dumps(extractor.settings()))["min_detection_confidence"] == 0.6
    with pytest.raises(ValueError, match="bundles only the model_complexity=1"):
        build_extractor("pose", model_complexity=2)


def test_without_the_mediapipe_venv_the_error_is_one_line_that_says_what_to_do(monkeypatch, tmp_path) -> None:
    monkeypatch.setattr(mediapipe_client, "_worker", None)  # as before the first call (the running one comes back after)
    monkeypatch.setenv(mediapipe_client.PYTHON_ENV, str(tmp_path / "nowhere" / "python"))
    with pytest.raises(mediapipe_client.MediapipeUnavailable, match="make setup") as info:
        build_extractor("pose").extract(flat(0.5, 1))
    assert "\n" not in str(info.value)


def test_a_request_the_worker_refuses_is_one_error_and_the_worker_goes_on() -> None:
    with pytest.raises(RuntimeError, match="frames must be T x H x W x 3 uint8"):
        mediapipe_client.run("pose", {}, np.zeros((1, 8, 8), np.uint8))
    assert [len(p) for p in build_extractor("pose").extract(flat(0.0, 1))] == [0]


def test_the_mediapipe_venv_is_exactly_requirements_mediapipe() -> None:
    pins = {}
    for line in (REPO / "requirements-mediapipe.txt").read_text().splitlines():
        if line := line.split("#", 1)[0].strip():
            name, _, version = line.partition("==")
            pins[name.lower().replace("_", "-")] = version
    script = "import importlib.metadata as m, json; print(json.dumps({d.metadata['Name']: d.version for d in m.distributions()}))"
    # -I: the checkout's own gvc_train.egg-info (the working directory) is not the venv's
    out = subprocess.run([str(mediapipe_client.worker_python()), "-I", "-c", script], capture_output=True, text=True, check=True)
    installed = {name.lower().replace("_", "-"): version for name, version in json.loads(out.stdout).items()}
    for tool in ("pip", "setuptools"):  # what `python -m venv` puts in every venv
        installed.pop(tool, None)
    assert installed == pins, "rerun make setup (the mediapipe venv differs from requirements-mediapipe.txt)"
