"""What a curriculum run carries between stages and inside one: its state after each finished
stage (`CurriculumState`), a stage in progress (`StageProgress`), and the SB3 callback that records
a stage's curves and checkpoints it between PPO rollouts (`StageCallback`)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
from stable_baselines3.common.callbacks import BaseCallback
from tqdm import tqdm

from agents.continual.curriculum import CurriculumConfig


@dataclass
class CurriculumState:
    """Everything a finished stage leaves behind (what a resumed run starts from)."""

    history: list[dict] = field(default_factory=list)  # one record per finished stage
    matrix: list[list[float]] = field(default_factory=list)  # raw returns R[i][j] (NaN: not evaluated)
    held_out: list[list[float]] = field(default_factory=list)  # raw held-out returns after each stage
    pool_returns: list[list[float]] = field(default_factory=list)  # per pool entry, normalised evals
    curves: list[list[list[float]]] = field(default_factory=list)  # per stage: [env step, mean return]
    # per stage: [env step, deterministic return] every evaluation.curve_every steps (empty when 0)
    eval_curves: list[list[list[float]]] = field(default_factory=list)
    random_returns: list[float] = field(default_factory=list)  # random-init return of each pool task
    random_held_out: list[float] = field(default_factory=list)
    retries: int = 0
    seconds: float = 0.0  # wall time of the finished stages, summed over resumes

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict."""
        return dict(self.__dict__)


@dataclass
class StageProgress:
    """A stage between its adaptation and its evaluation: what a mid-stage checkpoint holds of it."""

    stage: int
    pool_index: int
    adaptation: dict[str, float]  # `Curriculum._adapt`'s returns
    start: int  # the model's num_timesteps when the stage's training began
    saved_at: int  # num_timesteps of the newest checkpoint (the stage's start until one is taken)
    curve: list[list[float]] = field(default_factory=list)  # [env step in the stage, mean return]
    eval_curve: list[list[float]] = field(default_factory=list)  # [env step in the stage, deterministic return]
    seconds: float = 0.0  # wall time spent on the stage before this process took it over
    _clock: float = field(default_factory=time.perf_counter, repr=False)

    def elapsed(self) -> float:
        """Wall time of the stage so far, over every process that worked on it."""
        return self.seconds + time.perf_counter() - self._clock

    def to_dict(self) -> dict[str, Any]:
        """Plain values; `StageProgress(**d)` continues the clock from `seconds`."""
        state = {k: v for k, v in self.__dict__.items() if k != "_clock"}
        state["seconds"] = self.elapsed()
        return state


class StageOwner(Protocol):
    """What the callback needs of the curriculum running the stage (`agents.continual.loop.Curriculum`)."""

    config: CurriculumConfig

    def evaluate_training_policy(self, progress: StageProgress) -> float:
        """Deterministic return of the policy being trained on the stage's task."""

    def save_paused(self, progress: StageProgress, call_end: int) -> None:
        """Checkpoint the stage between two PPO rollouts."""


class StageCallback(BaseCallback):
    """Records (timesteps, mean training-episode return) after each PPO rollout, and checkpoints
    before a rollout that would take the stage more than `every` env steps past its newest
    checkpoint (so a kill loses at most `every` steps, or one rollout if that is longer)."""

    def __init__(self, curriculum: StageOwner, progress: StageProgress, every: int, bar: tqdm | None) -> None:
        super().__init__()
        self.curriculum, self.progress, self.every, self.bar = curriculum, progress, every, bar
        self._shown = 0 if bar is None else bar.n

    def _on_step(self) -> bool:
        return True

    def _on_rollout_start(self) -> None:
        # Between two updates the policy is the one trained on `done` steps: evaluate it when
        # another multiple of curve_every has passed (before any checkpoint, so it holds the point).
        done = self.model.num_timesteps - self.progress.start
        every = self.curriculum.config.evaluation.curve_every
        last = self.progress.eval_curve[-1][0] if self.progress.eval_curve else 0
        if every and done // every > last // every:
            self.progress.eval_curve.append([done, self.curriculum.evaluate_training_policy(self.progress)])
        now = self.model.num_timesteps
        rollout = self.model.n_steps * self.model.n_envs
        if now > self.progress.saved_at and now - self.progress.saved_at + rollout > self.every:
            self.curriculum.save_paused(self.progress, call_end=self.model._total_timesteps)

    def _on_rollout_end(self) -> None:
        done = self.model.num_timesteps - self.progress.start
        if self.model.ep_info_buffer:
            mean_return = float(np.mean([info["r"] for info in self.model.ep_info_buffer]))
            self.progress.curve.append([done, mean_return])

        if self.bar is not None:  # PPO collects whole rollouts: the last one may end past the budget
            shown = min(done, self.bar.total)
            self.bar.update(shown - self._shown)
            self._shown = shown
