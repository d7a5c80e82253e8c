"""Strict JSON for every report, summary and index the project writes.

Python's ``json`` writes NaN and infinities as the bare words ``NaN``/``Infinity``, which are
not JSON: strict parsers (browsers' ``JSON.parse``, jq, Go, Rust's serde_json) reject the whole
file. A BD-rate without overlap or a metric that could not be computed is NaN, so reports hold
them routinely. Here every non-finite float becomes ``null`` ("no value"; the report says why
beside it), and the encoder runs with ``allow_nan=False``, so a non-finite value that slips past
the conversion (a new number type) raises instead of writing a file nobody can parse.

Standard library only: data, eval, the CLIs and the benchmarks all import it.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any


def nulled(value: Any) -> Any:
    """``value`` with every NaN/inf float (in nested dicts, lists and tuples) replaced by None."""
    if isinstance(value, float):  # numpy's float64 too (a float subclass)
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: nulled(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [nulled(v) for v in value]
    return value


def dumps(value: Any, **kwargs: Any) -> str:
    """``json.dumps`` that writes strict JSON: non-finite floats as null (see the module doc)."""
    return json.dumps(nulled(value), allow_nan=False, **kwargs)


def write_json(path: str | os.PathLike, value: Any, **kwargs: Any) -> None:
    """Write ``dumps(value, **kwargs)`` and a final newline to ``path`` (UTF-8)."""
    with open(path, "w", encoding="utf-8") as f:
        f.write(dumps(value, **kwargs) + "\n")
