"""Where a trained artefact came from: code version, recipe, data, steps.

Used by training checkpoints and carried into every exported component's JSON.
"""

from __future__ import annotations

import platform
import subprocess
from pathlib import Path
from typing import Any

import torch

import gvc_train


def git_commit(path: str | Path | None = None) -> str | None:
    """The commit of the checkout gvc_train runs from, with ``-dirty`` when it has changes."""
    cwd = Path(path) if path else Path(gvc_train.__file__).resolve().parent
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd, capture_output=True, text=True, timeout=10
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return commit + ("-dirty" if dirty else "")


def environment() -> dict[str, Any]:
    return {
        "gvc_train": gvc_train.__version__,
        "torch": str(torch.__version__),  # TorchVersion would not load with weights_only=True
        "python": platform.python_version(),
    }
