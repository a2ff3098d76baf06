"""MAML: adaptation is used, the meta-gradient is exact, and a MAML-TRPO step is a safe update."""

from __future__ import annotations

import pytest
import torch
from torch.distributions import Independent, Normal

from agents.episodes import Episodes
from agents.meta.inner import (
    LR_PREFIX,
    adapt,
    adapt_k_steps,
    adapt_tasks,
    detach_distribution,
    inner_loss,
    masked_mean,
    surrogate_weights,
)
from agents.meta.maml import MAMLTRPO, MAMLConfig
from agents.meta.outer import (
    chunked_fisher_product,
    kl_curvature_outputs,
    outer_objective,
    outer_objective_per_task,
)
from agents.meta.returns import baseline_advantages
from agents.meta.task_batch import TaskBatch, prepare_tasks
from agents.meta.trpo import flatten_params, gauss_newton_vector_product, hessian_vector_product, unflatten_params
from agents.policy import GaussianMLPPolicy

INNER_LR = 0.5


def make_policy(seed: int = 0, dtype: torch.dtype = torch.float64) -> GaussianMLPPolicy:
    torch.manual_seed(seed)
    return GaussianMLPPolicy(obs_dim=2, act_dim=1, hidden_sizes=(4,), init_log_std=-0.5).to(dtype)


def make_episodes(policy: GaussianMLPPolicy, goal: float, seed: int, horizon: int = 6, batch: int = 5) -> Episodes:
    """Episodes with actions drawn from `policy` and rewards -(a - goal * obs_0)^2, padded."""
    gen = torch.Generator().manual_seed(seed)
    dtype = next(policy.parameters()).dtype
    lengths = torch.randint(2, horizon + 1, (batch,), generator=gen)
    lengths[0] = horizon
    mask = (torch.arange(horizon).unsqueeze(1) < lengths.unsqueeze(0)).to(dtype)
    obs = torch.randn(horizon, batch, 2, generator=gen, dtype=dtype) * mask.unsqueeze(-1)
    with torch.no_grad():
        dist = policy(obs)
        noise = torch.randn(horizon, batch, 1, generator=gen, dtype=dtype)
        actions = (dist.base_dist.loc + dist.base_dist.scale * noise) * mask.unsqueeze(-1)
    rewards = -((actions[..., 0] - goal * obs[..., 0]) ** 2) * mask
    return Episodes(obs, actions, rewards, mask, torch.zeros(batch, dtype=torch.bool))


def make_tasks(policy: GaussianMLPPolicy, goals=(1.0, -1.0)) -> list[tuple[Episodes, Episodes]]:
    return [
        (make_episodes(policy, g, seed=10 * i), make_episodes(policy, g, seed=10 * i + 1)) for i, g in enumerate(goals)
    ]


def test_adapted_log_probs_differ_and_original_params_are_untouched() -> None:
    policy = make_policy()
    train, _ = make_tasks(policy)[0]
    params = policy.parameters_dict()
    before = {k: v.detach().clone() for k, v in params.items()}
    adapted = adapt(policy, params, train, INNER_LR)
    assert set(adapted) == set(params)
    logp_orig = policy(train.observations).log_prob(train.actions)
    logp_adapted = policy(train.observations, adapted).log_prob(train.actions)
    assert (logp_adapted - logp_orig).abs().max() > 1e-3
    # The step went downhill on the inner loss, and the module was not written.
    adv = baseline_advantages(train)
    assert inner_loss(policy, adapted, train, adv) < inner_loss(policy, params, train, adv)
    for name, p in policy.named_parameters():
        torch.testing.assert_close(p.detach(), before[name])


def test_adapt_is_one_sgd_step_and_k_steps_compose() -> None:
    policy = make_policy()
    train, _ = make_tasks(policy)[0]
    params = policy.parameters_dict()
    adv = baseline_advantages(train)
    loss = inner_loss(policy, params, train, adv)
    logp = policy(train.observations).log_prob(train.actions)
    torch.testing.assert_close(loss, -(logp * adv * train.mask).sum() / train.mask.sum())
    grads = torch.autograd.grad(loss, list(params.values()))
    adapted = adapt(policy, params, train, INNER_LR)
    for (name, p), g in zip(params.items(), grads, strict=True):
        torch.testing.assert_close(adapted[name], p - INNER_LR * g)
    two = adapt_k_steps(policy, params, train, INNER_LR, num_steps=2)
    by_hand = adapt(policy, adapt(policy, params, train, INNER_LR), train, INNER_LR)
    for name in params:
        torch.testing.assert_close(two[name], by_hand[name])
    # A callable gets the detached current parameters and the step index.
    seen: list[int] = []

    def fresh(k: int, current: dict[str, torch.Tensor]) -> Episodes:
        assert not any(t.requires_grad for t in current.values())
        seen.append(k)
        return train

    from_fn = adapt_k_steps(policy, params, fresh, INNER_LR, num_steps=2)
    assert seen == [0, 1]
    for name in params:
        torch.testing.assert_close(from_fn[name], by_hand[name])
    with pytest.raises(ValueError, match="num_steps"):
        adapt_k_steps(policy, params, [train], INNER_LR, num_steps=2)


@pytest.mark.parametrize("objective", [outer_objective, outer_objective_per_task])
def test_outer_objective_evaluates_the_adapted_parameters(objective) -> None:
    policy = make_policy()
    tasks = prepare_tasks(make_tasks(policy))
    params = policy.parameters_dict()
    # Old policy = the unadapted one, so the ratio is not identically 1.
    old = detach_distribution(policy(tasks.valid.observations))
    result = objective(policy, params, tasks, INNER_LR, old_distribution=old)

    by_hand, unadapted, kls = [], [], []
    for i in range(tasks.num_tasks):
        (train,), valid, _, valid_advantages = tasks.task(i)
        old_i = Independent(Normal(old.base_dist.loc[i], old.base_dist.scale[i]), 1)
        adapted = adapt(policy, params, train, INNER_LR)
        for name in params:
            torch.testing.assert_close(result.adapted[name][i], adapted[name])
        for store, p in ((by_hand, adapted), (unadapted, params)):
            logp = policy(valid.observations, p).log_prob(valid.actions)
            ratio = torch.exp(logp - old_i.log_prob(valid.actions))
            store.append(-masked_mean(ratio * valid_advantages, valid.mask))
        kls.append(hand_kl(policy, adapted, valid, old_i))
    torch.testing.assert_close(result.loss, torch.stack(by_hand).mean())
    assert abs((result.loss - torch.stack(unadapted).mean()).item()) > 1e-3
    torch.testing.assert_close(result.kl, torch.stack(kls).mean())
    assert result.kl.item() > 1e-4


def test_prepared_tasks_keep_each_tasks_own_advantages() -> None:
    policy = make_policy()
    raw = make_tasks(policy)
    tasks = prepare_tasks(raw)
    for i, (train, valid) in enumerate(raw):
        torch.testing.assert_close(tasks.train_advantages[0][i], baseline_advantages(train))
        torch.testing.assert_close(tasks.valid_advantages[i], baseline_advantages(valid))
        torch.testing.assert_close(tasks.task(i)[0][0].observations, train.observations)


def hand_kl(policy: GaussianMLPPolicy, params, valid: Episodes, old) -> torch.Tensor:
    """Mean over real valid steps of KL(old || policy(params)) for diagonal Gaussians, written out."""
    new = policy(valid.observations, params).base_dist
    mu0, s0, mu1, s1 = old.base_dist.loc, old.base_dist.scale, new.loc, new.scale
    per_dim = torch.log(s1 / s0) + (s0**2 + (mu0 - mu1) ** 2) / (2 * s1**2) - 0.5
    kl = per_dim.sum(-1)
    return (kl * valid.mask).sum() / valid.mask.sum()


def meta_gradient(policy, tasks, first_order: bool, old) -> torch.Tensor:
    params = {k: v.detach().requires_grad_(True) for k, v in policy.named_parameters()}
    loss = outer_objective(policy, params, tasks, INNER_LR, first_order=first_order, old_distribution=old).loss
    return flatten_params(dict(zip(params, torch.autograd.grad(loss, list(params.values())), strict=True)))


def test_second_order_meta_gradient_matches_finite_differences() -> None:
    policy = make_policy()
    tasks = prepare_tasks(make_tasks(policy))
    params = policy.parameters_dict()
    # Fixed old (sampling) policies: the adapted ones at the starting point.
    old = detach_distribution(outer_objective(policy, params, tasks, INNER_LR).distribution)

    second = meta_gradient(policy, tasks, first_order=False, old=old)
    first = meta_gradient(policy, tasks, first_order=True, old=old)

    theta = flatten_params({k: v.detach() for k, v in params.items()})

    def objective(flat: torch.Tensor) -> float:
        loss = outer_objective(policy, unflatten_params(flat, params), tasks, INNER_LR, old_distribution=old).loss
        return loss.item()

    eps = 1e-6
    numeric = torch.zeros_like(theta)
    for i in range(theta.numel()):
        e = torch.zeros_like(theta)
        e[i] = eps
        numeric[i] = (objective(theta + e) - objective(theta - e)) / (2 * eps)

    scale = float(numeric.norm())
    assert scale > 1e-3
    assert float((second - numeric).norm()) / scale < 1e-6
    # The first-order gradient misses the second-order terms, visibly at this inner step size.
    assert float((first - numeric).norm()) / scale > 1e-2


def test_mamltrpo_step_is_a_safe_improving_update() -> None:
    policy = make_policy()
    tasks = make_tasks(policy)
    config = MAMLConfig(inner_lr=INNER_LR, max_kl=1e-2)
    learner = MAMLTRPO(policy, config)
    data = prepare_tasks(tasks)
    theta0 = {k: v.detach().clone() for k, v in policy.named_parameters()}
    before = outer_objective(policy, theta0, data, INNER_LR)
    old = detach_distribution(before.distribution)

    record = learner.step(tasks)

    assert record.step_accepted and 0 < record.step_fraction <= 1
    changed = flatten_params(policy.parameters_dict()).detach() - flatten_params(theta0)
    assert float(changed.abs().max()) > 1e-6
    after = outer_objective(policy, policy.parameters_dict(), data, INNER_LR, old_distribution=old)
    kl = torch.stack([
        hand_kl(policy, {name: p[i] for name, p in after.adapted.items()}, data.task(i)[1],
                Independent(Normal(old.base_dist.loc[i], old.base_dist.scale[i]), 1))
        for i in range(data.num_tasks)
    ])
    assert 0 < kl.mean().item() <= config.max_kl * (1 + 1e-6)
    assert after.loss.item() < before.loss.item()
    assert record.loss_after == pytest.approx(after.loss.item(), rel=1e-6)
    assert record.loss_before == pytest.approx(before.loss.item(), rel=1e-6)
    assert record.pre_adapt_return == pytest.approx(
        float(torch.stack([t[0].total_returns().mean() for t in tasks]).mean())
    )
    figures = record.to_dict()
    assert all(isinstance(v, bool) or torch.isfinite(torch.tensor(v)) for v in figures.values())
    assert figures["time_total"] >= figures["time_gradient"] > 0


@pytest.mark.parametrize(("optimizer", "first_order"), [("adam", True), ("trpo", True)])
def test_mamltrpo_other_modes_update_the_policy(optimizer: str, first_order: bool) -> None:
    policy = make_policy(dtype=torch.float32)
    tasks = make_tasks(policy)
    learner = MAMLTRPO(policy, MAMLConfig(inner_lr=INNER_LR, first_order=first_order, outer_optimizer=optimizer))
    theta0 = flatten_params(policy.parameters_dict()).detach().clone()
    record = learner.step(tasks)
    assert record.step_accepted
    assert float((flatten_params(policy.parameters_dict()).detach() - theta0).abs().max()) > 1e-6
    adapted = learner.adapt_tasks([[tasks[0][0]]])[0]
    assert not any(t.requires_grad for t in adapted.values())


@pytest.mark.parametrize(
    ("field", "value"),
    [("inner_lr", 0.0), ("max_kl", -1.0), ("outer_optimizer", "sgd"), ("num_inner_steps", 0),
     ("inner_estimator", "reinforce")],
)
def test_config_rejects_invalid_values(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=field):
        MAMLConfig(**{field: value})


def test_trpo_step_follows_the_natural_gradient_to_the_kl_bound() -> None:
    policy = make_policy()
    tasks = make_tasks(policy)
    config = MAMLConfig(inner_lr=INNER_LR, max_kl=1e-3, cg_iters=60, cg_damping=1e-3, fisher_every=1)
    data = prepare_tasks(tasks)
    theta0 = {k: v.detach().clone() for k, v in policy.named_parameters()}
    old = detach_distribution(outer_objective(policy, theta0, data, INNER_LR).distribution)
    grad = meta_gradient(policy, data, first_order=False, old=old)
    fvp = hessian_vector_product(lambda p: outer_objective(policy, p, data, INNER_LR, old_distribution=old).kl, theta0)
    n = grad.numel()
    fisher = torch.stack([fvp(e) for e in torch.eye(n, dtype=torch.float64)], dim=1)
    natural = torch.linalg.solve(fisher + config.cg_damping * torch.eye(n, dtype=torch.float64), grad)

    record = MAMLTRPO(policy, config).step(tasks)

    assert record.step_accepted
    step = flatten_params(policy.parameters_dict()).detach() - flatten_params(theta0)
    cosine = torch.nn.functional.cosine_similarity(step, -natural, dim=0)
    assert cosine.item() > 0.999
    # The full step is scaled so that the quadratic KL model reaches max_kl.
    quad_kl = 0.5 * step @ (fisher + config.cg_damping * torch.eye(n, dtype=torch.float64)) @ step
    assert quad_kl.item() == pytest.approx(config.max_kl * record.step_fraction**2, rel=1e-3)


def test_batched_adaptation_equals_each_tasks_own() -> None:
    policy = make_policy()
    raw = make_tasks(policy, goals=(1.0, -1.0, 0.5))
    tasks = prepare_tasks(raw)
    params = policy.parameters_dict()
    for first_order in (False, True):
        batched = adapt_tasks(policy, params, tasks.train, tasks.train_advantages, INNER_LR, 2, first_order)
        for i, (train, _) in enumerate(raw):
            alone = adapt_k_steps(policy, params, train, INNER_LR, 2, first_order)
            for name in params:
                torch.testing.assert_close(batched[name][i], alone[name], rtol=1e-12, atol=1e-12)
    # The learner's detached version, as the sampler gets it.
    learner = MAMLTRPO(policy, MAMLConfig(inner_lr=INNER_LR))
    for got, (train, _) in zip(learner.adapt_tasks([[t for t, _ in raw]]), raw, strict=True):
        want = adapt_k_steps(policy, policy.parameters_dict(), train, INNER_LR, 1, first_order=True)
        assert not any(p.requires_grad for p in got.values())
        for name in want:
            torch.testing.assert_close(got[name], want[name], rtol=1e-12, atol=1e-12)


def test_kl_curvature_gives_the_hessian_of_the_outer_kl() -> None:
    policy = make_policy()
    tasks = prepare_tasks(make_tasks(policy, goals=(1.0, -1.0, 0.5)))
    theta = {k: v.detach().clone() for k, v in policy.named_parameters()}
    v = torch.randn(flatten_params(theta).numel(), generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    for first_order in (False, True):
        hessian = hessian_vector_product(
            lambda p, fo=first_order: outer_objective_per_task(policy, p, tasks, INNER_LR, 2, fo).kl, theta)
        gauss_newton = gauss_newton_vector_product(
            lambda p, fo=first_order: kl_curvature_outputs(policy, p, tasks, INNER_LR, 2, fo), theta)
        torch.testing.assert_close(gauss_newton(v), hessian(v), rtol=1e-9, atol=1e-12)


def test_fisher_in_chunks_of_tasks_equals_the_whole_product() -> None:
    policy = make_policy()
    tasks = prepare_tasks(make_tasks(policy, goals=(1.0, -1.0, 0.5, 2.0, -0.3)))
    theta = {k: v.detach().clone() for k, v in policy.named_parameters()}
    v = torch.randn(flatten_params(theta).numel(), generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    whole = gauss_newton_vector_product(lambda p: kl_curvature_outputs(policy, p, tasks, INNER_LR), theta, 0.1)
    per_task = tasks.valid.mask[0].numel()
    assert [c.num_tasks for c in tasks.chunks(2 * per_task)] == [2, 2, 1]  # uneven chunks, weighted by size
    for max_steps in (2 * per_task, 1, 10**9):
        chunked = chunked_fisher_product(lambda p, chunk: kl_curvature_outputs(policy, p, chunk, INNER_LR), theta,
                                         tasks, damping=0.1, max_steps=max_steps)
        torch.testing.assert_close(chunked(v), whole(v), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("fisher_every", [1, 2])
def test_update_equals_the_per_task_reference_step(fisher_every: int) -> None:
    tasks = make_tasks(make_policy(), goals=(1.0, -1.0, 0.5, 2.0))
    steps = {}
    for reference in (True, False):
        policy = make_policy()
        # Five CG iterations keep the residual far above its stopping tolerance, where a rounding-level
        # difference could decide whether one more iteration runs.
        config = MAMLConfig(inner_lr=INNER_LR, max_kl=1e-2, cg_iters=5, fisher_every=fisher_every,
                            reference_update=reference)
        before = flatten_params(policy.parameters_dict()).detach().clone()
        record = MAMLTRPO(policy, config).step(tasks)
        assert record.step_accepted
        steps[reference] = flatten_params(policy.parameters_dict()).detach() - before
    assert float(steps[True].abs().max()) > 1e-3
    torch.testing.assert_close(steps[False], steps[True], rtol=0, atol=1e-6)


def test_fisher_on_every_kth_step_changes_only_the_curvature() -> None:
    tasks = make_tasks(make_policy(), goals=(1.0, -1.0, 0.5, 2.0))
    prepared = prepare_tasks(tasks)
    assert prepared.every(2).valid.observations.shape[1] == 3
    torch.testing.assert_close(prepared.every(2).valid_advantages, prepared.valid_advantages[:, ::2])
    results = {}
    for every in (1, 2):
        policy = make_policy()
        config = MAMLConfig(inner_lr=INNER_LR, max_kl=1e-2, fisher_every=every)
        record = MAMLTRPO(policy, config).step(tasks)
        # The line search checks the KL and the surrogate on every step, whatever the Fisher saw.
        assert record.step_accepted and 0 < record.kl <= config.max_kl and record.loss_after < record.loss_before
        results[every] = flatten_params(policy.parameters_dict()).detach()
    assert float((results[1] - results[2]).abs().max()) > 1e-6


def test_tasks_of_different_sizes_are_padded_without_changing_the_objective() -> None:
    policy = make_policy()
    raw = [(make_episodes(policy, 1.0, seed=1, horizon=6, batch=3), make_episodes(policy, 1.0, seed=2, horizon=4)),
           (make_episodes(policy, -1.0, seed=3, horizon=5, batch=5), make_episodes(policy, -1.0, seed=4, batch=2))]
    tasks = prepare_tasks(raw)
    assert tasks.train[0].observations.shape[:3] == (2, 6, 5)
    params = policy.parameters_dict()
    result = outer_objective(policy, params, tasks, INNER_LR)
    losses = []
    for train, valid in raw:  # unpadded, one task at a time
        adapted = adapt(policy, params, train, INNER_LR)
        dist = policy(valid.observations, adapted)
        old = detach_distribution(dist)
        ratio = torch.exp(dist.log_prob(valid.actions) - old.log_prob(valid.actions))
        losses.append(-masked_mean(ratio * baseline_advantages(valid), valid.mask))
    torch.testing.assert_close(result.loss, torch.stack(losses).mean())
    grads = torch.autograd.grad(result.loss, list(params.values()))
    want = torch.autograd.grad(torch.stack(losses).mean(), list(params.values()))
    for got, expected in zip(grads, want, strict=True):
        torch.testing.assert_close(got, expected)


def test_every_inner_step_adapts_on_its_own_episodes() -> None:
    policy = make_policy()
    goals = (1.0, -1.0, 0.5)
    steps = [[make_episodes(policy, g, seed=100 * k + i) for i, g in enumerate(goals)] for k in range(2)]
    valid = [make_episodes(policy, g, seed=500 + i) for i, g in enumerate(goals)]
    tasks = prepare_tasks([([steps[0][i], steps[1][i]], valid[i]) for i in range(len(goals))])
    params = policy.parameters_dict()
    batched = adapt_tasks(policy, params, tasks.train, tasks.train_advantages, INNER_LR, 2)
    reused = adapt_tasks(policy, params, tasks.train[0], tasks.train_advantages[0], INNER_LR, 2)
    for i in range(len(goals)):
        alone = adapt_k_steps(policy, params, [steps[0][i], steps[1][i]], INNER_LR, 2)
        for name in params:
            torch.testing.assert_close(batched[name][i], alone[name], rtol=1e-12, atol=1e-12)
        differs = max(float((batched[n][i] - reused[n][i]).detach().abs().max()) for n in params)
        assert differs > 1e-6, "step 2 adapted on its own episodes, not step 1's again"
    # The reference and the batched objective agree with per-step sets, and the learner's sampling
    # adaptation takes one step per set it is given.
    old = detach_distribution(outer_objective_per_task(policy, params, tasks, INNER_LR, 2).distribution)
    for first_order in (False, True):
        a = outer_objective(policy, params, tasks, INNER_LR, 2, first_order, old)
        b = outer_objective_per_task(policy, params, tasks, INNER_LR, 2, first_order, old)
        torch.testing.assert_close(a.loss, b.loss)
        torch.testing.assert_close(a.kl, b.kl)
    learner = MAMLTRPO(policy, MAMLConfig(inner_lr=INNER_LR, num_inner_steps=2))
    one = learner.adapt_tasks(steps[:1])
    two = learner.adapt_tasks(steps)
    for i in range(len(goals)):
        want = adapt_k_steps(policy, params, [steps[0][i], steps[1][i]], INNER_LR, 2, first_order=True)
        for name in want:
            torch.testing.assert_close(two[i][name], want[name], rtol=1e-12, atol=1e-12)
        assert not torch.equal(one[i]["mean_net.0.weight"], two[i]["mean_net.0.weight"])
    with pytest.raises(ValueError, match="episode sets"):
        adapt_tasks(policy, params, tasks.train, tasks.train_advantages, INNER_LR, 3)


def bandit_surrogate_hessian(estimator: str, theta: float = 0.5, sigma: float = 1.0, samples: int = 200_000
                             ) -> float:
    """d^2/dtheta^2 of the inner surrogate, averaged over sampled two-step episodes of a toy problem.

    a_t ~ N(theta, sigma^2) for t = 0, 1; rewards r_0 = -a_0^2, r_1 = -(a_0 + a_1)^2; advantages are
    the returns to go (no baseline). The expected return is J = -5 theta^2 - 3 sigma^2, so its
    Hessian is -10: an unbiased second-order estimator must average to it.
    """
    gen = torch.Generator().manual_seed(0)
    actions = theta + sigma * torch.randn(2, samples, generator=gen, dtype=torch.float64)
    rewards = torch.stack([-actions[0] ** 2, -(actions[0] + actions[1]) ** 2])
    returns_to_go = torch.flip(torch.cumsum(torch.flip(rewards, [0]), 0), [0])
    mask = torch.ones(2, samples, dtype=torch.float64)
    param = torch.tensor(theta, dtype=torch.float64, requires_grad=True)
    log_probs = Normal(param, sigma).log_prob(actions)
    surrogate = (surrogate_weights(log_probs, mask, estimator) * returns_to_go).sum(0).mean()
    (grad,) = torch.autograd.grad(surrogate, param, create_graph=True)
    (hessian,) = torch.autograd.grad(grad, param)
    return float(hessian)


def test_dice_second_derivative_is_the_hessian_of_the_expected_return() -> None:
    assert bandit_surrogate_hessian("dice") == pytest.approx(-10.0, abs=0.5)
    # The score-function surrogate treats the episodes as fixed: its second derivative averages
    # to E[sum_t A_t hess log pi_t] = (9 theta^2 + 5 sigma^2) / sigma^2 = 7.25, not -10.
    assert bandit_surrogate_hessian("score") == pytest.approx(7.25, abs=0.5)


def test_lvc_second_derivative_keeps_each_steps_own_score_term() -> None:
    # E[sum_t A_t (hess log pi_t + (grad log pi_t)^2)] = E[A_0 (e_0^2 - 1) + A_1 (e_1^2 - 1)] / sigma^2
    # with e_t the standard normal noise of a_t: (-4 sigma^2 - 2 sigma^2) / sigma^2 = -6 at any theta.
    # Biased (the true Hessian is -10: the cross-step products are dropped) but of the right sign,
    # where the score surrogate's +7.25 is not.
    assert bandit_surrogate_hessian("lvc") == pytest.approx(-6.0, abs=0.5)
    assert bandit_surrogate_hessian("lvc", theta=-1.5) == pytest.approx(-6.0, abs=0.5)


@pytest.mark.parametrize("estimator", ["dice", "lvc"])
def test_estimator_adapts_like_the_score_surrogate_but_changes_the_meta_gradient(estimator: str) -> None:
    policy = make_policy()
    tasks = prepare_tasks(make_tasks(policy, goals=(1.0, -1.0, 0.5)))
    params = policy.parameters_dict()
    score = adapt_tasks(policy, params, tasks.train, tasks.train_advantages, INNER_LR, 2, estimator="score")
    other = adapt_tasks(policy, params, tasks.train, tasks.train_advantages, INNER_LR, 2, estimator=estimator)
    for name in params:
        torch.testing.assert_close(other[name], score[name], rtol=1e-12, atol=1e-12)
    gradients = {}
    for estimator_name in ("score", estimator):
        theta = {k: v.detach().clone().requires_grad_(True) for k, v in policy.named_parameters()}
        batched = outer_objective(policy, theta, tasks, INNER_LR, 2, estimator=estimator_name).loss
        grad = flatten_params(dict(zip(theta, torch.autograd.grad(batched, list(theta.values())), strict=True)))
        per_task = outer_objective_per_task(policy, theta, tasks, INNER_LR, 2, estimator=estimator_name).loss
        reference = flatten_params(dict(zip(theta, torch.autograd.grad(per_task, list(theta.values())),
                                            strict=True)))
        torch.testing.assert_close(grad, reference, rtol=1e-9, atol=1e-12)
        gradients[estimator_name] = grad
    assert float((gradients[estimator] - gradients["score"]).norm()) > 1e-3 * float(gradients["score"].norm())


def test_dice_ignores_padding_after_an_episode_ends() -> None:
    log_probs = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    mask = torch.tensor([[1, 1, 1], [1, 1, 0], [1, 0, 0], [0, 0, 0]], dtype=torch.float64)
    weights = surrogate_weights(log_probs, mask, "dice")
    (grad,) = torch.autograd.grad((weights * mask).sum(), log_probs)
    torch.testing.assert_close(grad, mask)  # d/dlogpi_t of sum_t w_t = 1 on real steps, 0 on padding
    with pytest.raises(ValueError, match="inner_estimator"):
        surrogate_weights(log_probs, mask, "reinforce")


def with_step_sizes(params: dict, sizes: dict) -> dict:
    return {**params, **{LR_PREFIX + name: lr for name, lr in sizes.items()}}


def test_meta_sgd_uniform_step_sizes_equal_the_scalar_step() -> None:
    policy = make_policy()
    tasks = prepare_tasks(make_tasks(policy))
    params = policy.parameters_dict()
    scalar = adapt_tasks(policy, params, tasks.train, tasks.train_advantages, INNER_LR, 2)
    uniform = adapt_tasks(policy, params, tasks.train, tasks.train_advantages,
                          {name: torch.full_like(p, INNER_LR) for name, p in params.items()}, 2)
    for name in params:
        torch.testing.assert_close(uniform[name], scalar[name], rtol=1e-12, atol=1e-12)


def test_meta_sgd_step_sizes_get_the_exact_meta_gradient() -> None:
    policy = make_policy()
    tasks = prepare_tasks(make_tasks(policy))
    theta = {k: v.detach().clone() for k, v in policy.named_parameters()}
    gen = torch.Generator().manual_seed(3)
    sizes = {k: (INNER_LR * (0.5 + torch.rand(v.shape, generator=gen, dtype=torch.float64))).requires_grad_(True)
             for k, v in theta.items()}

    # The sampling policy is fixed (at the unperturbed step sizes), so the surrogate's value moves with them.
    old = detach_distribution(outer_objective(policy, with_step_sizes(theta, sizes), tasks, INNER_LR, 2).distribution)

    def loss(step_sizes: dict) -> torch.Tensor:
        return outer_objective(policy, with_step_sizes(theta, step_sizes), tasks, INNER_LR, 2, False, old).loss

    grads = torch.autograd.grad(loss(sizes), list(sizes.values()))
    eps = 1e-6
    for (name, lr), grad in zip(sizes.items(), grads, strict=True):
        index = (0,) * lr.dim()
        bumped = {k: v.detach().clone() for k, v in sizes.items()}
        bumped[name][index] += eps
        up = loss(bumped).item()
        bumped[name][index] -= 2 * eps
        down = loss(bumped).item()
        assert grad[index].item() == pytest.approx((up - down) / (2 * eps), rel=1e-4, abs=1e-9), name
    assert any(float(g.abs().max()) > 1e-6 for g in grads)


def test_meta_sgd_trpo_step_moves_the_step_sizes_like_the_reference() -> None:
    tasks = make_tasks(make_policy(), goals=(1.0, -1.0, 0.5, 2.0))
    moved = {}
    for reference in (True, False):
        policy = make_policy()
        learner = MAMLTRPO(policy, MAMLConfig(inner_lr=INNER_LR, cg_iters=5, meta_sgd=True,
                                              reference_update=reference))
        assert learner.step(tasks).step_accepted
        moved[reference] = flatten_params(learner.step_sizes()) - INNER_LR
    assert float(moved[True].abs().max()) > 1e-4  # the step sizes were learned
    torch.testing.assert_close(moved[False], moved[True], rtol=0, atol=1e-6)
    adam = MAMLTRPO(make_policy(), MAMLConfig(inner_lr=INNER_LR, meta_sgd=True, outer_optimizer="adam"))
    adam.step(tasks)
    assert float((flatten_params(adam.step_sizes()) - INNER_LR).abs().max()) > 0
    with pytest.raises(ValueError, match="inner_lrs"):
        MAMLTRPO(make_policy(), MAMLConfig()).load_step_sizes(adam.step_sizes())


def test_per_step_sizes_take_each_inner_steps_own_sizes() -> None:
    policy = make_policy()
    per_task = make_tasks(policy)
    tasks = prepare_tasks(per_task)
    params = policy.parameters_dict()
    gen = torch.Generator().manual_seed(5)
    first, second = ({name: INNER_LR * torch.rand(p.shape, generator=gen, dtype=p.dtype) for name, p in params.items()}
                     for _ in range(2))
    per_step = {name: torch.stack([first[name], second[name]]) for name in params}
    batched = adapt_tasks(policy, params, tasks.train, tasks.train_advantages, per_step, 2)
    for i, (train, _) in enumerate(per_task):
        by_hand = adapt(policy, adapt(policy, params, train, first), train, second, step=1)
        one_loop = adapt_k_steps(policy, params, train, per_step, 2)
        for name in params:
            torch.testing.assert_close(one_loop[name], by_hand[name], rtol=1e-12, atol=1e-12)
            torch.testing.assert_close(batched[name][i], by_hand[name], rtol=1e-10, atol=1e-12)
    shared_first = adapt_k_steps(policy, params, per_task[0][0], first, 2)
    stepwise = adapt_k_steps(policy, params, per_task[0][0], per_step, 2)
    assert max(float((shared_first[n] - stepwise[n]).detach().abs().max()) for n in params) > 1e-6
    with pytest.raises(ValueError, match="cover 2 inner steps, step 3 asked"):
        adapt_k_steps(policy, params, per_task[0][0], per_step, 3)


def test_per_step_sizes_are_meta_learned_step_by_step() -> None:
    first, second, valid = two_step_tasks(make_policy())
    per_task = [([f, s], v) for f, s, v in zip(first, second, valid, strict=True)]
    config = MAMLConfig(inner_lr=INNER_LR, num_inner_steps=2, cg_iters=5, meta_sgd=True, meta_sgd_per_step=True)
    learner = MAMLTRPO(make_policy(), config)
    assert all(lr.shape == (2, *p.shape) for lr, p in zip(learner.step_sizes().values(),
                                                          learner.policy.parameters(), strict=True))
    assert learner.step(per_task).step_accepted
    moved = {name: lr - INNER_LR for name, lr in learner.step_sizes().items()}
    first_moves, second_moves = (flatten_params({n: m[k] for n, m in moved.items()}) for k in range(2))
    assert float(first_moves.abs().max()) > 1e-4 and float(second_moves.abs().max()) > 1e-4
    assert float((first_moves - second_moves).abs().max()) > 1e-4  # each step's sizes follow their own gradient

    # An init's shared sizes seed every step; per-step sizes must match the learner's steps.
    shared = {name: torch.full_like(p, 0.3) for name, p in learner.policy.named_parameters()}
    learner.load_step_sizes(shared)
    assert all(bool((lr == 0.3).all()) for lr in learner.step_sizes().values())
    three = {name: torch.stack([s] * 3) for name, s in shared.items()}
    with pytest.raises(ValueError, match="per-step sizes for 3 inner steps, the learner has 2 steps"):
        learner.load_step_sizes(three)
    with pytest.raises(ValueError, match="the learner has one set for every step"):
        MAMLTRPO(make_policy(), MAMLConfig(inner_lr=INNER_LR, meta_sgd=True)).load_step_sizes(three)
    with pytest.raises(ValueError, match="meta_sgd_per_step needs meta_sgd"):
        MAMLConfig(meta_sgd_per_step=True)


def two_step_tasks(policy: GaussianMLPPolicy, goals=(1.0, -1.0, 0.5)) -> tuple[list, list, list]:
    """Per task: the episodes of inner steps 1 and 2 and the valid episodes (independent draws)."""
    steps = [[make_episodes(policy, g, seed=100 * k + i) for i, g in enumerate(goals)] for k in range(2)]
    valid = [make_episodes(policy, g, seed=500 + i) for i, g in enumerate(goals)]
    return steps[0], steps[1], valid


def two_step_problems(policy: GaussianMLPPolicy) -> tuple[list, TaskBatch, TaskBatch, dict]:
    """Per-task (two train sets, valid) pairs; the one-step problem (adapt on step 1's episodes,
    evaluated on step 2's, which the step-1 parameters sampled) and the two-step problem, prepared;
    and the policy's parameters as meta-parameters."""
    first, second, valid = two_step_tasks(policy)
    per_task = [([f, s], v) for f, s, v in zip(first, second, valid, strict=True)]
    one_step = prepare_tasks(list(zip(first, second, strict=True)))
    params = {name: p.detach().requires_grad_(True) for name, p in policy.parameters_dict().items()}
    return per_task, one_step, prepare_tasks(per_task), params


def meta_step_change(config: MAMLConfig, per_task: list) -> torch.Tensor:
    """How far one accepted meta-step from a fresh policy moves its parameters (flat)."""
    policy = make_policy()
    before = flatten_params(policy.parameters_dict()).detach().clone()
    assert MAMLTRPO(policy, config).step(per_task).step_accepted
    return flatten_params(policy.parameters_dict()).detach() - before


def test_the_all_steps_objective_is_the_mean_of_each_steps_own_problem() -> None:
    """outer_steps: all, two inner steps: the loss, its meta-gradient and the KL's curvature are the
    mean of the one-step problem (adapt on step 1's episodes, evaluated on step 2's, sampled by the
    step-1 parameters) and the two-step problem, each built on its own; a meta-step differs from the
    last-step objective's and follows the per-task reference."""
    policy = make_policy()
    per_task, one_step, two_steps, params = two_step_problems(policy)
    learner = MAMLTRPO(policy, MAMLConfig(inner_lr=INNER_LR, num_inner_steps=2, outer_steps="all"))
    loss, kl, _ = learner._objective(params, two_steps, first_order=False)
    want = (outer_objective_per_task(policy, params, one_step, INNER_LR, 1).loss
            + outer_objective_per_task(policy, params, two_steps, INNER_LR, 2).loss) / 2
    torch.testing.assert_close(loss, want)
    for got, expected in zip(torch.autograd.grad(loss, list(params.values())),
                             torch.autograd.grad(want, list(params.values())), strict=True):
        torch.testing.assert_close(got, expected)
    assert float(kl.detach()) == 0.0
    v = torch.randn(sum(p.numel() for p in params.values()), dtype=torch.float64,
                    generator=torch.Generator().manual_seed(1))

    def kl_product(kl_of) -> torch.Tensor:
        return hessian_vector_product(kl_of, params, 0.0)(v)

    torch.testing.assert_close(
        kl_product(lambda p: learner._objective(p, two_steps, first_order=False)[1]),
        0.5 * (kl_product(lambda p: outer_objective(policy, p, one_step, INNER_LR, 1).kl)
               + kl_product(lambda p: outer_objective(policy, p, two_steps, INNER_LR, 2).kl)))

    moved = {(outer_steps, reference): meta_step_change(
        MAMLConfig(inner_lr=INNER_LR, num_inner_steps=2, outer_steps=outer_steps, cg_iters=5,
                   reference_update=reference), per_task)
        for outer_steps, reference in (("last", False), ("all", False), ("all", True))}
    torch.testing.assert_close(moved["all", False], moved["all", True], rtol=0, atol=1e-6)
    assert float((moved["all", False] - moved["last", False]).abs().max()) > 1e-4
    with pytest.raises(ValueError, match="one train episode set per inner step"):
        MAMLTRPO(make_policy(), MAMLConfig(num_inner_steps=2, outer_steps="all")).step(
            [(train[0], valid) for train, valid in per_task])


def test_outer_weights_weigh_each_steps_problem() -> None:
    """outer_weights (3, 1) on two inner steps: the loss and its meta-gradient are 3/4 of the
    one-step problem's plus 1/4 of the two-step problem's; the trust region's Fisher product is the
    Hessian of the KL weighted alike; (0, 1) takes the same meta-step as the last-step objective;
    weights of the wrong length, negative, or without outer_steps all are refused."""
    policy = make_policy()
    per_task, one_step, two_steps, params = two_step_problems(policy)
    learner = MAMLTRPO(policy, MAMLConfig(inner_lr=INNER_LR, num_inner_steps=2, outer_steps="all",
                                          outer_weights=(3.0, 1.0), cg_damping=0.0))
    loss, _, _ = learner._objective(params, two_steps, first_order=False)
    want = (0.75 * outer_objective_per_task(policy, params, one_step, INNER_LR, 1).loss
            + 0.25 * outer_objective_per_task(policy, params, two_steps, INNER_LR, 2).loss)
    torch.testing.assert_close(loss, want)
    for got, expected in zip(torch.autograd.grad(loss, list(params.values())),
                             torch.autograd.grad(want, list(params.values())), strict=True):
        torch.testing.assert_close(got, expected)
    v = torch.randn(sum(p.numel() for p in params.values()), dtype=torch.float64,
                    generator=torch.Generator().manual_seed(2))
    weighted_kl_hessian = hessian_vector_product(
        lambda p: 0.75 * outer_objective(policy, p, one_step, INNER_LR, 1).kl
        + 0.25 * outer_objective(policy, p, two_steps, INNER_LR, 2).kl, params, 0.0)(v)
    torch.testing.assert_close(learner._fisher_product(params, two_steps)(v), weighted_kl_hessian)

    moved = {weights: meta_step_change(
        MAMLConfig(inner_lr=INNER_LR, num_inner_steps=2, outer_steps=name, outer_weights=weights, cg_iters=5),
        per_task)
        for name, weights in (("last", None), ("all", (0.0, 1.0)), ("all", (3.0, 1.0)))}
    torch.testing.assert_close(moved[0.0, 1.0], moved[None], rtol=0, atol=1e-9)
    assert float((moved[3.0, 1.0] - moved[None]).abs().max()) > 1e-4
    for bad in (dict(outer_steps="all", outer_weights=(1.0,)), dict(outer_steps="all", outer_weights=(1.0, -1.0)),
                dict(outer_steps="all", outer_weights=(0.0, 0.0)), dict(outer_weights=(1.0, 1.0))):
        with pytest.raises(ValueError, match="outer_weights"):
            MAMLConfig(num_inner_steps=2, **bad)
