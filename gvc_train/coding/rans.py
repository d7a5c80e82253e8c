"""One rANS stream for many entropy-model calls: compressai's coder, without one string per tensor.

compressai's ``EntropyModel.compress`` returns one string per batch element and per call, and
every string pays the coder's flush (8 bytes). A latent codec codes two tensors per latent frame
(hyperprior z, latent y), which at 0.01 bpp would cost ~10% in flushes alone. Here one
:class:`SymbolEncoder` collects the symbols of any number of calls, possibly with different
entropy models, and flushes once; :class:`SymbolDecoder` reads them back in the same order.
(compressai's ``BufferedRansEncoder`` keeps rANS's last-in-first-out order internal.)

The CDF tables are the entropy models' own (``update()`` builds them and ``state_dict`` keeps
them), turned into Python lists once per model by :class:`CdfTables`, not once per call.

The decoder is given the stream padded with zeros: compressai's decoder reads the stream
without bounds checks, and a stream that passed its CRC but was made inconsistent on purpose
(or by a bug) must make it decode garbage, never read past the buffer.
"""

from __future__ import annotations

import dataclasses

import torch
from compressai.ans import BufferedRansEncoder, RansDecoder
from compressai.entropy_models import EntropyModel

# Bytes of zeros after the payload for each symbol the decoder may read: one 32-bit renorm
# read per symbol, plus bypass-coded escapes, which read zeros as "no more bypass values".
_PAD_BYTES_PER_SYMBOL = 8
# An escape's count of 4-bit bypass values is a run of 15s read from the stream: a payload of
# 0xff bytes after a crafted state announces 30 values per byte, read past the payload (15
# bytes per payload byte, plus 120 for the 64-bit state): without this, a CRC-valid forged
# chunk made the decoder read past its buffer (SIGSEGV; tests/test_latent_bitstream_fuzz.py).
_PAD_BYTES_PER_PAYLOAD_BYTE = 16
_PAD_BYTES_FIXED = 256


@dataclasses.dataclass(frozen=True)
class CdfTables:
    """An entropy model's quantized CDFs as the lists compressai's coder takes."""

    cdfs: list[list[int]]
    lengths: list[int]
    offsets: list[int]

    @classmethod
    def of(cls, model: EntropyModel) -> "CdfTables":
        if model._quantized_cdf.numel() == 0 or model._offset.numel() == 0:
            raise ValueError(f"{type(model).__name__} has no CDF tables: call update() on the codec before coding")
        return cls(
            model._quantized_cdf.tolist(),
            model._cdf_length.reshape(-1).int().tolist(),
            model._offset.reshape(-1).int().tolist(),
        )

    def check_indexes(self, indexes: torch.Tensor) -> None:
        if indexes.numel() and (int(indexes.min()) < 0 or int(indexes.max()) >= len(self.cdfs)):
            raise ValueError(f"CDF index out of range [0, {len(self.cdfs)})")


class SymbolEncoder:
    """Collect integer symbols (each with the index of its CDF) and flush them as one string."""

    def __init__(self) -> None:
        self._coder = BufferedRansEncoder()
        self.symbols = 0

    def put(self, symbols: torch.Tensor, indexes: torch.Tensor, tables: CdfTables) -> None:
        if symbols.shape != indexes.shape:
            raise ValueError(f"symbols {tuple(symbols.shape)} and indexes {tuple(indexes.shape)} differ in shape")
        tables.check_indexes(indexes)
        self._coder.encode_with_indexes(
            symbols.reshape(-1).int().tolist(),
            indexes.reshape(-1).int().tolist(),
            tables.cdfs,
            tables.lengths,
            tables.offsets,
        )
        self.symbols += symbols.numel()

    def flush(self) -> bytes:
        """The coded string; the encoder is empty again afterwards."""
        data = self._coder.flush()
        self.symbols = 0
        return data


class SymbolDecoder:
    """Read back what a :class:`SymbolEncoder` wrote, call for call, in the same order.

    ``max_symbols``: how many symbols the caller will read at most (it knows from the stream's
    geometry); it sizes the zero padding and is enforced.
    """

    def __init__(self, data: bytes, max_symbols: int) -> None:
        self._coder = RansDecoder()
        pad = _PAD_BYTES_FIXED + _PAD_BYTES_PER_SYMBOL * max_symbols + _PAD_BYTES_PER_PAYLOAD_BYTE * len(data)
        self._coder.set_stream(bytes(data) + bytes(pad))
        self._left = max_symbols

    def get(self, indexes: torch.Tensor, tables: CdfTables) -> torch.Tensor:
        """Symbols shaped like ``indexes`` (int32, on the CPU)."""
        count = indexes.numel()
        if count > self._left:
            raise ValueError(f"reading {count} symbols, only {self._left} were announced")
        tables.check_indexes(indexes)
        values = self._coder.decode_stream(indexes.reshape(-1).int().tolist(), tables.cdfs, tables.lengths, tables.offsets)
        self._left -= count
        return torch.tensor(values, dtype=torch.int32).reshape(indexes.shape)
