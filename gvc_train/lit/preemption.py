"""SLURM preemption: on SIGUSR1, save at the next batch boundary, requeue the job, stop.

SLURM sends SIGUSR1 some seconds before a job's time limit (``#SBATCH --signal=SIGUSR1@90``)
or when an administrator or ``scancel --signal=USR1`` asks. Lightning's own auto-requeue saves
the checkpoint inside the signal handler, in the middle of whatever the rank was doing: under
DDP one rank may be inside a gradient all-reduce while another starts the checkpoint's barrier,
and the job hangs until SLURM kills it, with nothing saved. Here the handler only sets a flag.
At the end of each training batch the ranks agree (one all-reduce of a bool: any rank
signalled means all stop), all of them save ``hpc_ckpt_N.ckpt`` into the run folder together
(atomically, see :mod:`gvc_train.lit.checkpoint_io`), rank 0 runs ``scontrol requeue``, and the
run stops. When SLURM starts the requeued job, Lightning finds ``hpc_ckpt_N.ckpt`` in
``default_root_dir`` and restores everything from it (weights, optimizers, schedulers, step,
data position, RNG).

``gvc-train`` adds this callback, and switches Lightning's auto-requeue off, whenever it runs
inside a SLURM job (``gvc_train.cli``).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from typing import Any

import lightning as L

from gvc_train.lit.last_checkpoint import LastCheckpoint


class PreemptionCallback(L.Callback):
    def __init__(self, signum: int = signal.SIGUSR1, requeue: bool = True) -> None:
        self.signum = signal.Signals(signum)
        self.requeue = requeue
        self._signalled = False
        self._previous: Any = None

    def _handler(self, signum: int, frame: Any) -> None:
        self._signalled = True

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._previous = signal.signal(self.signum, self._handler)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._previous is not None:
            signal.signal(self.signum, self._previous)
            self._previous = None

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        if not trainer.strategy.reduce_boolean_decision(self._signalled, all=False):
            return
        self._signalled = False
        path = trainer._checkpoint_connector.hpc_save_path(trainer.default_root_dir)
        trainer.save_checkpoint(path)
        # the run stops next; LastCheckpoint must not spend the rest of the grace time writing
        # last.ckpt for the same step (the requeued job resumes from hpc_ckpt anyway)
        for callback in trainer.checkpoint_callbacks:
            if isinstance(callback, LastCheckpoint):
                callback._last_global_step_saved = trainer.global_step
        job = _job_id()
        message = f"gvc-train: preempted at step {trainer.global_step}: saved {path}"
        if trainer.is_global_zero and self.requeue and job is not None:
            result = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True)
            if result.returncode == 0:
                message += f", requeued job {job}"
            else:
                message += f"; scontrol requeue {job} failed: {result.stderr.strip() or result.returncode}"
        if trainer.is_global_zero:
            print(message, file=sys.stderr, flush=True)
        trainer.should_stop = True


def _job_id() -> str | None:
    array_job = os.environ.get("SLURM_ARRAY_JOB_ID")
    if array_job is not None and "SLURM_ARRAY_TASK_ID" in os.environ:
        return f"{array_job}_{os.environ['SLURM_ARRAY_TASK_ID']}"
    return os.environ.get("SLURM_JOB_ID")
