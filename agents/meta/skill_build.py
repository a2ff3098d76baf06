"""Build a skill library (`agents.meta.retrieval`): one specialist per training terrain kind, keyed.

Each skill starts from the base policy (the family's multi-task pretrained one) and takes
`iterations` TRPO steps (`agents.meta.pretrain.trpo_step`) on training tasks of its kind only. Its
key is the mean embedding of fresh tasks of that kind, probed by the base policy and embedded by
the context adapter, the way a new task will be. The retrieval accuracy is measured on other
fresh tasks of the known kinds: how often the nearest key is the kind's own skill.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass

import numpy as np
import torch

from agents.meta.context import ContextPolicy
from agents.meta.meta_train import iteration_seed
from agents.meta.pretrain import PretrainConfig, trpo_step
from agents.meta.retrieval import Skill, SkillLibrary, embed_episodes, tasks_of_kind, train_kinds
from agents.policy import GaussianMLPPolicy
from agents.sampler import Sampler
from envs.tasks import get_family


@dataclass
class SkillBuildConfig:
    """How the skills are trained, keyed and checked."""

    family: str = "cheetah_terrain"  # the family whose training kinds become skills
    iterations: int = 20  # TRPO iterations per skill, from the base policy
    tasks_per_iteration: int = 10  # tasks of the skill's kind per iteration
    episodes_per_task: int = 10  # episodes per task and iteration
    horizon: int = 200  # steps per episode
    max_kl: float = 0.01  # TRPO trust region
    key_tasks: int = 10  # fresh tasks per kind whose embeddings average into its key
    probe_episodes: int = 10  # probe episodes per task (as many as the evaluation's first batch)
    accuracy_tasks: int = 20  # other fresh tasks per kind for the retrieval accuracy
    seed: int = 0  # seeds every task draw, reset and noise
    num_threads: int | None = None  # sampler threads

    def __post_init__(self) -> None:
        get_family(self.family)
        for name in ("iterations", "tasks_per_iteration", "episodes_per_task", "horizon", "key_tasks",
                     "probe_episodes", "accuracy_tasks"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if not self.max_kl > 0:
            raise ValueError(f"max_kl must be > 0, got {self.max_kl}")


def specialise(base: GaussianMLPPolicy, sampler: Sampler, kind: str, index: int, config: SkillBuildConfig
               ) -> tuple[GaussianMLPPolicy, list[float]]:
    """A copy of `base` trained with TRPO on tasks of `kind`; returns it and its mean return per iteration."""
    policy = copy.deepcopy(base)
    trpo = PretrainConfig(family=config.family, horizon=config.horizon, hidden_sizes=base.hidden_sizes,
                          max_kl=config.max_kl)
    returns = []
    for iteration in range(config.iterations):
        tasks = tasks_of_kind(config.family, kind, config.tasks_per_iteration,
                              iteration_seed(config.seed, iteration, 10 + index))
        episodes = sampler.sample(policy, tasks, config.episodes_per_task,
                                  seed=iteration_seed(config.seed, iteration, 100 + index))
        returns.append(float(np.mean([e.total_returns().mean().item() for e in episodes])))
        trpo_step(policy, episodes, trpo)
    return policy, returns


def probe_embeddings(probe: GaussianMLPPolicy, encoder: ContextPolicy, sampler: Sampler, kind: str, n_tasks: int,
                     episodes: int, family: str, seed: int) -> np.ndarray:
    """[n_tasks, embed_dim] embeddings of fresh training tasks of `kind`, probed by `probe`."""
    tasks = tasks_of_kind(family, kind, n_tasks, seed)
    batches = sampler.sample(probe, tasks, episodes, seed=seed)
    return embed_episodes(encoder, batches).numpy()


def build_library(base: GaussianMLPPolicy, encoder: ContextPolicy, config: SkillBuildConfig,
                  progress: bool = True, height_scan: bool = False) -> SkillLibrary:
    """Train, key and check one skill per training kind of the family; returns the library (with
    its records: settings, per-skill training returns, retrieval accuracy, budget). `height_scan`:
    whether the base policy (and so the adapter) observes the terrain heights ahead."""
    family = get_family(config.family)
    if (encoder.obs_dim, encoder.act_dim) != (base.obs_dim, base.act_dim):
        raise ValueError(f"context: its student observes {encoder.obs_dim} numbers, the base policy {base.obs_dim}")
    started = time.perf_counter()
    sampler = Sampler(family.robot, config.horizon, height_scan=height_scan, num_threads=config.num_threads)
    skills, training = [], {}
    try:
        kinds = train_kinds(config.family)
        for index, kind in enumerate(kinds):
            policy, returns = specialise(base, sampler, kind, index, config)
            key = probe_embeddings(base, encoder, sampler, kind, config.key_tasks, config.probe_episodes,
                                   config.family, iteration_seed(config.seed, index, 1000)).mean(axis=0)
            skills.append(Skill(kind, policy, key.astype(np.float32), kind))
            training[kind] = {"return_first": returns[0], "return_last": returns[-1]}
            if progress:
                print(f"skill {kind}: return {returns[0]:.1f} -> {returns[-1]:.1f} over {config.iterations} iterations",
                      flush=True)
        library = SkillLibrary(config.family, base, encoder, skills)
        accuracy = retrieval_accuracy(library, sampler, config)
        env_steps = sampler.env_steps
    finally:
        sampler.close()
    library.records = {"build": {**vars(config)}, "training": training, "accuracy": accuracy,
                       "budget": {"wall_time_s": round(time.perf_counter() - started, 1), "env_steps": env_steps}}
    return library


def retrieval_accuracy(library: SkillLibrary, sampler: Sampler, config: SkillBuildConfig) -> dict:
    """Share of fresh tasks of each known kind whose nearest key is that kind's skill (and overall)."""
    per_kind = {}
    for index, skill in enumerate(library.skills):
        embeddings = probe_embeddings(library.probe, library.encoder, sampler, skill.kind, config.accuracy_tasks,
                                      config.probe_episodes, config.family, iteration_seed(config.seed, index, 2000))
        chosen = library.nearest(torch.as_tensor(embeddings))
        per_kind[skill.kind] = float(np.mean([library.skills[c].kind == skill.kind for c in chosen]))
    return {"per_kind": per_kind, "overall": float(np.mean(list(per_kind.values()))),
            "tasks_per_kind": config.accuracy_tasks, "chance": 1.0 / len(library.skills)}

