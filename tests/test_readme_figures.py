"""The README's measured figures are the committed measurements' (benchmarks/readme_figures.py):
a number typed by hand, or a measurement that changed without `make readme-figures`, fails here."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest

from conftest import REPO

sys.path.insert(0, str(REPO))  # benchmarks/ is a folder of the checkout, not an installed package
from benchmarks import readme_figures  # noqa: E402


def test_every_generated_block_matches_its_measurement() -> None:
    _, changed = readme_figures.render((REPO / "README.md").read_text())
    assert not changed, f"README blocks differ from their JSON: {changed} (run make readme-figures)"


def test_a_number_changed_in_the_readme_is_caught() -> None:
    readme = (REPO / "README.md").read_text()
    for name in readme_figures.BLOCKS:
        m = re.search(rf"<!-- gen:{name} -->(.*?)<!-- /gen:{name} -->", readme, re.S)
        assert m is not None
        digit = re.search(r"\d", m.group(1))
        assert digit is not None, f"block {name} holds no figure"
        i = m.start(1) + digit.start()
        edited = readme[:i] + str((int(readme[i]) + 1) % 10) + readme[i + 1 :]
        assert readme_figures.render(edited)[1] == [name]


def test_a_changed_measurement_is_caught(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rd = json.loads(readme_figures.RD.read_text())
    rd["points"][0]["psnr"] += 0.01
    forged = tmp_path / "rd.json"
    forged.write_text(json.dumps(rd))
    blocks = {name: ((forged, make) if source == readme_figures.RD else (source, make)) for name, (source, make) in readme_figures.BLOCKS.items()}
    monkeypatch.setattr(readme_figures, "BLOCKS", blocks)
    assert "reference_table" in readme_figures.render((REPO / "README.md").read_text())[1]
