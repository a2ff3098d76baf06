"""Continual-learning metrics from a performance matrix.

R[i][j] is the performance on task j evaluated after training stage i (i, j in 0..N-1), usually
normalised with `normalize` so 0 is a random reference and 1 a strong one. Entries strictly above
the diagonal (tasks not trained yet) may be NaN when they were not evaluated; every other entry
must be finite. Only GEM's forward transfer reads above the diagonal.

Definitions (0-based indices, N tasks):

- average performance (Continual World):  A = 1/N Σ_j R[N-1][j];  after stage i:  A_i = mean_{j<=i} R[i][j]
- forgetting (Continual World):           F_j = R[j][j] − R[N-1][j] for j < N-1, averaged over j < N-1
  (variant "max", after Chaudhry et al. 2018: F_j = max_{j<=l<N-1} R[l][j] − R[N-1][j])
- learning accuracy (Riemer et al. 2019): LA = 1/N Σ_j R[j][j], each task just after its own stage
  (how well new tasks are still learned: a regulariser can forget little by learning little)
- backward transfer (GEM):                BWT = 1/(N-1) Σ_{j<N-1} (R[N-1][j] − R[j][j])
- forward transfer (Continual World):     FT_i = (AUC_i − AUC_i^b) / (1 − AUC_i^b) from training curves
- forward transfer (GEM):                 FWT = 1/(N-1) Σ_{i>=1} (R[i-1][i] − b_i)

Metrics over an empty set of tasks (N == 1) are NaN.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

FORGETTING_REFERENCES = ("end_of_training", "max")


def check_matrix(matrix: ArrayLike) -> np.ndarray:
    """R as a float `[N, N]` array; ValueError if not square or non-finite on/below the diagonal."""
    r = np.asarray(matrix, dtype=float)
    if r.ndim != 2 or r.shape[0] != r.shape[1] or r.shape[0] == 0:
        raise ValueError(f"matrix: must be a non-empty square [N, N] array, got shape {r.shape}")
    lower = np.tril(np.ones(r.shape, dtype=bool))
    bad = lower & ~np.isfinite(r)
    if bad.any():
        i, j = map(int, np.argwhere(bad)[0])
        raise ValueError(f"matrix[{i}][{j}]: must be finite on and below the diagonal, got {r[i, j]}")
    if np.isinf(r).any():
        raise ValueError("matrix: contains inf (use NaN only for tasks not evaluated yet)")
    return r


def normalize(values: ArrayLike, random_ref: ArrayLike, max_ref: ArrayLike) -> np.ndarray:
    """(values − random_ref) / (max_ref − random_ref), references broadcast along the last axis.

    Scalar references normalise a single task's numbers (e.g. a training curve); length-N vectors
    normalise a raw `[N, N]` matrix column by column (task j against its own references). 0 means
    as good as the random reference, 1 as good as the max reference; values may leave [0, 1].
    """
    v = np.asarray(values, dtype=float)
    lo = np.asarray(random_ref, dtype=float)
    hi = np.asarray(max_ref, dtype=float)
    if not (np.isfinite(lo).all() and np.isfinite(hi).all()):
        raise ValueError("random_ref, max_ref: must be finite")
    if (hi <= lo).any():
        raise ValueError(f"max_ref: must exceed random_ref for every task, got max_ref={hi}, random_ref={lo}")
    return (v - lo) / (hi - lo)


def average_performance(matrix: ArrayLike) -> float:
    """Final average performance A = 1/N Σ_j R[N-1][j]."""
    r = check_matrix(matrix)
    return float(r[-1].mean())


def average_performance_per_stage(matrix: ArrayLike) -> np.ndarray:
    """A_i = 1/(i+1) Σ_{j<=i} R[i][j] for every stage i (tasks seen so far); shape [N]."""
    r = check_matrix(matrix)
    return np.array([r[i, : i + 1].mean() for i in range(r.shape[0])])


def forgetting(matrix: ArrayLike, reference: str = "end_of_training") -> np.ndarray:
    """Per-task forgetting F_j for j < N-1 (shape [N-1]; positive = forgot).

    reference="end_of_training" (Continual World, Wolczyk et al. 2021): F_j = R[j][j] − R[N-1][j],
    the performance at the end of task j's own training minus the performance at the very end.
    reference="max" (Chaudhry et al. 2018): F_j = max_{j<=l<N-1} R[l][j] − R[N-1][j], the best
    performance since task j was trained; stages before j (zero-shot) are left out.
    """
    if reference not in FORGETTING_REFERENCES:
        raise ValueError(f"reference: must be one of {FORGETTING_REFERENCES}, got {reference!r}")
    r = check_matrix(matrix)
    n = r.shape[0]
    if reference == "end_of_training":
        before = np.array([r[j, j] for j in range(n - 1)])
    else:
        before = np.array([r[j : n - 1, j].max() for j in range(n - 1)])
    return before - r[-1, : n - 1]


def learning_accuracy(matrix: ArrayLike) -> float:
    """LA = 1/N Σ_j R[j][j]: mean performance on each task right after training on it."""
    r = check_matrix(matrix)
    return float(np.diag(r).mean())


def average_forgetting(matrix: ArrayLike, reference: str = "end_of_training") -> float:
    """Mean of `forgetting(matrix, reference)` over j < N-1 (NaN when N == 1)."""
    per_task = forgetting(matrix, reference)
    return float(per_task.mean()) if per_task.size else math.nan


def backward_transfer(matrix: ArrayLike) -> float:
    """GEM's BWT = 1/(N-1) Σ_{j<N-1} (R[N-1][j] − R[j][j]); negative = forgetting (NaN when N == 1).

    Equal to minus the Continual World average forgetting.
    """
    r = check_matrix(matrix)
    n = r.shape[0]
    if n == 1:
        return math.nan
    return float(np.mean([r[-1, j] - r[j, j] for j in range(n - 1)]))


def forward_transfer_gem(matrix: ArrayLike, random_init: ArrayLike) -> float:
    """GEM's FWT = 1/(N-1) Σ_{i=1}^{N-1} (R[i-1][i] − b_i) (NaN when N == 1).

    R[i-1][i] is the zero-shot performance on task i just before training on it; b_i is the
    performance on task i of a randomly initialised policy (same normalisation as R; b_0 unused).
    """
    r = check_matrix(matrix)
    n = r.shape[0]
    b = np.asarray(random_init, dtype=float)
    if b.shape != (n,) or not np.isfinite(b).all():
        raise ValueError(f"random_init: must be {n} finite numbers, got shape {b.shape}")
    if n == 1:
        return math.nan
    zero_shot = np.array([r[i - 1, i] for i in range(1, n)])
    if not np.isfinite(zero_shot).all():
        raise ValueError("matrix: the entries R[i-1][i] must be evaluated (finite) for GEM's FWT")
    return float(np.mean(zero_shot - b[1:]))


def curve_auc(curve: ArrayLike) -> float:
    """Normalised area under a training curve sampled at evenly spaced points spanning the stage.

    AUC = (1/Δ) ∫ p(t) dt over the stage, by the trapezoid rule on a [0, 1] grid (a single point
    is its own AUC), so a curve constant at c has AUC c.
    """
    y = np.asarray(curve, dtype=float)
    if y.ndim != 1 or y.size == 0 or not np.isfinite(y).all():
        raise ValueError(f"curve: must be a non-empty 1-D sequence of finite numbers, got shape {y.shape}")
    if y.size == 1:
        return float(y[0])
    # Trapezoid rule written out: np.trapezoid needs numpy >= 2, the project allows 1.26.
    return float((y.sum() - 0.5 * (y[0] + y[-1])) / (y.size - 1))


def forward_transfer(curves: Sequence[ArrayLike], reference_curves: Sequence[ArrayLike]) -> np.ndarray:
    """Continual World's per-task forward transfer FT_i = (AUC_i − AUC_i^b) / (1 − AUC_i^b).

    AUC_i is `curve_auc` of the continual run's normalised performance on task i during stage i;
    AUC_i^b that of a reference run training on task i from scratch. FT_i is NaN where
    AUC_i^b >= 1 (the normalisation, meant for performance in [0, 1], is undefined there).
    """
    if len(curves) != len(reference_curves) or len(curves) == 0:
        raise ValueError(f"curves, reference_curves: need the same non-zero number of tasks, got "
                         f"{len(curves)} and {len(reference_curves)}")
    out = []
    for curve, ref in zip(curves, reference_curves, strict=True):
        auc, auc_ref = curve_auc(curve), curve_auc(ref)
        out.append((auc - auc_ref) / (1.0 - auc_ref) if auc_ref < 1.0 else math.nan)
    return np.array(out)


def _nanmean(values: np.ndarray) -> float:
    finite = values[np.isfinite(values)]
    return float(finite.mean()) if finite.size else math.nan


def summarize(
    matrix: ArrayLike,
    *,
    curves: Sequence[ArrayLike] | None = None,
    reference_curves: Sequence[ArrayLike] | None = None,
    random_init: ArrayLike | None = None,
) -> dict[str, Any]:
    """All metrics in one dict of Python floats/lists (JSON-ready apart from NaN for undefined ones).

    Keys: num_tasks, average_performance, average_performance_per_stage, forgetting,
    average_forgetting, forgetting_max, average_forgetting_max, backward_transfer,
    learning_accuracy; plus
    forward_transfer and average_forward_transfer (mean over finite FT_i) when both curve lists
    are given, and forward_transfer_gem when `random_init` is given.
    """
    r = check_matrix(matrix)
    out: dict[str, Any] = {
        "num_tasks": int(r.shape[0]),
        "average_performance": average_performance(r),
        "average_performance_per_stage": average_performance_per_stage(r).tolist(),
        "forgetting": forgetting(r).tolist(),
        "average_forgetting": average_forgetting(r),
        "forgetting_max": forgetting(r, "max").tolist(),
        "average_forgetting_max": average_forgetting(r, "max"),
        "backward_transfer": backward_transfer(r),
        "learning_accuracy": learning_accuracy(r),
    }
    if (curves is None) != (reference_curves is None):
        raise ValueError("curves, reference_curves: give both or neither")
    if curves is not None and reference_curves is not None:
        if len(curves) != r.shape[0]:
            raise ValueError(f"curves: need one per task ({r.shape[0]}), got {len(curves)}")
        ft = forward_transfer(curves, reference_curves)
        out["forward_transfer"] = ft.tolist()
        out["average_forward_transfer"] = _nanmean(ft)
    if random_init is not None:
        out["forward_transfer_gem"] = forward_transfer_gem(r, random_init)
    return out


def matrix_to_markdown(
    matrix: ArrayLike, task_names: Sequence[str] | None = None, precision: int = 2
) -> str:
    """Markdown table of R: a row per training stage, a column per evaluated task ("–" = not evaluated)."""
    r = check_matrix(matrix)
    n = r.shape[0]
    names = [f"task {j}" for j in range(n)] if task_names is None else [str(t) for t in task_names]
    if len(names) != n:
        raise ValueError(f"task_names: need {n} names, got {len(names)}")
    names = [t.replace("|", "\\|") for t in names]
    lines = [
        "| after training on | " + " | ".join(names) + " |",
        "|---|" + "---:|" * n,
    ]
    for i in range(n):
        cells = ["–" if math.isnan(x) else f"{x:.{precision}f}" for x in r[i]]
        lines.append(f"| {i}: {names[i]} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def task_view(matrix: ArrayLike, trained: Sequence[int]) -> tuple[np.ndarray, list[int], list[int]]:
    """A stage-by-stage matrix with one column per *task*, for schedules that retrain a task.

    Ladder and adaptive schedules give R one column per stage, so a retrained task would count
    twice in every average. Here each task (pool index) keeps one column, the first of its
    repeats, and is judged against its *last* training stage.

    Args:
        matrix: `[S, S]` R with column k the task trained at stage k (`trained[k]`).
        trained: the pool index trained at each stage.

    Returns:
        (`[S, T]` matrix with one column per task in first-trained order, the tasks' pool indices,
        for each task the last stage that trained it).
    """
    r = np.asarray(matrix, dtype=float)
    if r.ndim != 2 or r.shape[1] < len(trained) or r.shape[0] != len(trained):
        raise ValueError(f"matrix: need [S, >= S] for {len(trained)} stages, got shape {r.shape}")
    tasks = list(dict.fromkeys(int(t) for t in trained))
    first = [list(trained).index(t) for t in tasks]
    last = [len(trained) - 1 - list(reversed(trained)).index(t) for t in tasks]
    return r[:, first], tasks, last


def task_summary(matrix: ArrayLike, last_trained: Sequence[int]) -> dict[str, float]:
    """Average performance, forgetting, learning accuracy over tasks of a `task_view` matrix.

    - average performance: mean over tasks of the final row;
    - learning accuracy: mean over tasks of R[last_j][j], each task after its last training stage;
    - forgetting: mean over tasks not trained in the final stage of R[last_j][j] − R[S-1][j]
      (NaN if every task was);
    - backward transfer: minus the forgetting.
    With each task trained once, at its own stage, these equal the square-matrix definitions above.
    """
    r = np.asarray(matrix, dtype=float)
    final = r.shape[0] - 1
    after_own = np.array([r[stage, j] for j, stage in enumerate(last_trained)])
    earlier = [j for j, stage in enumerate(last_trained) if stage < final]
    forgot = float(np.mean([after_own[j] - r[final, j] for j in earlier])) if earlier else math.nan
    return {"average_performance": float(r[final].mean()), "average_forgetting": forgot,
            "learning_accuracy": float(after_own.mean()), "backward_transfer": -forgot}
