"""Controls in frame shards, the writer's side: ``gvc-shard --controls luma,edges,...``.

:func:`control_specs` turns the requested names and per-control settings into
:class:`~gvc_train.data.sample_format.ControlSpec` s, every setting spelled out (an unknown name,
a control without a coder or a wrong setting is a ValueError in one line, before any work);
:func:`encode_controls` runs in the shard workers: one clip's frames -> each control extracted
(:mod:`gvc_train.controls`) and coded (:mod:`gvc_train.coding.controls`), as tar members
``ctrl.<name>`` and the entries of the sample json's ``controls``. The coded bytes are what a
stream would carry, so the shards also measure each control's rate.

This module imports torch and the extractors: the writer loads it only when controls are asked
for (a plain ``gvc-shard`` run stays free of torch in its workers).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from gvc_train.coding.controls.registry import ControlCoder, build_coder
from gvc_train.controls.registry import ControlExtractor, build_extractor, known_controls
from gvc_train.data.sample_format import ControlSpec, control_entry, control_field
from gvc_train.data.shard_sources import Source
from gvc_train.frames import frames_to_tensor

SETTINGS_PARTS = ("extractor", "coder")


def parse_control_names(text: str) -> list[str]:
    """``"luma,edges"`` -> ``["luma", "edges"]``; an unknown, repeated or empty name is a ValueError."""
    names = [name.strip() for name in text.split(",")]
    known = known_controls()
    for name in names:
        if not name:
            raise ValueError(f"empty control name in {text!r} (known: {', '.join(known)})")
        if name not in known:
            raise ValueError(f"unknown control {name!r}; known: {', '.join(known)}")
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ValueError(f"control {repeated[0]!r} named twice")
    return names


def _plain_json(value: dict[str, Any], what: str) -> dict[str, Any]:
    try:
        return json.loads(json.dumps(value, sort_keys=True, allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{what} are not plain JSON: {exc}") from None


def control_specs(names: Sequence[str], settings: dict[str, Any] | None = None) -> tuple[ControlSpec, ...]:
    """The specs of controls ``names`` (in that order) with ``settings``: name ->
    ``{"extractor": {...}, "coder": {...}}`` (either part optional; omitted settings keep their
    defaults). Builds each extractor and coder once, so that a wrong setting or a control without
    a coder fails here, in one line, and reads their full settings back."""
    settings = {} if settings is None else settings
    if not isinstance(settings, dict):
        raise ValueError(f"control settings must map control names to objects, got {type(settings).__name__}")
    stray = sorted(set(settings) - set(names))
    if stray:
        raise ValueError(f"settings given for control {stray[0]!r}, which is not among the controls asked for ({', '.join(names)})")
    specs = []
    for name in names:
        parts = settings.get(name) or {}
        if not isinstance(parts, dict) or set(parts) - set(SETTINGS_PARTS):
            raise ValueError(f"settings of control {name!r} must be an object with keys {' and/or '.join(SETTINGS_PARTS)}, got {parts!r}")
        given = {part: parts.get(part) or {} for part in SETTINGS_PARTS}
        for part, value in given.items():
            if not isinstance(value, dict):
                raise ValueError(f"{part} settings of control {name!r} must be an object, got {value!r}")
        extractor = build_extractor(name, **given["extractor"])
        coder = build_coder(name, **given["coder"])
        specs.append(ControlSpec(
            name,
            _plain_json(extractor.settings(), f"extractor settings of control {name!r}"),
            _plain_json(coder.settings(), f"coder settings of control {name!r}"),
        ))  # fmt: skip
    return tuple(specs)


def check_captions(specs: Iterable[ControlSpec], sources: Sequence[Source]) -> None:
    """Refuse, before any work, a ``caption`` control that some input could not get: the
    extractor keeps an input's own caption (a ``.txt`` beside it) and needs a captioner
    (``model_path``) for the others."""
    spec = next((s for s in specs if s.name == "caption"), None)
    if spec is None or spec.extractor.get("model_path"):
        return
    without = [s.name for s in sources if not (s.caption and s.caption.strip())]
    if without:
        raise ValueError(
            f"--controls caption: {len(without)} of {len(sources)} inputs have no caption (a .txt beside them), "
            f"e.g. {without[0]}; give the caption extractor a captioner: "
            '--control-settings \'{"caption": {"extractor": {"model_path": "DIR"}}}\''
        )


# ---- in the shard workers -----------------------------------------------------------------

_BUILT: dict[str, tuple[ControlExtractor, ControlCoder]] = {}  # per process: a captioner loads once


def _built(spec: ControlSpec) -> tuple[ControlExtractor, ControlCoder]:
    key = json.dumps([spec.name, spec.extractor, spec.coder], sort_keys=True)
    if key not in _BUILT:
        _BUILT[key] = (build_extractor(spec.name, **spec.extractor), build_coder(spec.name, **spec.coder))
    return _BUILT[key]


def encode_controls(
    frames_THWC: np.ndarray, caption: str | None, specs: Sequence[ControlSpec]
) -> tuple[dict[str, bytes], dict[str, dict[str, Any]]]:
    """One clip (``T x H x W x 3`` uint8) -> (tar members ``ctrl.<name>`` -> coded bytes, the
    sample json's ``controls`` entries). ``caption``: the input's caption, if it has one."""
    clip_CThw = frames_to_tensor(frames_THWC)[0]
    members: dict[str, bytes] = {}
    entries: dict[str, dict[str, Any]] = {}
    for spec in specs:
        extractor, coder = _built(spec)
        data = coder.encode(extractor.extract(clip_CThw, caption))
        members[control_field(spec.name)] = data
        entries[spec.name] = control_entry(spec, len(data))
    return members, entries
