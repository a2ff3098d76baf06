"""The meta-training loop: sample tasks, adapt, sample again, meta-update; log, checkpoint, resume.

One iteration: draw `meta_batch_size` training tasks; sample `episodes_per_task` episodes of each
with the meta-parameters; adapt per task, sampling fresh episodes with the adapted parameters for
every further inner step; sample as many with the final adapted parameters; one MAML-TRPO (or
first-order/Adam) meta-update. Every random draw of iteration i comes from seeds
derived from (seed, i), so a resumed run continues exactly as an uninterrupted one would.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from agents.meta.maml import MAMLTRPO, MAMLConfig
from agents.policy import GaussianMLPPolicy
from agents.runs.checkpoint import Checkpoint, load_checkpoint, policy_sha256
from agents.runs.config import config_to_dict
from agents.runs.layout import check_layout, observation_layout
from agents.runs.provenance import provenance, spent_budget, training_metadata
from agents.runs.rundir import MetricsLog, RunDir, latest_checkpoint, save_step_checkpoint
from agents.sampler import Sampler
from envs.tasks import TaskDistribution, get_family


@dataclass
class MetaTrainConfig:
    """Everything a meta-training run depends on (the YAML file's fields)."""

    family: str = "cheetah_velocity"  # task family to meta-train on (envs.tasks.FAMILIES)
    iterations: int = 100  # meta-iterations
    meta_batch_size: int = 20  # tasks per meta-iteration
    episodes_per_task: int = 10  # episodes per task, before and after adaptation
    horizon: int = 200  # steps per episode
    hidden_sizes: tuple[int, ...] = (64, 64)  # policy MLP widths
    height_scan: bool = False  # give the policy the terrain heights ahead
    inner_lr: float = 0.1  # inner SGD step size
    num_inner_steps: int = 1  # inner adaptation steps, each on fresh episodes of the previous step's parameters
    first_order: bool = False  # first-order MAML (no second-order terms)
    inner_estimator: str = "score"  # inner surrogate: "score" (REINFORCE), "dice" (unbiased) or "lvc" (ProMP)
    meta_sgd: bool = False  # learn one inner step size per parameter entry (Meta-SGD), saved with the policy
    meta_sgd_per_step: bool = False  # Meta-SGD: one set of sizes per inner step (an init's shared set seeds each)
    init_step_scales: tuple[float, ...] | None = None  # meta_sgd_per_step: multiply each inner step's starting
    # sizes (the init's, or inner_lr) by these before the first iteration, e.g. [1.5, 1, 1] for a longer first step
    outer_steps: Literal["last", "all"] = "last"  # meta-objective: the return after the last inner step, or
    # the mean of the returns after each (no extra sampling: step k+1's episodes are step k's valid ones)
    outer_weights: tuple[float, ...] | None = None  # outer_steps all: each inner step's share (None: equal)
    outer_optimizer: Literal["trpo", "adam"] = "trpo"  # meta-update
    max_kl: float = 0.01  # TRPO trust region
    cg_damping: float = 1e-5  # Fisher damping in conjugate gradient
    fisher_every: int = 1  # Fisher-vector products on every k-th step (1: all, the exact step; >1 is faster
    # but learned less per iteration in scripts/check_meta_setting.py)
    outer_lr: float = 1e-3  # Adam step size (outer_optimizer: adam)
    gamma: float = 0.99  # discount
    gae_lambda: float = 1.0  # GAE lambda (1: returns minus linear baseline)
    seed: int = 0  # seeds tasks, env resets, action noise and the initial policy
    checkpoint_every: int = 5  # iterations between checkpoints
    init: str | None = None  # start from this checkpoint's policy (and learned step sizes), e.g. a shipped
    # initialisation meta-trained further with other settings; its budget counts toward this run's
    num_threads: int | None = None  # sampler threads (default: all cores; episodes do not depend on it)
    update_threads: int | None = None  # torch threads in the meta-update (default: all cores; sampling uses 1)

    def __post_init__(self) -> None:
        get_family(self.family)
        if self.update_threads is not None and self.update_threads < 1:
            raise ValueError(f"update_threads must be >= 1 or null (all cores), got {self.update_threads}")
        for name in ("iterations", "meta_batch_size", "episodes_per_task", "horizon", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not self.hidden_sizes or min(self.hidden_sizes) < 1:
            raise ValueError(f"hidden_sizes must be positive widths, got {self.hidden_sizes}")
        self.maml_config()  # validates the learner's fields
        if self.init_step_scales is not None:
            scales = tuple(self.init_step_scales)
            if not self.meta_sgd_per_step:
                raise ValueError("init_step_scales needs meta_sgd_per_step: true (one set of sizes per inner step)")
            if len(scales) != self.num_inner_steps or not all(math.isfinite(x) and x > 0 for x in scales):
                raise ValueError(f"init_step_scales must be {self.num_inner_steps} finite numbers > 0 "
                                 f"(one per inner step), got {list(scales)}")

    def maml_config(self) -> MAMLConfig:
        """The learner's hyper-parameters."""
        return MAMLConfig(inner_lr=self.inner_lr, num_inner_steps=self.num_inner_steps,
                          first_order=self.first_order, inner_estimator=self.inner_estimator, meta_sgd=self.meta_sgd,
                          meta_sgd_per_step=self.meta_sgd_per_step,
                          outer_steps=self.outer_steps, outer_weights=self.outer_weights,
                          outer_optimizer=self.outer_optimizer, max_kl=self.max_kl,
                          cg_damping=self.cg_damping, fisher_every=self.fisher_every, outer_lr=self.outer_lr,
                          gamma=self.gamma, gae_lambda=self.gae_lambda)


@contextlib.contextmanager
def torch_threads(count: int | None) -> Iterator[None]:
    """Run the block with `count` torch threads (None: every core this process may use).

    Sampling runs one torch thread beside the sampler's own threads; the meta-update has the
    machine to itself, and its batched tensor operations use every core.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(len(os.sched_getaffinity(0)) if count is None else count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def learned_step_sizes(learner: MAMLTRPO) -> dict:
    """A checkpoint's `extra_state` for the learner's Meta-SGD step sizes (`{"inner_lrs": ...}`; empty without)."""
    return {} if learner.inner_lrs is None else {"inner_lrs": learner.step_sizes()}


def load_init(config: MetaTrainConfig, robot: str) -> Checkpoint:
    """The `init` checkpoint, checked against the run: same family, robot, observation and widths."""
    init = load_checkpoint(config.init, expected_robot=robot)
    if check_layout(init, "init") != config.height_scan:
        raise ValueError(f"init: {config.init} was trained with height_scan={not config.height_scan}, "
                         f"this run has height_scan={config.height_scan}")
    family = init.metadata.get("family")
    if family != config.family:
        raise ValueError(f"init: {config.init} was trained on {family!r}, this run meta-trains {config.family!r}")
    if tuple(init.policy.hidden_sizes) != tuple(config.hidden_sizes):
        raise ValueError(f"init: {config.init} has hidden_sizes {list(init.policy.hidden_sizes)}, "
                         f"the config {list(config.hidden_sizes)}")
    return init


def check_init(config: MetaTrainConfig) -> None:
    """Every check `meta_train` makes of `config.init` (family, robot, observation, widths, learned
    step sizes against the learner's), so that a script can make them before writing a run."""
    if config.init is None:
        return
    init = load_init(config, get_family(config.family).robot)
    if config.meta_sgd and "inner_lrs" in init.extra_state:
        MAMLTRPO(init.policy, config.maml_config()).load_step_sizes(init.extra_state["inner_lrs"])


def init_record(config: MetaTrainConfig, init: Checkpoint) -> dict:
    """What a run started from `init` records of it: file name, policy hash and the budget it holds."""
    wall_time_s, env_steps = spent_budget(init.metadata)
    return {"path": os.path.basename(config.init or ""), "policy_sha256": policy_sha256(init.policy),
            "budget": {"wall_time_s": wall_time_s, "env_steps": env_steps}}


def iteration_seed(seed: int, iteration: int, purpose: int) -> int:
    """A seed for one purpose (tasks, sampling before/after adaptation) of one iteration."""
    return int(np.random.SeedSequence([seed, iteration, purpose]).generate_state(1)[0])


def meta_train(config: MetaTrainConfig, run: RunDir, progress: bool = True,
               sampler: Sampler | None = None) -> GaussianMLPPolicy:
    """Run (or resume) meta-training into `run`; returns the meta-learned policy.

    `sampler`: where episodes come from (e.g. `agents.runs.ray_sampler.RaySampler`; the caller
    closes it); default a local `Sampler` of the config's robot, horizon and threads.
    """
    # Small MLPs run fastest single-threaded; two torch threads fight the sampler threads for 2 cores.
    torch.set_num_threads(1)
    family = get_family(config.family)
    own_sampler = sampler is None
    if sampler is None:
        sampler = Sampler(family.robot, config.horizon, height_scan=config.height_scan, num_threads=config.num_threads)
    elif (sampler.robot, sampler.horizon, sampler.height_scan) != (family.robot, config.horizon, config.height_scan):
        raise ValueError(f"sampler: collects {sampler.robot} episodes of {sampler.horizon} steps (height_scan="
                         f"{sampler.height_scan}), expected {family.robot}, {config.horizon}, {config.height_scan}")
    torch.manual_seed(config.seed)
    policy = GaussianMLPPolicy(sampler.obs_dim, sampler.act_dim, config.hidden_sizes)
    learner = MAMLTRPO(policy, config.maml_config())
    start, wall_time_s, env_steps = 0, 0.0, 0
    observation, code = observation_layout(family.robot, config.height_scan), provenance()
    resume_from = latest_checkpoint(run) if run.resumed else None
    init = None
    if config.init is not None:
        init = load_init(config, family.robot)
        origin = init_record(config, init)
        if resume_from is None:
            policy.load_state_dict(init.policy.state_dict())
            if config.meta_sgd and "inner_lrs" in init.extra_state:
                learner.load_step_sizes(init.extra_state["inner_lrs"])
            # The run's budget includes what made its starting point.
            wall_time_s, env_steps = origin["budget"]["wall_time_s"], origin["budget"]["env_steps"]
    if resume_from is None and config.init_step_scales is not None:
        learner.scale_step_sizes(config.init_step_scales)
    if resume_from is not None:
        checkpoint = load_checkpoint(resume_from, expected_robot=family.robot, expected_obs_dim=sampler.obs_dim,
                                     expected_act_dim=sampler.act_dim)
        policy.load_state_dict(checkpoint.policy.state_dict())
        if learner.optimizer is not None and checkpoint.optimizer_state is not None:
            learner.optimizer.load_state_dict(checkpoint.optimizer_state)
        if config.meta_sgd:
            learner.load_step_sizes(checkpoint.extra_state["inner_lrs"])
        start = checkpoint.iteration
        wall_time_s, env_steps = spent_budget(checkpoint.metadata)
        if init is not None and checkpoint.metadata.get("init", {}).get("policy_sha256") != origin["policy_sha256"]:
            raise ValueError(f"init: {config.init} holds other parameters than the policy this run started from; "
                             "restore it or start afresh")
    log = MetricsLog(run.metrics, "meta_train", resume_step=start if run.resumed else None)
    writer = SummaryWriter(str(run.tb))
    bar = tqdm(range(start, config.iterations), initial=start, total=config.iterations, disable=not progress,
               desc=f"meta-train {config.family}", unit="it")
    for iteration in bar:
        record = meta_iteration(learner, sampler, config, iteration)
        wall_time_s += record["time_iteration"]
        env_steps += record["env_steps"]
        log.append(record)
        for key, value in record.items():
            if isinstance(value, int | float) and key != "step":
                writer.add_scalar(f"meta/{key}", value, iteration + 1)
        bar.set_postfix(pre=f"{record['pre_adapt_return']:.1f}", post=f"{record['post_adapt_return']:.1f}",
                        sps=f"{record['steps_per_s']:.0f}")
        if (iteration + 1) % config.checkpoint_every == 0 or iteration + 1 == config.iterations:
            metadata = training_metadata("maml", config.family, config_to_dict(config), code, observation,
                                         wall_time_s, env_steps)
            if init is not None:
                metadata["init"] = origin
            save_step_checkpoint(run, iteration + 1, policy=policy, robot=family.robot,
                                 optimizer=learner.optimizer, extra_state=learned_step_sizes(learner),
                                 metadata=metadata)
    writer.close()
    if own_sampler:
        sampler.close()
    return policy


def meta_iteration(learner: MAMLTRPO, sampler: Sampler, config: MetaTrainConfig, iteration: int) -> dict:
    """One meta-iteration; returns its figures (returns, KL, step, times, steps/s)."""
    t0 = time.perf_counter()
    tasks = TaskDistribution(config.family, iteration_seed(config.seed, iteration, 0)).sample(config.meta_batch_size)
    steps_before = sampler.env_steps
    # Inner step k adapts on episodes sampled with the parameters after step k - 1 (the MAML paper's
    # protocol, and the evaluation's); step 0's seed and the valid episodes' keep their purposes 1
    # and 2, so one-step runs are unchanged.
    train_sets, adapted, time_sample, time_adapt = [], None, 0.0, 0.0
    for k in range(config.num_inner_steps):
        started = time.perf_counter()
        train_sets.append(sampler.sample(learner.policy, tasks, config.episodes_per_task, params=adapted,
                                         seed=iteration_seed(config.seed, iteration, 1 if k == 0 else 2 + k)))
        sampled_at = time.perf_counter()
        with torch_threads(config.update_threads):
            adapted = learner.adapt_tasks(train_sets)
        time_sample += sampled_at - started
        time_adapt += time.perf_counter() - sampled_at
    t2 = time.perf_counter()
    valid = sampler.sample(learner.policy, tasks, config.episodes_per_task, params=adapted,
                           seed=iteration_seed(config.seed, iteration, 2))
    t3 = time.perf_counter()
    time_sample += t3 - t2
    with torch_threads(config.update_threads):
        per_task = [[step_set[i] for step_set in train_sets] for i in range(len(tasks))]
        step = learner.step(list(zip(per_task, valid, strict=True)))
    t4 = time.perf_counter()
    sampled = sampler.env_steps - steps_before
    return {
        "step": iteration + 1,
        **step.to_dict(),
        "env_steps": sampled,
        "steps_per_s": sampled / max(time_sample, 1e-9),
        "time_sample": time_sample,
        "time_adapt": time_adapt,
        "time_meta_update": t4 - t3,
        "time_iteration": t4 - t0,
    }
