"""Meta-train a policy initialisation with MAML on a task family.

    python scripts/meta_train.py --config assets/configs/maml_cheetah_velocity.yaml --run runs/maml
    python scripts/meta_train.py ... --resume      # continue an interrupted run
    python scripts/meta_train.py ... --backend ray # sampling on Ray actors (local Ray, or --ray-address)
"""

from __future__ import annotations

from agents.meta.meta_train import MetaTrainConfig, check_init, meta_train
from agents.runs.cli import RESUME_HINT, run_script, training_parser, training_run
from agents.runs.ray_backend import BACKENDS, check_backend
from envs.tasks import get_family


def main() -> None:
    """Parse arguments, validate the config, prepare the run directory, meta-train."""
    parser = training_parser(__doc__, "MetaTrainConfig")
    parser.add_argument("--backend", choices=BACKENDS, default="local",
                        help="sample on this machine's threads, or on Ray actors (same episodes)")
    parser.add_argument("--ray-address", help="the Ray cluster to join (HOST:PORT); default: a local Ray")
    args = parser.parse_args()
    check_backend(args.backend, args.ray_address)  # before any work, as the run directory's checks
    config, run = training_run(MetaTrainConfig, args, path_fields=("init",), check=check_init)
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
