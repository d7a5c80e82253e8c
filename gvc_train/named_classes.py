"""Classes found by name, built-ins imported on first use: the control extractors' and the
control coders' registries (``controls/registry.py``, ``coding/controls/registry.py``) are each
one of these. Standard library only, so any layer may use it.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable
from typing import Any, TypeVar

_T = TypeVar("_T", bound=type)


class NamedClasses:
    """Name -> class. ``builtins``: name -> ``"module:Class"`` of the classes that ship, imported
    when their name is first asked for (so asking for one never imports the others' libraries).
    ``unknown`` and ``bad_setting`` are the one-line errors, formatted with ``name`` (and
    ``known``, the names there are; ``error``, what the constructor said)."""

    def __init__(self, what: str, builtins: dict[str, str], unknown: str, bad_setting: str) -> None:
        self.what, self.builtins, self.unknown, self.bad_setting = what, builtins, unknown, bad_setting
        self._classes: dict[str, type] = {}

    def register(self, name: str) -> Callable[[_T], _T]:
        """Class decorator: the class is found as ``name`` (and its ``name`` attribute is set)."""

        def decorate(cls: _T) -> _T:
            if name in self._classes and self._classes[name] is not cls:
                raise ValueError(f"{self.what} {name!r} registered twice")
            cls.name = name
            self._classes[name] = cls
            return cls

        return decorate

    def names(self) -> list[str]:
        return sorted(set(self._classes) | set(self.builtins))

    def get(self, name: str) -> type:
        """The class registered as ``name`` (importing its built-in module); ValueError otherwise."""
        if name not in self._classes and name in self.builtins:
            importlib.import_module(self.builtins[name].partition(":")[0])
        if name not in self._classes:
            raise ValueError(self.unknown.format(name=name, known=", ".join(self.names())))
        return self._classes[name]

    def build(self, name: str, **settings: Any) -> Any:
        """An instance built with ``settings``; a wrong setting is a ValueError naming it."""
        cls = self.get(name)
        try:
            return cls(**settings)
        except TypeError as e:
            raise ValueError(self.bad_setting.format(name=name, error=e)) from None


class KeepsSettings:
    """A class whose constructor keeps each argument in the attribute of the same name, so that
    :meth:`settings` reads them back (plain JSON: what a shard or stream stores beside its output)."""

    def settings(self) -> dict[str, Any]:
        names = [p for p in inspect.signature(type(self).__init__).parameters if p != "self"]
        return {name: getattr(self, name) for name in names}
