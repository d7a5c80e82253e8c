"""``LastCheckpoint``: last.ckpt every N training steps and when training ends.

Lightning's ``ModelCheckpoint`` saves after validation or every N steps, but not when a run
stops at ``max_steps`` or ``max_time`` between the two, so the last steps of a run could be
missing from ``last.ckpt``. Saves go through the trainer's checkpoint IO (atomic under
``gvc-train``) and are skipped when the step was saved already.
"""

from __future__ import annotations

import warnings

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint

# Lightning 2.6 warns (at every save) that with manual optimization a step-based checkpoint holds
# the weights after that step's update. That is what resuming needs: the checkpoint's
# global_step counts that update, and tests/test_fault_tolerance.py resumes bit-exactly from it.
warnings.filterwarnings("ignore", message="Using ModelCheckpoint with manual optimization and every_n_train_steps")


class LastCheckpoint(ModelCheckpoint):
    def __init__(self, dirpath: str, every_n_train_steps: int = 1000) -> None:
        super().__init__(
            dirpath=dirpath, every_n_train_steps=every_n_train_steps, save_top_k=0, save_last=True,
            enable_version_counter=False,  # always last.ckpt, never last-v1.ckpt
        )

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_end(trainer, pl_module)
        if trainer.fast_dev_run or trainer.sanity_checking:
            return
        if self._last_global_step_saved != trainer.global_step:
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
