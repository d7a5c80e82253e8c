"""``codec.json`` read and checked without weights and without torch (DESIGN.md, "Exported codec").

The checks are those every loader runs first (format version, checksum over the whole file,
fields, family, fingerprint over the components' fingerprints); they need only the standard
library, so ``gvc info`` and the codec search of ``gvc decode`` answer without importing torch.
Writing a codec folder and checking its weights is :mod:`gvc_train.codecs.codec_folder`'s,
which re-exports these names.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from gvc_train.codecs.families import FAMILIES
from gvc_train.component_checks import SHA256_RE, ComponentError, check_fields, member_path, read_sealed_json, tagged_sha256

CODEC_FORMAT_VERSION = 2  # 2: fingerprint over family + component fingerprints, checksum over the file
CODEC_JSON = "codec.json"

CODEC_FIELDS = {
    "format_version": int, "family": str, "components": dict, "component_fingerprints": dict,
    "fingerprint": str, "checksum": str, "provenance": dict,
}  # fmt: skip


class CodecFolderError(ComponentError):
    """A codec folder that cannot be used: missing, damaged, edited, or of an unknown kind."""


def codec_fingerprint(family: str, component_fingerprints: dict[str, str]) -> str:
    return tagged_sha256("gvc-codec/2", {"family": family, "components": component_fingerprints})


def read_codec_json(folder: str | Path) -> dict[str, Any]:
    """``codec.json``, checked (format version, checksum, fields, fingerprint); no weights read."""
    folder = Path(folder)
    if not folder.is_dir():
        raise CodecFolderError(f"no codec folder at {folder}")
    if not (folder / CODEC_JSON).exists():
        raise CodecFolderError(f"{folder} is not an exported codec: {CODEC_JSON} is missing (run gvc-export)")
    path = member_path(folder, CODEC_JSON, f"codec {folder}", CodecFolderError)
    meta = read_sealed_json(path, "codec file", CodecFolderError, CODEC_FORMAT_VERSION)
    check_fields(meta, CODEC_FIELDS, path, CodecFolderError)
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
