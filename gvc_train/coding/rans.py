"""One rANS stream for many entropy-model calls: compressai's coder, without one string per tensor.

compressai's ``EntropyModel.compress`` returns one string per batch element and per call, and
every string pays the coder's flush (8 bytes). A latent codec codes two tensors per latent frame
(hyperprior z, latent y), which at 0.01 bpp would cost ~10% in flushes alone. Here one
:class:`SymbolEncoder` collects the symbols of any number of calls, possibly with different
entropy models, and flushes once; :class:`SymbolDecoder` reads them back in the same order.
(compressai's ``BufferedRansEncoder`` keeps rANS's last-in-first-out order internal.)

The CDF tables are the entropy models' own (``update()`` builds them and ``state_dict`` keeps
them), turned into Python lists once per model by :class:`CdfTables`, not once per call.

Only compressai's ``ans`` extension is loaded, by file (:func:`_ans`): ``import compressai.ans``
would run compressai's package ``__init__``, which imports torch_geometric, transformers, scipy
and pandas (+290 MB and ~4 s before ``gvc decode`` reads a byte).

The decoder is given the stream padded with zeros: compressai's decoder reads the stream
without bounds checks, and a stream that passed its CRC but was made inconsistent on purpose
(or by a bug) must make it decode garbage, never read past the buffer.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
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


def _ans() -> ModuleType:
    """compressai's ``ans`` extension module without compressai's package ``__init__``.

    It is registered as ``sys.modules["compressai.ans"]``, so a later real ``import compressai``
    (training, encoding) reuses this very module and its pybind types stay one set: compressai
    reaches it as ``from compressai import ans`` and ``from compressai.ans import ...``, which
    read ``sys.modules``. (The package attribute ``compressai.ans`` is set only when the package
    was imported first: Python sets it when it loads the submodule itself.) When the extension
    file cannot be found (another packaging of compressai), the ordinary import.
    """
    if (loaded := sys.modules.get("compressai.ans")) is not None:
        return loaded
    spec = importlib.util.find_spec("compressai")  # locates the package, runs nothing
    folders = spec.submodule_search_locations if spec is not None else None
    found = sorted(p for folder in folders or () for p in Path(folder).glob("ans.*") if p.suffix in (".so", ".pyd"))
    if not found:
        import compressai.ans

        return compressai.ans
    ans_spec = importlib.util.spec_from_file_location("compressai.ans", found[0])
    if ans_spec is None or ans_spec.loader is None:
        import compressai.ans

        return compressai.ans
    module = importlib.util.module_from_spec(ans_spec)
    sys.modules["compressai.ans"] = module
    try:
        ans_spec.loader.exec_module(module)
    except BaseException:
        del sys.modules["compressai.ans"]
        raise
    if (package := sys.modules.get("compressai")) is not None:
        package.ans = module
    return module


_ANS = _ans()
BufferedRansEncoder, RansDecoder = _ANS.BufferedRansEncoder, _ANS.RansDecoder


@dataclasses.dataclass(frozen=True)
class CdfTables:
    """An entropy model's quantized CDFs as the lists compressai's coder takes."""

    cdfs: list[list[int]]
    lengths: list[int]
    offsets: list[int]

    @classmethod
    def of(cls, model: "EntropyModel | Any") -> "CdfTables":
        """An entropy model's tables (anything with compressai's ``_quantized_cdf``,
        ``_cdf_length`` and ``_offset`` buffers)."""
        return cls.from_buffers(model._quantized_cdf, model._cdf_length, model._offset, type(model).__name__)

    @classmethod
    def from_buffers(
        cls, quantized_cdf: torch.Tensor, cdf_length: torch.Tensor, offset: torch.Tensor, what: str = "entropy model"
    ) -> "CdfTables":
        """The tables from the three buffers as an entropy model's state dict holds them (what a
        decoder needs, without building the compressai module). ValueError when they are empty
        (``update()`` was never called) or do not fit together."""
        if quantized_cdf.numel() == 0 or offset.numel() == 0:
            raise ValueError(f"{what} has no CDF tables: call update() on the codec before coding")
        lengths, offsets = cdf_length.reshape(-1).int().tolist(), offset.reshape(-1).int().tolist()
        if quantized_cdf.dim() != 2 or not len(lengths) == len(offsets) == quantized_cdf.shape[0]:
            raise ValueError(
                f"{what}: CDF tables do not fit together (cdf {list(quantized_cdf.shape)}, "
                f"{len(lengths)} lengths, {len(offsets)} offsets)"
            )
        if any(not 2 <= n <= quantized_cdf.shape[1] for n in lengths):
            raise ValueError(f"{what}: a CDF length is outside 2..{quantized_cdf.shape[1]}")
        return cls(quantized_cdf.tolist(), lengths, offsets)

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
