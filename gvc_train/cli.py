"""``gvc-train``: LightningCLI over the recipes in ``recipes/``.

    gvc-train fit --config recipes/tiny/tokenizer.yaml
    gvc-train fit --config recipes/tiny/tokenizer.yaml --ckpt_path last
    gvc-train fit --config recipes/tokenizer.yaml --print_config

Models and data modules are chosen by ``class_path`` in the recipe, so one entry point trains
every stage of every codec family.
"""

from __future__ import annotations

import netrc
import os
import sys
import lightning as L
from lightning.pytorch.cli import LightningCLI, SaveConfigCallback


class RecordConfigCallback(SaveConfigCallback):
    """Save config.yaml as usual, and hand the resolved recipe to the module for provenance."""

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if hasattr(pl_module, "run_config"):
            pl_module.run_config = self.parser.dump(self.config, skip_none=False)
        super().setup(trainer, pl_module, stage)


def _wandb_logged_in() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (OSError, netrc.NetrcParseError):
        return False


def _quiet_defaults() -> None:
    # wandb runs offline unless the user has logged in (`wandb login`) or set WANDB_MODE.
    # Recipes in recipes/tiny/ pin offline mode: they are for CPUs, tests and the demo.
    if not _wandb_logged_in():
        os.environ.setdefault("WANDB_MODE", "offline")
    os.environ.setdefault("WANDB_SILENT", "true")
    # No hub downloads can happen here; fail fast instead of retrying.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")


def run(args: list[str] | None = None) -> LightningCLI:
    """Run the CLI and return it (its trainer and model), for the demo and the tests."""
    _quiet_defaults()
    try:
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
    finally:
        _finish_wandb()


def _finish_wandb() -> None:
    """Close the wandb run, also after a failure, so the next run in this process (tests, the
    demo) gets its own."""
    wandb = sys.modules.get("wandb")
    if wandb is not None and getattr(wandb, "run", None) is not None:
        wandb.finish()


def main(args: list[str] | None = None) -> int:
    """The console script: bad input (missing shards, a recipe that does not fit) ends in one
    line and exit status 2; ``GVC_DEBUG=1`` shows the traceback instead."""
    from gvc_train.components import ComponentError
    from gvc_train.data.pipeline import NoUsableSamples

    try:
        run(args)
    except (FileNotFoundError, NoUsableSamples, ComponentError, ValueError) as e:
        if os.environ.get("GVC_DEBUG"):
            raise
        print(f"gvc-train: error: {type(e).__name__}: {_one_line(str(e))}", file=sys.stderr)
        return 2
    return 0


def _one_line(message: str) -> str:
    """The line that says what is wrong. jsonargparse reports a constructor's exception inside
    "Does not validate against any of the Union subtypes ... Errors: - <the real reason>"."""
    lines = message.strip().splitlines() or [""]
    if "Union subtypes" in lines[0]:
        reasons = [ln.strip()[2:] for ln in lines if ln.strip().startswith("- ") and "Expected a <class 'NoneType'>" not in ln]
        if reasons:
            return reasons[0]
    return lines[0]


if __name__ == "__main__":
    sys.exit(main())
