"""The meta-training iteration: fresh episodes for every inner step, figures, determinism."""

from __future__ import annotations

import torch

from agents.meta.maml import MAMLTRPO
from agents.meta.meta_train import MetaTrainConfig, meta_iteration, meta_train
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


def test_meta_sgd_step_sizes_are_checkpointed_and_resumed(tmp_path) -> None:
    from agents.runs.checkpoint import load_checkpoint
    from agents.runs.config import config_to_dict
    from agents.runs.rundir import latest_checkpoint, prepare_run_dir

    def run(iterations: int, root, resume: bool = False):
        config = MetaTrainConfig(**TINY, iterations=iterations, meta_sgd=True, checkpoint_every=1, num_threads=1)
        folder = prepare_run_dir(root, resume=resume, config=config_to_dict(config), changeable={"iterations"})
        meta_train(config, folder, progress=False)
        return load_checkpoint(latest_checkpoint(folder))

    first = run(1, tmp_path / "a")
    sizes = first.extra_state["inner_lrs"]
    assert set(sizes) == {name for name, _ in first.policy.named_parameters()}
    assert any(float((lr - 0.1).abs().max()) > 0 for lr in sizes.values())  # learned in one step
    resumed, straight = run(2, tmp_path / "a", resume=True), run(2, tmp_path / "b")
    for name, lr in straight.extra_state["inner_lrs"].items():
        assert torch.equal(resumed.extra_state["inner_lrs"][name], lr), name
    for (name, p), q in zip(resumed.policy.named_parameters(), straight.policy.parameters(), strict=True):
        assert torch.equal(p, q), name


def test_a_run_started_from_init_continues_its_policy_and_budget(tmp_path) -> None:
    import pytest

    from agents.runs.checkpoint import load_checkpoint
    from agents.runs.config import config_to_dict
    from agents.runs.rundir import latest_checkpoint, prepare_run_dir

    def run(root, iterations: int = 1, resume: bool = False, **fields):
        config = MetaTrainConfig(**{**TINY, **fields}, iterations=iterations, checkpoint_every=1, num_threads=1)
        folder = prepare_run_dir(root, resume=resume, config=config_to_dict(config), changeable={"iterations"})
        meta_train(config, folder, progress=False)
        path = latest_checkpoint(folder)
        return load_checkpoint(path), str(path)

    base, base_file = run(tmp_path / "base")
    fresh, _ = run(tmp_path / "fresh", seed=1)
    started, _ = run(tmp_path / "started", seed=1, init=base_file)
    # The same iteration from another starting point: the init's parameters, not the seed's, were stepped.
    for p, q in zip(started.policy.parameters(), fresh.policy.parameters(), strict=True):
        assert not torch.equal(p, q)
    assert started.metadata["init"]["policy_sha256"]
    steps = base.metadata["budget"]["env_steps"]
    assert started.metadata["budget"]["env_steps"] == 2 * steps  # the init's budget counts
    # Resuming counts on from the run's own checkpoint, not from the init's again.
    resumed, _ = run(tmp_path / "started", iterations=2, resume=True, seed=1, init=base_file)
    assert resumed.metadata["budget"]["env_steps"] == 3 * steps
    with pytest.raises(ValueError, match="init: .* hidden_sizes"):
        run(tmp_path / "wide", init=base_file, hidden_sizes=(16,))
    with pytest.raises(ValueError, match="init: .* trained on 'cheetah_velocity'"):
        run(tmp_path / "other", init=base_file, family="cheetah_direction")


def test_per_step_sizes_start_from_the_inits_scaled_and_resume_unscaled(tmp_path) -> None:
    import pytest

    from agents.runs.checkpoint import load_checkpoint
    from agents.runs.config import config_to_dict
    from agents.runs.rundir import latest_checkpoint, prepare_run_dir

    def run(root, iterations: int = 1, resume: bool = False, **fields):
        config = MetaTrainConfig(**{**TINY, **fields}, iterations=iterations, meta_sgd=True, checkpoint_every=1,
                                 num_threads=1)
        folder = prepare_run_dir(root, resume=resume, config=config_to_dict(config), changeable={"iterations"})
        meta_train(config, folder, progress=False)
        path = latest_checkpoint(folder)
        return load_checkpoint(path).extra_state["inner_lrs"], str(path)

    shared, base_file = run(tmp_path / "base")
    per_step = dict(num_inner_steps=2, meta_sgd_per_step=True, init=base_file, init_step_scales=(2.0, 1.0))
    stepped, _ = run(tmp_path / "stepped", **per_step)
    for name, sizes in stepped.items():
        assert sizes.shape == (2, *shared[name].shape)
        # one meta-step moves the sizes by far less than the scale did
        torch.testing.assert_close(sizes[0], 2 * shared[name], rtol=0, atol=0.02)
        torch.testing.assert_close(sizes[1], shared[name], rtol=0, atol=0.02)
    resumed, _ = run(tmp_path / "stepped", iterations=2, resume=True, **per_step)
    straight, _ = run(tmp_path / "straight", iterations=2, **per_step)
    for name, sizes in straight.items():
        assert torch.equal(resumed[name], sizes), name  # resuming does not scale again
    with pytest.raises(ValueError, match="init_step_scales needs meta_sgd_per_step"):
        MetaTrainConfig(**TINY, meta_sgd=True, num_inner_steps=2, init_step_scales=(2.0, 1.0))
    for bad in [(2.0,), (1.5, float("nan")), (float("inf"), 1.0), (1.0, 0.0)]:
        with pytest.raises(ValueError, match=r"init_step_scales must be 2 finite numbers > 0 \(one per inner step\)"):
            MetaTrainConfig(**TINY, meta_sgd=True, meta_sgd_per_step=True, num_inner_steps=2, init_step_scales=bad)
