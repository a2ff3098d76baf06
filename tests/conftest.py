"""Shared test setup: headless rendering, and one torch thread for every test."""

import os
from collections.abc import Iterator

os.environ.setdefault("MUJOCO_GL", "egl")

import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def one_torch_thread() -> Iterator[None]:
    # Tiny MLPs: torch's thread pool only adds synchronisation, which is very slow on a busy 2-core machine.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def load_script():
    """`load_script("name")`: the module of scripts/name.py, loaded from its file (scripts/ is no package)."""
    import importlib.util
    from pathlib import Path

    scripts = Path(__file__).resolve().parents[1] / "scripts"

    def load(name: str):
        spec = importlib.util.spec_from_file_location(name, scripts / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    return load
