"""Optimizer helpers shared by the training stages (manual optimization)."""

from __future__ import annotations

from typing import Any

import lightning as L


def step_uncounted(module: L.LightningModule, optimizer: Any) -> None:
    """Step a second optimizer (a discriminator's, the entropy model's aux) without advancing
    ``global_step``.

    Under manual optimization Lightning counts every ``LightningOptimizer.step()`` as a global
    step, so a batch with two optimizer steps would count twice and ``max_steps``, step-based
    schedules and checkpoint names would drift. Stepping through the strategy keeps precision
    plugins (AMP grad scaling) and distributed strategies in the loop.
    """
    module.trainer.strategy.optimizer_step(optimizer.optimizer, closure=lambda: None, model=module)
