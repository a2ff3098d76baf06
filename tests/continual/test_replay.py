"""Behaviour-cloning replay: remembers a task's states and mean actions, and pulls the policy back to them."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch.distributions import Independent, Normal

from agents.continual.regularizers import make_regularizer
from agents.continual.replay import BehaviourCloningReplay


def linear_actor(obs: torch.Tensor, params: dict) -> Independent:
    mean = obs @ params["w"].T + params["b"]
    return Independent(Normal(mean, params["log_std"].exp().expand_as(mean)), 1)


def params_of(seed: int) -> dict:
    gen = torch.Generator().manual_seed(seed)
    return {"w": torch.randn(2, 3, generator=gen), "b": torch.randn(2, generator=gen), "log_std": torch.zeros(2)}


def replay(**kwargs) -> BehaviourCloningReplay:
    memory = BehaviourCloningReplay(**{"strength": 2.0, "memory_size": 50, "batch_size": 40, **kwargs})
    memory.bind(linear_actor)
    return memory


def test_the_penalty_is_zero_where_remembered_and_pulls_the_policy_back() -> None:
    memory = replay()
    states = torch.randn(200, 3, generator=torch.Generator().manual_seed(1))
    first = params_of(0)
    assert float(memory.penalty(first)) == 0.0  # nothing remembered yet
    memory.remember(states, first)
    assert memory.num_tasks == 1 and memory.memory[0]["states"].shape == (50, 3)  # thinned to memory_size
    assert float(memory.penalty(first)) == 0.0
    moved = {name: p.clone().requires_grad_(True) for name, p in params_of(5).items()}
    penalty = memory.penalty(moved)
    assert float(penalty.detach()) > 0.1
    loss = memory.loss(moved)
    loss.backward()
    with torch.no_grad():
        stepped = {name: p - 0.05 * p.grad if p.grad is not None else p for name, p in moved.items()}
    assert float(replay().penalty(first)) == 0.0
    check = replay(batch_size=1000)  # every remembered state: no draw noise in the comparison
    check.remember(states, first)
    assert float(check.penalty(stepped)) < float(check.penalty({n: p.detach() for n, p in moved.items()}))
    assert moved["log_std"].grad is None or float(moved["log_std"].grad.abs().max()) == 0.0  # means only


def test_each_task_is_recalled_with_its_own_head() -> None:
    memory = replay(batch_size=1000)
    states = torch.randn(30, 3, generator=torch.Generator().manual_seed(2))
    shared = params_of(0)
    head_a = {"w": torch.ones(2, 3), "b": torch.zeros(2)}
    memory.remember(states, shared, head=head_a)
    # The current head is another task's; the remembered task is evaluated with its own, so the
    # shared parameters (here none but log_std) being unchanged means no penalty.
    assert float(memory.penalty({**shared, "w": torch.zeros(2, 3)})) == 0.0


def test_the_state_round_trips_and_the_draws_continue(tmp_path: Path) -> None:
    memory = replay(batch_size=7)
    memory.remember(torch.randn(40, 3, generator=torch.Generator().manual_seed(3)), params_of(0))
    memory.penalty(params_of(1))  # one draw before saving
    torch.save(memory.state_dict(), tmp_path / "replay.pt")
    restored = replay()
    restored.load_state_dict(torch.load(tmp_path / "replay.pt", weights_only=True))
    assert (restored.memory_size, restored.batch_size, restored.num_tasks) == (50, 7, 1)
    later = params_of(2)
    assert float(restored.penalty(later)) == float(memory.penalty(later))  # the same next batch


def test_bad_use_names_the_field() -> None:
    with pytest.raises(ValueError, match="memory_size"):
        BehaviourCloningReplay(memory_size=0)
    with pytest.raises(ValueError, match="bind"):
        BehaviourCloningReplay().remember(torch.zeros(4, 3), params_of(0))
    with pytest.raises(ValueError, match="remember"):
        replay().consolidate(params_of(0))
    assert isinstance(make_regularizer("replay", strength=3.0, memory_size=10), BehaviourCloningReplay)

