"""Atomic checkpoint files: a kill during a save leaves the previous checkpoint whole.

Lightning's ``TorchCheckpointIO`` writes the final path in place, so a job killed mid-save (a
preemption, an OOM kill, a node failure) leaves a truncated ``last.ckpt`` and nothing to resume
from. Here the checkpoint goes to a temporary file in the same folder, is flushed and fsynced,
then renamed over the target (``os.replace`` is atomic within a file system), and the folder is
fsynced so the rename survives a power cut. Temporary files are named ``.gvc-partial-<pid>-<hex>``:
nothing that looks for checkpoints by name (``*.ckpt``, ``hpc_ckpt_*``, ``last*``) can mistake a
killed save's leftover for a checkpoint, and the next save into the same folder removes the
leftovers of writers that are no longer alive.

``gvc-train`` installs this plug-in in every run (see ``gvc_train.cli``).
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

TMP_PREFIX = ".gvc-partial-"


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temporaries(path.parent)
    tmp = path.parent / f"{TMP_PREFIX}{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)  # straight to the file: no second in-memory copy of a big state
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
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
