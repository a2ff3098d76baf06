"""Every shipped checkpoint says how it was made and what it measured, and fits today's envs."""

from __future__ import annotations

from pathlib import Path

import pytest

from agents.runs.checkpoint import load_checkpoint
from agents.runs.layout import check_layout

SHIPPED = sorted((Path(__file__).resolve().parents[2] / "assets" / "checkpoints").glob("*.pt"))


def test_checkpoints_are_shipped() -> None:
    assert {path.name for path in SHIPPED} >= {"maml_cheetah_velocity.pt", "maml_cheetah_terrain.pt",
                                               "pretrained_cheetah_velocity.pt", "pretrained_cheetah_terrain.pt"}


@pytest.mark.parametrize("path", SHIPPED, ids=[path.name for path in SHIPPED])
def test_a_shipped_checkpoint_records_its_provenance_and_figures(path: Path) -> None:
    checkpoint = load_checkpoint(path)
    metadata = checkpoint.metadata
    assert metadata["kind"] in {"maml", "pretrained", "context"} and metadata["family"] == metadata["config"]["family"]
    assert len(metadata["provenance"]["git_commit"]) >= 40 and metadata["provenance"]["torch"]
    assert metadata["budget"]["wall_time_s"] > 0 and metadata["budget"]["env_steps"] > 0
    evaluation = metadata["evaluation"]
    method = evaluation["method"]
    assert method in evaluation["methods"] and evaluation["metadata"]["family"] == metadata["family"]
    steps = evaluation["config"]["steps"]
    mine = [row for row in evaluation["summary"] if row["method"] == method]
    assert [row["step"] for row in mine] == list(range(steps + 1))
    assert all(row["mean_low"] <= row["mean"] <= row["mean_high"] for row in mine)
    assert len([row for row in evaluation["gains"] if row["method"] == method]) == steps
    assert evaluation["tasks_per_seed"] * len(evaluation["config"]["seeds"]) >= 40


@pytest.mark.parametrize("path", SHIPPED, ids=[path.name for path in SHIPPED])
def test_a_shipped_checkpoint_fits_todays_observation(path: Path) -> None:
    checkpoint = load_checkpoint(path)
    height_scan = check_layout(checkpoint, path.name)  # raises naming the mismatch
    # (a context adapter's config has no height_scan of its own: it takes its teacher's)
    assert height_scan == checkpoint.metadata["config"].get("height_scan", height_scan)


def test_shipping_checks_the_evaluation_and_keeps_everything(tmp_path: Path, monkeypatch, load_script) -> None:
    import json
    import sys

    import torch

    from agents.meta.evaluation import random_init
    from agents.runs.checkpoint import policy_sha256, save_checkpoint
    from agents.runs.layout import observation_layout

    policy = random_init(17, 6, (8,), seed=1)
    lrs = {name: torch.full_like(p, 0.3) for name, p in policy.named_parameters()}
    metadata = {"kind": "maml", "family": "cheetah_velocity", "config": {"family": "cheetah_velocity"},
                "provenance": {"git_commit": "x" * 40}, "observation": observation_layout("cheetah")}
    source = save_checkpoint(tmp_path / "trained.pt", policy=policy, robot="cheetah", iteration=2,
                             extra_state={"inner_lrs": lrs}, metadata=metadata)
    metrics = tmp_path / "run" / "metrics"
    metrics.mkdir(parents=True)
    (metrics / "meta_train.jsonl").write_text("".join(
        json.dumps({"step": k, "env_steps": 100, "time_iteration": 1.5}) + "\n" for k in (1, 2, 3)))
    evaluation = {"config": {"steps": 1}, "intervals": "", "methods": ["maml"], "tasks_per_seed": 1, "summary": [],
                  "gains": [], "versus": [], "metadata": {"policy_sha256": {"maml": policy_sha256(policy)},
                                                          "family": "cheetah_velocity"}}
    (tmp_path / "eval.json").write_text(json.dumps(evaluation))
    ship = load_script("ship_checkpoint")
    out = tmp_path / "shipped.pt"
    monkeypatch.setattr(sys, "argv", ["ship", "--checkpoint", str(source), "--evaluation", str(tmp_path / "eval.json"),
                                      "--out", str(out), "--run", str(tmp_path / "run")])
    ship.main()
    shipped = load_checkpoint(out)
    assert torch.equal(shipped.extra_state["inner_lrs"]["log_std"], lrs["log_std"])  # Meta-SGD sizes kept
    assert shipped.metadata["budget"]["env_steps"] == 200  # iterations up to the checkpoint's only
    assert shipped.metadata["evaluation"]["method"] == "maml"
    evaluation["metadata"]["policy_sha256"] = {"maml": "0" * 64}
    (tmp_path / "eval.json").write_text(json.dumps(evaluation))
    with pytest.raises(ValueError, match="did not measure this checkpoint"):
        ship.main()
