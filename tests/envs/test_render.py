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


def test_the_default_camera_shows_the_terrain_ahead_at_reset() -> None:
    # The close-up "track" camera sees only the flat spawn area at reset; the default one looks ahead.
    for robot in ("cheetah", "walker"):
        frames = {}
        for name, task in (("flat", Task()), ("stairs", STAIRS)):
            env = gym.make(ENV_IDS[robot], task=task, render_mode="rgb_array", width=160, height=120)
            env.reset(seed=0)
            frames[name] = env.render().astype(int)
            env.close()
        assert np.abs(frames["flat"] - frames["stairs"]).mean() > 1.0, robot


def test_grid_layout_labels_and_empty_cells() -> None:
    from envs.render import EMPTY_CELL, annotate, grid_shape, tile

    assert [grid_shape(n) for n in (1, 3, 4, 5, 6, 7, 8)] == [(1, 1), (1, 3), (1, 4), (2, 3), (2, 3), (2, 4), (2, 4)]
    frame = np.full((48, 64, 3), 200, dtype=np.uint8)
    grid = tile([[frame]] * 7)
    assert grid[0].shape == (2 * 48, 4 * 64, 3)
    assert (grid[0][48:, 3 * 64:] == EMPTY_CELL).all() and (grid[0][:48, :64] == 200).all()
    # The label's band grows with the frame, so text stays readable in a large video.
    small = annotate(np.full((240, 320, 3), 200, dtype=np.uint8), "stairs_up@0.5  return 12.0")
    large = annotate(np.full((480, 640, 3), 200, dtype=np.uint8), "stairs_up@0.5  return 12.0")
    band = [int((image[:, 0] == 0).all(axis=1).sum()) for image in (small, large)]
    assert band[0] >= 20 and band[1] > band[0]
    assert (small[:band[0], :200] == 255).any(), "white text on the band"
