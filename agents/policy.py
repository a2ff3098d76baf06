"""Gaussian MLP policy whose forward pass can run on any set of parameters.

`forward(obs, params=None)` evaluates the module with its own parameters, or with an
adapted copy given as a name -> tensor dict (the same names as `named_parameters()`), so MAML
can use adapted parameters without touching the module. The forward pass is written on the
named tensors directly (what `torch.func.functional_call` would do, without its overhead).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.distributions import Independent, Normal

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

    def mean_and_std(self, obs: torch.Tensor, params: Mapping[str, torch.Tensor] | None = None
                     ) -> tuple[torch.Tensor, torch.Tensor]:
        """Action mean [..., act_dim] and standard deviation under `params` (default: own).

        Plain tensor ops on the named parameters, so it also runs under `torch.func.vmap`
        with a batch of parameter sets (one per task).
        """
        params = self.parameters_dict() if params is None else params
        mean = self.mean(obs, params)
        return mean, self.std(params).expand_as(mean)

    def mean(self, obs: torch.Tensor, params: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Action mean [..., act_dim] under `params`."""
        x = obs
        n_linear = len(self.hidden_sizes) + 1
        for index in range(n_linear):
            layer = 2 * index  # Linear layers sit at even positions of mean_net, Tanh between them
            x = F.linear(x, params[f"mean_net.{layer}.weight"], params[f"mean_net.{layer}.bias"])
            if index < n_linear - 1:
                x = torch.tanh(x)
        return x

    def numpy_mean(self, params: Mapping[str, torch.Tensor] | None = None) -> Callable[[np.ndarray], np.ndarray]:
        """`mean` as a numpy function of float32 observations, for the sampler's per-step forward.

        On the few dozen rows of one sampling step, torch's per-call overhead is several times the
        arithmetic; numpy's is a fraction of it. The function reads the parameters through numpy
        views made once here (no copies: a later in-place update of `params` is seen). With a
        leading task axis on every parameter (`[N, ...]`), observations are `[N, rows, obs_dim]`
        and task i's rows use task i's parameters. Agrees with `mean` to float32 rounding (tested).
        """
        params = self.parameters_dict() if params is None else params
        layers = []
        for index in range(len(self.hidden_sizes) + 1):
            weight = params[f"mean_net.{2 * index}.weight"].detach().numpy()
            bias = params[f"mean_net.{2 * index}.bias"].detach().numpy()
            layers.append((np.swapaxes(weight, -1, -2), bias[..., None, :] if bias.ndim == 2 else bias))
        last = len(layers) - 1

        def mean(obs: np.ndarray) -> np.ndarray:
            x = obs
            for index, (weight_t, bias) in enumerate(layers):
                x = np.matmul(x, weight_t)
                x += bias
                if index < last:
                    np.tanh(x, out=x)
            return x

        return mean

    def std(self, params: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Standard deviation [act_dim] under `params` (state-independent)."""
        return params["log_std"].clamp(min=self.min_log_std).exp()

    def forward(self, obs: torch.Tensor, params: Mapping[str, torch.Tensor] | None = None) -> Independent:
        """Action distribution for `obs` (shape [..., obs_dim]) under `params` (default: own)."""
        mean, std = self.mean_and_std(obs, params)
        return Independent(Normal(mean, std), 1)

    def output_layer_names(self) -> tuple[str, str]:
        """Names of the output layer's weight and bias (the "head" that maps features to means)."""
        last = 2 * len(self.hidden_sizes)
        return f"mean_net.{last}.weight", f"mean_net.{last}.bias"

    def head_names(self) -> tuple[str, ...]:
        """What is task-specific in multi-head mode: the output layer and the log-std (each task
        explores with its own noise)."""
        return (*self.output_layer_names(), "log_std")

    def head(self) -> Params:
        """A detached copy of the head's parameters (`head_names`)."""
        params = self.parameters_dict()
        return {name: params[name].detach().clone() for name in self.head_names()}

    def with_head(self, head: Mapping[str, torch.Tensor]) -> Params:
        """The module's parameters (detached) with the head replaced by `head`.

        A head saved before the log-std was part of it (no "log_std") keeps the current log-std.
        """
        params = {name: p.detach() for name, p in self.named_parameters()}
        return {**params, **{name: head[name] for name in self.head_names() if name in head}}

    def load_head(self, head: Mapping[str, torch.Tensor]) -> None:
        """Copy `head` into the head's parameters in place (as `with_head`)."""
        params = self.parameters_dict()
        with torch.no_grad():
            for name in self.head_names():
                if name in head:
                    params[name].copy_(head[name])

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
