"""An exported codec folder (DESIGN.md, "Exported codec")::

    codec.json                 format version, family, components, fingerprint, provenance
    NAME.json/.safetensors     one pair per component the family table names (gvc_train.components);
                               entropy tables included (update() ran before the export)

The codec fingerprint is a sha256 over the family and its components' fingerprints, each of
which covers that component's class, config and weights file. Every bitstream carries its first
bytes, so a stream made with another codec is refused before anything is decoded. ``codec.json``
also carries a checksum over its whole text, and every file in the folder is checked
(``gvc_train.components``) before any module is built: a folder with any byte changed is one
:class:`CodecFolderError`. Reading never unpickles: JSON and safetensors only.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from gvc_train.component_checks import member_path, read_sealed_json
from gvc_train.codecs.codec_meta import (  # noqa: F401 (re-exported: the torch-free half of this module)
    CODEC_FIELDS,
    CODEC_FORMAT_VERSION,
    CODEC_JSON,
    CodecFolderError,
    codec_fingerprint,
    read_codec_json,
)
from gvc_train.codecs.families import FAMILIES
from gvc_train.components import FORMAT_VERSION as COMPONENT_FORMAT_VERSION
from gvc_train.components import ComponentError, read_component_meta, verify_component, write_sealed_json
from gvc_train.models.registry import jsonable


def write_codec_json(folder: str | Path, family: str, extra: dict[str, Any], provenance: dict[str, Any]) -> Path:
    """Write ``codec.json`` for components already saved in ``folder``."""
    folder = Path(folder)
    names = FAMILIES[family].components
    prints = {name: read_component_meta(folder, name)["fingerprint"] for name in names}
    clash = sorted(set(extra) & (set(CODEC_FIELDS) | {"checksum"}))
    if clash:
        raise ValueError(f"codec.json extras may not replace {clash}")
    meta = {
        **jsonable(extra),
        "format_version": CODEC_FORMAT_VERSION,
        "family": family,
        "components": {name: f"{name}.json" for name in names},
        "component_fingerprints": prints,
        "fingerprint": codec_fingerprint(family, prints),
        "provenance": jsonable(provenance),
    }
    path = folder / CODEC_JSON
    write_sealed_json(path, meta)
    return path


def load_codec_components(
    folder: str | Path, family: str | None = None, state_only: Mapping[str, type] | None = None
) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(codec.json, {name: module})``. Every file of every component is checked against the
    fingerprints before the first module is built.

    ``family``: the folder must hold one of that family (CodecFolderError before any component
    is read). ``state_only``: component name -> config class (``components.load_component_state``):
    those come as a ``ComponentState`` (checked config and weights), their module neither built
    nor imported."""
    meta = read_codec_json(folder)
    if family is not None and meta["family"] != family:
        raise CodecFolderError(f"{folder} holds a {meta['family']!r} codec, not a {family} one")
    names = FAMILIES[meta["family"]].components
    config_classes = {name: (state_only or {}).get(name) for name in names}
    for name in names:  # every file's seal first: an edit anywhere is refused in microseconds
        if (Path(folder) / f"{name}.json").exists():  # a missing one: read_component_meta says so
            path = member_path(folder, f"{name}.json", f"component {name!r}", ComponentError)
            read_sealed_json(path, "component file", ComponentError, COMPONENT_FORMAT_VERSION)
    for name in names:  # then every JSON file's meaning, still before any weights are read
        if read_component_meta(folder, name, config_classes[name])["fingerprint"] != meta["component_fingerprints"][name]:
            raise CodecFolderError(f"component {name!r} in {folder} is not the one {CODEC_JSON} was written for")
    verified = {}
    for name in names:
        component = verify_component(folder, name, config_classes[name])
        if component.fingerprint != meta["component_fingerprints"][name]:
            raise CodecFolderError(f"component {name!r} in {folder} is not the one {CODEC_JSON} was written for")
        verified[name] = component
    return meta, {name: component.state() if config_classes[name] else component.build() for name, component in verified.items()}
