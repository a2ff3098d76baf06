"""The context adapter (RMA-style): the student equals the teacher given the true embedding, and what
the sampler acts with equals what training rebuilds from the sampled episodes."""

import numpy as np
import pytest
import torch

from agents.meta.context import ContextAdapter, ContextPolicy, history_windows, last_windows, transition_size
from agents.meta.evaluation import random_init
from agents.sampler import Sampler
from envs.locomotion import LocomotionEnv
from envs.tasks import Physics, Task, Terrain, privileged_factors, privileged_names

N_PRIVILEGED = len(privileged_names())


def make_student(history: int = 4, seed: int = 0) -> ContextPolicy:
    env = LocomotionEnv("cheetah")
    obs_dim, act_dim = env.observation_space.shape[0], env.action_space.shape[0]
    env.close()
    teacher = random_init(obs_dim + N_PRIVILEGED, act_dim, (32, 32), seed)
    torch.manual_seed(seed)
    adapter = ContextAdapter(obs_dim, act_dim, history, 32, (16,))
    return ContextPolicy(teacher, adapter, N_PRIVILEGED)


def test_privileged_observation_appends_the_factors_and_nothing_else_changes():
    task = Task(terrain=Terrain("rough", 0.4, 3), physics=Physics(friction=0.7, payload=2.0))
    plain = LocomotionEnv("cheetah", task=task)
    teacher = LocomotionEnv("cheetah", task=task, privileged_in_obs=True)
    obs, _ = plain.reset(seed=5)
    obs_t, _ = teacher.reset(seed=5)
    assert [name for name, _ in teacher.readout.layout()][-1] == "privileged"
    np.testing.assert_array_equal(obs_t[:obs.size], obs)
    np.testing.assert_array_equal(obs_t[obs.size:], privileged_factors(task))
    action = np.full(plain.action_space.shape, 0.3, dtype=np.float32)
    step, step_t = plain.step(action), teacher.step(action)
    np.testing.assert_array_equal(step_t[0][:obs.size], step[0])
    assert step_t[1] == step[1]


def test_student_given_the_true_embedding_is_the_teacher():
    student = make_student()
    obs = torch.randn(7, student.obs_dim)
    privileged = torch.as_tensor(np.stack([privileged_factors(Task(physics=Physics(friction=f)))
                                           for f in np.linspace(0.2, 2.0, 7)]), dtype=torch.float32)
    teacher_mean = student.teacher.mean(torch.cat([obs, privileged], dim=-1), student.teacher.parameters_dict())
    with torch.no_grad():
        torch.testing.assert_close(student.mean(obs, student.extrinsics(privileged)), teacher_mean,
                                   rtol=1e-5, atol=1e-5)
        # ... and a wrong embedding gives other actions (the factors matter to the teacher).
        other = student.mean(obs, student.extrinsics(privileged.flip(0)))
    assert (other - teacher_mean).abs().max() > 1e-3


def test_history_windows_hold_the_transitions_before_each_step():
    horizon, batch, obs_dim, act_dim, history = 6, 2, 3, 2, 3
    obs = torch.arange(horizon * batch * obs_dim, dtype=torch.float32).reshape(horizon, batch, obs_dim)
    actions = -torch.arange(horizon * batch * act_dim, dtype=torch.float32).reshape(horizon, batch, act_dim)
    mask = torch.ones(horizon, batch)
    mask[4:, 1] = 0  # env 1's episode ends after 4 steps
    windows = history_windows(obs, actions, mask, history)
    assert windows.shape == (horizon, batch, history, transition_size(obs_dim, act_dim))
    assert not windows[0].any()  # nothing before the first step
    expected = torch.cat([obs[2, 0], actions[2, 0], obs[3, 0], torch.ones(1)])
    torch.testing.assert_close(windows[3, 0, -1], expected)  # the last transition before step 3
    torch.testing.assert_close(windows[3, 0, 0], torch.cat([obs[0, 0], actions[0, 0], obs[1, 0], torch.ones(1)]))
    assert not windows[5, 1, -1].any()  # step 4 of env 1 never ran: no transition 3 -> 4


@pytest.mark.parametrize("deterministic", [True, False])
def test_sampler_acts_with_what_training_rebuilds_from_the_episodes(deterministic):
    student = make_student(history=5)
    tasks = [Task(terrain=Terrain("hills", 0.5, 1)), Task(physics=Physics(friction=0.3, motor_strength=0.6))]
    sampler = Sampler("cheetah", horizon=30, num_threads=2)
    try:
        episodes = sampler.sample(student, tasks, episodes_per_task=3, seed=4, deterministic=deterministic)
    finally:
        sampler.close()
    for batch in episodes:
        windows = history_windows(batch.observations, batch.actions, batch.mask, student.adapter.history)
        with torch.no_grad():
            means = student.mean_from_windows(batch.observations, windows)
        real = batch.mask.bool()
        if deterministic:
            torch.testing.assert_close(batch.actions[real], means[real], rtol=1e-4, atol=1e-4)
        else:  # the noise is the teacher's std times a standard normal: recover it and check its scale
            noise = (batch.actions[real] - means[real]) / torch.as_tensor(student.action_std())
            assert 0.8 < float(noise.std()) < 1.2 and abs(float(noise.mean())) < 0.15
        assert windows[real][:, -1, -1].sum() == real.sum() - real[0].sum()  # every step but the first has one


def test_sampler_refuses_params_for_a_memory_actor():
    sampler = Sampler("cheetah", horizon=5, num_threads=1)
    student = make_student()
    try:
        with pytest.raises(ValueError, match="params"):
            sampler.sample(student, [Task()], 1, params=student.teacher.parameters_dict())
    finally:
        sampler.close()


def test_continued_experience_starts_each_env_from_its_last_history():
    student = make_student(history=6)
    tasks = [Task(terrain=Terrain("rough", 0.5, 2)), Task(physics=Physics(payload=3.0))]
    sampler = Sampler("cheetah", horizon=12, num_threads=2)
    try:
        first = sampler.sample(student, tasks, 2, seed=1, deterministic=True)
        second = sampler.sample(student.continued(first), tasks, 2, seed=2, deterministic=True)
        fresh = sampler.sample(student, tasks, 2, seed=2, deterministic=True)
    finally:
        sampler.close()
    carried = last_windows(first, 6)
    assert carried[:, -1, -1].all()  # every env ends with a full history
    for t, (before, after, alone) in enumerate(zip(first, second, fresh, strict=True)):
        # The first action of the continued episode comes from the carried history (and differs
        # from a fresh start); later ones from that history shifted by the new transitions.
        obs, actions = after.observations, after.actions
        new = torch.cat([obs[:-1], actions[:-1], obs[1:], torch.ones(after.horizon - 1, 2, 1)], dim=-1)
        joined = torch.cat([carried[t * 2:(t + 1) * 2], new.transpose(0, 1)], dim=1)  # [env, 6 + H - 1, feat]
        rebuilt = torch.stack([joined[:, i:i + 6] for i in range(after.horizon)])  # window of step i
        with torch.no_grad():
            means = student.mean_from_windows(after.observations, rebuilt)
        torch.testing.assert_close(after.actions, means, rtol=1e-4, atol=1e-4)
        assert not torch.allclose(after.actions[0], alone.actions[0])
        assert before.observations.shape == after.observations.shape


def test_the_evaluation_gives_a_context_policy_its_previous_episodes_as_experience():
    from agents.meta.adaptation_result import AdaptationConfig
    from agents.meta.evaluation import compare, step_seed

    student = make_student(history=5)
    tasks = [Task(terrain=Terrain("hills", 0.7, 4)), Task(physics=Physics(friction=0.2))]
    config = AdaptationConfig(steps=2, episodes_per_task=2, horizon=15, seeds=(3,), bootstrap_reps=100,
                              num_threads=1)
    result = compare({"context": student}, tasks, "cheetah", config)
    assert result.by_experience == ["context"]
    sampler = Sampler("cheetah", horizon=15, num_threads=1)
    try:
        actor, expected = student, []
        for step in range(3):
            episodes = sampler.sample(actor, tasks, 2, seed=step_seed(3, step))
            expected.append([float(e.total_returns().mean()) for e in episodes])
            actor = student.continued(episodes)
    finally:
        sampler.close()
    np.testing.assert_allclose(result.returns["context"][0], np.array(expected).T, rtol=1e-6)


def test_the_adapters_numpy_forward_agrees_with_torch():
    student = make_student(history=4)
    windows = torch.randn(5, 4, transition_size(student.obs_dim, student.act_dim))
    windows[..., -1] = (torch.rand(5, 4) > 0.3).float()
    student.adapter.set_normalizer(windows)
    with torch.no_grad():
        expected = student.adapter(windows).numpy()
    np.testing.assert_allclose(student.adapter.numpy_forward()(windows.numpy()), expected, rtol=1e-5, atol=1e-5)
