"""``gvc-train``: LightningCLI over the recipes in ``recipes/``.

    gvc-train fit --config recipes/tiny/tokenizer.yaml
    gvc-train fit --config recipes/tiny/tokenizer.yaml --ckpt_path last
    gvc-train fit --config recipes/tokenizer.yaml --print_config
    gvc-train fit --config recipes/tiny/tokenizer.yaml --run_dir runs/exp1   # all outputs there

Models and data modules are chosen by ``class_path`` in the recipe, so one entry point trains
every stage of every codec family.

Every run saves checkpoints atomically (``AtomicCheckpointIO``). Inside a SLURM job it also
takes preemption into its own hands (``PreemptionCallback``: save at a batch boundary on
SIGUSR1, requeue) instead of Lightning's in-handler save, which can deadlock DDP.
"""

from __future__ import annotations

import netrc
import os
import sys
import lightning as L
from jsonargparse import Namespace
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback


class RecordConfigCallback(SaveConfigCallback):
    """Save config.yaml as usual, and hand the resolved recipe to the module for provenance."""

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if hasattr(pl_module, "run_config"):
            pl_module.run_config = self.parser.dump(self.config, skip_none=False)
        super().setup(trainer, pl_module, stage)


class GvcCLI(LightningCLI):
    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_argument(
            "--run_dir",
            type=str | None,
            default=None,
            help="Put all of the run's outputs (checkpoints, logs, config) under this folder: the "
            "recipe's default_root_dir is replaced by it in every path that starts with it.",
        )

    def before_instantiate_classes(self) -> None:
        cfg = self.config.get(self.subcommand) if self.subcommand else self.config
        if cfg is None or "trainer" not in cfg:
            return
        run_dir = cfg.get("run_dir")
        if run_dir:
            move_run_dir(cfg.trainer, str(run_dir))
        add_plugin(cfg.trainer, "gvc_train.lit.checkpoint_io.AtomicCheckpointIO", {})
        if _in_slurm_job():
            add_plugin(cfg.trainer, "lightning.pytorch.plugins.environments.SLURMEnvironment", {"auto_requeue": False})
            callbacks = list(cfg.trainer.get("callbacks") or [])
            callbacks.append(Namespace(class_path="gvc_train.lit.preemption.PreemptionCallback", init_args=Namespace()))
            cfg.trainer.callbacks = callbacks


def _in_slurm_job() -> bool:
    from lightning.pytorch.plugins.environments import SLURMEnvironment

    return SLURMEnvironment.detect()


def move_run_dir(trainer_cfg: Namespace, run_dir: str) -> None:
    """Replace the recipe's ``default_root_dir`` prefix by ``run_dir`` in every trainer path."""
    old = str(trainer_cfg.get("default_root_dir") or "").rstrip("/")
    trainer_cfg.default_root_dir = run_dir

    def moved(value: object) -> object:
        if isinstance(value, str) and old and (value == old or value.startswith(old + "/")):
            return run_dir + value[len(old) :]
        return value

    for group in ("callbacks", "logger"):
        items = trainer_cfg.get(group)
        if not isinstance(items, list):
            continue
        for item in items:
            init = item.get("init_args") if isinstance(item, Namespace) else None
            if init is None:
                continue
            for key in ("dirpath", "save_dir", "root_dir"):
                if key in init:
                    init[key] = moved(init[key])


def add_plugin(trainer_cfg: Namespace, class_path: str, init_args: dict) -> None:
    """Add a plug-in unless one of the same kind is configured already."""
    plugins = trainer_cfg.get("plugins")
    plugins = [] if plugins is None else list(plugins) if isinstance(plugins, list) else [plugins]
    name = class_path.rsplit(".", 1)[1]
    kinds = {"AtomicCheckpointIO": "CheckpointIO", "SLURMEnvironment": "Environment"}
    for p in plugins:
        existing = p.get("class_path", "") if isinstance(p, Namespace) else type(p).__name__
        if existing.endswith(kinds.get(name, name)):
            return
    plugins.append(Namespace(class_path=class_path, init_args=Namespace(**init_args)))
    trainer_cfg.plugins = plugins


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
        return GvcCLI(
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
    from gvc_train.lit.step_guard import TrainingDiverged

    try:
        run(args)
    except (FileNotFoundError, NoUsableSamples, ComponentError, ValueError, TrainingDiverged) as e:
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
