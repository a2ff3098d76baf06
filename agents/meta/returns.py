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


def masked_normalize(x: torch.Tensor, mask: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """`(x - mean) / (std + eps)` with mean and std over real steps only; 0 on padding."""
    mask = mask.to(x.dtype)
    count = mask.sum().clamp(min=1.0)
    mean = (x * mask).sum() / count
    var = (((x - mean) * mask) ** 2).sum() / count
    return (x - mean) / (var.sqrt() + eps) * mask


class LinearFeatureBaseline:
    """Time-varying linear value baseline fitted by ridge regression (Duan et al. 2016).

    Features per step: `clip(obs, -10, 10)`, its square, `t/100`, `(t/100)^2`, `(t/100)^3` and a
    bias, where `t` is the step index inside the episode. The clip bounds the feature scale, so the
    absolute ridge term stays meaningful.

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
        """`[T, B, 2 * obs_dim + 4]` float64 feature tensor (0 on padding)."""
        obs = episodes.observations.to(torch.float64).clamp(-10.0, 10.0)
        horizon, batch = obs.shape[:2]
        time = torch.arange(horizon, dtype=torch.float64).div(100.0).view(horizon, 1, 1)
        time = time.expand(horizon, batch, 1)
        feats = torch.cat([obs, obs**2, time, time**2, time**3, torch.ones_like(time)], dim=-1)
        return feats * episodes.mask.to(torch.float64).unsqueeze(-1)

    def fit(self, episodes: Episodes, returns: torch.Tensor) -> None:
        """Fit the weights to `returns` (`[T, B]`) on the real steps of `episodes`."""
        real = episodes.mask.bool()
        x = self.features(episodes)[real]
        y = returns.to(torch.float64)[real]
        xtx = x.T @ x
        xty = x.T @ y
        eye = torch.eye(xtx.shape[0], dtype=torch.float64)
        reg = self.reg_coeff
        for _ in range(self.max_reg_tries):
            chol, info = torch.linalg.cholesky_ex(xtx + reg * eye)
            if int(info) == 0:
                weights = torch.cholesky_solve(xty.unsqueeze(-1), chol).squeeze(-1)
                if torch.isfinite(weights).all():
                    self.weights = weights
                    return
            reg = reg * 10.0 if reg > 0 else 1e-8
        logger.warning("linear baseline: ridge solve failed up to reg=%g; using least squares", reg)
        weights = torch.linalg.lstsq(x, y.unsqueeze(-1), driver="gelsd").solution.squeeze(-1)
        self.weights = torch.nan_to_num(weights, nan=0.0, posinf=0.0, neginf=0.0)

    def predict(self, episodes: Episodes) -> torch.Tensor:
        """`[T, B]` predicted values in the rewards' dtype; 0 on padding and before any fit."""
        if self.weights is None:
            return torch.zeros_like(episodes.rewards)
        values = self.features(episodes) @ self.weights
        return values.to(episodes.rewards.dtype)


def baseline_advantages(
    episodes: Episodes,
    gamma: float = 0.99,
    lam: float = 1.0,
    normalize: bool = True,
    baseline: LinearFeatureBaseline | None = None,
) -> torch.Tensor:
    """Advantages `[T, B]` of `episodes` against a linear baseline fitted on their own returns.

    The baseline is fitted on the discounted returns, then GAE runs with its predictions as
    values (`lam=1` gives returns minus baseline). No bootstrap: `Episodes` carries no observation
    after the final row, so every episode is treated as ending where its mask ends. The result is
    detached; with `normalize` it has zero mean and unit std over real steps (0 on padding).

    Args:
        episodes: one task's episodes.
        gamma: discount factor.
        lam: GAE lambda.
        normalize: standardise over the real steps.
        baseline: the baseline to fit (a fresh `LinearFeatureBaseline` if None).
    """
    rewards = episodes.rewards.detach()
    returns = discounted_returns(rewards, episodes.mask, gamma)
    baseline = LinearFeatureBaseline() if baseline is None else baseline
    baseline.fit(episodes, returns)
    values = baseline.predict(episodes)
    advantages = gae(rewards, values, episodes.mask, gamma, lam)
    if normalize:
        advantages = masked_normalize(advantages, episodes.mask)
    return advantages.detach()
