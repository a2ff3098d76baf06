"""A finished curriculum's figures: metrics from the performance matrix, plots, and report.md."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from agents.continual.metrics import (
    forgetting,
    matrix_to_markdown,
    task_summary,
    task_view,
)
from agents.runs.atomic import atomic_write_text
from agents.runs.provenance import provenance
from agents.runs.stats import mean_confidence_interval


def normalised_matrix(matrix: Sequence[Sequence[float]], random_returns: Sequence[float]) -> tuple[np.ndarray, str]:
    """R normalised per task: 0 = a random-init policy's return, 1 = the best return seen on it.

    Returns the matrix and a sentence saying what the reference was. Stages that repeat a task
    (retries, adaptive schedules) are separate columns.
    """
    raw = np.asarray(matrix, dtype=float)
    low = np.asarray(random_returns, dtype=float)[: raw.shape[1]]
    best = np.nanmax(np.where(np.isnan(raw), -np.inf, raw), axis=0)
    span = best - low
    undefined = ~(span > 1e-6)
    note = ("normalised per task: 0 is a randomly initialised policy's return, 1 the best return this run "
            "reached on that task after any stage; negative values are worse than the random policy")
    if undefined.any():
        note += "; tasks where no stage beat the random policy are left undefined (NaN)"
    return (raw - low) / np.where(undefined, np.nan, span), note


def adaptation_verdict(history: Sequence[dict]) -> tuple[str, dict[str, float]]:
    """Did the stage-start adaptation help? The paired gain (deterministic return after minus before,
    per adapted stage) with a 95% t-interval across those stages, as a sentence and figures."""
    gains = [r["return_after_adapt"] - r["return_before_adapt"] for r in history if r.get("adapted", True)]
    if not gains:
        return "No stage began with an adaptation.", {}
    mean, low, high = mean_confidence_interval(gains)
    figures = {"adaptation_gain": mean, "adaptation_gain_low": low, "adaptation_gain_high": high,
               "adapted_stages": len(gains)}
    if len(gains) == 1:
        return f"The stage-start adaptation changed the return by {mean:+.1f} (one stage: no interval).", figures
    verdict = ("helped" if low > 0 else "hurt") if not low <= 0 <= high else "is indistinguishable from zero"
    return (f"The stage-start adaptation changed the deterministic return by {mean:+.1f} "
            f"[{low:+.1f}, {high:+.1f}] (95% t-interval over {len(gains)} stages, paired): it {verdict}.", figures)


def regulariser_verdict(kind: str, figures: Mapping[str, float], baseline: Mapping[str, float]) -> str:
    """The regulariser against fine-tuning on the same stages, budget and seed (one run each)."""
    ours, theirs = figures["average_forgetting"], baseline["average_forgetting"]
    kept = "kept earlier skills better than" if ours < theirs else "did not keep earlier skills better than"
    return (f"`{kind}` {kept} fine-tuning on the same stages: average forgetting {ours:.3f} vs {theirs:.3f}, "
            f"average performance {figures['average_performance']:.3f} vs {baseline['average_performance']:.3f}, "
            f"learning accuracy {figures['learning_accuracy']:.3f} vs {baseline['learning_accuracy']:.3f} "
            "(normalised on both runs' best returns; one seed each, so no interval).")


def summary(matrix_norm: np.ndarray, trained: Sequence[int]) -> dict[str, float]:
    """Average performance, forgetting, learning accuracy and backward transfer of a normalised
    matrix, one count per task however often it was trained (`task_view`; NaN when a task's
    normalisation is undefined)."""
    n = len(trained)
    by_task, _, last = task_view(matrix_norm[:n, :n], trained)
    return task_summary(by_task, last)


def plot_curves(curves: Sequence[Sequence[Sequence[float]]], labels: Sequence[str], path: Path,
                deterministic: Sequence[float] | None = None) -> Path:
    """Training return against env steps, stage after stage (dashed lines between stages).

    The curve is what PPO saw: the stochastic policy's training episodes (SB3's window of the
    last 100). `deterministic` (one per stage) marks the mean-action return the tables report at
    each stage's end, so the two can be read side by side.
    """
    fig, ax = plt.subplots(figsize=(8, 3.5))
    offset = 0.0
    for index, (curve, label) in enumerate(zip(curves, labels, strict=True)):
        if curve:
            steps, values = np.asarray(curve, dtype=float).T
            line = ax.plot(offset + steps, values, label=f"{label} (training episodes, stochastic)")[0]
            offset += steps[-1]
            if deterministic is not None:
                ax.plot([offset], [deterministic[index]], marker="*", markersize=11, color=line.get_color(),
                        linestyle="none")
        ax.axvline(offset, color="grey", linestyle="--", linewidth=0.8)
    if deterministic is not None:
        ax.plot([], [], marker="*", color="grey", linestyle="none", label="after training, deterministic (tables)")
    ax.set_xlabel("env steps")
    ax.set_ylabel("return")
    ax.set_title("Learning curve per stage")
    ax.legend(fontsize=7)
    return _save(fig, path)


def plot_matrix(matrix_norm: np.ndarray, labels: Sequence[str], path: Path) -> Path:
    """Heat map of the normalised performance matrix (rows: after stage i, columns: task j)."""
    fig, ax = plt.subplots(figsize=(1.2 * len(labels) + 2, 1.0 * len(labels) + 1.5))
    finite = matrix_norm[np.isfinite(matrix_norm)]
    # The colour scale spans the values there are, so that their differences show.
    low, high = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    if high - low < 1e-6:
        low, high = low - 0.5, high + 0.5
    image = ax.imshow(matrix_norm, cmap="viridis", vmin=low, vmax=high)
    for (i, j), value in np.ndenumerate(matrix_norm):
        if not math.isnan(value):
            dark = value < low + 0.6 * (high - low)
            ax.text(j, i, f"{value:.2f}", ha="center", va="center", color="white" if dark else "black")
    ax.set_xticks(range(len(labels)), labels, rotation=30, ha="right")
    ax.set_yticks(range(len(labels)), [f"after {label}" for label in labels])
    ax.set_title("Performance matrix (normalised)")
    fig.colorbar(image, ax=ax)
    return _save(fig, path)


def plot_forgetting(matrix_norm: np.ndarray, labels: Sequence[str], path: Path) -> Path:
    """Forgetting of each task (value at the end of its stage minus value at the end), coloured by sign."""
    n = min(matrix_norm.shape)
    defined = n > 1 and np.isfinite(np.tril(matrix_norm[:n, :n])).all()
    values = forgetting(matrix_norm[:n, :n]) if defined else np.zeros(0)
    fig, ax = plt.subplots(figsize=(6, 3))
    ax.bar(range(len(values)), values, color=["tab:red" if v > 0 else "tab:green" for v in values])
    ax.axhline(0.0, color="black", linewidth=0.8)
    ax.set_xticks(range(len(values)), labels[: len(values)], rotation=30, ha="right")
    ax.set_ylabel("forgetting (normalised)")
    ax.set_title("Forgetting per task: its value after its own stage minus its final value\n"
                 "(red, > 0: skill lost; green, < 0: improved since)", fontsize=9)
    return _save(fig, path)


def _save(fig: Any, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.stem}.partial.png")
    fig.tight_layout()
    fig.savefig(partial, dpi=110)
    plt.close(fig)
    os.replace(partial, path)
    return path


def _markdown_with_nan(matrix: np.ndarray, labels: Sequence[str]) -> str:
    """Markdown table of a normalised matrix, "n/a" where the normalisation is undefined."""
    lines = ["| after training on | " + " | ".join(labels) + " |", "|---|" + "---:|" * len(labels)]
    for i, row in enumerate(matrix):
        cells = ["n/a" if math.isnan(v) else f"{v:.2f}" for v in row]
        lines.append(f"| {i}: {labels[i]} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_report(run: Path, config: dict, state: dict, held_out_labels: Sequence[str], videos: Sequence[Path],
                 baseline: dict | None = None) -> Path:
    """Write report.md (and the plots it shows) into `run`; returns its path.

    `baseline`: the state of the same curriculum fine-tuned without a regulariser (`baseline:
    finetune`); both runs are then normalised on the best return either reached, and compared.
    """
    history = state["history"]
    labels = [record["label"] for record in history]
    trained = [record["pool_index"] for record in history]
    matrix = np.asarray(state["matrix"], dtype=float)[:, : len(history)]
    random = [state["random_returns"][r["pool_index"]] for r in history]
    comparison = None
    if baseline is not None:
        other = np.asarray(baseline["matrix"], dtype=float)[:, : len(history)]
        joint, _ = normalised_matrix(np.vstack([matrix, other]), random)
        ours, theirs = summary(joint[: len(matrix)], trained), summary(joint[len(matrix):], trained)
        comparison = regulariser_verdict(config["regularizer"]["kind"], ours, theirs)
    matrix_norm, note = normalised_matrix(matrix, random)
    figures = summary(matrix_norm, trained)
    adaptation, adaptation_figures = adaptation_verdict(history)
    plots = run / "plots"
    images = [plot_curves(state["curves"], labels, plots / "learning_curves.png",
                          [record["return_after_training"] for record in history]),
              plot_matrix(matrix_norm, labels, plots / "performance_matrix.png"),
              plot_forgetting(matrix_norm, labels, plots / "forgetting.png")]
    reg = config["regularizer"]
    strength = f"lambda {reg['strength']:g}"
    if reg["kind"] == "ewc":
        raw = [record["raw_equivalent_strength"] for record in history if "raw_equivalent_strength" in record]
        fisher = "raw Fisher" if reg.get("normalize") is None else f"{reg['normalize']}-normalised Fisher"
        strength += f" on the {fisher}, floor {reg.get('fisher_floor', 0):g}"
        if reg.get("normalize") is not None and raw:
            strength += f"; raw-equivalent lambda {min(raw):.3g}-{max(raw):.3g} over the stages"
    origin = provenance()
    seconds = float(state.get("seconds", 0.0))
    lines = [
        f"# Curriculum report: {run.name}", "",
        f"Robot `{config['robot']}`, initial policy `{config['init']}`, schedule `{config['schedule']}`, "
        f"regulariser `{reg['kind']}` ({strength}), {config['steps_per_stage']:,} PPO steps per "
        f"stage after {config['adapt_steps']} adaptation step(s) "
        f"({'at every stage' if config.get('adapt_stages', 'all') == 'all' else 'at the first stage only'}), "
        f"horizon {config['horizon']}, seed {config['seed']}.",
        "",
        f"Wall time of the stages: {seconds / 60:.1f} min. Code: git {origin['git_commit']}; "
        + ", ".join(f"{name} {version}" for name, version in origin.items() if name != "git_commit") + ".",
        "",
        "## Stages", "",
        "Which policy each return is of: *deterministic* columns are the mean-action policy over the "
        f"{config['evaluation']['episodes']} evaluation episodes (the performance matrix's measure), before "
        "and after the stage-start adaptation and after training; *stochastic* is the mean return of the "
        "adaptation's own sampled episodes (the ones its gradient steps learned from). Distance is metres "
        "covered along the goal's heading by the trained policy; success means it covered at least "
        f"{config['evaluation']['success_distance']:g} m (the ladder's rung test, judged for every schedule).",
        "",
        "| stage | task | deterministic: before adapt | after adapt | after training "
        "| stochastic: before adapt -> after | distance (m) | success |",
        "|---|---|---:|---:|---:|---:|---:|---|",
    ]
    for record in history:
        stochastic = (f"{record['stochastic_return_before_adapt']:.1f} -> {record['stochastic_return_after_adapt']:.1f}"
                      if "stochastic_return_before_adapt" in record else "n/a")
        lines.append(f"| {record['stage']} | {record['label']} | {record['return_before_adapt']:.1f} | "
                     f"{record['return_after_adapt']:.1f} | {record['return_after_training']:.1f} | {stochastic} | "
                     f"{record['distance']:.2f} | {'yes' if record['success'] else 'no'} |")
    lines += ["", "## Verdict", "", adaptation, ""]
    lines.append(comparison if comparison is not None else
                 "No fine-tuning baseline was run (`baseline: finetune` runs one on the same stages and budget).")
    lines += ["", "## Performance matrix (raw returns; row i = after stage i)", "",
              matrix_to_markdown(matrix, labels, precision=1), "",
              f"Normalised ({note}):", "", _markdown_with_nan(matrix_norm, labels), "",
              "| metric | value |", "|---|---:|"]
    lines += [f"| {name.replace('_', ' ')} | {value:.3f} |" for name, value in figures.items()]
    if held_out_labels:
        lines += ["", "## Held-out terrains (never trained; raw return after each stage)", "",
                  "| after stage | " + " | ".join(held_out_labels) + " |",
                  "|---|" + "---:|" * len(held_out_labels)]
        lines += [f"| {label} | " + " | ".join(f"{v:.1f}" for v in row) + " |"
                  for label, row in zip(labels, state["held_out"], strict=True)]
        lines.append("| random init | " + " | ".join(f"{v:.1f}" for v in state["random_held_out"]) + " |")
    lines += ["", "## Pictures", ""] + [f"![{p.stem}](plots/{p.name})" for p in images]
    if videos:
        lines += ["", "## Videos", ""] + [f"- [{v.name}](videos/{v.name})" for v in videos]
    path = run / "report.md"
    atomic_write_text(path, "\n".join(lines) + "\n")
    atomic_write_text(run / "summary.json", json.dumps(
        {"metrics": {**figures, **adaptation_figures}, "baseline_comparison": comparison, "labels": labels,
         "matrix": matrix.tolist(), "matrix_normalised": matrix_norm.tolist(),
         "wall_time_s": seconds, "provenance": origin}, indent=2, allow_nan=True))
    return path
