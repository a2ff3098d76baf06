"""Rendering: headless frames, and the camera shows the terrain of the current task."""

import gymnasium as gym
import numpy as np

from envs import ENV_IDS
from envs.tasks import Task, Terrain

STAIRS = Task(Terrain("stairs_up", 1.0, 0))
HILLS = Task(Terrain("hills", 1.0, 0))


def frame(env: gym.Env, task: Task) -> np.ndarray:
    env.reset(seed=0, options={"task": task})
    env.unwrapped.data.qpos[0] = 3.0  # in front of the features, so they fill the view
    import mujoco

    mujoco.mj_forward(env.unwrapped.model, env.unwrapped.data)
    return env.render()


def test_frame_shape_and_content() -> None:
    env = gym.make(ENV_IDS["cheetah"], render_mode="rgb_array", width=160, height=120)
    image = frame(env, Task())
    assert image.shape == (120, 160, 3) and image.dtype == np.uint8
    assert image.std() > 5.0, "a real image, not a blank one"


def test_changed_terrain_is_what_the_camera_shows() -> None:
    reused = gym.make(ENV_IDS["cheetah"], render_mode="rgb_array", width=160, height=120)
    frame(reused, Task())  # the renderer now holds the flat heightfield
    after_switch = frame(reused, STAIRS)
    fresh = frame(gym.make(ENV_IDS["cheetah"], render_mode="rgb_array", width=160, height=120), STAIRS)
    flat = frame(gym.make(ENV_IDS["cheetah"], render_mode="rgb_array", width=160, height=120), Task())
    assert np.abs(after_switch.astype(int) - fresh.astype(int)).mean() < 1.0
    assert np.abs(after_switch.astype(int) - flat.astype(int)).mean() > 2.0


def test_two_terrains_render_differently_for_the_quadruped() -> None:
    env = gym.make(ENV_IDS["quadruped"], render_mode="rgb_array", width=160, height=120)
    assert np.abs(frame(env, STAIRS).astype(int) - frame(env, HILLS).astype(int)).mean() > 2.0
