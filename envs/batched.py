"""Many locomotion envs stepped together: physics in MuJoCo's threaded rollout, readout vectorised.

Each member is a full `LocomotionEnv` (its own compiled model, so each can hold its own task).
The batch keeps every member's physical state in one array and steps them all with one call to
`mujoco.rollout` (C++ threads, the GIL released once per step rather than once per member),
then computes every observation and reward in one vectorised `Readout` call. Member i of a batch
produces exactly the trajectory a single env would, given the same task, seed and actions: the
models run without MuJoCo's solver warm start, so a step depends only on the state and the
action, and a member whose rollout stopped early (MuJoCo stops a rollout at any warning) is
stepped again from its saved state by the single env's own code. (So a member's own `MjData`
is only used for that; the batch's state is in `qpos` and `qvel`.)
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import mujoco
import numpy as np
from mujoco import rollout

from envs.locomotion import LocomotionEnv, clip_action, simulate
from envs.readout import goal_arrays
from envs.tasks import Task, privileged_factors

_STATE = mujoco.mjtState.mjSTATE_FULLPHYSICS  # [time, qpos, qvel, act, ...]: what rollout carries


class BatchedEnv:
    """`num_envs` envs of one robot, each with its own task, stepped as a batch.

    Args:
        robot: a name in `envs.robots.ROBOTS`.
        num_envs: batch size.
        height_scan: as `LocomotionEnv`.
        goal_in_obs: as `LocomotionEnv`.
        terminate_when_unhealthy: as `LocomotionEnv`.
        privileged_in_obs: as `LocomotionEnv`.
        num_threads: threads of MuJoCo's rollout (default: the machine's cores); with one, the
            physics runs on the thread that calls `step`.
    """

    def __init__(self, robot: str, num_envs: int, height_scan: bool = False, goal_in_obs: bool = False,
                 terminate_when_unhealthy: bool = True, num_threads: int | None = None,
                 privileged_in_obs: bool = False) -> None:
        if num_envs < 1:
            raise ValueError(f"num_envs must be >= 1, got {num_envs}")
        self.envs = [LocomotionEnv(robot, height_scan=height_scan, goal_in_obs=goal_in_obs,
                                   privileged_in_obs=privileged_in_obs,
                                   terminate_when_unhealthy=terminate_when_unhealthy) for _ in range(num_envs)]
        first = self.envs[0]
        self.num_envs = num_envs
        self.readout = first.readout
        self.frame_skip = first.frame_skip
        self.dt = first.dt
        self.observation_space = first.observation_space
        self.action_space = first.action_space
        self.num_threads = max(1, min(num_threads or os.cpu_count() or 1, num_envs))
        model = first.model
        nq, nv, nstate = model.nq, model.nv, mujoco.mj_stateSize(model, _STATE)
        self._models = [env.model for env in self.envs]
        # One scratch MjData per rollout thread; with one thread rollout runs on the calling thread.
        self._scratch = [mujoco.MjData(model) for _ in range(self.num_threads)]
        self._rollout = rollout.Rollout(nthread=self.num_threads if self.num_threads > 1 else 0)
        self._states = np.zeros((num_envs, nstate))  # every member's physical state, one row each
        self._substeps = np.zeros((num_envs, self.frame_skip, nstate))  # rollout's output
        # Each member's clipped action for every substep (rollout's control input); [:, 0] is the
        # action itself.
        self._controls = np.zeros((num_envs, self.frame_skip, model.nu))
        self._actions = self._controls[:, 0]
        # A member's clock advances frame_skip timesteps in a full step; half a timestep less is a
        # threshold no rounding can cross.
        self._clock_margin = (self.frame_skip - 0.5) * model.opt.timestep
        # Views of the state rows (valid for the batch's life: the arrays are never replaced).
        self.qpos = self._states[:, 1:1 + nq]
        self.qvel = self._states[:, 1 + nq:1 + nq + nv]
        self._stable = np.ones(num_envs, dtype=bool)
        self._active = np.ones(num_envs, dtype=bool)
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
        robot_weight = self.readout.robot.ctrl_cost_weight
        weights = np.array([robot_weight if t.goal.ctrl_cost_weight is None else t.goal.ctrl_cost_weight
                            for t in tasks])
        self._ctrl_factor = None if (weights == robot_weight).all() else -weights  # None: the robot's own
        self._extras = self.readout.extras(np.stack([g[2] for g in goals]),  # what each observation appends
                                           np.stack([privileged_factors(t) for t in tasks]))
        flat = all(not env.heights.any() for env in self.envs)
        self._heights = None if flat else np.stack([env.heights for env in self.envs])

    def reset(self, seeds: Sequence[int | None]) -> np.ndarray:
        """Reset every member (member i with seeds[i]); observations [num_envs, obs_dim]."""
        if len(seeds) != self.num_envs:
            raise ValueError(f"seeds must have one seed per env ({self.num_envs}), got {len(seeds)}")
        for i, (env, seed) in enumerate(zip(self.envs, seeds, strict=True)):
            env.reset(seed=None if seed is None else int(seed))
            mujoco.mj_getState(env.model, env.data, self._states[i], _STATE)
        self._active[:] = True
        return self.readout.observe(self.qpos, self.qvel, self._heights, self._extras)

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
        clip_action(np.asarray(actions)[:, None, :], self.envs[0].ctrl_low, self.envs[0].ctrl_high,
                    out=self._controls)
        xy_before = self.qpos[:, : self.readout.root].copy()
        self._simulate()
        out = self.readout.step(xy_before, self.qpos, self.qvel, self._actions, self._heights, self.heading,
                                self._target, self._extras, self._ctrl_factor)
        unstable = ~self._stable
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

    def _simulate(self) -> None:
        """Step the active members' states frame_skip physics steps; sets `_stable`."""
        self._stable[:] = True
        everyone = np.count_nonzero(self._active) == self.num_envs
        if everyone:  # the common case: rollout reads and writes the batch's arrays in place
            states, controls, substeps, models = self._states, self._controls, self._substeps, self._models
        else:
            members = np.flatnonzero(self._active)
            if not members.size:
                return
            states, controls = self._states[members], self._controls[members]
            substeps = self._substeps[members]
            models = [self._models[i] for i in members]
        n = len(models)  # chunks of a quarter of each thread's share: a stalled thread's work moves on
        self._rollout.rollout(models, self._scratch, states, controls, nstep=self.frame_skip,
                              state=substeps, skip_checks=True,
                              chunk_size=max(1, n // (4 * self.num_threads)))
        # A member whose step raised a MuJoCo warning (a diverged state, a NaN control, a full
        # contact buffer) has a clock short of frame_skip substeps: rollout stops it at the
        # warning and repeats its last state, and a diverged state found on the last substep is
        # reset to time 0 by MuJoCo itself. Such members are stepped again below by the single
        # env's code, which decides stability exactly as a single env does.
        stalled = np.flatnonzero(~(substeps[:, -1, 0] > states[:, 0] + self._clock_margin))
        redo_from = states[stalled]  # fancy indexing copies: the rows before this step
        if everyone:
            np.copyto(self._states, substeps[:, -1])
        else:
            self._states[members] = substeps[:, -1]
            stalled = members[stalled]
        for i, state in zip(stalled, redo_from, strict=True):
            self._stable[i] = self._step_like_single_env(i, state)

    def _step_like_single_env(self, i: int, state: np.ndarray) -> bool:
        """Step member i from `state` with its own MjData, exactly as `LocomotionEnv.step` does."""
        env = self.envs[i]
        mujoco.mj_setState(env.model, env.data, state, _STATE)
        env.data.ctrl[:] = self._actions[i]
        stable = simulate(env.model, env.data, self.frame_skip, env.bad_warnings)
        mujoco.mj_getState(env.model, env.data, self._states[i], _STATE)
        return stable

    def close(self) -> None:
        """Stop the rollout threads and free the members."""
        if self._rollout.rollout_ is not None:
            self._rollout.close()
        for env in self.envs:
            env.close()

