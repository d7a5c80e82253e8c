"""The interlaced (hierarchical) pixel order the luma and flow coders code an image in.

A raster-order context coder decodes one pixel at a time (its left neighbour is its context),
which in Python is ~1 s per 640x272 frame. Here a frame is coded coarse to fine instead, in
phases whose pixels are decoded all at once (one vectorized entropy-coder call per phase), each
phase's context taken only from pixels of earlier phases, which surround it on every side:

- the base: pixel (0, 0), the one pixel of the coarsest lattice (its step ``2^L`` >= both sides);
- then for each step ``s = 2^(L-1), ..., 2, 1`` three phases complete the lattice of step ``s``
  from the known lattice of step ``2s``: **B** = (even, odd), **C** = (odd, even),
  **D** = (odd, odd) in units of ``s`` (even = a multiple of ``2s``).

Known before a phase: the lattice of step ``2s``; before C also B (every even row at step
``s``); before D also C. A neighbour is an offset ``(dy, dx)`` in units of ``s`` that lands on
a known pixel (:data:`TEMPLATES` lists the ones the coders use). At the image border an offset
is reflected (``y - dy*s`` instead of ``y + dy*s``: the same lattice parity) and then clamped
to the last in-range coordinate of that parity, so every neighbour index is a known pixel.

About ``3 log2(max(h, w))`` phases a frame (30 at 640x272): each phase is one numpy gather and
one entropy-coder call, a few milliseconds a frame in all.
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np

# Neighbour offsets (dy, dx) in units of the phase's step s, every one on a known pixel (module
# docstring): the nearest ones of each phase kind. B: the two horizontal lattice neighbours,
# then farther ones; C: the vertical ones first; D: its full 8-neighbourhood. A coder reads any
# of them (predictive.py's pairs of opposite neighbours; a test checks they are these).
TEMPLATES: dict[str, tuple[tuple[int, int], ...]] = {
    "B": ((0, -1), (0, 1), (-2, -1), (-2, 1), (2, -1), (2, 1), (0, -3), (0, 3)),
    "C": ((-1, 0), (1, 0), (-1, -1), (-1, 1), (1, -1), (1, 1), (-3, 0), (3, 0)),
    "D": ((0, -1), (0, 1), (-1, 0), (1, 0), (-1, -1), (-1, 1), (1, -1), (1, 1)),
}
PHASE_KINDS = ("B", "C", "D")


@dataclasses.dataclass(frozen=True, eq=False)  # hashed by identity: phases are cached
class Phase:
    """One phase: ``level`` (step ``s = 2^level``), ``kind`` ("base", "B", "C" or "D"), the
    flat indexes (``y * w + x``, raster order) of its pixels, and the same pixels' (y, x)."""

    level: int
    kind: str
    index: np.ndarray
    ys: np.ndarray
    xs: np.ndarray
    height: int
    width: int

    @property
    def step(self) -> int:
        return 1 << self.level

    def neighbours(self, offsets: tuple[tuple[int, int], ...]) -> np.ndarray:
        """``K x N`` flat indexes of the pixels at ``offsets`` (units of the step; row k is
        offset k of every pixel), every one known when this phase is coded (module docstring);
        cached per offsets."""
        return _neighbours(self, offsets)


def levels(height: int, width: int) -> int:
    """The coarsest level L: ``2^L >= max(height, width)``, so its lattice is pixel (0, 0) alone."""
    return max(0, (max(height, width) - 1).bit_length())


@functools.lru_cache(maxsize=32)
def phases(height: int, width: int) -> tuple[Phase, ...]:
    """Every phase of an ``height x width`` image in coding order (empty phases left out): every
    pixel is in exactly one. Cached (read-only arrays)."""
    if height < 1 or width < 1:
        raise ValueError(f"an interlaced image needs a positive size, got {height} x {width}")
    top = levels(height, width)
    found = [_phase(top, "base", np.array([0]), np.array([0]), height, width)]
    for level in range(top - 1, -1, -1):
        s = 1 << level
        even_y, odd_y = np.arange(0, height, 2 * s), np.arange(s, height, 2 * s)
        even_x, odd_x = np.arange(0, width, 2 * s), np.arange(s, width, 2 * s)
        for kind, (rows, cols) in zip(PHASE_KINDS, ((even_y, odd_x), (odd_y, even_x), (odd_y, odd_x))):
            if len(rows) and len(cols):
                ys, xs = np.meshgrid(rows, cols, indexing="ij")
                found.append(_phase(level, kind, ys.reshape(-1), xs.reshape(-1), height, width))
    return tuple(found)


def _phase(level: int, kind: str, ys: np.ndarray, xs: np.ndarray, height: int, width: int) -> Phase:
    ys, xs = ys.astype(np.int64), xs.astype(np.int64)
    index = ys * width + xs
    for a in (index, ys, xs):
        a.setflags(write=False)
    return Phase(level, kind, index, ys, xs, height, width)


def _coordinate(c: np.ndarray, d: int, s: int, size: int) -> np.ndarray:
    """``c + d*s``, reflected (``c - d*s``) where that leaves ``[0, size)``, then clamped to the
    in-range coordinates of its lattice parity (multiples of ``s``, odd or even in units of
    ``s``; the other parity where that one has none): a known pixel's coordinate."""
    out = c + d * s
    outside = (out < 0) | (out >= size)
    out = np.where(outside, c - d * s, out)
    last = (size - 1) // s * s  # the last multiple of s in range
    parity = (out // s) & 1
    # the last in-range multiple of s of each parity (units of s): last, or last - s
    last_same = np.where(((last // s) & 1) == parity, last, last - s)
    first_same = parity * s
    has_same = first_same <= last_same
    clamped = np.clip(out, first_same, np.maximum(last_same, first_same))
    return np.where(has_same, clamped, np.clip(out, 0, last))


@functools.lru_cache(maxsize=512)
def _neighbours(phase: Phase, offsets: tuple[tuple[int, int], ...]) -> np.ndarray:
    s = phase.step
    columns = []
    for dy, dx in offsets:
        y = _coordinate(phase.ys, dy, s, phase.height) if dy else phase.ys
        x = _coordinate(phase.xs, dx, s, phase.width) if dx else phase.xs
        columns.append(y * phase.width + x)
    out = np.stack(columns) if columns else np.zeros((0, len(phase.index)), dtype=np.int64)
    out.setflags(write=False)
    return out
