"""Component save/load: JSON config beside safetensors, no pickle, damage and edits detected."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Sequence

import pytest
import torch
from torch import nn

from gvc_train.component_checks import sealed_json
from gvc_train.components import (
    ComponentError,
    component_fingerprint,
    file_sha256,
    load_component,
    read_component_meta,
    register_component,
    save_component,
)


@register_component("_TinyNet")
class _TinyNet(nn.Module):
    config_bounds = {"act": {"relu", "gelu"}, "depth": (1, 4), "len(widths)": (0, 3)}

    def __init__(self, width: int = 4, depth: int = 2, act: str = "relu", scale: float = 1.0, widths: Sequence[int] = (), note: str | None = None) -> None:
        super().__init__()
        self.layers = nn.Sequential(*[nn.Linear(width, width) for _ in range(depth)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


def _forge(path: Path, **changes: Any) -> None:
    """Rewrite a component JSON as a forger who recomputes its checksum and fingerprint would,
    so that the deeper checks (types, bounds, shapes) are what refuses it."""
    meta = json.loads(path.read_text())
    meta.update(changes)
    meta.pop("checksum")
    try:
        meta["fingerprint"] = component_fingerprint(meta["class"], meta["config"], meta["weights_sha256"])
    except (TypeError, ValueError, KeyError):
        pass
    path.write_text(sealed_json(meta))


def test_config_is_captured_with_defaults() -> None:
    net = _TinyNet(8)
    assert net.config == {"width": 8, "depth": 2, "act": "relu", "scale": 1.0, "widths": [], "note": None}


def test_round_trip_gives_identical_outputs(tmp_path) -> None:
    torch.manual_seed(0)
    net = _TinyNet(width=6, depth=3)
    json_path = save_component(net, tmp_path, "tiny", provenance={"steps": 5})
    meta = json.loads(json_path.read_text())
    assert meta["class"] == "_TinyNet" and meta["config"]["depth"] == 3
    assert meta["provenance"] == {"steps": 5}
    assert meta["weights_sha256"] == file_sha256(tmp_path / "tiny.safetensors")
    assert meta["fingerprint"] == component_fingerprint("_TinyNet", meta["config"], meta["weights_sha256"])
    loaded = load_component(tmp_path, "tiny")
    x = torch.randn(2, 6)
    assert torch.equal(loaded(x), net(x))
    # Saved files are JSON and safetensors only: nothing pickled.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny.json", "tiny.safetensors"]


def test_fingerprint_covers_weights_and_config_but_not_provenance(tmp_path) -> None:
    torch.manual_seed(0)
    net = _TinyNet()
    prints = {}
    for key, provenance in (("a", {"run": 1}), ("b", {"run": 2})):
        prints[key] = json.loads(save_component(net, tmp_path / key, "tiny", provenance).read_text())["fingerprint"]
    assert prints["a"] == prints["b"]  # the same model, exported twice: latents and streams stay bound to it
    with torch.no_grad():
        net.layers[0].bias[0] += 1e-6
    after = json.loads(save_component(net, tmp_path / "c", "tiny").read_text())["fingerprint"]
    assert after != prints["a"]
    sha = json.loads((tmp_path / "a" / "tiny.json").read_text())["weights_sha256"]
    config = json.loads((tmp_path / "a" / "tiny.json").read_text())["config"]
    assert component_fingerprint("_TinyNet", {**config, "scale": 2.0}, sha) != prints["a"]


def test_swapped_weights_are_refused(tmp_path) -> None:
    save_component(_TinyNet(), tmp_path / "a", "tiny")
    save_component(_TinyNet(), tmp_path / "b", "tiny")
    (tmp_path / "a" / "tiny.safetensors").write_bytes((tmp_path / "b" / "tiny.safetensors").read_bytes())
    with pytest.raises(ComponentError, match="not the weights tiny.json was exported with"):
        load_component(tmp_path / "a", "tiny")


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda d: (d / "tiny.json").unlink(), "missing"),
        (lambda d: (d / "tiny.json").write_text("{not json"), "not valid JSON"),
        (lambda d: (d / "tiny.json").write_bytes(b'{"a": "\xff"}'), "not the exporter's ASCII JSON"),
        (lambda d: (d / "tiny.json").write_text("[1, 2]"), "must be a JSON object"),
        (lambda d: (d / "tiny.json").write_text('{"format_version": NaN}'), "not valid JSON"),
        (lambda d: (d / "tiny.json").write_text("[" * 100_000 + "]" * 100_000), "not valid JSON"),
        (lambda d: (d / "tiny.json").write_text('{"format_version": ' + "9" * 5000 + "}"), "not valid JSON"),
        (lambda d: (d / "tiny.json").write_text(" " * (5 << 20)), "too large"),
        (lambda d: (d / "tiny.safetensors").write_bytes(b"\x00" * 7), "not a safetensors file"),
        (lambda d: (d / "tiny.safetensors").unlink(), "missing"),
        (lambda d: _append(d / "tiny.safetensors", b"\x00"), "truncated or padded"),
        (lambda d: _truncate(d / "tiny.safetensors", 4), "truncated or padded"),
    ],
)
def test_damaged_component_gives_one_clear_error(tmp_path, damage, message) -> None:
    save_component(_TinyNet(), tmp_path, "tiny")
    damage(tmp_path)
    with pytest.raises(ComponentError, match=message) as err:
        load_component(tmp_path, "tiny")
    assert "\n" not in str(err.value)


def _append(path: Path, data: bytes) -> None:
    path.write_bytes(path.read_bytes() + data)


def _truncate(path: Path, n: int) -> None:
    path.write_bytes(path.read_bytes()[:-n])


@pytest.mark.parametrize(
    "edit",
    [
        lambda t: t.replace('"steps": 5', '"steps": 6'),  # provenance: not in the fingerprint, still sealed
        lambda t: t.replace('"depth": 2', '"depth": 3'),
        lambda t: t.replace("  ", "\t", 1),  # whitespace only: the same JSON value
        lambda t: t.rstrip("\n"),
        lambda t: json.dumps(json.loads(t), indent=2, sort_keys=True),  # one byte: the final newline
    ],
)
def test_any_edit_of_the_json_is_refused_as_edited(tmp_path, edit) -> None:
    path = save_component(_TinyNet(), tmp_path, "tiny", provenance={"steps": 5})
    edited = edit(path.read_text())
    assert edited != path.read_text()
    path.write_text(edited)
    with pytest.raises(ComponentError, match="edited after export"):
        load_component(tmp_path, "tiny")


def test_unknown_class_and_wrong_config_are_refused_before_building(tmp_path, monkeypatch) -> None:
    path = save_component(_TinyNet(), tmp_path, "tiny")
    built = []
    # the shape check builds on the meta device (no memory); a real build is a refusal too late
    monkeypatch.setattr(nn.Linear, "reset_parameters", lambda self: self.weight.is_meta or built.append(self))
    good = json.loads(path.read_text())["config"]
    cases = [
        ({"class": "os.system"}, "unknown component class"),
        ({"class": 7}, "'class' must be a string"),
        ({"config": [1, 2]}, "'config' must be an object"),
        ({"config": {**good, "depth": 3}}, "weights do not fit the config .missing"),  # a layer the file lacks
        ({"config": {**good, "width": 8}}, r"weights do not fit the config: layers.0.weight is F32 \[4, 4\], the config builds F32 \[8, 8\]"),
        ({"config": {**good, "colour": "red"}}, "unknown argument"),
        ({"config": {**good, "width": "4"}}, "'width' must be an integer"),
        ({"config": {**good, "width": True}}, "'width' must be an integer"),
        ({"config": {**good, "width": 4.0}}, "'width' must be an integer"),
        ({"config": {**good, "width": -1}}, "out of bounds"),
        ({"config": {**good, "width": 10**9}}, "out of bounds"),
        ({"config": {**good, "depth": 5}}, r"out of bounds \[1, 4\]"),
        ({"config": {**good, "act": "tanh"}}, "must be one of"),
        ({"config": {**good, "act": ["relu"]}}, "must be one of"),
        ({"config": {**good, "scale": "1"}}, "must be a number"),
        ({"config": {**good, "scale": 1e300}}, "out of bounds"),
        ({"config": {**good, "widths": 3}}, "must be a list"),
        ({"config": {**good, "widths": [1, 2, 3, 4]}}, r"4 items, out of bounds \[0, 3\]"),
        ({"config": {**good, "widths": [1, "2"]}}, r"'widths'\[1\] must be an integer"),
        ({"config": {**good, "note": 5}}, "must be a string"),
        ({"format_version": "2"}, "format_version"),
        ({"format_version": 1}, "format version 1; .*re-export it with gvc-export"),
        ({"format_version": 3}, "format version 3; this gvc_train reads 2"),
        ({"weights_sha256": "x" * 64}, "weights_sha256"),
        ({"provenance": "a string"}, "'provenance' must be an object"),
        ({"fingerprint": "0" * 64}, "fingerprint does not match"),
        ({"extra_field": 1}, "unknown field"),
    ]
    for changes, message in cases:
        save_component(_TinyNet(), tmp_path, "tiny")
        built.clear()
        meta = json.loads(path.read_text())
        if "fingerprint" in changes:  # a forger who edits the fingerprint but not what it covers
            meta.update(changes)
            meta.pop("checksum")
            path.write_text(sealed_json(meta))
        else:
            _forge(path, **changes)
        with pytest.raises(ComponentError, match=message) as err:
            load_component(tmp_path, "tiny")
        assert "\n" not in str(err.value), changes
        assert not built, f"{changes}: a module was built before the refusal"


def test_missing_fields_are_named(tmp_path) -> None:
    for key in ("class", "config", "weights", "weights_sha256", "fingerprint", "provenance"):
        path = save_component(_TinyNet(), tmp_path, "tiny")
        meta = json.loads(path.read_text())
        del meta[key]
        meta.pop("checksum")
        path.write_text(sealed_json(meta))
        with pytest.raises(ComponentError, match=f"lacks the field '{key}'"):
            read_component_meta(tmp_path, "tiny")


@pytest.mark.parametrize("name", ["../tiny.safetensors", "/etc/passwd", "sub/tiny.safetensors", "..", ".hidden", "", 5, "a\\b"])
def test_weights_name_must_be_a_plain_file_in_the_folder(tmp_path, name) -> None:
    path = save_component(_TinyNet(), tmp_path / "c", "tiny")
    (tmp_path / "tiny.safetensors").write_bytes((tmp_path / "c" / "tiny.safetensors").read_bytes())
    _forge(path, weights=name)
    with pytest.raises(ComponentError, match="plain file name|non-empty string|must be a string"):
        load_component(tmp_path / "c", "tiny")


def test_links_may_not_lead_outside_the_folder(tmp_path) -> None:
    folder = tmp_path / "c"
    save_component(_TinyNet(), folder, "tiny")
    outside = tmp_path / "outside.safetensors"
    os.replace(folder / "tiny.safetensors", outside)
    os.symlink(outside, folder / "tiny.safetensors")
    with pytest.raises(ComponentError, match="link that leads outside"):
        load_component(folder, "tiny")
    # a link to a file beside it stays inside: fine
    os.unlink(folder / "tiny.safetensors")
    os.replace(outside, folder / "real.safetensors")
    os.symlink("real.safetensors", folder / "tiny.safetensors")
    load_component(folder, "tiny")
    # the JSON file itself as a link out of the folder
    os.replace(folder / "tiny.json", tmp_path / "tiny.json")
    os.symlink(tmp_path / "tiny.json", folder / "tiny.json")
    with pytest.raises(ComponentError, match="link that leads outside"):
        load_component(folder, "tiny")


def test_a_forged_header_cannot_claim_more_than_the_file_holds(tmp_path) -> None:
    save_component(_TinyNet(), tmp_path, "tiny")
    weights = tmp_path / "tiny.safetensors"
    data = weights.read_bytes()
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + n])
    name = next(k for k in header if k != "__metadata__")
    header[name]["shape"] = [1 << 20, 1 << 20]
    body = json.dumps(header).encode()
    weights.write_bytes(len(body).to_bytes(8, "little") + body + data[8 + n :])
    with pytest.raises(ComponentError, match="does not fit its"):
        load_component(tmp_path, "tiny")


def test_registry_names_are_explicit() -> None:
    """A class registers under the name it states (the built-in components' registry round trip,
    lazy imports included, is in test_component_contract.py)."""
    from gvc_train.components import registered_components

    with pytest.raises(TypeError, match="register_component takes the component's name"):
        register_component(_TinyNet)  # type: ignore[arg-type]
    assert registered_components()["_TinyNet"] is _TinyNet
