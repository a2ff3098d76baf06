"""Phase 2 of the context adapter: fit the adapter to the teacher's extrinsics embedding.

Each iteration draws training tasks, samples episodes in which the *student* acts (the teacher's
network fed by the adapter's current estimate: the states the deployed policy will meet, as in
RMA), builds every step's history window and regresses the teacher's embedding `W_e e` of the
task's true factors with Adam on the mean squared error. The teacher stays frozen. Every random
draw of iteration i comes from seeds derived from (seed, i), so a resumed run continues exactly as
an uninterrupted one would.

Checkpoints are the one format (`agents.runs.checkpoint`): the teacher is the policy, the adapter
and its config are in `extra_state`, the metadata's kind is "context".
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from agents.meta.context import ContextAdapter, ContextPolicy, history_windows
from agents.meta.meta_train import iteration_seed
from agents.runs.checkpoint import Checkpoint, load_checkpoint, policy_sha256
from agents.runs.config import config_to_dict
from agents.runs.layout import check_layout, observation_layout
from agents.runs.provenance import provenance, spent_budget, training_metadata
from agents.runs.rundir import MetricsLog, RunDir, latest_checkpoint, save_step_checkpoint
from agents.sampler import Sampler
from envs.tasks import TaskDistribution, get_family, privileged_factors, privileged_names

CHECKPOINT_KIND = "context"


@dataclass
class ContextConfig:
    """Everything a phase-2 (adapter) run depends on."""

    family: str = "cheetah_terrain"  # task family whose training split the adapter is fitted on
    teacher: str = ""  # checkpoint of the phase-1 teacher (scripts/pretrain.py with privileged_in_obs: true)
    history: int = 20  # transitions (s, a, s') per window
    hidden_sizes: tuple[int, ...] = (256, 128)  # adapter MLP widths
    iterations: int = 100  # sample-and-fit iterations
    tasks_per_iteration: int = 20  # training tasks drawn per iteration
    episodes_per_task: int = 2  # episodes the student acts in per task per iteration
    horizon: int = 200  # steps per episode
    epochs: int = 4  # passes over an iteration's windows
    minibatch_size: int = 1024  # windows per Adam step
    lr: float = 1e-3  # Adam learning rate
    seed: int = 0  # seeds tasks, env resets, action noise, the adapter's init and the minibatches
    checkpoint_every: int = 5  # iterations between checkpoints
    num_threads: int | None = None  # sampler threads (episodes do not depend on it)

    def __post_init__(self) -> None:
        get_family(self.family)
        for name in ("history", "iterations", "tasks_per_iteration", "episodes_per_task", "horizon", "epochs",
                     "minibatch_size", "checkpoint_every"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if not self.hidden_sizes or min(self.hidden_sizes) < 1:
            raise ValueError(f"hidden_sizes must be positive widths, got {self.hidden_sizes}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")


def load_teacher(path: str | Path, family: str) -> Checkpoint:
    """The phase-1 teacher at `path`, checked for the family: its robot, a recorded observation with
    the privileged factors, and today's factor names. Raises one ValueError naming the mismatch."""
    if not str(path):
        raise ValueError("teacher: give the phase-1 checkpoint (scripts/pretrain.py with privileged_in_obs: true)")
    robot = get_family(family).robot
    teacher = load_checkpoint(path, expected_robot=robot)
    check_layout(teacher, "teacher")
    observation = teacher.metadata.get("observation", {})
    if not observation.get("privileged_in_obs"):
        raise ValueError(f"teacher: {path} was not trained with the privileged factors (privileged_in_obs: true)")
    recorded = teacher.metadata.get("privileged_names", list(privileged_names()))
    if list(recorded) != list(privileged_names()):
        raise ValueError(f"teacher: trained on privileged factors {list(recorded)}, "
                         f"today's are {list(privileged_names())}")
    return teacher


def load_context_policy(path: str | Path, family: str | None = None) -> ContextPolicy:
    """A shipped or trained context checkpoint as a deployable `ContextPolicy`.

    With `family`, the checkpoint must be for that family's robot, and trained on a family with the
    same privileged factors and observation; any mismatch is one ValueError naming it.
    """
    checkpoint = load_checkpoint(path)
    metadata = checkpoint.metadata
    if metadata.get("kind") != CHECKPOINT_KIND or "adapter" not in checkpoint.extra_state:
        raise ValueError(f"context checkpoint: {path} is a {metadata.get('kind', 'unknown')!r} checkpoint, "
                         f"not a context adapter (scripts/train_context.py)")
    check_layout(checkpoint, "context checkpoint")
    names = list(metadata.get("privileged_names", []))
    if names != list(privileged_names()):
        raise ValueError(f"context checkpoint: its teacher saw the privileged factors {names}, today's are "
                         f"{list(privileged_names())}")
    if family is not None and get_family(family).robot != checkpoint.robot:
        raise ValueError(f"context checkpoint: trained for the {checkpoint.robot} ({metadata.get('family')}), "
                         f"family {family!r} is for the {get_family(family).robot}")
    state = checkpoint.extra_state
    adapter = ContextAdapter(**state["adapter_config"])
    adapter.load_state_dict(state["adapter"])
    return ContextPolicy(checkpoint.policy, adapter, len(names))


def _metadata(config: ContextConfig, teacher: Checkpoint, code: dict, wall_time_s: float, env_steps: int) -> dict:
    robot = get_family(config.family).robot
    scan = bool(teacher.metadata["observation"]["height_scan"])
    metadata = training_metadata(CHECKPOINT_KIND, config.family, config_to_dict(config), code,
                                 observation_layout(robot, scan, privileged_in_obs=True), wall_time_s, env_steps)
    metadata["privileged_names"] = list(privileged_names())
    metadata["deployed_observation"] = observation_layout(robot, scan)  # what the student sees
    metadata["teacher"] = {"path": Path(config.teacher).name, "budget": teacher.metadata.get("budget", {}),
                           "policy_sha256": policy_sha256(teacher.policy)}
    return metadata


def fit_iteration(student: ContextPolicy, optimizer: torch.optim.Optimizer, sampler: Sampler,
                  config: ContextConfig, iteration: int) -> dict:
    """One iteration: sample with the student, regress the embedding; returns its figures."""
    t0 = time.perf_counter()
    tasks = TaskDistribution(config.family, iteration_seed(config.seed, iteration, 0)).sample(
        config.tasks_per_iteration, split="train")
    steps_before = sampler.env_steps
    episodes = sampler.sample(student, tasks, config.episodes_per_task, seed=iteration_seed(config.seed, iteration, 1))
    t1 = time.perf_counter()
    windows, targets = [], []
    with torch.no_grad():
        for task, batch in zip(tasks, episodes, strict=True):
            real = batch.mask.bool()
            windows.append(history_windows(batch.observations, batch.actions, batch.mask, config.history)[real])
            target = student.extrinsics(torch.as_tensor(privileged_factors(task), dtype=torch.float32))
            targets.append(target.expand(int(real.sum()), -1))
    windows_all, targets_all = torch.cat(windows), torch.cat(targets)
    if iteration == 0:
        student.adapter.set_normalizer(windows_all)
    generator = torch.Generator().manual_seed(iteration_seed(config.seed, iteration, 2))
    losses = []
    for _ in range(config.epochs):
        order = torch.randperm(len(windows_all), generator=generator)
        for start in range(0, len(order), config.minibatch_size):
            rows = order[start:start + config.minibatch_size]
            loss = torch.nn.functional.mse_loss(student.adapter(windows_all[rows]), targets_all[rows])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
    t2 = time.perf_counter()
    sampled = sampler.env_steps - steps_before
    return {
        "step": iteration + 1,
        "return_mean": float(torch.cat([e.total_returns() for e in episodes]).mean()),
        "loss_first": losses[0],  # the first minibatch's, before this iteration's fit (fresh episodes)
        "loss_last": losses[-1],
        "target_variance": float(targets_all.var(dim=0).mean()),  # the loss of always guessing the mean
        "env_steps": sampled,
        "time_sample": t1 - t0,
        "time_fit": t2 - t1,
        "time_iteration": t2 - t0,
    }


def train_context(config: ContextConfig, run: RunDir, progress: bool = True) -> ContextPolicy:
    """Fit (or, from `run`'s last checkpoint, resume fitting) the adapter; returns the student."""
    torch.set_num_threads(1)  # small MLPs; torch threads would fight the sampler's for the cores
    family = get_family(config.family)
    teacher = load_teacher(config.teacher, config.family)
    scan = bool(teacher.metadata["observation"]["height_scan"])
    sampler = Sampler(family.robot, config.horizon, height_scan=scan, num_threads=config.num_threads)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        adapter = ContextAdapter(sampler.obs_dim, sampler.act_dim, config.history, teacher.policy.hidden_sizes[0],
                                 config.hidden_sizes)
    student = ContextPolicy(teacher.policy.requires_grad_(False), adapter, len(privileged_names()))
    optimizer = torch.optim.Adam(adapter.parameters(), lr=config.lr)
    start, wall_time_s, code = 0, 0.0, provenance()
    resume_from = latest_checkpoint(run) if run.resumed else None
    if resume_from is not None:
        checkpoint = load_checkpoint(resume_from, expected_robot=family.robot)
        if checkpoint.metadata.get("teacher", {}).get("policy_sha256") != policy_sha256(teacher.policy):
            raise ValueError(f"teacher: {config.teacher} holds other parameters than the teacher this run started "
                             "with (the adapter regresses that teacher's embedding); restore it or start afresh")
        adapter.load_state_dict(checkpoint.extra_state["adapter"])
        optimizer.load_state_dict(checkpoint.optimizer_state)
        start = checkpoint.iteration
        wall_time_s, sampler.env_steps = spent_budget(checkpoint.metadata)
    log = MetricsLog(run.metrics, "context", resume_step=start if run.resumed else None)
    writer = SummaryWriter(str(run.tb))
    bar = tqdm(range(start, config.iterations), initial=start, total=config.iterations, disable=not progress,
               desc=f"context {config.family}", unit="it")
    try:
        for iteration in bar:
            record = fit_iteration(student, optimizer, sampler, config, iteration)
            wall_time_s += record["time_iteration"]
            log.append(record)
            for key, value in record.items():
                if isinstance(value, int | float) and key != "step":
                    writer.add_scalar(f"context/{key}", value, iteration + 1)
            bar.set_postfix(ret=f"{record['return_mean']:.1f}", loss=f"{record['loss_first']:.4f}",
                            var=f"{record['target_variance']:.4f}")
            if (iteration + 1) % config.checkpoint_every == 0 or iteration + 1 == config.iterations:
                save_step_checkpoint(run, iteration + 1, policy=teacher.policy, robot=family.robot,
                                     optimizer=optimizer,
                                     extra_state={"adapter": adapter.state_dict(), "adapter_config": adapter.config()},
                                     metadata=_metadata(config, teacher, code, wall_time_s, sampler.env_steps))
    finally:
        writer.close()
        sampler.close()
    return student

