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
    return _saved_step_and_time(path)[0]


def _saved_step_and_time(path: Path) -> tuple[int, float]:
    """(global step, wall time of the save) of a checkpoint; (-1, 0) when there is none yet.
    Both from one open file: a save that replaces it meanwhile cannot pair one's step with
    another's time (an atomic save never shows a partial file)."""
    try:
        with open(path, "rb") as f:
            saved_at = os.fstat(f.fileno()).st_mtime
            return int(torch.load(f, weights_only=True)["global_step"]), saved_at
    except Exception:
        return -1, 0.0


# The kill's aim: right after the save of a random step in 4..10, plus a random part of one
# step. It then lands in step 11 at the latest (its save included), 3 steps before the end.
# The old aim (up to 1.5 s after step 4 was seen, whatever a step took) overshot the whole run
# when steps were fast: ~1.4 s of the 14-step run remain after step 4 on a fast machine, so a
# share of runs were killed after the run had finished ("the kill came too late").
_KILL_STEPS = range(4, 11)
_DROPOUT = "--model.init_args.vae.init_args.dropout=0.1"  # draws from the global RNG: its state must resume too


def _kill_at_a_random_moment(proc: subprocess.Popen, last: Path) -> str:
    """SIGKILL ``proc`` one random part of a step after last.ckpt (saved every step) shows a
    random step of ``_KILL_STEPS``. The step time is measured on this run, from the save
    times, so the aim holds on a loaded machine as on a fast one. Returns where it aimed."""
    target = random.choice(_KILL_STEPS)
    saves: dict[int, float] = {}  # step -> wall time of its save, for each save seen
    seen = None
    deadline = time.monotonic() + 240
    while True:
        assert proc.poll() is None and time.monotonic() < deadline, "the run ended before it could be killed"
        try:
            stamp = last.stat().st_mtime_ns
        except FileNotFoundError:
            stamp = None
        if stamp is not None and stamp != seen:  # load only a new save: polling must not slow the run
            seen = stamp
            step, saved_at = _saved_step_and_time(last)
            if step >= 0:
                saves.setdefault(step, saved_at)
            if step >= target and len(saves) >= 2:
                break
        time.sleep(0.005)
    (first, t_first), (latest, t_latest) = min(saves.items()), max(saves.items())
    step_seconds = (t_latest - t_first) / (latest - first)
    delay = random.uniform(0.0, step_seconds)
    time.sleep(max(0.0, t_latest + delay - time.time()))
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return f"aimed at the save of step {latest} + {delay:.2f} s of a {step_seconds:.2f} s step"


def test_sigkill_at_a_random_step_then_resume_matches_an_uninterrupted_run(tmp_path: Path) -> None:
    """14 steps over 2 epochs of 8 batches, GAN on from step 5, dropout on, last.ckpt every
    step. Killed with SIGKILL at a random moment of steps 5..11 (saves included), resumed with
    --ckpt_path last: the final weights equal the uninterrupted run's exactly (model, both
    optimizers, schedulers, step, data position, noise and the global RNG all restored)."""
    recipe = quiet_recipe(REPO / "recipes/tiny/tokenizer.yaml", tmp_path / "recipe.yaml", every_n_train_steps=1)
    straight = subprocess.run(_fit_args(recipe, tmp_path / "straight", _DROPOUT), env=ENV, capture_output=True, text=True, timeout=300)
    assert straight.returncode == 0, straight.stderr[-3000:]

    run = tmp_path / "killed"
    last = run / "checkpoints" / "last.ckpt"
    proc = subprocess.Popen(_fit_args(recipe, run, _DROPOUT), env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    aim = _kill_at_a_random_moment(proc, last)
    killed_at = _saved_step(last)
    print(f"killed with step {killed_at} saved, {aim}")  # shown with pytest -s
    assert 4 <= killed_at < 14, f"the kill came too late (step {killed_at}; {aim})"

    resumed = subprocess.run(_fit_args(recipe, run, _DROPOUT, "--ckpt_path=last"), env=ENV, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    a = torch.load(tmp_path / "straight" / "checkpoints" / "last.ckpt", weights_only=True)
    b = torch.load(last, weights_only=True)
    assert a["global_step"] == b["global_step"] == 14
    for key, value in a["state_dict"].items():
        assert torch.equal(value, b["state_dict"][key]), f"{key} differs after resuming from step {killed_at} ({aim})"
    for opt_a, opt_b in zip(a["optimizer_states"], b["optimizer_states"]):
        for i, state in opt_a["state"].items():
            assert torch.equal(state["exp_avg"], opt_b["state"][i]["exp_avg"])
    # --run_dir put everything of the run there
    assert (run / "config.yaml").is_file()


def _fit_tiny_dropout_tokenizer(root: Path, max_steps: int, ckpt_path: Path | None = None) -> dict[str, torch.Tensor]:
    """A dropout VAE, 4 batches an epoch and a validation loader, every step saved as step=N.ckpt."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    from gvc_train.lit.tokenizer import TokenizerModule
    from gvc_train.models.tokenizer.causal_vae import CausalVAE

    L.seed_everything(0, verbose=False)
    vae = CausalVAE(base_channels=8, channel_mults=[1, 2], num_res_blocks=1, mid_attention=False, norm_groups=4, temporal_downsample=[True], dropout=0.3)
    module = TokenizerModule(vae, lr=1e-3, ms_ssim_weight=0.0)
    # one clip in every batch: a plain loader restarts its epoch on resume (the project's loaders
    # continue it: tested below), which must not count as a difference here
    batches = [{"video": torch.rand(1, 3, 5, 16, 16, generator=torch.Generator().manual_seed(1))}] * 4
    save_all = ModelCheckpoint(dirpath=root, filename="{step}", every_n_train_steps=1, save_top_k=-1)
    trainer = L.Trainer(
        accelerator="cpu", max_steps=max_steps, logger=False, enable_progress_bar=False, enable_model_summary=False,
        limit_val_batches=1, num_sanity_val_steps=1, default_root_dir=root, callbacks=[save_all], deterministic=True,
    )  # fmt: skip
    trainer.fit(module, DataLoader(batches, batch_size=None), DataLoader(batches[:1], batch_size=None), ckpt_path=ckpt_path)
    return {k: v.clone() for k, v in module.state_dict().items()}


@pytest.mark.parametrize("resume_step", [4, 6])
def test_dropout_resumes_exactly_whatever_lightning_draws_between_steps(tmp_path: Path, resume_step: int) -> None:
    """Each new data iterator and each validation draw a loader seed from the global RNG that
    dropout uses; a resumed run makes those draws elsewhere (its iterator before its first step;
    after a save at an epoch's last batch, step 4, no validation for that epoch). Resumed from
    either kind of step, dropout draws what the uninterrupted run drew: the same weights."""
    straight = _fit_tiny_dropout_tokenizer(tmp_path / "straight", 8)
    resumed = _fit_tiny_dropout_tokenizer(tmp_path / "resumed", 8, tmp_path / "straight" / f"step={resume_step}.ckpt")
    for key, value in straight.items():
        assert torch.equal(value, resumed[key]), f"{key} differs after resuming from step {resume_step}"


# ---------------------------------------------------------------------------- non-finite losses


def test_many_nonfinite_losses_in_a_row_stop_with_a_checkpoint_from_before(tmp_path: Path) -> None:
    from gvc_train.lit.step_guard import TrainingDiverged
    from gvc_train.lit.tokenizer import TokenizerModule
    from gvc_train.models.tokenizer.causal_vae import CausalVAE

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
