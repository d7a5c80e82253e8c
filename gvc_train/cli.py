"""``gvc-train``: LightningCLI over the recipes in ``recipes/``.

    gvc-train fit --config recipes/tiny/tokenizer.yaml
    gvc-train fit --config recipes/tiny/tokenizer.yaml --ckpt_path last
    gvc-train fit --config recipes/tokenizer.yaml --print_config

Models and data modules are chosen by ``class_path`` in the recipe, so one entry point trains
every stage of every codec family.
"""

from __future__ import annotations

import os
import lightning as L
from lightning.pytorch.cli import LightningCLI, SaveConfigCallback


class RecordConfigCallback(SaveConfigCallback):
    """Save config.yaml as usual, and hand the resolved recipe to the module for provenance."""

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if hasattr(pl_module, "run_config"):
            pl_module.run_config = self.parser.dump(self.config, skip_none=False)
        super().setup(trainer, pl_module, stage)


def _quiet_defaults() -> None:
    # wandb runs offline unless the user has logged in and switched it on (WANDB_MODE=online).
    os.environ.setdefault("WANDB_MODE", "offline")
    os.environ.setdefault("WANDB_SILENT", "true")
    # No hub downloads can happen here; fail fast instead of retrying.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main(args: list[str] | None = None) -> LightningCLI:
    _quiet_defaults()
    return LightningCLI(
        model_class=None,
        datamodule_class=None,
        subclass_mode_model=True,
        subclass_mode_data=True,
        save_config_callback=RecordConfigCallback,
        save_config_kwargs={"overwrite": True},
        args=args,
        auto_configure_optimizers=False,
    )


if __name__ == "__main__":
    main()
