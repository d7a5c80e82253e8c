"""Control coders by name: ``build_coder("edges")``; the same names as the extractors.

A coder's settings are plain JSON (:meth:`ControlCoder.settings`), stored beside what it wrote
(the sample JSON of a shard, the CONFIG of a stream), so that a decoder is built exactly as the
encoder was. ``decode`` of damaged or foreign bytes raises
:class:`gvc_train.coding.container.BitstreamError` (one line) and allocates nothing the payload's
own bounds do not allow. The bits a control costs are ``8 * len(encode(control))``.
Built-in coders are imported only when their name is first asked for (:data:`BUILTIN_CODERS`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any, ClassVar, TypeVar

from gvc_train.named_classes import KeepsSettings, NamedClasses

# Name -> "module:Class" of the built-in coders (imported on first use).
BUILTIN_CODERS: dict[str, str] = {
    "caption": "gvc_train.coding.controls.caption:CaptionCoder",
    "edges": "gvc_train.coding.controls.edges:EdgesCoder",
    "flow": "gvc_train.coding.controls.flow:FlowCoder",
    "luma": "gvc_train.coding.controls.luma:LumaCoder",
    "pose": "gvc_train.coding.controls.pose:PoseCoder",
    "segmentation": "gvc_train.coding.controls.segmentation:SegmentationCoder",
}

_CODERS = NamedClasses(
    "control coder", BUILTIN_CODERS, unknown="no coder for control {name!r}; known: {known}", bad_setting="coder of control {name!r}: {error}"
)
_T = TypeVar("_T", bound=type)


class ControlCoder(KeepsSettings, ABC):
    """Codes one kind of control (layout: ``gvc_train.controls.registry.LAYOUTS[name]``); keeps
    each constructor argument in the attribute of the same name (:meth:`settings` reads them back).
    ``lossless``: whether ``decode(encode(c))`` gives ``c`` exactly (else the coder's docstring
    states the error bound)."""

    name: ClassVar[str]
    lossless: ClassVar[bool] = True

    @abstractmethod
    def encode(self, control: Any) -> bytes:
        """The control's bytes (self-delimiting: its shape is inside)."""

    @abstractmethod
    def decode(self, data: bytes) -> Any:
        """The control back; BitstreamError for bytes this coder did not write."""


def register_coder(name: str) -> Callable[[_T], _T]:
    """Class decorator: make a coder buildable as ``name`` (a control name)."""
    return _CODERS.register(name)


def coder_class(name: str) -> type[ControlCoder]:
    return _CODERS.get(name)


def build_coder(name: str, **settings: Any) -> ControlCoder:
    return _CODERS.build(name, **settings)
