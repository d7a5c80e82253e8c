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
    the largest fractional parts (ties to the lower index: a stable sort).
    """
    if not isinstance(precision_bits, int) or not 1 <= precision_bits <= MAX_PRECISION_BITS:
        raise ValueError(f"precision_bits must be an integer in [1, {MAX_PRECISION_BITS}], got {precision_bits!r}")
    symbols = p.shape[-1]
    total = 1 << precision_bits
    if symbols < 1 or symbols > total:
        raise ValueError(f"{symbols} symbols do not fit {precision_bits}-bit frequencies (at most {total}, each >= 1)")
    p = torch.nan_to_num(p.detach().double(), nan=0.0, posinf=1.0, neginf=0.0).clamp(0.0, 1.0)
    a = torch.floor(p * float(1 << PROB_BITS)).to(torch.int64)  # exact: a power-of-two scale, then floor
    row_sum = a.sum(-1, keepdim=True)  # integers: exact in any order
    a = torch.where(row_sum == 0, torch.ones_like(a), a)
    row_sum = a.sum(-1, keepdim=True)
    spare = total - symbols  # what is left once every symbol has its 1
    scaled = a * spare
    base = torch.div(scaled, row_sum, rounding_mode="floor")
    remainder = scaled - base * row_sum
    missing = spare - base.sum(-1, keepdim=True)  # in [0, symbols): sum(remainder) / row_sum
    order = torch.sort(remainder, dim=-1, descending=True, stable=True).indices
    rank = torch.empty_like(order).scatter_(-1, order, torch.arange(symbols, device=p.device).expand_as(order))
    return (1 + base + (rank < missing).to(torch.int64)).to(torch.int32)
