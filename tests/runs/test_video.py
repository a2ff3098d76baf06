"""Rendering a checkpoint's policy: the video decodes with the expected frames and size."""

import subprocess
import sys
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
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


def test_render_rollout_adapts_with_the_checkpoints_learned_step_sizes(tmp_path: Path, load_script) -> None:
    render = load_script("render_rollout")
    policy = GaussianMLPPolicy(17, 6, (8,))
    per_step = {name: torch.full((1, *p.shape), 0.3) for name, p in policy.named_parameters()}
    learned, plain = tmp_path / "learned.pt", tmp_path / "plain.pt"
    save_checkpoint(learned, policy=policy, robot="cheetah", extra_state={"inner_lrs": per_step})
    save_checkpoint(plain, policy=policy, robot="cheetah")
    sizes = render.adaptation_step_sizes(learned, policy, None, 1)
    assert all(torch.equal(sizes[name], lr) for name, lr in per_step.items())
    assert render.adaptation_step_sizes(learned, policy, 0.5, 2) == 0.5  # --inner-lr wins
    assert render.adaptation_step_sizes(plain, policy, None, 2) == render.DEFAULT_INNER_LR
    too_few = r"--adapt-steps \(the checkpoint's inner_lrs\): per-step sizes for 1 inner steps, 2 asked"
    with pytest.raises(ValueError, match=too_few):
        render.adaptation_step_sizes(learned, policy, None, 2)
