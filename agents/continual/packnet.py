"""PackNet: a dynamic architecture that packs tasks into one network by pruning and freezing.

Mallya & Lazebnik 2018. After each task, of the weights still free, the largest `1 - prune_share`
share by magnitude become the task's own (frozen from then on) and the rest are set to zero and
released for later tasks. Biases (and the log-std) belong to the first task. Training a later task
changes only free weights (`EWCPPO` zeroes the other gradients and restores the frozen values after
every optimiser step, so Adam's momentum cannot move them either); evaluating task j uses only the
weights of tasks 0..j (`task_params`), so what task j learned is kept exactly. The price is
capacity: each task gets a shrinking share of the network, and PackNet needs the task's identity
at test time. Without the paper's short retraining after pruning (not done here), a task's return
right after pruning can drop below its return at the end of its stage.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch

from agents.continual.ewc import Regularizer

FREE = -1  # owner of a weight no task holds yet


class PackNet(Regularizer):
    """Owners of every packed weight (`FREE` or a task index) and the pruning that assigns them.

    Args:
        prune_share: share of the free weights released (zeroed) after each task, in (0, 1).
    """

    kind = "packnet"
    per_task_params = True

    def __init__(self, prune_share: float = 0.5) -> None:
        super().__init__(strength=0.0)  # no penalty term: PackNet constrains the weights themselves
        if not 0.0 < prune_share < 1.0:
            raise ValueError(f"prune_share: must be in (0, 1), got {prune_share}")
        self.prune_share = float(prune_share)
        self.owners: dict[str, torch.Tensor] = {}

    def consolidate(self, params: Mapping[str, torch.Tensor], fisher: Mapping[str, torch.Tensor] | None = None
                    ) -> None:
        """PackNet consolidates through `assign` (it prunes the parameters in place)."""
        raise ValueError("packnet: consolidate with assign(params, names) (EWCPPO.consolidate does)")

    def assign(self, params: Mapping[str, torch.nn.Parameter], names: Iterable[str]) -> None:
        """End of task `num_tasks`: it keeps the largest free weights of `names`, the rest are zeroed and freed.

        Weight matrices are pruned per tensor; vectors (biases, log-std) go whole to the first task.
        """
        task = self._num_tasks
        with torch.no_grad():
            for name in names:
                p = params[name]
                owners = self.owners.setdefault(name, torch.full(p.shape, FREE, dtype=torch.int16))
                free = owners == FREE
                if p.dim() < 2:  # biases and log-std: the first task's (later tasks see them frozen)
                    if task == 0:
                        owners[free] = 0
                    continue
                free_index = free.reshape(-1).nonzero().squeeze(1)
                keep = int(round((1.0 - self.prune_share) * free_index.numel()))
                largest = torch.topk(p.detach().abs().reshape(-1)[free_index], keep).indices  # exactly `keep`
                kept = torch.zeros(free.numel(), dtype=torch.bool)
                kept[free_index[largest]] = True
                kept = kept.reshape(free.shape)
                owners[kept] = task
                p[free & ~kept] = 0.0
        self._num_tasks += 1

    def frozen(self, name: str) -> torch.Tensor | None:
        """Boolean mask of `name`'s entries that earlier tasks own (None if it is not packed)."""
        owners = self.owners.get(name)
        return None if owners is None else owners != FREE

    def task_params(self, params: Mapping[str, torch.Tensor], task: int, names: Mapping[str, str] | None = None
                    ) -> dict[str, torch.Tensor]:
        """`params` as task `task` sees them: entries owned by later tasks zeroed.

        `names` maps the keys of `params` to the packed (SB3) names when they differ (our policy's
        names: `agents.continual.sb3_transfer.sb3_names`).
        """
        out = {}
        for key, value in params.items():
            owners = self.owners.get(names.get(key, key) if names else key)
            out[key] = value if owners is None else torch.where(owners > task, torch.zeros_like(value), value)
        return out

    def keep_frozen(self, new: Mapping[str, torch.Tensor], old: Mapping[str, torch.Tensor],
                    names: Mapping[str, str] | None = None) -> dict[str, torch.Tensor]:
        """`new` with every entry that an earlier task owns taken from `old` (e.g. after an
        adaptation step that moved all weights). `names` as in `task_params`."""
        out = dict(new)
        for key, value in new.items():
            owners = self.owners.get(names.get(key, key) if names else key)
            if owners is not None:
                out[key] = torch.where(owners != FREE, old[key], value)
        return out

    def penalty(self, params: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Always 0: nothing is added to the loss."""
        return torch.zeros(())

    def state_dict(self) -> dict[str, Any]:
        """Plain tensors and numbers (loads with weights_only=True)."""
        return {"kind": self.kind, "mode": self.mode, "strength": self.strength, "num_tasks": self._num_tasks,
                "prune_share": self.prune_share, "owners": {n: t.clone() for n, t in self.owners.items()}}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore from `state_dict()`."""
        if state.get("kind") != self.kind:
            raise ValueError(f"state['kind']: expected {self.kind!r}, got {state.get('kind')!r}")
        self._num_tasks, self.prune_share = int(state["num_tasks"]), float(state["prune_share"])
        self.owners = {n: t.clone() for n, t in state["owners"].items()}

    def __repr__(self) -> str:
        return f"PackNet(prune_share={self.prune_share}, num_tasks={self._num_tasks})"
