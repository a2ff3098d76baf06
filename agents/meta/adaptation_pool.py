"""Pooling adaptation evaluations of the same checkpoints on different task sets into one.

One evaluation holds 40 tasks per seed; a figure such as the one-step relative gain is known to a
few points only on hundreds of tasks. Evaluations run on other seeds and task seeds (a check set,
a fresh set) each measure the same policies on new tasks, so their union is one larger
evaluation: the pooled result treats every seed of every file as a stratum of the stratified
bootstrap, exactly as one evaluation treats its own seeds. Pooling refuses files that differ in
anything but their tasks (policies, settings, family) and seeds that appear twice (the same tasks
counted twice).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from agents.meta.adaptation_result import AdaptationConfig, AdaptationResult, config_from_json

#: evaluation settings that may differ between pooled files: the tasks, what samples them, and how
#: intervals are drawn (every statistic is recomputed, with the first file's confidence and resamples)
FREE_SETTINGS = ("seeds", "num_threads", "confidence", "bootstrap_reps")


def common_methods(evaluations: Sequence[Mapping[str, Any]]) -> list[str]:
    """The methods every evaluation holds, in the first one's order."""
    return [m for m in evaluations[0]["methods"] if all(m in data["methods"] for data in evaluations[1:])]


def read_result(data: Mapping[str, Any], name: str) -> AdaptationResult:
    """The evaluation in `data` (its JSON dict), its shape checked; one ValueError naming `name` and
    the field otherwise."""
    if not isinstance(data, Mapping):
        raise ValueError(f"{name}: not an evaluation's results (a {type(data).__name__})")
    shapes = {"metadata": dict, "learned_step_sizes": list, "by_experience": list, "retrieved": dict}
    for key, kind in shapes.items():
        if data.get(key) is not None and not isinstance(data[key], kind):
            raise ValueError(f"{name}: {key} must be a {kind.__name__}, got {type(data[key]).__name__}")
    for key in ("sources", "training", "policy_sha256"):
        value = (data.get("metadata") or {}).get(key)
        if value is not None and not isinstance(value, dict):
            raise ValueError(f"{name}: metadata.{key} must be a mapping of method -> value")
    try:
        return AdaptationResult.from_dict(dict(data))
    except ValueError as error:
        raise ValueError(f"{name}: {error}") from error
    except (TypeError, AttributeError, KeyError) as error:  # a part of another shape than evaluate_adaptation writes
        raise ValueError(f"{name}: not an evaluation's results ({type(error).__name__}: {error})") from error


def settings_of(data: Mapping[str, Any]) -> dict[str, Any]:
    """An evaluation's settings that must agree for pooling: its config with every default filled in
    (a file written before a setting existed holds it at its default), less `FREE_SETTINGS`."""
    return {key: value for key, value in vars(config_from_json(data.get("config"))).items()
            if key not in FREE_SETTINGS}


def check_poolable(evaluations: Sequence[Mapping[str, Any]], methods: Sequence[str], names: Sequence[str]) -> None:
    """Raise one ValueError naming the file and field unless the evaluations differ only in their
    tasks: same robot, family, split, observation, settings and (where recorded) the same policy
    per method, and no seed in two files."""
    if len(evaluations) < 2:
        raise ValueError("--results: pooling needs at least two evaluations")
    if not methods:
        raise ValueError("--methods: no method is in every evaluation")
    first, first_meta = evaluations[0], evaluations[0]["metadata"]
    seen: dict[int, str] = {}
    for data, name in zip(evaluations, names, strict=True):
        missing = [m for m in methods if m not in data["methods"]]
        if missing:
            raise ValueError(f"{name}: has no method {missing} (it holds {data['methods']})")
        meta = data["metadata"]
        for key in ("family", "split", "height_scan"):
            if meta.get(key) != first_meta.get(key):
                raise ValueError(f"{name}: {key} is {meta.get(key)!r}, the first file's {first_meta.get(key)!r}")
        if data["robot"] != first["robot"] or data["tasks_per_seed"] != first["tasks_per_seed"]:
            raise ValueError(f"{name}: robot {data['robot']!r} with {data['tasks_per_seed']} tasks per seed; "
                             f"the first file has {first['robot']!r} with {first['tasks_per_seed']}")
        settings, first_settings = settings_of(data), settings_of(first)
        for key, value in settings.items():
            if value != first_settings[key]:
                raise ValueError(f"{name}: config.{key} is {value!r}, the first file's {first_settings[key]!r}")
        for method in methods:
            sha, first_sha = meta.get("policy_sha256", {}).get(method), first_meta.get("policy_sha256", {}).get(method)
            if sha != first_sha:
                raise ValueError(f"{name}: {method} is another policy (sha256 {str(sha)[:12]}, the first file's "
                                 f"{str(first_sha)[:12]})")
            for key, what in (("learned_step_sizes", "adapted with other step sizes"),
                              ("by_experience", "adapted otherwise (from experience or by gradient)"),
                              ("retrieved", "retrieved skills in one file only")):
                if (method in (data.get(key) or [])) != (method in (first.get(key) or [])):
                    raise ValueError(f"{name}: {method} {what} than in the first file ({key})")
        for seed in data["config"]["seeds"]:
            if seed in seen:
                raise ValueError(f"{name}: seed {seed} is also in {seen[seed]}; pooled files need distinct seeds "
                                 f"(a seed twice would count its tasks twice, or mix two task sets under one stratum)")
            seen[seed] = name


def pooled_source(sources: Sequence[Any]) -> Any:
    """One method's source over the pooled files: the checkpoint (the same in every file, as its
    hash says), or every file's list (random inits: each file draws its own)."""
    if all(isinstance(source, list) for source in sources):
        return [item for source in sources for item in source]
    return sources[0]


def pool_evaluations(evaluations: Sequence[Mapping[str, Any]], methods: Sequence[str] | None = None,
                     names: Sequence[str] | None = None) -> tuple[AdaptationResult, dict[str, Any]]:
    """(the pooled result, its metadata) of `evaluate_adaptation.py` results (their JSON dicts).

    The pooled result's seeds are every file's seeds in file order; its metadata keeps the first
    file's sources, training records and policy hashes for `methods` (checked equal in every file)
    and lists each file's task seed and seeds under `pooled_from`.

    Args:
        evaluations: the evaluations' JSON dicts.
        methods: the methods to pool (default: those every file holds).
        names: how to name each file in errors and in `pooled_from` (default: its position).
    """
    names = list(names) if names is not None else [f"evaluation {i + 1}" for i in range(len(evaluations))]
    parts = [read_result(data, name) for data, name in zip(evaluations, names, strict=True)]
    methods = list(methods) if methods is not None else common_methods(evaluations)
    check_poolable(evaluations, methods, names)
    first = parts[0]
    seeds = tuple(seed for part in parts for seed in part.seeds)
    config = AdaptationConfig(**{**vars(first.config), "seeds": seeds})
    pooled = AdaptationResult(
        robot=first.robot, tasks=[seed_tasks for part in parts for seed_tasks in part.tasks], config=config,
        returns={m: np.concatenate([part.returns[m] for part in parts]) for m in methods},
        speeds={m: np.concatenate([part.speeds[m] for part in parts]) for m in methods},
        learned_step_sizes=[m for m in first.learned_step_sizes if m in methods],
        by_experience=[m for m in first.by_experience if m in methods],
        retrieved={m: [row for part in parts for row in part.retrieved[m]] for m in first.retrieved if m in methods})
    meta = evaluations[0]["metadata"]
    metadata = {
        "sources": {m: pooled_source([data["metadata"].get("sources", {}).get(m) for data in evaluations])
                    for m in methods if m in meta.get("sources", {})},
        "training": {m: meta["training"][m] for m in methods if m in meta.get("training", {})},
        "policy_sha256": {m: meta["policy_sha256"][m] for m in methods if m in meta.get("policy_sha256", {})},
        "family": meta.get("family"), "split": meta.get("split"), "height_scan": meta.get("height_scan"),
        "task_seed": None,
        "pooled_from": [{"file": name, "task_seed": data["metadata"].get("task_seed"),
                         "seeds": list(data["config"]["seeds"])}
                        for data, name in zip(evaluations, names, strict=True)],
    }
    return pooled, metadata
