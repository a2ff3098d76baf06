"""A context-based meta-learner in the manner of RMA (Kumar et al., 2021): adapt from experience.

Phase 1 trains a teacher with TRPO over a task family while it observes the task's hidden factors
(`envs.tasks.privileged_factors`; `PretrainConfig(privileged_in_obs=True)`). Its first layer
computes `W_s s + W_e e + b`: `W_e e` is the *extrinsics embedding*, everything the teacher uses of
the factors e. Phase 2 (`agents.meta.context_train`) fits an adapter that regresses that
embedding from the last `history` transitions (s, a, s') of the episode, on episodes the student
itself acts in. The student is the teacher with `W_e e` replaced by the adapter's estimate: no
gradient step at test time; the estimate follows the episode, step by step.

Why this and not PEARL or RL^2: the factors that make our tasks differ (terrain kind and
difficulty, friction, mass, damping, motor strength, payload) are known to the simulator, so the
adapter can be fitted by regression, which is stable and cheap on two CPU cores, where PEARL's
off-policy soft actor-critic and RL^2's recurrent policy-gradient training take far more samples.
The teacher is trained by the same TRPO code as the multi-task baseline, so the two differ only
in what the policy may see.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from agents.episodes import Episodes
from agents.policy import GaussianMLPPolicy
from agents.sampler import StepMean


def transition_size(obs_dim: int, act_dim: int) -> int:
    """Features of one transition in a history window: s, a, s' and a 1 that marks a real one."""
    return 2 * obs_dim + act_dim + 1


def history_windows(observations: torch.Tensor, actions: torch.Tensor, mask: torch.Tensor, history: int
                    ) -> torch.Tensor:
    """For every step t of a batch of episodes, the `history` transitions before it.

    Args:
        observations: [H, B, obs_dim] as sampled (`agents.episodes.Episodes`).
        actions: [H, B, act_dim].
        mask: [H, B], 1 while the episode runs.
        history: transitions per window.

    Returns [H, B, history, transition_size]: window t holds transitions t-history .. t-1, each
    (s_i, a_i, s_{i+1}, 1); transitions before the episode's start are all zeros.
    """
    horizon, batch, _ = observations.shape
    real = mask[1:, :, None]  # transition i is real when step i+1 ran
    transitions = torch.cat([observations[:-1], actions[:-1], observations[1:], torch.ones_like(real)], dim=-1)
    transitions = transitions * real
    # Pad `history` empty transitions in front: window t is padded rows t .. t+history-1.
    padded = torch.cat([transitions.new_zeros(history, batch, transitions.shape[-1]), transitions], dim=0)
    windows = padded.unfold(0, history, 1)[:horizon]  # [H, B, feat, history]
    return windows.permute(0, 1, 3, 2).contiguous()


class ContextAdapter(nn.Module):
    """RMA's adaptation module: a window of transitions -> an estimate of the extrinsics embedding.

    Args:
        obs_dim: the deployed (non-privileged) observation size.
        act_dim: action size.
        history: transitions per window.
        embed_dim: the teacher's first hidden width (the embedding's size).
        hidden_sizes: widths of the ELU hidden layers.
    """

    def __init__(self, obs_dim: int, act_dim: int, history: int, embed_dim: int,
                 hidden_sizes: Sequence[int] = (256, 128)) -> None:
        super().__init__()
        self.obs_dim, self.act_dim = int(obs_dim), int(act_dim)
        self.history, self.embed_dim = int(history), int(embed_dim)
        self.hidden_sizes = tuple(int(h) for h in hidden_sizes)
        layers: list[nn.Module] = []
        width = self.history * transition_size(self.obs_dim, self.act_dim)
        for hidden in self.hidden_sizes:
            layers += [nn.Linear(width, hidden), nn.ELU()]
            width = hidden
        layers.append(nn.Linear(width, self.embed_dim))
        self.net = nn.Sequential(*layers)
        # Per-feature scale of real transitions (velocities reach 10, angles stay near 0), fixed
        # once from the first data (`set_normalizer`); saved with the weights.
        features = transition_size(self.obs_dim, self.act_dim) - 1
        self.register_buffer("input_mean", torch.zeros(features))
        self.register_buffer("input_std", torch.ones(features))

    def set_normalizer(self, windows: torch.Tensor) -> None:
        """Fix the input scaling to the mean and std of the real transitions in `windows`."""
        flat = windows.reshape(-1, windows.shape[-1])
        real = flat[flat[:, -1] > 0, :-1]
        if len(real) < 2:
            raise ValueError("windows: need at least two real transitions to set the adapter's input scale")
        with torch.no_grad():
            self.input_mean.copy_(real.mean(dim=0))
            self.input_std.copy_(real.std(dim=0).clamp(min=1e-3))

    def forward(self, windows: torch.Tensor) -> torch.Tensor:
        """Embedding estimates [..., embed_dim] of windows [..., history, transition_size]."""
        real = windows[..., -1:]
        scaled = (windows[..., :-1] - self.input_mean) / self.input_std * real  # empty slots stay 0
        return self.net(torch.cat([scaled, real], dim=-1).flatten(-2))

    def numpy_forward(self) -> Callable[[np.ndarray], np.ndarray]:
        """`forward` as a numpy function of float32 windows [n, history, transition_size], for the
        sampler's per-step call: numpy's result for a row does not depend on the process's thread
        settings or the other rows, so a Ray actor acts exactly as the local sampler (torch's
        float32 matmul does not promise that). Agrees with `forward` to float32 rounding (tested)."""
        with torch.no_grad():
            mean, std = self.input_mean.numpy().copy(), self.input_std.numpy().copy()
            layers = [(layer.weight.numpy().T.copy(), layer.bias.numpy().copy())
                      for layer in self.net if isinstance(layer, nn.Linear)]
        last = len(layers) - 1

        def forward(windows: np.ndarray) -> np.ndarray:
            real = windows[..., -1:]
            x = np.concatenate([(windows[..., :-1] - mean) / std * real, real], axis=-1)
            x = x.reshape(len(windows), -1)
            for index, (weight_t, bias) in enumerate(layers):
                x = x @ weight_t + bias
                if index < last:
                    x = np.where(x > 0, x, np.expm1(np.minimum(x, 0)))  # ELU
            return x

        return forward

    def config(self) -> dict:
        """Constructor arguments (what a checkpoint needs to rebuild it)."""
        return {"obs_dim": self.obs_dim, "act_dim": self.act_dim, "history": self.history,
                "embed_dim": self.embed_dim, "hidden_sizes": list(self.hidden_sizes)}


class ContextPolicy(nn.Module):
    """The deployed student: the teacher's network with the adapter's estimate in place of `W_e e`.

    Args:
        teacher: a policy trained on observations with the privileged factors appended (their
            count is `n_privileged`, at the end of the observation).
        adapter: its `obs_dim` is the teacher's minus `n_privileged`; `embed_dim` its first width.
        n_privileged: how many privileged factors the teacher observes.
    """

    def __init__(self, teacher: GaussianMLPPolicy, adapter: ContextAdapter, n_privileged: int) -> None:
        super().__init__()
        if adapter.obs_dim != teacher.obs_dim - n_privileged or adapter.act_dim != teacher.act_dim:
            raise ValueError(f"adapter: observes {adapter.obs_dim} + acts {adapter.act_dim}, the teacher's deployed "
                             f"observation is {teacher.obs_dim - n_privileged} and actions {teacher.act_dim}")
        if adapter.embed_dim != teacher.hidden_sizes[0]:
            raise ValueError(f"adapter: embed_dim {adapter.embed_dim} must be the teacher's first width "
                             f"{teacher.hidden_sizes[0]}")
        self.teacher, self.adapter, self.n_privileged = teacher, adapter, int(n_privileged)
        self.obs_dim, self.act_dim = adapter.obs_dim, adapter.act_dim

    def extrinsics(self, privileged: torch.Tensor) -> torch.Tensor:
        """The teacher's embedding `W_e e` [..., embed_dim] of privileged factors [..., n_privileged]."""
        weight = self.teacher.mean_net[0].weight
        return privileged.to(weight.dtype) @ weight[:, self.obs_dim:].T

    def mean(self, obs: torch.Tensor, embedding: torch.Tensor) -> torch.Tensor:
        """Action means [..., act_dim] of deployed observations under an extrinsics embedding."""
        first = self.teacher.mean_net[0]
        x = torch.tanh(F.linear(obs, first.weight[:, :self.obs_dim], first.bias) + embedding)
        for layer in list(self.teacher.mean_net)[2:]:
            x = layer(x)
        return x

    def mean_from_windows(self, obs: torch.Tensor, windows: torch.Tensor) -> torch.Tensor:
        """Action means of observations given each one's history window (`history_windows`)."""
        return self.mean(obs, self.adapter(windows))

    def estimate(self, episodes: Episodes) -> torch.Tensor:
        """The adapter's estimate [embed_dim] averaged over every real step of `episodes` (one task's):
        what the experience says about the task, as one embedding."""
        with torch.no_grad():
            windows = history_windows(episodes.observations, episodes.actions, episodes.mask, self.adapter.history)
            return self.adapter(windows[episodes.mask.bool()]).mean(dim=0)

    def with_embedding(self, embedding: torch.Tensor) -> GaussianMLPPolicy:
        """A plain policy on the deployed observation that acts as this student would with its
        estimate held at `embedding` [embed_dim]: the embedding is folded into the first layer's bias.
        How a context adapter starts what trains plain policies (a curriculum's `init:`)."""
        teacher = self.teacher
        policy = GaussianMLPPolicy(self.obs_dim, self.act_dim, teacher.hidden_sizes, min_log_std=teacher.min_log_std)
        with torch.no_grad():
            for (name, target), source in zip(policy.named_parameters(), teacher.parameters(), strict=True):
                if name == "mean_net.0.weight":
                    target.copy_(source[:, :self.obs_dim])
                elif name == "mean_net.0.bias":
                    target.copy_(source + embedding.to(source.dtype))
                else:
                    target.copy_(source)
        return policy

    def action_std(self) -> np.ndarray:
        """The teacher's action noise [act_dim]."""
        with torch.no_grad():
            return self.teacher.std(self.teacher.parameters_dict()).numpy()

    def start(self, rows: np.ndarray) -> StepMean:
        """A step function for the envs `rows` with an empty history (`agents.sampler.MemoryActor`)."""
        return self.step_function(torch.zeros(len(rows), self.adapter.history,
                                              transition_size(self.obs_dim, self.act_dim)))

    def continued(self, episodes: Sequence[Episodes]) -> ContinuedContext:
        """This policy acting on the same tasks again with the history each env ended `episodes` with
        (one `Episodes` per task, as `Sampler.sample` returns them): experience carried over."""
        return ContinuedContext(self, last_windows(episodes, self.adapter.history))

    def step_function(self, windows: torch.Tensor) -> StepMean:
        """A step function that starts from `windows` [n_envs, history, transition_size].

        It keeps the last `history` transitions of each env, as `history_windows` builds them
        from the sampled episodes, so what the sampler acts with equals what training sees (to
        float32 rounding: the step runs in numpy, `ContextAdapter.numpy_forward`).
        """
        memory = windows.numpy().astype(np.float32, copy=True)
        n_envs = len(memory)
        adapter = self.adapter.numpy_forward()
        with torch.no_grad():
            first = self.teacher.mean_net[0]
            first_t, first_bias = first.weight[:, :self.obs_dim].numpy().T.copy(), first.bias.numpy().copy()
            rest = [(layer.weight.numpy().T.copy(), layer.bias.numpy().copy())
                    for layer in list(self.teacher.mean_net)[2:] if isinstance(layer, nn.Linear)]
        previous: list[np.ndarray] = []
        ones = np.ones((n_envs, 1), dtype=np.float32)

        def step(observations: np.ndarray, previous_actions: np.ndarray) -> np.ndarray:
            obs = np.asarray(observations, dtype=np.float32)
            if previous:
                memory[:, :-1] = memory[:, 1:].copy()
                memory[:, -1] = np.concatenate([previous[0], previous_actions, obs, ones], axis=-1)
                previous[0] = obs.copy()
            else:
                previous.append(obs.copy())
            x = np.tanh(obs @ first_t + first_bias + adapter(memory))
            for index, (weight_t, bias) in enumerate(rest):
                x = x @ weight_t + bias
                if index < len(rest) - 1:
                    np.tanh(x, out=x)
            return x

        return step


class ContinuedContext:
    """A `ContextPolicy` whose envs start with given histories (`ContextPolicy.continued`).

    Args:
        policy: the student.
        windows: [n_envs, history, transition_size], one per env of the call, task-major.
    """

    def __init__(self, policy: ContextPolicy, windows: torch.Tensor) -> None:
        self.policy, self.windows = policy, windows

    def start(self, rows: np.ndarray) -> StepMean:
        """A step function for the envs `rows`, starting from their windows."""
        if len(rows) and int(np.max(rows)) >= len(self.windows):
            raise ValueError(f"rows: the continued policy holds histories for {len(self.windows)} envs, "
                             f"asked for env {int(np.max(rows))}")
        return self.policy.step_function(self.windows[torch.as_tensor(rows)].clone())

    def action_std(self) -> np.ndarray:
        """The student's action noise."""
        return self.policy.action_std()


def last_windows(episodes: Sequence[Episodes], history: int) -> torch.Tensor:
    """The window at each episode's last real step, [sum of batch sizes, history, transition_size]
    in task-major order: the memory an env has when its episode ends (its last transition, into the
    state after the final action, is not recorded)."""
    out = []
    for batch in episodes:
        windows = history_windows(batch.observations, batch.actions, batch.mask, history)
        last = (batch.mask.sum(dim=0).long() - 1).clamp(min=0)
        out.append(windows[last, torch.arange(batch.batch_size)])
    return torch.cat(out)
