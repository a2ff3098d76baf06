"""LocomotionEnv: one robot on procedural terrain with varied physics, as a gymnasium.Env.

The model is compiled once with MjSpec (robot + a heightfield ground). A task change writes the
heightfield and the physics into the compiled model in place: the structure never changes, so
nothing is recompiled and the spaces keep their shape across tasks.
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Any, ClassVar

import gymnasium as gym
import mujoco
import numpy as np

from envs.physics import PhysicsDefaults, apply_physics
from envs.render import FrameRenderer
from envs.robots import RobotSpec, get_robot
from envs.tasks import Task, TaskDistribution, get_family
from envs.terrain import HEIGHT_LIMIT, TerrainGrid, generate, height_at

_GOAL_DIM = 4  # target velocity, tracking flag, cos(direction), sin(direction)
_HFIELD_BASE = 1.0  # thickness of the heightfield's solid base below its lowest point, metres


@lru_cache(maxsize=256)
def terrain_heights(terrain_kind: str, difficulty: float, seed: int, grid: TerrainGrid) -> np.ndarray:
    """Heights of a task's terrain (cached: a task's ground depends only on these arguments)."""
    heights = generate(terrain_kind, np.random.default_rng(seed), difficulty, grid)
    heights.setflags(write=False)
    return heights


def build_model(robot: RobotSpec, width: int = 640, height: int = 480) -> mujoco.MjModel:
    """Compile `robot` with a flat heightfield ground named 'terrain' (filled in by set_task)."""
    spec = mujoco.MjSpec.from_file(str(robot.xml))
    grid = robot.grid
    spec.add_hfield(
        name="terrain",
        nrow=grid.nrow,
        ncol=grid.ncol,
        size=[grid.length / 2, grid.half_width, 2 * HEIGHT_LIMIT, _HFIELD_BASE],
        userdata=[0.5] * (grid.nrow * grid.ncol),
    )
    texture = spec.add_texture(
        name="ground_grid", type=mujoco.mjtTexture.mjTEXTURE_2D, builtin=mujoco.mjtBuiltin.mjBUILTIN_CHECKER,
        rgb1=[0.32, 0.36, 0.40], rgb2=[0.22, 0.25, 0.28], mark=mujoco.mjtMark.mjMARK_EDGE,
        markrgb=[0.55, 0.6, 0.65], width=300, height=300,
    )
    material = spec.add_material(name="ground", texrepeat=[grid.length / 2, 2 * grid.half_width / 2],
                                 reflectance=0.05)
    material.textures[mujoco.mjtTextureRole.mjTEXROLE_RGB] = texture.name
    spec.worldbody.add_geom(
        name="terrain", type=mujoco.mjtGeom.mjGEOM_HFIELD, hfieldname="terrain",
        pos=[grid.x_start + grid.length / 2, 0.0, -HEIGHT_LIMIT], material="ground",
        contype=1, conaffinity=1, condim=3, priority=1, friction=[1.0, 0.005, 0.0001],
    )
    # Flat ground is exactly a plane, and MuJoCo collides with a plane analytically, several
    # times faster than with heightfield prisms: set_task keeps whichever the terrain needs
    # colliding (both are compiled as colliders: MuJoCo 4 refuses to enable one later).
    spec.worldbody.add_geom(
        name="ground_plane", type=mujoco.mjtGeom.mjGEOM_PLANE, size=[grid.length / 2, grid.half_width, 1.0],
        pos=[grid.x_start + grid.length / 2, 0.0, 0.0], rgba=[0, 0, 0, 0],
        contype=1, conaffinity=1, condim=3, priority=1, friction=[1.0, 0.005, 0.0001],
    )
    spec.visual.global_.offwidth = max(width, 640)
    spec.visual.global_.offheight = max(height, 480)
    return spec.compile()


class LocomotionEnv(gym.Env):
    """A robot on a task's terrain and physics, rewarded for moving along the task's goal.

    Args:
        robot: a name in `envs.robots.ROBOTS`.
        task: the initial task (a `Task` or its dict); default flat ground, progress reward.
        task_family: a family in `envs.tasks.FAMILIES` for `sample_tasks`; its robot must match.
        task_seed: seed of the family's task generator.
        height_scan: append terrain heights around the robot (relative to the torso) to the obs.
        goal_in_obs: append the goal (target velocity, tracking flag, cos/sin direction).
        terminate_when_unhealthy: end the episode when a robot that can fall has fallen.
        render_mode: None or "rgb_array".
        width: rendered frame width in pixels.
        height: rendered frame height in pixels.
        camera: name of the camera to render from.
    """

    metadata: ClassVar[dict[str, Any]] = {"render_modes": ["rgb_array"], "render_fps": 20}

    def __init__(
        self,
        robot: str = "cheetah",
        task: Task | dict | None = None,
        task_family: str | None = None,
        task_seed: int | None = 0,
        height_scan: bool = False,
        goal_in_obs: bool = False,
        terminate_when_unhealthy: bool = True,
        render_mode: str | None = None,
        width: int = 480,
        height: int = 360,
        camera: str = "track",
    ) -> None:
        self.spec_robot = get_robot(robot)
        if render_mode not in (None, "rgb_array"):
            raise ValueError(f"render_mode must be None or 'rgb_array', got {render_mode!r}")
        self.task_distribution = None
        if task_family is not None:
            if get_family(task_family).robot != robot:
                raise ValueError(f"task_family {task_family!r} is for robot "
                                 f"{get_family(task_family).robot!r}, not {robot!r}")
            self.task_distribution = TaskDistribution(task_family, task_seed)
        self.height_scan = bool(height_scan)
        self.goal_in_obs = bool(goal_in_obs)
        self.terminate_when_unhealthy = bool(terminate_when_unhealthy)
        self.render_mode = render_mode
        self.camera = camera
        self._frame_size = (int(width), int(height))

        self.model = build_model(self.spec_robot, width, height)
        self.data = mujoco.MjData(self.model)
        self.frame_skip = self.spec_robot.frame_skip
        self.dt = self.model.opt.timestep * self.frame_skip
        self.metadata = {**self.metadata, "render_fps": int(round(1.0 / self.dt))}
        self._defaults = PhysicsDefaults.capture(self.model)
        self._hfield_geom = mujoco.mj_name2id(self.model, mujoco.mjtObj.mjOBJ_GEOM, "terrain")
        self._plane_geom = mujoco.mj_name2id(self.model, mujoco.mjtObj.mjOBJ_GEOM, "ground_plane")
        self._hfield_adr = int(self.model.hfield_adr[0])
        self._torso = mujoco.mj_name2id(self.model, mujoco.mjtObj.mjOBJ_BODY, "torso")
        if mujoco.mj_name2id(self.model, mujoco.mjtObj.mjOBJ_CAMERA, camera) < 0:
            raise ValueError(f"camera {camera!r} is not a camera of the {robot}")
        self._qpos0 = self.model.qpos0.copy()
        # Planar robots: qpos = [x, z, pitch, joints...]; free robots: [x, y, z, quat, joints...].
        self._root_xy = 1 if self.spec_robot.planar else 2
        self._scan_x = np.asarray(self.spec_robot.scan_x, dtype=np.float64)
        self._scan_y = np.asarray(self.spec_robot.scan_y, dtype=np.float64)
        if not self.spec_robot.planar:
            grid_x, grid_y = np.meshgrid(self._scan_x, self._scan_y)
            self._scan_x, self._scan_y = grid_x.ravel(), grid_y.ravel()

        obs_dim = self.model.nq - self._root_xy + self.model.nv
        obs_dim += self.spec_robot.n_scan if self.height_scan else 0
        obs_dim += _GOAL_DIM if self.goal_in_obs else 0
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (obs_dim,), np.float64)
        low, high = self.model.actuator_ctrlrange.T.copy()
        self._ctrl_low, self._ctrl_high = low, high
        self.action_space = gym.spaces.Box(low.astype(np.float32), high.astype(np.float32), dtype=np.float32)

        self._renderer: FrameRenderer | None = None
        self.task: Task = Task()
        self.heights: np.ndarray = np.zeros((self.spec_robot.grid.nrow, self.spec_robot.grid.ncol))
        first = task if task is not None else (self.sample_tasks(1)[0] if self.task_distribution else Task())
        self.set_task(first)

    # --- tasks -------------------------------------------------------------------------------

    def sample_tasks(self, n: int, split: str = "train") -> list[Task]:
        """Draw `n` tasks from this env's task family (seeded by `task_seed`)."""
        if self.task_distribution is None:
            raise ValueError("sample_tasks needs task_family=...; allowed families: "
                             "see envs.tasks.FAMILIES")
        return self.task_distribution.sample(n, split)

    def set_task(self, task: Task | dict) -> None:
        """Switch to `task` in place: heightfield and physics written into the compiled model."""
        task = Task.from_dict(task) if isinstance(task, dict) else task
        if not isinstance(task, Task):
            raise ValueError(f"task must be a Task or its dict, got {type(task).__name__}")
        if self.spec_robot.planar and task.goal.direction not in (0.0, math.pi, -math.pi):
            raise ValueError(f"goal.direction must be 0 or pi for the planar {self.spec_robot.name}, "
                             f"got {task.goal.direction}")
        grid = self.spec_robot.grid
        heights = terrain_heights(task.terrain.kind, task.terrain.difficulty, task.terrain.seed, grid)
        flat = self._flat = not heights.any()
        ground, unused = (self._plane_geom, self._hfield_geom) if flat else (self._hfield_geom, self._plane_geom)
        self.model.geom_contype[ground] = self.model.geom_conaffinity[ground] = 1
        self.model.geom_contype[unused] = self.model.geom_conaffinity[unused] = 0
        apply_physics(self.model, self.data, task.physics, self._defaults, ground, self._torso)
        self.heights = heights
        size = heights.size
        self.model.hfield_data[self._hfield_adr:self._hfield_adr + size] = (
            (heights.ravel() + HEIGHT_LIMIT) / (2 * HEIGHT_LIMIT))
        self.task = task
        direction = task.goal.direction
        self._heading = np.array([math.cos(direction), math.sin(direction)])
        self._goal_obs = np.array([task.goal.target_velocity or 0.0,
                                   float(task.goal.target_velocity is not None),
                                   math.cos(direction), math.sin(direction)])
        if self._renderer is not None:
            self._renderer.upload_heightfield()

    # --- gymnasium API -----------------------------------------------------------------------

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        """Start an episode (optionally on `options["task"]`) with noise from `self.np_random`."""
        super().reset(seed=seed)
        if options and "task" in options:
            self.set_task(options["task"])
        robot = self.spec_robot
        mujoco.mj_resetData(self.model, self.data)
        qpos = self._qpos0.copy()
        qpos[self._root_xy:] += self.np_random.uniform(-robot.reset_noise, robot.reset_noise,
                                                       self.model.nq - self._root_xy)
        if not robot.planar:
            qpos[3:7] = self._qpos0[3:7]  # keep the free joint's quaternion a unit quaternion
        qvel = robot.reset_vel_noise * self.np_random.standard_normal(self.model.nv)
        self.data.qpos[:] = qpos
        self.data.qvel[:] = qvel
        mujoco.mj_forward(self.model, self.data)
        self._lift_out_of_ground()
        self._bad_state_count = self._count_bad_state_warnings()
        return self._observation(), self._reset_info()

    def step(self, action: np.ndarray):
        """Advance frame_skip physics steps; reward parts and state go into `info`."""
        action = np.minimum(np.maximum(np.asarray(action, dtype=np.float64), self._ctrl_low), self._ctrl_high)
        xy_before = self.data.qpos[: self._root_xy].copy()
        self.data.ctrl[:] = action
        mujoco.mj_step(self.model, self.data, nstep=self.frame_skip)
        unstable = (self._count_bad_state_warnings() != self._bad_state_count
                    or not np.isfinite(self.data.qpos).all() or not np.isfinite(self.data.qvel).all())
        if unstable:
            # MuJoCo resets a diverged state itself; report it and end the episode.
            obs = np.nan_to_num(self._observation(), nan=0.0, posinf=0.0, neginf=0.0)
            return obs, 0.0, True, False, {"physics_unstable": True, "task": self.task}
        velocity_xy = (self.data.qpos[: self._root_xy] - xy_before) / self.dt
        forward_velocity = float(velocity_xy @ self._heading[: self._root_xy])
        target = self.task.goal.target_velocity
        reward_forward = forward_velocity if target is None else -abs(forward_velocity - target)
        reward_ctrl = -self.spec_robot.ctrl_cost_weight * float(action @ action)
        ground = self._ground_height()
        healthy = self._is_healthy(ground)
        reward_healthy = self.spec_robot.healthy_reward if healthy else 0.0
        reward = reward_forward + reward_ctrl + reward_healthy
        terminated = self.terminate_when_unhealthy and not healthy
        truncated = self._out_of_course()
        info = {
            "x_position": float(self.data.qpos[0]),
            "y_position": float(self.data.qpos[1]) if not self.spec_robot.planar else 0.0,
            "forward_velocity": forward_velocity,
            "reward_forward": reward_forward,
            "reward_ctrl": reward_ctrl,
            "reward_healthy": reward_healthy,
            "terrain_height": ground,
            "out_of_course": truncated,
            "physics_unstable": False,
            "task": self.task,
        }
        return self._observation(ground), reward, terminated, truncated, info

    def render(self) -> np.ndarray | None:
        """An RGB frame from the tracking camera (render_mode='rgb_array'), else None."""
        if self.render_mode != "rgb_array":
            return None
        if self._renderer is None:
            self._renderer = FrameRenderer(self.model, *self._frame_size)
        return self._renderer.render(self.data, self.camera)

    def close(self) -> None:
        """Free the renderer's GL resources."""
        if self._renderer is not None:
            self._renderer.close()
            self._renderer = None

    # --- internals ---------------------------------------------------------------------------

    def _count_bad_state_warnings(self) -> int:
        """How often MuJoCo found a diverged state (and reset it) in this episode's data."""
        warning = self.data.warning
        return (warning[mujoco.mjtWarning.mjWARN_BADQPOS].number + warning[mujoco.mjtWarning.mjWARN_BADQVEL].number
                + warning[mujoco.mjtWarning.mjWARN_BADQACC].number)

    def _lift_out_of_ground(self) -> None:
        """Raise the root until no contact penetrates (reset noise can tilt a foot into the ground)."""
        for _ in range(3):
            deepest = min((self.data.contact[i].dist for i in range(self.data.ncon)), default=0.0)
            if deepest >= 0.0:
                return
            self.data.qpos[self._root_xy] += 0.002 - deepest
            mujoco.mj_forward(self.model, self.data)

    def _torso_xy(self) -> tuple[float, float]:
        qpos = self.data.qpos
        return float(qpos[0]), (0.0 if self.spec_robot.planar else float(qpos[1]))

    def _ground_height(self) -> float:
        if self._flat:
            return 0.0
        x, y = self._torso_xy()
        return float(height_at(self.heights, self.spec_robot.grid, np.array(x), np.array(y)))

    def _is_healthy(self, ground: float) -> bool:
        robot = self.spec_robot
        if robot.healthy_z is None:
            return True
        z = float(self.data.qpos[self._root_xy]) - ground
        if not robot.healthy_z[0] <= z <= robot.healthy_z[1]:
            return False
        return robot.max_tilt is None or self._tilt() <= robot.max_tilt

    def _tilt(self) -> float:
        """Angle between the torso's up axis and the world's, radians (planar: |pitch|)."""
        if self.spec_robot.planar:
            return abs(float(self.data.qpos[2]))
        _, qx, qy, _ = self.data.qpos[3:7]
        return math.acos(max(-1.0, min(1.0, 1.0 - 2.0 * (qx * qx + qy * qy))))

    def _out_of_course(self) -> bool:
        grid = self.spec_robot.grid
        x, y = self._torso_xy()
        margin = 2.0  # metres: further out, part of the robot would hang over the heightfield's edge
        inside_x = grid.x_start + margin <= x <= grid.x_end - margin
        return not (inside_x and (self.spec_robot.planar or abs(y) <= grid.half_width - margin))

    def _observation(self, ground: float | None = None) -> np.ndarray:
        qpos, qvel = self.data.qpos, self.data.qvel
        root = self._root_xy
        clip = self.spec_robot.velocity_clip
        parts = [
            [qpos[root] - (self._ground_height() if ground is None else ground)],
            qpos[root + 1:],
            np.minimum(np.maximum(qvel, -clip), clip),
        ]
        if self.height_scan:
            parts.append(qpos[root] - self._scan_heights())
        if self.goal_in_obs:
            parts.append(self._goal_obs)
        return np.concatenate(parts)

    def _scan_heights(self) -> np.ndarray:
        x, y = self._torso_xy()
        if self.spec_robot.planar:
            return height_at(self.heights, self.spec_robot.grid, x + self._scan_x, np.zeros_like(self._scan_x))
        w, qx, qy, qz = self.data.qpos[3:7]
        yaw = math.atan2(2 * (w * qz + qx * qy), 1 - 2 * (qy * qy + qz * qz))
        cos_yaw, sin_yaw = math.cos(yaw), math.sin(yaw)
        px = x + cos_yaw * self._scan_x - sin_yaw * self._scan_y
        py = y + sin_yaw * self._scan_x + cos_yaw * self._scan_y
        return height_at(self.heights, self.spec_robot.grid, px, py)

    def _reset_info(self) -> dict[str, Any]:
        return {"x_position": float(self.data.qpos[0]), "task": self.task, "physics_unstable": False}
