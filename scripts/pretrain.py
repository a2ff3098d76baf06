"""Train the multi-task pretrained baseline (one TRPO policy over a family's training tasks).

    python scripts/pretrain.py --config assets/configs/pretrained_cheetah_velocity.yaml --run runs/pretrain
    python scripts/pretrain.py ... --resume      # continue an interrupted run

The checkpoints (kind "pretrained") are what `evaluate_adaptation.py --pretrained` compares MAML
with; each records its config, code commit, observation layout, wall time and env steps.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from agents.meta.pretrain import PretrainConfig, pretrain
from agents.runs.cli import DEBUG_HELP, RESUME_HINT, check_writable, run_script
from agents.runs.config import config_from_dict, config_to_dict
from agents.runs.rundir import load_yaml, prepare_run_dir


def main() -> None:
    """Parse arguments, validate the config, prepare the run directory, pretrain."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--debug", action="store_true", help=DEBUG_HELP)
    parser.add_argument("--config", type=Path, required=True, help="YAML file with PretrainConfig fields")
    parser.add_argument("--run", type=Path, required=True, help="run directory to create (or resume)")
    parser.add_argument("--resume", action="store_true", help="continue the run in --run from its last checkpoint")
    parser.add_argument("--force", action="store_true", help="move an existing run aside and start afresh")
    parser.add_argument("--iterations", type=int, help="override the config's iterations")
    args = parser.parse_args()
    check_writable(args.run, "run")  # before any work
    raw = load_yaml(args.config)
    if args.iterations is not None:
        raw["iterations"] = args.iterations
    config = config_from_dict(PretrainConfig, raw)
    run = prepare_run_dir(args.run, resume=args.resume, force=args.force, config=config_to_dict(config),
                          changeable={"resume", "force", "iterations", "num_threads"},
                          defaults=config_to_dict(PretrainConfig(family=config.family)))
    pretrain(config, run)
    print(f"checkpoints: {run.checkpoints.resolve()}")


if __name__ == "__main__":
    run_script(main, RESUME_HINT)
