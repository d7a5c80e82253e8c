"""Adaptive categorical counts in exact integers, for the pose and caption coders.

:class:`AdaptiveCounts` keeps a count per (context, symbol) and gives the integer frequency
tables that :class:`gvc_train.coding.categorical.CategoricalEncoder` codes under. Encoder and
decoder update the counts with the same symbols in the same order, and every step is integer
numpy arithmetic, so both compute the same tables on any machine (DESIGN.md, "Probabilities to
the coder") with nothing to send: a short clip pays only for how fast the counts learn.

Updates come in batches (:meth:`AdaptiveCounts.update` after a frame, say) so that all the
symbols of one batch are coded under one set of tables in one vectorized call, instead of one
constriction call per symbol. (The luma/edges/flow coders' ``adaptive.py`` has context models
with priors and chunked updates; these are plain counts.)
"""

from __future__ import annotations

import numpy as np
import torch

TABLE_BITS = 16  # tables sum to 2^16: a symbol costs at most 16 bits, however rare it was
UNIFORM_BIT = torch.tensor([[1 << (TABLE_BITS - 1)] * 2], dtype=torch.int32)  # one fair bit's table


def counts_to_freqs(counts_NV: np.ndarray) -> torch.Tensor:
    """Integer counts (``N x V``, each >= 0) -> int32 frequencies ``>= 1`` summing to ``2^16`` per row.

    ``f = 1 + floor(c * (2^16 - V) / sum(c))`` leaves a remainder of at most ``V`` which goes to
    the row's most frequent symbol (the first one on ties): integers throughout.
    """
    counts = counts_NV.astype(np.int64, copy=False)
    symbols = counts.shape[-1]
    spare = (1 << TABLE_BITS) - symbols
    totals = np.maximum(counts.sum(-1, keepdims=True), 1)
    freqs = 1 + counts * spare // totals
    rest = (1 << TABLE_BITS) - freqs.sum(-1)
    rows = np.arange(len(freqs))
    freqs[rows, counts.argmax(-1)] += rest
    return torch.from_numpy(freqs.astype(np.int32))


class AdaptiveCounts:
    """Counts of ``symbols`` symbols under ``contexts`` contexts, learning from what was coded.

    Every count starts at 1; a coded symbol adds ``increment`` to its count, and a context whose
    total passes ``limit`` has its counts halved (rounding up, so none reaches 0): recent symbols
    weigh more than old ones, and a count never overflows.
    """

    def __init__(self, contexts: int, symbols: int, increment: int = 24, limit: int = 1 << 13) -> None:
        if not 2 <= symbols <= 1 << 12 or contexts < 1 or limit < 2 * symbols:
            raise ValueError(f"adaptive counts need 2..4096 symbols, >= 1 context and a limit >= twice the symbols, "
                             f"got {symbols}, {contexts} and {limit}")
        self.counts = np.ones((contexts, symbols), dtype=np.int64)
        self.increment = increment
        self.limit = limit

    def tables(self, contexts: np.ndarray) -> torch.Tensor:
        """The frequency tables (``len(contexts) x V`` int32, summing to 2^16) for these contexts."""
        return counts_to_freqs(self.counts[contexts])

    def update(self, contexts: np.ndarray, symbols: np.ndarray) -> None:
        """Learn from ``symbols`` coded under ``contexts`` (same shape, any order within a batch)."""
        np.add.at(self.counts, (contexts.reshape(-1), symbols.reshape(-1)), self.increment)
        over = self.counts.sum(-1) > self.limit
        while over.any():  # once, unless one batch added more than the limit
            self.counts[over] = (self.counts[over] + 1) // 2
            over = self.counts.sum(-1) > self.limit
