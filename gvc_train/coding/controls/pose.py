"""The ``pose`` coder: keypoints on a grid, predicted from the previous frame, adaptively coded.

Layout (``LAYOUTS["pose"]``): a list of ``T`` float32 tensors ``P_t x J x 3`` (x, y in [0, 1] of
the frame's width and height, confidence in [0, 1]); every frame has the same ``J``.

**Quantization (the only loss).** x and y become integers ``round(x * grid)`` in ``0..grid``
(``grid`` steps per frame side); confidence becomes one of ``confidence_levels`` levels,
``round(c * (levels - 1))`` (``levels = 2`` is a visibility bit at 0.5). Decoding gives
``q / grid`` and ``level / (levels - 1)``, so for inputs in [0, 1]::

    |x' - x|, |y' - y| <= 1 / (2 * grid)        |c' - c| <= 1 / (2 * (levels - 1))

(plus float32 rounding when ``grid`` is not a power of two). Values outside [0, 1] (a landmark
just off the frame) are clamped first. :meth:`PoseCoder.quantize` is exactly what decoding gives.

**Prediction.** Person ``p`` of frame ``t`` is predicted from person ``p`` of frame ``t - 1``
(the extractor's person order) when that person existed; the residual is the motion in grid
steps. A person new in the frame is coded spatially: keypoint ``j`` from keypoint ``j - 1``,
the first one from the frame's centre.

**Entropy coding** (constriction ANS through :mod:`gvc_train.coding.categorical`, under
:class:`~gvc_train.coding.controls.adaptive_counts.AdaptiveCounts` counts that encoder and decoder update
after every frame). A residual ``r`` is its magnitude class ``k = bit_length(|r|)`` (adaptive,
in the context of the same coordinate's previous class: still keypoints cost ~1 bit, moving
ones the bits their motion needs), a sign (adaptive, in the context of the previous sign: smooth
motion keeps it) and ``k - 1`` plain bits below the leading one (JPEG's categories). A
confidence level is coded in the context of the same keypoint's previous level. The person count
costs an adaptive "same as before" bit, and a uniform count when it changed: a run of empty
frames costs a fraction of a bit each.

**Bytes.** A header of varints (version, grid, levels, T, J, the clip's most people), then the
ANS words. Decoding checks the header against the coder's settings and its bounds before any
work, every decoded keypoint against the grid, and the ANS end marker: damage is one
:class:`BitstreamError`.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import torch

from gvc_train.coding.categorical import CategoricalDecoder, CategoricalEncoder
from gvc_train.coding.container import BitstreamError, encode_varint, read_varint
from gvc_train.coding.controls.adaptive_counts import UNIFORM_BIT, AdaptiveCounts, counts_to_freqs
from gvc_train.coding.controls.registry import ControlCoder, register_coder

_VERSION = 1
# Bounds a decoder checks before it works (a damaged header cannot ask for hours or gigabytes):
MAX_FRAMES = 100_000
MAX_JOINTS = 1024
MAX_PEOPLE = 255
MAX_KEYPOINTS = 1 << 21  # frames x the clip's most people x joints: 24 MB of decoded float32
MAX_GRID = 1 << 14

_HISTORY = 6  # a tracked coordinate's context: its previous class, clipped to 0..5 ...
_FRESH = _HISTORY  # ... or "no motion history yet" (its person was new in the previous frame)
_CLASS_CONTEXTS_PER_COORD = _HISTORY + 1
_SPATIAL_CLASS = 2 * _CLASS_CONTEXTS_PER_COORD  # + coordinate: a new person's keypoint-to-keypoint steps
_SIGN_FRESH, _SIGN_SPATIAL = 3, 4  # sign contexts: previous sign (0 -, 1 zero, 2 +), no history, spatial


def _bit_length(a: np.ndarray, bits: int) -> np.ndarray:
    """``int.bit_length`` of every entry of ``a`` (non-negative, below ``2^bits``)."""
    k = np.zeros_like(a)
    for b in range(bits):
        k += (a >> b) > 0
    return k


class _PoseState:
    """The adaptive models and the previous frame, identical at encoder and decoder."""

    def __init__(self, grid: int, levels: int, joints: int) -> None:
        self.grid, self.levels, self.joints = grid, levels, joints
        self.bits = grid.bit_length()  # |residual| <= grid < 2^bits
        self.count = AdaptiveCounts(1, 2)
        self.classes = AdaptiveCounts(_SPATIAL_CLASS + 2, self.bits + 1)
        self.signs = AdaptiveCounts(5, 2)
        self.level = AdaptiveCounts(levels + 1, levels)
        self.q = np.zeros((0, joints, 2), dtype=np.int64)
        self.klass = np.zeros((0, joints, 2), dtype=np.int64)
        self.sign = np.zeros((0, joints, 2), dtype=np.int64)
        self.conf = np.zeros((0, joints), dtype=np.int64)

    def contexts(self, people: int) -> tuple[int, np.ndarray, np.ndarray, np.ndarray]:
        """(tracked people, class, sign and level contexts) of a frame of ``people`` people."""
        tracked = min(people, len(self.q))
        new = people - tracked
        coord = np.arange(2)
        class_ctx = np.concatenate([
            coord * _CLASS_CONTEXTS_PER_COORD + self.klass[:tracked],
            np.broadcast_to(_SPATIAL_CLASS + coord, (new, self.joints, 2)),
        ])  # fmt: skip
        sign_ctx = np.concatenate([self.sign[:tracked], np.full((new, self.joints, 2), _SIGN_SPATIAL)])
        level_ctx = np.concatenate([self.conf[:tracked], np.full((new, self.joints), self.levels)])
        return tracked, class_ctx.astype(np.int64), sign_ctx.astype(np.int64), level_ctx.astype(np.int64)

    def predict_spatial_anchor(self) -> int:
        return self.grid // 2

    def learn(self, tracked: int, q: np.ndarray, r: np.ndarray, k: np.ndarray, conf: np.ndarray,
              contexts: tuple[np.ndarray, np.ndarray, np.ndarray]) -> None:
        """After a frame: update the models with its symbols and keep it as the next prediction."""
        class_ctx, sign_ctx, level_ctx = contexts
        nonzero = k > 0
        self.classes.update(class_ctx, k)
        self.signs.update(sign_ctx[nonzero], (r[nonzero] > 0).astype(np.int64))
        self.level.update(level_ctx, conf)
        new = len(q) - tracked
        self.q = q
        self.klass = np.concatenate([np.minimum(k[:tracked], _HISTORY - 1), np.full((new, self.joints, 2), _FRESH)])
        self.sign = np.concatenate([np.sign(r[:tracked]) + 1, np.full((new, self.joints, 2), _SIGN_FRESH)])
        self.conf = conf


def _offset_bits(a: np.ndarray, k: np.ndarray) -> np.ndarray:
    """The ``k - 1`` bits below the leading one of each ``a`` (``k = bit_length(a)``), MSB first, concatenated."""
    width = int(k.max(initial=1)) - 1
    if width <= 0:
        return np.zeros(0, dtype=np.int64)
    shifts = np.arange(width - 1, -1, -1)
    bits_NW = (a[:, None] >> shifts) & 1
    keep_NW = shifts < (k[:, None] - 1)
    return bits_NW[keep_NW]


def _offset_values(bits: np.ndarray, k: np.ndarray) -> np.ndarray:
    """Inverse of :func:`_offset_bits`: ``|r|`` from the classes and the decoded bits."""
    width = int(k.max(initial=1)) - 1
    a = np.where(k > 0, 1, 0) << np.maximum(k - 1, 0)
    if width <= 0:
        return a
    shifts = np.arange(width - 1, -1, -1)
    keep_NW = shifts < (k[:, None] - 1)
    bits_NW = np.zeros(keep_NW.shape, dtype=np.int64)
    bits_NW[keep_NW] = bits
    return a + (bits_NW << shifts).sum(1)


def _uniform(symbols: int, n: int) -> torch.Tensor:
    return counts_to_freqs(np.ones((n, symbols), dtype=np.int64))


@register_coder("pose")
class PoseCoder(ControlCoder):
    """Pose keypoints within half a grid step (module docstring); ``grid``: steps per frame side,
    ``confidence_levels``: levels of the confidence (2 = a visibility bit)."""

    lossless = False

    def __init__(self, grid: int = 256, confidence_levels: int = 8) -> None:
        if not 2 <= grid <= MAX_GRID:
            raise ValueError(f"grid must lie in 2..{MAX_GRID}, got {grid}")
        if not 2 <= confidence_levels <= 256:
            raise ValueError(f"confidence_levels must lie in 2..256, got {confidence_levels}")
        self.grid = int(grid)
        self.confidence_levels = int(confidence_levels)

    def max_error(self) -> tuple[float, float]:
        """The largest error decoding adds: (x and y, confidence), for inputs in [0, 1]."""
        return 0.5 / self.grid, 0.5 / (self.confidence_levels - 1)

    # ---- quantization ---------------------------------------------------------------------

    def quantize(self, control: list[Any]) -> tuple[int, list[tuple[np.ndarray, np.ndarray]]]:
        """(J, per frame (grid positions P x J x 2 int64, confidence levels P x J int64))."""
        if not isinstance(control, (list, tuple)):
            raise ValueError(f"a pose control is a list of P x J x 3 tensors, got {type(control).__name__}")
        if len(control) > MAX_FRAMES:
            raise ValueError(f"a pose control has at most {MAX_FRAMES} frames, got {len(control)}")
        frames, joints = [], None
        for t, frame in enumerate(control):
            x = torch.as_tensor(frame).detach().cpu().double().numpy()
            if x.ndim != 3 or x.shape[2] != 3 or (joints is not None and x.shape[1] != joints):
                raise ValueError(f"pose frame {t}: expected P x J x 3 with the clip's J, got {tuple(x.shape)}")
            joints = x.shape[1]
            if not np.isfinite(x).all():
                raise ValueError(f"pose frame {t} has non-finite values")
            x = np.clip(x, 0.0, 1.0)
            q = np.rint(x[..., :2] * self.grid).astype(np.int64)
            level = np.rint(x[..., 2] * (self.confidence_levels - 1)).astype(np.int64)
            frames.append((q, level))
        joints = joints or 0
        people = max((len(q) for q, _ in frames), default=0)
        if joints > MAX_JOINTS or people > MAX_PEOPLE or len(frames) * people * joints > MAX_KEYPOINTS:
            raise ValueError(f"pose control too large: {people} people x {joints} joints x {len(frames)} frames "
                             f"(bounds {MAX_PEOPLE}, {MAX_JOINTS}, {MAX_KEYPOINTS} keypoints)")
        return joints, frames

    def _dequantize(self, q: np.ndarray, level: np.ndarray) -> torch.Tensor:
        xy = q.astype(np.float64) / self.grid
        c = level.astype(np.float64) / (self.confidence_levels - 1)
        return torch.from_numpy(np.concatenate([xy, c[..., None]], axis=-1).astype(np.float32))

    def reconstruct(self, control: list[Any]) -> list[torch.Tensor]:
        """What ``decode(encode(control))`` gives, without coding."""
        _, frames = self.quantize(control)
        return [self._dequantize(q, level) for q, level in frames]

    # ---- coding -----------------------------------------------------------------------------

    def encode(self, control: list[Any]) -> bytes:
        joints, frames = self.quantize(control)
        people = max((len(q) for q, _ in frames), default=0)
        head = b"".join(encode_varint(v) for v in (_VERSION, self.grid, self.confidence_levels, len(frames), joints, people))
        coder = CategoricalEncoder()
        state = _PoseState(self.grid, self.confidence_levels, joints)
        for q, level in frames:
            if people:
                same = len(q) == len(state.q)
                coder.encode(torch.tensor([int(same)]), state.count.tables(np.zeros(1, dtype=np.int64)))
                state.count.update(np.zeros(1, dtype=np.int64), np.array([int(same)]))
                if not same:
                    coder.encode(torch.tensor([len(q)]), _uniform(people + 1, 1))
            tracked, class_ctx, sign_ctx, level_ctx = state.contexts(len(q))
            r = q.copy()
            r[:tracked] -= state.q[:tracked]
            anchor = np.full((len(q) - tracked, 1, 2), state.predict_spatial_anchor())
            r[tracked:] -= np.concatenate([anchor, q[tracked:, :-1]], axis=1)
            a = np.abs(r)
            k = _bit_length(a, state.bits)
            coder.encode(torch.from_numpy(k.reshape(-1)), state.classes.tables(class_ctx.reshape(-1)))
            nonzero = k > 0
            coder.encode(torch.from_numpy((r[nonzero] > 0).astype(np.int64)), state.signs.tables(sign_ctx[nonzero]))
            offsets = _offset_bits(a[nonzero], k[nonzero])
            coder.encode(torch.from_numpy(offsets), UNIFORM_BIT.expand(len(offsets), 2))
            coder.encode(torch.from_numpy(level.reshape(-1)), state.level.tables(level_ctx.reshape(-1)))
            state.learn(tracked, q, r, k, level, (class_ctx, sign_ctx, level_ctx))
        return head + coder.finish()

    def decode(self, data: bytes) -> list[torch.Tensor]:
        f = io.BytesIO(bytes(data))
        version, grid, levels, frames, joints, people = (read_varint(f, f"pose {what}") for what in
                                                         ("version", "grid", "levels", "frames", "joints", "people"))
        if version != _VERSION:
            raise BitstreamError(f"pose payload of version {version}, this coder reads {_VERSION}")
        if (grid, levels) != (self.grid, self.confidence_levels):
            raise BitstreamError(f"pose payload coded with grid {grid} and {levels} confidence levels, "
                                 f"this coder has {self.grid} and {self.confidence_levels}")
        if frames > MAX_FRAMES or joints > MAX_JOINTS or people > MAX_PEOPLE or frames * people * joints > MAX_KEYPOINTS:
            raise BitstreamError(f"pose payload out of bounds: {frames} frames, {joints} joints, {people} people")
        decoder = CategoricalDecoder(f.read())
        state = _PoseState(grid, levels, joints)
        out = []
        for _ in range(frames):
            count = len(state.q)
            if people:
                same = int(decoder.decode(state.count.tables(np.zeros(1, dtype=np.int64)))[0])
                state.count.update(np.zeros(1, dtype=np.int64), np.array([same]))
                if not same:
                    count = int(decoder.decode(_uniform(people + 1, 1))[0])
            tracked, class_ctx, sign_ctx, level_ctx = state.contexts(count)
            k = decoder.decode(state.classes.tables(class_ctx.reshape(-1))).numpy().reshape(count, joints, 2)
            nonzero = k > 0
            positive = decoder.decode(state.signs.tables(sign_ctx[nonzero])).numpy()
            n_bits = int(np.maximum(k[nonzero] - 1, 0).sum())
            offsets = decoder.decode(UNIFORM_BIT.expand(n_bits, 2)).numpy()
            a = np.zeros_like(k)
            a[nonzero] = _offset_values(offsets, k[nonzero])
            r = a
            r[nonzero] *= 2 * positive - 1
            level = decoder.decode(state.level.tables(level_ctx.reshape(-1))).numpy().reshape(count, joints)
            q = r.copy()
            q[:tracked] += state.q[:tracked]
            q[tracked:] = state.predict_spatial_anchor() + np.cumsum(r[tracked:], axis=1)
            if q.size and (q.min() < 0 or q.max() > grid):
                raise BitstreamError("pose payload is damaged: a keypoint off the grid")
            state.learn(tracked, q, r, k, level, (class_ctx, sign_ctx, level_ctx))
            out.append(self._dequantize(q, level))
        decoder.finish()
        return out
