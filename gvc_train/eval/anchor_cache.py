"""On-disk cache of anchor encodes: the coded stream, keyed by everything that produced it.

The key is the sha256 of (the exact bytes ffmpeg read, the full encode command line, the whole
``ffmpeg -version`` text, a schema number), so a different frame, CRF, preset, setting, thread
count or ffmpeg build is a different entry. What is stored is the elementary stream itself (a few
KB to a few MB) plus a JSON sidecar, not the decoded frames (50 MB per point at 640x272x96):
decoding a stream again costs a fraction of a second, and the stream is what a reader of the
report may want to inspect or decode by hand.

An entry is trusted only if its sidecar parses, names the same key and its stream has the
recorded size and sha256; anything else (a half-written file, a hand-edited one, an old schema)
is treated as a miss, and the encode that follows overwrites it. Writes go to a temporary file
then ``os.replace``, so concurrent evaluations never read a partial entry.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from gvc_train import strict_json
from gvc_train.safe_output import atomic_write_bytes

CACHE_SCHEMA = 1


def default_cache_dir() -> Path:
    """``$GVC_ANCHOR_CACHE``, else ``$XDG_CACHE_HOME/gvc_train/anchors`` (``~/.cache/...``)."""
    if os.environ.get("GVC_ANCHOR_CACHE"):
        return Path(os.environ["GVC_ANCHOR_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "gvc_train" / "anchors"


def cache_key(input_sha256: str, command: str, ffmpeg_version: str) -> str:
    """Hex sha256 over what determines the stream; length-prefixed so fields cannot run together."""
    h = hashlib.sha256()
    for part in (f"schema={CACHE_SCHEMA}", input_sha256, command, ffmpeg_version):
        data = part.encode()
        h.update(len(data).to_bytes(8, "little") + data)
    return h.hexdigest()


class AnchorCache:
    """A folder of ``<key><suffix>`` streams with ``<key>.json`` sidecars."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)

    def _paths(self, key: str, suffix: str) -> tuple[Path, Path]:
        return self.root / f"{key}{suffix}", self.root / f"{key}.json"

    def load(self, key: str, suffix: str) -> tuple[bytes, dict[str, Any]] | None:
        """The stream and its sidecar, or None when absent or not trustworthy."""
        stream_path, meta_path = self._paths(key, suffix)
        try:
            meta = json.loads(meta_path.read_text())
            stream = stream_path.read_bytes()
        except (OSError, ValueError):
            return None
        if not isinstance(meta, dict) or meta.get("key") != key or meta.get("schema") != CACHE_SCHEMA:
            return None
        if meta.get("bytes") != len(stream) or meta.get("stream_sha256") != hashlib.sha256(stream).hexdigest():
            return None
        return stream, meta

    def store(self, key: str, suffix: str, stream: bytes, meta: dict[str, Any]) -> None:
        """Write the stream, then the sidecar (the sidecar is what makes the entry count)."""
        self.root.mkdir(parents=True, exist_ok=True)
        stream_path, meta_path = self._paths(key, suffix)
        full = {**meta, "key": key, "schema": CACHE_SCHEMA, "bytes": len(stream), "stream_sha256": hashlib.sha256(stream).hexdigest()}
        atomic_write_bytes(stream_path, stream)
        atomic_write_bytes(meta_path, (strict_json.dumps(full, indent=1, sort_keys=True) + "\n").encode())
