"""Bjontegaard delta (BD-rate, BD-metric) between two rate-distortion curves.

What
    ``bd_rate`` is the average rate difference, in percent, between a *test* codec and an *anchor*
    codec at equal quality; ``bd_metric`` (BD-PSNR when the metric is PSNR) is the average quality
    difference at equal rate. Both come back as a :class:`BDResult` that also carries the overlap
    of the two curves, the integration interval and a warning string for results to be read with care.

How (the "modern" JCT-VC/JVET CTC way)
    ``bd_rate`` interpolates log10(rate) as a function of the metric, one curve per codec, with a
    piecewise cubic Hermite interpolant (PCHIP, ``scipy.interpolate.PchipInterpolator``),
    integrates both exactly over the *overlap* of the two metric ranges, and turns the average
    log-rate difference ``D`` into ``(10**D - 1) * 100``. ``bd_metric`` swaps the axes: metric as a
    function of log10(rate), average difference over the overlapping log-rate interval.

Why PCHIP
    The original method (VCEG-M33, 2001) fits one 3rd-order polynomial through the points. With four
    points that is exact interpolation, but the cubic can overshoot and even turn back between the
    points, which produced misleading numbers during HEVC standardisation; the JCT-VC/JVET CTC Excel
    sheets switched to PCHIP, which is monotone wherever the data are, never overshoots, and works
    for any number of points >= 2. It matches the ``bjontegaard`` package's ``method="pchip"`` and
    CompressAI's pchip mode. ``bd_rate_cubic`` keeps the 2001 method to reproduce old papers.

Sign convention and units
    * ``bd_rate``: percent; negative = the test codec needs fewer bits for the same quality
      (-25.0 means 25 % rate saving). Rates may be in any positive unit (bits, bytes, kbps, bpp) as
      long as both curves use the same one: only their ratio matters.
    * ``bd_metric``: ``test - anchor`` in the metric's own unit (dB for PSNR). For a
      higher-is-better metric positive means the test codec is better; for a lower-is-better metric
      (``higher_is_better=False``, e.g. LPIPS) negative means the test codec is better.
    * ``BDResult.interval`` is on the integration axis: metric values for ``bd_rate``,
      log10(rate) for ``bd_metric``.

Robustness choices
    * Points may come in any order; they are sorted.
    * Exact duplicate points (same rate and metric) are merged silently.
    * Non-monotonic curves (a learned codec's quality ladder may have a point that costs more bits
      for less quality; equal-metric or equal-rate points are the limiting case): by default the
      *monotone envelope* is kept — every point dominated by another (no lower rate-cost, no higher
      quality) is dropped, which is the curve a user could actually operate on — and
      ``BDResult.warning`` names the curve and the dropped points. ``non_monotonic="raise"`` raises a
      ValueError naming the curve instead, for pipelines that must not silently edit data.
    * Fewer than 2 points (after the envelope): ValueError. 2-3 points: computed (PCHIP is fine
      with them) but flagged in the warning, since CTC practice is >= 4.
    * NaN/inf values, non-positive rates, mismatched lengths: ValueError naming curve and problem.

Overlap
    ``BDResult.overlap`` = (length of the overlap of the two ranges on the integration axis) /
    (length of the *anchor's* range). The anchor defines the operating range of a comparison (the
    CTC QPs, the anchor CRFs), so the question is "which fraction of the anchor's range did the
    number average over?". Unlike overlap/union (the ``bjontegaard`` package's IoU, warned below
    0.75) it does not penalise a test ladder that is wider than the anchor's, which is common for
    learned codecs and harmless: the anchor's whole range is then compared. The default warning
    threshold is 0.5: below it, the value averages over less than half of the anchor's range — with
    the usual 4-point ladder (3 segments) at most ~1.5 segments, always including an end segment
    whose PCHIP shape is set only by a one-sided end-slope rule — so it describes a local
    comparison, not the curve. No overlap at all gives ``value = nan`` and a warning rather than an
    extrapolated number (extrapolated BD numbers are what the CTC tools refuse to report).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, Sequence, Union

import numpy as np
from scipy.interpolate import PchipInterpolator

ArrayLike = Union[Sequence[float], np.ndarray]
NonMonotonic = Literal["envelope", "raise"]

DEFAULT_MIN_OVERLAP = 0.5
# CTC practice (4 QPs / 4 CRFs); fewer points are computed but flagged.
RECOMMENDED_POINTS = 4


@dataclass(frozen=True)
class BDResult:
    """One Bjontegaard delta.

    value: percent for BD-rate, metric units for BD-metric; nan when the curves do not overlap.
    overlap: overlap length / anchor range length on the integration axis, in [0, 1].
    interval: (lo, hi) integration bounds on that axis; (nan, nan) without overlap.
    warning: human-readable caveats joined by "; ", or None when there are none.
    method: "pchip" or "cubic".
    """

    value: float
    overlap: float
    interval: tuple[float, float]
    warning: str | None
    method: str


@dataclass(frozen=True)
class _Curve:
    log_rate: np.ndarray  # log10(rate), strictly increasing
    metric: np.ndarray  # oriented so that higher is better, strictly increasing
    notes: tuple[str, ...]


def _as_points(rate: ArrayLike, metric: ArrayLike, name: str) -> tuple[np.ndarray, np.ndarray]:
    rate_arr = np.asarray(rate, dtype=np.float64)
    metric_arr = np.asarray(metric, dtype=np.float64)
    if rate_arr.ndim != 1 or metric_arr.ndim != 1:
        raise ValueError(f"{name} curve: rate and metric must be 1-D, got shapes {rate_arr.shape} and {metric_arr.shape}")
    if rate_arr.shape != metric_arr.shape:
        raise ValueError(f"{name} curve: {rate_arr.size} rates but {metric_arr.size} metric values")
    if not np.all(np.isfinite(rate_arr)):
        raise ValueError(f"{name} curve: rates contain NaN or inf: {rate_arr.tolist()}")
    if not np.all(np.isfinite(metric_arr)):
        raise ValueError(f"{name} curve: metric values contain NaN or inf: {metric_arr.tolist()}")
    if np.any(rate_arr <= 0):
        raise ValueError(f"{name} curve: rates must be > 0 (BD works in log-rate), got {rate_arr.tolist()}")
    return rate_arr, metric_arr


def _prepare(
    rate: ArrayLike,
    metric: ArrayLike,
    name: str,
    *,
    higher_is_better: bool,
    non_monotonic: NonMonotonic,
) -> _Curve:
    """Validate, sort and reduce one curve to strictly increasing (log-rate, metric) pairs."""
    if non_monotonic not in ("envelope", "raise"):
        raise ValueError(f"non_monotonic must be 'envelope' or 'raise', got {non_monotonic!r}")
    rate_arr, metric_arr = _as_points(rate, metric, name)
    # Orient so that "higher is better": then a valid RD curve is increasing in both coordinates
    # and one envelope rule serves PSNR/MS-SSIM and LPIPS/DISTS alike.
    oriented = metric_arr if higher_is_better else -metric_arr
    # Exact duplicates carry no conflicting information (e.g. a point logged twice): merge them.
    pairs = np.unique(np.stack([rate_arr, oriented], axis=1), axis=0)
    # Cheapest first; at equal rate, best quality first so that the envelope keeps it.
    order = np.lexsort((-pairs[:, 1], pairs[:, 0]))
    pairs = pairs[order]

    kept: list[int] = []
    dropped: list[int] = []
    for i, (_, quality) in enumerate(pairs):
        # A point survives only if it beats the quality of every cheaper-or-equal point; otherwise
        # some other point gives at least its quality for at most its rate.
        if not kept or quality > pairs[kept[-1], 1]:
            kept.append(i)
        else:
            dropped.append(i)

    def describe(idx: list[int]) -> str:
        sign = 1.0 if higher_is_better else -1.0
        return ", ".join(f"(rate={pairs[i, 0]:.6g}, metric={sign * pairs[i, 1]:.6g})" for i in idx)

    notes: list[str] = []
    if dropped:
        if non_monotonic == "raise":
            raise ValueError(
                f"{name} curve is not monotonic: point(s) {describe(dropped)} cost at least as much rate as "
                f"another point for no better metric (duplicate or decreasing metric values); "
                f"fix the data or pass non_monotonic='envelope'"
            )
        notes.append(f"{name} curve: dropped {len(dropped)} dominated point(s) {describe(dropped)} to keep the monotone envelope")

    if len(kept) < 2:
        hint = ""
        if pairs.shape[0] >= 2 and dropped:
            hint = (
                f"; the metric does not improve as rate rises with higher_is_better={higher_is_better}: "
                f"is the flag right for this metric?"
            )
        raise ValueError(f"{name} curve has {len(kept)} usable point(s); a BD delta needs at least 2{hint}")
    if len(kept) < RECOMMENDED_POINTS:
        notes.append(f"{name} curve has only {len(kept)} points (CTC practice is >= {RECOMMENDED_POINTS}); the interpolation is weakly constrained")

    good = pairs[kept]
    return _Curve(log_rate=np.log10(good[:, 0]), metric=good[:, 1], notes=tuple(notes))


def _integral_mean(x: np.ndarray, y: np.ndarray, lo: float, hi: float, method: str) -> float:
    """Mean of the interpolant of y(x) over [lo, hi] (lo, hi inside the range of x)."""
    if method == "pchip":
        # extrapolate=False: an integration bound outside the data would give nan, not a guess.
        return float(PchipInterpolator(x, y, extrapolate=False).integrate(lo, hi)) / (hi - lo)
    # The 2001 method: one cubic polynomial through (or least-squares over) all points.
    antiderivative = np.polyint(np.polyfit(x, y, 3))
    return float(np.polyval(antiderivative, hi) - np.polyval(antiderivative, lo)) / (hi - lo)


def _delta(
    x_anchor: np.ndarray,
    y_anchor: np.ndarray,
    x_test: np.ndarray,
    y_test: np.ndarray,
    *,
    notes: list[str],
    axis_name: str,
    min_overlap: float,
    method: str,
    axis_sign: float = 1.0,
) -> tuple[float, float, tuple[float, float], str | None]:
    """Average of y_test - y_anchor over the overlap of the x ranges -> (mean, overlap, interval, warning).

    axis_sign only affects messages: -1 when x is a negated lower-is-better metric, so that the
    ranges are quoted in the metric's own units.
    """

    def span(a: float, b: float) -> str:
        a, b = sorted((axis_sign * a, axis_sign * b))
        return f"[{a:.6g}, {b:.6g}]"

    if not 0.0 <= min_overlap <= 1.0:
        raise ValueError(f"min_overlap must be in [0, 1], got {min_overlap}")
    lo = max(float(x_anchor[0]), float(x_test[0]))
    hi = min(float(x_anchor[-1]), float(x_test[-1]))
    anchor_span = float(x_anchor[-1] - x_anchor[0])
    if hi <= lo:
        notes.append(
            f"curves do not overlap on the {axis_name} axis (anchor {span(x_anchor[0], x_anchor[-1])}, "
            f"test {span(x_test[0], x_test[-1])}); no BD value without extrapolation"
        )
        return math.nan, 0.0, (math.nan, math.nan), "; ".join(notes)
    overlap = min((hi - lo) / anchor_span, 1.0)
    if overlap < min_overlap:
        notes.append(
            f"curves overlap on only {overlap:.0%} of the anchor's {axis_name} range "
            f"({span(lo, hi)} of {span(x_anchor[0], x_anchor[-1])}; threshold {min_overlap:.0%})"
        )
    mean = _integral_mean(x_test, y_test, lo, hi, method) - _integral_mean(x_anchor, y_anchor, lo, hi, method)
    return mean, overlap, (lo, hi), ("; ".join(notes) or None)


def _prepare_pair(
    rate_anchor: ArrayLike,
    metric_anchor: ArrayLike,
    rate_test: ArrayLike,
    metric_test: ArrayLike,
    higher_is_better: bool,
    non_monotonic: NonMonotonic,
    min_points: int = 2,
) -> tuple[_Curve, _Curve, list[str]]:
    anchor = _prepare(rate_anchor, metric_anchor, "anchor", higher_is_better=higher_is_better, non_monotonic=non_monotonic)
    test = _prepare(rate_test, metric_test, "test", higher_is_better=higher_is_better, non_monotonic=non_monotonic)
    for name, curve in (("anchor", anchor), ("test", test)):
        if curve.log_rate.size < min_points:
            raise ValueError(f"{name} curve has {curve.log_rate.size} usable point(s); this method needs at least {min_points}")
    return anchor, test, [*anchor.notes, *test.notes]


def _bd_rate(
    rate_anchor: ArrayLike,
    metric_anchor: ArrayLike,
    rate_test: ArrayLike,
    metric_test: ArrayLike,
    *,
    higher_is_better: bool,
    non_monotonic: NonMonotonic,
    min_overlap: float,
    method: str,
) -> BDResult:
    anchor, test, notes = _prepare_pair(
        rate_anchor, metric_anchor, rate_test, metric_test, higher_is_better, non_monotonic, 4 if method == "cubic" else 2
    )
    mean_log_diff, overlap, (lo, hi), warning = _delta(
        anchor.metric, anchor.log_rate, test.metric, test.log_rate,
        notes=notes, axis_name="metric", min_overlap=min_overlap, method=method,
        axis_sign=1.0 if higher_is_better else -1.0,
    )
    if not higher_is_better:
        # The curves were integrated over the negated metric; report bounds in the metric's units.
        lo, hi = -hi, -lo
    value = (10.0**mean_log_diff - 1.0) * 100.0 if math.isfinite(mean_log_diff) else math.nan
    return BDResult(value=value, overlap=overlap, interval=(lo, hi), warning=warning, method=method)


def bd_rate(
    rate_anchor: ArrayLike,
    metric_anchor: ArrayLike,
    rate_test: ArrayLike,
    metric_test: ArrayLike,
    *,
    higher_is_better: bool = True,
    non_monotonic: NonMonotonic = "envelope",
    min_overlap: float = DEFAULT_MIN_OVERLAP,
) -> BDResult:
    """BD-rate in percent (PCHIP); negative = the test codec needs fewer bits at equal quality.

    ``interval`` is in metric units; ``overlap`` is relative to the anchor's metric range.
    """
    return _bd_rate(
        rate_anchor, metric_anchor, rate_test, metric_test,
        higher_is_better=higher_is_better, non_monotonic=non_monotonic, min_overlap=min_overlap, method="pchip",
    )


def bd_metric(
    rate_anchor: ArrayLike,
    metric_anchor: ArrayLike,
    rate_test: ArrayLike,
    metric_test: ArrayLike,
    *,
    higher_is_better: bool = True,
    non_monotonic: NonMonotonic = "envelope",
    min_overlap: float = DEFAULT_MIN_OVERLAP,
) -> BDResult:
    """BD-metric (BD-PSNR for PSNR): mean of ``metric_test - metric_anchor`` at equal rate (PCHIP).

    In the metric's own unit. ``interval`` is in log10(rate); ``overlap`` is relative to the
    anchor's log-rate range.
    """
    anchor, test, notes = _prepare_pair(rate_anchor, metric_anchor, rate_test, metric_test, higher_is_better, non_monotonic)
    mean_diff, overlap, interval, warning = _delta(
        anchor.log_rate, anchor.metric, test.log_rate, test.metric,
        notes=notes, axis_name="log10(rate)", min_overlap=min_overlap, method="pchip",
    )
    # Undo the orientation so the result is test - anchor in the metric's own units.
    value = mean_diff if higher_is_better else -mean_diff
    return BDResult(value=value, overlap=overlap, interval=interval, warning=warning, method="pchip")


def bd_rate_cubic(
    rate_anchor: ArrayLike,
    metric_anchor: ArrayLike,
    rate_test: ArrayLike,
    metric_test: ArrayLike,
    *,
    higher_is_better: bool = True,
    non_monotonic: NonMonotonic = "envelope",
    min_overlap: float = DEFAULT_MIN_OVERLAP,
) -> BDResult:
    """The original VCEG-M33 (2001) BD-rate: a 3rd-order polynomial fit of log10(rate) vs metric.

    Only to compare with old papers; needs >= 4 points per curve. Same validation, sign and overlap
    rules as :func:`bd_rate`.
    """
    return _bd_rate(
        rate_anchor, metric_anchor, rate_test, metric_test,
        higher_is_better=higher_is_better, non_monotonic=non_monotonic, min_overlap=min_overlap, method="cubic",
    )


__all__ = ["BDResult", "DEFAULT_MIN_OVERLAP", "bd_metric", "bd_rate", "bd_rate_cubic"]
