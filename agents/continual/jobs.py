"""A curriculum run as one job of a sweep, here or on Ray (`agents.runs.ray_backend.run_jobs`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agents.continual.curriculum import CurriculumConfig
from agents.continual.loop import Curriculum
from agents.runs.config import config_from_dict
from agents.runs.ray_backend import prepare_job_run_dir


@dataclass(frozen=True)
class CurriculumJob:
    """One curriculum of a sweep."""

    name: str  # its run directory under `out`, e.g. "seed0/ewc_100"
    config: dict[str, Any]  # the curriculum config, plain values
    out: str  # absolute folder of the sweep's run directories, on the machine that runs the job
    sweep_id: str  # this sweep's id: a retried job resumes its own run
    reuse: bool = False  # resume (or just read back) a run of the same config from an earlier sweep

    def describe(self) -> str:
        """The job's name, for progress lines."""
        return self.name


def run_curriculum_job(job: CurriculumJob) -> dict[str, Any]:
    """Run (or resume) the job's curriculum in its run directory; its final state as plain values."""
    config = config_from_dict(CurriculumConfig, job.config)
    run_dir = prepare_job_run_dir(Path(job.out) / job.name, job.config, job.sweep_id, job.reuse)
    print(f"== {job.name}", flush=True)
    return Curriculum(config, run_dir, progress=False).run_all().to_dict()
