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
(the extractor's person order) when that person was there; the residual is the motion in grid
steps. A person not in the previous frame is coded afresh, keypoint ``j`` from keypoint ``j - 1``
(the first from the frame's centre), or, when the index was seen before (detections flicker: a
person missed for a few frames), from where they were last, whichever costs fewer model bits
(the encoder computes both under the current tables; an adaptive flag tells the decoder).

Measured (96 frames, grid 256, 8 levels; raw float32 is 3,168 bits a person-frame): carphone
(one person throughout) 109 bits a frame, against 2,278 for zlib of the floats and 170 for zlib
of the quantized frame differences; bikes (a person in 58 of 96 frames, several cyclists) 232,
against 1,579 and 339. Grid 512: 146 and 266.

**Entropy coding** (constriction ANS through :mod:`gvc_train.coding.categorical`, under
:class:`~gvc_train.coding.controls.adaptive_counts.AdaptiveCounts` counts that encoder and decoder update
after every frame). A residual ``r`` is its magnitude class ``k = bit_length(|r|)`` (adaptive,
in the context of the same coordinate's previous class: still keypoints cost ~1 bit, moving
ones the bits their motion needs), a sign (adaptive, in the context of the previous sign: smooth
motion keeps it) and ``k - 1`` plain bits below the leading one (JPEG's categories). A
confidence level is coded in the context of the same keypoint's previous level. The person count
costs an adaptive "same as before" bit, and a uniform count when it changed: a run of empty
frames costs a fraction of a bit each.

**Bytes.** The control payload frame of :mod:`gvc_train.coding.controls.payload` (tag ``P1``,
CRC32: any damage is caught before decoding), varints (grid, levels, T, J, the clip's most
people), then the ANS words. Decoding checks the fields against the coder's settings and its
bounds before any work, every decoded keypoint against the grid, and the ANS end marker: damage
is one :class:`BitstreamError`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from gvc_train.coding.categorical import CategoricalDecoder, CategoricalEncoder
from gvc_train.coding.container import BitstreamError
from gvc_train.coding.controls.adaptive_counts import TABLE_BITS, UNIFORM_BIT, AdaptiveCounts, counts_to_freqs
from gvc_train.coding.controls.payload import PayloadReader, seal
from gvc_train.coding.controls.registry import ControlCoder, register_coder

_TAG = b"P1"  # the pose coder, format 1
# Bounds a decoder checks before it works (a damaged header cannot ask for hours or gigabytes):
MAX_FRAMES = 100_000
MAX_JOINTS = 1024
MAX_PEOPLE = 255
MAX_KEYPOINTS = 1 << 21  # frames x the clip's most people x joints: 24 MB of decoded float32
MAX_GRID = 1 << 14

_HISTORY = 6  # a coordinate's class context: its previous motion's class, clipped to 0..5, ...
_FRESH = _HISTORY  # ... or no motion yet (its person was coded afresh or came back in the previous frame)
_GAP = _HISTORY + 1  # ... or its person is back after frames without them (motion over the gap)
_CLASS_CONTEXTS_PER_COORD = _HISTORY + 2
_SPATIAL_CLASS = 2 * _CLASS_CONTEXTS_PER_COORD  # + coordinate: keypoint-to-keypoint steps of a person coded afresh
# Sign contexts: the previous motion's sign (0 -, 1 zero, 2 +), no motion yet, back after a gap, afresh.
_SIGN_FRESH, _SIGN_GAP, _SIGN_SPATIAL = 3, 4, 5


def _bit_length(a: np.ndarray, bits: int) -> np.ndarray:
    """``int.bit_length`` of every entry of ``a`` (non-negative, below ``2^bits``)."""
    k = np.zeros_like(a)
    for b in range(bits):
        k += (a >> b) > 0
    return k


class _PoseState:
    """The adaptive models and what the previous frames left, identical at encoder and decoder."""

    def __init__(self, grid: int, levels: int, joints: int) -> None:
        self.grid, self.levels, self.joints = grid, levels, joints
        self.bits = grid.bit_length()  # |residual| <= grid < 2^bits
        self.count = AdaptiveCounts(1, 2)
        self.revive = AdaptiveCounts(1, 2)  # a person back after a gap: from memory (1) or afresh (0)
        self.classes = AdaptiveCounts(_SPATIAL_CLASS + 2, self.bits + 1)
        # Small classes first: a context's first motions cost ~3 bits less (carphone: -2%, -13% on 12 frames).
        self.classes.counts[:] = np.maximum(1, 16 >> np.arange(self.bits + 1))
        self.signs = AdaptiveCounts(_SIGN_SPATIAL + 1, 2)
        self.level = AdaptiveCounts(levels + 1, levels)
        self.people = 0  # in the previous frame
        # Memory, one entry per person index ever seen: their last keypoints, the class and sign
        # of their last motion, their last confidence levels.
        self.q = np.zeros((0, joints, 2), dtype=np.int64)
        self.klass = np.zeros((0, joints, 2), dtype=np.int64)
        self.sign = np.zeros((0, joints, 2), dtype=np.int64)
        self.conf = np.zeros((0, joints), dtype=np.int64)

    def returning(self, people: int) -> range:
        """The people of a frame of ``people`` who were not in the previous frame but are remembered."""
        return range(min(self.people, people), min(people, len(self.q)))

    def remembered(self, people: int) -> np.ndarray:
        """Where the first ``people`` people were last (0 beyond memory: those are never temporal)."""
        return np.concatenate([self.q[:people], np.zeros((max(people - len(self.q), 0), self.joints, 2), np.int64)])

    def residuals(self, q: np.ndarray, temporal: np.ndarray) -> np.ndarray:
        """``q``'s residuals: from memory for ``temporal`` people, else keypoint to keypoint."""
        spatial = q - np.concatenate([np.full((len(q), 1, 2), self.grid // 2), q[:, :-1]], axis=1)
        return np.where(temporal[:, None, None], q - self.remembered(len(q)), spatial)

    def positions(self, r: np.ndarray, temporal: np.ndarray) -> np.ndarray:
        """Inverse of :meth:`residuals`."""
        return np.where(temporal[:, None, None], self.remembered(len(r)) + r, self.grid // 2 + np.cumsum(r, axis=1))

    def contexts(self, temporal: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Class, sign and level contexts of a frame whose people are predicted from memory where ``temporal``."""
        people, remembered = len(temporal), min(len(temporal), len(self.q))
        shape = (people, self.joints, 2)
        coord = np.arange(2)
        klass = np.concatenate([self.klass[:remembered], np.zeros((people - remembered, self.joints, 2), np.int64)])
        sign = np.concatenate([self.sign[:remembered], np.zeros((people - remembered, self.joints, 2), np.int64)])
        conf = np.concatenate([self.conf[:remembered], np.zeros((people - remembered, self.joints), np.int64)])
        t3 = temporal[:, None, None]
        class_ctx = np.where(t3, coord * _CLASS_CONTEXTS_PER_COORD + klass, np.broadcast_to(_SPATIAL_CLASS + coord, shape))
        sign_ctx = np.where(t3, sign, _SIGN_SPATIAL)
        level_ctx = np.where(temporal[:, None], conf, self.levels)
        return class_ctx.astype(np.int64), sign_ctx.astype(np.int64), level_ctx.astype(np.int64)

    def learn(self, temporal: np.ndarray, q: np.ndarray, r: np.ndarray, k: np.ndarray, conf: np.ndarray,
              contexts: tuple[np.ndarray, np.ndarray, np.ndarray]) -> None:
        """After a frame: update the models with its symbols and remember its people."""
        class_ctx, sign_ctx, level_ctx = contexts
        nonzero = k > 0
        self.classes.update(class_ctx, k)
        self.signs.update(sign_ctx[nonzero], (r[nonzero] > 0).astype(np.int64))
        self.level.update(level_ctx, conf)
        people = len(q)
        # Only a person in this frame and the one before has a motion history (this frame's
        # residual): one back after a gap, or coded afresh, starts again without one.
        moved = (np.arange(people) < self.people) & temporal
        m3 = moved[:, None, None]
        absent = (max(len(self.q), people) - people, self.joints, 2)
        self.klass = np.concatenate([np.where(m3, np.minimum(k, _HISTORY - 1), _FRESH), np.full(absent, _GAP)])
        self.sign = np.concatenate([np.where(m3, np.sign(r) + 1, _SIGN_FRESH), np.full(absent, _SIGN_GAP)])
        self.q = np.concatenate([q, self.q[people:]])
        self.conf = np.concatenate([conf, self.conf[people:]])
        self.people = people

    def cost(self, q: np.ndarray, level: np.ndarray, temporal: np.ndarray) -> np.ndarray:
        """What each person of a frame costs, in model bits, predicted from memory where ``temporal``."""
        class_ctx, sign_ctx, level_ctx = self.contexts(temporal)
        r = self.residuals(q, temporal)
        k = _bit_length(np.abs(r), self.bits)
        bits = _model_bits(self.classes.tables(class_ctx.reshape(-1)), k.reshape(-1)).reshape(k.shape)
        bits += np.where(k > 0, _model_bits(self.signs.tables(sign_ctx.reshape(-1)), (r > 0).reshape(-1)).reshape(k.shape), 0)
        bits += np.maximum(k - 1, 0)
        levels = _model_bits(self.level.tables(level_ctx.reshape(-1)), level.reshape(-1)).reshape(level.shape)
        return bits.reshape(len(q), -1).sum(1) + levels.sum(1)


def _model_bits(tables_NV: torch.Tensor, symbols: np.ndarray) -> np.ndarray:
    """``-log2 p`` of each symbol under its table (summing to 2^16)."""
    freq = np.take_along_axis(tables_NV.numpy(), symbols.astype(np.int64)[:, None], axis=1)[:, 0]
    return TABLE_BITS - np.log2(freq)


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
        coder = CategoricalEncoder()
        state = _PoseState(self.grid, self.confidence_levels, joints)
        zero = np.zeros(1, dtype=np.int64)
        for q, level in frames:
            if people:
                same = len(q) == state.people
                coder.encode(torch.tensor([int(same)]), state.count.tables(zero))
                state.count.update(zero, np.array([int(same)]))
                if not same:
                    coder.encode(torch.tensor([len(q)]), _uniform(people + 1, 1))
            temporal = np.arange(len(q)) < min(state.people, len(q))
            back = state.returning(len(q))
            if len(back):  # from memory where that costs less than afresh (not another person, far away)
                remembered = np.arange(len(q)) < len(state.q)
                cheaper = state.cost(q, level, remembered) <= state.cost(q, level, np.zeros(len(q), dtype=bool))
                temporal[back.start:back.stop] = cheaper[back.start:back.stop]
                flags = temporal[back.start:back.stop].astype(np.int64)
                coder.encode(torch.from_numpy(flags), state.revive.tables(np.zeros(len(flags), dtype=np.int64)))
                state.revive.update(np.zeros(len(flags), dtype=np.int64), flags)
            contexts = state.contexts(temporal)
            class_ctx, sign_ctx, level_ctx = contexts
            r = state.residuals(q, temporal)
            a = np.abs(r)
            k = _bit_length(a, state.bits)
            coder.encode(torch.from_numpy(k.reshape(-1)), state.classes.tables(class_ctx.reshape(-1)))
            nonzero = k > 0
            coder.encode(torch.from_numpy((r[nonzero] > 0).astype(np.int64)), state.signs.tables(sign_ctx[nonzero]))
            offsets = _offset_bits(a[nonzero], k[nonzero])
            coder.encode(torch.from_numpy(offsets), UNIFORM_BIT.expand(len(offsets), 2))
            coder.encode(torch.from_numpy(level.reshape(-1)), state.level.tables(level_ctx.reshape(-1)))
            state.learn(temporal, q, r, k, level, contexts)
        return seal(_TAG, [self.grid, self.confidence_levels, len(frames), joints, people], coder.finish())

    def decode(self, data: bytes) -> list[torch.Tensor]:
        reader = PayloadReader(data, _TAG, "pose")
        grid, levels = reader.field("grid"), reader.field("levels")
        if (grid, levels) != (self.grid, self.confidence_levels):
            raise BitstreamError(f"pose payload coded with grid {grid} and {levels} confidence levels, "
                                 f"this coder has {self.grid} and {self.confidence_levels}")
        frames, joints = reader.field("frames", 0, MAX_FRAMES), reader.field("joints", 0, MAX_JOINTS)
        people = reader.field("people", 0, MAX_PEOPLE)
        if frames * people * joints > MAX_KEYPOINTS:
            raise BitstreamError(f"pose payload announces {frames * people * joints} keypoints, more than {MAX_KEYPOINTS}")
        decoder = CategoricalDecoder(reader.body())
        state = _PoseState(grid, levels, joints)
        zero = np.zeros(1, dtype=np.int64)
        out = []
        for _ in range(frames):
            count = state.people
            if people:
                same = int(decoder.decode(state.count.tables(zero))[0])
                state.count.update(zero, np.array([same]))
                if not same:
                    count = int(decoder.decode(_uniform(people + 1, 1))[0])
            temporal = np.arange(count) < min(state.people, count)
            back = state.returning(count)
            if len(back):
                flags = decoder.decode(state.revive.tables(np.zeros(len(back), dtype=np.int64))).numpy()
                state.revive.update(np.zeros(len(back), dtype=np.int64), flags)
                temporal[back.start:back.stop] = flags.astype(bool)
            contexts = state.contexts(temporal)
            class_ctx, sign_ctx, level_ctx = contexts
            k = decoder.decode(state.classes.tables(class_ctx.reshape(-1))).numpy().reshape(count, joints, 2)
            nonzero = k > 0
            positive = decoder.decode(state.signs.tables(sign_ctx[nonzero])).numpy()
            n_bits = int(np.maximum(k[nonzero] - 1, 0).sum())
            offsets = decoder.decode(UNIFORM_BIT.expand(n_bits, 2)).numpy()
            r = np.zeros_like(k)
            r[nonzero] = _offset_values(offsets, k[nonzero]) * (2 * positive - 1)
            level = decoder.decode(state.level.tables(level_ctx.reshape(-1))).numpy().reshape(count, joints)
            q = state.positions(r, temporal)
            if q.size and (q.min() < 0 or q.max() > grid):
                raise BitstreamError("pose payload is damaged: a keypoint off the grid")
            state.learn(temporal, q, r, k, level, contexts)
            out.append(self._dequantize(q, level))
        decoder.finish()
        return out
