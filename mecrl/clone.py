"""Cloning the planner: a policy's first guess, before reinforcement learning.

With the planner's verdict in the observation (``ScenarioConfig``'s
``plan_window_slots``), its choice is the candidate flagged ``plan_best``.
Trained from scratch, PPO seldom learns that following it pays: a move
costs at once and pays back slowly, over many slots. A policy that starts
by following the planner, with a value head fitted to the planner's
returns, learns instead where the planner is wrong, and ends below it.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from sb3_contrib import MaskablePPO

from mecrl.envs.fleet import FleetCore
from mecrl.envs.observation import PLAN_FEATURES
from mecrl.evaluate import episode_key
from mecrl.scenario import Scenario

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Demonstrations:
    """States met while following the planner, and what it chose there."""

    observations: np.ndarray
    """(S, D) observations."""
    masks: np.ndarray
    """(S, K) allowed actions."""
    actions: np.ndarray
    """(S,) the planner's candidate."""
    returns: np.ndarray
    """(S,) discounted return from each state on."""


def planner_demonstrations(
    scenario: Scenario, n_services: int, seeds: Sequence[int], gamma: float
) -> Demonstrations:
    """Follow the planner's choice through the episodes of ``seeds``.

    Args:
        scenario: A scenario whose observations carry the planner's verdict.
        n_services: Services of each episode, uncoupled.
        seeds: Episode seeds; keep them apart from the evaluation seeds.
        gamma: Discount of the returns.

    Raises:
        ValueError: If the scenario's observations carry no planner verdict.
    """
    core = FleetCore(scenario, n_services, coupled=False, action_space="candidates")
    if not core.layout.plan:
        raise ValueError(
            f"scenario {scenario.config.name!r} sets no plan_window_slots: its "
            "observations carry no planner to clone"
        )
    parts: dict[str, list[np.ndarray]] = {
        "observations": [],
        "masks": [],
        "actions": [],
        "returns": [],
    }
    for seed in seeds:
        observation = core.reset(episode_key(seed))
        rewards = []
        while not core.done:
            action = core.layout.feature(observation, PLAN_FEATURES[1]).argmax(axis=1)
            parts["observations"].append(observation)
            parts["masks"].append(core.mask.copy())
            parts["actions"].append(action)
            rewards.append(-core.step(action).cost)
            observation = core.observe()
        parts["returns"].extend(_discounted(np.array(rewards), gamma))
    return Demonstrations(
        **{name: np.concatenate(values) for name, values in parts.items()}
    )


def _discounted(rewards: np.ndarray, gamma: float) -> np.ndarray:
    """Return (T, N) the discounted return from each slot of (T, N) rewards."""
    returns = np.empty_like(rewards)
    ahead = np.zeros(rewards.shape[1])
    for slot in range(rewards.shape[0] - 1, -1, -1):
        ahead = rewards[slot] + gamma * ahead
        returns[slot] = ahead
    return returns


@dataclass(frozen=True)
class CloneEpoch:
    """How well the policy fits the demonstrations after one pass."""

    nll: float
    """Mean negative log-likelihood of the planner's actions."""
    value_mse: float
    """Mean squared error of the value head against the returns."""


def clone(
    model: MaskablePPO,
    demonstrations: Demonstrations,
    epochs: int,
    batch_size: int,
    learning_rate: float,
    seed: int,
) -> list[CloneEpoch]:
    """Fit ``model``'s policy to the planner's actions and its value to returns.

    Cross-entropy of the masked action distribution plus half the squared
    error of the value head, with Adam; the model's own optimiser, used by
    reinforcement learning afterwards, is left untouched.
    """
    policy = model.policy
    tensors = [
        torch.as_tensor(demonstrations.observations, dtype=torch.float32),
        torch.as_tensor(demonstrations.masks),
        torch.as_tensor(demonstrations.actions),
        torch.as_tensor(demonstrations.returns, dtype=torch.float32),
    ]
    optimizer = torch.optim.Adam(policy.parameters(), lr=learning_rate)
    generator = torch.Generator().manual_seed(seed)
    size = len(demonstrations.actions)
    history = []
    policy.set_training_mode(True)
    for epoch in range(epochs):
        nll_sum = mse_sum = 0.0
        order = torch.randperm(size, generator=generator)
        for start in range(0, size, batch_size):
            batch = order[start : start + batch_size]
            observations, masks, actions, returns = (t[batch] for t in tensors)
            values, log_prob, _ = policy.evaluate_actions(
                observations, actions, action_masks=masks
            )
            nll = -log_prob.mean()
            mse = ((values.flatten() - returns) ** 2).mean()
            optimizer.zero_grad()
            torch.autograd.backward(nll + 0.5 * mse)
            optimizer.step()
            nll_sum += nll.item() * len(batch)
            mse_sum += mse.item() * len(batch)
        history.append(CloneEpoch(nll_sum / size, mse_sum / size))
        logger.info(
            "cloning epoch %d: nll %.4f, value mse %.4f",
            epoch,
            history[-1].nll,
            history[-1].value_mse,
        )
    policy.set_training_mode(False)
    return history
