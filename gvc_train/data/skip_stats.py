"""Skip counting for the data pipeline: why samples were dropped, per stream and in total.

Each stream counts its skips in a :class:`SkipCounter` (one per stream iteration) and its
batches carry the counts since the previous batch; the main process adds them up in
:class:`SkipTotals`. ``REASONS`` is fixed, so every rank logs the same metric names.

A per-sample decode step says why it cannot use a sample by raising: :class:`SkipSample` with
a reason, or one of the decode errors of the sample formats; :func:`skip_reason` is the one
place that maps an exception to its reason.
"""

from __future__ import annotations

import collections
import logging
import math
import time

from gvc_train.data.clip_codec import ClipDecodeError
from gvc_train.data.latent_format import LatentDecodeError
from gvc_train.data.transforms import ClipTooShort, ClipTooSmall

log = logging.getLogger(__name__)

# Why a sample (or a whole tar) was skipped. Fixed, so every rank logs the same metric names.
REASONS = (
    "tar_error",  # a shard that cannot be opened or read to its end (truncated, corrupt, missing)
    "bad_meta",  # json missing, unparsable, incomplete, or disagreeing with the decoded frames
    "missing_frames",  # no frames.<fmt> member (e.g. the tail of a truncated tar)
    "decode_error",  # ClipDecodeError: the frames payload is damaged or of an unknown format
    "too_short",  # fewer frames than clip_frames at frame_stride need
    "too_small",  # frames smaller than the crop
    "size_mismatch",  # full-frame batches (crop_size=None) whose clips (or controls) differ in size
    "missing_control",  # a requested control with no ctrl.<name> member or no entry in the json
    "control_error",  # a requested control that does not decode (BitstreamError) or disagrees with the clip
    "other",  # any other exception while decoding one sample (logged with its traceback)
)
# The sample formats' own errors, by reason; anything not here (nor a SkipSample) is "other".
_REASON_OF_ERROR: tuple[tuple[type[BaseException], str], ...] = (
    (ClipDecodeError, "decode_error"),
    (LatentDecodeError, "decode_error"),
    (ClipTooShort, "too_short"),
    (ClipTooSmall, "too_small"),
)
_DETAIL_LOGS_PER_REASON = 5  # per process: the first few skips are logged with key and error


_logged_per_reason: collections.Counter[str] = collections.Counter()  # this process's detail logs


class SkipSample(Exception):
    """Raised by a per-sample decode step: skip this sample and count it under ``reason``."""

    def __init__(self, reason: str, detail: str) -> None:
        if reason not in REASONS:
            raise ValueError(f"unknown skip reason {reason!r}; one of {REASONS}")
        super().__init__(detail)
        self.reason = reason


def skip_reason(exn: BaseException) -> str:
    """The reason (one of ``REASONS``) to count a sample under whose decoding raised ``exn``."""
    if isinstance(exn, SkipSample):
        return exn.reason
    for error_type, reason in _REASON_OF_ERROR:
        if isinstance(exn, error_type):
            return reason
    return "other"


class SkipCounter:
    """One stream's skips not yet carried by a batch.

    One per stream iteration, never module-global: counts cannot leak from a stream that was
    abandoned (an exception, a ``break``) into another, or into a forked worker.
    """

    def __init__(self, split: str) -> None:
        self.split = split
        self._pending: collections.Counter[str] = collections.Counter()

    def add(self, reason: str, detail: str) -> None:
        assert reason in REASONS, reason
        self._pending[reason] += 1
        _logged_per_reason[reason] += 1
        logged = _logged_per_reason[reason]
        log.log(
            logging.WARNING if logged <= _DETAIL_LOGS_PER_REASON else logging.DEBUG,
            "%s data: skipped (%s): %s", self.split, reason, detail,
        )
        if logged == _DETAIL_LOGS_PER_REASON:
            log.warning("%s data: further %s skips in this process are logged at DEBUG", self.split, reason)

    def add_error(self, where: str, exn: BaseException) -> None:
        """Count a sample whose decoding raised ``exn`` under :func:`skip_reason`'s reason.

        An unexpected error (``other``) names its type, and its traceback goes to DEBUG.
        """
        reason = skip_reason(exn)
        if reason == "other":
            log.debug("unexpected error decoding %s", where, exc_info=exn)
            self.add(reason, f"{where}: {type(exn).__name__}: {exn}")
        else:
            self.add(reason, f"{where}: {exn}")

    def drain(self) -> dict[str, int]:
        counts, self._pending = dict(self._pending), collections.Counter()
        return counts


class SkipTotals:
    """Skip totals of the main process, fed by the counts that batches carry.

    Warns when new skips arrive, at most once per ``warn_every_s`` seconds.
    """

    def __init__(self, warn_every_s: float = 60.0) -> None:
        self.warn_every_s = warn_every_s
        self._counts: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
        self._last_warning = -math.inf

    def add(self, split: str, counts: dict[str, int]) -> None:
        if not counts:
            return
        self._counts[split].update(counts)
        now = time.monotonic()
        if now - self._last_warning >= self.warn_every_s:
            self._last_warning = now
            totals = self.totals(split)
            detail = ", ".join(f"{r}={totals[r]}" for r in REASONS if totals[r])
            log.warning("%s data: %d sample(s)/tar(s) skipped so far (%s)", split, totals["total"], detail)

    def totals(self, split: str | None = None) -> dict[str, int]:
        """Counts per reason (every reason, zeros included) and ``total``; all splits if None."""
        merged: collections.Counter[str] = collections.Counter()
        for name, counts in self._counts.items():
            if split is None or name == split:
                merged.update(counts)
        out = {reason: merged[reason] for reason in REASONS}
        out["total"] = sum(out.values())
        return out
