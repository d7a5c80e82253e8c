"""The controlled diffusion stage (lit/controlled_diffusion.py): a few steps learn, modality
dropout is logged per modality, kept keyframes are left out of the loss, the export is the EMA,
and seeded sampling runs."""

from __future__ import annotations

import json
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


# ---- the exported codec folder -------------------------------------------------------------


def _codec_module(folder: Path, **kwargs) -> ControlledDiffusionModule:
    """A stage whose keyframe coder is ``folder``'s (tiny_codec_dir: made on the same seeded tokenizer)."""
    coding = dict(clip_latent_frames=3, keyframes={"name": "fixed", "clip_frames": 9}, controls=["luma"], num_steps=4)
    return _module(latent_codec_path=str(folder), coding=coding, latent_scale=0.5, **kwargs)


def test_the_export_is_a_controlled_codec_folder_with_its_coding_settings(tmp_path: Path, tiny_codec_dir: Path) -> None:
    module = _codec_module(tiny_codec_dir)
    trainer = _fit(module, _batch(), 1)
    trainer.save_checkpoint(tmp_path / "last.ckpt")
    written = export_checkpoint(tmp_path / "last.ckpt", tmp_path / "export")
    assert set(written) == {"tokenizer", "latent_codec", "transformer", "coding", "codec"}
    assert json.loads((tmp_path / "export" / "codec.json").read_text())["family"] == "controlled"
    coding = load_component(tmp_path / "export", "coding")
    assert coding.config == module.coding.config
    assert (coding.latent_scale, coding.clip_latent_frames, coding.controls, coding.num_steps) == (0.5, 3, ["luma"], 4)
    assert coding.keyframes == {"name": "fixed", "clip_frames": 9}
    exported = load_component(tmp_path / "export", "latent_codec").state_dict()
    assert all(torch.equal(v, load_component(tiny_codec_dir, "latent_codec").state_dict()[k]) for k, v in exported.items())


@pytest.fixture(scope="module")
def tiny_text_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from gvc_train.models.controlled.tiny_text_encoder import build

    return build(tmp_path_factory.mktemp("text_encoder_tiny"))


def test_a_text_model_exports_as_controlled_text(tmp_path: Path, tiny_codec_dir: Path, tiny_text_folder: Path) -> None:
    from gvc_train.models.controlled.text_encoder import TextEncoder
    from gvc_train.models.controlled.tiny_text_encoder import WIDTH

    torch.manual_seed(0)
    tokenizer = CausalVAE(**TOKENIZER)
    module = ControlledDiffusionModule(
        ControlledVideoTransformer(**{**TINY, "text_dim": WIDTH}), tokenizer=tokenizer, latent_codec_path=str(tiny_codec_dir),
        text_encoder=TextEncoder(pretrained_path=str(tiny_text_folder), max_length=16), time_kind="uniform",
    )  # fmt: skip
    assert module.coding.controls == ["edges", "luma", "caption"]  # by default every modality it conditions on
    batch = {**_batch(), "caption": ["a man talks on a phone", "a cyclist rides"]}
    _fit(module, batch, 1).save_checkpoint(tmp_path / "last.ckpt")
    written = export_checkpoint(tmp_path / "last.ckpt", tmp_path / "export")
    assert "text_encoder" in written
    assert json.loads((tmp_path / "export" / "codec.json").read_text())["family"] == "controlled_text"
    with pytest.raises(ValueError, match="text encoder gives 32 channels"):
        ControlledDiffusionModule(ControlledVideoTransformer(**TINY), tokenizer=tokenizer, text_encoder=module.text_encoder)


def test_a_latent_codec_of_another_tokenizer_is_refused_in_one_line(tmp_path: Path, tiny_codec_dir: Path) -> None:
    from gvc_train.components import save_component

    other = tmp_path / "other"
    torch.manual_seed(1)
    save_component(CausalVAE(**TOKENIZER).eval(), other, "tokenizer")  # same shape, other weights
    save_component(load_component(tiny_codec_dir, "latent_codec"), other, "latent_codec")
    with pytest.raises(ValueError, match="trained on another tokenizer") as error:
        _codec_module(other)
    assert "\n" not in str(error.value)
    # the usual case: the tokenizer and the keyframe coder from one latent export folder
    module = ControlledDiffusionModule(ControlledVideoTransformer(**TINY), tokenizer_path=str(tiny_codec_dir), latent_codec_path=str(tiny_codec_dir))
    assert set(module.exported_components) == {"tokenizer", "latent_codec", "transformer", "coding"}


@pytest.mark.parametrize(
    ("coding", "message"),
    [
        ({"controls": ["luma", "pose"]}, r"names \['pose'\]: this stage conditions on \['edges', 'luma'\]"),
        ({"controls": ["caption"]}, r"names \['caption'\]"),  # no text encoder
        ({"clip_latent_frames": 9}, "exceeds the transformer's max_latent_frames 8"),
        ({"latent_scale": 2.0}, "the stage's latent_scale"),
    ],
)
def test_coding_settings_must_fit_the_stage(coding: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        _module(coding=coding)


# ---- random clip lengths ---------------------------------------------------------------------


def test_random_clip_lengths_cut_video_and_controls_alike_and_follow_the_step() -> None:
    from gvc_train.lit.clip_lengths import cut_batch, draw_latent_frames

    draws = [draw_latent_frames(step, 2, 5) for step in range(40)]
    assert draws == [draw_latent_frames(step, 2, 5) for step in range(40)]  # a function of the step
    assert set(draws) == {2, 3, 4, 5}

    batch = _batch()  # 9 frames, temporal stride 4: 3 latent frames
    pose = [[torch.full((1, 33, 3), float(t)) for t in range(FRAMES)] for _ in range(2)]
    flow = torch.arange(2 * (FRAMES - 1), dtype=torch.float32).view(2, FRAMES - 1, 1, 1, 1).expand(-1, -1, 2, 4, 5)
    batch["controls"].update(pose=pose, flow=flow, caption=["a", "b"])
    cut = cut_batch(batch, 2, 4)  # 2 latent frames: 5 frames
    assert torch.equal(cut["video"], batch["video"][:, :, :5])
    assert torch.equal(cut["controls"]["luma"], batch["controls"]["luma"][:, :5])
    assert torch.equal(cut["controls"]["edges"], batch["controls"]["edges"][:, :5])
    assert torch.equal(cut["controls"]["flow"], flow[:, :4])  # pairs: frames - 1
    assert [[p[0, 0, 0].item() for p in clip] for clip in cut["controls"]["pose"]] == [[0, 1, 2, 3, 4]] * 2
    assert cut["controls"]["caption"] == ["a", "b"]
    with pytest.raises(ValueError, match="needs 13 frames, the batch has 9"):
        cut_batch(batch, 4, 4)

    module = _module(latent_frames_range=[2, 3], keyframes=["first", -1], coding={"end_role": "adaptive"})
    trainer = _fit(module, batch, 1)  # the stage trains on the cut
    assert trainer.global_step == 1
    seen = {}
    for step in range(6):
        module.trainer.fit_loop.epoch_loop.manual_optimization.optim_step_progress.total.completed = step  # global_step
        n = draw_latent_frames(step, 2, 3)
        clip = module.clip_of_step(batch)
        assert clip["video"].shape[2] == 1 + 4 * (n - 1) and clip["controls"]["luma"].shape[1] == 1 + 4 * (n - 1)
        roles = module.conditions(clip, module.latent(clip))["key_roles_BT"][0].tolist()
        assert roles == [1, *[0] * (n - 2), 3]  # first, then the closing keyframe (adaptive) at n - 1
        seen[n] = True
    assert set(seen) == {2, 3}
    with pytest.raises(ValueError, match="max_latent_frames 8"):
        _module(latent_frames_range=[2, 9])


def test_the_latent_cache_encodes_each_clip_and_keyframe_once() -> None:
    module, batch = _module(latent_cache=16), _batch()
    plain = _module()
    first = module.conditions(batch, module.latent(batch))
    assert (module.latent_cache.misses, module.latent_cache.hits) == (4, 0)  # 2 clips + 2 x (2 keyframes, one call)
    again = module.conditions(batch, module.latent(batch))
    assert module.latent_cache.hits == 4 and torch.equal(first["key_BCThw"], again["key_BCThw"])
    assert torch.allclose(module.latent(batch), plain.latent(batch), atol=1e-5)
    assert torch.allclose(first["key_BCThw"], plain.conditions(batch, plain.latent(batch))["key_BCThw"], atol=1e-5)


def test_the_stage_refuses_fsdp_in_one_line() -> None:
    from types import SimpleNamespace

    from lightning.pytorch.strategies import FSDPStrategy

    with pytest.raises(ValueError, match="not FSDP") as error:
        _module().check_trainer(SimpleNamespace(strategy=FSDPStrategy()))
    assert "\n" not in str(error.value)
