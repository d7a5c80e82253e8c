"""Control extractors by name: ``build_extractor("edges", low=100, high=200)``.

An extractor runs on one clip of the data contract (``C x T x H x W`` float32 RGB in ``[0, 1]``,
``C = 3``; a batch is a loop over clips: controls are per clip and some are ragged) and returns
the clip's control in the layout of its name (:data:`LAYOUTS`). Its settings are plain JSON
(:meth:`ControlExtractor.settings`): gvc-shard stores them in the sample JSON beside the coded
control, so a reader knows exactly how a control was made.

Built-in extractors are imported only when their name is first asked for
(:data:`BUILTIN_EXTRACTORS`): asking for ``flow`` never imports mediapipe.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any, ClassVar, TypeVar

import torch

from gvc_train.named_classes import KeepsSettings, NamedClasses

# The layout of every control, by name: what an extractor returns and a coder takes and gives back.
LAYOUTS = {
    "luma": "torch.uint8 T x h x w: BT.601 luma (0..255) of every frame, area-downsampled to the extractor's size",
    "edges": "torch.bool T x h x w: Canny edge maps of every frame (h x w: the extractor's size, default the frame's)",
    "flow": "torch.float32 (T - 1) x 2 x h x w: dense optical flow between frames t and t + 1 on frame t + 1's grid "
            "(dx, dy in pixels of the h x w grid): frame t backward-warped by flow[t] (sampled at x + flow) "
            "approximates frame t + 1",
    "segmentation": "torch.uint8 T x h x w: a label per pixel, 0..classes - 1 (classes in the extractor's settings)",
    "pose": "list of T torch.float32 P_t x J x 3 tensors: per frame, P_t people (0 when none) of J keypoints "
            "(x, y in [0, 1] of the frame's width and height, confidence in [0, 1])",
    "caption": "str: one caption for the whole clip (UTF-8)",
}  # fmt: skip

_T = TypeVar("_T", bound=type)

# Name -> "module:Class" of the built-in extractors (imported on first use).
BUILTIN_EXTRACTORS: dict[str, str] = {
    "caption": "gvc_train.controls.caption:CaptionExtractor",
    "edges": "gvc_train.controls.edges:EdgesExtractor",
    "flow": "gvc_train.controls.flow:FlowExtractor",
    "luma": "gvc_train.controls.luma:LumaExtractor",
    "pose": "gvc_train.controls.pose:PoseExtractor",
    "segmentation": "gvc_train.controls.segmentation:SegmentationExtractor",
}

_EXTRACTORS = NamedClasses(
    "control extractor", BUILTIN_EXTRACTORS, unknown="unknown control {name!r}; known: {known}", bad_setting="control {name!r}: {error}"
)


class ControlExtractor(KeepsSettings, ABC):
    """One kind of control. A subclass is registered under its name (:func:`register_extractor`,
    a key of :data:`LAYOUTS`), takes its settings as keyword arguments with defaults, keeps each
    in the attribute of the same name (:meth:`settings` reads them back), and implements
    :meth:`extract`."""

    name: ClassVar[str]

    @abstractmethod
    def extract(self, clip_CThw: torch.Tensor, caption: str | None = None) -> Any:
        """The control of one clip (``3 x T x H x W`` float32 in [0, 1]) in :data:`LAYOUTS`'s
        layout for this name. ``caption``: the clip's caption when the shard has one."""


def register_extractor(name: str) -> Callable[[_T], _T]:
    """Class decorator: make an extractor buildable as ``name`` (a key of :data:`LAYOUTS`)."""
    if name not in LAYOUTS:
        raise ValueError(f"no control layout named {name!r}: add it to LAYOUTS first ({', '.join(LAYOUTS)})")
    return _EXTRACTORS.register(name)


def extractor_class(name: str) -> type[ControlExtractor]:
    """The extractor registered as ``name`` (importing its built-in module); ValueError otherwise."""
    return _EXTRACTORS.get(name)


def build_extractor(name: str, **settings: Any) -> ControlExtractor:
    """A configured extractor; a wrong setting is a ValueError naming it."""
    return _EXTRACTORS.build(name, **settings)


def known_controls() -> list[str]:
    return _EXTRACTORS.names()
