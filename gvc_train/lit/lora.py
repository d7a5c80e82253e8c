"""LoRA adapters on a stage's transformer (``finetune.lora``), injected in place with peft.

``inject_lora(module, spec)`` replaces each targeted ``nn.Linear`` of ``module`` by peft's LoRA
layer (``peft.inject_adapter_in_model``, not ``get_peft_model``: the latter wraps the module and
renames its state keys under ``base_model.model.``). The module keeps its class, its attribute
on the stage and its keys: ``X.weight`` becomes ``X.base_layer.weight`` beside
``X.lora_A.default.weight`` and ``X.lora_B.default.weight``. Training, validation and resume
run the adapted module; ``gvc-export`` folds the adapters into plain weights
(:mod:`gvc_train.lora_merge`), so an export never needs peft.

peft is imported here only when an adapter is injected: it is needed for LoRA training only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import nn

from gvc_train.lora_merge import ADAPTER

PEFT_PIN = "peft==0.21.2"


@dataclass
class LoraSpec:
    """``component``: the stage's component to adapt (e.g. ``context_model``; not ``on``, which
    YAML reads as a boolean). ``r``, ``alpha``: rank and
    scale numerator (the adapter's output is scaled by ``alpha / r``, or ``alpha / sqrt(r)`` with
    ``rslora``). ``targets``: ``nn.Linear`` module names or name suffixes, as peft matches them
    (``qkv`` matches ``blocks.0.attn.qkv``, ``"0"`` matches ``blocks.0.mlp.0`` but never the
    block ``blocks.0``: only Linear layers are adapted). ``dropout``: on the adapter's input."""

    component: str
    r: int
    alpha: float
    targets: list[str] = field(default_factory=list)
    dropout: float = 0.0
    rslora: bool = False

    def __post_init__(self) -> None:
        if self.r < 1:
            raise ValueError(f"finetune.lora.r must be >= 1, got {self.r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"finetune.lora.dropout must be in [0, 1), got {self.dropout}")
        if not self.targets:
            raise ValueError("finetune.lora.targets is empty: name the Linear layers to adapt (e.g. [qkv, proj])")


def lora_entry(spec: LoraSpec) -> dict[str, Any]:
    """The JSON-able record of ``spec`` that the checkpoint's component entry carries (``lora``):
    what :func:`gvc_train.lora_merge.merge_lora` needs at export."""
    return {"r": spec.r, "alpha": spec.alpha, "rslora": spec.rslora, "targets": list(spec.targets), "adapter": ADAPTER}


def _matches(name: str, target: str) -> bool:
    return name == target or name.endswith(f".{target}")  # peft's rule for a list of targets


def linear_targets(module: nn.Module, targets: list[str]) -> list[str]:
    """The full names of ``module``'s Linear layers that ``targets`` match; one line listing the
    Linear names when a target matches none of them."""
    linears = [name for name, m in module.named_modules() if isinstance(m, nn.Linear)]
    for target in targets:
        if not any(_matches(name, target) for name in linears):
            raise ValueError(f"finetune.lora.targets: {target!r} matches no nn.Linear of {type(module).__name__}; its Linear layers are {linears}")
    return [name for name in linears if any(_matches(name, t) for t in targets)]


class PeftMissing(ImportError, ValueError):
    """peft is not installed. A ValueError too, so gvc-train prints it as its one-line user error."""


def _peft() -> Any:
    try:
        import peft
    except ImportError:
        raise PeftMissing(f"finetune.lora needs the peft package: pip install {PEFT_PIN}") from None
    return peft


def inject_lora(module: nn.Module, spec: LoraSpec) -> None:
    """Adapt ``module`` in place (module docstring). Afterwards only its ``lora_`` parameters
    require grad; lora_B starts at zero, so the adapted module computes what it did."""
    if any("lora_" in name for name, _ in module.named_parameters()):
        raise ValueError(f"finetune.lora: {spec.component} already carries LoRA adapters")
    names = linear_targets(module, spec.targets)
    peft = _peft()
    config = peft.LoraConfig(
        r=spec.r,
        lora_alpha=spec.alpha,
        lora_dropout=spec.dropout,
        # the resolved full names, so a suffix such as "0" cannot reach a non-Linear module
        target_modules=names,
        use_rslora=spec.rslora,
        bias="none",
    )
    peft.inject_adapter_in_model(config, module, adapter_name=ADAPTER)
    for name, p in module.named_parameters():
        p.requires_grad_("lora_" in name)
