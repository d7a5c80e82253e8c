"""The controlled stage and the codec's clip generator build a clip's control maps through one
function (models/controlled/control_maps.model_control_map): the same clip gives the same maps."""

from __future__ import annotations

import torch

from gvc_train.codecs.controlled_clips import ClipGenerator, Sampling
from gvc_train.lit.controlled_diffusion import ControlledDiffusionModule
from gvc_train.models import CausalVAE
from gvc_train.models.controlled.transformer import ControlledVideoTransformer

from progressive_fixtures import FRAMES, HEIGHT, TOKENIZER, WIDTH

TINY = dict(
    latent_channels=4, patch_size=(1, 1, 1), width=16, depth=1, heads=2, text_dim=8, controls={"luma": 1, "segmentation": 3},
    control_depth=1, control_hidden=4, control_scale=2, max_latent_frames=8,
)  # fmt: skip


def test_the_stage_and_the_codec_build_the_same_maps() -> None:
    torch.manual_seed(0)
    module = ControlledDiffusionModule(ControlledVideoTransformer(**TINY), tokenizer=CausalVAE(**TOKENIZER))
    video = torch.rand(1, 3, FRAMES, HEIGHT, WIDTH)
    controls = {"luma": (video.mean(1) * 255).to(torch.uint8), "segmentation": (video[:, 0] * 3).long().clamp(0, 2).to(torch.uint8)}
    stage_maps = module.control_maps({"video": video, "controls": controls}, module.latent({"video": video}))
    generator = ClipGenerator(module.tokenizer, module.transformer, None, 1.0, Sampling(1, 1.0, 1.0, 0, "last"), WIDTH, HEIGHT)
    latent_thw = tuple(module.latent({"video": video}).shape[2:])
    codec_maps = generator.control_maps({name: c[0] for name, c in controls.items()}, latent_thw, clip=0)
    assert sorted(stage_maps) == sorted(codec_maps) == ["luma", "segmentation"]
    for name in stage_maps:
        assert stage_maps[name].shape[2:] == (FRAMES, 2 * latent_thw[1], 2 * latent_thw[2])
        assert torch.equal(stage_maps[name], codec_maps[name])
