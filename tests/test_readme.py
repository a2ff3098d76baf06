"""The README's generated sections match the JSON that the benchmark scripts wrote."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _update_readme():
    spec = importlib.util.spec_from_file_location("update_readme", ROOT / "scripts" / "update_readme.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_generated_sections_are_current() -> None:
    readme = (ROOT / "README.md").read_text()
    assert _update_readme().render(readme) == readme, "run python scripts/update_readme.py"


def test_a_changed_figure_shows_up(tmp_path: Path) -> None:
    module = _update_readme()
    readme = (ROOT / "README.md").read_text()
    for name, (filename, _) in module.SECTIONS.items():
        text = (module.RESULTS / filename).read_text()
        (tmp_path / filename).write_text(text.replace('"repeats": ', '"repeats": 1', 1))
        assert name in readme
    assert module.render(readme, tmp_path) != readme


def test_missing_markers_are_named() -> None:
    with pytest.raises(ValueError, match="generated section"):
        _update_readme().render("no markers here")


def test_the_fisher_check_states_whether_a_difference_is_distinguishable_from_zero() -> None:
    spec = importlib.util.spec_from_file_location("check_fisher_every", ROOT / "scripts" / "check_fisher_every.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert "not distinguishable from zero" in module._paired([-1.0, 1.5, -2.0])
    assert ", distinguishable from zero" in module._paired([-5.1, -5.5, -6.6])
    assert "no interval from one seed" in module._paired([-4.4])
