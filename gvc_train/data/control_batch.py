"""Controls in training batches, the reader's side: a frame-shard sample's stored controls
(``ctrl.<name>`` members, written by ``gvc-shard --controls``) decoded, cut to the sampled
window and collated.

Each control is decoded by its coder (:mod:`gvc_train.coding.controls`), built from the coder
settings in the sample json, and checked against the clip (its frame count). A requested control
that is absent (no member, or not in the json) skips the sample as ``missing_control``; one that
does not decode (``BitstreamError``: damaged, truncated, foreign bytes) or disagrees with the clip
skips it as ``control_error`` (:mod:`gvc_train.data.skip_stats`).

Controls are whole-frame: they are cut in time with the frames' window (same start and frame
stride), never cropped or flipped, so a data module that asks for controls samples whole frames,
unflipped (:func:`check_request`). Collated layouts, ``batch["controls"][name]`` (per clip as in
``gvc_train.controls.registry.LAYOUTS``, at the extractor's resolution)::

    luma          torch.uint8    B x T x h x w
    edges         torch.bool     B x T x h x w
    segmentation  torch.uint8    B x T x h x w   (labels)
    flow          torch.float32  B x (T - 1) x 2 x h x w   (frame stride 1 only)
    pose          list of B lists of T float32 tensors P_t x J x 3   (ragged: P_t people)
    caption       list of B str
"""

from __future__ import annotations

import functools
import json
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import torch

from gvc_train.coding.container import BitstreamError
from gvc_train.coding.controls.registry import ControlCoder, build_coder
from gvc_train.data.sample_format import CONTROLS_META_KEY, META_KEY, control_field
from gvc_train.data.skip_stats import SkipSample

# How each control runs in time: one item per frame, one per pair of consecutive frames (flow[t]
# goes from frame t to t + 1), or one for the whole clip. Every name of LAYOUTS (a test checks).
TIME_AXIS = {
    "luma": "frames",
    "edges": "frames",
    "segmentation": "frames",
    "pose": "frames",
    "flow": "pairs",
    "caption": "clip",
}
STACKED = ("luma", "edges", "segmentation", "flow")  # fixed shape per clip: stacked to B x ...


def check_request(controls: Sequence[str], crop_size: tuple[int, int] | None, flip: bool, frame_stride: int) -> tuple[str, ...]:
    """The requested control names, refused in one line where they cannot be served exactly."""
    names = tuple(controls)
    unknown = [n for n in names if n not in TIME_AXIS]
    if unknown:
        raise ValueError(f"unknown control {unknown[0]!r}; known: {', '.join(sorted(TIME_AXIS))}")
    if len(set(names)) != len(names):
        raise ValueError(f"a control is named twice in {list(names)}")
    if names and (crop_size is not None or flip):
        raise ValueError(
            "controls are whole-frame (never cropped or flipped): with controls set crop_size: null and "
            "flip: false (make the frames the size to train on with gvc-shard --resize-short)"
        )
    if "flow" in names and frame_stride != 1:
        raise ValueError(f"the flow control is between consecutive frames: it needs frame_stride 1, got {frame_stride}")
    return names


@functools.lru_cache(maxsize=64)
def _coder(name: str, settings_json: str) -> ControlCoder:
    return build_coder(name, **json.loads(settings_json))


def _entries(sample: dict[str, Any]) -> dict[str, Any]:
    try:
        entries = json.loads(sample[META_KEY]).get(CONTROLS_META_KEY, {})
    except Exception as exn:  # the frames' own metadata check has passed: this is the controls' part
        raise SkipSample("bad_meta", f"controls: {type(exn).__name__}: {exn}") from exn
    if not isinstance(entries, dict):
        raise SkipSample("bad_meta", f"controls entry is {type(entries).__name__}, not an object")
    return entries


# Decoded controls by their coded bytes: a small data set repeats its clips every epoch, and
# decoding (segmentation's label maps above all) costs more than the model's CPU step. Bounded in
# bytes; a control bigger than an eighth of the budget is never kept. Read-only use downstream:
# cutting slices and collating stacks (copies), nothing writes into a decoded control.
DECODED_CACHE_BYTES = 256 << 20
_decoded_cache: OrderedDict[tuple[str, str, bytes], tuple[Any, int]] = OrderedDict()
_decoded_bytes = 0


def _nbytes(control: Any) -> int:
    if isinstance(control, torch.Tensor):
        return control.numel() * control.element_size()
    if isinstance(control, list):
        return sum(_nbytes(c) for c in control)
    return len(str(control))


def _decode_cached(name: str, settings_json: str, data: bytes) -> Any:
    global _decoded_bytes
    key = (name, settings_json, bytes(data))
    if key in _decoded_cache:
        _decoded_cache.move_to_end(key)
        return _decoded_cache[key][0]
    control = _coder(name, settings_json).decode(data)
    size = _nbytes(control)
    if size <= DECODED_CACHE_BYTES // 8:
        _decoded_cache[key] = (control, size)
        _decoded_bytes += size
        while _decoded_bytes > DECODED_CACHE_BYTES:
            _decoded_bytes -= _decoded_cache.popitem(last=False)[1][1]
    return control


def _length(control: Any) -> int | None:
    return len(control) if isinstance(control, (torch.Tensor, list)) else None


def decode_controls(sample: dict[str, Any], names: Sequence[str], num_frames: int) -> dict[str, Any]:
    """The whole clip's controls ``names`` of a raw sample, decoded; SkipSample where one is
    missing or damaged (module docstring)."""
    if not names:
        return {}
    entries = _entries(sample)
    controls: dict[str, Any] = {}
    for name in names:
        data, entry = sample.get(control_field(name)), entries.get(name)
        if data is None or entry is None:
            what = f"no {control_field(name)} member" if data is None else "no entry in the sample json"
            raise SkipSample("missing_control", f"{name}: {what}")
        if not isinstance(entry, dict) or not isinstance(entry.get("coder"), dict):
            raise SkipSample("bad_meta", f"controls.{name} has no coder settings")
        if entry.get("bytes") != len(data):
            raise SkipSample("control_error", f"{name}: {len(data)} bytes, the json says {entry.get('bytes')}")
        try:
            control = _decode_cached(name, json.dumps(entry["coder"], sort_keys=True), data)
        except (BitstreamError, ValueError) as exn:  # ValueError: a coder or setting this version lacks
            raise SkipSample("control_error", f"{name}: {exn}") from exn
        expected = {"frames": num_frames, "pairs": num_frames - 1, "clip": None}[TIME_AXIS[name]]
        if _length(control) != expected:
            raise SkipSample("control_error", f"{name}: {_length(control)} items for a clip of {num_frames} frames")
        controls[name] = control
    return controls


def cut_controls(controls: dict[str, Any], start: int, clip_frames: int, frame_stride: int) -> dict[str, Any]:
    """The controls of the window ``clip_frames`` frames from ``start`` at ``frame_stride``
    (flow: the ``clip_frames - 1`` pairs between them, stride 1)."""
    span = (clip_frames - 1) * frame_stride + 1
    cut: dict[str, Any] = {}
    for name, control in controls.items():
        axis = TIME_AXIS[name]
        if axis == "frames":
            cut[name] = control[start : start + span : frame_stride]
        elif axis == "pairs":
            cut[name] = control[start : start + clip_frames - 1]
        else:
            cut[name] = control
    return cut


def control_shapes(controls: dict[str, Any]) -> tuple[tuple[str, tuple[int, ...]], ...]:
    """The shapes that must agree within a batch (the stacked controls')."""
    return tuple((name, tuple(c.shape)) for name, c in sorted(controls.items()) if name in STACKED)


def collate_controls(per_sample: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Per-sample cut controls -> ``batch["controls"]`` (layouts in the module docstring)."""
    names = per_sample[0].keys()
    return {
        name: torch.stack([c[name] for c in per_sample]) if name in STACKED else [c[name] for c in per_sample]
        for name in names
    }
