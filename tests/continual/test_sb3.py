"""SB3 bridge: EWCPPO is PPO plus the regulariser's gradient, and weights transfer both ways exactly."""

from __future__ import annotations

import copy
import math

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium import spaces
from stable_baselines3 import PPO
from stable_baselines3.common.logger import KVWriter, Logger
from stable_baselines3.common.policies import ActorCriticPolicy
from torch import nn

from agents.continual.ewc import EWC, L2Regularizer
from agents.continual.fisher import analytic_fisher
from agents.continual.sb3 import EWCPPO, actor_param_names, critic_param_names, sb3_actor_fn
from agents.continual.sb3_transfer import policy_to_sb3, sb3_names, sb3_policy_kwargs, sb3_to_policy
from agents.policy import GaussianMLPPolicy
from envs import ENV_IDS
from envs.tasks import Goal, Task, Terrain

CHEETAH = ENV_IDS["cheetah"]
OBS_DIM, ACT_DIM = 17, 6
ARCH = {"net_arch": {"pi": [32, 32], "vf": [32, 32]}, "activation_fn": nn.Tanh}
PPO_KW = {"n_steps": 64, "batch_size": 32, "n_epochs": 2, "device": "cpu", "policy_kwargs": ARCH}


def make_env(task: Task | None = None) -> gym.Env:
    return gym.make(CHEETAH, task=task or Task(Terrain("flat", 0.0, 0)), max_episode_steps=64)


def params_of(model: PPO) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.policy.named_parameters()}


class Capture(KVWriter):
    """Keeps every dumped key -> value dict (a logger that records instead of printing)."""

    def __init__(self) -> None:
        self.dumps: list[dict] = []

    def write(self, key_values: dict, key_excluded: dict, step: int = 0) -> None:
        self.dumps.append(dict(key_values))


# ----------------------------------------------------------------------------------------------
# EWCPPO
# ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ppo_reference() -> dict[str, torch.Tensor]:
    model = PPO("MlpPolicy", make_env(), seed=3, **PPO_KW)
    model.learn(128)
    return params_of(model)


def test_ewcppo_without_regularizer_is_ppo(ppo_reference: dict[str, torch.Tensor]) -> None:
    model = EWCPPO("MlpPolicy", make_env(), seed=3, regularizer=None, **PPO_KW)
    model.learn(128)
    after = params_of(model)
    assert after.keys() == ppo_reference.keys()
    assert all(torch.equal(after[n], ppo_reference[n]) for n in after)
    assert "train/ewc_penalty" not in model.logger.name_to_value


def test_ewcppo_with_zero_strength_is_ppo(ppo_reference: dict[str, torch.Tensor]) -> None:
    model = EWCPPO("MlpPolicy", make_env(), seed=3, regularizer=EWC(strength=0.0), **PPO_KW)
    # A real consolidation (analytic Fisher: no RNG drawn), so the penalty is live but weighted by 0.
    states = np.random.default_rng(0).normal(size=(64, OBS_DIM))
    model.consolidate(states)
    model.learn(128)
    after = params_of(model)
    assert all(torch.equal(after[n], ppo_reference[n]) for n in after)
    assert model.logger.name_to_value["train/ewc_penalty"] > 0
    assert model.logger.name_to_value["train/ewc_loss"] == 0


def test_penalty_gradient_is_added_before_clipping() -> None:
    """With lr 0 nothing moves, so each step's gradient can be compared: clip(∇PPO + ∇reg)."""
    kw = {**PPO_KW, "n_steps": 32, "n_epochs": 1, "learning_rate": 0.0, "seed": 5}

    def gradients(model: PPO) -> list[torch.Tensor]:
        grads: list[torch.Tensor] = []
        params = list(model.policy.parameters())
        model.policy.optimizer.register_step_pre_hook(
            lambda *_: grads.append(torch.cat([p.grad.reshape(-1) for p in params]))
        )
        model.learn(32)
        assert len(grads) == 1
        return grads

    plain = PPO("MlpPolicy", make_env(), max_grad_norm=float("inf"), **kw)
    start = params_of(plain)
    (g_ppo,) = gradients(plain)

    model = EWCPPO("MlpPolicy", make_env(), max_grad_norm=0.5, **kw)
    g = torch.Generator().manual_seed(0)
    fisher = {n: torch.rand(p.shape, generator=g) for n, p in start.items()}
    reg = EWC(strength=10.0)
    reg.consolidate({n: p + 0.1 for n, p in start.items()}, fisher)
    model.regularizer = reg
    (g_ewc,) = gradients(model)

    theta = {n: p.clone().requires_grad_(True) for n, p in start.items()}
    g_reg = torch.autograd.grad(reg.loss(theta), list(theta.values()))
    combined = g_ppo + torch.cat([g.reshape(-1) for g in g_reg])
    assert combined.norm() > 1.0  # so clipping to 0.5 is active
    expected = combined * (0.5 / (combined.norm() + 1e-6))
    torch.testing.assert_close(g_ewc, expected, rtol=1e-5, atol=1e-7)


def test_ewc_logs_penalty_and_holds_high_fisher_parameters() -> None:
    # Task A: learn briefly, consolidate on the last rollout's states.
    strength = 1e3
    base = EWCPPO("MlpPolicy", make_env(), seed=0, regularizer=EWC(strength=strength), **PPO_KW)
    base.learn(64)
    fisher = base.consolidate(n_states=64)
    assert set(fisher) == set(actor_param_names(base.policy))
    start = copy.deepcopy(base.policy.state_dict())
    anchor = params_of(base)

    def weighted_displacement(model: PPO) -> float:
        after = params_of(model)
        return float(sum((fisher[n] * (after[n] - anchor[n]) ** 2).sum() for n in fisher))

    task_b = Task(Terrain("rough", 0.5, 1), goal=Goal(direction=math.pi))
    kw = {**PPO_KW, "n_epochs": 5, "batch_size": 16, "learning_rate": 1e-3, "seed": 1}
    plain = PPO("MlpPolicy", make_env(task_b), **kw)
    plain.policy.load_state_dict(start)
    plain.learn(128)

    model = EWCPPO("MlpPolicy", make_env(task_b), regularizer=base.regularizer, **kw)
    model.policy.load_state_dict(start)
    capture = Capture()
    model.set_logger(Logger(folder=None, output_formats=[capture]))
    model.learn(128)

    logged = [d["train/ewc_penalty"] for d in capture.dumps if "train/ewc_penalty" in d]
    logged.append(model.logger.name_to_value["train/ewc_penalty"])  # the last train() is not dumped yet
    assert logged and all(v > 0 for v in logged)
    assert model.logger.name_to_value["train/ewc_loss"] == pytest.approx(0.5 * strength * logged[-1], rel=1e-5)
    assert "zero_grad" not in vars(model.policy.optimizer)  # the hook lives only inside train()
    # Measured ratio ~1e-3 over seeds; the critic is not anchored and still learns.
    d_ewc, d_ppo = weighted_displacement(model), weighted_displacement(plain)
    assert d_ewc < 0.02 * d_ppo, (d_ewc, d_ppo)
    critic = critic_param_names(model.policy)
    assert any(not torch.equal(params_of(model)[n], anchor[n]) for n in critic)


def test_regularizer_is_kept_out_of_sb3_save(tmp_path) -> None:
    model = EWCPPO("MlpPolicy", make_env(), seed=0, regularizer=EWC(strength=1.0), **PPO_KW)
    model.consolidate(np.zeros((4, OBS_DIM)))
    model.save(tmp_path / "model.zip")
    loaded = EWCPPO.load(tmp_path / "model.zip", device="cpu")
    assert loaded.regularizer is None
    assert all(torch.equal(a, b) for a, b in zip(params_of(loaded).values(), params_of(model).values(), strict=True))


def test_consolidate_from_env_with_critic() -> None:
    model = EWCPPO("MlpPolicy", make_env(), seed=0, regularizer=L2Regularizer(strength=1.0), **PPO_KW)
    with pytest.raises(ValueError, match="rollout buffer"):
        model.consolidate()
    fisher = model.consolidate(make_env(), n_states=16, include_critic=True, seed=0)
    names = actor_param_names(model.policy) + critic_param_names(model.policy)
    assert sorted(fisher) == sorted(names)
    assert all(torch.isfinite(f).all() and (f >= 0).all() for f in fisher.values())
    torch.testing.assert_close(fisher["log_std"], torch.full((ACT_DIM,), 2.0))
    assert model.regularizer.num_tasks == 1
    with torch.no_grad():
        assert float(model.regularizer.penalty(dict(model.policy.named_parameters()))) == 0.0
    with pytest.raises(ValueError, match="regularizer"):
        EWCPPO("MlpPolicy", make_env(), regularizer="ewc", **PPO_KW)


# ----------------------------------------------------------------------------------------------
# Weight transfer
# ----------------------------------------------------------------------------------------------


def sb3_policy(**kwargs) -> ActorCriticPolicy:
    obs_space = spaces.Box(-np.inf, np.inf, (OBS_DIM,), np.float64)
    act_space = spaces.Box(-1.0, 1.0, (ACT_DIM,), np.float32)
    return ActorCriticPolicy(obs_space, act_space, lambda _: 3e-4, **kwargs)


def our_policy(hidden: tuple[int, ...] = (32, 16), seed: int = 0) -> GaussianMLPPolicy:
    torch.manual_seed(seed)
    policy = GaussianMLPPolicy(OBS_DIM, ACT_DIM, hidden)
    with torch.no_grad():
        policy.log_std.copy_(0.3 * torch.randn(ACT_DIM))
    return policy


def batch(seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return 3.0 * torch.randn(50, OBS_DIM, generator=g), torch.randn(50, ACT_DIM, generator=g)


def assert_same_distribution(ours: GaussianMLPPolicy, theirs: ActorCriticPolicy) -> None:
    obs, actions = batch()
    dist = ours(obs)
    sb3_dist = theirs.get_distribution(obs)
    torch.testing.assert_close(dist.mean, sb3_dist.distribution.mean, rtol=0, atol=1e-6)
    torch.testing.assert_close(dist.stddev, sb3_dist.distribution.stddev, rtol=0, atol=1e-7)
    torch.testing.assert_close(dist.log_prob(actions), sb3_dist.log_prob(actions), rtol=0, atol=1e-5)
    _, log_prob, _ = theirs.evaluate_actions(obs, actions)
    torch.testing.assert_close(dist.log_prob(actions), log_prob, rtol=0, atol=1e-5)


def test_ours_to_sb3_and_back_round_trips() -> None:
    policy = our_policy()
    theirs = sb3_policy(**sb3_policy_kwargs(policy, critic_hidden_sizes=[8]))
    before = [id(p) for p in theirs.parameters()]
    policy_to_sb3(policy, theirs)
    assert [id(p) for p in theirs.parameters()] == before  # in place: an optimizer stays valid
    assert_same_distribution(policy, theirs)

    back = sb3_to_policy(theirs)
    assert back.config() == policy.config()
    assert all(torch.equal(a, b) for a, b in zip(back.parameters(), policy.parameters(), strict=True))
    obs, actions = batch(2)
    torch.testing.assert_close(back(obs).log_prob(actions), policy(obs).log_prob(actions), rtol=0, atol=0)


def test_sb3_to_ours_matches_sb3_distribution() -> None:
    torch.manual_seed(4)
    theirs = sb3_policy(**ARCH)  # SB3's orthogonal init
    with torch.no_grad():
        theirs.log_std.copy_(torch.tensor([-7.0, -1.0, 0.0, 0.5, 1.0, -0.2]))  # -7 is below our default clamp
    ours = sb3_to_policy(theirs)
    assert ours.hidden_sizes == (32, 32) and ours.min_log_std <= -7.0
    assert_same_distribution(ours, theirs)


def test_clamped_log_std_transfers_as_clamped() -> None:
    policy = our_policy(hidden=(16,))
    with torch.no_grad():
        policy.log_std.fill_(-9.0)
    theirs = sb3_policy(**sb3_policy_kwargs(policy))
    policy_to_sb3(policy, theirs)
    assert_same_distribution(policy, theirs)


def test_sb3_actor_view_and_its_fisher_match_our_policy() -> None:
    policy = our_policy()
    theirs = sb3_policy(**sb3_policy_kwargs(policy))
    policy_to_sb3(policy, theirs)
    obs, actions = batch(3)
    view = sb3_actor_fn(theirs)
    params = dict(theirs.named_parameters())
    torch.testing.assert_close(view(obs, params).log_prob(actions), policy(obs).log_prob(actions))
    torch.testing.assert_close(view(obs[0], params).mean, policy(obs[0]).mean)

    ours = analytic_fisher(policy, policy.parameters_dict(), obs)
    sb3 = analytic_fisher(view, params, obs, names=actor_param_names(theirs))
    mapping = sb3_names(policy)
    assert sorted(mapping.values()) == sorted(sb3)
    for name, value in ours.items():
        torch.testing.assert_close(sb3[mapping[name]], value)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"net_arch": {"pi": [64, 64], "vf": [32]}, "activation_fn": nn.Tanh}, "hidden_sizes"),
        ({"net_arch": {"pi": [32, 16]}, "activation_fn": nn.ReLU}, "activation_fn"),
        ({"net_arch": {"pi": [32, 16]}, "activation_fn": nn.Tanh, "use_sde": True}, "DiagGaussian"),
    ],
)
def test_mismatched_architecture_raises(kwargs: dict, match: str) -> None:
    policy = our_policy()
    with pytest.raises(ValueError, match=match):
        policy_to_sb3(policy, sb3_policy(**kwargs))


def test_mismatched_dimensions_are_named() -> None:
    policy = GaussianMLPPolicy(OBS_DIM + 1, ACT_DIM - 1, (32, 16))
    theirs = sb3_policy(net_arch={"pi": [32, 16], "vf": [32]}, activation_fn=nn.Tanh)
    with pytest.raises(ValueError, match=r"obs_dim.*act_dim"):
        policy_to_sb3(policy, theirs)
    with pytest.raises(ValueError, match="activation_fn"):
        sb3_to_policy(sb3_policy(net_arch={"pi": [8]}, activation_fn=nn.ReLU))


def test_consolidate_can_leave_parameters_unanchored() -> None:
    model = EWCPPO("MlpPolicy", make_env(), seed=0, regularizer=EWC(strength=1.0), **PPO_KW)
    states = np.random.default_rng(0).normal(size=(32, OBS_DIM))
    fisher = model.consolidate(states, exclude=("action_net.weight", "action_net.bias"))
    assert "action_net.weight" in fisher, "the full Fisher is returned"
    anchored = set(model.regularizer.anchors[0])
    assert anchored == set(fisher) - {"action_net.weight", "action_net.bias"}
    with pytest.raises(ValueError, match="exclude"):
        model.consolidate(states, exclude=("no_such_parameter",))
