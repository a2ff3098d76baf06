"""Rendering a checkpoint's policy: the video decodes with the expected frames and size."""

import subprocess
import sys
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import torch

from agents.policy import GaussianMLPPolicy
from agents.runs.checkpoint import save_checkpoint
from agents.runs.video import policy_actor

ROOT = Path(__file__).resolve().parents[2]


def test_render_rollout_before_and_after_adaptation(tmp_path: Path) -> None:
    torch.manual_seed(0)
    checkpoint = tmp_path / "tiny.pt"
    save_checkpoint(checkpoint, policy=GaussianMLPPolicy(17, 6, (8,)), robot="cheetah")
    out = tmp_path / "rollout.mp4"
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts/render_rollout.py"), "--checkpoint", str(checkpoint), "--terrains",
         "flat:0", "stairs_up:0.5", "--adapt-steps", "1", "--adapt-episodes", "2", "--inner-lr", "2.0",
         "--steps", "15", "--out", str(out)],
        capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    video = iio.imread(out)
    assert video.shape == (15, 2 * 240, 2 * 320, 3), "2 terrains x (before, after), 15 frames of 320x240"
    assert video[:, :240].std() > 5.0
    top, bottom = video[:, :240].astype(int), video[:, 240:].astype(int)
    assert np.abs(top - bottom).mean() > 1.0, "the bottom row shows the adapted policy, not the loaded one"


def test_render_rollout_rejects_bad_input(tmp_path: Path) -> None:
    checkpoint = tmp_path / "quadruped.pt"
    save_checkpoint(checkpoint, policy=GaussianMLPPolicy(29, 8, (8,)), robot="quadruped")
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts/render_rollout.py"), "--checkpoint", str(checkpoint),
         "--out", str(tmp_path / "x.mp4")], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert result.returncode != 0 and "quadruped" in result.stderr
    assert not (tmp_path / "x.mp4").exists()


def test_policy_actor_uses_the_given_parameters() -> None:
    policy = GaussianMLPPolicy(4, 2, (8,))
    shifted = {name: p.detach() + 1.0 for name, p in policy.named_parameters()}
    obs = np.ones(4)
    assert not np.allclose(policy_actor(policy)(obs), policy_actor(policy, shifted)(obs))
