"""The sampler: reproducible, equal to a plain single-env rollout, per-task parameters respected."""

import numpy as np
import pytest
import torch

import agents.sampler
from agents.policy import GaussianMLPPolicy
from agents.sampler import SHARDS, Sampler, plan_shards, waves
from envs.locomotion import LocomotionEnv
from envs.tasks import Goal, Task, Terrain

TASKS = [Task(goal=Goal(target_velocity=0.5)), Task(Terrain("rough", 0.6, 4), goal=Goal(target_velocity=1.5))]


@pytest.fixture(scope="module")
def sampler() -> Sampler:
    return Sampler("cheetah", horizon=40, num_threads=2)


@pytest.fixture(scope="module")
def policy(sampler: Sampler) -> GaussianMLPPolicy:
    torch.manual_seed(0)
    return GaussianMLPPolicy(sampler.obs_dim, sampler.act_dim, (16, 16))


def test_same_seed_same_episodes(sampler: Sampler, policy: GaussianMLPPolicy) -> None:
    first = sampler.sample(policy, TASKS, 3, seed=7)
    again = sampler.sample(policy, TASKS, 3, seed=7)
    other = sampler.sample(policy, TASKS, 3, seed=8)
    assert len(first) == len(TASKS)
    assert first[0].observations.shape == (40, 3, sampler.obs_dim)
    for a, b, c in zip(first, again, other, strict=True):
        assert torch.equal(a.observations, b.observations) and torch.equal(a.rewards, b.rewards)
        assert not torch.equal(a.actions, c.actions)


def test_returns_match_a_plain_single_env_rollout(sampler: Sampler, policy: GaussianMLPPolicy) -> None:
    seed = 3
    episodes = sampler.sample(policy, TASKS, 2, seed=seed, deterministic=True)
    env_seeds = np.random.SeedSequence(seed).generate_state(len(TASKS) * 2).tolist()
    for t, task in enumerate(TASKS):
        for e in range(2):
            env = LocomotionEnv("cheetah", task=task)
            obs, _ = env.reset(seed=env_seeds[t * 2 + e])
            total = 0.0
            for _ in range(40):
                with torch.no_grad():
                    action = policy(torch.as_tensor(obs, dtype=torch.float32)[None]).mean[0].numpy()
                obs, reward, terminated, truncated, _ = env.step(action)
                total += reward
                if terminated or truncated:
                    break
            assert float(episodes[t].total_returns()[e]) == pytest.approx(total, rel=1e-4, abs=1e-3)


def test_each_task_uses_its_own_parameters(sampler: Sampler, policy: GaussianMLPPolicy) -> None:
    own = policy.parameters_dict()
    shifted = {name: p + 0.5 for name, p in own.items()}
    same = sampler.sample(policy, TASKS, 2, params=[own, own], seed=1)
    mixed = sampler.sample(policy, TASKS, 2, params=[own, shifted], seed=1)
    assert torch.equal(same[0].actions, mixed[0].actions)
    assert not torch.equal(same[1].actions, mixed[1].actions)
    default = sampler.sample(policy, TASKS, 2, seed=1)
    # vmap and a plain forward round differently in float32; chaos amplifies it later on.
    assert torch.allclose(default[1].actions[:5], same[1].actions[:5], atol=1e-4)


def test_finished_episodes_are_masked() -> None:
    sampler = Sampler("quadruped", horizon=60, num_threads=1)
    policy = GaussianMLPPolicy(sampler.obs_dim, sampler.act_dim, (8,), init_log_std=1.0)
    episodes = sampler.sample(policy, [Task()], 4, seed=0)[0]
    lengths = episodes.lengths
    assert torch.all(episodes.mask.sum(0) == lengths)
    for b in range(4):
        n = int(lengths[b])
        assert torch.all(episodes.mask[:n, b] == 1) and torch.all(episodes.mask[n:, b] == 0)
        assert torch.all(episodes.rewards[n:, b] == 0)
    assert "distance" in episodes.info


def test_bad_arguments(sampler: Sampler, policy: GaussianMLPPolicy) -> None:
    with pytest.raises(ValueError, match="params"):
        sampler.sample(policy, TASKS, 1, params=[policy.parameters_dict()])
    with pytest.raises(ValueError, match="episodes_per_task"):
        sampler.sample(policy, TASKS, 0)
    with pytest.raises(ValueError, match="horizon"):
        Sampler("cheetah", 0)


@pytest.mark.parametrize(("n_tasks", "per_task"), [(1, 1), (1, 10), (3, 1), (64, 1), (20, 10), (3, 5)])
def test_shards_cover_every_env_once(n_tasks: int, per_task: int) -> None:
    shards = plan_shards(n_tasks, per_task)
    rows = np.concatenate([shard.rows(per_task) for shard in shards])
    assert sorted(rows.tolist()) == list(range(n_tasks * per_task))
    assert 1 <= len(shards) <= SHARDS
    by_episodes = all(shard.tasks == range(n_tasks) for shard in shards)
    counts = [len(shard.episodes) if by_episodes else len(shard.tasks) for shard in shards]
    assert max(counts) - min(counts) <= 1  # near-equal halves of whichever dimension was split


def test_episodes_do_not_depend_on_the_thread_count(policy: GaussianMLPPolicy) -> None:
    # The shards are fixed by the tasks and episodes, so one thread (shards in turn), two (one
    # each) and four (two physics threads a shard) collect the very same episodes.
    adapted = [{name: p.detach() + 0.01 * i for name, p in policy.named_parameters()} for i in range(len(TASKS))]
    runs = [Sampler("cheetah", horizon=30, num_threads=n).sample(policy, TASKS, 3, params=adapted, seed=5)
            for n in (1, 2, 4)]
    for other in runs[1:]:
        for a, b in zip(runs[0], other, strict=True):
            assert torch.equal(a.observations, b.observations) and torch.equal(a.actions, b.actions)
            assert torch.equal(a.rewards, b.rewards) and torch.equal(a.mask, b.mask)


def test_waves_of_tasks_collect_the_same_episodes(monkeypatch, policy: GaussianMLPPolicy) -> None:
    tasks = [*TASKS, Task(Terrain("hills", 0.3, 2))]
    adapted = [{name: p.detach() + 0.01 * i for name, p in policy.named_parameters()} for i in range(len(tasks))]
    sampler = Sampler("cheetah", horizon=25, num_threads=2)
    at_once = sampler.sample(policy, tasks, 3, params=adapted, seed=3)
    monkeypatch.setattr(agents.sampler, "WAVE_ENVS", 4)  # one task (3 envs) a wave
    assert waves(len(tasks), 3) == [range(0, 1), range(1, 2), range(2, 3)]
    in_waves = sampler.sample(policy, tasks, 3, params=adapted, seed=3)
    for a, b in zip(at_once, in_waves, strict=True):
        assert torch.equal(a.observations, b.observations) and torch.equal(a.actions, b.actions)
        assert torch.equal(a.rewards, b.rewards) and torch.equal(a.mask, b.mask)
