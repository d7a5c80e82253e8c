"""What a training checkpoint carries beside the weights so that it can be exported.

Each LightningModule names its exportable components in ``self.components`` (component name ->
attribute holding a registered module). On save, the checkpoint gets a ``gvc`` entry with each
component's class, constructor config and state-dict prefix, plus provenance (git commit, the
run's full config, data, steps and wall time). ``gvc-export`` reads only that entry and the
state dict: it never needs the LightningModule class.
"""

from __future__ import annotations

import time
from typing import Any

from gvc_train.lit.step_guard import restore_rng_state, rng_state
from gvc_train.provenance import environment, git_commit

CHECKPOINT_KEY = "gvc"


class ComponentCheckpointMixin:
    components: dict[str, str]
    run_config: str | None = None  # the resolved recipe as YAML, set by the CLI

    def on_fit_start(self) -> None:
        self._fit_started = time.monotonic()
        self._git_commit = git_commit()

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        started = getattr(self, "_fit_started", None)
        elapsed = time.monotonic() - started if started is not None else 0.0
        previous = getattr(self, "_train_seconds_before", 0.0)
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        checkpoint["rng_state"] = rng_state()  # Lightning does not save it; exact resume needs it
        checkpoint[CHECKPOINT_KEY] = {
            "components": {
                name: {
                    "class": type(getattr(self, attr)).__name__,
                    "config": getattr(self, attr).config,
                    "state_prefix": f"{attr}.",
                }
                for name, attr in self.components.items()
            },
            "provenance": {
                "git_commit": self._git_commit if hasattr(self, "_git_commit") else git_commit(),
                "recipe": self.run_config,
                "data": getattr(datamodule, "shard_specs", None),
                "global_step": self.global_step if self._trainer is not None else 0,
                "epoch": self.current_epoch if self._trainer is not None else 0,
                "train_seconds": round(previous + elapsed, 1),
                **environment(),
            },
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Wall time accumulates over resumed runs.
        meta = checkpoint.get(CHECKPOINT_KEY, {})
        self._train_seconds_before = float(meta.get("provenance", {}).get("train_seconds", 0.0))
        restore_rng_state(checkpoint.get("rng_state"))
