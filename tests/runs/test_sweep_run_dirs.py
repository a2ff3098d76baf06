"""Which run directory a sweep job resumes: its own earlier attempt (a retry), or with reuse any run
of the same config; anything else is moved aside, never deleted."""

from pathlib import Path

from agents.runs.ray_backend import new_sweep_id, prepare_job_run_dir

CONFIG = {"seed": 0}


def test_a_retry_resumes_its_own_run_and_another_sweep_starts_afresh(tmp_path: Path) -> None:
    sweep = new_sweep_id()
    first = prepare_job_run_dir(tmp_path / "run", CONFIG, sweep)
    assert not first.resumed
    (first.checkpoints / "marker").write_text("progress")
    assert prepare_job_run_dir(tmp_path / "run", CONFIG, sweep).resumed, "the same sweep's retry resumes"
    assert (tmp_path / "run/checkpoints/marker").is_file()

    later = prepare_job_run_dir(tmp_path / "run", CONFIG, new_sweep_id())
    assert not later.resumed
    moved = list(tmp_path.glob("run.old-*"))
    assert len(moved) == 1 and (moved[0] / "checkpoints/marker").is_file(), "the old run is kept aside"


def test_reuse_resumes_a_run_there_and_starts_one_where_there_is_none(tmp_path: Path) -> None:
    assert not prepare_job_run_dir(tmp_path / "run", CONFIG, new_sweep_id(), reuse=True).resumed
    assert prepare_job_run_dir(tmp_path / "run", CONFIG, new_sweep_id(), reuse=True).resumed
