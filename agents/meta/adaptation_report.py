"""Tables, figure and JSON of an adaptation evaluation (`agents.meta.adaptation_result.AdaptationResult`).

Everything is rendered from the JSON dict (`AdaptationResult.to_dict()`), so a README table can be
regenerated from the file an evaluation wrote (`scripts/update_readme.py`) and says nothing the
file does not hold.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from agents.meta.adaptation_result import AdaptationResult, nan_to_none, step_label
from agents.runs.atomic import PathLike, atomic_write_bytes, atomic_write_text


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)


def _interval_cell(row: Mapping[str, Any], key: str, precision: int, signed: bool = False) -> str:
    sign = "+" if signed else ""
    low, high = row.get(f"{key}_low"), row.get(f"{key}_high")
    if not _finite(row.get(key)):  # e.g. a slope where every target is the same (null in the JSON)
        return "n/a"
    cell = f"{row[key]:{sign}.{precision}f}"
    if _finite(low) and _finite(high):
        cell += f" [{low:{sign}.{precision}f}, {high:{sign}.{precision}f}]"
    return cell


def _percent_cell(row: Mapping[str, Any], key: str) -> str:
    values = [row.get(k) for k in (key, f"{key}_low", f"{key}_high")]
    if not _finite(values[0]):
        return "n/a"
    cell = f"{100 * values[0]:+.1f}"
    if all(_finite(v) for v in values[1:]):
        cell += f" [{100 * values[1]:+.1f}, {100 * values[2]:+.1f}]"
    return cell


def _verdict(row: Mapping[str, Any]) -> str:
    return "distinguishable from zero" if row["distinguishable"] else "indistinguishable from zero"


def markdown_from_dict(data: Mapping[str, Any], precision: int = 1, heading: str = "####") -> str:
    """Markdown tables of an evaluation's JSON (`AdaptationResult.to_dict()`): returns, gains, versus.

    States the tasks, seeds, episodes and budget, and for every gain whether it is distinguishable
    from zero.
    """
    config, methods = data["config"], data["methods"]
    steps = range(config["steps"] + 1)
    by_key = {(row["method"], row["step"]): row for row in data["summary"]}
    n_seeds, per_seed = len(config["seeds"]), data["tasks_per_seed"]
    lines = [
        f"{per_seed * n_seeds} held-out tasks ({per_seed} per seed, seeds {', '.join(map(str, config['seeds']))}), "
        f"{config['episodes_per_task']} episodes per task and step, {config['steps']} inner policy-gradient "
        f"step(s) of lr {config['inner_lr']:g}{_learned(data)} on those episodes, horizon {config['horizon']} "
        f"({robot_steps(data)} env steps per method).{_experience(data)} Intervals: {data['intervals']}.",
        "",
        f"{heading} Mean return [95 % interval]; IQM in the second line",
        "",
        "| method | " + " | ".join(step_label(j) for j in steps) + " |",
        "|---|" + "---:|" * len(steps),
    ]
    for method in methods:
        lines.append(f"| {method} | " + " | ".join(_interval_cell(by_key[(method, j)], "mean", precision)
                                                   for j in steps) + " |")
        lines.append(f"| {method} (IQM) | " + " | ".join(_interval_cell(by_key[(method, j)], "iqm", precision)
                                                         for j in steps) + " |")
    if config["steps"] > 0:
        relative = all("relative" in row for row in data["gains"])  # older files lack it
        lines += ["", f"{heading} Gain over before adaptation (paired by task)", "",
                  "| method | after | gain [95 % interval] | P(improvement) | verdict |"
                  + (" relative gain, % of before [95 % interval] |" if relative else ""),
                  "|---|---|---:|---:|---|" + ("---:|" if relative else "")]
        for row in data["gains"]:
            lines.append(f"| {row['method']} | {step_label(row['step'])} | "
                         f"{_interval_cell(row, 'mean', precision, signed=True)} | "
                         f"{_interval_cell(row, 'p_improvement', 2)} | {_verdict(row)} |"
                         + (f" {_percent_cell(row, 'relative')} |" if relative else ""))
    if data["versus"]:
        first = methods[0]
        lines += ["", f"{heading} {first} minus each baseline at the same step (paired by task)", "",
                  "| baseline | step | difference [95 % interval] | P(" + first + " better) | verdict |",
                  "|---|---|---:|---:|---|"]
        for row in data["versus"]:
            lines.append(f"| {row['other']} | {step_label(row['step'])} | "
                         f"{_interval_cell(row, 'mean', precision, signed=True)} | "
                         f"{_interval_cell(row, 'p_improvement', 2)} | {_verdict(row)} |")
    if data.get("tracking"):
        lines += ["", f"{heading} Velocity tracking: mean |speed - target| in m/s [95 % interval]", "",
                  "| method | " + " | ".join(step_label(j) for j in steps) + " |", "|---|" + "---:|" * len(steps)]
        by_key = {(row["method"], row["step"]): row for row in data["tracking"]}
        for method in methods:
            lines.append(f"| {method} | " + " | ".join(_interval_cell(by_key[(method, j)], "mean", 2)
                                                       for j in steps) + " |")
        if all("slope" in row for row in data["tracking"]):  # older files lack it
            lines += ["", f"{heading} Slope of the speed reached on the target speed [95 % interval] "
                      "(1: the speed follows the target, 0: it ignores it)", "",
                      "| method | " + " | ".join(step_label(j) for j in steps) + " |",
                      "|---|" + "---:|" * len(steps)]
            for method in methods:
                lines.append(f"| {method} | " + " | ".join(_interval_cell(by_key[(method, j)], "slope", 2)
                                                           for j in steps) + " |")
        first = [by_key[(methods[0], j)]["by_target"] for j in steps]
        lines += ["", f"{methods[0]}: mean speed reached (m/s) by target range", "",
                  "| targets | mean target | " + " | ".join(step_label(j) for j in steps) + " |",
                  "|---|---:|" + "---:|" * len(steps)]
        for b, cell in enumerate(first[0]):
            low, high = cell["targets"]
            lines.append(f"| {low:.2f}-{high:.2f} | {cell['mean_target']:.2f} | "
                         + " | ".join(f"{first[j][b]['mean_speed']:.2f}" for j in steps) + " |")
    return "\n".join(lines) + "\n"


def _experience(data: Mapping[str, Any]) -> str:
    notes = ""
    by_experience = data.get("by_experience") or []
    if by_experience:
        notes += (f" {', '.join(by_experience)}: no gradient step; its estimate follows each episode, and its step j "
                  f"is its j-th episode on the task, with the previous episode's history carried over.")
    retrieved = list(data.get("retrieved") or {})
    if retrieved:
        notes += (f" {', '.join(retrieved)}: step 0 is its probe policy, step 1 each task's retrieved skill as it is, "
                  f"step j its j - 1 policy-gradient steps on from there.")
    return notes


def _learned(data: Mapping[str, Any]) -> str:
    learned = data.get("learned_step_sizes") or []
    return f" (for {', '.join(learned)}: its learned step sizes, Meta-SGD)" if learned else ""


def robot_steps(data: Mapping[str, Any]) -> int:
    """Env steps one method's evaluation takes (tasks x seeds x episodes x horizon x rollouts)."""
    config = data["config"]
    return (data["tasks_per_seed"] * len(config["seeds"]) * config["episodes_per_task"] * config["horizon"]
            * (config["steps"] + 1))


def markdown_table(result: AdaptationResult, precision: int = 1) -> str:
    """`markdown_from_dict(result.to_dict())`."""
    return markdown_from_dict(result.to_dict(), precision)


def write_csv(result: AdaptationResult, path: PathLike) -> Path:
    """`result.summary()` and `result.gains()` rows as CSV (one `table` column says which), atomically."""
    rows = [{"table": "return", **row} for row in result.summary()]
    rows += [{"table": "gain", **row} for row in result.gains()]
    fields: list[str] = []
    for row in rows:
        fields += [key for key in row if key not in fields]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if isinstance(v, float) and math.isnan(v) else v for k, v in row.items()})
    return atomic_write_text(path, buffer.getvalue())


def write_markdown(result: AdaptationResult, path: PathLike, precision: int = 1) -> Path:
    """`markdown_table(result)` to `path`, atomically."""
    return atomic_write_text(path, markdown_table(result, precision))


def write_json(result: AdaptationResult, path: PathLike, metadata: Mapping[str, Any] | None = None) -> Path:
    """`result.to_dict()` as JSON, atomically, with `metadata` (e.g. where each method came from) under "metadata"."""
    data = result.to_dict()
    if metadata is not None:
        data["metadata"] = nan_to_none(dict(metadata))
    return atomic_write_text(path, json.dumps(data, indent=2, default=str) + "\n")


def plot_adaptation(result: AdaptationResult, path: PathLike, title: str | None = None) -> Path:
    """PNG of mean return vs inner steps, one line per method, bootstrap intervals as bands."""
    from matplotlib.figure import Figure  # the Agg canvas, no pyplot or display; imported only when plotting

    fig = Figure(figsize=(6.0, 4.0), layout="constrained")
    ax = fig.add_subplot()
    steps = np.arange(result.steps + 1)
    rows = result.summary()
    for method in result.methods:
        mine = [r for r in rows if r["method"] == method]
        (line,) = ax.plot(steps, [r["mean"] for r in mine], marker="o", label=method)
        ax.fill_between(steps, [r["mean_low"] for r in mine], [r["mean_high"] for r in mine],
                        color=line.get_color(), alpha=0.2, linewidth=0)
    ax.set_xticks(steps)
    ax.set_xlabel("inner policy-gradient steps")
    ax.set_ylabel("mean return")
    confidence = f"{result.config.confidence:.0%}"
    n_tasks = result.tasks_per_seed * len(result.seeds)
    ax.set_title(title or f"Adaptation on {n_tasks} tasks ({result.robot}; {confidence} bootstrap interval over "
                          f"tasks and {len(result.seeds)} seeds)", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120)
    return atomic_write_bytes(path, buffer.getvalue())


def write_all(result: AdaptationResult, out_dir: PathLike, title: str | None = None,
              metadata: Mapping[str, Any] | None = None) -> dict[str, Path]:
    """table.csv, table.md, adaptation.png and results.json (with `metadata`) in `out_dir`; returns name -> path."""
    out = Path(out_dir)
    return {
        "table.csv": write_csv(result, out / "table.csv"),
        "table.md": write_markdown(result, out / "table.md"),
        "adaptation.png": plot_adaptation(result, out / "adaptation.png", title),
        "results.json": write_json(result, out / "results.json", metadata),
    }
