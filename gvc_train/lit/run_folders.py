"""A run that fails at start-up leaves no run folder behind.

Lightning creates the loggers' folders (wandb's ``offline-run-*``, CSV's ``version_N``) when it
sets the trainer up, before the data module, the model's ``setup`` and the checkpoint restore
have had a chance to fail; a typo in a shard path then leaves ``runs/NAME/{wandb,csv}`` behind,
and a later run in the same folder is numbered after a run that never happened.

``StartupFolders`` records, before the trainer runs, which of the run's folders exist and what
the existing ones hold (the run folder, each logger's folder, each checkpoint folder) and, in
the wandb and CSV folders that exist already, which runs they hold. If the run then fails before
it starts (``RunStarted`` has not seen the first loop begin), it removes exactly what this run
added: the folders that did not exist, and in the existing log folders the new run entries
(``offline-run-*``, ``version_N``; wandb's ``latest-run`` link is pointed back). Nothing that
existed before is removed, and nothing at all once the run has started (its checkpoints and
logs are the user's).
"""

from __future__ import annotations

import fnmatch
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback


class HeldLogs:
    """Lightning's start-up lines (seed set, GPU/TPU available) are held until the run starts
    and then printed as usual; when the run fails before, they are dropped, and the error is the
    only line. Warnings (the ``warnings`` module) are not held: they may need acting on."""

    NAMES = ("lightning.pytorch", "lightning.fabric")

    def __init__(self) -> None:
        self._records: list[logging.LogRecord] = []
        self._saved: dict[str, list[logging.Handler]] = {}

    def hold(self) -> None:
        collector = _Collect(self._records)
        for name in self.NAMES:
            logger = logging.getLogger(name)
            self._saved[name] = logger.handlers[:]
            logger.handlers = [collector]

    def release(self, drop: bool = False) -> None:
        for name, handlers in self._saved.items():
            logging.getLogger(name).handlers = handlers
        saved, self._saved = self._saved, {}
        records, self._records[:] = self._records[:], []
        if drop:
            return
        for record in records:
            for handler in saved.get(record.name, None) or next(
                (h for n, h in saved.items() if record.name.startswith(n + ".")), []
            ):
                if record.levelno >= handler.level:
                    handler.handle(record)


class _Collect(logging.Handler):
    def __init__(self, records: list[logging.LogRecord]) -> None:
        super().__init__()
        self.records = records

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


class RunStarted(Callback):
    """Marks the moment a run starts: the checkpoint is restored, the strategy is set up and the
    first loop begins (``on_fit_start`` for fit, the loop's start hook otherwise). The held
    start-up lines are printed then."""

    def __init__(self, held: HeldLogs | None = None) -> None:
        self.started = False
        self.held = held

    def _start(self, *_: Any) -> None:
        if not self.started and self.held is not None:
            self.held.release()
        self.started = True

    on_fit_start = on_validation_start = on_test_start = on_predict_start = _start


class StartupFolders:
    def __init__(self) -> None:
        self._missing: set[Path] = set()  # highest missing ancestor of each run folder
        self._listings: dict[Path, tuple[set[str], tuple[str, ...]]] = {}  # log folder -> entries, new-run names
        self._links: dict[Path, str] = {}  # symlinks in those folders (wandb's latest-run, debug.log)

    def record(self, trainer: L.Trainer) -> None:
        for folder, run_names in _run_folders(trainer):
            if not folder.exists():
                top = folder
                while not top.parent.exists():
                    top = top.parent
                self._missing.add(top)
            elif run_names and folder.is_dir() and folder not in self._listings:
                entries = set(os.listdir(folder))
                self._listings[folder] = (entries, run_names)
                for name in entries:
                    if (folder / name).is_symlink():
                        self._links[folder / name] = os.readlink(folder / name)

    def remove_new(self) -> list[Path]:
        """Remove what appeared since :meth:`record`; return the removed paths."""
        removed = []
        for top in sorted(self._missing):
            if top.exists() or top.is_symlink():
                _remove(top)
                removed.append(top)
        for folder, (before, run_names) in self._listings.items():
            if not folder.is_dir():
                continue
            for name in sorted(set(os.listdir(folder)) - before):
                if any(fnmatch.fnmatch(name, pattern) for pattern in run_names):
                    _remove(folder / name)
                    removed.append(folder / name)
        for link, target in self._links.items():
            if link.is_symlink() and os.readlink(link) != target:
                link.unlink()
                link.symlink_to(target)
        return removed


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


# What a new run adds to a log folder that already holds earlier runs.
_WANDB_RUN = ("offline-run-*", "run-*", "latest-run", "debug*.log")
_VERSION = ("version_*",)


def _run_folders(trainer: L.Trainer) -> list[tuple[Path, tuple[str, ...]]]:
    found: list[tuple[Any, tuple[str, ...]]] = [(trainer.default_root_dir, ())]
    for logger in trainer.loggers:
        save_dir = getattr(logger, "save_dir", None)
        found.append((save_dir, ()))
        if type(logger).__name__ == "WandbLogger" and save_dir:
            found.append((Path(save_dir) / "wandb", _WANDB_RUN))
        elif getattr(logger, "root_dir", None):  # CSV, TensorBoard: root_dir/version_N
            found.append((logger.root_dir, _VERSION))
    for callback in trainer.callbacks:
        found.append((getattr(callback, "dirpath", None), ()))
    return [
        (Path(p).absolute(), names) for p, names in found if isinstance(p, (str, os.PathLike)) and "://" not in str(p)
    ]
