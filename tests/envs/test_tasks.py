"""Tasks: validation names the field, JSON round-trip, seeded families with held-out splits."""

import math

import numpy as np
import pytest

from envs.tasks import (
    CHEETAH_TEST_TERRAINS,
    CHEETAH_TRAIN_TERRAINS,
    FAMILIES,
    VELOCITY_TEST_BANDS,
    Goal,
    Physics,
    Task,
    TaskDistribution,
    Terrain,
)


@pytest.mark.parametrize(
    ("build", "field"),
    [
        (lambda: Terrain("lava"), "terrain.kind"),
        (lambda: Terrain("rough", 1.5), "terrain.difficulty"),
        (lambda: Terrain("rough", float("nan")), "terrain.difficulty"),
        (lambda: Terrain("rough", 0.5, -1), "terrain.seed"),
        (lambda: Physics(friction=-0.5), "physics.friction"),
        (lambda: Physics(mass_scale=-1.0), "physics.mass_scale"),
        (lambda: Physics(gravity=float("inf")), "physics.gravity"),
        (lambda: Physics(payload=-2.0), "physics.payload"),
        (lambda: Physics(motor_strength=float("nan")), "physics.motor_strength"),
        (lambda: Physics(disabled_actuators=(-1,)), "physics.disabled_actuators"),
        (lambda: Goal(target_velocity=float("nan")), "goal.target_velocity"),
        (lambda: Goal(direction=4.0), "goal.direction"),
        (lambda: Task.from_dict({"terrain": {"kind": "flat", "height": 3}}), "task.terrain"),
        (lambda: Task.from_dict({"wind": {}}), "unknown fields"),
    ],
)
def test_invalid_values_name_the_field(build, field: str) -> None:
    with pytest.raises(ValueError, match=field.replace(".", r"\.")):
        build()


def test_json_round_trip() -> None:
    task = Task(Terrain("stairs_up", 0.4, 12), Physics(friction=0.3, payload=2.0, disabled_actuators=(3, 1)),
                Goal(target_velocity=1.25, direction=0.0))
    again = Task.from_json(task.to_json())
    assert again == task
    assert again.physics.disabled_actuators == (1, 3)
    assert hash(again) == hash(task)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_families_are_seeded(family: str) -> None:
    first = TaskDistribution(family, seed=5).sample(8)
    again = TaskDistribution(family, seed=5).sample(8)
    other = TaskDistribution(family, seed=6).sample(8)
    assert first == again
    if family != "cheetah_direction":
        assert first != other


def test_sampling_ignores_global_numpy_state() -> None:
    np.random.seed(0)  # noqa: NPY002  (the point: global state must not matter)
    a = TaskDistribution("cheetah_terrain", seed=1).sample(4)
    np.random.seed(1)  # noqa: NPY002  (the point: global state must not matter)
    b = TaskDistribution("cheetah_terrain", seed=1).sample(4)
    assert a == b


def test_velocity_split_is_held_out() -> None:
    dist = TaskDistribution("cheetah_velocity", seed=0)
    train = [t.goal.target_velocity for t in dist.sample(300, "train")]
    test = [t.goal.target_velocity for t in dist.sample(100, "test")]
    in_band = lambda v: any(lo <= v < hi for lo, hi in VELOCITY_TEST_BANDS)  # noqa: E731
    assert all(0.0 <= v <= 2.0 for v in train + test)
    assert not any(in_band(v) for v in train)
    assert all(in_band(v) for v in test)


def test_terrain_split_is_held_out() -> None:
    dist = TaskDistribution("cheetah_terrain", seed=0)
    assert {t.terrain.kind for t in dist.sample(100, "train")} == set(CHEETAH_TRAIN_TERRAINS)
    assert {t.terrain.kind for t in dist.sample(100, "test")} == set(CHEETAH_TEST_TERRAINS)


def test_terrain_velocity_split_holds_out_the_kinds_and_commands_a_speed() -> None:
    dist = TaskDistribution("cheetah_terrain_velocity", seed=0)
    train, test = dist.sample(100, "train"), dist.sample(100, "test")
    assert {t.terrain.kind for t in train} == set(CHEETAH_TRAIN_TERRAINS)
    assert {t.terrain.kind for t in test} == set(CHEETAH_TEST_TERRAINS)
    speeds = [t.goal.target_velocity for t in train + test]
    assert all(0.0 <= v <= 2.0 for v in speeds) and max(speeds) > 1.8 and min(speeds) < 0.2


@pytest.mark.parametrize("family", ["quadruped_terrain_physics", "cheetah_terrain_physics"])
def test_the_physics_families_hold_out_kinds_slippery_ground_and_weak_motors(family: str) -> None:
    dist = TaskDistribution(family, seed=0)
    train, test = dist.sample(100, "train"), dist.sample(100, "test")
    assert min(t.physics.friction for t in train) >= 0.4 and max(t.physics.friction for t in test) <= 0.3
    assert min(t.physics.motor_strength for t in train) >= 0.75 and max(t.physics.motor_strength for t in test) <= 0.7
    assert not {t.terrain.kind for t in train} & {t.terrain.kind for t in test}


def test_bad_family_and_split() -> None:
    with pytest.raises(ValueError, match="task_family must be one of"):
        TaskDistribution("nope")
    with pytest.raises(ValueError, match="split must be one of"):
        TaskDistribution("cheetah_velocity").sample(1, "validation")


def test_direction_family_uses_both_directions() -> None:
    directions = {t.goal.direction for t in TaskDistribution("cheetah_direction", 0).sample(20)}
    assert directions == {0.0, math.pi}
