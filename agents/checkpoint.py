"""Atomic files, the one checkpoint format, run directories, metrics logs and YAML configs.

Every file here is written atomically: to a temporary file in the same directory, flushed and
fsynced, then renamed over the target with `os.replace`, so a reader (or a resumed run) sees the
old file or the new one, never half of one. Checkpoints hold only tensors and plain Python values
and are read back with `torch.load(weights_only=True)`; nothing here ever unpickles arbitrary
objects. YAML is read with `yaml.safe_load`.

A run directory looks like::

    runs/<name>/
        config.yaml          the resolved config, written once when the run is created
        checkpoints/         step-000012.pt ... (the last few) and latest.pt
        metrics/             <name>.jsonl and <name>.csv per MetricsLog
        plots/ videos/ tb/
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import os
import random
import re
import threading
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch
import yaml

from agents.policy import GaussianMLPPolicy

FORMAT_KIND = "metaloco-policy"
FORMAT_VERSION = 1
RUN_SUBDIRS = ("checkpoints", "metrics", "plots", "videos", "tb")
CONFIG_FILE = "config.yaml"
# Top-level config keys that may differ between a run and its resumption.
RESUME_CHANGEABLE = frozenset({"resume", "force", "device"})
LATEST_NAME = "latest.pt"
_STEP_FILE = re.compile(r"^step-(\d+)\.pt$")

PathLike = str | os.PathLike


# ----------------------------------------------------------------------------------------------
# Atomic writes
# ----------------------------------------------------------------------------------------------


def _atomic_write(path: PathLike, write: Callable[[IO[bytes]], None]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.tmp")
    # os.open with 0o666 lets the umask decide the final permissions (mkstemp would force 0600).
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    _fsync_dir(path.parent)
    return path


def _fsync_dir(directory: Path) -> None:
    # Makes the rename itself durable on POSIX; not possible (nor needed) on every platform.
    with contextlib.suppress(OSError, AttributeError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write_bytes(path: PathLike, data: bytes) -> Path:
    """Write `data` to `path` atomically (temp file in the same directory, fsync, rename); returns the path."""
    return _atomic_write(path, lambda handle: handle.write(data))


def atomic_write_text(path: PathLike, text: str, encoding: str = "utf-8") -> Path:
    """Write `text` to `path` atomically; returns the path."""
    return atomic_write_bytes(path, text.encode(encoding))


def atomic_torch_save(obj: Any, path: PathLike) -> Path:
    """`torch.save(obj)` to `path` atomically; a failure (e.g. an unpicklable object) leaves the old file."""
    return _atomic_write(path, lambda handle: torch.save(obj, handle))


# ----------------------------------------------------------------------------------------------
# The checkpoint format
# ----------------------------------------------------------------------------------------------


def _plain(value: Any, where: str) -> Any:
    """`value` as tensors and plain Python values only (what weights_only=True loads), or a ValueError at `where`."""
    if value is None or type(value) in (bool, int, float, str):
        return value
    if isinstance(value, torch.Tensor):
        return value.detach()
    if isinstance(value, np.ndarray):
        raise ValueError(f"{where}: numpy arrays do not load with weights_only=True; pass torch.as_tensor(...)")
    if isinstance(value, np.generic):  # np.float64 subclasses float but pickles as a numpy object
        return value.item()
    # Subclasses (IntEnum, StrEnum, ...) pickle as their own class, which weights_only refuses.
    if isinstance(value, str):
        return str.__str__(value)
    for plain in (bool, int, float):
        if isinstance(value, plain):
            return plain(value)
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, Mapping):
        out = {}
        for key, item in value.items():
            if type(key) not in (str, int):
                raise ValueError(f"{where}: keys must be str or int, got {type(key).__name__} {key!r}")
            out[key] = _plain(item, f"{where}[{key!r}]")
        return out
    if isinstance(value, list | tuple):
        items = [_plain(item, f"{where}[{i}]") for i, item in enumerate(value)]
        return items if isinstance(value, list) else tuple(items)
    raise ValueError(
        f"{where}: {type(value).__name__} is not allowed in a checkpoint (tensors, numbers, str, None, "
        "lists, tuples and dicts only)"
    )


def _state(obj: Any, where: str) -> dict | None:
    if obj is None:
        return None
    state = obj.state_dict() if hasattr(obj, "state_dict") else obj
    if not isinstance(state, Mapping):
        raise ValueError(f"{where}: expected an object with state_dict() or a mapping, got {type(obj).__name__}")
    return _plain(state, where)


def _check_count(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 0:
        raise ValueError(f"{name} must be an integer >= 0, got {value!r}")
    return int(value)


def capture_rng_state(np_rng: np.random.Generator | None = None) -> dict[str, Any]:
    """Torch (CPU and CUDA), Python `random` and optionally a numpy Generator's state, as plain values."""
    version, internal, gauss = random.getstate()
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": [version, list(internal), gauss]}
    if torch.cuda.is_available():
        state["torch_cuda"] = torch.cuda.get_rng_state_all()
    if np_rng is not None:
        state["numpy"] = _plain(np_rng.bit_generator.state, "rng['numpy']")
    return state


def restore_rng_state(state: Mapping[str, Any], np_rng: np.random.Generator | None = None) -> None:
    """Restore what `capture_rng_state` captured; `np_rng` (if given) gets the saved numpy state."""
    if "torch" in state:
        torch.set_rng_state(state["torch"].cpu())  # map_location may have moved it
    if "python" in state:
        version, internal, gauss = state["python"]
        random.setstate((version, tuple(internal), gauss))
    if "torch_cuda" in state and torch.cuda.is_available() and len(state["torch_cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([t.cpu() for t in state["torch_cuda"]])
    if np_rng is not None:
        if "numpy" not in state:
            raise ValueError("rng: the checkpoint holds no numpy generator state")
        np_rng.bit_generator.state = state["numpy"]


def _env_id_for(robot: str) -> str:
    from envs import ENV_IDS  # lazy: only the id table is needed, not the simulator

    if robot not in ENV_IDS:
        raise ValueError(f"robot must be one of {sorted(ENV_IDS)} (or pass env_id=), got {robot!r}")
    return ENV_IDS[robot]


def checkpoint_payload(
    *,
    policy: GaussianMLPPolicy,
    robot: str,
    env_id: str | None = None,
    optimizer: Any = None,
    regularizer: Any = None,
    iteration: int = 0,
    stage: int = 0,
    np_rng: np.random.Generator | None = None,
    extra_state: Mapping[str, Any] | None = None,
    metadata: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The checkpoint dict `save_checkpoint` writes (see there); validates everything, writes nothing."""
    if not isinstance(policy, GaussianMLPPolicy):
        raise ValueError(f"policy must be a GaussianMLPPolicy, got {type(policy).__name__}")
    if not isinstance(robot, str) or not robot:
        raise ValueError(f"robot must be a non-empty string, got {robot!r}")
    if env_id is None:
        env_id = _env_id_for(robot)
    elif not isinstance(env_id, str) or not env_id:
        raise ValueError(f"env_id must be a non-empty string, got {env_id!r}")
    return {
        "kind": FORMAT_KIND,
        "format_version": FORMAT_VERSION,
        "robot": robot,
        "env_id": env_id,
        "obs_dim": policy.obs_dim,
        "act_dim": policy.act_dim,
        "policy_config": _plain(policy.config(), "policy.config()"),
        "policy_state": _plain(dict(policy.state_dict()), "policy.state_dict()"),
        "optimizer_state": _state(optimizer, "optimizer"),
        "regularizer_state": _state(regularizer, "regularizer"),
        "iteration": _check_count("iteration", iteration),
        "stage": _check_count("stage", stage),
        "rng": capture_rng_state(np_rng),
        "extra_state": _plain(dict(extra_state or {}), "extra_state"),
        "metadata": _plain(dict(metadata or {}), "metadata"),
    }


def _serialize(payload: dict[str, Any]) -> bytes:
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    return buffer.getvalue()


def save_checkpoint(
    path: PathLike,
    *,
    policy: GaussianMLPPolicy,
    robot: str,
    env_id: str | None = None,
    optimizer: Any = None,
    regularizer: Any = None,
    iteration: int = 0,
    stage: int = 0,
    np_rng: np.random.Generator | None = None,
    extra_state: Mapping[str, Any] | None = None,
    metadata: Mapping[str, Any] | None = None,
) -> Path:
    """Write a MetaLoco policy checkpoint atomically; it loads with `torch.load(weights_only=True)`.

    Args:
        path: destination file (parent folders are created).
        policy: the policy; its config() and state_dict() are saved, obs/act dims with them.
        robot: robot name ("cheetah", "quadruped", ...); checked again on load.
        env_id: gymnasium id; default: the registered id of `robot`.
        optimizer: a torch optimizer (or its state dict) to resume training with.
        regularizer: an `agents.ewc.Regularizer` (or its state dict).
        iteration: iteration counter to resume from.
        stage: curriculum stage counter to resume from.
        np_rng: a numpy Generator whose state is saved next to torch's and Python's RNG states.
        extra_state: anything else to resume with: tensors, numbers, str, lists, dicts.
        metadata: the resolved config, the command line, versions, ... (same value types).

    Raises ValueError naming the field on bad input, before anything is written.
    """
    payload = checkpoint_payload(
        policy=policy, robot=robot, env_id=env_id, optimizer=optimizer, regularizer=regularizer,
        iteration=iteration, stage=stage, np_rng=np_rng, extra_state=extra_state, metadata=metadata,
    )
    return atomic_write_bytes(path, _serialize(payload))


@dataclass
class Checkpoint:
    """A loaded checkpoint: the rebuilt policy and everything saved with it."""

    path: Path
    policy: GaussianMLPPolicy
    robot: str
    env_id: str
    iteration: int
    stage: int
    optimizer_state: dict | None
    regularizer_state: dict | None
    rng_state: dict[str, Any]
    extra_state: dict[str, Any] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION

    @property
    def obs_dim(self) -> int:
        """Observation size of the saved policy."""
        return self.policy.obs_dim

    @property
    def act_dim(self) -> int:
        """Action size of the saved policy."""
        return self.policy.act_dim

    def restore_rng(self, np_rng: np.random.Generator | None = None) -> None:
        """Put torch's and Python's global RNGs (and `np_rng`, if given) back to their saved state."""
        restore_rng_state(self.rng_state, np_rng)


def _load_error(path: Path, err: Exception) -> ValueError:
    for line in str(err).splitlines():
        if "Unsupported global" in line or "Unsupported operand" in line:
            return ValueError(f"checkpoint {path}: not a MetaLoco checkpoint: it holds pickled objects that the safe "
                              f"loader (weights_only=True) refuses ({line.strip()})")
    return ValueError(f"checkpoint {path}: not a MetaLoco checkpoint: torch.load(weights_only=True) cannot read it "
                      f"({type(err).__name__}: {err})")


def load_checkpoint(
    path: PathLike,
    *,
    expected_robot: str | None = None,
    expected_obs_dim: int | None = None,
    expected_act_dim: int | None = None,
    map_location: str | torch.device = "cpu",
) -> Checkpoint:
    """Load a checkpoint written by `save_checkpoint` (weights_only=True) and rebuild its policy.

    Args:
        path: the checkpoint file.
        expected_robot: if given, a checkpoint of another robot is a ValueError naming both.
        expected_obs_dim: if given, the policy's observation size must match.
        expected_act_dim: if given, the policy's action size must match.
        map_location: where tensors are loaded (default CPU).

    Raises ValueError for a missing file, a file that is not a MetaLoco checkpoint (or holds
    anything but tensors and plain values), another format version, robot or dimensions.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"checkpoint: no file at {path}")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # any unreadable file, whatever torch's reason, is the same bad input
        raise _load_error(path, err) from err
    if not isinstance(payload, dict) or payload.get("kind") != FORMAT_KIND:
        kind = payload.get("kind") if isinstance(payload, dict) else type(payload).__name__
        raise ValueError(f"checkpoint {path}: not a MetaLoco checkpoint (kind {kind!r}, expected {FORMAT_KIND!r})")
    version = payload.get("format_version")
    if version != FORMAT_VERSION:
        raise ValueError(f"checkpoint {path}: format_version is {version!r}, this MetaLoco reads {FORMAT_VERSION}")
    robot = payload.get("robot")
    if expected_robot is not None and robot != expected_robot:
        raise ValueError(f"checkpoint is for robot {robot!r}, expected {expected_robot!r} ({path})")
    for name, expected in (("obs_dim", expected_obs_dim), ("act_dim", expected_act_dim)):
        if expected is not None and payload.get(name) != expected:
            raise ValueError(f"checkpoint {name} is {payload.get(name)!r}, expected {expected!r} ({path})")
    try:
        with torch.random.fork_rng(devices=[]):  # the random init is overwritten; keep the caller's RNG stream
            policy = GaussianMLPPolicy(**payload["policy_config"])
        policy.load_state_dict(payload["policy_state"])
    except (KeyError, TypeError, RuntimeError, ValueError) as err:
        raise ValueError(f"checkpoint {path}: policy_config/policy_state do not rebuild a policy: {err}") from err
    if (policy.obs_dim, policy.act_dim) != (payload.get("obs_dim"), payload.get("act_dim")):
        raise ValueError(f"checkpoint {path}: obs_dim/act_dim disagree with policy_config")
    policy.to(map_location)
    return Checkpoint(
        path=path,
        policy=policy,
        robot=robot,
        env_id=payload.get("env_id"),
        iteration=int(payload.get("iteration", 0)),
        stage=int(payload.get("stage", 0)),
        optimizer_state=payload.get("optimizer_state"),
        regularizer_state=payload.get("regularizer_state"),
        rng_state=payload.get("rng") or {},
        extra_state=payload.get("extra_state") or {},
        metadata=payload.get("metadata") or {},
        format_version=version,
    )


# ----------------------------------------------------------------------------------------------
# YAML configs
# ----------------------------------------------------------------------------------------------


def load_yaml(path: PathLike) -> dict:
    """Read a YAML mapping with `yaml.safe_load`; ValueError on a missing file, bad YAML or a non-mapping."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"config: no file at {path}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise ValueError(f"config {path}: not valid YAML: {err}") from err
    if not isinstance(data, dict):
        got = "an empty file" if data is None else type(data).__name__
        raise ValueError(f"config {path}: the top level must be a mapping of keys to values, got {got}")
    return data


def _dump_config(config: Mapping[str, Any]) -> str:
    if not isinstance(config, Mapping):
        raise ValueError(f"config must be a mapping, got {type(config).__name__}")
    try:
        return yaml.safe_dump(dict(config), sort_keys=False)
    except yaml.YAMLError as err:
        raise ValueError(f"config: holds a value YAML cannot store safely (plain values only): {err}") from err


def _config_diff(stored: Any, given: Any, prefix: str = "") -> list[str]:
    if isinstance(stored, dict) and isinstance(given, dict):
        diff = []
        for key in [*stored, *(k for k in given if k not in stored)]:
            name = f"{prefix}{key}"
            if key not in stored or key not in given:
                diff.append(name)
            else:
                diff += _config_diff(stored[key], given[key], f"{name}.")
        return diff
    same = stored == given or (
        isinstance(stored, float) and isinstance(given, float) and math.isnan(stored) and math.isnan(given)
    )
    return [] if same else [prefix.rstrip(".")]


# ----------------------------------------------------------------------------------------------
# Run directories and step checkpoints
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunDir:
    """A run directory `runs/<name>/`; `run / "metrics"` and `os.fspath(run)` work as for a Path."""

    root: Path
    resumed: bool = False

    def __fspath__(self) -> str:
        return os.fspath(self.root)

    def __truediv__(self, other: PathLike) -> Path:
        return self.root / other

    @property
    def config_path(self) -> Path:
        """The run's config.yaml."""
        return self.root / CONFIG_FILE

    @property
    def checkpoints(self) -> Path:
        """Folder of step checkpoints and latest.pt."""
        return self.root / "checkpoints"

    @property
    def metrics(self) -> Path:
        """Folder of JSONL/CSV metrics logs."""
        return self.root / "metrics"

    @property
    def plots(self) -> Path:
        """Folder of figures."""
        return self.root / "plots"

    @property
    def videos(self) -> Path:
        """Folder of rendered rollouts."""
        return self.root / "videos"

    @property
    def tb(self) -> Path:
        """Folder of TensorBoard event files."""
        return self.root / "tb"

    def config(self) -> dict:
        """The stored config.yaml."""
        return load_yaml(self.config_path)


def _move_aside(path: Path) -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    target = path.with_name(f"{path.name}.old-{stamp}")
    n = 1
    while target.exists():
        target = path.with_name(f"{path.name}.old-{stamp}-{n}")
        n += 1
    path.rename(target)
    return target


def prepare_run_dir(
    path: PathLike,
    *,
    resume: bool = False,
    force: bool = False,
    config: Mapping[str, Any],
    changeable: Iterable[str] = RESUME_CHANGEABLE,
) -> RunDir:
    """Create (or reopen, with `resume`) the run directory at `path` with its subfolders and config.yaml.

    Args:
        path: the run directory, e.g. runs/<name>.
        resume: continue the run already there; its stored config must equal `config` except for the
            top-level keys in `changeable` (else a ValueError naming the differing keys). With no run
            there yet, a fresh one is created (so a requeued job can always pass --resume).
        force: move a run already there aside to `<path>.old-<timestamp>` and start fresh (never deletes).
        config: the resolved config; written to config.yaml (atomically) when the run is created.
        changeable: top-level config keys allowed to differ on resume.

    An existing non-empty directory without resume or force is a ValueError, and nothing is touched.
    """
    root = Path(path)
    text = _dump_config(config)
    if resume and force:
        raise ValueError("resume and force: pass one of --resume (continue the run) or --force (start afresh)")
    if root.exists() and not root.is_dir():
        raise ValueError(f"run directory {root} exists and is not a directory")
    occupied = root.is_dir() and any(root.iterdir())
    if occupied and resume:
        if not (root / CONFIG_FILE).is_file():
            raise ValueError(f"run directory {root} has no {CONFIG_FILE}, so there is no run to resume; "
                             "pass --force to move it aside and start afresh")
        skip = set(changeable)
        given = yaml.safe_load(text)  # the YAML round trip makes tuples lists, as in the stored copy
        stored = {k: v for k, v in load_yaml(root / CONFIG_FILE).items() if k not in skip}
        differing = _config_diff(stored, {k: v for k, v in given.items() if k not in skip})
        if differing:
            raise ValueError(f"cannot resume {root}: config differs from the stored config.yaml in "
                             f"{', '.join(differing)}; use the same config, or --force to start afresh")
        for name in RUN_SUBDIRS:
            (root / name).mkdir(exist_ok=True)
        return RunDir(root, resumed=True)
    if occupied:
        if not force:
            raise ValueError(f"run directory {root} already holds a run; pass --resume to continue it or "
                             "--force to move it aside and start afresh")
        _move_aside(root)
    root.mkdir(parents=True, exist_ok=True)
    atomic_write_text(root / CONFIG_FILE, text)
    for name in RUN_SUBDIRS:
        (root / name).mkdir(exist_ok=True)
    return RunDir(root, resumed=False)


def _checkpoint_dir(run_dir: RunDir | PathLike) -> Path:
    return run_dir.checkpoints if isinstance(run_dir, RunDir) else Path(run_dir) / "checkpoints"


def _step_files(folder: Path) -> list[tuple[int, Path]]:
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _STEP_FILE.match(p.name))]
    return sorted(found)


def step_checkpoint_path(run_dir: RunDir | PathLike, step: int) -> Path:
    """checkpoints/step-<step, 6+ digits>.pt inside `run_dir`."""
    return _checkpoint_dir(run_dir) / f"step-{_check_count('step', step):06d}.pt"


def latest_checkpoint(run_dir: RunDir | PathLike) -> Path | None:
    """The highest-numbered step checkpoint of `run_dir`, else its latest.pt, else None."""
    folder = _checkpoint_dir(run_dir)
    steps = _step_files(folder)
    if steps:
        return steps[-1][1]
    latest = folder / LATEST_NAME
    return latest if latest.is_file() else None


def save_step_checkpoint(run_dir: RunDir | PathLike, step: int, *, keep: int = 3, **kwargs: Any) -> Path:
    """Save checkpoints/step-<step>.pt and latest.pt (both atomic), then keep only the last `keep` numbered ones.

    `kwargs` are `save_checkpoint`'s (policy=, robot=, ...); `iteration` defaults to `step`. A step
    below the run's newest checkpoint is a ValueError (it would hide behind the newer file on resume).
    """
    step = _check_count("step", step)
    if isinstance(keep, bool) or not isinstance(keep, int) or keep < 1:
        raise ValueError(f"keep must be an integer >= 1, got {keep!r}")
    folder = _checkpoint_dir(run_dir)
    existing = _step_files(folder)
    if existing and existing[-1][0] > step:
        raise ValueError(f"step {step} is below the newest checkpoint {existing[-1][1].name} in {folder}")
    kwargs.setdefault("iteration", step)
    data = _serialize(checkpoint_payload(**kwargs))
    path = atomic_write_bytes(step_checkpoint_path(run_dir, step), data)
    atomic_write_bytes(folder / LATEST_NAME, data)
    for _, old in _step_files(folder)[:-keep]:
        old.unlink(missing_ok=True)
    return path


# ----------------------------------------------------------------------------------------------
# Metrics
# ----------------------------------------------------------------------------------------------


def _json_default(value: Any) -> Any:
    if isinstance(value, torch.Tensor | np.ndarray | np.generic):
        return value.tolist()
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    raise TypeError(f"{type(value).__name__} is not JSON-serialisable")


def _csv_cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, dict | list):
        return json.dumps(value)
    return value


class MetricsLog:
    """Append-only metrics as JSON lines (`<name>.jsonl`) plus a CSV copy (`<name>.csv`) with every column.

    Args:
        directory: folder of the log, usually `run_dir / "metrics"` (created if missing).
        name: file stem.
        resume_step: when resuming from a checkpoint of this step, records after the first one whose
            `step` exceeds it are cut off (they belong to the interrupted run's lost work), so no
            row appears twice. A torn last line from an interruption is always dropped.
    """

    def __init__(self, directory: PathLike, name: str, *, resume_step: int | None = None) -> None:
        if not isinstance(name, str) or not name or Path(name).name != name:
            raise ValueError(f"name must be a plain file stem, got {name!r}")
        if resume_step is not None:
            resume_step = _check_count("resume_step", resume_step)
        self.directory = Path(directory)
        self.jsonl_path = self.directory / f"{name}.jsonl"
        self.csv_path = self.directory / f"{name}.csv"
        self.directory.mkdir(parents=True, exist_ok=True)
        records, torn = self._parse()
        if resume_step is not None:
            for i, record in enumerate(records):
                if isinstance(record.get("step"), int | float) and record["step"] > resume_step:
                    records = records[:i]
                    torn = True
                    break
        self._lock = threading.Lock()
        self._records = records
        self._columns: dict[str, None] = {}
        for record in records:
            self._columns.update(dict.fromkeys(record))
        if torn:
            atomic_write_text(self.jsonl_path, "".join(json.dumps(r, default=_json_default) + "\n" for r in records))
        if torn or (records and not self.csv_path.is_file()):
            self._write_csv()

    def _parse(self) -> tuple[list[dict], bool]:
        """Records on disk, and whether the file needs rewriting (a torn or unreadable trailing line)."""
        if not self.jsonl_path.is_file():
            return [], False
        records: list[dict] = []
        lines = self.jsonl_path.read_text(encoding="utf-8").split("\n")
        complete, tail = lines[:-1], lines[-1]
        for number, line in enumerate(complete, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                if number == len(complete):  # the last line, written when the run was killed
                    return records, True
                raise ValueError(f"{self.jsonl_path}: line {number} is not JSON: {err}") from err
            records.append(record)
        return records, bool(tail)

    def append(self, record: Mapping[str, Any]) -> None:
        """Append one record (str keys; numbers, str, lists, dicts, tensors/numpy become lists or numbers)."""
        if not isinstance(record, Mapping):
            raise ValueError(f"record must be a mapping, got {type(record).__name__}")
        for key, value in record.items():
            if not isinstance(key, str):
                raise ValueError(f"record: keys must be strings, got {key!r}")
            try:
                json.dumps(value, default=_json_default)
            except (TypeError, ValueError) as err:
                raise ValueError(f"record[{key!r}]: {err}") from err
        line = json.dumps(dict(record), default=_json_default)
        plain = json.loads(line)
        with self._lock:
            with self.jsonl_path.open("a", encoding="utf-8") as handle:
                handle.write(line + "\n")
                handle.flush()
            self._records.append(plain)
            self._columns.update(dict.fromkeys(plain))
            self._write_csv()

    def _write_csv(self) -> None:
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=list(self._columns), restval="", lineterminator="\n")
        writer.writeheader()
        for record in self._records:
            writer.writerow({k: _csv_cell(v) for k, v in record.items()})
        atomic_write_text(self.csv_path, buffer.getvalue())

    def read(self) -> list[dict]:
        """The records in the JSONL file, in order."""
        return self._parse()[0]

    def __len__(self) -> int:
        return len(self._records)
