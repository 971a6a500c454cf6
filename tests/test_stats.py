"""Intervals and paired tests of accuracies (seasoning.stats) against values known exactly."""

import numpy as np
import pytest

from seasoning import stats


def test_clopper_pearson_intervals_match_their_closed_forms():
    # 0 of n: [0, 1 - (alpha/2)^(1/n)]; n of n: [(alpha/2)^(1/n), 1].
    low, high = stats.interval(0, 10)
    assert low == 0.0 and high == pytest.approx(1 - 0.025 ** (1 / 10), abs=1e-9)
    low, high = stats.interval(10, 10)
    assert low == pytest.approx(0.025 ** (1 / 10), abs=1e-9) and high == 1.0
    # 5 of 10, from the published tables (Clopper & Pearson 1934): 0.1871 - 0.8129.
    assert stats.interval(5, 10) == pytest.approx((0.1871, 0.8129), abs=1e-4)
    # Narrower at a lower confidence and with more points.
    assert np.diff(stats.interval(50, 100, 0.9)) < np.diff(stats.interval(50, 100))
    assert np.diff(stats.interval(500, 1000)) < np.diff(stats.interval(50, 100))
    assert stats.half_width(100) == pytest.approx(np.diff(stats.interval(50, 100))[0] / 2)
    with pytest.raises(ValueError, match="11 of 10 points is not a proportion"):
        stats.interval(11, 10)


def test_accuracy_interval_needs_a_whole_count():
    # 0.18709-0.81291 (the table's 0.1871-0.8129), written outwards: never narrower.
    assert stats.accuracy_interval(0.5, 10) == [0.187, 0.813]
    assert stats.outwards(0.12341, 0.56781) == [0.1234, 0.5679]
    with pytest.raises(ValueError, match="not a count of 10 points"):
        stats.accuracy_interval(0.55, 10)


def test_paired_comparison_is_the_exact_mcnemar_test():
    b = np.zeros(20, bool)
    a = b.copy()
    a[:6] = True  # 6 points only a gets right, none only b: p = 2 / 2^6
    c = stats.compare(a, b)
    assert (c.a_only, c.b_only, c.difference) == (6, 0, 0.3)
    assert c.p_value == pytest.approx(2 / 64) and c.significant
    a7 = np.array([1, 1, 1, 1, 1, 1, 0], bool)
    b7 = np.array([0, 0, 0, 0, 0, 0, 1], bool)  # 6 against 1: p = 2 P(X <= 1), X ~ B(7, 1/2)
    c = stats.compare(a7, b7)
    assert (c.a_only, c.b_only) == (6, 1) and c.p_value == pytest.approx(2 * 8 / 128)
    assert not c.significant
    same = stats.compare(a, a)
    assert (same.a_only, same.b_only, same.p_value) == (0, 0, 1.0)
    with pytest.raises(ValueError, match="expected two"):
        stats.compare(a, a[:3])


def test_flags_pack_and_unpack():
    rng = np.random.default_rng(0)
    for n in (1, 7, 8, 9, 1000):
        flags = rng.random(n) < 0.5
        text = stats.pack_flags(flags)
        np.testing.assert_array_equal(stats.unpack_flags(text, n), flags)
    with pytest.raises(ValueError, match="do not hold 20 flags"):
        stats.unpack_flags(stats.pack_flags(np.ones(8, bool)), 20)


def test_mean_interval_of_groups():
    rng = np.random.default_rng(1)
    one = rng.random(200) < 0.3
    # One group: its Clopper-Pearson interval.
    assert stats.mean_interval([one]) == stats.outwards(*stats.interval(one.sum(), 200))
    # Four groups of 200 with equal weights: about as wide as one group of 800, centred on the
    # mean of their accuracies; a group scoring 1 still adds variance.
    groups = [rng.random(200) < p for p in (0.2, 0.4, 0.6, 1.0)]
    low, high = stats.mean_interval(groups)
    mean = np.mean([g.mean() for g in groups])
    assert low < mean < high
    pooled = np.diff(stats.interval(round(mean * 800), 800))[0]
    assert 0.7 * pooled < high - low < 1.1 * pooled
    assert stats.mean_interval([np.ones(10, bool), np.ones(10, bool)])[1] == 1.0
    with pytest.raises(ValueError, match="summing to 1"):
        stats.mean_interval(groups, [0.5, 0.5, 0.5, 0.5])


def test_the_closed_forms_equal_scipys_binomial_test():
    """`interval` (beta quantiles) and `compare`'s p-value (twice a binomial tail) are the
    exact Clopper-Pearson interval and two-sided test of scipy.stats.binomtest."""
    from scipy.stats import binomtest

    for n in [*range(1, 41), 100, 997]:
        for k in sorted({0, 1, n // 3, n // 2, n - 1, n}):
            if not 0 <= k <= n:
                continue
            ci = binomtest(k, n).proportion_ci(0.95, method="exact")
            np.testing.assert_allclose(stats.interval(k, n), (ci.low, ci.high), atol=1e-9)
            a = np.r_[np.ones(k, bool), np.zeros(n - k, bool)]
            got = stats.compare(a, ~a).p_value  # k points only a gets right, n - k only b
            np.testing.assert_allclose(got, min(binomtest(k, n, 0.5).pvalue, 1.0), rtol=1e-9)
