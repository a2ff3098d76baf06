"""EWC: Fisher estimators against closed forms, penalty shape, consolidation modes, baselines."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from agents.ewc import (
    EWC,
    L2Regularizer,
    NoRegularizer,
    add_fishers,
    analytic_fisher,
    estimate_fisher,
    functional,
    make_regularizer,
    normalize_fisher,
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


def params_of(**values: list[float]) -> dict[str, torch.Tensor]:
    return {n: torch.tensor(v) for n, v in values.items()}


def test_penalty_zero_at_anchor_quadratic_and_fisher_weighted() -> None:
    anchor = params_of(a=[1.0, -2.0], b=[0.5])
    fisher = params_of(a=[3.0, 0.0], b=[2.0])
    ewc = EWC(strength=10.0)
    ewc.consolidate(anchor, fisher)
    assert float(ewc.penalty(anchor)) == 0.0

    d = params_of(a=[0.1, 0.7], b=[-0.3])
    p1 = {n: anchor[n] + d[n] for n in anchor}
    p2 = {n: anchor[n] + 2 * d[n] for n in anchor}
    expected = 3.0 * 0.1**2 + 2.0 * 0.3**2
    assert float(ewc.penalty(p1)) == pytest.approx(expected)
    assert float(ewc.penalty(p2)) == pytest.approx(4 * float(ewc.penalty(p1)))
    assert float(ewc.loss(p1)) == pytest.approx(10.0 / 2 * expected)

    free = {"a": anchor["a"] + torch.tensor([0.0, 5.0]), "b": anchor["b"]}  # only the zero-Fisher entry moves
    assert float(ewc.penalty(free)) == 0.0

    theta = {n: t.clone().requires_grad_(True) for n, t in p1.items()}
    ewc.penalty(theta).backward()
    torch.testing.assert_close(theta["a"].grad, 2 * fisher["a"] * d["a"])


def test_anchor_is_a_copy_of_the_parameters() -> None:
    params = params_of(a=[1.0, 2.0])
    ewc = EWC()
    ewc.consolidate(params, params_of(a=[1.0, 1.0]))
    params["a"].add_(1.0)  # an optimiser steps the live tensors in place
    assert float(ewc.penalty(params)) == pytest.approx(2.0)


def test_online_mode_accumulates_decayed_fishers_and_keeps_latest_anchor() -> None:
    gamma = 0.5
    fishers = [params_of(a=[1.0, 2.0]), params_of(a=[4.0, 0.0]), params_of(a=[0.5, 8.0])]
    anchors = [params_of(a=[0.0, 0.0]), params_of(a=[1.0, 1.0]), params_of(a=[-1.0, 3.0])]
    ewc = EWC(mode="online", gamma=gamma)
    for p, f in zip(anchors, fishers, strict=True):
        ewc.consolidate(p, f)
    assert ewc.num_tasks == 3
    assert len(ewc.weights) == len(ewc.anchors) == 1
    expected = gamma**2 * fishers[0]["a"] + gamma * fishers[1]["a"] + fishers[2]["a"]
    torch.testing.assert_close(ewc.weights[0]["a"], expected)
    # by hand: [0.25·1 + 0.5·4 + 0.5, 0.25·2 + 0.5·0 + 8] = [2.75, 8.5]
    torch.testing.assert_close(ewc.weights[0]["a"], torch.tensor([2.75, 8.5]))
    torch.testing.assert_close(ewc.anchors[0]["a"], anchors[2]["a"])
    at = params_of(a=[0.0, 0.0])
    assert float(ewc.penalty(at)) == pytest.approx(2.75 * 1.0 + 8.5 * 9.0)  # anchor (-1, 3)


def test_separate_mode_keeps_one_term_per_task() -> None:
    fishers = [params_of(a=[1.0, 2.0]), params_of(a=[4.0, 0.0]), params_of(a=[0.5, 8.0])]
    anchors = [params_of(a=[0.0, 0.0]), params_of(a=[1.0, 1.0]), params_of(a=[-1.0, 3.0])]
    ewc = EWC(mode="separate", gamma=0.5)  # gamma plays no part in separate mode
    for p, f in zip(anchors, fishers, strict=True):
        ewc.consolidate(p, f)
    assert ewc.num_tasks == 3 and len(ewc.anchors) == 3
    for k in range(3):
        torch.testing.assert_close(ewc.anchors[k]["a"], anchors[k]["a"])
    theta = params_of(a=[1.0, 1.0])
    # (1·1 + 2·1) + (4·0 + 0·0) + (0.5·4 + 8·4) = 3 + 0 + 34
    assert float(ewc.penalty(theta)) == pytest.approx(37.0)


@pytest.mark.parametrize("mode", ["online", "separate"])
def test_state_dict_round_trips_through_weights_only_load(tmp_path, mode: str) -> None:
    ewc = EWC(strength=3.0, mode=mode, gamma=0.9, normalize="mean")
    torch.manual_seed(0)
    for _ in range(3):
        ewc.consolidate(params_of(a=torch.randn(4).tolist()), params_of(a=torch.rand(4).tolist()))
    path = tmp_path / "ewc.pt"
    torch.save(ewc.state_dict(), path)
    restored = EWC(mode=mode)
    restored.load_state_dict(torch.load(path, weights_only=True))
    theta = params_of(a=[0.3, -0.2, 1.0, 0.0])
    assert restored.num_tasks == 3
    assert float(restored.loss(theta)) == float(ewc.loss(theta)) > 0
    with pytest.raises(ValueError, match="kind"):
        L2Regularizer(mode=mode).load_state_dict(ewc.state_dict())
    other = "separate" if mode == "online" else "online"
    with pytest.raises(ValueError, match="mode"):
        EWC(mode=other).load_state_dict(ewc.state_dict())


def test_l2_baseline_is_plain_squared_distance(tmp_path) -> None:
    anchor = params_of(a=[1.0, 2.0], b=[3.0])
    theta = params_of(a=[0.0, 4.0], b=[3.5])
    l2 = L2Regularizer()
    l2.consolidate(anchor, params_of(a=[100.0, 0.0], b=[0.0]))  # Fisher values are ignored
    assert float(l2.penalty(theta)) == pytest.approx(1.0 + 4.0 + 0.25)
    only_a = L2Regularizer()
    only_a.consolidate(anchor, params_of(a=[0.0, 0.0]))  # its names choose what is anchored
    assert float(only_a.penalty(theta)) == pytest.approx(5.0)

    separate = L2Regularizer(mode="separate")
    separate.consolidate(anchor)
    separate.consolidate(theta)
    assert float(separate.penalty(theta)) == pytest.approx(5.25)
    torch.save(separate.state_dict(), tmp_path / "l2.pt")
    restored = L2Regularizer(mode="separate")
    restored.load_state_dict(torch.load(tmp_path / "l2.pt", weights_only=True))
    assert float(restored.penalty(anchor)) == pytest.approx(5.25)


def test_fisher_normalisation_and_validation() -> None:
    fisher = params_of(a=[1.0, 4.0], b=[3.0])
    torch.testing.assert_close(normalize_fisher(fisher, "max")["a"], torch.tensor([0.25, 1.0]))
    torch.testing.assert_close(normalize_fisher(fisher, "mean")["b"], torch.tensor([9.0 / 8.0]))
    ewc = EWC(normalize="max")
    ewc.consolidate(params_of(a=[0.0, 0.0], b=[0.0]), fisher)
    torch.testing.assert_close(ewc.weights[0]["b"], torch.tensor([0.75]))

    with pytest.raises(ValueError, match="fisher"):
        EWC().consolidate(params_of(a=[0.0]))  # EWC without a Fisher is not EWC
    with pytest.raises(ValueError, match="fisher"):
        EWC().consolidate(params_of(a=[0.0]), params_of(a=[-1.0]))
    with pytest.raises(ValueError, match="fisher"):
        EWC().consolidate(params_of(a=[0.0]), params_of(z=[1.0]))
    with pytest.warns(UserWarning, match="0"):
        EWC().consolidate(params_of(a=[0.0]), params_of(a=[0.0]))
    online = EWC()
    online.consolidate(params_of(a=[0.0], b=[0.0]), params_of(a=[1.0], b=[1.0]))
    with pytest.raises(ValueError, match="names"):
        online.consolidate(params_of(a=[0.0], b=[0.0]), params_of(a=[1.0]))


def test_make_regularizer_builds_each_kind_and_rejects_bad_fields() -> None:
    assert isinstance(make_regularizer("ewc", mode="separate"), EWC)
    assert isinstance(make_regularizer("l2"), L2Regularizer)
    none = make_regularizer("none")
    assert isinstance(none, NoRegularizer)
    none.consolidate(params_of(a=[1.0]))
    assert none.num_tasks == 1 and float(none.penalty(params_of(a=[9.0]))) == 0.0
    with pytest.raises(ValueError, match=r"kind.*'ewc', 'l2', 'none'"):
        make_regularizer("si")
    with pytest.raises(ValueError, match="mode"):
        make_regularizer("ewc", mode="joint")
    with pytest.raises(ValueError, match="gamma"):
        make_regularizer("ewc", gamma=1.5)
    with pytest.raises(ValueError, match="strength"):
        make_regularizer("ewc", strength=-1.0)
    with pytest.raises(ValueError, match="normalize"):
        make_regularizer("ewc", normalize="sum")
