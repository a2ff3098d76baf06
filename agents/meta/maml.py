"""MAML for policy-gradient RL (Finn et al. 2017): the MAML-TRPO meta-update.

The inner loop (the surrogate, its estimators, `adapt` and the batched `adapt_tasks`) is in
`agents.meta.inner`, the outer objective and its KL's curvature in `agents.meta.outer`; this module
is the learner: its settings, the meta-step and its trust region. The policy module itself is only
written by the meta-update.

Data contract: for each task the caller hands over `(train_episodes, valid_episodes)`: the train
episodes of each inner step (step 0's sampled with the current meta-parameters, step k's with the
parameters after step k - 1; or one set that every step reuses) and the valid episodes sampled
with the parameters the adaptation ends at (`MAMLTRPO.adapt_tasks` gives them, detached).
`Episodes` carries no log-probabilities, so the "old" sampling policy of the surrogate is
recomputed as the adapted policy at the start of the step (detached): exact when the valid
episodes were sampled with it, as above.

The meta-update treats the tasks as a batch dimension (`agents.meta.task_batch.TaskBatch`,
`adapt_tasks`, `agents.meta.outer.outer_objective`) and takes its Fisher-vector products in the
Gauss-Newton form (`agents.meta.outer.kl_curvature_outputs`); `reference_update` runs the per-task
loop (`outer_objective_per_task`) and the double-backward Fisher it is tested against.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Literal

import torch
from torch.distributions import Independent

from agents.episodes import Episodes
from agents.meta.inner import (
    INNER_ESTIMATORS,
    LR_PREFIX,
    InnerLR,
    adapt_tasks,
    check_step_sizes,
    detach_distribution,
    per_step_sizes,
)
from agents.meta.outer import (
    chunked_fisher_product,
    kl_curvature_outputs,
    outer_objective,
    outer_objective_per_task,
)
from agents.meta.returns import baseline_advantages
from agents.meta.task_batch import TaskBatch, prepare_tasks, stack_episodes
from agents.meta.trpo import conjugate_gradient, flatten_params, hessian_vector_product, line_search
from agents.policy import GaussianMLPPolicy, Params


@dataclass
class MAMLConfig:
    """Hyper-parameters of `MAMLTRPO` (defaults follow pytorch-maml-rl's locomotion settings)."""

    inner_lr: float = 0.1  # SGD step size of the inner adaptation
    num_inner_steps: int = 1  # inner steps per task (each on its own episode set, or all on one)
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
    fisher_every: int = 1  # Fisher-vector products on every k-th step (1: all); the line search sees all
    reference_update: bool = False  # the per-task loop and double-backward Fisher (the benchmark's reference)
    inner_estimator: str = "score"  # inner surrogate: "score" (REINFORCE), "dice" (unbiased) or "lvc" (ProMP)
    meta_sgd: bool = False  # learn one inner step size per parameter entry (Meta-SGD), starting at inner_lr
    meta_sgd_per_step: bool = False  # Meta-SGD: one set of learned step sizes per inner step
    # The outer objective: the return after the last inner step ("last", MAML's), or the mean over
    # the returns after each inner step ("all": the episodes sampled for step k + 1 are valid episodes
    # of the step-k parameters, so it costs no sampling), with the trust region on the mean KL of all.
    outer_steps: Literal["last", "all"] = "last"
    # With outer_steps "all": each inner step's share of the objective and of its KL (normalised to
    # sum 1; a zero drops that step's term). None: equal shares.
    outer_weights: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        positive = ("inner_lr", "max_kl", "outer_lr")
        for name in positive:
            value = getattr(self, name)
            if not value > 0:
                raise ValueError(f"{name} must be > 0, got {value}")
        for name in ("num_inner_steps", "cg_iters", "ls_max_backtracks", "fisher_every"):
            value = getattr(self, name)
            if not (isinstance(value, int) and value >= 1):
                raise ValueError(f"{name} must be an integer >= 1, got {value}")
        if self.inner_estimator not in INNER_ESTIMATORS:
            raise ValueError(f"inner_estimator must be one of {list(INNER_ESTIMATORS)}, got {self.inner_estimator!r}")
        if self.outer_steps not in ("last", "all"):
            raise ValueError(f"outer_steps must be 'last' or 'all', got {self.outer_steps!r}")
        if self.outer_weights is not None:
            weights = tuple(self.outer_weights)
            if self.outer_steps != "all":
                raise ValueError(f"outer_weights needs outer_steps 'all', got {self.outer_steps!r}")
            if len(weights) != self.num_inner_steps or min(weights) < 0 or not sum(weights) > 0:
                raise ValueError(f"outer_weights must be {self.num_inner_steps} numbers >= 0 (one per inner step) "
                                 f"with a positive sum, got {list(weights)}")
        if self.meta_sgd_per_step and not self.meta_sgd:
            raise ValueError("meta_sgd_per_step needs meta_sgd: true (there are no learned step sizes without it)")
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
        # Meta-SGD: one learned step size per parameter entry (and per inner step with
        # meta_sgd_per_step), meta-learned with the initialisation.
        self.inner_lrs: dict[str, torch.nn.Parameter] | None = None
        if self.config.meta_sgd:
            steps = (self.config.num_inner_steps,) if self.config.meta_sgd_per_step else ()
            self.inner_lrs = {name: torch.nn.Parameter(torch.full((*steps, *p.shape), self.config.inner_lr,
                                                                  dtype=p.dtype))
                              for name, p in policy.named_parameters()}
        if self.config.outer_optimizer == "adam":
            extra = list(self.inner_lrs.values()) if self.inner_lrs else []
            self.optimizer = torch.optim.Adam([*policy.parameters(), *extra], lr=self.config.outer_lr)

    def step_sizes(self) -> InnerLR:
        """The inner step size(s) to adapt with: `inner_lr`, or the learned ones (detached)."""
        if self.inner_lrs is None:
            return self.config.inner_lr
        return {name: lr.detach() for name, lr in self.inner_lrs.items()}

    def load_step_sizes(self, inner_lrs: Mapping[str, torch.Tensor]) -> None:
        """Set the learned step sizes (Meta-SGD; e.g. from a checkpoint's `extra_state["inner_lrs"]`).
        A per-step learner takes one set for every step too (each step starts with those sizes)."""
        if self.inner_lrs is None:
            raise ValueError("inner_lrs: the learner has no learned step sizes (meta_sgd: false)")
        params = self.policy.parameters_dict()
        check_step_sizes(inner_lrs, params, "inner_lrs")
        given_steps = per_step_sizes(inner_lrs, params)
        own_steps = self.config.num_inner_steps if self.config.meta_sgd_per_step else None
        if given_steps is not None and given_steps != own_steps:
            raise ValueError(f"inner_lrs: per-step sizes for {given_steps} inner steps, the learner has "
                             + ("one set for every step" if own_steps is None else f"{own_steps} steps"))
        with torch.no_grad():
            for name, lr in self.inner_lrs.items():
                lr.copy_(inner_lrs[name].expand_as(lr))

    def scale_step_sizes(self, scales: Sequence[float]) -> None:
        """Multiply each inner step's learned sizes by its scale (per-step Meta-SGD; one scale per step)."""
        if self.inner_lrs is None or not self.config.meta_sgd_per_step:
            raise ValueError("scales: the learner has no per-step step sizes (meta_sgd_per_step: false)")
        if len(scales) != self.config.num_inner_steps:
            raise ValueError(f"scales: need {self.config.num_inner_steps} (one per inner step), got {list(scales)}")
        with torch.no_grad():
            for lr in self.inner_lrs.values():
                lr.mul_(torch.tensor(scales, dtype=lr.dtype).view(-1, *[1] * (lr.dim() - 1)))

    def adapt_tasks(self, episodes: Sequence[Sequence[Episodes]]) -> list[Params]:
        """Detached adapted parameters of every task at once (first order, as `adapt`), one dict per task.

        `episodes[k][i]` is task i's episodes of inner step k: as many steps are taken as sets are
        given (sampling for step k + 1 needs the parameters after step k).
        """
        cfg = self.config
        sets = [stack_episodes(step) for step in episodes]
        advantages = [baseline_advantages(e, cfg.gamma, cfg.gae_lambda, cfg.normalize_advantages) for e in sets]
        adapted = adapt_tasks(self.policy, self.policy.parameters_dict(), sets, advantages, self.step_sizes(),
                              len(sets), first_order=True)
        return [{name: p[i].detach() for name, p in adapted.items()} for i in range(len(episodes[0]))]

    def _terms(self, tasks: TaskBatch) -> list[tuple[int, TaskBatch, float]]:
        """The outer objective's terms, (inner steps, problem, weight): the last step's, or every step's
        with a non-zero weight (`outer_weights`, normalised; equal when unset)."""
        cfg = self.config
        if cfg.outer_steps == "last":
            return [(cfg.num_inner_steps, tasks, 1.0)]
        if len(tasks.train) != cfg.num_inner_steps:
            raise ValueError(f"outer_steps: all needs one train episode set per inner step "
                             f"({cfg.num_inner_steps}), got {len(tasks.train)}")
        weights = cfg.outer_weights or (1.0,) * cfg.num_inner_steps
        total = sum(weights)
        return [(k, tasks.first_steps(k), w / total) for k, w in enumerate(weights, start=1) if w > 0]

    def _objective(
        self,
        params: Mapping[str, torch.Tensor],
        tasks: TaskBatch,
        first_order: bool,
        old: Sequence[Independent] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, list[Independent]]:
        """Outer loss and KL, each the weighted sum over the terms (`_terms`), and each term's adapted
        policies on its evaluation episodes (the next call's `old`)."""
        cfg = self.config
        objective = outer_objective_per_task if cfg.reference_update else outer_objective
        terms = self._terms(tasks)
        olds = [None] * len(terms) if old is None else list(old)
        results = [objective(self.policy, params, batch, cfg.inner_lr, steps, first_order, term_old,
                             cfg.inner_estimator)
                   for (steps, batch, _), term_old in zip(terms, olds, strict=True)]
        weights = [weight for _, _, weight in terms]
        loss = sum(w * r.loss for w, r in zip(weights, results, strict=True))
        kl = sum(w * r.kl for w, r in zip(weights, results, strict=True))
        return loss, kl, [r.distribution for r in results]

    def step(self, tasks: Sequence[tuple[Episodes | Sequence[Episodes], Episodes]]) -> MetaStepRecord:
        """One meta-update on `(train_episodes, valid_episodes)` pairs, one pair per task; the train
        episodes are one set (reused by every inner step) or one set per inner step."""
        cfg = self.config
        t_start = time.perf_counter()
        data = prepare_tasks(tasks, cfg.gamma, cfg.gae_lambda, cfg.normalize_advantages)
        t_prepared = time.perf_counter()

        # Meta-SGD's step sizes travel with the policy's parameters (under LR_PREFIX), so the outer
        # update's gradient, Fisher and line search cover them too.
        learned = {LR_PREFIX + name: lr for name, lr in (self.inner_lrs or {}).items()}
        if cfg.outer_optimizer == "adam":
            params = {**self.policy.parameters_dict(), **learned}
        else:
            params = {name: p.detach().requires_grad_(True)
                      for name, p in [*self.policy.named_parameters(), *learned.items()]}
        loss, _, distributions = self._objective(params, data, cfg.first_order)
        old = [detach_distribution(d) for d in distributions]
        loss_before = loss.item()

        # Line search and after-step figures only need values: first-order adaptation gives the
        # same values without building second-order graphs.
        def loss_and_kl(candidate: Params) -> tuple[torch.Tensor, torch.Tensor]:
            candidate_loss, candidate_kl, _ = self._objective(candidate, data, True, old)
            return candidate_loss.detach(), candidate_kl.detach()

        if self.optimizer is not None:
            self.optimizer.zero_grad()
            loss.backward()
            grad_norm = float(flatten_params({n: p.grad for n, p in self.policy.named_parameters()}).norm())
            t_grad = time.perf_counter()
            self.optimizer.step()
            loss_after, kl_after = (v.item() for v in loss_and_kl({**self.policy.parameters_dict(), **learned}))
            accepted, fraction = True, 1.0
        else:
            grads = torch.autograd.grad(loss, list(params.values()))
            flat_grad = torch.cat([g.reshape(-1) for g in grads])
            grad_norm = float(flat_grad.norm())
            t_grad = time.perf_counter()
            accepted, fraction, loss_after, kl_after = self._trpo_update(
                params, flat_grad, data, old, loss_before, loss_and_kl
            )

        t_end = time.perf_counter()
        return MetaStepRecord(
            pre_adapt_return=_mean_return([train if isinstance(train, Episodes) else train[0] for train, _ in tasks]),
            post_adapt_return=_mean_return([valid for _, valid in tasks]),
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

    def _fisher_product(self, params: Params, data: TaskBatch) -> Callable[[torch.Tensor], torch.Tensor]:
        """`v -> (F + damping I) v`, F the outer KL's Hessian in Gauss-Newton form: the weighted sum of
        its terms' (`_terms`). One term keeps the damping inside its chunked product, as before there
        were terms, so the default objective's sums round exactly as they did."""
        cfg = self.config
        terms = self._terms(data)
        products = [chunked_fisher_product(
            lambda p, chunk, steps=steps: kl_curvature_outputs(self.policy, p, chunk, cfg.inner_lr, steps,
                                                               cfg.first_order, cfg.inner_estimator),
            params, batch, cfg.cg_damping if len(terms) == 1 else 0.0) for steps, batch, _ in terms]
        if len(products) == 1:
            return products[0]
        weights = [weight for _, _, weight in terms]

        def weighted_product(v: torch.Tensor) -> torch.Tensor:
            return cfg.cg_damping * v + sum(w * product(v) for w, product in zip(weights, products, strict=True))

        return weighted_product

    def _trpo_update(
        self,
        params: Params,
        flat_grad: torch.Tensor,
        data: TaskBatch,
        old: Independent,
        loss_before: float,
        loss_and_kl: Callable[[Params], tuple[torch.Tensor, torch.Tensor]],
    ) -> tuple[bool, float, float, float]:
        """Natural-gradient step scaled to the KL bound, then line search; writes the policy."""
        cfg = self.config
        # The KL's Hessian at the old policy (its Fisher through the adaptation), optionally estimated on
        # every k-th step (rllab's subsample_factor). The adaptation there uses those steps too, so the KL
        # is taken against that estimate's own adapted policy (old=None: the KL is 0 and minimal there).
        fisher_data = data.every(cfg.fisher_every)
        if cfg.reference_update:
            fvp = hessian_vector_product(lambda p: self._objective(p, fisher_data, cfg.first_order)[1], params,
                                         cfg.cg_damping)
        else:
            fvp = self._fisher_product(params, fisher_data)
        step_dir, fisher_step = conjugate_gradient(fvp, flat_grad, iters=cfg.cg_iters)
        # Quadratic model of the KL along the step: 0.5 s^T F s; scale it to reach max_kl.
        shs = 0.5 * (step_dir @ fisher_step).item()
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
                for name, lr in (self.inner_lrs or {}).items():
                    lr.copy_(new_params[LR_PREFIX + name])
        return result.accepted, result.step_fraction, result.loss, result.kl


def _mean_return(episodes: Sequence[Episodes]) -> float:
    return float(torch.stack([e.total_returns().mean() for e in episodes]).mean())
