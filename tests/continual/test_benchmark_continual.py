"""The continual benchmark's scoring: seed-averaged references, forward transfer on evaluation curves."""

from __future__ import annotations

import numpy as np
import pytest


def state(random: float, matrix: list[list[float]], eval_curves: list, curves: list | None = None) -> dict:
    return {"random_returns": [random] * len(matrix), "matrix": matrix, "eval_curves": eval_curves,
            "curves": curves if curves is not None else eval_curves}


def test_references_are_averaged_over_seeds_and_transfer_uses_evaluation_curves(load_script) -> None:
    bench = load_script("benchmark_continual")
    stages = [{"name": "a"}, {"name": "b"}]
    steps = 100
    flat = [[0, 0.0], [100, 100.0]]  # a reference learning linearly to 100
    states = {
        "seed0/scratch_a": state(0.0, [[100.0]], [flat]), "seed0/scratch_b": state(0.0, [[100.0]], [flat]),
        "seed1/scratch_a": state(0.0, [[50.0]], [[[0, 0.0], [100, 50.0]]]),
        "seed1/scratch_b": state(0.0, [[50.0]], [[[0, 0.0], [100, 50.0]]]),
    }
    low, high, ref_curves = bench.pooled_references([0, 1], stages, states, steps)
    np.testing.assert_allclose(high, [75.0, 75.0])  # the 1 is the mean over seeds, not one run
    np.testing.assert_allclose(ref_curves[0], np.linspace(0, 1, bench.CURVE_POINTS))
    # A method whose evaluation curve jumps to the reference's final return at once transfers
    # forward; its (stochastic) training curve, which the old score used, would say it did not.
    fast = [[0, 75.0], [100, 75.0]]
    states["seed0/method"] = state(0.0, [[75.0, 0.0], [75.0, 75.0]], [fast, fast], curves=[flat, flat])
    scored = bench.score_seed(0, {"method": {}}, states, steps, (low, high, ref_curves))["methods"]["method"]
    assert scored["average_forward_transfer"] == pytest.approx(1.0)
    assert scored["average_performance"] == pytest.approx(1.0)
