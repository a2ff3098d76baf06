"""Many tasks' episodes as one batch: stacked along a leading task axis, zero-padded, with their
advantages, so that MAML's meta-update computes every task at once (`agents.meta.maml`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from agents.episodes import Episodes
from agents.meta.returns import baseline_advantages


@dataclass
class TaskBatch:
    """All tasks' episodes and (constant) advantages stacked along a leading task axis.

    Each tensor is `[N, T, B, ...]` for N tasks; tasks with fewer steps or episodes are padded with
    zeros and mask 0, which leaves every masked mean unchanged. Built once per meta-step. `train`
    holds one episode set per inner step (step k adapts on `train[k]`, sampled with the parameters
    of step k - 1), or a single set that every inner step reuses.
    """

    train: list[Episodes]
    valid: Episodes
    train_advantages: list[torch.Tensor]
    valid_advantages: torch.Tensor

    @property
    def num_tasks(self) -> int:
        """Number of tasks N."""
        return int(self.valid.mask.shape[0])

    def every(self, k: int) -> TaskBatch:
        """Every k-th time step of each episode (a view; k=1 is this batch)."""
        if k == 1:
            return self

        def strided(e: Episodes) -> Episodes:
            return Episodes(e.observations[:, ::k], e.actions[:, ::k], e.rewards[:, ::k], e.mask[:, ::k],
                            e.terminated)

        return TaskBatch([strided(e) for e in self.train], strided(self.valid),
                         [a[:, ::k] for a in self.train_advantages], self.valid_advantages[:, ::k])

    def tasks(self, start: int, stop: int) -> TaskBatch:
        """Tasks `start` to `stop - 1` (views)."""
        def part(e: Episodes) -> Episodes:
            return Episodes(e.observations[start:stop], e.actions[start:stop], e.rewards[start:stop],
                            e.mask[start:stop], e.terminated[start:stop])

        return TaskBatch([part(e) for e in self.train], part(self.valid),
                         [a[start:stop] for a in self.train_advantages], self.valid_advantages[start:stop])

    def chunks(self, max_steps: int) -> list[TaskBatch]:
        """Consecutive groups of tasks, each with at most `max_steps` (padded) valid steps, or one
        task where a task alone has more."""
        per_task = int(self.valid.mask[0].numel())
        size = max(1, max_steps // max(per_task, 1))
        return [self.tasks(start, min(start + size, self.num_tasks)) for start in range(0, self.num_tasks, size)]

    def first_steps(self, k: int) -> TaskBatch:
        """The problem of inner step k alone: adapt on the first k train sets, evaluate on the episodes
        that the step-k parameters sampled (train set k, or `valid` after the last step).

        Needs one train set per inner step (each set after the first is a valid sample of the
        previous step's parameters); `k` in 1 .. len(train)."""
        if not 1 <= k <= len(self.train):
            raise ValueError(f"k must be in 1..{len(self.train)}, got {k}")
        if k == len(self.train):
            return self
        return TaskBatch(self.train[:k], self.train[k], self.train_advantages[:k], self.train_advantages[k])

    def task(self, i: int) -> tuple[list[Episodes], Episodes, list[torch.Tensor], torch.Tensor]:
        """Task i's (padded) train episode sets, valid episodes and their advantages."""
        return [_episodes_at(e, i) for e in self.train], _episodes_at(self.valid, i), \
            [a[i] for a in self.train_advantages], self.valid_advantages[i]


def _episodes_at(stacked: Episodes, i: int) -> Episodes:
    return Episodes(stacked.observations[i], stacked.actions[i], stacked.rewards[i], stacked.mask[i],
                    stacked.terminated[i])


def _stack_padded(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """Stack `[T_i, B_i, ...]` tensors into `[N, max T, max B, ...]`, zero-padded."""
    shape = [max(t.shape[d] for t in tensors) for d in range(2)]
    out = tensors[0].new_zeros((len(tensors), *shape, *tensors[0].shape[2:]))
    for i, t in enumerate(tensors):
        out[i, : t.shape[0], : t.shape[1]] = t
    return out


def stack_episodes(episodes: Sequence[Episodes]) -> Episodes:
    """One `Episodes` whose fields carry a leading task axis (`[N, T, B, ...]`, zero-padded)."""
    terminated = torch.zeros(len(episodes), max(e.batch_size for e in episodes), dtype=torch.bool)
    for i, e in enumerate(episodes):
        terminated[i, : e.batch_size] = e.terminated
    return Episodes(*(_stack_padded([getattr(e, name) for e in episodes])
                      for name in ("observations", "actions", "rewards", "mask")), terminated)


def prepare_tasks(
    tasks: Sequence[tuple[Episodes | Sequence[Episodes], Episodes]],
    gamma: float = 0.99,
    gae_lambda: float = 1.0,
    normalize_advantages: bool = True,
) -> TaskBatch:
    """Stack the tasks and fit a linear baseline on each episode set (each task's sets apart).

    Each task is `(train, valid)`; `train` is one `Episodes` (reused at every inner step) or one
    per inner step, the same number for every task.
    """
    if not tasks:
        raise ValueError("prepare_tasks needs at least one task")
    per_task = [[train] if isinstance(train, Episodes) else list(train) for train, _ in tasks]
    if len({len(sets) for sets in per_task}) != 1:
        raise ValueError(f"every task needs as many train episode sets, got {[len(s) for s in per_task]}")
    train = [stack_episodes([sets[k] for sets in per_task]) for k in range(len(per_task[0]))]
    valid = stack_episodes([v for _, v in tasks])

    def advantages(episodes: Episodes) -> torch.Tensor:
        return baseline_advantages(episodes, gamma, gae_lambda, normalize_advantages)

    return TaskBatch(train, valid, [advantages(e) for e in train], advantages(valid))
