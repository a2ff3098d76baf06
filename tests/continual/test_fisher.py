"""Fisher estimators against closed forms and per-sample autograd, subsets, masks, the critic's Fisher."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from agents.continual.fisher import (
    add_fishers,
    analytic_fisher,
    estimate_fisher,
    functional,
    sampled_fisher,
    value_fisher,
)
from agents.policy import GaussianMLPPolicy

SIGMA = torch.tensor([0.5, 2.0])
W, B, LOG_STD = "mean_net.0.weight", "mean_net.0.bias", "log_std"


def linear_policy() -> GaussianMLPPolicy:
    """mean = W s + b (no hidden layer), σ = (0.5, 2.0)."""
    torch.manual_seed(0)
    policy = GaussianMLPPolicy(obs_dim=3, act_dim=2, hidden_sizes=())
    with torch.no_grad():
        policy.log_std.copy_(SIGMA.log())
    return policy


def structured_states(n: int, seed: int = 0) -> torch.Tensor:
    """Input 0 always zero, input 1 high variance (std 3), input 2 low variance (std 0.5)."""
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(n, 3, generator=g) * torch.tensor([0.0, 3.0, 0.5])
    return s


def closed_form(states: torch.Tensor) -> dict[str, torch.Tensor]:
    """Exact Fisher of the linear-Gaussian policy: E[s_k²]/σ_i² for W[i, k], 1/σ_i² for b_i, 2 for log σ."""
    second_moment = states.pow(2).mean(0)
    return {
        W: second_moment[None, :] / SIGMA[:, None] ** 2,
        B: 1.0 / SIGMA**2,
        LOG_STD: torch.full((2,), 2.0),
    }


def test_analytic_fisher_matches_closed_form_and_ranks_parameters() -> None:
    policy = linear_policy()
    states = structured_states(512)
    fisher = analytic_fisher(policy, policy.parameters_dict(), states, batch_size=100)
    expected = closed_form(states)
    assert set(fisher) == set(expected)
    for name in expected:
        torch.testing.assert_close(fisher[name], expected[name], rtol=1e-5, atol=1e-6)
    assert all((f >= 0).all() for f in fisher.values())
    # The always-zero input cannot matter: exactly zero Fisher; the high-variance input matters most.
    assert torch.equal(fisher[W][:, 0], torch.zeros(2))
    assert (fisher[W][:, 1] > 10 * fisher[W][:, 2]).all()


def test_analytic_fisher_matches_per_state_autograd_loop_on_mlp() -> None:
    torch.manual_seed(1)
    policy = GaussianMLPPolicy(obs_dim=3, act_dim=2, hidden_sizes=(5,), init_log_std=-0.3)
    states = torch.randn(7, 3)
    params = policy.parameters_dict()
    fisher = analytic_fisher(policy, params, states, batch_size=3)

    # Brute force: F = mean_s Σ_a (∂μ_a/∂θ)² / σ_a², plus 2 per log-std entry.
    expected = {n: torch.zeros_like(p) for n, p in params.items()}
    sigma = policy.log_std.exp().detach()
    for s in states:
        mean = policy.mean_net(s)
        for a in range(2):
            grads = torch.autograd.grad(mean[a], list(params.values()), retain_graph=True, allow_unused=True)
            for (n, _), g in zip(params.items(), grads, strict=True):
                if g is not None:
                    expected[n] += g.pow(2) / sigma[a] ** 2 / len(states)
    expected[LOG_STD] += 2.0
    for name in params:
        torch.testing.assert_close(fisher[name], expected[name], rtol=1e-5, atol=1e-7)
    assert sum(float(f.sum()) for f in fisher.values()) > 0


def test_sampled_fisher_agrees_with_analytic_within_monte_carlo_error() -> None:
    policy = linear_policy()
    states = structured_states(5000, seed=1)
    g = torch.Generator().manual_seed(123)
    sampled = sampled_fisher(policy, policy.parameters_dict(), states, num_samples=4, generator=g,
                             batch_size=4096)
    expected = closed_form(states)
    # Relative Monte-Carlo std is about 3% here (20 000 samples); 12% is four standard deviations.
    for name in (B, LOG_STD):
        torch.testing.assert_close(sampled[name], expected[name], rtol=0.12, atol=0.0)
    torch.testing.assert_close(sampled[W][:, 1:], expected[W][:, 1:], rtol=0.12, atol=0.0)
    assert torch.equal(sampled[W][:, 0], torch.zeros(2))
    assert all((f >= 0).all() for f in sampled.values())
    # Same generator seed -> same estimate (the seeding contract).
    again = sampled_fisher(policy, policy.parameters_dict(), states, num_samples=4,
                           generator=torch.Generator().manual_seed(123), batch_size=4096)
    assert all(torch.equal(sampled[n], again[n]) for n in sampled)


def test_fisher_is_per_sample_not_squared_batch_mean_gradient() -> None:
    policy = linear_policy()
    s = torch.tensor([0.0, 1.5, -1.0])
    states = torch.stack([s, -s]).repeat(1000, 1)  # per-state gradients cancel pairwise
    params = policy.parameters_dict()
    per_state = (s.pow(2)[None, :] / SIGMA[:, None] ** 2)

    analytic = analytic_fisher(policy, params, states)
    torch.testing.assert_close(analytic[W], per_state)
    mean_jacobian = torch.autograd.functional.jacobian(lambda w: (states @ w.T).mean(0), params[W].detach())
    assert mean_jacobian.abs().max() < 1e-6  # the batch-mean "gradient" would give a zero Fisher

    sampled = sampled_fisher(policy, params, states, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        actions = policy(states).sample()
    batch_grad = torch.autograd.grad(policy(states).log_prob(actions).mean(), params[W])[0]
    assert (sampled[W][:, 1:] > 0.8 * per_state[:, 1:]).all()
    assert (batch_grad.pow(2)[:, 1:] < 0.05 * per_state[:, 1:]).all()


def test_fisher_on_a_subset_of_names_and_masked_states() -> None:
    policy = linear_policy()
    states = structured_states(40).reshape(10, 4, 3)  # [T, B, obs]
    mask = torch.ones(10, 4)
    mask[6:, 2:] = 0.0  # padding after two episodes ended
    params = policy.parameters_dict()
    sub = analytic_fisher(policy, params, states, names=[W], mask=mask)
    assert set(sub) == {W}
    kept = states[mask > 0]
    torch.testing.assert_close(sub[W], closed_form(kept)[W])
    full = estimate_fisher(policy, params, states, method="analytic", mask=mask)
    torch.testing.assert_close(sub[W], full[W])
    with pytest.raises(ValueError, match="names"):
        analytic_fisher(policy, params, states, names=["nope"])
    with pytest.raises(ValueError, match="method"):
        estimate_fisher(policy, params, states, method="empirical")
    with pytest.raises(ValueError, match="obs"):
        analytic_fisher(policy, params, torch.full((2, 3), math.nan))


def test_value_fisher_is_per_sample_and_adds_to_actor_fisher() -> None:
    critic = nn.Linear(3, 1)
    s = torch.tensor([1.0, -2.0, 0.0])
    states = torch.stack([s, -s])
    params = dict(critic.named_parameters())
    fisher = value_fisher(functional(critic), params, states, noise_std=2.0)
    # dV/dw = s per state (cancels in the batch mean), dV/db = 1; Gaussian likelihood scales by 1/4.
    torch.testing.assert_close(fisher["weight"], s.pow(2)[None, :] / 4.0)
    torch.testing.assert_close(fisher["bias"], torch.tensor([0.25]))

    merged = add_fishers({"a": torch.ones(2)}, {"a": torch.ones(2), "b": torch.zeros(1)})
    torch.testing.assert_close(merged["a"], torch.full((2,), 2.0))
    assert set(merged) == {"a", "b"}
