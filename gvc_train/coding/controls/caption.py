"""The ``caption`` coder: one clip's caption, UTF-8, under a static order-4 model of captions.

Layout (``LAYOUTS["caption"]``): a ``str``, sent once per clip. Lossless for any string that
UTF-8 can encode (lone surrogates cannot: ValueError).

**Why not zlib.** A caption is ~10-20 words, 50-100 bytes, where general compressors have
nothing to match and pay their overhead: on 14 held-out captions (tests/test_controls_caption.py,
66 bytes of UTF-8 on average) zlib gives 66 bytes, raw deflate 60, lzma 123, raw deflate with the
corpus below as preset dictionary 29; this coder 21.4, all overhead included (2.6 bits a byte).

**Model.** Bytes (and an end symbol) are coded one by one with constriction's ANS
(:mod:`gvc_train.coding.categorical`) under a byte model of orders 0 to 4 trained on a small,
frozen caption corpus (:mod:`gvc_train.coding.controls.caption_corpus`), blended from order 0
up by Witten-Bell (``p_k = (n_k(s) + 2 u_k p_{k-1}(s)) / (n_k + 2 u_k)``, ``n_k`` the count of
the order-k context, ``u_k`` its distinct symbols; order 0 mixed with 2% uniform so every byte
is possible). All integer arithmetic (24-bit fixed point), so encoder and decoder build the same
tables on any machine; the model is static (a caption is too short to learn from).

**Bytes.** One mode byte, ``mode << 6 | (crc32(utf8) & 63)``, then the payload: mode 0 the raw
UTF-8 (what the encoder picks when the model would not be smaller: text far from English
captions), mode 1 the ANS words of the model (the zero high bytes of the last word dropped).
Decoding checks the mode, a bound on the symbols (:data:`MAX_SYMBOLS_PER_BYTE` of the payload,
at most :data:`MAX_CAPTION_BYTES`: a damaged payload cannot run on), the ANS end marker, strict
UTF-8 and the 6-bit CRC: damage is one :class:`BitstreamError` (damage to a raw caption escapes
it 1 time in 64; the stream container's CRC32 guards whole chunks). The other control coders
seal their payloads with a tag and a CRC32 (:mod:`gvc_train.coding.controls.payload`); six bytes
would add 28% to a caption, so this one keeps a byte.
"""

from __future__ import annotations

import functools
import zlib

import numpy as np
import torch

from gvc_train.coding.categorical import CategoricalDecoder, CategoricalEncoder
from gvc_train.coding.container import BitstreamError
from gvc_train.coding.controls.adaptive_counts import counts_to_freqs
from gvc_train.coding.controls.caption_corpus import CAPTIONS_V1
from gvc_train.coding.controls.registry import ControlCoder, register_coder

MAX_CAPTION_BYTES = 8192  # a dense caption is ~2 KB; a decoder never runs past this
# The model's mode holds at most this many symbols per payload byte (captions: ~3; the encoder
# sends raw bytes otherwise), so a damaged payload's decoding stops after as many.
MAX_SYMBOLS_PER_BYTE = 16
_RAW, _MODEL_V1 = 0, 1
_ORDER = 4
_END = 256  # the end-of-caption symbol, after the 256 byte values
_SYMBOLS = 257
_START = 257  # what precedes the first byte in a context (no byte value)
_FIXED = 24  # fixed-point bits of the blended probabilities
_ESCAPE_WEIGHT = 2  # Witten-Bell: weight of the lower order, per distinct symbol seen
_UNIFORM_SHARE = 50  # order 0 keeps 1/50 of its mass for a uniform over all symbols


class _ContextModel:
    """Orders 0.._ORDER of byte counts from a corpus: context tuple -> dense counts."""

    def __init__(self, captions: tuple[str, ...]) -> None:
        sparse: list[dict[tuple[int, ...], dict[int, int]]] = [{} for _ in range(_ORDER + 1)]
        for caption in captions:
            history = [_START] * _ORDER
            for symbol in [*caption.encode("utf-8"), _END]:
                for order in range(_ORDER + 1):
                    context = tuple(history[_ORDER - order:])
                    counts = sparse[order].setdefault(context, {})
                    counts[symbol] = counts.get(symbol, 0) + 1
                history = history[1:] + [symbol]
        # Per context: (counts << _FIXED, total + escape weight, escape weight).
        self.contexts = [{c: self._blend_terms(counts) for c, counts in table.items()} for table in sparse]
        counts0 = sparse[0][()]
        dense0 = np.zeros(_SYMBOLS, dtype=np.int64)
        dense0[list(counts0)] = list(counts0.values())
        spread = np.full(_SYMBOLS, (1 << _FIXED) // _SYMBOLS, dtype=np.int64)
        self.order0 = ((dense0 << _FIXED) * (_UNIFORM_SHARE - 1) // int(dense0.sum()) + spread) // _UNIFORM_SHARE

    @staticmethod
    def _blend_terms(counts: dict[int, int]) -> tuple[np.ndarray, int, int]:
        dense = np.zeros(_SYMBOLS, dtype=np.int64)
        dense[list(counts)] = list(counts.values())
        weight = _ESCAPE_WEIGHT * len(counts)
        return dense << _FIXED, sum(counts.values()) + weight, weight

    def probabilities(self, history: tuple[int, ...]) -> np.ndarray:
        """The next symbol's blended probabilities (257 int64, 24-bit fixed point) after
        ``history`` (the last ``_ORDER`` symbols, ``_START``-padded)."""
        p = self.order0
        for order in range(1, _ORDER + 1):
            terms = self.contexts[order].get(history[_ORDER - order:])
            if terms is None:
                break  # a longer context was not seen either
            scaled, denominator, weight = terms
            p = (scaled + weight * p) // denominator
        return p


@functools.lru_cache(maxsize=1)
def _model_v1() -> _ContextModel:
    return _ContextModel(CAPTIONS_V1)


@functools.lru_cache(maxsize=1 << 14)
def _table_v1(history: tuple[int, ...]) -> torch.Tensor:
    """The decoder's table after ``history`` (1 x 257; cached: a caption revisits its contexts)."""
    return counts_to_freqs(_model_v1().probabilities(history)[None])


def _mode_byte(mode: int, text: bytes) -> bytes:
    return bytes([mode << 6 | zlib.crc32(text) & 63])


def _trim(words: bytes) -> bytes:
    """ANS words without the zero high bytes of the last one (constriction's last word is never
    zero, so :func:`_untrim`'s rounding up to whole words restores them): ~0.6 bytes a caption."""
    return words.rstrip(b"\0")


def _untrim(payload: bytes) -> bytes:
    return payload + b"\0" * (-len(payload) % 4)


def _model_bytes(text: bytes) -> bytes:
    """The caption's bytes and the end symbol, coded in one call (the encoder knows every context)."""
    model = _model_v1()
    symbols = [*text, _END]
    histories = [(*[_START] * _ORDER, *text)[i:i + _ORDER] for i in range(len(symbols))]
    coder = CategoricalEncoder()
    coder.encode(torch.tensor(symbols), counts_to_freqs(np.stack([model.probabilities(h) for h in histories])))
    return _trim(coder.finish())


def _symbol_bound(payload_bytes: int) -> int:
    """The most symbols (bytes and the end) a model payload of this size may hold."""
    return min(MAX_SYMBOLS_PER_BYTE * max(payload_bytes, 4), MAX_CAPTION_BYTES + 1)


def _model_text(payload: bytes) -> bytes:
    decoder = CategoricalDecoder(_untrim(payload))
    history, out = (_START,) * _ORDER, bytearray()
    bound = _symbol_bound(len(payload))
    while True:
        symbol = int(decoder.decode(_table_v1(history))[0])
        if symbol == _END:
            break
        if len(out) + 1 == bound:
            raise BitstreamError(f"caption payload is damaged: no end within {bound} symbols")
        out.append(symbol)
        history = history[1:] + (symbol,)
    decoder.finish()
    return bytes(out)


@register_coder("caption")
class CaptionCoder(ControlCoder):
    """A caption in UTF-8, lossless, under a static caption model or raw, whichever is smaller
    (module docstring). No settings."""

    lossless = True

    def __init__(self) -> None:
        pass  # no settings: the model is fixed by its mode (a new model is a new mode)

    def encode(self, control: str) -> bytes:
        if not isinstance(control, str):
            raise ValueError(f"a caption is a str, got {type(control).__name__}")
        try:
            text = control.encode("utf-8")
        except UnicodeEncodeError as e:
            raise ValueError(f"caption is not encodable as UTF-8 ({e.reason} at {e.start})") from None
        if len(text) > MAX_CAPTION_BYTES:
            raise ValueError(f"caption of {len(text)} UTF-8 bytes, at most {MAX_CAPTION_BYTES}")
        raw = _mode_byte(_RAW, text) + text
        payload = _model_bytes(text)
        if len(payload) + 1 >= len(raw) or len(text) + 1 > _symbol_bound(len(payload)):
            return raw
        return _mode_byte(_MODEL_V1, text) + payload

    def decode(self, data: bytes) -> str:
        if not data:
            raise BitstreamError("caption payload is empty (a caption costs at least its mode byte)")
        mode = data[0] >> 6
        if mode == _RAW:
            text = bytes(data[1:])
            if len(text) > MAX_CAPTION_BYTES:
                raise BitstreamError(f"caption payload of {len(text)} bytes, at most {MAX_CAPTION_BYTES}")
        elif mode == _MODEL_V1:
            text = _model_text(bytes(data[1:]))
        else:
            raise BitstreamError(f"caption payload of unknown mode {mode}")
        if _mode_byte(mode, text)[0] != data[0]:
            raise BitstreamError("caption payload is damaged: its check does not match")
        try:
            return text.decode("utf-8")
        except UnicodeDecodeError:
            raise BitstreamError("caption payload is damaged: not UTF-8") from None
