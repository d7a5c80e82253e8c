"""Adaptive context models for the control coders: counts in, exact integer frequency tables out.

Both sides keep the same counts and turn them into the same integer tables (integer arithmetic
only: no float that another CPU could round differently), which
:mod:`gvc_train.coding.categorical` codes exactly.

- :class:`BinaryContexts`: one bit per symbol under a context index (the edge maps' JBIG-like
  templates); the Krichevsky-Trofimov estimate ``(n1 + 1/2) / (n + 1)`` of each context.
- :class:`ClassCategorical`: a symbol in ``[0, V)`` under a context class (the residuals of the
  luma and flow coders); each class's counts mixed with a geometric prior whose mean is the
  class's running mean, so a class is usable from its first symbols and sharpens as it learns.

Adaptation is by chunks (:func:`code_in_chunks`): a phase's symbols are coded in chunks, each
under the counts of everything before it, so a model that has seen little is updated often
(a chunk is at most a quarter of what the model has seen) and a trained one codes a whole
phase in one call.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Protocol

import numpy as np
import torch

from gvc_train.coding.categorical import CategoricalDecoder, CategoricalEncoder

PRECISION = 16  # tables sum to 2^16: the least likely symbol costs at most 16 bits
_TOTAL = 1 << PRECISION
MIN_CHUNK = 64  # symbols coded before a fresh model's first update


class ContextModel(Protocol):
    seen: int

    def freqs(self, context: np.ndarray) -> np.ndarray: ...

    def update(self, context: np.ndarray, symbols: np.ndarray) -> None: ...


def code_in_chunks(model: ContextModel, context: np.ndarray, code: Callable[[np.ndarray, slice], np.ndarray]) -> None:
    """Code ``len(context)`` symbols chunk by chunk: ``code(freqs_NV, where)`` codes (encoder) or
    decodes (decoder) the symbols ``where`` under ``freqs`` and returns them; the model learns
    them before the next chunk. Chunks: ``max(MIN_CHUNK, model.seen // 4)`` symbols (a quarter
    of what the model has learnt from: 3-4% smaller edge maps than chunks as large as that), the
    same on both sides."""
    start, count = 0, len(context)
    while start < count:
        where = slice(start, start + max(MIN_CHUNK, model.seen // 4))
        symbols = code(model.freqs(context[where]), where)
        model.update(context[where], symbols)
        start = where.stop


def _halve_where(mask: np.ndarray, *arrays: np.ndarray) -> None:
    for a in arrays:
        a[mask] = (a[mask] + 1) >> 1


class BinaryContexts:
    """Counts of 0s and 1s per context; tables ``N x 2`` (``f0, f1``), ``f1 ~ (n1 + 1/2) / (n + 1)``.

    ``limit``: a context whose count passes it has its counts halved (recent statistics weigh
    more: edges move).
    """

    def __init__(self, contexts: int, limit: int = 1 << 12) -> None:
        self.counts = np.zeros((contexts, 2), dtype=np.int64)
        self.limit = limit
        self.seen = 0

    def tables(self) -> np.ndarray:
        """``contexts x 2`` int32 (``f0, f1``), summing to 2^16."""
        n = self.counts
        one = np.clip(((2 * n[:, 1] + 1) << PRECISION) // (2 * (n[:, 0] + n[:, 1]) + 2), 1, _TOTAL - 1)
        return np.stack([_TOTAL - one, one], axis=1).astype(np.int32)

    def freqs(self, context: np.ndarray) -> np.ndarray:
        return self.tables()[context]

    def update(self, context: np.ndarray, symbols: np.ndarray) -> None:
        flat = context.astype(np.int64) * 2 + symbols.astype(np.int64)
        self.counts += np.bincount(flat, minlength=self.counts.size).reshape(self.counts.shape)
        self.seen += len(context)
        while True:
            over = self.counts.sum(1) > self.limit
            if not over.any():
                return
            _halve_where(over, self.counts)


@functools.lru_cache(maxsize=16)
def geometric_bank(symbols: int) -> tuple[np.ndarray, np.ndarray]:
    """Geometric priors over ``[0, symbols)`` (the last symbol takes the tail), one row per mean:
    ``(means_x64, rows)``, means in 1/64 from 1/16 up, ~19% apart; rows sum to 2^16. Python
    integers only (the same tables on every machine)."""
    means = [4]
    while means[-1] < 64 * symbols:
        means.append(max(means[-1] + 1, means[-1] * 19 // 16))
    rows = []
    for m in means:
        g, row = 1 << 40, []
        for _ in range(symbols - 1):
            row.append(g)
            g = g * m // (m + 64)  # ratio theta = mean / (mean + 1)
        row.append(g * (m + 64) // 64)  # the tail: g / (1 - theta)
        total = sum(row)
        row = [1 + r * (_TOTAL - symbols) // total for r in row]
        row[0] += _TOTAL - sum(row)
        rows.append(row)
    return np.array(means, dtype=np.int64), np.array(rows, dtype=np.int64)


class ClassCategorical:
    """Symbols in ``[0, symbols)`` (small is likely: residual magnitudes) under ``classes`` context classes.

    A class's table is ``prior * PRIOR_WEIGHT + counts * 2^16`` made to sum to 2^16, the prior
    the geometric distribution (:func:`geometric_bank`) of the class's running mean, worth
    ``PRIOR_WEIGHT`` symbols: residuals are close to geometric, so a strong prior learns fastest
    (luma: 256 codes 1-4% smaller than 16), and the counts refine its shape after a few hundred.
    """

    PRIOR_WEIGHT = 256

    def __init__(self, classes: int, symbols: int, limit: int = 1 << 14) -> None:
        self.symbols = symbols
        self.counts = np.zeros((classes, symbols), dtype=np.int64)
        self.sums = np.zeros(classes, dtype=np.int64)  # sum of the symbols seen, per class
        self.limit = limit
        self.seen = 0

    def tables(self) -> np.ndarray:
        """``classes x symbols`` int32, every row >= 1 and summing to 2^16."""
        means, bank = geometric_bank(self.symbols)
        n = self.counts.sum(1)
        mean_x64 = (64 * self.sums + n // 2) // np.maximum(n, 1)
        mean_x64 = np.where(n > 0, mean_x64, 64)  # a fresh class: mean 1
        prior = bank[np.clip(np.searchsorted(means, mean_x64), 0, len(means) - 1)]
        weight = prior * self.PRIOR_WEIGHT + (self.counts << PRECISION)
        free = _TOTAL - self.symbols
        table = 1 + weight * free // weight.sum(1, keepdims=True)
        rows = np.arange(len(table))
        table[rows, table.argmax(1)] += _TOTAL - table.sum(1)
        return table.astype(np.int32)

    def freqs(self, context: np.ndarray) -> np.ndarray:
        return self.tables()[context]

    def update(self, context: np.ndarray, symbols: np.ndarray) -> None:
        flat = context.astype(np.int64) * self.symbols + symbols.astype(np.int64)
        self.counts += np.bincount(flat, minlength=self.counts.size).reshape(self.counts.shape)
        # float64 sums of integers are exact far past any count here (< 2^53)
        self.sums += np.bincount(context, weights=symbols.astype(np.float64), minlength=len(self.sums)).astype(np.int64)
        self.seen += len(context)
        over = self.counts.sum(1) > self.limit
        if over.any():
            _halve_where(over, self.counts, self.sums)


class ContextCoder:
    """One side of a stream: codes (``encoder``) or decodes (``decoder``) symbols under context
    models, so that a coder runs the same code in both directions and cannot drift."""

    def __init__(self, encoder: CategoricalEncoder | None = None, decoder: CategoricalDecoder | None = None) -> None:
        if (encoder is None) == (decoder is None):
            raise ValueError("a ContextCoder needs an encoder or a decoder, not both")
        self.encoder, self.decoder = encoder, decoder

    @property
    def encoding(self) -> bool:
        return self.encoder is not None

    def code(self, model: ContextModel, context: np.ndarray, symbols: np.ndarray | None) -> np.ndarray:
        """The symbols (int64) of ``context``'s positions: ``symbols`` coded (encoder) or the
        decoded ones (decoder; ``symbols`` is ignored there)."""
        out = np.empty(len(context), dtype=np.int64)

        def chunk(freqs: np.ndarray, where: slice) -> np.ndarray:
            tables = torch.from_numpy(freqs)
            if self.encoder is not None:
                assert symbols is not None
                out[where] = symbols[where]
                self.encoder.encode(torch.from_numpy(out[where]), tables)
            else:
                assert self.decoder is not None
                out[where] = self.decoder.decode(tables).numpy()
            return out[where]

        code_in_chunks(model, context, chunk)
        return out

    def uniform(self, values: np.ndarray | None, count: int, bits: int) -> np.ndarray:
        """``count`` integers of ``bits`` bits each, coded without a model (escapes' tails), in
        pieces of at most 8 bits (tables of at most 256 entries): ``values`` coded (encoder) or
        the decoded ones (decoder)."""
        out = np.zeros(count, dtype=np.int64)
        for low in range(0, bits, 8):
            width = min(8, bits - low)
            tables = torch.ones((count, 1 << width), dtype=torch.int32)
            if self.encoder is not None:
                assert values is not None
                piece = (values.astype(np.int64) >> low) & ((1 << width) - 1)
                self.encoder.encode(torch.from_numpy(piece), tables)
            else:
                assert self.decoder is not None
                piece = self.decoder.decode(tables).numpy()
            out |= piece << low
        return out
