"""The ``luma`` coder: low-resolution luma, lossless or within ``max_error``, predictive coding.

Layout in and out: ``torch.uint8 T x h x w`` (``LAYOUTS["luma"]``). Every frame is predicted
pixel by pixel, coarse to fine, from its known neighbours and (``temporal``, default) the
previous frame, and the residuals are coded under adaptive per-class tables
(:mod:`~gvc_train.coding.controls.predictive`). ``max_error = 0`` (default) is lossless;
``max_error = d`` keeps every pixel within ``d`` of its value (JPEG-LS's near-lossless mode:
fewer, coarser residuals).

Payload (:mod:`~gvc_train.coding.controls.payload`): ``b"L1"``, CRC, frames, height, width,
max_error, temporal (0/1) as varints, then the entropy-coded residuals. Bits: ``8 * len(payload)``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from gvc_train.coding.categorical import CategoricalDecoder, CategoricalEncoder
from gvc_train.coding.container import BitstreamError
from gvc_train.coding.controls.adaptive import ContextCoder
from gvc_train.coding.controls.payload import PayloadReader, seal
from gvc_train.coding.controls.predictive import code_images
from gvc_train.coding.controls.registry import ControlCoder, register_coder

_TAG = b"L1"
MAX_ERROR = 64


@register_coder("luma")
class LumaCoder(ControlCoder):
    """Lossless at ``max_error = 0``; else every decoded pixel is within ``max_error`` of the
    coded one. ``temporal``: predict from the previous frame too."""

    def __init__(self, max_error: int = 0, temporal: bool = True) -> None:
        if not isinstance(max_error, int) or not 0 <= max_error <= MAX_ERROR:
            raise ValueError(f"luma max_error must be an integer in [0, {MAX_ERROR}], got {max_error!r}")
        self.max_error = max_error
        self.temporal = bool(temporal)
        self.lossless = max_error == 0

    def encode(self, control: Any) -> bytes:
        if not isinstance(control, torch.Tensor) or control.dtype != torch.uint8 or control.dim() != 3:
            raise ValueError(f"luma must be a torch.uint8 T x h x w tensor, got {getattr(control, 'dtype', type(control))} "
                             f"{tuple(getattr(control, 'shape', ()))}")
        frames, height, width = control.shape
        if height < 1 or width < 1:
            raise ValueError(f"luma needs a positive size, got {height} x {width}")
        images = control.detach().cpu().numpy().astype(np.int64).reshape(frames, 1, height * width)
        encoder = CategoricalEncoder()
        code_images(ContextCoder(encoder=encoder), images, height, width, 255, self.max_error, self.temporal)
        return seal(_TAG, [frames, height, width, self.max_error, int(self.temporal)], encoder.finish())

    def decode(self, data: bytes) -> torch.Tensor:
        reader = PayloadReader(data, _TAG, "luma")
        frames, height, width = reader.shape("height", "width")
        max_error = reader.field("max_error", 0, MAX_ERROR)
        temporal = bool(reader.field("temporal", 0, 1))
        if (max_error, temporal) != (self.max_error, self.temporal):
            raise BitstreamError(f"luma payload was coded with max_error={max_error}, temporal={temporal}; this coder has "
                                 f"max_error={self.max_error}, temporal={self.temporal}")
        decoder = CategoricalDecoder(reader.body())
        images = np.zeros((frames, 1, height * width), dtype=np.int64)
        code_images(ContextCoder(decoder=decoder), images, height, width, 255, max_error, temporal)
        decoder.finish()
        return torch.from_numpy(images.reshape(frames, height, width).astype(np.uint8))
