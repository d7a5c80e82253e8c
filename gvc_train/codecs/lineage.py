"""A codec's lineage, as ``gvc info`` prints it: which codec it was fine-tuned from, how.

A fine-tuned export carries ``provenance["lineage"]`` in its ``codec.json`` (written at export
from the training stage's record; sealed by the file's checksum, outside the fingerprint)::

    {"parent": {"path", "kind": "codec"|"component", "family", "fingerprint",
                "component_fingerprints", "recipe", "git_commit", "global_step", "train_seconds"},
     "loaded": {parent component: stage attribute}, "trained": [part], "frozen": [part],
     "lora": {"component", "r", "alpha", "rslora", "targets", "adapter"} | None,
     "ancestors": [parent dicts of older generations, nearest first]}

A codec without the key was trained from scratch. The rows never fail on a lineage written by
another version: a missing or odd field shows as ``?``. Standard library only.
"""

from __future__ import annotations

import re
from typing import Any

LABEL_WIDTH = 12
_RUN_NAME_RE = re.compile(r"^\s*logger:\s*$.*?^\s+name:\s*(\S+)\s*$", re.MULTILINE | re.DOTALL)


def recorded_lineage(codec_meta: dict[str, Any]) -> Any:
    """The lineage a ``codec.json`` records, or None (trained from scratch)."""
    provenance = codec_meta.get("provenance")
    return provenance.get("lineage") if isinstance(provenance, dict) else None


def run_name(recipe: Any) -> str | None:
    """The run a resolved recipe was trained as (its first logger's name, which the recipe's
    ``run:`` fills), or None: the resolved YAML keeps no file name."""
    match = _RUN_NAME_RE.search(recipe) if isinstance(recipe, str) else None
    return match.group(1).strip("'\"") if match else None


def short_commit(commit: Any) -> str:
    """``814d5378...0e7b-dirty`` -> ``814d537-dirty``."""
    if not isinstance(commit, str) or not commit:
        return "?"
    head, dirty, _ = commit.partition("-dirty")
    return head[:7] + (dirty and "-dirty")


def short_fingerprint(fingerprint: Any) -> str:
    """The first 16 hex digits: what a stream header carries and ``gvc info`` shows of it
    (ASCII only: the rows go to whatever encoding the terminal has)."""
    return fingerprint[:16] if isinstance(fingerprint, str) and fingerprint else "?"


def _number(value: Any, unit: str, digits: int = 0) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return f"? {unit}"
    return f"{value:,.{digits}f} {unit}"


def _names(value: Any) -> str:
    return "[" + ", ".join(map(str, value)) + "]" if isinstance(value, list) else "?"


def _lora(value: Any) -> str:
    if not value:
        return "-"
    if not isinstance(value, dict):
        return "?"
    if "r" in value:  # what a fine-tune writes: one adapter record, naming its component
        value = {value.get("component", "?"): value}
    parts = []
    for attribute, spec in value.items():
        spec = spec if isinstance(spec, dict) else {}
        parts.append(f"{attribute} r={spec.get('r', '?')} alpha={spec.get('alpha', '?')} {_names(spec.get('targets'))}")
    return "; ".join(parts)


def _parent_text(parent: dict[str, Any]) -> str:
    family = parent.get("family")
    return (
        f"{parent.get('path', '?')}  {parent.get('kind', '?')} {short_fingerprint(parent.get('fingerprint'))}"
        + (f"  ({family})" if family else "")
    )


def _row(label: str, text: str) -> str:
    return f"{label:{LABEL_WIDTH}s}{text}"


def lineage_rows(codec_meta: dict[str, Any]) -> list[str]:
    """Lines for ``gvc info``: the parent, the parent's run, what the fine-tune trained, the
    generations before; or ``trained from scratch``."""
    lineage = recorded_lineage(codec_meta)
    if lineage is None:
        return ["trained from scratch"]
    if not isinstance(lineage, dict):
        return [_row("lineage", f"unreadable (a {type(lineage).__name__}, not an object)")]
    parent = lineage.get("parent") if isinstance(lineage.get("parent"), dict) else {}
    name = run_name(parent.get("recipe"))
    own = run_name(codec_meta.get("provenance", {}).get("recipe"))
    rows = [
        _row("parent", _parent_text(parent)),
        _row("parent run", f"{name + ': ' if name else ''}{_number(parent.get('global_step'), 'steps')}, "
             f"{_number(parent.get('train_seconds'), 's')}, commit {short_commit(parent.get('git_commit'))}"),
        _row("fine-tune", f"{'run ' + own + '  ' if own else ''}trained {_names(lineage.get('trained'))}  "
             f"frozen {_names(lineage.get('frozen'))}  lora {_lora(lineage.get('lora'))}"),
    ]  # fmt: skip
    loaded = lineage.get("loaded")
    if isinstance(loaded, dict) and loaded:
        rows.append(_row("loaded", ", ".join(f"{source} -> {target}" for source, target in loaded.items())))
    ancestors = lineage.get("ancestors")
    if isinstance(ancestors, list) and ancestors:
        older = ", ".join(_parent_text(a) if isinstance(a, dict) else "?" for a in ancestors)
        rows.append(_row("ancestors", f"{len(ancestors)}: {older}"))
    return rows
