"""An exported codec folder (DESIGN.md, "Exported codec")::

    codec.json                 format version, family, components, fingerprint, provenance
    tokenizer.json/.safetensors      one pair per component (gvc_train.components)
    latent_codec.json/.safetensors   entropy tables included (update() ran before the export)

The codec fingerprint is the sha256 of the components' own weight fingerprints, by name. Every
bitstream carries its first bytes, so a stream made with other weights is refused before
anything is decoded. Reading never unpickles: JSON and safetensors only.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from gvc_train.components import ComponentError, _atomic_write_bytes, _jsonable, load_component, read_component_meta

CODEC_FORMAT_VERSION = 1
CODEC_JSON = "codec.json"

# What each family's folder holds: component names, in the order the fingerprint hashes them.
FAMILY_COMPONENTS = {"latent": ("tokenizer", "latent_codec")}


class CodecFolderError(ComponentError):
    """A codec folder that cannot be used: missing, damaged, or of an unknown kind."""


def codec_fingerprint(component_fingerprints: dict[str, str]) -> str:
    h = hashlib.sha256()
    for name in sorted(component_fingerprints):
        h.update(f"{name}={component_fingerprints[name]};".encode())
    return h.hexdigest()


def write_codec_json(folder: str | Path, family: str, extra: dict[str, Any], provenance: dict[str, Any]) -> Path:
    """Write ``codec.json`` for components already saved in ``folder``."""
    folder = Path(folder)
    names = FAMILY_COMPONENTS[family]
    prints = {name: read_component_meta(folder, name)["fingerprint"] for name in names}
    meta = {
        "format_version": CODEC_FORMAT_VERSION,
        "family": family,
        "components": {name: f"{name}.json" for name in names},
        "component_fingerprints": prints,
        "fingerprint": codec_fingerprint(prints),
        **extra,
        "provenance": _jsonable(provenance),
    }
    path = folder / CODEC_JSON
    _atomic_write_bytes(path, (json.dumps(meta, indent=2, sort_keys=True) + "\n").encode())
    return path


def read_codec_json(folder: str | Path) -> dict[str, Any]:
    folder = Path(folder)
    path = folder / CODEC_JSON
    if not folder.is_dir():
        raise CodecFolderError(f"no codec folder at {folder}")
    if not path.is_file():
        raise CodecFolderError(f"{folder} is not an exported codec: {CODEC_JSON} is missing (run gvc-export)")
    try:
        meta = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CodecFolderError(f"{path} is not valid JSON: {e}") from None
    if not isinstance(meta, dict):
        raise CodecFolderError(f"{path} is not a JSON object")
    for key in ("format_version", "family", "component_fingerprints", "fingerprint"):
        if key not in meta:
            raise CodecFolderError(f"{path} lacks the field {key!r}")
    if meta["format_version"] != CODEC_FORMAT_VERSION:
        raise CodecFolderError(f"{path} has format version {meta['format_version']}; this gvc_train reads {CODEC_FORMAT_VERSION}")
    if meta["family"] not in FAMILY_COMPONENTS:
        raise CodecFolderError(f"{path}: unknown codec family {meta['family']!r}")
    return meta


def load_codec_components(folder: str | Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(codec.json, {name: module})``; every component's weights are checked against the fingerprints."""
    meta = read_codec_json(folder)
    modules = {}
    for name in FAMILY_COMPONENTS[meta["family"]]:
        expected = meta["component_fingerprints"].get(name)
        if read_component_meta(folder, name)["fingerprint"] != expected:
            raise CodecFolderError(f"component {name!r} in {folder} is not the one codec.json was written for")
        modules[name] = load_component(folder, name)
    if codec_fingerprint(meta["component_fingerprints"]) != meta["fingerprint"]:
        raise CodecFolderError(f"{folder}/{CODEC_JSON}: fingerprint does not match its components")
    return meta, modules
