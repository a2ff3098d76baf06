"""Shared fixtures: headless rendering and small helpers for every test file."""

import os

os.environ.setdefault("MUJOCO_GL", "egl")
