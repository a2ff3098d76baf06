"""Meta-train a policy initialisation with MAML on a task family.

    python scripts/meta_train.py --config assets/configs/maml_cheetah_velocity.yaml --run runs/maml
    python scripts/meta_train.py ... --resume      # continue an interrupted run
    python scripts/meta_train.py ... --backend ray # sampling on Ray actors (local Ray, or --ray-address)
"""

from __future__ import annotations

import argparse
from pathlib import Path

from agents.meta.meta_train import MetaTrainConfig, meta_train
from agents.runs.cli import DEBUG_HELP, RESUME_HINT, check_writable, run_script
from agents.runs.config import config_from_dict, config_to_dict
from agents.runs.ray_backend import BACKENDS, check_backend
from agents.runs.rundir import load_yaml, prepare_run_dir
from envs.tasks import get_family


def main() -> None:
    """Parse arguments, validate the config, prepare the run directory, meta-train."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--debug", action="store_true", help=DEBUG_HELP)
    parser.add_argument("--config", type=Path, required=True, help="YAML file with MetaTrainConfig fields")
    parser.add_argument("--run", type=Path, required=True, help="run directory to create (or resume)")
    parser.add_argument("--resume", action="store_true", help="continue the run in --run from its last checkpoint")
    parser.add_argument("--force", action="store_true", help="move an existing run aside and start afresh")
    parser.add_argument("--iterations", type=int, help="override the config's iterations")
    parser.add_argument("--backend", choices=BACKENDS, default="local",
                        help="sample on this machine's threads, or on Ray actors (same episodes)")
    parser.add_argument("--ray-address", help="the Ray cluster to join (HOST:PORT); default: a local Ray")
    args = parser.parse_args()
    check_writable(args.run, "run")  # before any work
    check_backend(args.backend, args.ray_address)

    raw = load_yaml(args.config)
    if args.iterations is not None:
        raw["iterations"] = args.iterations
    config = config_from_dict(MetaTrainConfig, raw)
    run = prepare_run_dir(args.run, resume=args.resume, force=args.force, config=config_to_dict(config),
                          changeable={"resume", "force", "iterations", "num_threads"},
                          defaults=config_to_dict(MetaTrainConfig(family=config.family)))
    sampler = None
    if args.backend == "ray":
        from agents.runs.ray_sampler import RaySampler  # only with the optional extra

        sampler = RaySampler(get_family(config.family).robot, config.horizon, height_scan=config.height_scan,
                             address=args.ray_address)
    try:
        meta_train(config, run, sampler=sampler)
    finally:
        if sampler is not None:
            sampler.close()
    print(f"checkpoints: {run.checkpoints.resolve()}")


if __name__ == "__main__":
    run_script(main, RESUME_HINT)
