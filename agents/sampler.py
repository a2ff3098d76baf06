"""The one episode-collection path: tasks x episodes at once, one batched policy forward a step.

All envs of a call run in one `envs.batched.BatchedEnv` (physics on every core); the policy
evaluates every env's observation in a single call, each task with its own (possibly adapted)
parameters through `torch.func.vmap`. Same seed, same episodes.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch.func import vmap

from agents.episodes import Episodes
from agents.policy import GaussianMLPPolicy, Params
from envs.batched import BatchedEnv
from envs.tasks import Task

ParamsArg = Mapping[str, torch.Tensor] | Sequence[Mapping[str, torch.Tensor]] | None


class Sampler:
    """Collects episodes of one robot for many tasks at once.

    Args:
        robot: a name in `envs.robots.ROBOTS`.
        horizon: maximum steps per episode (episodes end earlier when the env ends them).
        height_scan: as `LocomotionEnv`.
        goal_in_obs: as `LocomotionEnv`.
        num_threads: physics threads (default: all cores).
    """

    def __init__(self, robot: str, horizon: int, height_scan: bool = False, goal_in_obs: bool = False,
                 num_threads: int | None = None) -> None:
        if horizon < 1:
            raise ValueError(f"horizon must be >= 1, got {horizon}")
        self.robot = robot
        self.horizon = int(horizon)
        self.height_scan = height_scan
        self.goal_in_obs = goal_in_obs
        self.num_threads = num_threads
        self._batch: BatchedEnv | None = None
        probe = self._env(1)
        self.obs_dim = probe.observation_space.shape[0]
        self.act_dim = probe.action_space.shape[0]
        self.env_steps = 0  # total env steps sampled so far (for steps/s figures)
        self.seconds = {"simulate": 0.0, "policy": 0.0}  # where sampling time went, summed over calls

    def _env(self, size: int) -> BatchedEnv:
        if self._batch is None or self._batch.num_envs != size:
            if self._batch is not None:
                self._batch.close()
            self._batch = BatchedEnv(self.robot, size, self.height_scan, self.goal_in_obs,
                                     num_threads=self.num_threads)
        return self._batch

    def sample(
        self,
        policy: GaussianMLPPolicy,
        tasks: Sequence[Task],
        episodes_per_task: int,
        params: ParamsArg = None,
        seed: int = 0,
        deterministic: bool = False,
    ) -> list[Episodes]:
        """Episodes of every task, one `Episodes` per task (batch = episodes_per_task).

        Args:
            policy: the policy to act with.
            tasks: the tasks; env `t * episodes_per_task + e` runs episode e of task t.
            episodes_per_task: episodes per task.
            params: None (the policy's own parameters), one dict for every task, or one dict
                per task (e.g. each task's adapted parameters).
            seed: seeds the envs' resets and the action noise.
            deterministic: act with the mean action instead of sampling.
        """
        if episodes_per_task < 1:
            raise ValueError(f"episodes_per_task must be >= 1, got {episodes_per_task}")
        if not tasks:
            raise ValueError("tasks must not be empty")
        n_tasks, per_task = len(tasks), int(episodes_per_task)
        per_task_params = isinstance(params, Sequence)
        if per_task_params and len(params) != n_tasks:
            raise ValueError(f"params must hold one dict per task ({n_tasks}), got {len(params)}")
        batch_size = n_tasks * per_task
        env = self._env(batch_size)
        env.set_tasks([task for task in tasks for _ in range(per_task)])
        env_seeds = np.random.SeedSequence(seed).generate_state(batch_size).tolist()
        generator = torch.Generator().manual_seed(int(seed))

        horizon = self.horizon
        observations = np.zeros((horizon, batch_size, self.obs_dim), dtype=np.float32)
        actions = np.zeros((horizon, batch_size, self.act_dim), dtype=np.float32)
        rewards = np.zeros((horizon, batch_size), dtype=np.float32)
        mask = np.zeros((horizon, batch_size), dtype=np.float32)
        terminated = np.zeros(batch_size, dtype=bool)
        unstable = np.zeros(batch_size, dtype=bool)
        done = np.zeros(batch_size, dtype=bool)

        mean_of, std = _batched_actor(policy, params, n_tasks, per_task)
        # All the action noise at once, already scaled by the (state-independent) std: one call,
        # not one a step; rows of steps never reached cost nothing else.
        noise = None if deterministic else (
            std * torch.randn((horizon, batch_size, self.act_dim), generator=generator)).numpy()
        obs = env.reset(env_seeds)
        root = env.readout.root
        xy_start = env.qpos[:, :root].copy()
        for t in range(horizon):
            observations[t] = obs
            started = time.perf_counter()
            with torch.no_grad():
                mean = mean_of(torch.from_numpy(observations[t])).numpy()
            if noise is None:
                actions[t] = mean
            else:
                np.add(mean, noise[t], out=actions[t])
            alive = ~done
            mask[t] = alive
            stepped = time.perf_counter()
            obs, reward, term, trunc, info = env.step(actions[t], active=alive)
            self.seconds["policy"] += stepped - started
            self.seconds["simulate"] += time.perf_counter() - stepped
            rewards[t] = np.where(alive, reward, 0.0)
            terminated |= term & alive
            unstable |= info["physics_unstable"] & alive
            self.env_steps += int(alive.sum())
            done |= term | trunc
            if done.all():
                break
        observations *= mask[..., None]
        actions *= mask[..., None]
        distance = ((env.qpos[:, :root] - xy_start) * env.heading[:, :root]).sum(axis=1)
        return [
            Episodes(
                observations=torch.from_numpy(observations[:, group]),
                actions=torch.from_numpy(actions[:, group]),
                rewards=torch.from_numpy(rewards[:, group]),
                mask=torch.from_numpy(mask[:, group]),
                terminated=torch.from_numpy(terminated[group]),
                info={"distance": torch.from_numpy(distance[group]),  # metres along the goal's heading
                      "physics_unstable": torch.from_numpy(unstable[group])},
            )
            for group in (slice(t * per_task, (t + 1) * per_task) for t in range(n_tasks))
        ]

    def close(self) -> None:
        """Release the envs and their threads."""
        if self._batch is not None:
            self._batch.close()
            self._batch = None


def _batched_actor(policy: GaussianMLPPolicy, params: ParamsArg, n_tasks: int, per_task: int):
    """(obs [B, obs_dim] -> mean [B, act_dim], std [B or 1, act_dim]): each task's rows under its
    own parameters. The std does not depend on the observation, so it is computed once here."""
    with torch.no_grad():
        if not isinstance(params, Sequence):
            # Looked up once, not every step (the tensors are shared, so this is still the live policy).
            own = policy.parameters_dict() if params is None else dict(params)
            return (lambda obs: policy.mean(obs, own)), policy.std(own)[None]
        stacked: Params = {name: torch.stack([p[name].detach() for p in params]) for name in params[0]}
        std = vmap(policy.std)(stacked).repeat_interleave(per_task, dim=0)
    per_task_mean = vmap(policy.mean, in_dims=(0, 0))

    def mean_of(obs: torch.Tensor) -> torch.Tensor:
        return per_task_mean(obs.reshape(n_tasks, per_task, -1), stacked).reshape(n_tasks * per_task, -1)

    return mean_of, std
