"""What an adaptation evaluation was (`AdaptationConfig`) and what it gave (`AdaptationResult`):
every method's returns and speeds per seed, task and step, and the statistics reported from them
(means and IQMs, paired gains, method-vs-method differences, speed tracking; 95 % stratified-
bootstrap intervals over tasks within seeds) as JSON-ready rows.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from agents.runs.config import config_from_dict
from agents.runs.stats import paired_bootstrap, relative_gain_interval, slope, stratified_bootstrap
from envs.tasks import Task


@dataclass
class AdaptationConfig:
    """How adaptation is evaluated (the same for every method compared)."""

    steps: int = 3  # k: inner policy-gradient steps after the pre-adaptation rollout (0: none)
    inner_lr: float = 0.1  # SGD step size of each inner step
    episodes_per_task: int = 20  # episodes per task and step (the MAML paper's fast batch), to measure and adapt
    horizon: int = 200  # steps per episode
    seeds: tuple[int, ...] = (0, 1, 2)  # evaluation seeds: tasks, env resets, action noise, random inits
    gamma: float = 0.99  # discount of the inner-loop advantages
    gae_lambda: float = 1.0  # GAE lambda of the inner-loop advantages (1: returns minus linear baseline)
    normalize_advantages: bool = True  # standardise the inner-loop advantages
    confidence: float = 0.95  # coverage of the reported intervals
    bootstrap_reps: int = 10_000  # stratified bootstrap resamples per interval
    num_threads: int | None = None  # sampler threads (default: all cores; episodes do not depend on it)

    def __post_init__(self) -> None:
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 0:
            raise ValueError(f"steps (k, the number of inner steps) must be an integer >= 0, got {self.steps!r}")
        for name in ("episodes_per_task", "horizon", "bootstrap_reps"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if not (isinstance(self.inner_lr, int | float) and math.isfinite(self.inner_lr) and self.inner_lr > 0):
            raise ValueError(f"inner_lr must be a finite number > 0, got {self.inner_lr!r}")
        seeds = tuple(self.seeds)
        if not seeds:
            raise ValueError("seeds must hold at least one seed")
        if any(isinstance(s, bool) or not isinstance(s, int | np.integer) or s < 0 for s in seeds):
            raise ValueError(f"seeds must be integers >= 0, got {list(seeds)}")
        if len(set(seeds)) != len(seeds):
            raise ValueError(f"seeds must be distinct, got {list(seeds)}")
        self.seeds = tuple(int(s) for s in seeds)
        for name in ("gamma", "gae_lambda"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)!r}")
        if not 0 < self.confidence < 1:
            raise ValueError(f"confidence must be in (0, 1), got {self.confidence!r}")


def step_label(step: int) -> str:
    """"before" for step 0, else "k step(s)"."""
    return "before" if step == 0 else f"{step} step" + ("s" if step > 1 else "")


@dataclass
class AdaptationResult:
    """Returns of every method, seed, task and step.

    Attributes:
        robot: the robot evaluated.
        tasks: the evaluation tasks of each seed (`tasks[s][t]`; the same count for every seed).
        config: the evaluation settings.
        returns: method -> `[seed, task, step]` array of mean undiscounted episode returns; step 0 is
            before adaptation, step j after j inner steps (shape `[len(seeds), n_tasks, steps + 1]`).
        speeds: method -> the same shape: mean speed along the goal's heading (distance / duration, m/s).
    """

    robot: str
    tasks: list[list[Task]]
    config: AdaptationConfig
    returns: dict[str, np.ndarray] = field(default_factory=dict)
    speeds: dict[str, np.ndarray] = field(default_factory=dict)
    learned_step_sizes: list[str] = field(default_factory=list)  # methods adapted with their own (Meta-SGD)
    by_experience: list[str] = field(default_factory=list)  # context methods: step j = j episodes of experience
    retrieved: dict[str, list[list[str]]] = field(default_factory=dict)  # library method -> [seed][task] skill

    @property
    def methods(self) -> list[str]:
        """Method names in evaluation order (the first is the one compared with the others)."""
        return list(self.returns)

    @property
    def seeds(self) -> tuple[int, ...]:
        """The evaluation seeds."""
        return self.config.seeds

    @property
    def steps(self) -> int:
        """k, the number of inner steps (the step axis runs 0..k)."""
        return self.config.steps

    @property
    def tasks_per_seed(self) -> int:
        """Tasks evaluated under each seed."""
        return len(self.tasks[0])

    def records(self) -> list[dict[str, Any]]:
        """Tidy rows: method, seed, task (index within the seed), task_label, step, return, speed."""
        return [
            {"method": method, "seed": seed, "task": t, "task_label": task.describe(), "step": j,
             "return": float(values[s, t, j]), "speed": float(self.speeds[method][s, t, j])}
            for method, values in self.returns.items()
            for s, seed in enumerate(self.seeds)
            for t, task in enumerate(self.tasks[s])
            for j in range(self.steps + 1)
        ]

    def _interval(self, per_seed_task: np.ndarray, statistic: str) -> dict[str, float]:
        point, low, high = stratified_bootstrap(list(per_seed_task), statistic, self.config.confidence,
                                                self.config.bootstrap_reps)
        return {statistic: point, f"{statistic}_low": low, f"{statistic}_high": high}

    def _difference(self, differences: np.ndarray) -> dict[str, Any]:
        row = {**self._interval(differences, "mean"), **self._interval(differences, "p_improvement")}
        row["distinguishable"] = not row["mean_low"] <= 0.0 <= row["mean_high"]
        return row

    def summary(self) -> list[dict[str, Any]]:
        """Per method and step: mean and IQM of the per-task returns, with intervals.

        Keys: method, step, mean, mean_low, mean_high, iqm, iqm_low, iqm_high, n_tasks, n_seeds.
        """
        return [
            {"method": method, "step": j, **self._interval(values[:, :, j], "mean"),
             **self._interval(values[:, :, j], "iqm"), "n_tasks": values.shape[0] * values.shape[1],
             "n_seeds": values.shape[0]}
            for method, values in self.returns.items()
            for j in range(self.steps + 1)
        ]

    def gains(self) -> list[dict[str, Any]]:
        """Per method and step j >= 1: the paired gain of step j over before adaptation.

        Keys: method, step, mean (mean gain), mean_low, mean_high, p_improvement (share of
        (seed, task) pairs where step j beat before) with its interval, distinguishable (the mean's
        interval excludes zero), relative (the mean gain over |mean before|, the MAML paper's
        relative gain) with relative_low, relative_high.
        """
        return [
            {"method": method, "step": j, **self._difference(values[:, :, j] - values[:, :, 0]),
             **dict(zip(("relative", "relative_low", "relative_high"),
                        relative_gain_interval(list(values[:, :, 0]), list(values[:, :, j]), self.config.confidence,
                                               self.config.bootstrap_reps), strict=True))}
            for method, values in self.returns.items()
            for j in range(1, self.steps + 1)
        ]

    def versus(self) -> list[dict[str, Any]]:
        """Per other method and step: the first method minus that method at the same step (paired).

        Keys: method (the first), other, step, and the keys of `gains`.
        """
        if len(self.methods) < 2:
            return []
        first, values = self.methods[0], self.returns[self.methods[0]]
        return [
            {"method": first, "other": other, "step": j,
             **self._difference(values[:, :, j] - self.returns[other][:, :, j])}
            for other in self.methods[1:]
            for j in range(self.steps + 1)
        ]

    def targets(self) -> np.ndarray | None:
        """`[seed, task]` target speeds, or None unless every task tracks a target velocity."""
        targets = [[task.goal.target_velocity for task in seed_tasks] for seed_tasks in self.tasks]
        if any(v is None for row in targets for v in row):
            return None
        return np.array(targets, dtype=np.float64)

    def tracking(self) -> list[dict[str, Any]]:
        """Velocity tasks only: per method and step, the mean |speed - target| (m/s) with its interval,
        the slope of the speed reached on the target with its interval (1: the speed follows the
        target, 0: it ignores it, whatever the step's size), and the mean speed reached in each
        quarter of the targets' range (where a ceiling shows)."""
        targets = self.targets()
        if targets is None:
            return []
        edges = np.linspace(targets.min(), targets.max(), 5)
        bins = np.clip(np.searchsorted(edges, targets, side="right") - 1, 0, 3)
        rows = []
        for method, speeds in self.speeds.items():
            for j in range(self.steps + 1):
                by_bin = [{"targets": [float(edges[b]), float(edges[b + 1])],
                           "mean_target": float(targets[bins == b].mean()),
                           "mean_speed": float(speeds[:, :, j][bins == b].mean()), "n": int((bins == b).sum())}
                          for b in range(4) if (bins == b).any()]
                follows = paired_bootstrap(list(targets), list(speeds[:, :, j]), slope, self.config.confidence,
                                           self.config.bootstrap_reps)
                rows.append({"method": method, "step": j, **self._interval(np.abs(speeds[:, :, j] - targets), "mean"),
                             **dict(zip(("slope", "slope_low", "slope_high"), follows, strict=True)),
                             "by_target": by_bin})
        return rows

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: robot, config, tasks per seed, every statistic and the tidy records (NaN as null)."""
        config = asdict(self.config)
        config["seeds"] = list(config["seeds"])
        return nan_to_none({
            "robot": self.robot,
            "config": config,
            "intervals": (f"{self.config.confidence:.0%} stratified bootstrap ({self.config.bootstrap_reps} "
                          f"resamples; tasks resampled within each of {len(self.seeds)} seeds)"),
            "methods": self.methods,
            "learned_step_sizes": self.learned_step_sizes,
            "by_experience": self.by_experience,
            "retrieved": self.retrieved,
            "tasks_per_seed": self.tasks_per_seed,
            "tasks": [[task.to_dict() for task in seed_tasks] for seed_tasks in self.tasks],
            "summary": self.summary(),
            "gains": self.gains(),
            "versus": self.versus(),
            "tracking": self.tracking(),
            "records": self.records(),
        })

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AdaptationResult:
        """Inverse of `to_dict` (from its records): the statistics are recomputed, so a file written
        before a statistic was added gets it. Raises ValueError if the records do not fill every
        method, seed, task and step."""
        config = config_from_json(data.get("config"))
        per_seed, methods = data.get("tasks_per_seed"), data.get("methods")
        tasks = data.get("tasks")
        if not (isinstance(per_seed, int) and isinstance(tasks, list) and len(tasks) == len(config.seeds)
                and all(isinstance(seed_tasks, list) and len(seed_tasks) == per_seed for seed_tasks in tasks)):
            raise ValueError(f"tasks: need {len(config.seeds)} lists (one per seed) of tasks_per_seed "
                             f"({per_seed!r}) tasks each")
        if not (isinstance(methods, list) and methods and all(isinstance(m, str) for m in methods)):
            raise ValueError(f"methods: need a non-empty list of method names, got {methods!r}")
        tasks = [[Task.from_dict(task) for task in seed_tasks] for seed_tasks in tasks]
        shape = (len(config.seeds), per_seed, config.steps + 1)
        returns = {method: np.full(shape, np.nan) for method in methods}
        speeds = {method: np.full(shape, np.nan) for method in methods}
        seed_index = {seed: i for i, seed in enumerate(config.seeds)}
        filled = {method: np.zeros(shape, dtype=bool) for method in methods}
        for i, row in enumerate(data.get("records") or []):
            try:
                where = (seed_index[row["seed"]], row["task"], row["step"])
                valid = (row["method"] in returns and all(isinstance(k, int) for k in where)
                         and 0 <= row["task"] < per_seed and 0 <= row["step"] <= config.steps)
                if not valid:
                    raise KeyError(row["method"])
                returns[row["method"]][where] = np.nan if row["return"] is None else float(row["return"])
                speeds[row["method"]][where] = np.nan if row["speed"] is None else float(row["speed"])
            except (KeyError, TypeError, ValueError) as error:
                raise ValueError(f"records[{i}]: need method (one of {methods}), seed (one of "
                                 f"{list(config.seeds)}), task (0-{per_seed - 1}), step (0-{config.steps}), "
                                 f"return and speed; got {row!r}") from error
            filled[row["method"]][where] = True
        missing = [method for method, done in filled.items() if not done.all()]
        if missing:
            raise ValueError(f"records: not every seed, task and step of {missing} is there")
        return cls(robot=data["robot"], tasks=tasks, config=config, returns=returns, speeds=speeds,
                   learned_step_sizes=list(data.get("learned_step_sizes") or []),
                   by_experience=list(data.get("by_experience") or []),
                   retrieved={k: [list(row) for row in v] for k, v in (data.get("retrieved") or {}).items()})


def config_from_json(config: Any) -> AdaptationConfig:
    """The `AdaptationConfig` an evaluation's JSON stored; ValueError naming `config` if it is not one."""
    if not isinstance(config, dict) or not isinstance(config.get("seeds"), list):
        raise ValueError(f"config: need a mapping with a list of seeds, got {config!r}")
    return config_from_dict(AdaptationConfig, config)  # names an unknown field or a wrong type


def nan_to_none(value: Any) -> Any:
    """`value` with every non-finite float (nested in dicts, lists, tuples) replaced by None (JSON null)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: nan_to_none(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [nan_to_none(v) for v in value]
    return value
