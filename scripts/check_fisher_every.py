"""Does a Fisher estimated on every k-th step change what meta-training learns?

Meta-trains the default cheetah velocity config (`assets/configs/maml_cheetah_velocity.yaml`) from
scratch for a few iterations per seed and `fisher_every` setting, and compares each setting's
post-adaptation return over the last 10 iterations with the first setting's, paired by seed, with
a 95% t-interval across seeds. A seed's first iteration samples the same data under every setting.
Writes OUT/fisher_check.json and OUT/fisher_check.md; the README's table is generated from
`assets/results/fisher_check.json` (`scripts/update_readme.py`).

    python scripts/check_fisher_every.py --out assets/results     # 3 seeds x 3 settings, ~15 min
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchmark import machine, meta_setup, write_results

from agents.runs.cli import DEBUG_HELP, check_writable, run_script
from agents.runs.stats import mean_confidence_interval


def check_fisher_every(iterations: int, seeds: list[int], settings: tuple[int, ...] = (1, 5)) -> dict:
    """Meta-train `iterations` iterations per seed and setting; each run's post-adaptation return
    over its last 10 iterations, the paired difference to `settings[0]` per seed, and the outer
    update's median seconds."""
    from agents.meta.meta_train import meta_iteration

    sampler, make = meta_setup()
    runs: dict[str, dict] = {}
    for seed in seeds:
        for every in settings:
            config, learner = make({"seed": seed, "fisher_every": every, "iterations": iterations})
            records = [meta_iteration(learner, sampler, config, i) for i in range(iterations)]
            tail = records[-10:]
            runs[f"every{every}/seed{seed}"] = {
                "post_adapt_return_last10": statistics.mean(r["post_adapt_return"] for r in tail),
                "pre_adapt_return_last10": statistics.mean(r["pre_adapt_return"] for r in tail),
                "update_s_median": statistics.median(r["time_meta_update"] for r in records),
                "post_adapt_return": [r["post_adapt_return"] for r in records]}
            print(f"fisher every {every} seed {seed}: post-adapt return (last 10) "
                  f"{runs[f'every{every}/seed{seed}']['post_adapt_return_last10']:.1f}", flush=True)
    sampler.close()
    paired = {f"every{k}_minus_every{settings[0]}": [runs[f"every{k}/seed{s}"]["post_adapt_return_last10"]
                                                     - runs[f"every{settings[0]}/seed{s}"]["post_adapt_return_last10"]
                                                     for s in seeds] for k in settings[1:]}
    return {"iterations": iterations, "seeds": seeds, "runs": runs, "paired_difference_per_seed": paired}


def _paired(diffs: list[float]) -> str:
    """Mean paired difference with its 95% t-interval across seeds, and whether it excludes zero."""
    mean, low, high = mean_confidence_interval(diffs)
    if math.isnan(low):
        verdict = "no interval from one seed"
    else:
        verdict = "not distinguishable from zero" if low <= 0 <= high else "distinguishable from zero"
    return f"{mean:+.1f} [{low:+.1f}, {high:+.1f}], {verdict} ({', '.join(f'{d:+.1f}' for d in diffs)})"


def to_markdown(results: dict, level: int = 1) -> str:
    """The check's table as Markdown; `level` is the heading level of the title."""
    head = "#" * level
    check = results["fisher_check"]
    settings = sorted({int(name.split("/")[0].removeprefix("every")) for name in check["runs"]})
    seeds = check["seeds"]
    lines = [f"{head} Fisher on every k-th step: a meta-training check", "",
             f"{results['machine']}. Default cheetah velocity config, {check['iterations']} iterations from "
             f"scratch, seeds {', '.join(map(str, seeds))}; post-adaptation return averaged over the last 10 "
             "iterations; the first iteration's data are the same for every setting of a seed.", "",
             "| Fisher on | " + " | ".join(f"seed {seed}" for seed in seeds) + " | mean | "
             f"paired difference to every {settings[0]}: mean, 95% t-interval across seeds (per seed) |",
             "|---|" + "---:|" * (len(seeds) + 2)]
    for every in settings:
        values = [check["runs"][f"every{every}/seed{seed}"]["post_adapt_return_last10"] for seed in seeds]
        diffs = check["paired_difference_per_seed"].get(f"every{every}_minus_every{settings[0]}")
        paired = "" if diffs is None else _paired(diffs)
        label = "every step" if every == 1 else f"every {every}th step"
        lines.append(f"| {label} | " + " | ".join(f"{v:.1f}" for v in values)
                     + f" | {statistics.mean(values):.1f} | {paired} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    """Run the check and write JSON and Markdown."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--debug", action="store_true", help=DEBUG_HELP)
    parser.add_argument("--iterations", type=int, default=30, help="meta-iterations per run (at least 10)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3], help="seeds (none of them tuned on)")
    parser.add_argument("--settings", type=int, nargs="+", default=[1, 5, 10],
                        help="fisher_every values; the first is the one the others are compared with")
    parser.add_argument("--out", type=Path, default=Path("runs/fisher_check"))
    args = parser.parse_args()
    check_writable(args.out, "out")
    if args.iterations < 10:
        raise ValueError(f"iterations must be >= 10 (the last 10 are averaged), got {args.iterations}")
    if len(set(args.seeds)) < 2:
        raise ValueError(f"seeds: give at least two distinct seeds (intervals are across seeds), got {args.seeds}")
    if min(args.settings) < 1:
        raise ValueError(f"settings must be fisher_every values >= 1, got {args.settings}")
    results = {"machine": machine(),
               "fisher_check": check_fisher_every(args.iterations, args.seeds, tuple(args.settings))}
    write_results(args.out, "fisher_check", results, to_markdown(results))


if __name__ == "__main__":
    run_script(main)
