"""Confidence intervals over seeds: the Student-t interval of a mean, without scipy.

`mean +- t_{(1 + confidence) / 2, n - 1} * s / sqrt(n)` with the sample standard deviation `s`;
the t quantile is computed exactly from the integer-degrees-of-freedom series of the t CDF
(Abramowitz & Stegun 26.7.3-4) by bisection.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np


def student_t_cdf(t: float, df: int) -> float:
    """P(T <= t) for Student's t with integer `df` >= 1 (exact finite series, Abramowitz & Stegun 26.7.3-4)."""
    if isinstance(df, bool) or not isinstance(df, int | np.integer) or df < 1:
        raise ValueError(f"df must be an integer >= 1, got {df!r}")
    if math.isinf(t):
        return 1.0 if t > 0 else 0.0
    theta = math.atan(abs(t) / math.sqrt(df))
    sin, cos = math.sin(theta), math.cos(theta)
    if df % 2 == 1:
        series, term = 0.0, cos
        for k in range(1, (df - 1) // 2 + 1):
            series += term
            term *= cos * cos * (2 * k) / (2 * k + 1)
        central = 2.0 / math.pi * (theta + sin * series)
    else:
        series, term = 0.0, 1.0
        for k in range(1, df // 2 + 1):
            series += term
            term *= cos * cos * (2 * k - 1) / (2 * k)
        central = sin * series
    # `central` is P(|T| <= |t|).
    return 0.5 + 0.5 * math.copysign(central, t)


def student_t_ppf(q: float, df: int) -> float:
    """The `q`-quantile of Student's t with integer `df` >= 1 (bisection on `student_t_cdf`)."""
    if not 0 < q < 1:
        raise ValueError(f"q must be in (0, 1), got {q!r}")
    if q < 0.5:
        return -student_t_ppf(1.0 - q, df)
    low, high = 0.0, 1.0
    while student_t_cdf(high, df) < q:
        low, high = high, 2.0 * high
    for _ in range(200):
        mid = 0.5 * (low + high)
        if student_t_cdf(mid, df) < q:
            low = mid
        else:
            high = mid
        if high - low <= 1e-12 * max(1.0, high):
            break
    return 0.5 * (low + high)


def mean_confidence_interval(samples: Sequence[float] | np.ndarray, confidence: float = 0.95
                             ) -> tuple[float, float, float]:
    """(mean, low, high): the Student-t confidence interval of the mean; NaN bounds for one sample.

    Args:
        samples: independent observations (e.g. one per seed).
        confidence: coverage of the two-sided interval, in (0, 1).
    """
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence!r}")
    x = np.asarray(samples, dtype=np.float64).reshape(-1)
    if x.size == 0:
        raise ValueError("samples must not be empty")
    mean = float(x.mean())
    if x.size == 1:
        return mean, math.nan, math.nan
    half = student_t_ppf(0.5 + confidence / 2.0, x.size - 1) * float(x.std(ddof=1)) / math.sqrt(x.size)
    return mean, mean - half, mean + half




# ----------------------------------------------------------------------------------------------
# Aggregates across tasks and seeds (the definitions of Agarwal et al. 2021, "Deep RL at the edge
# of the statistical precipice", as in rliable; written here with numpy so that the evaluation
# needs no extra dependency and can resample tasks *within* seeds, rliable's strata being tasks).
# ----------------------------------------------------------------------------------------------


def iqm(values: np.ndarray) -> np.ndarray:
    """Interquartile mean along the last axis: the mean of the middle half (25 % trimmed from each end).

    `floor(n / 4)` values are dropped from each end, as `scipy.stats.trim_mean(x, 0.25)` does.
    """
    x = np.sort(np.asarray(values, dtype=np.float64), axis=-1)
    cut = x.shape[-1] // 4
    return x[..., cut:x.shape[-1] - cut].mean(axis=-1)


def probability_of_improvement(differences: np.ndarray) -> np.ndarray:
    """P(X > Y) from paired differences X - Y along the last axis (a tie counts one half)."""
    d = np.asarray(differences, dtype=np.float64)
    return ((d > 0).astype(np.float64) + 0.5 * (d == 0)).mean(axis=-1)


#: statistic name -> function of a [..., n] array along its last axis
STATISTICS = {
    "mean": lambda x: np.asarray(x, dtype=np.float64).mean(axis=-1),
    "iqm": iqm,
    "p_improvement": probability_of_improvement,
}


def resample_indices(sizes: Sequence[int], reps: int, seed: int) -> list[np.ndarray]:
    """Per stratum of `sizes[k]` values, a `[reps, sizes[k]]` array of indices drawn with replacement
    within it: the resamples of a stratified bootstrap (the same for the same seed)."""
    rng = np.random.default_rng(seed)
    return [rng.integers(0, size, size=(reps, size)) for size in sizes]


def stratified_bootstrap(strata: Sequence[Sequence[float] | np.ndarray], statistic: str = "mean",
                         confidence: float = 0.95, reps: int = 10_000, seed: int = 0
                         ) -> tuple[float, float, float]:
    """(point, low, high): a statistic of all values and its percentile bootstrap interval.

    Each resample draws, within every stratum independently, as many values as it holds, with
    replacement, and applies `statistic` to their union; the interval is the central
    `confidence` share of `reps` resamples. With strata = seeds and values = that seed's tasks,
    the interval covers the variation across tasks and across seeds. Deterministic for a `seed`.

    Args:
        strata: one array of values per stratum (e.g. per-task returns of one seed).
        statistic: a name from `STATISTICS` (mean, iqm, p_improvement).
        confidence: coverage of the two-sided interval, in (0, 1).
        reps: bootstrap resamples.
        seed: seed of the resampling.
    """
    if statistic not in STATISTICS:
        raise ValueError(f"statistic must be one of {sorted(STATISTICS)}, got {statistic!r}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence!r}")
    if reps < 1:
        raise ValueError(f"reps must be >= 1, got {reps}")
    arrays = [np.asarray(s, dtype=np.float64).reshape(-1) for s in strata]
    if not arrays or any(a.size == 0 for a in arrays):
        raise ValueError("strata must be non-empty, each holding at least one value")
    function = STATISTICS[statistic]
    point = float(function(np.concatenate(arrays)))
    indices = resample_indices([a.size for a in arrays], reps, seed)
    values = function(np.concatenate([a[i] for a, i in zip(arrays, indices, strict=True)], axis=1))
    tail = (1.0 - confidence) / 2.0
    low, high = np.quantile(values, [tail, 1.0 - tail])
    return point, float(low), float(high)


def paired_bootstrap(first: Sequence[Sequence[float] | np.ndarray], second: Sequence[Sequence[float] | np.ndarray],
                     statistic: Callable[[np.ndarray, np.ndarray], np.ndarray], confidence: float = 0.95,
                     reps: int = 10_000, seed: int = 0) -> tuple[float, float, float]:
    """(point, low, high): `statistic(x, y)` of two paired values per task and its stratified-bootstrap
    interval, a resampled task bringing both its values (as `stratified_bootstrap`, same resamples).

    `statistic` maps `[..., n]` arrays to `[...]`; the interval is NaN if any resample gives NaN.

    Args:
        first: one array per stratum (e.g. seed) of per-task values.
        second: the same tasks' other values, stratum by stratum and task by task.
        statistic: e.g. `relative_gain` or `slope`.
        confidence: coverage of the two-sided interval, in (0, 1).
        reps: bootstrap resamples.
        seed: seed of the resampling.
    """
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence!r}")
    if reps < 1:
        raise ValueError(f"reps must be >= 1, got {reps}")
    pairs = [(np.asarray(x, dtype=np.float64).reshape(-1), np.asarray(y, dtype=np.float64).reshape(-1))
             for x, y in zip(first, second, strict=True)]
    if not pairs or any(x.size == 0 or x.shape != y.shape for x, y in pairs):
        raise ValueError("both value sets must hold the same non-empty strata, task for task")
    point = float(statistic(np.concatenate([x for x, _ in pairs]), np.concatenate([y for _, y in pairs])))
    indices = resample_indices([x.size for x, _ in pairs], reps, seed)
    values = statistic(np.concatenate([x[i] for (x, _), i in zip(pairs, indices, strict=True)], axis=1),
                       np.concatenate([y[i] for (_, y), i in zip(pairs, indices, strict=True)], axis=1))
    if math.isnan(point) or np.isnan(values).any():
        return point, math.nan, math.nan
    tail = (1.0 - confidence) / 2.0
    low, high = np.quantile(values, [tail, 1.0 - tail])
    return point, float(low), float(high)


def relative_gain_interval(before: Sequence[Sequence[float] | np.ndarray],
                           after: Sequence[Sequence[float] | np.ndarray], confidence: float = 0.95,
                           reps: int = 10_000, seed: int = 0) -> tuple[float, float, float]:
    """(point, low, high): the relative gain `(mean(after) - mean(before)) / |mean(before)|` (the MAML
    paper's "39 % in one step") and its interval (`paired_bootstrap`: a task's before and after are
    resampled together, so the interval keeps their correlation, which dividing the gain's interval
    by the before mean does not). The point is NaN where the mean before is zero, the interval where
    a resampled mean before is zero or of the other sign (a ratio to a mean that may be zero has no
    bounds).

    Args:
        before: one array per stratum (e.g. seed) of per-task values before adaptation.
        after: the same tasks' values after, stratum by stratum and task by task.
        confidence: coverage of the two-sided interval, in (0, 1).
        reps: bootstrap resamples.
        seed: seed of the resampling.
    """
    values = [np.asarray(b, dtype=np.float64).reshape(-1) for b in before]
    if not values or any(v.size == 0 for v in values):
        raise ValueError("both value sets must hold the same non-empty strata, task for task")
    sign = np.sign(np.concatenate(values).mean())

    def relative(b: np.ndarray, a: np.ndarray) -> np.ndarray:
        base = b.mean(axis=-1)
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where((np.sign(base) != sign) | (base == 0), np.nan, (a.mean(axis=-1) - base) / np.abs(base))

    return paired_bootstrap(before, after, relative, confidence, reps, seed)


def slope(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Least-squares slope of `y` on `x` along the last axis (NaN where `x` does not vary)."""
    dx = x - x.mean(axis=-1, keepdims=True)
    variance = (dx * dx).sum(axis=-1)
    varies = np.ptp(x, axis=-1) > 0  # not variance > 0: rounding leaves ~1e-33 for a constant x
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(varies, (dx * (y - y.mean(axis=-1, keepdims=True))).sum(axis=-1) / variance, np.nan)
