r"""Evaluate adaptation methods on the same held-out tasks: MAML, a context adapter, baselines.

    python scripts/evaluate_adaptation.py --checkpoint assets/checkpoints/maml_cheetah_velocity.pt --out runs/eval
    python scripts/evaluate_adaptation.py --checkpoint runs/maml/checkpoints/latest.pt --out runs/eval \
        --family cheetah_velocity --split test --tasks 40 --episodes 20 --steps 3 --seeds 0 1 2 \
        --methods maml,pretrained,random --pretrained runs/pretrain/checkpoints/latest.pt  # from scripts/pretrain.py
    python scripts/evaluate_adaptation.py --methods context,maml,pretrained,random --family cheetah_terrain \
        --checkpoint assets/checkpoints/maml_cheetah_terrain.pt --out runs/eval_context
    python scripts/evaluate_adaptation.py ... --backend ray       # sampling on Ray actors (same episodes)
    python scripts/evaluate_adaptation.py --checkpoint ... --terrains gaps:0.5 obstacles:0.3 --out runs/eval

Methods: `maml` (--checkpoint) takes k inner policy-gradient steps; `context` (--context, default the
family's shipped `context_<family>.pt`) takes none: its estimate follows each episode, and its step
j is its j-th episode on the task with the previous episode's history carried over; `pretrained`
(--pretrained, default the shipped `pretrained_<family>.pt`) and `random` (one fresh init per seed)
take the same gradient steps as MAML; `retrieval` (--library, default assets/skills/<family>, from
`scripts/build_skills.py`) rolls out its probe policy first, retrieves for each task the skill
whose key is nearest to those episodes' embedding, and adapts that skill with the same gradient
steps. The first method is compared with each other one.

Each seed draws its own tasks from the family's split (--tasks per seed), so the intervals (95 %
stratified bootstrap over tasks within seeds) cover the task distribution. Writes table.csv,
table.md, adaptation.png and results.json to --out. Every argument is checked before anything is
simulated: a checkpoint evaluated on a family, robot or observation layout it was not trained for
is one line naming the mismatch.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from agents.meta.adaptation_report import write_all
from agents.meta.adaptation_result import AdaptationConfig
from agents.meta.context_train import load_context_policy
from agents.meta.evaluation import (
    compare,
    parse_terrain_tasks,
    random_init,
    task_seed_for,
)
from agents.meta.retrieval import SkillLibrary, load_library
from agents.runs.checkpoint import Checkpoint, load_checkpoint, policy_sha256
from agents.runs.cli import DEBUG_HELP, check_writable, run_script
from agents.runs.layout import check_layout
from agents.runs.ray_backend import BACKENDS, check_backend
from agents.sampler import Sampler
from envs.tasks import SPLITS, TaskDistribution, TaskFamily, get_family

SHIPPED = Path(__file__).resolve().parent.parent / "assets" / "checkpoints"

METHODS = ("maml", "context", "retrieval", "pretrained", "random")
SKILLS = SHIPPED.parent / "skills"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--debug", action="store_true", help=DEBUG_HELP)
    parser.add_argument("--methods", default="maml,pretrained,random",
                        help=f"comma-separated methods from {','.join(METHODS)}; the first is compared with the others")
    parser.add_argument("--checkpoint", type=Path, help="the MAML initialisation (checkpoint; method 'maml')")
    parser.add_argument("--context", type=Path,
                        help="the context adapter (scripts/train_context.py; default: the family's shipped one)")
    parser.add_argument("--pretrained", type=Path,
                        help="checkpoint of the multi-task pretrained baseline (default: the family's shipped one)")
    parser.add_argument("--library", type=Path,
                        help="skill library folder (scripts/build_skills.py; default: assets/skills/<family>)")
    parser.add_argument("--also", nargs="+", default=[], metavar="NAME=CHECKPOINT",
                        help="more policies to compare, adapted with the same gradient steps (e.g. fixed skills as a "
                             "control for retrieval); they follow --methods in the tables")
    parser.add_argument("--out", type=Path, required=True, help="folder for the tables, figure and results.json")
    parser.add_argument("--family", help="task family (default: the first checkpoint's metadata 'family')")
    parser.add_argument("--split", default="test", help="family split to draw tasks from: test (held out) or train")
    parser.add_argument("--terrains", nargs="+", metavar="KIND:DIFFICULTY",
                        help="evaluate on these terrains (progress reward) instead of the family's tasks")
    parser.add_argument("--tasks", type=int, default=40, help="tasks per seed, drawn from the family split")
    parser.add_argument("--task-seed", type=int, default=0,
                        help="seed of the task draws (each evaluation seed draws its own tasks and terrains from it)")
    parser.add_argument("--cross-family", action="store_true",
                        help="allow evaluating checkpoints on a family (or terrains) they were not trained for")
    parser.add_argument("--steps", type=int, default=3,
                        help="k: inner policy-gradient steps (context: further episodes of experience)")
    parser.add_argument("--inner-lr", type=float, default=0.1,
                        help="inner SGD step size (a Meta-SGD checkpoint, --checkpoint or --also, adapts with "
                             "its learned ones)")
    parser.add_argument("--episodes", type=int, default=20, help="episodes per task and step")
    parser.add_argument("--horizon", type=int, default=200, help="steps per episode")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2],
                        help="evaluation seeds: each has its own tasks, resets, noise and random init")
    parser.add_argument("--random-seed", type=int, default=1000,
                        help="the random baseline of evaluation seed s is initialised with seed random_seed + s")
    parser.add_argument("--num-threads", type=int,
                        help="sampler threads (default: all cores; results do not depend on it)")
    parser.add_argument("--torch-threads", type=int, default=1,
                        help="torch intra-op threads; small MLPs run fastest on one, next to the sampler threads")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument("--backend", choices=BACKENDS, default="local",
                        help="sample on this machine's threads, or on Ray actors (same episodes)")
    parser.add_argument("--ray-address", help="the Ray cluster to join (HOST:PORT); default: a local Ray")
    return parser.parse_args(argv)


def check_arguments(args: argparse.Namespace) -> tuple[list[str], dict[str, Path]]:
    """The methods asked for and the extra policies (`--also`), after checking every plain argument
    (one ValueError naming the field)."""
    if args.torch_threads < 1:
        raise ValueError(f"torch_threads must be >= 1, got {args.torch_threads}")
    check_backend(args.backend, args.ray_address)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = sorted(set(methods) - set(METHODS))
    if not methods or unknown:
        raise ValueError(f"methods must be among {list(METHODS)}, got {unknown or 'none'}")
    if len(set(methods)) != len(methods):
        raise ValueError(f"methods must not repeat, got {methods}")
    if "maml" in methods and args.checkpoint is None:
        raise ValueError("checkpoint: method 'maml' needs --checkpoint (a MAML initialisation)")
    for flag, method in (("checkpoint", "maml"), ("context", "context"), ("pretrained", "pretrained"),
                         ("library", "retrieval")):
        if getattr(args, flag) is not None and method not in methods:
            raise ValueError(f"{flag}: given, but method {method!r} is not in --methods {','.join(methods)}")
    if args.split not in SPLITS:
        raise ValueError(f"split must be one of {list(SPLITS)}, got {args.split!r}")
    if args.tasks < 1:
        raise ValueError(f"tasks must be >= 1, got {args.tasks}")
    if args.task_seed < 0 or args.random_seed < 0:
        raise ValueError(f"task_seed and random_seed must be >= 0, got {args.task_seed}, {args.random_seed}")
    if args.terrains:
        parse_terrain_tasks(args.terrains)  # each KIND:DIFFICULTY checked now; drawn per seed later
    also: dict[str, Path] = {}
    for item in args.also:
        name, _, path = item.partition("=")
        if not name or not path or name in METHODS or name in also:
            raise ValueError(f"also: each must be NAME=CHECKPOINT with a new name (not {list(METHODS)}), got {item!r}")
        also[name] = Path(path)
    return methods, also


def shipped(kind: str, family: TaskFamily | None) -> Path:
    """The family's shipped `<kind>_<family>.pt`, or a ValueError naming the flag to give instead."""
    path = SHIPPED / f"{kind}_{family.name}.pt" if family is not None else None
    if path is None or not path.is_file():
        where = f"for {family.name}" if family else "without --family"
        raise ValueError(f"{kind}: method {kind!r} needs --{kind} CHECKPOINT (no shipped {kind}_<family>.pt {where})")
    return path


def main(argv: Sequence[str] | None = None) -> dict[str, Path]:
    """Validate everything, build the methods, evaluate them and write the outputs; returns name -> path."""
    args = parse_args(argv)
    check_writable(args.out, "out")  # before any work
    names, also = check_arguments(args)
    config = AdaptationConfig(steps=args.steps, inner_lr=args.inner_lr, episodes_per_task=args.episodes,
                              horizon=args.horizon, seeds=tuple(args.seeds), num_threads=args.num_threads)
    family = get_family(args.family) if args.family is not None else None

    # Every checkpoint is loaded and checked (robot, family, observation) before anything is simulated.
    loaded: dict[str, Checkpoint] = {}
    policies: dict[str, Any] = {}
    sources: dict[str, Any] = {}
    wanted = [(name, args.checkpoint if name == "maml" else getattr(args, name))
              for name in ("maml", "context", "pretrained") if name in names] + list(also.items())
    for name, path in wanted:
        if path is None:
            path = shipped(name, family)
        checkpoint = load_checkpoint(path, expected_robot=family.robot if family else None)
        field = "checkpoint" if name == "maml" else name if name in METHODS else f"also {name}"
        trained_on = checkpoint.metadata.get("family")
        if family is None and trained_on is not None:
            family = get_family(trained_on)
        if family is not None and family.robot != checkpoint.robot:
            raise ValueError(f"{field}: for robot {checkpoint.robot!r}, family {family.name!r} is for {family.robot!r}")
        if not args.cross_family and trained_on is not None:
            if family is not None and family.name != trained_on:
                raise ValueError(f"{field}: trained on {trained_on!r}, not {family.name!r} "
                                 "(pass --cross-family to measure transfer)")
            if args.terrains and not rewards_progress(trained_on):
                raise ValueError(f"terrains: the {field} was trained on {trained_on!r}, whose tasks are not terrain "
                                 "progress tasks (pass --cross-family to measure transfer)")
        if name == "context":
            policies[name] = load_context_policy(path, family.name if family else None)
        else:
            check_layout(checkpoint, field)
            if checkpoint.metadata.get("observation", {}).get("privileged_in_obs"):
                raise ValueError(f"{field}: {path} observes the privileged factors (a teacher); evaluate it through "
                                 "its context adapter (--methods context)")
            policies[name] = checkpoint.policy
        loaded[name], sources[name] = checkpoint, str(path)
    if "retrieval" in names:
        folder = args.library
        if folder is None:
            if family is None or not (SKILLS / family.name).is_dir():
                raise ValueError("library: method 'retrieval' needs --library FOLDER (no shipped assets/skills/"
                                 f"{family.name if family else '<family>'})")
            folder = SKILLS / family.name
        library = load_library(folder, family.name if family else None)
        if family is None:
            family = get_family(library.family)
        elif not args.cross_family and library.family != family.name:
            raise ValueError(f"library: built for {library.family!r}, not {family.name!r} "
                             "(pass --cross-family to measure transfer)")
        policies["retrieval"], sources["retrieval"] = library, str(folder)
    height_scan = agreed_height_scan(loaded)
    seeds = tuple(args.seeds)
    if args.terrains:
        tasks = [parse_terrain_tasks(args.terrains, seed=task_seed_for(args.task_seed, s) % 2**31) for s in seeds]
    elif family is None:
        raise ValueError("family: give --family (no checkpoint's metadata names one) or --terrains")
    else:
        tasks = [TaskDistribution(family.name, task_seed_for(args.task_seed, s)).sample(args.tasks, split=args.split)
                 for s in seeds]
    if family is None and not loaded:
        raise ValueError("family: give --family (the robot of the terrains) when no checkpoint is evaluated")
    robot = family.robot if family is not None else next(iter(loaded.values())).robot
    dims = {(p.obs_dim, p.act_dim) for p in (v.probe if isinstance(v, SkillLibrary) else v for v in policies.values())}
    if len(dims) > 1:
        raise ValueError(f"methods: the checkpoints observe and act with different sizes {sorted(dims)}")
    if "random" in names:
        reference = next((loaded[n].policy for n in ("maml", "pretrained") if n in loaded), None)
        arch = reference.hidden_sizes if reference is not None else (64, 64)
        probe = Sampler(robot, 1, height_scan=height_scan, num_threads=1)
        policies["random"] = [random_init(probe.obs_dim, probe.act_dim, arch, args.random_seed + s) for s in seeds]
        probe.close()
        sources["random"] = [f"random_init(seed={args.random_seed + s})" for s in seeds]

    torch.set_num_threads(args.torch_threads)
    methods = {name: policies[name] for name in [*names, *also]}
    sampler = None
    if args.backend == "ray":
        from agents.runs.ray_sampler import RaySampler  # only with the optional extra

        sampler = RaySampler(robot, config.horizon, height_scan=height_scan, address=args.ray_address)
    try:
        # Meta-SGD checkpoints (--checkpoint or --also) adapt with their own learned step sizes.
        learned = {name: checkpoint.extra_state["inner_lrs"] for name, checkpoint in loaded.items()
                   if name in methods and "inner_lrs" in checkpoint.extra_state}
        result = compare(methods, tasks, robot, config, height_scan=height_scan, progress=not args.quiet,
                         sampler=sampler, inner_lrs=learned)
    finally:
        if sampler is not None:
            sampler.close()
    metadata = {"sources": {name: sources[name] for name in methods},
                "training": {**{name: {"iterations": c.iteration, "budget": training_budget(c)}
                                for name, c in loaded.items()},
                             **({"retrieval": {"budget": policies["retrieval"].records.get("budget"),
                                               "accuracy": policies["retrieval"].records.get("accuracy")}}
                                if "retrieval" in methods else {})},
                "policy_sha256": {name: policy_sha256(c.policy) for name, c in loaded.items()},
                "family": family.name if family else None,
                "split": None if args.terrains else args.split, "task_seed": args.task_seed,
                "height_scan": height_scan, "argv": list(argv) if argv is not None else sys.argv[1:]}
    outputs = write_all(result, args.out, metadata=metadata)
    print(outputs["table.md"].read_text(encoding="utf-8"))
    print(f"outputs: {args.out.resolve()}")
    return outputs


def agreed_height_scan(loaded: dict[str, Checkpoint]) -> bool:
    """Whether the checkpoints observe the height scan; they must agree (one sampler serves them all)."""
    scans = {name: bool(c.metadata.get("observation", {}).get("height_scan", False)) for name, c in loaded.items()}
    if len(set(scans.values())) > 1:
        raise ValueError(f"methods: the checkpoints disagree on the height scan {scans}")
    return next(iter(scans.values()), False)


def training_budget(checkpoint: Checkpoint) -> dict | None:
    """A checkpoint's recorded budget; a context adapter's includes its teacher's."""
    budget = checkpoint.metadata.get("budget")
    teacher = checkpoint.metadata.get("teacher", {}).get("budget")
    if budget is None or not teacher:
        return budget
    return {**budget, "teacher": teacher}


def rewards_progress(family: str) -> bool:
    """Whether a family's tasks reward progress (terrain tasks), not a target velocity."""
    return all(task.goal.target_velocity is None for task in TaskDistribution(family, 0).sample(8))


if __name__ == "__main__":
    run_script(main)
