"""Fitting the context adapter: the history identifies a hidden factor, runs resume exactly, and a
checkpoint loads only where its teacher's factors and observation hold."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from agents.meta.context import ContextAdapter, history_windows
from agents.meta.context_train import ContextConfig, load_context_policy, train_context
from agents.meta.evaluation import random_init
from agents.meta.pretrain import PretrainConfig, pretrain, save_pretrained
from agents.runs.config import config_to_dict
from agents.runs.rundir import latest_checkpoint, prepare_run_dir
from agents.sampler import Sampler
from envs.tasks import Physics, Task, privileged_factors, privileged_names

ROOT = Path(__file__).resolve().parents[2]
N_PRIVILEGED = len(privileged_names())
TINY = dict(family="cheetah_terrain", history=4, hidden_sizes=(16,), tasks_per_iteration=2, episodes_per_task=1,
            horizon=20, epochs=2, minibatch_size=16, num_threads=1)


@pytest.fixture(scope="module")
def teacher_path(tmp_path_factory) -> Path:
    """A one-iteration phase-1 teacher on the terrain family (privileged factors observed)."""
    config = PretrainConfig(family="cheetah_terrain", iterations=1, tasks_per_iteration=2, episodes_per_task=1,
                            horizon=20, hidden_sizes=(16, 16), privileged_in_obs=True, num_threads=1)
    policy = pretrain(config, progress=False)
    return save_pretrained(tmp_path_factory.mktemp("teacher") / "teacher.pt", policy, config, 1, wall_time_s=1.0,
                           env_steps=40)


def run_dir(path: Path, config: ContextConfig, resume: bool = False):
    return prepare_run_dir(path, resume=resume, config=config_to_dict(config), changeable={"iterations"})


def test_the_history_identifies_the_motor_strength():
    """Regressed by the adapter from (s, a, s') windows, a factor that changes the dynamics is
    recovered on fresh episodes far better than by guessing its mean (misaligned windows or
    targets would not be)."""
    torch.manual_seed(0)
    sampler = Sampler("cheetah", horizon=40, num_threads=1)
    obs_dim, act_dim = sampler.obs_dim, sampler.act_dim
    behaviour = random_init(obs_dim, act_dim, (32,), seed=1)
    strengths = np.linspace(0.5, 1.5, 6)

    def data(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        tasks = [Task(physics=Physics(motor_strength=float(s))) for s in strengths]
        episodes = sampler.sample(behaviour, tasks, 8, seed=seed)  # any behaviour: the dynamics differ by task
        xs, ys = [], []
        for task, batch in zip(tasks, episodes, strict=True):
            real = batch.mask.bool().clone()
            real[:8] = False  # windows of 8 real transitions only
            xs.append(history_windows(batch.observations, batch.actions, batch.mask, 8)[real])
            ys.append(torch.full((int(real.sum()), 1), float(task.physics.motor_strength)))
        return torch.cat(xs), torch.cat(ys)

    try:
        train_x, train_y = data(0)
        test_x, test_y = data(1)
    finally:
        sampler.close()
    model = ContextAdapter(obs_dim, act_dim, history=8, embed_dim=1, hidden_sizes=(64,))
    model.set_normalizer(train_x)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(300):
        loss = torch.nn.functional.mse_loss(model(train_x), train_y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        test_mse = float(torch.nn.functional.mse_loss(model(test_x), test_y))
    assert test_mse < 0.5 * float(test_y.var())


def test_fitting_lowers_the_embedding_error_and_resumes_exactly(tmp_path, teacher_path):
    config = ContextConfig(teacher=str(teacher_path), iterations=4, **TINY)
    once = train_context(config, run_dir(tmp_path / "once", config), progress=False)
    log = tmp_path / "once" / "metrics" / "context.jsonl"
    records = [yaml.safe_load(line) for line in log.read_text().splitlines()]
    assert records[-1]["loss_first"] < records[0]["loss_first"]
    assert all(r["target_variance"] > 0 for r in records)

    half = ContextConfig(teacher=str(teacher_path), iterations=2, **TINY)
    train_context(half, run_dir(tmp_path / "twice", half), progress=False)
    resumed = train_context(config, run_dir(tmp_path / "twice", config, resume=True), progress=False)
    for (name, a), b in zip(once.adapter.state_dict().items(), resumed.adapter.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)


def test_a_context_checkpoint_loads_as_a_student_and_refuses_mismatches(tmp_path, teacher_path):
    config = ContextConfig(teacher=str(teacher_path), iterations=1, checkpoint_every=1, **TINY)
    trained = train_context(config, run_dir(tmp_path / "run", config), progress=False)
    path = latest_checkpoint(tmp_path / "run")
    student = load_context_policy(path, family="cheetah_terrain")
    obs = torch.randn(3, student.obs_dim)
    factors = torch.as_tensor(privileged_factors(Task()), dtype=torch.float32).expand(3, -1)
    with torch.no_grad():
        torch.testing.assert_close(student.mean(obs, student.extrinsics(factors)),
                                   trained.mean(obs, trained.extrinsics(factors)))
    with pytest.raises(ValueError, match="quadruped"):
        load_context_policy(path, family="quadruped_terrain_physics")
    with pytest.raises(ValueError, match="not a context adapter"):
        load_context_policy(teacher_path)


def test_a_teacher_without_the_factors_is_refused_before_anything_is_written(tmp_path):
    plain = PretrainConfig(family="cheetah_terrain", iterations=1, tasks_per_iteration=1, episodes_per_task=1,
                           horizon=5, hidden_sizes=(8,), num_threads=1)
    sampler = Sampler("cheetah", 5, num_threads=1)
    policy = random_init(sampler.obs_dim, sampler.act_dim, (8,), 0)
    sampler.close()
    plain_path = save_pretrained(tmp_path / "plain.pt", policy, plain, 1)
    config_file = tmp_path / "context.yaml"
    config_file.write_text(yaml.safe_dump({"family": "cheetah_terrain", "teacher": str(plain_path)}))
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "train_context.py"), "--config", str(config_file),
                             "--run", str(tmp_path / "run")], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 2
    assert "privileged_in_obs" in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()


def test_the_evaluation_script_compares_the_context_adapter_with_baselines(tmp_path, teacher_path, load_script):
    config = ContextConfig(teacher=str(teacher_path), iterations=1, **TINY)
    train_context(config, run_dir(tmp_path / "run", config), progress=False)
    context = latest_checkpoint(tmp_path / "run")
    cli = load_script("evaluate_adaptation")
    common = ["--family", "cheetah_terrain", "--tasks", "2", "--steps", "1", "--episodes", "2", "--horizon", "10",
              "--seeds", "0", "--num-threads", "1", "--quiet"]
    with pytest.raises(ValueError, match="observes the privileged factors"):
        cli.main(["--methods", "context,pretrained", "--context", str(context), "--pretrained", str(teacher_path),
                  "--out", str(tmp_path / "refused"), *common])
    assert not (tmp_path / "refused").exists()
    cli.main(["--methods", "context,random", "--context", str(context), "--out", str(tmp_path / "eval"), *common])
    data = yaml.safe_load((tmp_path / "eval" / "results.json").read_text())
    assert data["methods"] == ["context", "random"] and data["by_experience"] == ["context"]
    assert data["metadata"]["sources"]["context"] == str(context)
    assert data["metadata"]["training"]["context"]["budget"]["teacher"]["env_steps"] == 40
    assert "no gradient step" in (tmp_path / "eval" / "table.md").read_text()


def test_resuming_with_a_changed_teacher_is_refused(tmp_path, teacher_path):
    import shutil

    from agents.runs.checkpoint import load_checkpoint, save_checkpoint

    teacher = tmp_path / "teacher.pt"
    shutil.copyfile(teacher_path, teacher)
    half = ContextConfig(teacher=str(teacher), iterations=1, **TINY)
    train_context(half, run_dir(tmp_path / "run", half), progress=False)
    checkpoint = load_checkpoint(teacher)
    with torch.no_grad():
        checkpoint.policy.log_std.add_(0.1)
    save_checkpoint(teacher, policy=checkpoint.policy, robot="cheetah", metadata=checkpoint.metadata)
    full = ContextConfig(teacher=str(teacher), iterations=2, **TINY)
    with pytest.raises(ValueError, match="other parameters than the teacher"):
        train_context(full, run_dir(tmp_path / "run", full, resume=True), progress=False)


def test_a_curriculum_starts_from_a_context_adapter_folded_on_its_first_stage(tmp_path, teacher_path):
    """`init:` a context checkpoint: the plain policy the curriculum starts from acts exactly as the
    student with its estimate from the first stage's experience; another robot is refused in one line."""
    from agents.continual.curriculum import StageConfig
    from agents.continual.initial import fold_context, load_init

    config = ContextConfig(teacher=str(teacher_path), iterations=1, checkpoint_every=1, **TINY)
    train_context(config, run_dir(tmp_path / "context", config), progress=False)
    path = latest_checkpoint(tmp_path / "context")
    sampler = Sampler("cheetah", 20, num_threads=1)
    student = load_init(path, "cheetah", sampler.obs_dim, sampler.act_dim)
    task = StageConfig(terrain="rough", difficulty=0.5, seed=1).task()
    policy, _ = fold_context(student, sampler, task, episodes=2, seed=3)
    embedding = student.estimate(sampler.sample(student, [task], 2, seed=3)[0])
    assert embedding.abs().sum() > 0
    obs = torch.randn(5, sampler.obs_dim)
    with torch.no_grad():
        torch.testing.assert_close(policy.mean(obs, policy.parameters_dict()), student.mean(obs, embedding))
        torch.testing.assert_close(policy.log_std, student.teacher.log_std)
    with pytest.raises(ValueError, match="quadruped"):
        load_init(path, "quadruped", sampler.obs_dim, sampler.act_dim)
    with pytest.raises(ValueError, match="height_scan"):
        load_init(path, "cheetah", sampler.obs_dim + 1, sampler.act_dim)
    sampler.close()

    curriculum = {"robot": "cheetah", "init": str(path), "horizon": 20, "steps_per_stage": 64,
                  "stages": [{"terrain": "rough", "difficulty": 0.5, "seed": 1}], "adapt_episodes": 2,
                  "ppo": {"n_envs": 2, "n_steps": 32, "batch_size": 32, "n_epochs": 1},
                  "regularizer": {"kind": "ewc", "strength": 10.0, "fisher_states": 32},
                  "evaluation": {"episodes": 1}, "video": False}
    config_file = tmp_path / "curriculum.yaml"
    config_file.write_text(yaml.safe_dump(curriculum))
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "run_curriculum.py"), "--config",
                             str(config_file), "--run", str(tmp_path / "run")], capture_output=True, text=True,
                            cwd=ROOT, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "init: context adapter" in result.stdout
    assert (tmp_path / "run" / "report.md").is_file()


def test_a_context_adapter_renders_after_its_experience_on_each_terrain(tmp_path, teacher_path):
    config = ContextConfig(teacher=str(teacher_path), iterations=1, checkpoint_every=1, **TINY)
    train_context(config, run_dir(tmp_path / "context", config), progress=False)
    out = tmp_path / "context.mp4"
    command = [sys.executable, str(ROOT / "scripts" / "render_rollout.py"), "--checkpoint",
               str(latest_checkpoint(tmp_path / "context")), "--terrains", "flat:0", "gaps:0.3", "--steps", "10",
               "--adapt-episodes", "1", "--physics", "friction=0.2", "motor_strength=0.6", "--out", str(out)]
    result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "context after 1 ep.: gaps@0.30" in result.stdout
    assert out.is_file()
    bad = subprocess.run([*command[:-5], "--physics", "grip=2", "--out", str(tmp_path / "bad.mp4")],
                         capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert bad.returncode == 2 and "--physics" in bad.stderr and "friction" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1 and not (tmp_path / "bad.mp4").exists()
