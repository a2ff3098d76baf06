"""Pooling evaluations: a result read back from its JSON is the same result, pooling two
evaluations on different seeds equals one evaluation on all of them, and files that differ in
anything but their tasks are refused with one line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from agents.meta.adaptation_pool import pool_evaluations
from agents.meta.adaptation_report import markdown_from_dict
from agents.meta.adaptation_result import AdaptationConfig, AdaptationResult
from agents.meta.evaluation import compare, random_init
from envs.tasks import TaskDistribution

ROOT = Path(__file__).resolve().parents[2]
TASKS = TaskDistribution("cheetah_velocity", 0).sample(2, split="test")
SETTINGS = {"steps": 1, "inner_lr": 0.5, "episodes_per_task": 2, "horizon": 20, "num_threads": 1}


@pytest.fixture(scope="module")
def policies() -> dict:
    return {"maml": random_init(17, 6, (8,), seed=0), "other": random_init(17, 6, (8,), seed=1)}


def evaluation(policies: dict, seeds: tuple[int, ...], task_seed: int = 0, **changes) -> dict:
    """An evaluation's JSON as evaluate_adaptation.py writes it (statistics and metadata)."""
    result = compare(policies, TASKS, "cheetah", AdaptationConfig(**{**SETTINGS, **changes, "seeds": seeds}))
    metadata = {"family": "cheetah_velocity", "split": "test", "task_seed": task_seed, "height_scan": False,
                "sources": {name: f"{name}.pt" for name in policies},
                "policy_sha256": {name: f"sha-{name}" for name in policies}}
    return {**result.to_dict(), "metadata": metadata}


def test_a_result_read_back_from_its_json_is_the_same_result(policies) -> None:
    data = evaluation(policies, (0, 1))
    again = AdaptationResult.from_dict(data).to_dict()
    assert again == {key: value for key, value in data.items() if key != "metadata"}
    incomplete = {**data, "records": data["records"][1:]}
    with pytest.raises(ValueError, match="records"):
        AdaptationResult.from_dict(incomplete)


def test_pooling_two_evaluations_equals_one_evaluation_on_all_their_seeds(policies) -> None:
    pooled, metadata = pool_evaluations([evaluation(policies, (0, 1)), evaluation(policies, (2,), task_seed=3)],
                                        names=["a.json", "b.json"])
    whole = evaluation(policies, (0, 1, 2))
    for key in ("summary", "gains", "versus", "tracking", "records"):
        assert pooled.to_dict()[key] == whole[key], key
    assert pooled.seeds == (0, 1, 2)
    assert metadata["pooled_from"] == [{"file": "a.json", "task_seed": 0, "seeds": [0, 1]},
                                       {"file": "b.json", "task_seed": 3, "seeds": [2]}]
    only = pool_evaluations([evaluation(policies, (0,)), evaluation(policies, (1,))], methods=["other"])[0]
    assert only.methods == ["other"]
    np.testing.assert_array_equal(only.returns["other"], AdaptationResult.from_dict(whole).returns["other"][:2])


def test_files_that_differ_in_more_than_their_tasks_are_refused(policies) -> None:
    a = evaluation(policies, (0,))
    other_policy = evaluation(policies, (1,))
    other_policy["metadata"]["policy_sha256"]["maml"] = "sha-else"
    other_family = evaluation(policies, (1,))
    other_family["metadata"]["family"] = "cheetah_terrain"
    # A file written before a setting existed holds it at its default: compared as such.
    unnormalised = evaluation(policies, (0,), normalize_advantages=False)
    older = evaluation(policies, (1,))
    del older["config"]["normalize_advantages"]
    cases = [
        ([a], "at least two"),
        ([a, evaluation(policies, (0,))], "seed 0 is also in"),
        ([a, evaluation(policies, (1,), episodes_per_task=3)], "config.episodes_per_task"),
        ([unnormalised, older], "config.normalize_advantages"),
        ([a, other_policy], "maml is another policy"),
        ([a, other_family], "family"),
        ([a, {**evaluation(policies, (1,)), "learned_step_sizes": ["maml"]}], "other step sizes"),
        ([a, {**evaluation(policies, (1,)), "by_experience": ["maml"]}], "by_experience"),
        ([a, {**evaluation(policies, (1,)), "retrieved": {"maml": [["skill"]]}}], "retrieved"),
        ([a, {**evaluation(policies, (1,)), "learned_step_sizes": 5}], "learned_step_sizes must be a list"),
        ([a, {**evaluation(policies, (1,)), "metadata": {**a["metadata"], "policy_sha256": "x"}}],
         "metadata.policy_sha256"),
        ([a, {**evaluation(policies, (1,)), "tasks": [[{"goal": 5}, {"goal": 5}]]}], "evaluation 2: "),
        ([a, {**evaluation(policies, (1,)), "robot": "quadruped"}], "robot"),
        ([a, {**evaluation(policies, (1,)), "config": {**a["config"], "seeds": [1], "lr": 1}}], "unknown fields"),
    ]
    for evaluations, match in cases:
        with pytest.raises(ValueError, match=match):
            pool_evaluations(evaluations)
    with pytest.raises(ValueError, match="no method"):
        pool_evaluations([a, evaluation(policies, (1,))], methods=["context"])
    # Pooling still works across a different bootstrap setting (every statistic is recomputed).
    assert pool_evaluations([a, evaluation(policies, (1,), bootstrap_reps=50)])[0].config.bootstrap_reps == 10_000
    for records, match in [([{**a["records"][0], "seed": 9}], r"records\[0\]"),
                           ([{**a["records"][0], "task": 7}], r"records\[0\]"),
                           ([{**a["records"][0], "method": "ghost"}], r"records\[0\]")]:
        with pytest.raises(ValueError, match=match):
            AdaptationResult.from_dict({**a, "records": records})
    with pytest.raises(ValueError, match="tasks"):
        AdaptationResult.from_dict({**a, "tasks": []})
    # A statistic without a value (a slope over one target) is shown as n/a, not a crash.
    one_target = {**a, "tracking": [{**row, "slope": None, "slope_low": None, "slope_high": None}
                                    for row in a["tracking"]]}
    text = markdown_from_dict(one_target)
    assert "Slope of the speed reached on the target" in text and "| maml | n/a |" in text


def test_the_script_writes_the_pooled_json_and_refuses_bad_input_in_one_line(policies, tmp_path: Path,
                                                                           load_script) -> None:
    paths = []
    for i, seeds in enumerate([(0,), (1,)]):
        paths.append(tmp_path / f"e{i}.json")
        paths[-1].write_text(json.dumps(evaluation(policies, seeds)))
    out = tmp_path / "pooled.json"
    script = [sys.executable, str(ROOT / "scripts" / "pool_evaluations.py")]
    done = subprocess.run([*script, "--results", *map(str, paths), "--out", str(out)], capture_output=True,
                          text=True, cwd=ROOT, timeout=120)
    assert done.returncode == 0, done.stderr
    pooled = json.loads(out.read_text())
    assert pooled["config"]["seeds"] == [0, 1] and "relative gain" in done.stdout
    assert [p["file"] for p in pooled["metadata"]["pooled_from"]] == list(map(str, paths))
    section = load_script("update_readme").adaptation_markdown(pooled)
    assert section.startswith("Family `cheetah_velocity`, split `test`, pooled over 2 evaluations: task seed 0 "
                              "(seeds 0), task seed 0 (seeds 1). maml: maml.pt")
    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps({**evaluation(policies, (2,)), "records": [{"seed": 2}]}))
    for bad, match in [([str(paths[0]), str(paths[0])], "seed 0 is also in"),
                       ([str(paths[0]), str(tmp_path / "none.json")], "--results: no file"),
                       ([str(paths[0]), str(broken)], "records[0]")]:
        done = subprocess.run([*script, "--results", *bad, "--out", str(tmp_path / "x.json")], capture_output=True,
                              text=True, cwd=ROOT, timeout=120)
        assert done.returncode == 2 and match in done.stderr and len(done.stderr.strip().splitlines()) == 1
        assert not (tmp_path / "x.json").exists()
