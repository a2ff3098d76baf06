"""A plain (non-editable) install of the wheel works: envs, shipped checkpoints and configs."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

CHECK = """
import pathlib, sys
import gymnasium as gym
import envs
from envs.robots import PROJECT_ASSETS
from agents.runs.checkpoint import load_checkpoint
site = pathlib.Path(sys.argv[1])
assert pathlib.Path(envs.__file__).is_relative_to(site), envs.__file__
assert PROJECT_ASSETS.is_relative_to(site), PROJECT_ASSETS
env = gym.make("MetaLoco/Quadruped-v0")
env.reset(seed=0)
env.step(env.action_space.sample())
load_checkpoint(PROJECT_ASSETS / "checkpoints" / "maml_cheetah_velocity.pt", expected_robot="cheetah")
assert (PROJECT_ASSETS / "configs" / "curriculum_cheetah.yaml").is_file()
print("installed ok")
"""


@pytest.mark.expensive
def test_the_wheel_installs_envs_checkpoints_and_configs(tmp_path: Path) -> None:
    source = tmp_path / "source"  # a copy: building in the checkout would leave build/ behind
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    for name in ("envs", "agents", "assets"):
        shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "wheel", str(source), "--no-deps", "--no-build-isolation", "-w", str(tmp_path / "wheels")],
                   check=True, timeout=300)
    wheel = next((tmp_path / "wheels").glob("metaloco-*.whl"))
    site = tmp_path / "site"
    subprocess.run([*pip, "install", "--no-deps", "--target", str(site), str(wheel)], check=True, timeout=300)
    result = subprocess.run([sys.executable, "-c", CHECK, str(site)], cwd=tmp_path, capture_output=True, text=True,
                            env={**os.environ, "PYTHONPATH": str(site)}, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "installed ok" in result.stdout


def test_every_package_is_listed_for_the_wheel() -> None:
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(path.parent.relative_to(ROOT).parts) for top in ("envs", "agents")
             for path in (ROOT / top).rglob("__init__.py")}
    assert found | {"metaloco_assets"} == listed
