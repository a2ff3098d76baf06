"""Many locomotion envs stepped together: physics on a thread pool, readout vectorised.

Each member is a full `LocomotionEnv` (its own compiled model, so each can hold its own task);
the batch steps their physics on threads (MuJoCo releases the GIL inside `mj_step`) and then
computes every observation and reward in one vectorised `Readout` call. Member i of a batch
produces exactly the trajectory a single env would, given the same task, seed and actions.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from envs.locomotion import LocomotionEnv, clip_action, simulate
from envs.readout import goal_arrays
from envs.tasks import Task


class BatchedEnv:
    """`num_envs` envs of one robot, each with its own task, stepped as a batch.

    Args:
        robot: a name in `envs.robots.ROBOTS`.
        num_envs: batch size.
        height_scan: as `LocomotionEnv`.
        goal_in_obs: as `LocomotionEnv`.
        terminate_when_unhealthy: as `LocomotionEnv`.
        num_threads: physics threads; default: the machine's cores.
    """

    def __init__(self, robot: str, num_envs: int, height_scan: bool = False, goal_in_obs: bool = False,
                 terminate_when_unhealthy: bool = True, num_threads: int | None = None) -> None:
        if num_envs < 1:
            raise ValueError(f"num_envs must be >= 1, got {num_envs}")
        self.envs = [LocomotionEnv(robot, height_scan=height_scan, goal_in_obs=goal_in_obs,
                                   terminate_when_unhealthy=terminate_when_unhealthy) for _ in range(num_envs)]
        first = self.envs[0]
        self.num_envs = num_envs
        self.readout = first.readout
        self.frame_skip = first.frame_skip
        self.dt = first.dt
        self.observation_space = first.observation_space
        self.action_space = first.action_space
        self.num_threads = max(1, min(num_threads or os.cpu_count() or 1, num_envs))
        bounds = np.linspace(0, num_envs, self.num_threads + 1).astype(int)
        self._chunks = [range(lo, hi) for lo, hi in itertools.pairwise(bounds) if hi > lo]
        self._pool = ThreadPoolExecutor(self.num_threads) if self.num_threads > 1 else None
        nq, nv = first.model.nq, first.model.nv
        self.qpos = np.zeros((num_envs, nq))
        self.qvel = np.zeros((num_envs, nv))
        self._stable = np.ones(num_envs, dtype=bool)
        self._active = np.ones(num_envs, dtype=bool)
        self._actions = np.zeros((num_envs, first.model.nu))
        # Each member's model, data and views of its ctrl, qpos, qvel and warning counters (MjData
        # keeps its buffers for life, so the views stay valid): MjData attribute lookups build a
        # new view on every access, which the physics threads would pay under the GIL.
        self._members = [(env.model, env.data, env.data.ctrl, env.data.qpos, env.data.qvel, env.warning_counts)
                         for env in self.envs]
        self.set_tasks([first.task] * num_envs)

    @property
    def tasks(self) -> list[Task]:
        """Each member's current task."""
        return [env.task for env in self.envs]

    def set_tasks(self, tasks: Sequence[Task]) -> None:
        """Give member i task i (in place, no recompilation)."""
        if len(tasks) != self.num_envs:
            raise ValueError(f"tasks must have one task per env ({self.num_envs}), got {len(tasks)}")
        for env, task in zip(self.envs, tasks, strict=True):
            env.set_task(task)
        goals = [goal_arrays(t.goal.target_velocity, t.goal.direction) for t in tasks]
        self.heading = np.stack([g[0] for g in goals])
        targets = np.array([g[1] for g in goals])
        self._target = None if np.isnan(targets).all() else targets  # None: every member rewards progress
        self._goal_obs = np.stack([g[2] for g in goals])
        flat = all(not env.heights.any() for env in self.envs)
        self._heights = None if flat else np.stack([env.heights for env in self.envs])

    def reset(self, seeds: Sequence[int | None]) -> np.ndarray:
        """Reset every member (member i with seeds[i]); observations [num_envs, obs_dim]."""
        if len(seeds) != self.num_envs:
            raise ValueError(f"seeds must have one seed per env ({self.num_envs}), got {len(seeds)}")
        for i, (env, seed) in enumerate(zip(self.envs, seeds, strict=True)):
            env.reset(seed=None if seed is None else int(seed))
            self.qpos[i] = env.data.qpos
            self.qvel[i] = env.data.qvel
        self._active[:] = True
        return self.readout.observe(self.qpos, self.qvel, self._heights, self._goal_obs)

    def step(self, actions: np.ndarray, active: np.ndarray | None = None) -> tuple[np.ndarray, ...]:
        """Step every active member once.

        Args:
            actions: [num_envs, act_dim] actions (clipped to the control range here).
            active: optional bool [num_envs]; inactive members (finished episodes) are not
                simulated and their outputs are meaningless.

        Returns:
            observations [B, obs_dim], rewards [B], terminated [B], truncated [B], and a dict of
            arrays [B]: forward_velocity, x_position, reward parts, physics_unstable.
        """
        self._active[:] = True if active is None else active
        clip_action(actions, self.envs[0].ctrl_low, self.envs[0].ctrl_high, out=self._actions)
        xy_before = self.qpos[:, : self.readout.root].copy()
        if self._pool is None:
            self._simulate(self._chunks[0])
        else:
            for future in [self._pool.submit(self._simulate, chunk) for chunk in self._chunks]:
                future.result()
        out = self.readout.step(xy_before, self.qpos, self.qvel, self._actions, self._heights, self.heading,
                                self._target, self._goal_obs)
        unstable = ~(self._stable & np.isfinite(self.qpos).all(axis=1) & np.isfinite(self.qvel).all(axis=1))
        if unstable.any():
            out.observation[unstable] = np.nan_to_num(out.observation[unstable], nan=0.0, posinf=0.0, neginf=0.0)
            out.reward[unstable] = 0.0
            out.terminated[unstable] = True
            out.truncated[unstable] = False
        info = {
            "x_position": self.qpos[:, 0].copy(),
            "forward_velocity": out.forward_velocity,
            "reward_forward": out.reward_forward,
            "reward_ctrl": out.reward_ctrl,
            "reward_healthy": out.reward_healthy,
            "physics_unstable": unstable,
        }
        return out.observation, out.reward, out.terminated, out.truncated, info

    def _simulate(self, members: range) -> None:
        # Runs on a worker thread: mj_step releases the GIL, so chunks step in parallel. The Python
        # between mj_step calls holds the GIL, so it reads views made once (`_members`).
        active, actions, frame_skip, stable = self._active, self._actions, self.frame_skip, self._stable
        for i in members:
            if not active[i]:
                continue
            model, data, ctrl, qpos, qvel, warning_counts = self._members[i]
            ctrl[:] = actions[i]
            stable[i] = simulate(model, data, frame_skip, warning_counts)
            self.qpos[i] = qpos
            self.qvel[i] = qvel

    def close(self) -> None:
        """Stop the thread pool and free the members."""
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None
        for env in self.envs:
            env.close()

