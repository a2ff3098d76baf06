"""MAML's inner loop: the policy-gradient surrogate, its estimators, and the adaptation step.

The meta-learning API is learn2learn's two verbs without the dependency: the "clone" is a
name -> tensor dict of parameters, `adapt()` returns a new dict one SGD step away (keeping the
graph for second-order meta-gradients), and the policy runs any dict (`policy(obs, params)`).
`adapt_tasks` takes the same steps for many tasks at once (tasks as a batch dimension), which
the meta-update (`agents.meta.maml`) differentiates through; the evaluation, the curriculum's
stage-start adaptation and the video script use `adapt` directly.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch
from torch.distributions import Independent, Normal
from torch.func import vmap

from agents.episodes import Episodes
from agents.meta.returns import baseline_advantages
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


#: inner-loop surrogates (`surrogate_weights`): "score" (REINFORCE), "dice" (Loaded DiCE, unbiased second
#: order), "lvc" (ProMP's low-variance curvature estimator)
INNER_ESTIMATORS = ("score", "dice", "lvc")


def magic_box(x: torch.Tensor) -> torch.Tensor:
    """DiCE's magic box: `exp(x - stop_gradient(x))`, equal to 1 with the derivatives of `exp(x)`."""
    return torch.exp(x - x.detach())


def surrogate_weights(log_probs: torch.Tensor, mask: torch.Tensor, estimator: str = "score") -> torch.Tensor:
    """Per-step weights `w_t` whose mean of `w_t * advantage_t` is the inner policy-gradient surrogate.

    Time is the second-to-last axis (`[T, B]` or `[N, T, B]`). All estimators have the same first
    derivative, `grad log pi_t` per step, so the adapted parameters are the same; they differ in the
    second derivative, which MAML's meta-gradient differentiates through:

    - "score": `w_t = log pi_t`. Its Hessian, `sum_t A_t hess log pi_t`, treats the sampled episodes
      as fixed and misses how their distribution depends on the parameters, so the meta-gradient
      is biased (Rothfuss et al. 2019, ProMP, sec. 4; Foerster et al. 2018, DiCE).
    - "dice": `w_t = box(W_t) - box(W_{t-1})` with `W_t = sum_{t' <= t} log pi_t'` and `box` the
      magic box (Loaded DiCE, Farquhar et al. 2019). Value 0; its expected Hessian is the Hessian
      of the expected return, including the score-function terms `grad W_t grad W_t^T`.
    - "lvc": `w_t = box(log pi_t)`, ProMP's low-variance curvature estimator (Rothfuss et al. 2019,
      eq. 12): the per-step likelihood ratio. Its Hessian keeps each step's own score term
      `A_t grad log pi_t grad log pi_t^T` but drops DiCE's products across steps: biased (on the
      test's two-step toy -6 where the true Hessian is -10 and score's +7.25) for much less variance.
    """
    if estimator == "score":
        return log_probs
    if estimator == "lvc":
        return magic_box(log_probs)
    if estimator != "dice":
        raise ValueError(f"inner_estimator must be one of {list(INNER_ESTIMATORS)}, got {estimator!r}")
    cumulative = torch.cumsum(log_probs * mask.to(log_probs.dtype), dim=-2)
    previous = torch.cat([torch.zeros_like(cumulative[..., :1, :]), cumulative[..., :-1, :]], dim=-2)
    return magic_box(cumulative) - magic_box(previous)


#: an inner step size: one for every parameter, or one tensor per parameter name (Meta-SGD). A
#: learned tensor has its parameter's shape (the same sizes at every inner step) or one more, leading
#: axis with one entry per inner step (per-step sizes, as MAML++'s per-step learning rates).
InnerLR = float | Mapping[str, torch.Tensor]
#: prefix of the learned step sizes' names when they travel with the meta-parameters (Meta-SGD)
LR_PREFIX = "inner_lr."


def step_size(inner_lr: InnerLR, name: str, param: torch.Tensor, step: int = 0) -> float | torch.Tensor:
    """The size of inner step `step` (0 the first) for parameter `name`, of `param`'s shape: the
    number, its own tensor (Meta-SGD), or that tensor's entry for `step` (per-step sizes)."""
    if not isinstance(inner_lr, Mapping):
        return inner_lr
    size = inner_lr[name]
    if size.dim() == param.dim():
        return size
    if not 0 <= step < size.shape[0]:
        raise ValueError(f"inner_lrs: the learned step sizes cover {size.shape[0]} inner steps, step {step + 1} asked")
    return size[step]


def per_step_sizes(inner_lr: InnerLR, params: Mapping[str, torch.Tensor]) -> int | None:
    """How many inner steps learned per-step sizes cover (None: a number, or one size for every step)."""
    if not isinstance(inner_lr, Mapping):
        return None
    name, size = next(iter(inner_lr.items()))
    return size.shape[0] if size.dim() == params[name].dim() + 1 else None


def check_step_sizes(inner_lr: Mapping[str, torch.Tensor], params: Mapping[str, torch.Tensor], field: str,
                     steps: int | None = None) -> None:
    """Raise a ValueError naming `field` unless `inner_lr` holds one tensor per parameter: all of
    their parameter's shape, or all with the same leading per-step axis (length >= 1) before it,
    and then at least `steps` long when `steps` is given."""
    if not isinstance(inner_lr, Mapping) or not all(isinstance(lr, torch.Tensor) for lr in inner_lr.values()):
        raise ValueError(f"{field}: need a mapping of parameter name -> step-size tensor, "
                         f"got {type(inner_lr).__name__}")
    shapes = {name: tuple(p.shape) for name, p in params.items()}
    given = {name: tuple(lr.shape) for name, lr in inner_lr.items()}
    if set(given) != set(shapes):
        raise ValueError(f"{field}: need one step-size tensor per parameter ({sorted(shapes)}), got {sorted(given)}")
    shared = all(given[name] == shape for name, shape in shapes.items())
    per_step = all(len(given[name]) == len(shape) + 1 and given[name][1:] == shape for name, shape in shapes.items())
    leading = {given[name][0] for name in shapes} if per_step else set()
    if not (shared or (len(leading) == 1 and min(leading) >= 1)):
        raise ValueError(f"{field}: each step-size tensor must have its parameter's shape, or all the same "
                         f"leading per-step axis before it; got {given}")
    if steps is not None and leading and min(leading) < steps:
        raise ValueError(f"{field}: per-step sizes for {min(leading)} inner steps, {steps} asked; "
                         f"take at most {min(leading)}")


def split_inner_lrs(params: Mapping[str, torch.Tensor], inner_lr: InnerLR) -> tuple[Params, InnerLR]:
    """(policy parameters, step sizes): learned step sizes travel in `params` under `LR_PREFIX`
    (so the outer update differentiates and steps them with the rest); without them, `inner_lr`."""
    lrs = {name[len(LR_PREFIX):]: p for name, p in params.items() if name.startswith(LR_PREFIX)}
    policy_params = {name: p for name, p in params.items() if not name.startswith(LR_PREFIX)}
    return policy_params, (lrs if lrs else inner_lr)


def inner_loss(
    policy: GaussianMLPPolicy,
    params: Mapping[str, torch.Tensor],
    episodes: Episodes,
    advantages: torch.Tensor,
    estimator: str = "score",
) -> torch.Tensor:
    """Vanilla policy-gradient surrogate `-mean_real_steps(w_t * advantage_t)` (`surrogate_weights`).

    Args:
        policy: the policy architecture.
        params: parameters to evaluate it with.
        episodes: one task's episodes.
        advantages: `[T, B]` advantages (treated as constants).
        estimator: "score", "dice" or "lvc" (`surrogate_weights`; same gradient, other second derivatives).
    """
    log_probs = policy(episodes.observations, params).log_prob(episodes.actions)
    weights = surrogate_weights(log_probs, episodes.mask, estimator)
    return -masked_mean(weights * advantages.detach(), episodes.mask)


def adapt(
    policy: GaussianMLPPolicy,
    params: Mapping[str, torch.Tensor],
    episodes: Episodes,
    inner_lr: InnerLR,
    first_order: bool = False,
    advantages: torch.Tensor | None = None,
    gamma: float = 0.99,
    gae_lambda: float = 1.0,
    normalize_advantages: bool = True,
    estimator: str = "score",
    step: int = 0,
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
        inner_lr: SGD step size (a number, or one tensor per parameter name: Meta-SGD, per step or not).
        first_order: drop the second-order terms of the meta-gradient.
        advantages: `[T, B]` precomputed advantages of `episodes`.
        gamma: discount factor for the advantages.
        gae_lambda: GAE lambda for the advantages.
        normalize_advantages: standardise the advantages over real steps.
        estimator: the inner surrogate (`surrogate_weights`): "score", "dice" or "lvc".
        step: which inner step this is (0 the first): picks per-step learned sizes.
    """
    if advantages is None:
        advantages = baseline_advantages(episodes, gamma, gae_lambda, normalize_advantages)
    with torch.enable_grad():
        inputs = {name: p if p.requires_grad else p.detach().requires_grad_(True) for name, p in params.items()}
        loss = inner_loss(policy, inputs, episodes, advantages, estimator)
        grads = torch.autograd.grad(loss, list(inputs.values()), create_graph=not first_order, allow_unused=True)
        return {name: p if g is None else p - step_size(inner_lr, name, p, step) * g
                for (name, p), g in zip(inputs.items(), grads, strict=True)}


def adapt_k_steps(
    policy: GaussianMLPPolicy,
    params: Mapping[str, torch.Tensor],
    episodes: EpisodeSource,
    inner_lr: InnerLR,
    num_steps: int = 1,
    first_order: bool = False,
    advantages: torch.Tensor | Sequence[torch.Tensor] | None = None,
    gamma: float = 0.99,
    gae_lambda: float = 1.0,
    normalize_advantages: bool = True,
    estimator: str = "score",
) -> Params:
    """`num_steps` successive `adapt()` steps; the episodes of each step depend on `episodes`.

    - `Episodes`: the same episodes (and advantages, computed once or given) at every step.
    - a sequence of `Episodes`: step `k` uses `episodes[k]`; its length must equal `num_steps`.
    - a callable `(k, params) -> Episodes`: fresh episodes for step `k`, e.g. sampled with the
      detached current adapted `params`. The meta-gradient then ignores how the sampling
      distribution depends on the meta-parameters (no DiCE-style correction).

    `advantages`: for a single `Episodes` its advantages; for a sequence, one per step. Other
    arguments as in `adapt()`.
    """
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    if advantages is not None and callable(episodes):
        raise ValueError("advantages cannot be given for episodes sampled on the fly")
    if isinstance(episodes, Sequence) and advantages is not None and len(advantages) != len(episodes):
        raise ValueError(f"got {len(advantages)} advantages for {len(episodes)} Episodes")
    if isinstance(episodes, Episodes) and advantages is None:
        advantages = baseline_advantages(episodes, gamma, gae_lambda, normalize_advantages)
    if isinstance(episodes, Sequence) and len(episodes) != num_steps:
        raise ValueError(f"got {len(episodes)} Episodes for num_steps={num_steps}")
    current: Params = dict(params)
    for k in range(num_steps):
        if isinstance(episodes, Episodes):
            step_episodes, step_advantages = episodes, advantages
        elif isinstance(episodes, Sequence):
            step_episodes, step_advantages = episodes[k], None if advantages is None else advantages[k]
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
            estimator,
            k,
        )
    return current


def task_distribution(policy: GaussianMLPPolicy, params: Mapping[str, torch.Tensor], observations: torch.Tensor
                      ) -> Independent:
    """The policy on every task at once: task i's observations (`[N, ..., obs_dim]`) under task i's
    parameters (each tensor `[N, ...]`); batch shape `[N, ...]`."""
    mean = vmap(policy.mean)(observations, params)
    std = vmap(policy.std)(params)
    return Independent(Normal(mean, std.reshape(std.shape[0], *[1] * (mean.dim() - 2), std.shape[-1])), 1)


def task_means(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """`[N]` mean of `x` (`[N, T, B]`) over each task's real steps."""
    mask = mask.to(x.dtype)
    return (x * mask).sum((1, 2)) / mask.sum((1, 2)).clamp(min=1.0)


def adapt_tasks(
    policy: GaussianMLPPolicy,
    params: Mapping[str, torch.Tensor],
    episodes: Episodes | Sequence[Episodes],
    advantages: torch.Tensor | Sequence[torch.Tensor],
    inner_lr: InnerLR,
    num_steps: int = 1,
    first_order: bool = False,
    estimator: str = "score",
) -> Params:
    """`num_steps` inner SGD steps for every task at once: task i's parameters (`[N, ...]`).

    The same steps as `adapt_k_steps` with one `Episodes` per task, batched: the meta-parameters are
    broadcast to one copy per task, and the gradient of the sum of the tasks' inner losses with
    respect to the copies is each task's own gradient (task i's loss depends only on copy i). With
    `first_order=False` the graph is kept (second-order MAML). Runs in grad mode even inside
    `torch.no_grad()`.

    Args:
        policy: the policy architecture.
        params: meta-parameters, one tensor per name (not modified).
        episodes: stacked train episodes (`stack_episodes`), `[N, T, B, ...]`: one set that every
            step reuses, or a sequence of `num_steps` sets (step k on set k).
        advantages: `[N, T, B]` constant advantages (a sequence, one per set, with a sequence).
        inner_lr: SGD step size (a number, or one tensor per parameter name: Meta-SGD, per step or not).
        num_steps: inner steps.
        first_order: drop the second-order terms of the meta-gradient.
        estimator: the inner surrogate (`surrogate_weights`): "score", "dice" or "lvc".
    """
    sets = [episodes] if isinstance(episodes, Episodes) else list(episodes)
    set_advantages = [advantages] if isinstance(advantages, torch.Tensor) else list(advantages)
    if len(sets) not in (1, num_steps) or len(set_advantages) != len(sets):
        raise ValueError(f"got {len(sets)} episode sets and {len(set_advantages)} advantages for "
                         f"num_steps={num_steps}: give one set, or one per step")
    n = sets[0].mask.shape[0]
    with torch.enable_grad():
        current = {
            name: p.unsqueeze(0).expand(n, *p.shape) if p.requires_grad
            else p.detach().unsqueeze(0).repeat(n, *[1] * p.dim()).requires_grad_(True)
            for name, p in params.items()
        }
        for k in range(num_steps):
            step_episodes, step_advantages = sets[k % len(sets)], set_advantages[k % len(sets)]
            log_probs = task_distribution(policy, current, step_episodes.observations).log_prob(step_episodes.actions)
            weights = surrogate_weights(log_probs, step_episodes.mask, estimator)
            loss = -task_means(weights * step_advantages.detach(), step_episodes.mask).sum()
            grads = torch.autograd.grad(loss, list(current.values()), create_graph=not first_order, allow_unused=True)
            current = {name: p if g is None else p - step_size(inner_lr, name, params[name], k) * g
                       for (name, p), g in zip(current.items(), grads, strict=True)}
    return current
