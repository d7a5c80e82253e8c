"""What a training checkpoint carries beside the weights so that it can be exported.

Each stage names its exportable components (``StageModule.exported_components``: component name
-> attribute holding a registered module). On save, the checkpoint gets a ``gvc`` entry
(:data:`CHECKPOINT_KEY`) with each component's registered class name, constructor config and
state-dict prefix, plus provenance (git commit, the run's full config, data, steps and wall
time). ``gvc-export`` reads only that entry and the state dict: it never needs the
LightningModule class. The entry's layout is a contract: checkpoints written by earlier
versions must keep exporting.

A component fine-tuned with LoRA adapters (``lit/lora.py``) has ``"lora"`` in its entry (an
optional key; ``gvc-export`` merges the adapters before loading the plain class). A frozen
component loaded from an export has ``"provenance"`` (optional): that export's, which
``gvc-export`` writes for it instead of the run's. The stage
declares its adapters in ``self._lora``: stage attribute -> ``lora.lora_entry(spec)``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import lightning as L

from gvc_train.models.registry import name_of
from gvc_train.provenance import environment

CHECKPOINT_KEY = "gvc"


def lora_entries(module: L.LightningModule) -> Mapping[str, Mapping[str, Any]]:
    """The stage's declared adapters: attribute -> lora entry (none for a stage without LoRA)."""
    return getattr(module, "_lora", None) or {}


def unexportable_components(module: L.LightningModule, exported: Mapping[str, str]) -> list[str]:
    """``"name (why)"`` for each exported component that ``gvc-export`` could not write: a
    missing attribute, a module whose class is not registered or has no constructor config, or
    LoRA adapters that the stage's ``_lora`` does not declare (export could not merge them)."""
    problems = []
    adapters = lora_entries(module)
    for name, attr in exported.items():
        component = getattr(module, attr, None)
        if component is None:
            problems.append(f"{name} (no attribute {attr!r})")
        elif name_of(type(component)) is None or not isinstance(getattr(component, "config", None), dict):
            problems.append(f"{name} ({type(component).__name__} is not a registered component)")
        elif attr not in adapters and any(".lora_A." in n for n, _ in component.named_parameters()):
            # the export could not merge them: the strict load of the plain class would fail
            problems.append(f"{name} (carries LoRA adapters but the stage's _lora has no entry for {attr!r})")
    return problems


def checkpoint_entry(
    module: L.LightningModule,
    exported: Mapping[str, str],
    *,
    git_commit: str | None,
    run_config: str | None,
    train_seconds: float,
) -> dict[str, Any]:
    """The :data:`CHECKPOINT_KEY` entry of ``module``'s checkpoint."""
    has_trainer = module._trainer is not None
    datamodule = getattr(module.trainer, "datamodule", None) if has_trainer else None
    components = {}
    adapters = lora_entries(module)
    for name, attr in exported.items():
        component = getattr(module, attr)
        components[name] = {
            # the registered name is what the loader looks up (the class's own name otherwise)
            "class": name_of(type(component)) or type(component).__name__,
            "config": component.config,
            "state_prefix": f"{attr}.",
        }
        if attr in adapters:
            components[name]["lora"] = dict(adapters[attr])
        source = getattr(component, "source_provenance", None)
        if source and attr in getattr(module, "frozen_components", ()):
            # loaded from an export and never trained here: its export keeps where it was trained
            # (a latent codec's tokenizer: the tokenizer run's steps and time, not the codec's)
            components[name]["provenance"] = dict(source)
    return {
        "components": components,
        "provenance": {
            "git_commit": git_commit,
            "recipe": run_config,
            "data": getattr(datamodule, "shard_specs", None),
            "global_step": module.global_step if has_trainer else 0,
            "epoch": module.current_epoch if has_trainer else 0,
            "train_seconds": round(train_seconds, 1),
            **environment(),
        },
    }


def train_seconds_so_far(checkpoint: Mapping[str, Any]) -> float:
    """The wall time the runs before this checkpoint trained (it accumulates over resumes)."""
    return float(checkpoint.get(CHECKPOINT_KEY, {}).get("provenance", {}).get("train_seconds", 0.0))
