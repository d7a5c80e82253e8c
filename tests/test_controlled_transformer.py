"""ControlledVideoTransformer at a tiny size: shapes, role-aware embeddings, modality dropout,
the zero-initialised control pathway, gradient checkpointing, bf16, bounds and bad input.

A fresh model predicts exactly zero (adaLN-Zero and a zero final layer), so most tests first
give the zero-initialised weights small random values (:func:`_as_if_trained`), optionally
leaving the control pathway's hints at zero.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

from gvc_train.models.controlled.embeddings import KEY_ROLES, rope_axes_dims
from gvc_train.models.controlled.transformer import ControlledVideoTransformer

TINY = dict(
    latent_channels=4, patch_size=(1, 2, 2), width=32, depth=2, heads=2, mlp_ratio=2.0, text_dim=8,
    controls={"luma": 1, "edges": 1}, control_depth=1, control_hidden=8, control_frames_per_latent=4,
    control_scale=2, max_latent_frames=8,
)  # fmt: skip
B, C, T, H, W = 2, 4, 3, 4, 4  # latent; the control maps are 1 + (T - 1) * 4 = 9 frames of 8 x 8


def _model(**overrides: Any) -> ControlledVideoTransformer:
    torch.manual_seed(0)
    return ControlledVideoTransformer(**{**TINY, **overrides})


def _as_if_trained(model: ControlledVideoTransformer, keep_hints_zero: bool = False) -> ControlledVideoTransformer:
    """Small random values in every all-zero weight (the zero inits), as training would leave."""
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if keep_hints_zero and ".hint." in name:
                continue
            if not param.any():
                param.copy_(0.1 * torch.randn(param.shape, generator=generator))
    return model


def _inputs(seed: int = 0) -> dict[str, Any]:
    g = torch.Generator().manual_seed(seed)
    key_mask = torch.zeros(B, 1, T, H, W)
    key_mask[:, :, 0] = key_mask[:, :, -1] = 1
    return dict(
        x_BCThw=torch.randn(B, C, T, H, W, generator=g),
        t_B=torch.rand(B, generator=g),
        key_BCThw=torch.randn(B, C, T, H, W, generator=g) * key_mask,
        key_mask_B1Thw=key_mask,
        key_roles_BT=torch.tensor([[KEY_ROLES.index("first"), 0, KEY_ROLES.index("last")]] * B),
        controls={"luma": torch.rand(B, 1, 9, 8, 8, generator=g), "edges": (torch.rand(B, 1, 9, 8, 8, generator=g) > 0.8).float()},
        text_BLE=torch.randn(B, 5, 8, generator=g),
        text_mask_BL=torch.tensor([[True] * 5, [True] * 3 + [False] * 2]),
    )


@torch.no_grad()
def _run(model: ControlledVideoTransformer, **changes: Any) -> torch.Tensor:
    return model.eval()(**{**_inputs(), **changes})


def test_output_has_the_latent_shape_and_a_fresh_model_predicts_zero() -> None:
    model = _model()
    v = _run(model)
    assert v.shape == (B, C, T, H, W) and v.dtype == torch.float32
    assert not v.any(), "adaLN-Zero and the zero final layer: a fresh model predicts zero velocity"
    coarse = _as_if_trained(_model(patch_size=(2, 2, 2)))
    x = torch.randn(B, C, 4, H, W)
    v = coarse.eval()(x, torch.rand(B), controls={"luma": torch.rand(B, 1, 13, 8, 8)})
    assert v.shape == x.shape and v.abs().sum() > 0


def test_rope_splits_every_head_channel() -> None:
    for head_dim in (6, 16, 64, 128):
        assert sum(rope_axes_dims(head_dim)) == head_dim and all(d % 2 == 0 for d in rope_axes_dims(head_dim))


def test_permuting_keyframe_roles_changes_the_output() -> None:
    model = _as_if_trained(_model())
    first, last, adaptive = (KEY_ROLES.index(r) for r in ("first", "last", "adaptive"))
    v = _run(model, key_roles_BT=torch.tensor([[first, 0, last]] * B))
    swapped = _run(model, key_roles_BT=torch.tensor([[last, 0, first]] * B))
    both_adaptive = _run(model, key_roles_BT=torch.tensor([[adaptive, 0, adaptive]] * B))
    assert (v - swapped).abs().max() > 1e-4 and (v - both_adaptive).abs().max() > 1e-4


def test_the_same_values_under_two_modality_names_condition_differently() -> None:
    model = _as_if_trained(_model())
    values = torch.rand(B, 1, 9, 8, 8)
    as_luma = _run(model, controls={"luma": values})
    as_edges = _run(model, controls={"edges": values})
    assert (as_luma - as_edges).abs().max() > 1e-4
    # The role embedding alone tells them apart: the same encoder weights under both names.
    model.control_encoders["edges"].load_state_dict(model.control_encoders["luma"].state_dict())
    assert (_run(model, controls={"luma": values}) - _run(model, controls={"edges": values})).abs().max() > 1e-4


def test_a_dropped_modality_does_not_see_its_values() -> None:
    model = _as_if_trained(_model())
    dropped = {"luma": torch.tensor([True, False]), "text": torch.tensor([True, False]), "keyframes": torch.tensor([True, False])}
    v = _run(model, dropped=dropped)
    other = _inputs(seed=5)
    changed_for_0 = {
        "controls": {"luma": torch.cat([other["controls"]["luma"][:1], _inputs()["controls"]["luma"][1:]]), "edges": _inputs()["controls"]["edges"]},
        "text_BLE": torch.cat([other["text_BLE"][:1], _inputs()["text_BLE"][1:]]),
        "key_BCThw": torch.cat([other["key_BCThw"][:1], _inputs()["key_BCThw"][1:]]),
        "key_roles_BT": torch.tensor([[3, 3, 3], [1, 0, 2]]),
    }
    assert torch.equal(_run(model, dropped=dropped, **changed_for_0), v), "sample 0 dropped them: its values may not matter"
    assert not torch.equal(_run(model, **changed_for_0), _run(model)), "not dropped, the same changes matter"
    # Dropped for every sample is the same as not given (any subset can be given at sampling).
    all_dropped = _run(model, dropped={"luma": torch.ones(B, dtype=torch.bool)})
    torch.testing.assert_close(all_dropped, _run(model, controls={"edges": _inputs()["controls"]["edges"]}), rtol=0, atol=1e-6)


def test_an_untrained_control_pathway_changes_nothing_until_trained() -> None:
    model = _as_if_trained(_model(), keep_hints_zero=True)
    without = _run(model, controls={})
    assert without.abs().sum() > 0
    assert torch.equal(_run(model), without), "zero-initialised hints: controls may not change the output"
    # One step towards a target that needs the controls: they matter afterwards.
    model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    inputs = _inputs()
    loss = (model(**inputs) - inputs["controls"]["luma"][:, :, ::4, ::2, ::2].expand(-1, C, -1, -1, -1)).square().mean()
    loss.backward()
    optimizer.step()
    other = {"luma": torch.rand(B, 1, 9, 8, 8), "edges": inputs["controls"]["edges"]}
    assert (_run(model) - _run(model, controls=other)).abs().max() > 1e-6


def test_gradient_checkpointing_gives_the_same_outputs_and_gradients() -> None:
    outputs, grads = [], []
    for checkpointing in (False, True):
        model = _as_if_trained(_model(gradient_checkpointing=checkpointing)).train()
        out = model(**_inputs())
        out.square().mean().backward()
        outputs.append(out.detach())
        grads.append({n: p.grad for n, p in model.named_parameters() if p.grad is not None})
    torch.testing.assert_close(outputs[1], outputs[0], rtol=0, atol=1e-6)
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) > 10
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], rtol=1e-5, atol=1e-7, msg=name)


def test_bf16_autocast_runs_close_to_float32() -> None:
    model = _as_if_trained(_model())
    reference = _run(model)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        v = _run(model)
    assert v.dtype == torch.float32 and torch.isfinite(v).all()
    assert (v - reference).abs().max() < 0.05 * reference.abs().max() + 1e-3


def test_bad_input_and_bounds_are_clear_errors() -> None:
    model = _model()
    with pytest.raises(ValueError, match="unknown condition"):
        _run(model, controls={"pose": torch.rand(B, 17, 9, 8, 8)})
    with pytest.raises(ValueError, match="unknown condition"):
        _run(model, dropped={"flow": torch.ones(B, dtype=torch.bool)})
    with pytest.raises(ValueError, match="does not fit the latent"):
        _run(model, controls={"luma": torch.rand(B, 1, 8, 8, 8)})
    with pytest.raises(ValueError, match="multiple of the patch size"):
        _run(model, x_BCThw=torch.randn(B, C, T, H, 5), key_BCThw=None, key_mask_B1Thw=None, controls={})
    with pytest.raises(ValueError, match="parameters is more than"):
        ControlledVideoTransformer(width=8192, depth=64, heads=64)
    with pytest.raises(ValueError, match="modality name"):
        ControlledVideoTransformer(**{**TINY, "controls": {"text": 1}})


def test_control_maps_from_their_layouts() -> None:
    from gvc_train.models.controlled.control_maps import control_map, map_channels

    T, size = 5, (8, 8)
    luma = control_map("luma", torch.full((T, 16, 16), 255, dtype=torch.uint8), size)
    assert luma.shape == (1, T, 8, 8) and torch.allclose(luma, torch.ones_like(luma))
    labels = torch.randint(0, 3, (T, 8, 8), dtype=torch.uint8)
    segmentation = control_map("segmentation", labels, size, classes=3)
    assert segmentation.shape == (3, T, 8, 8) and torch.equal(segmentation.argmax(0), labels.long())
    flow = control_map("flow", torch.ones(T - 1, 2, 4, 4), size)
    assert flow.shape == (2, T, 8, 8) and not flow[:, 0].any() and torch.allclose(flow[:, 1:], torch.full_like(flow[:, 1:], 2.0))
    people = [torch.tensor([[[4.5 / 8, 2.5 / 8, 1.0], [0.0, 0.0, 0.0]]])] + [torch.zeros(0, 2, 3)] * (T - 1)
    pose = control_map("pose", people, size, joints=2)
    assert pose.shape == (2, T, 8, 8) and pose[0, 0].max() > 0.5 and not pose[1].any() and not pose[:, 1:].any()
    assert pose[0, 0].argmax() == 2 * 8 + 4 and pose[0, 0].max() == 1.0  # the centre of row 2, column 4
    assert map_channels("pose", joints=17) == 17
    with pytest.raises(ValueError, match="no map"):
        map_channels("caption")
