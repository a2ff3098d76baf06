"""EWC: penalty shape, consolidation modes, baselines."""

from __future__ import annotations

import pytest
import torch

from agents.continual.ewc import EWC, L2Regularizer, NoRegularizer
from agents.continual.fisher import fisher_scale
from agents.continual.regularizers import make_regularizer


def params_of(**values: list[float]) -> dict[str, torch.Tensor]:
    return {n: torch.tensor(v) for n, v in values.items()}


def test_penalty_zero_at_anchor_quadratic_and_fisher_weighted() -> None:
    anchor = params_of(a=[1.0, -2.0], b=[0.5])
    fisher = params_of(a=[3.0, 0.0], b=[2.0])
    ewc = EWC(strength=10.0, floor=0.0)
    ewc.consolidate(anchor, fisher)
    assert float(ewc.penalty(anchor)) == 0.0

    d = params_of(a=[0.1, 0.7], b=[-0.3])
    p1 = {n: anchor[n] + d[n] for n in anchor}
    p2 = {n: anchor[n] + 2 * d[n] for n in anchor}
    expected = 3.0 * 0.1**2 + 2.0 * 0.3**2
    assert float(ewc.penalty(p1)) == pytest.approx(expected)
    assert float(ewc.penalty(p2)) == pytest.approx(4 * float(ewc.penalty(p1)))
    assert float(ewc.loss(p1)) == pytest.approx(10.0 / 2 * expected)

    free = {"a": anchor["a"] + torch.tensor([0.0, 5.0]), "b": anchor["b"]}  # only the zero-Fisher entry moves
    assert float(ewc.penalty(free)) == 0.0

    theta = {n: t.clone().requires_grad_(True) for n, t in p1.items()}
    ewc.penalty(theta).backward()
    torch.testing.assert_close(theta["a"].grad, 2 * fisher["a"] * d["a"])


def test_the_fisher_is_raw_with_a_floor_by_default() -> None:
    anchor = params_of(a=[1.0, -2.0], b=[0.5])
    ewc = EWC(strength=10.0)
    ewc.consolidate(anchor, params_of(a=[3.0, 0.0], b=[2.0]))
    # Raw: the weights are the Fisher itself (no division by its largest entry), ...
    torch.testing.assert_close(ewc.weights[0]["a"], torch.tensor([3.0, 1e-5]))
    assert ewc.raw_equivalent_strengths == [10.0]
    # ... and an entry with zero Fisher is not free: moving it costs floor * distance^2.
    moved = {"a": anchor["a"] + torch.tensor([0.0, 5.0]), "b": anchor["b"]}
    assert float(ewc.penalty(moved)) == pytest.approx(1e-5 * 25.0)
    with pytest.raises(ValueError, match="floor"):
        EWC(floor=-1.0)


def test_anchor_is_a_copy_of_the_parameters() -> None:
    params = params_of(a=[1.0, 2.0])
    ewc = EWC()
    ewc.consolidate(params, params_of(a=[1.0, 1.0]))
    params["a"].add_(1.0)  # an optimiser steps the live tensors in place
    assert float(ewc.penalty(params)) == pytest.approx(2.0)


def test_online_mode_accumulates_decayed_fishers_and_keeps_latest_anchor() -> None:
    gamma = 0.5
    fishers = [params_of(a=[1.0, 2.0]), params_of(a=[4.0, 0.0]), params_of(a=[0.5, 8.0])]
    anchors = [params_of(a=[0.0, 0.0]), params_of(a=[1.0, 1.0]), params_of(a=[-1.0, 3.0])]
    ewc = EWC(mode="online", gamma=gamma)
    for p, f in zip(anchors, fishers, strict=True):
        ewc.consolidate(p, f)
    assert ewc.num_tasks == 3
    assert len(ewc.weights) == len(ewc.anchors) == 1
    expected = gamma**2 * fishers[0]["a"] + gamma * fishers[1]["a"] + fishers[2]["a"]
    torch.testing.assert_close(ewc.weights[0]["a"], expected)
    # by hand: [0.25·1 + 0.5·4 + 0.5, 0.25·2 + 0.5·0 + 8] = [2.75, 8.5]
    torch.testing.assert_close(ewc.weights[0]["a"], torch.tensor([2.75, 8.5]))
    torch.testing.assert_close(ewc.anchors[0]["a"], anchors[2]["a"])
    at = params_of(a=[0.0, 0.0])
    assert float(ewc.penalty(at)) == pytest.approx(2.75 * 1.0 + 8.5 * 9.0)  # anchor (-1, 3)


def test_separate_mode_keeps_one_term_per_task() -> None:
    fishers = [params_of(a=[1.0, 2.0]), params_of(a=[4.0, 0.0]), params_of(a=[0.5, 8.0])]
    anchors = [params_of(a=[0.0, 0.0]), params_of(a=[1.0, 1.0]), params_of(a=[-1.0, 3.0])]
    ewc = EWC(mode="separate", gamma=0.5)  # gamma plays no part in separate mode
    for p, f in zip(anchors, fishers, strict=True):
        ewc.consolidate(p, f)
    assert ewc.num_tasks == 3 and len(ewc.anchors) == 3
    for k in range(3):
        torch.testing.assert_close(ewc.anchors[k]["a"], anchors[k]["a"])
    theta = params_of(a=[1.0, 1.0])
    # (1·1 + 2·1) + (4·0 + 0·0) + (0.5·4 + 8·4) = 3 + 0 + 34
    assert float(ewc.penalty(theta)) == pytest.approx(37.0)


@pytest.mark.parametrize("mode", ["online", "separate"])
def test_state_dict_round_trips_through_weights_only_load(tmp_path, mode: str) -> None:
    ewc = EWC(strength=3.0, mode=mode, gamma=0.9, normalize="mean")
    torch.manual_seed(0)
    for _ in range(3):
        ewc.consolidate(params_of(a=torch.randn(4).tolist()), params_of(a=torch.rand(4).tolist()))
    path = tmp_path / "ewc.pt"
    torch.save(ewc.state_dict(), path)
    restored = EWC(mode=mode)
    restored.load_state_dict(torch.load(path, weights_only=True))
    theta = params_of(a=[0.3, -0.2, 1.0, 0.0])
    assert restored.num_tasks == 3
    assert float(restored.loss(theta)) == float(ewc.loss(theta)) > 0
    with pytest.raises(ValueError, match="kind"):
        L2Regularizer(mode=mode).load_state_dict(ewc.state_dict())
    other = "separate" if mode == "online" else "online"
    with pytest.raises(ValueError, match="mode"):
        EWC(mode=other).load_state_dict(ewc.state_dict())


def test_l2_baseline_is_plain_squared_distance(tmp_path) -> None:
    anchor = params_of(a=[1.0, 2.0], b=[3.0])
    theta = params_of(a=[0.0, 4.0], b=[3.5])
    l2 = L2Regularizer()
    l2.consolidate(anchor, params_of(a=[100.0, 0.0], b=[0.0]))  # Fisher values are ignored
    assert float(l2.penalty(theta)) == pytest.approx(1.0 + 4.0 + 0.25)
    only_a = L2Regularizer()
    only_a.consolidate(anchor, params_of(a=[0.0, 0.0]))  # its names choose what is anchored
    assert float(only_a.penalty(theta)) == pytest.approx(5.0)

    separate = L2Regularizer(mode="separate")
    separate.consolidate(anchor)
    separate.consolidate(theta)
    assert float(separate.penalty(theta)) == pytest.approx(5.25)
    torch.save(separate.state_dict(), tmp_path / "l2.pt")
    restored = L2Regularizer(mode="separate")
    restored.load_state_dict(torch.load(tmp_path / "l2.pt", weights_only=True))
    assert float(restored.penalty(anchor)) == pytest.approx(5.25)


def test_fisher_normalisation_and_validation() -> None:
    fisher = params_of(a=[1.0, 4.0], b=[3.0])
    assert fisher_scale(fisher, "max") == 4.0 and fisher_scale(fisher, "mean") == pytest.approx(8.0 / 3.0)
    ewc = EWC(strength=100.0, normalize="max")
    ewc.consolidate(params_of(a=[0.0, 0.0], b=[0.0]), fisher)
    torch.testing.assert_close(ewc.weights[0]["b"], torch.tensor([0.75]))
    torch.testing.assert_close(ewc.weights[0]["a"], torch.tensor([0.25, 1.0]))
    # "lambda 100" on a max-normalised Fisher is lambda 25 on the raw one: the figure the literature compares.
    assert ewc.raw_equivalent_strengths == [25.0]
    ewc.consolidate(params_of(a=[0.0, 0.0], b=[0.0]), params_of(a=[0.5, 0.1], b=[0.2]))
    assert ewc.raw_equivalent_strengths == [25.0, 200.0]

    with pytest.raises(ValueError, match="fisher"):
        EWC().consolidate(params_of(a=[0.0]))  # EWC without a Fisher is not EWC
    with pytest.raises(ValueError, match="fisher"):
        EWC().consolidate(params_of(a=[0.0]), params_of(a=[-1.0]))
    with pytest.raises(ValueError, match="fisher"):
        EWC().consolidate(params_of(a=[0.0]), params_of(z=[1.0]))
    with pytest.warns(UserWarning, match="0"):
        EWC().consolidate(params_of(a=[0.0]), params_of(a=[0.0]))
    online = EWC()
    online.consolidate(params_of(a=[0.0], b=[0.0]), params_of(a=[1.0], b=[1.0]))
    with pytest.raises(ValueError, match="names"):
        online.consolidate(params_of(a=[0.0], b=[0.0]), params_of(a=[1.0]))


def test_make_regularizer_builds_each_kind_and_rejects_bad_fields() -> None:
    assert isinstance(make_regularizer("ewc", mode="separate"), EWC)
    assert isinstance(make_regularizer("l2"), L2Regularizer)
    none = make_regularizer("none")
    assert isinstance(none, NoRegularizer)
    none.consolidate(params_of(a=[1.0]))
    assert none.num_tasks == 1 and float(none.penalty(params_of(a=[9.0]))) == 0.0
    with pytest.raises(ValueError, match=r"kind.*'ewc', 'l2', 'replay', 'packnet', 'none'"):
        make_regularizer("si")
    with pytest.raises(ValueError, match="mode"):
        make_regularizer("ewc", mode="joint")
    with pytest.raises(ValueError, match="gamma"):
        make_regularizer("ewc", gamma=1.5)
    with pytest.raises(ValueError, match="strength"):
        make_regularizer("ewc", strength=-1.0)
    with pytest.raises(ValueError, match="normalize"):
        make_regularizer("ewc", normalize="sum")
