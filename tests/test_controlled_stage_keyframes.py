"""The controlled stage's keyframe policy against its codec: the closing keyframe's role in
training must be the coding settings' end_role (the codec gives it to every clip's closing
keyframe), and a policy never puts two roles on one latent frame or wraps an index around."""

from __future__ import annotations

import pytest
import torch

from gvc_train.lit.controlled_diffusion import ControlledDiffusionModule
from gvc_train.models import CausalVAE
from gvc_train.models.controlled.transformer import ControlledVideoTransformer

from progressive_fixtures import FRAMES, HEIGHT, TOKENIZER, WIDTH

TINY = dict(latent_channels=4, patch_size=(1, 1, 1), width=16, depth=1, heads=2, text_dim=8, controls={}, control_depth=1, max_latent_frames=8)


def _module(**kwargs) -> ControlledDiffusionModule:
    torch.manual_seed(0)
    return ControlledDiffusionModule(ControlledVideoTransformer(**TINY), tokenizer=CausalVAE(**TOKENIZER), **kwargs)


def test_the_closing_keyframes_role_is_the_codecs_end_role() -> None:
    with pytest.raises(ValueError, match=r"coding.end_role 'last': .* role 'adaptive'"):
        _module(keyframes=["first", -1])  # the default end_role is "last"
    with pytest.raises(ValueError, match=r"coding.end_role 'adaptive': .* role 'last'"):
        _module(keyframes=["first", "last"], coding={"end_role": "adaptive"})
    assert _module(keyframes=["first", -1], coding={"end_role": "adaptive"}).coding.end_role == "adaptive"
    assert _module(keyframes=["first"]).coding.end_role == "last"  # no closing keyframe trained: nothing to compare


def test_one_role_a_latent_frame_and_no_wrapped_index() -> None:
    for keyframes in (["first", 0], ["last", -1], [2, 2]):
        with pytest.raises(ValueError, match="name one latent frame twice"):
            _module(keyframes=keyframes, coding={"end_role": "adaptive"})
    with pytest.raises(ValueError, match=r"keyframes \[3\] are outside the shortest clip of latent_frames_range \(2 latent frames\)"):
        _module(keyframes=["first", 3], latent_frames_range=[2, 5])
    video = torch.rand(1, 3, FRAMES, HEIGHT, WIDTH)  # 9 frames: 3 latent frames
    module = _module(keyframes=["first", 5])
    with pytest.raises(ValueError, match="keyframe 5 is outside a clip of 3 latent frames"):
        module.keyframe_conditions({"video": video}, module.latent({"video": video}))
    module = _module(keyframes=["first", "last", 2])  # 2 is the last of 3 latent frames
    with pytest.raises(ValueError, match="fall twice on latent frame 2 of a 3-frame clip"):
        module.keyframe_conditions({"video": video}, module.latent({"video": video}))
