"""Faults: a kill during a checkpoint save, SIGKILL mid-run then resume, non-finite losses,
and the data stream continuing (not restarting) in a resumed epoch."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader

from conftest import REPO, quiet_recipe, synthetic_data_args

GVC_TRAIN = str(Path(sys.executable).with_name("gvc-train"))
ENV = dict(os.environ, OMP_NUM_THREADS="1")

# ---------------------------------------------------------------------------- atomic saves

_SAVER = textwrap.dedent(
    """
    import sys, torch
    from gvc_train.lit.checkpoint_io import AtomicCheckpointIO
    ckpt = {"step": 2, "w": torch.ones(100_000_000)}  # ~400 MB: long enough to be killed mid-save
    if sys.argv[1] == "atomic":
        AtomicCheckpointIO().save_checkpoint(ckpt, sys.argv[2])
    else:  # the naive writer: the target itself, in place
        torch.save(ckpt, sys.argv[2])
    """
)


def _kill_while_saving(kind: str, target: Path) -> None:
    proc = subprocess.Popen([sys.executable, "-c", _SAVER, kind, str(target)], env=ENV)
    original = target.stat().st_size
    deadline = time.monotonic() + 60
    # wait until the new checkpoint is being written (a temporary, or the target itself growing)
    while time.monotonic() < deadline:
        written = [p for p in target.parent.iterdir() if p.name.startswith(".gvc-partial-")]
        if (written and written[0].stat().st_size > 1_000_000) or target.stat().st_size not in (original,) and target.stat().st_size > 0:
            break
        assert proc.poll() is None, "the saver finished before it could be killed"
        time.sleep(0.005)
    else:
        pytest.fail("the save never started")
    proc.send_signal(signal.SIGKILL)
    proc.wait()


@pytest.mark.parametrize("kind", ["atomic", "naive"])
def test_a_kill_during_a_save_leaves_the_previous_checkpoint_whole(kind: str, tmp_path: Path) -> None:
    target = tmp_path / "last.ckpt"
    torch.save({"step": 1, "w": torch.zeros(10)}, target)
    _kill_while_saving(kind, target)
    if kind == "naive":
        # the baseline, to show the kill lands mid-save: an in-place writer leaves a broken file
        with pytest.raises(Exception):
            torch.load(target, weights_only=True)
        return
    ckpt = torch.load(target, weights_only=True)
    assert ckpt["step"] == 1 and torch.equal(ckpt["w"], torch.zeros(10))
    # the leftover cannot pass for a checkpoint (Lightning finds hpc_ckpt_N by name), and the
    # next save into the folder cleans the dead writer's temporary up
    from lightning.pytorch.trainer.connectors.checkpoint_connector import _CheckpointConnector

    from gvc_train.lit.checkpoint_io import atomic_torch_save

    (tmp_path / "hpc_ckpt_1.ckpt").write_bytes(b"")
    assert _CheckpointConnector._CheckpointConnector__max_ckpt_version_in_folder(tmp_path, "hpc_ckpt_") == 1
    (tmp_path / "hpc_ckpt_1.ckpt").unlink()
    atomic_torch_save({"step": 3}, target)
    assert torch.load(target, weights_only=True)["step"] == 3
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]


# ---------------------------------------------------------------------------- SIGKILL + resume


def _fit_args(recipe: Path, run_dir: Path, *extra: str) -> list[str]:
    return [
        GVC_TRAIN, "fit", "--config", str(recipe), *synthetic_data_args(2, samples_per_epoch=16),
        "--trainer.max_steps=14", "--trainer.limit_val_batches=1", "--trainer.accelerator=cpu",
        "--trainer.deterministic=true", "--trainer.precision=32-true", "--model.init_args.gan_start_step=5",
        f"--run_dir={run_dir}", *extra,
    ]  # fmt: skip


def _saved_step(path: Path) -> int:
    try:
        return int(torch.load(path, weights_only=True)["global_step"])
    except Exception:  # not there yet (an atomic save never shows a partial file)
        return -1


def test_sigkill_at_a_random_step_then_resume_matches_an_uninterrupted_run(tmp_path: Path) -> None:
    """14 steps over 2 epochs of 8 batches, GAN on from step 5, last.ckpt every 2 steps. Killed
    with SIGKILL at a random moment after step 4 was saved, resumed with --ckpt_path last: the
    final weights equal the uninterrupted run's exactly (model, both optimizers, schedulers,
    step, data position and noise all restored)."""
    recipe = quiet_recipe(REPO / "recipes/tiny/tokenizer.yaml", tmp_path / "recipe.yaml", every_n_train_steps=2)
    straight = subprocess.run(_fit_args(recipe, tmp_path / "straight"), env=ENV, capture_output=True, text=True, timeout=300)
    assert straight.returncode == 0, straight.stderr[-3000:]

    run = tmp_path / "killed"
    last = run / "checkpoints" / "last.ckpt"
    proc = subprocess.Popen(_fit_args(recipe, run), env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    while _saved_step(last) < 4:
        assert proc.poll() is None and time.monotonic() < deadline, "the run ended before it could be killed"
        time.sleep(0.05)
    time.sleep(random.uniform(0.0, 1.5))  # anywhere in the following steps, saves included
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = _saved_step(last)
    assert 4 <= killed_at < 14, f"the kill came too late (step {killed_at})"

    resumed = subprocess.run(_fit_args(recipe, run, "--ckpt_path=last"), env=ENV, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    a = torch.load(tmp_path / "straight" / "checkpoints" / "last.ckpt", weights_only=True)
    b = torch.load(last, weights_only=True)
    assert a["global_step"] == b["global_step"] == 14
    for key, value in a["state_dict"].items():
        assert torch.equal(value, b["state_dict"][key]), f"{key} differs after resuming from step {killed_at}"
    for opt_a, opt_b in zip(a["optimizer_states"], b["optimizer_states"]):
        for i, state in opt_a["state"].items():
            assert torch.equal(state["exp_avg"], opt_b["state"][i]["exp_avg"])
    # --run_dir put everything of the run there
    assert (run / "config.yaml").is_file()


# ---------------------------------------------------------------------------- non-finite losses


def test_many_nonfinite_losses_in_a_row_stop_with_a_checkpoint_from_before(tmp_path: Path) -> None:
    from gvc_train.lit.step_guard import TrainingDiverged
    from gvc_train.lit.tokenizer import TokenizerModule
    from gvc_train.models.causal_vae import CausalVAE

    torch.manual_seed(0)
    vae = CausalVAE(base_channels=8, channel_mults=[1, 2], num_res_blocks=1, mid_attention=False, norm_groups=4, temporal_downsample=[True])
    module = TokenizerModule(vae, lr=1e-3, max_consecutive_nonfinite=3, ms_ssim_weight=0.0)
    good = {"video": torch.rand(1, 3, 5, 16, 16)}
    bad = {"video": torch.full((1, 3, 5, 16, 16), float("nan"))}
    batches = [good, good, bad, bad, bad, good]
    trainer = L.Trainer(
        accelerator="cpu", max_steps=10, logger=False, enable_progress_bar=False, enable_model_summary=False,
        limit_val_batches=0, default_root_dir=tmp_path, enable_checkpointing=False,
    )  # fmt: skip
    before: dict[str, torch.Tensor] = {}

    class Snapshot(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if batch_idx == 2:
                before.update({k: v.clone() for k, v in pl_module.state_dict().items()})

    trainer.callbacks.append(Snapshot())
    with pytest.raises(TrainingDiverged, match=r"3 batches in a row had a non-finite loss at step 2") as info:
        trainer.fit(module, DataLoader(batches, batch_size=None))
    saved = tmp_path / "nonfinite-step2.ckpt"
    assert str(saved) in str(info.value)
    ckpt = torch.load(saved, weights_only=True)
    assert ckpt["global_step"] == 2 and ckpt["nonfinite_skipped"] == 3
    for key, value in before.items():
        assert torch.equal(ckpt["state_dict"][key], value), f"{key} changed after the first bad batch"
    assert all(torch.isfinite(v).all() for v in ckpt["state_dict"].values() if v.is_floating_point())


def test_gvc_train_reports_divergence_in_one_line(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    from gvc_train import cli
    from gvc_train.lit.step_guard import TrainingDiverged

    def diverge(args):
        raise TrainingDiverged("3 batches in a row had a non-finite loss at step 7: training diverged")

    monkeypatch.setattr(cli, "run", diverge)
    assert cli.main(["fit"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["gvc-train: error: TrainingDiverged: 3 batches in a row had a non-finite loss at step 7: training diverged"]


# ---------------------------------------------------------------------------- data position


@pytest.mark.parametrize("num_workers", [0, 2])
def test_a_resumed_epoch_continues_the_shard_stream(tiny_shards: dict[str, str], num_workers: int) -> None:
    """The loader's state (what Lightning saves in checkpoints) makes a fresh loader yield the
    rest of the epoch, in order, with several workers too: not the epoch's first batches again."""
    from gvc_train.data.datamodule import VideoDataModule

    def loader():
        dm = VideoDataModule(
            train_shards=tiny_shards["train"], clip_frames=5, crop_size=32, batch_size=2, num_workers=num_workers,
            samples_per_epoch=16, resampled=False, rank=0, world_size=1,
        )  # fmt: skip
        dm.setup("fit")
        return dm.train_dataloader()

    def keys(batches):
        return [tuple(b["key"]) + tuple(m["window_start"] for m in b["meta"]) for b in batches]

    whole = keys(loader())
    assert len(whole) == 8
    resumed = loader()
    resumed.load_state_dict({"epoch": 0, "batches": 3})
    assert keys(resumed) == whole[3:]
    # the state is read once: the next epoch starts from its beginning
    assert len(keys(resumed)) == 8


def test_resumed_worker_roles_cover_the_rest_of_the_epoch() -> None:
    from gvc_train.data.pipeline import resumed_role

    for workers in (1, 2, 3, 4):
        for consumed in range(0, 11):
            roles = [resumed_role(w, workers, consumed) for w in range(workers)]
            assert sorted(r for r, _ in roles) == list(range(workers))
            # the fresh loader's round robin, worker 0 first, gives batches consumed, consumed+1, ...
            for w, (role, skip) in enumerate(roles):
                assert role * 1 + skip * workers == consumed + w
