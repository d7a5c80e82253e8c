"""``gvc-train``: LightningCLI over the recipes in ``recipes/``.

    gvc-train fit --config recipes/tiny/tokenizer.yaml
    gvc-train fit --config recipes/tiny/tokenizer.yaml --ckpt_path last
    gvc-train fit --config recipes/tokenizer.yaml --print_config
    gvc-train fit --config recipes/tiny/tokenizer.yaml --run_dir runs/exp1   # all outputs there

Models and data modules are chosen by ``class_path`` in the recipe, so one entry point trains
every stage of every codec family. A stage recipe takes its trainer, loggers and callbacks from a
base in ``recipes/base/`` that it names itself (``gvc_train.recipe_bases``, read by ``RecipeParser``).

Every run saves checkpoints atomically (``AtomicCheckpointIO``). Inside a SLURM job it also
takes preemption into its own hands (``PreemptionCallback``: save at a batch boundary on
SIGUSR1, requeue) instead of Lightning's in-handler save, which can deadlock DDP.

Checkpoints (``--ckpt_path PATH``, ``last``, ``best``, a SLURM job's ``hpc_ckpt_N``) are read
without unpickling code (``gvc_train.safe_load``): one holding anything but tensors and plain
values is refused with one line. User errors (a bad key, a missing recipe, an invalid value) are
one line ``gvc-train: error: ...`` with exit status 2 (``GVC_DEBUG=1``: the traceback), and a
run that fails before it starts leaves no run folder behind (``lit/run_folders.py``).
"""

from __future__ import annotations

import argparse
import logging
import netrc
import os
import sys
import warnings
from pathlib import Path
from typing import Any

# Start-up noise a user cannot act on (listed so that nothing actionable is hidden):
# torch_geometric, imported by a dependency, calls the deprecated torch.jit.script at import;
# Lightning's pytree helper builds torch's deprecated LeafSpec when it restores a checkpoint.
warnings.filterwarnings("ignore", message=r"`torch\.jit\.script` is deprecated", category=FutureWarning)
warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated", category=FutureWarning)
# Lightning's "The `srun` command is available on your system but is not used" fires wherever a
# SLURM client is installed (a login node, a workstation), twice, before any error: gvc-train's
# own sbatch templates (slurm/) launch with srun, and inside a job it is not shown.
warnings.filterwarnings("ignore", message=r"The `srun` command is available on your system but is not used")

import lightning as L  # noqa: E402
from jsonargparse import Namespace  # noqa: E402
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback  # noqa: E402

from gvc_train.cli_errors import UsageError, explain_argument_error  # noqa: E402
from gvc_train.lit.run_folders import HeldLogs, RunStarted, StartupFolders  # noqa: E402


class _NoAdverts(logging.Filter):
    """Lightning's "💡 Tip: try installing litlogger/litmodels" lines: advertising, not advice."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("💡 Tip")


for _name in (
    "lightning.pytorch.utilities.rank_zero",
    "lightning.fabric.utilities.rank_zero",
    "lightning_utilities.core.rank_zero",
):
    logging.getLogger(_name).addFilter(_NoAdverts())


class RecordConfigCallback(SaveConfigCallback):
    """Hand the resolved recipe to the module for provenance at setup, and write config.yaml
    when the run starts rather than at setup: a run that fails at start-up (missing shards, a
    refused checkpoint) leaves an existing run folder's config.yaml as it was."""

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if hasattr(pl_module, "run_config"):
            pl_module.run_config = self.parser.dump(self.config, skip_none=False)
        self._stage = stage

    def _write(self, trainer: L.Trainer, pl_module: L.LightningModule, *_: Any) -> None:
        super().setup(trainer, pl_module, getattr(self, "_stage", "fit"))

    on_fit_start = on_validation_start = on_test_start = on_predict_start = _write


class RecipeParser(LightningArgumentParser):
    """Reads a recipe that names a ``base`` (``gvc_train.recipe_bases``) with the base laid under
    it; any other config file (a cluster overlay, a recipe without a base) as jsonargparse does."""

    def parse_path(
        self, path: Any, ext_vars: dict | None = None, env: bool | None = None, defaults: bool = True, **kwargs: Any
    ) -> Namespace:
        from gvc_train.recipe_bases import load_recipe, names_a_base

        if not (isinstance(path, (str, os.PathLike)) and os.path.isfile(path) and names_a_base(path)):
            return super().parse_path(path, ext_vars, env, defaults, **kwargs)
        import yaml

        # Parsed as text named after the recipe (jsonargparse's messages name it). Unlike a file,
        # text is not parsed from inside the recipe's folder: recipes need not be, their paths
        # (shards, exports, runs) are relative to the working directory.
        content = yaml.safe_dump(load_recipe(path), sort_keys=False)
        return self.parse_string(content, os.path.basename(path), ext_vars, env, defaults, **kwargs)


class GvcCLI(LightningCLI):
    def __init__(
        self, *args: Any, startup: StartupFolders | None = None, run_started: RunStarted | None = None, **kwargs: Any
    ) -> None:
        self.startup = startup or StartupFolders()
        self.run_started = run_started or RunStarted()
        super().__init__(*args, **kwargs)

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        try:
            super().parse_arguments(parser, args)
        except argparse.ArgumentError as e:
            argv = list(args) if isinstance(args, (list, tuple)) else sys.argv[1:]
            raise UsageError(explain_argument_error(str(e), parser, argv)) from e

    def _parse_ckpt_path(self) -> None:
        # LightningCLI reads the checkpoint's hyper-parameters here, before anything else
        # (torch.load with weights_only=True): gate it like every other checkpoint read.
        import pickle

        from gvc_train.safe_load import check_torch_file, refusal

        sub = self.config.get("subcommand")
        ckpt_path = self.config[sub].get("ckpt_path") if sub else None
        if ckpt_path and Path(ckpt_path).is_file():
            check_torch_file(ckpt_path)
        try:
            super()._parse_ckpt_path()
        except pickle.UnpicklingError as e:
            raise refusal(ckpt_path, "checkpoint", e) from None

    def instantiate_trainer(self, **kwargs: Any) -> L.Trainer:
        from gvc_train.lit.checkpoint_io import guard_checkpoint_loads

        trainer = super().instantiate_trainer(**kwargs)
        guard_checkpoint_loads(trainer.strategy)
        for logger in trainer.loggers:
            # Lightning's WandbLogger always passes anonymous=None, and wandb warns at every run
            # that the setting "has no effect": nothing a user can change.
            init = getattr(logger, "_wandb_init", None)
            if isinstance(init, dict) and init.get("anonymous") is None:
                init.pop("anonymous", None)
        trainer.callbacks.insert(0, self.run_started)  # first: the held start-up lines come first
        return trainer

    def _run_subcommand(self, subcommand: str) -> None:
        if self.trainer.global_rank == 0:
            self.startup.record(self.trainer)
        with warnings.catch_warnings():
            if self.config[subcommand].get("ckpt_path"):
                # Resuming into the run's own checkpoint folder: that it holds checkpoints is the
                # point, not a warning (a fresh run into a used folder still gets it).
                warnings.filterwarnings("ignore", message=r"Checkpoint directory .* exists and is not empty")
            super()._run_subcommand(subcommand)

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
        if cfg.get("weights_only") is False:
            raise UsageError(
                "--weights_only=false is not offered: checkpoints are read without unpickling code (tensors and "
                "plain values); gvc_train's own checkpoints need nothing more"
            )
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
    startup = StartupFolders()
    held = HeldLogs()
    started = RunStarted(held)
    held.hold()
    try:
        return GvcCLI(
            model_class=None,
            datamodule_class=None,
            subclass_mode_model=True,
            subclass_mode_data=True,
            parser_class=RecipeParser,
            save_config_callback=RecordConfigCallback,
            save_config_kwargs={"overwrite": True},
            args=args,
            auto_configure_optimizers=False,
            parser_kwargs={"exit_on_error": False, "description": _DESCRIPTION, **_SUBCOMMANDS},
            startup=startup,
            run_started=started,
        )
    except BaseException:
        _finish_wandb()  # first: wandb writes into its run folder until it is closed
        if not started.started:
            startup.remove_new()
        raise
    finally:
        held.release(drop=not started.started)
        _finish_wandb()


_SAFE_CKPT = (
    " The checkpoint (--ckpt_path PATH, last, best; a SLURM job's hpc_ckpt_N) is read without unpickling "
    "code: a file holding anything but tensors and plain values is refused."
)
_SUBCOMMANDS = {
    "fit": {"description": "Train a stage from a recipe; --ckpt_path last resumes the run." + _SAFE_CKPT},
    "validate": {"description": "Run the validation loop on a checkpoint." + _SAFE_CKPT},
    "test": {"description": "Run the test loop on a checkpoint." + _SAFE_CKPT},
    "predict": {"description": "Run the predict loop on a checkpoint." + _SAFE_CKPT},
}
_DESCRIPTION = (
    "Train, validate or test a gvc_train stage from a recipe (recipes/). Checkpoints given to "
    "--ckpt_path (a path, last, best) are read without unpickling code: a file holding anything "
    "but tensors and plain values is refused."
)


def _finish_wandb() -> None:
    """Close the wandb run, also after a failure, so the next run in this process (tests, the
    demo) gets its own."""
    wandb = sys.modules.get("wandb")
    if wandb is not None and getattr(wandb, "run", None) is not None:
        wandb.finish()


def main(args: list[str] | None = None) -> int:
    """The console script: bad input (a bad key or value, a missing recipe, missing shards, a
    recipe that does not fit, a refused checkpoint) ends in one line and exit status 2;
    ``GVC_DEBUG=1`` shows the traceback instead."""
    from lightning.fabric.utilities.exceptions import MisconfigurationException

    from gvc_train.components import ComponentError
    from gvc_train.data.pipeline import NoUsableSamples
    from gvc_train.lit.step_guard import TrainingDiverged
    from gvc_train.safe_load import NotTorchFile, UnsafeFile

    try:
        run(args)
    except (UsageError, argparse.ArgumentError, MisconfigurationException, UnsafeFile, NotTorchFile) as e:
        if os.environ.get("GVC_DEBUG"):
            raise
        print(f"gvc-train: error: {_one_line(str(e))}", file=sys.stderr)
        return 2
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
