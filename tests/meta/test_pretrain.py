"""The multi-task pretrained baseline: TRPO steps improve the surrogate within the KL bound; checkpoints."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from torch.distributions import kl_divergence

from agents.meta.evaluation import random_init
from agents.meta.inner import masked_mean
from agents.meta.pretrain import PretrainConfig, pretrain, pretrain_iteration, save_pretrained, trpo_step
from agents.meta.returns import baseline_advantages
from agents.runs.checkpoint import load_checkpoint
from agents.runs.config import config_to_dict
from agents.runs.rundir import MetricsLog, latest_checkpoint, prepare_run_dir
from agents.sampler import Sampler
from envs.tasks import TaskDistribution

TINY = dict(family="cheetah_velocity", tasks_per_iteration=3, episodes_per_task=3, horizon=30, hidden_sizes=(16,),
            num_threads=1)


@pytest.fixture(scope="module")
def sampler() -> Iterator[Sampler]:
    sampler = Sampler("cheetah", TINY["horizon"], num_threads=1)
    yield sampler
    sampler.close()


def surrogate_and_kl(policy, old_policy, episodes) -> tuple[float, float]:
    """Independent re-computation: mean over all real steps of ratio * advantage, and of KL(old || new)."""
    with torch.no_grad():
        losses, kls, counts = [], [], []
        for e in episodes:
            adv = baseline_advantages(e)
            old, new = old_policy(e.observations), policy(e.observations)
            ratio = torch.exp(new.log_prob(e.actions) - old.log_prob(e.actions))
            counts.append(e.mask.sum())
            losses.append(-masked_mean(ratio * adv, e.mask) * counts[-1])
            kls.append(masked_mean(kl_divergence(old, new), e.mask) * counts[-1])
        total = torch.stack(counts).sum()
        return float(torch.stack(losses).sum() / total), float(torch.stack(kls).sum() / total)


def test_trpo_step_improves_the_surrogate_within_the_kl_bound(sampler: Sampler) -> None:
    config = PretrainConfig(iterations=1, **TINY)
    policy = random_init(sampler.obs_dim, sampler.act_dim, config.hidden_sizes, seed=0)
    old_policy = random_init(sampler.obs_dim, sampler.act_dim, config.hidden_sizes, seed=0)
    tasks = TaskDistribution(config.family, 0).sample(config.tasks_per_iteration)
    episodes = sampler.sample(policy, tasks, config.episodes_per_task, seed=0)
    loss_before, kl_before = surrogate_and_kl(policy, old_policy, episodes)
    record = trpo_step(policy, episodes, config)
    loss_after, kl_after = surrogate_and_kl(policy, old_policy, episodes)
    assert record["step_accepted"]
    assert kl_before == pytest.approx(0.0, abs=1e-7)
    assert loss_after < loss_before - 1e-3
    assert 0 < kl_after <= config.max_kl * (1 + 1e-4)
    assert record["loss_after"] == pytest.approx(loss_after, abs=1e-5)
    assert record["kl"] == pytest.approx(kl_after, rel=1e-3)
    changed = [not torch.equal(p, q) for p, q in zip(policy.parameters(), old_policy.parameters(), strict=True)]
    assert all(changed)


def test_iterations_change_parameters_and_keep_kl_within_bound(sampler: Sampler) -> None:
    config = PretrainConfig(iterations=3, max_kl=0.005, **TINY)
    policy = random_init(sampler.obs_dim, sampler.act_dim, config.hidden_sizes, seed=0)
    start = {name: p.detach().clone() for name, p in policy.named_parameters()}
    records = [pretrain_iteration(policy, sampler, config, i) for i in range(config.iterations)]
    assert any(r["step_accepted"] for r in records)
    for r in records:
        assert r["kl"] <= config.max_kl * (1 + 1e-4)
        assert r["env_steps"] > 0
        if r["step_accepted"]:
            assert r["loss_after"] < r["loss_before"]
    assert any(not torch.equal(p, start[name]) for name, p in policy.named_parameters())


def test_run_directory_checkpoint_metrics_and_exact_resume(tmp_path: Path) -> None:
    config = PretrainConfig(iterations=2, checkpoint_every=1, **TINY)
    run = prepare_run_dir(tmp_path / "run", config=config_to_dict(config))
    pretrain(config, run, progress=False)
    checkpoint = load_checkpoint(latest_checkpoint(run), expected_robot="cheetah")
    assert checkpoint.metadata["kind"] == "pretrained"
    assert checkpoint.metadata["family"] == "cheetah_velocity"
    assert checkpoint.iteration == 2
    assert [r["step"] for r in MetricsLog(run.metrics, "pretrain").read()] == [1, 2]

    longer = PretrainConfig(iterations=3, checkpoint_every=1, **TINY)
    resumed_run = prepare_run_dir(run.root, resume=True, config=config_to_dict(longer), changeable={"iterations"})
    resumed = pretrain(longer, resumed_run, progress=False)
    straight = pretrain(longer, None, progress=False)
    for (name, p), q in zip(resumed.named_parameters(), straight.parameters(), strict=True):
        assert torch.equal(p, q), name
    assert [r["step"] for r in MetricsLog(run.metrics, "pretrain").read()] == [1, 2, 3]
    # Provenance, observation layout and the budget summed over the resume.
    first, final = checkpoint.metadata, load_checkpoint(latest_checkpoint(run)).metadata
    assert final["provenance"]["git_commit"] and final["observation"]["robot"] == "cheetah"
    assert final["observation"]["obs_dim"] == checkpoint.obs_dim
    assert final["budget"]["env_steps"] == 3 * TINY["tasks_per_iteration"] * TINY["episodes_per_task"] * TINY["horizon"]
    assert final["budget"]["env_steps"] > first["budget"]["env_steps"] > 0
    assert final["budget"]["wall_time_s"] >= first["budget"]["wall_time_s"]

    path = save_pretrained(tmp_path / "pretrained.pt", straight, longer, longer.iterations)
    loaded = load_checkpoint(path, expected_robot="cheetah")
    assert loaded.metadata["kind"] == "pretrained" and loaded.metadata["config"]["tasks_per_iteration"] == 3
    assert torch.equal(loaded.policy.log_std, straight.log_std)


@pytest.mark.parametrize(("field", "value", "match"), [
    ("family", "nope", "task_family"),
    ("iterations", 0, "iterations"),
    ("max_kl", 0.0, "max_kl"),
    ("hidden_sizes", (), "hidden_sizes"),
])
def test_bad_config_is_a_value_error_naming_the_field(field: str, value, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        PretrainConfig(**{**TINY, field: value})
