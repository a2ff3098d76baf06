"""Evaluate fast adaptation: a MAML initialisation against baselines on held-out tasks.

    python scripts/evaluate_adaptation.py --checkpoint runs/maml/checkpoints/latest.pt --out runs/eval \
        --family cheetah_velocity --split test --tasks 10 --steps 3 --seeds 0 1 2 \
        --baselines random,pretrained --pretrain-iterations 100
    python scripts/evaluate_adaptation.py ... --backend ray       # sampling on Ray actors (same episodes)
    python scripts/evaluate_adaptation.py --checkpoint ... --terrains gaps:0.5 obstacles:0.3 --out runs/eval

Writes table.csv, table.md, adaptation.png and results.json to --out (and pretrained.pt when the
pretrained baseline is trained here). Every argument is checked before anything is simulated.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

from agents.meta.evaluation import (
    AdaptationConfig,
    compare,
    infer_height_scan,
    parse_terrain_tasks,
    random_init,
    write_all,
)
from agents.meta.pretrain import PretrainConfig, pretrain, save_pretrained
from agents.runs.checkpoint import load_checkpoint
from agents.runs.cli import DEBUG_HELP, check_writable, run_script
from agents.runs.ray_backend import BACKENDS, check_backend
from envs.tasks import SPLITS, TaskDistribution, get_family

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
    parser.add_argument("--tasks", type=int, default=10, help="tasks drawn from the family split")
    parser.add_argument("--task-seed", type=int, default=0, help="seed of the task draw (and of the terrains)")
    parser.add_argument("--steps", type=int, default=3, help="k, inner policy-gradient steps")
    parser.add_argument("--inner-lr", type=float, default=0.1, help="inner SGD step size")
    parser.add_argument("--episodes", type=int, default=10, help="episodes per task and step")
    parser.add_argument("--horizon", type=int, default=200, help="steps per episode")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="evaluation seeds (CIs over them)")
    parser.add_argument("--baselines", default="random",
                        help=f"comma-separated baselines from {','.join(BASELINES)} ('' for none)")
    parser.add_argument("--random-seed", type=int, default=0, help="seed of the random-initialisation baseline")
    parser.add_argument("--pretrained", type=Path, help="checkpoint of the multi-task pretrained baseline")
    parser.add_argument("--pretrain-iterations", type=int,
                        help="train the pretrained baseline here for this many TRPO iterations")
    parser.add_argument("--pretrain-tasks", type=int, default=20, help="tasks per pretraining iteration")
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
    if "pretrained" in baselines and args.pretrained is None and args.pretrain_iterations is None:
        raise ValueError("baselines: 'pretrained' needs --pretrained CHECKPOINT or --pretrain-iterations N")
    if args.pretrain_iterations is not None and args.pretrain_iterations < 1:
        raise ValueError(f"pretrain_iterations must be >= 1, got {args.pretrain_iterations}")
    if args.split not in SPLITS:
        raise ValueError(f"split must be one of {list(SPLITS)}, got {args.split!r}")
    if args.tasks < 1:
        raise ValueError(f"tasks must be >= 1, got {args.tasks}")
    if args.task_seed < 0:
        raise ValueError(f"task_seed must be >= 0, got {args.task_seed}")
    family = get_family(args.family) if args.family is not None else None

    maml = load_checkpoint(args.checkpoint, expected_robot=family.robot if family else None)
    if family is None and maml.metadata.get("family") is not None:
        family = get_family(maml.metadata["family"])
    robot = maml.robot
    if family is not None and family.robot != robot:
        raise ValueError(f"family {family.name!r} is for robot {family.robot!r}, the checkpoint for {robot!r}")
    if args.terrains:
        tasks = parse_terrain_tasks(args.terrains, seed=args.task_seed)
    elif family is None:
        raise ValueError("family: give --family (the checkpoint's metadata names none) or --terrains")
    else:
        tasks = TaskDistribution(family.name, args.task_seed).sample(args.tasks, split=args.split)
    height_scan = infer_height_scan(robot, maml.obs_dim)
    arch = maml.policy.hidden_sizes

    pretrained = pretrain_config = None
    if "pretrained" in baselines and args.pretrained is not None:
        pretrained = load_checkpoint(args.pretrained, expected_robot=robot, expected_obs_dim=maml.obs_dim,
                                     expected_act_dim=maml.act_dim).policy
    elif "pretrained" in baselines:
        if family is None:
            raise ValueError("family: pretraining the baseline needs --family (the checkpoint's metadata names none)")
        pretrain_config = PretrainConfig(family=family.name, iterations=args.pretrain_iterations,
                                         tasks_per_iteration=args.pretrain_tasks, episodes_per_task=args.episodes,
                                         horizon=args.horizon, hidden_sizes=arch, height_scan=height_scan,
                                         num_threads=args.num_threads)

    torch.set_num_threads(args.torch_threads)
    outputs: dict[str, Path] = {}
    if pretrain_config is not None:
        pretrained = pretrain(pretrain_config, progress=not args.quiet)
        outputs["pretrained.pt"] = save_pretrained(args.out / "pretrained.pt", pretrained, pretrain_config,
                                                   pretrain_config.iterations)
    methods = {"maml": maml.policy}
    if pretrained is not None:
        methods["pretrained"] = pretrained
    if "random" in baselines:
        methods["random"] = random_init(maml.obs_dim, maml.act_dim, arch, args.random_seed)
    sampler = None
    if args.backend == "ray":
        from agents.runs.ray_sampler import RaySampler  # only with the optional extra

        sampler = RaySampler(robot, config.horizon, height_scan=height_scan, address=args.ray_address)
    try:
        result = compare(methods, tasks, robot, config, height_scan=height_scan, progress=not args.quiet,
                         sampler=sampler)
    finally:
        if sampler is not None:
            sampler.close()
    sources = {"maml": str(args.checkpoint), "random": f"random_init(seed={args.random_seed})",
               "pretrained": str(args.pretrained) if args.pretrained else str(outputs.get("pretrained.pt"))}
    metadata = {"sources": {name: sources[name] for name in methods}, "family": family.name if family else None,
                "split": None if args.terrains else args.split, "task_seed": args.task_seed,
                "height_scan": height_scan, "argv": list(argv) if argv is not None else sys.argv[1:]}
    outputs.update(write_all(result, args.out, metadata=metadata))
    print(outputs["table.md"].read_text(encoding="utf-8"))
    print(f"outputs: {args.out.resolve()}")
    return outputs


if __name__ == "__main__":
    run_script(main)
