"""A PPO run paused between two rollouts, as plain values a checkpoint can hold.

Taken at the start of a rollout (the previous update done, the next rollout not begun), a
snapshot holds everything the rest of the run depends on: the model's counters, its last
observations and episode-start flags, the recent-episode buffer, every env's episode in progress
(MuJoCo state, reset-noise generator, the Monitor's and TimeLimit's counters), the global numpy
RNG (SB3 shuffles minibatches with it) and the logger's values not yet written. The policy and
optimiser go through their own state dicts, torch's and Python's RNGs through the checkpoint's
`rng` field. Restored into a model built the same way, `learn` continues bit for bit.
"""

from __future__ import annotations

from collections import deque
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from stable_baselines3 import PPO
from stable_baselines3.common.logger import KVWriter, Logger
from stable_baselines3.common.vec_env import DummyVecEnv

from agents.runs.tensorboard import EventFile
from envs.locomotion import LocomotionEnv

# The wrappers `make_vec_env(<MetaLoco id>)` stacks, and the fields that change during an episode
# (the rest are set at construction). An unknown wrapper is an error, never silently skipped.
WRAPPER_FIELDS: dict[str, tuple[str, ...]] = {
    "Monitor": ("t_start", "rewards", "needs_reset", "episode_returns", "episode_lengths", "episode_times",
                "total_steps"),
    "TimeLimit": ("_elapsed_steps",),
    "OrderEnforcing": ("_has_reset",),
    "PassiveEnvChecker": ("checked_reset", "checked_step", "checked_render", "checked_data_reuse"),
}


def _plain_value(value: Any) -> Any:
    """numpy values as Python ones, numpy arrays as tensors (what a weights-only checkpoint loads)."""
    if isinstance(value, np.ndarray):
        return torch.from_numpy(value.copy())
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, dict):
        return {key: _plain_value(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_plain_value(item) for item in value]
    return value


def _wrapper_chain(env: gym.Env) -> tuple[list[gym.Wrapper], LocomotionEnv]:
    wrappers = []
    while isinstance(env, gym.Wrapper):
        name = type(env).__name__
        if name not in WRAPPER_FIELDS:
            raise ValueError(f"cannot snapshot an env wrapped in {name}; known wrappers: {sorted(WRAPPER_FIELDS)}")
        wrappers.append(env)
        env = env.env
    if not isinstance(env, LocomotionEnv):
        raise ValueError(f"cannot snapshot a {type(env).__name__}: only MetaLoco's LocomotionEnv")
    return wrappers, env


def capture_env(env: gym.Env) -> dict[str, Any]:
    """One wrapped env's episode in progress: each wrapper's changing fields and the env's state."""
    wrappers, base = _wrapper_chain(env)
    return {
        "wrappers": [{field: _plain_value(getattr(w, field)) for field in WRAPPER_FIELDS[type(w).__name__]}
                     for w in wrappers],
        "env": _plain_value(base.get_state()),
    }


def restore_env(env: gym.Env, state: dict[str, Any]) -> None:
    """Put `capture_env`'s state into an env built the same way."""
    wrappers, base = _wrapper_chain(env)
    if len(wrappers) != len(state["wrappers"]):
        raise ValueError(f"env snapshot: {len(state['wrappers'])} wrappers saved, the env has {len(wrappers)}")
    for wrapper, fields in zip(wrappers, state["wrappers"], strict=True):
        for field, value in fields.items():
            setattr(wrapper, field, list(value) if isinstance(value, list) else value)
    env_state = dict(state["env"])
    env_state["physics"] = env_state["physics"].numpy()
    base.set_state(env_state)


def capture_numpy_global() -> list[Any]:
    """`np.random.get_state()` as plain values."""
    name, keys, position, has_gauss, cached = np.random.get_state()  # noqa: NPY002 (SB3 draws from it)
    return [name, torch.from_numpy(keys.astype(np.int64)), int(position), int(has_gauss), float(cached)]


def restore_numpy_global(state: list[Any]) -> None:
    """Undo `capture_numpy_global`."""
    name, keys, position, has_gauss, cached = state
    np.random.set_state((name, keys.numpy().astype(np.uint32), position, has_gauss, cached))  # noqa: NPY002


def capture_training(model: PPO) -> dict[str, Any]:
    """The paused run of `model` (see the module docstring); call between rollouts."""
    venv = model.get_env()
    if not isinstance(venv, DummyVecEnv):
        raise ValueError(f"cannot snapshot a {type(venv).__name__}; the curriculum steps a DummyVecEnv")
    logger = model.logger
    return {
        "num_timesteps": int(model.num_timesteps),
        "n_updates": int(model._n_updates),
        "episode_num": int(model._episode_num),
        "last_obs": torch.from_numpy(np.array(model._last_obs)),
        "last_episode_starts": torch.from_numpy(np.array(model._last_episode_starts)),
        "ep_info_buffer": [_plain_value(dict(info)) for info in model.ep_info_buffer or []],
        "ep_success_buffer": [_plain_value(s) for s in model.ep_success_buffer or []],
        "envs": [capture_env(env) for env in venv.envs],
        "numpy_global": capture_numpy_global(),
        "logger": {"values": _plain_value(dict(logger.name_to_value)),
                   "counts": dict(logger.name_to_count),
                   "excluded": {key: list(value) for key, value in logger.name_to_excluded.items()}},
    }


def restore_training(model: PPO, snapshot: dict[str, Any]) -> None:
    """Continue `capture_training`'s run in `model`, built as the paused one was and given a fresh
    env of the same task (its policy, optimiser and logger already restored); restores the global
    numpy RNG, so call it last, just before `learn`."""
    venv = model.get_env()
    if not isinstance(venv, DummyVecEnv) or len(venv.envs) != len(snapshot["envs"]):
        raise ValueError(f"training snapshot: {len(snapshot['envs'])} envs saved, the model's env differs")
    for env, state in zip(venv.envs, snapshot["envs"], strict=True):
        restore_env(env, state)
    venv._reset_seeds()  # the paused envs are mid-episode: no seeded reset comes next
    venv._reset_options()
    model.num_timesteps = snapshot["num_timesteps"]
    model._n_updates = snapshot["n_updates"]
    model._episode_num = snapshot["episode_num"]
    model._last_obs = snapshot["last_obs"].numpy()
    model._last_episode_starts = snapshot["last_episode_starts"].numpy()
    model.ep_info_buffer = deque(snapshot["ep_info_buffer"], maxlen=model._stats_window_size)
    model.ep_success_buffer = deque(snapshot["ep_success_buffer"], maxlen=model._stats_window_size)
    logger = model.logger
    logger.name_to_value.update(snapshot["logger"]["values"])
    logger.name_to_count.update(snapshot["logger"]["counts"])
    logger.name_to_excluded.update({key: tuple(value) for key, value in snapshot["logger"]["excluded"].items()})
    restore_numpy_global(snapshot["numpy_global"])


class EventFileOutput(KVWriter):
    """SB3 logger output into an `EventFile` (scalars only: PPO logs nothing else)."""

    def __init__(self, events: EventFile) -> None:
        self.events = events

    def write(self, key_values: dict[str, Any], key_excluded: dict[str, tuple[str, ...]], step: int = 0) -> None:
        """Write the numeric values not excluded from TensorBoard."""
        for key, value in key_values.items():
            if "tensorboard" in (key_excluded.get(key) or ()):
                continue
            if isinstance(value, int | float | np.number) and not isinstance(value, bool):
                self.events.add_scalar(key, float(value), step)
        self.events.flush()

    def close(self) -> None:
        """Close the event file."""
        self.events.close()


def event_file_logger(events: EventFile) -> Logger:
    """An SB3 logger writing only to `events`."""
    return Logger(folder=None, output_formats=[EventFileOutput(events)])
