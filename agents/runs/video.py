"""Videos of a policy: its mean actions rolled out and rendered on chosen tasks, side by side."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch
from tqdm import tqdm

from agents.policy import GaussianMLPPolicy
from envs import ENV_IDS
from envs.render import record_episode, tile, write_video
from envs.tasks import Task


def policy_actor(policy: GaussianMLPPolicy, params: Mapping[str, torch.Tensor] | None = None):
    """obs -> mean action of `policy` under `params` (default: its own), as float64 numpy."""

    def act(obs: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            mean, _ = policy.mean_and_std(torch.as_tensor(obs, dtype=torch.float32)[None], params)
        return mean[0].double().numpy()

    return act


def render_policy(
    policy: GaussianMLPPolicy,
    robot: str,
    tasks: Sequence[Task],
    path: str | Path,
    steps: int = 200,
    params: Sequence[Mapping[str, torch.Tensor] | None] | None = None,
    labels: Sequence[str] | None = None,
    height_scan: bool = False,
    goal_in_obs: bool = False,
    columns: int | None = None,
    size: tuple[int, int] = (320, 240),
    seed: int = 0,
    progress: bool = True,
) -> tuple[Path, list[float]]:
    """Render `policy` on each task (optionally with per-task params) into one tiled video.

    Each panel carries its label (default: the task) and the running return; the grid has
    `columns` columns (default: laid out to the number of panels, `envs.render.grid_shape`).
    A progress bar counts the frames rendered. Returns the video path and each panel's total return.
    """
    if params is not None and len(params) != len(tasks):
        raise ValueError(f"params must have one entry per task ({len(tasks)}), got {len(params)}")
    labels = list(labels) if labels is not None else [task.describe() for task in tasks]
    videos, totals = [], []
    fps = 20
    bar = tqdm(total=len(tasks) * steps, desc=f"rendering {Path(path).name}", unit="frame", disable=not progress,
               leave=False)
    for index, task in enumerate(tasks):
        env = gym.make(ENV_IDS[robot], task=task, height_scan=height_scan, goal_in_obs=goal_in_obs,
                       render_mode="rgb_array",
                       width=size[0], height=size[1])
        act = policy_actor(policy, None if params is None else params[index])
        frames, total = record_episode(env, act, steps, seed=seed, label=labels[index], on_frame=bar.update)
        bar.update(steps - len(frames))  # an episode that ended early: its panel holds its last frame
        fps = env.metadata["render_fps"]
        env.close()
        videos.append(frames)
        totals.append(total)
    bar.close()
    return write_video(tile(videos, columns), path, fps=fps), totals
