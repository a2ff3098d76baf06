"""Running the thesis study (`agents.continual.study`): plan its runs, run the missing ones, score them.

Order: the references and the tuning runs on the tuning seeds, the choice of each method's
setting from them, then the references and the grid on the reported seeds, seed by seed (so a
study cut short still has whole seeds). Every finished run is saved at once (`StudyStore`), and
a run cut short resumes from its run directory's checkpoints.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from agents.continual.jobs import CurriculumJob, run_curriculum_job
from agents.continual.study import (
    INITS,
    METHODS,
    METRICS,
    SEQUENCES,
    TUNING_GRID,
    TUNING_METRIC,
    References,
    RunKey,
    StudySetting,
    StudyStore,
    cell_summary,
    choose_settings,
    curriculum_config,
    init_digest,
    paired,
    reference_config,
    run_record,
    score_run,
    setting_label,
    target_check,
)
from agents.runs.ray_backend import new_sweep_id, run_jobs

Planned = list[tuple[RunKey, dict]]


def references_plan(sequence: str, seeds: Sequence[int], setting: StudySetting, root: Path) -> Planned:
    """Every task's from-scratch reference run on `seeds`."""
    return [(RunKey(sequence, "reference", f"stage{j}", seed), reference_config(sequence, j, seed, setting, root))
            for seed in seeds for j in range(len(SEQUENCES[sequence].stages))]


def tuning_plan(sequence: str, seeds: Sequence[int], setting: StudySetting, root: Path) -> Planned:
    """Every setting of `TUNING_GRID` from scratch on the tuning `seeds`."""
    return [(RunKey(sequence, "tune", f"scratch/{setting_label(r)}", seed),
             curriculum_config(sequence, "scratch", r, seed, setting, root))
            for seed in seeds for grid in TUNING_GRID.values() for r in grid]


def final_plan(sequence: str, seeds: Sequence[int], chosen: dict[str, dict], setting: StudySetting, root: Path
               ) -> Planned:
    """The grid init x method (each method at its chosen setting, named in the key) on the reported
    `seeds`, seed by seed."""
    return [(RunKey(sequence, "final", f"{init}/{setting_label(chosen[method])}", seed),
             curriculum_config(sequence, init, chosen[method], seed, setting, root))
            for seed in seeds for init in INITS for method in METHODS]


@dataclass
class Runner:
    """Runs planned study runs that have no result yet, saving each as it finishes."""

    store: StudyStore
    run_folder: Path  # run directories (checkpoints), never committed
    backend: str = "local"
    address: str | None = None
    budget: int | None = None  # at most this many runs in this call (None: all); the rest wait for a later call

    def __post_init__(self) -> None:
        self.sweep_id = new_sweep_id()
        self.started = 0

    def missing(self, plan: Planned) -> Planned:
        """The planned runs without a result file (a result of another config is an error)."""
        return [(key, config) for key, config in plan if self.store.load(key, planned=config) is None]

    def run(self, plan: Planned) -> bool:
        """Run the missing runs of `plan` (within the budget); True when all of `plan` has results."""
        todo = self.missing(plan)
        if self.budget is not None:
            todo = todo[: max(self.budget - self.started, 0)]
        if todo:
            root = self.store.root
            # The initialisation's sha256 is taken now and names the run directory, so a run made
            # from an earlier version of the file is never resumed or read back as this one's.
            digests = {key.path: init_digest(config, root) for key, config in todo}
            names = {key.path: key.path.removesuffix(".json") + (f"-{d[:12]}" if (d := digests[key.path]) else "")
                     for key, _ in todo}
            by_name = {names[key.path]: (key, config) for key, config in todo}
            jobs = [CurriculumJob(names[key.path], config, str(self.run_folder.resolve()), self.sweep_id, reuse=True)
                    for key, config in todo]

            def save(job: CurriculumJob, state: dict) -> None:
                key, config = by_name[job.name]
                if init_digest(config, root) != digests[key.path]:
                    raise ValueError(f"init: {config['init']} changed while {key.path} ran; its result is not saved")
                self.store.save(key, run_record(key, config, state, self.store.setting, root, digests[key.path]))
                print(f"saved {key.path} ({state['seconds'] / 60:.1f} min)", flush=True)

            self.started += len(todo)
            run_jobs(run_curriculum_job, jobs, self.backend, address=self.address, describe=CurriculumJob.describe,
                     on_result=save)
        return not self.missing(plan)


def pooled_references(store: StudyStore, sequence: str, seeds: Sequence[int]) -> References:
    """The sequence's references averaged over `seeds` (all must have finished)."""
    n = len(SEQUENCES[sequence].stages)
    records = [[store.load(RunKey(sequence, "reference", f"stage{j}", seed)) for j in range(n)] for seed in seeds]
    return References.pooled(records, store.setting.steps_per_stage)


def tuning_choice(store: StudyStore, sequence: str, seeds: Sequence[int]) -> tuple[dict[str, str], dict]:
    """(method -> chosen setting label, label -> metric -> tuning seeds' values)."""
    references = pooled_references(store, sequence, seeds)
    scores: dict[str, dict[str, list[float]]] = {}
    for grid in TUNING_GRID.values():
        for regularizer in grid:
            label = setting_label(regularizer)
            runs = [score_run(store.load(RunKey(sequence, "tune", f"scratch/{label}", seed)), references,
                              store.setting.steps_per_stage) for seed in seeds]
            scores[label] = {metric: [run[metric] for run in runs] for metric in METRICS}
    return choose_settings(scores), scores


def setting_of(label: str) -> dict:
    """The regulariser setting of a tuning-grid label."""
    return next(r for grid in TUNING_GRID.values() for r in grid if setting_label(r) == label)


def summarize_sequence(store: StudyStore, sequence: str, seeds: Sequence[int], tuning_seeds: Sequence[int]) -> dict:
    """The sequence's summary from whatever finished: the tuning choice, every cell's metrics over the
    seeds it has, MAML minus each other initialisation (paired by seed), the issue's target check."""
    chosen, tuning_scores = tuning_choice(store, sequence, tuning_seeds)
    final_seeds = [s for s in seeds if _references_done(store, sequence, s)]
    references = pooled_references(store, sequence, final_seeds) if final_seeds else None
    steps = store.setting.steps_per_stage
    scores: dict[str, dict[str, dict[int, dict[str, float]]]] = {init: {m: {} for m in METHODS} for init in INITS}
    for init in INITS:
        for method in METHODS:
            for seed in seeds:
                record = store.load(RunKey(sequence, "final", f"{init}/{chosen[method]}", seed))
                if record is not None and references is not None:
                    scores[init][method][seed] = score_run(record, references, steps)
    cells = {init: {method: cell_summary(scores[init][method]) for method in METHODS} for init in INITS}
    maml_vs = {other: {method: {metric: paired(scores["maml"][method], scores[other][method], metric)
                                for metric in METRICS} for method in METHODS}
               for other in INITS if other != "maml"}
    return {"stages": [stage["name"] for stage in SEQUENCES[sequence].stages],
            "held_out": [task["name"] for task in SEQUENCES[sequence].held_out],
            "task_heads": SEQUENCES[sequence].task_heads,
            "chosen": {method: setting_of(label) | {"label": label} for method, label in chosen.items()},
            "tuning": tuning_scores,
            "references": None if references is None else {"random": references.low.tolist(),
                                                            "from_scratch": references.high.tolist()},
            "cells": cells, "maml_minus": maml_vs, "target": target_check(scores["maml"]),
            "budget": spent(store, sequence)}


def spent(store: StudyStore, sequence: str) -> dict[str, dict[str, float]]:
    """Runs, PPO env steps and wall time of the sequence's finished runs per phase (references,
    tuning, grid) and in total; the initialisations' own training is recorded in their checkpoints."""
    budget = {}
    for phase in ("reference", "tune", "final"):
        records = [json.loads(path.read_text(encoding="utf-8"))
                   for path in sorted((store.folder / sequence / phase).glob("**/*.json"))]
        budget[phase] = {"runs": len(records), "env_steps": sum(r["env_steps"] for r in records),
                         "wall_time_s": sum(r["wall_time_s"] for r in records)}
    budget["total"] = {key: sum(phase[key] for phase in budget.values())
                       for key in ("runs", "env_steps", "wall_time_s")}
    return budget


def _references_done(store: StudyStore, sequence: str, seed: int) -> bool:
    n = len(SEQUENCES[sequence].stages)
    return all(store.load(RunKey(sequence, "reference", f"stage{j}", seed)) is not None for j in range(n))


def run_study(runner: Runner, sequences: Sequence[str], seeds: Sequence[int], tuning_seeds: Sequence[int],
              root: Path) -> dict:
    """Run what is missing (within the runner's budget) and return the summary of what finished:
    `{"complete": bool, "setting", "seeds", "tuning_seeds", "sequences": {name: summary}}`."""
    setting = runner.store.setting
    summary: dict = {"setting": setting.to_dict(), "seeds": list(seeds), "tuning_seeds": list(tuning_seeds),
                     "sequences": {}}
    complete = True
    for sequence in sequences:
        tuned = runner.run(references_plan(sequence, tuning_seeds, setting, root)) and \
            runner.run(tuning_plan(sequence, tuning_seeds, setting, root))
        if not tuned:
            complete = False
            continue
        if all((root / path).is_file() for path in SEQUENCES[sequence].init_files.values()):
            chosen, _ = tuning_choice(runner.store, sequence, tuning_seeds)
            regularizers = {method: setting_of(label) for method, label in chosen.items()}
            for seed in seeds:  # seed by seed: a study cut short has whole seeds
                complete &= runner.run(references_plan(sequence, [seed], setting, root))
                complete &= runner.run(final_plan(sequence, [seed], regularizers, setting, root))
        else:
            complete = False  # the grid waits for the initialisations (the tuning runs did not need them)
        summary["sequences"][sequence] = summarize_sequence(runner.store, sequence, seeds, tuning_seeds)
    summary["complete"] = complete
    return summary


# --- report -------------------------------------------------------------------------------------

LABELS = {"average_performance": "average performance", "forgetting": "forgetting",
          "forward_transfer": "forward transfer", "first_jump_start": "jump-start, first stage",
          "jump_start": "jump-start, mean over stages", "learning_accuracy": "learning accuracy",
          "held_out_over_random": "held-out return above random (raw)"}


def _fmt(cell: dict, digits: int = 2, seeds: int | None = None) -> str:
    """'mean [low, high]', with n where fewer than `seeds` seeds have finished."""
    if cell["n"] == 0:
        return "–"
    n = f" (n={cell['n']})" if seeds is not None and cell["n"] < seeds else ""
    if not math.isfinite(cell["low"]):
        return f"{cell['mean']:+.{digits}f} (n={cell['n']})"
    return f"{cell['mean']:+.{digits}f} [{cell['low']:+.{digits}f}, {cell['high']:+.{digits}f}]{n}"


def study_markdown(summary: dict, level: int = 2) -> str:
    """The study's tables: per sequence, every cell's metrics, MAML minus the other initialisations
    and the target check; the chosen settings and what the study cost."""
    h = "#" * level
    setting = summary["setting"]
    lines = [f"{h} The thesis study: initialisation x continual method", "",
             f"Cheetah, {setting['steps_per_stage']:,} PPO steps per stage, policy {setting['hidden_sizes']}, "
             f"{setting['adapt_steps']} adaptation step(s) of {setting['adapt_episodes']} episodes at every stage's "
             f"start, {setting['eval_episodes']} deterministic evaluation episodes per task. Reported seeds "
             f"{', '.join(map(str, summary['seeds']))}; each method's setting chosen on tuning seeds "
             f"{', '.join(map(str, summary['tuning_seeds']))} (from scratch, best average performance). "
             "Normalised per task (all but the held-out column): 0 = random init, 1 = the best deterministic "
             "evaluation a PPO run from scratch on that task alone reached within the same budget (both averaged "
             "over the seeds); forward transfer from deterministic evaluation curves against the from-scratch "
             "runs' mean curve; jump-start: the normalised return right after a stage's adaptation step (the first "
             "stage's is the initialisation's own). Mean and 95% t-interval over seeds (n: seeds finished, where "
             "fewer than all); intervals are not corrected for the number of comparisons in a table."
             + ("" if summary.get("complete") else " **The study is not complete: cells list the seeds "
                "finished so far.**"), ""]
    for name, seq in summary["sequences"].items():
        chosen = ", ".join(f"{m}: {c['label']}" for m, c in seq["chosen"].items() if m != "finetune")
        budget = seq["budget"]
        cost = "; ".join(f"{phase} {b['runs']} runs, {b['env_steps'] / 1e6:.1f}M PPO env steps, "
                         f"{b['wall_time_s'] / 3600:.1f} h" for phase, b in budget.items())
        n_seeds = len(summary["seeds"])
        tuning = ", ".join(f"{label} {sum(v[TUNING_METRIC]) / len(v[TUNING_METRIC]):+.2f}"
                           for label, v in seq["tuning"].items())
        references = "" if seq["references"] is None else (
            f" References (mean over the reported seeds' runs): random init "
            f"{', '.join(f'{v:.1f}' for v in seq['references']['random'])}; PPO from scratch "
            f"{', '.join(f'{v:.1f}' for v in seq['references']['from_scratch'])}.")
        lines += [f"{h}# Sequence `{name}`: {' -> '.join(seq['stages'])} (held out: {', '.join(seq['held_out'])})",
                  "", f"{'One output head per task. ' if seq['task_heads'] else 'One shared head. '}"
                  f"Chosen settings: {chosen}. Spent: {cost}.{references}", "",
                  f"Tuning ({LABELS[TUNING_METRIC]} on the tuning seeds, from scratch): {tuning}.", "",
                  "| init | method | " + " | ".join(LABELS[m] for m in METRICS) + " |",
                  "|---|---|" + "---:|" * len(METRICS)]
        for init, methods in seq["cells"].items():
            for method, cell in methods.items():
                lines.append(f"| {init} | {method} | " + " | ".join(_fmt(cell[m], seeds=n_seeds) for m in METRICS)
                             + " |")
        for other, methods in seq["maml_minus"].items():
            lines += ["", f"MAML minus {other} initialisation, paired by seed:", "",
                      "| method | " + " | ".join(LABELS[m] for m in METRICS) + " |", "|---|" + "---:|" * len(METRICS)]
            for method, cells in methods.items():
                lines.append(f"| {method} | " + " | ".join(
                    _fmt(cells[m], seeds=n_seeds) + (" *" if _excludes_zero(cells[m]) else "") for m in METRICS)
                    + " |")
        lines += ["", "(* the interval excludes zero; otherwise the difference is indistinguishable from zero.)", ""]
        for method, check in seq["target"].items():
            ft = check["forward_transfer_minus_finetune"]
            verdict = ("undefined: fine-tuning does not forget here" if check["met"] is None
                       else "met" if check["met"] else "not met")
            lines.append(f"- Target, MAML init, {method} (seeds {', '.join(map(str, check['seeds']))}): forgetting "
                         f"{check['forgetting']:+.3f} vs fine-tuning's {check['finetune_forgetting']:+.3f} (ratio "
                         f"{check['forgetting_ratio']:.2f}, target <= 0.10); forward transfer minus fine-tuning's "
                         f"{_fmt(ft, 3)} (target >= 0): {verdict}.")
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def _excludes_zero(cell: dict) -> bool:
    return cell["n"] > 1 and math.isfinite(cell["low"]) and (cell["low"] > 0 or cell["high"] < 0)


def plot_study(summary: dict, path: Path) -> Path:
    """Forgetting against forward transfer, one panel per sequence: a marker per init x method
    with its 95% intervals (down-right is the thesis' corner: little forgetting, much transfer)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sequences = list(summary["sequences"].items())
    fig, axes = plt.subplots(1, max(len(sequences), 1), figsize=(6 * max(len(sequences), 1), 4.5), squeeze=False)
    markers = {"scratch": "o", "pretrained": "s", "maml": "*"}
    colors = {"finetune": "tab:gray", "ewc": "tab:blue", "replay": "tab:green", "packnet": "tab:orange"}
    for ax, (name, seq) in zip(axes[0], sequences, strict=False):
        for init, methods in seq["cells"].items():
            for method, cell in methods.items():
                f, t = cell["forgetting"], cell["forward_transfer"]
                if f["n"] == 0:
                    continue
                xerr = None if not math.isfinite(t["low"]) else [[t["mean"] - t["low"]], [t["high"] - t["mean"]]]
                yerr = None if not math.isfinite(f["low"]) else [[f["mean"] - f["low"]], [f["high"] - f["mean"]]]
                ax.errorbar(t["mean"], f["mean"], xerr=xerr, yerr=yerr, fmt=markers[init], color=colors[method],
                            markersize=10 if init == "maml" else 7, capsize=2, label=f"{init} / {method}")
        ax.axhline(0.0, color="black", linewidth=0.5)
        ax.axvline(0.0, color="black", linewidth=0.5)
        ax.set_title(f"{name}: {' -> '.join(seq['stages'])}", fontsize=9)
        ax.set_xlabel("forward transfer (normalised)")
        ax.set_ylabel("forgetting (normalised)")
    handles, labels = axes[0][0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="center right", fontsize=7)
        fig.subplots_adjust(right=0.8)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path

