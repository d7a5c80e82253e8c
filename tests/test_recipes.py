"""Every recipe in recipes/: parse it, build it, and run training steps at tiny size; the
trainer/logger/callback block comes from a shared base (recipes/base/), and a base that cannot be
resolved is one line."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from gvc_train.cli import main
from gvc_train.cli import run as gvc_train_cli
from gvc_train.recipe_bases import RecipeError, load_recipe

from conftest import REPO, tiny_fit_args

# Stages whose recipes need more than shards run them in their own test file instead:
# the latent codec needs a tokenizer export (tests/test_latent_codec_stage.py), the progressive
# stages a tokenizer or a stage-1 export and latent shards (tests/test_progressive_stages.py), the
# controlled stage control shards and a latent export (tests/test_controlled_recipes.py).
TESTED_ELSEWHERE = {
    "gvc_train.lit.latent_codec.LatentCodecModule",
    "gvc_train.lit.progressive_quantizer.ProgressiveQuantizerModule",
    "gvc_train.lit.progressive_context.ProgressiveContextModule",
    "gvc_train.lit.controlled_diffusion.ControlledDiffusionModule",  # control shards: tests/test_controlled_recipes.py
}
STAGE_RECIPES = sorted(
    p.relative_to(REPO).as_posix()
    for p in (REPO / "recipes").rglob("*.yaml")
    if p.parent.name not in ("cluster", "base", "finetune")  # overlays (tests/test_scale_out.py), bases (below), fine-tunes (tests/test_finetune_recipes.py)
)
RECIPES = [r for r in STAGE_RECIPES if load_recipe(REPO / r)["model"]["class_path"] not in TESTED_ELSEWHERE]
BASES = sorted((REPO / "recipes" / "base").glob("*.yaml"))

# Full-size recipes are shrunk to CPU size here; the tiny ones run as written.
TINY_CAUSAL_VAE = [
    "--model.init_args.vae.init_args.base_channels=8",
    "--model.init_args.vae.init_args.channel_mults=[1,2,2,2]",
    "--model.init_args.vae.init_args.num_res_blocks=1",
    "--model.init_args.vae.init_args.mid_attention=false",
    "--model.init_args.vae.init_args.norm_groups=4",
]
TINY_SSF = [  # compressai's widths (34 M parameters) at CPU size
    "--model.init_args.model.init_args.mid_planes=8",
    "--model.init_args.model.init_args.planes=8",
    "--model.init_args.model.init_args.hyper_planes=8",
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
    vae = config["model"]["init_args"].get("vae")
    if vae and vae["class_path"].endswith("CausalVAE"):
        args += TINY_CAUSAL_VAE
    model = config["model"]["init_args"].get("model")
    if model and model["class_path"].endswith("ScaleSpaceFlowCodec"):
        args += TINY_SSF
    if config["model"]["init_args"].get("discriminator"):
        args += TINY_DISCRIMINATOR
    return args


def _run(recipe: str, shards: dict[str, str], extra: list[str]):
    config = load_recipe(REPO / recipe)
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
    # The trainer block comes from recipes/base/tiny.yaml with the recipe's values filled in.
    trainer = printed["trainer"]
    assert trainer["default_root_dir"] == "runs/tokenizer_tiny" and trainer["limit_val_batches"] == 4
    assert [c["class_path"].rsplit(".", 1)[1] for c in trainer["callbacks"]] == [
        "ModelCheckpoint", "LastCheckpoint", "ReconstructionVideoLogger", "SkipStatsLogger", "TQDMProgressBar",
    ]  # fmt: skip
    assert trainer["callbacks"][0]["init_args"]["monitor"] == "val/psnr"
    assert [lg["init_args"]["save_dir"] for lg in trainer["logger"]] == ["runs/tokenizer_tiny"] * 2


def test_full_recipe_runs_a_bf16_step_on_cpu(tiny_shards, tmp_path, monkeypatch) -> None:
    """The full recipes train in bf16-mixed; the tests above force 32-true, so run bf16 once."""
    monkeypatch.chdir(tmp_path)
    recipe = "recipes/tokenizer.yaml"
    cli = _run(recipe, tiny_shards, ["--trainer.max_steps=1", "--trainer.precision=bf16-mixed"])
    assert cli.trainer.global_step == 1
    assert torch.isfinite(cli.trainer.logged_metrics["train/loss"])


# ---- the shared base ---------------------------------------------------------------------


@pytest.mark.parametrize("recipe", STAGE_RECIPES)
def test_stage_recipe_takes_trainer_loggers_and_callbacks_from_its_base(recipe: str) -> None:
    """The recipe file itself holds no logger or callback list (only callbacks+ appends); its
    resolved lists are the base's, filled with the recipe's run folder and metric."""
    raw = yaml.safe_load((REPO / recipe).read_text())
    base_file = (REPO / recipe).parent / raw["base"]["file"]
    assert base_file.resolve().parent == REPO / "recipes" / "base", recipe
    assert not {"logger", "callbacks", "default_root_dir"} & set(raw["trainer"]), recipe
    base = yaml.safe_load(base_file.read_text())
    resolved = load_recipe(REPO / recipe)
    trainer = resolved["trainer"]
    run = raw["base"]["run"]
    assert "${" not in str(resolved)
    assert trainer["default_root_dir"] == f"runs/{run}"
    assert [lg["class_path"] for lg in trainer["logger"]] == [lg["class_path"] for lg in base["trainer"]["logger"]]
    assert trainer["logger"][0]["init_args"]["name"] == run
    assert {lg["init_args"]["save_dir"] for lg in trainer["logger"]} == {f"runs/{run}"}
    shared = [c["class_path"] for c in base["trainer"]["callbacks"]]
    assert [c["class_path"] for c in trainer["callbacks"]][: len(shared)] == shared
    appended = raw["trainer"].get("callbacks+", [])
    assert trainer["callbacks"][len(shared) :] == appended
    for c in trainer["callbacks"]:
        if "dirpath" in c.get("init_args", {}):
            assert c["init_args"]["dirpath"] == f"runs/{run}/checkpoints", (recipe, c)
    best = trainer["callbacks"][0]["init_args"]
    assert (best["monitor"], best["mode"]) == (raw["base"]["monitor"], raw["base"]["mode"])
    for key, value in base["trainer"].items():
        if key not in ("logger", "callbacks", "default_root_dir"):
            assert trainer[key] == raw["trainer"].get(key, value), (recipe, key)


def test_every_base_is_named_by_a_stage_recipe() -> None:
    named = {(REPO / r).parent / yaml.safe_load((REPO / r).read_text())["base"]["file"] for r in STAGE_RECIPES}
    named = {p.resolve() for p in named}
    assert BASES and set(BASES) == named


def _write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_a_missing_base_is_one_line(tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    recipe = _write(tmp_path, "stage/r.yaml", "base: {file: ../base/nope.yaml, run: r}\ntrainer: {max_steps: 1}\n")
    assert main(["fit", "--config", str(recipe)]) == 2
    out, err = capsys.readouterr()
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in err and "usage:" not in out + err, err
    assert lines[0] == (
        f"gvc-train: error: recipe {recipe}: base file not found: {tmp_path / 'base/nope.yaml'} "
        "(base.file is relative to the recipe's folder)"
    )
    assert not (tmp_path / "runs").exists()


def test_base_values_merge_and_append(tmp_path) -> None:
    _write(tmp_path, "base/b.yaml", "t: {a: 1, dir: 'runs/${run}', n: '${n}', l: [x, '${run}']}\nkeep: 1\n")
    recipe = _write(tmp_path, "r.yaml", "base: {file: base/b.yaml, run: r1, n: 3}\nt: {a: 2, l+: [y]}\n")
    assert load_recipe(recipe) == {"t": {"a": 2, "dir": "runs/r1", "n": 3, "l": ["x", "r1", "y"]}, "keep": 1}
    chained = _write(tmp_path, "base/c.yaml", "base: {file: b.yaml, run: '${run}', n: 4}\nkeep: 2\n")
    assert chained and load_recipe(_write(tmp_path, "r2.yaml", "base: {file: base/c.yaml, run: r2}\n")) == {
        "t": {"a": 1, "dir": "runs/r2", "n": 4, "l": ["x", "r2"]}, "keep": 2,
    }  # fmt: skip


@pytest.mark.parametrize(
    ("base", "recipe", "message"),
    [
        ("x: '${run}'\n", "base: {file: b.yaml}\n", r"needs a value for \$\{run\}: give base.run"),
        ("x: '${run}'\n", "base: {file: b.yaml, run: a, rn: b}\n", r"does not use base.rn \(it takes: run\)"),
        ("base: r.yaml\n", "base: b.yaml\n", r"recipe bases form a cycle: .*r.yaml -> .*b.yaml -> .*r.yaml"),
        ("x: 1\n", "base: [b.yaml]\n", r"base must be a file path or a mapping with file: PATH"),
    ],
    ids=["missing value", "unused value", "cycle", "bad base"],
)
def test_an_unresolvable_base_is_one_clear_error(tmp_path, base: str, recipe: str, message: str) -> None:
    _write(tmp_path, "b.yaml", base)
    with pytest.raises(RecipeError, match=message) as error:
        load_recipe(_write(tmp_path, "r.yaml", recipe))
    assert "\n" not in str(error.value)
