"""The controlled family's recipes (recipes/tiny/controlled_*.yaml and their GPU versions, shrunk
to CPU size) train 2 steps on tiny control shards, validate, and write last.ckpt. They need
control shards and a latent export (the tokenizer and keyframe coder in checkpoints/cgvc_tiny), so tests/test_recipes.py leaves
them to this file."""

from __future__ import annotations

from pathlib import Path

import pytest

from gvc_train.cli import run as gvc_train_cli
from gvc_train.data.sample_videos import sample_video
from gvc_train.data.shard_controls import control_specs
from gvc_train.data.shard_writer import write_shards

from conftest import REPO

RECIPES = ["recipes/tiny/controlled_cgvc.yaml", "recipes/tiny/controlled_cvg.yaml", "recipes/controlled_cgvc.yaml", "recipes/controlled_cvg.yaml"]
LATENT_TINY = REPO / "checkpoints" / "cgvc_tiny"  # the first reference latent codec's tokenizer and keyframe coder
# The GPU transformer at CPU size: everything else (controls, keyframes, coding) as written.
SHRINK = [f"--model.init_args.transformer.init_args.{k}={v}" for k, v in dict(width=32, depth=2, heads=2, control_depth=1, control_hidden=8).items()]


@pytest.fixture(scope="session")
def control_shards(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Two captioned 9-frame carphone clips at 32x48 with every control the recipes read (~2 s:
    segmentation and pose through the mediapipe worker); validation reads them too."""
    root = tmp_path_factory.mktemp("control_shards")
    (root / "in").mkdir()
    (root / "in" / "carphone.mp4").symlink_to(sample_video("carphone_pristine.mp4"))
    (root / "in" / "carphone.txt").write_text("a man talks on a phone in a car")
    specs = control_specs(["luma", "segmentation", "pose", "flow", "caption"], {"luma": {"extractor": {"factor": 4}}})
    write_shards([str(root / "in" / "carphone.mp4")], str(root / "out"), clip_frames=9, max_frames_per_video=18,
                 resize_short=48, crop=(32, 48), controls=specs, log=lambda line: None)  # fmt: skip
    return str(root / "out" / "*.tar")


@pytest.fixture(scope="session")
def text_encoder_folder(tmp_path_factory: pytest.TempPathFactory) -> str:
    from gvc_train.models.controlled.tiny_text_encoder import build

    return str(build(tmp_path_factory.mktemp("text_encoder_tiny")))


@pytest.mark.parametrize("recipe", RECIPES)
def test_controlled_recipe_trains_validates_and_checkpoints(recipe: str, control_shards: str, text_encoder_folder: str, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)  # recipes write runs/... relative to the working directory
    text = (REPO / recipe).read_text()
    args = [
        "fit", "--config", str(REPO / recipe),
        f"--data.init_args.train_shards={control_shards}", f"--data.init_args.val_shards={control_shards}",
        "--data.init_args.clip_frames=9", "--data.init_args.batch_size=2", "--data.init_args.num_workers=0",
        "--data.init_args.samples_per_epoch=4",  # 2 steps, then validation
        "--trainer.accelerator=cpu", "--trainer.devices=1", "--trainer.precision=32-true",
        "--trainer.limit_val_batches=1", "--trainer.max_steps=2",
        f"--model.init_args.tokenizer_path={LATENT_TINY}", f"--model.init_args.latent_codec_path={LATENT_TINY}",
    ]  # fmt: skip
    if "latent_frames_range" in text:
        args.append("--model.init_args.latent_frames_range=[2,3]")  # 9-frame clips: 3 latent frames
    if "text_encoder:" in text:
        args.append(f"--model.init_args.text_encoder.init_args.pretrained_path={text_encoder_folder}")
    if "class_name: T5EncoderModel" in text:
        args.append("--model.init_args.text_encoder.init_args.class_name=BertModel")  # the tiny stand-in is a BERT
    if "/tiny/" not in recipe:
        args += [*SHRINK, "--model.init_args.transformer.init_args.text_dim=32"]
    trainer = gvc_train_cli(args).trainer
    assert trainer.global_step == 2
    assert "val/loss" in trainer.callback_metrics
    assert Path(trainer.checkpoint_callback.dirpath, "last.ckpt").is_file()
