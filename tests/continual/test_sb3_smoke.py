"""Stable-Baselines3 PPO trains on every registered id without error (a smoke test)."""

import gymnasium as gym
import numpy as np
import pytest
from stable_baselines3 import PPO

from envs import ENV_IDS
from envs.tasks import Task, Terrain


@pytest.mark.expensive
@pytest.mark.parametrize("robot", sorted(ENV_IDS))
def test_ppo_runs_a_few_thousand_steps(robot: str) -> None:
    env = gym.make(ENV_IDS[robot], task=Task(Terrain("rough", 0.5, 0)), height_scan=True, max_episode_steps=200)
    model = PPO("MlpPolicy", env, n_steps=512, batch_size=128, n_epochs=2, seed=0, device="cpu")
    before = [p.detach().clone() for p in model.policy.parameters()]
    model.learn(total_timesteps=2048)
    assert model.num_timesteps >= 2048
    after = list(model.policy.parameters())
    assert any(not np.allclose(a.detach().numpy(), b.numpy()) for a, b in zip(after, before, strict=True))
