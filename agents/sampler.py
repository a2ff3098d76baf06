"""The one episode-collection path: tasks x episodes at once, one batched policy forward a step.

A call's envs are split into two shards (after cutting a large call into waves of whole tasks,
`WAVE_ENVS`), each an `envs.batched.BatchedEnv` with its own batched
policy forward (each task's rows under its own, possibly adapted, parameters, in numpy:
`GaussianMLPPolicy.numpy_mean`), and the two run on two threads without waiting for each other
between steps: MuJoCo and numpy release the GIL while they compute, so one shard's physics runs
while the other's Python (readout, policy call) does. The split depends only on the tasks and
episodes, never on the machine (more cores go to each shard's physics), and every env's reset seed
and action noise are drawn for the whole call first: the same seed gives the same episodes
whatever the core count.
"""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch
from torch.func import vmap

from agents.episodes import Episodes
from agents.policy import GaussianMLPPolicy, Params
from envs.batched import BatchedEnv
from envs.tasks import Task

ParamsArg = Mapping[str, torch.Tensor] | Sequence[Mapping[str, torch.Tensor]] | None

#: One step of an actor: (this step's observations [B, obs_dim], the actions taken at the step
#: before [B, act_dim], zeros at the first) -> action means [B, act_dim].
StepMean = Callable[[np.ndarray, np.ndarray], np.ndarray]


class MemoryActor(Protocol):
    """A policy whose action depends on the episode so far (e.g. `agents.meta.context.ContextPolicy`):
    the sampler starts a memory for each shard's envs and calls it once per step."""

    def start(self, rows: np.ndarray) -> StepMean:
        """A step function for the envs `rows` of the call (indices in its task-major env order,
        `task * episodes_per_task + episode`), with their memory at the episodes' start."""

    def action_std(self) -> np.ndarray:
        """The standard deviation [act_dim] of the action noise (state-independent)."""


Actor = GaussianMLPPolicy | MemoryActor


@dataclass(frozen=True)
class Shard:
    """Some tasks' episodes, stepped together on one thread: rows `task * per_task + episode`."""

    tasks: range
    episodes: range

    def rows(self, per_task: int) -> np.ndarray:
        """Indices of this shard's envs in the call's task-major order."""
        return np.array([t * per_task + e for t in self.tasks for e in self.episodes])


#: Most envs stepped at once: a call with more runs its tasks in waves of whole tasks, one wave
#: after another (each split into shards). Hundreds of envs at once outgrow the caches (each env
#: has its own model and data): 40 tasks x 20 cheetah episodes took 6.7-7.7 s in one go and
#: 3.9-5.1 s as four calls of 200 envs (measured side by side, 2 cores). A call of 200 envs or
#: fewer is one wave.
WAVE_ENVS = 200


def waves(n_tasks: int, per_task: int) -> list[range]:
    """Consecutive groups of tasks with at most `WAVE_ENVS` envs each (one task where a task alone has more)."""
    size = max(1, WAVE_ENVS // per_task)
    return [range(start, min(start + size, n_tasks)) for start in range(0, n_tasks, size)]


#: Shards per call: enough to overlap one shard's Python with the other's physics on two cores;
#: fixed so that the episodes never depend on the machine's core count.
SHARDS = 2


def plan_shards(n_tasks: int, per_task: int, n_shards: int = SHARDS) -> list[Shard]:
    """Split tasks x episodes into at most `n_shards` shards, by episodes (every shard holds some
    episodes of every task) or by tasks, whichever gives the smaller largest shard (episodes on a
    tie)."""

    def split(n: int) -> list[range]:
        bounds = np.linspace(0, n, min(n_shards, n) + 1).astype(int).tolist()
        return [range(lo, hi) for lo, hi in itertools.pairwise(bounds)]

    by_episodes = [Shard(range(n_tasks), episodes) for episodes in split(per_task)]
    by_tasks = [Shard(tasks, range(per_task)) for tasks in split(n_tasks)]

    def largest(shards: list[Shard]) -> int:
        return max(len(shard.tasks) * len(shard.episodes) for shard in shards)

    return by_episodes if largest(by_episodes) <= largest(by_tasks) else by_tasks


@dataclass
class Collected:
    """What was collected for some envs: per step [horizon, envs, ...] and per env [envs]."""

    observations: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray
    mask: np.ndarray  # 1 while the env's episode runs
    terminated: np.ndarray
    unstable: np.ndarray
    distance: np.ndarray  # metres along the goal's heading

    @classmethod
    def zeros(cls, horizon: int, size: int, obs_dim: int, act_dim: int) -> Collected:
        """Empty arrays for `size` envs."""
        return cls(np.zeros((horizon, size, obs_dim), dtype=np.float32),
                   np.zeros((horizon, size, act_dim), dtype=np.float32),
                   np.zeros((horizon, size), dtype=np.float32), np.zeros((horizon, size), dtype=np.float32),
                   np.zeros(size, dtype=bool), np.zeros(size, dtype=bool), np.zeros(size))

    def put(self, rows: np.ndarray, part: Collected) -> None:
        """Write `part`, collected for envs `rows` of these, in place."""
        for per_step in ("observations", "actions", "rewards", "mask"):
            getattr(self, per_step)[:, rows] = getattr(part, per_step)
        for per_env in ("terminated", "unstable", "distance"):
            getattr(self, per_env)[rows] = getattr(part, per_env)


@dataclass
class ShardJob:
    """One shard's share of a call: everything a worker needs to collect it (`collect_shard`)."""

    tasks: list[Task]  # one per env, task-major
    policy: Actor
    params: ParamsArg  # None, one dict, or one dict per task of the shard (detached)
    n_tasks: int
    per_task: int
    env_seeds: list[int]
    noise: np.ndarray | None  # [horizon, envs, act_dim] standard normal, None when deterministic
    rows: np.ndarray  # the shard's envs' indices in the call's task-major order


@dataclass
class ShardResult:
    """What one shard collected, and where its time went."""

    collected: Collected
    env_steps: int
    seconds_policy: float
    seconds_simulate: float


class Sampler:
    """Collects episodes of one robot for many tasks at once.

    Args:
        robot: a name in `envs.robots.ROBOTS`.
        horizon: maximum steps per episode (episodes end earlier when the env ends them).
        height_scan: as `LocomotionEnv`.
        goal_in_obs: as `LocomotionEnv`.
        privileged_in_obs: as `LocomotionEnv` (teacher policies only).
        num_threads: threads for a call (default: all cores). With one, the shards run in turn
            on the calling thread; with more, each shard runs on its own thread and steps its
            physics with `num_threads // 2` of MuJoCo's rollout threads (on the shard's own
            thread when that is one). Episodes do not depend on it.
    """

    def __init__(self, robot: str, horizon: int, height_scan: bool = False, goal_in_obs: bool = False,
                 num_threads: int | None = None, privileged_in_obs: bool = False) -> None:
        if horizon < 1:
            raise ValueError(f"horizon must be >= 1, got {horizon}")
        if num_threads is not None and num_threads < 1:
            raise ValueError(f"num_threads must be >= 1, got {num_threads}")
        self.robot = robot
        self.horizon = int(horizon)
        self.height_scan = height_scan
        self.goal_in_obs = goal_in_obs
        self.privileged_in_obs = privileged_in_obs
        self.num_threads = num_threads or os.cpu_count() or 1
        self._physics_threads = max(1, self.num_threads // SHARDS)
        self.shards = SHARDS  # shards per call (`plan_shards`); fixed, so episodes never depend on the machine
        self._shard_envs: list[BatchedEnv] = []
        self._helpers = ThreadPoolExecutor(SHARDS - 1) if self.num_threads > 1 else None
        probe = self._envs([1])[0]
        self.obs_dim = probe.observation_space.shape[0]
        self.act_dim = probe.action_space.shape[0]
        self.dt = float(probe.dt)  # seconds per env step
        self.env_steps = 0  # total env steps sampled so far (for steps/s figures)
        # Where sampling time went, summed over calls (shards running side by side count once:
        # their times are averaged).
        self.seconds = {"simulate": 0.0, "policy": 0.0}

    def _envs(self, sizes: list[int]) -> list[BatchedEnv]:
        """One batched env per shard (rebuilt when the shard sizes change)."""
        if [env.num_envs for env in self._shard_envs] != sizes:
            for env in self._shard_envs:
                env.close()
            self._shard_envs = [BatchedEnv(self.robot, size, self.height_scan, self.goal_in_obs,
                                           num_threads=self._physics_threads,
                                           privileged_in_obs=self.privileged_in_obs) for size in sizes]
        return self._shard_envs

    def sample(
        self,
        policy: Actor,
        tasks: Sequence[Task],
        episodes_per_task: int,
        params: ParamsArg = None,
        seed: int = 0,
        deterministic: bool = False,
    ) -> list[Episodes]:
        """Episodes of every task, one `Episodes` per task (batch = episodes_per_task).

        Args:
            policy: the policy to act with, or a `MemoryActor` (acting on the episode so far).
            tasks: the tasks; env `t * episodes_per_task + e` runs episode e of task t.
            episodes_per_task: episodes per task.
            params: None (the policy's own parameters), one dict for every task, or one dict
                per task (e.g. each task's adapted parameters); None for a `MemoryActor`.
            seed: seeds the envs' resets and the action noise.
            deterministic: act with the mean action instead of sampling.
        """
        if episodes_per_task < 1:
            raise ValueError(f"episodes_per_task must be >= 1, got {episodes_per_task}")
        if not tasks:
            raise ValueError("tasks must not be empty")
        n_tasks, per_task = len(tasks), int(episodes_per_task)
        if params is not None and not isinstance(policy, GaussianMLPPolicy):
            raise ValueError("params: a memory actor acts with its own parameters; pass params=None")
        if isinstance(params, Sequence) and len(params) != n_tasks:
            raise ValueError(f"params must hold one dict per task ({n_tasks}), got {len(params)}")
        batch_size = n_tasks * per_task
        env_seeds = np.random.SeedSequence(seed).generate_state(batch_size)
        generator = torch.Generator().manual_seed(int(seed))
        # Every env's action noise for the whole call (task-major env order), drawn at once.
        noise = None if deterministic else torch.randn((self.horizon, batch_size, self.act_dim),
                                                       generator=generator).numpy()

        out = Collected.zeros(self.horizon, batch_size, self.obs_dim, self.act_dim)
        for wave in waves(n_tasks, per_task):
            shards = [Shard(range(wave.start + shard.tasks.start, wave.start + shard.tasks.stop), shard.episodes)
                      for shard in plan_shards(len(wave), per_task, self.shards)]
            jobs = [shard_job(shard, per_task, tasks, policy, params, env_seeds, noise) for shard in shards]
            results, side_by_side = self._collect(jobs)
            for job, result in zip(jobs, results, strict=True):
                out.put(job.rows, result.collected)
                self.env_steps += result.env_steps
                self.seconds["policy"] += result.seconds_policy / side_by_side
                self.seconds["simulate"] += result.seconds_simulate / side_by_side
        return [
            Episodes(
                observations=torch.from_numpy(out.observations[:, group]),
                actions=torch.from_numpy(out.actions[:, group]),
                rewards=torch.from_numpy(out.rewards[:, group]),
                mask=torch.from_numpy(out.mask[:, group]),
                terminated=torch.from_numpy(out.terminated[group]),
                info={"distance": torch.from_numpy(out.distance[group]),  # metres along the goal's heading
                      "physics_unstable": torch.from_numpy(out.unstable[group])},
            )
            for group in (slice(t * per_task, (t + 1) * per_task) for t in range(n_tasks))
        ]

    def _collect(self, jobs: list[ShardJob]) -> tuple[list[ShardResult], int]:
        """Collect every shard (here: on this machine's threads); returns the results and how many
        ran side by side. `agents.runs.ray_sampler.RaySampler` collects them on Ray actors."""
        envs = self._envs([len(job.tasks) for job in jobs])
        if self._helpers is None:
            return [collect_shard(env, job, self.horizon) for env, job in zip(envs, jobs, strict=True)], 1
        helping = [self._helpers.submit(collect_shard, env, job, self.horizon)
                   for env, job in zip(envs[1:], jobs[1:], strict=True)]
        try:
            first = collect_shard(envs[0], jobs[0], self.horizon)
        finally:
            wait(helping)  # a shard must never keep running into the next call
        return [first, *(job.result() for job in helping)], len(jobs)

    def close(self) -> None:
        """Release the envs and the helper threads."""
        for env in self._shard_envs:
            env.close()
        self._shard_envs = []
        if self._helpers is not None:
            self._helpers.shutdown()
            self._helpers = None


def shard_job(shard: Shard, per_task: int, tasks: Sequence[Task], policy: Actor, params: ParamsArg,
              env_seeds: np.ndarray, noise: np.ndarray | None) -> ShardJob:
    """One shard's job: its envs' tasks, parameters, reset seeds and action noise, cut from the call's."""
    rows = shard.rows(per_task)
    if isinstance(params, Sequence):
        shard_params = [_detached(params[t]) for t in shard.tasks]
    else:
        shard_params = None if params is None else _detached(params)
    return ShardJob([tasks[t] for t in shard.tasks for _ in shard.episodes], policy, shard_params, len(shard.tasks),
                    len(shard.episodes), env_seeds[rows].tolist(), None if noise is None else noise[:, rows], rows)


def collect_shard(env: BatchedEnv, job: ShardJob, horizon: int) -> ShardResult:
    """Run one shard's episodes to the horizon (or until all end) on the calling thread."""
    env.set_tasks(job.tasks)
    out = Collected.zeros(horizon, env.num_envs, env.observation_space.shape[0], env.action_space.shape[0])
    done = np.zeros(env.num_envs, dtype=bool)
    seconds_policy, seconds_simulate = 0.0, 0.0

    step_mean, std = _step_actor(job)
    scaled_noise = None if job.noise is None else job.noise * std
    obs = env.reset(job.env_seeds)
    root = env.readout.root
    xy_start = env.qpos[:, :root].copy()
    no_action = np.zeros_like(out.actions[0])
    for t in range(horizon):
        out.observations[t] = obs
        started = time.perf_counter()
        mean = step_mean(out.observations[t], out.actions[t - 1] if t else no_action)
        if scaled_noise is None:
            out.actions[t] = mean
        else:
            np.add(mean, scaled_noise[t], out=out.actions[t])
        alive = ~done
        out.mask[t] = alive
        stepped = time.perf_counter()
        obs, reward, term, trunc, info = env.step(out.actions[t], active=alive)
        seconds_policy += stepped - started
        seconds_simulate += time.perf_counter() - stepped
        np.copyto(out.rewards[t], reward, where=alive)  # rows of finished episodes stay 0
        out.terminated |= term & alive
        out.unstable |= info["physics_unstable"] & alive
        done |= term | trunc
        if done.all():
            break
    env_steps = int(np.count_nonzero(out.mask))
    out.observations *= out.mask[..., None]
    out.actions *= out.mask[..., None]
    out.distance[:] = ((env.qpos[:, :root] - xy_start) * env.heading[:, :root]).sum(axis=1)
    return ShardResult(out, env_steps, seconds_policy, seconds_simulate)


def _detached(params: Mapping[str, torch.Tensor]) -> Params:
    """Parameters as plain tensors (an adapted set carries its graph; a shard needs only the values)."""
    return {name: value.detach() for name, value in params.items()}


def _step_actor(job: ShardJob) -> tuple[StepMean, np.ndarray]:
    """(step function, std [B or 1, act_dim]) of a shard's actor: a memory actor started on the
    shard's rows, or a stateless policy's batched forward (which ignores the previous actions)."""
    if not isinstance(job.policy, GaussianMLPPolicy):
        return job.policy.start(job.rows), np.asarray(job.policy.action_std(), dtype=np.float32)[None]
    mean_of, std = _batched_actor(job.policy, job.params, job.n_tasks, job.per_task)
    return (lambda obs, previous_actions: mean_of(obs)), std


def _batched_actor(policy: GaussianMLPPolicy, params: ParamsArg, n_tasks: int, per_task: int
                   ) -> tuple[Callable[[np.ndarray], np.ndarray], np.ndarray]:
    """(obs [B, obs_dim] -> mean [B, act_dim], std [B or 1, act_dim]) in numpy: each task's rows
    under its own parameters. The std does not depend on the observation, so it is computed once."""
    with torch.no_grad():
        if not isinstance(params, Sequence):
            # Views made once, not every step (shared memory, so this is still the live policy).
            own = policy.parameters_dict() if params is None else dict(params)
            return policy.numpy_mean(own), policy.std(own)[None].numpy()
        stacked: Params = {name: torch.stack([p[name].detach() for p in params]) for name in params[0]}
        std = vmap(policy.std)(stacked).repeat_interleave(per_task, dim=0).numpy()
    per_task_mean = policy.numpy_mean(stacked)

    def mean_of(obs: np.ndarray) -> np.ndarray:
        return per_task_mean(obs.reshape(n_tasks, per_task, -1)).reshape(n_tasks * per_task, -1)

    return mean_of, std
