"""Independent jobs (the runs of a sweep) here, one after another, or as Ray tasks.

Ray is an optional extra (`pip install -e ".[ray]"`); nothing imports it until a backend asks for
it. `connect` starts an embedded local Ray, or joins a cluster (`ray start --head` on one machine,
`ray start --address HEAD:6379` on the others). Each job returns its result to the driver, so no
shared filesystem is needed. A job whose worker dies (a killed process, a lost node) is retried;
a job that writes a run directory claims it with `prepare_job_run_dir`, so its retry resumes from
the run's last checkpoint instead of starting afresh.
"""

from __future__ import annotations

import socket
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from agents.runs.atomic import PathLike, atomic_write_text
from agents.runs.rundir import CONFIG_FILE, RunDir, prepare_run_dir

BACKENDS = ("local", "ray")
RAY_MISSING = 'the ray backend needs Ray, an optional extra: pip install -e ".[ray]"'
CLAIM_FILE = "sweep_id.txt"
Job = TypeVar("Job")
Result = TypeVar("Result")


def require_ray() -> Any:
    """The `ray` module, or a ValueError saying how to install it."""
    try:
        import ray
    except ImportError as error:
        raise ValueError(RAY_MISSING) from error
    return ray


def check_address(address: str, timeout: float = 3.0) -> None:
    """A ValueError within `timeout` seconds unless something accepts connections at `address`
    ("host:port", or "ray://host:port" for Ray Client); Ray itself would retry for minutes."""
    host_port = address.removeprefix("ray://")
    host, _, port = host_port.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"ray_address must be HOST:PORT (e.g. 10.0.0.5:6379) or 'auto', got {address!r}")
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as error:
        raise ValueError(f"ray_address: nothing answers at {address} ({error.strerror or error}); start the "
                         f"cluster's head there with `ray start --head --port {port}`") from error


def check_backend(backend: str, address: str | None) -> None:
    """A script's `--backend` and `--ray-address`, checked before any work: Ray installed, a cluster
    answering at the address (`check_address`), an address only with the ray backend."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {list(BACKENDS)}, got {backend!r}")
    if backend == "local":
        if address is not None:
            raise ValueError("ray_address: only with --backend ray")
        return
    require_ray()
    if address not in (None, "auto"):
        check_address(address)


def connect(address: str | None = None, num_cpus: int | None = None) -> None:
    """Start an embedded local Ray (`address` None; `num_cpus` caps it) or join the cluster at
    `address` ("auto": the one `ray start` began on this machine). Does nothing if connected."""
    ray = require_ray()
    if ray.is_initialized():
        return
    if address not in (None, "auto"):
        check_address(address)
    ray.init(address=address, num_cpus=num_cpus if address is None else None, include_dashboard=False,
             configure_logging=False, log_to_driver=True)


def new_sweep_id() -> str:
    """A fresh id naming one sweep (what `prepare_job_run_dir` matches a retried job against)."""
    return uuid.uuid4().hex


def prepare_job_run_dir(path: PathLike, config: dict, sweep_id: str, reuse: bool = False) -> RunDir:
    """The run directory of one sweep job (`prepare_run_dir`), resumed when this sweep claimed it
    before (the job is a retry after its worker died) or, with `reuse`, when a run of the same config
    is there; otherwise a run there is moved aside and the job starts afresh. Claims it for `sweep_id`."""
    path = Path(path)
    claim = path / CLAIM_FILE
    ours = claim.is_file() and claim.read_text(encoding="utf-8").strip() == sweep_id
    resume = (ours or reuse) and (path / CONFIG_FILE).is_file()
    run = prepare_run_dir(path, resume=resume, force=not resume, config=config)
    atomic_write_text(claim, sweep_id + "\n")
    return run


def run_jobs(function: Callable[[Job], Result], jobs: Sequence[Job], backend: str = "local", *,
             address: str | None = None, num_cpus: int | None = None, max_retries: int = 3,
             describe: Callable[[Job], str] = str,
             on_result: Callable[[Job, Result], None] | None = None) -> list[Result]:
    """`[function(job) for job in jobs]`, here in turn (`local`) or as Ray tasks of one CPU each
    (`ray`; `address`, `num_cpus` as `connect`), retried up to `max_retries` times when their
    worker dies. Results come back in the jobs' order; a job's own error is raised here as it was.
    `on_result(job, result)` is called as each job finishes (e.g. to save its result at once, so an
    interrupted sweep keeps what finished)."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {list(BACKENDS)}, got {backend!r}")
    if backend == "local":
        results = []
        for job in jobs:
            results.append(function(job))
            if on_result is not None:
                on_result(job, results[-1])
        return results
    ray = require_ray()
    connect(address, num_cpus)
    remote = ray.remote(num_cpus=1, max_retries=max_retries)(function)
    refs = [remote.remote(job) for job in jobs]
    job_of = dict(zip(refs, jobs, strict=True))
    pending, finished = list(refs), 0
    try:
        while pending:
            ready, pending = ray.wait(pending, num_returns=1)
            finished += 1
            print(f"[ray] {finished}/{len(refs)} done: {describe(job_of[ready[0]])}", flush=True)
            if on_result is not None:
                on_result(job_of[ready[0]], ray.get(ready[0]))
        return ray.get(refs)
    except ray.exceptions.RayTaskError as error:
        raise error.as_instanceof_cause() from None
