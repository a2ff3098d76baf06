"""The Gaussian policy: its named-tensor forward equals the module's, and takes any parameters."""

import torch
from torch.func import functional_call, vmap

from agents.policy import GaussianMLPPolicy


def test_forward_matches_the_modules_own_layers() -> None:
    torch.manual_seed(0)
    policy = GaussianMLPPolicy(5, 3, (16, 8), init_log_std=-0.5)
    obs = torch.randn(7, 5)
    dist = policy(obs)
    assert torch.allclose(dist.mean, policy.mean_net(obs))
    assert torch.allclose(dist.stddev, torch.full((7, 3), torch.exp(torch.tensor(-0.5))))


def test_given_parameters_are_used_and_match_functional_call() -> None:
    torch.manual_seed(0)
    policy = GaussianMLPPolicy(5, 3, (16,))
    obs = torch.randn(4, 5)
    other = {name: torch.randn_like(p) for name, p in policy.named_parameters()}
    mean, std = policy.mean_and_std(obs, other)
    expected = functional_call(policy.mean_net, {k[len("mean_net."):]: v for k, v in other.items()
                                                 if k.startswith("mean_net.")}, (obs,))
    assert torch.allclose(mean, expected)
    assert torch.allclose(std[0], other["log_std"].clamp(min=-5.0).exp())
    assert not torch.allclose(mean, policy(obs).mean)


def test_second_order_gradients_flow_through_given_parameters() -> None:
    policy = GaussianMLPPolicy(3, 2, (4,))
    params = {n: p.detach().clone().requires_grad_(True) for n, p in policy.named_parameters()}
    obs, act = torch.randn(6, 3), torch.randn(6, 2)
    loss = -policy(obs, params).log_prob(act).mean()
    grads = torch.autograd.grad(loss, list(params.values()), create_graph=True)
    second = torch.autograd.grad(sum(g.pow(2).sum() for g in grads), params["mean_net.0.weight"])[0]
    assert second.abs().sum() > 0


def test_vmap_over_per_task_parameters() -> None:
    policy = GaussianMLPPolicy(3, 2, (4,))
    stacked = {n: torch.stack([p.detach(), p.detach() + 1.0]) for n, p in policy.named_parameters()}
    obs = torch.randn(2, 5, 3)
    mean, _ = vmap(policy.mean_and_std)(obs, stacked)
    first = {n: v[1] for n, v in stacked.items()}
    assert torch.allclose(mean[1], policy.mean_and_std(obs[1], first)[0], atol=1e-6)


def test_heads_swap_only_the_output_layer_and_log_std() -> None:
    torch.manual_seed(0)
    policy = GaussianMLPPolicy(5, 3, (8, 8))
    other = GaussianMLPPolicy(5, 3, (8, 8), init_log_std=-1.0)
    head = other.head()
    assert set(head) == set(policy.head_names()) == {"mean_net.4.weight", "mean_net.4.bias", "log_std"}
    torch.testing.assert_close(policy.mean_and_std(torch.zeros(5), policy.with_head(head))[1], torch.full((3,), 0.3679),
                               rtol=1e-4, atol=0)
    swapped = policy.with_head(head)
    obs = torch.randn(4, 5)
    features = policy.mean_net[:-1](obs)
    expected = torch.nn.functional.linear(features, head["mean_net.4.weight"], head["mean_net.4.bias"])
    torch.testing.assert_close(policy.mean_and_std(obs, swapped)[0], expected)
    before = {n: p.detach().clone() for n, p in policy.named_parameters()}
    policy.load_head(head)
    after = policy.parameters_dict()
    assert all(torch.equal(after[n], head[n]) for n in head)
    assert all(torch.equal(after[n], before[n]) for n in before if n not in head)


def test_numpy_mean_agrees_with_mean_and_follows_the_live_parameters() -> None:
    torch.manual_seed(0)
    policy = GaussianMLPPolicy(5, 3, (16, 8))
    obs = torch.randn(7, 5)
    forward = policy.numpy_mean()
    torch.testing.assert_close(torch.from_numpy(forward(obs.numpy())), policy.mean(obs, policy.parameters_dict()),
                               rtol=1e-5, atol=1e-6)
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(0.1)
    torch.testing.assert_close(torch.from_numpy(forward(obs.numpy())), policy.mean(obs, policy.parameters_dict()),
                               rtol=1e-5, atol=1e-6)
    # A leading task axis: task i's rows under task i's parameters.
    per_task = [{n: p.detach() + 0.05 * i for n, p in policy.named_parameters()} for i in range(3)]
    stacked = {n: torch.stack([p[n] for p in per_task]) for n in per_task[0]}
    rows = torch.randn(3, 4, 5)
    got = policy.numpy_mean(stacked)(rows.numpy())
    for i in range(3):
        torch.testing.assert_close(torch.from_numpy(got[i]), policy.mean(rows[i], per_task[i]), rtol=1e-5, atol=1e-6)
