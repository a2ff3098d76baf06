"""The sampler's shards on Ray actors: `Sampler`'s episodes, collected on other processes or machines.

Each actor holds one shard's `BatchedEnv` for the sampler's life; a call sends each actor its
shard's tasks, policy, parameters, reset seeds and action noise, all drawn by the driver as the
local sampler draws them. With the default two actors the shard plan is the local sampler's too
(`agents.sampler.plan_shards`, two shards), and the episodes are the local sampler's, bit for bit.
More actors (across machines) split a call into more shards: every env keeps its seed and noise,
but which envs share a batched policy forward changes, so episodes are equal in distribution and
may differ in the last bits.
"""

from __future__ import annotations

import time
from typing import Any

from agents.runs.ray_backend import connect, require_ray
from agents.sampler import SHARDS, Sampler, ShardJob, ShardResult, collect_shard
from envs.batched import BatchedEnv


class ShardWorker:
    """One shard's envs on a Ray actor (made remote by `RaySampler`)."""

    def __init__(self, robot: str, horizon: int, height_scan: bool, goal_in_obs: bool, physics_threads: int,
                 privileged_in_obs: bool = False) -> None:
        self.robot, self.horizon = robot, horizon
        self.height_scan, self.goal_in_obs, self.physics_threads = height_scan, goal_in_obs, physics_threads
        self.privileged_in_obs = privileged_in_obs
        self.env: BatchedEnv | None = None

    def collect(self, job: ShardJob) -> ShardResult:
        """Collect `job` (rebuilding the envs when the shard's size changes)."""
        import torch

        torch.set_num_threads(1)  # the policy forward is numpy; keep torch off the physics threads
        if self.env is None or self.env.num_envs != len(job.tasks):
            if self.env is not None:
                self.env.close()
            self.env = BatchedEnv(self.robot, len(job.tasks), self.height_scan, self.goal_in_obs,
                                  num_threads=self.physics_threads, privileged_in_obs=self.privileged_in_obs)
        return collect_shard(self.env, job, self.horizon)

    def ping(self) -> float:
        """A no-op round trip (for measuring Ray's per-call overhead)."""
        return time.perf_counter()


class RaySampler(Sampler):
    """`Sampler` whose shards run on Ray actors (one CPU each by default).

    Args:
        robot, horizon, height_scan, goal_in_obs, privileged_in_obs: as `Sampler`.
        address: None for an embedded local Ray, else the cluster to join (`connect`).
        num_actors: shards per call, one actor each (the default, 2, gives the local sampler's
            episodes bit for bit).
        cpus_per_actor: CPUs each actor reserves (and MuJoCo threads it steps with).
    """

    def __init__(self, robot: str, horizon: int, height_scan: bool = False, goal_in_obs: bool = False,
                 address: str | None = None, num_actors: int = SHARDS, cpus_per_actor: int = 1,
                 privileged_in_obs: bool = False) -> None:
        ray = require_ray()
        if num_actors < 1 or cpus_per_actor < 1:
            raise ValueError(f"num_actors and cpus_per_actor must be >= 1, got {num_actors}, {cpus_per_actor}")
        super().__init__(robot, horizon, height_scan=height_scan, goal_in_obs=goal_in_obs, num_threads=1,
                         privileged_in_obs=privileged_in_obs)
        connect(address)
        actor = ray.remote(num_cpus=cpus_per_actor)(ShardWorker)
        self._ray = ray
        self.shards = num_actors
        self.actors = [actor.remote(robot, self.horizon, height_scan, goal_in_obs, cpus_per_actor, privileged_in_obs)
                       for _ in range(num_actors)]

    def _collect(self, jobs: list[ShardJob]) -> tuple[list[ShardResult], int]:
        refs = [actor.collect.remote(job) for actor, job in zip(self.actors, jobs, strict=False)]
        return self._ray.get(refs), len(jobs)

    def round_trip_seconds(self, calls: int = 50) -> float:
        """Median seconds of an empty call to every actor and back (Ray's per-call overhead)."""
        seconds: list[Any] = []
        for _ in range(calls):
            started = time.perf_counter()
            self._ray.get([actor.ping.remote() for actor in self.actors])
            seconds.append(time.perf_counter() - started)
        return float(sorted(seconds)[len(seconds) // 2])

    def close(self) -> None:
        """Release the actors and the local probe env."""
        for actor in getattr(self, "actors", []):
            self._ray.kill(actor)
        self.actors = []
        super().close()
