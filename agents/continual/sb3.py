"""Stable-Baselines3 bridge: PPO with an EWC term (`EWCPPO`) and functional views of its actor-critic.

`EWCPPO` is SB3's PPO whose every minibatch loss also carries `regularizer.loss(θ)`, with θ the SB3
policy's parameters by name (`mlp_extractor.policy_net.*`, `action_net.*`, `log_std` for the
actor; `mlp_extractor.value_net.*`, `value_net.*` for the critic). PPO's own `train()` is reused
untouched: during `train()` the optimizer's `zero_grad` is wrapped so that, right after the
gradients are reset, the regulariser's gradient is written into them; PPO's `loss.backward()` then
accumulates on top, and PPO's gradient clipping and optimizer step see the sum. That is exactly
"the penalty is part of each minibatch's loss before clipping", without copying PPO's loop.
Weight transfer to and from our policy is in `agents.continual.sb3_transfer`:

    model = EWCPPO("MlpPolicy", env, regularizer=EWC(strength=100.0), policy_kwargs=sb3_policy_kwargs(init))
    policy_to_sb3(init, model.policy)         # start PPO from a MAML initialisation
    model.learn(100_000)
    model.consolidate()                        # Fisher on the last rollout's states
    adapted = sb3_to_policy(model.policy)      # back to a GaussianMLPPolicy
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from stable_baselines3 import PPO
from stable_baselines3.common.policies import ActorCriticPolicy
from stable_baselines3.common.preprocessing import preprocess_obs
from stable_baselines3.common.vec_env import DummyVecEnv, VecEnv
from torch import nn
from torch.distributions import Independent, Normal
from torch.func import functional_call

from agents.continual.ewc import Regularizer
from agents.continual.fisher import (
    FISHER_METHODS,
    Params,
    PolicyFn,
    ValueFn,
    add_fishers,
    estimate_fisher,
    value_fisher,
)
from agents.continual.packnet import PackNet
from agents.continual.replay import BehaviourCloningReplay
from agents.continual.sb3_transfer import check_gaussian_policy

ACTOR_PREFIXES = ("mlp_extractor.policy_net.", "action_net.", "log_std")
CRITIC_PREFIXES = ("mlp_extractor.value_net.", "value_net.")

StateSource = np.ndarray | torch.Tensor | gym.Env | VecEnv | None


# ----------------------------------------------------------------------------------------------
# Functional views of an SB3 actor-critic
# ----------------------------------------------------------------------------------------------


def _with_prefix(params: Mapping[str, torch.Tensor], prefix: str) -> Params:
    """The entries of `params` under `prefix`, with the prefix stripped (a submodule's own names)."""
    return {name[len(prefix):]: t for name, t in params.items() if name.startswith(prefix)}


def _names(sb3_policy: ActorCriticPolicy, prefixes: Sequence[str]) -> list[str]:
    return [n for n, _ in sb3_policy.named_parameters() if n.startswith(tuple(prefixes))]


def actor_param_names(sb3_policy: ActorCriticPolicy) -> list[str]:
    """Names of the actor's parameters in `sb3_policy.named_parameters()` (policy MLP, action head, log-std)."""
    return _names(sb3_policy, ACTOR_PREFIXES)


def critic_param_names(sb3_policy: ActorCriticPolicy) -> list[str]:
    """Names of the critic's parameters in `sb3_policy.named_parameters()` (value MLP and value head)."""
    return _names(sb3_policy, CRITIC_PREFIXES)


def _features(sb3_policy: ActorCriticPolicy, obs: torch.Tensor, extractor: nn.Module) -> torch.Tensor:
    # Exactly SB3's input path (float cast, flatten), on a batch of one when given a single state (vmap).
    return extractor(preprocess_obs(obs, sb3_policy.observation_space, normalize_images=sb3_policy.normalize_images))


def sb3_actor_fn(sb3_policy: ActorCriticPolicy) -> PolicyFn:
    """`fn(obs, params) -> Independent(Normal(mean, std), 1)`: the SB3 actor evaluated under `params`.

    `params` uses the SB3 policy's own names (see `actor_param_names`); names it lacks fall back to
    the module's current values. Accepts `[N, obs_dim]` or a single `[obs_dim]` state (for vmap).

    Args:
        sb3_policy: an `ActorCriticPolicy` with a diagonal Gaussian action distribution.
    """
    check_gaussian_policy(sb3_policy)
    policy_net, action_net = sb3_policy.mlp_extractor.policy_net, sb3_policy.action_net

    def actor(obs: torch.Tensor, params: Mapping[str, torch.Tensor]) -> Independent:
        single = obs.ndim == 1
        features = _features(sb3_policy, obs.unsqueeze(0) if single else obs, sb3_policy.pi_features_extractor)
        latent = functional_call(policy_net, _with_prefix(params, "mlp_extractor.policy_net."), (features,))
        mean = functional_call(action_net, _with_prefix(params, "action_net."), (latent,))
        mean = mean.squeeze(0) if single else mean
        log_std = params["log_std"] if "log_std" in params else sb3_policy.log_std
        return Independent(Normal(mean, log_std.exp().expand_as(mean)), 1)

    return actor


def sb3_value_fn(sb3_policy: ActorCriticPolicy) -> ValueFn:
    """`fn(obs, params) -> V(obs)` (shape `[N]`, or a scalar for a single state): the SB3 critic under `params`.

    Args:
        sb3_policy: an `ActorCriticPolicy` (its critic's names: see `critic_param_names`).
    """
    check_gaussian_policy(sb3_policy)
    value_mlp, value_net = sb3_policy.mlp_extractor.value_net, sb3_policy.value_net

    def value(obs: torch.Tensor, params: Mapping[str, torch.Tensor]) -> torch.Tensor:
        single = obs.ndim == 1
        features = _features(sb3_policy, obs.unsqueeze(0) if single else obs, sb3_policy.vf_features_extractor)
        latent = functional_call(value_mlp, _with_prefix(params, "mlp_extractor.value_net."), (features,))
        out = functional_call(value_net, _with_prefix(params, "value_net."), (latent,))
        return out.reshape(()) if single else out.squeeze(-1)

    return value


def sb3_fisher(
    sb3_policy: ActorCriticPolicy,
    obs: np.ndarray | torch.Tensor,
    method: str = "analytic",
    include_critic: bool = False,
    value_noise_std: float = 1.0,
    **fisher_kwargs: Any,
) -> Params:
    """Diagonal Fisher of the SB3 actor (and optionally critic) on `obs`, keyed by SB3 parameter names.

    Args:
        sb3_policy: an `ActorCriticPolicy` with a diagonal Gaussian action distribution.
        obs: states of the task just learned, `[..., obs_dim]`.
        method: "analytic" (exact Gaussian Fisher) or "sampled" (Monte-Carlo), see `agents.continual.fisher`.
        include_critic: also add the critic's Fisher (`value_fisher`, likelihood N(V(s), value_noise_std²)).
        value_noise_std: standard deviation of the critic's Gaussian likelihood.
        **fisher_kwargs: passed to the actor's estimator (`batch_size`, `num_samples`, `generator`, `mask`).

    Returns:
        name -> tensor of the parameter's shape, every entry >= 0.
    """
    if method not in FISHER_METHODS:
        raise ValueError(f"method: must be one of {FISHER_METHODS}, got {method!r}")
    params = dict(sb3_policy.named_parameters())
    states = torch.as_tensor(np.asarray(obs) if not torch.is_tensor(obs) else obs, device=sb3_policy.device)
    fisher = estimate_fisher(
        sb3_actor_fn(sb3_policy), params, states, method, names=actor_param_names(sb3_policy), **fisher_kwargs
    )
    if include_critic:
        critic = value_fisher(
            sb3_value_fn(sb3_policy), params, states, names=critic_param_names(sb3_policy), noise_std=value_noise_std
        )
        fisher = add_fishers(fisher, critic)
    return fisher


# ----------------------------------------------------------------------------------------------
# EWC-regularised PPO
# ----------------------------------------------------------------------------------------------


class EWCPPO(PPO):
    """SB3 PPO with `regularizer.loss(policy parameters)` added to the loss of every minibatch.

    The gradient of the term is summed with PPO's before PPO clips the gradient norm and steps, and
    the term is logged as `train/ewc_penalty` (the bare Σ F (θ − θ*)²) and `train/ewc_loss` (the
    weighted λ/2 · penalty that was optimised), each averaged over the minibatches of one `train()`.
    `train/loss` stays PPO's own loss. With `regularizer=None` or strength 0 the updates are PPO's,
    bit for bit. The regulariser is not part of SB3's `save()`: store `regularizer.state_dict()`
    alongside and set `model.regularizer` after `EWCPPO.load`.

    Args:
        policy: as for PPO ("MlpPolicy" or an `ActorCriticPolicy` class).
        env: as for PPO.
        *args: PPO's further positional arguments.
        regularizer: an `agents.continual.ewc` regulariser (EWC, L2Regularizer, NoRegularizer) whose anchors use
            the SB3 policy's parameter names, or None for plain PPO.
        **kwargs: PPO's keyword arguments (n_steps, batch_size, seed, policy_kwargs, ...).
    """

    def __init__(
        self,
        policy: str | type[ActorCriticPolicy],
        env: Any,
        *args: Any,
        regularizer: Regularizer | None = None,
        **kwargs: Any,
    ) -> None:
        if regularizer is not None and not isinstance(regularizer, Regularizer):
            raise ValueError(
                f"regularizer: expected an agents.continual.ewc Regularizer or None, got {type(regularizer).__name__}"
            )
        self.regularizer = regularizer
        super().__init__(policy, env, *args, **kwargs)
        if isinstance(regularizer, BehaviourCloningReplay):
            regularizer.bind(sb3_actor_fn(self.policy))

    def _excluded_save_params(self) -> list[str]:
        # Kept out of SB3's cloudpickled zip: checkpoints save regularizer.state_dict() (weights_only loads).
        return [*super()._excluded_save_params(), "regularizer"]

    def _add_penalty_gradient(self) -> tuple[float, float]:
        """Write ∂ regularizer.loss / ∂θ into the (just reset) gradients; return (penalty, weighted loss)."""
        assert self.regularizer is not None
        params = dict(self.policy.named_parameters())
        if self.regularizer.strength == 0.0:
            with torch.no_grad():
                penalty = float(self.regularizer.penalty(params))
            return penalty, 0.0  # nothing to add: leaves PPO's gradients (None after zero_grad) untouched
        with torch.enable_grad():
            loss = self.regularizer.loss(params)  # one evaluation (replay draws one batch per minibatch)
        if loss.requires_grad:  # false before any consolidation, or for NoRegularizer
            loss.backward()
        return float(loss.detach()) / (0.5 * self.regularizer.strength), float(loss.detach())

    def train(self) -> None:
        """PPO's update on the current rollout buffer, each minibatch's gradient including the regulariser's."""
        if self.regularizer is None:
            super().train()
            return
        penalties: list[float] = []
        losses: list[float] = []
        optimizer = self.policy.optimizer
        reset = optimizer.zero_grad
        already_patched = "zero_grad" in vars(optimizer)

        def zero_grad_then_penalty(set_to_none: bool = True) -> None:
            reset(set_to_none)
            penalty, loss = self._add_penalty_gradient()
            penalties.append(penalty)
            losses.append(loss)

        # PPO.train() calls zero_grad exactly once per minibatch, right before loss.backward().
        optimizer.zero_grad = zero_grad_then_penalty  # type: ignore[method-assign]
        hooks = []
        if isinstance(self.regularizer, PackNet):
            optimizer.step = self._packnet_step(optimizer.step)  # type: ignore[method-assign]
            # Frozen entries get no gradient at all, so PPO's gradient-norm clipping counts free ones only.
            for name, p in self.policy.named_parameters():
                if (mask := self.regularizer.frozen(name)) is not None:
                    hooks.append(p.register_hook(lambda grad, mask=mask: grad.masked_fill(mask, 0.0)))
        try:
            super().train()
        finally:
            for hook in hooks:
                hook.remove()
            if already_patched:
                optimizer.zero_grad = reset  # type: ignore[method-assign]
            else:
                del optimizer.zero_grad
            if "step" in vars(optimizer):
                del optimizer.step
        if penalties:  # empty only if target_kl stopped before the first step
            self.logger.record("train/ewc_penalty", float(np.mean(penalties)))
            self.logger.record("train/ewc_loss", float(np.mean(losses)))

    def _packnet_step(self, step: Any) -> Any:
        """`step` that leaves the weights earlier tasks own as they were: their gradients are zeroed
        (by hooks, before clipping) and their values restored after it (Adam's momentum would move
        them otherwise)."""
        assert isinstance(self.regularizer, PackNet)
        params = dict(self.policy.named_parameters())
        masks = {name: mask for name in params if (mask := self.regularizer.frozen(name)) is not None}
        kept = {name: params[name].detach()[mask].clone() for name, mask in masks.items()}

        def frozen_step(*args: Any, **kwargs: Any) -> Any:
            out = step(*args, **kwargs)
            with torch.no_grad():
                for name, mask in masks.items():
                    params[name][mask] = kept[name]
            return out

        return frozen_step

    def task_states(self, source: StateSource = None, n_states: int = 2048, seed: int | None = None) -> np.ndarray:
        """Up to `n_states` observations `[n, obs_dim]` of the task just learned.

        Args:
            source: None for the last rollout buffer (after `learn()`); an array/tensor of observations
                `[..., obs_dim]`; or a gymnasium Env / SB3 VecEnv to roll the current (stochastic)
                policy in for `n_states` steps. Use a separate env, not the one PPO is training on
                (it gets reset). Rolling out draws from the global torch RNG, as SB3's predict does.
            n_states: how many states to return; larger sources are thinned evenly (deterministic).
            seed: seed for the env's reset when `source` is an env.
        """
        if int(n_states) < 1:
            raise ValueError(f"n_states: must be >= 1, got {n_states}")
        obs_dim = int(np.prod(self.observation_space.shape))
        if source is None:
            if not self.rollout_buffer.full:
                raise ValueError("source: the rollout buffer is not filled yet; call learn() first "
                                 "or pass observations or an env")
            states = np.asarray(self.rollout_buffer.observations)
        elif isinstance(source, gym.Env | VecEnv):
            states = self._rollout_states(source, int(n_states), seed)
        else:
            states = source.detach().cpu().numpy() if torch.is_tensor(source) else np.asarray(source)
        if states.shape[-1] != obs_dim:
            raise ValueError(f"source: observations have {states.shape[-1]} features, the policy reads {obs_dim}")
        states = states.reshape(-1, obs_dim)
        if states.shape[0] > n_states:
            states = states[np.linspace(0, states.shape[0] - 1, int(n_states)).round().astype(int)]
        return states

    def _rollout_states(self, env: gym.Env | VecEnv, n_states: int, seed: int | None) -> np.ndarray:
        venv = env if isinstance(env, VecEnv) else DummyVecEnv([lambda: env])
        if seed is not None:
            venv.seed(seed)
        obs = venv.reset()
        states = []
        for _ in range(math.ceil(n_states / venv.num_envs)):
            states.append(np.asarray(obs))
            actions, _ = self.policy.predict(obs, deterministic=False)
            obs, _, _, _ = venv.step(actions)
        return np.concatenate(states)[:n_states]

    def consolidate(
        self,
        source: StateSource = None,
        n_states: int = 2048,
        method: str = "analytic",
        include_critic: bool = False,
        value_noise_std: float = 1.0,
        seed: int | None = None,
        exclude: Sequence[str] = (),
        **fisher_kwargs: Any,
    ) -> Params:
        """End a task: estimate the Fisher on its states and fold it, with the current parameters, into the regulariser.

        Args:
            source: where the states come from (rollout buffer, observations or env; see `task_states`).
            n_states: number of states to estimate the Fisher on.
            method: "analytic" or "sampled" Fisher of the actor (see `agents.continual.fisher`).
            include_critic: also anchor the critic, weighted by its `value_fisher`.
            value_noise_std: standard deviation of the critic's Gaussian likelihood.
            seed: env reset seed when `source` is an env.
            exclude: parameter names left unanchored (e.g. a task-specific output layer).
            **fisher_kwargs: passed to the actor's Fisher estimator (`batch_size`, `num_samples`, `generator`).

        Returns:
            The Fisher just estimated (SB3 parameter names), before any normalisation by the regulariser;
            empty for replay, which remembers the states (and the policy's means on them) instead.
        """
        if self.regularizer is None:
            raise ValueError("regularizer: is None, so there is nothing to consolidate into")
        params = dict(self.policy.named_parameters())
        if isinstance(self.regularizer, PackNet | BehaviourCloningReplay):
            unknown = sorted(set(exclude) - set(params))
            if unknown:
                raise ValueError(f"exclude: {unknown} are not parameters of the policy")
        if isinstance(self.regularizer, PackNet):  # no states needed: prune and freeze the actor's weights
            self.regularizer.assign(params, [n for n in actor_param_names(self.policy) if n not in set(exclude)])
            return {}
        states = self.task_states(source, n_states, seed)
        if isinstance(self.regularizer, BehaviourCloningReplay):  # memory, not a Fisher: remember the states
            self.regularizer.remember(torch.as_tensor(states), params, {n: params[n] for n in exclude})
            return {}
        fisher = sb3_fisher(self.policy, states, method, include_critic, value_noise_std, **fisher_kwargs)
        unknown = sorted(set(exclude) - set(fisher))
        if unknown:
            raise ValueError(f"exclude: {unknown} are not anchored parameters; allowed: {sorted(fisher)}")
        anchored = {name: value for name, value in fisher.items() if name not in set(exclude)}
        self.regularizer.consolidate(params, anchored)
        return fisher
