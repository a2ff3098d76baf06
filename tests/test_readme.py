"""The README's generated sections match the JSON that the benchmark scripts wrote."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_generated_sections_are_current(load_script) -> None:
    readme = (ROOT / "README.md").read_text()
    assert load_script("update_readme").render(readme) == readme, "run python scripts/update_readme.py"


def test_a_changed_figure_shows_up(tmp_path: Path, load_script) -> None:
    module = load_script("update_readme")
    readme = (ROOT / "README.md").read_text()
    for name, (filename, _) in module.SECTIONS.items():
        text = (module.RESULTS / filename).read_text()
        (tmp_path / filename).write_text(text.replace('"repeats": ', '"repeats": 1', 1))
        assert name in readme
    assert module.render(readme, tmp_path) != readme


def test_missing_markers_are_named(load_script) -> None:
    with pytest.raises(ValueError, match="generated section"):
        load_script("update_readme").render("no markers here")


def test_a_setting_check_states_whether_a_difference_is_distinguishable_from_zero(load_script) -> None:
    module = load_script("check_meta_setting")
    assert "not distinguishable from zero" in module._paired([-1.0, 1.5, -2.0])
    assert ", distinguishable from zero" in module._paired([-5.1, -5.5, -6.6])
    assert "no interval from one seed" in module._paired([-4.4])


def test_a_setting_check_parses_fields_and_rejects_what_it_may_not_vary(load_script) -> None:
    module = load_script("check_meta_setting")
    assert module.parse_setting("meta_batch_size=40,episodes_per_task=20") == {"meta_batch_size": 40,
                                                                            "episodes_per_task": 20}
    assert module.parse_setting("inner_estimator=dice") == {"inner_estimator": "dice"}
    assert module.parse_setting("meta_sgd=true") == {"meta_sgd": True}
    for bad, match in [("seed=3", "may vary"), ("nope=1", "may vary"), ("fisher_every", "name=value"),
                       ("inner_estimator=reinforce", "inner_estimator")]:
        with pytest.raises(ValueError, match=match):
            module.parse_setting(bad)
