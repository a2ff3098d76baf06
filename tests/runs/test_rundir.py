"""Run directories and step checkpoints, metrics logs, YAML configs."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from agents.policy import GaussianMLPPolicy
from agents.runs.checkpoint import load_checkpoint
from agents.runs.rundir import (
    RUN_SUBDIRS,
    MetricsLog,
    RunDir,
    latest_checkpoint,
    load_yaml,
    prepare_run_dir,
    save_step_checkpoint,
)


def _policy(seed: int = 0) -> GaussianMLPPolicy:
    """Any small policy: these tests are about files, not weights."""
    torch.manual_seed(seed)
    return GaussianMLPPolicy(5, 2, hidden_sizes=(8, 8))


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# ----------------------------------------------------------------------------------------------
# Run directories and step checkpoints
# ----------------------------------------------------------------------------------------------

CONFIG = {"robot": "cheetah", "seed": 3, "ppo": {"lr": 3e-4, "epochs": 10}, "stages": ("flat", "hills")}


def test_fresh_run_dir_has_subfolders_and_config(tmp_path: Path) -> None:
    run = prepare_run_dir(tmp_path / "runs" / "a", resume=False, force=False, config=CONFIG)
    assert isinstance(run, RunDir) and not run.resumed
    for sub in RUN_SUBDIRS:
        assert (run.root / sub).is_dir()
    assert run / "metrics" == run.metrics and Path(os.fspath(run)) == run.root
    assert run.config() == {**CONFIG, "stages": ["flat", "hills"]}
    assert yaml.safe_load(run.config_path.read_text()) == run.config()


def test_existing_run_is_refused_untouched(tmp_path: Path) -> None:
    root = tmp_path / "a"
    run = prepare_run_dir(root, config=CONFIG)
    (run.metrics / "train.jsonl").write_text('{"step": 1}\n')
    before = _files(root)
    with pytest.raises(ValueError, match=r"pass --resume to continue it or --force"):
        prepare_run_dir(root, config={**CONFIG, "seed": 4})
    assert _files(root) == before
    with pytest.raises(ValueError, match="resume and force"):
        prepare_run_dir(root, resume=True, force=True, config=CONFIG)
    with pytest.raises(ValueError, match="config: holds a value YAML cannot store"):
        prepare_run_dir(tmp_path / "b", config={"out": Path("x")})
    assert not (tmp_path / "b").exists() and _files(root) == before


def test_force_moves_the_old_run_aside(tmp_path: Path) -> None:
    root = tmp_path / "a"
    run = prepare_run_dir(root, config=CONFIG)
    (run.metrics / "train.jsonl").write_text('{"step": 1}\n')
    before = _files(root)
    prepare_run_dir(root, force=True, config={**CONFIG, "seed": 4})
    prepare_run_dir(root, force=True, config={**CONFIG, "seed": 5})  # twice within one second
    aside = sorted(tmp_path.glob("a.old-*"))
    assert len(aside) == 2 and _files(aside[0]) == before
    assert load_yaml(root / "config.yaml")["seed"] == 5
    assert not (root / "metrics" / "train.jsonl").exists()


def test_resume_checks_the_config(tmp_path: Path) -> None:
    root = tmp_path / "a"
    prepare_run_dir(root, config={**CONFIG, "device": "cpu", "resume": False})
    before = _files(root)
    run = prepare_run_dir(root, resume=True, config={**CONFIG, "device": "cuda", "resume": True})
    assert run.resumed and _files(root) == before
    changed = {**CONFIG, "ppo": {"lr": 1e-3, "epochs": 10, "clip": 0.2}, "seed": 3}
    with pytest.raises(ValueError, match=r"config differs .* in ppo\.lr, ppo\.clip;"):
        prepare_run_dir(root, resume=True, config=changed)
    with pytest.raises(ValueError, match=r"in device"):
        prepare_run_dir(root, resume=True, config={**CONFIG, "device": "cuda"}, changeable=())
    assert _files(root) == before
    # A field added to the code after the run started is no difference at its default value.
    newer = {**CONFIG, "device": "cpu", "estimator": "score"}
    assert prepare_run_dir(root, resume=True, config=newer, defaults={"estimator": "score"}).resumed
    with pytest.raises(ValueError, match=r"in estimator"):
        prepare_run_dir(root, resume=True, config={**newer, "estimator": "dice"}, defaults={"estimator": "score"})
    with pytest.raises(ValueError, match=r"in estimator"):
        prepare_run_dir(root, resume=True, config=newer)
    # ... also inside a nested section.
    nested = {**newer, "ppo": {**CONFIG["ppo"], "ent_coef": 0.0}}
    defaults = {"estimator": "score", "ppo": {"lr": 3e-4, "ent_coef": 0.0}}
    assert prepare_run_dir(root, resume=True, config=nested, defaults=defaults).resumed
    with pytest.raises(ValueError, match=r"in ppo\.ent_coef"):
        prepare_run_dir(root, resume=True, config={**nested, "ppo": {**CONFIG["ppo"], "ent_coef": 0.1}},
                        defaults=defaults)
    assert _files(root) == before
    # A mistyped or missing run directory is an error, and nothing is created.
    with pytest.raises(ValueError, match="holds no run to resume"):
        prepare_run_dir(tmp_path / "new", resume=True, config=CONFIG)
    assert not (tmp_path / "new").exists()


def test_step_checkpoints_keep_the_last_k_and_latest(tmp_path: Path) -> None:
    run = prepare_run_dir(tmp_path / "a", config=CONFIG)
    assert latest_checkpoint(run) is None
    for step in (1, 2, 5, 10, 11):
        save_step_checkpoint(run, step, keep=3, policy=_policy(seed=step), robot="cheetah")
    names = sorted(p.name for p in run.checkpoints.iterdir())
    assert names == ["latest.pt", "step-000005.pt", "step-000010.pt", "step-000011.pt"]
    assert latest_checkpoint(run) == run.checkpoints / "step-000011.pt"
    assert latest_checkpoint(run.root) == latest_checkpoint(str(run.root))
    assert (run.checkpoints / "latest.pt").read_bytes() == (run.checkpoints / "step-000011.pt").read_bytes()
    assert load_checkpoint(latest_checkpoint(run)).iteration == 11
    with pytest.raises(ValueError, match="step 4 is below the newest checkpoint step-000011.pt"):
        save_step_checkpoint(run, 4, policy=_policy(), robot="cheetah")
    save_step_checkpoint(run, 1_000_000, policy=_policy(), robot="cheetah")  # past 6 digits still sorts by number
    assert latest_checkpoint(run).name == "step-1000000.pt"


def test_latest_checkpoint_ignores_temp_files_and_falls_back_to_latest(tmp_path: Path) -> None:
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    (folder / ".step-000099.pt.abc.tmp").write_bytes(b"partial")
    assert latest_checkpoint(tmp_path) is None
    (folder / "latest.pt").write_bytes(b"x")
    assert latest_checkpoint(tmp_path) == folder / "latest.pt"


# ----------------------------------------------------------------------------------------------
# Metrics
# ----------------------------------------------------------------------------------------------


def _csv_rows(path: Path) -> list[list[str]]:
    return [line.split(",") for line in path.read_text().splitlines()]


def test_metrics_jsonl_and_csv_with_all_columns(tmp_path: Path) -> None:
    log = MetricsLog(tmp_path / "metrics", "train")
    log.append({"step": 1, "return": 1.5})
    log.append({"step": 2, "return": np.float32(2.5), "kl": torch.tensor(0.01)})
    log.append({"step": 3, "eval": None})
    assert log.read() == [{"step": 1, "return": 1.5}, {"step": 2, "return": 2.5, "kl": pytest.approx(0.01)},
                          {"step": 3, "eval": None}]
    rows = _csv_rows(tmp_path / "metrics" / "train.csv")
    assert rows[0] == ["step", "return", "kl", "eval"]
    assert rows[1] == ["1", "1.5", "", ""] and rows[3] == ["3", "", "", ""]
    with pytest.raises(ValueError, match=r"record\['bad'\]"):
        log.append({"step": 4, "bad": object()})
    assert len(log.read()) == 3


def test_metrics_resume_truncates_to_the_resumed_step(tmp_path: Path) -> None:
    log = MetricsLog(tmp_path, "train")
    for step in range(1, 8):
        log.append({"step": step, "return": float(step)})
    # The run checkpointed at step 5, logged 6 and 7, then died mid-line.
    with (tmp_path / "train.jsonl").open("a") as handle:
        handle.write('{"step": 8, "ret')
    resumed = MetricsLog(tmp_path, "train", resume_step=5)
    assert [r["step"] for r in resumed.read()] == [1, 2, 3, 4, 5]
    for step in (6, 7, 8):
        resumed.append({"step": step, "return": float(step), "stage": 1})
    steps = [r["step"] for r in resumed.read()]
    assert steps == list(range(1, 9))
    rows = _csv_rows(tmp_path / "train.csv")
    assert rows[0] == ["step", "return", "stage"] and [int(r[0]) for r in rows[1:]] == steps
    assert [json.loads(line)["step"] for line in (tmp_path / "train.jsonl").read_text().splitlines()] == steps


def test_metrics_repairs_a_torn_line_without_resume_step(tmp_path: Path) -> None:
    (tmp_path / "m.jsonl").write_text('{"step": 1}\n{"st')
    log = MetricsLog(tmp_path, "m")
    log.append({"step": 2})
    assert log.read() == [{"step": 1}, {"step": 2}]


def test_metrics_appends_from_threads_stay_whole_lines(tmp_path: Path) -> None:
    log = MetricsLog(tmp_path, "m")
    threads = [threading.Thread(target=lambda i=i: log.append({"step": i})) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(r["step"] for r in log.read()) == [0, 1, 2, 3]


# ----------------------------------------------------------------------------------------------
# YAML
# ----------------------------------------------------------------------------------------------


def test_load_yaml(tmp_path: Path) -> None:
    (tmp_path / "ok.yaml").write_text("robot: cheetah\nppo: {lr: 0.001}\n")
    assert load_yaml(tmp_path / "ok.yaml") == {"robot": "cheetah", "ppo": {"lr": 0.001}}
    with pytest.raises(ValueError, match=r"config: no file at .*missing\.yaml"):
        load_yaml(tmp_path / "missing.yaml")
    (tmp_path / "list.yaml").write_text("- a\n- b\n")
    with pytest.raises(ValueError, match="top level must be a mapping.*got list"):
        load_yaml(tmp_path / "list.yaml")
    (tmp_path / "empty.yaml").write_text("")
    with pytest.raises(ValueError, match="got an empty file"):
        load_yaml(tmp_path / "empty.yaml")
    (tmp_path / "bad.yaml").write_text("a: [1, 2\n")
    with pytest.raises(ValueError, match="not valid YAML"):
        load_yaml(tmp_path / "bad.yaml")
    (tmp_path / "unsafe.yaml").write_text("a: !!python/object/apply:os.system ['true']\n")
    with pytest.raises(ValueError, match="not valid YAML"):
        load_yaml(tmp_path / "unsafe.yaml")
