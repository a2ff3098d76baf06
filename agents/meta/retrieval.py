"""Metric-based meta-learning: recognise a task by its embedding and start from the closest known skill.

A task's embedding is the context adapter's estimate (`agents.meta.context`) averaged over a batch
of probe episodes on it: where the episodes' transitions place the task among the teacher's
extrinsics. A library holds known skills, each a policy with a key: the mean embedding of fresh
tasks of the kind it was trained on, probed by the same policy and adapter. Given a new task, the
probe episodes' embedding picks the skill with the nearest key (Euclidean), and that skill is the
policy to start from (and, in the evaluation, to adapt with gradient steps like any other start).

A library is a folder: `library.json` (family, robot, keys, what each skill was trained on, how the
library was built) beside standard checkpoints (`agents.runs.checkpoint`) of the probe policy, the
context adapter and every skill, so a shipped library needs nothing else.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from agents.episodes import Episodes
from agents.meta.context import ContextPolicy, history_windows
from agents.meta.context_train import load_context_policy
from agents.policy import GaussianMLPPolicy
from agents.runs.atomic import PathLike, atomic_write_text
from agents.runs.checkpoint import load_checkpoint, policy_sha256, save_checkpoint
from agents.runs.layout import check_layout
from envs.tasks import Task, TaskDistribution, get_family
from envs.terrain import terrain_kinds

LIBRARY_FILE = "library.json"


def embed_episodes(encoder: ContextPolicy, episodes: Sequence[Episodes]) -> torch.Tensor:
    """Each task's embedding [n_tasks, embed_dim]: the adapter's estimate averaged over every real
    step of its episodes that has at least one transition behind it."""
    out = []
    with torch.no_grad():
        for batch in episodes:
            windows = history_windows(batch.observations, batch.actions, batch.mask, encoder.adapter.history)
            seen = batch.mask.bool() & (windows[..., -1, -1] > 0)
            out.append(encoder.adapter(windows[seen]).mean(dim=0))
    return torch.stack(out)


def tasks_of_kind(family: str, kind: str, n: int, seed: int, split: str = "train") -> list[Task]:
    """`n` tasks of the family's `split` whose terrain is `kind` (drawn in order, the others skipped)."""
    distribution = TaskDistribution(family, seed)
    tasks: list[Task] = []
    for _ in range(1000 * n):
        task = distribution.sample(1, split)[0]
        if task.terrain.kind == kind:
            tasks.append(task)
            if len(tasks) == n:
                return tasks
    raise ValueError(f"kind: {kind!r} is not a terrain of the {family} family's {split} split")


def train_kinds(family: str, draws: int = 500) -> list[str]:
    """The terrain kinds of a family's training split (those a fixed draw of `draws` tasks meets), in
    the order of `envs.terrain.terrain_kinds()`."""
    seen = {task.terrain.kind for task in TaskDistribution(family, 0).sample(draws, "train")}
    return [kind for kind in terrain_kinds() if kind in seen]


@dataclass
class Skill:
    """A known skill: its name, policy, key (mean probe embedding of its kind) and terrain kind."""

    name: str
    policy: GaussianMLPPolicy
    key: np.ndarray
    kind: str


@dataclass
class SkillLibrary:
    """Skills of one family with the probe policy and context adapter that embed tasks for them."""

    family: str
    probe: GaussianMLPPolicy
    encoder: ContextPolicy
    skills: list[Skill]
    records: dict[str, Any] = field(default_factory=dict)  # how it was built, its accuracy, its budget

    @property
    def keys(self) -> torch.Tensor:
        """[n_skills, embed_dim] of the skills' keys."""
        return torch.as_tensor(np.stack([skill.key for skill in self.skills]), dtype=torch.float32)

    def nearest(self, embeddings: torch.Tensor) -> list[int]:
        """Index of the skill whose key is nearest (Euclidean) to each embedding [n, embed_dim]."""
        return torch.cdist(embeddings.to(torch.float32), self.keys).argmin(dim=1).tolist()

    def save(self, folder: PathLike, context_file: PathLike, probe_file: PathLike) -> Path:
        """Write the library into `folder`: the adapter's and the probe's checkpoint files (copied
        from `context_file` and `probe_file`), one checkpoint per skill, and `library.json`."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(context_file, folder / "context.pt")
        shutil.copyfile(probe_file, folder / "probe.pt")
        entries = []
        robot = get_family(self.family).robot
        observation = load_checkpoint(probe_file).metadata.get("observation")
        for skill in self.skills:
            name = f"skill_{skill.name}.pt"
            save_checkpoint(folder / name, policy=skill.policy, robot=robot,
                            metadata={"kind": "skill", "family": self.family, "terrain_kind": skill.kind,
                                      "observation": observation})
            entries.append({"name": skill.name, "file": name, "kind": skill.kind, "key": skill.key.tolist(),
                            "policy_sha256": policy_sha256(skill.policy)})
        index = {"family": self.family, "robot": robot, "context": "context.pt", "probe": "probe.pt",
                 "probe_sha256": policy_sha256(self.probe), "skills": entries, **self.records}
        return atomic_write_text(folder / LIBRARY_FILE, json.dumps(index, indent=1) + "\n")


def load_library(folder: PathLike, family: str | None = None) -> SkillLibrary:
    """A library written by `SkillLibrary.save`; each file is checked (robot, observation, that the
    skills' parameters are the ones keyed). A mismatch is one ValueError naming it."""
    folder = Path(folder)
    index_path = folder / LIBRARY_FILE
    if not index_path.is_file():
        raise ValueError(f"library: no {LIBRARY_FILE} in {folder} (build one with scripts/build_skills.py)")
    try:
        index = json.loads(index_path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"library: {index_path} is not JSON ({err})") from err
    if family is not None and get_family(family).robot != index["robot"]:
        raise ValueError(f"library: for the {index['robot']} ({index['family']}), family {family!r} is for the "
                         f"{get_family(family).robot}")
    encoder = load_context_policy(folder / index["context"], index["family"])
    probe = load_checkpoint(folder / index["probe"], expected_robot=index["robot"])
    check_layout(probe, "library probe")
    skills = []
    for entry in index["skills"]:
        checkpoint = load_checkpoint(folder / entry["file"], expected_robot=index["robot"],
                                     expected_obs_dim=probe.obs_dim, expected_act_dim=probe.act_dim)
        if checkpoint.policy.hidden_sizes != probe.policy.hidden_sizes:
            raise ValueError(f"library: {entry['file']} has hidden sizes {checkpoint.policy.hidden_sizes}, the probe "
                             f"{probe.policy.hidden_sizes} (a skill is adapted through the probe's network)")
        if policy_sha256(checkpoint.policy) != entry["policy_sha256"]:
            raise ValueError(f"library: {entry['file']} holds other parameters than the skill keyed in {LIBRARY_FILE}")
        skills.append(Skill(entry["name"], checkpoint.policy, np.asarray(entry["key"], dtype=np.float32),
                            entry["kind"]))
    records = {k: v for k, v in index.items() if k not in {"family", "robot", "context", "probe", "probe_sha256",
                                                            "skills"}}
    return SkillLibrary(index["family"], probe.policy, encoder, skills, records)
