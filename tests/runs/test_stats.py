"""Statistics: the Student-t interval, IQM, probability of improvement, the stratified bootstrap."""

from __future__ import annotations

import math

import numpy as np
import pytest

from agents.runs.stats import (
    iqm,
    mean_confidence_interval,
    paired_bootstrap,
    probability_of_improvement,
    relative_gain_interval,
    slope,
    stratified_bootstrap,
    student_t_ppf,
)


def test_student_t_interval_on_a_known_sample() -> None:
    for df, t in [(1, 12.7062), (2, 4.3027), (4, 2.7764), (9, 2.2622), (29, 2.0452)]:
        assert student_t_ppf(0.975, df) == pytest.approx(t, abs=1e-4)
    mean, low, high = mean_confidence_interval([1.0, 2.0, 3.0, 4.0, 5.0])
    # mean 3, s = sqrt(2.5), half-width t_{0.975,4} * s / sqrt(5) = 2.7764 * 0.7071
    assert (mean, low, high) == pytest.approx((3.0, 1.0368, 4.9632), abs=1e-4)
    assert mean_confidence_interval([1.0, 3.0], 0.9)[2] == pytest.approx(2.0 + 6.3138, abs=1e-4)
    single = mean_confidence_interval([4.0])
    assert single[0] == 4.0 and math.isnan(single[1]) and math.isnan(single[2])


def test_iqm_drops_a_quarter_from_each_end() -> None:
    assert iqm(np.array([100.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, -100.0])) == pytest.approx(3.5)  # mean of 2..5
    assert iqm(np.array([1.0, 2.0, 3.0])) == pytest.approx(2.0)  # n // 4 == 0: the plain mean
    np.testing.assert_allclose(iqm(np.array([[1.0, 2.0, 3.0, 40.0], [0.0, 0.0, 1.0, 1.0]])), [2.5, 0.5])


def test_probability_of_improvement_counts_ties_as_half() -> None:
    assert probability_of_improvement(np.array([1.0, -2.0, 0.0, 3.0])) == pytest.approx(0.625)


def test_stratified_bootstrap_resamples_within_strata() -> None:
    # Each stratum is constant: resampling within strata cannot move the mean, resampling the
    # pooled values (an unstratified bootstrap) would.
    point, low, high = stratified_bootstrap([[5.0, 5.0, 5.0], [0.0, 0.0, 0.0]], "mean", reps=2000)
    assert point == low == high == 2.5
    # Deterministic for a seed; a different seed moves the bounds a little.
    rng = np.random.default_rng(0)
    strata = [rng.normal(size=30), rng.normal(size=30)]
    assert stratified_bootstrap(strata) == stratified_bootstrap(strata)
    assert stratified_bootstrap(strata, seed=1) != stratified_bootstrap(strata)


def test_stratified_bootstrap_covers_the_true_mean_about_95_percent_of_the_time() -> None:
    rng = np.random.default_rng(123)
    trials, covered = 300, 0
    for _ in range(trials):
        strata = [rng.normal(1.0, 2.0, size=40), rng.normal(-1.0, 0.5, size=40)]  # true pooled mean 0
        _, low, high = stratified_bootstrap(strata, "mean", reps=2000, seed=int(rng.integers(1 << 31)))
        covered += low <= 0.0 <= high
    # A percentile bootstrap on n = 80 under-covers slightly; 300 trials give a binomial sd of 1.3 %.
    assert 0.89 <= covered / trials <= 0.99


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"statistic": "median"}, "statistic"),
    ({"confidence": 1.0}, "confidence"),
    ({"reps": 0}, "reps"),
])
def test_bad_bootstrap_arguments_name_the_field(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        stratified_bootstrap([[1.0, 2.0]], **kwargs)
    with pytest.raises(ValueError, match="strata"):
        stratified_bootstrap([[1.0], []])


def test_relative_gain_resamples_each_tasks_before_and_after_together() -> None:
    rng = np.random.default_rng(0)
    before = [rng.normal(-120.0, 40.0, size=40) for _ in range(3)]
    after = [b * 0.6 + rng.normal(0.0, 5.0, size=40) for b in before]  # each task keeps 60 % of its loss
    point, low, high = relative_gain_interval(before, after, reps=4000)
    b, a = np.concatenate(before), np.concatenate(after)
    assert point == pytest.approx((a.mean() - b.mean()) / abs(b.mean()))
    assert low < point < high and 0.3 < low and high < 0.5
    # Paired resampling keeps the correlation: shuffling after within its seed (the same values,
    # unpaired) gives the same point but a wider interval.
    shuffled = [rng.permutation(x) for x in after]
    _, low_unpaired, high_unpaired = relative_gain_interval(before, shuffled, reps=4000)
    assert high_unpaired - low_unpaired > 2 * (high - low)
    assert relative_gain_interval(before, after, reps=500) == relative_gain_interval(before, after, reps=500)
    assert all(np.isnan(relative_gain_interval([[1.0, -1.0]], [[2.0, 3.0]], reps=10)))
    # A mean before that a resample can put on either side of zero: the point exists, the interval not.
    point, low, high = relative_gain_interval([[-3.0, 2.0, 0.5]], [[0.0, 0.0, 1.0]], reps=200)
    assert point == pytest.approx((1 / 3 + 1 / 6) / (1 / 6)) and np.isnan(low) and np.isnan(high)
    with pytest.raises(ValueError, match="task for task"):
        relative_gain_interval([[1.0, 2.0]], [[1.0]])
    with pytest.raises(ValueError, match="confidence"):
        relative_gain_interval([[1.0]], [[2.0]], confidence=0.0)


def test_slope_is_the_least_squares_slope_and_undefined_without_spread() -> None:
    rng = np.random.default_rng(1)
    x = rng.uniform(0, 2, size=50)
    y = 0.4 * x + rng.normal(0, 0.1, size=50)
    assert slope(x, y) == pytest.approx(np.polyfit(x, y, 1)[0])
    np.testing.assert_allclose(slope(np.stack([x, x]), np.stack([y, 2 * y])), [np.polyfit(x, y, 1)[0],
                                                                               2 * np.polyfit(x, y, 1)[0]])
    assert np.isnan(slope(np.ones(5), np.arange(5.0)))
    assert np.isnan(slope(np.full(21, 0.7), np.arange(21.0)))  # a constant that does not average exactly
    # The paired bootstrap draws the stratified bootstrap's resamples.
    strata = [x[:20], x[20:]]
    assert paired_bootstrap(strata, strata, lambda a, b: a.mean(-1)) == stratified_bootstrap(strata)
    point, low, high = paired_bootstrap([x[:25], x[25:]], [y[:25], y[25:]], slope, reps=2000)
    assert point == pytest.approx(np.polyfit(x, y, 1)[0]) and low < 0.4 < high and high - low < 0.2
