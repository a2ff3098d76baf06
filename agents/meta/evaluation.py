"""Adaptation evaluation: returns before adaptation and after 1..k inner steps, per initialisation.

Protocol (the MAML paper's evaluation): for each seed and task, sample fresh episodes with the
current parameters (at step 0 the initialisation itself), record their mean undiscounted return,
then take one vanilla policy-gradient step (`agents.meta.maml.adapt`, first order) on those episodes;
repeat until k steps have been taken and the k-th adapted parameters have been rolled out. All
tasks of a step are sampled in one `Sampler.sample(params=[per-task params])` call.

Common random numbers: the sampling seed of a step depends only on (seed, step), so every method
(initialisation) meets the same reset states and action-noise streams, and a method's numbers do
not depend on which other methods are compared with it.

Confidence intervals are over seeds: each seed contributes the mean over tasks (or, per task, the
task's mean over episodes), and the interval is the Student-t interval of `agents.runs.stats`. With a
single seed the interval is undefined (NaN).
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from agents.meta.maml import adapt
from agents.policy import GaussianMLPPolicy, Params
from agents.runs.atomic import PathLike, atomic_write_bytes, atomic_write_text
from agents.runs.stats import mean_confidence_interval
from agents.sampler import Sampler
from envs.tasks import Goal, Task, Terrain

# ----------------------------------------------------------------------------------------------
# Configuration and inputs
# ----------------------------------------------------------------------------------------------


@dataclass
class AdaptationConfig:
    """How adaptation is evaluated (the same for every method compared)."""

    steps: int = 3  # k: inner policy-gradient steps after the pre-adaptation rollout (0: none)
    inner_lr: float = 0.1  # SGD step size of each inner step
    episodes_per_task: int = 10  # episodes per task and step, used both to measure and to adapt
    horizon: int = 200  # steps per episode
    seeds: tuple[int, ...] = (0, 1, 2)  # evaluation seeds (env resets, action noise); CIs are over them
    gamma: float = 0.99  # discount of the inner-loop advantages
    gae_lambda: float = 1.0  # GAE lambda of the inner-loop advantages (1: returns minus linear baseline)
    normalize_advantages: bool = True  # standardise the inner-loop advantages
    confidence: float = 0.95  # coverage of the reported confidence intervals
    num_threads: int | None = None  # sampler threads (default: all cores; episodes do not depend on it)

    def __post_init__(self) -> None:
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 0:
            raise ValueError(f"steps (k, the number of inner steps) must be an integer >= 0, got {self.steps!r}")
        for name in ("episodes_per_task", "horizon"):
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


def random_init(obs_dim: int, act_dim: int, hidden_sizes: Sequence[int] = (64, 64), seed: int = 0
                ) -> GaussianMLPPolicy:
    """A freshly initialised policy, seeded (the global torch RNG is left as it was).

    Equal to the policy meta-training starts from with the same seed and architecture.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return GaussianMLPPolicy(obs_dim, act_dim, hidden_sizes)


def parse_terrain_tasks(specs: Sequence[str], seed: int = 0) -> list[Task]:
    """Progress tasks from `kind:difficulty` strings (each may hold a comma-separated list).

    Args:
        specs: e.g. ["gaps:0.5", "stairs_down:0.3,obstacles:1"].
        seed: the terrain seed of every task (same seed, same ground).
    """
    tasks = []
    for spec in (part.strip() for item in specs for part in item.split(",")):
        if not spec:
            continue
        kind, sep, difficulty = spec.partition(":")
        if not sep:
            raise ValueError(f"terrains: expected kind:difficulty (e.g. gaps:0.5), got {spec!r}")
        try:
            level = float(difficulty)
        except ValueError as err:
            raise ValueError(f"terrain.difficulty must be a number in [0, 1], got {difficulty!r} in {spec!r}") from err
        tasks.append(Task(terrain=Terrain(kind.strip(), level, seed), goal=Goal(target_velocity=None)))
    if not tasks:
        raise ValueError("terrains: give at least one kind:difficulty")
    return tasks


def infer_height_scan(robot: str, obs_dim: int) -> bool:
    """Whether a policy with `obs_dim` inputs expects `robot`'s observation with the height scan."""
    sizes = {}
    for height_scan in (False, True):
        sampler = Sampler(robot, 1, height_scan=height_scan, num_threads=1)
        sizes[height_scan] = sampler.obs_dim
        sampler.close()
        if sampler.obs_dim == obs_dim:
            return height_scan
    raise ValueError(f"obs_dim is {obs_dim}, but {robot!r} observations have {sizes[False]} entries "
                     f"({sizes[True]} with the height scan)")


def step_seed(seed: int, step: int) -> int:
    """The sampling seed of adaptation step `step` under evaluation seed `seed` (same for every method)."""
    return int(np.random.SeedSequence([int(seed), int(step), 7]).generate_state(1)[0])


# ----------------------------------------------------------------------------------------------
# Evaluation
# ----------------------------------------------------------------------------------------------


@dataclass
class AdaptationResult:
    """Returns of every method, seed, task and step.

    Attributes:
        robot: the robot evaluated.
        tasks: the evaluation tasks, in order.
        config: the evaluation settings.
        returns: method -> `[seed, task, step]` array of mean undiscounted episode returns; step 0 is
            before adaptation, step j after j inner steps (shape `[len(seeds), len(tasks), steps + 1]`).
    """

    robot: str
    tasks: list[Task]
    config: AdaptationConfig
    returns: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def methods(self) -> list[str]:
        """Method names in evaluation order."""
        return list(self.returns)

    @property
    def seeds(self) -> tuple[int, ...]:
        """The evaluation seeds."""
        return self.config.seeds

    @property
    def steps(self) -> int:
        """k, the number of inner steps (the step axis runs 0..k)."""
        return self.config.steps

    def records(self) -> list[dict[str, Any]]:
        """Tidy rows: method, task (index), task_label, step, seed, return."""
        return [
            {"method": method, "task": t, "task_label": task.describe(), "step": j, "seed": seed,
             "return": float(values[s, t, j])}
            for method, values in self.returns.items()
            for t, task in enumerate(self.tasks)
            for j in range(self.steps + 1)
            for s, seed in enumerate(self.seeds)
        ]

    def summary(self, per_task: bool = False) -> list[dict[str, Any]]:
        """Rows of mean return and confidence interval over seeds, per method and step (and task).

        Without `per_task`, a seed's value is its mean over tasks. Keys: method, [task,
        task_label,] step, mean, ci_low, ci_high, n_seeds.
        """
        rows = []
        for method, values in self.returns.items():
            groups = (
                [({"task": t, "task_label": task.describe()}, values[:, t, :]) for t, task in enumerate(self.tasks)]
                if per_task else [({}, values.mean(axis=1))]
            )
            for keys, per_seed in groups:  # per_seed: [seed, step]
                for j in range(self.steps + 1):
                    mean, low, high = mean_confidence_interval(per_seed[:, j], self.config.confidence)
                    rows.append({"method": method, **keys, "step": j, "mean": mean, "ci_low": low, "ci_high": high,
                                 "n_seeds": len(self.seeds)})
        return rows

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: robot, config, tasks, the tidy records and both summaries (NaN as null)."""
        config = asdict(self.config)
        config["seeds"] = list(config["seeds"])
        return _nan_to_none({
            "robot": self.robot,
            "config": config,
            "confidence_interval": f"Student-t {self.config.confidence:.0%} interval of the mean over seeds",
            "methods": self.methods,
            "tasks": [task.to_dict() for task in self.tasks],
            "summary": self.summary(),
            "summary_per_task": self.summary(per_task=True),
            "records": self.records(),
        })


def _nan_to_none(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _nan_to_none(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_nan_to_none(v) for v in value]
    return value


def _check_policy(name: str, policy: GaussianMLPPolicy, sampler: Sampler) -> None:
    if not isinstance(policy, GaussianMLPPolicy):
        raise ValueError(f"methods[{name!r}] must be a GaussianMLPPolicy, got {type(policy).__name__}")
    if (policy.obs_dim, policy.act_dim) != (sampler.obs_dim, sampler.act_dim):
        raise ValueError(f"methods[{name!r}]: policy has obs_dim={policy.obs_dim}, act_dim={policy.act_dim}; "
                         f"{sampler.robot!r} (height_scan={sampler.height_scan}) needs obs_dim={sampler.obs_dim}, "
                         f"act_dim={sampler.act_dim}")


def _adaptation_curve(policy: GaussianMLPPolicy, sampler: Sampler, tasks: Sequence[Task], config: AdaptationConfig,
                      seed: int, bar: tqdm) -> np.ndarray:
    """`[task, step]` mean returns of one seed: roll out, adapt on those episodes, repeat."""
    own: Params = {name: p.detach() for name, p in policy.named_parameters()}
    params = [own] * len(tasks)
    curve = np.zeros((len(tasks), config.steps + 1))
    for step in range(config.steps + 1):
        episodes = sampler.sample(policy, tasks, config.episodes_per_task, params=params, seed=step_seed(seed, step))
        curve[:, step] = [float(e.total_returns().mean()) for e in episodes]
        if step < config.steps:
            params = [
                {name: p.detach() for name, p in adapt(policy, task_params, task_episodes, config.inner_lr,
                                                       first_order=True, gamma=config.gamma,
                                                       gae_lambda=config.gae_lambda,
                                                       normalize_advantages=config.normalize_advantages).items()}
                for task_params, task_episodes in zip(params, episodes, strict=True)
            ]
        bar.update(1)
    return curve


def compare(
    methods: Mapping[str, GaussianMLPPolicy],
    tasks: Sequence[Task],
    robot: str,
    config: AdaptationConfig | None = None,
    height_scan: bool = False,
    progress: bool = False,
    sampler: Sampler | None = None,
) -> AdaptationResult:
    """Evaluate several initialisations on the same tasks and seeds (see the module docstring).

    Args:
        methods: name -> policy (e.g. "maml", "pretrained", "random"); policies are not modified.
        tasks: the evaluation tasks (e.g. a family's test split).
        robot: the robot of the tasks.
        config: evaluation settings (defaults if None).
        height_scan: whether the policies observe the terrain heights ahead.
        progress: show a progress bar.
        sampler: where episodes come from (e.g. `agents.runs.ray_sampler.RaySampler`, of this robot,
            horizon and height scan; the caller closes it); default a local `Sampler`.

    Every input is checked (names, policy dimensions against the robot's spaces) before anything
    is simulated; a bad one is a ValueError naming it.
    """
    config = AdaptationConfig() if config is None else config
    if not methods:
        raise ValueError("methods must hold at least one name -> policy")
    if not tasks or not all(isinstance(t, Task) for t in tasks):
        raise ValueError("tasks must be a non-empty sequence of Task")
    own_sampler = sampler is None
    if sampler is None:
        sampler = Sampler(robot, config.horizon, height_scan=height_scan, num_threads=config.num_threads)
    elif (sampler.robot, sampler.horizon, sampler.height_scan) != (robot, config.horizon, height_scan):
        raise ValueError(f"sampler: collects {sampler.robot} episodes of {sampler.horizon} steps "
                         f"(height_scan={sampler.height_scan}), expected {robot}, {config.horizon}, {height_scan}")
    try:
        for name, policy in methods.items():
            if not isinstance(name, str) or not name:
                raise ValueError(f"methods: names must be non-empty strings, got {name!r}")
            _check_policy(name, policy, sampler)
        result = AdaptationResult(robot, list(tasks), config)
        total = len(methods) * len(config.seeds) * (config.steps + 1)
        with tqdm(total=total, disable=not progress, desc="evaluate adaptation", unit="rollout") as bar:
            for name, policy in methods.items():
                bar.set_postfix(method=name)
                result.returns[name] = np.stack(
                    [_adaptation_curve(policy, sampler, tasks, config, seed, bar) for seed in config.seeds]
                )
    finally:
        if own_sampler:
            sampler.close()
    return result


def evaluate_adaptation(
    policy: GaussianMLPPolicy,
    tasks: Sequence[Task],
    robot: str,
    config: AdaptationConfig | None = None,
    name: str = "policy",
    height_scan: bool = False,
    progress: bool = False,
) -> AdaptationResult:
    """Evaluate one initialisation: `compare({name: policy}, ...)`."""
    return compare({name: policy}, tasks, robot, config, height_scan, progress)


# ----------------------------------------------------------------------------------------------
# Tables and figures
# ----------------------------------------------------------------------------------------------


def write_csv(result: AdaptationResult, path: PathLike, per_task: bool = False) -> Path:
    """`result.summary(per_task)` as CSV (empty cells for undefined bounds), atomically."""
    rows = result.summary(per_task)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if isinstance(v, float) and math.isnan(v) else v for k, v in row.items()})
    return atomic_write_text(path, buffer.getvalue())


def _step_label(step: int) -> str:
    return "before" if step == 0 else f"{step} step" + ("s" if step > 1 else "")


def markdown_table(result: AdaptationResult, precision: int = 1) -> str:
    """Markdown: a row per method, a column per step, cells "mean ± CI half-width" (mean only for one seed)."""
    by_key = {(row["method"], row["step"]): row for row in result.summary()}
    header = ["method", *(_step_label(j) for j in range(result.steps + 1))]
    lines = ["| " + " | ".join(header) + " |", "|---|" + "---:|" * (result.steps + 1)]
    for method in result.methods:
        cells = []
        for j in range(result.steps + 1):
            row = by_key[(method, j)]
            cell = f"{row['mean']:.{precision}f}"
            if math.isfinite(row["ci_high"]):
                cell += f" ± {row['ci_high'] - row['mean']:.{precision}f}"
            cells.append(cell)
        lines.append(f"| {method.replace('|', chr(92) + '|')} | " + " | ".join(cells) + " |")
    confidence = f"{result.config.confidence:.0%}"
    note = (f"Mean return over {len(result.tasks)} tasks, ± half-width of the Student-t {confidence} confidence "
            f"interval over {len(result.seeds)} seeds; {result.config.episodes_per_task} episodes per task and step, "
            f"inner lr {result.config.inner_lr:g}, horizon {result.config.horizon}.")
    return "\n".join(lines) + "\n\n" + note + "\n"


def write_markdown(result: AdaptationResult, path: PathLike, precision: int = 1) -> Path:
    """`markdown_table(result)` to `path`, atomically."""
    return atomic_write_text(path, markdown_table(result, precision))


def write_json(result: AdaptationResult, path: PathLike, metadata: Mapping[str, Any] | None = None) -> Path:
    """`result.to_dict()` as JSON, atomically, with `metadata` (e.g. where each method came from) under "metadata"."""
    data = result.to_dict()
    if metadata is not None:
        data["metadata"] = _nan_to_none(dict(metadata))
    return atomic_write_text(path, json.dumps(data, indent=2, default=str) + "\n")


def plot_adaptation(result: AdaptationResult, path: PathLike, title: str | None = None) -> Path:
    """PNG of mean return (over tasks) vs inner steps, one line per method, CI bands over seeds."""
    from matplotlib.figure import Figure  # the Agg canvas, no pyplot or display; imported only when plotting

    fig = Figure(figsize=(6.0, 4.0), layout="constrained")
    ax = fig.add_subplot()
    steps = np.arange(result.steps + 1)
    rows = result.summary()
    for method in result.methods:
        mine = [r for r in rows if r["method"] == method]
        mean = np.array([r["mean"] for r in mine])
        (line,) = ax.plot(steps, mean, marker="o", label=method)
        low, high = np.array([r["ci_low"] for r in mine]), np.array([r["ci_high"] for r in mine])
        if np.isfinite(low).all():
            ax.fill_between(steps, low, high, color=line.get_color(), alpha=0.2, linewidth=0)
    ax.set_xticks(steps)
    ax.set_xlabel("inner policy-gradient steps")
    ax.set_ylabel("mean return")
    confidence = f"{result.config.confidence:.0%}"
    ax.set_title(title or f"Adaptation on {len(result.tasks)} tasks ({result.robot}, {confidence} CI over "
                          f"{len(result.seeds)} seeds)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120)
    return atomic_write_bytes(path, buffer.getvalue())


def write_all(result: AdaptationResult, out_dir: PathLike, title: str | None = None,
              metadata: Mapping[str, Any] | None = None) -> dict[str, Path]:
    """table.csv, table.md, adaptation.png and results.json (with `metadata`) in `out_dir`; returns name -> path."""
    out = Path(out_dir)
    return {
        "table.csv": write_csv(result, out / "table.csv"),
        "table.md": write_markdown(result, out / "table.md"),
        "adaptation.png": plot_adaptation(result, out / "adaptation.png", title),
        "results.json": write_json(result, out / "results.json", metadata),
    }
