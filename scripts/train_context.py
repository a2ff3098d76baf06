"""Fit the context adapter (RMA's phase 2) to a teacher trained with the task's hidden factors.

    python scripts/pretrain.py --config assets/configs/teacher_cheetah_terrain.yaml --run runs/teacher
    python scripts/train_context.py --config assets/configs/context_cheetah_terrain.yaml --run runs/context
    python scripts/train_context.py ... --resume      # continue an interrupted run

The teacher (phase 1) is `pretrain.py` with `privileged_in_obs: true`; the config's `teacher:` names
its checkpoint (relative paths are found next to the config or under assets/). The checkpoints
(kind "context") hold the teacher and the adapter; `agents.meta.context_train.load_context_policy`
loads one as a policy that acts from the episode's history alone.
"""

from __future__ import annotations

from agents.meta.context_train import ContextConfig, load_teacher, train_context
from agents.runs.cli import RESUME_HINT, run_script, training_parser, training_run


def main() -> None:
    """Parse arguments, check the config and its teacher, prepare the run directory, fit."""
    args = training_parser(__doc__, "ContextConfig").parse_args()
    # The teacher is checked before the run directory is made: a wrong file writes nothing.
    config, run = training_run(ContextConfig, args, path_fields=("teacher",),
                               check=lambda checked: load_teacher(checked.teacher, checked.family))
    train_context(config, run)
    print(f"checkpoints: {run.checkpoints.resolve()}")


if __name__ == "__main__":
    run_script(main, RESUME_HINT)
