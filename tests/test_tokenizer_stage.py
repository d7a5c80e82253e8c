"""The tokenizer stage end to end: GAN and LPIPS terms, resume, logging, export without Lightning."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from gvc_train.cli import run as gvc_train_cli
from gvc_train.export import main as gvc_export_main

from conftest import REPO, tiny_fit_args

RECIPE = str(REPO / "recipes/tiny/tokenizer.yaml")


def _fit(shards: dict[str, str], *extra: str):
    return gvc_train_cli([*tiny_fit_args(RECIPE, shards), *extra])


def test_gan_term_trains_the_discriminator(tiny_shards, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    cli = _fit(tiny_shards, "--trainer.max_steps=2", "--model.init_args.gan_start_step=0")
    metrics = cli.trainer.logged_metrics
    for name in ("train/d_loss", "train/g_loss", "train/loss"):
        assert name in metrics and torch.isfinite(metrics[name]), (name, sorted(metrics))
    # one global step per batch, GAN or not (Lightning would count each optimizer's step)
    assert cli.trainer.global_step == 2
    assert cli.trainer.fit_loop.epoch_loop.batch_progress.total.completed == 2
    assert torch.isfinite(metrics["train/gan_adaptive_weight"])
    before = {k: v.clone() for k, v in cli.model.discriminator.state_dict().items()}
    _fit(tiny_shards, "--trainer.max_steps=3", "--model.init_args.gan_start_step=0", "--ckpt_path=last")
    after = torch.load(Path(cli.trainer.checkpoint_callback.dirpath) / "last.ckpt", weights_only=False)["state_dict"]
    assert any(not torch.equal(before[k], after["discriminator." + k]) for k in before), "discriminator did not train"


def test_resume_from_last_continues_the_step_count(tiny_shards, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    first = _fit(tiny_shards, "--trainer.max_steps=2")
    last = Path(first.trainer.checkpoint_callback.dirpath) / "last.ckpt"
    assert last.is_file()
    saved = torch.load(last, map_location="cpu", weights_only=False)
    assert saved["global_step"] == 2
    resumed = _fit(tiny_shards, "--trainer.max_steps=4", "--ckpt_path=last")
    assert resumed.trainer.global_step == 4
    after = torch.load(last, map_location="cpu", weights_only=False)
    assert after["global_step"] == 4
    assert after["gvc"]["provenance"]["train_seconds"] >= saved["gvc"]["provenance"]["train_seconds"]
    # CPU time accumulates over resumes too (the two runs' steps each cost CPU)
    assert after["gvc"]["provenance"]["cpu_seconds"] > saved["gvc"]["provenance"]["cpu_seconds"] > 0
    # a best checkpoint beside last, chosen on val/psnr
    assert list(last.parent.glob("best-*.ckpt"))


@pytest.mark.parametrize("subcommand", ["validate", "test"])
def test_validate_and_test_subcommands_run_on_a_checkpoint(tiny_shards, tmp_path, monkeypatch, subcommand) -> None:
    monkeypatch.chdir(tmp_path)
    fitted = _fit(tiny_shards, "--trainer.max_steps=1")
    last = Path(fitted.trainer.checkpoint_callback.dirpath) / "last.ckpt"
    cli = gvc_train_cli(
        [
            subcommand,
            "--config",
            RECIPE,
            f"--data.init_args.{'val' if subcommand == 'validate' else 'test'}_shards={tiny_shards['val']}",
            "--data.init_args.clip_frames=5",
            "--data.init_args.crop_size=32",
            "--data.init_args.num_workers=0",
            "--trainer.accelerator=cpu",
            f"--ckpt_path={last}",
        ]
    )
    prefix = "val" if subcommand == "validate" else "test"
    assert 5 < float(cli.trainer.callback_metrics[f"{prefix}/psnr"]) < 100


def test_reconstructions_are_logged_as_video(tiny_shards, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    cli = _fit(tiny_shards, "--trainer.max_steps=2")
    videos = list(Path(cli.trainer.log_dir).glob("reconstructions/*.mp4"))
    assert videos, "no reconstruction video under the log dir"
    from gvc_train.data.video_io import read_frames

    frames = read_frames(videos[0])
    # two 32x32 validation clips stacked, each as source | reconstruction side by side
    assert frames.shape[1:] == (64, 64, 3)
    assert list(tmp_path.glob("runs/tokenizer_tiny/wandb/offline-run-*")), "wandb offline run missing"
    assert list(tmp_path.glob("runs/tokenizer_tiny/csv/version_*/metrics.csv"))


def test_lpips_term_loads_local_backbone_and_stays_out_of_checkpoints(tiny_shards, tmp_path, monkeypatch) -> None:
    import torchvision

    monkeypatch.chdir(tmp_path)
    backbone = tmp_path / "vgg16_random.pth"
    torch.save(torchvision.models.vgg16(weights=None).features.state_dict(), backbone)
    cli = _fit(
        tiny_shards,
        "--trainer.max_steps=1",
        "--model.init_args.lpips_weight=0.1",
        f"--model.init_args.lpips_backbone={backbone}",
    )
    metrics = cli.trainer.logged_metrics
    # every training metric of a step with LPIPS (GAN off: gan_start_step is 200), logged and finite
    for name in ("train/loss", "train/l1", "train/kl", "train/psnr", "train/ms_ssim", "train/lpips"):
        assert name in metrics, f"{name} not logged: {sorted(metrics)}"
        assert torch.isfinite(metrics[name]), (name, metrics[name])
    # the term is a real distance (random VGG features of a blurry reconstruction are not its source)
    assert float(metrics["train/lpips"]) > 1e-4
    # ... and is in the loss, at its weight: the loss is the sum of its logged terms
    hp = cli.model.hparams
    expected = (hp.l1_weight * metrics["train/l1"] + hp.ms_ssim_weight * (1 - metrics["train/ms_ssim"])
                + hp.lpips_weight * metrics["train/lpips"] + hp.kl_weight * metrics["train/kl"])  # fmt: skip
    assert float(metrics["train/loss"]) == pytest.approx(float(expected), rel=1e-5, abs=1e-7)
    # the backbone is the local file's (the random VGG above), not torchvision's download
    trunk = torch.nn.Sequential(*[layer for block in cli.model._lpips[0].slices for layer in block])
    saved = torch.load(backbone, weights_only=True)
    assert all(torch.equal(v, saved[k]) for k, v in trunk.state_dict().items())
    ckpt = torch.load(Path(cli.trainer.checkpoint_callback.dirpath) / "last.ckpt", map_location="cpu", weights_only=False)
    assert not any("lpips" in k for k in ckpt["state_dict"])


# The inference side must load an exported component with neither Lightning nor pickle.
_LOAD_WITHOUT_LIGHTNING = r"""
import sys, importlib.abc
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in {"lightning", "pytorch_lightning", "webdataset", "wandb"}:
            raise ImportError("blocked: " + name)
sys.meta_path.insert(0, Block())
import pickle
def _no_pickle(*a, **k):
    raise AssertionError("unpickling during component load")
pickle.load = pickle.loads = _no_pickle
import torch
torch.set_num_threads(1)  # as the test process: reductions (RMS norm) differ in the last bit by thread count
from gvc_train.components import load_component
vae = load_component(sys.argv[1], "tokenizer")
torch.manual_seed(0)
x = torch.rand(1, 3, 5, 32, 32)
with torch.no_grad():
    out = vae.decode(vae.encode(x).mode())
torch.save(out, sys.argv[2])
assert "lightning" not in sys.modules
"""


def test_export_reloads_without_lightning_and_matches(tiny_shards, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    cli = _fit(tiny_shards, "--trainer.max_steps=2")
    last = Path(cli.trainer.checkpoint_callback.dirpath) / "last.ckpt"
    out_dir = tmp_path / "export"
    assert gvc_export_main([str(last), "--out", str(out_dir)]) == 0
    meta = json.loads((out_dir / "tokenizer.json").read_text())
    assert meta["class"] == "CausalVAE" and meta["config"]["latent_channels"] == 16
    assert meta["provenance"]["global_step"] == 2
    assert meta["provenance"]["data"]["train"] == tiny_shards["train"]
    assert "TokenizerModule" in meta["provenance"]["recipe"]
    assert (out_dir / "tokenizer.safetensors").is_file()

    result = tmp_path / "out.pt"
    proc = subprocess.run(
        [sys.executable, "-c", _LOAD_WITHOUT_LIGHTNING, str(out_dir), str(result)], capture_output=True, text=True, cwd=REPO
    )
    assert proc.returncode == 0, proc.stderr
    vae = cli.model.vae.eval()
    torch.manual_seed(0)
    x = torch.rand(1, 3, 5, 32, 32)
    with torch.no_grad():
        expected = vae.decode(vae.encode(x).mode())
    assert torch.equal(torch.load(result), expected)


@pytest.mark.parametrize("content", [None, b"not a checkpoint", "plain-dict"])
def test_export_refuses_bad_checkpoints_in_one_line(tmp_path, capsys, content) -> None:
    path = tmp_path / "x.ckpt"
    if content == "plain-dict":
        torch.save({"state_dict": {}}, path)
    elif content is not None:
        path.write_bytes(content)
    assert gvc_export_main([str(path), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("gvc-export: error:") and "\n" not in err
    assert not (tmp_path / "out").exists()


def test_gvc_train_reports_missing_shards_in_one_line(tmp_path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "gvc_train.cli", "fit", "--config", RECIPE,
         f"--data.init_args.train_shards={tmp_path}/nothing-*.tar", "--trainer.max_steps=1"],
        capture_output=True, text=True, cwd=tmp_path, timeout=300,
    )
    assert proc.returncode == 2
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("gvc-train: error:") and "nothing-" in last
    assert "Traceback" not in proc.stderr


def test_gan_under_ddp_needs_find_unused_parameters(tiny_shards, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match="ddp_find_unused_parameters_true"):
        _fit(tiny_shards, "--trainer.max_steps=1", "--trainer.strategy=ddp")
    # what the message asks for trains, GAN steps included (one gloo process on the CPU)
    cli = _fit(
        tiny_shards, "--trainer.max_steps=2", "--trainer.strategy=ddp_find_unused_parameters_true",
        "--model.init_args.gan_start_step=1",
    )
    assert cli.trainer.global_step == 2 and "train/d_loss" in cli.trainer.logged_metrics
