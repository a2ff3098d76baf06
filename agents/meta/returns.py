"""Discounting, generalised advantage estimation and the linear feature baseline.

Every function takes time-major `[T, B]` tensors with a `mask` that is 1 on real steps and 0 on
the padding after an episode ended (padding only ever follows the real steps of an episode, as the
sampler writes it). Outputs are 0 on padding.
"""

from __future__ import annotations

import logging

import torch

from agents.episodes import Episodes

logger = logging.getLogger(__name__)


def discounted_returns(rewards: torch.Tensor, mask: torch.Tensor, gamma: float) -> torch.Tensor:
    """Reward-to-go `G_t = r_t + gamma * G_{t+1}` of each episode, `[T, B]`, 0 on padding.

    Args:
        rewards: `[T, B]` rewards.
        mask: `[T, B]` 1 on real steps, 0 on padding.
        gamma: discount factor.
    """
    mask = mask.to(rewards.dtype)
    returns = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[0])
    for t in range(rewards.shape[0] - 1, -1, -1):
        running = (rewards[t] + gamma * running) * mask[t]
        returns[t] = running
    return returns


def gae(
    rewards: torch.Tensor,
    values: torch.Tensor,
    mask: torch.Tensor,
    gamma: float,
    lam: float,
    last_values: torch.Tensor | None = None,
    terminated: torch.Tensor | None = None,
) -> torch.Tensor:
    """Generalised advantage estimates (Schulman et al. 2016), `[T, B]`, 0 on padding.

    `A_t = sum_k (gamma * lam)^k delta_{t+k}` with `delta_t = r_t + gamma * V_{t+1} - V_t`.
    The value after an episode's last real step is:

    - `last_values[b]` if `last_values` is given, the episode's last real step is the final row
      `T - 1` (it ran out of horizon) and the episode is not `terminated` (a truncation);
    - 0 otherwise: an episode that ends before row `T - 1`, or is terminated, or any episode when
      `last_values` is None, is treated as ending in a terminal state (no bootstrap).

    With `terminated=None`, every episode that reaches the final row counts as truncated.
    With `lam=1` and no bootstrap this is exactly `discounted_returns(...) - values` on real steps.

    Args:
        rewards: `[T, B]` rewards.
        values: `[T, B]` value estimates of the observations (ignored on padding).
        mask: `[T, B]` 1 on real steps, 0 on padding.
        gamma: discount factor.
        lam: GAE lambda (1 = Monte-Carlo returns minus values, 0 = one-step TD errors).
        last_values: `[B]` value of the observation after the final row, for bootstrapping.
        terminated: `[B]` bool, the episode ended in a terminal state.
    """
    mask = mask.to(rewards.dtype)
    values = values.to(rewards.dtype) * mask
    next_values = torch.zeros_like(values)
    # Padding has value 0 after masking, so an episode ending early is not bootstrapped.
    next_values[:-1] = values[1:]
    if last_values is not None:
        bootstrap = mask[-1]
        if terminated is not None:
            bootstrap = bootstrap * (~terminated.bool()).to(rewards.dtype)
        next_values[-1] = last_values.to(rewards.dtype) * bootstrap
    deltas = (rewards + gamma * next_values - values) * mask

    advantages = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[0])
    for t in range(rewards.shape[0] - 1, -1, -1):
        running = (deltas[t] + gamma * lam * running) * mask[t]
        advantages[t] = running
    return advantages


def masked_normalize(x: torch.Tensor, mask: torch.Tensor, eps: float = 1e-8, dims: tuple[int, ...] | None = None
                     ) -> torch.Tensor:
    """`(x - mean) / (std + eps)` with mean and std over real steps only; 0 on padding.

    `dims`: the axes the statistics are taken over (default: all), e.g. `(1, 2)` for one mean and
    std per task of a `[N, T, B]` batch.
    """
    mask = mask.to(x.dtype)
    dims = tuple(range(x.dim())) if dims is None else dims
    count = mask.sum(dims, keepdim=True).clamp(min=1.0)
    mean = (x * mask).sum(dims, keepdim=True) / count
    var = (((x - mean) * mask) ** 2).sum(dims, keepdim=True) / count
    return (x - mean) / (var.sqrt() + eps) * mask


class LinearFeatureBaseline:
    """Time-varying linear value baseline fitted by ridge regression (Duan et al. 2016).

    Features per step: `clip(obs, -10, 10)`, its square, `t/100`, `(t/100)^2`, `(t/100)^3` and a
    bias, where `t` is the step index inside the episode. The clip bounds the feature scale, so the
    absolute ridge term stays meaningful.

    Episodes may carry a leading task axis (`[N, T, B, ...]`, as `agents.meta.task_batch.stack_episodes`
    makes them): then one baseline is fitted per task, all in one batched solve.

    Args:
        reg_coeff: initial ridge regulariser added to the diagonal of the normal equations.
        max_reg_tries: how many ridge solves are tried, the regulariser multiplied by 10 (or set
            to 1e-8 if it was 0) after each one whose Cholesky factorisation fails or whose
            solution is non-finite; then a minimum-norm least squares (non-finite weights -> 0).
    """

    def __init__(self, reg_coeff: float = 1e-5, max_reg_tries: int = 10) -> None:
        self.reg_coeff = float(reg_coeff)
        self.max_reg_tries = int(max_reg_tries)
        self.weights: torch.Tensor | None = None

    @staticmethod
    def features(episodes: Episodes) -> torch.Tensor:
        """`[..., T, B, 2 * obs_dim + 4]` float64 feature tensor (0 on padding)."""
        obs = episodes.observations.to(torch.float64).clamp(-10.0, 10.0)
        horizon = obs.shape[-3]
        time = torch.arange(horizon, dtype=torch.float64).div(100.0).view(horizon, 1, 1)
        time = time.expand(*obs.shape[:-1], 1)
        feats = torch.cat([obs, obs**2, time, time**2, time**3, torch.ones_like(time)], dim=-1)
        return feats * episodes.mask.to(torch.float64).unsqueeze(-1)

    def fit(self, episodes: Episodes, returns: torch.Tensor) -> None:
        """Fit the weights to `returns` (`[..., T, B]`) on the real steps of `episodes`.

        Padding rows of the features are 0, so they add nothing to the normal equations.
        """
        feats = self.features(episodes)
        tasks = feats.shape[:-3]
        x = feats.reshape(-1, feats.shape[-3] * feats.shape[-2], feats.shape[-1])
        y = (returns.to(torch.float64) * episodes.mask.to(torch.float64)).reshape(x.shape[0], -1, 1)
        xtx = x.mT @ x
        xty = x.mT @ y
        self.weights = self._solve_all(xtx, xty, x, y).reshape(*tasks, -1)

    def _solve_all(self, xtx: torch.Tensor, xty: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Ridge weights `[N, F]` of every task: one batched Cholesky solve, the failures retried alone."""
        eye = torch.eye(xtx.shape[-1], dtype=torch.float64)
        chol, info = torch.linalg.cholesky_ex(xtx + self.reg_coeff * eye)
        weights = torch.cholesky_solve(xty, chol).squeeze(-1)
        good = (info == 0) & torch.isfinite(weights).all(-1)
        for i in torch.nonzero(~good).flatten().tolist():
            weights[i] = self._solve_one(xtx[i], xty[i], x[i], y[i])
        return weights

    def _solve_one(self, xtx: torch.Tensor, xty: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """One task's ridge weights, the regulariser grown until the solve succeeds, else least squares."""
        eye = torch.eye(xtx.shape[-1], dtype=torch.float64)
        reg = self.reg_coeff
        for _ in range(self.max_reg_tries):
            chol, info = torch.linalg.cholesky_ex(xtx + reg * eye)
            if int(info) == 0:
                weights = torch.cholesky_solve(xty, chol).squeeze(-1)
                if torch.isfinite(weights).all():
                    return weights
            reg = reg * 10.0 if reg > 0 else 1e-8
        logger.warning("linear baseline: ridge solve failed up to reg=%g; using least squares", reg)
        weights = torch.linalg.lstsq(x, y, driver="gelsd").solution.squeeze(-1)
        return torch.nan_to_num(weights, nan=0.0, posinf=0.0, neginf=0.0)

    def predict(self, episodes: Episodes) -> torch.Tensor:
        """`[..., T, B]` predicted values in the rewards' dtype; 0 on padding and before any fit."""
        if self.weights is None:
            return torch.zeros_like(episodes.rewards)
        values = torch.einsum("...tbf,...f->...tb", self.features(episodes), self.weights)
        return values.to(episodes.rewards.dtype)


def baseline_advantages(
    episodes: Episodes,
    gamma: float = 0.99,
    lam: float = 1.0,
    normalize: bool = True,
    baseline: LinearFeatureBaseline | None = None,
) -> torch.Tensor:
    """Advantages `[..., T, B]` of `episodes` against a linear baseline fitted on their own returns.

    The baseline is fitted on the discounted returns, then GAE runs with its predictions as
    values (`lam=1` gives returns minus baseline). No bootstrap: `Episodes` carries no observation
    after the final row, so every episode is treated as ending where its mask ends. The result is
    detached; with `normalize` it has zero mean and unit std over real steps (0 on padding).
    With a leading task axis (`[N, T, B, ...]` episodes) every task gets its own baseline and its
    own normalisation, computed for all tasks at once.

    Args:
        episodes: one task's episodes, or several tasks' stacked.
        gamma: discount factor.
        lam: GAE lambda.
        normalize: standardise over the real steps (of each task).
        baseline: the baseline to fit (a fresh `LinearFeatureBaseline` if None).
    """
    rewards = episodes.rewards.detach()
    task_axes = rewards.dim() - 2
    # discounted_returns and gae run along the first axis: put time first for stacked tasks.
    time_first = (lambda x: x.movedim(task_axes, 0)) if task_axes else (lambda x: x)
    time_back = (lambda x: x.movedim(0, task_axes)) if task_axes else (lambda x: x)
    mask = episodes.mask
    returns = time_back(discounted_returns(time_first(rewards), time_first(mask), gamma))
    baseline = LinearFeatureBaseline() if baseline is None else baseline
    baseline.fit(episodes, returns)
    values = baseline.predict(episodes)
    advantages = time_back(gae(time_first(rewards), time_first(values), time_first(mask), gamma, lam))
    if normalize:
        advantages = masked_normalize(advantages, mask, dims=(-2, -1))
    return advantages.detach()
