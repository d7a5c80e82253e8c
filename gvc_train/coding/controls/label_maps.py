"""Lossless context coding of label maps (the ``segmentation`` coder's core), coarse to fine.

A frame is coded in the interlaced order of :mod:`~gvc_train.coding.controls.interlace` (each
phase one vectorized entropy-coder call), every pixel from the labels around it that are
already known and from the previous frame:

- **prediction**: a vote of the 8 known neighbours of the phase's template
  (``interlace.TEMPLATES``; the nearest ones count twice) and of the previous frame's label
  at the same place (twice as well): the label with the most votes (the first voter's on ties).
- **hit**: one binary symbol, "the label is the prediction". Its context: which of the 8
  neighbours equal the prediction, whether the prediction is label 0, and a temporal state
  (no previous frame; else whether the previous label here equals the prediction, whether the
  previous frame is uniform around here -- its 8 neighbours carry its label, away from any
  boundary -- and whether any of the 8 known neighbours changed label since: a boundary is
  moving here). Those 2^13 contexts learn slowly, so each one's estimate starts from that of
  a coarse context (how many nearest and other neighbours disagree, and the temporal state:
  225 of them) worth :data:`PRIOR_WEIGHT` symbols (:class:`BackoffBinary`). One model per
  phase kind, for the first frame and for the frames with a previous one. Inside a region
  every neighbour agrees and the hit costs a few thousandths of a bit: the bits go to the
  pixels along boundaries, and with the previous frame to where a boundary moved.
- **miss** (more than 2 classes; with 2 the label is the other one): "the label is the
  runner-up of the vote" (one binary symbol, where the vote had one), else the label under
  adaptive counts of the labels seen so far, the prediction and the runner-up excluded.

Adaptive counts only (nothing sent), carried from frame to frame, integer arithmetic: the
decoder computes the same tables. A damaged stream decodes to labels in ``[0, classes)``
(every coded symbol names one) before the entropy decoder's end check refuses it.

Measured (selfie segmentation of carphone, 16 frames at 176 x 144): 393 bits a frame (501
without the previous frame). A first version -- fine contexts alone, a model per level used by
every frame -- took 921 (569 without the previous frame): a model that has seen many symbols
codes in big chunks (``adaptive.code_in_chunks``), so the contexts new at frame 2 were coded
at 1/2 for thousands of pixels.
"""

from __future__ import annotations

import numpy as np

from gvc_train.coding.controls.adaptive import PRECISION, BinaryContexts, ContextCoder
from gvc_train.coding.controls.adaptive_counts import counts_to_freqs
from gvc_train.coding.controls.interlace import TEMPLATES, Phase, phases

MAX_CLASSES = 256  # the layout's uint8 labels
# The nearest neighbours of each phase kind (the first of interlace.TEMPLATES' offsets): two votes each.
_NEAREST = {"base": 0, "B": 2, "C": 2, "D": 4}
_NEIGHBOURS = 8  # every template has 8 offsets
_TEMPORAL_STATES = 9  # 0: no previous frame; else 1 + same + 2 * uniform + 4 * changed
_FINE = 1 << (_NEIGHBOURS + 1 + 4)  # neighbour agreement bits, prediction == 0, temporal state (4 bits)
_COARSE = 25 * _TEMPORAL_STATES  # 5 x 5 disagreement counts (nearest, others capped at 4) x temporal state
PRIOR_WEIGHT = 4  # symbols a fine context's prior (its coarse context's estimate) is worth
_TOTAL = 1 << PRECISION


class BackoffBinary:
    """Binary symbols under a fine context whose estimate starts from a coarse one's: a
    :class:`~gvc_train.coding.controls.adaptive.ContextModel` of contexts ``fine * coarse_count
    + coarse``. ``p1 = (n1 + PRIOR_WEIGHT * q1) / (n + PRIOR_WEIGHT)``, ``q1`` the coarse
    context's Krichevsky-Trofimov estimate; counts halved past ``limit`` (integers throughout)."""

    def __init__(self, fine: int, coarse: int, limit: int = 1 << 12, coarse_limit: int = 1 << 13) -> None:
        self.coarse_count = coarse
        self.fine = np.zeros((fine, 2), dtype=np.int64)
        self.coarse = np.zeros((coarse, 2), dtype=np.int64)
        self.limits = (limit, coarse_limit)
        self.seen = 0

    def freqs(self, context: np.ndarray) -> np.ndarray:
        fine, coarse = np.divmod(context, self.coarse_count)
        n = self.coarse[coarse]
        prior = ((2 * n[:, 1] + 1) << PRECISION) // (2 * (n[:, 0] + n[:, 1]) + 2)
        n = self.fine[fine]
        one = np.clip(((n[:, 1] << PRECISION) + PRIOR_WEIGHT * prior) // (n[:, 0] + n[:, 1] + PRIOR_WEIGHT), 1, _TOTAL - 1)
        return np.stack([_TOTAL - one, one], axis=1).astype(np.int32)

    def update(self, context: np.ndarray, symbols: np.ndarray) -> None:
        fine, coarse = np.divmod(context, self.coarse_count)
        for counts, where, limit in zip((self.fine, self.coarse), (fine, coarse), self.limits):
            flat = where * 2 + symbols
            counts += np.bincount(flat, minlength=counts.size).reshape(counts.shape)
            over = counts[:, 0] + counts[:, 1] > limit
            counts[over] = (counts[over] + 1) >> 1
        self.seen += len(context)


class _ExcludingCounts:
    """Adaptive counts of the labels a miss turned out to be, as a :class:`ContextModel` whose
    context names the labels to exclude (``prediction * (classes + 1) + runner_up + 1``;
    runner-up -1: none): those get frequency 1 (they cannot occur)."""

    def __init__(self, classes: int, increment: int = 24, limit: int = 1 << 13) -> None:
        self.classes, self.increment, self.limit = classes, increment, limit
        self.counts = np.ones(classes, dtype=np.int64)
        self.seen = 0

    def freqs(self, context: np.ndarray) -> np.ndarray:
        counts = np.repeat(self.counts[None], len(context), axis=0)
        rows = np.arange(len(context))
        prediction, runner_up = np.divmod(context, self.classes + 1)
        counts[rows, prediction] = 0
        has = runner_up > 0
        counts[rows[has], runner_up[has] - 1] = 0
        return counts_to_freqs(counts).numpy()

    def update(self, context: np.ndarray, symbols: np.ndarray) -> None:
        self.counts += self.increment * np.bincount(symbols, minlength=self.classes)
        self.seen += len(symbols)
        if self.counts.sum() > self.limit:
            self.counts = (self.counts + 1) // 2


class _Models:
    def __init__(self, classes: int) -> None:
        self.classes = classes
        # a model per (previous frame or not, phase kind): a model that has seen many symbols codes
        # in big chunks (adaptive.code_in_chunks), so a fresh set of contexts gets a fresh model
        self.hit: dict[tuple[bool, str], BackoffBinary] = {}
        self.runner_up = BinaryContexts(3)
        self.label = _ExcludingCounts(classes) if classes > 2 else None

    def hit_model(self, phase: Phase, temporal: bool) -> BackoffBinary:
        key = (temporal, phase.kind)
        if key not in self.hit:
            self.hit[key] = BackoffBinary(_FINE, _COARSE)
        return self.hit[key]


def _vote(voters: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The label with the most votes (``voters``: ``V x N`` labels, ``weights``: ``V``) and the
    runner-up (the best of the other labels; -1 where every voter gave the winner). Ties go to
    the earlier voter. Only the pixels whose voters disagree (near boundaries: a few percent)
    are counted."""
    winner = voters[0].copy()
    runner_up = np.full(voters.shape[1], -1, dtype=np.int64)
    split = np.flatnonzero((voters != winner).any(0))
    if len(split):
        voters = voters[:, split]
        same = voters[:, None, :] == voters[None, :, :]  # V x V x n
        score = np.einsum("ijn,j->in", same.astype(np.int64), weights)  # each voter's label's votes
        columns = np.arange(len(split))
        winner[split] = top = voters[score.argmax(0), columns]
        score = np.where(voters == top, -1, score)
        runner_up[split] = voters[score.argmax(0), columns]  # every split pixel has another label
    return winner, runner_up


def _code_phase(coder: ContextCoder, models: _Models, phase: Phase, current: np.ndarray,
                previous: np.ndarray | None, uniform: np.ndarray | None) -> None:
    """Codes (or decodes into ``current``) one phase's labels (module docstring)."""
    n, near = len(phase.index), _NEAREST[phase.kind]
    offsets = TEMPLATES.get(phase.kind, ())  # none for the base pixel
    neighbours = phase.neighbours(offsets) if offsets else np.zeros((0, n), dtype=np.int64)  # K x N flat indexes
    around = current[neighbours]
    weights = np.where(np.arange(len(offsets)) < near, 2, 1)
    if previous is not None:
        here = previous[phase.index]
        voters, weights = np.concatenate([around, here[None]]), np.concatenate([weights, [2]])
    else:
        voters, weights = (around, weights) if len(around) else (np.zeros((1, n), dtype=np.int64), np.ones(1, dtype=np.int64))
    prediction, runner_up = _vote(voters, weights)

    agree = around == prediction
    fine = (prediction == 0).astype(np.int64) << _NEIGHBOURS
    for k, row in enumerate(agree):
        fine |= row.astype(np.int64) << k
    coarse = (near - agree[:near].sum(0)) * 5 + np.minimum((~agree[near:]).sum(0), 4)
    state = np.zeros(n, dtype=np.int64)
    if previous is not None:
        assert uniform is not None
        changed = (around != previous[neighbours]).any(0)
        state = 1 + (here == prediction) + 2 * uniform[phase.index] + 4 * changed
    fine |= state << (_NEIGHBOURS + 1)
    coarse = coarse * _TEMPORAL_STATES + state
    context = fine * _COARSE + coarse
    labels = current[phase.index] if coder.encoding else np.zeros(n, dtype=np.int64)
    model = models.hit_model(phase, previous is not None)
    hit = coder.code(model, context, (labels == prediction).astype(np.int64)) == 1
    if models.label is None:  # 2 classes: a miss is the other label
        current[phase.index] = np.where(hit, prediction, 1 - prediction)
        return
    out = np.where(hit, prediction, -1)
    # a miss: "the runner-up" where the vote had one, else (or when it is not) the counts
    second = np.flatnonzero(~hit & (runner_up >= 0))
    context = np.zeros(len(second), dtype=np.int64)
    if previous is not None:
        context = 1 + (previous[phase.index[second]] == runner_up[second])
    is_runner_up = coder.code(models.runner_up, context, (labels[second] == runner_up[second]).astype(np.int64)) == 1
    out[second[is_runner_up]] = runner_up[second[is_runner_up]]
    rest = np.flatnonzero(out < 0)
    context = prediction[rest] * (models.classes + 1) + runner_up[rest] + 1
    out[rest] = coder.code(models.label, context, labels[rest])
    current[phase.index] = out


def _uniform(labels: np.ndarray, height: int, width: int) -> np.ndarray:
    """Per pixel, whether its 8 neighbours (those inside the frame) carry its label; flat."""
    image = labels.reshape(height, width)
    padded = np.pad(image, 1, mode="edge")
    same = np.ones((height, width), dtype=bool)
    for dy in (0, 1, 2):
        for dx in (0, 1, 2):
            if dy != 1 or dx != 1:
                same &= padded[dy:dy + height, dx:dx + width] == image
    return same.reshape(-1)


def code_label_maps(coder: ContextCoder, maps: np.ndarray, height: int, width: int, classes: int,
                    temporal: bool = True) -> None:
    """Codes (or decodes, into ``maps``: ``T x h*w`` integer labels in ``[0, classes)``) every
    frame in order. One class: nothing to code (every label is 0)."""
    if classes < 2:
        maps[:] = 0
        return
    models = _Models(classes)
    previous: np.ndarray | None = None
    uniform: np.ndarray | None = None
    for frame in maps:
        current = frame.astype(np.int64) if coder.encoding else np.zeros(height * width, dtype=np.int64)
        for phase in phases(height, width):
            _code_phase(coder, models, phase, current, previous, uniform)
        frame[:] = current
        if temporal:
            previous, uniform = current, _uniform(current, height, width)
