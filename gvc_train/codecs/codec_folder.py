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

from pathlib import Path
from typing import Any

from gvc_train.component_checks import (
    SHA256_RE,
    check_fields,
    member_path,
    read_sealed_json,
    tagged_sha256,
)
from gvc_train.codecs.families import FAMILIES
from gvc_train.components import FORMAT_VERSION as COMPONENT_FORMAT_VERSION
from gvc_train.components import ComponentError, read_component_meta, verify_component, write_sealed_json
from gvc_train.models.registry import jsonable

CODEC_FORMAT_VERSION = 2  # 2: fingerprint over family + component fingerprints, checksum over the file
CODEC_JSON = "codec.json"

_CODEC_FIELDS = {
    "format_version": int, "family": str, "components": dict, "component_fingerprints": dict,
    "fingerprint": str, "checksum": str, "provenance": dict,
}  # fmt: skip


class CodecFolderError(ComponentError):
    """A codec folder that cannot be used: missing, damaged, edited, or of an unknown kind."""


def codec_fingerprint(family: str, component_fingerprints: dict[str, str]) -> str:
    return tagged_sha256("gvc-codec/2", {"family": family, "components": component_fingerprints})


def write_codec_json(folder: str | Path, family: str, extra: dict[str, Any], provenance: dict[str, Any]) -> Path:
    """Write ``codec.json`` for components already saved in ``folder``."""
    folder = Path(folder)
    names = FAMILIES[family].components
    prints = {name: read_component_meta(folder, name)["fingerprint"] for name in names}
    clash = sorted(set(extra) & (set(_CODEC_FIELDS) | {"checksum"}))
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


def read_codec_json(folder: str | Path) -> dict[str, Any]:
    """``codec.json``, checked (format version, checksum, fields, fingerprint); no weights read."""
    folder = Path(folder)
    if not folder.is_dir():
        raise CodecFolderError(f"no codec folder at {folder}")
    if not (folder / CODEC_JSON).exists():
        raise CodecFolderError(f"{folder} is not an exported codec: {CODEC_JSON} is missing (run gvc-export)")
    path = member_path(folder, CODEC_JSON, f"codec {folder}", CodecFolderError)
    meta = read_sealed_json(path, "codec file", CodecFolderError, CODEC_FORMAT_VERSION)
    check_fields(meta, _CODEC_FIELDS, path, CodecFolderError)
    family = meta["family"]
    if family not in FAMILIES:
        raise CodecFolderError(f"{path}: unknown codec family {family!r} (this gvc_train knows {sorted(FAMILIES)})")
    names = FAMILIES[family].components
    if meta["components"] != {name: f"{name}.json" for name in names}:
        raise CodecFolderError(f"{path}: a {family} codec's components are {[f'{n}.json' for n in names]}")
    prints = meta["component_fingerprints"]
    if set(prints) != set(names) or not all(isinstance(v, str) and SHA256_RE.match(v) for v in prints.values()):
        raise CodecFolderError(f"{path}: component_fingerprints must give a sha256 for each of {list(names)}")
    if codec_fingerprint(family, prints) != meta["fingerprint"]:
        raise CodecFolderError(f"{path}: the fingerprint does not match its components; re-export the codec")
    return meta


def load_codec_components(folder: str | Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(codec.json, {name: module})``. Every file of every component is checked against the
    fingerprints before the first module is built."""
    meta = read_codec_json(folder)
    names = FAMILIES[meta["family"]].components
    for name in names:  # every file's seal first: an edit anywhere is refused in microseconds
        if (Path(folder) / f"{name}.json").exists():  # a missing one: read_component_meta says so
            path = member_path(folder, f"{name}.json", f"component {name!r}", ComponentError)
            read_sealed_json(path, "component file", ComponentError, COMPONENT_FORMAT_VERSION)
    for name in names:  # then every JSON file's meaning, still before any weights are read
        if read_component_meta(folder, name)["fingerprint"] != meta["component_fingerprints"][name]:
            raise CodecFolderError(f"component {name!r} in {folder} is not the one {CODEC_JSON} was written for")
    verified = {}
    for name in names:
        component = verify_component(folder, name)
        if component.fingerprint != meta["component_fingerprints"][name]:
            raise CodecFolderError(f"component {name!r} in {folder} is not the one {CODEC_JSON} was written for")
        verified[name] = component
    return meta, {name: component.build() for name, component in verified.items()}
