"""The Ray backend on a local Ray with 2 CPUs: sweep runs and sampled episodes identical to the
local backend's, a killed worker's job retried and resumed from its checkpoint, bad input in one line."""

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from agents.continual.jobs import CurriculumJob, run_curriculum_job
from agents.policy import GaussianMLPPolicy
from agents.runs.checkpoint import load_checkpoint
from agents.runs.ray_backend import RAY_MISSING, new_sweep_id, require_ray, run_jobs
from agents.runs.rundir import latest_checkpoint
from agents.sampler import Sampler
from envs.tasks import TaskDistribution

ray = pytest.importorskip("ray")
ROOT = Path(__file__).resolve().parents[2]
TINY = {
    "robot": "cheetah", "init": "scratch", "hidden_sizes": [8], "horizon": 30, "adapt_episodes": 2,
    "stages": [{"terrain": "flat"}, {"terrain": "rough", "difficulty": 0.5, "seed": 1}],
    "steps_per_stage": 128, "ppo": {"n_envs": 2, "n_steps": 32, "batch_size": 32, "n_epochs": 1},
    "regularizer": {"kind": "ewc", "strength": 10.0, "fisher_states": 64},
    "evaluation": {"episodes": 1}, "video": False,
}


@pytest.fixture(scope="module")
def local_ray():
    from agents.runs.ray_backend import connect

    connect(num_cpus=2)
    yield
    ray.shutdown()


def without_wall_time(state: dict) -> dict:
    return {key: value for key, value in state.items() if key != "seconds"}


@pytest.mark.expensive
def test_a_sweep_on_ray_gives_the_local_results(tmp_path: Path, local_ray) -> None:
    jobs = {backend: [CurriculumJob(f"seed{seed}", {**TINY, "seed": seed}, str(tmp_path / backend), new_sweep_id())
                      for seed in (0, 1)] for backend in ("local", "ray")}
    local = run_jobs(run_curriculum_job, jobs["local"], "local")
    on_ray = run_jobs(run_curriculum_job, jobs["ray"], "ray")
    assert [without_wall_time(s) for s in on_ray] == [without_wall_time(s) for s in local]
    assert local[0]["matrix"] != local[1]["matrix"], "the two seeds are different runs"


def parent_pid(pid: int) -> int:
    """The parent of process `pid` (0 once gone or at the top)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0
    return int(stat.rsplit(")", 1)[1].split()[1])  # the name in parentheses may hold spaces


def descends_from(pid: int, ancestor: int) -> bool:
    """Whether `ancestor` is among the parents of `pid`."""
    while pid > 1:
        pid = parent_pid(pid)
        if pid == ancestor:
            return True
    return False


def ray_worker_running(function_name: str) -> int | None:
    """PID of a worker of this test's own Ray (the local Ray started by this process: its raylet and
    workers descend from it) executing `function_name` (title 'ray::<name>'). Workers of any other
    Ray on the machine, e.g. a user's sweep, are never picked."""
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if cmdline.startswith(f"ray::{function_name}") and descends_from(int(entry.name), os.getpid()):
                return int(entry.name)
    return None


@pytest.mark.expensive
def test_a_killed_worker_is_retried_and_resumes_from_its_checkpoint(tmp_path: Path, local_ray) -> None:
    config = {**TINY, "steps_per_stage": 2048, "checkpoint_every": 128}
    expected = run_curriculum_job(CurriculumJob("run", config, str(tmp_path / "local"), new_sweep_id()))
    job = CurriculumJob("run", config, str(tmp_path / "ray"), new_sweep_id())
    results: list = []
    driver = threading.Thread(target=lambda: results.append(run_jobs(run_curriculum_job, [job], "ray")))
    driver.start()
    killed = None
    deadline = time.monotonic() + 240
    while killed is None and time.monotonic() < deadline and driver.is_alive():
        newest = latest_checkpoint(tmp_path / "ray" / "run")
        if newest is not None and "in training" in load_checkpoint(newest).metadata["label"]:
            killed = ray_worker_running("run_curriculum_job")
            if killed is not None:
                os.kill(killed, signal.SIGKILL)
        time.sleep(0.05)
    driver.join(timeout=300)
    assert killed is not None, "the worker was killed inside a stage"
    assert without_wall_time(results[0][0]) == without_wall_time(expected)
    assert not list(tmp_path.glob("ray/run.old-*")), "the retry resumed the run; it did not start afresh"


def test_ray_actors_sample_the_local_samplers_episodes(local_ray) -> None:
    from agents.runs.ray_sampler import RaySampler

    tasks = TaskDistribution("cheetah_velocity", 0).sample(3)
    local = Sampler("cheetah", 40)
    torch.manual_seed(0)
    policy = GaussianMLPPolicy(local.obs_dim, local.act_dim, (16,))
    per_task = [{name: p + 0.01 * i for name, p in policy.parameters_dict().items()} for i in range(3)]
    # A memory actor (the context adapter's student) travels to the actors too, and so does its carried history.
    from agents.meta.context import ContextAdapter, ContextPolicy
    from envs.tasks import privileged_names

    n_privileged = len(privileged_names())
    teacher = GaussianMLPPolicy(local.obs_dim + n_privileged, local.act_dim, (16,))
    student = ContextPolicy(teacher, ContextAdapter(local.obs_dim, local.act_dim, 3, 16, (8,)), n_privileged)
    continued = student.continued(local.sample(student, tasks, 4, seed=3))
    remote = RaySampler("cheetah", 40)
    try:
        for actor, options in ((policy, {}), (policy, {"params": per_task}), (policy, {"deterministic": True}),
                               (student, {}), (continued, {})):
            ours, theirs = local.sample(actor, tasks, 4, seed=7, **options), remote.sample(actor, tasks, 4, seed=7,
                                                                                          **options)
            for a, b in zip(ours, theirs, strict=True):
                for field in ("observations", "actions", "rewards", "mask", "terminated"):
                    assert torch.equal(getattr(a, field), getattr(b, field)), (options, field)
        assert remote.env_steps == local.env_steps - 3 * 4 * 40  # the local one also sampled the carried history
        assert remote.round_trip_seconds(calls=5) > 0
    finally:
        remote.close()
        local.close()


def test_an_unreachable_cluster_fails_fast_in_one_line(tmp_path: Path) -> None:
    started = time.monotonic()
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "meta_train.py"), "--config",
                             str(ROOT / "assets" / "configs" / "maml_cheetah_velocity.yaml"), "--run",
                             str(tmp_path / "run"), "--backend", "ray", "--ray-address", "127.0.0.1:9"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "ray_address" in result.stderr, result.stderr
    assert time.monotonic() - started < 60
    assert not (tmp_path / "run").exists(), "nothing written before the check"


def test_the_ray_backend_without_ray_says_how_to_install_it(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now fails as if it were not installed
    with pytest.raises(ValueError, match=r'pip install -e "\.\[ray\]"'):
        require_ray()
    assert "pip install" in RAY_MISSING
