"""The ``segmentation`` coder: label maps, lossless (or at ``1 / factor`` of the resolution).

Layout in and out: ``torch.uint8 T x h x w``, labels ``0 .. classes - 1``
(``LAYOUTS["segmentation"]``). The labels are coded coarse to fine, each pixel predicted by a
vote of its known neighbours and the previous frame and coded as "the prediction" or not under
adaptive binary contexts (:mod:`~gvc_train.coding.controls.label_maps`); inside a region a
label costs next to nothing, so the bits go to the boundaries and to where they moved.

``factor`` (default 1: lossless) codes the maps at ``1 / factor`` of their size: each
``factor x factor`` block (smaller at the right and bottom edges) becomes its most common label
(the lowest on ties), and decoding repeats it over the block (nearest). Every decoded label is
then one found in the pixel's own block: a boundary moves by less than ``factor`` pixels, and a
region that is nowhere a block's majority (thinner than about ``factor / 2``) disappears.

Measured (16 frames, mediapipe's selfie segmentation of carphone at 176 x 144): 393 bits a
frame lossless (zlib -9: 1,988; its packed bits under zlib: 1,284; PNG: 3,794), 501 without
the previous frame; ``factor`` 2: 171 bits, 0.6% of the labels wrong, none farther than 1
pixel from its label in the input; ``factor`` 4: 87 bits, 1.3%, 2 pixels. Bikes' maps are
empty (the selfie model finds no one): 7 bits a frame, the payload's head.

Payload (:mod:`~gvc_train.coding.controls.payload`): ``b"S1"``, CRC, frames, height, width,
factor, classes (the largest label + 1), temporal (0/1) as varints, then the entropy-coded
labels. Bits: ``8 * len(payload)``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from gvc_train.coding.categorical import CategoricalDecoder, CategoricalEncoder
from gvc_train.coding.container import BitstreamError
from gvc_train.coding.controls.adaptive import ContextCoder
from gvc_train.coding.controls.label_maps import MAX_CLASSES, code_label_maps
from gvc_train.coding.controls.payload import PayloadReader, seal
from gvc_train.coding.controls.registry import ControlCoder, register_coder

_TAG = b"S1"
MAX_FACTOR = 64


def coded_size(height: int, width: int, factor: int) -> tuple[int, int]:
    """The coded grid: one label per ``factor x factor`` block, partial blocks included."""
    return -(-height // factor), -(-width // factor)


def block_modes(maps_Thw: np.ndarray, factor: int, classes: int) -> np.ndarray:
    """Each ``factor x factor`` block's most common label (the lowest on ties; a partial block
    counts its pixels only): ``T x h' x w'`` (:func:`coded_size`). Sorted blocks and run
    lengths: memory of the input's size, whatever the number of classes."""
    frames, height, width = maps_Thw.shape
    h, w = coded_size(height, width, factor)
    # a sentinel label (classes: sorts last) pads the partial blocks and is never chosen
    padded = np.full((frames, h * factor, w * factor), classes, dtype=np.int64)
    padded[:, :height, :width] = maps_Thw
    blocks = np.sort(padded.reshape(frames, h, factor, w, factor).transpose(0, 1, 3, 2, 4).reshape(-1, factor * factor))
    position = np.arange(factor * factor)
    starts = np.ones(blocks.shape, dtype=bool)
    starts[:, 1:] = blocks[:, 1:] != blocks[:, :-1]
    run_start = np.maximum.accumulate(np.where(starts, position, 0), axis=1)
    run_length = np.where(blocks < classes, position - run_start + 1, 0)  # so far into each run
    # the first position to reach the longest run is in the lowest label of that length (sorted)
    modes = blocks[np.arange(len(blocks)), run_length.argmax(1)]
    return modes.reshape(frames, h, w)


@register_coder("segmentation")
class SegmentationCoder(ControlCoder):
    """Lossless at ``factor = 1``; else every decoded label is its ``factor x factor`` block's
    most common one (module docstring). ``temporal``: the previous frame in the context."""

    def __init__(self, factor: int = 1, temporal: bool = True) -> None:
        if not isinstance(factor, int) or isinstance(factor, bool) or not 1 <= factor <= MAX_FACTOR:
            raise ValueError(f"segmentation coder: factor must be an integer in [1, {MAX_FACTOR}], got {factor!r}")
        self.factor = factor
        self.temporal = bool(temporal)
        self.lossless = factor == 1

    def encode(self, control: Any) -> bytes:
        if not isinstance(control, torch.Tensor) or control.dtype != torch.uint8 or control.dim() != 3:
            raise ValueError(f"segmentation must be a torch.uint8 T x h x w tensor, got "
                             f"{getattr(control, 'dtype', type(control))} {tuple(getattr(control, 'shape', ()))}")
        frames, height, width = control.shape
        if height < 1 or width < 1:
            raise ValueError(f"segmentation needs a positive size, got {height} x {width}")
        maps = control.detach().cpu().numpy().astype(np.int64)
        classes = int(maps.max()) + 1 if maps.size else 1
        if self.factor > 1:
            maps = block_modes(maps, self.factor, classes)
        h, w = maps.shape[1:]
        maps = maps.reshape(frames, h * w)
        encoder = CategoricalEncoder()
        code_label_maps(ContextCoder(encoder=encoder), maps, h, w, classes, self.temporal)
        return seal(_TAG, [frames, height, width, self.factor, classes, int(self.temporal)], encoder.finish())

    def decode(self, data: bytes) -> torch.Tensor:
        reader = PayloadReader(data, _TAG, "segmentation")
        frames, height, width = reader.shape("height", "width")
        factor = reader.field("factor", 1, MAX_FACTOR)
        classes = reader.field("classes", 1, MAX_CLASSES)
        temporal = bool(reader.field("temporal", 0, 1))
        if (factor, temporal) != (self.factor, self.temporal):
            raise BitstreamError(f"segmentation payload was coded with factor={factor}, temporal={temporal}; this coder "
                                 f"has factor={self.factor}, temporal={self.temporal}")
        h, w = coded_size(height, width, factor)
        decoder = CategoricalDecoder(reader.body())
        labels = np.zeros((frames, h * w), dtype=np.uint8)
        code_label_maps(ContextCoder(decoder=decoder), labels, h, w, classes, temporal)
        decoder.finish()
        labels = labels.reshape(frames, h, w)
        if factor > 1:
            labels = labels.repeat(factor, axis=1).repeat(factor, axis=2)[:, :height, :width]
        return torch.from_numpy(np.ascontiguousarray(labels))
