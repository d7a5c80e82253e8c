"""The stack is pinned: `make setup` installs exactly constraints.txt, and pyproject.toml's
ranges admit it. A fresh clone next year gets the versions this suite passed on, not whatever
is newest (resume, the CLI and the data order depend on Lightning's and jsonargparse's details).
"""

from __future__ import annotations

import importlib.metadata
import tomllib

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from conftest import REPO


def _pins() -> dict[str, str]:
    pins = {}
    for line in (REPO / "constraints.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        name, _, version = line.partition("==")
        assert version, f"constraints.txt: {line!r} is not an exact pin (name==version)"
        pins[canonicalize_name(name)] = version
    return pins


def test_the_installed_stack_is_exactly_the_pinned_one() -> None:
    pins = _pins()
    assert len(pins) > 50  # the whole resolved stack, not just the direct dependencies
    installed = {canonicalize_name(d.metadata["Name"]): d.version for d in importlib.metadata.distributions()}
    wrong = {name: (installed.get(name), pinned) for name, pinned in pins.items() if installed.get(name) != pinned}
    assert not wrong, f"installed vs pinned (rerun make setup, or make lock-update to move the pins): {wrong}"


def test_pyproject_ranges_admit_the_pins_and_have_upper_bounds() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    extras = [r for group in project["optional-dependencies"].values() for r in group]  # dev, finetune
    requirements = [Requirement(r) for r in project["dependencies"] + extras]
    pins = _pins()
    for req in requirements:
        name = canonicalize_name(req.name)
        assert any(s.operator in ("<", "<=", "==", "~=") for s in req.specifier), f"{req}: no upper bound"
        if name in pins:
            assert Version(pins[name]) in req.specifier, f"{req} does not admit the pinned {pins[name]}"
    # torch and torchvision are not in constraints.txt (a GPU machine brings its own CUDA build) but the
    # Makefile's default installs these, and the installed ones must be in range too
    for name in ("torch", "torchvision"):
        req = next(r for r in requirements if canonicalize_name(r.name) == name)
        assert Version(importlib.metadata.version(name)).base_version in req.specifier
