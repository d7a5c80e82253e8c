"""The generic checks every registered component gets from its case (component_cases.py);
what they check and how is in component_tester.py."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from component_cases import CASES
from component_tester import (
    DEFERRED_PACKAGES,
    LIGHTNING_PACKAGES,
    ComponentCase,
    FreshProcessChecks,
    check_registry_round_trip,
    check_training_step,
)

from gvc_train.models import BUILTIN_COMPONENTS

each_case = pytest.mark.parametrize("case", CASES, ids=lambda case: case.id)


@pytest.fixture(scope="module")
def fresh_process(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FreshProcessChecks]:
    checks = FreshProcessChecks(CASES, tmp_path_factory.mktemp("component_tester"))
    yield checks
    checks.close()


@pytest.fixture(scope="module", autouse=True)
def _start_the_child_first(request: pytest.FixtureRequest) -> None:
    """Start the child process before the first test of this module, so that it runs beside the
    in-process tests; only when a selected test needs it."""
    if any(item.module is request.module and "fresh_process" in item.fixturenames for item in request.session.items):
        request.getfixturevalue("fresh_process")


def test_every_builtin_component_has_a_case() -> None:
    names = {case.name for case in CASES}
    missing = sorted(set(BUILTIN_COMPONENTS) - names)
    assert not missing, f"add a ComponentCase for {missing} to tests/component_cases.py"
    assert names <= set(BUILTIN_COMPONENTS), f"cases for unknown components: {sorted(names - set(BUILTIN_COMPONENTS))}"
    assert len({case.id for case in CASES}) == len(CASES), "two cases share an id: give them distinct variants"


# In-process checks first: they run while the child works.


@each_case
def test_registry_round_trip(case: ComponentCase) -> None:
    check_registry_round_trip(case)


@each_case
def test_one_training_step_is_finite_and_moves_the_weights(case: ComponentCase) -> None:
    check_training_step(case)


@each_case
def test_module_import_brings_no_lightning(case: ComponentCase, fresh_process: FreshProcessChecks) -> None:
    report = fresh_process.report(case)
    imported = report["imported"]
    packages = {module.split(".")[0] for module in imported}
    assert not packages & set(LIGHTNING_PACKAGES), f"importing {case.name} imports Lightning"
    assert not report["lightning_attempted_on_import"], f"importing {case.name} tries to import Lightning"
    assert "gvc_train.components" not in imported, "a model imports the saving machinery"
    others = sorted(set(imported) & {module for name, module in BUILTIN_COMPONENTS.items() if name != case.name})
    assert not others, f"importing {case.name} imports other components' modules {others}"
    undeclared = sorted(packages & set(DEFERRED_PACKAGES) - set(case.module_imports))
    assert not undeclared, f"importing {case.name} imports {undeclared} (declare them in its case's module_imports if it must)"
    assert report["registered_as"] == case.name, "the lazy import does not find the class under its registered name"


@each_case
def test_export_and_reload_without_lightning(case: ComponentCase, fresh_process: FreshProcessChecks) -> None:
    report = fresh_process.report(case)
    assert report["loaded_is_registered_class"] and report["loaded_in_eval"]
    assert report["state_differs"] == [], "the reloaded state dict differs"
    assert report["outputs"] and report["outputs_differ"] == [], f"reloaded outputs differ (of {report['outputs']})"
    assert report["lightning"] == [], "saving or loading imported Lightning (or tried to)"


@each_case
def test_fingerprint_is_stable_across_re_export_and_covers_the_weights(case: ComponentCase, fresh_process: FreshProcessChecks) -> None:
    prints = fresh_process.report(case)["fingerprints"]
    assert prints["re-export"] == prints["export"], "re-exporting the same model elsewhere changed its fingerprint"
    assert prints["one weight changed"] != prints["export"], "changing one weight left the fingerprint as it was"
