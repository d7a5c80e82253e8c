"""Seeded Gaussian codebooks whose atoms can be drawn one at a time.

A codebook is ``K`` vectors of ``D`` standard normal values, named by a 64-bit key that both the
encoder and the decoder derive from the stream (:func:`codebook_key`: stream seed, GOP, step,
latent frame). The values come from a **counter-based** generator: value pair ``p`` of atom ``i``
is a pure function of ``(key, i * ceil(D / 2) + p)`` (SplitMix64's mixer on the counter, then
Box-Muller on 24-bit uniforms in float32), so

* the decoder draws only the ``M`` atoms a stream names, ``M x D`` values, not ``K x D``
  (the encoder must score all ``K``; that is where encoding time goes);
* the values do not depend on the thread count (element-wise kernels only; tested) nor on the
  device: atoms are always drawn on the CPU and then moved. Across CPU kinds they are the same
  where torch's float32 ``log``/``sin``/``cos`` kernels are (one build on one ISA: yes; the
  stream's trajectory check refuses a decoder whose arithmetic differs).

The 64-bit arithmetic runs in torch ``int64``, whose multiplication wraps modulo ``2^64`` (two's
complement), which is what SplitMix64 needs; the logical right shift is an arithmetic one masked.
The known-answer values in ``tests/test_noise_codebook.py`` pin the generator.

**Choosing atoms** (:func:`choose_atoms`): the ``M`` atoms with the largest ``|<z_i, r>|`` for
the residual ``r = x0 - x0_hat`` and the signs of those products. **Combining** them
(:func:`combine_atoms`): ``sum_i s_i z_i`` summed in ascending index order, scaled so that its
mean square is 1 (the noise a Gaussian step expects). Encoder and decoder run
:func:`combine_atoms` on the same indices and signs, so they get the same bits.
"""

from __future__ import annotations

import hashlib
import math

import torch

_GAMMA = 0x9E3779B97F4A7C15  # SplitMix64's increment
_MIX1 = 0xBF58476D1CE4E5B9
_MIX2 = 0x94D049BB133111EB
_TWO_PI = 2 * math.pi
_U24 = 1.0 / (1 << 24)
SCORE_CHUNK = 512  # atoms scored at once at most: 512 x D float32 (13 MB at D = 6336)
# Drawing n atoms of D values holds ~16 n D bytes at its peak (the int64 counters and hashes, the
# Box-Muller temporaries): fewer atoms at once for a large latent frame (D = 230,400 at 1280x720:
# 18, where 512 held 2.4 GB). Scoring is the encoder's alone, so the chunk never changes a stream's
# decoding; up to 8,192 values a frame (176x144 at 16 latent channels: 6,336) it stays 512.
SCORE_BYTES = 64 * 2**20


def score_chunk(dim: int) -> int:
    """Atoms :func:`atom_scores` draws at once for latent frames of ``dim`` values."""
    return max(1, min(SCORE_CHUNK, SCORE_BYTES // (16 * dim)))


def _signed(value: int) -> int:
    """An unsigned 64-bit constant as the int64 with the same bits."""
    value &= (1 << 64) - 1
    return value - (1 << 64) if value >= 1 << 63 else value


def _srl(z: torch.Tensor, bits: int) -> torch.Tensor:
    """Logical right shift of int64 bit patterns."""
    return (z >> bits) & ((1 << (64 - bits)) - 1)


def _mix64(z: torch.Tensor) -> torch.Tensor:
    """SplitMix64's output function (Stafford's Mix13) on int64 bit patterns."""
    z = (z ^ _srl(z, 30)) * _signed(_MIX1)
    z = (z ^ _srl(z, 27)) * _signed(_MIX2)
    return z ^ _srl(z, 31)


def codebook_key(seed: int, *names: int | str) -> int:
    """The 64-bit key (as an int64) of one codebook, e.g. ``codebook_key(seed, "atoms", gop,
    step, frame)``; distinct names give independent codebooks."""
    text = "/".join(["gvc-codebook", str(int(seed)), *map(str, names)])
    return _signed(int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big"))


def atoms(key: int, indices: torch.Tensor | list[int], dim: int) -> torch.Tensor:
    """Atoms ``indices`` (int64, ``0 <= i < 2^24``: a codebook's largest size) of the codebook
    ``key``: ``n x dim`` float32 standard normal values, on the CPU."""
    index_n = torch.as_tensor(indices, dtype=torch.int64).reshape(-1)
    pairs = (dim + 1) // 2
    counter_nP = index_n[:, None] * pairs + torch.arange(pairs, dtype=torch.int64)
    h = _mix64(counter_nP * _signed(_GAMMA) + key)
    u1 = (_srl(h, 40).float() + 0.5) * _U24  # (0, 1): log is finite
    angle = (h & 0xFFFFFF).float() * (_U24 * _TWO_PI)
    radius = torch.sqrt(-2.0 * torch.log(u1))
    z_nP2 = torch.stack([radius * torch.cos(angle), radius * torch.sin(angle)], dim=-1)
    return z_nP2.reshape(len(index_n), 2 * pairs)[:, :dim].contiguous()


def gaussian(key: int, shape: tuple[int, ...]) -> torch.Tensor:
    """A float32 standard normal tensor of ``shape`` from key ``key`` (the same generator: one atom of all the values)."""
    return atoms(key, [0], math.prod(shape)).reshape(shape)


def atom_scores(key: int, residual_D: torch.Tensor, codebook_size: int, chunk: int | None = None) -> torch.Tensor:
    """``<z_i, r>`` for every atom of the codebook (float32, ``codebook_size``), drawn ``chunk``
    atoms at a time (default: :func:`score_chunk`)."""
    r = residual_D.detach().float().cpu().reshape(-1)
    chunk = score_chunk(r.numel()) if chunk is None else chunk
    out = torch.empty(codebook_size)
    for start in range(0, codebook_size, chunk):
        stop = min(start + chunk, codebook_size)
        out[start:stop] = atoms(key, torch.arange(start, stop), r.numel()) @ r
    return out


def choose_atoms(key: int, residual_D: torch.Tensor, codebook_size: int, count: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``count`` atoms that best point along ``residual_D``: ``(indices, positive)``, indices
    ascending (int64), ``positive`` True where the atom enters with sign +1."""
    if not 1 <= count <= codebook_size:
        raise ValueError(f"atoms per step must be in 1..{codebook_size} (the codebook size), got {count}")
    scores = atom_scores(key, residual_D, codebook_size)
    chosen = torch.topk(scores.abs(), count, sorted=False).indices.sort().values
    return chosen, scores[chosen] >= 0


def combine_atoms(key: int, indices: torch.Tensor, positive: torch.Tensor, dim: int) -> torch.Tensor:
    """``sum_i s_i z_i`` over the given atoms, summed in the order given (ascending), scaled to a
    mean square of 1: float32 ``dim``. Element-wise only, so the same bits at any thread count."""
    noise = torch.zeros(dim)
    signs = positive.tolist()
    for start in range(0, len(signs), SCORE_CHUNK):  # drawn a chunk at a time: memory is one chunk
        z = atoms(key, indices[start : start + SCORE_CHUNK], dim)
        for row, plus in zip(z, signs[start : start + SCORE_CHUNK]):
            noise = noise + row if plus else noise - row
    # Mean square 1, the per-element variance a Gaussian step's noise has. Sum of squares in float64
    # by a Python loop over fixed blocks: a torch reduction may split by threads.
    square = noise.double().square()
    total = 0.0
    for block in square.split(4096):
        total += float(block.sum())
    return noise * float(math.sqrt(dim / total)) if total > 0 else noise
