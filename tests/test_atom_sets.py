"""Atom sets to bytes: exact round trips, the size the information needs, damage refused."""

from __future__ import annotations

import math
import random

import pytest

from gvc_train.coding.atom_sets import pack_groups, packed_bits, packed_size, set_bits, unpack_groups
from gvc_train.coding.container import BitstreamError


def random_groups(rng: random.Random, K: int, counts: list[int]) -> list:
    return [(sorted(rng.sample(range(K), m)), [rng.random() < 0.5 for _ in range(m)]) for m in counts]


@pytest.mark.parametrize("K", [2, 64, 16384])
def test_round_trip(K: int) -> None:
    rng = random.Random(K)
    counts = [rng.randint(0, min(K, 9)) for _ in range(60)] + [K if K < 64 else 1]
    groups = random_groups(rng, K, counts)
    data = pack_groups(K, groups)
    assert unpack_groups(data, K, counts, "test") == groups
    # Extremes: the first and the last set of the colex order.
    ends = [(list(range(5)), [True] * 5), (list(range(K - 5, K)), [False] * 5)] if K >= 5 else []
    assert unpack_groups(pack_groups(K, ends), K, [len(g[0]) for g in ends], "test") == ends


def test_size_is_the_information_and_beats_packing() -> None:
    K, M, groups = 16384, 8, 17 * 8
    size = packed_size(K, [M] * groups)
    assert size == math.ceil(groups * set_bits(K, M) / 8)
    assert set_bits(K, M) == pytest.approx(packed_bits(K, M) - math.log2(math.factorial(M)), abs=0.01)
    assert size * 8 < groups * packed_bits(K, M) * 0.88  # 13% under log2 K + 1 bits an atom


def test_damage_is_refused() -> None:
    K, counts = 100, [3, 3]
    data = pack_groups(K, random_groups(random.Random(0), K, counts))
    with pytest.raises(BitstreamError, match="bytes of atoms"):
        unpack_groups(data[:-1], K, counts, "GOP 0")
    with pytest.raises(BitstreamError, match="more than its groups"):
        unpack_groups(b"\xff" * len(data), K, counts, "GOP 0")
    with pytest.raises(ValueError, match="ascending"):
        pack_groups(K, [([5, 5], [True, True])])
