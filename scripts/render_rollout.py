r"""Render a checkpoint's policy on chosen terrains, before and after adaptation, to MP4 or GIF.

    python scripts/render_rollout.py --checkpoint assets/checkpoints/maml_cheetah_velocity.pt \
        --terrains flat:0 rough:0.5 stairs_up:0.4 --adapt-steps 1 --out runs/videos/rollout.mp4

With --adapt-steps k > 0 the video has two rows: the policy as loaded (top) and after k
adaptation steps on each terrain (bottom). Each panel shows the task and the running return.
A checkpoint with learned step sizes (Meta-SGD, per step or not) adapts with them unless --inner-lr
is given. A context adapter (scripts/train_context.py) is shown after --adapt-episodes episodes of
experience on each terrain: its estimate from them held fixed (`ContextPolicy.with_embedding`).
--physics sets the tasks' physics, e.g. the quadruped family's held-out slippery ground and weak
motors:

    python scripts/render_rollout.py --checkpoint assets/checkpoints/context_quadruped_terrain_physics.pt \
        --robot quadruped --height-scan --terrains slope_down:0.5 obstacles:0.5 \
        --physics friction=0.2 motor_strength=0.6 --out runs/videos/quadruped_context.mp4
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from agents.continual.initial import fold_context, learned_step_sizes_or, load_init
from agents.meta.context import ContextPolicy
from agents.meta.inner import InnerLR, adapt
from agents.policy import GaussianMLPPolicy
from agents.runs.cli import DEBUG_HELP, check_writable, run_script
from agents.runs.video import render_policy
from agents.sampler import Sampler
from envs.tasks import Goal, Physics, Task, Terrain


def parse_terrain(text: str) -> Terrain:
    """'kind:difficulty[:seed]' -> Terrain (ValueError naming the field on bad input)."""
    parts = text.split(":")
    if len(parts) not in (2, 3):
        raise ValueError(f"--terrains entries must look like kind:difficulty[:seed], got {text!r}")
    try:
        difficulty, seed = float(parts[1]), int(parts[2]) if len(parts) == 3 else 0
    except ValueError as error:
        raise ValueError(f"--terrains entry {text!r}: difficulty must be a number, seed an integer") from error
    return Terrain(parts[0], difficulty, seed)


def parse_physics(entries: list[str]) -> Physics:
    """['friction=0.2', ...] -> Physics (ValueError naming the field and the allowed ones)."""
    values: dict[str, float] = {}
    allowed = sorted(name for name in Physics.__dataclass_fields__ if name != "disabled_actuators")
    for entry in entries:
        name, _, value = entry.partition("=")
        if name not in allowed:
            raise ValueError(f"--physics entries must look like NAME=VALUE with NAME one of {allowed}, got {entry!r}")
        try:
            values[name] = float(value)
        except ValueError as error:
            raise ValueError(f"--physics {name}: the value must be a number, got {value!r}") from error
    return Physics(**values)


DEFAULT_INNER_LR = 0.1


def adaptation_step_sizes(checkpoint: Path, policy: GaussianMLPPolicy, inner_lr: float | None,
                          adapt_steps: int) -> InnerLR:
    """The step sizes to adapt with: `inner_lr` when given, else the checkpoint's learned ones
    (Meta-SGD), else 0.1; learned per-step sizes must cover `adapt_steps` (ValueError otherwise)."""
    if inner_lr is not None:
        return inner_lr
    return learned_step_sizes_or(checkpoint, DEFAULT_INNER_LR, policy.parameters_dict(), adapt_steps,
                                 "--adapt-steps (the checkpoint's inner_lrs)")


def main() -> None:
    """Load, optionally adapt per terrain, render the grid."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--debug", action="store_true", help=DEBUG_HELP)
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--robot", default="cheetah")
    parser.add_argument("--terrains", nargs="+", default=["flat:0", "rough:0.5", "stairs_up:0.4"])
    parser.add_argument("--target-velocity", type=float, default=None, help="track this speed (default: progress)")
    parser.add_argument("--adapt-steps", type=int, default=0, help="adaptation steps per terrain (0: none)")
    parser.add_argument("--inner-lr", type=float, default=None,
                        help="inner step size (default: the checkpoint's learned sizes, else 0.1)")
    parser.add_argument("--adapt-episodes", type=int, default=10)
    parser.add_argument("--steps", type=int, default=200, help="frames (env steps) per panel")
    parser.add_argument("--physics", nargs="+", default=[], metavar="NAME=VALUE",
                        help="physics of every task, e.g. friction=0.2 motor_strength=0.6")
    parser.add_argument("--height-scan", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("runs/videos/rollout.mp4"))
    args = parser.parse_args()
    check_writable(args.out, "out")  # before any work

    if args.out.suffix not in (".mp4", ".gif"):
        raise ValueError(f"--out must end in .mp4 or .gif, got {args.out.name!r}")
    if args.adapt_steps < 0:
        raise ValueError(f"--adapt-steps must be >= 0, got {args.adapt_steps}")
    physics = parse_physics(args.physics)
    tasks = [Task(parse_terrain(t), physics, Goal(target_velocity=args.target_velocity)) for t in args.terrains]
    sampler = Sampler(args.robot, args.steps, height_scan=args.height_scan)
    start = load_init(args.checkpoint, args.robot, sampler.obs_dim, sampler.act_dim)
    if isinstance(start, ContextPolicy):
        if args.adapt_steps:
            raise ValueError("--adapt-steps: a context adapter adapts from experience (--adapt-episodes), "
                             "not by gradient steps; leave --adapt-steps at 0")
        folded = [fold_context(start, sampler, task, args.adapt_episodes, seed=args.seed)[0] for task in tasks]
        policy, params = folded[0], [f.parameters_dict() for f in folded]
        labels = [f"context after {args.adapt_episodes} ep.: {t.describe()}" for t in tasks]
    else:
        policy, params = start, [None] * len(tasks)
        labels = [f"before: {t.describe()}" if args.adapt_steps else t.describe() for t in tasks]
    if args.adapt_steps:
        step_sizes = adaptation_step_sizes(args.checkpoint, policy, args.inner_lr, args.adapt_steps)
        adapted = [dict(policy.named_parameters()) for _ in tasks]
        for k in range(args.adapt_steps):
            episodes = sampler.sample(policy, tasks, args.adapt_episodes, params=adapted, seed=args.seed + k)
            adapted = [{n: p.detach() for n, p in adapt(policy, a, e, step_sizes, True, step=k).items()}
                       for a, e in zip(adapted, episodes, strict=True)]
        params += adapted
        labels += [f"after {args.adapt_steps}: {t.describe()}" for t in tasks]
        tasks = tasks + tasks
    sampler.close()
    with torch.no_grad():
        path, totals = render_policy(policy, args.robot, tasks, args.out, steps=args.steps, params=params,
                                     labels=labels, height_scan=args.height_scan,
                                     columns=len(args.terrains) if args.adapt_steps else None, seed=args.seed)
    for label, total in zip(labels, totals, strict=True):
        print(f"{label:40s} return {total:8.1f}")
    print(f"video: {path.resolve()}")


if __name__ == "__main__":
    run_script(main)
