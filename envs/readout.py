"""What an env reads out of the physics state: observation, reward parts, health, course limits.

Everything here works on a batch of robots (arrays with a leading batch axis) or on one robot
(the same arrays without it: qpos [nq], numbers instead of [B] arrays). The batched env calls it
with a batch and the single env with one robot, so both compute the very same numbers by the very
same code and numpy functions; on one robot most of it is arithmetic on numpy scalars, which
costs a fraction of the same call on a one-element array.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from envs.robots import RobotSpec
from envs.tasks import privileged_names
from envs.terrain import heights_at

#: Target velocity, tracking flag, then the heading split into its four half-axes
#: (max(cos, 0), max(-cos, 0), max(sin, 0), max(-sin, 0)): goals in opposite directions light up
#: different inputs, so a network can serve a new direction through weights the old one left
#: unused, which is what lets EWC keep the old direction (its Fisher is zero on those weights).
GOAL_DIM = 6


@dataclass
class StepReadout:
    """Per-robot results of one env step: arrays with a leading batch axis (numbers for one robot)."""

    observation: np.ndarray
    reward: np.ndarray
    reward_forward: np.ndarray
    reward_ctrl: np.ndarray
    reward_healthy: np.ndarray
    forward_velocity: np.ndarray
    ground: np.ndarray
    terminated: np.ndarray
    truncated: np.ndarray


def goal_arrays(target_velocity: float | None, direction: float) -> tuple[np.ndarray, float, np.ndarray]:
    """(heading [2], target (NaN = reward progress), goal observation [GOAL_DIM]) of one task's goal."""
    heading = np.array([np.cos(direction), np.sin(direction)])
    target = np.nan if target_velocity is None else float(target_velocity)
    half_axes = np.maximum(np.array([heading[0], -heading[0], heading[1], -heading[1]]), 0.0)
    half_axes[half_axes < 1e-12] = 0.0  # cos/sin of pi are not exactly 0
    goal_obs = np.array([target_velocity or 0.0, float(target_velocity is not None), *half_axes])
    return heading, target, goal_obs


try:  # numpy's clip ufunc: `np.clip` reaches it through Python-level wrappers that cost a
    # microsecond on every single-env step (a fifth of the step's own overhead).
    from numpy._core.umath import clip as _CLIP_UFUNC
except ImportError:  # not where numpy 2.4 keeps it: minimum then maximum, the same numbers
    _CLIP_UFUNC = None


def clip(values: np.ndarray, low: np.ndarray | float, high: np.ndarray | float, out: np.ndarray | None = None
         ) -> np.ndarray:
    """`np.clip(values, low, high, out=out)` (NaN stays NaN), at the cost of one ufunc call."""
    if _CLIP_UFUNC is None:
        return np.minimum(np.maximum(values, low, out=out), high, out=out)
    return _CLIP_UFUNC(values, low, high, out=out)


def squared_norm(values: np.ndarray) -> np.ndarray:
    """`sum(values**2)` over the last axis: [B] for a batch, a numpy scalar for one row."""
    return values.dot(values) if values.ndim == 1 else np.vecdot(values, values)


def column(values: np.ndarray, index: int) -> np.ndarray:
    """`values[..., index]`: [B] for a batch, a numpy scalar for one robot (`values[..., index]`
    would give a 0-d array there, and arithmetic on those costs several times more)."""
    return values[index] if values.ndim == 1 else values[:, index]


def constant(batch_shape: tuple[int, ...], value: float | bool) -> np.ndarray | float | bool:
    """`value` for every robot of a batch ([B] array), or the plain value for one robot (shape ())."""
    if not batch_shape:
        return value
    out = np.empty(batch_shape, dtype=bool if isinstance(value, bool) else np.float64)  # np.full, without
    out.fill(value)  # its Python-level dispatch (called several times on every batched step)
    return out


class Readout:
    """Observation and reward of one robot kind, computed for a batch.

    Args:
        robot: the robot's spec (layout, health rules, cost weights, terrain grid).
        nq: size of qpos.
        nv: size of qvel.
        dt: seconds per env step.
        height_scan: append terrain heights around the robot to the observation.
        goal_in_obs: append the goal to the observation.
        terminate_when_unhealthy: unhealthy robots end their episode.
        privileged_in_obs: append the task's hidden factors (`envs.tasks.privileged_factors`): for
            teacher policies that are trained with them (RMA's phase 1), never for a deployed one.
    """

    def __init__(self, robot: RobotSpec, nq: int, nv: int, dt: float, height_scan: bool, goal_in_obs: bool,
                 terminate_when_unhealthy: bool, privileged_in_obs: bool = False) -> None:
        self.robot = robot
        self.dt = dt
        self.height_scan = height_scan
        self.goal_in_obs = goal_in_obs
        self.privileged_in_obs = privileged_in_obs
        self.terminate_when_unhealthy = terminate_when_unhealthy
        # Planar robots: qpos = [x, z, pitch, joints...]; free robots: [x, y, z, quat, joints...].
        self.root = 1 if robot.planar else 2
        scan_x = np.asarray(robot.scan_x, dtype=np.float64)
        scan_y = np.asarray(robot.scan_y, dtype=np.float64)
        if robot.planar:
            scan_y = np.zeros_like(scan_x)
        else:
            scan_x, scan_y = (a.ravel() for a in np.meshgrid(scan_x, scan_y))
        self.scan_x, self.scan_y = scan_x, scan_y
        margin = 2.0  # out of course within 2 m of the heightfield's edge (parts would hang over it)
        self.course_x = (robot.grid.x_start + margin, robot.grid.x_end - margin)
        self.course_half_width = robot.grid.half_width - margin
        # Read on every step, so looked up once here.
        self._velocity_bounds = (-float(robot.velocity_clip), float(robot.velocity_clip))
        self._ctrl_factor = -float(robot.ctrl_cost_weight)
        self.robot_nq_rest, self.robot_nv = nq - self.root - 1, nv
        self.obs_dim = (nq - self.root + nv + (robot.n_scan if height_scan else 0)
                        + (GOAL_DIM if goal_in_obs else 0) + (len(privileged_names()) if privileged_in_obs else 0))

    def layout(self) -> list[tuple[str, int]]:
        """The observation's components in order, as (name, size); their sizes sum to `obs_dim`."""
        parts = [("root_height", 1), ("qpos_rest", self.robot_nq_rest), ("qvel_clipped", self.robot_nv)]
        if self.height_scan:
            parts.append(("height_scan", self.robot.n_scan))
        if self.goal_in_obs:
            parts.append(("goal", GOAL_DIM))
        if self.privileged_in_obs:
            parts.append(("privileged", len(privileged_names())))
        return parts

    def extras(self, goal_obs: np.ndarray, privileged: np.ndarray) -> np.ndarray:
        """What the observation appends after the robot's state and scan, per robot ([B, k] or [k]):
        the goal and the privileged factors, where the flags ask for them (k may be 0)."""
        parts = ([goal_obs] if self.goal_in_obs else []) + ([privileged] if self.privileged_in_obs else [])
        if not parts:
            return np.zeros((*goal_obs.shape[:-1], 0))
        return np.concatenate(parts, axis=-1)

    # --- terrain ----------------------------------------------------------------------------

    def ground_under(self, heights: np.ndarray | None, qpos: np.ndarray) -> np.ndarray | None:
        """Terrain height [B] under each torso ([] for one robot); None for flat ground everywhere.

        `heights` is [B, nrow, ncol] for a batch, [nrow, ncol] for one robot.
        """
        if heights is None:
            return None
        if qpos.ndim == 1:
            return self.ground_under(heights[None], qpos[None])[0]
        y = np.zeros((qpos.shape[0], 1)) if self.robot.planar else qpos[:, 1:2]
        return heights_at(heights, self.robot.grid, qpos[:, 0:1], y)[:, 0]

    def _scan(self, heights: np.ndarray | None, qpos: np.ndarray) -> np.ndarray:
        if qpos.ndim == 1:
            return self._scan(None if heights is None else heights[None], qpos[None])[0]
        if heights is None:
            return qpos[:, self.root:self.root + 1] - np.zeros((qpos.shape[0], self.scan_x.size))
        x, y = qpos[:, 0:1], (np.zeros((qpos.shape[0], 1)) if self.robot.planar else qpos[:, 1:2])
        if self.robot.planar:
            px, py = x + self.scan_x, y + self.scan_y
        else:
            w, qx, qy, qz = qpos[:, 3:4], qpos[:, 4:5], qpos[:, 5:6], qpos[:, 6:7]
            yaw = np.arctan2(2 * (w * qz + qx * qy), 1 - 2 * (qy * qy + qz * qz))
            cos_yaw, sin_yaw = np.cos(yaw), np.sin(yaw)
            px = x + cos_yaw * self.scan_x - sin_yaw * self.scan_y
            py = y + sin_yaw * self.scan_x + cos_yaw * self.scan_y
        return qpos[:, self.root:self.root + 1] - heights_at(heights, self.robot.grid, px, py)

    # --- observation, reward, health ----------------------------------------------------------

    def observe(self, qpos: np.ndarray, qvel: np.ndarray, heights: np.ndarray | None, extras: np.ndarray,
                ground: np.ndarray | None = None) -> np.ndarray:
        """Observations [B, obs_dim] ([obs_dim] for one robot): height above ground, the rest of
        qpos, clipped qvel, extras."""
        low, high = self._velocity_bounds
        if heights is None:  # flat ground at height 0: qpos from the root height on is the obs
            parts = [qpos[..., self.root:]]
        else:
            if ground is None:
                ground = self.ground_under(heights, qpos)
            parts = [(column(qpos, self.root) - ground)[..., None], qpos[..., self.root + 1:]]
        parts.append(clip(qvel, low, high))
        if self.height_scan:
            parts.append(self._scan(heights, qpos))
        if extras.shape[-1]:
            parts.append(extras)
        return np.concatenate(parts, axis=-1)

    def tilt(self, qpos: np.ndarray) -> np.ndarray:
        """Angle [B] between each torso's up axis and the world's, radians (planar: |pitch|)."""
        if self.robot.planar:
            return np.abs(column(qpos, 2))
        qx, qy = column(qpos, 4), column(qpos, 5)
        return np.arccos(np.clip(1.0 - 2.0 * (qx * qx + qy * qy), -1.0, 1.0))

    def healthy(self, qpos: np.ndarray, ground: np.ndarray | None) -> np.ndarray | None:
        """Bool [B]: torso height above the ground and tilt within limits; None: no health rule."""
        robot = self.robot
        if robot.healthy_z is None:
            return None
        z = column(qpos, self.root) if ground is None else column(qpos, self.root) - ground
        ok = (robot.healthy_z[0] <= z) & (z <= robot.healthy_z[1])
        if robot.max_tilt is not None:
            ok &= self.tilt(qpos) <= robot.max_tilt
        return ok

    def out_of_course(self, qpos: np.ndarray) -> np.ndarray:
        """Bool [B]: the torso is within 2 m of the heightfield's edge (parts would hang over it)."""
        x = column(qpos, 0)
        outside = (x < self.course_x[0]) | (x > self.course_x[1])
        if not self.robot.planar:
            outside |= np.abs(column(qpos, 1)) > self.course_half_width
        return outside

    def step(self, xy_before: np.ndarray, qpos: np.ndarray, qvel: np.ndarray, action: np.ndarray,
             heights: np.ndarray | None, heading: np.ndarray, target: np.ndarray | None,
             extras: np.ndarray, ctrl_factor: np.ndarray | float | None = None) -> StepReadout:
        """Everything one env step reports, for a batch (or, without the batch axis, one robot).

        Only the work the case needs is done: every numpy call costs about a microsecond
        whatever the batch size, and the single env pays it on every step.

        Args:
            xy_before: root x (and y) before the step, [B, 1 or 2].
            qpos: joint positions after the step, [B, nq].
            qvel: joint velocities after the step, [B, nv].
            action: the (clipped) actions applied, [B, nu].
            heights: each robot's terrain [B, nrow, ncol], or None for flat ground.
            heading: unit "forward" direction of each goal, [B, 2].
            target: target velocity of each goal, NaN to reward progress, [B]; None: all progress.
            extras: what the observation appends (`extras`), [B, k].
            ctrl_factor: minus each goal's squared-action weight, [B] or one number; None: the robot's.
        """
        robot = self.robot
        if self.root == 1:
            forward_velocity = (column(qpos, 0) - column(xy_before, 0)) / self.dt * column(heading, 0)
        else:
            forward_velocity = ((qpos[..., :2] - xy_before) / self.dt * heading).sum(axis=-1)
        if target is None:
            reward_forward = forward_velocity
        else:
            reward_forward = np.where(np.isnan(target), forward_velocity, -np.abs(forward_velocity - target))
        reward_ctrl = squared_norm(action) * (self._ctrl_factor if ctrl_factor is None else ctrl_factor)
        ground = self.ground_under(heights, qpos)
        healthy = self.healthy(qpos, ground)
        batch_shape = qpos.shape[:-1]
        if healthy is None:
            reward_healthy = constant(batch_shape, robot.healthy_reward)
            terminated = constant(batch_shape, False)
        else:
            reward_healthy = np.where(healthy, robot.healthy_reward, 0.0)
            terminated = ~healthy if self.terminate_when_unhealthy else constant(batch_shape, False)
        return StepReadout(
            observation=self.observe(qpos, qvel, heights, extras, ground),
            reward=reward_forward + reward_ctrl + reward_healthy,
            reward_forward=reward_forward,
            reward_ctrl=reward_ctrl,
            reward_healthy=reward_healthy,
            forward_velocity=forward_velocity,
            ground=constant(batch_shape, 0.0) if ground is None else ground,
            terminated=terminated,
            truncated=self.out_of_course(qpos),
        )
