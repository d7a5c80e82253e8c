"""Entropy coding of categorical and binary symbols under exact integer frequency tables (constriction's ANS).

The progressive codec codes codebook indexes under per-token categoricals (``V`` up to 4096) and
bitwise tokens under per-bit Bernoullis. The model's probabilities become integer frequencies
(``models/progressive/token_probs.quantize_probs``: ``>= 1``, summing to ``2^P``) that encoder and
decoder compute identically; this coder codes each symbol under exactly those integers, so a
symbol of frequency ``f`` costs ``-log2(f / 2^P)`` bits plus ~4 bytes of flush per stream.

**API.** :class:`CategoricalEncoder` takes calls ``encode(symbols, freqs)`` in the order the
decoder will learn the tables (scale 1, then scale 2, ...); ``finish()`` gives the bytes.
:class:`CategoricalDecoder` takes the bytes and answers ``decode(freqs)`` calls with the same
tables in the same order, then ``finish()`` checks that the stream ended where it should. A
binary symbol is a ``V = 2`` categorical: its table is ``quantize_probs(bit_distributions(p_one))``
(``... x 2``, symbol 0 then 1), so bits and indexes share one stream and one call.

**Exact integer tables through constriction.** constriction's ``Categorical(perfect=False)`` takes
float probabilities and quantizes them itself: symbol ``i`` of ``V`` gets the interval that starts
at ``floor(sum(q[:i]) * scale) + i``, ``scale = (2^24 - V) / sum(q)`` (its "fast" leaky
quantizer, constriction 0.5.0, ``LazyContiguousCategoricalEntropyModel``). Given
``q = f * 2^(24 - P) - 1`` (float32 integers whose every partial sum stays below 2^24, so all
sums are exact in any order) the scale is exactly 1 and the intervals are exactly our frequencies at constriction's 24-bit precision: no rounding
anywhere, so the encoder and the decoder cannot disagree. ``P <= 24`` (the precision of
constriction's default coders); ``quantize_probs(p, 24)`` is the table to use at ``V = 4096``,
where 16 bits would reserve 1/16 of the mass for the symbols' minimum of 1.

**ANS, in decode order.** ANS is a stack: the decoder reads symbols in the reverse of the order
they were encoded. The encoder therefore keeps every call until ``finish()`` and then encodes
them last to first, so the decoder reads them first to last and can compute each table from the
symbols it decoded before (a range coder would not need that). What it keeps is small: the
encoder needs only the coded symbol's interval (start, frequency), so each symbol is kept as a
3-entry table with the same interval (16 bytes a symbol, not ``V`` frequencies), which also
makes constriction's encoding O(1) per symbol instead of O(V) (one cumulative sum of the table
remains, in numpy). ANS was chosen over constriction's
range coder for its end check: a decoded ANS stream ends in exactly the state it started from,
which a range coder does not tell (and both cost the same here: ~1 word of flush).

**Sections: one stream that can be cut.** A caller may split its calls into sections
(``encode(..., section=k)``; sections decode in order 0, 1, ...) and take them apart
(:meth:`CategoricalEncoder.finish_sections`): one ANS stack, so one flush for all of them (a
flush costs ~40 bits: a stream of many small scales paid it per scale), yet any prefix of the
sections is a stream that decodes those sections. ANS makes that possible: the decoder of
section k pops exactly the words the encoder pushed while coding section k, and the words of
later sections lie below them on the stack, so dropping them changes nothing above. The
encoder finds where each section's words end by decoding its own stack once (constriction's
``pos()``), and the decoder checks at every section's end that it consumed exactly that
section's words (:meth:`CategoricalDecoder.end_section`).

**End check.** Before any symbol, the encoder codes a fixed 16-bit marker (an interval of width
1 at ``_MARKER``); it is decoded last. ``CategoricalDecoder.finish()`` decodes it and requires
the coder to be exactly empty afterwards: a truncated, damaged or mis-decoded payload (other
tables, more or fewer symbols) passes it by chance only (0 of 21,000 fuzzed payloads here) and
raises :class:`~gvc_train.coding.container.BitstreamError` (a stream whose last sections were
cut has no marker: the section-end checks are its end check). Without the marker, "empty" alone
passed ~30% of truncations: a decoder that ran out of words drains to the empty state. The marker costs at most 16 bits and
usually nothing: it fits inside the interval of the first symbol encoded (the last decoded) when
that symbol's frequency exceeds ``_MARKER``. Malformed payloads (a length that is not whole
32-bit words, a zero last word) raise the same error when the decoder is made. Decoding never
hangs or allocates beyond the caller's tables: a damaged stream decodes to garbage first (in
bounded time) and fails the end check.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import constriction
import numpy as np
import torch

from gvc_train.coding.container import BitstreamError

PRECISION_BITS = 24  # constriction's default coders (32-bit words, 64-bit state, 24-bit probabilities)
_TOTAL = 1 << PRECISION_BITS
# The end marker: an interval [_MARKER, _MARKER + 1) coded before everything (decoded last). 16
# bits with its top bit set: far from the small values a drained (over-read) decoder settles on.
_MARKER = 0xA5B7
_MARKER_TABLE = np.array([[_MARKER - 1, 0, _TOTAL - _MARKER - 2]], dtype=np.float32)  # intervals [0,M), [M,M+1), [M+1,2^24)
_MARKER_SYMBOL = np.array([1], dtype=np.int32)
# Frequencies are turned into float tables at most this many entries at a time (16 MB of float32).
_CHUNK_ENTRIES = 1 << 22


def _model_family() -> constriction.stream.model.Categorical:
    # perfect=False: the lazy "fast" quantizer whose arithmetic the module docstring relies on.
    return constriction.stream.model.Categorical(perfect=False)


def _check_tables(freqs: torch.Tensor) -> tuple[np.ndarray, int]:
    """``freqs`` as ``N x V`` int32 rows (numpy, on the CPU), and the left shift to 24-bit precision.

    Every row must be integers ``>= 1`` summing to the same power of two ``2^P``, ``V <= 2^P <= 2^24``
    (what ``quantize_probs`` gives). A bad table is the caller's bug: ``ValueError``. The table
    work here and below is numpy: single-threaded integer arithmetic, the same whatever torch's
    thread count (and not slowed by its thread pool on a busy machine: 20x, measured).
    """
    if freqs.dim() < 1 or freqs.is_floating_point() or freqs.is_complex() or freqs.dtype == torch.bool:
        raise ValueError(f"frequency tables must be an integer tensor ... x V, got {freqs.dtype} {tuple(freqs.shape)}")
    symbols = freqs.shape[-1]
    rows = freqs.detach().cpu().reshape(-1, symbols).numpy()
    if rows.size == 0:
        return rows.astype(np.int32), 0
    low, high = int(rows.min()), int(rows.max())
    if low < 1 or high > _TOTAL:
        raise ValueError(f"every frequency must lie in [1, 2^{PRECISION_BITS}] (quantize_probs gives that), got {low}..{high}")
    rows = rows.astype(np.int32, copy=False)
    sums = rows.sum(-1, dtype=np.int64)
    total = int(sums[0])
    if not bool((sums == total).all()) or total & (total - 1) or not symbols <= total <= _TOTAL:
        raise ValueError(
            f"every row of frequencies must sum to the same power of two 2^P with {symbols} <= 2^P <= 2^{PRECISION_BITS}: "
            f"got sums from {int(sums.min())} to {int(sums.max())}"
        )
    return rows, PRECISION_BITS - (total.bit_length() - 1)


def _leaky_form(freqs: np.ndarray, shift: int = 0) -> np.ndarray:
    """``freqs * 2^shift - 1`` as float32 (exact: integers up to 2^24), the table constriction's
    leaky quantizer turns back into exactly ``freqs * 2^shift`` (module docstring)."""
    table = freqs.astype(np.float32)
    if shift:
        table *= np.float32(1 << shift)
    table -= np.float32(1.0)
    return table


def _chunk_rows(symbols: int) -> int:
    """Rows of ``symbols`` entries handled at a time (bounded memory whatever N)."""
    return max(1, _CHUNK_ENTRIES // symbols)


class CategoricalEncoder:
    """Collects symbols with their frequency tables, in decode order; :meth:`finish` gives the bytes.

    Attributes: ``symbols`` (how many were coded) and ``model_bits`` (``-sum log2(f / 2^P)`` of
    them: what the stream costs before the coder's ~4-byte flush).
    """

    def __init__(self) -> None:
        # per section, its calls: (symbol indexes int32, tables float32 n x w)
        self._sections: list[list[tuple[np.ndarray, np.ndarray]]] = [[]]
        self.symbols = 0
        self.model_bits = 0.0

    def encode(self, symbols: torch.Tensor, freqs: torch.Tensor, section: int = 0) -> None:
        """Append ``symbols`` (integer, any shape ``S``) coded under ``freqs`` (integer ``S x V``)
        to ``section`` (module docstring; calls of one section decode in the order they came).

        ``freqs[..., v]`` is symbol ``v``'s frequency: ``>= 1``, each row summing to ``2^P`` with
        ``P <= 24`` (``quantize_probs(p, P)``; ``P`` may differ between calls, not within one).
        Bits: ``V = 2``. The decoder must be called with the same tables in the same order.
        """
        if not isinstance(section, int) or not 0 <= section < 1 << 16:
            raise ValueError(f"section must be an integer in [0, 65536), got {section!r}")
        while len(self._sections) <= section:
            self._sections.append([])
        calls = self._sections[section]
        if tuple(symbols.shape) != tuple(freqs.shape[:-1]):
            raise ValueError(f"symbols {tuple(symbols.shape)} do not match frequency tables {tuple(freqs.shape)} (S vs S x V)")
        if symbols.is_floating_point() or symbols.is_complex():
            raise ValueError(f"symbols must be integers, got {symbols.dtype}")
        rows, shift = _check_tables(freqs)
        count, width = rows.shape
        idx = symbols.detach().cpu().reshape(-1).numpy().astype(np.int64)
        if count and not (0 <= int(idx.min()) and int(idx.max()) < width):
            raise ValueError(f"symbols must lie in [0, {width})")
        if count == 0 or width == 1:  # a one-symbol alphabet is certain: nothing to code
            self.symbols += count
            return
        step = _chunk_rows(width)
        for start in range(0, count, step):
            f = rows[start:start + step] << shift  # int32: at most 2^24
            s = idx[start:start + step]
            freq = np.take_along_axis(f, s[:, None], axis=1)[:, 0]
            self.model_bits += PRECISION_BITS * len(s) - float(np.log2(freq).sum())
            if width <= 3:  # already as small as the 3-entry form
                calls.append((s.astype(np.int32), _leaky_form(f)))
            else:
                calls.append(self._interval_tables(s, f, freq))
        self.symbols += count

    @staticmethod
    def _interval_tables(s: np.ndarray, f: np.ndarray, freq: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Each symbol's interval ``[start, start + freq)`` as a 3-entry table (``V >= 4``).

        ANS encoding uses only the coded symbol's start and frequency, so a table with the same
        interval codes it identically. The rows are (start, freq, rest) with the symbol in the
        middle; a first symbol (start 0) is (freq, 1, rest - 1) at 0, a last one (rest 0) is
        (1, start - 1, freq) at 2: every entry >= 1, as the leaky quantizer requires (its ``-1``
        form below), since the other ``V - 1 >= 3`` symbols have frequency >= 1 each.
        """
        start = np.take_along_axis(np.cumsum(f, axis=1, dtype=np.int32), s[:, None], axis=1)[:, 0] - freq
        rest = _TOTAL - start - freq
        first, last = start == 0, rest == 0
        table = np.stack([start, freq, rest], axis=1)
        table[first] = np.stack([freq[first], np.ones_like(freq[first]), rest[first] - 1], axis=1)
        table[last] = np.stack([np.ones_like(freq[last]), start[last] - 1, freq[last]], axis=1)
        which = np.where(first, 0, np.where(last, 2, 1)).astype(np.int32)
        return which, _leaky_form(table)

    def finish(self) -> bytes:
        """The coded stream, every section in one (a multiple of 4 bytes; empty when no symbol
        needed coding). The encoder is empty again afterwards."""
        return b"".join(reversed(self.finish_sections()))

    def finish_sections(self, count: int | None = None) -> list[bytes]:
        """The coded stream as ``count`` sections (default: up to the last one used), section 0
        first: each a multiple of 4 bytes, possibly empty; sections ``0..j`` alone are the stream of
        those sections (:class:`CategoricalDecoder` takes them). The encoder is empty again afterwards."""
        sections, self._sections = self._sections, [[]]
        self.symbols, self.model_bits = 0, 0.0
        count = len(sections) if count is None else count
        if count < len(sections) and any(sections[count:]):
            raise ValueError(f"symbols were coded in section {len(sections) - 1}, more than the {count} asked for")
        sections = (sections + [[]] * count)[:count]
        if not any(sections):
            return [b""] * count
        family = _model_family()
        coder = constriction.stream.stack.AnsCoder()
        coder.encode_reverse(_MARKER_SYMBOL, family, _MARKER_TABLE)  # decoded last: the end check
        for calls in reversed(sections):  # a stack: the last call first, each call's rows last to first
            for which, table in reversed(calls):
                coder.encode_reverse(which, family, table)
        words = coder.get_compressed()
        # Where each section's words end: decode the stack once, as the decoder will.
        reader, ends = constriction.stream.stack.AnsCoder(words), [len(words)]
        for calls in sections:
            for which, table in calls:
                if not np.array_equal(reader.decode(family, table), which):
                    raise RuntimeError("the ANS stack does not decode to what was coded (a constriction bug)")
            ends.append(reader.pos()[0])
        return [words[ends[i + 1] : ends[i]].astype("<u4").tobytes() for i in range(count)]


class CategoricalDecoder:
    """Reads back what a :class:`CategoricalEncoder` wrote, call for call, with the same tables.

    Raises :class:`BitstreamError` for a payload that is not a stream (here) and for one that did
    not end where it should (:meth:`finish`, which the caller must call after the last decode).
    """

    def __init__(self, data: bytes | Sequence[bytes], complete: bool = True) -> None:
        """``data``: the stream (:meth:`CategoricalEncoder.finish`), or its sections ``0..j`` in
        order (:meth:`CategoricalEncoder.finish_sections`, perhaps without the last ones: then
        ``complete=False``, and the section-end checks replace the end marker's)."""
        sections = [data] if isinstance(data, (bytes, bytearray, memoryview)) else list(data)
        for i, part in enumerate(sections):
            if len(part) % 4:
                raise BitstreamError(f"entropy-coded payload (section {i + 1}) of {len(part)} bytes is not whole 32-bit words")
        # the buffer words left after each section: the later sections' words
        sizes = [len(part) // 4 for part in sections]
        self._section_ends = [sum(sizes[i + 1 :]) for i in range(len(sections))]
        self._section = 0
        self._complete = complete
        self._coder = None
        self._finished = False
        data = b"".join(bytes(part) for part in reversed(sections))
        if data:
            words = np.frombuffer(data, dtype="<u4").astype(np.uint32)
            try:
                self._coder = constriction.stream.stack.AnsCoder(words)
            except (KeyboardInterrupt, SystemExit):
                raise
            except BaseException as error:  # constriction rejects a zero last word; Rust panics arrive as BaseException
                raise BitstreamError(f"entropy-coded payload is damaged ({error})") from None
        self._family = _model_family()
        self.symbols = 0

    def decode(self, freqs: torch.Tensor) -> torch.Tensor:
        """The next symbols, int64 shaped ``freqs.shape[:-1]``, under ``freqs`` (integer ``S x V``,
        as given to :meth:`CategoricalEncoder.encode`)."""
        if self._finished:
            raise ValueError("decode() after finish(): the stream has ended")
        rows, shift = _check_tables(freqs)
        count, width = rows.shape
        out = np.zeros(count, dtype=np.int64)
        if count and width > 1:
            if self._coder is None:
                raise BitstreamError("entropy-coded payload is empty but symbols were expected")
            step = _chunk_rows(width)
            for start in range(0, count, step):
                table = _leaky_form(rows[start:start + step], shift)
                out[start:start + step] = self._call(self._coder.decode, self._family, table)
        self.symbols += count
        return torch.from_numpy(out).reshape(freqs.shape[:-1])

    def end_section(self) -> None:
        """The current section is decoded: BitstreamError unless it used exactly its own words."""
        if self._section >= len(self._section_ends):
            raise ValueError(f"end_section() past the last of {len(self._section_ends)} sections")
        left = self._coder.pos()[0] if self._coder is not None else 0
        if left != self._section_ends[self._section]:
            raise BitstreamError(
                f"entropy-coded section {self._section + 1} does not end where it should ({left} words left, "
                f"expected {self._section_ends[self._section]}): damaged, or decoded with other tables than it was coded with"
            )
        self._section += 1

    def finish(self) -> None:
        """Check the end marker and that nothing is left (a complete stream), or that every
        section was decoded and ended where it should (a cut one): BitstreamError otherwise. Once."""
        if self._finished:
            raise ValueError("finish() was called already")
        self._finished = True
        if self._section not in (0, len(self._section_ends)):
            raise ValueError(f"finish() after {self._section} of {len(self._section_ends)} sections")
        if self._coder is None:
            return
        if not self._complete:
            if self._section == 0:
                if len(self._section_ends) > 1:
                    raise ValueError("a cut stream of several sections needs end_section() after each")
                self.end_section()  # a one-section stream decoded without end_section()
            return
        marker = self._call(self._coder.decode, self._family, _MARKER_TABLE)
        if int(marker[0]) != int(_MARKER_SYMBOL[0]) or not self._coder.is_empty():
            raise BitstreamError(
                f"entropy-coded payload does not end after its {self.symbols} symbols: damaged, truncated, "
                "or decoded with other tables than it was coded with"
            )

    @staticmethod
    def _call(fn: Callable[..., Any], *args: Any) -> Any:
        """A constriction call, whatever it raises as one BitstreamError."""
        try:
            return fn(*args)
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as error:
            raise BitstreamError(f"entropy-coded payload could not be decoded ({error})") from None


def model_bits(symbols: torch.Tensor, freqs: torch.Tensor) -> float:
    """``-sum log2(f / 2^P)`` of ``symbols`` under ``freqs`` (as :meth:`CategoricalEncoder.encode`
    takes them): what the coder writes, less its flush."""
    rows, shift = _check_tables(freqs)
    if rows.size == 0:
        return 0.0
    freq = np.take_along_axis(rows, symbols.detach().cpu().reshape(-1, 1).numpy().astype(np.int64), axis=1)
    return (PRECISION_BITS - shift) * rows.shape[0] - float(np.log2(freq).sum())

