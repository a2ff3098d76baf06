"""MAML's outer objective for many tasks at once, and the curvature of its KL.

`outer_objective` adapts the meta-parameters on each task's train episodes (`agents.meta.inner`)
and evaluates the adapted policies on the valid ones, every task a batch row
(`agents.meta.task_batch.TaskBatch`); `outer_objective_per_task` is the per-task loop it is tested
against. `kl_curvature_outputs` and `chunked_fisher_product` give the outer KL's Hessian in
Gauss-Newton form (`J^T M J`), for the trust region of `agents.meta.maml.MAMLTRPO`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch.distributions import Independent, Normal, kl_divergence
from torch.func import vmap

from agents.meta.inner import (
    InnerLR,
    adapt_k_steps,
    adapt_tasks,
    detach_distribution,
    masked_mean,
    split_inner_lrs,
    task_distribution,
    task_means,
)
from agents.meta.task_batch import TaskBatch
from agents.meta.trpo import gauss_newton_vector_product
from agents.policy import GaussianMLPPolicy, Params


@dataclass
class OuterResult:
    """The outer objective at some meta-parameters.

    Attributes:
        loss: mean over tasks of the surrogate loss on the valid episodes.
        kl: mean over tasks of the mean KL(old || adapted) on the valid observations.
        adapted: every task's adapted parameters, stacked (`[N, ...]`, attached to the meta-parameters).
        distribution: the adapted policies on the valid observations, batch shape `[N, T, B]`.
    """

    loss: torch.Tensor
    kl: torch.Tensor
    adapted: Params
    distribution: Independent


def outer_objective(
    policy: GaussianMLPPolicy,
    params: Mapping[str, torch.Tensor],
    tasks: TaskBatch,
    inner_lr: InnerLR,
    num_steps: int = 1,
    first_order: bool = False,
    old_distribution: Independent | None = None,
    estimator: str = "score",
) -> OuterResult:
    """MAML's outer loss for all tasks at once: adapt `params` on each task's train episodes,
    evaluate on its valid ones.

    Per task: `loss = -mean_real_steps(exp(logp_adapted - logp_old) * advantage)` and
    `kl = mean_real_steps(KL(old || adapted))`, both averaged over tasks. `old_distribution` is the
    (detached) sampling policies on the valid observations, batch shape `[N, T, B]`; None means the
    adapted policies themselves, detached (ratio 1 and KL 0 in value, with the right gradient and
    Hessian). `outer_objective_per_task` computes the same task by task (the reference).

    Args:
        policy: the policy architecture.
        params: meta-parameters (the graph runs back to them).
        tasks: prepared tasks.
        inner_lr: inner SGD step size.
        num_steps: inner steps, all on the task's train episodes.
        first_order: FOMAML adaptation (no second-order terms).
        old_distribution: the sampling policies on the valid observations.
        estimator: the inner surrogate (`surrogate_weights`): "score", "dice" or "lvc".

    Learned step sizes (Meta-SGD) may travel in `params` under `LR_PREFIX` (`split_inner_lrs`).
    """
    params, inner_lr = split_inner_lrs(params, inner_lr)
    adapted = adapt_tasks(policy, params, tasks.train, tasks.train_advantages, inner_lr, num_steps, first_order,
                          estimator)
    valid = tasks.valid
    dist = task_distribution(policy, adapted, valid.observations)
    old = detach_distribution(dist) if old_distribution is None else old_distribution
    ratio = torch.exp(dist.log_prob(valid.actions) - old.log_prob(valid.actions).detach())
    loss = -task_means(ratio * tasks.valid_advantages, valid.mask).mean()
    kl = task_means(kl_divergence(old, dist), valid.mask).mean()
    return OuterResult(loss, kl, adapted, dist)


def outer_objective_per_task(
    policy: GaussianMLPPolicy,
    params: Mapping[str, torch.Tensor],
    tasks: TaskBatch,
    inner_lr: InnerLR,
    num_steps: int = 1,
    first_order: bool = False,
    old_distribution: Independent | None = None,
    estimator: str = "score",
) -> OuterResult:
    """`outer_objective` computed task by task in a Python loop: the reference that the batched
    objective is tested and benchmarked against (`MAMLConfig.reference_update=True`). Same arguments."""
    params, inner_lr = split_inner_lrs(params, inner_lr)
    losses, kls, adapted_all, locs, scales = [], [], [], [], []
    for i in range(tasks.num_tasks):
        train, valid, train_advantages, valid_advantages = tasks.task(i)
        if len(train) == 1:
            adapted = adapt_k_steps(policy, params, train[0], inner_lr, num_steps, first_order, train_advantages[0],
                                    estimator=estimator)
        else:
            adapted = adapt_k_steps(policy, params, train, inner_lr, num_steps, first_order, train_advantages,
                                    estimator=estimator)
        dist = policy(valid.observations, adapted)
        old = detach_distribution(dist) if old_distribution is None else _distribution_at(old_distribution, i)
        ratio = torch.exp(dist.log_prob(valid.actions) - old.log_prob(valid.actions).detach())
        losses.append(-masked_mean(ratio * valid_advantages, valid.mask))
        kls.append(masked_mean(kl_divergence(old, dist), valid.mask))
        adapted_all.append(adapted)
        locs.append(dist.base_dist.loc)
        scales.append(dist.base_dist.scale)
    stacked = {name: torch.stack([a[name] for a in adapted_all]) for name in adapted_all[0]}
    dist = Independent(Normal(torch.stack(locs), torch.stack(scales)), 1)
    return OuterResult(torch.stack(losses).mean(), torch.stack(kls).mean(), stacked, dist)


def kl_curvature_outputs(
    policy: GaussianMLPPolicy,
    params: Mapping[str, torch.Tensor],
    tasks: TaskBatch,
    inner_lr: InnerLR,
    num_steps: int = 1,
    first_order: bool = False,
    estimator: str = "score",
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The adapted policies' outputs on the valid observations with the outer KL's curvature in them.

    For `gauss_newton_vector_product`: the outer objective's mean KL, `mean_tasks
    mean_real_steps KL(old || N(mean, std))`, has at `old` the diagonal Hessian `1 / std^2` in
    each mean and `2 / std^2` in each (state-independent) std, weighted by each step's share of its
    task's mean and by 1/N. So `J^T M J` with these is the Hessian of `outer_objective(...).kl`
    at the old policy (its Fisher through the adaptation), without a double backward through it.
    """
    params, inner_lr = split_inner_lrs(params, inner_lr)
    adapted = adapt_tasks(policy, params, tasks.train, tasks.train_advantages, inner_lr, num_steps, first_order,
                          estimator)
    mean = vmap(policy.mean)(tasks.valid.observations, adapted)
    std = vmap(policy.std)(adapted)
    mask = tasks.valid.mask.to(mean.dtype)
    n_tasks = mask.shape[0]
    steps = mask.sum((1, 2))
    share = mask / steps.clamp(min=1.0).view(-1, 1, 1) / n_tasks
    variance = std.detach() ** 2
    mean_curvature = share.unsqueeze(-1) / variance.view(n_tasks, *[1] * (mean.dim() - 2), -1)
    std_curvature = 2.0 / variance * (steps > 0).to(mean.dtype).unsqueeze(-1) / n_tasks
    return [(mean, mean_curvature), (std, std_curvature)]


#: Valid steps per Fisher-vector-product chunk. The products' tensors are [tasks, steps, 64]; past
#: this size they outgrow the processor's caches: on 2 cores one product over 40 tasks x 20 episodes
#: x 200 steps took 0.67-0.77 s at once and 0.34-0.37 s in four chunks of 10 tasks; over 20 x 10
#: tasks (one chunk) chunking changed nothing.
FISHER_CHUNK_STEPS = 40_000


def chunked_fisher_product(
    curvature_outputs: Callable[[Params, TaskBatch], Sequence[tuple[torch.Tensor, torch.Tensor]]],
    params: Mapping[str, torch.Tensor],
    tasks: TaskBatch,
    damping: float = 0.0,
    max_steps: int = FISHER_CHUNK_STEPS,
) -> Callable[[torch.Tensor], torch.Tensor]:
    """`v -> (F + damping * I) v`, F the Gauss-Newton matrix of `curvature_outputs(params, tasks)`
    (`kl_curvature_outputs`: the outer KL's Hessian), computed in chunks of tasks
    (`TaskBatch.chunks`): the KL is a mean over tasks, so F is the chunks' own matrices weighted by
    their share of the tasks."""
    chunks = tasks.chunks(max_steps)
    products = [gauss_newton_vector_product(lambda p, chunk=chunk: curvature_outputs(p, chunk), params)
                for chunk in chunks]
    weights = [chunk.num_tasks / tasks.num_tasks for chunk in chunks]

    def product(v: torch.Tensor) -> torch.Tensor:
        total = damping * v
        for weight, chunk_product in zip(weights, products, strict=True):
            total = total + weight * chunk_product(v)
        return total

    return product


def _distribution_at(dist: Independent, i: int) -> Independent:
    return Independent(Normal(dist.base_dist.loc[i], dist.base_dist.scale[i]), dist.reinterpreted_batch_ndims)
