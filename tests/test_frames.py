"""The one uint8-frames <-> float-tensor conversion (gvc_train/frames.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gvc_train.frames import frames_to_tensor, tensor_to_frames


def test_every_code_value_round_trips_and_the_layouts_are_the_contract() -> None:
    frames_THWC = np.arange(256, dtype=np.uint8).reshape(1, 16, 16, 1).repeat(3, axis=3).repeat(2, axis=0)
    x_BCThw = frames_to_tensor(frames_THWC)
    assert x_BCThw.shape == (1, 3, 2, 16, 16) and x_BCThw.dtype == torch.float32
    assert x_BCThw.max() == 1.0 and x_BCThw.min() == 0.0
    torch.testing.assert_close(x_BCThw[0, 0, 0], torch.arange(256, dtype=torch.float32).reshape(16, 16) / 255, rtol=0, atol=0)
    np.testing.assert_array_equal(tensor_to_frames(x_BCThw), frames_THWC)
    np.testing.assert_array_equal(tensor_to_frames(x_BCThw[0].half()), frames_THWC)  # any float dtype
    batch = frames_to_tensor(np.stack([frames_THWC, frames_THWC]))  # N x T x H x W x 3
    assert batch.shape == (2, 3, 2, 16, 16) and torch.equal(batch[1], x_BCThw[0])
    read_only = frames_THWC.copy()
    read_only.flags.writeable = False
    assert torch.equal(frames_to_tensor(read_only), x_BCThw)


def test_tensor_to_frames_clamps_and_rounds_half_to_even() -> None:
    # x * 255 is exactly 0.5, 1.5, 2.5, 127.5 in float32 for the middle four: ties go to the even
    # neighbour (torch.round), as the codec's decoder has always written them
    x_CThw = torch.tensor([-0.5, 0.0, 0.5 / 255, 1.5 / 255, 2.5 / 255, 0.5, 1.0, 2.0]).reshape(1, 1, 1, 8).expand(3, 1, 1, 8)
    got = tensor_to_frames(x_CThw)
    assert got.dtype == np.uint8 and got.shape == (1, 1, 8, 3)
    assert got[0, 0, :, 0].tolist() == [0, 0, 0, 2, 2, 128, 255, 255]


@pytest.mark.parametrize(
    "bad",
    [
        lambda: frames_to_tensor(np.zeros((2, 4, 4, 3), dtype=np.float32)),
        lambda: frames_to_tensor(np.zeros((4, 4, 3), dtype=np.uint8)),
        lambda: tensor_to_frames(torch.zeros(2, 3, 1, 4, 4)),
        lambda: tensor_to_frames(torch.zeros(3, 4, 4)),
    ],
)
def test_wrong_layouts_are_refused(bad) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError):
        bad()
