"""The caption coder (exact for any Unicode, smaller than zlib on real-length captions, damage is
a BitstreamError) and the caption extractor (the shard's caption, else a local captioner)."""

from __future__ import annotations

import zlib

import numpy as np
import pytest

from gvc_train.coding.container import BitstreamError
from gvc_train.coding.controls.caption import MAX_CAPTION_BYTES, CaptionCoder
from gvc_train.coding.controls.registry import build_coder

# Not in the coder's corpus (caption_corpus.py): what its figures are measured on.
HELD_OUT = [
    "A man in a dark jacket talks on a mobile phone while riding in the passenger seat of a car.",
    "A group of cyclists in colorful jerseys race down a street lined with spectators.",
    "A cartoon bunny stands in a sunny forest clearing and watches a butterfly.",
    "A woman walks her dog along a sandy beach as the waves roll in.",
    "Close-up of a chef slicing tomatoes on a wooden cutting board.",
    "The video shows a busy train station with people hurrying to catch their trains.",
    "Two children build a sandcastle near the water.",
    "A white car drives through a city at night, its headlights reflecting on the wet road.",
    "An orange cat jumps onto a kitchen counter and knocks over a cup.",
    "A hiker climbs a steep rocky path toward the top of a mountain.",
    "Aerial footage of green rice fields and a small river.",
    "A man gives a presentation in front of a large screen in a conference room.",
    "a man talking on a cell phone in a car",
    "a group of people riding bicycles on a road",
]
UNICODE = [
    "",
    "x",
    "Ein Mann fährt Fahrrad auf einer Straße.",
    "一个男人在车里打电话。",
    "🚲🚲🚲 bikes! \u200d\u0301 tab\tnew\nline \x00 nul",
    "Ünïcødé — “quotes” and 𝔪𝔞𝔱𝔥",
]


@pytest.mark.parametrize("caption", HELD_OUT[:3] + UNICODE)
def test_round_trip_is_exact(caption: str) -> None:
    coder = build_coder("caption")
    assert isinstance(coder, CaptionCoder) and coder.settings() == {}
    assert coder.decode(coder.encode(caption)) == caption


def test_a_third_of_raw_and_of_zlib_on_held_out_captions() -> None:
    """Measured: ~21 bytes a caption against ~66 raw, ~66 zlib, ~29 raw deflate with the
    corpus as preset dictionary. Never more than raw + 1 byte whatever the text."""
    coder = CaptionCoder()
    coded = [len(coder.encode(c)) for c in HELD_OUT]
    raw = [len(c.encode()) for c in HELD_OUT]
    zipped = [len(zlib.compress(c.encode(), 9)) for c in HELD_OUT]
    assert sum(coded) < 0.4 * min(sum(raw), sum(zipped))
    assert all(len(coder.encode(c)) <= len(c.encode()) + 1 for c in UNICODE + HELD_OUT)


def test_the_model_is_frozen() -> None:
    """Mode 1's bytes never change: a decoder of any later version reads them. A new corpus or
    model is a new mode, not an edit (caption_corpus.py)."""
    assert CaptionCoder().encode(HELD_OUT[0]).hex() == "1ab72484286b627d9cdf700ac6268962dfaf5c3318"


def test_what_cannot_be_a_caption_is_a_value_error() -> None:
    coder = CaptionCoder()
    with pytest.raises(ValueError, match="str"):
        coder.encode(b"bytes")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="UTF-8"):
        coder.encode("lone \ud800 surrogate")
    with pytest.raises(ValueError, match="at most"):
        coder.encode("a" * (MAX_CAPTION_BYTES + 1))


def test_damage_decodes_or_is_a_bitstream_error() -> None:
    coder = CaptionCoder()
    rng = np.random.default_rng(0)
    damaged: list[bytes] = [b"", b"\xf0", b"\x20" + bytes(8)]
    for caption in (HELD_OUT[0], UNICODE[3]):  # the model's mode and the raw mode
        data = coder.encode(caption)
        damaged += [data[:n] for n in range(len(data))]
        for _ in range(30):
            flipped = bytearray(data)
            flipped[int(rng.integers(len(data)))] ^= 1 << int(rng.integers(8))
            damaged.append(bytes(flipped))
    damaged += [bytes(rng.integers(0, 256, int(n), dtype=np.uint8)) for n in rng.integers(1, 40, 30)]
    errors = 0
    for payload in damaged:
        try:
            assert isinstance(coder.decode(payload), str)
        except BitstreamError:
            errors += 1
    assert errors >= 0.85 * len(damaged)
