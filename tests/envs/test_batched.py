"""The batched env reproduces single envs exactly, member by member, on different tasks."""

import numpy as np
import pytest

from envs.batched import BatchedEnv
from envs.locomotion import LocomotionEnv
from envs.tasks import Goal, Physics, Task, Terrain

TASKS = [
    Task(goal=Goal(target_velocity=1.0, ctrl_cost_weight=0.05)),  # its own control weight, the others the robot's
    Task(Terrain("rough", 0.8, 1), Physics(friction=0.5)),
    Task(Terrain("stairs_up", 0.6, 2), goal=Goal(target_velocity=0.5)),
    Task(Terrain("hills", 1.0, 3), Physics(mass_scale=1.4, disabled_actuators=(1,))),
]


#: Every member flat and rewarded for progress: the readout's fast paths (no heights, no targets).
FLAT_PROGRESS = [Task(), Task(physics=Physics(friction=0.4)), Task(goal=Goal(direction=np.pi)),
                 Task(physics=Physics(motor_strength=0.6))]


@pytest.mark.parametrize(("robot", "tasks", "options"), [
    ("cheetah", TASKS, {"height_scan": True, "goal_in_obs": True}),
    ("quadruped", TASKS, {"height_scan": True, "goal_in_obs": True}),
    ("walker", TASKS, {"height_scan": True, "goal_in_obs": True}),
    ("cheetah", FLAT_PROGRESS, {}),
    ("walker", FLAT_PROGRESS, {"terminate_when_unhealthy": False}),
    ("quadruped", FLAT_PROGRESS, {"goal_in_obs": True}),
])
@pytest.mark.parametrize("num_threads", [1, 2])
def test_batched_members_match_single_envs_bit_for_bit(robot: str, tasks: list[Task], options: dict,
                                                       num_threads: int) -> None:
    batch = BatchedEnv(robot, len(tasks), **options, num_threads=num_threads)
    batch.set_tasks(tasks)
    seeds = [10, 11, 12, 13]
    obs = batch.reset(seeds)
    rng = np.random.default_rng(0)
    actions = rng.uniform(-1, 1, (60, len(tasks), batch.action_space.shape[0]))
    batch_obs, batch_rewards, batch_done = [obs], [], []
    done = np.zeros(len(tasks), dtype=bool)
    for step_actions in actions:
        obs, reward, terminated, truncated, _ = batch.step(step_actions, active=~done)
        done |= terminated | truncated
        batch_obs.append(obs.copy())
        batch_rewards.append(reward.copy())
        batch_done.append(done.copy())
    for i, task in enumerate(tasks):
        env = LocomotionEnv(robot, task=task, **options)
        single_obs = [env.reset(seed=seeds[i])[0]]
        assert np.array_equal(single_obs[0], batch_obs[0][i])
        for t, step_actions in enumerate(actions):
            obs, reward, terminated, truncated, _ = env.step(step_actions[i])
            assert np.array_equal(obs, batch_obs[t + 1][i]), f"member {i} obs differs at step {t}"
            assert reward == batch_rewards[t][i], f"member {i} reward differs at step {t}"
            if terminated or truncated:
                assert batch_done[t][i]
                break


def test_bad_sizes_are_rejected() -> None:
    batch = BatchedEnv("cheetah", 2, num_threads=1)
    with pytest.raises(ValueError, match="tasks"):
        batch.set_tasks([Task()])
    with pytest.raises(ValueError, match="seeds"):
        batch.reset([0, 1, 2])
    with pytest.raises(ValueError, match="num_envs"):
        BatchedEnv("cheetah", 0)


def test_a_non_finite_action_marks_only_its_member_unstable() -> None:
    batch = BatchedEnv("cheetah", 3, num_threads=1)
    batch.reset([0, 1, 2])
    actions = np.zeros((3, 6))
    actions[1, 0] = np.nan  # (an infinite action is clipped to the control range like any other)
    obs, reward, terminated, _, info = batch.step(actions)
    assert info["physics_unstable"].tolist() == [False, True, False]
    assert terminated[1] and reward[1] == 0.0 and np.isfinite(obs).all()


@pytest.mark.parametrize("num_threads", [1, 2])
def test_members_that_blow_up_or_get_nan_actions_match_single_envs(num_threads: int) -> None:
    # MuJoCo stops a rollout at a warning; such members are stepped again by the single env's code.
    def make_unstable(env: LocomotionEnv) -> None:
        env.model.actuator_gear[:, 0] *= 1e4  # diverges on the first step; MuJoCo resets the state

    batch = BatchedEnv("cheetah", 3, num_threads=num_threads)
    make_unstable(batch.envs[1])
    seeds = [3, 4, 5]
    batch.reset(seeds)
    actions = np.random.default_rng(1).uniform(-1, 1, (4, 3, 6))
    actions[2, 2, 3] = np.nan
    results = [batch.step(step_actions) for step_actions in actions]
    for i in range(3):
        env = LocomotionEnv("cheetah")
        if i == 1:
            make_unstable(env)
        env.reset(seed=seeds[i])
        for t, (obs, reward, terminated, _, info) in enumerate(results):
            single_obs, single_reward, single_terminated, _, single_info = env.step(actions[t, i])
            assert np.array_equal(obs[i], single_obs), f"member {i} obs differs at step {t}"
            assert reward[i] == single_reward and terminated[i] == single_terminated
            assert info["physics_unstable"][i] == single_info["physics_unstable"]
    unstable = np.array([r[4]["physics_unstable"] for r in results])  # [step, member]
    assert not unstable[:, 0].any() and unstable[:, 1].any()  # both paths of the batch were taken
    assert unstable[:, 2].tolist() == [False, False, True, False]


def test_inactive_members_are_skipped_and_the_rest_still_match_single_envs() -> None:
    batch = BatchedEnv("cheetah", 4, num_threads=2)
    batch.envs[3].model.actuator_gear[:, 0] *= 1e4  # blows up: stepped again by the single env's code
    seeds = [0, 1, 2, 3]
    batch.reset(seeds)
    frozen = batch.qpos[0].copy()
    actions = np.random.default_rng(2).uniform(-1, 1, (5, 4, 6))
    actions[1, 2, 0] = np.nan
    active = np.array([False, True, True, True])
    results = [batch.step(step_actions, active=active) for step_actions in actions]
    assert np.array_equal(batch.qpos[0], frozen)
    for i in (1, 2, 3):
        env = LocomotionEnv("cheetah")
        if i == 3:
            env.model.actuator_gear[:, 0] *= 1e4
        env.reset(seed=seeds[i])
        for t, (obs, reward, _, _, info) in enumerate(results):
            single_obs, single_reward, _, _, single_info = env.step(actions[t, i])
            assert np.array_equal(obs[i], single_obs) and reward[i] == single_reward
            assert info["physics_unstable"][i] == single_info["physics_unstable"]
    unstable = np.array([r[4]["physics_unstable"] for r in results])
    assert unstable[1, 2] and unstable[:, 3].any()
