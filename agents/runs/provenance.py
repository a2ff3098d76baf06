"""What produced a result: library versions and the code's git commit, for run reports."""

from __future__ import annotations

import importlib.metadata
import platform
import subprocess
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[2]
LIBRARIES = ("numpy", "torch", "mujoco", "gymnasium", "stable-baselines3")


def git_commit(root: Path = PROJECT_ROOT) -> str:
    """The checkout's commit (with "+modified" when tracked files differ), or "unknown" outside git."""
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return commit + ("+modified" if dirty else "")


def provenance() -> dict[str, str]:
    """Python and library versions and the git commit, as strings."""
    versions = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return {**versions, "git_commit": git_commit()}


def training_metadata(kind: str, family: str, config: dict, code: dict, observation: dict, wall_time_s: float,
                      env_steps: int) -> dict:
    """What a trained checkpoint records: how it was made (kind, family, config, and `code`: the
    `provenance()` taken when the process started, since the files may change while it runs), the
    observation it expects (`agents.runs.layout.observation_layout`) and the budget spent so far
    (wall time and env steps, summed over resumes)."""
    return {"kind": kind, "family": family, "config": config, "provenance": code,
            "observation": observation,
            "budget": {"wall_time_s": round(float(wall_time_s), 1), "env_steps": int(env_steps)}}


def spent_budget(metadata: dict | None) -> tuple[float, int]:
    """(wall_time_s, env_steps) recorded in a checkpoint's metadata; zeros when it holds none."""
    budget = (metadata or {}).get("budget", {})
    return float(budget.get("wall_time_s", 0.0)), int(budget.get("env_steps", 0))
