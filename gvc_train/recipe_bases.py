"""Recipe bases: the trainer, logger and callback block that stage recipes share.

A stage recipe names its base in a top-level ``base`` key, with the values the base leaves open::

    base:
      file: ../base/tiny.yaml    # relative to this recipe's folder
      run: tokenizer_tiny        # fills ${run} in the base
      monitor: val/psnr          # fills ${monitor}
      mode: max                  # fills ${mode}

``gvc-train`` reads the base, puts the values in place of its ``${name}`` strings, and lays the
recipe over it before LightningCLI parses anything: a mapping merges key by key, any other value
(a list included) replaces the base's, and ``key+:`` appends a list to the base's list (the
spelling of jsonargparse's list append). A base may name a base of its own. ``base: PATH`` is
short for a base that leaves nothing open.

Why not jsonargparse alone: a ``config:`` key inside a recipe does load another file, but lists
replace each other whole, and the shared lists (loggers, checkpoint callbacks) carry values that
differ per stage (the run folder, the monitored metric). The values are filled in here, so
``--print_config``, the run's config.yaml and the tests see the same resolved recipe as before.

Everything that goes wrong is one line (``RecipeError``): a missing base, a cycle, a value the
base needs and the recipe does not give, or one it gives that the base does not use.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from gvc_train.cli_errors import UsageError

BASE_KEY = "base"
_PLACEHOLDER = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


class RecipeError(UsageError):
    """A recipe's base cannot be resolved; the message is one line."""


def names_a_base(path: str | Path) -> bool:
    """Whether the YAML file at ``path`` is a recipe with a ``base`` key (cheap: no resolving)."""
    data = _read(Path(path))
    return isinstance(data, dict) and BASE_KEY in data


def load_recipe(path: str | Path) -> dict[str, Any]:
    """The recipe at ``path`` with its bases resolved: what ``gvc-train`` parses for it."""
    return _resolve(Path(path), None, ())


def _resolve(path: Path, values: dict[str, Any] | None, chain: tuple[Path, ...]) -> dict[str, Any]:
    """``values``: what the file that names this one as its base gives (None: the recipe itself)."""
    real = path.resolve()
    if real in chain:
        loop = " -> ".join(str(p) for p in (*chain, real))
        raise RecipeError(f"recipe bases form a cycle: {loop}")
    data = _read(path)
    if not isinstance(data, dict):
        raise RecipeError(f"recipe {path}: expected a mapping of keys, got {type(data).__name__}")
    if values is not None:
        data = _fill(data, values, path)
    if BASE_KEY not in data:
        return data
    base_file, base_values = _base_spec(data.pop(BASE_KEY), path)
    base_path = Path(os.path.normpath(path.parent / base_file))
    if not base_path.is_file():
        raise RecipeError(
            f"recipe {path}: base file not found: {base_path} (base.file is relative to the recipe's folder)"
        )
    base = _resolve(base_path, base_values, (*chain, real))
    return _merge(base, data)


def _read(path: Path) -> Any:
    # jsonargparse's own YAML loader, so that values mean what they mean in a recipe (1e-4 is a float).
    from jsonargparse import get_loader

    return get_loader("yaml")(path.read_text())


def _base_spec(spec: Any, path: Path) -> tuple[str, dict[str, Any]]:
    if isinstance(spec, str):
        return spec, {}
    if isinstance(spec, dict) and isinstance(spec.get("file"), str):
        return spec["file"], {k: v for k, v in spec.items() if k != "file"}
    raise RecipeError(f"recipe {path}: base must be a file path or a mapping with file: PATH and the base's values")


def _fill(data: dict[str, Any], values: dict[str, Any], path: Path) -> dict[str, Any]:
    """Put ``values`` in place of the ``${name}`` strings; each value must be used, each name given."""
    used: set[str] = set()

    def fill(node: Any) -> Any:
        if isinstance(node, dict):
            return {k: fill(v) for k, v in node.items()}
        if isinstance(node, list):
            return [fill(v) for v in node]
        if not isinstance(node, str) or "${" not in node:
            return node
        for name in _PLACEHOLDER.findall(node):
            if name not in values:
                raise RecipeError(
                    f"base {path} needs a value for ${{{name}}}: give {BASE_KEY}.{name} in the recipe that names it"
                )
            used.add(name)
        whole = _PLACEHOLDER.fullmatch(node)
        if whole:  # the value itself, not its text: a number stays a number
            return values[whole.group(1)]
        return _PLACEHOLDER.sub(lambda m: str(values[m.group(1)]), node)

    filled = fill(data)
    unused = sorted(set(values) - used)
    if unused:
        takes = ", ".join(sorted(set(_PLACEHOLDER.findall(str(data))))) or "nothing"
        names = ", ".join(f"{BASE_KEY}.{n}" for n in unused)
        raise RecipeError(f"base {path} does not use {names} (it takes: {takes})")
    return filled


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """``over`` laid on ``base``: mappings merge, ``key+`` appends to a list, anything else replaces."""
    merged = dict(base)
    for key, value in over.items():
        if key.endswith("+") and isinstance(value, list):
            name = key[:-1]
            before = merged.get(name)
            if before is not None and not isinstance(before, list):
                raise RecipeError(f"{name}+ appends to a list, but the base's {name} is {type(before).__name__}")
            merged[name] = [*(before or []), *value]
        elif isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged
