r"""Evaluate fast adaptation: a MAML initialisation against baselines on held-out tasks.

    python scripts/evaluate_adaptation.py --checkpoint assets/checkpoints/maml_cheetah_velocity.pt --out runs/eval
    python scripts/evaluate_adaptation.py --checkpoint runs/maml/checkpoints/latest.pt --out runs/eval \
        --family cheetah_velocity --split test --tasks 40 --episodes 20 --steps 3 --seeds 0 1 2 \
        --baselines pretrained,random --pretrained runs/pretrain/checkpoints/latest.pt   # from scripts/pretrain.py
    python scripts/evaluate_adaptation.py ... --backend ray       # sampling on Ray actors (same episodes)
    python scripts/evaluate_adaptation.py --checkpoint ... --terrains gaps:0.5 obstacles:0.3 --out runs/eval

Each seed draws its own tasks from the family's split (--tasks per seed), so the intervals (95 %
stratified bootstrap over tasks within seeds) cover the task distribution; the random baseline is
one fresh init per seed; the pretrained baseline defaults to the family's shipped
`assets/checkpoints/pretrained_<family>.pt`. Writes table.csv, table.md, adaptation.png and
results.json to --out. Every
argument is checked before anything is simulated: a checkpoint evaluated on a family, robot or
observation layout it was not trained for is one line naming the mismatch.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

from agents.meta.adaptation_report import write_all
from agents.meta.evaluation import (
    AdaptationConfig,
    compare,
    parse_terrain_tasks,
    random_init,
    task_seed_for,
)
from agents.runs.checkpoint import load_checkpoint, policy_sha256
from agents.runs.cli import DEBUG_HELP, check_writable, run_script
from agents.runs.layout import check_layout
from agents.runs.ray_backend import BACKENDS, check_backend
from envs.tasks import SPLITS, TaskDistribution, get_family

SHIPPED = Path(__file__).resolve().parent.parent / "assets" / "checkpoints"

BASELINES = ("random", "pretrained")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--debug", action="store_true", help=DEBUG_HELP)
    parser.add_argument("--checkpoint", type=Path, required=True, help="the MAML initialisation (checkpoint)")
    parser.add_argument("--out", type=Path, required=True, help="folder for the tables, figure and results.json")
    parser.add_argument("--family", help="task family (default: the checkpoint's metadata 'family')")
    parser.add_argument("--split", default="test", help="family split to draw tasks from: test (held out) or train")
    parser.add_argument("--terrains", nargs="+", metavar="KIND:DIFFICULTY",
                        help="evaluate on these terrains (progress reward) instead of the family's tasks")
    parser.add_argument("--tasks", type=int, default=40, help="tasks per seed, drawn from the family split")
    parser.add_argument("--task-seed", type=int, default=0,
                        help="seed of the task draws (each evaluation seed draws its own tasks and terrains from it)")
    parser.add_argument("--cross-family", action="store_true",
                        help="allow evaluating a checkpoint on a family (or terrains) it was not trained for")
    parser.add_argument("--steps", type=int, default=3, help="k, inner policy-gradient steps")
    parser.add_argument("--inner-lr", type=float, default=0.1,
                        help="inner SGD step size (a Meta-SGD checkpoint adapts with its learned ones)")
    parser.add_argument("--episodes", type=int, default=20, help="episodes per task and step")
    parser.add_argument("--horizon", type=int, default=200, help="steps per episode")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2],
                        help="evaluation seeds: each has its own tasks, resets, noise and random init")
    parser.add_argument("--baselines", default="pretrained,random",
                        help=f"comma-separated baselines from {','.join(BASELINES)} ('' for none)")
    parser.add_argument("--random-seed", type=int, default=1000,
                        help="the random baseline of evaluation seed s is initialised with seed random_seed + s")
    parser.add_argument("--pretrained", type=Path,
                        help="checkpoint of the multi-task pretrained baseline (default: the family's shipped one)")
    parser.add_argument("--num-threads", type=int,
                        help="sampler threads (default: all cores; results do not depend on it)")
    parser.add_argument("--torch-threads", type=int, default=1,
                        help="torch intra-op threads; small MLPs run fastest on one, next to the sampler threads")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument("--backend", choices=BACKENDS, default="local",
                        help="sample on this machine's threads, or on Ray actors (same episodes)")
    parser.add_argument("--ray-address", help="the Ray cluster to join (HOST:PORT); default: a local Ray")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict[str, Path]:
    """Validate everything, build the methods, evaluate them and write the outputs; returns name -> path."""
    args = parse_args(argv)
    check_writable(args.out, "out")  # before any work
    if args.torch_threads < 1:
        raise ValueError(f"torch_threads must be >= 1, got {args.torch_threads}")
    check_backend(args.backend, args.ray_address)
    config = AdaptationConfig(steps=args.steps, inner_lr=args.inner_lr, episodes_per_task=args.episodes,
                              horizon=args.horizon, seeds=tuple(args.seeds), num_threads=args.num_threads)
    baselines = [b.strip() for b in args.baselines.split(",") if b.strip()]
    unknown = sorted(set(baselines) - set(BASELINES))
    if unknown:
        raise ValueError(f"baselines must be among {list(BASELINES)}, got {unknown}")
    if args.split not in SPLITS:
        raise ValueError(f"split must be one of {list(SPLITS)}, got {args.split!r}")
    if args.tasks < 1:
        raise ValueError(f"tasks must be >= 1, got {args.tasks}")
    if args.task_seed < 0 or args.random_seed < 0:
        raise ValueError(f"task_seed and random_seed must be >= 0, got {args.task_seed}, {args.random_seed}")
    family = get_family(args.family) if args.family is not None else None

    maml = load_checkpoint(args.checkpoint, expected_robot=family.robot if family else None)
    trained_on = maml.metadata.get("family")
    if family is None and trained_on is not None:
        family = get_family(trained_on)
    robot = maml.robot
    if family is not None and family.robot != robot:
        raise ValueError(f"family {family.name!r} is for robot {family.robot!r}, the checkpoint for {robot!r}")
    if not args.cross_family and trained_on is not None:
        if family is not None and family.name != trained_on:
            raise ValueError(f"family: the checkpoint was trained on {trained_on!r}, not {family.name!r} "
                             "(pass --cross-family to measure transfer)")
        if args.terrains and not rewards_progress(trained_on):
            raise ValueError(f"terrains: the checkpoint was trained on {trained_on!r}, whose tasks are not terrain "
                             "progress tasks (pass --cross-family to measure transfer)")
    height_scan = check_layout(maml, "checkpoint")
    seeds = tuple(args.seeds)
    if args.terrains:
        tasks = [parse_terrain_tasks(args.terrains, seed=task_seed_for(args.task_seed, s) % 2**31) for s in seeds]
    elif family is None:
        raise ValueError("family: give --family (the checkpoint's metadata names none) or --terrains")
    else:
        tasks = [TaskDistribution(family.name, task_seed_for(args.task_seed, s)).sample(args.tasks, split=args.split)
                 for s in seeds]
    arch = maml.policy.hidden_sizes

    pretrained_path = args.pretrained
    if "pretrained" in baselines and pretrained_path is None:
        shipped = SHIPPED / f"pretrained_{family.name}.pt" if family is not None else None
        if shipped is None or not shipped.is_file():
            raise ValueError("baselines: 'pretrained' needs --pretrained CHECKPOINT (from scripts/pretrain.py; no "
                             f"shipped pretrained_<family>.pt for {family.name if family else 'these terrains'})")
        pretrained_path = shipped
    pretrained = None
    if "pretrained" in baselines:
        checkpoint = load_checkpoint(pretrained_path, expected_robot=robot, expected_obs_dim=maml.obs_dim,
                                     expected_act_dim=maml.act_dim)
        check_layout(checkpoint, "pretrained")
        pretrained_on = checkpoint.metadata.get("family")
        if not args.cross_family and None not in (pretrained_on, trained_on) and pretrained_on != trained_on:
            raise ValueError(f"pretrained: trained on {pretrained_on!r}, the checkpoint on {trained_on!r} "
                             "(the baseline must have seen the same family)")
        pretrained = checkpoint.policy

    torch.set_num_threads(args.torch_threads)
    outputs: dict[str, Path] = {}
    methods = {"maml": maml.policy}
    if pretrained is not None:
        methods["pretrained"] = pretrained
    if "random" in baselines:
        methods["random"] = [random_init(maml.obs_dim, maml.act_dim, arch, args.random_seed + s) for s in seeds]
    sampler = None
    if args.backend == "ray":
        from agents.runs.ray_sampler import RaySampler  # only with the optional extra

        sampler = RaySampler(robot, config.horizon, height_scan=height_scan, address=args.ray_address)
    try:
        learned = {"maml": maml.extra_state["inner_lrs"]} if "inner_lrs" in maml.extra_state else None
        result = compare(methods, tasks, robot, config, height_scan=height_scan, progress=not args.quiet,
                         sampler=sampler, inner_lrs=learned)
    finally:
        if sampler is not None:
            sampler.close()
    sources = {"maml": str(args.checkpoint), "random": [f"random_init(seed={args.random_seed + s})" for s in seeds],
               "pretrained": str(pretrained_path)}
    budgets = {"maml": (maml.iteration, maml.metadata.get("budget"))}
    if "pretrained" in methods:
        budgets["pretrained"] = (checkpoint.iteration, checkpoint.metadata.get("budget"))
    metadata = {"sources": {name: sources[name] for name in methods},
                "training": {name: {"iterations": iterations, "budget": budget}
                             for name, (iterations, budget) in budgets.items()},
                "policy_sha256": {name: policy_sha256(policy) for name, policy in methods.items()
                                  if isinstance(policy, torch.nn.Module)},
                "family": family.name if family else None,
                "split": None if args.terrains else args.split, "task_seed": args.task_seed,
                "height_scan": height_scan, "argv": list(argv) if argv is not None else sys.argv[1:]}
    outputs.update(write_all(result, args.out, metadata=metadata))
    print(outputs["table.md"].read_text(encoding="utf-8"))
    print(f"outputs: {args.out.resolve()}")
    return outputs


def rewards_progress(family: str) -> bool:
    """Whether a family's tasks reward progress (terrain tasks), not a target velocity."""
    return all(task.goal.target_velocity is None for task in TaskDistribution(family, 0).sample(8))


if __name__ == "__main__":
    run_script(main)
