"""Weight transfer between our `GaussianMLPPolicy` and an SB3 `ActorCriticPolicy`.

`sb3_policy_kwargs(policy)` builds SB3 `policy_kwargs` with `policy`'s architecture;
`policy_to_sb3` and `sb3_to_policy` copy the actor's weights each way, so that both give the same
action distribution: SB3 only casts a flat `Box` observation to float (no normalisation), and its
diagonal Gaussian is unsquashed; SB3 clips actions to the `Box` only when stepping an env.
`sb3_names` maps our parameter names to SB3's (for regularisers that work by name).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from gymnasium import spaces
from stable_baselines3.common.distributions import DiagGaussianDistribution, SquashedDiagGaussianDistribution
from stable_baselines3.common.policies import ActorCriticPolicy
from stable_baselines3.common.torch_layers import FlattenExtractor
from torch import nn

from agents.policy import GaussianMLPPolicy


def check_gaussian_policy(sb3_policy: nn.Module) -> None:
    """ValueError unless `sb3_policy` is an actor-critic with an unsquashed diagonal Gaussian on flat Boxes."""
    if not isinstance(sb3_policy, ActorCriticPolicy):
        raise ValueError(f"sb3_policy: expected an SB3 ActorCriticPolicy, got {type(sb3_policy).__name__}")
    dist = sb3_policy.action_dist
    if not isinstance(dist, DiagGaussianDistribution) or isinstance(dist, SquashedDiagGaussianDistribution):
        raise ValueError(f"sb3_policy.action_dist: needs an unsquashed DiagGaussianDistribution (a Box action "
                         f"space, use_sde=False), got {type(dist).__name__}")
    for field in ("observation_space", "action_space"):
        space = getattr(sb3_policy, field)
        if not isinstance(space, spaces.Box) or len(space.shape) != 1:
            raise ValueError(f"sb3_policy.{field}: needs a flat (1-D) Box, got {space}")


def sb3_policy_kwargs(
    policy: GaussianMLPPolicy, critic_hidden_sizes: Sequence[int] | None = None
) -> dict[str, Any]:
    """SB3 `policy_kwargs` whose actor has `policy`'s architecture (then copy the weights with `policy_to_sb3`).

    Args:
        policy: the policy to mirror (hidden widths, tanh activations).
        critic_hidden_sizes: hidden widths of the critic (default: the actor's).
    """
    critic = policy.hidden_sizes if critic_hidden_sizes is None else critic_hidden_sizes
    return {
        "net_arch": {"pi": list(policy.hidden_sizes), "vf": [int(h) for h in critic]},
        "activation_fn": nn.Tanh,
        "log_std_init": float(policy.log_std.detach().mean()),
    }


def _sb3_actor_layers(sb3_policy: nn.Module) -> list[nn.Linear]:
    """The SB3 actor's linear layers, input to output, after checking it is a flat tanh MLP."""
    check_gaussian_policy(sb3_policy)
    assert isinstance(sb3_policy, ActorCriticPolicy)
    if not isinstance(sb3_policy.pi_features_extractor, FlattenExtractor):
        raise ValueError(f"features_extractor_class: must be FlattenExtractor (our policy reads the raw "
                         f"observation), got {type(sb3_policy.pi_features_extractor).__name__}")
    modules = list(sb3_policy.mlp_extractor.policy_net)
    for i, module in enumerate(modules):
        expected = nn.Linear if i % 2 == 0 else nn.Tanh
        if not isinstance(module, expected):
            raise ValueError(f"activation_fn: the SB3 actor must alternate Linear and Tanh layers "
                             f"(GaussianMLPPolicy is a tanh MLP), found {type(module).__name__} at position {i}")
    return [m for m in modules if isinstance(m, nn.Linear)] + [sb3_policy.action_net]


def _our_layers(policy: GaussianMLPPolicy) -> list[nn.Linear]:
    return [m for m in policy.mean_net if isinstance(m, nn.Linear)]


def _check_same_architecture(policy: GaussianMLPPolicy, sb3_layers: Sequence[nn.Linear]) -> None:
    """ValueError naming every dimension in which the two actors differ."""
    sb3_hidden = tuple(layer.out_features for layer in sb3_layers[:-1])
    diffs = [
        f"{field}: GaussianMLPPolicy has {ours}, the SB3 actor has {theirs}"
        for field, ours, theirs in (
            ("obs_dim", policy.obs_dim, sb3_layers[0].in_features),
            ("act_dim", policy.act_dim, sb3_layers[-1].out_features),
            ("hidden_sizes", policy.hidden_sizes, sb3_hidden),
        )
        if ours != theirs
    ]
    if diffs:
        raise ValueError("architecture mismatch (build the SB3 policy with sb3_policy_kwargs(policy)): "
                         + "; ".join(diffs))


def policy_to_sb3(policy: GaussianMLPPolicy, sb3_policy: ActorCriticPolicy) -> None:
    """Copy `policy`'s weights into the SB3 actor in place (the critic is left as it is).

    The SB3 parameters keep their identity, so an existing optimizer (e.g. `model.policy.optimizer`)
    stays valid. SB3 has no log-std clamp, so the clamped log-std is copied: the two action
    distributions are identical.

    Args:
        policy: the source policy.
        sb3_policy: an `ActorCriticPolicy` built with `sb3_policy_kwargs(policy)` (or an equal architecture).
    """
    layers = _sb3_actor_layers(sb3_policy)
    _check_same_architecture(policy, layers)
    with torch.no_grad():
        for ours, theirs in zip(_our_layers(policy), layers, strict=True):
            theirs.weight.copy_(ours.weight)
            theirs.bias.copy_(ours.bias)
        sb3_policy.log_std.copy_(policy.log_std.clamp(min=policy.min_log_std))


def sb3_to_policy(sb3_policy: ActorCriticPolicy, min_log_std: float = -5.0) -> GaussianMLPPolicy:
    """A new `GaussianMLPPolicy` (on the SB3 policy's device) with the SB3 actor's weights.

    Args:
        sb3_policy: an `ActorCriticPolicy` with a tanh MLP actor, flat Box spaces and no gSDE.
        min_log_std: our policy's log-std clamp; lowered to the SB3 log-std's minimum if that is
            smaller, so the action distributions stay identical.

    Draws no random numbers (a checkpoint taken mid-training converts the policy without moving
    the run's RNG).
    """
    layers = _sb3_actor_layers(sb3_policy)
    log_std = sb3_policy.log_std.detach()
    with torch.random.fork_rng(devices=[]):  # the random init is overwritten: leave the caller's RNG stream alone
        policy = GaussianMLPPolicy(
            obs_dim=layers[0].in_features,
            act_dim=layers[-1].out_features,
            hidden_sizes=[layer.out_features for layer in layers[:-1]],
            min_log_std=min(float(min_log_std), float(log_std.min())),
        ).to(log_std.device)
    with torch.no_grad():
        for ours, theirs in zip(_our_layers(policy), layers, strict=True):
            ours.weight.copy_(theirs.weight)
            ours.bias.copy_(theirs.bias)
        policy.log_std.copy_(log_std)
    return policy


def sb3_names(policy: GaussianMLPPolicy) -> dict[str, str]:
    """Our parameter name -> the SB3 actor's name for the same tensor (e.g. to re-key a Fisher or anchor).

    Args:
        policy: the policy whose layout to map (hidden layers -> `mlp_extractor.policy_net.{2i}`,
            output layer -> `action_net`, `log_std` -> `log_std`).
    """
    mapping = {"log_std": "log_std"}
    linear_indices = [i for i, m in enumerate(policy.mean_net) if isinstance(m, nn.Linear)]
    for k, index in enumerate(linear_indices):
        target = "action_net" if k == len(linear_indices) - 1 else f"mlp_extractor.policy_net.{2 * k}"
        for kind in ("weight", "bias"):
            mapping[f"mean_net.{index}.{kind}"] = f"{target}.{kind}"
    return mapping

