"""MAML for policy-gradient RL (Finn et al. 2017): `adapt()` and the MAML-TRPO meta-update.

The meta-learning API is learn2learn's two verbs without the dependency: the "clone" is a
name -> tensor dict of parameters, `adapt()` returns a new dict one SGD step away (keeping the
graph for second-order meta-gradients), and the policy runs any dict through
`torch.func.functional_call` (`policy(obs, params)`). The module itself is only written by the
meta-update.

Data contract: for each task the caller hands over `(train_episodes, valid_episodes)`, the train
episodes sampled with the current meta-parameters and the valid episodes sampled with the
parameters `adapt()` returns for those train episodes (`MAMLTRPO.adapt` gives them, detached).
`Episodes` carries no log-probabilities, so the "old" sampling policy of the surrogate is
recomputed as the adapted policy at the start of the step (detached): exact when the valid
episodes were sampled with it, as above.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Literal

import torch
from torch.distributions import Independent, Normal, kl_divergence

from agents.episodes import Episodes
from agents.meta.returns import baseline_advantages
from agents.meta.trpo import conjugate_gradient, flatten_params, hessian_vector_product, line_search
from agents.policy import GaussianMLPPolicy, Params

EpisodeSource = Episodes | Sequence[Episodes] | Callable[[int, Params], Episodes]


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of `x` (`[T, B]`) over the real steps of `mask`."""
    mask = mask.to(x.dtype)
    return (x * mask).sum() / mask.sum().clamp(min=1.0)


def detach_distribution(dist: Independent) -> Independent:
    """A copy of a diagonal Gaussian policy distribution cut from the graph."""
    base = dist.base_dist
    return Independent(Normal(base.loc.detach(), base.scale.detach()), dist.reinterpreted_batch_ndims)


def inner_loss(
    policy: GaussianMLPPolicy,
    params: Mapping[str, torch.Tensor],
    episodes: Episodes,
    advantages: torch.Tensor,
) -> torch.Tensor:
    """Vanilla policy-gradient surrogate `-mean_real_steps(log pi(a|s; params) * advantage)`.

    Args:
        policy: the policy architecture.
        params: parameters to evaluate it with.
        episodes: one task's episodes.
        advantages: `[T, B]` advantages (treated as constants).
    """
    log_probs = policy(episodes.observations, params).log_prob(episodes.actions)
    return -masked_mean(log_probs * advantages.detach(), episodes.mask)


def adapt(
    policy: GaussianMLPPolicy,
    params: Mapping[str, torch.Tensor],
    episodes: Episodes,
    inner_lr: float,
    first_order: bool = False,
    advantages: torch.Tensor | None = None,
    gamma: float = 0.99,
    gae_lambda: float = 1.0,
    normalize_advantages: bool = True,
) -> Params:
    """One inner SGD step: `params - inner_lr * grad(inner_loss(params))`.

    The advantages come from a linear baseline fitted on `episodes` (unless given) and are
    constants. With `first_order=False` the gradient keeps its graph (`create_graph=True`), so a
    loss on the result differentiates through the adaptation (second-order MAML); with
    `first_order=True` the gradient is a constant and the result depends on `params` only through
    the identity (FOMAML). Parameters that do not require grad are adapted from a leaf copy.
    Runs in grad mode even inside `torch.no_grad()`.

    Args:
        policy: the policy architecture.
        params: the parameters to adapt (e.g. `policy.parameters_dict()`); not modified.
        episodes: the task's training episodes.
        inner_lr: SGD step size.
        first_order: drop the second-order terms of the meta-gradient.
        advantages: `[T, B]` precomputed advantages of `episodes`.
        gamma: discount factor for the advantages.
        gae_lambda: GAE lambda for the advantages.
        normalize_advantages: standardise the advantages over real steps.
    """
    if advantages is None:
        advantages = baseline_advantages(episodes, gamma, gae_lambda, normalize_advantages)
    with torch.enable_grad():
        inputs = {name: p if p.requires_grad else p.detach().requires_grad_(True) for name, p in params.items()}
        loss = inner_loss(policy, inputs, episodes, advantages)
        grads = torch.autograd.grad(loss, list(inputs.values()), create_graph=not first_order, allow_unused=True)
        return {name: p if g is None else p - inner_lr * g for (name, p), g in zip(inputs.items(), grads, strict=True)}


def adapt_k_steps(
    policy: GaussianMLPPolicy,
    params: Mapping[str, torch.Tensor],
    episodes: EpisodeSource,
    inner_lr: float,
    num_steps: int = 1,
    first_order: bool = False,
    advantages: torch.Tensor | None = None,
    gamma: float = 0.99,
    gae_lambda: float = 1.0,
    normalize_advantages: bool = True,
) -> Params:
    """`num_steps` successive `adapt()` steps; the episodes of each step depend on `episodes`.

    - `Episodes`: the same episodes (and advantages, computed once or given) at every step.
    - a sequence of `Episodes`: step `k` uses `episodes[k]`; its length must equal `num_steps`.
    - a callable `(k, params) -> Episodes`: fresh episodes for step `k`, e.g. sampled with the
      detached current adapted `params`. The meta-gradient then ignores how the sampling
      distribution depends on the meta-parameters (no DiCE-style correction).

    `advantages` is only accepted with a single `Episodes`. Other arguments as in `adapt()`.
    """
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    if advantages is not None and not isinstance(episodes, Episodes):
        raise ValueError("advantages can only be given with a single Episodes")
    if isinstance(episodes, Episodes) and advantages is None:
        advantages = baseline_advantages(episodes, gamma, gae_lambda, normalize_advantages)
    if isinstance(episodes, Sequence) and len(episodes) != num_steps:
        raise ValueError(f"got {len(episodes)} Episodes for num_steps={num_steps}")
    current: Params = dict(params)
    for k in range(num_steps):
        if isinstance(episodes, Episodes):
            step_episodes, step_advantages = episodes, advantages
        elif isinstance(episodes, Sequence):
            step_episodes, step_advantages = episodes[k], None
        else:
            step_episodes = episodes(k, {name: p.detach() for name, p in current.items()})
            step_advantages = None
        current = adapt(
            policy,
            current,
            step_episodes,
            inner_lr,
            first_order,
            step_advantages,
            gamma,
            gae_lambda,
            normalize_advantages,
        )
    return current


@dataclass
class TaskData:
    """One task's episodes with their (constant) advantages, computed once per meta-step."""

    train: Episodes
    valid: Episodes
    train_advantages: torch.Tensor
    valid_advantages: torch.Tensor


def prepare_tasks(
    tasks: Sequence[tuple[Episodes, Episodes]],
    gamma: float = 0.99,
    gae_lambda: float = 1.0,
    normalize_advantages: bool = True,
) -> list[TaskData]:
    """Fit a linear baseline on each episode set (train and valid separately) -> `TaskData`."""
    return [
        TaskData(
            train,
            valid,
            baseline_advantages(train, gamma, gae_lambda, normalize_advantages),
            baseline_advantages(valid, gamma, gae_lambda, normalize_advantages),
        )
        for train, valid in tasks
    ]


@dataclass
class OuterResult:
    """The outer objective at some meta-parameters.

    Attributes:
        loss: mean over tasks of the surrogate loss on the valid episodes.
        kl: mean over tasks of the mean KL(old || adapted) on the valid observations.
        adapted: the adapted parameters of each task (attached to the meta-parameters).
        distributions: the adapted policy's distribution on each task's valid observations.
    """

    loss: torch.Tensor
    kl: torch.Tensor
    adapted: list[Params]
    distributions: list[Independent]


def outer_objective(
    policy: GaussianMLPPolicy,
    params: Mapping[str, torch.Tensor],
    tasks: Sequence[TaskData],
    inner_lr: float,
    num_steps: int = 1,
    first_order: bool = False,
    old_distributions: Sequence[Independent] | None = None,
) -> OuterResult:
    """MAML's outer loss: adapt `params` on each task's train episodes, evaluate on its valid ones.

    Per task: `loss = -mean_real_steps(exp(logp_adapted - logp_old) * advantage)` and
    `kl = mean_real_steps(KL(old || adapted))`, both averaged over tasks. `old_distributions` are
    the (detached) sampling policies on the valid observations; None means the adapted policy
    itself, detached (ratio 1 and KL 0 in value, with the right gradient and Hessian).

    Args:
        policy: the policy architecture.
        params: meta-parameters (the graph runs back to them).
        tasks: prepared tasks.
        inner_lr: inner SGD step size.
        num_steps: inner steps, all on the task's train episodes.
        first_order: FOMAML adaptation (no second-order terms).
        old_distributions: one per task, on its valid observations.
    """
    losses, kls, adapted_all, dists = [], [], [], []
    for i, task in enumerate(tasks):
        adapted = adapt_k_steps(policy, params, task.train, inner_lr, num_steps, first_order, task.train_advantages)
        valid = task.valid
        dist = policy(valid.observations, adapted)
        old = detach_distribution(dist) if old_distributions is None else old_distributions[i]
        ratio = torch.exp(dist.log_prob(valid.actions) - old.log_prob(valid.actions).detach())
        losses.append(-masked_mean(ratio * task.valid_advantages, valid.mask))
        kls.append(masked_mean(kl_divergence(old, dist), valid.mask))
        adapted_all.append(adapted)
        dists.append(dist)
    return OuterResult(torch.stack(losses).mean(), torch.stack(kls).mean(), adapted_all, dists)


@dataclass
class MAMLConfig:
    """Hyper-parameters of `MAMLTRPO` (defaults follow pytorch-maml-rl's locomotion settings)."""

    inner_lr: float = 0.1  # SGD step size of the inner adaptation
    num_inner_steps: int = 1  # inner steps per task, all on the task's train episodes
    first_order: bool = False  # FOMAML: ignore the second-order terms of the meta-gradient
    outer_optimizer: Literal["trpo", "adam"] = "trpo"  # meta-update: trust region or Adam
    max_kl: float = 1e-2  # TRPO trust-region bound on the mean KL
    cg_iters: int = 10  # conjugate-gradient iterations
    cg_damping: float = 1e-2  # damping added to the Fisher-vector product
    ls_backtrack_ratio: float = 0.5  # line-search shrink factor
    ls_max_backtracks: int = 15  # line-search candidates
    outer_lr: float = 1e-3  # Adam learning rate (outer_optimizer="adam")
    gamma: float = 0.99  # discount factor
    gae_lambda: float = 1.0  # GAE lambda (1: returns minus linear baseline)
    normalize_advantages: bool = True  # standardise advantages over real steps

    def __post_init__(self) -> None:
        positive = ("inner_lr", "max_kl", "outer_lr")
        for name in positive:
            value = getattr(self, name)
            if not value > 0:
                raise ValueError(f"{name} must be > 0, got {value}")
        for name in ("num_inner_steps", "cg_iters", "ls_max_backtracks"):
            value = getattr(self, name)
            if not (isinstance(value, int) and value >= 1):
                raise ValueError(f"{name} must be an integer >= 1, got {value}")
        if self.outer_optimizer not in ("trpo", "adam"):
            raise ValueError(f"outer_optimizer must be 'trpo' or 'adam', got {self.outer_optimizer!r}")
        if not self.cg_damping >= 0:
            raise ValueError(f"cg_damping must be >= 0, got {self.cg_damping}")
        if not 0 < self.ls_backtrack_ratio < 1:
            raise ValueError(f"ls_backtrack_ratio must be in (0, 1), got {self.ls_backtrack_ratio}")
        if not 0 <= self.gamma <= 1:
            raise ValueError(f"gamma must be in [0, 1], got {self.gamma}")
        if not 0 <= self.gae_lambda <= 1:
            raise ValueError(f"gae_lambda must be in [0, 1], got {self.gae_lambda}")


@dataclass
class MetaStepRecord:
    """Figures of one meta-update (`MAMLTRPO.step`).

    Attributes:
        pre_adapt_return: mean undiscounted return of the train episodes (before adaptation).
        post_adapt_return: mean undiscounted return of the valid episodes (after adaptation).
        loss_before: outer surrogate loss before the update.
        loss_after: outer surrogate loss after the update.
        kl: mean KL between the adapted policies before and after the update.
        step_accepted: the parameters changed (TRPO: the line search found a step).
        step_fraction: fraction of the full TRPO step taken (1 for Adam, 0 when rejected).
        grad_norm: norm of the meta-gradient.
        time_prepare: seconds spent fitting baselines and computing advantages.
        time_gradient: seconds spent on the outer objective and its meta-gradient.
        time_update: seconds spent on CG and line search (or the Adam step and re-evaluation).
        time_total: seconds for the whole step.
    """

    pre_adapt_return: float
    post_adapt_return: float
    loss_before: float
    loss_after: float
    kl: float
    step_accepted: bool
    step_fraction: float
    grad_norm: float
    time_prepare: float
    time_gradient: float
    time_update: float
    time_total: float

    def to_dict(self) -> dict[str, float | bool]:
        """Plain dict, e.g. for a JSONL metrics line."""
        return asdict(self)


class MAMLTRPO:
    """Meta-learner: MAML with a TRPO (default) or Adam outer update of `policy`'s parameters.

    Args:
        policy: the policy whose parameters are the meta-learned initialisation (updated in place).
        config: hyper-parameters (defaults if None).
    """

    def __init__(self, policy: GaussianMLPPolicy, config: MAMLConfig | None = None) -> None:
        self.policy = policy
        self.config = MAMLConfig() if config is None else config
        self.optimizer: torch.optim.Optimizer | None = None
        if self.config.outer_optimizer == "adam":
            self.optimizer = torch.optim.Adam(policy.parameters(), lr=self.config.outer_lr)

    def adapt(self, episodes: EpisodeSource, num_steps: int | None = None) -> Params:
        """Detached adapted parameters for `episodes` (e.g. to sample a task's valid episodes)."""
        cfg = self.config
        steps = cfg.num_inner_steps if num_steps is None else num_steps
        adapted = adapt_k_steps(
            self.policy,
            self.policy.parameters_dict(),
            episodes,
            cfg.inner_lr,
            steps,
            first_order=True,
            gamma=cfg.gamma,
            gae_lambda=cfg.gae_lambda,
            normalize_advantages=cfg.normalize_advantages,
        )
        return {name: p.detach() for name, p in adapted.items()}

    def _objective(
        self,
        params: Mapping[str, torch.Tensor],
        tasks: Sequence[TaskData],
        first_order: bool,
        old: Sequence[Independent] | None = None,
    ) -> OuterResult:
        cfg = self.config
        return outer_objective(self.policy, params, tasks, cfg.inner_lr, cfg.num_inner_steps, first_order, old)

    def step(self, tasks: Sequence[tuple[Episodes, Episodes]]) -> MetaStepRecord:
        """One meta-update on `(train_episodes, valid_episodes)` pairs, one pair per task."""
        cfg = self.config
        t_start = time.perf_counter()
        data = prepare_tasks(tasks, cfg.gamma, cfg.gae_lambda, cfg.normalize_advantages)
        t_prepared = time.perf_counter()

        if cfg.outer_optimizer == "adam":
            params = self.policy.parameters_dict()
        else:
            params = {name: p.detach().requires_grad_(True) for name, p in self.policy.named_parameters()}
        before = self._objective(params, data, cfg.first_order)
        old = [detach_distribution(d) for d in before.distributions]
        loss_before = before.loss.item()

        # Line search and after-step figures only need values: first-order adaptation gives the
        # same values without building second-order graphs.
        def loss_and_kl(candidate: Params) -> tuple[torch.Tensor, torch.Tensor]:
            result = self._objective(candidate, data, True, old)
            return result.loss.detach(), result.kl.detach()

        if self.optimizer is not None:
            self.optimizer.zero_grad()
            before.loss.backward()
            grad_norm = float(flatten_params({n: p.grad for n, p in self.policy.named_parameters()}).norm())
            t_grad = time.perf_counter()
            self.optimizer.step()
            loss_after, kl_after = (v.item() for v in loss_and_kl(self.policy.parameters_dict()))
            accepted, fraction = True, 1.0
        else:
            grads = torch.autograd.grad(before.loss, list(params.values()))
            flat_grad = torch.cat([g.reshape(-1) for g in grads])
            grad_norm = float(flat_grad.norm())
            t_grad = time.perf_counter()
            accepted, fraction, loss_after, kl_after = self._trpo_update(
                params, flat_grad, data, old, loss_before, loss_and_kl
            )

        t_end = time.perf_counter()
        return MetaStepRecord(
            pre_adapt_return=_mean_return([t.train for t in data]),
            post_adapt_return=_mean_return([t.valid for t in data]),
            loss_before=loss_before,
            loss_after=loss_after,
            kl=kl_after,
            step_accepted=accepted,
            step_fraction=fraction,
            grad_norm=grad_norm,
            time_prepare=t_prepared - t_start,
            time_gradient=t_grad - t_prepared,
            time_update=t_end - t_grad,
            time_total=t_end - t_start,
        )

    def _trpo_update(
        self,
        params: Params,
        flat_grad: torch.Tensor,
        data: Sequence[TaskData],
        old: Sequence[Independent],
        loss_before: float,
        loss_and_kl: Callable[[Params], tuple[torch.Tensor, torch.Tensor]],
    ) -> tuple[bool, float, float, float]:
        """Natural-gradient step scaled to the KL bound, then line search; writes the policy."""
        cfg = self.config
        fvp = hessian_vector_product(
            lambda p: self._objective(p, data, cfg.first_order, old).kl, params, cfg.cg_damping
        )
        step_dir = conjugate_gradient(fvp, flat_grad, iters=cfg.cg_iters)
        # Quadratic model of the KL along the step: 0.5 s^T F s; scale it to reach max_kl.
        shs = 0.5 * (step_dir @ fvp(step_dir)).item()
        if not (shs > 0 and torch.isfinite(step_dir).all()):
            return False, 0.0, loss_before, 0.0
        full_step = -step_dir * (cfg.max_kl / shs) ** 0.5
        new_params, result = line_search(
            params,
            full_step,
            loss_and_kl,
            cfg.max_kl,
            loss_before,
            cfg.ls_backtrack_ratio,
            cfg.ls_max_backtracks,
        )
        if result.accepted:
            with torch.no_grad():
                for name, p in self.policy.named_parameters():
                    p.copy_(new_params[name])
        return result.accepted, result.step_fraction, result.loss, result.kl


def _mean_return(episodes: Sequence[Episodes]) -> float:
    return float(torch.stack([e.total_returns().mean() for e in episodes]).mean())
