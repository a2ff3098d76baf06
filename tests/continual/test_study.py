"""The thesis study: its configs, scores against hand values, the tuning choice, and the runner's
bookkeeping (save as runs finish, skip finished runs, respect the budget, resume to the same summary)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from agents.continual import study_run
from agents.continual.curriculum import CurriculumConfig
from agents.continual.jobs import CurriculumJob, run_curriculum_job
from agents.continual.study import (
    INITS,
    METHODS,
    SEQUENCES,
    TUNING_GRID,
    References,
    RunKey,
    StudySetting,
    StudyStore,
    choose_settings,
    curriculum_config,
    reference_config,
    run_record,
    score_run,
    setting_label,
    target_check,
)
from agents.continual.study_run import Runner, final_plan, references_plan, run_study, study_markdown, tuning_plan
from agents.runs.config import config_from_dict

ROOT = Path(__file__).resolve().parents[2]


def test_every_planned_run_is_a_valid_curriculum(tmp_path):
    setting = StudySetting(steps_per_stage=1000)
    for sequence, spec in SEQUENCES.items():
        root = tmp_path / sequence  # stand-in initialisation files, so the check does not need the shipped ones
        for path in spec.init_files.values():
            (root / path).parent.mkdir(parents=True, exist_ok=True)
            (root / path).write_bytes(b"")
        chosen = {method: grid[0] for method, grid in TUNING_GRID.items()}
        plan = (references_plan(sequence, [0], setting, root) + tuning_plan(sequence, [100], setting, root)
                + final_plan(sequence, [0], chosen, setting, root))
        assert len(plan) == len(spec.stages) + sum(map(len, TUNING_GRID.values())) + len(INITS) * len(METHODS)
        assert len({key.path for key, _ in plan}) == len(plan)
        for _, config in plan:
            parsed = config_from_dict(CurriculumConfig, config)
            assert parsed.task_heads == spec.task_heads and parsed.goal_in_obs is False
        inits = {config["init"] for key, config in plan if key.phase == "final"}
        assert inits == {"scratch", *(str(root / p) for p in spec.init_files.values())}
        reference = reference_config(sequence, 1, 0, setting, root)
        assert reference["stages"] == [plan[1][1]["stages"][0]] and reference["adapt_steps"] == 0


def test_settings_have_distinct_labels():
    labels = [setting_label(r) for grid in TUNING_GRID.values() for r in grid]
    assert len(set(labels)) == len(labels)
    with pytest.raises(ValueError, match="regularizer.kind"):
        setting_label({"kind": "l2", "strength": 1.0})


def fake_record(matrix, curves, after_adapt, held_out, random_held_out, random_returns):
    return {"matrix": matrix, "eval_curves": curves, "return_after_adapt": after_adapt,
            "held_out": held_out, "random_held_out": random_held_out, "random_returns": random_returns}


def test_score_run_matches_hand_values():
    steps = 100
    references = References(low=np.array([0.0, 10.0]), high=np.array([100.0, 110.0]),
                            curves=[np.linspace(0, 1, 11), np.linspace(0, 1, 11)])
    record = fake_record(matrix=[[80.0, math.nan], [40.0, 60.0]],
                         curves=[[[0, 0.0], [100, 100.0]], [[0, 60.0], [100, 110.0]]],
                         after_adapt=[20.0, 60.0], held_out=[5.0, 7.0], random_held_out=[1.0, 1.0],
                         random_returns=[0.0, 10.0])
    scores = score_run(record, references, steps)
    assert scores["average_performance"] == pytest.approx((0.4 + 0.5) / 2)
    assert scores["forgetting"] == pytest.approx(0.8 - 0.4)
    assert scores["learning_accuracy"] == pytest.approx((0.8 + 0.5) / 2)
    assert scores["jump_start"] == pytest.approx((0.2 + 0.5) / 2)
    assert scores["held_out_over_random"] == pytest.approx(5.0)
    # task 0 learns exactly like the reference (FT 0); task 1 starts at 0.5 and rises linearly to 1:
    # AUC 0.75 against the reference's 0.5, FT = (0.75 - 0.5) / (1 - 0.5) = 0.5
    assert scores["forward_transfer"] == pytest.approx((0.0 + 0.5) / 2)


def test_references_refuse_a_task_from_scratch_did_not_learn():
    record = {"random_returns": [5.0], "matrix": [[3.0]], "eval_curves": [[[0, 1.0], [10, 3.0]]]}
    with pytest.raises(ValueError, match="did not beat the random init on tasks \\[0\\]"):
        References.pooled([[record]], 10)


def test_choose_settings_takes_the_best_mean_and_the_first_of_ties():
    scores = {setting_label(r): {"average_performance": [0.1, 0.1]} for grid in TUNING_GRID.values() for r in grid}
    scores["ewc_1000"] = {"average_performance": [0.5, 0.3]}  # mean 0.4
    scores["ewc_10000"] = {"average_performance": [0.9, -0.2]}  # mean 0.35
    chosen = choose_settings(scores)
    assert chosen["ewc"] == "ewc_1000"
    assert chosen["replay"] == setting_label(TUNING_GRID["replay"][0])  # all tied
    assert chosen["finetune"] == "finetune"


def test_target_check_needs_both_little_forgetting_and_transfer():
    finetune = {s: {"forgetting": 1.0, "forward_transfer": 0.2} for s in range(3)}
    keeps = {s: {"forgetting": 0.05, "forward_transfer": 0.2 + 0.01 * s} for s in range(3)}
    rigid = {s: {"forgetting": 0.05, "forward_transfer": -0.3} for s in range(3)}
    check = target_check({"finetune": finetune, "ewc": keeps, "replay": rigid})
    assert check["ewc"]["met"] and check["ewc"]["forgetting_ratio"] == pytest.approx(0.05)
    assert not check["replay"]["met"]
    assert check["replay"]["forward_transfer_minus_finetune"]["mean"] == pytest.approx(-0.5)


def test_store_rejects_a_record_of_another_setting(tmp_path):
    key = RunKey("terrain", "final", "scratch/ewc_100", 0)
    StudyStore(tmp_path, StudySetting(steps_per_stage=10), ROOT).save(
        key, {"setting": StudySetting(10).to_dict(), "config": {"init": "scratch", "seed": 0}, "x": 1})
    assert StudyStore(tmp_path, StudySetting(steps_per_stage=10), ROOT).load(key)["x"] == 1
    with pytest.raises(ValueError, match="seed0.json: a run of another study setting"):
        StudyStore(tmp_path, StudySetting(steps_per_stage=20), ROOT).load(key)
    with pytest.raises(ValueError, match="seed0.json: made with another curriculum config"):
        StudyStore(tmp_path, StudySetting(steps_per_stage=10), ROOT).load(key, planned={"init": "scratch", "seed": 1})


# --- the runner, with a stand-in for the curriculum --------------------------------------------------

GOOD = {"ewc_1000", "replay_10_m4096", "packnet_0.75"}  # the settings the stand-in makes best


def fake_state(config: dict) -> dict:
    """A finished curriculum's state whose numbers depend on the config: references learn to 100;
    good settings forget less; MAML-initialised runs start higher."""
    n = len(config["stages"])
    label = setting_label(config["regularizer"])
    seed = config["seed"]
    keep = 0.9 if label in GOOD else 0.5
    start = 30.0 if "maml" in config["init"] else 0.0
    matrix = [[100.0 * keep ** (i - j) if j <= i else math.nan for j in range(n)] for i in range(n)]
    curve = [[0, start], [config["steps_per_stage"], 100.0]]  # ends at the diagonal entry, as a real run does
    history = [{"return_before_adapt": start - 5.0, "return_after_adapt": start} for _ in range(n)]
    return {"matrix": matrix, "eval_curves": [curve] * n, "random_returns": [0.0] * n, "held_out": [[10.0 + seed]],
            "random_held_out": [1.0], "history": history, "seconds": 60.0}


def test_runner_saves_as_it_goes_respects_its_budget_and_resumes(tmp_path, monkeypatch):
    calls = []

    def fake_job(job: CurriculumJob) -> dict:
        calls.append(job.name)
        return fake_state(job.config)

    monkeypatch.setattr(study_run, "run_curriculum_job", fake_job)
    setting = StudySetting(steps_per_stage=100)
    store = StudyStore(tmp_path / "results", setting, ROOT)
    root = ROOT

    first = run_study(Runner(store, tmp_path / "runs", budget=7), ["terrain"], [0, 1], [100, 101], root)
    assert len(calls) == 7 and not first["complete"]
    assert len(list((tmp_path / "results").rglob("*.json"))) == 7  # each saved as it finished

    done = run_study(Runner(store, tmp_path / "runs"), ["terrain"], [0, 1], [100, 101], root)
    n_stages = len(SEQUENCES["terrain"].stages)
    expected = 2 * n_stages + 2 * sum(map(len, TUNING_GRID.values())) + 2 * (n_stages + len(INITS) * len(METHODS))
    assert done["complete"] and len(calls) == expected and len(set(calls)) == expected
    seq = done["sequences"]["terrain"]
    assert {m: c["label"] for m, c in seq["chosen"].items()} == \
        {"finetune": "finetune", "ewc": "ewc_1000", "replay": "replay_10_m4096", "packnet": "packnet_0.75"}
    assert sorted(p.parent.name for p in (tmp_path / "results" / "terrain" / "final" / "maml").rglob("seed0.json")) \
        == ["ewc_1000", "finetune", "packnet_0.75", "replay_10_m4096"]  # the grid's keys name the chosen settings
    cell = seq["cells"]["maml"]["ewc"]
    assert cell["forgetting"]["n"] == 2
    # chosen setting keeps 0.9 per stage: forgetting of task j is 1 - 0.9^(3 - j), averaged over j < 3
    assert cell["forgetting"]["mean"] == pytest.approx(np.mean([1 - 0.9 ** (3 - j) for j in range(3)]))
    assert seq["cells"]["maml"]["finetune"]["forgetting"]["mean"] == pytest.approx(
        np.mean([1 - 0.5 ** (3 - j) for j in range(3)]))
    assert seq["maml_minus"]["scratch"]["ewc"]["jump_start"]["mean"] == pytest.approx(0.3)
    assert seq["budget"]["final"]["runs"] == 2 * len(INITS) * len(METHODS)
    assert seq["budget"]["total"]["runs"] == expected and seq["budget"]["total"]["wall_time_s"] == 60.0 * expected

    again = run_study(Runner(store, tmp_path / "runs"), ["terrain"], [0, 1], [100, 101], root)
    assert len(calls) == expected  # nothing re-run
    assert json.dumps(again, sort_keys=True) == json.dumps(done, sort_keys=True)
    markdown = study_markdown(done)
    assert "ewc_1000" in markdown and "not met" in markdown  # forgetting 0.19 of fine-tuning's 0.58: ratio 0.33
    assert seq["cells"]["maml"]["ewc"]["first_jump_start"]["mean"] == pytest.approx(0.3)


def test_a_real_run_gives_a_record_the_scores_read(tmp_path):
    setting = StudySetting(steps_per_stage=64, adapt_episodes=2, eval_episodes=1, hidden_sizes=(8,))
    config = curriculum_config("terrain", "scratch", {"kind": "ewc", "strength": 10.0}, 0, setting, ROOT)
    config["stages"] = config["stages"][:2]
    config["evaluation"]["held_out"] = config["evaluation"]["held_out"][:1]
    config["ppo"] = {"n_envs": 2, "n_steps": 32, "batch_size": 32, "n_epochs": 1}
    config["horizon"] = 50
    key = RunKey("terrain", "final", "scratch/ewc", 0)
    state = run_curriculum_job(CurriculumJob(key.path, config, str(tmp_path), "sweep"))
    record = run_record(key, config, state, setting, ROOT, None)
    assert np.asarray(record["matrix"]).shape == (2, 2) and len(record["return_after_adapt"]) == 2
    assert len(record["held_out"]) == 1 and record["env_steps"] == 128
    references = References(low=np.array(record["random_returns"]) - 1.0,
                            high=np.array(record["random_returns"]) + 100.0, curves=[np.zeros(11)] * 2)
    scores = score_run(json.loads(json.dumps(record)), references, setting.steps_per_stage)
    assert all(math.isfinite(v) for v in scores.values())


def test_the_grid_waits_for_missing_initialisations_but_tuning_goes_ahead(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(study_run, "run_curriculum_job", lambda job: calls.append(job.name) or fake_state(job.config))
    store = StudyStore(tmp_path / "results", StudySetting(steps_per_stage=100), tmp_path)
    summary = run_study(Runner(store, tmp_path / "runs"), ["direction"], [0], [100], tmp_path)  # no init files
    n_stages = len(SEQUENCES["direction"].stages)
    assert len(calls) == n_stages + sum(map(len, TUNING_GRID.values()))
    assert all("/tune/" in name or "/reference/" in name for name in calls)
    seq = summary["sequences"]["direction"]  # the tuning is reported; the grid's cells are empty
    assert not summary["complete"] and seq["chosen"]["ewc"]["label"] == "ewc_1000"
    assert seq["references"] is None and seq["cells"]["maml"]["ewc"]["forgetting"]["n"] == 0
    assert "–" in study_markdown(summary)


def test_results_of_a_replaced_or_missing_initialisation_are_refused(tmp_path, monkeypatch):
    init = tmp_path / "assets" / "maml.pt"
    init.parent.mkdir()
    init.write_bytes(b"version 1")
    monkeypatch.setattr(study_run, "run_curriculum_job", lambda job: fake_state(job.config))
    setting = StudySetting(steps_per_stage=10)
    store = StudyStore(tmp_path / "results", setting, tmp_path)
    config = curriculum_config("terrain", "scratch", {"kind": "none"}, 0, setting, tmp_path) | {"init": str(init)}
    key = RunKey("terrain", "final", "maml/finetune", 0)
    runner = Runner(store, tmp_path / "runs")
    assert runner.run([(key, config)])
    record = store.load(key, planned=config)
    assert record["config"]["init"] == "assets/maml.pt"  # portable: relative to the project root
    assert record["init_sha256"] is not None
    init.write_bytes(b"version 2")
    with pytest.raises(ValueError, match="made from another version of assets/maml.pt"):
        store.load(key)
    init.unlink()
    with pytest.raises(ValueError, match="the initialisation file assets/maml.pt is missing"):
        store.load(key)
