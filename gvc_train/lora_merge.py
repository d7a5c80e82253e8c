"""Merge LoRA adapters into plain weights: what ``gvc-export`` does to a LoRA fine-tune.

A module adapted by ``gvc_train.lit.lora.inject_lora`` (peft's in-place injection) saves each
adapted ``nn.Linear`` named ``X`` as ``X.base_layer.weight`` (+ ``X.base_layer.bias``) beside
``X.lora_A.default.weight`` (``r x in``) and ``X.lora_B.default.weight`` (``out x r``). Its
output is ``base(x) + B(A(x)) * scale``, so the plain layer with ``W = base + (B @ A) * scale``
computes the same; ``scale`` is ``alpha / r`` (``alpha / sqrt(r)`` with rsLoRA), as peft has it.
The merged state then loads strictly into the plain class: the exported folder decodes without
peft (this file imports only torch).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch

ADAPTER = "default"  # peft's adapter name; inject_lora uses only this one
_BASE, _A, _B = ".base_layer.", f".lora_A.{ADAPTER}.weight", f".lora_B.{ADAPTER}.weight"


class LoraMergeError(ValueError):
    pass


def lora_scale(entry: Mapping[str, Any]) -> float:
    """peft's scaling of the adapter's output: ``alpha / r``, or ``alpha / sqrt(r)`` (rsLoRA)."""
    try:
        r, alpha, rslora = int(entry["r"]), float(entry["alpha"]), bool(entry.get("rslora", False))
    except (KeyError, TypeError, ValueError) as e:
        raise LoraMergeError(f"lora entry {dict(entry)} needs numbers r and alpha ({type(e).__name__}: {e})") from None
    if r < 1:
        raise LoraMergeError(f"lora entry: r must be >= 1, got {r}")
    if entry.get("adapter", ADAPTER) != ADAPTER:
        raise LoraMergeError(f"lora entry: only the adapter {ADAPTER!r} is merged, got {entry.get('adapter')!r}")
    return alpha / (math.sqrt(r) if rslora else r)


def merge_lora(state: Mapping[str, torch.Tensor], entry: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """``state`` with every adapted Linear folded into a plain ``X.weight`` / ``X.bias`` and no
    ``lora_`` or ``base_layer`` key left. The product is taken in float64, then cast back to the
    base weight's dtype. A malformed state (an A without its B or base weight, mismatched shapes,
    an adapter key of a kind not merged here) is one :class:`LoraMergeError`."""
    scale = lora_scale(entry)
    names = {k[: -len(_A)] for k in state if k.endswith(_A)}
    names_b = {k[: -len(_B)] for k in state if k.endswith(_B)}
    if names != names_b:
        odd = sorted(names ^ names_b)[0]
        which = "lora_A without lora_B" if odd in names else "lora_B without lora_A"
        raise LoraMergeError(f"malformed LoRA state: {odd} has {which}")
    consumed = {f"{n}{_A}" for n in names} | {f"{n}{_B}" for n in names}
    merged: dict[str, torch.Tensor] = {}
    for name in sorted(names):
        base_key = f"{name}{_BASE}weight"
        if base_key not in state:
            raise LoraMergeError(f"malformed LoRA state: {name} has adapters but no {base_key}")
        base, a, b = state[base_key], state[f"{name}{_A}"], state[f"{name}{_B}"]
        if base.ndim != 2 or a.ndim != 2 or b.ndim != 2 or a.shape[1] != base.shape[1] or b.shape[0] != base.shape[0] or a.shape[0] != b.shape[1]:
            raise LoraMergeError(
                f"malformed LoRA state: {name} has base {tuple(base.shape)}, lora_A {tuple(a.shape)}, "
                f"lora_B {tuple(b.shape)} (want out x in, r x in, out x r)"
            )
        delta = (b.double() @ a.double()) * scale
        merged[f"{name}.weight"] = (base.double() + delta).to(base.dtype)
        consumed.add(base_key)
        if f"{name}{_BASE}bias" in state:
            merged[f"{name}.bias"] = state[f"{name}{_BASE}bias"]
            consumed.add(f"{name}{_BASE}bias")
    leftover = sorted(k for k in state if k not in consumed and (".lora_" in k or _BASE in k or k.startswith(("lora_", "base_layer."))))
    if leftover:
        raise LoraMergeError(f"malformed LoRA state: {leftover[0]} is not an adapted Linear's key (lora_A/lora_B.{ADAPTER}, base_layer)")
    clash = sorted(k for k in merged if k in state)
    if clash:
        raise LoraMergeError(f"malformed LoRA state: {clash[0]} is both a plain key and an adapted Linear's merge")
    return {**{k: v for k, v in state.items() if k not in consumed}, **merged}
