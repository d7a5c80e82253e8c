"""Fine-tuning: start a stage from an exported codec or component (``finetune:`` in a recipe).

Every stage takes ``finetune: FineTune | None``::

    finetune:
      init_from: checkpoints/latent_tiny     # a codec folder (codec.json) or a component folder (NAME.json)
      expect_fingerprint: 5c1e0a3f           # optional: a hex prefix of the parent's fingerprint
      train: [latent_codec]                  # optional: the named parts that train, all else frozen
      freeze: [latent_codec.entropy_models]  # optional: parts taken out of training
      lora: {component: transformer, r: 4, alpha: 8, targets: [q, kv, out]}   # optional: adapters

What happens, at the end of the stage's ``__init__`` (:meth:`StageModule.apply_finetune`):

1. **The parent is checked** as loading checks any export (seals, weights' sha256, fingerprints;
   :mod:`gvc_train.components`, :mod:`gvc_train.codecs.codec_folder`), and its fingerprint
   against ``expect_fingerprint``.
2. **Its weights load** into each component the stage trains (``components``: parent name ->
   the stage's component name; by default every one they share). The recipe must build the
   module as the parent was built: a config that differs is refused naming the first key, so a
   fine-tune cannot silently change an architecture. A component the stage holds frozen (a
   tokenizer from ``tokenizer_path``) is compared instead: the same fingerprint, or a tokenizer
   whose *encoder* is the parent's (a decoder fine-tuned for a domain keeps the latent space the
   parent's codec was trained on); anything else is refused.
3. **Named parts** (each model's ``parts``, e.g. ``tokenizer.decoder``,
   ``latent_codec.entropy_models``, ``transformer.blocks``, plus a stage's own, e.g.
   ``discriminator``) set what trains: ``train`` lists the parts that do (all other parameters
   are frozen), ``freeze`` takes parts out. Frozen parts stay in eval mode.
4. **LoRA** (:mod:`gvc_train.lit.lora`) is injected last; the adapted component then trains
   only its adapters (and any part ``train`` names). ``gvc-export`` merges them.
5. **Lineage** (:func:`lineage_of`) goes into the checkpoint's provenance and from there into
   the export's ``codec.json``; ``gvc info`` shows it.

A resumed run (``--ckpt_path last``) rebuilds the stage the same way (the parent must still be
there; its fingerprint is checked again), then Lightning loads the checkpoint's weights over it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from gvc_train.components import ComponentError, VerifiedComponent, read_component_meta, verify_component
from gvc_train.lit.lora import LoraSpec

MAX_ANCESTORS = 8  # lineage nests the parent's own lineage; a chain deeper than this is cut


class FineTuneError(ValueError):
    """A fine-tune that cannot start, in one line (gvc-train prints it as a user error)."""


@dataclass
class FineTune:
    """``finetune:`` of a stage recipe (module docstring)."""

    init_from: str
    components: dict[str, str] | None = None
    expect_fingerprint: str | None = None
    train: list[str] | None = None
    freeze: list[str] = field(default_factory=list)
    lora: LoraSpec | None = None

    def __post_init__(self) -> None:
        fp = self.expect_fingerprint
        if fp is not None and (len(fp) < 8 or any(c not in "0123456789abcdef" for c in fp.lower())):
            raise FineTuneError(f"finetune.expect_fingerprint must be at least 8 hex digits, got {fp!r}")
        if isinstance(self.lora, dict):  # built by hand rather than by the recipe parser
            self.lora = LoraSpec(**self.lora)


# ---- the parent ------------------------------------------------------------------------------
@dataclass
class Parent:
    """An export a fine-tune starts from, its files checked."""

    path: str
    kind: str  # "codec" or "component"
    family: str | None
    fingerprint: str | None  # the codec's, or the one component's
    component_fingerprints: dict[str, str]
    provenance: dict[str, Any]
    _verified: dict[str, VerifiedComponent] = field(default_factory=dict)

    def component(self, name: str) -> VerifiedComponent:
        if name not in self.component_fingerprints:
            raise FineTuneError(f"finetune.init_from: {self.path} has no component {name!r} (it has {sorted(self.component_fingerprints)})")
        if name not in self._verified:
            verified = verify_component(self.path, name)
            if verified.fingerprint != self.component_fingerprints[name]:
                raise FineTuneError(f"finetune.init_from: component {name!r} in {self.path} is not the one its codec.json names")
            self._verified[name] = verified
        return self._verified[name]

    def fingerprints(self) -> list[str]:
        return [fp for fp in (self.fingerprint, *self.component_fingerprints.values()) if fp]


def resolve_parent(path: str, expect_fingerprint: str | None = None) -> Parent:
    """The export at ``path``, checked; refused in one line unless its fingerprint (the codec's
    or a component's) starts with ``expect_fingerprint``."""
    from gvc_train.codecs.codec_folder import CODEC_JSON, read_codec_json

    folder = Path(path)
    if not folder.is_dir():
        raise FineTuneError(f"finetune.init_from: {path} is not a folder (give a gvc-export folder)")
    if (folder / CODEC_JSON).exists():
        meta = read_codec_json(folder)
        parent = Parent(str(path), "codec", meta["family"], meta["fingerprint"], dict(meta["component_fingerprints"]), meta.get("provenance") or {})
    else:
        metas = {}
        for json_path in sorted(folder.glob("*.json")):
            try:
                metas[json_path.stem] = read_component_meta(folder, json_path.stem)
            except ComponentError:
                continue
        if not metas:
            raise FineTuneError(f"finetune.init_from: {path} is neither an exported codec ({CODEC_JSON}) nor a component folder (NAME.json)")
        only = next(iter(metas.values())) if len(metas) == 1 else None
        parent = Parent(
            str(path), "component", None, only["fingerprint"] if only else None,
            {name: m["fingerprint"] for name, m in metas.items()},
            (only or next(iter(metas.values()))).get("provenance") or {},
        )  # fmt: skip
    if expect_fingerprint is not None:
        want = expect_fingerprint.lower()
        if not any(fp.startswith(want) for fp in parent.fingerprints()):
            shown = parent.fingerprint or next(iter(parent.component_fingerprints.values()))
            raise FineTuneError(f"finetune.init_from: {path} has fingerprint {shown[:16]}..., the recipe expects {want}...")
    return parent


# ---- loading ---------------------------------------------------------------------------------
def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, sort_keys=True, default=str))


def first_difference(ours: Any, theirs: Any, key: str = "") -> str | None:
    """``"key: a vs b"`` for the first place two JSON-like configs differ, None if equal."""
    if isinstance(ours, dict) and isinstance(theirs, dict):
        for k in sorted(set(ours) | set(theirs)):
            sub = f"{key}.{k}" if key else str(k)
            if k not in ours or k not in theirs:
                return f"{sub}: {'missing' if k not in ours else ours[k]!r} vs {'missing' if k not in theirs else theirs[k]!r}"
            found = first_difference(ours[k], theirs[k], sub)
            if found:
                return found
        return None
    return None if ours == theirs else f"{key or 'config'}: {ours!r} vs {theirs!r}"


def load_parent_weights(module: nn.Module, parent: Parent, name: str, as_name: str) -> None:
    """Load the parent's component ``name`` into ``module`` (the stage's ``as_name``), refusing
    a module built with another config."""
    verified = parent.component(name)
    ours = _jsonable(getattr(module, "config", None))
    diff = first_difference(ours, _jsonable(verified.meta["config"]))
    if diff is not None:
        raise FineTuneError(
            f"finetune: the recipe's {as_name} config differs from {parent.path}'s {name} at {diff} "
            "(a fine-tune repeats the parent's config; see its NAME.json)"
        )
    built = verified.build()
    module.load_state_dict(built.state_dict())


def encoder_state_equal(a: nn.Module, b: nn.Module) -> bool:
    """Whether two tokenizers share their encoder's weights (the same latent space)."""
    sa = {k: v for k, v in a.state_dict().items() if k.startswith("encoder.")}
    sb = {k: v for k, v in b.state_dict().items() if k.startswith("encoder.")}
    return bool(sa) and sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def check_frozen_matches(module: nn.Module, parent: Parent, name: str, who: str) -> str:
    """How the stage's frozen component ``name`` relates to the parent's: ``"same"`` (config and
    every tensor equal) or ``"same encoder"`` (a tokenizer); anything else is refused in one line."""
    theirs = parent.component(name)
    built = theirs.build()
    ours_state, their_state = module.state_dict(), built.state_dict()
    same_config = first_difference(_jsonable(getattr(module, "config", None)), _jsonable(theirs.meta["config"])) is None
    if same_config and ours_state.keys() == their_state.keys() and all(torch.equal(ours_state[k], their_state[k]) for k in ours_state):
        return "same"
    if name == "tokenizer" and encoder_state_equal(module, built):
        return "same encoder"
    raise FineTuneError(
        f"{who}: the parent {parent.path} was trained on another {name} (fingerprint {theirs.fingerprint[:12]}...) "
        f"than this stage's; fine-tune from a {name} that keeps the parent's encoder"
    )


# ---- named parts -----------------------------------------------------------------------------
def named_parts(component_modules: dict[str, nn.Module], extra: dict[str, tuple[str, ...]]) -> dict[str, tuple[str, ...]]:
    """Part name -> module paths on the stage. ``component_modules``: the stage's trainable
    components by component name, as ``{name: (attribute, module)}``; each gives the part
    ``name`` (all of it) and ``name.part`` for the parts its class declares (``parts``: part ->
    sub-module names) that it has. ``extra``: the stage's own (``{"discriminator": ("discriminator",)}``)."""
    parts: dict[str, tuple[str, ...]] = {}
    for name, (attr, module) in component_modules.items():
        parts[name] = (attr,)
        submodules = dict(module.named_modules())
        for part, paths in getattr(type(module), "parts", {}).items():
            present = tuple(f"{attr}.{p}" for p in paths if p in submodules)
            if present:
                parts[f"{name}.{part}"] = present
    parts.update(extra)
    return parts


def under_paths(param_name: str, paths: tuple[str, ...]) -> bool:
    return any(param_name == p or param_name.startswith(p + ".") for p in paths)


def frozen_parameter_names(
    stage: nn.Module, parts: dict[str, tuple[str, ...]], trainable_attrs: tuple[str, ...], train: list[str] | None, freeze: list[str]
) -> tuple[set[str], list[str]]:
    """The parameters of the stage's trainable components that a fine-tune freezes, and the
    part modules left with no trainable parameter (they go to eval mode)."""
    for part in [*(train or []), *freeze]:
        if part not in parts:
            raise FineTuneError(f"finetune: no part {part!r} in this stage; its parts are {sorted(parts)}")
    names = [n for n, _ in stage.named_parameters() if under_paths(n, trainable_attrs)]
    frozen: set[str] = set()
    if train is not None:
        kept = tuple(p for part in train for p in parts[part])
        frozen |= {n for n in names if not under_paths(n, kept)}
    for part in freeze:
        frozen |= {n for n in names if under_paths(n, parts[part])}
    if frozen and len(frozen) == len(names):
        raise FineTuneError(f"finetune: train {train} minus freeze {freeze} leaves nothing to train")
    idle = set()
    for paths in parts.values():
        for path in paths:
            inside = [n for n in names if under_paths(n, (path,))]
            if inside and all(n in frozen for n in inside):
                idle.add(path)
    return frozen, sorted(idle)


# ---- lineage ---------------------------------------------------------------------------------
def lineage_of(parent: Parent, loaded: dict[str, str], trained: list[str], frozen: list[str], lora: dict[str, Any] | None, relations: dict[str, str]) -> dict[str, Any]:
    """What the export records about where it came from (``provenance["lineage"]``)."""
    prov = parent.provenance
    record = {
        "path": parent.path,
        "kind": parent.kind,
        "family": parent.family,
        "fingerprint": parent.fingerprint,
        "component_fingerprints": parent.component_fingerprints,
        "recipe": prov.get("recipe"),
        "git_commit": prov.get("git_commit"),
        "global_step": prov.get("global_step"),
        "train_seconds": prov.get("train_seconds"),
        "cpu_seconds": prov.get("cpu_seconds"),
    }
    older = prov.get("lineage") or {}
    ancestors = ([older["parent"]] if "parent" in older else []) + list(older.get("ancestors", []))
    return {
        "parent": record,
        "loaded": loaded,
        "frozen_components": relations,
        "trained": trained,
        "frozen": frozen,
        "lora": lora,
        "ancestors": ancestors[:MAX_ANCESTORS],
    }


def check_same_finetune(saved: dict[str, Any] | None, rebuilt: dict[str, Any] | None) -> None:
    """Refuse to resume a checkpoint under another ``finetune:`` than the one it was trained with
    (another parent, other trained/frozen parts or adapters): its optimizer state and weights
    would not fit, and torch would say so in a page of its own words."""
    def key(lineage: dict[str, Any] | None) -> Any:
        if lineage is None:
            return None
        return (lineage["parent"].get("fingerprint"), lineage["parent"].get("component_fingerprints"), lineage.get("loaded"),
                lineage.get("trained"), lineage.get("frozen"), lineage.get("lora"))  # fmt: skip

    if key(saved) != key(rebuilt):
        was = "no finetune" if saved is None else f"finetune from {saved['parent'].get('path')} (trained {saved.get('trained')}, frozen {saved.get('frozen')})"
        raise FineTuneError(f"--ckpt_path: this checkpoint was trained with {was}; resume it with the recipe it was started with")
