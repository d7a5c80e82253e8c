"""Where an anchor's CRF ladder goes: the search on a rate curve, no encoding here.

An anchor's bits per pixel fall with CRF about log-linearly. :func:`crf_bracket` finds, within a
probe budget, the two adjacent CRFs around a target rate from measured points (``measure`` is
the caller's encode); :func:`spread_crfs` spaces the ladder's points between two ends, reusing
probes where that barely shifts the spacing. :func:`quality_span_crfs` uses both on quality
instead of rate, to extend a ladder into the codecs' quality range when the codecs are below all
of it. :func:`gvc_train.eval.anchors.anchor_ladder` drives them with real encodes.
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


# Quality per CRF near the top of the CRF range, in dB (PSNR; MS-SSIM as -10 log10(1 - MS-SSIM)):
# the quality search's first guess of the slope, before two measured points give a local one.
DB_PER_CRF = -0.4
# The points the quality span aims for from the last CRF above the codecs' top quality to the
# first below their lowest, ends included: three inside, so the shared interval holds >= 4 with an end.
SPAN_POINTS = 5


def quality_span_crfs(
    known: dict[int, dict[str, float]], codec_range: dict[str, tuple[float, float]], measure: Callable[[int], None],
    budget: Callable[[], int], limits: tuple[int, int], default_slope: float = DB_PER_CRF, points: int = SPAN_POINTS,
) -> None:  # fmt: skip
    """Extend an anchor's measured CRFs into the codecs' quality range, metric by metric.

    ``known`` maps each measured CRF to its qualities (higher is better, on a scale about linear
    in CRF, e.g. dB); ``measure(crf)`` encodes, decodes and adds ``known[crf]``. For each metric
    of ``codec_range`` ((lowest, highest) quality of the codecs) on which the anchor's lowest
    quality is still above the codecs' highest, the CRFs go up (:func:`crf_bracket` on quality)
    until one is below it, or to the CRF limit; then down to the codecs' lowest quality, and up
    to ``points`` CRFs spread (:func:`spread_crfs`) between the last CRF above the codecs' range
    and the first below it, so the shared interval is covered from both sides and inside. A
    metric whose curves already overlap costs nothing; the whole search stops when ``budget()``
    (encodes left) is spent.
    """
    ladder = set(known)  # whether a metric needs the span is the rate ladder's to say, not another metric's probes
    for metric, (bottom, top) in codec_range.items():
        values = {c: q[metric] for c, q in known.items() if metric in q}
        on_ladder = [v for c, v in values.items() if c in ladder]
        if not on_ladder or min(on_ladder) <= top:
            continue  # already overlapping (or nothing to compare): the rate ladder stands

        def measure_metric(crf: int, values: dict[int, float] = values, metric: str = metric) -> None:
            measure(crf)
            if metric in known[crf]:  # a point without the metric (not measurable there) is not on its curve
                values[crf] = known[crf][metric]

        above, past = crf_bracket(top, values, measure_metric, budget, limits, default_slope)
        if past not in values or values[past] >= top:
            continue  # the CRF limit (or the budget) came first: no overlap on this metric
        last_inside, below = crf_bracket(bottom, values, measure_metric, budget, limits, default_slope)
        end = below if below in values else last_inside
        if end - above + 1 <= points:
            spread = list(range(above, end + 1))
        else:
            spread = spread_crfs(above, end, points, limits, set(values))
        for crf in spread:
            if crf not in values and budget() > 0:
                measure_metric(crf)
