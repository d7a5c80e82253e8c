"""``gvc-train``'s user errors: one line ``gvc-train: error: ...`` naming the key at fault (and,
for a misspelling, the closest valid key), exit status 2, no usage dump or traceback, no run
folder left behind by a run that fails at start-up, no start-up noise before the line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from gvc_train.cli import main
from gvc_train.recipe_bases import load_recipe

from conftest import REPO, synthetic_data_args

TOKENIZER = str(REPO / "recipes/tiny/tokenizer.yaml")
LATENT = str(REPO / "recipes/tiny/latent_codec.yaml")


def _error_line(capsys: pytest.CaptureFixture) -> str:
    out, err = capsys.readouterr()
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("gvc-train: error: "), lines
    assert "usage:" not in out + err and "Traceback" not in err
    return lines[0][len("gvc-train: error: ") :]


@pytest.mark.parametrize(
    "args, expected",
    [
        (["fit", "--config", TOKENIZER, "--trainer.max_stepz=3"], ["trainer.max_stepz", "did you mean trainer.max_steps?"]),
        (["fit", "--config", TOKENIZER, "--trainer.max_stepz", "3"], ["trainer.max_stepz", "did you mean trainer.max_steps?"]),
        (["fit", "--config", TOKENIZER, "--ckpt_pth=last"], ["ckpt_pth", "did you mean ckpt_path?"]),
        (["fit", "--config", TOKENIZER, "--run_dri=x"], ["run_dri", "did you mean run_dir?"]),
        (["fit", "--config", TOKENIZER, "--model.init_args.gan_start_stepp=3"],
         ["model.init_args.gan_start_stepp", "did you mean model.init_args.gan_start_step?"]),
        (["fit", "--config", TOKENIZER, "--model.init_args.vae.init_args.latent_channelz=3"],
         ["model.init_args.vae.init_args.latent_channelz", "did you mean model.init_args.vae.init_args.latent_channels?"]),
        (["fit", "--config", TOKENIZER, "--data.init_args.batch_sise=3"],
         ["data.init_args.batch_sise", "did you mean data.init_args.batch_size?"]),
        (["fit", "--config", LATENT, "--model.init_args.lambdaz=[1]"], ["model.init_args.lambdaz", "did you mean model.init_args.lambdas?"]),
        (["fit", "--config", TOKENIZER, "--trainer.max_steps=abc"], ["trainer.max_steps", "expected int", "abc"]),
        (["fit", "--config", TOKENIZER, "--model.init_args.lr=fast"], ["model.init_args.lr", "expected float", "fast"]),
        (["fit", "--config", "no/such/recipe.yaml"], ["recipe file not found", "no/such/recipe.yaml"]),
        (["fitt", "--config", TOKENIZER], ["unknown subcommand 'fitt'", "did you mean fit?"]),
        (["fit", "--config", TOKENIZER, "stray"], ["unexpected argument 'stray'"]),
        (["fit", "--trainer.max_steps=3"], ["missing model"]),
        ([], ["no subcommand"]),
        (["fit", "--config", TOKENIZER, "--model=gvc_train.lit.tokenizer.TokenizerModul"], ["model", "TokenizerModul"]),
        (["fit", "--config", TOKENIZER, "--trainer.max_steps=-5"], ["max_steps", "-5"]),
        (["fit", "--config", TOKENIZER, "--trainer.precision=17"], ["precision", "17"]),
        (["fit", "--config", TOKENIZER, "--weights_only=false"], ["weights_only"]),
    ],
)  # fmt: skip
def test_each_user_error_is_one_line_naming_the_key(args, expected, capsys, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert main([*args, f"--run_dir={tmp_path / 'run'}"] if args and args[0] == "fit" else args) == 2
    line = _error_line(capsys)
    for part in expected:
        assert part in line, line
    assert not (tmp_path / "run").exists() and not (tmp_path / "runs").exists()


def test_a_misspelled_key_in_the_recipe_file_is_named(tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    recipe = load_recipe(TOKENIZER)  # a standalone copy: the recipe with its base resolved
    recipe["model"]["init_args"]["gan_weigth"] = recipe["model"]["init_args"].pop("gan_weight")
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(recipe))
    assert main(["fit", "--config", str(tmp_path / "r.yaml")]) == 2
    line = _error_line(capsys)
    assert "gan_weigth" in line and "did you mean model.init_args.gan_weight?" in line, line
    recipe["model"]["init_args"]["gan_weight"] = recipe["model"]["init_args"].pop("gan_weigth")
    recipe["trainer"]["max_stepz"] = recipe["trainer"].pop("max_steps")
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(recipe))
    assert main(["fit", "--config", str(tmp_path / "r.yaml")]) == 2
    line = _error_line(capsys)
    assert "max_stepz" in line and "did you mean trainer.max_steps?" in line, line


def _tree(folder: Path) -> dict[str, object]:
    def state(p: Path) -> object:
        return ("link", os.readlink(p)) if p.is_symlink() else p.read_bytes() if p.is_file() else "dir"

    return {str(p.relative_to(folder)): state(p) for p in sorted(folder.rglob("*"))}


def _no_progress_bar(tmp_path: Path) -> str:
    """The tiny recipe as it is (wandb offline + CSV loggers), without its progress bar."""
    recipe = load_recipe(TOKENIZER)  # a standalone copy: the recipe with its base resolved
    recipe["trainer"]["callbacks"] = [c for c in recipe["trainer"]["callbacks"] if "TQDM" not in c["class_path"]]
    recipe["trainer"]["enable_progress_bar"] = False
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(recipe))
    return str(tmp_path / "r.yaml")


def _ok_args(recipe: str, run: Path) -> list[str]:
    return [
        "fit", "--config", recipe, *synthetic_data_args(2, samples_per_epoch=4), "--trainer.accelerator=cpu",
        "--trainer.max_steps=2", "--trainer.limit_val_batches=1", f"--run_dir={run}",
    ]  # fmt: skip


def test_a_run_that_fails_at_start_up_leaves_no_run_folder(tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    run = tmp_path / "runs" / "exp"
    missing = ["--data=gvc_train.data.datamodule.VideoDataModule", f"--data.init_args.train_shards={tmp_path}/none-*.tar"]
    args = ["fit", "--config", TOKENIZER, *missing, "--trainer.accelerator=cpu", f"--run_dir={run}"]
    assert main(args) == 2
    assert "none-" in _error_line(capsys)
    assert list(tmp_path.iterdir()) == []  # not runs/, not runs/exp/{wandb,csv,checkpoints,config.yaml}

    # an existing run folder (a finished run with wandb and CSV logs) is left exactly as it was
    recipe = _no_progress_bar(tmp_path)
    assert main(_ok_args(recipe, run)) == 0
    capsys.readouterr()
    before = _tree(run)
    assert {"config.yaml", "csv/version_0", "checkpoints/last.ckpt", "wandb/latest-run"} <= set(before)
    assert any(k.startswith("wandb/offline-run-") for k in before)
    (run / "config.yaml").write_text("# the user's notes\n")
    before = _tree(run)
    failing = ["fit", "--config", recipe, *missing, "--trainer.accelerator=cpu", f"--run_dir={run}", "--ckpt_path=last"]
    assert main(failing) == 2
    assert "none-" in _error_line(capsys)
    assert _tree(run) == before  # no csv/version_1, no second wandb run, latest-run and config.yaml as they were


def test_start_up_prints_nothing_a_user_cannot_act_on(tmp_path) -> None:
    """A fresh process (the import-time warnings count): a failing start prints the error line
    alone, and a run prints none of the silenced lines."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop("WANDB_SILENT", None)
    gvc_train = str(Path(sys.executable).with_name("gvc-train"))
    shards = ["--data=gvc_train.data.datamodule.VideoDataModule", f"--data.init_args.train_shards={tmp_path}/none-*.tar"]
    fail = subprocess.run(
        [gvc_train, "fit", "--config", TOKENIZER, *shards, "--trainer.accelerator=cpu", f"--run_dir={tmp_path}/run"],
        capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300,
    )  # fmt: skip
    assert fail.returncode == 2
    assert fail.stderr.strip().splitlines() == [f"gvc-train: error: FileNotFoundError: no shard matches '{tmp_path}/none-*.tar'"]
    assert not (tmp_path / "run").exists()
    ok = subprocess.run(
        [gvc_train, *_ok_args(_no_progress_bar(tmp_path), tmp_path / "ok")], capture_output=True, text=True, cwd=tmp_path,
        env=env, timeout=300,
    )  # fmt: skip
    assert ok.returncode == 0, ok.stderr[-3000:]
    for silenced in ("torch.jit.script", "💡", "anonymous setting"):
        assert silenced not in ok.stdout + ok.stderr
    resumed = subprocess.run(
        [gvc_train, *_ok_args(str(tmp_path / "r.yaml"), tmp_path / "ok"), "--trainer.max_steps=3", "--ckpt_path=last"],
        capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300,
    )  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "Restored all states" in resumed.stdout + resumed.stderr
    for silenced in ("torch.jit.script", "💡", "anonymous setting", "LeafSpec", "exists and is not empty"):
        assert silenced not in resumed.stdout + resumed.stderr
    # what a user may act on, or wants to know, still shows
    assert "GPU available" in ok.stdout + ok.stderr
    assert "logging interval" in ok.stdout + ok.stderr  # 2 batches < log_every_n_steps=10
