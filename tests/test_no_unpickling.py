"""No command unpickles code from a file a user passes: a crafted checkpoint whose unpickling
would create a file is refused, with one line, by gvc-export and by gvc-train (fit, validate and
test with --ckpt_path PATH, --ckpt_path last, a SLURM job's hpc_ckpt_N); the project's own
checkpoints hold nothing that the weights-only unpickler refuses."""

from __future__ import annotations

import builtins
import pickle
from pathlib import Path

import pytest
import torch

from gvc_train.cli import main as gvc_train_main
from gvc_train.export import main as gvc_export_main
from gvc_train.safe_load import ALLOWED_GLOBALS, UnsafeFile, check_torch_file, load_torch_file

from conftest import REPO, quiet_recipe, synthetic_data_args

TOKENIZER = REPO / "recipes/tiny/tokenizer.yaml"


class _Open:
    """Unpickling this calls open(marker, "w"): the file appears."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (builtins.open, (self.marker, "w"))


class _Exec:
    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (builtins.exec, (f"open({self.marker!r}, 'w').close()",))


def craft(path: Path, marker: Path, kind: str = "open") -> Path:
    """A file that looks like a Lightning checkpoint and runs code when unpickled."""
    payload = {"open": _Open, "exec": _Exec}[kind.split("-")[0]](marker)
    ckpt = {"state_dict": {}, "global_step": 3, "gvc": {"components": {}}, "loops": payload}
    path.parent.mkdir(parents=True, exist_ok=True)
    if kind.endswith("legacy"):  # torch's pre-1.6 format: not a zip archive, no static scan
        torch.save(ckpt, path, _use_new_zipfile_serialization=False)
    elif kind.endswith("proto4"):  # STACK_GLOBAL instead of GLOBAL
        torch.save(ckpt, path, pickle_protocol=4)
    else:
        torch.save(ckpt, path)
    return path


def test_the_crafted_file_does_run_code_when_unpickled(tmp_path: Path) -> None:
    # the baseline: what gvc-export did before (torch.load(weights_only=False))
    craft(tmp_path / "evil.ckpt", tmp_path / "PWNED")
    torch.load(tmp_path / "evil.ckpt", weights_only=False)
    assert (tmp_path / "PWNED").exists()


@pytest.mark.parametrize("kind", ["open", "exec", "open-legacy", "exec-proto4"])
def test_safe_loader_refuses_without_running_code(tmp_path: Path, kind: str) -> None:
    path = craft(tmp_path / "evil.ckpt", tmp_path / "PWNED", kind)
    with pytest.raises(UnsafeFile) as e:
        load_torch_file(path)
    message = str(e.value)
    assert "\n" not in message and "could run code" in message and str(path) in message
    if kind in ("open", "exec", "open-legacy"):  # the refused type is named
        assert ("io.open" in message or "builtins.open" in message) if kind.startswith("open") else "exec" in message
    assert not (tmp_path / "PWNED").exists()


@pytest.mark.parametrize("kind", ["open", "exec", "open-legacy"])
def test_gvc_export_refuses_a_crafted_checkpoint(tmp_path: Path, kind: str, capsys: pytest.CaptureFixture) -> None:
    path = craft(tmp_path / "evil.ckpt", tmp_path / "PWNED", kind)
    assert gvc_export_main([str(path), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("gvc-export: error: ") and "could run code" in err[0], err
    assert not (tmp_path / "PWNED").exists()
    assert not (tmp_path / "out").exists()


def _train_args(run_dir: Path, recipe: Path, *extra: str, subcommand: str = "fit") -> list[str]:
    return [
        subcommand, "--config", str(recipe), *synthetic_data_args(2, samples_per_epoch=4),
        "--trainer.accelerator=cpu", "--trainer.max_steps=2", "--trainer.limit_val_batches=1",
        f"--run_dir={run_dir}", *extra,
    ]  # fmt: skip


def _one_error_line(capsys: pytest.CaptureFixture) -> str:
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(err) == 1 and err[0].startswith("gvc-train: error: "), err
    return err[0]


@pytest.mark.parametrize("subcommand", ["fit", "validate", "test"])
def test_gvc_train_refuses_a_crafted_ckpt_path(tmp_path: Path, subcommand: str, capsys, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    # Even where torch is told to unpickle everything, the checkpoint is read weights-only.
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    recipe = quiet_recipe(TOKENIZER, tmp_path / "recipe.yaml")
    path = craft(tmp_path / "evil.ckpt", tmp_path / "PWNED")
    run = tmp_path / "run"
    assert gvc_train_main(_train_args(run, recipe, f"--ckpt_path={path}", subcommand=subcommand)) == 2
    line = _one_error_line(capsys)
    assert "io.open" in line and "could run code" in line
    assert not (tmp_path / "PWNED").exists()
    assert not run.exists()  # nothing of the run was created either


def test_gvc_train_refuses_a_crafted_last_ckpt(tmp_path: Path, capsys, monkeypatch) -> None:
    """``--ckpt_path last`` is resolved by Lightning inside the trainer, past the CLI's own
    check: the strategy's loader is guarded too."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    recipe = quiet_recipe(TOKENIZER, tmp_path / "recipe.yaml")
    run = tmp_path / "run"
    craft(run / "checkpoints" / "last.ckpt", tmp_path / "PWNED", "exec")
    assert gvc_train_main(_train_args(run, recipe, "--ckpt_path=last")) == 2
    assert "could run code" in _one_error_line(capsys)
    assert not (tmp_path / "PWNED").exists()
    assert sorted(p.name for p in run.rglob("*")) == ["checkpoints", "last.ckpt"]  # nothing added


def test_gvc_train_refuses_a_crafted_hpc_checkpoint_in_a_slurm_job(tmp_path: Path, capsys, monkeypatch) -> None:
    """A requeued SLURM job resumes from the newest hpc_ckpt_N.ckpt in default_root_dir."""
    monkeypatch.chdir(tmp_path)
    for key, value in {"SLURM_NTASKS": "1", "SLURM_JOB_NAME": "gvc", "SLURM_JOB_ID": "77", "SLURM_PROCID": "0",
                       "SLURM_LOCALID": "0", "SLURM_NODEID": "0", "SLURM_NODELIST": "localhost"}.items():  # fmt: skip
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    recipe = quiet_recipe(TOKENIZER, tmp_path / "recipe.yaml")
    run = tmp_path / "run"
    craft(run / "hpc_ckpt_1.ckpt", tmp_path / "PWNED")
    assert gvc_train_main(_train_args(run, recipe)) == 2
    line = _one_error_line(capsys)
    assert "hpc_ckpt_1.ckpt" in line and "could run code" in line
    assert not (tmp_path / "PWNED").exists()


def test_the_strategy_guard_runs_before_a_loader_that_unpickles_on_its_own(tmp_path: Path) -> None:
    """Lightning's FSDP strategy reads a full checkpoint with a plain pickle.Unpickler, not
    through the checkpoint IO: the guard checks the file first."""
    from gvc_train.lit.checkpoint_io import guard_checkpoint_loads

    class PicklingStrategy:  # stands in for FSDPStrategy (which needs CUDA)
        def load_checkpoint(self, checkpoint_path, weights_only=None):
            with open(checkpoint_path, "rb") as f:
                return pickle.load(f)  # what an unguarded loader does

    strategy = PicklingStrategy()
    guard_checkpoint_loads(strategy)
    guard_checkpoint_loads(strategy)  # idempotent
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps(_Open(tmp_path / "PWNED")))  # a bare pickle, not even torch.save
    with pytest.raises(UnsafeFile):
        strategy.load_checkpoint(path)
    craft(tmp_path / "evil.ckpt", tmp_path / "PWNED")
    with pytest.raises(UnsafeFile):
        strategy.load_checkpoint(tmp_path / "evil.ckpt")
    (tmp_path / "sharded").mkdir()
    with pytest.raises(UnsafeFile, match="sharded"):
        strategy.load_checkpoint(tmp_path / "sharded")
    assert not (tmp_path / "PWNED").exists()


def test_a_bare_pickle_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps(_Exec(tmp_path / "PWNED")))
    with pytest.raises(UnsafeFile):
        load_torch_file(path)
    assert not (tmp_path / "PWNED").exists()


# ---------------------------------------------------------------- the project's own checkpoints


def _assert_plain(path: Path) -> None:
    check_torch_file(path)  # no pickled type beyond torch's weights-only set
    torch.load(path, weights_only=True)  # and torch's own unpickler agrees, with no allowlist


def test_allowlist_is_empty() -> None:
    # Checkpoints are kept plain rather than widening the unpickler: see gvc_train/safe_load.py.
    assert ALLOWED_GLOBALS == ()


def test_tokenizer_checkpoints_with_gan_are_plain_and_export(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    recipe = quiet_recipe(TOKENIZER, tmp_path / "recipe.yaml")
    run = tmp_path / "run"
    args = _train_args(run, recipe, "--model.init_args.gan_start_step=0")
    assert gvc_train_main(args) == 0
    saved = sorted((run / "checkpoints").glob("*.ckpt"))
    assert {p.name for p in saved} >= {"last.ckpt"} and len(saved) == 2  # last + best
    for path in saved:
        _assert_plain(path)
    ckpt = load_torch_file(run / "checkpoints" / "last.ckpt")
    assert len(ckpt["optimizer_states"]) == 2  # generator + discriminator, both restored on resume
    # resume: Lightning 2.6 reads the checkpoint through AtomicCheckpointIO.load_checkpoint
    from gvc_train.lit.checkpoint_io import AtomicCheckpointIO

    loaded = []
    original = AtomicCheckpointIO.load_checkpoint

    def spy(self, path, *a, **k):
        loaded.append(Path(path).name)
        return original(self, path, *a, **k)

    monkeypatch.setattr(AtomicCheckpointIO, "load_checkpoint", spy)
    assert gvc_train_main([*args, "--trainer.max_steps=3", "--ckpt_path=last"]) == 0
    assert loaded == ["last.ckpt"]
    assert load_torch_file(run / "checkpoints" / "last.ckpt")["global_step"] == 3
    assert gvc_export_main([str(run / "checkpoints" / "last.ckpt"), "--out", str(tmp_path / "export")]) == 0
    assert (tmp_path / "export" / "tokenizer.safetensors").is_file()


def test_latent_codec_checkpoints_are_plain(tmp_path: Path, tiny_codec_dir: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    recipe = quiet_recipe(REPO / "recipes/tiny/latent_codec.yaml", tmp_path / "recipe.yaml")
    run = tmp_path / "run"
    codec = "--model.init_args.codec.init_args"
    args = [
        *_train_args(run, recipe), f"--model.init_args.tokenizer_path={tiny_codec_dir}",
        f"{codec}.latent_channels=4", f"{codec}.channels=8", f"{codec}.y_channels=4", f"{codec}.z_channels=4",
        f"{codec}.memory_channels=4", "--model.init_args.lambdas=[1.0,4.0]", f"{codec}.num_qualities=2",
    ]  # fmt: skip
    assert gvc_train_main(args) == 0
    for path in (run / "checkpoints").glob("*.ckpt"):
        _assert_plain(path)
    assert gvc_train_main([*args, "--trainer.max_steps=3", "--ckpt_path=last"]) == 0
    last = load_torch_file(run / "checkpoints" / "last.ckpt")
    assert last["global_step"] == 3 and len(last["optimizer_states"]) == 2  # main + aux


def test_a_file_that_is_no_pickle_is_unreadable_not_unsafe(tmp_path: Path) -> None:
    from gvc_train.safe_load import NotTorchFile

    (tmp_path / "junk.ckpt").write_bytes(b"not a checkpoint")
    with pytest.raises(NotTorchFile, match="not a torch.save file"):
        load_torch_file(tmp_path / "junk.ckpt")
