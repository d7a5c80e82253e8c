"""Component save/load: JSON config beside safetensors, no pickle, damage detected."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from gvc_train.components import (
    ComponentError,
    load_component,
    register_component,
    save_component,
    weights_fingerprint,
)


@register_component
class _TinyNet(nn.Module):
    def __init__(self, width: int = 4, depth: int = 2, act: str = "relu") -> None:
        super().__init__()
        self.layers = nn.Sequential(*[nn.Linear(width, width) for _ in range(depth)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


def test_config_is_captured_with_defaults() -> None:
    net = _TinyNet(8)
    assert net.config == {"width": 8, "depth": 2, "act": "relu"}


def test_round_trip_gives_identical_outputs(tmp_path) -> None:
    torch.manual_seed(0)
    net = _TinyNet(width=6, depth=3)
    json_path = save_component(net, tmp_path, "tiny", provenance={"steps": 5})
    meta = json.loads(json_path.read_text())
    assert meta["class"] == "_TinyNet" and meta["config"]["depth"] == 3
    assert meta["provenance"] == {"steps": 5}
    assert meta["fingerprint"] == weights_fingerprint(net.state_dict())
    loaded = load_component(tmp_path, "tiny")
    x = torch.randn(2, 6)
    assert torch.equal(loaded(x), net(x))
    # Saved files are JSON and safetensors only: nothing pickled.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny.json", "tiny.safetensors"]


def test_fingerprint_changes_with_any_weight() -> None:
    net = _TinyNet()
    before = weights_fingerprint(net.state_dict())
    with torch.no_grad():
        net.layers[0].bias[0] += 1e-6
    assert weights_fingerprint(net.state_dict()) != before


def test_swapped_weights_are_refused(tmp_path) -> None:
    save_component(_TinyNet(), tmp_path / "a", "tiny")
    save_component(_TinyNet(), tmp_path / "b", "tiny")
    (tmp_path / "a" / "tiny.safetensors").write_bytes((tmp_path / "b" / "tiny.safetensors").read_bytes())
    with pytest.raises(ComponentError, match="fingerprint"):
        load_component(tmp_path / "a", "tiny")


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda d: (d / "tiny.json").unlink(), "missing"),
        (lambda d: (d / "tiny.json").write_text("{not json"), "not valid JSON"),
        (lambda d: (d / "tiny.safetensors").write_bytes(b"\x00" * 7), "cannot read"),
        (lambda d: (d / "tiny.safetensors").unlink(), "missing"),
    ],
)
def test_damaged_component_gives_one_clear_error(tmp_path, damage, message) -> None:
    save_component(_TinyNet(), tmp_path, "tiny")
    damage(tmp_path)
    with pytest.raises(ComponentError, match=message):
        load_component(tmp_path, "tiny")


def test_unknown_class_and_wrong_config_are_refused(tmp_path) -> None:
    path = save_component(_TinyNet(), tmp_path, "tiny")
    meta = json.loads(path.read_text())
    meta["class"] = "os.system"
    path.write_text(json.dumps(meta))
    with pytest.raises(ComponentError, match="unknown component class"):
        load_component(tmp_path, "tiny")
    for config, message in [
        ({"depth": 5}, "do not fit"),  # missing weights
        ({"width": 8}, "do not fit"),  # shape mismatch
        ({"colour": "red"}, "config does not fit"),  # unknown constructor argument
    ]:
        meta["class"] = "_TinyNet"
        meta["config"] = {"width": 4, "depth": 2, "act": "relu", **config}
        path.write_text(json.dumps(meta))
        with pytest.raises(ComponentError, match=message):
            load_component(tmp_path, "tiny")
    meta["config"] = {"width": 4, "depth": 2, "act": "relu"}
    meta["format_version"] = "1"
    path.write_text(json.dumps(meta))
    with pytest.raises(ComponentError, match="format_version"):
        load_component(tmp_path, "tiny")


def test_fingerprint_covers_scalar_tensors() -> None:
    a = {"scale": torch.tensor(1.0), "w": torch.zeros(2)}
    b = {"scale": torch.tensor(2.0), "w": torch.zeros(2)}
    assert weights_fingerprint(a) != weights_fingerprint(b)
