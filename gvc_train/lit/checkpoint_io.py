"""Atomic checkpoint files: a kill during a save leaves the previous checkpoint whole.

Lightning's ``TorchCheckpointIO`` writes the final path in place, so a job killed mid-save (a
preemption, an OOM kill, a node failure) leaves a truncated ``last.ckpt`` and nothing to resume
from. Here the checkpoint goes to a temporary file in the same folder, is flushed and fsynced,
then renamed over the target (``os.replace`` is atomic within a file system), and the folder is
fsynced so the rename survives a power cut. Temporary files are named ``.gvc-partial-<pid>-<hex>``:
nothing that looks for checkpoints by name (``*.ckpt``, ``hpc_ckpt_*``, ``last*``) can mistake a
killed save's leftover for a checkpoint, and the next save into the same folder removes the
leftovers of writers that are no longer alive.

Reading never unpickles code: ``load_checkpoint`` goes through ``gvc_train.safe_load`` (the
weights-only unpickler, whatever ``weights_only`` Lightning passes, and a refusal in one line),
and ``guard_checkpoint_loads`` puts the same check in front of the strategy's own loader,
because some strategies (FSDP with a full checkpoint) unpickle without the checkpoint IO.

``gvc-train`` installs this plug-in and the guard in every run (see ``gvc_train.cli``).
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from gvc_train.safe_load import UnsafeFile, check_torch_file, load_torch_file, open_for_check
from gvc_train.safe_output import TEMP_MARK, atomic_write_with

TMP_PREFIX = TEMP_MARK  # the mark every temporary of gvc_train carries (safe_output)


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` through :func:`~gvc_train.safe_output.atomic_write_with`, the temporary
    named as the module note says, the folder fsynced after the rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temporaries(path.parent)
    tmp = path.parent / f"{TMP_PREFIX}{os.getpid()}-{uuid.uuid4().hex[:8]}"
    # straight to the file: no second in-memory copy of a big state
    atomic_write_with(path, lambda f: torch.save(obj, f), temp=tmp)
    _fsync_dir(path.parent)
    return path


def _remove_stale_temporaries(folder: Path) -> None:
    for old in folder.glob(f"{TMP_PREFIX}*"):
        pid = old.name[len(TMP_PREFIX) :].split("-", 1)[0]
        if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
            old.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # some file systems (and Windows) cannot open a folder
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class AtomicCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` with write-to-temporary-then-rename saves (local paths).

    Remote URLs (``s3://``...) go through Lightning's own writer: object stores publish an
    object only when its upload completes, which is atomic already.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} does not take storage_options, got {storage_options!r}")
        if "://" in str(path):
            super().save_checkpoint(checkpoint, path)
            return
        atomic_torch_save(checkpoint, path)

    def load_checkpoint(
        self, path: Any, map_location: Any | None = lambda storage, loc: storage, weights_only: bool | None = None
    ) -> dict[str, Any]:
        # weights_only is ignored on purpose: a checkpoint is data, never code (safe_load)
        if "://" in str(path):
            with open_for_check(str(path)) as f:
                return load_torch_file(f, map_location=map_location, what=f"checkpoint {path}")
        return load_torch_file(path, map_location=map_location)


class _CheckedLoad:
    """``strategy.load_checkpoint`` behind :func:`check_torch_file` (a class, not a closure: a
    spawned strategy must pickle)."""

    def __init__(self, load: Any) -> None:
        self.load = load

    def __call__(self, checkpoint_path: Any, weights_only: bool | None = None) -> Any:
        path = str(checkpoint_path)
        if "://" in path:
            with open_for_check(path) as f:
                check_torch_file(f, f"checkpoint {path}")
        elif Path(path).is_dir():
            raise UnsafeFile(
                f"checkpoint {path} is a folder (a sharded checkpoint): gvc_train reads single-file checkpoints only, "
                "because torch.distributed.checkpoint unpickles a folder's metadata; not loaded"
            )
        elif Path(path).is_file():
            check_torch_file(path)
        return self.load(checkpoint_path, weights_only=True)


def guard_checkpoint_loads(strategy: Any) -> None:
    """Check every checkpoint ``strategy`` loads (``--ckpt_path``, ``last``, ``best``, SLURM's
    ``hpc_ckpt_N``: Lightning reads them all through ``strategy.load_checkpoint``)."""
    if not isinstance(strategy.load_checkpoint, _CheckedLoad):
        strategy.load_checkpoint = _CheckedLoad(strategy.load_checkpoint)
