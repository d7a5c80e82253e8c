"""Control coders by name: ``build_coder("edges")``; the same names as the extractors.

A coder's settings are plain JSON (:meth:`ControlCoder.settings`), stored beside what it wrote
(the sample JSON of a shard, the CONFIG of a stream), so that a decoder is built exactly as the
encoder was. ``decode`` of damaged or foreign bytes raises
:class:`gvc_train.coding.container.BitstreamError` (one line) and allocates nothing the payload's
own bounds do not allow. The bits a control costs are ``8 * len(encode(control))``.
Built-in coders are imported only when their name is first asked for (:data:`BUILTIN_CODERS`).
"""

from __future__ import annotations

import importlib
import inspect
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any, ClassVar, TypeVar

# Name -> "module:Class" of the built-in coders (imported on first use).
BUILTIN_CODERS: dict[str, str] = {
    "caption": "gvc_train.coding.controls.caption:CaptionCoder",
    "edges": "gvc_train.coding.controls.edges:EdgesCoder",
    "flow": "gvc_train.coding.controls.flow:FlowCoder",
    "luma": "gvc_train.coding.controls.luma:LumaCoder",
    "pose": "gvc_train.coding.controls.pose:PoseCoder",
    "segmentation": "gvc_train.coding.controls.segmentation:SegmentationCoder",
}

_REGISTRY: dict[str, type[ControlCoder]] = {}
_T = TypeVar("_T", bound=type)


class ControlCoder(ABC):
    """Codes one kind of control (layout: ``gvc_train.controls.registry.LAYOUTS[name]``).
    ``lossless``: whether ``decode(encode(c))`` gives ``c`` exactly (else the coder's docstring
    states the error bound)."""

    name: ClassVar[str]
    lossless: ClassVar[bool] = True

    def settings(self) -> dict[str, Any]:
        """The constructor's arguments (plain JSON): a subclass keeps each one in the attribute
        of the same name, so this reads them back."""
        names = [p for p in inspect.signature(type(self).__init__).parameters if p != "self"]
        return {name: getattr(self, name) for name in names}

    @abstractmethod
    def encode(self, control: Any) -> bytes:
        """The control's bytes (self-delimiting: its shape is inside)."""

    @abstractmethod
    def decode(self, data: bytes) -> Any:
        """The control back; BitstreamError for bytes this coder did not write."""


def register_coder(name: str) -> Callable[[_T], _T]:
    """Class decorator: make a coder buildable as ``name`` (a control name)."""

    def decorate(cls: _T) -> _T:
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(f"control coder {name!r} registered twice")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return decorate


def coder_class(name: str) -> type[ControlCoder]:
    if name not in _REGISTRY and name in BUILTIN_CODERS:
        importlib.import_module(BUILTIN_CODERS[name].partition(":")[0])
    if name not in _REGISTRY:
        raise ValueError(f"no coder for control {name!r}; known: {', '.join(sorted(set(_REGISTRY) | set(BUILTIN_CODERS)))}")
    return _REGISTRY[name]


def build_coder(name: str, **settings: Any) -> ControlCoder:
    cls = coder_class(name)
    try:
        return cls(**settings)
    except TypeError as e:
        raise ValueError(f"coder of control {name!r}: {e}") from None
