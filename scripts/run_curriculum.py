"""Run a locomotion curriculum: adapt -> EWC-regularised PPO -> consolidate -> evaluate, per stage.

    python scripts/run_curriculum.py --config assets/configs/curriculum_cheetah.yaml --run runs/curriculum
    python scripts/run_curriculum.py ... --resume     # continue after an interruption
    python scripts/run_curriculum.py ... --force      # move an existing run aside, start afresh
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from agents.continual.curriculum import CurriculumConfig, RegularizerConfig
from agents.continual.loop import Curriculum
from agents.continual.preflight import check_curriculum, resume_defaults
from agents.continual.report import write_report
from agents.runs.cli import DEBUG_HELP, RESUME_HINT, check_writable, run_script
from agents.runs.config import config_from_dict, config_to_dict, resolve_config_paths
from agents.runs.rundir import load_yaml, prepare_run_dir
from agents.runs.video import render_policy


def main() -> None:
    """Validate the config, prepare the run directory, run every stage, write videos and report."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--debug", action="store_true", help=DEBUG_HELP)
    parser.add_argument("--config", type=Path, required=True, help="curriculum YAML (CurriculumConfig fields)")
    parser.add_argument("--run", type=Path, required=True, help="run directory")
    parser.add_argument("--resume", action="store_true", help="continue the run from its last finished stage")
    parser.add_argument("--force", action="store_true", help="move an existing run aside and start afresh")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    args = parser.parse_args()
    check_writable(args.run, "run")  # before any work

    config = config_from_dict(CurriculumConfig, resolve_config_paths(load_yaml(args.config), args.config, ("init",)))
    check_curriculum(config)  # before the run directory is created or an old one moved aside
    config_dict = config_to_dict(config)
    run = prepare_run_dir(args.run, resume=args.resume, force=args.force, config=config_dict,
                          defaults=resume_defaults(config))
    curriculum = Curriculum(config, run, progress=not args.no_progress)
    state = curriculum.run_all()

    videos = []
    if config.video:
        stages = [config.stages[record["pool_index"]] for record in state.history]
        seen = list(dict.fromkeys(stage.label for stage in stages))
        unique = [next(s for s in stages if s.label == label) for label in seen]
        tasks = [stage.task() for stage in unique + list(config.evaluation.held_out)]
        labels = seen + [f"held-out: {stage.label}" for stage in config.evaluation.held_out]
        path, _ = render_policy(curriculum.policy, config.robot, tasks, run.videos / "final_policy.mp4",
                                steps=config.video_steps, labels=labels, height_scan=config.height_scan,
                                goal_in_obs=config.goal_in_obs, progress=not args.no_progress)
        videos.append(path)
    baseline = None
    if config.baseline == "finetune":  # the same stages, budget and seed without a regulariser
        print("baseline: the same curriculum, fine-tuned without a regulariser")
        plain = dataclasses.replace(config, regularizer=RegularizerConfig(kind="none"), baseline="none", video=False)
        folder = run.root / "baseline_finetune"
        started = folder.is_dir() and any(folder.iterdir())
        baseline_run = prepare_run_dir(folder, resume=started, config=config_to_dict(plain),
                                       defaults=resume_defaults(plain))
        baseline = Curriculum(plain, baseline_run, progress=not args.no_progress).run_all().to_dict()
    report = write_report(run.root, config_dict, state.to_dict(),
                          [stage.label for stage in config.evaluation.held_out], videos, baseline)
    print(f"report: {report.resolve()}")


if __name__ == "__main__":
    run_script(main, RESUME_HINT)
