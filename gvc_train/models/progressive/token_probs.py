"""Token probabilities for the entropy coder: rates, probabilities and their fixed-point form.

Two kinds of token, as the context model predicts them:

* ``"codebook"``: a categorical over ``V`` codebook indexes. Logits ``B x l x V`` (float);
  tokens ``B x h x w`` int64 in ``[0, V)`` (map layout) or ``B x l`` (flat, ``l = h * w``
  row-major).
* ``"bitwise"``: one Bernoulli per bit. Logits ``B x l x bits`` (the logit of bit = 1); tokens
  ``B x bits x h x w`` in ``{0, 1}`` (map layout, channels first like a feature map) or
  ``B x l x bits`` (flat).

The coder needs integer frequencies that the encoder and the decoder compute identically:
:func:`quantize_probs` is integer arithmetic after one exact step per element (a multiply by a
power of two and a floor), with no floating-point sum, so it is a pure function of the float
probabilities whatever the thread count, vector unit or device.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

KINDS = ("codebook", "bitwise")
# quantize_probs: probabilities become integers at 2^-PROB_BITS before the integer division,
# so every product a_i * (2^precision - V) stays below 2^(PROB_BITS + 30) < 2^63.
PROB_BITS = 31
MAX_PRECISION_BITS = 30  # frequencies sum to 2^precision, which int32 must hold


def flat_tokens(tokens: torch.Tensor, kind: str) -> torch.Tensor:
    """Tokens in flat layout (``B x l`` codebook, ``B x l x bits`` bitwise), from either layout."""
    if kind == "codebook":
        return tokens.flatten(1) if tokens.dim() == 3 else tokens
    return tokens.flatten(2).transpose(1, 2) if tokens.dim() == 4 else tokens


def map_layout(flat: torch.Tensor, kind: str, size: tuple[int, int]) -> torch.Tensor:
    """Per-token values in flat layout (``B x l [x bits or V]``) as a map for a scale of ``size = (h, w)``.

    Codebook: ``B x l -> B x h x w`` and ``B x l x V -> B x h x w x V``. Bitwise: ``B x l x bits ->
    B x bits x h x w``.
    """
    h, w = size
    if kind == "bitwise":
        return flat.transpose(1, 2).reshape(flat.shape[0], flat.shape[2], h, w)
    return flat.reshape(flat.shape[0], h, w, *flat.shape[2:])


def token_bits(logits: torch.Tensor, tokens: torch.Tensor, kind: str) -> torch.Tensor:
    """Bits (``-log2 p``) of every token under the logits: ``B x l`` (a bitwise token's bits summed).

    ``logits``: ``B x l x V`` or ``B x l x bits``; ``tokens`` in either layout (module docstring).
    Differentiable in the logits: the training loss is this, summed (the rate).
    """
    tokens = flat_tokens(tokens, kind)
    if kind == "codebook":
        nats = F.cross_entropy(logits.float().transpose(1, 2), tokens.long(), reduction="none")
    else:
        nats = F.binary_cross_entropy_with_logits(logits.float(), tokens.to(torch.float32), reduction="none").sum(-1)
    return nats / math.log(2.0)


def probabilities(logits: torch.Tensor, kind: str) -> torch.Tensor:
    """Float64 probabilities: softmax over the last axis (codebook, ``B x l x V``) or the
    probability of bit = 1 (bitwise, ``B x l x bits``). Float64 so that small probabilities keep
    their digits before :func:`quantize_probs`."""
    if kind == "codebook":
        return torch.softmax(logits.double(), dim=-1)
    return torch.sigmoid(logits.double())


def bit_distributions(p_one: torch.Tensor) -> torch.Tensor:
    """Bernoulli probabilities of bit = 1 (any shape ``...``) as two-symbol distributions ``... x 2``
    (symbol 0 then symbol 1), ready for :func:`quantize_probs`."""
    p_one = p_one.double()
    return torch.stack([1.0 - p_one, p_one], dim=-1)


def quantize_probs(p: torch.Tensor, precision_bits: int = 16) -> torch.Tensor:
    """Integer frequencies for an entropy coder: ``int32``, same shape as ``p``, each ``>= 1``,
    summing to ``2^precision_bits`` along the last axis (one distribution per row).

    ``p``: probabilities along the last axis (``V`` symbols, ``V <= 2^precision_bits``); they need
    not sum exactly to 1 (rows are renormalised); NaN and negatives count as 0, values above 1 as
    1, and an all-zero row becomes uniform. Pure function of the float values: each is made an
    integer ``a = floor(p * 2^31)`` (exact), then everything is integer arithmetic: every symbol
    gets 1 plus ``floor(a * (2^precision - V) / sum(a))``, and the remainder goes one unit each to
    the largest fractional parts (ties to the lower index, as a stable sort would order them).

    Computed in numpy on the CPU (single-threaded; the result is returned on ``p``'s device)
    with one plain sort of unique keys per row (:func:`_largest`): at ``V = 512`` about twice as
    fast as the torch version with a stable sort and its ranks it replaced (issue 13), and the
    same integers (tests/test_progressive_context.py keeps that version as the oracle).
    """
    if not isinstance(precision_bits, int) or not 1 <= precision_bits <= MAX_PRECISION_BITS:
        raise ValueError(f"precision_bits must be an integer in [1, {MAX_PRECISION_BITS}], got {precision_bits!r}")
    symbols = p.shape[-1]
    total = 1 << precision_bits
    if symbols < 1 or symbols > total:
        raise ValueError(f"{symbols} symbols do not fit {precision_bits}-bit frequencies (at most {total}, each >= 1)")
    rows = p.detach().to("cpu", torch.float64).reshape(-1, symbols).numpy()
    # In place where it can be: at V = 512 the elementwise passes over the table together cost
    # more than its sort, and every temporary table adds one.
    a = np.fmax(rows, 0.0)  # a new array; fmax / fmin drop a NaN for the other operand: NaN -> 0
    np.fmin(a, 1.0, out=a)
    a *= float(1 << PROB_BITS)  # exact: a power-of-two scale
    a = a.astype(np.int64)  # truncation, which is the floor of these non-negative values: exact
    row_sum = a.sum(-1, keepdims=True)  # integers: exact in any order
    empty = row_sum[:, 0] == 0
    if empty.any():
        a[empty] = 1
        row_sum[empty] = symbols
    spare = total - symbols  # what is left once every symbol has its 1
    a *= spare
    base = a // row_sum
    a -= base * row_sum  # the remainders
    missing = spare - base.sum(-1)  # in [0, symbols): sum(remainder) / row_sum
    base += _largest(a, missing, int(row_sum.max(initial=0)))
    base += 1
    return torch.from_numpy(base.astype(np.int32).reshape(p.shape)).to(p.device)


def _largest(remainder: np.ndarray, count: np.ndarray, bound: int) -> np.ndarray:
    """``N x V`` booleans: in each row the ``count[row]`` entries of largest ``remainder``
    (integers in ``[0, bound)``; overwritten), ties to the lower index: the first ``count`` of a
    stable descending sort.

    Each entry's key ``remainder * V + (V - 1 - index)`` is unique in its row and orders the row
    exactly as that stable sort does, so a plain sort of the keys' values gives each row's
    threshold (its ``count``-th largest key) and the entries at or above it are the ones. Keys
    fit int64 when ``bound * V < 2^63`` (rows that sum to about 1 have ``bound`` about 2^31, and
    ``V <= 2^30``); beyond that (large unnormalised rows), the stable argsort and its ranks.
    """
    rows, symbols = remainder.shape
    if bound > (2**63 - 1) // symbols:
        order = np.argsort(-remainder, axis=-1, kind="stable")
        rank = np.empty_like(order)
        np.put_along_axis(rank, order, np.broadcast_to(np.arange(symbols), (rows, symbols)), axis=-1)
        return rank < count[:, None]
    key = remainder
    key *= symbols
    key += np.arange(symbols - 1, -1, -1, dtype=np.int64)
    threshold = np.take_along_axis(np.sort(key, axis=-1), (symbols - np.maximum(count, 1))[:, None], axis=-1)
    threshold[count == 0] = np.iinfo(np.int64).max  # above every key (< bound * V): none
    return key >= threshold
