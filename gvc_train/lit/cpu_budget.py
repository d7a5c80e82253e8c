"""Stop a run when it has trained for a number of CPU seconds, over every resume.

``trainer.max_time`` bounds wall time; on a shared machine the wall clock also counts what
others run, so runs compared "at equal compute" (the SSF peer against the reference latent
codec's tokenizer plus codec) are bounded by CPU time instead: the stage's ``cpu_seconds``
(:func:`gvc_train.lit.stage.cpu_seconds_now`, accumulated in the checkpoints' provenance).

    trainer:
      callbacks+:
        - class_path: gvc_train.lit.cpu_budget.CpuBudget
          init_args: {max_cpu_seconds: 14400}
"""

from __future__ import annotations

from typing import Any

import lightning as L


class CpuBudget(L.Callback):
    """Stop training (after the step, with its checkpoints) once the run's CPU seconds reach
    ``max_cpu_seconds``; a resumed run that is already past it stops after one step."""

    def __init__(self, max_cpu_seconds: float) -> None:
        if max_cpu_seconds <= 0:
            raise ValueError(f"max_cpu_seconds must be > 0, got {max_cpu_seconds}")
        self.max_cpu_seconds = float(max_cpu_seconds)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        used = getattr(pl_module, "cpu_seconds_so_far", None)
        if used is None:
            raise TypeError(f"CpuBudget needs a gvc_train stage (one that counts its CPU time), not {type(pl_module).__name__}")
        if trainer.strategy.broadcast(used() >= self.max_cpu_seconds):
            trainer.should_stop = True
