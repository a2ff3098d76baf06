r"""Build a skill library for metric-based retrieval: one specialist per training terrain kind, keyed.

    python scripts/build_skills.py --family cheetah_terrain --out assets/skills/cheetah_terrain
    python scripts/build_skills.py --family cheetah_terrain --base runs/pre/checkpoints/latest.pt \
        --context runs/context/checkpoints/latest.pt --iterations 20 --out runs/skills

Each skill is the base policy (default: the family's shipped multi-task `pretrained_<family>.pt`)
after --iterations TRPO steps on tasks of one training kind; its key is the mean embedding (the
context adapter's estimate, default the shipped `context_<family>.pt`) of fresh tasks of that kind
probed by the base policy. Prints and records the retrieval accuracy on other fresh tasks of the
known kinds. `evaluate_adaptation.py --methods retrieval,...` starts each held-out task from its
nearest skill.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from agents.meta.context_train import load_context_policy
from agents.meta.skill_build import SkillBuildConfig, build_library
from agents.runs.checkpoint import load_checkpoint
from agents.runs.cli import DEBUG_HELP, check_writable, run_script
from agents.runs.layout import check_layout
from envs.tasks import get_family

SHIPPED = Path(__file__).resolve().parent.parent / "assets" / "checkpoints"


def main() -> None:
    """Check the inputs, build the library, write it to --out."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--debug", action="store_true", help=DEBUG_HELP)
    parser.add_argument("--family", required=True, help="the family whose training terrain kinds become skills")
    parser.add_argument("--base", type=Path,
                        help="policy the skills start from (default: the shipped pretrained_<family>.pt)")
    parser.add_argument("--context", type=Path,
                        help="context adapter that embeds tasks (default: the shipped context_<family>.pt)")
    parser.add_argument("--out", type=Path, required=True, help="folder to write the library into (must not exist)")
    parser.add_argument("--iterations", type=int, default=20, help="TRPO iterations per skill")
    parser.add_argument("--seed", type=int, default=0, help="seeds every task draw, reset and noise")
    parser.add_argument("--num-threads", type=int, help="sampler threads (results do not depend on it)")
    args = parser.parse_args()
    family = get_family(args.family)
    check_writable(args.out, "out")
    if args.out.exists():
        raise ValueError(f"out: {args.out} exists; give a new folder (a library is never overwritten)")
    config = SkillBuildConfig(family=family.name, iterations=args.iterations, seed=args.seed,
                              num_threads=args.num_threads)
    base_path = args.base or SHIPPED / f"pretrained_{family.name}.pt"
    context_path = args.context or SHIPPED / f"context_{family.name}.pt"
    for field, path, flag in (("base", base_path, "--base"), ("context", context_path, "--context")):
        if not path.is_file():
            raise ValueError(f"{field}: no checkpoint at {path} (give {flag} CHECKPOINT)")
    base = load_checkpoint(base_path, expected_robot=family.robot)
    height_scan = check_layout(base, "base")
    encoder = load_context_policy(context_path, family.name)
    for field, path in (("base", base_path), ("context", context_path)):
        trained_on = load_checkpoint(path).metadata.get("family")
        if trained_on is not None and trained_on != family.name:
            raise ValueError(f"{field}: {path} was trained on {trained_on!r}, not {family.name!r}")
    torch.set_num_threads(1)
    library = build_library(base.policy, encoder, config, height_scan=height_scan)
    index = library.save(args.out, context_path, base_path)
    accuracy = library.records["accuracy"]
    print(json.dumps({"accuracy": accuracy, "budget": library.records["budget"]}, indent=1))
    print(f"library: {index}")


if __name__ == "__main__":
    run_script(main)
