"""Scripts meet their user with one line per mistake, a hint on Ctrl-C, and checked paths."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from agents.runs.cli import check_writable, run_script
from agents.runs.config import resolve_config_paths
from envs.robots import PROJECT_ASSETS

ROOT = Path(__file__).resolve().parents[2]


def _exit_code(main, monkeypatch: pytest.MonkeyPatch, argv: list[str], hint: str = "") -> int:
    monkeypatch.setattr(sys, "argv", ["script", *argv])
    with pytest.raises(SystemExit) as stop:
        run_script(main, hint)
    return stop.value.code


def test_a_user_error_is_one_line_and_exit_2(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    def main() -> None:
        raise ValueError("steps: must be >= 1, got 0")

    assert _exit_code(main, monkeypatch, []) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: steps: must be >= 1, got 0")
    with pytest.raises(ValueError):  # --debug keeps the traceback
        _exit_code(main, monkeypatch, ["--debug"])


def test_missing_files_and_ctrl_c(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    def missing() -> None:
        open("/nonexistent/config.yaml")

    assert _exit_code(missing, monkeypatch, []) == 2
    assert "No such file or directory: /nonexistent/config.yaml" in capsys.readouterr().err

    def interrupted() -> None:
        raise KeyboardInterrupt

    assert _exit_code(interrupted, monkeypatch, [], "resume with --resume") == 130
    assert capsys.readouterr().err == "interrupted: resume with --resume\n"
    assert _exit_code(lambda: None, monkeypatch, []) == 0


def test_bugs_keep_their_traceback(monkeypatch: pytest.MonkeyPatch) -> None:
    def bug() -> None:
        raise KeyError("not a user's mistake")

    monkeypatch.setattr(sys, "argv", ["script"])
    with pytest.raises(KeyError):
        run_script(bug)


def test_check_writable(tmp_path: Path) -> None:
    check_writable(tmp_path / "new" / "deeper" / "run", "run")  # creatable
    assert not (tmp_path / "new").exists() and list(tmp_path.iterdir()) == []
    (tmp_path / "file").write_text("")
    with pytest.raises(ValueError, match="out: cannot create .* is a file, not a folder"):
        check_writable(tmp_path / "file" / "video.mp4", "out")
    with pytest.raises(ValueError, match="run: cannot write in /proc"):
        check_writable(Path("/proc/metaloco/run"), "run")


def test_config_paths_resolve_beside_the_config_then_in_assets(tmp_path: Path) -> None:
    config = tmp_path / "configs" / "mine.yaml"
    config.parent.mkdir()
    (tmp_path / "configs" / "init.pt").write_bytes(b"")
    resolved = resolve_config_paths({"init": "init.pt", "seed": 0}, config, ("init",))
    assert resolved == {"init": str((tmp_path / "configs" / "init.pt").resolve()), "seed": 0}
    shipped = resolve_config_paths({"init": "checkpoints/maml_cheetah_terrain.pt"}, config, ("init",))
    assert shipped["init"] == str((PROJECT_ASSETS / "checkpoints" / "maml_cheetah_terrain.pt").resolve())
    for value in ("scratch", "/abs/path.pt", "missing.pt"):
        assert resolve_config_paths({"init": value}, config, ("init",))["init"] == value


def test_scripts_answer_bad_input_with_one_line(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "meta_train.py"), "--config", "nope.yaml",
                             "--run", str(tmp_path / "run")], capture_output=True, text=True, cwd=tmp_path,
                            timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: config: no file at nope.yaml (--debug shows the traceback)"]
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(("fields", "message"), [
    ("family: cheetah_direction", "was trained on 'cheetah_velocity', this run meta-trains 'cheetah_direction'"),
    ("meta_sgd: true\nmeta_sgd_per_step: true\nnum_inner_steps: 2",
     "inner_lrs: per-step sizes for 3 inner steps, the learner has 2 steps"),
])
def test_meta_train_checks_its_init_before_writing_the_run(tmp_path: Path, fields: str, message: str) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(f"init: checkpoints/maml_cheetah_velocity.pt\n{fields}\n")
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "meta_train.py"), "--config", str(config),
                             "--run", str(tmp_path / "run")], capture_output=True, text=True, cwd=tmp_path,
                            timeout=120)
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1 and message in result.stderr
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("name", ["curriculum_cheetah.yaml", "curriculum_quadruped.yaml"])
def test_each_shipped_curriculum_config_loads_from_any_directory(name: str, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Each shipped curriculum resolves its init from anywhere and passes every pre-run check (its
    tasks on its robot, its init's robot and observation)."""
    from agents.continual.curriculum import CurriculumConfig
    from agents.continual.preflight import check_curriculum
    from agents.runs.config import config_from_dict
    from agents.runs.rundir import load_yaml

    monkeypatch.chdir(tmp_path)
    path = PROJECT_ASSETS / "configs" / name
    config = config_from_dict(CurriculumConfig, resolve_config_paths(load_yaml(path), path, ("init",)))
    assert Path(config.init).is_file() and Path(config.init).is_absolute()
    check_curriculum(config)


def test_every_shipped_training_config_is_valid(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from agents.meta.context_train import ContextConfig
    from agents.meta.meta_train import MetaTrainConfig
    from agents.meta.pretrain import PretrainConfig
    from agents.runs.config import config_from_dict
    from agents.runs.rundir import load_yaml

    monkeypatch.chdir(tmp_path)  # paths resolve beside the config or in assets/, from anywhere
    kinds = {"maml_": (MetaTrainConfig, ("init",)), "pretrained_": (PretrainConfig, ()),
             "teacher_": (PretrainConfig, ()), "context_": (ContextConfig, ("teacher",))}
    checked = 0
    for path in sorted((PROJECT_ASSETS / "configs").glob("*.yaml")):
        for prefix, (config_class, path_fields) in kinds.items():
            if path.name.startswith(prefix):
                config = config_from_dict(config_class, resolve_config_paths(load_yaml(path), path, path_fields))
                if getattr(config, "init", None) is not None:
                    assert Path(config.init).is_file(), f"{path.name}: init {config.init} is not shipped"
                checked += 1
    assert checked >= 10
