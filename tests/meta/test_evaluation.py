"""Adaptation evaluation: shapes, adapted parameters used, reproducible, CIs, writers and the CLI."""

from __future__ import annotations

import csv
import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest

from agents.meta.evaluation import (
    AdaptationConfig,
    compare,
    evaluate_adaptation,
    markdown_table,
    parse_terrain_tasks,
    random_init,
    step_seed,
    write_all,
)
from agents.runs.checkpoint import load_checkpoint, save_checkpoint
from agents.runs.stats import mean_confidence_interval, student_t_ppf
from agents.sampler import Sampler
from envs.tasks import TaskDistribution

ROOT = Path(__file__).resolve().parents[2]
OBS_DIM, ACT_DIM = 17, 6  # the cheetah's spaces without the height scan
TASKS = TaskDistribution("cheetah_velocity", 0).sample(2, split="test")
CONFIG = AdaptationConfig(steps=2, inner_lr=0.5, episodes_per_task=2, horizon=30, seeds=(0, 1), num_threads=1)


@pytest.fixture(scope="module")
def policies() -> dict:
    return {"init": random_init(OBS_DIM, ACT_DIM, (8,), seed=0), "random": random_init(OBS_DIM, ACT_DIM, (8,), seed=1)}


@pytest.fixture(scope="module")
def result(policies):
    return compare(policies, TASKS, "cheetah", CONFIG)


def load_cli():
    spec = importlib.util.spec_from_file_location("evaluate_adaptation", ROOT / "scripts" / "evaluate_adaptation.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_shapes_and_tidy_records(result) -> None:
    assert result.methods == ["init", "random"]
    for values in result.returns.values():
        assert values.shape == (len(CONFIG.seeds), len(TASKS), CONFIG.steps + 1)
        assert np.isfinite(values).all()
    records = result.records()
    assert len(records) == 2 * len(CONFIG.seeds) * len(TASKS) * (CONFIG.steps + 1)
    assert set(records[0]) == {"method", "task", "task_label", "step", "seed", "return"}
    assert len(result.summary()) == 2 * (CONFIG.steps + 1)
    assert len(result.summary(per_task=True)) == 2 * len(TASKS) * (CONFIG.steps + 1)


def test_adapted_parameters_are_the_ones_rolled_out(policies, result) -> None:
    policy = policies["init"]
    ours = result.returns["init"]
    assert not np.array_equal(ours[:, :, 1], ours[:, :, 0])
    # A vanishing step size: same pre-adaptation numbers, but step 1 now rolls out (almost) the
    # initialisation itself, so the 0.5 step's numbers differ only because its adapted parameters ran.
    tiny = evaluate_adaptation(policy, TASKS, "cheetah", AdaptationConfig(**{**vars(CONFIG), "inner_lr": 1e-9}))
    np.testing.assert_array_equal(tiny.returns["policy"][:, :, 0], ours[:, :, 0])
    assert np.abs(tiny.returns["policy"][:, :, 1] - ours[:, :, 1]).min() > 1e-3
    sampler = Sampler("cheetah", CONFIG.horizon, num_threads=1)
    unadapted = sampler.sample(policy, TASKS, CONFIG.episodes_per_task, seed=step_seed(CONFIG.seeds[0], 1))
    sampler.close()
    expected = [float(e.total_returns().mean()) for e in unadapted]
    np.testing.assert_allclose(tiny.returns["policy"][0, :, 1], expected, rtol=1e-3, atol=1e-3)


def test_same_seeds_same_numbers_and_methods_do_not_interact(policies, result) -> None:
    again = compare(policies, TASKS, "cheetah", CONFIG)
    for name in policies:
        np.testing.assert_array_equal(again.returns[name], result.returns[name])
    alone = evaluate_adaptation(policies["random"], TASKS, "cheetah", CONFIG, name="random")
    np.testing.assert_array_equal(alone.returns["random"], result.returns["random"])
    other_seeds = evaluate_adaptation(policies["random"], TASKS, "cheetah",
                                      AdaptationConfig(**{**vars(CONFIG), "seeds": (2, 3)}))
    assert not np.array_equal(other_seeds.returns["policy"], result.returns["random"])


def test_confidence_interval_on_a_known_sample(result) -> None:
    for df, t in [(1, 12.7062), (2, 4.3027), (4, 2.7764), (9, 2.2622), (29, 2.0452)]:
        assert student_t_ppf(0.975, df) == pytest.approx(t, abs=1e-4)
    mean, low, high = mean_confidence_interval([1.0, 2.0, 3.0, 4.0, 5.0])
    # mean 3, s = sqrt(2.5), half-width t_{0.975,4} * s / sqrt(5) = 2.7764 * 0.7071
    assert (mean, low, high) == pytest.approx((3.0, 1.0368, 4.9632), abs=1e-4)
    assert mean_confidence_interval([1.0, 3.0], 0.9)[2] == pytest.approx(2.0 + 6.3138, abs=1e-4)
    single = mean_confidence_interval([4.0])
    assert single[0] == 4.0 and math.isnan(single[1]) and math.isnan(single[2])
    row = next(r for r in result.summary() if r["method"] == "init" and r["step"] == 1)
    per_seed = result.returns["init"][:, :, 1].mean(axis=1)
    assert (row["mean"], row["ci_low"], row["ci_high"]) == pytest.approx(mean_confidence_interval(per_seed))


def test_writers(tmp_path: Path, result) -> None:
    paths = write_all(result, tmp_path / "out")
    rows = list(csv.DictReader(paths["table.csv"].open()))
    assert len(rows) == 2 * (CONFIG.steps + 1)
    assert set(rows[0]) == {"method", "step", "mean", "ci_low", "ci_high", "n_seeds"}
    text = paths["table.md"].read_text()
    assert text.startswith("| method | before | 1 step | 2 steps |") and "| init |" in text and "±" in text
    assert paths["adaptation.png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    data = json.loads(paths["results.json"].read_text())
    assert data["methods"] == ["init", "random"] and len(data["records"]) == len(result.records())
    assert data["config"]["seeds"] == [0, 1]
    assert markdown_table(result) == text


@pytest.mark.parametrize(("changes", "match"), [
    ({"steps": -1}, "steps"),
    ({"seeds": ()}, "seeds"),
    ({"seeds": (1, 1)}, "seeds"),
    ({"inner_lr": 0.0}, "inner_lr"),
    ({"episodes_per_task": 0}, "episodes_per_task"),
])
def test_bad_config_is_a_value_error_naming_the_field(changes: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        AdaptationConfig(**{**vars(CONFIG), **changes})


def test_mismatched_policy_and_terrain_specs_are_rejected() -> None:
    with pytest.raises(ValueError, match=r"methods\['wide'\].*obs_dim"):
        compare({"wide": random_init(OBS_DIM + 3, ACT_DIM, (4,))}, TASKS, "cheetah", CONFIG)
    tasks = parse_terrain_tasks(["gaps:0.5,rough:0.2", "flat:0"], seed=3)
    assert [(t.terrain.kind, t.terrain.difficulty, t.terrain.seed) for t in tasks] == [
        ("gaps", 0.5, 3), ("rough", 0.2, 3), ("flat", 0.0, 3)]
    with pytest.raises(ValueError, match="terrain.kind"):
        parse_terrain_tasks(["lava:0.5"])
    with pytest.raises(ValueError, match="terrain.difficulty"):
        parse_terrain_tasks(["gaps:2"])


def test_cli_end_to_end(tmp_path: Path) -> None:
    checkpoint = save_checkpoint(tmp_path / "maml.pt", policy=random_init(OBS_DIM, ACT_DIM, (8,), seed=3),
                                 robot="cheetah", metadata={"family": "cheetah_velocity", "kind": "maml"})
    out = tmp_path / "eval"
    outputs = load_cli().main([
        "--checkpoint", str(checkpoint), "--out", str(out), "--tasks", "2", "--steps", "1", "--episodes", "2",
        "--horizon", "20", "--seeds", "0", "1", "--baselines", "random,pretrained", "--pretrain-iterations", "1",
        "--pretrain-tasks", "2", "--num-threads", "1", "--quiet",
    ])
    for name in ("table.csv", "table.md", "adaptation.png", "results.json", "pretrained.pt"):
        assert (out / name).is_file() and outputs[name] == out / name
    data = json.loads((out / "results.json").read_text())
    assert data["methods"] == ["maml", "pretrained", "random"]
    assert len(data["tasks"]) == 2 and all(t["goal"]["target_velocity"] is not None for t in data["tasks"])
    assert load_checkpoint(out / "pretrained.pt", expected_robot="cheetah").metadata["kind"] == "pretrained"
    assert data["metadata"]["sources"] == {"maml": str(checkpoint), "pretrained": str(out / "pretrained.pt"),
                                           "random": "random_init(seed=0)"}


def test_cli_rejects_bad_input_before_simulating(tmp_path: Path) -> None:
    cli = load_cli()
    quadruped = save_checkpoint(tmp_path / "quadruped.pt", policy=random_init(10, 8, (4,)), robot="quadruped")
    cheetah = save_checkpoint(tmp_path / "cheetah.pt", policy=random_init(OBS_DIM, ACT_DIM, (4,)), robot="cheetah")
    out = tmp_path / "eval"
    base = ["--out", str(out), "--quiet"]
    cases = [
        (["--checkpoint", str(quadruped), "--family", "cheetah_velocity"], "quadruped"),
        (["--checkpoint", str(cheetah), "--family", "cheetah_speed"], "task_family"),
        (["--checkpoint", str(tmp_path / "missing.pt"), "--family", "cheetah_velocity"], "checkpoint"),
        (["--checkpoint", str(cheetah), "--family", "cheetah_velocity", "--steps", "-1"], "steps"),
        (["--checkpoint", str(cheetah)], "family"),
        (["--checkpoint", str(cheetah), "--family", "cheetah_velocity", "--baselines", "pretrained"], "pretrained"),
        (["--checkpoint", str(cheetah), "--family", "cheetah_velocity", "--baselines", "random,oracle"], "baselines"),
        (["--checkpoint", str(cheetah), "--family", "cheetah_velocity", "--pretrained", str(quadruped),
          "--baselines", "pretrained"], "quadruped"),
        (["--checkpoint", str(cheetah), "--terrains", "lava:0.3"], "terrain.kind"),
    ]
    for argv, match in cases:
        with pytest.raises(ValueError, match=match):
            cli.main(base + argv)
    assert not out.exists()
