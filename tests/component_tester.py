"""The component tester: every registered component gets the same checks from one tiny case.

A case (a :class:`ComponentCase` in ``tests/component_cases.py``) says how to build a tiny
instance, its dummy inputs, how to call it and a training loss. ``tests/test_component_contract.py``
runs, for every case:

* **export and reload without Lightning**: ``save_component`` then ``load_component`` (which
  may not unpickle anything), the reloaded module gives bit-identical outputs in eval mode and
  the same state dict, in a process where ``lightning`` / ``pytorch_lightning`` is never
  imported, nor even tried;
* **fingerprint**: the same across a re-export to another folder with other provenance, and
  different when one weight changes;
* **registry round trip**: name -> class -> name, and ``registered_components()`` holds it;
* **no Lightning import**: importing the component's module in a fresh interpreter brings in no
  Lightning, no ``gvc_train.components``, no other component's module and no deferred
  third-party package (compressai, diffusers...) its case does not declare;
* **one finite training step**: forward, loss, backward, optimizer step; the loss and every
  gradient finite, some parameter changed.

The checks that need a fresh interpreter run in one child process for all cases (this file is
its script): it imports torch once, then forks (``os.fork``: Linux, as the suite) one process per
case, which imports only that component's module, so each import check starts from the same
clean interpreter without paying for torch again. Each fork writes a JSON report the tests read.
The child starts before the module's first test and runs beside the in-process tests.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import importlib.abc
import json
import math
import os
import pickle
import subprocess
import sys
import traceback
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

LIGHTNING_PACKAGES = ("lightning", "pytorch_lightning", "lightning_fabric")
# Heavy third-party packages a model module imports only when its case declares it (module_imports):
# a user who loads one model must not pay for another's dependencies.
DEFERRED_PACKAGES = ("compressai", "diffusers", "wandb", "webdataset")
SEED = 0
REPORT = "report.json"


def _call(module: nn.Module, inputs: dict[str, Any]) -> Any:
    return module(**inputs)


@dataclasses.dataclass(frozen=True)
class ComponentCase:
    """A tiny instance of one registered component and how to exercise it.

    ``make`` and ``inputs`` run right after ``torch.manual_seed(SEED)``; keep both tiny (the whole
    tester runs in seconds). ``loss(module, inputs, output)`` is a scalar training loss.
    ``ready_for_export`` prepares a trained module for export (e.g. compressai's ``update``).
    ``variant`` tells two cases of one component apart (e.g. two norms).
    """

    name: str
    make: Callable[[], nn.Module]
    inputs: Callable[[], dict[str, Any]]
    loss: Callable[[nn.Module, dict[str, Any], Any], torch.Tensor]
    forward: Callable[[nn.Module, dict[str, Any]], Any] = _call
    ready_for_export: Callable[[nn.Module], Any] | None = None
    module_imports: tuple[str, ...] = ()
    variant: str = ""
    # A config-only component (settings that travel with the weights, no parameters): it has no
    # training step (the check asserts it has no parameters instead), and ``change`` gives the
    # loaded module with one setting changed, which must change its fingerprint.
    config_only: bool = False
    change: Callable[[nn.Module], nn.Module] | None = None

    @property
    def id(self) -> str:
        return f"{self.name}-{self.variant}" if self.variant else self.name

    def build(self) -> tuple[nn.Module, dict[str, Any]]:
        torch.manual_seed(SEED)
        module = self.make()
        return module, self.inputs()

    def eval_outputs(self, module: nn.Module, inputs: dict[str, Any]) -> dict[str, torch.Tensor]:
        """Every tensor the forward returns, by path (``out.1.mean``), in eval mode."""
        module.eval()
        torch.manual_seed(SEED)  # a forward that samples draws the same noise every time
        with torch.no_grad():
            flat = flatten_tensors(self.forward(module, inputs))
        if not flat:
            raise AssertionError(f"{self.id}: the forward returned no tensor to compare")
        return flat


def flatten_tensors(value: Any, path: str = "out") -> dict[str, torch.Tensor]:
    """The tensors inside nested dicts, lists, tuples and plain objects (a posterior's mean...)."""
    if isinstance(value, torch.Tensor):
        return {path: value}
    if isinstance(value, dict):
        items: Iterable[tuple[Any, Any]] = value.items()
    elif isinstance(value, (list, tuple)):
        items = enumerate(value)
    elif hasattr(value, "__dict__") and not isinstance(value, nn.Module):
        items = vars(value).items()
    else:
        return {}
    flat: dict[str, torch.Tensor] = {}
    for key, item in items:
        flat.update(flatten_tensors(item, f"{path}.{key}"))
    return flat


def lightning_modules() -> list[str]:
    return sorted(m for m in sys.modules if m.split(".")[0] in LIGHTNING_PACKAGES)


class _LightningImportRecorder(importlib.abc.MetaPathFinder):
    """Records every attempt to import Lightning, even one a ``try: import`` would swallow;
    finds nothing itself, so the import goes on as it would."""

    attempts: list[str] = []

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> None:
        if name.split(".")[0] in LIGHTNING_PACKAGES:
            self.attempts.append(name)
        return None


@contextlib.contextmanager
def _no_unpickling() -> Iterator[None]:
    """Loading a component reads JSON and safetensors only: any unpickling raises."""

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("load_component unpickled something")

    saved = pickle.load, pickle.loads, torch.load
    pickle.load = pickle.loads = torch.load = refuse  # type: ignore[assignment]
    try:
        yield
    finally:
        pickle.load, pickle.loads, torch.load = saved  # type: ignore[assignment]


# ---- in-process checks ----------------------------------------------------------------------


def check_registry_round_trip(case: ComponentCase) -> None:
    from gvc_train.components import registered_components
    from gvc_train.models import import_component
    from gvc_train.models.registry import name_of

    cls = import_component(case.name)
    assert cls is not None, f"gvc_train.models cannot import {case.name!r}"
    assert name_of(cls) == case.name, f"{cls.__name__} is registered as {name_of(cls)!r}, not {case.name!r}"
    assert registered_components().get(case.name) is cls
    module, _ = case.build()
    assert type(module) is cls, f"the case builds a {type(module).__name__}, not the {case.name} it names"
    assert json.loads(json.dumps(module.config)) == module.config, "the recorded config is not plain JSON"


def check_training_step(case: ComponentCase) -> None:
    module, inputs = case.build()
    if case.config_only:
        assert not list(module.parameters()), f"{case.id}: a config-only component has parameters"
        return
    module.train()
    params = {n: p for n, p in module.named_parameters() if p.requires_grad}
    before = {n: p.detach().clone() for n, p in params.items()}
    optimizer = torch.optim.Adam(params.values(), lr=1e-3)
    optimizer.zero_grad()
    loss = case.loss(module, inputs, case.forward(module, inputs))
    assert loss.ndim == 0 and math.isfinite(float(loss.detach())), f"{case.id}: loss {loss}"
    loss.backward()
    graded = {n: p.grad for n, p in params.items() if p.grad is not None}
    assert graded, f"{case.id}: no parameter got a gradient"
    not_finite = [n for n, g in graded.items() if not torch.isfinite(g).all()]
    assert not not_finite, f"{case.id}: non-finite gradients in {not_finite[:5]}"
    optimizer.step()
    assert any(not torch.equal(p.detach(), before[n]) for n, p in params.items()), f"{case.id}: the step changed no parameter"


# ---- the child process: fresh-interpreter checks ---------------------------------------------


class FreshProcessChecks:
    """The child process running every case's fresh-interpreter checks, started in the background."""

    def __init__(self, cases: list[ComponentCase], root: Path) -> None:
        self.root = root
        self._process = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), str(root), *(case.id for case in cases)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        self._output: str | None = None

    def report(self, case: ComponentCase) -> dict[str, Any]:
        """The case's report (waits for the child the first time); a fork's exception fails here."""
        if self._output is None:
            try:
                self._output, _ = self._process.communicate(timeout=300)
            except subprocess.TimeoutExpired:
                self.close()
                raise
        path = self.root / case.id / REPORT
        if not path.exists():
            raise AssertionError(f"{case.id}: no report from the child (exit {self._process.returncode}):\n{self._output[-3000:]}")
        report = json.loads(path.read_text())
        if "error" in report:
            raise AssertionError(f"{case.id}: the fresh-process checks failed:\n{report['error']}")
        return report

    def close(self) -> None:
        """Stop the child if it still runs (its tests were deselected or stopped early)."""
        if self._process.poll() is None:
            self._process.kill()
        self._process.communicate()


def _fresh_process_checks(case: ComponentCase, folder: Path) -> dict[str, Any]:
    """In a fork of a clean interpreter: import the module, export, reload, re-export."""
    torch.set_num_threads(1)
    before = set(sys.modules)
    import gvc_train.models

    cls = gvc_train.models.import_component(case.name)
    imported = sorted(set(sys.modules) - before)
    attempted_on_import = list(_LightningImportRecorder.attempts)
    from gvc_train.components import load_component, save_component
    from gvc_train.models.registry import name_of

    module, inputs = case.build()
    if case.ready_for_export is not None:
        case.ready_for_export(module)
    module.eval()
    first = save_component(module, folder / "export", "component", provenance={"by": "component tester"})
    with _no_unpickling():
        loaded = load_component(folder / "export", "component")
    expected, got = case.eval_outputs(module, inputs), case.eval_outputs(loaded, inputs)
    state_differs = _differing(module.state_dict(), loaded.state_dict())
    again = save_component(loaded, folder / "re-export", "component", provenance={"by": "a re-export", "from": str(first)})
    if case.change is not None:  # a config-only component: one setting changed
        name, changed_module = "a setting", case.change(loaded)
    else:
        name, weight = next((n, p) for n, p in loaded.named_parameters() if p.is_floating_point())
        with torch.no_grad():
            weight.view(-1)[0] += 1.0
        changed_module = loaded
    changed = save_component(changed_module, folder / "one-weight-changed", "component")
    fingerprint = lambda path: json.loads(path.read_text())["fingerprint"]  # noqa: E731
    return {
        "imported": imported,
        "lightning_attempted_on_import": attempted_on_import,
        "registered_as": name_of(cls) if cls is not None else None,
        "loaded_is_registered_class": type(loaded) is cls,
        "loaded_in_eval": not any(m.training for m in loaded.modules()),
        "outputs": sorted(expected),
        "outputs_differ": _differing(expected, got),
        "state_differs": state_differs,
        "fingerprints": {"export": fingerprint(first), "re-export": fingerprint(again), "one weight changed": fingerprint(changed)},
        "changed_weight": name,
        "lightning": lightning_modules() + [f"{attempt} (attempted)" for attempt in _LightningImportRecorder.attempts],
    }


def _differing(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> list[str]:
    """Names missing from one side or not bit-identical (dtype included)."""
    return sorted(k for k in a.keys() | b.keys() if k not in a or k not in b or a[k].dtype != b[k].dtype or not torch.equal(a[k], b[k]))


def _fork_case(case: ComponentCase, root: Path) -> int:
    folder = root / case.id
    folder.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid:
        return pid
    code = 0
    try:
        report = _fresh_process_checks(case, folder)
    except BaseException:  # noqa: BLE001 - reported to the test, which fails with it
        report, code = {"error": traceback.format_exc()}, 1
    try:
        (folder / REPORT).write_text(json.dumps(report, indent=1))
    finally:
        os._exit(code)


def _warm_up_torch() -> None:
    """Import once, before the forks, the parts of torch every fork would import for itself:
    the meta device's first use (load_component builds on it) pulls in sympy, and both
    compressai (through torch_geometric) and diffusers import torch._dynamo. Neither is what
    the import checks look for."""
    import torch._dynamo  # noqa: F401

    with torch.device("meta"):
        torch.eye(2)


def main(root: Path, case_ids: list[str]) -> int:
    from component_cases import CASES

    _warm_up_torch()
    sys.meta_path.insert(0, _LightningImportRecorder())

    by_id = {case.id: case for case in CASES}
    pids = {case_id: _fork_case(by_id[case_id], root) for case_id in case_ids}
    codes = {case_id: os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) for case_id, pid in pids.items()}
    print(json.dumps(codes))
    return 0 if not any(codes.values()) else 1


if __name__ == "__main__":
    # Nothing of gvc_train is imported before the forks: each imports its own component's module.
    sys.exit(main(Path(sys.argv[1]), sys.argv[2:]))
