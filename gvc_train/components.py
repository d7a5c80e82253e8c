"""Components: pure-torch modules that can be saved and loaded without Lightning or pickle.

A component is an ``nn.Module`` whose constructor takes JSON-serialisable keyword arguments.
It is saved as ``NAME.json`` (class name, constructor config, provenance, fingerprint) beside
``NAME.safetensors`` (the state dict), after diffusers' config-beside-weights layout.
Loading looks the class up in a registry rather than importing an arbitrary path, so a
component file can never make the loader run code it does not already ship.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
from pathlib import Path
from typing import Any, Callable, TypeVar

import torch
from safetensors.torch import load_file, save_file

FORMAT_VERSION = 1
_REGISTRY: dict[str, type[torch.nn.Module]] = {}
_T = TypeVar("_T", bound=type)


class ComponentError(RuntimeError):
    """A component folder is missing, foreign, damaged or does not match its config."""


def register_component(cls: _T) -> _T:
    """Class decorator: make ``cls`` loadable by name and record its constructor arguments.

    After construction ``module.config`` holds every constructor argument (defaults filled in),
    which is exactly what :func:`save_component` writes and :func:`build_component` needs.
    """
    name = cls.__name__
    if name in _REGISTRY and _REGISTRY[name] is not cls:
        raise ValueError(f"component name {name!r} registered twice")
    _REGISTRY[name] = cls
    signature = inspect.signature(cls.__init__)
    original_init: Callable[..., None] = cls.__init__

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        bound = signature.bind(self, *args, **kwargs)
        bound.apply_defaults()
        config = {k: v for k, v in bound.arguments.items() if k != "self"}
        original_init(self, *args, **kwargs)
        # Set after the original init: nn.Module.__init__ would not mind, but subclasses
        # calling super().__init__ with their own arguments must not overwrite ours.
        if not hasattr(self, "config") or type(self) is cls:
            object.__setattr__(self, "config", _jsonable(config))

    __init__.__signature__ = signature  # type: ignore[attr-defined]
    __init__.__doc__ = original_init.__doc__
    cls.__init__ = __init__  # type: ignore[method-assign]
    return cls


def registered_components() -> dict[str, type[torch.nn.Module]]:
    _import_builtin_components()
    return dict(_REGISTRY)


def build_component(class_name: str, config: dict[str, Any]) -> torch.nn.Module:
    registry = registered_components()
    if class_name not in registry:
        raise ComponentError(f"unknown component class {class_name!r}; known: {sorted(registry)}")
    if not isinstance(config, dict):
        raise ComponentError(f"{class_name}: config must be a JSON object, got {type(config).__name__}")
    try:
        return registry[class_name](**config)
    except (TypeError, ValueError) as e:  # unknown keys, bad values: the config does not fit
        raise ComponentError(f"{class_name}: config does not fit the constructor: {e}") from None


def build_and_load(class_name: str, config: dict[str, Any], state: dict[str, torch.Tensor], what: str) -> torch.nn.Module:
    """Build a component and load ``state`` into it, strictly; any misfit is a ComponentError."""
    module = build_component(class_name, config)
    try:
        missing, unexpected = module.load_state_dict(state, strict=False)
    except RuntimeError as e:  # shape mismatches
        raise ComponentError(f"{what}: weights do not fit {class_name}: {str(e).splitlines()[-1].strip()}") from None
    if missing or unexpected:
        raise ComponentError(
            f"{what}: weights do not fit {class_name} (missing {missing[:3]}, unexpected {unexpected[:3]})"
        )
    return module


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"component config value {value!r} of type {type(value).__name__} is not JSON")


def weights_fingerprint(state_dict: dict[str, torch.Tensor]) -> str:
    """sha256 over names, dtypes, shapes and raw bytes, in sorted-name order."""
    h = hashlib.sha256()
    for name in sorted(state_dict):
        t = state_dict[name].detach().to("cpu").contiguous()
        h.update(name.encode())
        h.update(str(t.dtype).encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def save_component(
    module: torch.nn.Module,
    folder: str | Path,
    name: str,
    provenance: dict[str, Any] | None = None,
) -> Path:
    """Write ``folder/name.json`` and ``folder/name.safetensors``; return the JSON path."""
    cls_name = type(module).__name__
    if cls_name not in _REGISTRY or not hasattr(module, "config"):
        raise ComponentError(f"{cls_name} is not a registered component (use @register_component)")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu").contiguous() for k, v in module.state_dict().items()}
    weights_path = folder / f"{name}.safetensors"
    tmp = weights_path.with_name(weights_path.name + ".tmp")
    save_file(state, str(tmp), metadata={"format": "pt"})
    os.replace(tmp, weights_path)
    meta = {
        "format_version": FORMAT_VERSION,
        "class": cls_name,
        "config": module.config,
        "weights": weights_path.name,
        "fingerprint": weights_fingerprint(state),
        "provenance": _jsonable(provenance or {}),
    }
    json_path = folder / f"{name}.json"
    _atomic_write_bytes(json_path, (json.dumps(meta, indent=2, sort_keys=True) + "\n").encode())
    return json_path


def read_component_meta(folder: str | Path, name: str) -> dict[str, Any]:
    json_path = Path(folder) / f"{name}.json"
    if not json_path.is_file():
        raise ComponentError(f"no component {name!r} in {folder}: {json_path.name} is missing")
    try:
        meta = json.loads(json_path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ComponentError(f"{json_path} is not valid JSON: {e}") from None
    for key in ("format_version", "class", "config", "weights", "fingerprint"):
        if key not in meta:
            raise ComponentError(f"{json_path} lacks the field {key!r}")
    if not isinstance(meta["format_version"], int) or meta["format_version"] < 1:
        raise ComponentError(f"{json_path}: format_version must be a positive integer")
    if meta["format_version"] > FORMAT_VERSION:
        raise ComponentError(
            f"{json_path} has format version {meta['format_version']}; this gvc_train reads "
            f"up to {FORMAT_VERSION}"
        )
    return meta


def load_component(
    folder: str | Path, name: str, map_location: str | torch.device = "cpu", verify: bool = True
) -> torch.nn.Module:
    """Build the component from its JSON config and load its safetensors weights.

    ``verify`` recomputes the fingerprint so that a swapped or damaged weights file is caught.
    """
    meta = read_component_meta(folder, name)
    weights_path = Path(folder) / meta["weights"]
    if not weights_path.is_file():
        raise ComponentError(f"component {name!r}: weights file {weights_path} is missing")
    try:
        state = load_file(str(weights_path), device="cpu")
    except Exception as e:  # safetensors raises its own error types for damaged headers
        raise ComponentError(f"component {name!r}: cannot read {weights_path}: {e}") from None
    if verify and weights_fingerprint(state) != meta["fingerprint"]:
        raise ComponentError(f"component {name!r}: weights do not match the fingerprint in {name}.json")
    module = build_and_load(meta["class"], meta["config"], state, f"component {name!r}")
    return module.to(map_location).eval()


def _import_builtin_components() -> None:
    # Importing the model modules runs their @register_component decorators.
    import gvc_train.models  # noqa: F401
