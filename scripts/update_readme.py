"""Regenerate the README's generated sections from the JSON that the benchmark scripts wrote.

Each section sits between `<!-- generated: NAME -->` and `<!-- end generated: NAME -->` and is
rendered from `assets/results/NAME.json` by the same function that wrote the script's own report,
so the README can show nothing the JSON does not hold. `--check` changes nothing and exits 1 if
the README is out of date (the test suite runs it).

    python scripts/benchmark.py --out assets/results   # and/or
    python scripts/benchmark_ray.py --out assets/results   # and/or
    python scripts/check_meta_setting.py --name fisher_check ... --out assets/results   # and/or
    python scripts/evaluate_adaptation.py ... --out DIR && cp DIR/results.json assets/results/adaptation_<name>.json
    python scripts/compare_evaluations.py --a A.json --b B.json ... --out assets/results/comparison_<name>.json
    python scripts/pool_evaluations.py --results A.json B.json ... --out assets/results/adaptation_<name>.json
    python scripts/benchmark_continual.py --study thesis   # writes assets/results/thesis.json
    python scripts/update_readme.py
"""

from __future__ import annotations

import argparse
import functools
import json
import re
import sys
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchmark import to_markdown as benchmark_markdown
from benchmark_ray import to_markdown as benchmark_ray_markdown
from check_meta_setting import to_markdown as check_markdown
from compare_evaluations import to_markdown as comparison_markdown

from agents.continual.study_run import study_markdown
from agents.meta.adaptation_report import markdown_from_dict
from agents.runs.checkpoint import load_checkpoint, policy_sha256

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "assets" / "results"
SHIPPED = ROOT / "assets" / "checkpoints"
#: section name -> (JSON file in assets/results, renderer of its Markdown)
SECTIONS: dict[str, tuple[str, Callable[[dict], str]]] = {
    "benchmark": ("benchmark.json", lambda results: benchmark_markdown(results, level=3)),
    "benchmark_ray": ("benchmark_ray.json", lambda results: benchmark_ray_markdown(results, level=3)),
    "fisher_check": ("fisher_check.json", lambda results: check_markdown(results, level=3)),
    "fisher_check_fresh_seeds": ("fisher_check_fresh_seeds.json", lambda results: check_markdown(results, level=3)),
    "estimator_check": ("estimator_check.json", lambda results: check_markdown(results, level=3)),
    "estimator_check_fresh_seeds": ("estimator_check_fresh_seeds.json",
                                    lambda results: check_markdown(results, level=3)),
    # and one section per adaptation evaluation (assets/results/adaptation_<name>.json), per comparison
    # of two (comparison_<name>.json) and the thesis study's summary (thesis.json), when present (`sections`)
}


@functools.cache
def shipped_policies() -> dict[str, Path]:
    """policy_sha256 -> the shipped checkpoint holding that policy."""
    return {policy_sha256(load_checkpoint(path).policy): path for path in sorted(SHIPPED.glob("*.pt"))}


def adaptation_markdown(results: dict) -> str:
    """An evaluation's tables (`evaluate_adaptation.py`'s results.json), under a line saying what was
    evaluated and how long each method trained. A method whose policy (by its sha256) is a shipped
    checkpoint is named by that file, with its recorded budget, wherever it was evaluated from."""
    meta = results["metadata"]
    parts = []
    for name, source in meta["sources"].items():
        training = meta.get("training", {}).get(name)
        shipped = shipped_policies().get(meta.get("policy_sha256", {}).get(name, ""))
        if shipped is None and isinstance(source, str):
            shipped = SHIPPED / Path(source).name
        if isinstance(source, str) and shipped is not None and shipped.is_file():
            source = str(shipped)  # the shipped file's own record (summed over resumes)
            checkpoint = load_checkpoint(shipped)
            budget = checkpoint.metadata.get("budget")
            teacher = checkpoint.metadata.get("teacher", {}).get("budget")  # a context adapter's
            training = {"iterations": checkpoint.iteration,
                        "budget": {**budget, "teacher": teacher} if budget and teacher else budget}
        if training and training.get("budget"):
            parts.append(f"{name}: `{Path(source).name}` ({training_line(training)})")
        else:
            parts.append(f"{name}: {', '.join(source) if isinstance(source, list) else Path(source).name}")
    if meta.get("pooled_from"):  # scripts/pool_evaluations.py
        sets = ", ".join(f"task seed {part['task_seed']} (seeds {', '.join(map(str, part['seeds']))})"
                         for part in meta["pooled_from"])
        where = f"pooled over {len(meta['pooled_from'])} evaluations: {sets}"
    else:
        where = f"task seed {meta['task_seed']}"
    head = f"Family `{meta['family']}`, split `{meta['split']}`, {where}. " + "; ".join(parts) + "."
    return head + "\n\n" + markdown_from_dict(results)


def training_line(training: dict) -> str:
    """"N iterations, X M env steps, Y min" of a method's training record, with a context adapter's
    teacher and a skill library's retrieval accuracy where recorded."""
    budget = training["budget"]
    line = f"{training['iterations']} iterations, " if "iterations" in training else ""
    line += f"{budget['env_steps'] / 1e6:.1f}M env steps, {budget['wall_time_s'] / 60:.0f} min"
    if budget.get("teacher"):
        teacher = budget["teacher"]
        line += f"; its teacher {teacher['env_steps'] / 1e6:.1f}M env steps, {teacher['wall_time_s'] / 60:.0f} min"
    accuracy = training.get("accuracy")
    if accuracy:
        line += (f"; retrieval accuracy on fresh tasks of the known kinds {accuracy['overall']:.0%} "
                 f"(chance {accuracy['chance']:.0%})")
    return line


def sections(results_dir: Path = RESULTS) -> dict[str, tuple[str, Callable[[dict], str]]]:
    """`SECTIONS` plus one per `adaptation_<name>.json` and `comparison_<name>.json` in `results_dir`, and
    the thesis study's `thesis.json` and its check `thesis_check.json` if there (every result shipped
    there must be shown)."""
    found = {path.stem: (path.name, adaptation_markdown) for path in sorted(results_dir.glob("adaptation_*.json"))}
    found |= {path.stem: (path.name, lambda r: comparison_markdown(r, r["label_a"], r["label_b"]))
              for path in sorted(results_dir.glob("comparison_*.json"))}
    for stem in ("thesis", "thesis_check"):  # the study, and its check on other seeds
        if (results_dir / f"{stem}.json").is_file():
            found[stem] = (f"{stem}.json", lambda results: study_markdown(results, level=3))
    return {**SECTIONS, **found}


def render(readme: str, results_dir: Path = RESULTS) -> str:
    """`readme` with every generated section replaced by what its JSON renders to."""
    for name, (filename, renderer) in sections(results_dir).items():
        pattern = re.compile(rf"(<!-- generated: {name} -->\n).*?(<!-- end generated: {name} -->)", re.DOTALL)
        if not pattern.search(readme):
            raise ValueError(f"README has no generated section {name!r} (<!-- generated: {name} --> markers)")
        results = json.loads((results_dir / filename).read_text())
        body = renderer(results).strip() + "\n"
        readme = pattern.sub(lambda match, body=body: match.group(1) + body + match.group(2), readme)
    return readme


def main() -> int:
    """Rewrite README.md (or, with --check, report whether it is current)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="exit 1 if README.md differs from the JSON")
    args = parser.parse_args()
    path = ROOT / "README.md"
    current = path.read_text()
    wanted = render(current)
    if args.check:
        if wanted != current:
            print("README.md is out of date with assets/results: run python scripts/update_readme.py")
            return 1
        return 0
    if wanted != current:
        path.write_text(wanted)
        print("README.md updated")
    return 0


if __name__ == "__main__":
    sys.exit(main())
