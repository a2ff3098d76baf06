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
