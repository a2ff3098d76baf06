"""MetaLoco environments: procedural MuJoCo locomotion with varied terrain and physics.

Importing this package registers the public env ids with gymnasium:
`MetaLoco/Cheetah-v0`, `MetaLoco/Quadruped-v0`, `MetaLoco/Walker-v0`.
"""

import os

os.environ.setdefault("MUJOCO_GL", "egl")  # headless rendering without a display or GPU

from gymnasium.envs.registration import register, registry

from envs.tasks import Goal, Physics, Task, TaskDistribution, Terrain

ENV_IDS = {
    "cheetah": "MetaLoco/Cheetah-v0",
    "quadruped": "MetaLoco/Quadruped-v0",
    "walker": "MetaLoco/Walker-v0",
}

for _robot, _env_id in ENV_IDS.items():
    if _env_id not in registry:
        register(
            id=_env_id,
            entry_point="envs.locomotion:LocomotionEnv",
            kwargs={"robot": _robot},
            max_episode_steps=1000,
        )

__all__ = ["ENV_IDS", "Goal", "Physics", "Task", "TaskDistribution", "Terrain"]
