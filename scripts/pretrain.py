"""Train the multi-task pretrained baseline (one TRPO policy over a family's training tasks).

    python scripts/pretrain.py --config assets/configs/pretrained_cheetah_velocity.yaml --run runs/pretrain
    python scripts/pretrain.py ... --resume      # continue an interrupted run

The checkpoints (kind "pretrained") are what `evaluate_adaptation.py --pretrained` compares MAML
with; each records its config, code commit, observation layout, wall time and env steps.
"""

from __future__ import annotations

from agents.meta.pretrain import PretrainConfig, pretrain
from agents.runs.cli import RESUME_HINT, run_script, training_parser, training_run


def main() -> None:
    """Parse arguments, validate the config, prepare the run directory, pretrain."""
    config, run = training_run(PretrainConfig, training_parser(__doc__, "PretrainConfig").parse_args())
    pretrain(config, run)
    print(f"checkpoints: {run.checkpoints.resolve()}")


if __name__ == "__main__":
    run_script(main, RESUME_HINT)
