"""Regenerate the README's generated sections from the JSON that the benchmark scripts wrote.

Each section sits between `<!-- generated: NAME -->` and `<!-- end generated: NAME -->` and is
rendered from `assets/results/NAME.json` by the same function that wrote the script's own report,
so the README can show nothing the JSON does not hold. `--check` changes nothing and exits 1 if
the README is out of date (the test suite runs it).

    python scripts/benchmark.py --out assets/results   # and/or
    python scripts/benchmark_ray.py --out assets/results   # and/or
    python scripts/check_fisher_every.py --out assets/results   # then
    python scripts/update_readme.py
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchmark import to_markdown as benchmark_markdown
from benchmark_ray import to_markdown as benchmark_ray_markdown
from check_fisher_every import to_markdown as fisher_markdown

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "assets" / "results"
#: section name -> (JSON file in assets/results, renderer of its Markdown)
SECTIONS: dict[str, tuple[str, Callable[[dict], str]]] = {
    "benchmark": ("benchmark.json", lambda results: benchmark_markdown(results, level=3)),
    "benchmark_ray": ("benchmark_ray.json", lambda results: benchmark_ray_markdown(results, level=3)),
    "fisher_check": ("fisher_check.json", lambda results: fisher_markdown(results, level=3)),
    "fisher_check_fresh_seeds": ("fisher_check_fresh_seeds.json", lambda results: fisher_markdown(results, level=3)),
}


def render(readme: str, results_dir: Path = RESULTS) -> str:
    """`readme` with every generated section replaced by what its JSON renders to."""
    for name, (filename, renderer) in SECTIONS.items():
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
