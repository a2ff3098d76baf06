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
    assert metadata["kind"] in {"maml", "pretrained"} and metadata["family"] == metadata["config"]["family"]
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
    assert height_scan == checkpoint.metadata["config"]["height_scan"]
