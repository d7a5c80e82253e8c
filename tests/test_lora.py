"""LoRA fine-tunes (lit/lora.py, lora_merge.py): the merge is W + B @ A * scale, an adapted
transformer merges into the plain class with the adapted outputs and peft's own merge, the
checkpoint entry carries the adapters only when the stage declares them, and gvc-export writes a
plain folder that loads without peft."""

from __future__ import annotations

import copy
import math
import os
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
from safetensors import safe_open
from torch import nn

from conftest import REPO
from gvc_train.lit.checkpoint_meta import CHECKPOINT_KEY, checkpoint_entry, unexportable_components
from gvc_train.lora_merge import LoraMergeError, merge_lora
from gvc_train.models.progressive.context_model import ProgressiveContextModel

peft = pytest.importorskip("peft")  # the dev set installs it; LoRA training needs it, export never

from gvc_train.lit.lora import LoraSpec, inject_lora, linear_targets, lora_entry  # noqa: E402

TINY = dict(num_scales=3, code_dim=4, codebook_size=16, width=32, depth=2, heads=2, mlp_ratio=2.0, pos_grid=3)
SCALES = [(1, 1), (2, 2), (3, 3)]
SPEC = LoraSpec(component="context_model", r=4, alpha=8.0, targets=["qkv", "proj", "0", "2"])


def _plain() -> ProgressiveContextModel:
    torch.manual_seed(0)
    return ProgressiveContextModel(**TINY).eval()


def _adapted(spec: LoraSpec = SPEC) -> ProgressiveContextModel:
    """The plain model with adapters whose lora_B is not zero (peft starts it at zero, which
    would make every merge test pass trivially)."""
    model = _plain()
    inject_lora(model, spec)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return model


def _inputs() -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(2)
    return [torch.randn(2, TINY["code_dim"], h, w, generator=g) for h, w in SCALES]


def _logits(model: nn.Module, inputs: list[torch.Tensor]) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([x.flatten(1) for x in model(inputs)], 1)


# ---- merge_lora on hand-made tensors ------------------------------------------------------------
def _state(with_bias: bool = True) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    state = {
        "lin.base_layer.weight": torch.randn(5, 3, generator=g),
        "lin.lora_A.default.weight": torch.randn(2, 3, generator=g),
        "lin.lora_B.default.weight": torch.randn(5, 2, generator=g),
        "norm.weight": torch.ones(5),
    }
    if with_bias:
        state["lin.base_layer.bias"] = torch.randn(5, generator=g)
    return state


@pytest.mark.parametrize("rslora, scale", [(False, 3.0 / 2), (True, 3.0 / math.sqrt(2))])
def test_merge_is_base_plus_b_times_a_scaled(rslora: bool, scale: float) -> None:
    state = _state()
    merged = merge_lora(state, {"r": 2, "alpha": 3.0, "rslora": rslora, "targets": ["lin"], "adapter": "default"})
    assert set(merged) == {"lin.weight", "lin.bias", "norm.weight"}
    want = state["lin.base_layer.weight"] + state["lin.lora_B.default.weight"] @ state["lin.lora_A.default.weight"] * scale
    torch.testing.assert_close(merged["lin.weight"], want, rtol=0, atol=1e-6)
    assert merged["lin.weight"].dtype == torch.float32
    assert torch.equal(merged["lin.bias"], state["lin.base_layer.bias"])
    assert "lin.bias" not in merge_lora(_state(with_bias=False), {"r": 2, "alpha": 3.0})


@pytest.mark.parametrize(
    "drop, add, message",
    [
        ("lin.lora_B.default.weight", {}, "lin has lora_A without lora_B"),
        ("lin.lora_A.default.weight", {}, "lin has lora_B without lora_A"),
        ("lin.base_layer.weight", {}, "lin has adapters but no lin.base_layer.weight"),
        (None, {"lin.lora_A.default.weight": torch.zeros(2, 4)}, "want out x in, r x in, out x r"),
        (None, {"other.base_layer.weight": torch.zeros(2, 2)}, "other.base_layer.weight is not an adapted Linear's key"),
        (None, {"lin.lora_magnitude_vector.default.weight": torch.zeros(5)}, "is not an adapted Linear's key"),
        (None, {"lin.weight": torch.zeros(5, 3)}, "lin.weight is both a plain key"),
    ],
)
def test_a_malformed_state_is_refused_in_one_line(drop: str | None, add: dict, message: str) -> None:
    state = {k: v for k, v in _state().items() if k != drop} | add
    with pytest.raises(LoraMergeError, match="malformed LoRA state") as e:
        merge_lora(state, {"r": 2, "alpha": 3.0})
    assert message in str(e.value) and "\n" not in str(e.value)


def test_a_bad_entry_is_refused() -> None:
    for entry, message in [({"alpha": 1.0}, "needs numbers r and alpha"), ({"r": 0, "alpha": 1.0}, "r must be >= 1"),
                           ({"r": 2, "alpha": 1.0, "adapter": "other"}, "only the adapter 'default'")]:  # fmt: skip
        with pytest.raises(LoraMergeError, match=message):
            merge_lora(_state(), entry)


# ---- injection into a transformer of ours ------------------------------------------------------
def test_injection_keeps_the_class_and_keys_and_trains_only_the_adapters() -> None:
    model = _adapted()
    assert type(model) is ProgressiveContextModel
    keys = set(model.state_dict())
    assert {"blocks.0.attn.qkv.base_layer.weight", "blocks.0.attn.qkv.lora_A.default.weight", "blocks.1.mlp.2.lora_B.default.weight"} <= keys
    # "proj" is a suffix after a dot: input_proj is no target; "0" reaches blocks.0.mlp.0, never the block blocks.0
    assert "input_proj.weight" in keys and "blocks.0.norm1.weight" in keys
    trained = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trained and all("lora_" in n for n in trained)
    assert len(trained) == 2 * 4 * TINY["depth"]  # A and B of 4 Linear layers per block


def test_lora_b_at_zero_leaves_the_outputs_and_the_merge_is_exact() -> None:
    plain, inputs = _plain(), _inputs()
    fresh = _plain()
    inject_lora(fresh, SPEC)
    # Equal up to float rounding: the wrapped base layer may take another GEMM kernel (bit-equal on
    # an AMD EPYC; up to 3.7e-9 on an Intel Xeon with AMX, logits ~0.03), far below what adapters do.
    torch.testing.assert_close(_logits(fresh, inputs), _logits(plain, inputs), rtol=0, atol=1e-7)
    adapted = _adapted()
    assert not torch.allclose(_logits(adapted, inputs), _logits(plain, inputs), atol=1e-3)  # the adapters do something
    merged = _plain()
    merged.load_state_dict(merge_lora(adapted.state_dict(), lora_entry(SPEC)), strict=True)
    torch.testing.assert_close(_logits(merged, inputs), _logits(adapted, inputs), rtol=0, atol=1e-5)


@pytest.mark.parametrize("rslora", [False, True])
def test_merge_equals_peft_merge_and_unload(rslora: bool) -> None:
    spec = LoraSpec(component="context_model", r=4, alpha=8.0, targets=["qkv", "proj", "0", "2"], rslora=rslora)
    adapted = _adapted(spec)
    config = peft.LoraConfig(r=spec.r, lora_alpha=spec.alpha, target_modules=linear_targets(_plain(), spec.targets), use_rslora=rslora)
    tuner = peft.LoraModel(_plain(), config, "default")
    tuner.model.load_state_dict(adapted.state_dict(), strict=True)
    theirs = tuner.merge_and_unload().state_dict()
    ours = merge_lora(adapted.state_dict(), lora_entry(spec))
    assert set(ours) == set(theirs) == set(_plain().state_dict())
    for key in ours:
        torch.testing.assert_close(ours[key], theirs[key], rtol=0, atol=1e-6, msg=key)


def test_targets_that_match_no_linear_are_named_with_the_linear_layers() -> None:
    with pytest.raises(ValueError, match=r"'blocks' matches no nn.Linear of ProgressiveContextModel; its Linear layers are \['input_proj'"):
        inject_lora(_plain(), LoraSpec(component="context_model", r=2, alpha=2.0, targets=["qkv", "blocks"]))


def test_a_missing_peft_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "peft", None)
    with pytest.raises(ImportError, match=r"^finetune.lora needs the peft package: pip install peft==0.21.2$"):
        inject_lora(_plain(), SPEC)


# ---- the checkpoint entry and gvc-export ------------------------------------------------------
class _Stage(L.LightningModule):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.context_model = model


def _entry(stage: L.LightningModule) -> dict:
    return checkpoint_entry(stage, {"context_model": "context_model"}, git_commit=None, run_config="test", train_seconds=0.0)


def test_the_entry_has_lora_only_when_the_stage_declares_adapters() -> None:
    plain = _entry(_Stage(_plain()))["components"]["context_model"]
    assert set(plain) == {"class", "config", "state_prefix"}  # the old layout, unchanged
    stage = _Stage(_adapted())
    assert unexportable_components(stage, {"context_model": "context_model"}) == [
        "context_model (carries LoRA adapters but the stage's _lora has no entry for 'context_model')"
    ]
    stage._lora = {"context_model": lora_entry(SPEC)}
    assert unexportable_components(stage, {"context_model": "context_model"}) == []
    entry = _entry(stage)["components"]["context_model"]
    assert entry["lora"] == {"r": 4, "alpha": 8.0, "rslora": False, "targets": ["qkv", "proj", "0", "2"], "adapter": "default"}
    assert {k: v for k, v in entry.items() if k != "lora"} == plain


_EXPORT_WITHOUT_PEFT = """
import sys
sys.modules["peft"] = None  # an import of peft now fails
import torch
from gvc_train.components import load_component
from gvc_train.export import export_checkpoint
ckpt, out, inputs = sys.argv[1:]
export_checkpoint(ckpt, out)
model = load_component(out, "context_model").eval()
with torch.no_grad():
    torch.save(torch.cat([x.flatten(1) for x in model(torch.load(inputs))], 1), out + "/logits.pt")
"""


def test_a_lora_checkpoint_exports_a_plain_folder_that_loads_without_peft(tmp_path: Path) -> None:
    adapted, inputs = _adapted(), _inputs()
    stage = _Stage(adapted)
    stage._lora = {"context_model": lora_entry(SPEC)}
    ckpt = tmp_path / "last.ckpt"
    torch.save({"state_dict": stage.state_dict(), CHECKPOINT_KEY: _entry(stage)}, ckpt)
    torch.save(inputs, tmp_path / "inputs.pt")
    out = tmp_path / "exported"
    run = subprocess.run(
        [sys.executable, "-c", _EXPORT_WITHOUT_PEFT, str(ckpt), str(out), str(tmp_path / "inputs.pt")],
        cwd=REPO, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=120,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
    with safe_open(str(out / "context_model.safetensors"), "pt") as f:
        assert set(f.keys()) == set(_plain().state_dict())  # plain weights: no lora_ or base_layer key
    torch.testing.assert_close(torch.load(out / "logits.pt"), _logits(adapted, inputs), rtol=0, atol=1e-5)


def test_a_lora_entry_on_a_state_without_adapters_is_refused_by_export(tmp_path: Path) -> None:
    from gvc_train.export import ExportError, export_checkpoint

    stage = _Stage(_plain())
    entry = _entry(stage)
    entry["components"]["context_model"]["lora"] = lora_entry(SPEC)
    torch.save({"state_dict": {**stage.state_dict(), "context_model.head.lora_A.default.weight": torch.zeros(4, 32)}, CHECKPOINT_KEY: entry}, tmp_path / "x.ckpt")
    with pytest.raises(ExportError, match="component context_model: malformed LoRA state: head has lora_A without lora_B"):
        export_checkpoint(tmp_path / "x.ckpt", tmp_path / "out")
