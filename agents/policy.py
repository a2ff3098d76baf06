"""Gaussian MLP policy whose forward pass can run on any set of parameters.

`forward(obs, params=None)` evaluates the module with its own parameters, or with an
adapted copy given as a name -> tensor dict (through `torch.func.functional_call`), so MAML
can use adapted parameters without touching the module.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn
from torch.distributions import Independent, Normal
from torch.func import functional_call

Params = dict[str, torch.Tensor]


class GaussianMLPPolicy(nn.Module):
    """Diagonal Gaussian policy: tanh MLP mean, state-independent log standard deviation.

    Args:
        obs_dim: size of the flat observation vector.
        act_dim: size of the action vector.
        hidden_sizes: widths of the tanh hidden layers.
        init_log_std: initial value of every log standard deviation.
        min_log_std: lower clamp on the log standard deviation (keeps the density finite).
    """

    def __init__(
        self,
        obs_dim: int,
        act_dim: int,
        hidden_sizes: Sequence[int] = (64, 64),
        init_log_std: float = 0.0,
        min_log_std: float = -5.0,
    ) -> None:
        super().__init__()
        self.obs_dim = int(obs_dim)
        self.act_dim = int(act_dim)
        self.hidden_sizes = tuple(int(h) for h in hidden_sizes)
        self.min_log_std = float(min_log_std)
        layers: list[nn.Module] = []
        width = self.obs_dim
        for hidden in self.hidden_sizes:
            layers += [nn.Linear(width, hidden), nn.Tanh()]
            width = hidden
        layers.append(nn.Linear(width, self.act_dim))
        self.mean_net = nn.Sequential(*layers)
        self.log_std = nn.Parameter(torch.full((self.act_dim,), float(init_log_std)))

    def _distribution(self, obs: torch.Tensor) -> Independent:
        mean = self.mean_net(obs)
        std = self.log_std.clamp(min=self.min_log_std).exp().expand_as(mean)
        return Independent(Normal(mean, std), 1)

    def forward(self, obs: torch.Tensor, params: Mapping[str, torch.Tensor] | None = None) -> Independent:
        """Action distribution for `obs` (shape [..., obs_dim]) under `params` (default: own)."""
        if params is None:
            return self._distribution(obs)
        return functional_call(self, dict(params), (obs,), kwargs={"params": None})

    def parameters_dict(self) -> Params:
        """The module's own parameters as a name -> tensor dict (shared, not copied)."""
        return dict(self.named_parameters())

    def config(self) -> dict:
        """Constructor arguments, so a checkpoint can rebuild the same architecture."""
        return {
            "obs_dim": self.obs_dim,
            "act_dim": self.act_dim,
            "hidden_sizes": list(self.hidden_sizes),
            "min_log_std": self.min_log_std,
        }
