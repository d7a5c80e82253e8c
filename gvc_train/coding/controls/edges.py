"""The ``edges`` coder: binary edge maps, lossless, context-adaptive binary arithmetic coding.

Layout in and out: ``torch.bool T x h x w`` (``LAYOUTS["edges"]``).

A raster JBIG template (the causal pixels left of and above each one) needs the bit to its
left before it can code the next: one entropy-coder call per pixel, ~1 s a 640x272 frame in
Python. Here a frame is an **OR-pyramid** instead (each level's pixel is the OR of a 2 x 2 block
of the level below, up to 1 x 1), coded top down; every level's pixels are coded in four
phases -- the child at (0, 0) of every block, then (0, 1), (1, 0), (1, 1) -- each phase one
vectorized call for the whole frame:

- a child of a clear parent is clear: not coded (edge maps are sparse: bikes codes ~5% of its
  pixels); the last child of a set parent whose other three are clear is set: not coded;
- each coded bit's JBIG-like context: the children coded before it around it (none, 2, 4 or
  all 8 neighbours by phase), its parent's 8 (first phase) or 4 neighbours, and with
  ``temporal`` (default) 2 bits of the previous frame's same level: the pixel at the same
  place and whether any of its 8 neighbours is set (edges move by a pixel or two). Up to
  14 bits, one table per phase and level (0, 1, coarser).

The counts are adaptive (:class:`~gvc_train.coding.controls.adaptive.BinaryContexts`, KT
estimates, nothing sent) and carried from frame to frame. Measured (16 frames, Canny 100/200):
carphone 176x144 5.3 kbit a frame, bikes 640x272 1.9 kbit; a raster 10-pixel JBIG template
with the same temporal bits would be ~20% (carphone) and ~30% (bikes) smaller, at a pixel per
coder call.

Payload (:mod:`~gvc_train.coding.controls.payload`): ``b"E1"``, CRC, frames, height, width,
temporal (0/1) as varints, then the entropy-coded bits. Bits: ``8 * len(payload)``.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import numpy as np
import torch

from gvc_train.coding.categorical import CategoricalDecoder, CategoricalEncoder
from gvc_train.coding.container import BitstreamError
from gvc_train.coding.controls.adaptive import BinaryContexts, ContextCoder
from gvc_train.coding.controls.payload import PayloadReader, seal
from gvc_train.coding.controls.registry import ControlCoder, register_coder

_TAG = b"E1"


@register_coder("edges")
class EdgesCoder(ControlCoder):
    """Lossless. ``temporal``: the previous frame's map in the context (2 bits)."""

    lossless = True

    def __init__(self, temporal: bool = True) -> None:
        self.temporal = bool(temporal)

    def encode(self, control: Any) -> bytes:
        if not isinstance(control, torch.Tensor) or control.dtype != torch.bool or control.dim() != 3:
            raise ValueError(f"edges must be a torch.bool T x h x w tensor, got {getattr(control, 'dtype', type(control))} "
                             f"{tuple(getattr(control, 'shape', ()))}")
        frames, height, width = control.shape
        if height < 1 or width < 1:
            raise ValueError(f"edge maps need a positive size, got {height} x {width}")
        maps = control.detach().cpu().numpy().astype(np.uint8).reshape(frames, height * width)
        encoder = CategoricalEncoder()
        _code_maps(ContextCoder(encoder=encoder), maps, height, width, self.temporal)
        return seal(_TAG, [frames, height, width, int(self.temporal)], encoder.finish())

    def decode(self, data: bytes) -> torch.Tensor:
        reader = PayloadReader(data, _TAG, "edges")
        frames, height, width = reader.shape("height", "width")
        temporal = bool(reader.field("temporal", 0, 1))
        if temporal != self.temporal:
            raise BitstreamError(f"edges payload was coded with temporal={temporal}, this coder has temporal={self.temporal}")
        decoder = CategoricalDecoder(reader.body())
        maps = np.zeros((frames, height * width), dtype=np.uint8)
        _code_maps(ContextCoder(decoder=decoder), maps, height, width, temporal)
        decoder.finish()
        return torch.from_numpy(maps.reshape(frames, height, width).astype(bool))


# The four children of a block, in coding order, and the fine-level neighbours (dy, dx) each one
# reads: only children coded before it (in its block or the blocks right of and below it).
_CHILDREN = (
    ("A", (0, 0), ()),
    ("B", (0, 1), ((0, -1), (0, 1))),
    ("C", (1, 0), ((-1, 0), (-1, 1), (1, 0), (1, 1))),
    ("D", (1, 1), ((-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1))),
)
_PARENT_8 = ((-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1))
_PARENT_4 = ((-1, 0), (0, -1), (0, 1), (1, 0))


@dataclasses.dataclass(frozen=True, eq=False)  # holds arrays: compared and hashed by identity
class _ChildPhase:
    """One child position of every block of a level: flat indexes into the level's padded map
    (``child``) and into the parent level's (``parent``), the neighbours' flat offsets."""

    kind: str
    row: int  # the padded level's row length
    child: np.ndarray
    parent: np.ndarray
    fine_offsets: tuple[int, ...]
    parent_offsets: tuple[int, ...]


def _sizes(height: int, width: int) -> list[tuple[int, int]]:
    """The OR-pyramid's level sizes, the frame's first, halved (rounding up) down to 1 x 1."""
    sizes = [(height, width)]
    while sizes[-1] != (1, 1):
        h, w = sizes[-1]
        sizes.append(((h + 1) // 2, (w + 1) // 2))
    return sizes


@functools.lru_cache(maxsize=16)
def _plan(height: int, width: int) -> tuple[tuple[_ChildPhase, ...], ...]:
    """For each level below the top, its four child phases (positions inside the level only)."""
    sizes = _sizes(height, width)
    plan = []
    for (h, w), (ph, pw) in zip(sizes[:-1], sizes[1:]):
        row, parent_row = w + 2, pw + 2
        level = []
        for kind, (oy, ox), fine in _CHILDREN:
            ys, xs = np.meshgrid(np.arange(oy, h, 2), np.arange(ox, w, 2), indexing="ij")
            ys, xs = ys.reshape(-1), xs.reshape(-1)
            child = (ys + 1) * row + xs + 1
            parent = (ys // 2 + 1) * parent_row + xs // 2 + 1
            parents = _PARENT_8 if kind == "A" else _PARENT_4
            level.append(_ChildPhase(kind, row, child, parent, tuple(dy * row + dx for dy, dx in fine),
                                     tuple(dy * parent_row + dx for dy, dx in parents)))
        plan.append(tuple(level))
    return tuple(plan)


def _padded(height: int, width: int) -> list[np.ndarray]:
    """Zeroed maps of every level with a 1-pixel border (neighbours outside read 0), flat."""
    return [np.zeros((h + 2) * (w + 2), dtype=np.uint8) for h, w in _sizes(height, width)]


def _fill_pyramid(levels: list[np.ndarray], frame: np.ndarray, height: int, width: int) -> None:
    """The encoder's pyramid of ``frame``: each level the OR of 2 x 2 blocks of the one below."""
    below = frame.reshape(height, width)
    for level, (h, w) in zip(levels, _sizes(height, width)):
        if level is not levels[0]:
            padded = np.pad(below, ((0, below.shape[0] % 2), (0, below.shape[1] % 2)))
            below = padded[0::2, 0::2] | padded[0::2, 1::2] | padded[1::2, 0::2] | padded[1::2, 1::2]
        level.reshape(h + 2, w + 2)[1:-1, 1:-1] = below


def _around(level: np.ndarray, height: int, width: int) -> np.ndarray:
    """Whether any of each pixel's 8 neighbours is set, in the same padded flat layout."""
    image = level.reshape(height + 2, width + 2)
    out = np.zeros_like(image)
    for dy in (0, 1, 2):
        for dx in (0, 1, 2):
            if dy != 1 or dx != 1:
                out[1:-1, 1:-1] |= image[dy:dy + height, dx:dx + width]
    return out.reshape(-1)


def _bits(level: np.ndarray, where: np.ndarray, offsets: tuple[int, ...], context: np.ndarray, shift: int) -> int:
    """ORs the values at ``where + offset`` into ``context`` from bit ``shift`` on; the next free bit."""
    for k, offset in enumerate(offsets):
        context |= level[where + offset].astype(np.int64) << (shift + k)
    return shift + len(offsets)


def _code_maps(coder: ContextCoder, maps: np.ndarray, height: int, width: int, temporal: bool) -> None:
    """Codes or decodes (into ``maps``, ``T x h*w`` uint8) every frame, in order (module docstring)."""
    sizes = _sizes(height, width)
    plan = _plan(height, width)
    models: dict[tuple[int, str], BinaryContexts] = {}
    previous = _padded(height, width)
    around = previous
    for frame in maps:
        levels = _padded(height, width)
        if coder.encoding:
            _fill_pyramid(levels, frame, height, width)
        top = levels[-1]
        top_context = np.array([int(previous[-1][4]) if temporal else 0])  # the 1 x 1 top's pixel, padded: index 4
        top[4] = coder.code(models.setdefault((-1, "top"), BinaryContexts(2)), top_context, top[4:5])[0]
        for index in range(len(plan) - 1, -1, -1):
            fine, parent_level = levels[index], levels[index + 1]
            for phase in plan[index]:
                chosen = parent_level[phase.parent] == 1  # a clear parent's children are clear: not coded
                child, parent = phase.child[chosen], phase.parent[chosen]
                if phase.kind == "D":  # a set parent whose A, B, C are clear has D set: not coded
                    row = phase.row
                    forced = (fine[child - row - 1] | fine[child - row] | fine[child - 1]) == 0
                    fine[child[forced]] = 1
                    child, parent = child[~forced], parent[~forced]
                context = np.zeros(len(child), dtype=np.int64)
                shift = _bits(fine, child, phase.fine_offsets, context, 0)
                shift = _bits(parent_level, parent, phase.parent_offsets, context, shift)
                if temporal:
                    context |= (previous[index][child].astype(np.int64) + 2 * around[index][child]) << shift
                    shift += 2
                model = models.setdefault((min(index, 2), phase.kind), BinaryContexts(1 << shift))
                fine[child] = coder.code(model, context, fine[child])
        frame[:] = levels[0].reshape(height + 2, width + 2)[1:-1, 1:-1].reshape(-1)
        if temporal:
            previous = levels
            around = [_around(level, h, w) for level, (h, w) in zip(levels, sizes)]
