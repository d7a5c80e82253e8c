"""gvc_train/models/flow/modality_dropout.py: per-modality and all-conditions dropout.

The draws are keyed (seed 0, step 0), so these statistical tests are deterministic; their bounds
are 5 binomial standard deviations wide, so another seed would pass them too."""

from __future__ import annotations

import math

import pytest
import torch

from gvc_train.models import sample_noise
from gvc_train.models.flow.modality_dropout import ModalityDropout, drop_masks

N = 8000
PROBABILITIES = {"luma": 0.1, "flow": 0.3, "caption": 0.5}


def _draw(dropout: ModalityDropout, batch: int = N, seed: int = 0, step: int = 0, first_index: int = 0) -> dict[str, torch.Tensor]:
    with sample_noise.keyed_noise(seed=seed, step=step, first_index=first_index):
        return dropout(batch)


def _assert_rate(mask: torch.Tensor, p: float) -> None:
    bound = 5 * math.sqrt(p * (1 - p) / mask.numel())
    assert abs(mask.double().mean().item() - p) <= bound, (mask.double().mean().item(), p, bound)


def test_each_modality_drops_at_its_own_rate() -> None:
    masks = _draw(ModalityDropout(PROBABILITIES, all_p=0.0))
    assert list(masks) == list(PROBABILITIES)
    for name, p in PROBABILITIES.items():
        assert masks[name].dtype == torch.bool and masks[name].shape == (N,)
        _assert_rate(masks[name], p)


def test_modalities_drop_independently() -> None:
    masks = _draw(ModalityDropout(PROBABILITIES, all_p=0.0))
    names = list(PROBABILITIES)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            _assert_rate(masks[a] & masks[b], PROBABILITIES[a] * PROBABILITIES[b])
    _assert_rate(masks["luma"] & masks["flow"] & masks["caption"], math.prod(PROBABILITIES.values()))


def test_all_conditions_drop_together_at_all_p() -> None:
    all_p = 0.2
    masks = _draw(ModalityDropout(PROBABILITIES, all_p=all_p))
    for name, p in PROBABILITIES.items():
        _assert_rate(masks[name], 1 - (1 - p) * (1 - all_p))
    every = torch.stack(list(masks.values())).all(0)
    _assert_rate(every, all_p + (1 - all_p) * math.prod(PROBABILITIES.values()))
    only_all = _draw(ModalityDropout({"luma": 0.0, "flow": 0.0}, all_p=all_p))
    assert torch.equal(only_all["luma"], only_all["flow"])  # dropped together or not at all
    _assert_rate(only_all["luma"], all_p)


def test_certain_and_impossible_drops() -> None:
    masks = _draw(ModalityDropout({"luma": 1.0, "flow": 0.0}), batch=64)
    assert masks["luma"].all() and not masks["flow"].any()
    assert _draw(ModalityDropout({"flow": 0.0}, all_p=1.0), batch=64)["flow"].all()


def test_same_key_same_masks_other_step_other_masks() -> None:
    dropout = ModalityDropout(PROBABILITIES, all_p=0.1)
    first, again = _draw(dropout, 256, seed=3, step=9), _draw(dropout, 256, seed=3, step=9)
    other = _draw(dropout, 256, seed=3, step=10)
    assert all(torch.equal(first[name], again[name]) for name in PROBABILITIES)
    assert not all(torch.equal(first[name], other[name]) for name in PROBABILITIES)


def test_ddp_split_draws_what_one_process_draws() -> None:
    """A global batch of 4 on one process = 2 ranks x 2 with first_index 0 and 2."""
    dropout = ModalityDropout(PROBABILITIES, all_p=0.3)
    for step in range(20):  # enough steps that both values of every mask occur
        whole = _draw(dropout, 4, seed=1, step=step)
        ranks = [_draw(dropout, 2, seed=1, step=step, first_index=2 * rank) for rank in range(2)]
        for name in PROBABILITIES:
            assert torch.equal(torch.cat([ranks[0][name], ranks[1][name]]), whole[name])


def test_bad_probabilities_are_refused() -> None:
    with pytest.raises(ValueError, match="luma"):
        ModalityDropout({"luma": 1.5})
    with pytest.raises(ValueError, match="all conditions"):
        ModalityDropout({"luma": 0.1}, all_p=-0.1)


def test_drop_masks_for_sampling() -> None:
    masks = drop_masks(["luma", "flow", "caption"], 3, dropped=["flow"])
    assert {name: mask.tolist() for name, mask in masks.items()} == {
        "luma": [False] * 3, "flow": [True] * 3, "caption": [False] * 3,
    }  # fmt: skip
    assert all(mask.all() for mask in drop_masks(["luma", "flow"], 2, dropped=["luma", "flow"]).values())
    with pytest.raises(ValueError, match="pose"):
        drop_masks(["luma"], 2, dropped=["pose"])
