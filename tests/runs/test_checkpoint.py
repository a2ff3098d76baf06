"""Atomic writes, and the checkpoint format and its safe load."""

from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from agents.continual.ewc import L2Regularizer
from agents.policy import GaussianMLPPolicy
from agents.runs.atomic import atomic_torch_save, atomic_write_bytes, atomic_write_text
from agents.runs.checkpoint import FORMAT_KIND, FORMAT_VERSION, load_checkpoint, save_checkpoint


def _policy(obs_dim: int = 5, act_dim: int = 2, seed: int = 0) -> GaussianMLPPolicy:
    torch.manual_seed(seed)
    policy = GaussianMLPPolicy(obs_dim, act_dim, hidden_sizes=(8, 8), init_log_std=-0.3)
    with torch.no_grad():
        policy.log_std.add_(torch.linspace(-0.2, 0.2, act_dim))
    return policy


def _touch(path: str) -> None:  # what a malicious pickle would run on a weights_only=False load
    Path(path).touch()


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (_touch, (str(self.marker),))


class _Unpicklable:
    def __reduce__(self):
        raise TypeError("cannot pickle this")


# ----------------------------------------------------------------------------------------------
# Atomic writes
# ----------------------------------------------------------------------------------------------


def test_atomic_writes_leave_only_the_target(tmp_path: Path) -> None:
    atomic_write_bytes(tmp_path / "a.bin", b"\x00\x01")
    atomic_write_text(tmp_path / "sub" / "b.txt", "héllo")
    atomic_torch_save({"x": torch.arange(3)}, tmp_path / "c.pt")
    assert (tmp_path / "a.bin").read_bytes() == b"\x00\x01"
    assert (tmp_path / "sub" / "b.txt").read_text(encoding="utf-8") == "héllo"
    assert torch.equal(torch.load(tmp_path / "c.pt", weights_only=True)["x"], torch.arange(3))
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["a.bin", "b.txt", "c.pt", "sub"]


def test_atomic_write_fails_without_touching_the_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "state.pt"
    atomic_torch_save({"v": 1}, target)
    old = target.read_bytes()
    with pytest.raises(TypeError, match="cannot pickle"):
        atomic_torch_save({"v": _Unpicklable()}, target)
    assert target.read_bytes() == old

    def broken_replace(src: object, dst: object) -> None:
        raise OSError("disk yanked")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk yanked"):
        atomic_write_text(target, "new")
    assert target.read_bytes() == old
    assert [p.name for p in tmp_path.iterdir()] == ["state.pt"]


def test_atomic_write_uses_umask_permissions(tmp_path: Path) -> None:
    if os.name != "posix":
        pytest.skip("POSIX permissions")
    umask = os.umask(0o022)
    try:
        path = atomic_write_text(tmp_path / "x.txt", "x")
    finally:
        os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o644


# ----------------------------------------------------------------------------------------------
# Checkpoints
# ----------------------------------------------------------------------------------------------


def test_round_trip_gives_identical_policy_and_state(tmp_path: Path) -> None:
    policy = _policy()
    optimizer = torch.optim.Adam(policy.parameters(), lr=1e-3)
    policy(torch.randn(4, 5)).log_prob(torch.randn(4, 2)).sum().backward()
    optimizer.step()
    regularizer = L2Regularizer(strength=2.0)
    regularizer.consolidate(policy.parameters_dict())
    rng = np.random.default_rng(7)
    extra = {"baseline": torch.ones(3), "lr": np.float64(3e-4), "stages": ["flat", "hills"], "nested": {"k": 1}}
    meta = {"config": {"robot": "cheetah", "hidden": (8, 8), "out": Path("runs/x")}, "command": "python x.py"}
    path = save_checkpoint(tmp_path / "c.pt", policy=policy, robot="cheetah", optimizer=optimizer,
                           regularizer=regularizer, iteration=12, stage=2, np_rng=rng, extra_state=extra,
                           metadata=meta)
    # What the RNGs would draw next, had the run carried on from the save.
    expected = (rng.random(3), torch.rand(2), random.random())

    loaded = load_checkpoint(path, expected_robot="cheetah", expected_obs_dim=5, expected_act_dim=2)
    obs = torch.randn(16, 5)
    assert torch.equal(loaded.policy(obs).mean, policy(obs).mean)
    assert torch.equal(loaded.policy(obs).stddev, policy(obs).stddev)
    assert loaded.policy.config() == policy.config()
    assert (loaded.robot, loaded.env_id, loaded.iteration, loaded.stage) == ("cheetah", "MetaLoco/Cheetah-v0", 12, 2)
    assert (loaded.obs_dim, loaded.act_dim) == (5, 2)
    assert loaded.extra_state["lr"] == 3e-4 and type(loaded.extra_state["lr"]) is float
    assert loaded.extra_state["stages"] == ["flat", "hills"]
    assert torch.equal(loaded.extra_state["baseline"], torch.ones(3))
    assert loaded.metadata["config"]["out"] == "runs/x" and loaded.metadata["command"] == "python x.py"

    optimizer2 = torch.optim.Adam(loaded.policy.parameters(), lr=1e-3)
    optimizer2.load_state_dict(loaded.optimizer_state)
    assert torch.equal(optimizer2.state_dict()["state"][0]["exp_avg"], optimizer.state_dict()["state"][0]["exp_avg"])
    regularizer2 = L2Regularizer(strength=1.0)
    regularizer2.load_state_dict(loaded.regularizer_state)
    assert regularizer2.strength == 2.0 and regularizer2.num_tasks == 1

    rng2 = np.random.default_rng(123)
    loaded.restore_rng(rng2)
    assert np.array_equal(rng2.random(3), expected[0])
    assert torch.equal(torch.rand(2), expected[1]) and random.random() == expected[2]


def test_loading_leaves_the_global_rng_alone(tmp_path: Path) -> None:
    path = save_checkpoint(tmp_path / "c.pt", policy=_policy(), robot="cheetah")
    state = torch.get_rng_state()
    load_checkpoint(path)
    assert torch.equal(torch.get_rng_state(), state)


def test_checkpoint_file_is_plain_and_loads_with_weights_only(tmp_path: Path) -> None:
    path = save_checkpoint(tmp_path / "c.pt", policy=_policy(), robot="quadruped", env_id="Custom/Quad-v1")
    raw = torch.load(path, weights_only=True)
    assert raw["kind"] == FORMAT_KIND and raw["format_version"] == FORMAT_VERSION
    assert raw["robot"] == "quadruped" and raw["env_id"] == "Custom/Quad-v1"
    assert set(raw["policy_state"]) == set(_policy().state_dict())


def test_load_always_asks_for_weights_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = save_checkpoint(tmp_path / "c.pt", policy=_policy(), robot="cheetah")
    calls = []
    real_load = torch.load

    def spy(*args, **kwargs):
        calls.append(kwargs.get("weights_only"))
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    load_checkpoint(path)
    assert calls == [True]


def test_pickled_object_is_refused_and_never_run(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    good = torch.load(save_checkpoint(tmp_path / "c.pt", policy=_policy(), robot="cheetah"), weights_only=True)
    good["metadata"] = {"payload": _Evil(marker)}
    torch.save(good, tmp_path / "evil.pt")
    with pytest.raises(ValueError, match=r"weights_only=True.*_touch"):
        load_checkpoint(tmp_path / "evil.pt")
    assert not marker.exists()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"expected_robot": "cheetah"}, r"checkpoint is for robot 'quadruped', expected 'cheetah'"),
        ({"expected_obs_dim": 7}, r"obs_dim is 5, expected 7"),
        ({"expected_act_dim": 3}, r"act_dim is 2, expected 3"),
    ],
)
def test_mismatches_name_the_field(tmp_path: Path, kwargs: dict, match: str) -> None:
    path = save_checkpoint(tmp_path / "c.pt", policy=_policy(), robot="quadruped")
    with pytest.raises(ValueError, match=match):
        load_checkpoint(path, **kwargs)


def test_missing_and_foreign_files_are_value_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"checkpoint: no file at .*nope\.pt"):
        load_checkpoint(tmp_path / "nope.pt")
    (tmp_path / "text.pt").write_text("not a checkpoint")
    with pytest.raises(ValueError, match="not a MetaLoco checkpoint"):
        load_checkpoint(tmp_path / "text.pt")
    torch.save(_policy().state_dict(), tmp_path / "bare.pt")  # a bare state_dict is not our format
    with pytest.raises(ValueError, match=r"not a MetaLoco checkpoint \(kind None"):
        load_checkpoint(tmp_path / "bare.pt")
    payload = torch.load(save_checkpoint(tmp_path / "c.pt", policy=_policy(), robot="cheetah"), weights_only=True)
    torch.save({**payload, "format_version": 99}, tmp_path / "future.pt")
    with pytest.raises(ValueError, match="format_version is 99"):
        load_checkpoint(tmp_path / "future.pt")
    torch.save({**payload, "policy_config": {**payload["policy_config"], "hidden_sizes": [4]}}, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="policy_config/policy_state"):
        load_checkpoint(tmp_path / "bad.pt")


def test_bad_input_is_refused_before_writing(tmp_path: Path) -> None:
    target = tmp_path / "c.pt"
    save_checkpoint(target, policy=_policy(), robot="cheetah", iteration=1)
    old = target.read_bytes()
    cases = [
        ({"robot": "dragon"}, r"robot must be one of"),
        ({"robot": ""}, r"robot must be a non-empty string"),
        ({"iteration": -1}, r"iteration must be an integer >= 0"),
        ({"extra_state": {"obs_mean": np.zeros(3)}}, r"extra_state\['obs_mean'\]: numpy arrays"),
        ({"metadata": {"cfg": {"fn": print}}}, r"metadata\['cfg'\]\['fn'\]: builtin_function_or_method"),
        ({"metadata": {(1, 2): 3}}, r"metadata: keys must be str or int"),
    ]
    for overrides, match in cases:
        kwargs = {"policy": _policy(), "robot": "cheetah", **overrides}
        with pytest.raises(ValueError, match=match):
            save_checkpoint(target, **kwargs)
    with pytest.raises(ValueError, match="policy must be a GaussianMLPPolicy"):
        save_checkpoint(target, policy=torch.nn.Linear(2, 2), robot="cheetah")
    assert target.read_bytes() == old
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]


SHIPPED = sorted((Path(__file__).resolve().parents[2] / "assets" / "checkpoints").glob("*.pt"))


@pytest.mark.parametrize("path", SHIPPED, ids=[p.name for p in SHIPPED])
def test_every_shipped_checkpoint_loads_and_names_no_module(path: Path) -> None:
    import zipfile

    from envs.tasks import get_family

    robot = get_family(load_checkpoint(path).metadata["family"]).robot  # the robot its family is defined for
    loaded = load_checkpoint(path, expected_robot=robot)
    assert loaded.policy.obs_dim > 0 and loaded.metadata.get("config")
    # A pickled module path (agents.<module>.<Class>) would break whenever a module moves.
    with zipfile.ZipFile(path) as archive:
        pickles = [archive.read(name) for name in archive.namelist() if name.endswith(".pkl")]
    assert pickles and not any(b"agents" in data or b"envs." in data for data in pickles)


def test_shipped_checkpoints_are_found() -> None:
    assert len(SHIPPED) >= 2
