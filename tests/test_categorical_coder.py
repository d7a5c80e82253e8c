"""The categorical/binary entropy coder (gvc_train/coding/categorical.py): exact round trips under
integer frequency tables, the coded size against the tables' own bits, decode-order use (each
table computed from the symbols decoded before), one clear error for damaged payloads, and the
same bytes whatever the thread count."""

from __future__ import annotations

import random

import pytest
import torch

import gvc_train.coding.categorical as categorical
from gvc_train.coding.categorical import CategoricalDecoder, CategoricalEncoder, model_bits
from gvc_train.coding.container import BitstreamError
from gvc_train.models.progressive.token_probs import bit_distributions, quantize_probs


def _tables(count: int, symbols: int, precision: int = 24, seed: int = 0, spread: float = 3.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Symbols drawn from random per-row categoricals, and those categoricals' integer frequencies."""
    g = torch.Generator().manual_seed(seed)
    p = torch.softmax(spread * torch.randn(count, symbols, generator=g, dtype=torch.float64), dim=-1)
    return torch.multinomial(p, 1, generator=g).squeeze(1), quantize_probs(p, precision)


def _bits(count: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Bits drawn from random Bernoullis, and their ``count x 2`` tables (as the bitwise tokens get them)."""
    g = torch.Generator().manual_seed(seed)
    p_one = torch.sigmoid(4.0 * torch.randn(count, generator=g, dtype=torch.float64))
    return (torch.rand(count, generator=g, dtype=torch.float64) < p_one).long(), quantize_probs(bit_distributions(p_one), 24)


def _calls() -> list[tuple[torch.Tensor, torch.Tensor]]:
    """A mixed stream: codebook indexes at V = 16 and 4096, bits, edge alphabets, several precisions."""
    return [
        _tables(3000, 16, seed=1),
        _bits(4000, seed=2),
        _tables(300, 4096, seed=3),
        _tables(500, 16, precision=12, seed=4),
        _tables(200, 3, precision=8, seed=5),
        _tables(100, 4, precision=2, seed=6),  # 4 symbols at 2 bits: every frequency is 1
        (torch.zeros(7, dtype=torch.long), torch.ones(7, 1, dtype=torch.int32)),  # V = 1: certain, costs nothing
        (torch.zeros(0, dtype=torch.long), torch.ones(0, 16, dtype=torch.int32)),  # an empty call
    ]


def _encode(calls: list[tuple[torch.Tensor, torch.Tensor]]) -> bytes:
    encoder = CategoricalEncoder()
    for symbols, freqs in calls:
        encoder.encode(symbols, freqs)
    return encoder.finish()


def _decode(data: bytes, tables: list[torch.Tensor]) -> list[torch.Tensor]:
    decoder = CategoricalDecoder(data)
    out = [decoder.decode(freqs) for freqs in tables]
    decoder.finish()
    return out


def test_round_trip_is_exact_for_categorical_and_binary_symbols() -> None:
    calls = _calls()
    decoded = _decode(_encode(calls), [freqs for _, freqs in calls])
    for (symbols, _), out in zip(calls, decoded):
        assert out.dtype == torch.int64 and torch.equal(out, symbols)


def test_extreme_tables_and_edge_symbols_round_trip() -> None:
    """First and last symbols (the 3-entry interval tables' special rows), near-certain and
    near-impossible symbols, every frequency 1 but one, leading dimensions kept."""
    calls = []
    for symbols in (2, 3, 4, 5, 4096):
        freqs = torch.ones(4, symbols, dtype=torch.int32)
        freqs[0, 0] = freqs[1, -1] = freqs[2, symbols // 2] = (1 << 24) - (symbols - 1)
        freqs[3] = quantize_probs(torch.full((symbols,), 1.0 / symbols), 24)
        for chosen in (0, symbols - 1, symbols // 2):
            calls.append((torch.full((4,), chosen), freqs))
    symbols, freqs = _tables(24, 16, seed=7)
    calls.append((symbols.reshape(2, 3, 4).int(), freqs.reshape(2, 3, 4, 16)))
    decoded = _decode(_encode(calls), [freqs for _, freqs in calls])
    for (symbols, _), out in zip(calls, decoded):
        assert out.shape == symbols.shape and torch.equal(out, symbols.long())


@pytest.mark.parametrize("symbols, count", [(16, 20_000), (2, 50_000), (4096, 1_000)])
def test_coded_size_is_the_tables_bits_plus_a_flush(symbols: int, count: int) -> None:
    """Within 0.1% + 8 bytes of ``-sum log2(f / 2^P)`` at the quantized frequencies (the coder
    itself rounds nothing: the exact integers are the coded intervals)."""
    calls = [_bits(count, seed=8)] if symbols == 2 else [_tables(count, symbols, seed=8)]
    encoder = CategoricalEncoder()
    encoder.encode(*calls[0])
    ideal = encoder.model_bits
    data = encoder.finish()
    symbols_, freqs = calls[0]
    exact = float(-torch.log2(freqs.gather(1, symbols_[:, None]).double() / (1 << 24)).sum())
    assert ideal == pytest.approx(exact, rel=1e-12) and model_bits(symbols_, freqs) == pytest.approx(exact, rel=1e-12)
    assert ideal - 8 <= 8 * len(data) <= ideal * 1.001 + 64, (8 * len(data), ideal)


def test_lower_precision_tables_cost_their_own_bits() -> None:
    """A 16-bit table is coded as itself (scaled to 24 bits, not re-quantized)."""
    symbols, freqs = _tables(20_000, 16, precision=16, seed=9)
    exact = float(-torch.log2(freqs.gather(1, symbols[:, None]).double() / (1 << 16)).sum())
    assert model_bits(symbols, freqs) == pytest.approx(exact, rel=1e-12)
    assert exact - 8 <= 8 * len(_encode([(symbols, freqs)])) <= exact * 1.001 + 64


def test_decoder_learns_each_table_from_the_symbols_it_decoded() -> None:
    """The progressive codec's order: scale k+1's probabilities depend on scale k's symbols, so
    the decoder can only compute a table after decoding the previous call."""

    def next_table(previous: torch.Tensor, count: int, symbols: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(int(previous.sum()) % 10_007)  # any deterministic function of the past
        logits = torch.randn(count, symbols, generator=g, dtype=torch.float64)
        logits[:, 0] += previous.repeat(count // len(previous) + 1)[:count].double() % 3
        return quantize_probs(torch.softmax(logits, dim=-1), 24)

    sizes = [(1, 4096), (4, 4096), (16, 16), (64, 2), (256, 4096)]
    rng = torch.Generator().manual_seed(10)
    encoder, coded, previous = CategoricalEncoder(), [], torch.zeros(1, dtype=torch.long)
    for count, symbols in sizes:
        freqs = next_table(previous, count, symbols)
        chosen = torch.multinomial(freqs.double(), 1, generator=rng).squeeze(1)
        encoder.encode(chosen, freqs)
        coded.append(chosen)
        previous = chosen
    decoder, previous = CategoricalDecoder(encoder.finish()), torch.zeros(1, dtype=torch.long)
    for (count, symbols), truth in zip(sizes, coded):
        out = decoder.decode(next_table(previous, count, symbols))
        assert torch.equal(out, truth)
        previous = out
    decoder.finish()


def test_memory_bound_chunks_do_not_change_the_stream(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _calls()[:3]
    reference = _encode(calls)
    monkeypatch.setattr(categorical, "_CHUNK_ENTRIES", 1000)  # a few rows at a time; one row at V = 4096
    assert _encode(calls) == reference
    decoded = _decode(reference, [freqs for _, freqs in calls])
    assert all(torch.equal(out, symbols) for (symbols, _), out in zip(calls, decoded))


def _small_stream() -> tuple[bytes, list[torch.Tensor]]:
    calls = [_tables(200, 16, seed=11), _bits(300, seed=12), _tables(40, 4096, seed=13)]
    return _encode(calls), [freqs for _, freqs in calls]


def _fails_cleanly(data: bytes, tables: list[torch.Tensor]) -> None:
    with pytest.raises(BitstreamError) as error:
        _decode(data, tables)
    assert "\n" not in str(error.value)


def test_every_truncation_is_one_clear_error() -> None:
    data, tables = _small_stream()
    for cut in range(len(data)):
        _fails_cleanly(data[:cut], tables)


def test_damaged_payloads_are_one_clear_error() -> None:
    data, tables = _small_stream()
    rng = random.Random(0)
    cases = []
    for _ in range(150):  # single bit flips anywhere
        damaged = bytearray(data)
        bit = rng.randrange(8 * len(data))
        damaged[bit // 8] ^= 1 << (bit % 8)
        cases.append(bytes(damaged))
    for _ in range(30):  # a run of random bytes
        damaged = bytearray(data)
        at = rng.randrange(len(data) - 8)
        damaged[at:at + 8] = rng.randbytes(8)
        cases.append(bytes(damaged))
    cases += [data + bytes(4), data + b"\x01\x00\x00\x00", b"\x07\x00\x00\x00" + data, data[4:], data + b"\x01", bytes(len(data))]
    cases += [rng.randbytes(len(data)) for _ in range(20)]
    for damaged in cases:
        if damaged != data:
            _fails_cleanly(damaged, tables)


def test_decoding_with_other_tables_or_counts_is_an_error_not_a_hang() -> None:
    data, tables = _small_stream()
    _fails_cleanly(data, tables[:-1])  # fewer symbols than were coded
    _fails_cleanly(data, tables + [tables[0]])  # more symbols than were coded
    _fails_cleanly(data, [quantize_probs(torch.full((200, 16), 1 / 16), 24)] + tables[1:])  # other probabilities
    _fails_cleanly(b"", tables)  # nothing where symbols were expected
    _decode(b"", [torch.ones(5, 1, dtype=torch.int32), torch.ones(0, 16, dtype=torch.int32)])  # nothing to decode: fine


def test_same_bytes_whatever_the_thread_count() -> None:
    def stream() -> bytes:
        g = torch.Generator().manual_seed(14)
        logits = 3.0 * torch.randn(2, 500, 4096, generator=g)  # the context model's float logits, B x l x V
        p = torch.softmax(logits.double(), dim=-1)
        symbols = torch.multinomial(p.reshape(-1, 4096), 1, generator=g).reshape(2, 500)
        return _encode([(symbols, quantize_probs(p, 24)), _bits(5000, seed=15)])

    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = stream()
        torch.set_num_threads(2)
        two = stream()
    finally:
        torch.set_num_threads(threads)
    assert one == two


def test_bad_tables_are_the_callers_error() -> None:
    symbols, freqs = _tables(10, 16)
    encoder = CategoricalEncoder()
    bad = {
        "float tables": (symbols, freqs.double()),
        "a zero frequency": (symbols, freqs.clone().index_put_((torch.tensor([0]), torch.tensor([0])), torch.tensor(0, dtype=torch.int32))),
        "rows summing to other totals": (symbols, torch.cat([freqs[:5], freqs[5:] * 2 // 2 + 1])),
        "a total that is not a power of two": (symbols[:1], torch.full((1, 3), 5, dtype=torch.int32)),
        "more than 24 bits": (symbols[:1], quantize_probs(torch.full((1, 4), 0.25), 25)),
        "a symbol out of range": (symbols.clone().fill_(16), freqs),
        "float symbols": (symbols.double(), freqs),
        "mismatched shapes": (symbols[:5], freqs),
    }
    for name, (s, f) in bad.items():
        with pytest.raises(ValueError):
            encoder.encode(s, f)
        assert encoder.symbols == 0, name
    with pytest.raises(ValueError):
        CategoricalDecoder(b"").decode(freqs.double())


# ---- sections: one stack, cut after any section ---------------------------------------------


def _sectioned() -> tuple[list[list[tuple[torch.Tensor, torch.Tensor]]], list[bytes], int]:
    """Five sections of mixed calls (one of them empty), coded as one stack."""
    parts = [[_tables(40, 16, seed=10)], [_bits(300, seed=11), _tables(90, 512, seed=12)], [], [_tables(700, 512, seed=13)], [_tables(5, 4096, seed=14)]]
    enc = CategoricalEncoder()
    for k, calls in enumerate(parts):
        for symbols, freqs in calls:
            enc.encode(symbols, freqs, section=k)
    bits = enc.model_bits
    return parts, enc.finish_sections(), bits


def _decode_prefix(parts: list, sections: list[bytes], keep: int, complete: bool | None = None, check: bool = True) -> None:
    """Decode sections ``0..keep - 1`` with their tables (``check``: and compare the symbols)."""
    dec = CategoricalDecoder(sections[:keep], complete=keep == len(sections) if complete is None else complete)
    for calls in parts[:keep]:
        for symbols, freqs in calls:
            decoded = dec.decode(freqs)
            assert not check or torch.equal(decoded, symbols)
        dec.end_section()
    dec.finish()


def test_every_prefix_of_the_sections_decodes_and_the_stack_pays_one_flush() -> None:
    parts, sections, bits = _sectioned()
    assert len(sections) == 5 and sections[2] == b"" and all(len(p) % 4 == 0 for p in sections)
    for keep in range(1, 6):
        _decode_prefix(parts, sections, keep)
    # one flush for the stack, where a stream per section paid one each
    alone = []
    for calls in parts:
        enc = CategoricalEncoder()
        for symbols, freqs in calls:
            enc.encode(symbols, freqs)
        alone.append(len(enc.finish()))
    assert sum(map(len, sections)) * 8 <= bits + 64 < sum(alone) * 8
    # the whole stack as one payload is the same stream
    whole = CategoricalDecoder(b"".join(reversed(sections)))
    for calls in parts:
        for symbols, freqs in calls:
            assert torch.equal(whole.decode(freqs), symbols)
    whole.finish()


def test_a_section_that_does_not_end_where_it_should_is_one_clear_error() -> None:
    parts, sections, _ = _sectioned()
    # decoding a section with a call too few, or another table, ends it in the wrong place
    dec = CategoricalDecoder(sections[:2], complete=False)
    dec.decode(parts[0][0][1])
    dec.end_section()
    dec.decode(parts[1][0][1])  # the second call of section 2 is left out
    with pytest.raises(BitstreamError, match="section 2 does not end"):
        dec.end_section()
    # a section whose words were swapped with another's
    swapped = [sections[0], sections[3], sections[2], sections[1]]
    with pytest.raises(BitstreamError):
        _decode_prefix(parts, swapped, 4, check=False)
    # a cut stream decoded as if complete fails the end marker: the marker is not in it
    with pytest.raises(BitstreamError, match="does not end after"):
        _decode_prefix(parts, sections, 4, complete=True)
    with pytest.raises(ValueError, match="more than the 2"):
        enc = CategoricalEncoder()
        enc.encode(*_tables(4, 16), section=3)
        enc.finish_sections(2)
