"""The meta-training iteration: fresh episodes for every inner step, figures, determinism."""

from __future__ import annotations

import torch

from agents.meta.maml import MAMLTRPO
from agents.meta.meta_train import MetaTrainConfig, meta_iteration
from agents.policy import GaussianMLPPolicy
from agents.sampler import Sampler

TINY = dict(family="cheetah_velocity", meta_batch_size=3, episodes_per_task=2, horizon=20, hidden_sizes=(8,),
            update_threads=1)


def _iteration(num_inner_steps: int, seed: int = 0) -> tuple[dict, torch.Tensor]:
    config = MetaTrainConfig(**TINY, num_inner_steps=num_inner_steps, seed=seed)
    sampler = Sampler("cheetah", config.horizon, num_threads=1)
    torch.manual_seed(seed)
    learner = MAMLTRPO(GaussianMLPPolicy(sampler.obs_dim, sampler.act_dim, config.hidden_sizes), config.maml_config())
    record = meta_iteration(learner, sampler, config, 0)
    sampler.close()
    return record, torch.cat([p.detach().reshape(-1) for p in learner.policy.parameters()])


def test_each_inner_step_samples_fresh_episodes() -> None:
    one, _ = _iteration(1)
    two, params = _iteration(2)
    per_set = 3 * 2 * 20  # tasks x episodes x horizon (the cheetah never ends early)
    assert one["env_steps"] == 2 * per_set  # step-0 episodes and the valid ones
    assert two["env_steps"] == 3 * per_set  # plus the second inner step's own
    # Step 0's episodes are the same whatever the number of steps; what is learned differs.
    assert one["pre_adapt_return"] == two["pre_adapt_return"]
    assert one["post_adapt_return"] != two["post_adapt_return"]
    again, params_again = _iteration(2)
    assert torch.equal(params, params_again), "an iteration is a function of its seed"
    assert again["post_adapt_return"] == two["post_adapt_return"]
