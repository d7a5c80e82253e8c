"""The component registry: exportable model classes by explicit name.

Model modules import :func:`register_component` from here; this module imports nothing from
``gvc_train`` (imports run one way: a model never pulls in the saving and loading machinery of
``gvc_train.components``, and the registry never imports a model). A class is found by its
registered name, never by an import path a file names, so a component file cannot make the
loader run code that gvc_train does not ship. ``gvc_train.models`` imports a built-in model module
only when its name is first asked for (:func:`gvc_train.models.import_component`).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import torch

_REGISTRY: dict[str, type[torch.nn.Module]] = {}
_T = TypeVar("_T", bound=type)


def jsonable(value: Any) -> Any:
    """``value`` as plain JSON types (tuples become lists, paths strings); TypeError otherwise."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"component config value {value!r} of type {type(value).__name__} is not JSON")


def register_component(name: str) -> Callable[[_T], _T]:
    """Class decorator factory: make the class loadable as ``name`` and record its constructor
    arguments.

    The name is explicit (``@register_component("CausalVAE")``) and is what exported files
    carry: renaming or moving the class keeps old exports loadable. After construction
    ``module.config`` holds every constructor argument (defaults filled in), which is exactly
    what ``gvc_train.components.save_component`` writes and ``build_component`` needs. A class
    may declare ``config_bounds`` (see ``component_checks.check_config``); a loaded config is
    checked against them and against the constructor's annotations before building.
    """
    if not isinstance(name, str) or not name.isidentifier():
        raise TypeError(f"register_component takes the component's name, e.g. @register_component('CausalVAE'); got {name!r}")

    def decorate(cls: _T) -> _T:
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(f"component name {name!r} registered twice")
        _REGISTRY[name] = cls
        _record_config(cls)
        return cls

    return decorate


def _record_config(cls: type) -> None:
    signature = inspect.signature(cls.__init__)
    original_init: Callable[..., None] = cls.__init__

    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        bound = signature.bind(self, *args, **kwargs)
        bound.apply_defaults()
        config = {k: v for k, v in bound.arguments.items() if k != "self"}
        original_init(self, *args, **kwargs)
        # Set after the original init: nn.Module.__init__ would not mind, but subclasses
        # calling super().__init__ with their own arguments must not overwrite ours.
        if not hasattr(self, "config") or type(self) is cls:
            object.__setattr__(self, "config", jsonable(config))

    __init__.__signature__ = signature  # type: ignore[attr-defined]
    __init__.__doc__ = original_init.__doc__
    __init__.__wrapped_init__ = original_init  # type: ignore[attr-defined]  # its annotations, for check_config
    cls.__init__ = __init__  # type: ignore[method-assign]


def registered(name: str) -> type[torch.nn.Module] | None:
    """The class registered as ``name``, if its module has been imported."""
    return _REGISTRY.get(name)


def name_of(cls: type) -> str | None:
    """The name ``cls`` itself is registered under (a subclass does not inherit it)."""
    return next((name for name, known in _REGISTRY.items() if known is cls), None)


def registered_names() -> list[str]:
    return sorted(_REGISTRY)
