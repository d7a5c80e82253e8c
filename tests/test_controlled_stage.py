"""The controlled diffusion stage (lit/controlled_diffusion.py): a few steps learn, modality
dropout is logged per modality, kept keyframes are left out of the loss, the export is the EMA,
and seeded sampling runs."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader

from gvc_train.components import load_component
from gvc_train.export import export_checkpoint
from gvc_train.lit.controlled_diffusion import ControlledDiffusionModule
from gvc_train.models import CausalVAE
from gvc_train.models.controlled.transformer import ControlledVideoTransformer

from progressive_fixtures import FRAMES, HEIGHT, TOKENIZER, WIDTH

# 9 frames of 32 x 40 -> a 4 x 3 x 4 x 5 latent; patch (1, 1, 1) since 5 is odd.
TINY = dict(
    latent_channels=4, patch_size=(1, 1, 1), width=32, depth=2, heads=2, mlp_ratio=2.0, text_dim=8,
    controls={"luma": 1, "edges": 1}, control_depth=1, control_hidden=8, max_latent_frames=8,
)  # fmt: skip


def _batch(clips: int = 2) -> dict:
    """Clips with their luma and edges controls in the data module's layouts."""
    g = torch.Generator().manual_seed(3)
    ramp = torch.linspace(0, 1, WIDTH).view(1, 1, 1, 1, WIDTH)
    video = (0.6 * ramp + 0.4 * torch.rand(clips, 3, FRAMES, HEIGHT, WIDTH, generator=g)).clamp(0, 1)
    luma = (video.mean(1) * 255).round().to(torch.uint8)  # B x T x H x W
    edges = (luma.float().diff(dim=-1, prepend=luma[..., :1].float()).abs() > 40)  # B x T x H x W bool
    return {"video": video, "controls": {"luma": luma, "edges": edges}}


def _module(**kwargs) -> ControlledDiffusionModule:
    torch.manual_seed(0)
    tokenizer = CausalVAE(**TOKENIZER)
    args = dict(lr=2e-3, warmup_steps=0, ema_decay=0.5, time_kind="uniform")
    return ControlledDiffusionModule(ControlledVideoTransformer(**TINY), tokenizer=tokenizer, **{**args, **kwargs})


def _fit(module: ControlledDiffusionModule, batch: dict, steps: int) -> L.Trainer:
    trainer = L.Trainer(
        accelerator="cpu", devices=1, max_steps=steps, max_epochs=1, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
    )  # fmt: skip
    trainer.fit(module, DataLoader([batch] * steps, batch_size=None))
    return trainer


def test_a_few_steps_lower_the_loss_and_the_export_is_the_ema(tmp_path: Path) -> None:
    module, batch = _module(), _batch()
    before = module.evaluate(batch).metrics
    assert torch.equal(before["loss"], before["loss_raw"])  # EMA = raw before training; same seeded noise
    assert torch.equal(module.evaluate(batch).metrics["loss"], before["loss"])  # validation noise is fixed
    trainer = _fit(module, batch, 12)
    after = module.evaluate(batch).metrics
    assert after["loss_raw"] < 0.8 * before["loss_raw"], (before["loss_raw"], after["loss_raw"])
    assert after["loss"] < before["loss"]
    assert torch.isfinite(trainer.logged_metrics["train/loss"])

    raw = module.transformer.state_dict()
    ema = module.ema_transformer.state_dict()
    assert any(not torch.equal(raw[k], ema[k]) for k in raw), "the EMA follows the raw weights exactly"
    assert not any(p.requires_grad for p in module.ema_transformer.parameters())
    trainer.save_checkpoint(tmp_path / "last.ckpt")
    export_checkpoint(tmp_path / "last.ckpt", tmp_path / "export")
    exported = load_component(tmp_path / "export", "transformer").state_dict()
    assert all(torch.equal(exported[k], ema[k]) for k in ema), "gvc-export did not write the EMA weights"
    assert isinstance(load_component(tmp_path / "export", "tokenizer"), CausalVAE)

    video = module.sample(batch, num_steps=2, guidance_scale=2.0, seed=1)
    assert video.shape == batch["video"].shape and torch.isfinite(video).all()
    assert torch.equal(video, module.sample(batch, num_steps=2, guidance_scale=2.0, seed=1))  # seeded


def test_dropped_modalities_are_logged_per_modality() -> None:
    module = _module(dropout={"luma": 1.0, "edges": 0.0, "keyframes": 0.0}, dropout_all_p=0.0)
    logged = _fit(module, _batch(), 1).logged_metrics
    assert logged["train/dropped_luma"] == 1.0 and logged["train/dropped_edges"] == 0.0
    assert "train/loss_dropped_luma" in logged and "train/loss_kept_luma" not in logged
    assert "train/loss_kept_edges" in logged and "train/loss_dropped_edges" not in logged
    assert "train/dropped_keyframes" in logged
    with pytest.raises(ValueError, match="modalities"):
        _module(dropout={"pose": 0.1})


def test_only_an_exact_keyframe_is_left_out_of_the_loss() -> None:
    """Frame 0's keyframe latent is the clip's latent frame 0 (the tokenizer's intra latent);
    a later keyframe's latent frame also stands for frames the model generates, so it counts."""
    module = _module()
    batch = _batch()
    x0 = module.latent(batch)
    conditions = module.conditions(batch, x0)
    key_mask = conditions["key_mask_B1Thw"]
    assert conditions["key_roles_BT"][0].tolist() == [1, 0, 2]  # first, none, last
    assert key_mask[:, 0, :, 0, 0].tolist() == [[1, 0, 1]] * 2
    key = conditions["key_BCThw"]
    assert torch.allclose(key[:, :, 0], x0[:, :, 0], atol=1e-5)  # frame 0 alone = the clip's frame 0
    assert not torch.allclose(key[:, :, 2], x0[:, :, 2], atol=1e-3)  # the last frame alone is not its group's latent

    first_mask = torch.zeros_like(key_mask)
    first_mask[:, :, 0] = 1

    def wrong_at(mask):  # x0 = 0, t = 1: x_t = noise = the target velocity
        return lambda x, t_B, **kw: x * (1 - mask) + 5.0 * mask

    zero = torch.zeros(2, 4, 3, 4, 5)
    t_B = torch.ones(2)
    kept = module.loss_B(wrong_at(first_mask), zero, conditions, {"keyframes": torch.tensor([False, True])}, t_B)
    assert kept[0] == 0 and kept[1] > 0  # dropped keyframes are frames to generate like any other
    last_mask = key_mask - first_mask
    assert (module.loss_B(wrong_at(last_mask), zero, conditions, {"keyframes": torch.tensor([False, False])}, t_B) > 0).all()
