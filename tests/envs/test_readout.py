"""The readout's array helpers: the same numbers as the numpy calls they stand in for."""

import numpy as np
import pytest

import envs.readout as readout


@pytest.mark.parametrize("fallback", [False, True])
def test_clip_matches_numpy_clip_with_nan_and_out(monkeypatch, fallback):
    if fallback:  # the path for a numpy that keeps its clip ufunc elsewhere
        monkeypatch.setattr(readout, "_CLIP_UFUNC", None)
    rng = np.random.default_rng(0)
    values = rng.normal(scale=3.0, size=(5, 6))
    values[1, 2] = np.nan
    low, high = -np.ones(6), np.linspace(0.5, 2.0, 6)
    expected = np.clip(values, low, high)
    out = np.empty_like(values)
    result = readout.clip(values, low, high, out=out)
    assert result is out
    np.testing.assert_array_equal(result, expected)  # NaN stays NaN: MuJoCo reports it
    assert np.isnan(result[1, 2])
    np.testing.assert_array_equal(readout.clip(values[0], -2.0, 2.0), np.clip(values[0], -2.0, 2.0))


def test_squared_norm_for_a_batch_and_for_one_row():
    rows = np.arange(12.0).reshape(3, 4)
    np.testing.assert_allclose(readout.squared_norm(rows), (rows**2).sum(axis=1), rtol=0, atol=0)
    assert readout.squared_norm(rows[1]) == (rows[1] ** 2).sum()
