"""ContentCache: a frozen encoder's result per clip content, computed one clip at a time."""

from __future__ import annotations

import pytest
import torch

from gvc_train.lit.latent_cache import ContentCache


def test_hits_return_what_a_one_clip_call_gives_and_the_bound_holds() -> None:
    calls: list[int] = []

    def encode(x: torch.Tensor) -> torch.Tensor:
        calls.append(x.shape[0])
        return x.sum(dim=(1, 2)) * 2

    cache = ContentCache(max_entries=3)
    clips = torch.rand(4, 2, 3, 5)
    first = cache("enc", encode, clips)
    assert torch.equal(first, encode(clips)) and calls[:4] == [1, 1, 1, 1]  # misses one clip at a time
    calls.clear()
    again = cache("enc", encode, clips[2:])  # the last three are held
    assert torch.equal(again, first[2:]) and calls == [] and cache.hits == 2 and len(cache) == 3
    cache("other", encode, clips[:1])  # another tag is another computation
    assert calls == [1] and len(cache) == 3
    changed = clips[3:].clone()
    changed[0, 0, 0, 0] += 1
    assert not torch.equal(cache("enc", encode, changed), first[3:])  # content, not position, is the key


def test_zero_entries_is_the_plain_call_and_negative_is_refused() -> None:
    assert torch.equal(ContentCache(0)("t", lambda x: x + 1, torch.ones(2, 3)), torch.full((2, 3), 2.0))
    with pytest.raises(ValueError, match="max_entries"):
        ContentCache(-1)
