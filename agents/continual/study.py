"""The thesis study: does a MAML initialisation buy back the plasticity that EWC costs?

The grid: initialisation {scratch, multi-task pretrained, MAML} x method {fine-tuning, EWC,
replay, PackNet} on two sequences (`SEQUENCES`: conflicting directions, and a terrain curriculum
with held-out terrains), each on several seeds, plus one from-scratch PPO run per task and seed
(the references of the normalisation and of forward transfer). The regularisers' settings are
chosen on separate tuning seeds (`TUNING_GRID`, scratch initialisation, best average
performance), never on the reported ones.

A study takes hours on two cores, longer than a session, so every run's small result (what the
metrics need, `run_record`) is one JSON file under the results folder, written as soon as the run
finishes; a study resumes by skipping the runs whose file is there (`StudyStore`). The summary
(`summarize_study`) reads only those files.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from agents.continual.metrics import normalize, summarize
from agents.runs.atomic import atomic_write_text
from agents.runs.stats import mean_confidence_interval

PI = math.pi
#: Initialisations, in table order.
INITS = ("scratch", "pretrained", "maml")
#: Methods, in table order.
METHODS = ("finetune", "ewc", "replay", "packnet")
CURVE_POINTS = 11


@dataclass(frozen=True)
class SequenceSpec:
    """One sequence of the study: its stages, held-out tasks, heads and the initialisations' files."""

    stages: tuple[dict, ...]
    held_out: tuple[dict, ...]
    task_heads: bool  # one output head per task (needed where the goals conflict and are not observed)
    init_files: dict[str, str]  # "pretrained"/"maml" -> checkpoint path relative to the project root

    def init_value(self, init: str, root: Path) -> str:
        """The curriculum's `init:` for initialisation `init`."""
        return "scratch" if init == "scratch" else str(root / self.init_files[init])


SEQUENCES: dict[str, SequenceSpec] = {
    # Run forward, then backward twice (the second time on rough ground with weak motors); the goal is
    # not observed, so each task has its own head and the shared layers carry what is forgotten. The
    # initialisations come from the cheetah_direction family (forward or backward, progress reward).
    "direction": SequenceSpec(
        stages=({"terrain": "flat", "name": "forward"},
                {"terrain": "flat", "direction": PI, "name": "backward"},
                {"terrain": "rough", "difficulty": 0.4, "seed": 3, "physics": {"motor_strength": 0.7},
                 "direction": PI, "name": "backward-rough-weak"}),
        held_out=({"terrain": "hills", "difficulty": 0.4, "seed": 7, "direction": PI, "name": "backward-hills"},),
        task_heads=True,
        init_files={"pretrained": "assets/checkpoints/pretrained_cheetah_direction.pt",
                    "maml": "assets/checkpoints/maml_cheetah_direction.pt"},
    ),
    # The demo's climb (one progress goal, one head), evaluated on terrain kinds never trained; the
    # initialisations come from the cheetah_terrain family, whose held-out kinds these are.
    "terrain": SequenceSpec(
        stages=({"terrain": "flat", "name": "flat"},
                {"terrain": "rough", "difficulty": 0.4, "seed": 1, "name": "rough"},
                {"terrain": "hills", "difficulty": 0.5, "seed": 2, "name": "hills"},
                {"terrain": "stairs_up", "difficulty": 0.5, "seed": 3, "name": "stairs_up"}),
        held_out=({"terrain": "slope_down", "difficulty": 0.3, "seed": 4, "name": "slope_down"},
                  {"terrain": "gaps", "difficulty": 0.3, "seed": 6, "name": "gaps"},
                  {"terrain": "obstacles", "difficulty": 0.4, "seed": 5, "name": "obstacles"}),
        task_heads=False,
        init_files={"pretrained": "assets/checkpoints/pretrained_cheetah_terrain.pt",
                    "maml": "assets/checkpoints/maml_cheetah_terrain.pt"},
    ),
}

#: The settings tried on the tuning seeds, per method (fine-tuning has none).
TUNING_GRID: dict[str, tuple[dict, ...]] = {
    "finetune": ({"kind": "none"},),
    "ewc": tuple({"kind": "ewc", "strength": s} for s in (100.0, 1000.0, 10000.0)),
    "replay": tuple({"kind": "replay", "strength": s, "memory_size": m} for s in (1.0, 10.0) for m in (1024, 4096)),
    "packnet": tuple({"kind": "packnet", "prune_share": p} for p in (0.5, 0.75)),
}
#: What ranks the tuning runs (higher is better).
TUNING_METRIC = "average_performance"


def setting_label(regularizer: dict) -> str:
    """A short file-name label of one regulariser setting, e.g. 'ewc_1000' or 'replay_10_m4096'."""
    kind = regularizer["kind"]
    if kind == "none":
        return "finetune"
    if kind == "ewc":
        return f"ewc_{regularizer['strength']:g}"
    if kind == "replay":
        return f"replay_{regularizer['strength']:g}_m{regularizer['memory_size']}"
    if kind == "packnet":
        return f"packnet_{regularizer['prune_share']:g}"
    raise ValueError(f"regularizer.kind: the study runs none, ewc, replay or packnet, got {kind!r}")


@dataclass(frozen=True)
class StudySetting:
    """What every run of one study shares (recorded in each result file and checked on resume)."""

    steps_per_stage: int = 100_000
    adapt_steps: int = 1
    adapt_episodes: int = 10
    eval_episodes: int = 5
    hidden_sizes: tuple[int, ...] = (64, 64)

    def to_dict(self) -> dict[str, Any]:
        """Plain values (the form recorded in each result file)."""
        return {"steps_per_stage": self.steps_per_stage, "adapt_steps": self.adapt_steps,
                "adapt_episodes": self.adapt_episodes, "eval_episodes": self.eval_episodes,
                "hidden_sizes": list(self.hidden_sizes)}


def curriculum_config(sequence: str, init: str, regularizer: dict, seed: int, setting: StudySetting,
                      root: Path) -> dict:
    """The curriculum of one study run (plain values for `CurriculumConfig`)."""
    spec = SEQUENCES[sequence]
    steps = setting.steps_per_stage
    return {"robot": "cheetah", "init": spec.init_value(init, root), "hidden_sizes": list(setting.hidden_sizes),
            "horizon": 200, "schedule": "fixed", "goal_in_obs": False, "task_heads": spec.task_heads,
            "stages": [dict(stage) for stage in spec.stages], "steps_per_stage": steps,
            "checkpoint_every": steps, "adapt_steps": setting.adapt_steps, "adapt_stages": "all",
            "adapt_episodes": setting.adapt_episodes, "inner_lr": 0.1, "seed": seed, "video": False,
            "ppo": {"n_envs": 8, "n_steps": 256, "batch_size": 256, "n_epochs": 4, "learning_rate": 3e-4},
            "regularizer": dict(regularizer),
            "evaluation": {"episodes": setting.eval_episodes, "curve_every": max(1, steps // (CURVE_POINTS - 1)),
                           "held_out": [dict(task) for task in spec.held_out]}}


def reference_config(sequence: str, stage: int, seed: int, setting: StudySetting, root: Path) -> dict:
    """A from-scratch PPO run on one task alone (no adaptation): the normalisation's 1 and the
    forward-transfer reference curve of that task."""
    config = curriculum_config(sequence, "scratch", {"kind": "none"}, seed, setting, root)
    return config | {"stages": [config["stages"][stage]], "adapt_steps": 0,
                     "evaluation": config["evaluation"] | {"held_out": []}}


@dataclass(frozen=True)
class RunKey:
    """Where one run's result lives: `<sequence>/<phase>/<name>/seed<k>.json`."""

    sequence: str
    phase: str  # "reference", "tune" or "final"
    name: str  # reference: "stage<j>"; tune and final: "<init>/<setting label>"
    seed: int

    @property
    def path(self) -> str:
        """The result file's path relative to the results folder."""
        return f"{self.sequence}/{self.phase}/{self.name}/seed{self.seed}.json"


def portable(config: dict, root: Path) -> dict:
    """`config` with its initialisation path relative to the project `root` (records are committed
    and read on other checkouts, where the absolute path differs)."""
    init = config["init"]
    if init == "scratch":
        return dict(config)
    path = Path(init)
    return config | {"init": str(path.relative_to(root)) if path.is_absolute() and path.is_relative_to(root)
                     else init}


def init_digest(config: dict, root: Path) -> str | None:
    """The sha256 of the run's initialisation file (None from scratch): results made from another
    version of a shipped initialisation must not mix with the current one's."""
    init = config["init"]
    if init == "scratch":
        return None
    path = Path(init) if Path(init).is_absolute() else root / init
    if not path.is_file():
        raise ValueError(f"init: the initialisation file {init} is missing")
    return hashlib.sha256(path.read_bytes()).hexdigest()


def run_record(key: RunKey, config: dict, state: dict, setting: StudySetting, root: Path, digest: str | None
               ) -> dict:
    """The small result of a finished run: what the metrics need, its (portable) config, the sha256
    of the initialisation file it started from (`digest`, taken when the run was planned) and its budget."""
    history = state["history"]
    return {"key": key.__dict__, "setting": setting.to_dict(), "config": portable(config, root), "init_sha256": digest,
            "matrix": state["matrix"], "eval_curves": state["eval_curves"],
            "random_returns": state["random_returns"], "held_out": state["held_out"][-1] if state["held_out"] else [],
            "random_held_out": state["random_held_out"],
            "return_before_adapt": [record["return_before_adapt"] for record in history],
            "return_after_adapt": [record["return_after_adapt"] for record in history],
            "wall_time_s": state["seconds"], "env_steps": setting.steps_per_stage * len(history)}


class StudyStore:
    """The results folder: one JSON per finished run, all of one `StudySetting`; initialisation
    paths are resolved against the project `root`."""

    def __init__(self, folder: Path, setting: StudySetting, root: Path) -> None:
        self.folder = Path(folder)
        self.setting = setting
        self.root = Path(root)

    def load(self, key: RunKey, planned: dict | None = None) -> dict | None:
        """The run's record, or None if it has not finished. A record of another setting, of another
        config than `planned`, or made from another version of its initialisation file is an error
        (one line naming the file), so runs that differ never mix in one table."""
        path = self.folder / key.path
        if not path.is_file():
            return None
        record = json.loads(path.read_text(encoding="utf-8"))
        if record["setting"] != self.setting.to_dict():
            raise ValueError(f"{path}: a run of another study setting ({record['setting']}, this study "
                             f"{self.setting.to_dict()}); use another --results folder")
        if planned is not None and record["config"] != portable(planned, self.root):
            raise ValueError(f"{path}: made with another curriculum config than this study plans; move it aside")
        if record.get("init_sha256") != init_digest(record["config"], self.root):
            raise ValueError(f"{path}: made from another version of {record['config']['init']}; move the study's "
                             "results of that initialisation aside or restore the file")
        return record

    def save(self, key: RunKey, record: dict) -> Path:
        """Write a finished run's record (atomically: a kill leaves the old file or none)."""
        return atomic_write_text(self.folder / key.path, json.dumps(record, indent=1) + "\n")


# --- scoring ------------------------------------------------------------------------------------


def curve_on_grid(curve: list[list[float]], steps: int, low: float, high: float) -> np.ndarray:
    """A deterministic evaluation curve resampled on an even grid over the stage's budget, normalised."""
    if not curve:
        return np.full(CURVE_POINTS, np.nan)
    x, y = np.asarray(curve, dtype=float).T
    return normalize(np.interp(np.linspace(0, steps, CURVE_POINTS), x, y), low, high)


@dataclass
class References:
    """Per task of a sequence, averaged over seeds: the random init's return (the 0), the best
    deterministic evaluation a from-scratch PPO run reached on its curve (the 1; its final one alone
    swings by tens between neighbouring evaluations at these budgets, and a "1" barely above the
    0 would make one task outweigh the rest), and the from-scratch normalised evaluation curve."""

    low: np.ndarray
    high: np.ndarray
    curves: list[np.ndarray]

    @classmethod
    def pooled(cls, records: list[list[dict]], steps: int) -> References:
        """From `records[seed][task]`, the reference runs of each seed."""
        low = np.mean([[r["random_returns"][0] for r in seed] for seed in records], axis=0)
        high = np.mean([[max(point[1] for point in r["eval_curves"][0]) for r in seed] for seed in records], axis=0)
        unlearnable = [j for j in range(len(low)) if not high[j] > low[j]]
        if unlearnable:
            raise ValueError(f"references: the from-scratch runs did not beat the random init on tasks {unlearnable} "
                             f"(from scratch {np.round(high, 1).tolist()}, random {np.round(low, 1).tolist()}): "
                             "normalised scores are undefined; raise --steps")
        curves = [np.mean([curve_on_grid(seed[j]["eval_curves"][0], steps, low[j], high[j]) for seed in records],
                          axis=0) for j in range(len(low))]
        return cls(low, high, curves)


def score_run(record: dict, references: References, steps: int) -> dict[str, float]:
    """One run's metrics on the pooled references: average performance, forgetting, learning
    accuracy, forward transfer (deterministic curves against the references' mean curve),
    jump-start (normalised return right after a stage's adaptation: the first stage's, which is the
    initialisation's own, and the mean over stages) and the held-out return above the random
    init's (mean over held-out tasks, raw)."""
    low, high = references.low, references.high
    matrix = normalize(np.asarray(record["matrix"], dtype=float), low, high)
    curves = [curve_on_grid(curve, steps, low[j], high[j]) for j, curve in enumerate(record["eval_curves"])]
    metrics = summarize(matrix, curves=curves, reference_curves=references.curves)
    jump = normalize(np.asarray(record["return_after_adapt"], dtype=float), low, high)
    held = np.asarray(record["held_out"], dtype=float) - np.asarray(record["random_held_out"], dtype=float)
    return {"average_performance": metrics["average_performance"],
            "forgetting": metrics["average_forgetting"],
            "learning_accuracy": metrics["learning_accuracy"],
            "forward_transfer": metrics["average_forward_transfer"],
            "first_jump_start": float(jump[0]),
            "jump_start": float(jump.mean()),
            "held_out_over_random": float(held.mean()) if held.size else math.nan}


METRICS = ("average_performance", "forgetting", "forward_transfer", "first_jump_start", "jump_start",
           "learning_accuracy", "held_out_over_random")


def interval(values: Iterable[float]) -> dict[str, float | int]:
    """Mean and 95% t-interval over seeds (NaN bounds for one seed)."""
    values = [v for v in values if math.isfinite(v)]
    if not values:
        return {"mean": math.nan, "low": math.nan, "high": math.nan, "n": 0}
    mean, low, high = mean_confidence_interval(values)
    return {"mean": mean, "low": low, "high": high, "n": len(values)}


def choose_settings(scores: dict[str, dict[str, list[float]]]) -> dict[str, str]:
    """Per method, the setting label with the best mean `TUNING_METRIC` on the tuning seeds.

    `scores[label][metric]` lists the tuning seeds' values; ties keep the grid's order."""
    chosen: dict[str, str] = {}
    for method, grid in TUNING_GRID.items():
        labels = [setting_label(r) for r in grid]
        means = [float(np.mean(scores[label][TUNING_METRIC])) for label in labels]
        chosen[method] = labels[int(np.argmax(means))]
    return chosen


def cell_summary(per_seed: dict[int, dict[str, float]]) -> dict[str, dict]:
    """Every metric's mean and interval over the seeds of one (sequence, init, method) cell."""
    return {metric: interval(scores[metric] for scores in per_seed.values()) for metric in METRICS}


def paired(a: dict[int, dict[str, float]], b: dict[int, dict[str, float]], metric: str) -> dict:
    """Mean and interval of `a - b` on `metric`, paired by seed (the seeds both have)."""
    seeds = sorted(set(a) & set(b))
    return interval(a[s][metric] - b[s][metric] for s in seeds)


def target_check(cells: dict[str, dict[int, dict[str, float]]]) -> dict[str, dict]:
    """The issue's target with the MAML initialisation: a method's forgetting at most 10% of
    fine-tuning's while its forward transfer is at least fine-tuning's. `cells[method]` are the
    MAML-initialised runs' scores by seed; each method is compared with fine-tuning on the seeds
    both have. Undefined (`met` None) where fine-tuning does not forget on average."""
    out = {}
    finetune = cells.get("finetune", {})
    for method in ("ewc", "replay", "packnet"):
        runs = cells.get(method, {})
        seeds = sorted(set(runs) & set(finetune))
        if not seeds:
            continue
        forgetting = float(np.mean([runs[s]["forgetting"] for s in seeds]))
        ft_forgetting = float(np.mean([finetune[s]["forgetting"] for s in seeds]))
        ratio = forgetting / ft_forgetting if ft_forgetting > 0 else math.nan
        transfer = paired(runs, finetune, "forward_transfer")
        met = None if not math.isfinite(ratio) else bool(ratio <= 0.1 and transfer["mean"] >= 0)
        out[method] = {"seeds": seeds, "forgetting": forgetting, "finetune_forgetting": ft_forgetting,
                       "forgetting_ratio": ratio, "forward_transfer_minus_finetune": transfer, "met": met}
    return out
