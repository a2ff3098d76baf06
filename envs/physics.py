"""Apply a `Physics` to a compiled MjModel in place, always from the model's saved defaults.

Every call starts from the values the model had when it was compiled, so repeated calls never
compound (the trap of scaling masses twice). Mass and inertia changes need `mj_setConst` to
refresh the quantities MuJoCo derives from them at compile time.
"""

from __future__ import annotations

from dataclasses import dataclass

import mujoco
import numpy as np

from envs.tasks import Physics


@dataclass(frozen=True)
class PhysicsDefaults:
    """Copies of the model fields a `Physics` changes, taken right after compilation."""

    body_mass: np.ndarray
    body_inertia: np.ndarray
    dof_damping: np.ndarray
    actuator_gear: np.ndarray
    geom_friction: np.ndarray

    @classmethod
    def capture(cls, model: mujoco.MjModel) -> PhysicsDefaults:
        """Snapshot the relevant fields of a freshly compiled `model`."""
        return cls(
            body_mass=model.body_mass.copy(),
            body_inertia=model.body_inertia.copy(),
            dof_damping=model.dof_damping.copy(),
            actuator_gear=model.actuator_gear.copy(),
            geom_friction=model.geom_friction.copy(),
        )


def check_physics(physics: Physics, n_actuators: int) -> None:
    """ValueError unless every disabled actuator index is an actuator of the model."""
    bad = [i for i in physics.disabled_actuators if i >= n_actuators]
    if bad:
        raise ValueError(f"physics.disabled_actuators must be in [0, {n_actuators - 1}], got {bad}")


def apply_physics(
    model: mujoco.MjModel,
    data: mujoco.MjData,
    physics: Physics,
    defaults: PhysicsDefaults,
    ground_geom: int,
    torso_body: int,
) -> None:
    """Write `physics` into `model` (in place) starting from `defaults`.

    The ground geom has the highest contact priority, so its friction is the one contacts use;
    the task's friction is therefore written there, as an absolute coefficient.

    Raises:
        ValueError: a disabled actuator index is not an actuator of this model.
    """
    check_physics(physics, model.nu)
    model.geom_friction[:] = defaults.geom_friction
    model.geom_friction[ground_geom, 0] = physics.friction

    model.body_mass[:] = defaults.body_mass * physics.mass_scale
    model.body_inertia[:] = defaults.body_inertia * physics.mass_scale
    if physics.payload > 0.0:
        # A point mass at the torso's centre of mass adds mass but no rotational inertia there.
        model.body_mass[torso_body] += physics.payload

    model.dof_damping[:] = defaults.dof_damping * physics.damping_scale
    model.actuator_gear[:] = defaults.actuator_gear * physics.motor_strength
    if physics.disabled_actuators:
        model.actuator_gear[list(physics.disabled_actuators)] = 0.0

    model.opt.gravity[:] = (0.0, 0.0, -physics.gravity)
    mujoco.mj_setConst(model, data)
