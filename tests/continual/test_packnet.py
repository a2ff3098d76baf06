"""PackNet: pruning assigns weights to tasks, frozen weights stay put, each task sees only its own and earlier."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from agents.continual.packnet import FREE, PackNet
from agents.continual.regularizers import make_regularizer


def layer(seed: int = 0) -> dict[str, torch.nn.Parameter]:
    gen = torch.Generator().manual_seed(seed)
    return {"w": torch.nn.Parameter(torch.randn(4, 5, generator=gen)), "b": torch.nn.Parameter(torch.randn(4))}


def test_pruning_keeps_the_largest_free_weights_and_zeroes_the_rest() -> None:
    params = layer()
    before = params["w"].detach().clone()
    pack = PackNet(prune_share=0.6)
    pack.assign(params, ["w", "b"])
    owners = pack.owners["w"]
    assert int((owners == 0).sum()) == 8  # 40 % of 20 weights kept
    kept = before.abs()[owners == 0]
    released = before.abs()[owners == FREE]
    assert float(kept.min()) >= float(released.max())  # the largest by magnitude
    assert torch.equal(params["w"].detach()[owners == FREE], torch.zeros(12))
    assert torch.equal(params["w"].detach()[owners == 0], before[owners == 0])
    assert bool((pack.owners["b"] == 0).all())  # biases: the first task's

    # Task 1 trains the free weights; its pruning takes 40 % of those 12, never task 0's.
    with torch.no_grad():
        params["w"][owners == FREE] = torch.randn(12, generator=torch.Generator().manual_seed(1))
    pack.assign(params, ["w", "b"])
    assert int((pack.owners["w"] == 0).sum()) == 8 and int((pack.owners["w"] == 1).sum()) == round(0.4 * 12)


def test_each_task_sees_only_its_own_and_earlier_weights() -> None:
    params = layer()
    pack = PackNet(prune_share=0.5)
    pack.assign(params, ["w"])
    with torch.no_grad():
        params["w"][pack.owners["w"] == FREE] = 7.0
    pack.assign(params, ["w"])
    first = pack.task_params({n: p.detach() for n, p in params.items()}, 0)
    assert torch.equal(first["w"][pack.owners["w"] == 1], torch.zeros(int((pack.owners["w"] == 1).sum())))
    assert torch.equal(first["w"][pack.owners["w"] == 0], params["w"].detach()[pack.owners["w"] == 0])
    both = pack.task_params({n: p.detach() for n, p in params.items()}, 1)
    assert torch.equal(both["w"], params["w"].detach())
    renamed = pack.task_params({"ours": params["w"].detach()}, 0, names={"ours": "w"})
    assert torch.equal(renamed["ours"], first["w"])


def test_frozen_masks_state_round_trip_and_bad_use(tmp_path: Path) -> None:
    params = layer()
    pack = PackNet(prune_share=0.25)
    assert pack.frozen("w") is None
    pack.assign(params, ["w"])
    assert torch.equal(pack.frozen("w"), pack.owners["w"] != FREE)
    torch.save(pack.state_dict(), tmp_path / "pack.pt")
    restored = PackNet()
    restored.load_state_dict(torch.load(tmp_path / "pack.pt", weights_only=True))
    assert restored.prune_share == 0.25 and restored.num_tasks == 1 and torch.equal(restored.owners["w"],
                                                                                      pack.owners["w"])
    assert float(pack.penalty(params)) == 0.0
    with pytest.raises(ValueError, match="prune_share"):
        PackNet(prune_share=1.0)
    with pytest.raises(ValueError, match="assign"):
        pack.consolidate(params)
    assert isinstance(make_regularizer("packnet", prune_share=0.3), PackNet)


def test_a_step_that_moved_every_weight_keeps_the_frozen_ones() -> None:
    params = layer()
    pack = PackNet(prune_share=0.5)
    pack.assign(params, ["w"])
    old = {"ours": params["w"].detach().clone()}
    moved = {"ours": old["ours"] + 1.0}
    kept = pack.keep_frozen(moved, old, names={"ours": "w"})["ours"]
    frozen = pack.owners["w"] != FREE
    assert torch.equal(kept[frozen], old["ours"][frozen]) and torch.equal(kept[~frozen], moved["ours"][~frozen])


def test_ties_still_keep_exactly_the_share() -> None:
    params = {"w": torch.nn.Parameter(torch.ones(4, 5))}
    pack = PackNet(prune_share=0.5)
    pack.assign(params, ["w"])
    assert int((pack.owners["w"] == 0).sum()) == 10  # not every tied weight
    pack.assign(params, ["w"])
    assert int((pack.owners["w"] == 1).sum()) == 5 and int((pack.owners["w"] == FREE).sum()) == 5
