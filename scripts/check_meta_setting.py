r"""Does a meta-training setting change what is learned? Paired runs from scratch, across seeds.

Meta-trains the default cheetah velocity config (`assets/configs/maml_cheetah_velocity.yaml`) from
scratch for a few iterations per seed and setting, and compares each setting's post-adaptation
return over the last 10 iterations with the first setting's, paired by seed, with a 95%
t-interval across seeds. A setting is one or more config fields (`name=value`, comma-separated).
A seed's first iteration samples the same data under every setting of the same batch size.
Writes OUT/NAME.json and OUT/NAME.md; README tables are generated from `assets/results/NAME.json`
(`scripts/update_readme.py`).

    python scripts/check_meta_setting.py --name fisher_check --settings fisher_every=1 fisher_every=5 \
        --out assets/results                                                    # 3 seeds, ~10 min
    python scripts/check_meta_setting.py --name estimator_check --settings inner_estimator=score \
        inner_estimator=dice meta_sgd=true --out runs/checks
    python scripts/check_meta_setting.py --name batch_check --iterations 20 \
        --settings meta_batch_size=20,episodes_per_task=10 meta_batch_size=40,episodes_per_task=20
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchmark import machine, meta_setup, write_results

from agents.meta.meta_train import MetaTrainConfig
from agents.runs.cli import DEBUG_HELP, check_writable, run_script
from agents.runs.config import config_from_dict
from agents.runs.stats import mean_confidence_interval

#: fields a check may not vary (they are what the check holds fixed or measures with)
FIXED = ("family", "seed", "iterations", "horizon")


def parse_setting(text: str) -> dict:
    """`name=value[,name=value]` -> {name: value} (values parsed as YAML), each name a MetaTrainConfig field."""
    fields = {}
    for part in (p.strip() for p in text.split(",")):
        name, sep, value = part.partition("=")
        if not sep or not name:
            raise ValueError(f"settings: expected name=value[,name=value], got {text!r}")
        if name not in MetaTrainConfig.__dataclass_fields__ or name in FIXED:
            raise ValueError(f"settings: {name!r} is not a MetaTrainConfig field a check may vary "
                             f"(fixed: {', '.join(FIXED)})")
        fields[name] = yaml.safe_load(value)
    config_from_dict(MetaTrainConfig, {"family": "cheetah_velocity", **fields})  # validates the values
    return fields


def check_settings(iterations: int, seeds: list[int], settings: list[str]) -> dict:
    """Meta-train `iterations` iterations per seed and setting; each run's post-adaptation return
    over its last 10 iterations, the paired difference to `settings[0]` per seed, and the outer
    update's median seconds."""
    from agents.meta.meta_train import meta_iteration

    sampler, make = meta_setup()
    runs: dict[str, dict] = {}
    for seed in seeds:
        for setting in settings:
            config, learner = make({**parse_setting(setting), "seed": seed, "iterations": iterations})
            records = [meta_iteration(learner, sampler, config, i) for i in range(iterations)]
            tail = records[-10:]
            runs[f"{setting}/seed{seed}"] = {
                "post_adapt_return_last10": statistics.mean(r["post_adapt_return"] for r in tail),
                "pre_adapt_return_last10": statistics.mean(r["pre_adapt_return"] for r in tail),
                "update_s_median": statistics.median(r["time_meta_update"] for r in records),
                "env_steps": sum(r["env_steps"] for r in records),
                "post_adapt_return": [r["post_adapt_return"] for r in records]}
            print(f"{setting} seed {seed}: post-adapt return (last 10) "
                  f"{runs[f'{setting}/seed{seed}']['post_adapt_return_last10']:.1f}", flush=True)
    sampler.close()
    first = settings[0]
    paired = {f"{s}_minus_{first}": [runs[f"{s}/seed{seed}"]["post_adapt_return_last10"]
                                     - runs[f"{first}/seed{seed}"]["post_adapt_return_last10"] for seed in seeds]
              for s in settings[1:]}
    return {"iterations": iterations, "seeds": seeds, "settings": settings, "runs": runs,
            "paired_difference_per_seed": paired}


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
    check = results["check"]
    settings, seeds = check["settings"], check["seeds"]
    lines = [f"{head} {results['title']}: a meta-training check", "",
             f"{results['machine']}. Default cheetah velocity config, {check['iterations']} iterations from "
             f"scratch, seeds {', '.join(map(str, seeds))}; post-adaptation return averaged over the last 10 "
             "iterations; the first iteration's data are the same for every setting of a seed.", "",
             "| setting | " + " | ".join(f"seed {seed}" for seed in seeds) + " | mean | "
             f"paired difference to {settings[0]}: mean, 95% t-interval across seeds (per seed) |",
             "|---|" + "---:|" * (len(seeds) + 2)]
    for setting in settings:
        values = [check["runs"][f"{setting}/seed{seed}"]["post_adapt_return_last10"] for seed in seeds]
        diffs = check["paired_difference_per_seed"].get(f"{setting}_minus_{settings[0]}")
        paired = "" if diffs is None else _paired(diffs)
        lines.append(f"| {setting} | " + " | ".join(f"{v:.1f}" for v in values)
                     + f" | {statistics.mean(values):.1f} | {paired} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    """Run the check and write JSON and Markdown."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--debug", action="store_true", help=DEBUG_HELP)
    parser.add_argument("--name", required=True, help="the check's name: OUT/NAME.json and OUT/NAME.md")
    parser.add_argument("--title", help="the table's title (default: the settings)")
    parser.add_argument("--iterations", type=int, default=30, help="meta-iterations per run (at least 10)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3], help="seeds (none of them tuned on)")
    parser.add_argument("--settings", nargs="+", required=True,
                        help="name=value[,name=value] per setting; the first is the one the others are compared with")
    parser.add_argument("--out", type=Path, default=Path("runs/checks"))
    args = parser.parse_args()
    check_writable(args.out, "out")
    if not args.name.replace("_", "").isalnum():
        raise ValueError(f"name must be letters, digits and underscores, got {args.name!r}")
    if args.iterations < 10:
        raise ValueError(f"iterations must be >= 10 (the last 10 are averaged), got {args.iterations}")
    if len(set(args.seeds)) < 2:
        raise ValueError(f"seeds: give at least two distinct seeds (intervals are across seeds), got {args.seeds}")
    if len(set(args.settings)) < 2 or len(set(args.settings)) != len(args.settings):
        raise ValueError(f"settings: give at least two distinct settings, got {args.settings}")
    for setting in args.settings:
        parse_setting(setting)
    results = {"machine": machine(), "title": args.title or " vs ".join(args.settings),
               "check": check_settings(args.iterations, args.seeds, args.settings)}
    write_results(args.out, args.name, results, to_markdown(results))


if __name__ == "__main__":
    run_script(main)
