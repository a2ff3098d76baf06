"""Does EWC keep earlier skills? Fine-tuning vs L2 vs EWC on conflicting cheetah tasks.

Runs the same fixed curriculum once per method and seed (same budget per stage), plus one
from-scratch run per task and seed as the reference, then scores every method on one
normalisation: 0 = a randomly initialised policy's return, 1 = the from-scratch reference's final
return on that task, both averaged over the seeds (one reference run is too noisy to be the 1).
Forward transfer compares the areas under deterministic evaluation curves (every tenth of a
stage, `evaluation.curve_every`) with the references' mean curve. Writes
runs/bench_continual/results.md and results.json.

    python scripts/benchmark_continual.py                           # the stated budget, 3 seeds
    python scripts/benchmark_continual.py --steps 4000 --seeds 0    # a quick look
    python scripts/benchmark_continual.py --backend ray             # every run a Ray task (local Ray)
    python scripts/benchmark_continual.py --backend ray --ray-address HEAD:6379   # on a cluster
    python scripts/benchmark_continual.py --study thesis --backend ray   # the thesis study (resumes)

`--study thesis` runs the thesis study instead (`agents/continual/study.py`): initialisation
{scratch, pretrained, MAML} x method {fine-tuning, EWC, replay, PackNet} on the direction and
terrain sequences, 5 reported seeds, each method's setting chosen on 2 tuning seeds. Each
finished run's result is saved at once under --results (commit them: the study takes longer than
a session), and a repeated command resumes from them; --max-runs bounds one call. It writes the
summary to --summary (JSON, Markdown and a plot beside it).

Defaults: sequence "backward-twice", one output head per task, EWC lambda 100 on the raw Fisher
(floor 1e-5) and L2 lambda 1. The README's table was measured with `--ewc-normalize max`, lambdas
chosen on seed 0 (one of its reported seeds) from {1, 10, 100} (EWC) and {1, 10} (L2).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from agents.continual.curriculum import CurriculumConfig
from agents.continual.jobs import CurriculumJob, run_curriculum_job
from agents.continual.metrics import matrix_to_markdown, normalize, summarize
from agents.continual.study import CURVE_POINTS, StudySetting, StudyStore, curve_on_grid
from agents.continual.study import SEQUENCES as STUDY_SEQUENCES
from agents.continual.study_run import Runner, plot_study, run_study, study_markdown
from agents.runs.atomic import atomic_write_text
from agents.runs.cli import DEBUG_HELP, check_writable, run_script
from agents.runs.config import config_from_dict
from agents.runs.ray_backend import BACKENDS, check_backend, new_sweep_id, run_jobs
from agents.runs.stats import mean_confidence_interval

#: Sequences of conflicting skills. "backward-twice" (the default): run forward, run backward, run
#: backward on rough ground with weak motors; nothing after the first stage retrains running forward,
#: so its forgetting is measured after two stages of the opposite skill. "reverse": the third stage
#: runs forward on rough ground instead, which retrains the first skill and so hides its forgetting
#: in the end-of-sequence metrics. "still": run forward, run backward, then stand still (target
#: speed 0); with 150k steps PPO from scratch stood still worse than the random init, so this
#: sequence cannot be normalised at that budget.
SEQUENCES = {
    "backward-twice": [
        {"terrain": "flat", "name": "forward"},
        {"terrain": "flat", "direction": 3.141592653589793, "name": "backward"},
        {"terrain": "rough", "difficulty": 0.4, "seed": 3, "physics": {"motor_strength": 0.7},
         "direction": 3.141592653589793, "name": "backward-rough-weak"},
    ],
    "reverse": [
        {"terrain": "flat", "name": "forward"},
        {"terrain": "flat", "direction": 3.141592653589793, "name": "backward"},
        {"terrain": "rough", "difficulty": 0.4, "seed": 3, "physics": {"motor_strength": 0.7}, "name": "rough-weak"},
    ],
    "still": [
        {"terrain": "flat", "name": "forward"},
        {"terrain": "flat", "direction": 3.141592653589793, "name": "backward"},
        {"terrain": "flat", "target_velocity": 0.0, "name": "still"},
    ],
}


def base_config(steps: int, seed: int, stages: list[dict], hidden_sizes: list[int], task_heads: bool) -> dict:
    """The curriculum every method runs (only the regulariser differs)."""
    # The goal is in the observation: without it, one policy cannot tell "run forward" from "run
    # backward" and no method could keep both (a first run without it showed exactly that).
    return {"robot": "cheetah", "init": "scratch", "hidden_sizes": hidden_sizes, "horizon": 200, "schedule": "fixed",
            "goal_in_obs": True, "task_heads": task_heads,
            "stages": stages, "steps_per_stage": steps, "adapt_steps": 0, "seed": seed, "video": False,
            "evaluation": {"episodes": 5, "curve_every": max(1, steps // (CURVE_POINTS - 1))},
            "ppo": {"n_epochs": 10}}


def run_all(named_configs: dict[str, dict], args: argparse.Namespace, sweep_id: str) -> dict[str, dict]:
    """Every run ("seed<k>/<name>" -> curriculum config) as one sweep job; name -> final state.

    With `--reuse`, a run of the same config already in --out is resumed (a finished one just read
    back); otherwise any old run is moved aside and the curriculum starts afresh.
    """
    jobs = [CurriculumJob(name, config, str(args.out.resolve()), sweep_id, args.reuse)
            for name, config in named_configs.items()]
    states = run_jobs(run_curriculum_job, jobs, args.backend, address=args.ray_address, describe=CurriculumJob.describe)
    return dict(zip(named_configs, states, strict=True))


def reference_configs(seed: int, args: argparse.Namespace, stages: list[dict]) -> dict[str, dict]:
    """A from-scratch run per task (no regulariser, one stage): the normalisation's 1."""
    base = base_config(args.steps, seed, stages, args.hidden, args.task_heads)
    return {f"seed{seed}/scratch_{stage['name']}": {**base, "stages": [stage], "regularizer": {"kind": "none"}}
            for stage in stages}


def method_configs(seed: int, args: argparse.Namespace, stages: list[dict], methods: dict[str, dict]
                   ) -> dict[str, dict]:
    """Every method's curriculum for one seed (only the regulariser differs)."""
    base = base_config(args.steps, seed, stages, args.hidden, args.task_heads)
    return {f"seed{seed}/{name}": {**base, "regularizer": regularizer} for name, regularizer in methods.items()}


def references_of(seed: int, stages: list[dict], states: dict[str, dict]) -> tuple[np.ndarray, np.ndarray, list]:
    """(random-init returns, from-scratch returns, from-scratch evaluation curves) of one seed's tasks."""
    references = [states[f"seed{seed}/scratch_{stage['name']}"] for stage in stages]
    low = np.array([ref["random_returns"][0] for ref in references])
    high = np.array([ref["matrix"][0][0] for ref in references])
    unlearnable = [stage["name"] for stage, lo, hi in zip(stages, low, high, strict=True) if not hi > lo]
    if unlearnable:  # checked before the methods run: their scores could not be normalised
        raise SystemExit(f"seed {seed}: the from-scratch reference did not beat the random init on {unlearnable} "
                         f"(reference {np.round(high, 1).tolist()}, random {np.round(low, 1).tolist()}): "
                         "the normalisation is undefined there; choose skills PPO learns within --steps")
    return low, high, [ref["eval_curves"][0] for ref in references]


def pooled_references(seeds: list[int], stages: list[dict], states: dict[str, dict], steps: int
                      ) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """(random returns, from-scratch returns, normalised from-scratch curves), each averaged over seeds."""
    per_seed = [references_of(seed, stages, states) for seed in seeds]
    low = np.mean([lo for lo, _, _ in per_seed], axis=0)
    high = np.mean([hi for _, hi, _ in per_seed], axis=0)
    curves = [np.mean([curve_on_grid(curves[j], steps, low[j], high[j]) for _, _, curves in per_seed], axis=0)
              for j in range(len(stages))]
    return low, high, curves


def score_seed(seed: int, methods: dict[str, dict], states: dict[str, dict], steps: int,
               references: tuple[np.ndarray, np.ndarray, list[np.ndarray]]) -> dict:
    """One seed: every method scored on the seed-averaged references (`pooled_references`)."""
    low, high, ref_curves = references
    scored = {"random_returns": low.tolist(), "reference_returns": high.tolist(), "methods": {}}
    for name in methods:
        state = states[f"seed{seed}/{name}"]
        matrix = normalize(np.asarray(state["matrix"], dtype=float), low, high)
        curves = [curve_on_grid(curve, steps, low[j], high[j]) for j, curve in enumerate(state["eval_curves"])]
        scores = summarize(matrix, curves=curves, reference_curves=ref_curves)
        scored["methods"][name] = {"matrix_raw": state["matrix"], "matrix": matrix.tolist(), **scores}
    return scored


def interval(values: list[float]) -> str:
    """'mean ± half-width' of a 95% t-interval over seeds (just the mean for one seed)."""
    mean, low, high = mean_confidence_interval(values)
    return f"{mean:.3f}" if len(values) == 1 else f"{mean:.3f} ± {(high - low) / 2:.3f}"


def main() -> None:
    """Run every method and the references for every seed; score them side by side."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--debug", action="store_true", help=DEBUG_HELP)
    parser.add_argument("--steps", type=int, default=None,
                        help="PPO env steps per stage (default 150,000; the study: 100,000)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--ewc-lambda", type=float, nargs="*", default=[100.0], help="EWC strengths to run")
    parser.add_argument("--ewc-normalize", choices=["max", "mean", "none"], default="none",
                        help="the raw Fisher (default, as in the literature), or each divided by its max (mean) entry")
    parser.add_argument("--l2-lambda", type=float, nargs="*", default=[1.0], help="L2 strengths to run")
    parser.add_argument("--replay-lambda", type=float, nargs="*", default=[],
                        help="behaviour-cloning replay strengths to run (none by default)")
    parser.add_argument("--memory-size", type=int, default=2048, help="replay: states remembered per task")
    parser.add_argument("--packnet-share", type=float, nargs="*", default=[],
                        help="PackNet pruning shares to run (none by default)")
    parser.add_argument("--out", type=Path, default=Path("runs/bench_continual"))
    parser.add_argument("--sequence", choices=sorted(SEQUENCES), default="backward-twice",
                        help="which skills, in order")
    parser.add_argument("--hidden", type=int, nargs="+", default=[64, 64], help="policy hidden layer sizes")
    parser.add_argument("--task-heads", action=argparse.BooleanOptionalAction, default=True,
                        help="one output layer per task (Continual World's multi-head setup) for every method")
    parser.add_argument("--reuse", action="store_true", help="reuse (resume) runs of the same config in --out")
    parser.add_argument("--backend", choices=BACKENDS, default="local",
                        help="run the curricula here one after another, or each as a Ray task")
    parser.add_argument("--ray-address", help="the Ray cluster to join (HOST:PORT); default: a local Ray")
    study = parser.add_argument_group("the thesis study (--study thesis)")
    study.add_argument("--study", choices=["thesis"], help="run the thesis study instead of the method comparison")
    study.add_argument("--study-seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4], help="reported seeds")
    study.add_argument("--tuning-seeds", type=int, nargs="+", default=[100, 101],
                       help="seeds the settings are chosen on (never reported)")
    study.add_argument("--study-sequences", nargs="+", choices=sorted(STUDY_SEQUENCES), default=sorted(STUDY_SEQUENCES))
    study.add_argument("--results", type=Path, default=Path("assets/results/thesis_runs"),
                       help="one small JSON per finished run (commit them)")
    study.add_argument("--summary", type=Path, default=Path("assets/results/thesis.json"),
                       help="the summary JSON (its Markdown and plot are written beside it)")
    study.add_argument("--max-runs", type=int, default=None, help="run at most this many runs in this call")
    args = parser.parse_args()
    check_writable(args.out, "out")  # before any work
    check_backend(args.backend, args.ray_address)
    if args.study:
        thesis(args)
        return
    args.steps = 150_000 if args.steps is None else args.steps

    stages = SEQUENCES[args.sequence]
    methods = {"finetune": {"kind": "none"}}
    methods |= {f"l2_{lam:g}": {"kind": "l2", "strength": lam} for lam in args.l2_lambda}
    normalize = None if args.ewc_normalize == "none" else args.ewc_normalize
    suffix = "" if normalize is None else f"_{normalize}"  # runs of each setting apart
    methods |= {f"ewc_{lam:g}{suffix}": {"kind": "ewc", "strength": lam, "normalize": normalize}
                for lam in args.ewc_lambda}
    methods |= {f"replay_{lam:g}_m{args.memory_size}": {"kind": "replay", "strength": lam,
                                                       "memory_size": args.memory_size}
                for lam in args.replay_lambda}
    methods |= {f"packnet_{share:g}": {"kind": "packnet", "prune_share": share} for share in args.packnet_share}
    for seed in args.seeds:  # every config checked before anything runs
        for config in (reference_configs(seed, args, stages) | method_configs(seed, args, stages, methods)).values():
            config_from_dict(CurriculumConfig, config)
    sweep_id = new_sweep_id()
    references = {name: config for seed in args.seeds for name, config in reference_configs(seed, args, stages).items()}
    states = run_all(references, args, sweep_id)
    pooled = pooled_references(args.seeds, stages, states, args.steps)  # exits before the methods if unlearnable
    states |= run_all({name: config for seed in args.seeds
                       for name, config in method_configs(seed, args, stages, methods).items()}, args, sweep_id)
    per_seed = {seed: score_seed(seed, methods, states, args.steps, pooled) for seed in args.seeds}

    labels = [stage["name"] for stage in stages]
    keys = {"average performance": "average_performance", "average forgetting": "average_forgetting",
            "learning accuracy": "learning_accuracy", "forward transfer": "average_forward_transfer"}
    results = {"steps_per_stage": args.steps, "seeds": args.seeds, "sequence": args.sequence,
               "hidden_sizes": args.hidden, "task_heads": args.task_heads, "ewc_normalize": args.ewc_normalize,
               "per_seed": {str(seed): scored for seed, scored in per_seed.items()}, "methods": {}}
    seeds_text = ", ".join(map(str, args.seeds))
    lines = ["# Continual benchmark: fine-tuning vs L2 vs EWC (vs replay, PackNet)", "",
             f"Cheetah, stages {', '.join(labels)}; {args.steps:,} PPO steps per stage, horizon 200, "
             f"policy {args.hidden}{' with one output head per task' if args.task_heads else ''}, seeds {seeds_text}, "
             f"goal in the observation, 5 deterministic evaluation episodes per task; EWC Fisher normalised: "
             f"{args.ewc_normalize}.", "",
             "Normalised per task: 0 = random-init return, 1 = a from-scratch PPO run on that task with the "
             "same budget, both averaged over the seeds. Forward transfer: areas under deterministic evaluation "
             "curves against the references' mean curve. Mean ± half-width of a 95% t-interval over seeds. "
             "Learning accuracy is the mean of R[i][i] (each task right after its own stage).", "",
             "| method | " + " | ".join(keys) + " |", "|---|" + "---:|" * len(keys)]
    lines.insert(-2, f"Random returns (mean over seeds) {np.round(pooled[0], 1).tolist()}, "
                     f"references {np.round(pooled[1], 1).tolist()}.")
    tables = []
    for name in methods:
        runs = [scored["methods"][name] for scored in per_seed.values()]
        summary = {key: [r[key] for r in runs] for key in keys.values()}
        mean_matrix = np.mean([r["matrix"] for r in runs], axis=0)
        results["methods"][name] = {**{k: float(np.mean(v)) for k, v in summary.items()},
                                    "mean_matrix": mean_matrix.tolist()}
        lines.append(f"| {name} | " + " | ".join(interval(summary[key]) for key in keys.values()) + " |")
        tables += ["", f"### {name} (normalised performance matrix, mean over seeds)", "",
                   matrix_to_markdown(mean_matrix, labels)]
    lines += ["", "## Performance matrices", *tables, ""]
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out / "results.json", json.dumps(results, indent=2))
    atomic_write_text(args.out / "results.md", "\n".join(lines))
    print("\n".join(lines))


def thesis(args: argparse.Namespace) -> None:
    """The thesis study: run what is missing, then write the summary of what finished."""
    if args.max_runs is not None and args.max_runs < 0:
        raise ValueError(f"--max-runs must be >= 0, got {args.max_runs}")
    if set(args.study_seeds) & set(args.tuning_seeds):
        raise ValueError(f"--tuning-seeds must differ from --study-seeds (shared: "
                         f"{sorted(set(args.study_seeds) & set(args.tuning_seeds))})")
    setting = StudySetting(steps_per_stage=100_000 if args.steps is None else args.steps,
                           hidden_sizes=tuple(args.hidden))
    if setting.steps_per_stage < 10:
        raise ValueError(f"--steps must be >= 10, got {setting.steps_per_stage}")
    root = Path(__file__).resolve().parent.parent
    for name in args.study_sequences:  # the tuning runs start from scratch; the grid needs the files
        for init, path in STUDY_SEQUENCES[name].init_files.items():
            if not (root / path).is_file():
                print(f"note: sequence {name}: its {init} initialisation {path} is not there yet; its tuning "
                      "runs go ahead, its grid waits for the file")
    for path, field in ((args.results, "results"), (args.summary.parent, "summary")):
        check_writable(path, field)
    runner = Runner(StudyStore(args.results, setting, root), args.out, args.backend, args.ray_address, args.max_runs)
    summary = run_study(runner, args.study_sequences, args.study_seeds, args.tuning_seeds, root)
    if not summary["sequences"]:
        print(f"no sequence has finished its tuning runs yet ({runner.started} runs this call); run it again")
        return
    markdown = study_markdown(summary)
    args.summary.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.summary, json.dumps(summary, indent=1) + "\n")
    atomic_write_text(args.summary.with_suffix(".md"), markdown)
    plot_study(summary, args.summary.with_suffix(".png"))
    print(markdown)
    print(f"{'complete' if summary['complete'] else 'NOT complete (run the same command again)'}: "
          f"{args.summary}, {args.summary.with_suffix('.md')}, {args.summary.with_suffix('.png')}")


if __name__ == "__main__":
    run_script(main)
