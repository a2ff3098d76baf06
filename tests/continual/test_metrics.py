"""Continual-learning metrics against hand-computed values on a 3x3 performance matrix."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from agents.continual.metrics import (
    average_forgetting,
    average_performance,
    average_performance_per_stage,
    backward_transfer,
    check_matrix,
    curve_auc,
    forgetting,
    forward_transfer,
    forward_transfer_gem,
    learning_accuracy,
    matrix_to_markdown,
    normalize,
    summarize,
)

# R[i][j]: performance on task j after training stage i.
R = [
    [0.80, 0.10, 0.20],
    [0.85, 0.90, 0.30],
    [0.50, 0.70, 1.00],
]


def test_average_performance_by_hand() -> None:
    # final: (0.5 + 0.7 + 1.0) / 3 = 2.2 / 3
    assert average_performance(R) == pytest.approx(2.2 / 3)
    # stage 0: 0.8; stage 1: (0.85 + 0.9) / 2 = 0.875; stage 2: 2.2 / 3
    np.testing.assert_allclose(average_performance_per_stage(R), [0.8, 0.875, 2.2 / 3])


def test_forgetting_and_backward_transfer_by_hand() -> None:
    # Continual World: F_0 = R00 − R20 = 0.8 − 0.5 = 0.3; F_1 = R11 − R21 = 0.9 − 0.7 = 0.2
    np.testing.assert_allclose(forgetting(R), [0.3, 0.2])
    assert average_forgetting(R) == pytest.approx(0.25)
    # max variant: F_0 = max(R00, R10) − R20 = 0.85 − 0.5 = 0.35; F_1 = R11 − R21 = 0.2
    np.testing.assert_allclose(forgetting(R, reference="max"), [0.35, 0.2])
    assert average_forgetting(R, reference="max") == pytest.approx(0.275)
    # GEM: BWT = ((R20 − R00) + (R21 − R11)) / 2 = (−0.3 − 0.2) / 2 = −0.25
    assert backward_transfer(R) == pytest.approx(-0.25)
    # learning accuracy: the diagonal's mean (0.8 + 0.9 + 1.0) / 3 = 0.9
    assert learning_accuracy(R) == pytest.approx(0.9)
    with pytest.raises(ValueError, match="reference"):
        forgetting(R, reference="min")


def test_forward_transfer_by_hand() -> None:
    # GEM: b = (·, 0.05, 0.1); ((R01 − b1) + (R12 − b2)) / 2 = ((0.1 − 0.05) + (0.3 − 0.1)) / 2 = 0.125
    assert forward_transfer_gem(R, [0.0, 0.05, 0.1]) == pytest.approx(0.125)

    # Continual World, trapezoid AUC on an even grid over the stage:
    # task 0: AUC([0, .5, 1]) = .5,  ref AUC([0, .25, .5]) = .25 -> (.5 − .25) / (1 − .25) = 1/3
    # task 1: AUC([.4, .4]) = .4,    ref AUC([.6, .6]) = .6      -> (.4 − .6) / (1 − .6) = −.5
    # task 2: identical curves                                   -> 0
    curves = [[0.0, 0.5, 1.0], [0.4, 0.4], [0.2, 0.6, 1.0]]
    refs = [[0.0, 0.25, 0.5], [0.6, 0.6], [0.2, 0.6, 1.0]]
    assert curve_auc(curves[0]) == pytest.approx(0.5)
    assert curve_auc([0.7]) == pytest.approx(0.7)
    np.testing.assert_allclose(forward_transfer(curves, refs), [1 / 3, -0.5, 0.0], atol=1e-12)
    # A reference that is already perfect leaves FT undefined.
    assert math.isnan(forward_transfer([[0.5]], [[1.0]])[0])

    summary = summarize(R, curves=curves, reference_curves=refs, random_init=[0.0, 0.05, 0.1])
    assert summary["average_forward_transfer"] == pytest.approx((1 / 3 - 0.5 + 0.0) / 3)
    assert summary["forward_transfer_gem"] == pytest.approx(0.125)


def test_summary_collects_every_metric_and_is_json_ready() -> None:
    summary = summarize(R)
    assert summary["num_tasks"] == 3
    assert summary["average_performance"] == pytest.approx(2.2 / 3)
    assert summary["average_forgetting"] == pytest.approx(0.25)
    assert summary["average_forgetting_max"] == pytest.approx(0.275)
    assert summary["backward_transfer"] == pytest.approx(-0.25)
    assert summary["learning_accuracy"] == pytest.approx(0.9)
    assert "forward_transfer" not in summary and "forward_transfer_gem" not in summary
    assert json.loads(json.dumps(summary)) == summary
    with pytest.raises(ValueError, match="curves"):
        summarize(R, curves=[[0.0]] * 3)


def test_normalisation_against_references() -> None:
    random_ref = np.array([-10.0, 0.0, 5.0])
    max_ref = np.array([10.0, 100.0, 6.0])
    raw = random_ref + np.asarray(R) * (max_ref - random_ref)  # column j uses task j's references
    np.testing.assert_allclose(normalize(raw, random_ref, max_ref), R)
    np.testing.assert_allclose(normalize([0.0, 50.0], 0.0, 100.0), [0.0, 0.5])
    with pytest.raises(ValueError, match="max_ref"):
        normalize(raw, random_ref, random_ref)
    with pytest.raises(ValueError, match="random_ref"):
        normalize(raw, math.nan, 1.0)


def test_bad_matrices_raise() -> None:
    with pytest.raises(ValueError, match="square"):
        check_matrix([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    with pytest.raises(ValueError, match="square"):
        average_performance([])
    with pytest.raises(ValueError, match="square"):
        average_performance([1.0, 2.0])
    for i, j in [(1, 0), (2, 2)]:
        bad = np.array(R)
        bad[i, j] = math.nan
        with pytest.raises(ValueError, match=rf"matrix\[{i}\]\[{j}\]"):
            summarize(bad)
    with pytest.raises(ValueError, match="inf"):
        check_matrix([[1.0, math.inf], [0.0, 1.0]])
    with pytest.raises(ValueError, match="random_init"):
        forward_transfer_gem(R, [0.0, 0.0])


def test_unevaluated_future_tasks_only_block_metrics_that_read_them() -> None:
    partial = np.array(R)
    partial[0, 2] = math.nan  # task 2 not evaluated after stage 0
    assert average_performance(partial) == pytest.approx(2.2 / 3)
    assert backward_transfer(partial) == pytest.approx(-0.25)
    assert forward_transfer_gem(partial, [0.0, 0.05, 0.1]) == pytest.approx(0.125)  # R02 is not used
    partial[1, 2] = math.nan
    with pytest.raises(ValueError, match="R\\[i-1\\]\\[i\\]"):
        forward_transfer_gem(partial, [0.0, 0.05, 0.1])


def test_single_task_metrics_are_undefined_not_errors() -> None:
    assert average_performance([[0.4]]) == pytest.approx(0.4)
    assert forgetting([[0.4]]).shape == (0,)
    assert math.isnan(average_forgetting([[0.4]]))
    assert math.isnan(backward_transfer([[0.4]]))


def test_markdown_table() -> None:
    partial = np.array(R)
    partial[0, 2] = math.nan
    table = matrix_to_markdown(partial, task_names=["flat", "hills", "a|b"], precision=2)
    lines = table.splitlines()
    assert len(lines) == 5
    assert lines[0] == "| after training on | flat | hills | a\\|b |"
    assert lines[2] == "| 0: flat | 0.80 | 0.10 | – |"
    assert lines[4] == "| 2: a\\|b | 0.50 | 0.70 | 1.00 |"
    with pytest.raises(ValueError, match="task_names"):
        matrix_to_markdown(R, task_names=["x"])


def test_a_retrained_task_counts_once() -> None:
    from agents.continual.metrics import task_summary, task_view

    nan = float("nan")
    # Ladder: task 0, then task 1 failed and retried. Columns are stages (task 1 twice).
    staged = [[0.9, nan, nan], [0.7, 0.4, 0.4], [0.5, 0.8, 0.8]]
    by_task, tasks, last = task_view(staged, [0, 1, 1])
    assert tasks == [0, 1] and last == [0, 2]
    np.testing.assert_allclose(by_task, [[0.9, nan], [0.7, 0.4], [0.5, 0.8]])
    figures = task_summary(by_task, last)
    assert figures["average_performance"] == pytest.approx(0.65)  # (0.5 + 0.8) / 2, not (0.5 + 0.8 + 0.8) / 3
    assert figures["learning_accuracy"] == pytest.approx((0.9 + 0.8) / 2)
    assert figures["average_forgetting"] == pytest.approx(0.4)  # only task 0; task 1 trained last
    # Each task trained once, at its own stage: the square-matrix definitions.
    square = np.array([[0.9, 0.1, 0.0], [0.7, 0.6, 0.2], [0.5, 0.5, 0.8]])
    view, _, own = task_view(square, [0, 1, 2])
    once = task_summary(view, own)
    assert once["average_performance"] == pytest.approx(average_performance(square))
    assert once["average_forgetting"] == pytest.approx(average_forgetting(square))
    assert once["learning_accuracy"] == pytest.approx(learning_accuracy(square))
