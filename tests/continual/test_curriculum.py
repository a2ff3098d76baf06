"""Curricula end to end: artefacts, resume after a kill, config errors, no silent overwrite."""

import json
import math
import subprocess
import sys
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import torch
import yaml

from agents.continual.curriculum import CurriculumConfig, Schedule
from agents.continual.loop import Curriculum
from agents.runs.config import config_from_dict, config_to_dict
from agents.runs.rundir import prepare_run_dir

ROOT = Path(__file__).resolve().parents[2]
TINY = {
    "robot": "cheetah",
    "init": "scratch",
    "hidden_sizes": [8],
    "horizon": 30,
    "stages": [{"terrain": "flat"}, {"terrain": "rough", "difficulty": 0.5, "seed": 1}],
    "steps_per_stage": 128,
    "adapt_episodes": 2,
    "ppo": {"n_envs": 2, "n_steps": 32, "batch_size": 32, "n_epochs": 1},
    "regularizer": {"kind": "ewc", "strength": 10.0, "fisher_states": 64},
    "evaluation": {"episodes": 1, "held_out": [{"terrain": "gaps", "difficulty": 0.2}]},
    "video": True,
    "video_steps": 12,
}


def write_config(tmp_path: Path, **changes) -> Path:
    config = {**TINY, **changes}
    path = tmp_path / "curriculum.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def run_script(config: Path, run: Path, *flags: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "scripts" / "run_curriculum.py"), "--config", str(config),
                           "--run", str(run), "--no-progress", *flags], capture_output=True, text=True, cwd=ROOT,
                          timeout=300)


@pytest.mark.expensive
def test_tiny_curriculum_writes_every_artefact(tmp_path: Path) -> None:
    run = tmp_path / "run"
    result = run_script(write_config(tmp_path), run)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "report:" in result.stdout
    for name in ("config.yaml", "report.md", "summary.json", "metrics/stages.jsonl", "metrics/stages.csv",
                 "plots/learning_curves.png", "plots/performance_matrix.png", "plots/forgetting.png",
                 "checkpoints/latest.pt", "videos/final_policy.mp4"):
        assert (run / name).is_file(), name
    assert any((run / "tb").rglob("events.out.tfevents.*")), "TensorBoard events"
    records = [json.loads(line) for line in (run / "metrics/stages.jsonl").read_text().splitlines()]
    assert [r["label"] for r in records] == ["flat@0", "rough@0.5"]
    summary = json.loads((run / "summary.json").read_text())
    assert len(summary["matrix"]) == 2 and len(summary["matrix"][0]) == 2
    video = iio.imread(run / "videos/final_policy.mp4")
    assert video.shape == (12, 240, 3 * 320, 3), "three panels (two stages, one held-out) in a row, 12 frames"
    report = (run / "report.md").read_text()
    assert "Performance matrix" in report and "average forgetting" in report and "gaps@0.2" in report
    # Which policy each return is of, the adaptation measured as the matrix measures, success for
    # every schedule, and what produced the run.
    assert "deterministic: before adapt" in report and "stochastic: before adapt" in report
    for record in records:
        assert {"stochastic_return_before_adapt", "stochastic_return_after_adapt"} <= record.keys()
        assert isinstance(record["success"], bool)
    assert records[0]["return_after_adapt"] != records[0]["stochastic_return_after_adapt"]
    assert "Wall time of the stages" in report and "git " in report and "torch " in report
    # EWC on the raw Fisher with its floor, said in the report; the raw-equivalent lambda is lambda itself.
    assert "lambda 10 on the raw Fisher, floor 1e-05" in report
    assert [r["raw_equivalent_strength"] for r in records] == [10.0, 10.0]
    # Single head: the log-std is not anchored by default (anchoring it froze exploration).
    anchors = torch.load(run / "checkpoints" / "latest.pt", weights_only=True)["regularizer_state"]["anchors"]
    assert anchors and "log_std" not in anchors[0] and "action_net.weight" in anchors[0]
    assert summary["wall_time_s"] > 0 and {"torch", "mujoco", "git_commit"} <= summary["provenance"].keys()
    assert any((run / "tb" / "curriculum").glob("events.out.tfevents.*")), "curriculum-level TensorBoard scalars"

    again = run_script(write_config(tmp_path), run)
    assert again.returncode != 0 and "--resume" in again.stderr
    assert json.loads((run / "summary.json").read_text()) == summary, "an existing run is never overwritten"


@pytest.mark.expensive
def test_a_run_killed_between_stages_resumes_with_the_same_stage_list(tmp_path: Path, monkeypatch) -> None:
    config = config_from_dict(CurriculumConfig, {**TINY, "video": False})
    dump = {**TINY, "video": False}
    original = Curriculum.run_stage

    def killed_in_stage_one(self, stage, pool_index, paused=None):
        if stage == 1:
            raise KeyboardInterrupt("killed as stage 1 starts")
        return original(self, stage, pool_index, paused)

    monkeypatch.setattr(Curriculum, "run_stage", killed_in_stage_one)
    run = prepare_run_dir(tmp_path / "run", resume=False, force=False, config=dump)
    with pytest.raises(KeyboardInterrupt):
        Curriculum(config, run, progress=False).run_all()
    monkeypatch.setattr(Curriculum, "run_stage", original)
    resumed_run = prepare_run_dir(tmp_path / "run", resume=True, force=False, config=dump)
    state = Curriculum(config, resumed_run, progress=False).run_all()
    assert [r["label"] for r in state.history] == ["flat@0", "rough@0.5"]
    assert [r["stage"] for r in state.history] == [0, 1]
    lines = (tmp_path / "run/metrics/stages.jsonl").read_text().splitlines()
    assert [json.loads(line)["stage"] for line in lines] == [0, 1], "no duplicate rows after resume"


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"stages": [{"terrain": "lava"}]}, "terrain.kind"),
        ({"steps_per_stage": -5}, "steps_per_stage"),
        ({"checkpoint_every": 0}, "checkpoint_every"),
        ({"init": "missing/maml.pt"}, "init"),
        ({"robot": "octopus"}, "robot"),
        ({"regularizer": {"kind": "ewc2"}}, "regularizer.kind"),
        ({"stages": [{"terrain": "flat", "physics": {"friction": -1}}]}, "physics.friction"),
        ({"schedule": "random"}, "schedule"),
        ({"stages": []}, "stages"),
        ({"horizon": "long"}, "horizon"),
        ({"stagez": []}, "unknown fields"),
        ({"regularizer": {"kind": "ewc", "critic": True}}, "needs reset_critic: false"),
        ({"regularizer": {"kind": "none", "critic": True}, "reset_critic": False}, "regularizer.critic"),
        ({"baseline": "finetune", "schedule": "ladder"}, "baseline: finetune needs schedule fixed"),
    ],
)
def test_config_errors_name_the_field(changes: dict, field: str) -> None:
    with pytest.raises(ValueError, match=field.replace(".", r"\.")):
        config_from_dict(CurriculumConfig, {**TINY, **changes})


def test_checkpoint_of_another_robot_fails_before_training(tmp_path: Path) -> None:
    import torch

    from agents.policy import GaussianMLPPolicy
    from agents.runs.checkpoint import save_checkpoint

    path = tmp_path / "quadruped.pt"
    save_checkpoint(path, policy=GaussianMLPPolicy(29, 8, (8,)), robot="quadruped")
    run = tmp_path / "run"
    result = run_script(write_config(tmp_path, init=str(path)), run)
    assert result.returncode != 0
    assert "quadruped" in result.stderr and "cheetah" in result.stderr
    assert not run.exists(), "nothing is written before the checks pass"
    del torch


def test_normalisation_is_undefined_where_nothing_beat_the_random_policy() -> None:
    import math

    from agents.continual.report import normalised_matrix, summary

    matrix, _ = normalised_matrix([[50.0, -60.0], [40.0, -50.0]], [0.0, 10.0])
    assert matrix[0, 0] == 1.0 and matrix[1, 0] == 0.8
    assert math.isnan(matrix[0, 1]) and math.isnan(matrix[1, 1])
    assert math.isnan(summary(matrix, [0, 1])["average_performance"])


def test_schedules_choose_stages() -> None:
    stages = [{"terrain": "flat"}, {"terrain": "rough", "difficulty": 0.3}, {"terrain": "rough", "difficulty": 0.6}]
    ladder = Schedule(config_from_dict(CurriculumConfig, {**TINY, "stages": stages, "schedule": "ladder",
                                                          "max_retries": 1}))
    assert ladder.next_stage([], []) == 0
    assert ladder.next_stage([{"pool_index": 0, "success": True}], []) == 1
    history = [{"pool_index": 0, "success": True}, {"pool_index": 1, "success": False}]
    assert ladder.next_stage(history, []) == 1, "a missed rung is retried"
    history.append({"pool_index": 1, "success": False})
    assert ladder.next_stage(history, []) is None, "then the ladder stops"

    greedy = {**TINY, "stages": stages, "schedule": "adaptive", "num_stages": 9, "adaptive_epsilon": 0.0}
    adaptive = Schedule(config_from_dict(CurriculumConfig, greedy))
    done = [{"pool_index": i, "success": False, "value_before": 0.0} for i in range(3)]
    assert adaptive.next_stage(done[:1], [[1.0], [], []]) == 1, "untried tasks first"
    # Progress is measured since each task's latest training, not since the previous stage: task 0
    # moved little in the last stage (1.9 -> 2.0) but 2.0 since it was trained from 0.
    returns = [[1.9, 2.0], [0.0, 1.0, 1.5], [3.0, 3.0]]
    history = [*done, {"pool_index": 1, "success": False, "value_before": 1.0}]
    assert adaptive.scores(history, returns) == pytest.approx([2.0, 0.5, 3.0])
    history.append({"pool_index": 2, "success": False, "value_before": 2.9})
    assert adaptive.next_stage(history, returns) == 0, "largest progress since its own training"
    # A task evaluated once has a finite score (it scored inf, and was retrained at once, before).
    assert all(math.isfinite(v) for v in adaptive.scores(done, [[1.0], [0.5], [3.0]]))

    weakest = Schedule(config_from_dict(CurriculumConfig, {**greedy, "adaptive_criterion": "weakest",
                                                           "num_stages": None}))
    assert weakest.next_stage(done, [[1.0], [0.5], [3.0]]) is None, "num_stages defaults to the pool size"
    weakest.config.num_stages = 4
    # Scale-free: task 2 at 30 of its best 300 is weaker than task 1 at 0.5 of its best 0.6.
    assert weakest.next_stage(done, [[1.0, 1.0], [0.6, 0.5], [300.0, 30.0]]) == 2

    # Epsilon-greedy: not locked onto the greedy choice, and a function of (seed, stage).
    explore = Schedule(config_from_dict(CurriculumConfig, {**greedy, "num_stages": 1000, "adaptive_epsilon": 0.3}))
    locked = [{"pool_index": i % 3, "success": False, "value_before": 0.0} for i in range(3)]
    picks = [explore.next_stage(locked + [locked[0]] * k, [[5.0], [0.1], [0.1]]) for k in range(300)]
    assert picks.count(0) > 200 and picks.count(1) > 10 and picks.count(2) > 10
    assert picks == [explore.next_stage(locked + [locked[0]] * k, [[5.0], [0.1], [0.1]]) for k in range(300)]


def test_a_new_stage_gets_a_fresh_critic_and_keeps_the_actor(tmp_path: Path) -> None:
    import torch

    config = config_from_dict(CurriculumConfig, {**TINY, "video": False})
    run = prepare_run_dir(tmp_path / "run", resume=False, force=False, config={**TINY, "video": False})
    curriculum = Curriculum(config, run, progress=False)
    policy = curriculum.model.policy
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(0.25)
    before = {n: p.detach().clone() for n, p in policy.named_parameters()}
    curriculum._fresh_critic(1)
    after = dict(policy.named_parameters())
    critic = [n for n in before if n.startswith(("mlp_extractor.value_net", "value_net"))]
    actor = [n for n in before if n not in critic]
    assert critic and actor
    assert all(not torch.equal(before[n], after[n]) for n in critic if n.endswith("weight"))
    assert all(torch.equal(before[n], after[n]) for n in actor)


def test_a_ladder_promotes_on_success_and_stops_after_retries(tmp_path: Path) -> None:
    easy = {**TINY, "video": False, "schedule": "ladder", "max_retries": 1,
            "evaluation": {"episodes": 1, "success_distance": -100.0, "eval_every": 64}}
    run = prepare_run_dir(tmp_path / "easy", resume=False, force=False, config=easy)
    state = Curriculum(config_from_dict(CurriculumConfig, easy), run, progress=False).run_all()
    assert [r["label"] for r in state.history] == ["flat@0", "rough@0.5"], "every rung passed: promoted each time"
    assert all(r["success"] for r in state.history)
    assert all(r["train_steps"] <= 64 for r in state.history), "a passed rung stops before its budget"

    hard = {**easy, "evaluation": {**easy["evaluation"], "success_distance": 100.0}}
    run = prepare_run_dir(tmp_path / "hard", resume=False, force=False, config=hard)
    state = Curriculum(config_from_dict(CurriculumConfig, hard), run, progress=False).run_all()
    assert [r["label"] for r in state.history] == ["flat@0", "flat@0"], "a missed rung is retried once, then stop"


def test_task_heads_keep_one_output_layer_per_task_and_leave_it_unanchored(tmp_path: Path) -> None:
    import torch

    config_dict = {**TINY, "video": False, "task_heads": True, "evaluation": {"episodes": 1}}
    run = prepare_run_dir(tmp_path / "run", resume=False, force=False, config=config_dict)
    curriculum = Curriculum(config_from_dict(CurriculumConfig, config_dict), run, progress=False)
    state = curriculum.run_all()
    heads = curriculum.heads
    assert sorted(heads) == [0, 1]
    weight = curriculum.policy.output_layer_names()[0]
    assert not torch.equal(heads[0][weight], heads[1][weight]), "training task 1 moved its own head only"
    assert torch.equal(heads[1][weight], curriculum.policy.parameters_dict()[weight]), "the latest head is current"
    # every anchored parameter is shared: the heads are free for the next task
    anchored = set(curriculum.model.regularizer.anchors[0])
    assert anchored and not anchored & {"action_net.weight", "action_net.bias", "log_std"}
    assert "log_std" in heads[0] and "log_std" in heads[1], "each task explores with its own noise"
    # task 0 is evaluated with head 0: evaluating it again with that head gives the recorded return
    again = curriculum._evaluate([curriculum.pool_tasks[0]], params=[curriculum._task_params(0)])[0][0]
    assert again == pytest.approx(state.matrix[-1][0])

    resumed = Curriculum(config_from_dict(CurriculumConfig, config_dict),
                         prepare_run_dir(tmp_path / "run", resume=True, force=False, config=config_dict),
                         progress=False)
    assert resumed._resume()
    assert sorted(resumed.heads) == [0, 1]
    assert all(torch.equal(resumed.heads[k][n], heads[k][n]) for k in heads for n in heads[k])


def test_plots_show_differences_and_signs(tmp_path: Path, monkeypatch) -> None:
    import matplotlib.pyplot as plt

    from agents.continual import report

    captured = {}
    monkeypatch.setattr(report, "_save", lambda fig, path: captured.setdefault(path.stem, fig) and path)
    matrix = np.array([[0.95, 0.80], [0.79, 1.0]])
    report.plot_matrix(matrix, ["a", "b"], tmp_path / "matrix.png")
    image = captured["matrix"].axes[0].images[0]
    assert image.norm.vmin == 0.79 and image.norm.vmax == 1.0, "the colour scale spans the values there are"
    three = np.array([[1.0, np.nan, np.nan], [0.5, 1.0, np.nan], [1.2, 0.4, 1.0]])  # task 0 improved, task 1 lost
    report.plot_forgetting(three, ["a", "b", "c"], tmp_path / "forgetting.png")
    bars = captured["forgetting"].axes[0].patches
    colours = [bar.get_facecolor()[:3] for bar in bars]
    assert colours[0] != colours[1]
    assert [round(bar.get_height(), 6) for bar in bars] == [-0.2, 0.6]
    plt.close("all")


def test_the_critic_is_anchored_only_when_asked(tmp_path: Path) -> None:
    config_dict = {**TINY, "video": False, "evaluation": {"episodes": 1}, "reset_critic": False,
                   "stages": TINY["stages"][:1], "regularizer": {**TINY["regularizer"], "critic": True}}
    run = prepare_run_dir(tmp_path / "run", resume=False, force=False, config=config_dict)
    curriculum = Curriculum(config_from_dict(CurriculumConfig, config_dict), run, progress=False)
    curriculum.run_all()
    anchored = set(curriculum.model.regularizer.anchors[0])
    assert {"value_net.weight", "value_net.bias"} <= anchored and "action_net.weight" in anchored


def test_the_stage_start_adaptation_can_be_kept_to_the_first_stage(tmp_path: Path) -> None:
    config_dict = {**TINY, "video": False, "evaluation": {"episodes": 1}, "adapt_stages": "first"}
    run = prepare_run_dir(tmp_path / "run", resume=False, force=False, config=config_dict)
    curriculum = Curriculum(config_from_dict(CurriculumConfig, config_dict), run, progress=False)
    state = curriculum.run_all()
    first, second = state.history
    assert first["adapted"] and "stochastic_return_after_adapt" in first
    assert not second["adapted"] and second["return_after_adapt"] == second["return_before_adapt"]
    from agents.continual.report import write_report
    from agents.runs.config import config_to_dict

    report = write_report(run.root, config_to_dict(curriculum.config), state.to_dict(), [], [])
    assert "at the first stage only" in report.read_text()
    with pytest.raises(ValueError, match="adapt_stages"):
        config_from_dict(CurriculumConfig, {**TINY, "adapt_stages": "none"})


def test_the_stage_start_adaptation_takes_the_inits_learned_step_sizes(tmp_path: Path) -> None:
    from agents.continual.preflight import check_curriculum
    from agents.policy import GaussianMLPPolicy
    from agents.runs.checkpoint import save_checkpoint

    torch.manual_seed(0)
    policy = GaussianMLPPolicy(17, 6, (8,))
    params = policy.parameters_dict()

    def init_with(name: str, sizes: dict) -> Path:
        path = tmp_path / f"{name}.pt"
        save_checkpoint(path, policy=policy, robot="cheetah", extra_state={"inner_lrs": sizes})
        return path

    def adapted(init: Path, name: str, **changes) -> dict:
        config_dict = {**TINY, "init": str(init), "video": False, **changes}
        config = config_from_dict(CurriculumConfig, config_dict)
        check_curriculum(config)
        run = prepare_run_dir(tmp_path / name, resume=False, force=False, config=config_dict)
        curriculum = Curriculum(config, run, progress=False)
        curriculum._adapt(curriculum.pool_tasks[0], 0)
        return {n: p.detach().clone() for n, p in curriculum.policy.named_parameters()}

    # Per-step sizes whose first step is zero: it leaves the policy as it is, so the second step
    # samples the same episodes whatever its size, and moves the policy by exactly its own size.
    small = init_with("small", {n: torch.stack([torch.zeros_like(p), torch.full_like(p, 0.03)])
                                for n, p in params.items()})
    large = init_with("large", {n: torch.stack([torch.zeros_like(p), torch.full_like(p, 0.1)])
                                for n, p in params.items()})
    one_step = adapted(small, "one_step")
    assert all(torch.equal(one_step[n], p) for n, p in params.items())
    moved_small, moved_large = adapted(small, "small2", adapt_steps=2), adapted(large, "large2", adapt_steps=2)
    for n, p in params.items():
        torch.testing.assert_close(moved_small[n] - p, 0.3 * (moved_large[n] - p))
    assert any(not torch.equal(moved_large[n], p) for n, p in params.items())
    # One shared set serves every step; learned_step_sizes: false takes inner_lr instead.
    shared = init_with("shared", {n: torch.zeros_like(p) for n, p in params.items()})
    zero, plain = adapted(shared, "shared2", adapt_steps=2), adapted(shared, "inner_lr", learned_step_sizes=False)
    assert all(torch.equal(zero[n], p) for n, p in params.items())
    assert not all(torch.equal(plain[n], p) for n, p in params.items())
    with pytest.raises(ValueError, match=r"adapt_steps \(the init's learned inner_lrs.*2 inner steps, 3 asked"):
        check_curriculum(config_from_dict(CurriculumConfig, {**TINY, "init": str(small), "adapt_steps": 3}))


def test_a_run_from_before_learned_step_sizes_resumes_as_it_began(tmp_path: Path) -> None:
    from agents.continual.preflight import resume_defaults
    from agents.policy import GaussianMLPPolicy
    from agents.runs.checkpoint import save_checkpoint

    policy = GaussianMLPPolicy(17, 6, (8,))
    learned = tmp_path / "learned.pt"
    save_checkpoint(learned, policy=policy, robot="cheetah",
                    extra_state={"inner_lrs": {n: torch.zeros_like(p) for n, p in policy.named_parameters()}})
    plain = tmp_path / "plain.pt"
    save_checkpoint(plain, policy=policy, robot="cheetah")

    def resume(init: Path, name: str, **changes) -> None:
        config = config_from_dict(CurriculumConfig, {**TINY, "init": str(init), **changes})
        old = {key: value for key, value in config_to_dict(config).items() if key != "learned_step_sizes"}
        if not (tmp_path / name).exists():
            prepare_run_dir(tmp_path / name, config=old)  # a run stored before the field existed
        prepare_run_dir(tmp_path / name, resume=True, config=config_to_dict(config), defaults=resume_defaults(config))

    resume(plain, "plain")  # nothing to learn from the init: the default changes nothing
    with pytest.raises(ValueError, match="learned_step_sizes"):
        resume(learned, "learned")  # it adapted with inner_lr: resuming with the learned sizes would not continue it
    resume(learned, "learned", learned_step_sizes=False)


def test_the_script_resumes_a_run_stored_before_fields_were_added(tmp_path: Path) -> None:
    config_path = write_config(tmp_path, video=False)
    config = config_to_dict(config_from_dict(CurriculumConfig, yaml.safe_load(config_path.read_text())))
    old = {key: value for key, value in config.items() if key != "learned_step_sizes"}
    old["regularizer"] = {key: value for key, value in old["regularizer"].items() if key != "critic"}
    prepare_run_dir(tmp_path / "run", config=old)  # as a run started before those fields existed left it
    done = run_script(config_path, tmp_path / "run", "--resume")
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "run" / "report.md").is_file()


def test_what_the_regulariser_leaves_free() -> None:
    from agents.continual.loop import unanchored

    assert unanchored(task_heads=True, anchor_log_std=False) == ("action_net.weight", "action_net.bias", "log_std")
    assert unanchored(task_heads=False, anchor_log_std=False) == ("log_std",)
    assert unanchored(task_heads=False, anchor_log_std=True) == ()


@pytest.mark.expensive
def test_a_replay_curriculum_remembers_every_stage_and_resumes(tmp_path: Path) -> None:
    from agents.continual.replay import BehaviourCloningReplay

    config_dict = {**TINY, "video": False, "evaluation": {"episodes": 1},
                   "regularizer": {"kind": "replay", "strength": 1.0, "memory_size": 32, "replay_batch": 16}}
    run = prepare_run_dir(tmp_path / "run", resume=False, force=False, config=config_dict)
    curriculum = Curriculum(config_from_dict(CurriculumConfig, config_dict), run, progress=False)
    curriculum.run_all()
    memory = curriculum.model.regularizer
    assert isinstance(memory, BehaviourCloningReplay) and memory.num_tasks == 2
    assert [m["states"].shape[0] for m in memory.memory] == [32, 32]
    saved = torch.load(run.root / "checkpoints" / "latest.pt", weights_only=True)["regularizer_state"]
    assert saved["kind"] == "replay" and len(saved["memory"]) == 2


@pytest.mark.expensive
def test_a_packnet_curriculum_keeps_the_first_tasks_weights_exactly(tmp_path: Path) -> None:
    from agents.continual.packnet import FREE, PackNet

    config_dict = {**TINY, "video": False, "evaluation": {"episodes": 1},
                   "regularizer": {"kind": "packnet", "prune_share": 0.5}}
    run = prepare_run_dir(tmp_path / "run", resume=False, force=False, config=config_dict)
    curriculum = Curriculum(config_from_dict(CurriculumConfig, config_dict), run, progress=False)
    first_stage = {}
    original = curriculum.model.consolidate

    def remember_then_consolidate(*args, **kwargs):
        result = original(*args, **kwargs)
        if not first_stage:  # stage 0 just pruned: what task 0 owns now must never change
            first_stage.update({n: p.detach().clone() for n, p in curriculum.model.policy.named_parameters()})
        return result

    curriculum.model.consolidate = remember_then_consolidate
    state = curriculum.run_all()
    pack = curriculum.model.regularizer
    assert isinstance(pack, PackNet) and pack.num_tasks == 2
    now = dict(curriculum.model.policy.named_parameters())
    for name, owners in pack.owners.items():
        mask = owners == 0
        assert torch.equal(now[name].detach()[mask], first_stage[name][mask]), name
        assert bool((owners != FREE).any())
    # Task 0 is evaluated on its own weights: evaluating it again that way gives the recorded return.
    again = curriculum._evaluate([curriculum.pool_tasks[0]], params=[curriculum._task_params(0)])[0][0]
    assert again == pytest.approx(state.matrix[-1][0])
    with pytest.raises(ValueError, match="packnet needs schedule fixed"):
        config_from_dict(CurriculumConfig, {**config_dict, "schedule": "ladder"})


def test_a_stage_records_a_deterministic_evaluation_curve(tmp_path: Path) -> None:
    config_dict = {**TINY, "video": False, "evaluation": {"episodes": 1, "curve_every": 64}}
    run = prepare_run_dir(tmp_path / "run", resume=False, force=False, config=config_dict)
    curriculum = Curriculum(config_from_dict(CurriculumConfig, config_dict), run, progress=False)
    state = curriculum.run_all()
    for stage, (curve, record) in enumerate(zip(state.eval_curves, state.history, strict=True)):
        steps = [point[0] for point in curve]
        assert steps[0] == 0 and curve[0][1] == record["return_after_adapt"], "starts after the adaptation"
        assert steps == sorted(steps) and len(steps) >= 3  # 128 steps, one point per 64 crossed, then the end
        assert curve[-1][1] == pytest.approx(state.matrix[stage][stage]), "ends with the stage's evaluation"
    assert not Curriculum(config_from_dict(CurriculumConfig, TINY), prepare_run_dir(
        tmp_path / "off", resume=False, force=False, config=TINY), progress=False).state.eval_curves



def test_the_adaptation_verdict_is_paired_with_an_interval() -> None:
    from agents.continual.report import adaptation_verdict

    records = [{"return_before_adapt": b, "return_after_adapt": a} for b, a in [(0, 5), (1, 7), (2, 6)]]
    sentence, figures = adaptation_verdict(records)
    assert figures["adaptation_gain"] == pytest.approx(5.0) and figures["adaptation_gain_low"] > 0
    assert "it helped" in sentence and "3 stages" in sentence
    mixed = [{"return_before_adapt": 0, "return_after_adapt": a} for a in (5, -5, 1)]
    assert "indistinguishable from zero" in adaptation_verdict(mixed)[0]
    skipped = [{**records[0], "adapted": True}, {**records[1], "adapted": False}]
    assert "one stage: no interval" in adaptation_verdict(skipped)[0]


@pytest.mark.expensive
def test_a_finetune_baseline_is_run_and_compared(tmp_path: Path) -> None:
    run = tmp_path / "run"
    result = run_script(write_config(tmp_path, video=False, baseline="finetune"), run)
    assert result.returncode == 0, result.stderr[-2000:]
    assert (run / "baseline_finetune" / "summary.json").exists() is False  # the baseline is a run, not a report
    assert (run / "baseline_finetune" / "checkpoints" / "latest.pt").is_file()
    report = (run / "report.md").read_text()
    assert "## Verdict" in report and "fine-tuning on the same stages: average forgetting" in report
    summary = json.loads((run / "summary.json").read_text())
    assert "adaptation_gain" in summary["metrics"] and summary["baseline_comparison"].startswith("`ewc`")
