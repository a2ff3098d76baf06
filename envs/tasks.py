"""Tasks: Terrain + Physics + Goal, validated and JSON round-trippable; seeded task families.

A `Task` is frozen and hashable, so it can key caches and be compared. Its numbers mean the
same on every robot: metres, seconds, kilograms, radians, and absolute friction/gravity.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from envs.terrain import get_terrain, terrain_kinds


def _check_range(name: str, value: float, low: float, high: float) -> None:
    """ValueError naming `name` unless `value` is a finite number in [low, high]."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number in [{low}, {high}], got {value!r}")
    if not low <= value <= high:
        raise ValueError(f"{name} must be in [{low}, {high}], got {value!r}")


@dataclass(frozen=True)
class Terrain:
    """Which ground to generate.

    Args:
        kind: a registered terrain kind (see `envs.terrain.terrain_kinds()`).
        difficulty: in [0, 1]; what it scales is documented per kind in `envs.terrain`.
        seed: seed of the terrain's own generator (same seed, same ground).
    """

    kind: str = "flat"
    difficulty: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        get_terrain(self.kind)
        _check_range("terrain.difficulty", self.difficulty, 0.0, 1.0)
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"terrain.seed must be an integer >= 0, got {self.seed!r}")


@dataclass(frozen=True)
class Physics:
    """Physical properties, applied to the compiled model from its saved defaults.

    Args:
        friction: sliding friction coefficient of every contact with the ground, in [0.01, 5].
        mass_scale: factor on every body's mass and inertia, in [0.1, 10].
        damping_scale: factor on every joint's damping, in [0, 10].
        gravity: magnitude of gravity in m/s^2, pointing down, in [0, 30].
        motor_strength: factor on every actuator's gear (torque per unit control), in [0, 5].
        payload: extra mass in kg fixed at the torso's centre of mass, in [0, 100].
        disabled_actuators: indices of actuators that produce no force (crippled joints).
    """

    friction: float = 1.0
    mass_scale: float = 1.0
    damping_scale: float = 1.0
    gravity: float = 9.81
    motor_strength: float = 1.0
    payload: float = 0.0
    disabled_actuators: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        _check_range("physics.friction", self.friction, 0.01, 5.0)
        _check_range("physics.mass_scale", self.mass_scale, 0.1, 10.0)
        _check_range("physics.damping_scale", self.damping_scale, 0.0, 10.0)
        _check_range("physics.gravity", self.gravity, 0.0, 30.0)
        _check_range("physics.motor_strength", self.motor_strength, 0.0, 5.0)
        _check_range("physics.payload", self.payload, 0.0, 100.0)
        disabled = tuple(self.disabled_actuators)
        if any(isinstance(i, bool) or not isinstance(i, int | np.integer) or i < 0 for i in disabled):
            raise ValueError(f"physics.disabled_actuators must be actuator indices >= 0, got {disabled!r}")
        object.__setattr__(self, "disabled_actuators", tuple(sorted({int(i) for i in disabled})))


@dataclass(frozen=True)
class Goal:
    """What the robot should do.

    Args:
        target_velocity: forward speed to track in m/s, in [-10, 10]; None rewards progress
            (the velocity itself) instead of tracking.
        direction: heading of "forward" in radians in the ground plane, in [-pi, pi]
            (planar robots: 0 or pi only).
        ctrl_cost_weight: weight of the squared-action penalty in [0, 10]; None: the robot's own
            (`envs.robots.RobotSpec.ctrl_cost_weight`).
    """

    target_velocity: float | None = None
    direction: float = 0.0
    ctrl_cost_weight: float | None = None

    def __post_init__(self) -> None:
        if self.target_velocity is not None:
            _check_range("goal.target_velocity", self.target_velocity, -10.0, 10.0)
        _check_range("goal.direction", self.direction, -math.pi, math.pi)
        if self.ctrl_cost_weight is not None:
            _check_range("goal.ctrl_cost_weight", self.ctrl_cost_weight, 0.0, 10.0)


@dataclass(frozen=True)
class Task:
    """One locomotion task: the ground, the physics and the goal."""

    terrain: Terrain = field(default_factory=Terrain)
    physics: Physics = field(default_factory=Physics)
    goal: Goal = field(default_factory=Goal)

    def __post_init__(self) -> None:
        for name, kind in (("terrain", Terrain), ("physics", Physics), ("goal", Goal)):
            if not isinstance(getattr(self, name), kind):
                raise ValueError(f"task.{name} must be a {kind.__name__}, got {getattr(self, name)!r}")

    def to_dict(self) -> dict[str, Any]:
        """Plain dict of plain values (JSON-ready)."""
        data = asdict(self)
        data["physics"]["disabled_actuators"] = list(self.physics.disabled_actuators)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Task:
        """Inverse of `to_dict`; unknown or missing keys raise ValueError naming them."""
        if not isinstance(data, dict):
            raise ValueError(f"task must be a mapping, got {type(data).__name__}")
        unknown = set(data) - {"terrain", "physics", "goal"}
        if unknown:
            raise ValueError(f"task has unknown fields {sorted(unknown)}; allowed: terrain, physics, goal")
        parts = {}
        for name, kind in (("terrain", Terrain), ("physics", Physics), ("goal", Goal)):
            values = dict(data.get(name) or {})
            allowed = set(kind.__dataclass_fields__)
            if set(values) - allowed:
                raise ValueError(f"task.{name} has unknown fields {sorted(set(values) - allowed)}; "
                                 f"allowed: {sorted(allowed)}")
            if "disabled_actuators" in values:
                values["disabled_actuators"] = tuple(values["disabled_actuators"])
            parts[name] = kind(**values)
        return cls(**parts)

    def to_json(self) -> str:
        """JSON text of `to_dict()`."""
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Task:
        """Inverse of `to_json`."""
        return cls.from_dict(json.loads(text))

    def describe(self) -> str:
        """A short human-readable label, e.g. for plots and video overlays."""
        goal = "progress" if self.goal.target_velocity is None else f"v={self.goal.target_velocity:.2f}"
        return f"{self.terrain.kind}@{self.terrain.difficulty:.2f} {goal}"


# --- families ------------------------------------------------------------------------------

SPLITS = ("train", "test")
Sampler = Callable[[np.random.Generator, str], Task]


@dataclass(frozen=True)
class TaskFamily:
    """A named distribution of tasks for one robot, with an explicit held-out test split."""

    name: str
    robot: str
    sample: Sampler
    description: str


PHYSICS_FACTORS = ("friction", "mass_scale", "damping_scale", "gravity", "motor_strength", "payload")


def privileged_names() -> tuple[str, ...]:
    """Names of `privileged_factors`' entries, in order: one indicator per terrain kind, the
    terrain's difficulty, then the physics factors (what RMA-style learners regress from history)."""
    return (*(f"terrain={kind}" for kind in terrain_kinds()), "difficulty", *PHYSICS_FACTORS)


def privileged_factors(task: Task) -> np.ndarray:
    """The task's hidden factors as a float vector (`privileged_names`); in `info`, and in the observation
    only of envs made with `privileged_in_obs=True` (teachers).

    Disabled actuators are not included (their count varies by robot); a learner that needs them
    reads `task.physics.disabled_actuators`.
    """
    kinds = terrain_kinds()
    onehot = np.zeros(len(kinds))
    onehot[kinds.index(task.terrain.kind)] = 1.0
    physics = [float(getattr(task.physics, name)) for name in PHYSICS_FACTORS]
    return np.concatenate([onehot, [task.terrain.difficulty], physics])


def _seed(rng: np.random.Generator) -> int:
    return int(rng.integers(0, 2**31 - 1))


#: Control weight of the cheetah velocity family's tasks (the meta-RL HalfCheetahVel benchmark's).
VELOCITY_CTRL_COST_WEIGHT = 0.05

#: Held-out velocity bands of the cheetah velocity family (m/s); training avoids them.
VELOCITY_TEST_BANDS = ((0.2, 0.3), (0.6, 0.7), (1.0, 1.1), (1.4, 1.5), (1.8, 1.9))


def _cheetah_velocity(rng: np.random.Generator, split: str) -> Task:
    if split == "test":
        low, high = VELOCITY_TEST_BANDS[rng.integers(len(VELOCITY_TEST_BANDS))]
        velocity = rng.uniform(low, high)
    else:
        velocity = rng.uniform(0.0, 2.0)
        while any(low <= velocity < high for low, high in VELOCITY_TEST_BANDS):
            velocity = rng.uniform(0.0, 2.0)
    # The meta-RL benchmark's control weight (HalfCheetahVel of MAML, ProMP and PEARL: 0.5 * 0.1),
    # not Gymnasium's 0.1, so that returns and relative gains compare with the published ones.
    return Task(goal=Goal(target_velocity=float(velocity), ctrl_cost_weight=VELOCITY_CTRL_COST_WEIGHT))


def _cheetah_direction(rng: np.random.Generator, split: str) -> Task:
    return Task(goal=Goal(direction=float(math.pi if rng.random() < 0.5 else 0.0)))


CHEETAH_TRAIN_TERRAINS = ("flat", "slope_up", "stairs_up", "rough", "hills")
CHEETAH_TEST_TERRAINS = ("slope_down", "stairs_down", "gaps", "obstacles")


def _cheetah_terrain(rng: np.random.Generator, split: str) -> Task:
    kinds = CHEETAH_TEST_TERRAINS if split == "test" else CHEETAH_TRAIN_TERRAINS
    terrain = Terrain(str(rng.choice(kinds)), float(rng.uniform(0.0, 1.0)), _seed(rng))
    return Task(terrain=terrain, goal=Goal(target_velocity=None))


def _cheetah_terrain_velocity(rng: np.random.Generator, split: str) -> Task:
    # The task is a target speed (what a gradient step on the tracking reward can identify); the
    # terrain is what generalisation is tested on: the test split holds out the terrain kinds.
    kinds = CHEETAH_TEST_TERRAINS if split == "test" else CHEETAH_TRAIN_TERRAINS
    terrain = Terrain(str(rng.choice(kinds)), float(rng.uniform(0.0, 1.0)), _seed(rng))
    return Task(terrain=terrain, goal=Goal(target_velocity=float(rng.uniform(0.0, 2.0))))


#: Control weight of the quadruped family's tasks (the robot's own, 0.5, teaches a fresh policy to fall).
QUADRUPED_CTRL_COST_WEIGHT = 0.05
QUADRUPED_TRAIN_TERRAINS = ("flat", "slope_up", "rough", "hills", "stairs_up")
QUADRUPED_TEST_TERRAINS = ("slope_down", "stairs_down", "gaps", "obstacles")


def _varied_physics(rng: np.random.Generator, test: bool) -> Physics:
    # Held out: slippery ground and weak motors, outside the training ranges.
    return Physics(
        friction=float(rng.uniform(0.1, 0.3) if test else rng.uniform(0.4, 1.5)),
        mass_scale=float(rng.uniform(0.8, 1.2)),
        damping_scale=float(rng.uniform(0.5, 2.0)),
        motor_strength=float(rng.uniform(0.5, 0.7) if test else rng.uniform(0.75, 1.25)),
        payload=float(rng.uniform(0.0, 5.0)),
    )


def _quadruped_terrain_physics(rng: np.random.Generator, split: str) -> Task:
    test = split == "test"
    kinds = QUADRUPED_TEST_TERRAINS if test else QUADRUPED_TRAIN_TERRAINS
    terrain = Terrain(str(rng.choice(kinds)), float(rng.uniform(0.0, 1.0)), _seed(rng))
    # A tenth of the robot's control weight: under its own (0.5, Gymnasium Ant's) a fresh policy's
    # steps cost more than staying upright earns, and TRPO learned to fall within 10 steps.
    return Task(terrain=terrain, physics=_varied_physics(rng, test),
                goal=Goal(target_velocity=None, ctrl_cost_weight=QUADRUPED_CTRL_COST_WEIGHT))


def _cheetah_terrain_physics(rng: np.random.Generator, split: str) -> Task:
    # The quadruped family's terrain and physics on the cheetah (its own control weight, Gymnasium's).
    test = split == "test"
    kinds = CHEETAH_TEST_TERRAINS if test else CHEETAH_TRAIN_TERRAINS
    terrain = Terrain(str(rng.choice(kinds)), float(rng.uniform(0.0, 1.0)), _seed(rng))
    return Task(terrain=terrain, physics=_varied_physics(rng, test), goal=Goal(target_velocity=None))


FAMILIES: dict[str, TaskFamily] = {
    family.name: family
    for family in (
        TaskFamily("cheetah_velocity", "cheetah", _cheetah_velocity,
                   "flat ground, target velocity in [0, 2] m/s, control weight 0.05; test: held-out velocity bands"),
        TaskFamily("cheetah_direction", "cheetah", _cheetah_direction,
                   "flat ground, run forward or backward (progress reward)"),
        TaskFamily("cheetah_terrain", "cheetah", _cheetah_terrain,
                   f"progress over {', '.join(CHEETAH_TRAIN_TERRAINS)}; "
                   f"test: held-out kinds {', '.join(CHEETAH_TEST_TERRAINS)}"),
        TaskFamily("cheetah_terrain_velocity", "cheetah", _cheetah_terrain_velocity,
                   f"target velocity in [0, 2] m/s over {', '.join(CHEETAH_TRAIN_TERRAINS)}; "
                   f"test: the same targets on held-out kinds {', '.join(CHEETAH_TEST_TERRAINS)}"),
        TaskFamily("cheetah_terrain_physics", "cheetah", _cheetah_terrain_physics,
                   f"progress over {', '.join(CHEETAH_TRAIN_TERRAINS)} with varied physics; "
                   f"test: held-out kinds {', '.join(CHEETAH_TEST_TERRAINS)}, low friction, weak motors"),
        TaskFamily("quadruped_terrain_physics", "quadruped", _quadruped_terrain_physics,
                   "2-D terrain and varied physics, control weight 0.05; "
                   "test: held-out kinds, low friction, weak motors"),
    )
}


def get_family(name: str) -> TaskFamily:
    """The task family `name`, or a ValueError naming the allowed families."""
    if name not in FAMILIES:
        raise ValueError(f"task_family must be one of {sorted(FAMILIES)}, got {name!r}")
    return FAMILIES[name]


class TaskDistribution:
    """Seeded sampling from a named family: the same seed gives the same task sequence.

    Args:
        family: a name in `FAMILIES`.
        seed: seed of the distribution's own generator (never the global numpy state).
    """

    def __init__(self, family: str, seed: int | None = 0) -> None:
        self.family = get_family(family)
        self.rng = np.random.default_rng(seed)

    @property
    def robot(self) -> str:
        """The robot this family is defined for."""
        return self.family.robot

    def sample(self, n: int, split: str = "train") -> list[Task]:
        """Draw `n` tasks from `split` ('train' or 'test')."""
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        return [self.family.sample(self.rng, split) for _ in range(n)]


def fixed_tasks(kinds: Sequence[str], difficulty: float, seed: int = 0) -> list[Task]:
    """One progress task per terrain kind at the same difficulty (e.g. for videos, curricula)."""
    for kind in kinds:
        if kind not in terrain_kinds():
            raise ValueError(f"terrain.kind must be one of {list(terrain_kinds())}, got {kind!r}")
    return [Task(terrain=Terrain(kind, float(difficulty), seed)) for kind in kinds]
