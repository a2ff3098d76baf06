"""What is checked and decided before a curriculum's run directory is touched: that every task
fits the robot and the init fits the envs and `adapt_steps` (`check_curriculum`), and what a stored
config from an older version means by a field it lacks (`resume_defaults`).
"""

from __future__ import annotations

from typing import Any

from agents.continual.curriculum import CurriculumConfig
from agents.continual.initial import curriculum_step_sizes, init_step_sizes, load_init
from agents.runs.config import config_defaults


def check_curriculum(config: CurriculumConfig) -> None:
    """Everything that can be checked before a run directory is touched: every task on the robot
    (actuator indices, headings) and the initial checkpoint (robot, observation and action sizes).

    Raises:
        ValueError: naming the stage or field at fault.
    """
    from envs.locomotion import LocomotionEnv

    probe = LocomotionEnv(config.robot, height_scan=config.height_scan, goal_in_obs=config.goal_in_obs)
    named = [(f"stages[{i}]", s) for i, s in enumerate(config.stages)]
    named += [(f"evaluation.held_out[{i}]", s) for i, s in enumerate(config.evaluation.held_out)]
    for where, stage in named:
        task = stage.task(where)
        try:
            probe.set_task(task)
        except ValueError as error:
            raise ValueError(f"{where}: {error}") from error
    if config.init != "scratch":
        start = load_init(config.init, config.robot, probe.observation_space.shape[0], probe.action_space.shape[0])
        curriculum_step_sizes(config, dict(start.named_parameters()))  # learned sizes must fit, cover adapt_steps
    probe.close()


def resume_defaults(config: CurriculumConfig) -> dict[str, Any]:
    """What a run directory's stored config means by a field it lacks (one added to the code after
    the run started), for `prepare_run_dir(defaults=...)`: the field's default, except
    `learned_step_sizes` where the init has learned sizes: runs made before that field adapted with
    `inner_lr`, so resuming one needs `learned_step_sizes: false` to continue as it began."""
    defaults = config_defaults(CurriculumConfig)
    if config.init != "scratch" and init_step_sizes(config.init) is not None:
        defaults["learned_step_sizes"] = False
    return defaults
