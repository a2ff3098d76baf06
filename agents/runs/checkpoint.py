"""The one checkpoint format: a MetaLoco policy with its optimizer, regularizer, counters and RNG states.

Checkpoints are written atomically (`agents.runs.atomic`), hold only tensors and plain Python values
and are read back with `torch.load(weights_only=True)`; nothing here ever unpickles arbitrary
objects.
"""

from __future__ import annotations

import hashlib
import io
import os
import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from agents.policy import GaussianMLPPolicy
from agents.runs.atomic import PathLike, atomic_write_bytes

FORMAT_KIND = "metaloco-policy"
FORMAT_VERSION = 1


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
        regularizer: an `agents.continual.ewc.Regularizer` (or its state dict).
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


def policy_sha256(policy: GaussianMLPPolicy) -> str:
    """SHA-256 of a policy's parameters (names, shapes, dtypes and values, in name order).

    Identifies the policy an evaluation measured, whatever file (and metadata) holds it.
    """
    digest = hashlib.sha256()
    for name, tensor in sorted(policy.state_dict().items()):
        array = tensor.detach().cpu().contiguous().numpy()
        digest.update(f"{name}:{tuple(array.shape)}:{array.dtype}".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()
