"""Bjontegaard delta (eval.bdrate): known answers by construction, an independent PCHIP cross-check,
overlap handling, input validation and non-monotonic curves."""

from __future__ import annotations

import math

import numpy as np
import pytest

from gvc_train.eval.bdrate import BDResult, bd_metric, bd_rate, bd_rate_cubic

# Realistic ladders (rates in kbps). The first three are libx265 measurements at different presets,
# as published with the `bjontegaard` package's examples; the last is an x264-like CRF ladder against
# a 6-point learned-codec ladder that spans a wider quality range.
LADDERS: dict[str, tuple[list[float], list[float], list[float], list[float]]] = {
    "x265_presets": (
        [9487.76, 4593.60, 2486.44, 1358.24], [40.037, 38.615, 36.845, 34.851],
        [9787.80, 4469.00, 2451.52, 1356.24], [40.121, 38.651, 36.970, 34.987],
    ),
    "x265_high_rate": (
        [82472.76, 26875.24, 9487.76, 4593.6], [43.825, 41.404, 40.037, 38.615],
        [99896.96, 33952.04, 9787.8, 4469.0], [44.731, 41.875, 40.121, 38.651],
    ),
    "x265_six_points": (
        [82472.76, 26875.24, 9487.76, 4593.6, 3600, 2900], [43.825, 41.404, 40.037, 38.615, 36.5, 35.1],
        [99896.96, 33952.04, 9787.8, 4469.0, 4040, 3300], [44.731, 41.875, 40.121, 38.651, 37, 36.5],
    ),
    "x264_vs_learned": (
        [12500, 6100, 3050, 1580, 850], [42.1, 39.6, 37.0, 34.4, 31.9],
        [9800, 5200, 2600, 1350, 700, 380], [42.8, 40.5, 38.1, 35.6, 33.0, 30.2],
    ),
}
ANCHOR_RATES = np.array([850.0, 1580.0, 3050.0, 6100.0, 12500.0])
ANCHOR_PSNR = np.array([31.9, 34.4, 37.0, 39.6, 42.1])


# ---------------------------------------------------------------------------------------------
# Independent reference: Fritsch-Carlson PCHIP written out by hand (no scipy), evaluated on a
# dense grid and integrated with the trapezoid rule, over the overlap of the two x ranges.


def _pchip_slopes(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    h = np.diff(x)
    secant = np.diff(y) / h
    n = x.size
    if n == 2:
        return np.full(2, secant[0])
    slopes = np.zeros(n)
    for k in range(1, n - 1):
        s0, s1 = secant[k - 1], secant[k]
        if s0 * s1 > 0:  # zero where the data turn or are flat: keeps the interpolant monotone
            w0, w1 = 2 * h[k] + h[k - 1], h[k] + 2 * h[k - 1]
            slopes[k] = (w0 + w1) / (w0 / s0 + w1 / s1)

    def end_slope(h0: float, h1: float, s0: float, s1: float) -> float:
        d = ((2 * h0 + h1) * s0 - h0 * s1) / (h0 + h1)
        if np.sign(d) != np.sign(s0):
            return 0.0
        if np.sign(s0) != np.sign(s1) and abs(d) > 3 * abs(s0):
            return 3 * s0
        return d

    slopes[0] = end_slope(h[0], h[1], secant[0], secant[1])
    slopes[-1] = end_slope(h[-1], h[-2], secant[-1], secant[-2])
    return slopes


def _pchip_eval(x: np.ndarray, y: np.ndarray, at: np.ndarray) -> np.ndarray:
    slopes = _pchip_slopes(x, y)
    k = np.clip(np.searchsorted(x, at, side="right") - 1, 0, x.size - 2)
    h = x[k + 1] - x[k]
    t = (at - x[k]) / h
    h00, h10, h01, h11 = 2 * t**3 - 3 * t**2 + 1, t**3 - 2 * t**2 + t, -2 * t**3 + 3 * t**2, t**3 - t**2
    return h00 * y[k] + h10 * h * slopes[k] + h01 * y[k + 1] + h11 * h * slopes[k + 1]


def _reference_mean_diff(xa: np.ndarray, ya: np.ndarray, xt: np.ndarray, yt: np.ndarray) -> float:
    oa, ot = np.argsort(xa), np.argsort(xt)
    xa, ya, xt, yt = xa[oa], ya[oa], xt[ot], yt[ot]
    grid = np.linspace(max(xa[0], xt[0]), min(xa[-1], xt[-1]), 200_001)
    diff = _pchip_eval(xt, yt, grid) - _pchip_eval(xa, ya, grid)
    return float(np.sum((diff[1:] + diff[:-1]) * np.diff(grid)) / 2 / (grid[-1] - grid[0]))


def _reference_bd_rate(ra, ma, rt, mt) -> float:
    mean = _reference_mean_diff(np.asarray(ma, float), np.log10(ra), np.asarray(mt, float), np.log10(rt))
    return (10**mean - 1) * 100


def _reference_bd_metric(ra, ma, rt, mt) -> float:
    return _reference_mean_diff(np.log10(ra), np.asarray(ma, float), np.log10(rt), np.asarray(mt, float))


# ---------------------------------------------------------------------------------------------
# Known answers by construction


@pytest.mark.parametrize("k", [0.5, 0.8, 1.0, 1.37, 2.0])
def test_rates_scaled_by_k_give_bd_rate_k_minus_one(k: float) -> None:
    res = bd_rate(ANCHOR_RATES, ANCHOR_PSNR, ANCHOR_RATES * k, ANCHOR_PSNR)
    assert isinstance(res, BDResult)
    assert res.value == pytest.approx((k - 1) * 100, abs=1e-9)
    assert res.overlap == 1.0
    assert res.interval == (ANCHOR_PSNR.min(), ANCHOR_PSNR.max())
    assert res.warning is None
    assert res.method == "pchip"


@pytest.mark.parametrize("d", [-1.25, 0.0, 0.4, 2.0])
def test_metric_shifted_by_d_gives_bd_metric_d(d: float) -> None:
    res = bd_metric(ANCHOR_RATES, ANCHOR_PSNR, ANCHOR_RATES, ANCHOR_PSNR + d)
    assert res.value == pytest.approx(d, abs=1e-9)
    assert res.overlap == 1.0
    assert res.interval == pytest.approx((math.log10(850.0), math.log10(12500.0)), abs=1e-12)
    assert res.warning is None


@pytest.mark.parametrize("k, d", [(0.7, 0.5), (1.3, -0.8), (0.9, 1.5)])
def test_scaled_and_shifted_linear_curve_gives_closed_form(k: float, d: float) -> None:
    # log10(rate) = a + b * psnr exactly, which PCHIP reproduces. Test = anchor with rates * k and
    # PSNR + d: at equal PSNR its log-rate differs by log10(k) - b*d everywhere; at equal rate its
    # PSNR differs by d - log10(k)/b. The shift also makes the overlap partial.
    a, b = -1.4, 0.13
    psnr = np.array([30.0, 32.5, 35.5, 38.0, 41.0])
    rate = 10 ** (a + b * psnr)
    rate_t, psnr_t = rate * k, psnr + d

    res = bd_rate(rate, psnr, rate_t, psnr_t)
    assert res.value == pytest.approx((10 ** (math.log10(k) - b * d) - 1) * 100, abs=1e-9)
    assert res.overlap == pytest.approx((11.0 - abs(d)) / 11.0, abs=1e-12)
    assert res.interval == pytest.approx((max(30.0, 30.0 + d), min(41.0, 41.0 + d)), abs=1e-12)

    res_m = bd_metric(rate, psnr, rate_t, psnr_t)
    assert res_m.value == pytest.approx(d - math.log10(k) / b, abs=1e-9)
    assert res_m.overlap == pytest.approx((11.0 * b - abs(math.log10(k))) / (11.0 * b), abs=1e-12)


def test_linear_curves_with_different_slopes_use_only_the_overlap() -> None:
    # Anchor log10(r) = a1 + b1*m on m in [30, 40]; test a2 + b2*m on [33, 45]. The mean of the
    # (linear) difference over the overlap [33, 40] is its value at 36.5; over the whole anchor
    # range it would be its value at 35, i.e. a different answer, so this pins the interval.
    a1, b1, a2, b2 = -2.0, 0.15, -2.3, 0.155
    m_a = np.array([30.0, 31.5, 34.0, 37.0, 40.0])
    m_t = np.array([33.0, 36.0, 38.5, 42.0, 45.0])
    r_a, r_t = 10 ** (a1 + b1 * m_a), 10 ** (a2 + b2 * m_t)

    res = bd_rate(r_a, m_a, r_t, m_t)
    expected = (10 ** ((a2 - a1) + (b2 - b1) * 36.5) - 1) * 100
    whole_anchor_range = (10 ** ((a2 - a1) + (b2 - b1) * 35.0) - 1) * 100
    assert res.value == pytest.approx(expected, abs=1e-9)
    assert abs(res.value - whole_anchor_range) > 1.0
    assert res.interval == pytest.approx((33.0, 40.0), abs=1e-12)
    assert res.overlap == pytest.approx(0.7, abs=1e-12)
    assert res.warning is None

    # BD-PSNR: m = (L - a)/b on each curve, averaged over the log-rate overlap [a2+33*b2, a1+40*b1].
    lo, hi = a2 + 33 * b2, a1 + 40 * b1
    mid = (lo + hi) / 2
    res_m = bd_metric(r_a, m_a, r_t, m_t)
    assert res_m.value == pytest.approx((mid - a2) / b2 - (mid - a1) / b1, abs=1e-9)
    assert res_m.interval == pytest.approx((lo, hi), abs=1e-12)
    assert res_m.overlap == pytest.approx((hi - lo) / (10 * b1), abs=1e-12)


def test_cubic_method_is_exact_for_cubic_curves() -> None:
    # The 2001 method fits a cubic through 4 points: exact when log-rate *is* a cubic in PSNR.
    # Reference integral by 3-point Gauss-Legendre, exact for cubics.
    cubic_a = np.poly1d([2e-4, -0.02, 0.75, -7.0])
    cubic_t = np.poly1d([1.5e-4, -0.016, 0.68, -6.8])
    m_a, m_t = np.array([30.0, 33.0, 37.0, 41.0]), np.array([31.0, 34.0, 38.0, 43.0])
    res = bd_rate_cubic(10 ** cubic_a(m_a), m_a, 10 ** cubic_t(m_t), m_t)
    nodes, weights = np.polynomial.legendre.leggauss(3)
    lo, hi = 31.0, 41.0
    at = (hi - lo) / 2 * nodes + (hi + lo) / 2
    mean = float(np.sum(weights * (cubic_t(at) - cubic_a(at)))) / 2
    assert res.value == pytest.approx((10**mean - 1) * 100, abs=1e-6)
    assert res.method == "cubic"
    assert res.interval == (lo, hi)
    # PCHIP is not exact on a genuinely cubic curve, so the two methods must differ here.
    assert bd_rate(10 ** cubic_a(m_a), m_a, 10 ** cubic_t(m_t), m_t).value != pytest.approx(res.value, abs=1e-6)


# ---------------------------------------------------------------------------------------------
# Cross-check against the hand-written PCHIP on realistic ladders


@pytest.mark.parametrize("name", sorted(LADDERS))
def test_matches_independent_pchip_on_realistic_ladders(name: str) -> None:
    ra, ma, rt, mt = LADDERS[name]
    assert bd_rate(ra, ma, rt, mt).value == pytest.approx(_reference_bd_rate(ra, ma, rt, mt), abs=1e-3)
    assert bd_metric(ra, ma, rt, mt).value == pytest.approx(_reference_bd_metric(ra, ma, rt, mt), abs=1e-5)


def test_learned_codec_example_has_the_expected_sign() -> None:
    ra, ma, rt, mt = LADDERS["x264_vs_learned"]
    assert bd_rate(ra, ma, rt, mt).value < -10  # fewer bits for the same PSNR
    assert bd_metric(ra, ma, rt, mt).value > 0.5  # more dB for the same rate
    # Swapping roles flips the sign (not the magnitude: the ratio is taken the other way round).
    assert bd_rate(rt, mt, ra, ma).value > 10


def test_cubic_and_pchip_agree_on_well_behaved_ladders() -> None:
    ra, ma, rt, mt = LADDERS["x265_presets"]
    assert bd_rate_cubic(ra, ma, rt, mt).value == pytest.approx(bd_rate(ra, ma, rt, mt).value, abs=0.1)


# ---------------------------------------------------------------------------------------------
# Overlap


def test_non_overlapping_curves_give_nan_and_warning() -> None:
    res = bd_rate(ANCHOR_RATES, ANCHOR_PSNR, ANCHOR_RATES * 0.5, ANCHOR_PSNR + 15.0)
    assert math.isnan(res.value)
    assert res.overlap == 0.0
    assert all(math.isnan(v) for v in res.interval)
    assert res.warning is not None and "do not overlap" in res.warning
    res_m = bd_metric(ANCHOR_RATES, ANCHOR_PSNR, ANCHOR_RATES * 100.0, ANCHOR_PSNR)
    assert math.isnan(res_m.value) and res_m.warning is not None and "do not overlap" in res_m.warning


def test_small_overlap_gives_value_and_warning() -> None:
    # Anchor spans 10.2 dB, test is shifted by 7 dB: 3.2 dB overlap = 31 % of the anchor's range.
    res = bd_rate(ANCHOR_RATES, ANCHOR_PSNR, ANCHOR_RATES, ANCHOR_PSNR + 7.0)
    assert math.isfinite(res.value) and res.value < 0
    assert res.overlap == pytest.approx(3.2 / 10.2, abs=1e-12)
    assert res.warning is not None and "overlap on only 31%" in res.warning
    assert bd_rate(ANCHOR_RATES, ANCHOR_PSNR, ANCHOR_RATES, ANCHOR_PSNR + 7.0, min_overlap=0.3).warning is None
    with pytest.raises(ValueError, match="min_overlap"):
        bd_rate(ANCHOR_RATES, ANCHOR_PSNR, ANCHOR_RATES, ANCHOR_PSNR, min_overlap=1.5)


def test_overlap_is_relative_to_the_anchor_range() -> None:
    wide_psnr = np.array([28.0, 31.0, 34.0, 37.0, 40.0, 43.0, 46.0])
    wide_rates = 10 ** (-1.4 + 0.13 * wide_psnr)
    # A test ladder wider than the anchor's covers the anchor's whole range: no warning.
    res = bd_rate(ANCHOR_RATES, ANCHOR_PSNR, wide_rates, wide_psnr)
    assert res.overlap == 1.0 and res.warning is None
    # The other way round only 10.2 of the anchor's 18 dB are compared.
    res = bd_rate(wide_rates, wide_psnr, ANCHOR_RATES, ANCHOR_PSNR)
    assert res.overlap == pytest.approx(10.2 / 18.0, abs=1e-12)


# ---------------------------------------------------------------------------------------------
# Input handling


def test_point_order_does_not_matter() -> None:
    ra, ma, rt, mt = (np.asarray(v, float) for v in LADDERS["x264_vs_learned"])
    rng = np.random.default_rng(0)
    pa, pt = rng.permutation(ra.size), rng.permutation(rt.size)
    for fn in (bd_rate, bd_metric):
        base = fn(ra, ma, rt, mt)
        for args in ((ra[pa], ma[pa], rt[pt], mt[pt]), (ra[::-1], ma[::-1], rt[::-1], mt[::-1])):
            shuffled = fn(*args)
            assert shuffled.value == pytest.approx(base.value, abs=1e-12)
            assert shuffled.interval == base.interval and shuffled.overlap == base.overlap


@pytest.mark.parametrize(
    "anchor, test, match",
    [
        (([1000, float("nan"), 3000, 4000], [30, 33, 36, 39]), None, r"anchor curve: rates contain NaN"),
        (None, ([1000, 2000, 3000, 4000], [30, 33, float("inf"), 39]), r"test curve: metric values contain NaN or inf"),
        (([1000, 0, 3000, 4000], [30, 33, 36, 39]), None, r"anchor curve: rates must be > 0"),
        (None, ([1000, -2000, 3000, 4000], [30, 33, 36, 39]), r"test curve: rates must be > 0"),
        (None, ([1000, 2000, 3000], [30, 33, 36, 39]), r"test curve: 3 rates but 4 metric values"),
        (([1000.0], [30.0]), None, r"anchor curve has 1 usable point\(s\); a BD delta needs at least 2"),
        (None, ([], []), r"test curve has 0 usable point"),
        (([[1000, 2000]], [[30, 33]]), None, r"anchor curve: rate and metric must be 1-D"),
    ],
)
def test_invalid_inputs_raise_value_error_naming_the_problem(anchor, test, match) -> None:
    anchor = anchor or (ANCHOR_RATES, ANCHOR_PSNR)
    test = test or (ANCHOR_RATES, ANCHOR_PSNR)
    for fn in (bd_rate, bd_metric):
        with pytest.raises(ValueError, match=match):
            fn(anchor[0], anchor[1], test[0], test[1])


def test_two_and_three_points_work_with_a_warning() -> None:
    a, b = -1.4, 0.13
    m2, m3 = np.array([32.0, 40.0]), np.array([31.0, 35.0, 41.0])
    res = bd_rate(10 ** (a + b * m3), m3, 0.8 * 10 ** (a + b * m2), m2)  # linear: exact for any count
    assert res.value == pytest.approx(-20.0, abs=1e-9)
    assert res.warning is not None
    assert "anchor curve has only 3 points" in res.warning and "test curve has only 2 points" in res.warning
    assert bd_rate(ANCHOR_RATES, ANCHOR_PSNR, ANCHOR_RATES, ANCHOR_PSNR).warning is None  # 5 points: silent
    with pytest.raises(ValueError, match="needs at least 4"):
        bd_rate_cubic(10 ** (a + b * m3), m3, ANCHOR_RATES, ANCHOR_PSNR)


def test_dominated_point_is_dropped_by_default_and_reported() -> None:
    # A learned codec's quality 3 costs more than quality 2 but scores lower: it is dominated.
    rt = np.array([700.0, 1400.0, 2900.0, 3100.0, 5800.0])
    mt = np.array([33.0, 35.6, 38.2, 37.9, 40.5])
    clean = bd_rate(ANCHOR_RATES, ANCHOR_PSNR, np.delete(rt, 3), np.delete(mt, 3))
    res = bd_rate(ANCHOR_RATES, ANCHOR_PSNR, rt, mt)
    assert res.value == pytest.approx(clean.value, abs=1e-12)
    assert res.warning is not None and "test curve: dropped 1 dominated point(s) (rate=3100, metric=37.9)" in res.warning
    assert bd_metric(ANCHOR_RATES, ANCHOR_PSNR, rt, mt).value == pytest.approx(
        bd_metric(ANCHOR_RATES, ANCHOR_PSNR, np.delete(rt, 3), np.delete(mt, 3)).value, abs=1e-12
    )
    with pytest.raises(ValueError, match=r"test curve is not monotonic: point\(s\) \(rate=3100, metric=37.9\)"):
        bd_rate(ANCHOR_RATES, ANCHOR_PSNR, rt, mt, non_monotonic="raise")


def test_duplicate_metric_keeps_the_cheaper_point_and_exact_duplicates_merge() -> None:
    # Same PSNR at two rates: only the cheaper one is on the envelope.
    ra = np.append(ANCHOR_RATES, 3500.0)
    ma = np.append(ANCHOR_PSNR, 37.0)
    res = bd_rate(ra, ma, ANCHOR_RATES * 0.9, ANCHOR_PSNR)
    assert res.value == pytest.approx(-10.0, abs=1e-9)
    assert res.warning is not None and "anchor curve: dropped 1 dominated point(s) (rate=3500, metric=37)" in res.warning
    with pytest.raises(ValueError, match="anchor curve is not monotonic"):
        bd_rate(ra, ma, ANCHOR_RATES, ANCHOR_PSNR, non_monotonic="raise")
    # The same point listed twice is harmless: merged without a warning, even in "raise" mode.
    ra2, ma2 = np.append(ANCHOR_RATES, ANCHOR_RATES[2]), np.append(ANCHOR_PSNR, ANCHOR_PSNR[2])
    res = bd_rate(ra2, ma2, ANCHOR_RATES * 0.9, ANCHOR_PSNR, non_monotonic="raise")
    assert res.value == pytest.approx(-10.0, abs=1e-9) and res.warning is None


def test_lower_is_better_metric() -> None:
    lpips = np.array([0.32, 0.25, 0.18, 0.12, 0.08])  # falls as rate rises
    res = bd_rate(ANCHOR_RATES, lpips, ANCHOR_RATES * 0.75, lpips, higher_is_better=False)
    assert res.value == pytest.approx(-25.0, abs=1e-9)
    assert res.interval == pytest.approx((0.08, 0.32), abs=1e-12)
    res_m = bd_metric(ANCHOR_RATES, lpips, ANCHOR_RATES, lpips - 0.01, higher_is_better=False)
    assert res_m.value == pytest.approx(-0.01, abs=1e-12)  # test - anchor: lower LPIPS at equal rate
    # Forgetting the flag collapses the envelope to one point; the error says what to check.
    with pytest.raises(ValueError, match="higher_is_better"):
        bd_rate(ANCHOR_RATES, lpips, ANCHOR_RATES, lpips)
