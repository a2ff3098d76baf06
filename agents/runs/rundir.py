"""Run directories, step checkpoints, metrics logs and YAML configs.

Every file here is written atomically (`agents.runs.atomic`); checkpoints use the one format of
`agents.runs.checkpoint`. YAML is read with `yaml.safe_load`.

A run directory looks like::

    runs/<name>/
        config.yaml          the resolved config, written once when the run is created
        checkpoints/         step-000012.pt ... (the last few) and latest.pt
        metrics/             <name>.jsonl and <name>.csv per MetricsLog
        plots/ videos/ tb/
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import re
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from agents.runs.atomic import PathLike, atomic_write_bytes, atomic_write_text
from agents.runs.checkpoint import _check_count, _serialize, checkpoint_payload

RUN_SUBDIRS = ("checkpoints", "metrics", "plots", "videos", "tb")
CONFIG_FILE = "config.yaml"
# Top-level config keys that may differ between a run and its resumption.
RESUME_CHANGEABLE = frozenset({"resume", "force", "device"})
LATEST_NAME = "latest.pt"
_STEP_FILE = re.compile(r"^step-(\d+)\.pt$")


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


def _fill_defaults(stored: dict[str, Any], defaults: Mapping[str, Any], given: Mapping[str, Any],
                   skip: Iterable[str] = ()) -> None:
    """Give `stored` every key it lacks, at any depth, whose value in `given` is its default: a field
    added to the code (or to a nested section of the config) after the run started."""
    for key, value in defaults.items():
        if key in skip:
            continue
        if key not in stored:
            if given.get(key) == value:
                stored[key] = value
        elif isinstance(value, Mapping) and isinstance(stored[key], dict) and isinstance(given.get(key), Mapping):
            _fill_defaults(stored[key], value, given[key])


def prepare_run_dir(
    path: PathLike,
    *,
    resume: bool = False,
    force: bool = False,
    config: Mapping[str, Any],
    changeable: Iterable[str] = RESUME_CHANGEABLE,
    defaults: Mapping[str, Any] | None = None,
) -> RunDir:
    """Create (or reopen, with `resume`) the run directory at `path` with its subfolders and config.yaml.

    Args:
        path: the run directory, e.g. runs/<name>.
        resume: continue the run already there; its stored config must equal `config` except for the
            top-level keys in `changeable` (else a ValueError naming the differing keys). With no run
            there (a mistyped or missing directory) it is a ValueError: nothing to resume.
        force: move a run already there aside to `<path>.old-<timestamp>` and start fresh (never deletes).
        config: the resolved config; written to config.yaml (atomically) when the run is created.
        changeable: top-level config keys allowed to differ on resume.
        defaults: the config class's defaults: a key the stored config lacks, at the top or in a
            nested section (a field added to the code after the run started), is no difference
            when the given value is its default.

    An existing non-empty directory without resume or force is a ValueError, and nothing is touched.
    """
    root = Path(path)
    text = _dump_config(config)
    if resume and force:
        raise ValueError("resume and force: pass one of --resume (continue the run) or --force (start afresh)")
    if root.exists() and not root.is_dir():
        raise ValueError(f"run directory {root} exists and is not a directory")
    occupied = root.is_dir() and any(root.iterdir())
    if resume and not occupied:
        raise ValueError(f"run: {root} holds no run to resume; start it without --resume")
    if occupied and resume:
        if not (root / CONFIG_FILE).is_file():
            raise ValueError(f"run directory {root} has no {CONFIG_FILE}, so there is no run to resume; "
                             "pass --force to move it aside and start afresh")
        skip = set(changeable)
        given = yaml.safe_load(text)  # the YAML round trip makes tuples lists, as in the stored copy
        stored = {k: v for k, v in load_yaml(root / CONFIG_FILE).items() if k not in skip}
        _fill_defaults(stored, yaml.safe_load(_dump_config(dict(defaults or {}))), given, skip)
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
