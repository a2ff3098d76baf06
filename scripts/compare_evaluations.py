r"""Compare two initialisations evaluated on the very same tasks: paired differences per step.

Two runs of `evaluate_adaptation.py` with the same family, split, task seed, seeds, tasks and
episodes draw identical tasks; this pairs one method of each (default: their `maml`) task by task
and gives, per step, the mean difference in return (and, for velocity tasks, in speed error) with a
95% stratified-bootstrap interval (tasks resampled within seeds), the probability that A does
better, and whether the difference is distinguishable from zero.

    python scripts/compare_evaluations.py --a runs/eval_dice/results.json \
        --b assets/results/adaptation_cheetah_velocity.json --label-a dice --label-b score \
        --out assets/results/comparison_velocity_estimator.json

`--unadapted-b` pairs A at every step with B before adaptation: e.g. a context adapter after j
episodes of experience against the multi-task policy as it is (`--method-a context --method-b
pretrained`, the same evaluation as --a and --b).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from agents.runs.atomic import atomic_write_text
from agents.runs.cli import DEBUG_HELP, check_writable, run_script
from agents.runs.stats import stratified_bootstrap

#: what must agree for two evaluations to have drawn the same tasks
SAME = ("family", "split", "task_seed")


def per_task(results: dict, method: str, key: str) -> dict[tuple[int, int, int], float]:
    """(seed, task, step) -> the method's value of `key` ('return' or 'speed')."""
    rows = [r for r in results["records"] if r["method"] == method]
    if not rows:
        raise ValueError(f"method: {method!r} is not in the evaluation (it has {results['methods']})")
    return {(r["seed"], r["task"], r["step"]): float(r[key]) for r in rows}


def check_same_tasks(a: dict, b: dict) -> None:
    """Both evaluations drew the same tasks with the same settings, or a one-line error naming the difference."""
    for field in SAME:
        if a["metadata"][field] != b["metadata"][field]:
            raise ValueError(f"{field}: the evaluations differ ({a['metadata'][field]!r} vs {b['metadata'][field]!r})")
    for field in ("seeds", "steps", "episodes_per_task", "horizon", "inner_lr", "gamma", "gae_lambda",
                  "normalize_advantages"):
        if a["config"][field] != b["config"][field]:
            raise ValueError(f"config.{field}: the evaluations differ "
                             f"({a['config'][field]!r} vs {b['config'][field]!r})")
    if a["tasks"] != b["tasks"]:
        raise ValueError("tasks: the evaluations drew different tasks")


def compare(a: dict, b: dict, method_a: str, method_b: str, reps: int = 10_000, unadapted_b: bool = False) -> dict:
    """Per step: A minus B paired by task (return; speed error for velocity tasks), with intervals.
    With `unadapted_b`, A at every step minus B before adaptation (B as it is, never adapted)."""
    check_same_tasks(a, b)
    seeds, steps = a["config"]["seeds"], a["config"]["steps"]
    returns_a, returns_b = per_task(a, method_a, "return"), per_task(b, method_b, "return")
    targets = [[task["goal"]["target_velocity"] for task in tasks] for tasks in a["tasks"]]
    tracking = all(v is not None for seed_targets in targets for v in seed_targets)
    speeds_a = per_task(a, method_a, "speed") if tracking else None
    speeds_b = per_task(b, method_b, "speed") if tracking else None
    rows = []
    for step in range(steps + 1):
        step_b = 0 if unadapted_b else step
        strata = [np.array([returns_a[(s, t, step)] - returns_b[(s, t, step_b)] for t in range(len(targets[i]))])
                  for i, s in enumerate(seeds)]
        mean, low, high = stratified_bootstrap(strata, "mean", reps=reps)
        p, p_low, p_high = stratified_bootstrap(strata, "p_improvement", reps=reps)
        row = {"step": step, "return_difference": mean, "low": low, "high": high,
               "p_a_better": p, "p_low": p_low, "p_high": p_high, "distinguishable": bool(low > 0 or high < 0)}
        if tracking:
            error = [np.array([abs(speeds_a[(s, t, step)] - targets[i][t])
                               - abs(speeds_b[(s, t, step_b)] - targets[i][t])
                               for t in range(len(targets[i]))]) for i, s in enumerate(seeds)]
            e_mean, e_low, e_high = stratified_bootstrap(error, "mean", reps=reps)
            row |= {"speed_error_difference": e_mean, "speed_error_low": e_low, "speed_error_high": e_high}
        rows.append(row)
    n_tasks = sum(len(t) for t in targets)
    return {"family": a["metadata"]["family"], "seeds": seeds, "tasks": n_tasks,
            "episodes_per_task": a["config"]["episodes_per_task"], "unadapted_b": unadapted_b, "rows": rows}


def to_markdown(result: dict, label_a: str, label_b: str) -> str:
    """The comparison's table."""
    if result.get("unadapted_b"):
        label_b = f"{label_b} before adaptation"
    lines = [f"{label_a} minus {label_b}, paired by task: family `{result['family']}`, {result['tasks']} held-out "
             f"tasks (seeds {', '.join(map(str, result['seeds']))}), {result['episodes_per_task']} episodes per task "
             "and step; 95% stratified-bootstrap intervals (tasks resampled within seeds).", "",
             "| step | return difference [95 % interval] | P(" + label_a + " better) | verdict |"
             + (" speed-error difference (m/s; negative: A closer to the target) |"
                if "speed_error_difference" in result["rows"][0] else ""),
             "|---|---:|---:|---|" + ("---:|" if "speed_error_difference" in result["rows"][0] else "")]
    for row in result["rows"]:
        step = "before" if row["step"] == 0 else f"{row['step']} step{'s' if row['step'] > 1 else ''}"
        line = (f"| {step} | {row['return_difference']:+.1f} [{row['low']:+.1f}, {row['high']:+.1f}] | "
                f"{row['p_a_better']:.2f} [{row['p_low']:.2f}, {row['p_high']:.2f}] | "
                f"{'distinguishable from zero' if row['distinguishable'] else 'indistinguishable from zero'} |")
        if "speed_error_difference" in row:
            line += (f" {row['speed_error_difference']:+.3f} [{row['speed_error_low']:+.3f}, "
                     f"{row['speed_error_high']:+.3f}] |")
        lines.append(line)
    return "\n".join(lines) + "\n"


def main() -> None:
    """Compare the two evaluations and write the JSON (with the labels) and print the table."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--debug", action="store_true", help=DEBUG_HELP)
    parser.add_argument("--a", type=Path, required=True, help="results.json of the first evaluation")
    parser.add_argument("--b", type=Path, required=True, help="results.json of the second evaluation")
    parser.add_argument("--method-a", default="maml", help="the method of --a to compare")
    parser.add_argument("--method-b", default="maml", help="the method of --b to compare")
    parser.add_argument("--label-a", default="A")
    parser.add_argument("--label-b", default="B")
    parser.add_argument("--unadapted-b", action="store_true",
                        help="compare A at every step with B before adaptation (B as it is)")
    parser.add_argument("--out", type=Path, help="write the comparison here (JSON)")
    args = parser.parse_args()
    if args.out is not None:
        check_writable(args.out.parent, "out")
    a, b = (json.loads(path.read_text(encoding="utf-8")) for path in (args.a, args.b))
    result = compare(a, b, args.method_a, args.method_b, unadapted_b=args.unadapted_b)
    result |= {"label_a": args.label_a, "label_b": args.label_b, "a": str(args.a), "b": str(args.b)}
    if args.out is not None:
        atomic_write_text(args.out, json.dumps(result, indent=1) + "\n")
    print(to_markdown(result, args.label_a, args.label_b))


if __name__ == "__main__":
    run_script(main)
