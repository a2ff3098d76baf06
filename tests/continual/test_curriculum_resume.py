"""A curriculum killed inside a stage resumes from its newest mid-stage checkpoint and ends exactly
as the uninterrupted run: same policy, curves, matrix, metrics rows and TensorBoard scalars, one
event file per TensorBoard folder."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
from test_curriculum import ROOT, TINY

from agents.continual.curriculum import CurriculumConfig
from agents.continual.loop import Curriculum
from agents.continual.sb3 import EWCPPO
from agents.runs.checkpoint import load_checkpoint
from agents.runs.config import config_from_dict
from agents.runs.rundir import latest_checkpoint, prepare_run_dir
from agents.runs.tensorboard import EVENT_FILE_NAME, EventFile

# Two stages of four rollouts (2 envs x 32 steps); a checkpoint before every rollout but a stage's first.
PAUSABLE = {**TINY, "video": False, "steps_per_stage": 256, "checkpoint_every": 64}


def scalars(run: Path) -> dict[str, list[tuple[int, str, float]]]:
    """Every TensorBoard folder's (step, tag, value) in file order, wall-clock tags (time/*) left out."""
    found = {}
    for folder in sorted(p for p in (run / "tb").iterdir() if p.is_dir()):
        files = list(folder.iterdir())
        assert [f.name for f in files] == [EVENT_FILE_NAME], f"one event file in {folder}"
        found[folder.name] = [(event.step, value.tag, float(value.tensor.float_val[0]))
                              for event in EventFileLoader(str(files[0])).Load() for value in event.summary.value
                              if not value.tag.startswith("time/")]
    return found


def rows(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics/stages.jsonl").read_text().splitlines()]


@pytest.mark.expensive
def test_a_run_killed_inside_a_stage_resumes_to_the_uninterrupted_result(tmp_path: Path, monkeypatch) -> None:
    config = config_from_dict(CurriculumConfig, PAUSABLE)
    full = Curriculum(config, prepare_run_dir(tmp_path / "full", config=PAUSABLE), progress=False)
    full_state = full.run_all()

    update, killed_at = EWCPPO.train, []

    def killed_in_the_second_update_of_stage_one(self: EWCPPO) -> None:
        if self.num_timesteps == 256 + 2 * 64:
            killed_at.append(self.num_timesteps)
            raise KeyboardInterrupt("killed mid-stage")
        update(self)

    monkeypatch.setattr(EWCPPO, "train", killed_in_the_second_update_of_stage_one)
    with pytest.raises(KeyboardInterrupt):
        Curriculum(config, prepare_run_dir(tmp_path / "cut", config=PAUSABLE), progress=False).run_all()
    monkeypatch.setattr(EWCPPO, "train", update)
    newest = load_checkpoint(latest_checkpoint(tmp_path / "cut"))
    paused = newest.extra_state["paused_stage"]
    assert paused["progress"]["stage"] == 1
    lost = killed_at[0] - paused["training"]["num_timesteps"]
    assert 0 < lost <= PAUSABLE["checkpoint_every"], "a kill loses at most checkpoint_every env steps"

    resumed = Curriculum(config, prepare_run_dir(tmp_path / "cut", resume=True, config=PAUSABLE), progress=False)
    state = resumed.run_all()
    for name, value in full.policy.state_dict().items():
        assert torch.equal(value, resumed.policy.state_dict()[name]), name
    assert state.curves == full_state.curves and state.matrix == full_state.matrix
    assert state.held_out == full_state.held_out and state.history == full_state.history
    assert rows(tmp_path / "cut") == rows(tmp_path / "full")
    assert scalars(tmp_path / "cut") == scalars(tmp_path / "full"), "TensorBoard continues, no step twice"


@pytest.mark.expensive
def test_a_sigkilled_run_resumes_from_the_script(tmp_path: Path) -> None:
    """The whole path a user takes: the script killed with SIGKILL (nothing flushed, no cleanup)
    once a mid-stage checkpoint is on disk, then `--resume`."""
    long = {**PAUSABLE, "steps_per_stage": 2048, "checkpoint_every": 128}
    config = tmp_path / "curriculum.yaml"
    config.write_text(yaml.safe_dump(long))

    def script(run: Path, *flags: str) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, str(ROOT / "scripts" / "run_curriculum.py"), "--config", str(config),
                                 "--run", str(run), "--no-progress", *flags], cwd=ROOT, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    victim = script(tmp_path / "cut")
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and victim.poll() is None:
        newest = latest_checkpoint(tmp_path / "cut")
        if newest is not None and "in training" in load_checkpoint(newest).metadata["label"]:
            os.kill(victim.pid, signal.SIGKILL)
            break
        time.sleep(0.05)
    victim.communicate(timeout=60)
    assert victim.returncode == -signal.SIGKILL, "killed inside a stage"

    printed = {}
    for run, flags in ((tmp_path / "cut", ("--resume",)), (tmp_path / "full", ())):
        process = script(run, *flags)
        printed[run.name], err = process.communicate(timeout=300)
        assert process.returncode == 0, err[-2000:]
    assert "resumed stage" in printed["cut"]
    cut, full = (json.loads((tmp_path / r / "summary.json").read_text()) for r in ("cut", "full"))
    for key in ("metrics", "labels", "matrix", "matrix_normalised"):
        assert cut[key] == full[key], key
    assert rows(tmp_path / "cut") == rows(tmp_path / "full")
    assert scalars(tmp_path / "cut") == scalars(tmp_path / "full")


def test_an_event_file_cut_back_to_a_checkpoint_continues_from_there(tmp_path: Path) -> None:
    events = EventFile(tmp_path)
    events.add_scalar("loss", 1.0, 1)
    saved = events.size()
    events.add_scalar("loss", 2.0, 2)  # written after the checkpoint: lost work
    events.close()
    again = EventFile(tmp_path, resume_size=saved)
    again.add_scalar("loss", 3.0, 2)
    again.close()
    found = [(e.step, float(v.tensor.float_val[0])) for e in EventFileLoader(str(again.path)).Load()
             for v in e.summary.value]
    assert found == [(1, 1.0), (2, 3.0)]
    fresh = EventFile(tmp_path)  # a stage started afresh replaces the file
    fresh.close()
    assert [e.summary.value for e in EventFileLoader(str(fresh.path)).Load()] == [[]]
