"""Adaptation evaluation: shapes, adapted parameters used, reproducible, intervals across tasks and seeds,
writers and the CLI (with its one-line mismatch errors)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from agents.meta.adaptation_report import markdown_from_dict, markdown_table, write_all
from agents.meta.adaptation_result import AdaptationConfig
from agents.meta.evaluation import (
    compare,
    evaluate_adaptation,
    parse_terrain_tasks,
    random_init,
    step_seed,
)
from agents.runs.checkpoint import save_checkpoint
from agents.runs.layout import observation_layout
from agents.runs.stats import stratified_bootstrap
from agents.sampler import Sampler
from envs.tasks import TaskDistribution

OBS_DIM, ACT_DIM = 17, 6  # the cheetah's spaces without the height scan
TASKS = TaskDistribution("cheetah_velocity", 0).sample(2, split="test")
CONFIG = AdaptationConfig(steps=2, inner_lr=0.5, episodes_per_task=2, horizon=30, seeds=(0, 1), num_threads=1)


@pytest.fixture(scope="module")
def policies() -> dict:
    return {"init": random_init(OBS_DIM, ACT_DIM, (8,), seed=0), "random": random_init(OBS_DIM, ACT_DIM, (8,), seed=1)}


@pytest.fixture(scope="module")
def result(policies):
    return compare(policies, TASKS, "cheetah", CONFIG)


def test_shapes_and_tidy_records(result) -> None:
    assert result.methods == ["init", "random"]
    for values in result.returns.values():
        assert values.shape == (len(CONFIG.seeds), len(TASKS), CONFIG.steps + 1)
        assert np.isfinite(values).all()
    records = result.records()
    assert len(records) == 2 * len(CONFIG.seeds) * len(TASKS) * (CONFIG.steps + 1)
    assert set(records[0]) == {"method", "seed", "task", "task_label", "step", "return", "speed"}
    assert result.tracking()  # velocity tasks: speed errors per method and step
    assert len(result.summary()) == 2 * (CONFIG.steps + 1)
    assert len(result.gains()) == 2 * CONFIG.steps
    assert len(result.versus()) == CONFIG.steps + 1


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


def test_intervals_pool_tasks_and_seeds_and_gains_are_paired(result) -> None:
    values = result.returns["init"]
    row = next(r for r in result.summary() if r["method"] == "init" and r["step"] == 1)
    assert row["mean"] == pytest.approx(values[:, :, 1].mean())
    assert (row["mean"], row["mean_low"], row["mean_high"]) == pytest.approx(
        stratified_bootstrap(list(values[:, :, 1]), "mean", CONFIG.confidence, CONFIG.bootstrap_reps))
    assert row["mean_low"] <= row["mean"] <= row["mean_high"] and row["n_tasks"] == len(CONFIG.seeds) * len(TASKS)
    gain = next(r for r in result.gains() if r["method"] == "init" and r["step"] == 2)
    differences = values[:, :, 2] - values[:, :, 0]
    assert gain["mean"] == pytest.approx(differences.mean())
    assert gain["p_improvement"] == pytest.approx(((differences > 0) + 0.5 * (differences == 0)).mean())
    assert gain["distinguishable"] == (not gain["mean_low"] <= 0 <= gain["mean_high"])
    assert gain["relative"] == pytest.approx(differences.mean() / abs(values[:, :, 0].mean()))
    assert gain["relative_low"] < gain["relative"] < gain["relative_high"]
    assert "relative gain" in markdown_from_dict(result.to_dict())
    versus = next(r for r in result.versus() if r["other"] == "random" and r["step"] == 0)
    assert versus["mean"] == pytest.approx((values[:, :, 0] - result.returns["random"][:, :, 0]).mean())
    # Tracking: the slope of the speed reached on the target, over every (seed, task) pair.
    targets, speeds = result.targets(), result.speeds["init"][:, :, 1]
    track = next(r for r in result.tracking() if r["method"] == "init" and r["step"] == 1)
    assert track["slope"] == pytest.approx(np.polyfit(targets.ravel(), speeds.ravel(), 1)[0])
    # Four tasks: some resamples hold one target only, where no slope exists, so no interval either.
    assert np.isnan(track["slope_low"]) and np.isnan(track["slope_high"])
    assert track["mean"] == pytest.approx(np.abs(speeds - targets).mean())


def test_each_seed_has_its_own_tasks_and_policy(policies) -> None:
    per_seed_tasks = [TaskDistribution("cheetah_velocity", seed).sample(2, split="test") for seed in (5, 6)]
    per_seed_policies = [policies["init"], policies["random"]]
    mixed = compare({"mixed": per_seed_policies}, per_seed_tasks, "cheetah", CONFIG)
    for s, (policy, tasks) in enumerate(zip(per_seed_policies, per_seed_tasks, strict=True)):
        alone = compare({"one": policy}, tasks, "cheetah", CONFIG)
        np.testing.assert_array_equal(mixed.returns["mixed"][s], alone.returns["one"][s])
    assert [r["task_label"] for r in mixed.records() if r["seed"] == 1 and r["step"] == 0] == [
        t.describe() for t in per_seed_tasks[1]]
    with pytest.raises(ValueError, match="one per seed"):
        compare({"short": [policies["init"]]}, TASKS, "cheetah", CONFIG)
    with pytest.raises(ValueError, match="as many tasks"):
        compare({"init": policies["init"]}, [TASKS, TASKS[:1]], "cheetah", CONFIG)


def test_writers(tmp_path: Path, result) -> None:
    paths = write_all(result, tmp_path / "out")
    rows = list(csv.DictReader(paths["table.csv"].open()))
    assert len(rows) == 2 * (CONFIG.steps + 1) + 2 * CONFIG.steps
    assert {"table", "method", "step", "mean", "mean_low", "mean_high", "iqm", "distinguishable"} <= set(rows[0])
    text = paths["table.md"].read_text()
    assert text.startswith("4 held-out tasks (2 per seed, seeds 0, 1), 2 episodes per task and step")
    assert "| method | before | 1 step | 2 steps |" in text and "| init (IQM) |" in text
    assert text.count("distinguishable from zero") == 2 * CONFIG.steps + CONFIG.steps + 1
    assert paths["adaptation.png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    data = json.loads(paths["results.json"].read_text())
    assert data["methods"] == ["init", "random"] and len(data["records"]) == len(result.records())
    assert data["config"]["seeds"] == [0, 1]
    assert markdown_table(result) == text == markdown_from_dict(data)


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


def test_cli_end_to_end(tmp_path: Path, load_script) -> None:
    checkpoint = save_checkpoint(tmp_path / "maml.pt", policy=random_init(OBS_DIM, ACT_DIM, (8,), seed=3),
                                 robot="cheetah", metadata={"family": "cheetah_velocity", "kind": "maml",
                                                            "observation": observation_layout("cheetah")})
    pretrained = save_checkpoint(tmp_path / "pre.pt", policy=random_init(OBS_DIM, ACT_DIM, (8,), seed=4),
                                 robot="cheetah", metadata={"family": "cheetah_velocity", "kind": "pretrained"})
    sgd_policy = random_init(OBS_DIM, ACT_DIM, (8,), seed=5)
    sizes = {name: torch.full((1, *p.shape), 0.2) for name, p in sgd_policy.named_parameters()}  # per step
    meta_sgd = save_checkpoint(tmp_path / "sgd.pt", policy=sgd_policy, robot="cheetah",
                               extra_state={"inner_lrs": sizes},
                               metadata={"family": "cheetah_velocity", "observation": observation_layout("cheetah")})
    out = tmp_path / "eval"
    outputs = load_script("evaluate_adaptation").main([
        "--checkpoint", str(checkpoint), "--out", str(out), "--tasks", "2", "--steps", "1", "--episodes", "2",
        "--horizon", "20", "--seeds", "0", "1", "--pretrained", str(pretrained), "--num-threads", "1", "--quiet",
        "--also", f"sgd={meta_sgd}",
    ])
    for name in ("table.csv", "table.md", "adaptation.png", "results.json"):
        assert (out / name).is_file() and outputs[name] == out / name
    data = json.loads((out / "results.json").read_text())
    assert data["methods"] == ["maml", "pretrained", "random", "sgd"]
    assert data["learned_step_sizes"] == ["sgd"]  # an --also Meta-SGD checkpoint adapts with its own sizes
    assert len(data["tasks"]) == 2 and all(len(seed_tasks) == 2 for seed_tasks in data["tasks"])
    assert all(t["goal"]["target_velocity"] is not None for seed_tasks in data["tasks"] for t in seed_tasks)
    assert data["tasks"][0] != data["tasks"][1]  # each seed draws its own tasks
    assert data["metadata"]["sources"] == {"maml": str(checkpoint), "pretrained": str(pretrained),
                                           "random": ["random_init(seed=1000)", "random_init(seed=1001)"],
                                           "sgd": str(meta_sgd)}
    assert set(data["metadata"]["policy_sha256"]) == {"maml", "pretrained", "sgd"}


def test_cli_rejects_bad_input_before_simulating(tmp_path: Path, load_script) -> None:
    cli = load_script("evaluate_adaptation")
    quadruped = save_checkpoint(tmp_path / "quadruped.pt", policy=random_init(10, 8, (4,)), robot="quadruped")
    cheetah = save_checkpoint(tmp_path / "cheetah.pt", policy=random_init(OBS_DIM, ACT_DIM, (4,)), robot="cheetah")
    velocity = save_checkpoint(tmp_path / "velocity.pt", policy=random_init(OBS_DIM, ACT_DIM, (4,)), robot="cheetah",
                               metadata={"family": "cheetah_velocity"})
    terrain_pretrained = save_checkpoint(tmp_path / "terrain.pt", policy=random_init(OBS_DIM, ACT_DIM, (4,)),
                                         robot="cheetah", metadata={"family": "cheetah_terrain"})
    layout = observation_layout("cheetah")
    layout["layout"] = [layout["layout"][1], layout["layout"][0], *layout["layout"][2:]]  # reordered
    moved = save_checkpoint(tmp_path / "moved.pt", policy=random_init(OBS_DIM, ACT_DIM, (4,)), robot="cheetah",
                            metadata={"family": "cheetah_velocity", "observation": layout})
    sgd_policy = random_init(OBS_DIM, ACT_DIM, (4,))
    one_step_sizes = save_checkpoint(
        tmp_path / "sgd.pt", policy=sgd_policy, robot="cheetah", metadata={"family": "cheetah_velocity"},
        extra_state={"inner_lrs": {name: torch.zeros(1, *p.shape) for name, p in sgd_policy.named_parameters()}})
    out = tmp_path / "eval"
    base = ["--out", str(out), "--quiet"]
    cases = [
        (["--checkpoint", str(quadruped), "--family", "cheetah_velocity"], "quadruped"),
        (["--checkpoint", str(cheetah), "--family", "cheetah_speed"], "task_family"),
        (["--checkpoint", str(tmp_path / "missing.pt"), "--family", "cheetah_velocity"], "checkpoint"),
        (["--checkpoint", str(cheetah), "--family", "cheetah_velocity", "--steps", "-1"], "steps"),
        (["--checkpoint", str(cheetah)], "family"),
        (["--checkpoint", str(cheetah), "--terrains", "flat:0", "--methods", "maml,pretrained"], "pretrained"),
        (["--checkpoint", str(cheetah), "--family", "cheetah_velocity", "--methods", "maml,oracle"], "methods"),
        (["--family", "cheetah_velocity", "--methods", "maml,random"], "checkpoint"),
        (["--checkpoint", str(cheetah), "--family", "cheetah_velocity", "--methods", "maml,maml"], "repeat"),
        (["--checkpoint", str(cheetah), "--family", "cheetah_velocity", "--also", f"maml={cheetah}"], "also"),
        (["--checkpoint", str(cheetah), "--family", "cheetah_velocity", "--also", f"x={quadruped}"], "quadruped"),
        (["--checkpoint", str(cheetah), "--family", "cheetah_velocity", "--methods", "maml,random", "--library",
          str(tmp_path)], "library: given, but method 'retrieval'"),
        (["--checkpoint", str(cheetah), "--family", "cheetah_velocity", "--pretrained", str(quadruped),
          "--methods", "maml,pretrained"], "quadruped"),
        (["--checkpoint", str(cheetah), "--family", "cheetah_velocity", "--context", str(cheetah),
          "--methods", "context,maml"], "not a context adapter"),
        (["--checkpoint", str(cheetah), "--terrains", "lava:0.3"], "terrain.kind"),
        (["--checkpoint", str(velocity), "--family", "cheetah_terrain"], "trained on 'cheetah_velocity'"),
        (["--checkpoint", str(velocity), "--terrains", "gaps:0.5"], "terrains: the checkpoint was trained on"),
        (["--checkpoint", str(velocity), "--pretrained", str(terrain_pretrained)], "pretrained: trained on"),
        (["--checkpoint", str(moved)], r"observation \[qpos_rest:7, root_height:1"),
        (["--checkpoint", str(velocity), "--also", f"sgd={one_step_sizes}", "--steps", "2"],
         r"inner_lrs\['sgd'\]: per-step sizes for 1 inner steps, 2 asked"),
    ]
    for argv, match in cases:
        with pytest.raises(ValueError, match=match):
            cli.main(base + argv)
    assert not out.exists()


def result_with_default_step(policy) -> np.ndarray:
    return compare({"init": policy}, TASKS, "cheetah", CONFIG).returns["init"]


def test_learned_step_sizes_are_the_ones_used(policies) -> None:
    policy = policies["init"]
    zero = {name: torch.zeros_like(p) for name, p in policy.named_parameters()}
    frozen = compare({"meta_sgd": policy}, TASKS, "cheetah", CONFIG, inner_lrs={"meta_sgd": zero})
    sampler = Sampler("cheetah", CONFIG.horizon, num_threads=1)
    unadapted = sampler.sample(policy, TASKS, CONFIG.episodes_per_task, seed=step_seed(CONFIG.seeds[0], 1))
    sampler.close()
    # Zero step sizes leave the policy as it was: step 1 rolls out the initialisation itself (the
    # per-task parameter path of the sampler rounds differently in the last float32 bits).
    expected = [float(e.total_returns().mean()) for e in unadapted]
    np.testing.assert_allclose(frozen.returns["meta_sgd"][0, :, 1], expected, rtol=1e-5, atol=1e-4)
    assert np.abs(frozen.returns["meta_sgd"][:, :, 1] - result_with_default_step(policy)[:, :, 1]).min() > 1e-3
    with pytest.raises(ValueError, match="inner_lrs"):
        compare({"init": policy}, TASKS, "cheetah", CONFIG, inner_lrs={"other": zero})

    # Per-step sizes: step j adapts with its own entry, so a zero first step leaves step 1 as frozen.
    per_step = {name: torch.stack([z, torch.full_like(z, CONFIG.inner_lr)]) for name, z in zero.items()}
    stepped = compare({"meta_sgd": policy}, TASKS, "cheetah", CONFIG, inner_lrs={"meta_sgd": per_step})
    np.testing.assert_array_equal(stepped.returns["meta_sgd"][:, :, :2], frozen.returns["meta_sgd"][:, :, :2])
    assert np.abs(stepped.returns["meta_sgd"][:, :, 2] - frozen.returns["meta_sgd"][:, :, 2]).min() > 1e-3
    one_step = {name: sizes[:1] for name, sizes in per_step.items()}
    with pytest.raises(ValueError, match=r"inner_lrs\['meta_sgd'\]: per-step sizes for 1 inner steps, 2 asked"):
        compare({"meta_sgd": policy}, TASKS, "cheetah", CONFIG, inner_lrs={"meta_sgd": one_step})
    for name, bad in [("log_std", torch.zeros(2, 2, 2)), ("mean_net.0.bias", None)]:
        # a wrong rank, and the right rank with a wrong trailing shape (a leading axis that broadcasts)
        wrong = torch.zeros(2, *zero[name].shape[:-1], 1) if bad is None else bad
        with pytest.raises(ValueError, match="parameter's shape"):
            compare({"meta_sgd": policy}, TASKS, "cheetah", CONFIG, inner_lrs={"meta_sgd": {**per_step, name: wrong}})


def test_comparing_two_evaluations_pairs_them_task_by_task(load_script) -> None:
    """MAML against the pretrained policy of the same shipped evaluation, through the comparison
    script, gives exactly the evaluation's own paired 'versus' rows; evaluations of other tasks are
    refused with one line."""
    import json
    from pathlib import Path

    compare = load_script("compare_evaluations")
    results_dir = Path(__file__).resolve().parents[2] / "assets" / "results"
    shipped = json.loads((results_dir / "adaptation_cheetah_velocity.json").read_text())
    result = compare.compare(shipped, shipped, "maml", "pretrained")
    versus = {row["step"]: row for row in shipped["versus"] if row["other"] == "pretrained"}
    for row in result["rows"]:
        assert row["return_difference"] == pytest.approx(versus[row["step"]]["mean"])
        assert (row["low"], row["high"]) == pytest.approx((versus[row["step"]]["mean_low"],
                                                           versus[row["step"]]["mean_high"]))
    unadapted = compare.compare(shipped, shipped, "maml", "pretrained", unadapted_b=True)
    before = {row["step"]: row for row in shipped["versus"] if row["other"] == "pretrained"}[0]["mean"]
    gains = {row["step"]: row["mean"] for row in shipped["gains"] if row["method"] == "maml"}
    for row in unadapted["rows"]:  # A at step j minus B before = (A before - B before) + A's gain at j
        assert row["return_difference"] == pytest.approx(before + gains.get(row["step"], 0.0))
    same = compare.compare(shipped, shipped, "maml", "maml")
    assert all(row["return_difference"] == 0 and not row["distinguishable"] for row in same["rows"])
    check = json.loads((results_dir / "adaptation_cheetah_velocity_check.json").read_text())
    with pytest.raises(ValueError, match="task_seed: the evaluations differ"):
        compare.compare(shipped, check, "maml", "maml")
