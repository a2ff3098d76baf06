"""Discounted returns, GAE and the linear feature baseline against hand-written references."""

from __future__ import annotations

import logging
import math

import pytest
import torch

from agents.episodes import Episodes
from agents.meta.returns import (
    LinearFeatureBaseline,
    baseline_advantages,
    discounted_returns,
    gae,
    masked_normalize,
)

T, B = 7, 5


def padded_mask(lengths: list[int], horizon: int) -> torch.Tensor:
    """`[horizon, len(lengths)]` mask with the first `lengths[b]` steps of column b real."""
    return (torch.arange(horizon).unsqueeze(1) < torch.tensor(lengths).unsqueeze(0)).double()


@pytest.fixture
def data() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[int]]:
    gen = torch.Generator().manual_seed(0)
    lengths = [7, 3, 1, 7, 5]  # two full-length episodes, the others padded
    mask = padded_mask(lengths, T)
    rewards = torch.randn(T, B, generator=gen, dtype=torch.float64) * mask
    values = torch.randn(T, B, generator=gen, dtype=torch.float64)  # garbage on padding on purpose
    return rewards, values, mask, lengths


def reference_returns(rewards: torch.Tensor, lengths: list[int], gamma: float) -> torch.Tensor:
    out = torch.zeros_like(rewards)
    for b, length in enumerate(lengths):
        for t in range(length):
            out[t, b] = sum(gamma ** (k - t) * float(rewards[k, b]) for k in range(t, length))
    return out


def reference_gae(rewards, values, lengths, gamma, lam, last_values=None, terminated=None) -> torch.Tensor:
    out = torch.zeros_like(rewards)
    horizon = rewards.shape[0]
    ended = torch.zeros(len(lengths), dtype=torch.bool) if terminated is None else terminated
    for b, length in enumerate(lengths):
        running = 0.0
        for t in reversed(range(length)):
            if t + 1 < length:
                next_value = float(values[t + 1, b])
            elif last_values is not None and length == horizon and not bool(ended[b]):
                next_value = float(last_values[b])
            else:
                next_value = 0.0
            delta = float(rewards[t, b]) + gamma * next_value - float(values[t, b])
            running = delta + gamma * lam * running
            out[t, b] = running
    return out


def test_discounted_returns_match_loop(data) -> None:
    rewards, _, mask, lengths = data
    got = discounted_returns(rewards, mask, 0.9)
    torch.testing.assert_close(got, reference_returns(rewards, lengths, 0.9))
    assert (got[mask == 0] == 0).all()


@pytest.mark.parametrize("lam", [0.0, 0.7, 1.0])
def test_gae_matches_loop_without_bootstrap(data, lam: float) -> None:
    rewards, values, mask, lengths = data
    got = gae(rewards, values, mask, 0.95, lam)
    torch.testing.assert_close(got, reference_gae(rewards, values, lengths, 0.95, lam))
    assert (got[mask == 0] == 0).all()


def test_gae_bootstraps_only_truncated_full_length_episodes(data) -> None:
    rewards, values, mask, lengths = data
    last_values = torch.tensor([10.0, 20.0, 30.0, 40.0, 50.0], dtype=torch.float64)
    terminated = torch.tensor([False, False, False, True, False])
    got = gae(rewards, values, mask, 0.95, 0.8, last_values=last_values, terminated=terminated)
    want = reference_gae(rewards, values, lengths, 0.95, 0.8, last_values, terminated)
    torch.testing.assert_close(got, want)
    # Episode 0 is full length and truncated: its last advantage includes gamma * 10.
    no_boot = gae(rewards, values, mask, 0.95, 0.8)
    assert math.isclose(float(got[-1, 0] - no_boot[-1, 0]), 0.95 * 10.0, rel_tol=1e-12)
    # Episode 3 is full length but terminated, episodes 1, 2, 4 end early: no bootstrap.
    torch.testing.assert_close(got[:, 1:], no_boot[:, 1:])
    # terminated=None: every full-length episode bootstraps.
    all_boot = gae(rewards, values, mask, 0.95, 0.8, last_values=last_values)
    assert math.isclose(float(all_boot[-1, 3] - no_boot[-1, 3]), 0.95 * 40.0, rel_tol=1e-12)


def test_gae_lambda_one_is_returns_minus_values(data) -> None:
    rewards, values, mask, _ = data
    got = gae(rewards, values, mask, 0.9, 1.0)
    torch.testing.assert_close(got, (discounted_returns(rewards, mask, 0.9) - values) * mask)


def test_masked_normalize_uses_real_steps_only(data) -> None:
    _, values, mask, _ = data
    out = masked_normalize(values + 5.0, mask)
    real = out[mask.bool()]
    assert abs(float(real.mean())) < 1e-9
    assert math.isclose(float(real.std(unbiased=False)), 1.0, rel_tol=1e-6)
    assert (out[mask == 0] == 0).all()


def observation_episodes(obs_scale: float = 1.0) -> Episodes:
    """Episodes whose rewards are set by a per-episode constant that the observation reveals."""
    gen = torch.Generator().manual_seed(1)
    horizon, batch = 30, 40
    lengths = torch.randint(10, horizon + 1, (batch,), generator=gen).tolist()
    mask = padded_mask(lengths, horizon).float()
    level = torch.randn(batch, generator=gen)
    obs = torch.stack([level, torch.randn(batch, generator=gen)], dim=-1) * obs_scale
    obs = obs.unsqueeze(0).expand(horizon, batch, 2) * mask.unsqueeze(-1)
    rewards = (level.unsqueeze(0) + 0.1 * torch.randn(horizon, batch, generator=gen)) * mask
    return Episodes(
        observations=obs.contiguous(),
        actions=torch.zeros(horizon, batch, 1),
        rewards=rewards,
        mask=mask,
        terminated=torch.zeros(batch, dtype=torch.bool),
    )


def test_linear_baseline_reduces_advantage_variance() -> None:
    episodes = observation_episodes()
    returns = discounted_returns(episodes.rewards, episodes.mask, 0.9)
    baseline = LinearFeatureBaseline()
    assert (baseline.predict(episodes) == 0).all()  # unfitted
    baseline.fit(episodes, returns)
    values = baseline.predict(episodes)
    real = episodes.mask.bool()
    assert (values[~real] == 0).all()
    residual_var = float((returns - values)[real].var())
    assert residual_var < 0.2 * float(returns[real].var())

    adv = baseline_advantages(episodes, gamma=0.9, normalize=False)
    torch.testing.assert_close(adv, (returns - values) * episodes.mask)
    normed = baseline_advantages(episodes, gamma=0.9)
    assert abs(float(normed[real].mean())) < 1e-5
    assert (normed[~real] == 0).all()


@pytest.mark.parametrize(("reg_coeff", "max_reg_tries"), [(1e-5, 10), (0.0, 10), (0.0, 1)])
def test_linear_baseline_rank_deficient_fit_is_finite(
    reg_coeff: float, max_reg_tries: int, caplog: pytest.LogCaptureFixture
) -> None:
    # All-zero observations: the obs and obs^2 columns are zero, X^T X is singular. With
    # reg_coeff=0 the first Cholesky fails, so the regulariser has to grow (or, with a single
    # try, the least-squares fallback has to take over).
    episodes = observation_episodes(obs_scale=0.0)
    returns = discounted_returns(episodes.rewards, episodes.mask, 0.9)
    baseline = LinearFeatureBaseline(reg_coeff=reg_coeff, max_reg_tries=max_reg_tries)
    with caplog.at_level(logging.WARNING, logger="agents.meta.returns"):
        baseline.fit(episodes, returns)
    assert ("least squares" in caplog.text) == (max_reg_tries == 1)
    assert baseline.weights is not None and torch.isfinite(baseline.weights).all()
    values = baseline.predict(episodes)
    assert torch.isfinite(values).all()
    # The time features still explain part of the (length-dependent) returns.
    real = episodes.mask.bool()
    assert float((returns - values)[real].var()) < float(returns[real].var())
