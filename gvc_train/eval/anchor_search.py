"""Where an anchor's CRF ladder goes: the search on a rate curve, no encoding here.

An anchor's bits per pixel fall with CRF about log-linearly. :func:`crf_bracket` finds, within a
probe budget, the two adjacent CRFs around a target rate from measured points (``measure`` is
the caller's encode); :func:`spread_crfs` spaces the ladder's points between two ends, reusing
probes where that barely shifts the spacing. :func:`gvc_train.eval.anchors.anchor_ladder` drives
both with real encodes.
"""

from __future__ import annotations

import math
from collections.abc import Callable


def crf_bracket(
    target: float, known: dict[int, float], measure: Callable[[int], None], budget: Callable[[], int], limits: tuple[int, int],
    default_slope: float,
) -> tuple[int, int]:  # fmt: skip
    """CRFs a < b with ln bpp(a) >= target > ln bpp(b), adjacent if the probe budget allows.

    bpp falls with CRF about log-linearly, so the next probe is the log-linear interpolation
    inside the bracket, or, before there is one, an extrapolation along the local slope with
    25% overshoot (to get a bracket in one step). A side that no CRF within the limits reaches
    is that limit; a side the budget ran out on is the unmeasured next guess.
    """
    lo_crf, hi_crf = limits
    while True:
        above = [c for c in known if known[c] >= target]
        a = max(above) if above else None
        below = [c for c in known if known[c] < target and (a is None or c > a)]
        b = min(below) if below else None
        if a is not None and b is not None:
            if b - a <= 1 or budget() <= 0:
                return a, b
            guess = a + (known[a] - target) / (known[a] - known[b]) * (b - a)
            measure(min(b - 1, max(a + 1, round(guess))))
            continue
        ref = min(known) if a is None else max(known)  # every known rate is on one side of the target
        if ref == (lo_crf if a is None else hi_crf):
            return (lo_crf, ref) if a is None else (ref, hi_crf)
        step = max(1, math.ceil(1.25 * abs((target - known[ref]) / local_slope(known, ref, default_slope))))
        guess = max(lo_crf, ref - step) if a is None else min(hi_crf, ref + step)
        if budget() <= 0:
            return (guess, ref) if a is None else (ref, guess)
        measure(guess)


def local_slope(known: dict[int, float], ref: int, default: float) -> float:
    """d ln(bpp) / d CRF between ``ref`` and its nearest measured neighbour; ``default`` if unusable."""
    others = [c for c in known if c != ref]
    if not others:
        return default
    near = min(others, key=lambda c: abs(c - ref))
    slope = (known[ref] - known[near]) / (ref - near)
    return slope if -1.0 < slope < -0.01 else default


def spread_crfs(top: int, bottom: int, points: int, limits: tuple[int, int], probed: set[int]) -> list[int]:
    """``points`` distinct CRFs from ``top`` to ``bottom``, widened (within the limits) if too close."""
    lo_crf, hi_crf = limits
    top, bottom = min(top, bottom), max(top, bottom)
    while bottom - top + 1 < points:  # fewer CRFs than points in the range: reach a little beyond it
        bottom = min(hi_crf, bottom + 1)
        if bottom - top + 1 < points:
            top = max(lo_crf, top - 1)
    step = (bottom - top) / (points - 1)
    crfs = [math.floor(top + i * step + 0.5) for i in range(points)]  # step >= 1: distinct, increasing
    for i in range(1, points - 1):  # a probe one CRF away saves an encode and barely shifts the spacing
        if crfs[i] not in probed:
            near = [c for c in (crfs[i] - 1, crfs[i] + 1) if c in probed and crfs[i - 1] < c < crfs[i + 1]]
            crfs[i] = near[0] if near else crfs[i]
    return crfs
