"""Adaptation evaluation: returns before adaptation and after 1..k inner steps, per initialisation.

Protocol (the MAML paper's evaluation): for each seed and task, sample fresh episodes with the
current parameters (at step 0 the initialisation itself), record their mean undiscounted return,
then take one vanilla policy-gradient step (`agents.meta.inner.adapt`, first order) on those episodes;
repeat until k steps have been taken and the k-th adapted parameters have been rolled out. All
tasks of a step are sampled in one `Sampler.sample(params=[per-task params])` call.

What varies across seeds: each seed has its own tasks (callers draw them per seed, e.g. from the
family's held-out split), its own env resets and action noise, and a method may give one policy per
seed (the random baseline: one fresh init per seed). So an interval covers tasks, rollouts and
inits, never rollout noise on one fixed task set alone.

Common random numbers: the sampling seed of a step depends only on (seed, step), so every method
meets the same tasks, reset states and action-noise streams, differences between methods are
paired by (seed, task), and a method's numbers do not depend on which other methods are compared.

Statistics (`agents.runs.stats`): per method and step, the mean and interquartile mean (IQM) of the
per-task returns; per gain (step j minus before, or one method minus another at the same step) the
mean paired difference and the probability of improvement; each with a 95 % stratified bootstrap
interval (tasks resampled within each seed). A gain whose interval includes zero is reported as
indistinguishable from zero.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
from tqdm import tqdm

from agents.meta.adaptation_result import AdaptationConfig, AdaptationResult
from agents.meta.context import ContextPolicy, ContinuedContext
from agents.meta.inner import InnerLR, adapt, check_step_sizes
from agents.meta.retrieval import SkillLibrary, embed_episodes
from agents.policy import GaussianMLPPolicy, Params
from agents.sampler import Sampler
from envs.tasks import Goal, Task, Terrain

#: What a method adapts: a policy taking gradient steps; a context policy whose step j is its j-th
#: episode on the task with the history of the one before carried over (no gradient step); or a
#: skill library, whose step 0 is its probe policy's episodes, from which each task's nearest skill
#: is retrieved to start from at step 1 (and adapted with gradient steps after).
MethodPolicy = GaussianMLPPolicy | ContextPolicy | SkillLibrary
#: a method's policy: one for every seed, or one per seed (e.g. a fresh random init per seed)
MethodPolicies = MethodPolicy | Sequence[MethodPolicy]

# ----------------------------------------------------------------------------------------------
# Configuration and inputs
# ----------------------------------------------------------------------------------------------


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


def task_seed_for(task_seed: int, seed: int) -> int:
    """The seed of evaluation seed `seed`'s task draw (distinct tasks per seed, same for every method)."""
    return int(np.random.SeedSequence([int(task_seed), int(seed), 11]).generate_state(1)[0])


# ----------------------------------------------------------------------------------------------
# Evaluation
# ----------------------------------------------------------------------------------------------


def _check_policy(name: str, policy: MethodPolicy, sampler: Sampler) -> None:
    if isinstance(policy, SkillLibrary):
        for part, inner in (("probe", policy.probe), ("context", policy.encoder),
                            *((f"skill {s.name}", s.policy) for s in policy.skills)):
            _check_policy(f"{name}: {part}", inner, sampler)
        return
    if not isinstance(policy, GaussianMLPPolicy | ContextPolicy):
        raise ValueError(f"methods[{name!r}] must be a GaussianMLPPolicy, ContextPolicy or SkillLibrary, "
                         f"got {type(policy).__name__}")
    if (policy.obs_dim, policy.act_dim) != (sampler.obs_dim, sampler.act_dim):
        raise ValueError(f"methods[{name!r}]: policy has obs_dim={policy.obs_dim}, act_dim={policy.act_dim}; "
                         f"{sampler.robot!r} (height_scan={sampler.height_scan}) needs obs_dim={sampler.obs_dim}, "
                         f"act_dim={sampler.act_dim}")


def _per_seed(name: str, policies: MethodPolicies, n_seeds: int) -> list[MethodPolicy]:
    if isinstance(policies, GaussianMLPPolicy | ContextPolicy | SkillLibrary):
        return [policies] * n_seeds
    policies = list(policies) if isinstance(policies, Sequence) else [policies]
    if len(policies) != n_seeds:
        raise ValueError(f"methods[{name!r}]: give one policy, or one per seed ({n_seeds}), got {len(policies)}")
    return policies


def _per_seed_tasks(tasks: Sequence[Task] | Sequence[Sequence[Task]], n_seeds: int) -> list[list[Task]]:
    if tasks and all(isinstance(t, Task) for t in tasks):
        return [list(tasks)] * n_seeds
    per_seed = [list(seed_tasks) for seed_tasks in tasks]
    if len(per_seed) != n_seeds or not all(per_seed) or not all(isinstance(t, Task) for s in per_seed for t in s):
        raise ValueError(f"tasks must be a non-empty sequence of Task, or one such sequence per seed ({n_seeds})")
    if len({len(s) for s in per_seed}) != 1:
        raise ValueError(f"tasks: every seed needs as many tasks, got {[len(s) for s in per_seed]}")
    return per_seed


def _experience_curve(policy: ContextPolicy, sampler: Sampler, tasks: Sequence[Task], config: AdaptationConfig,
                      seed: int, bar: tqdm) -> tuple[np.ndarray, np.ndarray]:
    """`[task, step]` mean returns and speeds of a context policy: episode j of each env starts with
    the history its episode j - 1 ended with (step 0: an empty one)."""
    curve = np.zeros((len(tasks), config.steps + 1))
    speeds = np.zeros_like(curve)
    actor: ContextPolicy | ContinuedContext = policy
    for step in range(config.steps + 1):
        episodes = sampler.sample(actor, tasks, config.episodes_per_task, seed=step_seed(seed, step))
        curve[:, step] = [float(e.total_returns().mean()) for e in episodes]
        speeds[:, step] = [float((e.info["distance"] / (e.mask.sum(0) * sampler.dt)).mean()) for e in episodes]
        actor = policy.continued(episodes)
        bar.update(1)
    return curve, speeds


def _adaptation_curve(policy: MethodPolicy, sampler: Sampler, tasks: Sequence[Task], config: AdaptationConfig,
                      seed: int, bar: tqdm, inner_lr: InnerLR, retrieved: list[str] | None = None
                      ) -> tuple[np.ndarray, np.ndarray]:
    """`[task, step]` mean returns and mean speeds of one seed: roll out, adapt on those episodes, repeat.

    A skill library's step 0 is its probe policy; each task then starts from its retrieved skill
    (names appended to `retrieved`), which the later steps adapt like any other start.
    """
    if isinstance(policy, ContextPolicy):
        return _experience_curve(policy, sampler, tasks, config, seed, bar)
    library = policy if isinstance(policy, SkillLibrary) else None
    if library is not None:
        policy = library.probe
    own: Params = {name: p.detach() for name, p in policy.named_parameters()}
    params = [own] * len(tasks)
    curve = np.zeros((len(tasks), config.steps + 1))
    speeds = np.zeros_like(curve)
    for step in range(config.steps + 1):
        episodes = sampler.sample(policy, tasks, config.episodes_per_task, params=params, seed=step_seed(seed, step))
        curve[:, step] = [float(e.total_returns().mean()) for e in episodes]
        speeds[:, step] = [float((e.info["distance"] / (e.mask.sum(0) * sampler.dt)).mean()) for e in episodes]
        if library is not None and step == 0:
            chosen = [library.skills[i] for i in library.nearest(embed_episodes(library.encoder, episodes))]
            if retrieved is not None:
                retrieved.extend(skill.name for skill in chosen)
            params = [{name: p.detach() for name, p in skill.policy.named_parameters()} for skill in chosen]
        elif step < config.steps:
            # the inner step's index picks per-step learned sizes; a library's first step is retrieval
            params = [
                {name: p.detach() for name, p in adapt(policy, task_params, task_episodes, inner_lr,
                                                       first_order=True, gamma=config.gamma,
                                                       gae_lambda=config.gae_lambda,
                                                       normalize_advantages=config.normalize_advantages,
                                                       step=step - (library is not None)).items()}
                for task_params, task_episodes in zip(params, episodes, strict=True)
            ]
        bar.update(1)
    return curve, speeds


def compare(
    methods: Mapping[str, MethodPolicies],
    tasks: Sequence[Task] | Sequence[Sequence[Task]],
    robot: str,
    config: AdaptationConfig | None = None,
    height_scan: bool = False,
    progress: bool = False,
    sampler: Sampler | None = None,
    inner_lrs: Mapping[str, Mapping[str, torch.Tensor]] | None = None,
) -> AdaptationResult:
    """Evaluate several initialisations on the same tasks and seeds (see the module docstring).

    Args:
        methods: name -> policy, or name -> one policy per seed (e.g. "maml", "pretrained",
            "random"); policies are not modified. The first method is compared with the others. A
            `ContextPolicy` takes no gradient step: its step j is its j-th episode on the task,
            each env starting from the history its previous episode ended with. A `SkillLibrary`'s
            step 0 is its probe policy; each task's nearest skill (by the probe episodes'
            embedding) is its start from step 1 on.
        tasks: the evaluation tasks: one list for every seed, or one list per seed (preferred: then
            the intervals cover the task distribution, not one draw of it).
        robot: the robot of the tasks.
        config: evaluation settings (defaults if None).
        height_scan: whether the policies observe the terrain heights ahead.
        progress: show a progress bar.
        sampler: where episodes come from (e.g. `agents.runs.ray_sampler.RaySampler`, of this robot,
            horizon and height scan; the caller closes it); default a local `Sampler`.
        inner_lrs: method name -> its learned step sizes (Meta-SGD: a checkpoint's
            `extra_state["inner_lrs"]`), used instead of `config.inner_lr` for that method; per-step
            sizes (a leading step axis) must cover `config.steps`, step j adapting with entry j.

    Every input is checked (names, policy dimensions against the robot's spaces) before anything
    is simulated; a bad one is a ValueError naming it.
    """
    config = AdaptationConfig() if config is None else config
    if not methods:
        raise ValueError("methods must hold at least one name -> policy")
    if not tasks:
        raise ValueError("tasks must be a non-empty sequence of Task")
    per_seed_tasks = _per_seed_tasks(tasks, len(config.seeds))
    own_sampler = sampler is None
    if sampler is None:
        sampler = Sampler(robot, config.horizon, height_scan=height_scan, num_threads=config.num_threads)
    elif (sampler.robot, sampler.horizon, sampler.height_scan) != (robot, config.horizon, height_scan):
        raise ValueError(f"sampler: collects {sampler.robot} episodes of {sampler.horizon} steps "
                         f"(height_scan={sampler.height_scan}), expected {robot}, {config.horizon}, {height_scan}")
    try:
        policies: dict[str, list[MethodPolicy]] = {}
        for name, given in methods.items():
            if not isinstance(name, str) or not name:
                raise ValueError(f"methods: names must be non-empty strings, got {name!r}")
            policies[name] = _per_seed(name, given, len(config.seeds))
            for policy in policies[name]:
                _check_policy(name, policy, sampler)
        inner_lrs = dict(inner_lrs or {})
        for name, lrs in inner_lrs.items():
            if name not in policies or not isinstance(policies[name][0], GaussianMLPPolicy):
                raise ValueError(f"inner_lrs: {name!r} is not a gradient-adapted method ({sorted(policies)})")
            check_step_sizes(lrs, dict(policies[name][0].named_parameters()), f"inner_lrs[{name!r}]", config.steps)
        result = AdaptationResult(robot, per_seed_tasks, config, learned_step_sizes=sorted(inner_lrs),
                                  by_experience=[n for n, p in policies.items() if isinstance(p[0], ContextPolicy)])
        total = len(methods) * len(config.seeds) * (config.steps + 1)
        with tqdm(total=total, disable=not progress, desc="evaluate adaptation", unit="rollout") as bar:
            for name, per_seed in policies.items():
                bar.set_postfix(method=name)
                step_sizes = inner_lrs.get(name, config.inner_lr)
                retrieved: list[list[str]] = [[] for _ in config.seeds]
                curves = [_adaptation_curve(policy, sampler, seed_tasks, config, seed, bar, step_sizes, chosen)
                          for policy, seed_tasks, seed, chosen in zip(per_seed, per_seed_tasks, config.seeds, retrieved,
                                                                      strict=True)]
                if isinstance(per_seed[0], SkillLibrary):
                    result.retrieved[name] = retrieved
                result.returns[name] = np.stack([returns for returns, _ in curves])
                result.speeds[name] = np.stack([speeds for _, speeds in curves])
    finally:
        if own_sampler:
            sampler.close()
    return result


def evaluate_adaptation(
    policy: GaussianMLPPolicy,
    tasks: Sequence[Task] | Sequence[Sequence[Task]],
    robot: str,
    config: AdaptationConfig | None = None,
    name: str = "policy",
    height_scan: bool = False,
    progress: bool = False,
) -> AdaptationResult:
    """Evaluate one initialisation: `compare({name: policy}, ...)`."""
    return compare({name: policy}, tasks, robot, config, height_scan, progress)
