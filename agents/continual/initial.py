"""The policy a curriculum starts from: a fresh one, a policy checkpoint, or a context adapter.

A context adapter (`scripts/train_context.py`) is a student that infers the task from its recent
experience; a curriculum trains plain policies. So a context `init:` starts a curriculum the
adapter's way: the student acts for `adapt_episodes` episodes on the first stage's task, its
estimates over those episodes are averaged, and the estimate is folded into the first layer's bias
(`ContextPolicy.with_embedding`): a plain policy that acts as the student would on that task,
which the stages then adapt and train like any other initialisation.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch

from agents.continual.curriculum import CurriculumConfig
from agents.meta.context import ContextPolicy
from agents.meta.context_train import CHECKPOINT_KIND as CONTEXT_KIND
from agents.meta.context_train import load_context_policy
from agents.meta.inner import InnerLR, check_step_sizes
from agents.policy import GaussianMLPPolicy
from agents.runs.checkpoint import load_checkpoint
from agents.sampler import Sampler
from envs.tasks import Task


def load_init(path: str | Path, robot: str, obs_dim: int, act_dim: int) -> GaussianMLPPolicy | ContextPolicy:
    """The checkpoint at `path` as a curriculum's starting point: its policy, or its student if it
    holds a context adapter. Raises one ValueError naming the mismatch (robot, observation, actions)."""
    checkpoint = load_checkpoint(path, expected_robot=robot)
    if checkpoint.metadata.get("kind") != CONTEXT_KIND:
        return load_checkpoint(path, expected_robot=robot, expected_obs_dim=obs_dim, expected_act_dim=act_dim).policy
    student = load_context_policy(path)
    if (student.obs_dim, student.act_dim) != (obs_dim, act_dim):
        raise ValueError(f"init: the context adapter's student observes {student.obs_dim} values and acts on "
                         f"{student.act_dim}; this curriculum's envs give {obs_dim} and {act_dim} "
                         f"(height_scan and goal_in_obs must be the teacher's)")
    return student


def init_step_sizes(path: str | Path) -> dict[str, torch.Tensor] | None:
    """The inner step sizes meta-learned with the checkpoint at `path` (Meta-SGD), or None."""
    return load_checkpoint(path).extra_state.get("inner_lrs")


def learned_step_sizes_or(init: str | Path, fallback: float, params: Mapping[str, torch.Tensor] | None = None,
                          steps: int | None = None, field: str = "inner_lrs") -> InnerLR:
    """The step sizes meta-learned with the checkpoint at `init` (Meta-SGD), else `fallback`. With
    `params`, learned sizes are checked against them and, per-step ones, to cover `steps`
    (`check_step_sizes`: a ValueError naming `field`)."""
    learned = init_step_sizes(init)
    if learned is None:
        return fallback
    if params is not None:
        check_step_sizes(learned, params, field, steps)
    return learned


def curriculum_step_sizes(config: CurriculumConfig, params: Mapping[str, torch.Tensor] | None = None) -> InnerLR:
    """A curriculum's stage-start step sizes: its init's learned ones if it has them and
    `config.learned_step_sizes`, else `config.inner_lr`; with `params`, checked against the init's
    parameters and `config.adapt_steps`."""
    if config.init == "scratch" or not config.learned_step_sizes:
        return config.inner_lr
    return learned_step_sizes_or(config.init, config.inner_lr, params, config.adapt_steps,
                                 "adapt_steps (the init's learned inner_lrs; learned_step_sizes: false adapts "
                                 "with inner_lr instead)")


def fold_context(student: ContextPolicy, sampler: Sampler, task: Task, episodes: int, seed: int
                 ) -> tuple[GaussianMLPPolicy, float]:
    """The plain policy the student becomes on `task` after `episodes` episodes of experience there,
    and the mean return of those episodes."""
    experience = sampler.sample(student, [task], episodes, seed=seed)[0]
    policy = student.with_embedding(student.estimate(experience))
    return policy, float(experience.total_returns().mean())


def fresh_policy(obs_dim: int, act_dim: int, hidden_sizes: tuple[int, ...], seed: int) -> GaussianMLPPolicy:
    """A randomly initialised policy, the same for the same seed."""
    torch.manual_seed(seed)
    return GaussianMLPPolicy(obs_dim, act_dim, hidden_sizes)
