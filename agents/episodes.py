"""The container the sampler fills: one task's episodes as time-major tensors."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class Episodes:
    """A batch of episodes of one task, time-major: `[time, batch, ...]`.

    Steps after an episode ended are padding: `mask` is 0 there and the other fields are 0.

    Attributes:
        observations: `[T, B, obs_dim]` float32 observations the actions were taken in.
        actions: `[T, B, act_dim]` float32 actions as sampled (before any clipping by the env).
        rewards: `[T, B]` float32 rewards.
        mask: `[T, B]` float32, 1 for real steps, 0 for padding after termination/truncation.
        terminated: `[B]` bool, the episode ended in a terminal state (no bootstrapping).
        info: per-episode summaries `[B]` (e.g. "distance": metres travelled along the goal's heading,
            "physics_unstable": the physics diverged), filled by the sampler.
    """

    observations: torch.Tensor
    actions: torch.Tensor
    rewards: torch.Tensor
    mask: torch.Tensor
    terminated: torch.Tensor
    info: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def horizon(self) -> int:
        """Number of time steps T (padded length)."""
        return int(self.rewards.shape[0])

    @property
    def batch_size(self) -> int:
        """Number of episodes B."""
        return int(self.rewards.shape[1])

    @property
    def lengths(self) -> torch.Tensor:
        """`[B]` number of real steps of each episode."""
        return self.mask.sum(dim=0)

    def total_returns(self) -> torch.Tensor:
        """`[B]` undiscounted return of each episode."""
        return (self.rewards * self.mask).sum(dim=0)
