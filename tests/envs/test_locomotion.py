"""LocomotionEnv: API checks, determinism, standing on terrain, validation, physics blow-ups."""

import math

import gymnasium as gym
import mujoco
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env as gym_check_env
from stable_baselines3.common.env_checker import check_env as sb3_check_env

from envs import ENV_IDS
from envs.locomotion import LocomotionEnv
from envs.readout import GOAL_DIM, goal_arrays
from envs.tasks import Goal, Physics, Task, Terrain
from envs.terrain import terrain_kinds

ROBOTS = sorted(ENV_IDS)
SOME_TASKS = [
    Task(),
    Task(Terrain("rough", 0.7, 3), Physics(friction=0.4, mass_scale=1.3, payload=2.0), Goal(target_velocity=1.0)),
    Task(Terrain("stairs_down", 1.0, 1), Physics(motor_strength=0.6, disabled_actuators=(0,))),
]


def make(robot: str, **kwargs) -> gym.Env:
    return gym.make(ENV_IDS[robot], **kwargs)


@pytest.mark.parametrize("robot", ROBOTS)
@pytest.mark.parametrize("task_index", range(len(SOME_TASKS)))
def test_gymnasium_and_sb3_checkers_pass(robot: str, task_index: int) -> None:
    env = make(robot, task=SOME_TASKS[task_index], height_scan=task_index > 0, goal_in_obs=task_index == 2)
    gym_check_env(env.unwrapped, skip_render_check=True)
    sb3_check_env(env.unwrapped, warn=True)


@pytest.mark.parametrize("robot", ROBOTS)
def test_same_seed_and_task_is_bit_for_bit_identical(robot: str) -> None:
    task = Task(Terrain("rough", 0.8, 11), Physics(friction=0.7))
    actions = np.random.default_rng(0).uniform(-1, 1, (200, *make(robot).action_space.shape))

    def trajectory() -> np.ndarray:
        env = make(robot, task=task, height_scan=True)
        obs, _ = env.reset(seed=42)
        observations = [obs]
        for action in actions:
            obs, _, terminated, truncated, _ = env.step(action)
            observations.append(obs)
            if terminated or truncated:
                obs, _ = env.reset()
        return np.array(observations)

    first, second = trajectory(), trajectory()
    assert first.shape[0] == 201
    assert np.array_equal(first, second)


def test_only_the_ground_the_task_needs_collides_across_switches() -> None:
    env = make("cheetah").unwrapped
    terrain, plane = env._hfield_geom, env._plane_geom
    for kind, ground in [("rough", terrain), ("flat", plane), ("hills", terrain), ("flat", plane)]:
        env.reset(seed=0, options={"task": Task(Terrain(kind, 0.8, 2))})
        for _ in range(30):
            env.step(np.zeros(6))
        touched = {int(env.data.contact[i].geom[k]) for i in range(env.data.ncon) for k in range(2)}
        assert ground in touched and ({terrain, plane} - {ground}).isdisjoint(touched), kind
        unused = plane if ground == terrain else terrain
        assert env.model.body_contype[env.model.geom_bodyid[unused]] == 0  # skipped by the broad phase


@pytest.mark.parametrize("robot", ROBOTS)
def test_spaces_keep_their_shape_across_tasks(robot: str) -> None:
    env = make(robot, height_scan=True)
    shape = env.observation_space.shape
    for task in SOME_TASKS:
        obs, _ = env.reset(seed=0, options={"task": task})
        assert obs.shape == shape
        assert env.observation_space.shape == shape


@pytest.mark.parametrize("robot", ROBOTS)
@pytest.mark.parametrize("kind", terrain_kinds())
def test_robot_starts_on_not_in_the_ground(robot: str, kind: str) -> None:
    env = make(robot, task=Task(Terrain(kind, 1.0, 0)))
    env.reset(seed=1)
    model, data = env.unwrapped.model, env.unwrapped.data
    depths = [data.contact[i].dist for i in range(data.ncon)]
    assert min(depths, default=0.0) > -0.01, f"starts {min(depths):.3f} m inside the ground"
    for _ in range(20):
        env.step(np.zeros(model.nu))
    torso = data.body("torso").xpos
    assert torso[2] > 0.1, "the torso must stay above the ground after settling"


def test_goal_is_hidden_by_default_and_shown_when_asked() -> None:
    slow, fast = Task(goal=Goal(target_velocity=0.5)), Task(goal=Goal(target_velocity=1.5))
    hidden = make("cheetah")
    shown = make("cheetah", goal_in_obs=True)
    assert shown.observation_space.shape[0] == hidden.observation_space.shape[0] + GOAL_DIM
    a = hidden.reset(seed=0, options={"task": slow})[0]
    b = hidden.reset(seed=0, options={"task": fast})[0]
    assert np.array_equal(a, b), "without goal_in_obs the goal must not leak into the observation"
    a = shown.reset(seed=0, options={"task": slow})[0]
    b = shown.reset(seed=0, options={"task": fast})[0]
    assert not np.array_equal(a, b)


def test_opposite_directions_use_different_goal_inputs() -> None:
    forward = goal_arrays(None, 0.0)[2]
    backward = goal_arrays(None, math.pi)[2]
    assert forward.tolist() == [0.0, 0.0, 1.0, 0.0, 0.0, 0.0]
    assert backward.tolist() == [0.0, 0.0, 0.0, 1.0, 0.0, 0.0]
    diagonal = goal_arrays(None, 3 * math.pi / 4)[2]  # the heading is recoverable from the half-axes
    assert diagonal[2] - diagonal[3] == pytest.approx(math.cos(3 * math.pi / 4))
    assert diagonal[4] - diagonal[5] == pytest.approx(math.sin(3 * math.pi / 4))


def test_reward_parts_are_in_info_and_add_up() -> None:
    env = make("quadruped", task=Task(goal=Goal(target_velocity=0.5)))
    env.reset(seed=0)
    _, reward, _, _, info = env.step(env.action_space.sample())
    assert reward == pytest.approx(info["reward_forward"] + info["reward_ctrl"] + info["reward_healthy"])
    assert info["reward_forward"] == pytest.approx(-abs(info["forward_velocity"] - 0.5))
    assert isinstance(info["task"], Task)
    assert {"x_position", "y_position", "terrain_height", "physics_unstable"} <= set(info)


def test_height_scan_sees_the_terrain_ahead() -> None:
    env = make("cheetah", height_scan=True)
    n = env.unwrapped.spec_robot.n_scan
    flat = env.reset(seed=0, options={"task": Task()})[0][-n:]
    # Move the robot onto the stairs and compare the scan with flat ground at the same place.
    stairs = Task(Terrain("stairs_up", 1.0, 0))
    env.reset(seed=0, options={"task": stairs})
    env.unwrapped.data.qpos[0] = 5.0
    mujoco.mj_forward(env.unwrapped.model, env.unwrapped.data)
    scan = env.unwrapped._observation()[-n:]
    assert np.all(np.isclose(flat, flat[0])), "on flat ground every scan point is at the same depth"
    assert scan[-1] < scan[0] - 0.1, "stairs ahead are closer to the torso than the ground behind"


def test_sample_tasks_uses_the_family_and_checks_the_robot() -> None:
    env = make("cheetah", task_family="cheetah_velocity", task_seed=3)
    tasks = env.unwrapped.sample_tasks(5)
    assert tasks == gym.make(ENV_IDS["cheetah"], task_family="cheetah_velocity", task_seed=3).unwrapped.sample_tasks(5)
    with pytest.raises(ValueError, match="task_family"):
        make("cheetah", task_family="quadruped_terrain_physics")


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [({"render_mode": "depth"}, "render_mode"), ({"camera": "nope"}, "camera"),
     ({"robot": "octopus"}, "robot"), ({"task": {"terrain": {"kind": "lava"}}}, "terrain.kind")],
)
def test_constructor_validation(kwargs: dict, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        LocomotionEnv(**{"robot": "cheetah", **kwargs})


def test_planar_robot_rejects_sideways_direction_and_bad_actuator() -> None:
    env = make("cheetah")
    with pytest.raises(ValueError, match="goal.direction"):
        env.unwrapped.set_task(Task(goal=Goal(direction=1.0)))
    with pytest.raises(ValueError, match="disabled_actuators"):
        env.unwrapped.set_task(Task(physics=Physics(disabled_actuators=(6,))))


def test_non_finite_state_ends_the_episode_without_raising() -> None:
    env = make("cheetah")
    env.reset(seed=0)
    env.unwrapped.data.qvel[:] = 1e30
    obs, _, terminated, _, info = env.step(np.zeros(6))
    assert info["physics_unstable"] is True
    assert terminated
    assert np.isfinite(obs).all()
    obs, _ = env.reset(seed=0)
    _, _, _, _, info = env.step(np.zeros(6))
    assert info["physics_unstable"] is False


def test_every_blow_up_is_flagged_even_a_repeated_one() -> None:
    # MuJoCo zeroes its warning counters when it resets a diverged state; a second identical
    # blow-up must still count (the counters are zeroed before every step, not compared to a total).
    env = make("cheetah").unwrapped
    env.reset(seed=0)
    for _ in range(2):  # stepping on without a reset, as a caller ignoring `terminated` would
        env.data.qvel[:] = 1e30
        _, _, terminated, _, info = env.step(np.zeros(6))
        assert info["physics_unstable"] is True and terminated


@pytest.mark.parametrize("robot", ROBOTS)
def test_a_step_depends_only_on_the_saved_physical_state_and_the_action(robot: str) -> None:
    # The models run without the solver's warm start, so a state restored into another env steps identically
    # (what lets the batched env step states through mujoco.rollout and still match bit for bit).
    task = Task(Terrain("rough", 0.6, 2))
    actions = np.random.default_rng(3).uniform(-1, 1, (30, *make(robot).action_space.shape))
    original, restored = make(robot, task=task).unwrapped, make(robot, task=task).unwrapped
    original.reset(seed=1)
    restored.reset(seed=2)
    for action in actions[:10]:
        original.step(action)
    kind = mujoco.mjtState.mjSTATE_FULLPHYSICS
    saved = np.zeros(mujoco.mj_stateSize(original.model, kind))
    mujoco.mj_getState(original.model, original.data, saved, kind)
    mujoco.mj_setState(restored.model, restored.data, saved, kind)
    for action in actions[10:]:
        assert np.array_equal(original.step(action)[0], restored.step(action)[0])


@pytest.mark.parametrize("robot", ROBOTS)
def test_skipping_island_discovery_and_midphase_changes_no_trajectory(robot: str) -> None:
    # build_model disables both for speed; the claim is that the physics stays bit for bit the same.
    task = Task(Terrain("stairs_up", 0.6, 2))
    actions = np.random.default_rng(4).uniform(-1, 1, (100, *make(robot).action_space.shape))
    fast, reference = make(robot, task=task).unwrapped, make(robot, task=task).unwrapped
    skipped = int(mujoco.mjtDisableBit.mjDSBL_ISLAND | mujoco.mjtDisableBit.mjDSBL_MIDPHASE)
    assert fast.model.opt.disableflags & skipped == skipped
    reference.model.opt.disableflags &= ~skipped
    fast.reset(seed=5)
    reference.reset(seed=5)
    for action in actions:
        assert np.array_equal(fast.step(action)[0], reference.step(action)[0])


@pytest.mark.parametrize("robot", ROBOTS)
def test_a_step_without_a_warning_ends_finite(robot: str) -> None:
    # The single env relies on this instead of testing qpos and qvel after every step.
    env = make(robot, task=Task(Terrain("rough", 0.8, 1)), terminate_when_unhealthy=False).unwrapped
    env.model.actuator_gear[:, 0] *= 1e3  # drives the robot to huge velocities and blow-ups
    env.reset(seed=0)
    rng = np.random.default_rng(0)
    blow_ups = 0
    for _ in range(300):
        _, _, _, truncated, info = env.step(rng.uniform(-1, 1, env.model.nu))
        if info["physics_unstable"]:
            blow_ups += 1
            env.reset()
            continue
        assert np.isfinite(env.data.qpos).all() and np.isfinite(env.data.qvel).all()
        if truncated:
            env.reset()
    assert blow_ups > 0


def test_leaving_the_course_truncates() -> None:
    env = make("cheetah")
    env.reset(seed=0)
    env.unwrapped.data.qpos[0] = env.unwrapped.spec_robot.grid.x_end - 1.0
    _, _, _, truncated, info = env.step(np.zeros(6))
    assert truncated and info["out_of_course"]


def test_a_flipped_quadruped_is_unhealthy() -> None:
    env = make("quadruped")
    env.reset(seed=0)
    data = env.unwrapped.data
    data.qpos[3:7] = [0.0, 1.0, 0.0, 0.0]  # upside down
    data.qpos[2] = 0.6
    _, _, terminated, _, info = env.step(np.zeros(8))
    assert terminated and info["reward_healthy"] == 0.0
    env.reset(seed=0)
    _, _, terminated, _, info = env.step(np.zeros(8))
    assert not terminated and info["reward_healthy"] == 1.0


def test_backward_tasks_have_room_to_run() -> None:
    env = make("cheetah", task=Task(goal=Goal(direction=np.pi)))
    env.reset(seed=0)
    env.unwrapped.data.qpos[0] = -30.0
    _, _, _, truncated, _ = env.step(np.zeros(6))
    assert not truncated


@pytest.mark.parametrize("action", [np.zeros((1, 6)), np.zeros(5), [0.0] * 7])
def test_a_wrongly_shaped_action_is_refused_before_stepping(action) -> None:
    env = make("cheetah").unwrapped
    env.reset(seed=0)
    time_before = env.data.time
    with pytest.raises(ValueError, match=r"action: must be 6 numbers"):
        env.step(action)
    assert env.data.time == time_before


def test_a_non_finite_action_ends_the_episode_as_unstable() -> None:
    env = make("cheetah")
    env.reset(seed=0)
    action = np.zeros(6)
    action[2] = np.nan
    obs, reward, terminated, _, info = env.step(action)
    assert info["physics_unstable"] and terminated and reward == 0.0 and np.isfinite(obs).all()


def test_a_rejected_task_changes_nothing() -> None:
    env = make("cheetah", task=Task(Terrain("stairs_up", 1.0, 0)))
    env.reset(seed=0)
    before = (env.unwrapped.model.geom_contype.copy(), env.unwrapped.model.hfield_data.copy(), env.unwrapped.task)
    with pytest.raises(ValueError, match="disabled_actuators"):
        env.unwrapped.set_task(Task(physics=Physics(disabled_actuators=(6,))))
    assert np.array_equal(before[0], env.unwrapped.model.geom_contype)
    assert np.array_equal(before[1], env.unwrapped.model.hfield_data)
    assert env.unwrapped.task == before[2]


@pytest.mark.parametrize("robot", ["cheetah", "quadruped"])
def test_a_captured_episode_continues_bit_for_bit_in_a_fresh_env(robot: str) -> None:
    task = Task(terrain=Terrain("rough", 0.6, seed=2), physics=Physics(friction=0.7))
    paused = LocomotionEnv(robot, task=task)
    paused.reset(seed=3)
    rng = np.random.default_rng(0)
    for _ in range(15):
        paused.step(rng.uniform(-1, 1, paused.action_space.shape))
    state = paused.get_state()
    fresh = LocomotionEnv(robot)  # flat ground, default physics: set_state brings the task too
    fresh.set_state(state)
    assert fresh.task == task
    for step in range(200):
        action = rng.uniform(-1, 1, paused.action_space.shape)
        a, b = paused.step(action), fresh.step(action)
        assert np.array_equal(a[0], b[0]) and a[1:4] == b[1:4], step
        if a[2] or a[3]:  # the next reset draws its noise from the restored generator
            assert np.array_equal(paused.reset()[0], fresh.reset()[0])
    with pytest.raises(ValueError, match="physics"):
        fresh.set_state({**state, "physics": state["physics"][:-1]})


def test_info_carries_the_tasks_privileged_factors_and_the_observation_does_not() -> None:
    from envs.tasks import Goal, Physics, Task, Terrain, privileged_factors, privileged_names

    plain = LocomotionEnv("cheetah")
    obs_plain, info = plain.reset(seed=0)
    heavy = Task(terrain=Terrain("rough", 0.4, 2), physics=Physics(friction=0.2, motor_strength=0.6, payload=3.0),
                 goal=Goal())
    env = LocomotionEnv("cheetah", task=heavy)
    obs, reset_info = env.reset(seed=0)
    assert obs.shape == obs_plain.shape  # the observation is unchanged
    _, _, _, _, step_info = env.step(np.zeros(env.action_space.shape))
    vector = step_info["privileged"]
    np.testing.assert_array_equal(vector, privileged_factors(heavy))
    np.testing.assert_array_equal(reset_info["privileged"], vector)
    named = dict(zip(privileged_names(), vector, strict=True))
    assert named["terrain=rough"] == 1.0 and named["terrain=flat"] == 0.0 and named["difficulty"] == 0.4
    assert (named["friction"], named["motor_strength"], named["payload"]) == (0.2, 0.6, 3.0)
    assert not np.array_equal(info["privileged"], vector)
    assert vector is not env.step(np.zeros(env.action_space.shape))[4]["privileged"]  # a fresh array per call


def test_a_goal_can_set_its_own_control_weight() -> None:
    action = np.full(6, 0.5)
    charged = {}
    for weight in (None, 0.05, 0.0):
        env = LocomotionEnv("cheetah", task=Task(goal=Goal(target_velocity=1.0, ctrl_cost_weight=weight)))
        env.reset(seed=0)
        charged[weight] = env.step(action)[4]["reward_ctrl"]
    assert charged[None] == pytest.approx(-0.1 * 6 * 0.25)  # the cheetah's own weight
    assert charged[0.05] == pytest.approx(-0.05 * 6 * 0.25)
    assert charged[0.0] == 0.0
    with pytest.raises(ValueError, match="goal.ctrl_cost_weight"):
        Goal(ctrl_cost_weight=-1.0)
    round_trip = Task.from_json(Task(goal=Goal(ctrl_cost_weight=0.05)).to_json())
    assert round_trip.goal.ctrl_cost_weight == 0.05
