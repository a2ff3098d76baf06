"""Physics variation takes effect, comes from saved defaults, and never compounds."""

import gymnasium as gym
import numpy as np
import pytest

from envs import ENV_IDS
from envs.tasks import Physics, Task


def unwrapped(robot: str = "cheetah", **kwargs):
    return gym.make(ENV_IDS[robot], **kwargs).unwrapped


def slide_distance(friction: float) -> float:
    """How far the cheetah slides after a 2 m/s push with its motors off."""
    env = unwrapped(task=Task(physics=Physics(friction=friction)))
    env.reset(seed=0)
    env.data.qvel[0] = 2.0
    start = float(env.data.qpos[0])
    for _ in range(40):
        env.step(np.zeros(6))
    return float(env.data.qpos[0]) - start


def test_lower_friction_slips_further() -> None:
    assert slide_distance(0.05) > slide_distance(1.0) + 0.3


def test_values_land_in_the_model() -> None:
    env = unwrapped("quadruped")
    defaults = env._defaults
    physics = Physics(friction=0.3, mass_scale=1.5, damping_scale=2.0, gravity=3.7, motor_strength=0.5,
                      payload=4.0, disabled_actuators=(2, 5))
    env.set_task(Task(physics=physics))
    model = env.model
    ground = env._plane_geom
    assert model.geom_friction[ground, 0] == 0.3
    assert np.allclose(model.opt.gravity, [0, 0, -3.7])
    assert np.allclose(model.dof_damping, 2.0 * defaults.dof_damping)
    gear = 0.5 * defaults.actuator_gear[:, 0]
    gear[[2, 5]] = 0.0
    assert np.allclose(model.actuator_gear[:, 0], gear)
    assert model.body_subtreemass[0] == pytest.approx(1.5 * defaults.body_mass.sum() + 4.0)


def test_repeated_set_task_never_compounds() -> None:
    env = unwrapped("quadruped")
    heavy = Task(physics=Physics(mass_scale=2.0, damping_scale=3.0, motor_strength=2.0, payload=1.0))
    for _ in range(3):
        env.set_task(heavy)
    assert np.allclose(env.model.body_mass[1:].sum(), 2.0 * env._defaults.body_mass[1:].sum() + 1.0)
    assert np.allclose(env.model.dof_damping, 3.0 * env._defaults.dof_damping)
    env.set_task(Task())
    assert np.array_equal(env.model.body_mass, env._defaults.body_mass)
    assert np.array_equal(env.model.body_inertia, env._defaults.body_inertia)
    assert np.array_equal(env.model.actuator_gear, env._defaults.actuator_gear)


def test_weaker_motors_and_disabled_actuators_move_less() -> None:
    def joint_travel(physics: Physics) -> float:
        env = unwrapped(task=Task(physics=physics))
        env.reset(seed=0)
        start = env.data.qpos[3:].copy()
        for _ in range(10):
            env.step(np.ones(6))
        return float(np.abs(env.data.qpos[3:] - start).sum())

    assert joint_travel(Physics(motor_strength=0.2)) < joint_travel(Physics())
    assert joint_travel(Physics(disabled_actuators=tuple(range(6)))) < joint_travel(Physics(motor_strength=0.2))
