"""Every recipe in recipes/: parse it, build it, and run training steps at tiny size."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from gvc_train.cli import run as gvc_train_cli

from conftest import REPO, tiny_fit_args

# Stages whose recipes need more than shards run them in their own test file instead:
# the latent codec needs a tokenizer export (tests/test_latent_codec_stage.py).
TESTED_ELSEWHERE = {"gvc_train.lit.latent_codec.LatentCodecModule"}
RECIPES = sorted(
    p.relative_to(REPO).as_posix()
    for p in (REPO / "recipes").rglob("*.yaml")
    if "cluster" not in p.parts  # overlays: tests/test_scale_out.py
    if yaml.safe_load(p.read_text())["model"]["class_path"] not in TESTED_ELSEWHERE
)

# Full-size recipes are shrunk to CPU size here; the tiny ones run as written.
TINY_CAUSAL_VAE = [
    "--model.init_args.vae.init_args.base_channels=8",
    "--model.init_args.vae.init_args.channel_mults=[1,2,2,2]",
    "--model.init_args.vae.init_args.num_res_blocks=1",
    "--model.init_args.vae.init_args.mid_attention=false",
    "--model.init_args.vae.init_args.norm_groups=4",
]
TINY_DISCRIMINATOR = [
    "--model.init_args.discriminator.init_args.base_channels=8",
    "--model.init_args.discriminator.init_args.num_layers=2",
    "--model.init_args.discriminator.init_args.temporal_downsample=1",
    "--model.init_args.discriminator.init_args.norm_groups=4",
]


def _shrink(recipe: str, config: dict) -> list[str]:
    if "/tiny/" in recipe:
        return []
    args = []
    vae = config["model"]["init_args"]["vae"]
    if vae["class_path"].endswith("CausalVAE"):
        args += TINY_CAUSAL_VAE
    if config["model"]["init_args"].get("discriminator"):
        args += TINY_DISCRIMINATOR
    return args


def _run(recipe: str, shards: dict[str, str], extra: list[str]):
    config = yaml.safe_load((REPO / recipe).read_text())
    args = [
        *tiny_fit_args(REPO / recipe, shards),
        *_shrink(recipe, config),
        *extra,
    ]
    return gvc_train_cli(args)


@pytest.mark.parametrize("recipe", RECIPES)
def test_recipe_trains_validates_and_checkpoints(recipe: str, tiny_shards, tmp_path, monkeypatch, wan_pretrained_dir) -> None:
    monkeypatch.chdir(tmp_path)  # recipes write runs/... relative to the working directory
    extra = ["--trainer.max_steps=2"]
    if "pretrained_path" in (REPO / recipe).read_text():
        extra.append(f"--model.init_args.vae.init_args.pretrained_path={wan_pretrained_dir}")
    cli = _run(recipe, tiny_shards, extra)
    trainer = cli.trainer
    assert trainer.global_step == 2
    assert "val/psnr" in trainer.callback_metrics
    assert Path(trainer.checkpoint_callback.dirpath, "last.ckpt").is_file()


def test_print_config_works(capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        gvc_train_cli(["fit", "--config", str(REPO / "recipes/tiny/tokenizer.yaml"), "--print_config"])
    assert exit_info.value.code == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["model"]["class_path"] == "gvc_train.lit.tokenizer.TokenizerModule"
    assert printed["model"]["init_args"]["vae"]["init_args"]["latent_channels"] == 16


def test_full_recipe_runs_a_bf16_step_on_cpu(tiny_shards, tmp_path, monkeypatch) -> None:
    """The full recipes train in bf16-mixed; the tests above force 32-true, so run bf16 once."""
    monkeypatch.chdir(tmp_path)
    recipe = "recipes/tokenizer.yaml"
    cli = _run(recipe, tiny_shards, ["--trainer.max_steps=1", "--trainer.precision=bf16-mixed"])
    assert cli.trainer.global_step == 1
    assert torch.isfinite(cli.trainer.logged_metrics["train/loss"])
