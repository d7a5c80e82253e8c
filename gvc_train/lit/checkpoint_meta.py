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
        checkpoint["rng_state"] = self._training_rng_state()  # Lightning does not save it; exact resume needs it
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
        # Not restored here: after this hook Lightning still runs the sanity check and builds the
        # training data iterator, both of which draw from the global torch RNG (the loaders' base
        # seed), so dropout would differ from the first step on. The next step restores it.
        self._train_rng = checkpoint.get("rng_state")

    # The training RNG stream. Steps draw from the global RNGs (dropout), and so does Lightning
    # between steps: each new data iterator and each validation run draw a loader seed. A resumed
    # run repeats those draws in other places: it builds its iterator before its first step, and
    # resuming from the last batch of an epoch skips that epoch's validation. So the state after
    # each step is kept, checkpoints save it, and the next step (in this run or a resumed one)
    # starts from it, whatever Lightning drew in between: the steps see one unbroken stream.
    _train_rng: dict[str, Any] | None = None
    _in_train_batch = False

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        super().on_train_batch_start(batch, batch_idx)  # type: ignore[misc]
        if self._train_rng is not None:
            restore_rng_state(self._train_rng)
        self._in_train_batch = True

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        # Lightning calls the callbacks' hooks (ModelCheckpoint's batch-end save) before this one.
        super().on_train_batch_end(outputs, batch, batch_idx)  # type: ignore[misc]
        self._train_rng = rng_state()
        self._in_train_batch = False

    def _training_rng_state(self) -> dict[str, Any]:
        """The stream's state after the latest step: the global state during a step's batch
        hooks (nothing drew since the step), the kept one elsewhere (after validation)."""
        return rng_state() if self._in_train_batch or self._train_rng is None else self._train_rng
