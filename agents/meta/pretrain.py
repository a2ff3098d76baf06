"""The multi-task pretrained baseline of the MAML paper: one policy trained with TRPO on many tasks.

No adaptation and no goal in the observation: each iteration draws `tasks_per_iteration` training
tasks of a family, samples episodes of all of them with the current policy, and takes one TRPO
step (natural gradient scaled to a KL bound, then a backtracking line search) on the surrogate
`-mean(ratio * advantage)` over every real step of every task. Advantages come from a linear
baseline fitted per task (`agents.meta.returns.baseline_advantages`), so each task's advantages are
standardised on their own. Every random draw of iteration i comes from seeds derived from
(seed, i), so a resumed run continues exactly as an uninterrupted one would.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.distributions import kl_divergence
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from agents.episodes import Episodes
from agents.meta.evaluation import random_init
from agents.meta.inner import detach_distribution, masked_mean
from agents.meta.meta_train import iteration_seed
from agents.meta.returns import baseline_advantages
from agents.meta.trpo import conjugate_gradient, flatten_params, hessian_vector_product, line_search
from agents.policy import GaussianMLPPolicy, Params
from agents.runs.atomic import PathLike
from agents.runs.checkpoint import load_checkpoint, save_checkpoint
from agents.runs.config import config_to_dict
from agents.runs.layout import observation_layout
from agents.runs.provenance import provenance, spent_budget, training_metadata
from agents.runs.rundir import MetricsLog, RunDir, latest_checkpoint, save_step_checkpoint
from agents.sampler import Sampler
from envs.tasks import TaskDistribution, get_family, privileged_names

CHECKPOINT_KIND = "pretrained"


@dataclass
class PretrainConfig:
    """Everything a multi-task pretraining run depends on."""

    family: str = "cheetah_velocity"  # task family whose training split is pretrained on (envs.tasks.FAMILIES)
    iterations: int = 100  # TRPO iterations
    tasks_per_iteration: int = 20  # training tasks drawn per iteration
    episodes_per_task: int = 10  # episodes sampled per task per iteration
    horizon: int = 200  # steps per episode
    hidden_sizes: tuple[int, ...] = (64, 64)  # policy MLP widths
    height_scan: bool = False  # give the policy the terrain heights ahead
    # Give the policy the task's hidden factors (envs.tasks.privileged_names): a teacher for the
    # context adapter (agents.meta.context, RMA's phase 1), not a policy that can be deployed alone.
    privileged_in_obs: bool = False
    max_kl: float = 0.01  # TRPO trust region on the mean KL(old || new)
    cg_iters: int = 10  # conjugate-gradient iterations
    cg_damping: float = 1e-5  # damping added to the Fisher-vector product
    ls_backtrack_ratio: float = 0.5  # line-search shrink factor
    ls_max_backtracks: int = 15  # line-search candidates
    gamma: float = 0.99  # discount
    gae_lambda: float = 1.0  # GAE lambda (1: returns minus linear baseline)
    normalize_advantages: bool = True  # standardise each task's advantages over its real steps
    seed: int = 0  # seeds tasks, env resets, action noise and the initial policy
    checkpoint_every: int = 5  # iterations between checkpoints (with a run directory)
    num_threads: int | None = None  # sampler threads (default: all cores; episodes do not depend on it)

    def __post_init__(self) -> None:
        get_family(self.family)
        for name in ("iterations", "tasks_per_iteration", "episodes_per_task", "horizon", "cg_iters",
                     "ls_max_backtracks", "checkpoint_every"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if not self.hidden_sizes or min(self.hidden_sizes) < 1:
            raise ValueError(f"hidden_sizes must be positive widths, got {self.hidden_sizes}")
        if not self.max_kl > 0:
            raise ValueError(f"max_kl must be > 0, got {self.max_kl}")
        if not self.cg_damping >= 0:
            raise ValueError(f"cg_damping must be >= 0, got {self.cg_damping}")
        if not 0 < self.ls_backtrack_ratio < 1:
            raise ValueError(f"ls_backtrack_ratio must be in (0, 1), got {self.ls_backtrack_ratio}")
        for name in ("gamma", "gae_lambda"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")


def concat_episodes(episodes: Sequence[Episodes]) -> Episodes:
    """One `Episodes` holding the episodes of every element side by side (same horizon required)."""
    horizons = {e.horizon for e in episodes}
    if len(horizons) != 1:
        raise ValueError(f"episodes must share one horizon to be concatenated, got {sorted(horizons)}")
    return Episodes(
        observations=torch.cat([e.observations for e in episodes], dim=1),
        actions=torch.cat([e.actions for e in episodes], dim=1),
        rewards=torch.cat([e.rewards for e in episodes], dim=1),
        mask=torch.cat([e.mask for e in episodes], dim=1),
        terminated=torch.cat([e.terminated for e in episodes]),
    )


def trpo_step(policy: GaussianMLPPolicy, episodes: Sequence[Episodes], config: PretrainConfig) -> dict[str, float]:
    """One TRPO update of `policy` (in place) on episodes sampled with its current parameters.

    Args:
        policy: the policy; its parameters are overwritten when the line search accepts a step.
        episodes: one `Episodes` per task, all sampled with `policy`'s current parameters.
        config: the trust-region, CG, line-search and advantage settings.

    Returns the figures of the step: loss_before, loss_after, kl (at the accepted parameters, 0
    when rejected), step_accepted, step_fraction, grad_norm.
    """
    advantages = torch.cat(
        [baseline_advantages(e, config.gamma, config.gae_lambda, config.normalize_advantages) for e in episodes], dim=1
    )
    batch = concat_episodes(episodes)
    with torch.no_grad():
        old = detach_distribution(policy(batch.observations))
        old_log_prob = old.log_prob(batch.actions)

    def loss_and_kl(params: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        dist = policy(batch.observations, params)
        ratio = torch.exp(dist.log_prob(batch.actions) - old_log_prob)
        loss = -masked_mean(ratio * advantages, batch.mask)
        return loss, masked_mean(kl_divergence(old, dist), batch.mask)

    params: Params = {name: p.detach().requires_grad_(True) for name, p in policy.named_parameters()}
    loss, _ = loss_and_kl(params)
    flat_grad = flatten_params(dict(zip(params, torch.autograd.grad(loss, list(params.values())), strict=True)))
    loss_before = loss.item()
    record = {"loss_before": loss_before, "loss_after": loss_before, "kl": 0.0, "step_accepted": False,
              "step_fraction": 0.0, "grad_norm": float(flat_grad.norm())}

    fvp = hessian_vector_product(lambda p: loss_and_kl(p)[1], params, config.cg_damping)
    step_dir, fisher_step = conjugate_gradient(fvp, flat_grad, iters=config.cg_iters)
    # Quadratic model of the KL along the step: 0.5 s^T F s; scale the step to reach max_kl.
    shs = 0.5 * (step_dir @ fisher_step).item()
    if not (shs > 0 and torch.isfinite(step_dir).all()):
        return record
    full_step = -step_dir * (config.max_kl / shs) ** 0.5

    def evaluate(candidate: Params) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.no_grad():
            return loss_and_kl(candidate)

    new_params, result = line_search(params, full_step, evaluate, config.max_kl, loss_before,
                                     config.ls_backtrack_ratio, config.ls_max_backtracks)
    if result.accepted:
        with torch.no_grad():
            for name, p in policy.named_parameters():
                p.copy_(new_params[name])
    record.update(loss_after=result.loss, kl=result.kl, step_accepted=result.accepted,
                  step_fraction=result.step_fraction)
    return record


def pretrain_iteration(policy: GaussianMLPPolicy, sampler: Sampler, config: PretrainConfig, iteration: int) -> dict:
    """One iteration (draw tasks, sample, TRPO step); returns its figures (returns, loss, KL, times)."""
    t0 = time.perf_counter()
    tasks = TaskDistribution(config.family, iteration_seed(config.seed, iteration, 0)).sample(
        config.tasks_per_iteration, split="train")
    steps_before = sampler.env_steps
    episodes = sampler.sample(policy, tasks, config.episodes_per_task, seed=iteration_seed(config.seed, iteration, 1))
    t1 = time.perf_counter()
    step = trpo_step(policy, episodes, config)
    t2 = time.perf_counter()
    sampled = sampler.env_steps - steps_before
    return {
        "step": iteration + 1,
        "return_mean": float(torch.cat([e.total_returns() for e in episodes]).mean()),
        **step,
        "env_steps": sampled,
        "steps_per_s": sampled / max(t1 - t0, 1e-9),
        "time_sample": t1 - t0,
        "time_update": t2 - t1,
        "time_iteration": t2 - t0,
    }


def checkpoint_metadata(config: PretrainConfig, wall_time_s: float = 0.0, env_steps: int = 0,
                        code: dict | None = None) -> dict:
    """The metadata saved with a pretrained checkpoint: kind "pretrained", family, config, code
    (`provenance()` at the run's start; now if None), observation layout and the budget spent
    (`agents.runs.provenance.training_metadata`)."""
    observation = observation_layout(get_family(config.family).robot, config.height_scan,
                                     privileged_in_obs=config.privileged_in_obs)
    metadata = training_metadata(CHECKPOINT_KIND, config.family, config_to_dict(config),
                                 provenance() if code is None else code, observation, wall_time_s, env_steps)
    if config.privileged_in_obs:  # what the teacher's extra inputs mean, checked by the context adapter
        metadata["privileged_names"] = list(privileged_names())
    return metadata


def save_pretrained(path: PathLike, policy: GaussianMLPPolicy, config: PretrainConfig, iteration: int,
                    wall_time_s: float = 0.0, env_steps: int = 0) -> Path:
    """Save `policy` as a standard checkpoint (metadata kind "pretrained") at `path`, atomically."""
    return save_checkpoint(path, policy=policy, robot=get_family(config.family).robot, iteration=iteration,
                           metadata=checkpoint_metadata(config, wall_time_s, env_steps))


def pretrain(config: PretrainConfig, run: RunDir | None = None, progress: bool = True) -> GaussianMLPPolicy:
    """Train (or, from `run`'s last checkpoint, resume) the multi-task policy; returns it.

    Args:
        config: the run's settings.
        run: a run directory for metrics (metrics/pretrain.jsonl/.csv), TensorBoard events and
            checkpoints (kind "pretrained"); None trains in memory only.
        progress: show a progress bar.

    The initial policy is `random_init(obs_dim, act_dim, hidden_sizes, seed)`, the same
    initialisation meta-training starts from for that seed.
    """
    family = get_family(config.family)
    sampler = Sampler(family.robot, config.horizon, height_scan=config.height_scan, num_threads=config.num_threads,
                      privileged_in_obs=config.privileged_in_obs)
    policy = random_init(sampler.obs_dim, sampler.act_dim, config.hidden_sizes, config.seed)
    start, wall_time_s, code = 0, 0.0, provenance()
    resume_from = latest_checkpoint(run) if run is not None and run.resumed else None
    if resume_from is not None:
        checkpoint = load_checkpoint(resume_from, expected_robot=family.robot, expected_obs_dim=sampler.obs_dim,
                                     expected_act_dim=sampler.act_dim)
        policy.load_state_dict(checkpoint.policy.state_dict())
        start = checkpoint.iteration
        wall_time_s, sampler.env_steps = spent_budget(checkpoint.metadata)
    log = writer = None
    if run is not None:
        log = MetricsLog(run.metrics, "pretrain", resume_step=start if run.resumed else None)
        writer = SummaryWriter(str(run.tb))
    bar = tqdm(range(start, config.iterations), initial=start, total=config.iterations, disable=not progress,
               desc=f"pretrain {config.family}", unit="it")
    try:
        for iteration in bar:
            started = time.perf_counter()
            record = pretrain_iteration(policy, sampler, config, iteration)
            wall_time_s += time.perf_counter() - started
            bar.set_postfix(ret=f"{record['return_mean']:.1f}", kl=f"{record['kl']:.4f}")
            if run is None:
                continue
            log.append(record)
            for key, value in record.items():
                if isinstance(value, int | float) and key != "step":
                    writer.add_scalar(f"pretrain/{key}", value, iteration + 1)
            if (iteration + 1) % config.checkpoint_every == 0 or iteration + 1 == config.iterations:
                save_step_checkpoint(run, iteration + 1, policy=policy, robot=family.robot,
                                     metadata=checkpoint_metadata(config, wall_time_s, sampler.env_steps, code))
    finally:
        if writer is not None:
            writer.close()
        sampler.close()
    return policy
