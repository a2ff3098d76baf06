"""Behaviour-cloning replay: a memory of earlier tasks' states and the policy's actions on them.

The memory family of continual learning (Continual World's strongest practical baseline is
behaviour cloning from such a memory, "ClonEx"; Wolczyk et al. 2021, 2022). At the end of each
task, `remember` keeps up to `memory_size` of its states with the policy's mean actions on them
(and, with task heads, the task's own head). While later tasks train, the penalty pulls the
policy's mean actions on remembered states back to the remembered ones:

    penalty(θ) = mean over a batch of remembered states of ||μ_θ(s) − μ*(s)||²

on a batch of `batch_size` states drawn from every remembered task alike (a seeded generator,
saved with the state, so a resumed run draws what the uninterrupted one would). `loss` is
`strength / 2 * penalty`, the convention of `agents.continual.ewc`, so `EWCPPO` adds it to every
PPO minibatch unchanged. Only the means are cloned: each task keeps its own exploration noise.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch.distributions import Distribution

from agents.continual.ewc import Regularizer

ActorFn = Callable[[torch.Tensor, Mapping[str, torch.Tensor]], Distribution]


class BehaviourCloningReplay(Regularizer):
    """Behaviour cloning on a memory of earlier tasks (see the module docstring).

    Args:
        strength: λ; `loss(params) = strength / 2 * penalty(params)`.
        memory_size: states kept per task (evenly thinned from what `remember` is given).
        batch_size: remembered states per penalty evaluation (all of them if fewer).
        seed: seed of the batch draws.
    """

    kind = "replay"

    def __init__(self, strength: float = 1.0, memory_size: int = 2048, batch_size: int = 256, seed: int = 0) -> None:
        super().__init__(strength=strength)
        for name, value in (("memory_size", memory_size), ("batch_size", batch_size)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}: must be an integer >= 1, got {value!r}")
        self.memory_size, self.batch_size = memory_size, batch_size
        self.memory: list[dict[str, Any]] = []  # per task: states, means, head (SB3 names) or {}
        self._generator = torch.Generator().manual_seed(int(seed))
        self._actor: ActorFn | None = None

    def bind(self, actor: ActorFn) -> None:
        """The policy function `fn(obs, params) -> distribution` whose means are cloned (e.g. `sb3_actor_fn`)."""
        self._actor = actor

    def _actor_fn(self) -> ActorFn:
        if self._actor is None:
            raise ValueError("replay: no policy function bound (call bind(sb3_actor_fn(policy)) first)")
        return self._actor

    def remember(self, states: torch.Tensor, params: Mapping[str, torch.Tensor],
                 head: Mapping[str, torch.Tensor] | None = None) -> None:
        """Keep up to `memory_size` of a finished task's `states` [n, obs_dim] with the mean actions
        of the policy under `params` (its own `head` names too, for multi-head policies)."""
        states = torch.as_tensor(states, dtype=torch.float32).reshape(-1, states.shape[-1])
        if states.shape[0] == 0 or not torch.isfinite(states).all():
            raise ValueError("states: need at least one finite state to remember")
        if states.shape[0] > self.memory_size:
            keep = torch.linspace(0, states.shape[0] - 1, self.memory_size).round().long()
            states = states[keep]
        head = {n: t.detach().clone() for n, t in (head or {}).items()}
        with torch.no_grad():
            means = self._actor_fn()(states, {**{n: p.detach() for n, p in params.items()}, **head}).mean
        self.memory.append({"states": states.clone(), "means": means.detach().clone(), "head": head})
        self._num_tasks += 1

    def consolidate(self, params: Mapping[str, torch.Tensor], fisher: Mapping[str, torch.Tensor] | None = None
                    ) -> None:
        """Replay consolidates through `remember` (it needs the task's states, not a Fisher)."""
        raise ValueError("replay: consolidate with remember(states, params) (EWCPPO.consolidate does)")

    def penalty(self, params: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Mean squared distance of the mean actions on a batch of remembered states (0 with no memory)."""
        if not self.memory:
            return torch.zeros(())
        per_task = max(1, math.ceil(self.batch_size / len(self.memory)))
        total, count = torch.zeros(()), 0
        for task in self.memory:
            n = task["states"].shape[0]
            index = torch.randint(0, n, (min(per_task, n),), generator=self._generator)
            means = self._actor_fn()(task["states"][index], {**params, **task["head"]}).mean
            total = total + (means - task["means"][index]).pow(2).sum()
            count += index.numel()
        return total / count

    def state_dict(self) -> dict[str, Any]:
        """Plain tensors and numbers (loads with weights_only=True): the memory and the draw generator."""
        return {"kind": self.kind, "mode": self.mode, "strength": self.strength, "num_tasks": self._num_tasks,
                "memory_size": self.memory_size, "batch_size": self.batch_size,
                "memory": [{"states": m["states"].clone(), "means": m["means"].clone(),
                            "head": {n: t.clone() for n, t in m["head"].items()}} for m in self.memory],
                "generator": self._generator.get_state()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore from `state_dict()` (the policy function stays the one bound)."""
        if state.get("kind") != self.kind:
            raise ValueError(f"state['kind']: expected {self.kind!r}, got {state.get('kind')!r}")
        self.strength, self._num_tasks = float(state["strength"]), int(state["num_tasks"])
        self.memory_size, self.batch_size = int(state["memory_size"]), int(state["batch_size"])
        self.memory = [{"states": m["states"].clone(), "means": m["means"].clone(),
                        "head": {n: t.clone() for n, t in m["head"].items()}} for m in state["memory"]]
        self._generator.set_state(state["generator"])

    def __repr__(self) -> str:
        return (f"BehaviourCloningReplay(strength={self.strength}, memory_size={self.memory_size}, "
                f"batch_size={self.batch_size}, num_tasks={self._num_tasks})")
