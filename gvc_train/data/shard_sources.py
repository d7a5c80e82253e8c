"""The inputs of a shard run: files, PNG folders and directory trees -> :class:`Source` s.

Each source gets a key stem unique in the run (``Vimeo-90k``'s many ``0001`` folders become
``00001_0001``, ``00002_0001``, ...) and the caption of a ``.txt`` file beside it, if any.
"""

from __future__ import annotations

import dataclasses
import os
from collections import defaultdict
from typing import Sequence

from gvc_train.data.sample_format import safe_stem
from gvc_train.data.video_io import caption_path, find_sources, read_caption  # noqa: F401 (caption_path: shard_writer's)


@dataclasses.dataclass(frozen=True)
class Source:
    """One video to shard: where to read it, what to record, its key stem and caption."""

    path: str
    name: str  # ClipMeta.source
    stem: str  # unique among the run's sources, already key-safe
    caption: str | None


def collect_sources(
    inputs: Sequence[str | os.PathLike], relative: bool = False
) -> tuple[list[Source], list[dict[str, str]]]:
    """Expand inputs (files, PNG folders, directory trees) into sources; also the inputs skipped."""
    found_sources: list[tuple[str, str, str | None]] = []  # path, path relative to its input, caption
    skipped: list[dict[str, str]] = []
    seen_paths: set[str] = set()
    for given in map(os.fspath, inputs):
        if not os.path.exists(given):
            skipped.append({"source": given, "reason": "no such file or directory"})
            continue
        found = find_sources(given)
        if not found:
            skipped.append({"source": given, "reason": "directory holds no videos or PNG folders"})
            continue
        walked = os.path.isdir(given) and found != [given]
        for path in found:
            real = os.path.realpath(path)
            if real in seen_paths:
                skipped.append({"source": path, "reason": "given more than once"})
                continue
            seen_paths.add(real)
            rel = os.path.relpath(path, given) if walked else os.path.basename(os.path.normpath(path))
            try:
                caption = read_caption(path)
            except ValueError as exc:
                skipped.append({"source": path, "reason": str(exc)})
                continue
            found_sources.append((path, rel, caption))
    stems = _key_stems([(path, rel) for path, rel, _ in found_sources])
    sources = [
        Source(path, rel if relative else path, stem, caption)
        for (path, rel, caption), stem in zip(found_sources, stems)
    ]
    return sources, skipped


def _key_stems(paths: list[tuple[str, str]]) -> list[str]:
    """Unique, key-safe stems: the path relative to its input (a file input: its name), without
    the video extension; names that collide take parent folders until they differ, so that
    Vimeo-90k's many ``0001`` folders become ``00001_0001``, ``00002_0001``, ...
    """

    def parts_of(path: str) -> list[str]:
        full = os.path.abspath(path)
        if not os.path.isdir(full):
            full = os.path.splitext(full)[0]
        return [p for p in full.split(os.sep) if p]

    parts = [parts_of(path) for path, _ in paths]
    depth = [len([p for p in rel.split(os.sep) if p not in ("", ".")]) or 1 for _, rel in paths]
    while True:
        stems = [safe_stem("_".join(p[-d:])) for p, d in zip(parts, depth)]
        counts: dict[str, int] = defaultdict(int)
        for stem in stems:
            counts[stem] += 1
        grow = [i for i, stem in enumerate(stems) if counts[stem] > 1 and depth[i] < len(parts[i])]
        if not grow:
            break
        for i in grow:
            depth[i] += 1
    seen: set[str] = set()
    unique = []
    for stem in stems:  # still equal (e.g. "a b" and "a_b"): number them, in input order
        candidate, n = stem, 2
        while candidate in seen:
            candidate, n = f"{stem}_{n}", n + 1
        seen.add(candidate)
        unique.append(candidate)
    return unique
