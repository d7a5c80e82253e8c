"""Predictive coding of integer images (luma, quantized flow): lossless or near-lossless.

Each frame is coded in the interlaced order of :mod:`~gvc_train.coding.controls.interlace`
(every phase one vectorized call), each pixel predicted from pixels known on both sides of it
by three predictors:

- **spatial**: the mean of the pair of opposite known neighbours that differ least (an
  edge-directed interpolation: along an edge, not across it);
- **previous**: the previous frame's pixel (exact where nothing changed);
- **moved**: the previous frame's pixel plus the mean change its known neighbours saw since.

Every coded pixel keeps each predictor's absolute error; a predictor's *local error* at a new
pixel is the sum of its errors at the pixel's known neighbours (coded earlier in this frame).
The prediction blends the three by inverse squared local error (``w = 2^30 // (e + 1)^2``), so
the one that did best around the pixel dominates (the previous pixel in carphone's still
background, spatial where bikes pans), and the residual's **context class** is the blended local
error on a half-octave scale (:data:`CLASS_EDGES`): small where the prediction is sure. The
first frame (or ``temporal=False``) has the spatial predictor alone.

Residuals are JPEG-LS's near-lossless ones: ``q = sign(e) floor((|e| + d) / (2d + 1))`` for
``max_error = d`` (``d = 0``: lossless), reduced modulo the range ``R`` so every value costs one
symbol of ``R``; the reconstruction is within ``d`` of the value (``0 <= x <= maxval``). The
symbol (zigzag: 0, -1, 1, -2, ...) is coded under its class's adaptive table
(:class:`~gvc_train.coding.controls.adaptive.ClassCategorical`, 19 classes, at most
:data:`MAX_SYMBOLS` symbols; a larger range sends the excess as uniform bits after an escape).
All arithmetic is integer numpy: both sides compute the same predictions on any machine.
"""

from __future__ import annotations

import functools

import numpy as np

from gvc_train.coding.controls.adaptive import ClassCategorical, ContextCoder
from gvc_train.coding.controls.interlace import Phase, phases

# Residual symbols with a table of their own; larger ones are an escape plus uniform bits. 64
# decodes luma and flow ~2x faster than 256 (tables are per symbol) for 0.1% more bits with
# the previous frame (2% on a first frame alone).
MAX_SYMBOLS = 64
_PREDICTORS = 3  # spatial, the previous pixel, the previous pixel moved by its neighbours' change
# Class k holds uncertainties in [CLASS_EDGES[k - 1], CLASS_EDGES[k]): half octaves.
CLASS_EDGES = np.array([1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512], dtype=np.int64)
CLASSES = len(CLASS_EDGES) + 1

# Per phase kind: pairs of opposite known neighbours (interlace.TEMPLATES offsets, units of the step).
_PAIRS: dict[str, tuple[tuple[tuple[int, int], tuple[int, int]], ...]] = {
    "B": (((0, -1), (0, 1)), ((-2, -1), (2, 1)), ((-2, 1), (2, -1))),
    "C": (((-1, 0), (1, 0)), ((-1, -1), (1, 1)), ((-1, 1), (1, -1))),
    "D": (((0, -1), (0, 1)), ((-1, 0), (1, 0)), ((-1, -1), (1, 1)), ((-1, 1), (1, -1))),
}


def value_range(maxval: int, max_error: int) -> int:
    """``R``: how many quantized residuals a value in ``[0, maxval]`` needs (JPEG-LS's RANGE)."""
    return (maxval + 2 * max_error) // (2 * max_error + 1) + 1


class _Prediction:
    """Predictions and context classes of one phase's pixels (module docstring).

    ``errors``: ``K x h*w`` absolute errors of the K predictors at the pixels coded so far in
    this frame; a predictor's local error is its sum over the pixel's known neighbours.
    """

    def __init__(self, phase: _Planes, current: np.ndarray, previous: np.ndarray | None, errors: np.ndarray,
                 maxval: int) -> None:
        n = len(phase.index)
        self.index = phase.index
        if phase.kind == "base":
            spatial = np.full(n, maxval // 2, dtype=np.int64)
            self.candidates = np.stack([spatial] + ([previous[phase.index]] * 2 if previous is not None else []))
            self.value = self.candidates[-1]
            self.uncertainty = np.full(n, maxval // 4 if previous is None else 0, dtype=np.int64)
            return
        pairs = _PAIRS[phase.kind]
        offsets = tuple(o for pair in pairs for o in pair)
        neighbours = phase.neighbours(offsets)
        now = current[neighbours].reshape(len(pairs), 2, n)
        difference = np.abs(now[:, 0] - now[:, 1])
        best = difference.argmin(0)  # the first of equal pairs
        columns = np.arange(n)
        spatial = (now[best, 0, columns] + now[best, 1, columns] + 1) >> 1
        if previous is None:
            self.candidates = spatial[None]
        else:
            change = (now - previous[neighbours].reshape(len(pairs), 2, n)).sum((0, 1))
            k = 2 * len(pairs)
            moved = np.clip(previous[phase.index] + np.floor_divide(change + k // 2, k), 0, maxval)
            self.candidates = np.stack([spatial, previous[phase.index], moved])
        local = errors[: len(self.candidates)][:, neighbours].sum(1)  # K x N, over the known neighbours
        weight = np.maximum((1 << 30) // (local + 1) ** 2, 1)  # >= 1: flow's errors may pass 2^15
        self.value = ((self.candidates * weight).sum(0) + weight.sum(0) // 2) // weight.sum(0)
        # the blended local error summed over 8 neighbours (B and C have 6: scaled up)
        self.uncertainty = (local * weight).sum(0) * 8 // (weight.sum(0) * 2 * len(pairs))

    def learn(self, errors: np.ndarray, values: np.ndarray) -> None:
        """Record each predictor's error at these pixels (for the phases after)."""
        errors[: len(self.candidates), self.index] = np.abs(self.candidates - values)

    def classes(self) -> np.ndarray:
        return np.searchsorted(CLASS_EDGES, self.uncertainty, side="right")


def _quantize(x: np.ndarray, prediction: np.ndarray, maxval: int, d: int, r: int) -> np.ndarray:
    """The residual symbol (zigzag of the near-lossless residual, reduced modulo ``r``)."""
    e = x - prediction
    q = np.sign(e) * ((np.abs(e) + d) // (2 * d + 1))
    q = (q + r // 2) % r - r // 2  # into [-(r // 2), (r - 1) // 2]
    return np.where(q >= 0, 2 * q, -2 * q - 1)


def _reconstruct(z: np.ndarray, prediction: np.ndarray, maxval: int, d: int, r: int) -> np.ndarray:
    q = np.where(z & 1, -((z + 1) >> 1), z >> 1)
    x = prediction + q * (2 * d + 1)
    x = np.where(x < -d, x + r * (2 * d + 1), np.where(x > maxval + d, x - r * (2 * d + 1), x))
    return np.clip(x, 0, maxval)


def _code_symbols(coder: ContextCoder, model: ClassCategorical, classes: np.ndarray, z: np.ndarray, r: int) -> np.ndarray:
    """Symbols in ``[0, r)``: below ``MAX_SYMBOLS - 1`` directly, the rest as an escape and uniform bits."""
    escape = model.symbols - 1
    head = coder.code(model, classes, np.minimum(z, escape))
    if r <= model.symbols:
        return head
    tail_bits = (r - 1 - escape).bit_length()
    escaped = head == escape
    tail = coder.uniform(z[escaped] - escape if coder.encoding else None, int(escaped.sum()), tail_bits)
    head[escaped] = np.minimum(escape + tail, r - 1)  # a damaged tail stays in range
    return head


class _Planes:
    """A phase of every plane of a frame at once (one coder call for all of them): the flat
    indexes of ``P`` planes of ``h*w`` pixels laid end to end, plane ``p`` offset by ``p*h*w``."""

    def __init__(self, phase: Phase, planes: int) -> None:
        self.kind, self.phase, self.planes = phase.kind, phase, planes
        self.shift = np.arange(planes, dtype=np.int64)[:, None] * (phase.height * phase.width)
        self.index = (phase.index[None] + self.shift).reshape(-1)

    def neighbours(self, offsets: tuple[tuple[int, int], ...]) -> np.ndarray:
        found = self.phase.neighbours(offsets)  # K x N
        return (found[:, None, :] + self.shift[None]).reshape(len(found), -1)


@functools.lru_cache(maxsize=64)
def _plane_phases(height: int, width: int, planes: int) -> tuple[_Planes, ...]:
    return tuple(_Planes(phase, planes) for phase in phases(height, width))


def code_images(coder: ContextCoder, images: np.ndarray, height: int, width: int, maxval: int,
                max_error: int = 0, temporal: bool = True) -> None:
    """Codes (or decodes) ``images`` (``T x P x h*w`` int64 in ``[0, maxval]``: ``P`` planes a
    frame, each predicted from its own previous frame; the planes of a phase are coded in one
    call), frame by frame, phase by phase; afterwards ``images`` holds the reconstruction
    (equal to the input when lossless)."""
    frames, planes = images.shape[:2]
    r = value_range(maxval, max_error)
    model = ClassCategorical(CLASSES, min(r, MAX_SYMBOLS))
    previous: np.ndarray | None = None
    errors = np.zeros((_PREDICTORS, planes * height * width), dtype=np.int64)
    for frame in images:
        current = frame.reshape(-1)  # a view: the planes end to end
        for phase in _plane_phases(height, width, planes):
            prediction = _Prediction(phase, current, previous, errors, maxval)
            z = _quantize(current[phase.index], prediction.value, maxval, max_error, r) if coder.encoding else None
            z = _code_symbols(coder, model, prediction.classes(), z if z is not None else np.zeros(0), r)
            current[phase.index] = _reconstruct(z, prediction.value, maxval, max_error, r)
            prediction.learn(errors, current[phase.index])
        if temporal:
            previous = current
