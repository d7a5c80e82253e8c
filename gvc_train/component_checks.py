"""Checks on an exported component's files that run before anything is built.

A component folder comes from outside (a download, a colleague, a forged file), so every part
of it is checked with bounded work before a module is constructed or a tensor allocated:

* JSON files: bounded size, ASCII, strict JSON (no NaN), and a checksum over every byte of
  the file, so an edit anywhere (whitespace and provenance included) is seen;
* file names: a plain name inside the folder, never a path or a link that leads out of it;
* configs: the JSON type of every constructor argument against its annotation, numbers within
  the bounds the class declares (``config_bounds``) or a generic default;
* weights: the safetensors header read on its own (bounded) and checked for consistency with
  the file size, so a forged header cannot make the loader allocate more than the file holds.

Pure Python and JSON: no torch here, so the checks are cheap and importable anywhere.
"""

from __future__ import annotations

import collections.abc
import functools
import hashlib
import inspect
import json
import math
import os
import re
import stat
import struct
import types
import typing
from pathlib import Path
from typing import Any

MAX_JSON_BYTES = 4 << 20  # the largest config + provenance (a whole recipe) is a few kB
MAX_HEADER_BYTES = 16 << 20  # a safetensors header: ~150 bytes per tensor
MAX_LIST = 256
MAX_DEPTH = 8
# Without a declared bound an integer argument is a size or a count: non-negative and small
# enough that the meta-device build (which runs before any allocation) stays fast.
DEFAULT_INT_BOUNDS = (0, 1 << 16)
DEFAULT_FLOAT_BOUNDS = (-1e6, 1e6)
SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
_ZERO = "0" * 64
SAFETENSORS_DTYPES = {
    "F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1,
    "U16": 2, "U32": 4, "U64": 8, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1,
}  # fmt: skip


class ComponentError(RuntimeError):
    """A component folder is missing, foreign, damaged, edited or does not match its config.

    Here, not in ``gvc_train.components`` (which re-exports it), so that a reader of
    ``codec.json`` that needs no weights (``gvc info``) raises it without importing torch."""


def canonical_json(meta: dict[str, Any]) -> str:
    """The exporter's text for ``meta``: sorted keys, two-space indent, ASCII, newline."""
    return json.dumps(meta, indent=2, sort_keys=True, allow_nan=False) + "\n"


def _checksum_field(value: str) -> str:
    # The top-level field as canonical_json writes it (two spaces: nested keys have more).
    return f'\n  "checksum": "{value}"'


def sealed_json(meta: dict[str, Any]) -> str:
    """``canonical_json(meta)`` with a ``checksum`` field: the sha256 of the file's own bytes
    with the checksum's digits zeroed. Every byte is covered (whitespace, key order, provenance)
    and checking it needs no re-encoding, so refusing an edited file costs microseconds."""
    text = canonical_json({**meta, "checksum": _ZERO})
    if text.count(_checksum_field(_ZERO)) != 1:
        raise ValueError("cannot seal a JSON whose values repeat its checksum field")
    digest = hashlib.sha256(text.encode()).hexdigest()
    return text.replace(_checksum_field(_ZERO), _checksum_field(digest))


def tagged_sha256(tag: str, value: Any) -> str:
    """sha256 of a tag and the sorted compact JSON of ``value`` (a fingerprint over a structure)."""
    body = json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(tag.encode() + b"\0" + body.encode()).hexdigest()


def member_path(folder: str | Path, name: Any, what: str, error: type[Exception]) -> Path:
    """``folder/name`` for a plain file name that stays inside ``folder``, as a regular file.

    A name from a JSON file is untrusted: no separators, no ``..``, no hidden names, and a link
    must resolve inside the folder (a symlinked file beside its neighbours is fine).
    """
    if not isinstance(name, str) or not name or len(name) > 255:
        raise error(f"{what}: file name must be a non-empty string, got {_short(name)}")
    bad = set(name) & {"/", "\\", "\0", ":"}
    if bad or name.startswith(".") or any(ord(c) < 32 for c in name):
        raise error(f"{what}: file name {name!r} is not a plain file name inside the folder")
    path = Path(folder) / name
    try:
        mode = os.lstat(path).st_mode
    except OSError:
        raise error(f"{what}: {path} is missing") from None
    if stat.S_ISLNK(mode):  # a plain name is a child of the folder; only a link can lead out
        real = os.path.realpath(path)
        if os.path.dirname(real) != os.path.realpath(folder):
            raise error(f"{what}: {name} is a link that leads outside {folder} (to {real})")
        mode = os.stat(real).st_mode if os.path.exists(real) else 0
    if not stat.S_ISREG(mode):
        raise error(f"{what}: {path} is missing or not a regular file")
    return path


def read_sealed_json(path: Path, what: str, error: type[Exception], version: int) -> dict[str, Any]:
    """A JSON object from ``path``, refused unless it is bounded, strict JSON, of format
    ``version`` and sealed (:func:`sealed_json`): its checksum matches every byte of the file."""
    try:
        size = os.stat(path).st_size
        if size > MAX_JSON_BYTES:
            raise error(f"{path}: {size} bytes is too large for a {what} (at most {MAX_JSON_BYTES})")
        with open(path, "rb") as f:
            data = f.read(MAX_JSON_BYTES + 1)
    except OSError as e:
        raise error(f"{path}: cannot read the {what} ({e.strerror or e})") from None
    if len(data) > MAX_JSON_BYTES:
        raise error(f"{path}: too large for a {what} (at most {MAX_JSON_BYTES} bytes)")
    try:
        text = data.decode("ascii")  # the exporter escapes everything else
        meta = json.loads(text, parse_constant=_refuse_constant)
    except UnicodeDecodeError as e:
        raise error(f"{path} is not the exporter's ASCII JSON (byte {e.start} is {data[e.start]:#04x})") from None
    except json.JSONDecodeError as e:
        raise error(f"{path} is not valid JSON: {e}") from None
    except (ValueError, RecursionError) as e:  # NaN/Infinity, 5000-digit integers, deep nesting
        raise error(f"{path} is not valid JSON: {str(e)[:120] or type(e).__name__}") from None
    if not isinstance(meta, dict):
        raise error(f"{path}: a {what} must be a JSON object, got {_json_type(meta)}")
    found = meta.get("format_version")
    if not isinstance(found, int) or isinstance(found, bool) or found < 1:
        raise error(f"{path}: 'format_version' must be a positive integer")
    if found != version:
        raise error(
            f"{path} has format version {found}; this gvc_train reads {version}"
            + ("; older exports are not sealed against edits: re-export it with gvc-export" if found < version else "")
        )
    stored = meta.get("checksum")
    if not isinstance(stored, str) or not SHA256_RE.match(stored):
        raise error(f"{path}: 'checksum' must be 64 lowercase hex digits (was it written by gvc-export?)")
    field = _checksum_field(stored)
    body = text.replace(field, _checksum_field(_ZERO)) if text.count(field) == 1 else None
    if body is None or hashlib.sha256(body.encode()).hexdigest() != stored:
        raise error(f"{path} was edited after export (its checksum does not match); re-export it")
    return meta


def check_fields(meta: dict[str, Any], fields: dict[str, type | tuple[type, ...]], path: Path, error: type[Exception]) -> None:
    """Every named field present with its JSON type (bool is never an int here)."""
    for key, kind in fields.items():
        if key not in meta:
            raise error(f"{path} lacks the field {key!r}")
        value = meta[key]
        if isinstance(value, bool) and bool not in (kind if isinstance(kind, tuple) else (kind,)):
            raise error(f"{path}: {key!r} must be {_kind_name(kind)}, got a boolean")
        if not isinstance(value, kind):
            raise error(f"{path}: {key!r} must be {_kind_name(kind)}, got {_json_type(value)}")


def check_config(cls: type, config: Any, where: str, error: type[Exception]) -> None:
    """Check a constructor config against the signature, annotations and declared bounds.

    ``cls.config_bounds`` maps an argument (``"config.key"`` for a key of a dict argument) to
    ``(low, high)`` for numbers (each element of a list) or a set of allowed values, and
    ``"len(arg)"`` to ``(low, high)`` for a list's length. Unbounded integers get
    ``DEFAULT_INT_BOUNDS``, floats ``DEFAULT_FLOAT_BOUNDS``.
    """
    if not isinstance(config, dict):
        raise error(f"{where}: config must be a JSON object, got {_json_type(config)}")
    hints, params = _constructor(cls)
    unknown = sorted(set(config) - set(params))
    if unknown:
        raise error(f"{where}: config has unknown argument(s) {unknown[:5]}; {cls.__name__} takes {sorted(params)}")
    missing = [n for n, p in params.items() if n not in config and p.default is inspect.Parameter.empty]
    if missing:
        raise error(f"{where}: config lacks the argument(s) {missing}")
    bounds = dict(getattr(cls, "config_bounds", {}))
    for name, value in config.items():
        _check_typed(value, hints.get(name, Any), f"{where}: config {name!r}", name, bounds, error)


@functools.lru_cache(maxsize=None)
def _constructor(cls: type) -> tuple[dict[str, Any], dict[str, inspect.Parameter]]:
    """(annotations, parameters) of ``cls``'s own constructor (not register_component's wrapper)."""
    init = getattr(cls.__init__, "__wrapped_init__", cls.__init__)
    try:
        hints = typing.get_type_hints(init)
    except Exception:  # noqa: BLE001 - an annotation that does not resolve: its values are then bounded JSON
        hints = {}
    return hints, {n: p for n, p in inspect.signature(init).parameters.items() if n != "self"}


def _check_typed(value: Any, ann: Any, where: str, key: str, bounds: dict[str, Any], error: type[Exception]) -> None:
    origin, args = typing.get_origin(ann), typing.get_args(ann)
    bound = bounds.get(key)
    if isinstance(bound, (set, frozenset)):
        if not _hashable(value) or value not in bound:
            raise error(f"{where} must be one of {sorted(bound, key=repr)}, got {_short(value)}")
        return
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return
        options = [a for a in args if a is not type(None)]
        if len(options) != 1:  # a real union: the JSON value only needs to be bounded
            return _check_typed(value, Any, where, key, bounds, error)
        ann, origin, args = options[0], typing.get_origin(options[0]), typing.get_args(options[0])
    if ann is Any:
        return _check_any(value, where, key, bounds, error, 0)
    if ann is bool:
        if not isinstance(value, bool):
            raise error(f"{where} must be a boolean, got {_short(value)}")
    elif ann is int or ann is float:
        ok = isinstance(value, int) if ann is int else isinstance(value, (int, float))
        if isinstance(value, bool) or not ok:
            raise error(f"{where} must be {'an integer' if ann is int else 'a number'}, got {_short(value)}")
        _check_number(value, where, bound, error)
    elif ann is str:
        if not isinstance(value, str):
            raise error(f"{where} must be a string, got {_short(value)}")
        if len(value) > 1024:
            raise error(f"{where}: a string of {len(value)} characters")
    elif origin in (list, tuple, collections.abc.Sequence) or ann in (list, tuple):
        if not isinstance(value, list):
            raise error(f"{where} must be a list, got {_short(value)}")
        low, high = bounds.get(f"len({key})", (0, MAX_LIST))
        if not low <= len(value) <= high:
            raise error(f"{where}: {len(value)} items, out of bounds [{low}, {high}]")
        item = args[0] if args else Any
        for i, v in enumerate(value):
            _check_typed(v, item, f"{where}[{i}]", key, bounds, error)
    elif origin is dict or ann is dict:
        if not isinstance(value, dict):
            raise error(f"{where} must be a JSON object, got {_short(value)}")
        _check_any(value, where, key, bounds, error, 0)
    else:
        raise error(f"{where}: the constructor's annotation {ann!r} has no JSON form")


def _check_any(value: Any, where: str, key: str, bounds: dict[str, Any], error: type[Exception], depth: int) -> None:
    """Untyped JSON (a dict argument's contents): bounded, numbers within the key's bounds."""
    if depth > MAX_DEPTH:
        raise error(f"{where}: nested deeper than {MAX_DEPTH}")
    bound = bounds.get(key)
    if isinstance(bound, (set, frozenset)) and (not _hashable(value) or value not in bound):
        raise error(f"{where} must be one of {sorted(bound, key=repr)}, got {_short(value)}")
    if isinstance(value, dict):
        for k, v in value.items():
            _check_any(v, f"{where}.{k}", f"{key}.{k}", bounds, error, depth + 1)
    elif isinstance(value, list):
        if len(value) > MAX_LIST:
            raise error(f"{where}: {len(value)} items (at most {MAX_LIST})")
        for i, v in enumerate(value):
            _check_any(v, f"{where}[{i}]", key, bounds, error, depth + 1)
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        _check_number(value, where, bound, error)
    elif isinstance(value, str) and len(value) > 1024:
        raise error(f"{where}: a string of {len(value)} characters")


def _check_number(value: int | float, where: str, bound: Any, error: type[Exception]) -> None:
    if isinstance(value, float) and not math.isfinite(value):
        raise error(f"{where} must be finite, got {value}")
    if bound is None:
        bound = DEFAULT_INT_BOUNDS if isinstance(value, int) else DEFAULT_FLOAT_BOUNDS
    low, high = bound
    if not low <= value <= high:
        raise error(f"{where} = {_short(value)} is out of bounds [{low}, {high}]")


def read_safetensors_header(path: Path, what: str, error: type[Exception]) -> dict[str, tuple[str, tuple[int, ...]]]:
    """``{name: (dtype, shape)}`` from a safetensors file's header, read alone (bounded) and
    checked against the file size: the tensors exactly tile the data, nothing overlaps."""
    try:
        size = os.stat(path).st_size
        with open(path, "rb") as f:
            head = f.read(8)
            n = struct.unpack("<Q", head)[0] if len(head) == 8 else -1
            if not 2 <= n <= min(MAX_HEADER_BYTES, size - 8):
                raise error(f"{what}: {path} is not a safetensors file (header length {n}, file {size} bytes)")
            raw = f.read(n)
    except OSError as e:
        raise error(f"{what}: cannot read {path} ({e.strerror or e})") from None
    try:
        header = json.loads(raw.decode("utf-8"), parse_constant=_refuse_constant)
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise error(f"{what}: {path} has a damaged safetensors header") from None
    if not isinstance(header, dict):
        raise error(f"{what}: {path} has a damaged safetensors header")
    meta = header.pop("__metadata__", {})
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise error(f"{what}: {path} has a damaged safetensors header (__metadata__)")
    spans, tensors = [], {}
    for name, entry in header.items():
        if not (isinstance(entry, dict) and set(entry) == {"dtype", "shape", "data_offsets"}):
            raise error(f"{what}: {path}: tensor {name!r} has a damaged header entry")
        dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
        if dtype not in SAFETENSORS_DTYPES or not _int_list(shape, 8) or not _int_list(offsets, 2) or len(offsets) != 2:
            raise error(f"{what}: {path}: tensor {name!r} has a damaged header entry")
        nbytes = math.prod(shape) * SAFETENSORS_DTYPES[dtype]
        if offsets[1] - offsets[0] != nbytes:
            raise error(f"{what}: {path}: tensor {name!r} of shape {shape} does not fit its {offsets[1] - offsets[0]} bytes")
        spans.append((offsets[0], offsets[1]))
        tensors[name] = (dtype, tuple(shape))
    end = 0
    for begin, stop in sorted(spans):
        if begin != end:
            raise error(f"{what}: {path}: tensors overlap or leave gaps in the data")
        end = stop
    if 8 + n + end != size:
        raise error(f"{what}: {path} is {size} bytes, its header describes {8 + n + end} (truncated or padded)")
    return tensors


def _int_list(v: Any, max_len: int) -> bool:
    return isinstance(v, list) and len(v) <= max_len and all(isinstance(x, int) and not isinstance(x, bool) and 0 <= x < 1 << 48 for x in v)


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _hashable(v: Any) -> bool:
    return v is None or isinstance(v, (str, int, float, bool))


def _json_type(v: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}.get(type(v), "a number")


def _kind_name(kind: type | tuple[type, ...]) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join({int: "an integer", str: "a string", dict: "an object", list: "a list"}.get(k, k.__name__) for k in kinds)


def _short(v: Any) -> str:
    text = json.dumps(v) if not isinstance(v, float) or math.isfinite(v) else repr(v)
    return text if len(text) <= 60 else text[:57] + "..."
