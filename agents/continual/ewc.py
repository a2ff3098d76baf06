"""Elastic weight consolidation: consolidation and the quadratic penalty on a diagonal Fisher.

EWC (Kirkpatrick et al. 2017) protects what a policy learned on earlier tasks by pulling each
parameter towards its value after those tasks, weighted by the diagonal of the Fisher information
of the policy on the states of those tasks. The loss on a new task becomes

    L(θ) + λ/2 · Σ_i F_i (θ_i − θ*_i)²

Convention here: `penalty(params)` returns the bare sum Σ_i F_i (θ_i − θ*_i)² and `loss(params)`
returns `strength / 2 * penalty(params)`, i.e. `strength` is the paper's λ and the 1/2 is applied
by `loss` only.

The Fisher is used raw by default (as in the EWC papers and Continual World), with a floor: every
entry is at least `floor` (default 1e-5, Continual World's clip), so no weight is entirely free.
Normalising each Fisher (its max or mean entry = 1) is an option; it makes the meaning of λ
depend on the policy's σ (the largest entry is the output bias's 1/σ² or log-std's 2), so every
consolidation records the divisor and `raw_equivalent_strengths` gives the λ that the raw Fisher
would need for the same penalty, comparable with the literature.

Two consolidation modes:

- "online" (Schwarz et al. 2018, Progress & Compress): one running Fisher F ← γ·F + F_new and a
  single anchor θ* = the parameters at the latest consolidation.
- "separate" (the original EWC): one (F_k, θ*_k) pair per task, penalties summed over tasks.

`L2Regularizer` is the same machinery with unit weights: the "l2" baseline, not EWC.

The diagonal Fisher estimates that weight the penalty live in `agents.continual.fisher`.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Mapping
from typing import Any

import torch

from agents.continual.fisher import Params, fisher_scale

MODES = ("online", "separate")
NORMALIZATIONS = (None, "max", "mean")
FISHER_FLOOR = 1e-5  # Continual World's lower clip of the Fisher (Wolczyk et al. 2021)


def _check_choice(field: str, value: Any, allowed: tuple) -> None:
    if value not in allowed:
        raise ValueError(f"{field}: must be one of {allowed}, got {value!r}")


def _snapshot(params: Mapping[str, torch.Tensor], names: Iterable[str]) -> Params:
    missing = [n for n in names if n not in params]
    if missing:
        raise ValueError(f"params: missing {missing} needed for consolidation")
    return {n: params[n].detach().clone() for n in names}


def _check_fisher(fisher: Mapping[str, torch.Tensor], params: Mapping[str, torch.Tensor]) -> None:
    if not fisher:
        raise ValueError("fisher: is empty; estimate it with analytic_fisher or sampled_fisher")
    for name, value in fisher.items():
        if name not in params:
            raise ValueError(f"fisher[{name!r}]: no parameter of that name in params")
        if value.shape != params[name].shape:
            raise ValueError(f"fisher[{name!r}]: shape {tuple(value.shape)} != parameter shape "
                             f"{tuple(params[name].shape)}")
        if not torch.isfinite(value).all() or (value < 0).any():
            raise ValueError(f"fisher[{name!r}]: entries must be finite and >= 0")
    if all(float(v.sum()) == 0.0 for v in fisher.values()):
        # The classic silent failure: EWC with a zero Fisher is no regulariser at all.
        warnings.warn("fisher: every entry is 0, so this consolidation adds no penalty", stacklevel=3)


class Regularizer:
    """Quadratic pull towards anchors: Σ_k Σ_i w_ki (θ_i − θ*_ki)² (unit w when a term has none).

    Subclasses decide what `consolidate` stores; the penalty, loss and (de)serialisation are shared.

    Args:
        strength: λ; `loss(params) = strength / 2 * penalty(params)`.
        mode: "online" (one accumulated term) or "separate" (one term per task).
        gamma: online decay in [0, 1] applied to the accumulated weights (EWC online mode only).
        normalize: None (raw), "max" or "mean": divide each new Fisher by its max or mean entry (EWC only).
        floor: lower bound on every Fisher entry after any normalisation (EWC only; 0: none).
    """

    kind = "none"

    def __init__(
        self, strength: float = 1.0, mode: str = "online", gamma: float = 1.0, normalize: str | None = None,
        floor: float = FISHER_FLOOR,
    ) -> None:
        if not (math.isfinite(strength) and strength >= 0):
            raise ValueError(f"strength: must be a finite number >= 0, got {strength}")
        _check_choice("mode", mode, MODES)
        if not (0.0 <= gamma <= 1.0):
            raise ValueError(f"gamma: must be in [0, 1], got {gamma}")
        _check_choice("normalize", normalize, NORMALIZATIONS)
        if not (math.isfinite(floor) and floor >= 0):
            raise ValueError(f"floor: must be a finite number >= 0, got {floor}")
        self.floor = float(floor)
        self.scales: list[float] = []  # each consolidation's Fisher divisor (1.0 when raw)
        self.strength = float(strength)
        self.mode = mode
        self.gamma = float(gamma)
        self.normalize = normalize
        self._weights: list[Params | None] = []
        self._anchors: list[Params] = []
        self._num_tasks = 0

    @property
    def num_tasks(self) -> int:
        """Number of consolidations (tasks) so far."""
        return self._num_tasks

    @property
    def anchors(self) -> list[Params]:
        """The anchor θ* of each penalty term (one in online mode, one per task in separate mode)."""
        return list(self._anchors)

    @property
    def weights(self) -> list[Params | None]:
        """The weight (Fisher) of each penalty term; None means unit weights."""
        return list(self._weights)

    def consolidate(
        self, params: Mapping[str, torch.Tensor], fisher: Mapping[str, torch.Tensor] | None = None
    ) -> None:
        """Record the end of a task with its final `params` (and its Fisher where the kind uses one)."""
        self._num_tasks += 1

    def penalty(self, params: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Σ_k Σ_i w_ki (θ_i − θ*_ki)², a differentiable scalar (0 before any consolidation)."""
        device = next(iter(params.values())).device if params else None
        total = torch.zeros((), device=device)
        for weight, anchor in zip(self._weights, self._anchors, strict=True):
            for name, theta_star in anchor.items():
                if name not in params:
                    raise ValueError(f"params: missing {name!r}, which the penalty anchors")
                theta = params[name]
                if theta.shape != theta_star.shape:
                    raise ValueError(f"params[{name!r}]: shape {tuple(theta.shape)} != anchored "
                                     f"shape {tuple(theta_star.shape)}")
                sq = (theta - theta_star.to(theta.device)).pow(2)
                if weight is not None:
                    sq = weight[name].to(theta.device) * sq
                total = total + sq.sum()
        return total

    #: whether each task must be evaluated with its own view of the parameters (`task_params`)
    per_task_params = False

    def task_params(self, params: Mapping[str, torch.Tensor], task: int, names: Mapping[str, str] | None = None
                    ) -> dict[str, torch.Tensor]:
        """`params` as task `task` sees them (all of them, unless a subclass packs tasks apart)."""
        return dict(params)

    def keep_frozen(self, new: Mapping[str, torch.Tensor], old: Mapping[str, torch.Tensor],
                    names: Mapping[str, str] | None = None) -> dict[str, torch.Tensor]:
        """`new` with the entries this method freezes taken from `old` (none, unless a subclass freezes)."""
        return dict(new)

    def loss(self, params: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """The term to add to the training loss: strength / 2 * penalty(params)."""
        return 0.5 * self.strength * self.penalty(params)

    @property
    def raw_equivalent_strengths(self) -> list[float]:
        """Per consolidation, the λ that the raw (unnormalised) Fisher needs for the same penalty:
        `strength / divisor`; equal to `strength` when the Fisher is raw."""
        return [self.strength / scale for scale in self.scales]

    def state_dict(self) -> dict[str, Any]:
        """Plain tensors, strings and numbers: saves with torch.save, loads with weights_only=True."""
        return {
            "kind": self.kind,
            "mode": self.mode,
            "gamma": self.gamma,
            "strength": self.strength,
            "normalize": self.normalize,
            "floor": self.floor,
            "scales": list(self.scales),
            "num_tasks": self._num_tasks,
            "weights": [None if w is None else {n: t.clone() for n, t in w.items()} for w in self._weights],
            "anchors": [{n: t.clone() for n, t in a.items()} for a in self._anchors],
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore from `state_dict()`; the kind and mode must match this regulariser's."""
        if state.get("kind") != self.kind:
            raise ValueError(f"state['kind']: expected {self.kind!r}, got {state.get('kind')!r}")
        if state.get("mode") != self.mode:
            raise ValueError(f"state['mode']: expected {self.mode!r}, got {state.get('mode')!r}")
        weights, anchors = list(state["weights"]), list(state["anchors"])
        if len(weights) != len(anchors):
            raise ValueError(f"state: {len(weights)} weight terms but {len(anchors)} anchors")
        self.gamma = float(state["gamma"])
        self.strength = float(state["strength"])
        self.normalize = state["normalize"]
        self.floor = float(state.get("floor", 0.0))  # states saved before the floor existed had none
        self.scales = [float(x) for x in state.get("scales", [])]
        self._num_tasks = int(state["num_tasks"])
        self._weights = [None if w is None else {n: t.clone() for n, t in w.items()} for w in weights]
        self._anchors = [{n: t.clone() for n, t in a.items()} for a in anchors]

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(strength={self.strength}, mode={self.mode!r}, gamma={self.gamma}, "
                f"normalize={self.normalize!r}, floor={self.floor}, num_tasks={self._num_tasks})")


class NoRegularizer(Regularizer):
    """The "none" baseline: counts tasks, penalty always 0."""

    kind = "none"


class EWC(Regularizer):
    """Elastic weight consolidation with a diagonal Fisher, online or per-task (see module doc).

    online:   F ← γ·F + F_new,  θ* ← params at the latest consolidation.
    separate: terms (F_k, θ*_k) appended per task; penalty = Σ_k Σ_i F_ki (θ_i − θ*_ki)².

    Only the parameters named in the Fisher are anchored; every consolidation must use the same
    names in online mode.
    """

    kind = "ewc"

    def consolidate(
        self, params: Mapping[str, torch.Tensor], fisher: Mapping[str, torch.Tensor] | None = None
    ) -> None:
        """Fold the task just learned (final `params`, its `fisher`) into the penalty."""
        if fisher is None:
            raise ValueError("fisher: EWC needs a Fisher (use L2Regularizer for unit weights)")
        _check_fisher(fisher, params)
        scale = 1.0 if self.normalize is None else fisher_scale(fisher, by=self.normalize)
        new = {n: (t.detach() / scale).clamp(min=self.floor) for n, t in fisher.items()}
        self.scales.append(scale)
        anchor = _snapshot(params, new)
        if self.mode == "separate":
            self._weights.append(new)
            self._anchors.append(anchor)
        elif not self._weights:
            self._weights, self._anchors = [new], [anchor]
        else:
            old = self._weights[0]
            assert old is not None
            if set(old) != set(new):
                raise ValueError(f"fisher: names {sorted(new)} differ from the consolidated {sorted(old)}")
            self._weights = [{n: self.gamma * old[n].to(new[n].device) + new[n] for n in new}]
            self._anchors = [anchor]
        self._num_tasks += 1


class L2Regularizer(Regularizer):
    """The "l2" baseline: unit weights, Σ_k Σ_i (θ_i − θ*_ki)²; not EWC.

    online keeps only the latest anchor (plain squared distance to it); separate keeps one anchor
    per task. If a Fisher is passed, only its names are anchored (its values are ignored), so the
    baseline covers the same parameters as EWC; otherwise every parameter in `params` is.
    `gamma` and `normalize` are unused.
    """

    kind = "l2"

    def consolidate(
        self, params: Mapping[str, torch.Tensor], fisher: Mapping[str, torch.Tensor] | None = None
    ) -> None:
        """Anchor at the final `params` of the task just learned."""
        if not params:
            raise ValueError("params: is empty")
        anchor = _snapshot(params, list(params) if fisher is None else list(fisher))
        if self.mode == "separate":
            self._weights.append(None)
            self._anchors.append(anchor)
        else:
            self._weights, self._anchors = [None], [anchor]
        self._num_tasks += 1

