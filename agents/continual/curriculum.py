"""Curriculum configs (the YAML a user writes) and the schedules that pick each next stage.

A curriculum names the robot, the initial policy (a MAML or multi-task checkpoint, a context adapter
or from scratch), a list of stages (each a terrain at a difficulty, optionally with physics and
goal), the budget per stage, the regulariser that keeps earlier skills, evaluation settings and seeds. Schedules:

- fixed: the stages in the order given.
- ladder: the stages in order, as rungs; a stage ends early once its success criterion holds
  (mean distance covered over the evaluation episodes, as legged_gym's terrain curriculum uses
  distance walked), and a rung missed at the end of its budget is retried `max_retries` times
  before the ladder stops.
- adaptive: `num_stages` stages chosen from the given pool by learning progress (the task whose
  evaluated return changed most since it was last trained, Matiisen et al. 2017) or by weakness
  (the lowest normalised return); tasks not yet trained come first.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from envs.robots import get_robot
from envs.tasks import Goal, Physics, Task, Terrain


@dataclass
class StageConfig:
    """One stage: a terrain at a difficulty, with optional physics and goal."""

    terrain: str = "flat"  # terrain kind (envs.terrain.terrain_kinds())
    difficulty: float = 0.0  # in [0, 1]
    seed: int = 0  # terrain seed
    physics: dict = field(default_factory=dict)  # Physics fields, e.g. {friction: 0.5}
    target_velocity: float | None = None  # None: reward progress
    direction: float = 0.0  # heading of "forward" in radians (planar robots: 0 or pi)
    ctrl_cost_weight: float | None = None  # squared-action penalty weight; None: the robot's own
    name: str | None = None  # label in tables and plots (default: terrain@difficulty)

    def task(self, where: str = "stage") -> Task:
        """The stage's Task (validated, errors naming the field)."""
        try:
            return Task(Terrain(self.terrain, self.difficulty, self.seed), Physics(**self.physics),
                        Goal(target_velocity=self.target_velocity, direction=self.direction,
                             ctrl_cost_weight=self.ctrl_cost_weight))
        except TypeError as error:  # an unknown physics field
            raise ValueError(f"{where}.physics: {error}; allowed: {sorted(Physics.__dataclass_fields__)}") from error
        except ValueError as error:
            raise ValueError(f"{where}: {error}") from error

    @property
    def label(self) -> str:
        """Short name for tables and plots."""
        return self.name or f"{self.terrain}@{self.difficulty:g}"


@dataclass
class PPOConfig:
    """Stable-Baselines3 PPO settings for each stage's training."""

    n_envs: int = 8  # envs stepped side by side (batches the policy forward: ~10x faster on CPU)
    learning_rate: float = 3e-4
    n_steps: int = 256  # rollout length per env per update (n_steps * n_envs steps per update)
    batch_size: int = 256
    n_epochs: int = 4
    gamma: float = 0.99
    gae_lambda: float = 0.95
    clip_range: float = 0.2
    ent_coef: float = 0.0
    max_grad_norm: float = 0.5


@dataclass
class RegularizerConfig:
    """What keeps earlier skills: EWC (Fisher-weighted), L2 (unit weights) or none."""

    kind: Literal["ewc", "l2", "replay", "packnet", "none"] = "ewc"
    strength: float = 100.0  # lambda: the loss term is strength / 2 * penalty
    mode: Literal["online", "separate"] = "online"
    gamma: float = 1.0  # online decay of older Fishers
    fisher_states: int = 2048  # states used to estimate each Fisher
    normalize: Literal["max", "mean"] | None = None  # None: raw Fisher; or divide each by its max or mean entry
    fisher_floor: float = 1e-5  # lower bound on every Fisher entry (Continual World's clip); 0: none
    anchor_log_std: bool = False  # single-head: also anchor the log-std (its large Fisher freezes exploration);
    # with task_heads each task has its own log-std, never anchored
    memory_size: int = 2048  # replay: states kept per task (with the policy's mean actions on them)
    replay_batch: int = 256  # replay: remembered states per minibatch penalty
    prune_share: float = 0.5  # packnet: share of the free weights released after each task
    critic: bool = False  # also anchor the critic, weighted by its Gaussian-likelihood Fisher (reset_critic: false)


@dataclass
class EvaluationConfig:
    """How each stage is evaluated."""

    episodes: int = 5  # deterministic episodes per task
    held_out: list[StageConfig] = field(default_factory=list)  # never trained: generalisation
    success_distance: float = 3.0  # metres covered on average for a stage to succeed (the ladder's rung test)
    eval_every: int = 5000  # ladder: env steps between success checks within a stage
    curve_every: int = 0  # env steps between deterministic evaluations of the stage's task while it trains
    # (the evaluation curve that forward transfer is measured on); 0: none


@dataclass
class CurriculumConfig:
    """A whole curriculum (one YAML file)."""

    robot: str = "cheetah"
    init: str = "scratch"  # "scratch", a policy checkpoint (MAML, multi-task) or a context adapter (continual.initial)
    hidden_sizes: tuple[int, ...] = (64, 64)  # policy widths when starting from scratch
    height_scan: bool = False  # the policy sees the terrain ahead
    goal_in_obs: bool = False  # the policy sees the goal (needed to hold skills whose goals conflict)
    horizon: int = 200  # steps per episode, in training and evaluation
    schedule: Literal["fixed", "ladder", "adaptive"] = "fixed"
    stages: list[StageConfig] = field(default_factory=list)
    num_stages: int | None = None  # adaptive: stages to run (default: the pool's size)
    adaptive_criterion: Literal["progress", "weakest"] = "progress"
    adaptive_epsilon: float = 0.2  # adaptive: share of stages on a uniformly drawn task (greedy alone locks on one)
    max_retries: int = 1  # ladder: extra tries of a missed rung
    steps_per_stage: int = 20000  # PPO env steps per stage
    # Env steps between checkpoints inside a stage: a kill loses at most this many (or one PPO
    # rollout, n_steps * n_envs, if that is longer); where they fall does not change the results.
    checkpoint_every: int = 25000
    adapt_steps: int = 1  # fast adaptation steps at the start of each stage
    adapt_stages: Literal["all", "first"] = "all"  # which stages begin with them: every one, or only the first
    # (later stages start from trained weights, not the meta-learned init, and the step moves every shared weight)
    adapt_episodes: int = 10  # episodes per adaptation step
    inner_lr: float = 0.1  # adaptation step size
    # Adapt with the init's meta-learned step sizes (Meta-SGD, per step or not) where it has them,
    # as the adaptation evaluation does; inner_lr then serves only inits without them.
    learned_step_sizes: bool = True
    reset_critic: bool = True  # new value function (and optimiser state) at each new stage, see continual.py
    # One output layer per pool task (Continual World's multi-head setup): a task is evaluated with
    # its own head, a new task's head starts as a copy of the latest, and the regulariser anchors
    # only the shared layers.
    task_heads: bool = False
    ppo: PPOConfig = field(default_factory=PPOConfig)
    regularizer: RegularizerConfig = field(default_factory=RegularizerConfig)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
    baseline: Literal["none", "finetune"] = "none"  # also run the same stages without a regulariser, to compare
    video: bool = True  # render the final policy on every stage's terrain
    video_steps: int = 200
    seed: int = 0

    def __post_init__(self) -> None:
        get_robot(self.robot)
        if not self.stages:
            raise ValueError("stages must list at least one stage")
        for i, stage in enumerate(self.stages):
            stage.task(f"stages[{i}]")
        for i, stage in enumerate(self.evaluation.held_out):
            stage.task(f"evaluation.held_out[{i}]")
        positive = {"horizon": self.horizon, "steps_per_stage": self.steps_per_stage,
                    "checkpoint_every": self.checkpoint_every,
                    "adapt_episodes": self.adapt_episodes, "evaluation.episodes": self.evaluation.episodes,
                    "evaluation.eval_every": self.evaluation.eval_every, "video_steps": self.video_steps,
                    "ppo.n_steps": self.ppo.n_steps, "ppo.n_envs": self.ppo.n_envs,
                    "ppo.batch_size": self.ppo.batch_size,
                    "ppo.n_epochs": self.ppo.n_epochs, "regularizer.fisher_states": self.regularizer.fisher_states,
                    "regularizer.memory_size": self.regularizer.memory_size,
                    "regularizer.replay_batch": self.regularizer.replay_batch}
        for name, value in positive.items():
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        for name, value in {"adapt_steps": self.adapt_steps, "max_retries": self.max_retries,
                            "regularizer.strength": self.regularizer.strength}.items():
            if not value >= 0:
                raise ValueError(f"{name} must be >= 0, got {value}")
        if self.evaluation.curve_every < 0:
            raise ValueError(f"evaluation.curve_every must be >= 0 (0: no curve), got {self.evaluation.curve_every}")
        if not 0 <= self.adaptive_epsilon <= 1:
            raise ValueError(f"adaptive_epsilon must be in [0, 1], got {self.adaptive_epsilon}")
        if not self.inner_lr > 0 or not self.ppo.learning_rate > 0:
            raise ValueError("inner_lr and ppo.learning_rate must be > 0")
        if self.regularizer.critic and self.reset_critic:
            raise ValueError("regularizer.critic: anchoring the critic needs reset_critic: false (a fresh critic "
                             "each stage would be pulled back to the old one)")
        if self.regularizer.critic and self.regularizer.kind not in ("ewc", "l2"):
            raise ValueError("regularizer.critic: needs regularizer.kind ewc or l2")
        if self.baseline == "finetune" and self.schedule != "fixed":
            raise ValueError(f"baseline: finetune needs schedule fixed (another schedule may choose other stages "
                             f"for the baseline), got schedule {self.schedule!r}")
        if self.regularizer.kind == "packnet" and self.schedule != "fixed":
            raise ValueError(f"regularizer.kind: packnet needs schedule fixed (a retrained task would have no free "
                             f"weights of its own), got schedule {self.schedule!r}")
        if not 0 < self.regularizer.prune_share < 1:
            raise ValueError(f"regularizer.prune_share must be in (0, 1), got {self.regularizer.prune_share}")
        if self.num_stages is not None and self.num_stages < 1:
            raise ValueError(f"num_stages must be >= 1, got {self.num_stages}")
        if self.init != "scratch" and not Path(self.init).is_file():
            raise ValueError(f"init: no checkpoint file at {self.init!r} (or use 'scratch')")


class Schedule:
    """Chooses which pool entry each stage trains on, from what the evaluations showed."""

    def __init__(self, config: CurriculumConfig) -> None:
        self.config = config
        self.pool = config.stages
        self.retries = 0

    def total_stages(self) -> int:
        """Upper bound on the number of stages (the ladder may stop earlier)."""
        if self.config.schedule == "adaptive":
            return self.config.num_stages or len(self.pool)
        if self.config.schedule == "ladder":
            return len(self.pool) * (1 + self.config.max_retries)
        return len(self.pool)

    def next_stage(self, history: list[dict], pool_returns: list[list[float]]) -> int | None:
        """Pool index of the next stage, or None when the curriculum is over.

        Args:
            history: one record per finished stage: {"pool_index", "success", and for the
                adaptive schedule "value_before": the trained task's return minus the random
                init's, evaluated just before the stage's adaptation and training}.
            pool_returns: for each pool entry, its evaluated returns minus the random init's so far
                (one value per evaluation, oldest first).
        """
        if len(history) >= self.total_stages():
            return None
        schedule = self.config.schedule
        if schedule == "fixed":
            return len(history)
        if schedule == "ladder":
            if not history:
                return 0
            last = history[-1]
            if last["success"]:
                self.retries = 0
                following = last["pool_index"] + 1
                return following if following < len(self.pool) else None
            if self.retries < self.config.max_retries:
                self.retries += 1
                return last["pool_index"]
            return None
        trained = {record["pool_index"] for record in history}
        untried = [i for i in range(len(self.pool)) if i not in trained]
        if untried:
            return untried[0]
        # Epsilon-greedy (Matiisen et al. 2019's teacher): a greedy choice alone locked onto one task
        # while the others decayed. The draw depends only on (seed, stage), so resuming repeats it.
        rng = np.random.default_rng([self.config.seed, len(history), 99])
        if rng.random() < self.config.adaptive_epsilon:
            return int(rng.integers(len(self.pool)))
        return int(np.argmax(self.scores(history, pool_returns)))

    def scores(self, history: list[dict], pool_returns: list[list[float]]) -> list[float]:
        """The adaptive criterion per pool entry (higher: train it next), every entry trained once.

        - "progress": |return now - return just before the task's latest training stage| (the
          record's `value_before`): learning since it was last trained, or forgetting since.
        - "weakest": minus the return now as a share of the best the task has reached, so tasks
          with returns of different sizes compare.
        """
        if self.config.adaptive_criterion == "weakest":
            return [-(returns[-1] / max(max(abs(v) for v in returns), 1e-8)) for returns in pool_returns]
        # (records written before value_before existed: the task's first evaluation stands in)
        last_before = {record["pool_index"]: record.get("value_before", pool_returns[record["pool_index"]][0])
                       for record in history}
        return [abs(pool_returns[i][-1] - last_before[i]) for i in range(len(self.pool))]
