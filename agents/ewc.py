"""Elastic weight consolidation: diagonal Fisher estimates, consolidation and the quadratic penalty.

EWC (Kirkpatrick et al. 2017) protects what a policy learned on earlier tasks by pulling each
parameter towards its value after those tasks, weighted by the diagonal of the Fisher information
of the policy on the states of those tasks. The loss on a new task becomes

    L(θ) + λ/2 · Σ_i F_i (θ_i − θ*_i)²

Convention here: `penalty(params)` returns the bare sum Σ_i F_i (θ_i − θ*_i)² and `loss(params)`
returns `strength / 2 * penalty(params)`, i.e. `strength` is the paper's λ and the 1/2 is applied
by `loss` only.

Two consolidation modes:

- "online" (Schwarz et al. 2018, Progress & Compress): one running Fisher F ← γ·F + F_new and a
  single anchor θ* = the parameters at the latest consolidation.
- "separate" (the original EWC): one (F_k, θ*_k) pair per task, penalties summed over tasks.

`L2Regularizer` is the same machinery with unit weights: the "l2" baseline, not EWC.

Fisher estimators take any callable `fn(obs, params) -> distribution` (our `GaussianMLPPolicy`
is one) and a subset of parameter names, so the same code serves an SB3 actor whose weights were
mapped into our policy. Both square per-sample quantities; neither squares a batch-mean gradient.
"""

from __future__ import annotations

import math
import warnings
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
MODES = ("online", "separate")
NORMALIZATIONS = (None, "max", "mean")
REGULARIZER_KINDS = ("ewc", "l2", "none")


# ----------------------------------------------------------------------------------------------
# Fisher estimation
# ----------------------------------------------------------------------------------------------


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


def normalize_fisher(fisher: Mapping[str, torch.Tensor], by: str = "max") -> Params:
    """Divide every entry by the global max (or mean) over all names, so the scale is 1.

    The raw Fisher scales like 1/σ² and so grows as the policy sharpens; normalising makes the
    strength λ mean the same on every task (at the cost of EWC's probabilistic reading).
    """
    if by not in ("max", "mean"):
        raise ValueError(f"by: must be 'max' or 'mean', got {by!r}")
    if not fisher:
        raise ValueError("fisher: is empty")
    flat = torch.cat([t.detach().reshape(-1) for t in fisher.values()])
    scale = flat.max() if by == "max" else flat.mean()
    if not torch.isfinite(scale) or scale <= 0:
        raise ValueError(f"fisher: cannot normalise by {by} = {float(scale)} (all-zero or non-finite Fisher)")
    return {n: t.detach() / scale for n, t in fisher.items()}


# ----------------------------------------------------------------------------------------------
# Regularisers
# ----------------------------------------------------------------------------------------------


def _check_choice(field: str, value: Any, allowed: tuple) -> None:
    if value not in allowed:
        raise ValueError(f"{field}: must be one of {allowed}, got {value!r}")


def _snapshot(params: Mapping[str, torch.Tensor], names: Iterable[str]) -> Params:
    missing = [n for n in names if n not in params]
    if missing:
        raise ValueError(f"params: missing {missing} needed for consolidation")
    return {n: params[n].detach().clone() for n in names}


def _check_fisher(fisher: Mapping[str, torch.Tensor], params: Mapping[str, torch.Tensor]) -> None:
    if not fisher:
        raise ValueError("fisher: is empty; estimate it with analytic_fisher or sampled_fisher")
    for name, value in fisher.items():
        if name not in params:
            raise ValueError(f"fisher[{name!r}]: no parameter of that name in params")
        if value.shape != params[name].shape:
            raise ValueError(f"fisher[{name!r}]: shape {tuple(value.shape)} != parameter shape "
                             f"{tuple(params[name].shape)}")
        if not torch.isfinite(value).all() or (value < 0).any():
            raise ValueError(f"fisher[{name!r}]: entries must be finite and >= 0")
    if all(float(v.sum()) == 0.0 for v in fisher.values()):
        # The classic silent failure: EWC with a zero Fisher is no regulariser at all.
        warnings.warn("fisher: every entry is 0, so this consolidation adds no penalty", stacklevel=3)


class Regularizer:
    """Quadratic pull towards anchors: Σ_k Σ_i w_ki (θ_i − θ*_ki)² (unit w when a term has none).

    Subclasses decide what `consolidate` stores; the penalty, loss and (de)serialisation are shared.

    Args:
        strength: λ; `loss(params) = strength / 2 * penalty(params)`.
        mode: "online" (one accumulated term) or "separate" (one term per task).
        gamma: online decay in [0, 1] applied to the accumulated weights (EWC online mode only).
        normalize: None, "max" or "mean": rescale each new Fisher with `normalize_fisher` (EWC only).
    """

    kind = "none"

    def __init__(
        self, strength: float = 1.0, mode: str = "online", gamma: float = 1.0, normalize: str | None = None
    ) -> None:
        if not (math.isfinite(strength) and strength >= 0):
            raise ValueError(f"strength: must be a finite number >= 0, got {strength}")
        _check_choice("mode", mode, MODES)
        if not (0.0 <= gamma <= 1.0):
            raise ValueError(f"gamma: must be in [0, 1], got {gamma}")
        _check_choice("normalize", normalize, NORMALIZATIONS)
        self.strength = float(strength)
        self.mode = mode
        self.gamma = float(gamma)
        self.normalize = normalize
        self._weights: list[Params | None] = []
        self._anchors: list[Params] = []
        self._num_tasks = 0

    @property
    def num_tasks(self) -> int:
        """Number of consolidations (tasks) so far."""
        return self._num_tasks

    @property
    def anchors(self) -> list[Params]:
        """The anchor θ* of each penalty term (one in online mode, one per task in separate mode)."""
        return list(self._anchors)

    @property
    def weights(self) -> list[Params | None]:
        """The weight (Fisher) of each penalty term; None means unit weights."""
        return list(self._weights)

    def consolidate(
        self, params: Mapping[str, torch.Tensor], fisher: Mapping[str, torch.Tensor] | None = None
    ) -> None:
        """Record the end of a task with its final `params` (and its Fisher where the kind uses one)."""
        self._num_tasks += 1

    def penalty(self, params: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Σ_k Σ_i w_ki (θ_i − θ*_ki)², a differentiable scalar (0 before any consolidation)."""
        device = next(iter(params.values())).device if params else None
        total = torch.zeros((), device=device)
        for weight, anchor in zip(self._weights, self._anchors, strict=True):
            for name, theta_star in anchor.items():
                if name not in params:
                    raise ValueError(f"params: missing {name!r}, which the penalty anchors")
                theta = params[name]
                if theta.shape != theta_star.shape:
                    raise ValueError(f"params[{name!r}]: shape {tuple(theta.shape)} != anchored "
                                     f"shape {tuple(theta_star.shape)}")
                sq = (theta - theta_star.to(theta.device)).pow(2)
                if weight is not None:
                    sq = weight[name].to(theta.device) * sq
                total = total + sq.sum()
        return total

    def loss(self, params: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """The term to add to the training loss: strength / 2 * penalty(params)."""
        return 0.5 * self.strength * self.penalty(params)

    def state_dict(self) -> dict[str, Any]:
        """Plain tensors, strings and numbers: saves with torch.save, loads with weights_only=True."""
        return {
            "kind": self.kind,
            "mode": self.mode,
            "gamma": self.gamma,
            "strength": self.strength,
            "normalize": self.normalize,
            "num_tasks": self._num_tasks,
            "weights": [None if w is None else {n: t.clone() for n, t in w.items()} for w in self._weights],
            "anchors": [{n: t.clone() for n, t in a.items()} for a in self._anchors],
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore from `state_dict()`; the kind and mode must match this regulariser's."""
        if state.get("kind") != self.kind:
            raise ValueError(f"state['kind']: expected {self.kind!r}, got {state.get('kind')!r}")
        if state.get("mode") != self.mode:
            raise ValueError(f"state['mode']: expected {self.mode!r}, got {state.get('mode')!r}")
        weights, anchors = list(state["weights"]), list(state["anchors"])
        if len(weights) != len(anchors):
            raise ValueError(f"state: {len(weights)} weight terms but {len(anchors)} anchors")
        self.gamma = float(state["gamma"])
        self.strength = float(state["strength"])
        self.normalize = state["normalize"]
        self._num_tasks = int(state["num_tasks"])
        self._weights = [None if w is None else {n: t.clone() for n, t in w.items()} for w in weights]
        self._anchors = [{n: t.clone() for n, t in a.items()} for a in anchors]

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(strength={self.strength}, mode={self.mode!r}, gamma={self.gamma}, "
                f"normalize={self.normalize!r}, num_tasks={self._num_tasks})")


class NoRegularizer(Regularizer):
    """The "none" baseline: counts tasks, penalty always 0."""

    kind = "none"


class EWC(Regularizer):
    """Elastic weight consolidation with a diagonal Fisher, online or per-task (see module doc).

    online:   F ← γ·F + F_new,  θ* ← params at the latest consolidation.
    separate: terms (F_k, θ*_k) appended per task; penalty = Σ_k Σ_i F_ki (θ_i − θ*_ki)².

    Only the parameters named in the Fisher are anchored; every consolidation must use the same
    names in online mode.
    """

    kind = "ewc"

    def consolidate(
        self, params: Mapping[str, torch.Tensor], fisher: Mapping[str, torch.Tensor] | None = None
    ) -> None:
        """Fold the task just learned (final `params`, its `fisher`) into the penalty."""
        if fisher is None:
            raise ValueError("fisher: EWC needs a Fisher (use L2Regularizer for unit weights)")
        _check_fisher(fisher, params)
        new = {n: t.detach().clone() for n, t in fisher.items()}
        if self.normalize is not None:
            new = normalize_fisher(new, by=self.normalize)
        anchor = _snapshot(params, new)
        if self.mode == "separate":
            self._weights.append(new)
            self._anchors.append(anchor)
        elif not self._weights:
            self._weights, self._anchors = [new], [anchor]
        else:
            old = self._weights[0]
            assert old is not None
            if set(old) != set(new):
                raise ValueError(f"fisher: names {sorted(new)} differ from the consolidated {sorted(old)}")
            self._weights = [{n: self.gamma * old[n].to(new[n].device) + new[n] for n in new}]
            self._anchors = [anchor]
        self._num_tasks += 1


class L2Regularizer(Regularizer):
    """The "l2" baseline: unit weights, Σ_k Σ_i (θ_i − θ*_ki)²; not EWC.

    online keeps only the latest anchor (plain squared distance to it); separate keeps one anchor
    per task. If a Fisher is passed, only its names are anchored (its values are ignored), so the
    baseline covers the same parameters as EWC; otherwise every parameter in `params` is.
    `gamma` and `normalize` are unused.
    """

    kind = "l2"

    def consolidate(
        self, params: Mapping[str, torch.Tensor], fisher: Mapping[str, torch.Tensor] | None = None
    ) -> None:
        """Anchor at the final `params` of the task just learned."""
        if not params:
            raise ValueError("params: is empty")
        anchor = _snapshot(params, list(params) if fisher is None else list(fisher))
        if self.mode == "separate":
            self._weights.append(None)
            self._anchors.append(anchor)
        else:
            self._weights, self._anchors = [None], [anchor]
        self._num_tasks += 1


def make_regularizer(
    kind: str,
    *,
    strength: float = 1.0,
    mode: str = "online",
    gamma: float = 1.0,
    normalize: str | None = None,
) -> Regularizer:
    """Build the regulariser named `kind` ("ewc", "l2" or "none"); see `Regularizer` for the arguments."""
    _check_choice("kind", kind, REGULARIZER_KINDS)
    cls = {"ewc": EWC, "l2": L2Regularizer, "none": NoRegularizer}[kind]
    return cls(strength=strength, mode=mode, gamma=gamma, normalize=normalize)
