"""Runs mediapipe in its own venv: the pose and selfie-segmentation extractors call :func:`run`.

mediapipe 0.10.21 (the last release with its legacy models bundled) cannot share the main venv
(it needs protobuf < 5, wandb needs >= 5), so ``make setup`` gives it ``.venv-mediapipe`` and this
module talks to :mod:`gvc_train.controls.mediapipe_worker` running there. One worker serves every
extractor of a process; it starts on the first call (about 2 s: importing mediapipe) and stops
with the process. The python it runs: ``$GVC_MEDIAPIPE_PYTHON`` if set, else
``.venv-mediapipe/bin/python`` beside this checkout's ``gvc_train`` package.
"""

from __future__ import annotations

import atexit
import os
import subprocess
import tempfile
import threading
from pathlib import Path
from typing import IO, Any

import numpy as np

from gvc_train.controls.mediapipe_worker import receive, send

PYTHON_ENV = "GVC_MEDIAPIPE_PYTHON"
DEFAULT_VENV = Path(__file__).resolve().parents[2] / ".venv-mediapipe"
WORKER = Path(__file__).with_name("mediapipe_worker.py")


class MediapipeUnavailable(RuntimeError):
    """No python with mediapipe 0.10.21 to run the worker: the message says what to do."""


def worker_python() -> Path:
    configured = os.environ.get(PYTHON_ENV)
    python = Path(configured) if configured else DEFAULT_VENV / "bin" / "python"
    if not python.exists():
        raise MediapipeUnavailable(
            f"pose and selfie segmentation run mediapipe 0.10.21 in its own venv, and {python} does not exist: "
            f"run `make setup` (it makes .venv-mediapipe) or set {PYTHON_ENV} to a python that has mediapipe 0.10.21"
        )
    return python


class _Worker:
    """One worker process, owned by the process that started it (a forked child starts its own)."""

    def __init__(self) -> None:
        python = worker_python()
        self.pid = os.getpid()
        self.log: IO[bytes] = tempfile.TemporaryFile()
        # glog's INFO/WARNING lines (one per graph) would only fill the log
        env = {**os.environ, "GLOG_minloglevel": "2", "TF_CPP_MIN_LOG_LEVEL": "2"}
        self.proc = subprocess.Popen(
            # -I: not the script's folder (gvc_train/controls) on sys.path, nor PYTHON* variables
            [str(python), "-I", str(WORKER)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log, env=env
        )
        ready = self._receive()
        if ready is None or "ready" not in ready[0]:
            self.close()
            raise MediapipeUnavailable(f"{python} could not start the mediapipe worker: {self.last_log_line()}")

    def alive(self) -> bool:
        return self.pid == os.getpid() and self.proc.poll() is None

    def call(self, op: str, settings: dict[str, Any], frames_THWC: np.ndarray) -> list[np.ndarray]:
        try:
            send(self.proc.stdin, {"op": op, "settings": settings}, [frames_THWC])
            reply = self._receive()
        except (BrokenPipeError, OSError):
            reply = None
        if reply is None:
            self.close()
            raise RuntimeError(f"the mediapipe worker stopped during {op!r}: {self.last_log_line()}")
        header, arrays = reply
        if "error" in header:
            raise RuntimeError(f"mediapipe {op}: {header['error']}")
        return arrays

    def _receive(self) -> tuple[dict[str, Any], list[np.ndarray]] | None:
        try:
            return receive(self.proc.stdout)
        except (EOFError, ValueError):  # a reply cut short or garbled: the worker died mid-way
            return None

    def last_log_line(self) -> str:
        self.log.seek(0)
        lines = [line for line in self.log.read().decode(errors="replace").splitlines() if line.strip()]
        return lines[-1].strip() if lines else f"exit status {self.proc.poll()}"

    def close(self) -> None:
        if self.pid != os.getpid():
            return
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream:
                stream.close()
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


_worker: _Worker | None = None
_lock = threading.Lock()


def run(op: str, settings: dict[str, Any], frames_THWC: np.ndarray) -> list[np.ndarray]:
    """One clip through mediapipe (``op``: "pose" or "selfie"; what comes back:
    :mod:`gvc_train.controls.mediapipe_worker`). ``frames_THWC``: uint8 RGB."""
    global _worker
    with _lock:
        if _worker is None or not _worker.alive():
            _worker = _Worker()
        return _worker.call(op, settings, frames_THWC)


def stop() -> None:
    """Stop this process's worker (the next :func:`run` starts a new one)."""
    global _worker
    with _lock:
        if _worker is not None:
            _worker.close()
            _worker = None


atexit.register(stop)
