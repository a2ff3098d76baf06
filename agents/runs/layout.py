"""The observation layout a checkpoint was trained with, recorded and checked against today's envs.

A policy is only meaningful on the observation it was trained on: the same components, in the same
order, of the same sizes. Checkpoints record `metadata["observation"]` (robot, height scan, goal
in the observation, and the layout as [name, size] pairs from `envs.readout.Readout.layout`);
`check_layout` compares it with what the env builds today, so an env change that reorders or
resizes the observation fails at once with one line instead of silently feeding a policy garbage.
"""

from __future__ import annotations

from typing import Any

from agents.runs.checkpoint import Checkpoint
from envs.locomotion import LocomotionEnv


def observation_layout(robot: str, height_scan: bool = False, goal_in_obs: bool = False,
                       privileged_in_obs: bool = False) -> dict[str, Any]:
    """What a checkpoint records about its observation: robot, flags, obs_dim and [name, size] layout."""
    env = LocomotionEnv(robot=robot, height_scan=height_scan, goal_in_obs=goal_in_obs,
                        privileged_in_obs=privileged_in_obs)
    try:
        layout = [[name, int(size)] for name, size in env.readout.layout()]
        return {"robot": robot, "height_scan": bool(height_scan), "goal_in_obs": bool(goal_in_obs),
                "privileged_in_obs": bool(privileged_in_obs),
                "obs_dim": int(env.observation_space.shape[0]), "layout": layout}
    finally:
        env.close()


def check_layout(checkpoint: Checkpoint, field: str = "checkpoint") -> bool:
    """Check `checkpoint`'s observation against today's env; returns whether it holds the height scan.

    With a recorded layout, it must equal today's for the same robot and flags; without one (files
    older than the record), the height scan is inferred from the observation size. A mismatch is a
    ValueError naming `field` and both layouts.
    """
    recorded = checkpoint.metadata.get("observation")
    if recorded is None:
        for height_scan in (False, True):
            if observation_layout(checkpoint.robot, height_scan)["obs_dim"] == checkpoint.obs_dim:
                return height_scan
        raise ValueError(f"{field}: obs_dim {checkpoint.obs_dim} matches no {checkpoint.robot!r} observation today "
                         f"(with or without the height scan)")
    today = observation_layout(recorded["robot"], recorded["height_scan"], recorded.get("goal_in_obs", False),
                               recorded.get("privileged_in_obs", False))
    if recorded["robot"] != checkpoint.robot or today["layout"] != recorded["layout"]:
        raise ValueError(f"{field}: trained on the {recorded['robot']} observation {_describe(recorded['layout'])}, "
                         f"but today's is {_describe(today['layout'])} (retrain, or check out the commit "
                         f"{checkpoint.metadata.get('provenance', {}).get('git_commit', 'it was made with')})")
    if today["obs_dim"] != checkpoint.obs_dim:
        raise ValueError(f"{field}: its policy takes {checkpoint.obs_dim} inputs, its recorded layout has "
                         f"{today['obs_dim']}")
    return bool(recorded["height_scan"])


def _describe(layout: list[list[Any]]) -> str:
    return "[" + ", ".join(f"{name}:{size}" for name, size in layout) + "]"
