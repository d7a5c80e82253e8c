"""DiffusersControlledTransformer: a tiny random Wan transformer saved by the test, loaded from the
local folder with our conditioning added; a fresh wrapper is exactly the Wan model; the added
pathways learn, roles matter, the export rebuilds without the folder."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from gvc_train.components import load_component, save_component
from gvc_train.models.controlled.diffusers_transformer import DiffusersControlledTransformer

TINY_WAN = dict(
    patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=4, out_channels=4, text_dim=16,
    freq_dim=32, ffn_dim=32, num_layers=2, rope_max_seq_len=32,
)  # fmt: skip
# A 4 x 3 x 4 x 6 latent; a luma map on the video grid: 1 + 2 * 4 frames of 32 x 48.
EXTRAS = dict(controls={"luma": 1}, control_depth=1, control_hidden=8, max_latent_frames=8)


@pytest.fixture(scope="module")
def wan_folder(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, torch.nn.Module]:
    """A pipeline-like folder with the tiny Wan under ``transformer/``, and the Wan model itself."""
    from diffusers import WanTransformer3DModel

    torch.manual_seed(0)
    wan = WanTransformer3DModel(**TINY_WAN).eval()
    folder = tmp_path_factory.mktemp("tiny_wan_transformer")
    wan.save_pretrained(folder / "transformer")
    return folder, wan


def _wrapped(wan_folder: tuple[Path, torch.nn.Module]) -> DiffusersControlledTransformer:
    torch.manual_seed(1)
    return DiffusersControlledTransformer(pretrained_path=str(wan_folder[0]), subfolder="transformer", **EXTRAS)


def _inputs() -> dict:
    g = torch.Generator().manual_seed(2)
    key_mask = torch.zeros(2, 1, 3, 4, 6)
    key_mask[:, :, [0, 2]] = 1
    return {
        "x_BCThw": torch.randn(2, 4, 3, 4, 6, generator=g), "t_B": torch.tensor([0.25, 0.9]),
        "key_BCThw": torch.randn(2, 4, 3, 4, 6, generator=g) * key_mask, "key_mask_B1Thw": key_mask,
        "key_roles_BT": torch.tensor([[1, 0, 2], [1, 0, 2]]), "controls": {"luma": torch.rand(2, 1, 9, 32, 48, generator=g)},
        "text_BLE": torch.randn(2, 5, 16, generator=g), "text_mask_BL": torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]]).bool(),
    }  # fmt: skip


def _as_if_trained(model: torch.nn.Module) -> None:
    with torch.no_grad():
        for param in model.parameters():
            if not param.any():
                param.copy_(0.1 * torch.randn_like(param))


def test_a_fresh_wrapper_is_the_pretrained_wan(wan_folder) -> None:
    model, wan = _wrapped(wan_folder).eval(), wan_folder[1]
    inputs = _inputs()
    x, t, text, mask = inputs["x_BCThw"], inputs["t_B"], inputs["text_BLE"], inputs["text_mask_BL"]
    assert (model.latent_channels, model.patch_size, model.control_names, model.config["text_dim"]) == (4, (1, 2, 2), ["luma"], 16)
    assert not model.training  # eval() reaches it; a fresh wrapper trains (from_pretrained's eval is undone)
    with torch.no_grad():
        # Wan's convention: timestep 1000 t, the same velocity noise - x0; no text = zero text.
        plain = wan(x, 1000 * t, torch.zeros(2, 1, 16)).sample
        torch.testing.assert_close(model(x, t), plain, rtol=0, atol=0)
        # Untrained extras: keyframes, roles and controls change nothing; text is Wan's own path.
        with_text = wan(x, 1000 * t, text * mask[..., None]).sample
        torch.testing.assert_close(model(**inputs), with_text, rtol=0, atol=0)
        dropped = {"text": torch.tensor([True, False])}
        torch.testing.assert_close(model(**inputs, dropped=dropped)[0], plain[0], rtol=0, atol=1e-6)
    assert _wrapped(wan_folder).training


def test_gradients_reach_the_added_pathways_and_checkpointing_agrees(wan_folder) -> None:
    model, inputs = _wrapped(wan_folder), _inputs()
    model(**inputs).square().mean().backward()
    # ControlNet's start: the zero hint and zero keyframe convolution learn first.
    assert model.context_blocks[0].hint.weight.grad.abs().sum() > 0
    assert model.key_patch_embed.weight.grad.abs().sum() > 0
    assert model.key_role_embed.grad.abs().sum() > 0
    _as_if_trained(model)
    model.zero_grad()
    model(**inputs).square().mean().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    for name in ("control_encoders.luma.patchify.weight", "context_blocks.0.block.attn1.to_q.weight", "control_role.luma"):
        assert grads[name].abs().sum() > 0, name
    model.zero_grad()
    model.gradient_checkpointing = True
    model(**inputs).square().mean().backward()
    for name, grad in grads.items():
        torch.testing.assert_close(dict(model.named_parameters())[name].grad, grad, rtol=1e-5, atol=1e-6)


def test_export_round_trip_holds_the_diffusers_config_not_the_folder(wan_folder, tmp_path: Path) -> None:
    model = _wrapped(wan_folder)
    _as_if_trained(model)
    model.eval()
    save_component(model, tmp_path / "export", "transformer")
    config = json.loads((tmp_path / "export" / "transformer.json").read_text())["config"]
    assert config["pretrained_path"] is None and config["subfolder"] is None
    assert config["config"]["num_layers"] == 2 and str(wan_folder[0]) not in json.dumps(config)
    loaded = load_component(tmp_path / "export", "transformer").eval()
    assert isinstance(loaded, DiffusersControlledTransformer)
    with torch.no_grad():
        assert torch.equal(loaded(**_inputs()), model(**_inputs()))


def test_permuting_keyframe_roles_changes_the_output_once_trained(wan_folder) -> None:
    model = _wrapped(wan_folder).eval()
    inputs = _inputs()
    swapped = {**inputs, "key_roles_BT": inputs["key_roles_BT"].flip(-1)}  # first <-> last
    with torch.no_grad():
        assert torch.equal(model(**inputs), model(**swapped))  # zero-initialised role tables
        _as_if_trained(model)
        assert not torch.allclose(model(**inputs), model(**swapped), atol=1e-4)


def test_bad_folders_and_configs_are_one_line_errors(wan_folder, wan_pretrained_dir: str, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="config.json missing") as missing:
        DiffusersControlledTransformer(pretrained_path=str(tmp_path / "nowhere"))
    with pytest.raises(ValueError, match="not a WanTransformer3DModel") as not_wan:
        DiffusersControlledTransformer(pretrained_path=wan_pretrained_dir)  # a Wan VAE folder
    for error in (missing, not_wan):
        assert "\n" not in str(error.value)
    with pytest.raises(ValueError, match="exactly one"):
        DiffusersControlledTransformer()
    with pytest.raises(ValueError, match="text_dim 8 differs"):
        DiffusersControlledTransformer(config=TINY_WAN, text_dim=8)
    with pytest.raises(ValueError, match="image-to-video"):
        DiffusersControlledTransformer(config={**TINY_WAN, "image_dim": 8, "added_kv_proj_dim": 24})
    model = DiffusersControlledTransformer(config=TINY_WAN, **EXTRAS)
    with pytest.raises(ValueError, match="unknown condition"):
        model(torch.zeros(1, 4, 1, 4, 6), torch.zeros(1), controls={"flow": torch.zeros(1, 2, 1, 32, 48)})
    with pytest.raises(ValueError, match="not B x L x 16"):
        model(torch.zeros(1, 4, 1, 4, 6), torch.zeros(1), text_BLE=torch.zeros(1, 3, 8))


# ---- as the stage's and the codec's transformer -----------------------------------------------

# Patch (1, 1, 1): the stage's and codec fixtures' latents are 5 wide.
STAGE_WAN = {**TINY_WAN, "patch_size": (1, 1, 1), "text_dim": 8}


def test_the_stage_trains_exports_and_samples_with_it(tmp_path: Path) -> None:
    import lightning as L
    from torch.utils.data import DataLoader

    from gvc_train.export import export_checkpoint
    from gvc_train.lit.controlled_diffusion import ControlledDiffusionModule
    from gvc_train.models import CausalVAE
    from progressive_fixtures import TOKENIZER
    from test_controlled_stage import _batch

    torch.manual_seed(0)
    transformer = DiffusersControlledTransformer(config=STAGE_WAN, controls={"luma": 1, "edges": 1}, control_depth=1, control_hidden=8, max_latent_frames=8)
    module = ControlledDiffusionModule(transformer, tokenizer=CausalVAE(**TOKENIZER), lr=2e-3, warmup_steps=0, ema_decay=0.5, time_kind="uniform")
    batch = _batch()
    trainer = L.Trainer(
        accelerator="cpu", devices=1, max_steps=2, max_epochs=1, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
    )  # fmt: skip
    trainer.fit(module, DataLoader([batch] * 2, batch_size=None))
    assert torch.isfinite(trainer.logged_metrics["train/loss"])
    assert module.transformer.context_blocks[0].hint.weight.abs().sum() > 0  # the zero hint moved
    trainer.save_checkpoint(tmp_path / "last.ckpt")
    export_checkpoint(tmp_path / "last.ckpt", tmp_path / "export")
    exported = load_component(tmp_path / "export", "transformer")
    ema = module.ema_transformer.state_dict()
    assert isinstance(exported, DiffusersControlledTransformer) and all(torch.equal(v, ema[k]) for k, v in exported.state_dict().items())
    video = module.sample(batch, num_steps=2, guidance_scale=2.0, seed=1)
    assert video.shape == batch["video"].shape and torch.isfinite(video).all()


def test_a_codec_folder_with_it_encodes_and_decodes(tmp_path: Path) -> None:
    import numpy as np
    from controlled_codec_fixtures import FRAMES, HEIGHT, TRANSFORMER, WIDTH, write_codec_folder, write_moving_square_clip

    from gvc_train.codecs.base import open_codec

    extras = {k: v for k, v in TRANSFORMER.items() if k.startswith("control") or k == "max_latent_frames"}
    transformer = DiffusersControlledTransformer(config=STAGE_WAN, **extras)
    codec = open_codec(write_codec_folder(tmp_path / "codec", "controlled", extra={"transformer": transformer}))
    assert isinstance(codec.transformer, DiffusersControlledTransformer)
    stream, recon = tmp_path / "clip.gvc", []
    codec.encode(write_moving_square_clip(tmp_path / "clip"), stream, 1, on_recon=recon.append)
    decoded = [[], []]
    for frames in decoded:
        codec.decode(stream, frames.append)
    assert np.stack(decoded[0]).shape == (FRAMES, HEIGHT, WIDTH, 3)
    assert np.array_equal(np.stack(decoded[0]), np.stack(decoded[1])) and np.array_equal(np.stack(decoded[0]), np.stack(recon))
