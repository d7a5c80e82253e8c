"""DiffusersVAE: a tiny Wan-VAE saved by the test, loaded from the local folder, exported, rebuilt."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from component_cases import TINY_WAN_CONFIG as TINY_WAN

from gvc_train.components import load_component, save_component
from gvc_train.models import DiffusersVAE


@pytest.fixture(scope="module")
def wrapped(wan_pretrained_dir: str) -> DiffusersVAE:
    return DiffusersVAE(pretrained_path=wan_pretrained_dir).eval()


def test_loads_from_local_folder_with_wan_geometry(wrapped: DiffusersVAE) -> None:
    assert (wrapped.spatial_stride, wrapped.temporal_stride, wrapped.latent_channels) == (8, 4, 4)
    assert wrapped.last_layer_weight is wrapped.vae.decoder.conv_out.weight
    for t in (1, 5, 9):  # 1 + 4k frames -> 1 + k latent frames
        x = torch.rand(1, 3, t, 16, 24)
        with torch.no_grad():
            recon, posterior = wrapped(x, sample_posterior=False)
        assert posterior.mean.shape == (1, 4, 1 + (t - 1) // 4, 2, 3)
        assert posterior.kl().shape == (1,)
        assert recon.shape == x.shape
        assert recon.min() >= 0 and recon.max() <= 1  # Wan's decoder clamps


def test_matches_the_wrapped_model(wrapped: DiffusersVAE) -> None:
    x = torch.rand(1, 3, 5, 16, 16)
    with torch.no_grad():
        ours = wrapped.encode(x)
        theirs = wrapped.vae.encode(x * 2 - 1).latent_dist
        torch.testing.assert_close(ours.mean, theirs.mean)
        torch.testing.assert_close(ours.logvar, theirs.logvar)
        torch.testing.assert_close(wrapped.decode(ours.mean), (wrapped.vae.decode(theirs.mean).sample + 1) / 2)


def test_bad_shapes_and_missing_folder(wrapped: DiffusersVAE, tmp_path) -> None:
    with pytest.raises(ValueError, match="1 \\+ 4k"):
        wrapped.encode(torch.rand(1, 3, 4, 16, 16))
    with pytest.raises(ValueError, match="multiples of 8"):
        wrapped.encode(torch.rand(1, 3, 5, 12, 16))
    with pytest.raises(FileNotFoundError, match="config.json"):
        DiffusersVAE(pretrained_path=str(tmp_path / "nowhere"))
    with pytest.raises(ValueError, match="exactly one"):
        DiffusersVAE()
    with pytest.raises(ValueError, match="not a diffusers AutoencoderKL"):
        DiffusersVAE(config={}, class_name="os")


def test_export_holds_the_diffusers_config_and_round_trips(wan_pretrained_dir: str, tmp_path) -> None:
    # Built from a pretrained folder, unlike the component tester's case (built from a config).
    source = tmp_path / "source"
    shutil.copytree(wan_pretrained_dir, source)
    wrapped = DiffusersVAE(pretrained_path=str(source)).eval()
    assert wrapped.config["pretrained_path"] is None
    assert wrapped.config["config"]["base_dim"] == 8 and wrapped.config["config"]["z_dim"] == 4
    json.dumps(wrapped.config)
    export = tmp_path / "export"
    save_component(wrapped, export, "tokenizer")
    shutil.rmtree(source)  # the export must not need the original folder
    loaded = load_component(export, "tokenizer")
    x = torch.rand(1, 3, 5, 16, 16)
    with torch.no_grad():
        a, pa = wrapped(x, sample_posterior=False)
        b, pb = loaded(x, sample_posterior=False)
    assert torch.equal(pa.mean, pb.mean) and torch.equal(a, b)


def test_builds_from_config_dict() -> None:
    model = DiffusersVAE(config=TINY_WAN)
    assert model.latent_channels == 4 and model.config["config"]["dim_mult"] == [1, 2, 2, 2]


def test_pretrained_model_starts_in_train_mode(wan_pretrained_dir: str) -> None:
    # diffusers' from_pretrained switches to eval mode; fine-tuning must not run in it silently.
    model = DiffusersVAE(pretrained_path=wan_pretrained_dir)
    assert all(m.training for m in model.modules())
