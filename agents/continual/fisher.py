"""Diagonal Fisher estimates for elastic weight consolidation (the regularisers live in `agents.continual.ewc`).

Fisher estimators take any callable `fn(obs, params) -> distribution` (our `GaussianMLPPolicy`
is one) and a subset of parameter names, so the same code serves an SB3 actor whose weights were
mapped into our policy. Both square per-sample quantities; neither squares a batch-mean gradient.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from torch import nn
from torch.distributions import Distribution, Independent, Normal
from torch.func import functional_call, grad, jacrev, vmap

Params = dict[str, torch.Tensor]
PolicyFn = Callable[[torch.Tensor, Mapping[str, torch.Tensor]], Distribution]
ValueFn = Callable[[torch.Tensor, Mapping[str, torch.Tensor]], torch.Tensor]

FISHER_METHODS = ("analytic", "sampled")


def functional(module: nn.Module) -> Callable[[torch.Tensor, Mapping[str, torch.Tensor]], Any]:
    """Wrap a plain module (e.g. an SB3 value head) as `fn(obs, params) -> module(obs)` under `params`."""

    def call(obs: torch.Tensor, params: Mapping[str, torch.Tensor]) -> Any:
        return functional_call(module, dict(params), (obs,))

    return call


def _split_params(
    params: Mapping[str, torch.Tensor], names: Iterable[str] | None
) -> tuple[Params, Params]:
    """Detached (differentiated, held fixed) parameter dicts for the chosen names."""
    chosen = list(params) if names is None else list(names)
    missing = [n for n in chosen if n not in params]
    if missing:
        raise ValueError(f"names: {missing} are not in params (available: {sorted(params)})")
    if not chosen:
        raise ValueError("names: at least one parameter name is required")
    sub = {n: params[n].detach() for n in chosen}
    fixed = {n: t.detach() for n, t in params.items() if n not in sub}
    return sub, fixed


def _flatten_states(obs: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """`[..., obs_dim]` observations as rows `[N, obs_dim]`, dropping rows where `mask` is 0."""
    if obs.ndim < 1:
        raise ValueError(f"obs: expected shape [..., obs_dim], got {tuple(obs.shape)}")
    rows = obs.detach().reshape(-1, obs.shape[-1]) if obs.ndim > 1 else obs.detach().reshape(1, -1)
    if mask is not None:
        if tuple(mask.shape) != tuple(obs.shape[:-1]):
            raise ValueError(
                f"mask: shape {tuple(mask.shape)} must equal obs.shape[:-1] {tuple(obs.shape[:-1])}"
            )
        rows = rows[mask.reshape(-1) > 0]
    if rows.shape[0] == 0:
        raise ValueError("obs: no states to estimate the Fisher on (empty batch or all masked)")
    if not torch.isfinite(rows).all():
        raise ValueError("obs: contains NaN or inf")
    return rows


def _gaussian(dist: Distribution) -> Normal:
    """The Normal inside a (possibly `Independent`) diagonal Gaussian distribution."""
    base = dist.base_dist if isinstance(dist, Independent) else dist
    if not isinstance(base, Normal):
        raise ValueError(f"policy: the analytic Fisher needs a (diagonal) Normal, got {type(base).__name__}")
    return base


def _check_batch_size(batch_size: int) -> None:
    if int(batch_size) < 1:
        raise ValueError(f"batch_size: must be >= 1, got {batch_size}")


def analytic_fisher(
    policy_fn: PolicyFn,
    params: Mapping[str, torch.Tensor],
    obs: torch.Tensor,
    names: Iterable[str] | None = None,
    mask: torch.Tensor | None = None,
    batch_size: int = 256,
) -> Params:
    """Diagonal of the exact Fisher of a diagonal-Gaussian policy, averaged over states.

    For π(·|s) = N(μ(s), diag σ(s)²) the Fisher of one state, in the parameters θ, is
    J_μ(s)ᵀ diag(1/σ²) J_μ(s) + 2 J_η(s)ᵀ J_η(s) with η = log σ (the μ–η cross terms vanish).
    Its diagonal is computed per state from Jacobians (`vmap(jacrev)`), then averaged over
    states. With a state-independent log-std this gives 2 for every log-std entry (0 where the
    policy's clamp is active) and E_s[Σ_a (∂μ_a/∂θ_i)² / σ_a²] for the mean network.
    Exact but costs 2·act_dim backward passes per state (a 64x64 policy, 8 actions, 5000 states:
    a few seconds on CPU); `sampled_fisher` costs one per sampled action.

    Args:
        policy_fn: callable `(obs, params) -> Normal or Independent(Normal)`, e.g. a GaussianMLPPolicy.
        params: every parameter the callable needs, name -> tensor (not modified).
        obs: states of the task just learned, `[..., obs_dim]`.
        names: parameters to estimate the Fisher for (default: all of `params`); others held fixed.
        mask: optional `obs.shape[:-1]` weights; states where it is 0 (episode padding) are dropped.
        batch_size: states per vectorised Jacobian call (bounds memory).

    Returns:
        name -> tensor of the parameter's shape, every entry >= 0.
    """
    _check_batch_size(batch_size)
    sub, fixed = _split_params(params, names)
    states = _flatten_states(obs, mask)

    def whitened(theta: Params, s: torch.Tensor) -> torch.Tensor:
        # Rows scaled so the Fisher diagonal is a plain sum of squared Jacobian entries:
        # (∂(μ_a/σ̄_a))² = (∂μ_a)²/σ_a² with σ̄ held constant, and (∂(√2·η_a))² = 2(∂η_a)².
        normal = _gaussian(policy_fn(s, {**fixed, **theta}))
        return torch.cat([normal.loc / normal.scale.detach(), math.sqrt(2.0) * normal.scale.log()], dim=-1)

    per_state_jac = vmap(jacrev(whitened), in_dims=(None, 0))
    total = {n: torch.zeros_like(t) for n, t in sub.items()}
    for start in range(0, states.shape[0], int(batch_size)):
        jac = per_state_jac(sub, states[start : start + int(batch_size)])  # name -> [B, 2·act, *shape]
        for n in total:
            total[n] += jac[n].pow(2).sum(dim=(0, 1))
    return {n: t / states.shape[0] for n, t in total.items()}


def sampled_fisher(
    policy_fn: PolicyFn,
    params: Mapping[str, torch.Tensor],
    obs: torch.Tensor,
    names: Iterable[str] | None = None,
    mask: torch.Tensor | None = None,
    num_samples: int = 1,
    generator: torch.Generator | None = None,
    batch_size: int = 256,
) -> Params:
    """Monte-Carlo diagonal Fisher: mean of squared per-sample gradients of log π(a|s), a ~ π(·|s).

    F_i ≈ 1/(N·M) Σ_n Σ_m (∂/∂θ_i log π(a_nm | s_n))² with M = `num_samples` actions drawn from the
    policy itself (so its expectation is the true Fisher, not the "empirical Fisher" of logged
    actions). Gradients are taken per (state, action) pair with `vmap(grad)`.

    Args:
        policy_fn: callable `(obs, params) -> distribution` with `log_prob`; Gaussians are sampled
            with `generator`, other distributions with their own `sample()` (global torch RNG).
        params: every parameter the callable needs, name -> tensor (not modified).
        obs: states of the task just learned, `[..., obs_dim]`.
        names: parameters to estimate the Fisher for (default: all of `params`); others held fixed.
        mask: optional `obs.shape[:-1]` weights; states where it is 0 (episode padding) are dropped.
        num_samples: actions drawn per state.
        generator: seeded torch generator for the action noise (reproducible estimates).
        batch_size: (state, action) pairs per vectorised gradient call.

    Returns:
        name -> tensor of the parameter's shape, every entry >= 0.
    """
    _check_batch_size(batch_size)
    if int(num_samples) < 1:
        raise ValueError(f"num_samples: must be >= 1, got {num_samples}")
    sub, fixed = _split_params(params, names)
    states = _flatten_states(obs, mask).repeat_interleave(int(num_samples), dim=0)

    def log_prob(theta: Params, s: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        return policy_fn(s, {**fixed, **theta}).log_prob(a)

    per_sample_grad = vmap(grad(log_prob), in_dims=(None, 0, 0))
    total = {n: torch.zeros_like(t) for n, t in sub.items()}
    for start in range(0, states.shape[0], int(batch_size)):
        chunk = states[start : start + int(batch_size)]
        with torch.no_grad():
            dist = policy_fn(chunk, {**fixed, **sub})
            base = dist.base_dist if isinstance(dist, Independent) else dist
            if isinstance(base, Normal):
                noise = torch.randn(base.loc.shape, generator=generator, dtype=base.loc.dtype)
                actions = base.loc + base.scale * noise.to(base.loc.device)
            else:
                actions = dist.sample()
        grads = per_sample_grad(sub, chunk, actions)
        for n in total:
            total[n] += grads[n].pow(2).sum(dim=0)
    return {n: t / states.shape[0] for n, t in total.items()}


def value_fisher(
    value_fn: ValueFn,
    params: Mapping[str, torch.Tensor],
    obs: torch.Tensor,
    names: Iterable[str] | None = None,
    mask: torch.Tensor | None = None,
    noise_std: float = 1.0,
    batch_size: int = 256,
) -> Params:
    """Diagonal Fisher of a value function read as a Gaussian likelihood N(V(s), noise_std²).

    F_i = E_s[(∂V(s)/∂θ_i)²] / noise_std², with the gradient taken per state. Merge it into the
    actor's Fisher with `add_fishers` (entries of shared parameters add up).

    Args:
        value_fn: callable `(obs, params) -> value` giving one number per state
            (wrap a plain module with `functional(module)`).
        params: every parameter the callable needs, name -> tensor (not modified).
        obs: states of the task just learned, `[..., obs_dim]`.
        names: critic parameters to estimate the Fisher for (default: all of `params`).
        mask: optional `obs.shape[:-1]` weights; states where it is 0 are dropped.
        noise_std: standard deviation of the Gaussian likelihood (scales the Fisher by 1/noise_std²).
        batch_size: states per vectorised gradient call.

    Returns:
        name -> tensor of the parameter's shape, every entry >= 0.
    """
    _check_batch_size(batch_size)
    if not (math.isfinite(noise_std) and noise_std > 0):
        raise ValueError(f"noise_std: must be a finite number > 0, got {noise_std}")
    sub, fixed = _split_params(params, names)
    states = _flatten_states(obs, mask)

    def value(theta: Params, s: torch.Tensor) -> torch.Tensor:
        out = value_fn(s, {**fixed, **theta})
        if out.numel() != 1:
            raise ValueError(f"value_fn: must return one number per state, got shape {tuple(out.shape)}")
        return out.reshape(())

    per_state_grad = vmap(grad(value), in_dims=(None, 0))
    total = {n: torch.zeros_like(t) for n, t in sub.items()}
    for start in range(0, states.shape[0], int(batch_size)):
        grads = per_state_grad(sub, states[start : start + int(batch_size)])
        for n in total:
            total[n] += grads[n].pow(2).sum(dim=0)
    return {n: t / (states.shape[0] * noise_std**2) for n, t in total.items()}


def estimate_fisher(
    policy_fn: PolicyFn,
    params: Mapping[str, torch.Tensor],
    obs: torch.Tensor,
    method: str = "analytic",
    **kwargs: Any,
) -> Params:
    """Dispatch to `analytic_fisher` or `sampled_fisher` by name (`method` in FISHER_METHODS)."""
    if method == "analytic":
        return analytic_fisher(policy_fn, params, obs, **kwargs)
    if method == "sampled":
        return sampled_fisher(policy_fn, params, obs, **kwargs)
    raise ValueError(f"method: must be one of {FISHER_METHODS}, got {method!r}")


def add_fishers(*fishers: Mapping[str, torch.Tensor]) -> Params:
    """Union of Fisher dicts; entries of a name present in several (shared parameters) are summed."""
    out: Params = {}
    for fisher in fishers:
        for name, value in fisher.items():
            if name in out:
                if out[name].shape != value.shape:
                    raise ValueError(f"fisher[{name!r}]: shapes {tuple(out[name].shape)} and "
                                     f"{tuple(value.shape)} differ")
                out[name] = out[name] + value.detach()
            else:
                out[name] = value.detach().clone()
    return out


def fisher_scale(fisher: Mapping[str, torch.Tensor], by: str = "max") -> float:
    """The global max (or mean) entry over all names: the divisor that makes the Fisher's scale 1.

    The raw Fisher scales like 1/σ² and so grows as the policy sharpens; dividing by this makes the
    strength λ mean the same on every task (at the cost of EWC's probabilistic reading and of
    comparability with the literature's raw λ).
    """
    if by not in ("max", "mean"):
        raise ValueError(f"by: must be 'max' or 'mean', got {by!r}")
    if not fisher:
        raise ValueError("fisher: is empty")
    flat = torch.cat([t.detach().reshape(-1) for t in fisher.values()])
    scale = flat.max() if by == "max" else flat.mean()
    if not torch.isfinite(scale) or scale <= 0:
        raise ValueError(f"fisher: cannot normalise by {by} = {float(scale)} (all-zero or non-finite Fisher)")
    return float(scale)

