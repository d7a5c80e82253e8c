"""Components: pure-torch modules that can be saved and loaded without Lightning or pickle.

A component is an ``nn.Module`` whose constructor takes JSON-serialisable keyword arguments.
It is saved as ``NAME.json`` (class name, constructor config, provenance, fingerprint,
checksum) beside ``NAME.safetensors`` (the state dict), after diffusers' config-beside-weights
layout. Loading looks the class up in a registry rather than importing an arbitrary path, so a
component file can never make the loader run code it does not already ship.

Two hashes, for two questions:

* ``fingerprint``: *which model is this?* sha256 over the class, the constructor config and
  the sha256 of the safetensors file's bytes (``weights_sha256``). It is what a tokenizer's
  latents and a codec's bitstreams are bound to, so re-exporting the same weights and config
  (from another path, with another provenance) keeps it.
* ``checksum``: *is this the file the exporter wrote?* sha256 over every byte of the JSON
  file but its own digits, provenance and whitespace included.

Loading refuses, before building anything: a JSON file whose checksum or fingerprint does not
match, a config outside its
types and bounds (``gvc_train.component_checks``), a weights file name that leaves the folder,
a safetensors header that does not fit the file, tensors whose names, shapes or dtypes are not
what the config builds (checked on the meta device: no memory), and weights bytes that do not
match ``weights_sha256``.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as load_safetensors_bytes
from safetensors.torch import save_file
from torch.overrides import TorchFunctionMode

# register_component is re-exported: models import it from gvc_train.models.registry
from gvc_train.models.registry import jsonable, name_of, register_component, registered, registered_names  # noqa: F401
from gvc_train.component_checks import (  # ComponentError is re-exported: it lives there, torch-free
    SHA256_RE,
    ComponentError,
    check_config,
    check_fields,
    member_path,
    read_safetensors_header,
    read_sealed_json,
    sealed_json,
    tagged_sha256,
)
from gvc_train.safe_output import atomic_write_bytes

FORMAT_VERSION = 2  # 2: fingerprint over config + weights file, checksum over the whole JSON
_META_FIELDS = {
    "format_version": int, "class": str, "config": dict, "weights": str, "weights_sha256": str,
    "fingerprint": str, "checksum": str, "provenance": dict,
}  # fmt: skip
_TORCH_TO_SAFETENSORS = {
    torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
    torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
    torch.bool: "BOOL",
}  # fmt: skip


def registered_components() -> dict[str, type[torch.nn.Module]]:
    """Every component class: the built-in ones (all imported) and any registered since."""
    import gvc_train.models

    for name in gvc_train.models.BUILTIN_COMPONENTS:
        gvc_train.models.import_component(name)
    return {name: cls for name in registered_names() if (cls := registered(name)) is not None}


def _registered(class_name: Any, what: str) -> type[torch.nn.Module]:
    """The class registered as ``class_name``; a built-in one's module is imported on first use,
    and only that module."""
    import gvc_train.models

    cls = None
    if isinstance(class_name, str):
        cls = registered(class_name) or gvc_train.models.import_component(class_name)
    if cls is None:
        raise ComponentError(f"{what}: unknown component class {class_name!r}; known: {sorted(registered_components())}")
    return cls


def build_component(class_name: str, config: dict[str, Any], what: str | None = None) -> torch.nn.Module:
    """Build a registered component from a config checked against its types and bounds."""
    what = what or class_name
    cls = _registered(class_name, what)
    check_config(cls, config, what, ComponentError)
    try:
        return cls(**config)
    except (TypeError, ValueError, RuntimeError) as e:  # a value the constructor itself refuses
        raise ComponentError(f"{what}: config does not fit {class_name}: {str(e).splitlines()[0]}") from None


_EXPECTED_CACHE: dict[str, dict[str, tuple[str, tuple[int, ...]]]] = {}


def expected_tensors(class_name: str, config: dict[str, Any], what: str) -> dict[str, tuple[str, tuple[int, ...]]]:
    """``{name: (safetensors dtype, shape)}`` of the state dict ``config`` builds, built on the
    meta device: no memory, whatever sizes the config names (they are checked first).
    Remembered per (class, config): reloading a codec does not rebuild it."""
    cls = _registered(class_name, what)
    check_config(cls, config, what, ComponentError)
    key = tagged_sha256(class_name, config)
    if key not in _EXPECTED_CACHE:
        if len(_EXPECTED_CACHE) >= 64:
            _EXPECTED_CACHE.clear()
        _EXPECTED_CACHE[key] = _build_on_meta(cls, class_name, config, what)
    return _EXPECTED_CACHE[key]


class _ShapeOnlyEye(TorchFunctionMode):
    """``torch.eye`` as ``torch.empty`` of its shape. On the meta device a tensor has no values,
    and eye's meta path is a Python decomposition that imports torch._dynamo and sympy (+150 MB
    and 1.5 s in a decoder, measured) only to make a shape: the tokenizer's downsampling
    initialises a weight from an identity."""

    def __torch_function__(self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None) -> Any:
        kwargs = kwargs or {}
        if func is torch.eye and "out" not in kwargs and args:
            n = args[0]
            m = args[1] if len(args) > 1 else kwargs.get("m", n)
            return torch.empty(n, m, dtype=kwargs.get("dtype"), device=kwargs.get("device"), requires_grad=kwargs.get("requires_grad", False))
        return func(*args, **kwargs)


def _build_on_meta(cls: type[torch.nn.Module], class_name: str, config: dict[str, Any], what: str) -> dict[str, tuple[str, tuple[int, ...]]]:
    try:
        with torch.device("meta"), _ShapeOnlyEye():
            module = cls(**config)
    except Exception as e:  # noqa: BLE001 - any failure to build is a config that does not fit
        raise ComponentError(f"{what}: config does not fit {class_name}: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    return {k: (_TORCH_TO_SAFETENSORS.get(v.dtype, str(v.dtype)), tuple(v.shape)) for k, v in module.state_dict().items()}


def check_tensors_fit(expected: dict[str, tuple[str, tuple[int, ...]]], found: dict[str, tuple[str, tuple[int, ...]]], what: str) -> None:
    """The weights file holds exactly the tensors the config builds. An empty placeholder
    (compressai's entropy tables start with 0 elements and take the saved size on load) may
    hold any shape: its size is bounded by the file, which is already checked."""
    missing, unexpected = sorted(set(expected) - set(found)), sorted(set(found) - set(expected))
    if missing or unexpected:
        raise ComponentError(f"{what}: weights do not fit the config (missing {missing[:3]}, unexpected {unexpected[:3]})")
    for name, (dtype, shape) in expected.items():
        got_dtype, got_shape = found[name]
        resizable = 0 in shape
        if got_dtype != dtype or (got_shape != shape and not resizable):
            raise ComponentError(f"{what}: weights do not fit the config: {name} is {got_dtype} {list(got_shape)}, the config builds {dtype} {list(shape)}")


def build_and_load(class_name: str, config: dict[str, Any], state: dict[str, torch.Tensor], what: str) -> torch.nn.Module:
    """Build a component and load ``state`` into it, strictly; any misfit is a ComponentError."""
    module = build_component(class_name, config, what)
    try:
        missing, unexpected = module.load_state_dict(state, strict=False)
    except RuntimeError as e:  # shape mismatches
        raise ComponentError(f"{what}: weights do not fit {class_name}: {str(e).splitlines()[-1].strip()}") from None
    if missing or unexpected:
        raise ComponentError(f"{what}: weights do not fit {class_name} (missing {missing[:3]}, unexpected {unexpected[:3]})")
    return module




def component_fingerprint(class_name: str, config: dict[str, Any], weights_sha256: str) -> str:
    """The identity of a component: what it computes (class, config, the weights file's bytes)."""
    return tagged_sha256("gvc-component/2", {"class": class_name, "config": config, "weights_sha256": weights_sha256})


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def write_sealed_json(path: Path, meta: dict[str, Any]) -> None:
    """``meta`` in canonical form with its checksum (what loaders demand), written atomically."""
    atomic_write_bytes(path, sealed_json(meta).encode())


def save_component(
    module: torch.nn.Module,
    folder: str | Path,
    name: str,
    provenance: dict[str, Any] | None = None,
) -> Path:
    """Write ``folder/name.json`` and ``folder/name.safetensors``; return the JSON path."""
    cls_name = name_of(type(module))
    if cls_name is None or not hasattr(module, "config"):
        raise ComponentError(f"{type(module).__name__} is not a registered component (use @register_component(NAME))")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu").contiguous() for k, v in module.state_dict().items()}
    weights_path = folder / f"{name}.safetensors"
    tmp = weights_path.with_name(weights_path.name + ".tmp")
    save_file(state, str(tmp), metadata={"format": "pt"})
    weights_sha256 = file_sha256(tmp)
    os.replace(tmp, weights_path)
    meta = {
        "format_version": FORMAT_VERSION,
        "class": cls_name,
        "config": module.config,
        "weights": weights_path.name,
        "weights_sha256": weights_sha256,
        "fingerprint": component_fingerprint(cls_name, module.config, weights_sha256),
        "provenance": jsonable(provenance or {}),
    }
    json_path = folder / f"{name}.json"
    write_sealed_json(json_path, meta)
    return json_path


def read_component_meta(folder: str | Path, name: str, config_class: type | None = None) -> dict[str, Any]:
    """``name.json`` of ``folder``, every check that needs no weights done: format version,
    checksum, fields and types, registered class, config types and bounds, fingerprint.

    ``config_class`` (see :func:`load_component_state`) stands for the registered class: the
    file must name its ``component_name``, and the config is checked against it, so the model's
    module is not imported."""
    if not isinstance(name, str) or not name:
        raise ComponentError(f"component name must be a non-empty string, got {name!r}")
    what = f"component {name!r}"
    if not Path(folder).is_dir():
        raise ComponentError(f"no component {name!r}: {folder} is not a folder")
    if not (Path(folder) / f"{name}.json").exists() and not os.path.islink(Path(folder) / f"{name}.json"):
        raise ComponentError(f"no component {name!r} in {folder}: {name}.json is missing")
    path = member_path(folder, f"{name}.json", what, ComponentError)
    meta = read_sealed_json(path, "component file", ComponentError, FORMAT_VERSION)
    check_fields(meta, _META_FIELDS, path, ComponentError)
    unknown = sorted(set(meta) - set(_META_FIELDS))
    if unknown:
        raise ComponentError(f"{path} has unknown field(s) {unknown[:5]}")
    for key in ("weights_sha256", "fingerprint"):
        if not SHA256_RE.match(meta[key]):
            raise ComponentError(f"{path}: {key!r} must be 64 lowercase hex digits")
    if config_class is None:
        cls = _registered(meta["class"], what)
    elif meta["class"] != config_class.component_name:
        raise ComponentError(f"{what}: a {meta['class']!r} component, where a {config_class.component_name!r} one is expected")
    else:
        cls = config_class
    check_config(cls, meta["config"], what, ComponentError)
    if component_fingerprint(meta["class"], meta["config"], meta["weights_sha256"]) != meta["fingerprint"]:
        raise ComponentError(f"{path}: the fingerprint does not match the class, config and weights it names; re-export it")
    return meta


@dataclass
class VerifiedComponent:
    """A component whose files passed every check; ``build()`` is the first allocation."""

    name: str
    meta: dict[str, Any]
    weights: bytes

    @property
    def fingerprint(self) -> str:
        return self.meta["fingerprint"]

    def build(self, map_location: str | torch.device = "cpu") -> torch.nn.Module:
        module = self.state().build(map_location)
        # where these weights were trained: a stage that reuses the module frozen passes it on to
        # its own export (lit/checkpoint_meta.py), so that an export's parts keep their history
        module.source_provenance = dict(self.meta.get("provenance") or {})
        return module

    def state(self) -> ComponentState:
        """The checked weights as tensors (CPU), no module built."""
        try:
            tensors = load_safetensors_bytes(self.weights)
        except Exception as e:  # noqa: BLE001 - safetensors raises its own types; the bytes were checked
            raise ComponentError(f"component {self.name!r}: cannot read its weights ({e})") from None
        return ComponentState(self.name, self.meta, tensors)


@dataclass
class ComponentState:
    """A checked component as data: its class name, constructor config and state dict. What an
    inference path needs when it runs the weights without the module (the latent codec's
    decoder); :meth:`build` makes the module when it is needed after all."""

    name: str
    meta: dict[str, Any]
    tensors: dict[str, torch.Tensor]

    @property
    def class_name(self) -> str:
        return self.meta["class"]

    @property
    def config(self) -> dict[str, Any]:
        return self.meta["config"]

    @property
    def fingerprint(self) -> str:
        return self.meta["fingerprint"]

    def build(self, map_location: str | torch.device = "cpu") -> torch.nn.Module:
        module = build_and_load(self.class_name, self.config, self.tensors, f"component {self.name!r}")
        return module.to(map_location).eval()


def verify_component(folder: str | Path, name: str, config_class: type | None = None) -> VerifiedComponent:
    """Every check on ``folder/name.json`` and its weights file, nothing built.

    The weights are read once, and the bytes hashed are the bytes loaded later, so a file
    swapped between check and load cannot slip through. ``config_class``: see
    :func:`load_component_state`.
    """
    meta = read_component_meta(folder, name, config_class)
    what = f"component {name!r}"
    path = member_path(folder, meta["weights"], f"{what}: weights", ComponentError)
    found = read_safetensors_header(path, what, ComponentError)
    if config_class is None:
        expected = expected_tensors(meta["class"], meta["config"], what)
    else:
        try:
            expected = config_class.expected_tensors(meta["config"])
        except (TypeError, ValueError) as e:  # a value the constructor's own checks refuse
            raise ComponentError(f"{what}: config does not fit {meta['class']}: {str(e).splitlines()[0]}") from None
    check_tensors_fit(expected, found, what)
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise ComponentError(f"{what}: cannot read {path} ({e.strerror or e})") from None
    if hashlib.sha256(data).hexdigest() != meta["weights_sha256"]:
        raise ComponentError(f"{what}: {path.name} is not the weights {name}.json was exported with (sha256 differs)")
    return VerifiedComponent(name, meta, data)


def load_component(folder: str | Path, name: str, map_location: str | torch.device = "cpu") -> torch.nn.Module:
    """Check the component's files (see the module docstring), then build it and load its
    weights; any problem is one :class:`ComponentError`."""
    return verify_component(folder, name).build(map_location)


def load_component_state(folder: str | Path, name: str, config_class: type) -> ComponentState:
    """The component's checked weights and config, with :func:`load_component`'s checks but
    without importing or building its class: ``config_class`` stands for it. It has the class's
    ``component_name`` (the registered name the file must carry), its constructor signature and
    ``config_bounds`` (the config is checked against them), and ``expected_tensors(config)``,
    the ``{name: (dtype, shape)}`` its state dict holds (e.g.
    ``models/latent/latent_codec_config.LatentCodecConfig``)."""
    return verify_component(folder, name, config_class).state()

