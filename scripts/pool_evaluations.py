r"""Pool evaluations of the same checkpoints on different task sets into one larger evaluation.

Runs of `evaluate_adaptation.py` with the same checkpoints and settings on other seeds (and task
seeds) each measure the same policies on new tasks; this writes their union as one evaluation's
results.json, with every statistic (means, IQMs, paired gains, relative gains, method against
method, speed tracking) recomputed over all of their tasks, each file's seeds kept as strata of
the stratified bootstrap. Files that differ in anything but their tasks (a policy, a setting, the
family) or share a seed are refused with one line.

    python scripts/pool_evaluations.py --results assets/results/adaptation_cheetah_velocity_perstep.json \
        assets/results/adaptation_cheetah_velocity_perstep_check.json --methods maml \
        --out assets/results/adaptation_cheetah_velocity_perstep_pooled.json

The output renders as a README section like any evaluation (`scripts/update_readme.py`).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from agents.meta.adaptation_pool import pool_evaluations
from agents.meta.adaptation_report import markdown_from_dict
from agents.runs.atomic import atomic_write_text
from agents.runs.cli import DEBUG_HELP, check_writable, run_script


def read_evaluation(path: Path) -> dict:
    """An evaluation's results.json; one ValueError naming `--results` if it is not one."""
    if not path.is_file():
        raise ValueError(f"--results: no file at {path}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ValueError(f"--results: {path} is not JSON ({error.msg}, line {error.lineno})") from error
    keys = {"robot", "config", "methods", "tasks_per_seed", "tasks", "records", "metadata"}
    if not isinstance(data, dict) or not keys <= set(data) or not isinstance(data["metadata"], dict):
        raise ValueError(f"--results: {path} is not an evaluate_adaptation.py results.json (need {sorted(keys)})")
    return data


def main() -> None:
    """Pool the evaluations, write the pooled results.json and print its tables."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--debug", action="store_true", help=DEBUG_HELP)
    parser.add_argument("--results", type=Path, nargs="+", required=True,
                        help="results.json of each evaluation (two or more, distinct seeds)")
    parser.add_argument("--methods", nargs="+", help="methods to pool (default: those every file holds)")
    parser.add_argument("--out", type=Path, required=True, help="write the pooled results.json here")
    args = parser.parse_args()
    check_writable(args.out.parent, "out")
    evaluations = [read_evaluation(path) for path in args.results]
    pooled, metadata = pool_evaluations(evaluations, args.methods, [str(path) for path in args.results])
    data = {**pooled.to_dict(), "metadata": metadata}
    atomic_write_text(args.out, json.dumps(data, indent=1) + "\n")
    print(markdown_from_dict(data))


if __name__ == "__main__":
    run_script(main)
