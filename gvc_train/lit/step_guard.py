"""What every training step shares: keyed noise, the non-finite loss guard, RNG state in checkpoints.

- :func:`step_noise`: the step's noise keyed by sample position in the global batch
  (:mod:`gvc_train.models.sample_noise`), so 2 ranks x 2 samples train exactly as 1 process x 4
  samples, and a resumed run draws the same noise as an uninterrupted one.
- :class:`NonFiniteGuard`: a batch whose loss is not finite on any rank is skipped on all of
  them (ranks that stepped alone would wait forever in the gradient all-reduce); after
  ``max_in_a_row`` such batches the run saves a checkpoint (weights and optimizer state are
  still those from before the first bad batch, since nothing stepped) and stops with
  :class:`TrainingDiverged`, which ``gvc-train`` reports in one line.
- :func:`rng_state` / :func:`restore_rng_state`: Python, NumPy, torch (and CUDA) RNG states,
  saved with every checkpoint: Lightning does not save them, and exact resume needs them for
  anything that still draws from the global RNG (dropout, augmentations in the main process).
  :class:`TrainingRngStream` keeps them as one stream across steps (restored at each step's
  start), so the draws Lightning makes between steps (loader seeds) do not shift it.

:class:`gvc_train.lit.stage.StageModule` wires all of them into every stage.
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch

from gvc_train.models.sample_noise import keyed_noise


class TrainingDiverged(RuntimeError):
    """Too many non-finite losses in a row."""


def run_seed() -> int:
    """The seed ``seed_everything`` set (LightningCLI's ``seed_everything``), else 0."""
    return int(os.environ.get("PL_GLOBAL_SEED", 0))


def step_noise(module: L.LightningModule, local_batch_size: int) -> Any:
    """Key this step's noise by (seed, global_step, rank * local_batch_size + i)."""
    rank = module.global_rank if module._trainer is not None else 0
    step = module.global_step if module._trainer is not None else 0
    return keyed_noise(run_seed(), step, rank * local_batch_size)


class NonFiniteGuard:
    """Counts non-finite losses of one optimizer's step; see the module docstring.

    The stop comes from :meth:`stop_if_diverged`, called in ``on_train_batch_end``: outside the
    forward pass, where every strategy (FSDP included) can gather a full state to save.
    """

    def __init__(self, max_in_a_row: int, what: str = "loss", name: str = "nonfinite_skipped") -> None:
        if max_in_a_row < 1:
            raise ValueError(f"max_consecutive_nonfinite must be >= 1, got {max_in_a_row}")
        # ``name``: the skip count's key in checkpoints, and under ``train/`` in the logs
        self.max_in_a_row, self.what, self.name = max_in_a_row, what, name
        self.log_key = f"train/{name}"
        self.skipped = 0
        self.in_a_row = 0
        self._diverged: str | None = None

    def ok(self, module: L.LightningModule, loss: torch.Tensor, batch_size: int) -> bool:
        """True: step. False: skip this batch (counted and logged)."""
        finite = bool(torch.isfinite(loss).all())
        if module._trainer is not None:
            finite = module.trainer.strategy.reduce_boolean_decision(finite, all=True)
        if finite:
            self.in_a_row = 0
            return True
        self.skipped += 1
        self.in_a_row += 1
        module.log(self.log_key, float(self.skipped), batch_size=batch_size)
        if self.in_a_row >= self.max_in_a_row:
            self._diverged = f"{self.in_a_row} batches in a row had a non-finite {self.what} at step {module.global_step}"
        return False

    def stop_if_diverged(self, module: L.LightningModule) -> None:
        """Save and raise :class:`TrainingDiverged` once ``max_in_a_row`` batches were skipped."""
        if self._diverged is None:
            return
        saved = _save_before_fault(module)
        raise TrainingDiverged(
            f"{self._diverged}: training diverged; the weights from before the fault are in {saved} "
            "(lower lr, raise warmup_steps, or resume from an earlier checkpoint)"
        )


class TrainingRngStream:
    """The training steps' RNG stream, unbroken by what Lightning draws between steps.

    Steps draw from the global RNGs (dropout), and so does Lightning between steps: each new data
    iterator and each validation run draw a loader seed. A resumed run repeats those draws in
    other places: it builds its iterator before its first step, and resuming from the last batch
    of an epoch skips that epoch's validation. So the state after each step is kept, checkpoints
    save it, and the next step (in this run or a resumed one) starts from it, whatever Lightning
    drew in between: the steps see one unbroken stream.
    """

    def __init__(self) -> None:
        self._kept: dict[str, Any] | None = None
        self._in_step = False

    def step_started(self) -> None:
        if self._kept is not None:
            restore_rng_state(self._kept)
        self._in_step = True

    def step_ended(self) -> None:
        self._kept = rng_state()
        self._in_step = False

    def state(self) -> dict[str, Any]:
        """The stream's state after the latest step: the global state during a step's batch
        hooks (nothing drew since the step), the kept one elsewhere (after validation)."""
        return rng_state() if self._in_step or self._kept is None else self._kept

    def resume_from(self, state: dict[str, Any] | None) -> None:
        # Not restored now: after a checkpoint loads, Lightning still runs the sanity check and
        # builds the training data iterator, both of which draw from the global torch RNG (the
        # loaders' base seed), so dropout would differ from the first step on. The next step
        # restores it.
        self._kept = state


def _save_before_fault(module: L.LightningModule) -> str:
    if module._trainer is None:
        return "(no trainer: nothing saved)"
    trainer = module.trainer
    callback = trainer.checkpoint_callback
    folder = Path(getattr(callback, "dirpath", None) or trainer.default_root_dir)
    path = folder / f"nonfinite-step{trainer.global_step}.ckpt"
    # Collective under DDP: every rank reaches this together (the decision above is reduced).
    trainer.save_checkpoint(path)
    return str(path)


def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {
        "python": random.getstate(),
        # as a tensor: checkpoints must load with torch.load(weights_only=True), which refuses
        # numpy arrays
        "numpy": _numpy_state_plain(np.random.get_state()),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _numpy_state_plain(state: tuple) -> tuple:
    kind, keys, pos, has_gauss, cached = state
    return (str(kind), torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached))


def restore_rng_state(state: dict[str, Any] | None) -> None:
    if not state:
        return
    random.setstate(state["python"])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.asarray(keys.numpy() if torch.is_tensor(keys) else keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
