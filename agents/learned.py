"""Trained Stable-Baselines3 models behind the :class:`Policy` interface.

| algorithm | SB3 class | reads masks |
|---|---|---|
| ``maskable_ppo`` | ``sb3_contrib.MaskablePPO`` | yes |
| ``ppo`` | ``stable_baselines3.PPO`` | no |
| ``a2c`` | ``stable_baselines3.A2C`` | no |
| ``dqn`` | ``stable_baselines3.DQN`` | no |

A model that reads masks never proposes a masked action. The others may:
the environments refuse such an action (the service stays and
``info["refused"]`` is true), and :class:`LearnedPolicy` does the same, so a
policy is evaluated exactly as it was trained. It counts those proposals in
``masked_choices``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from gymnasium import spaces
from sb3_contrib import MaskablePPO
from stable_baselines3 import A2C, DQN, PPO
from stable_baselines3.common.base_class import BaseAlgorithm

from mecrl.agents.baselines import NeverMigrate
from mecrl.agents.policy import Policy, PolicyContext
from mecrl.registry import Registry


@dataclass(frozen=True)
class Algorithm:
    """A Stable-Baselines3 algorithm mecrl can train and load."""

    cls: type[BaseAlgorithm]
    """The SB3 class."""
    masked: bool
    """Whether it takes the action mask (only MaskablePPO does)."""

    @property
    def off_policy(self) -> bool:
        """Whether it learns from a replay buffer (saved with checkpoints)."""
        return self.cls is DQN

    def load(self, path: str | Path) -> BaseAlgorithm:
        """Load a saved model of this algorithm on the CPU."""
        return self.cls.load(str(path), device="cpu")


ALGORITHMS: Registry[Algorithm] = Registry("algorithm")
"""Loaders of trained models, by the algorithm name a training config uses."""

ALGORITHMS.add("maskable_ppo", Algorithm(MaskablePPO, masked=True))
ALGORITHMS.add("ppo", Algorithm(PPO, masked=False))
ALGORITHMS.add("a2c", Algorithm(A2C, masked=False))
ALGORITHMS.add("dqn", Algorithm(DQN, masked=False))


class LearnedPolicy(Policy):
    """A trained model acting deterministically on batches of services.

    Args:
        model: The trained SB3 model; a MaskablePPO model gets the mask.
        context: The policy context of the evaluated scenario.

    Raises:
        ValueError: If the model's spaces do not fit the context's layout
            (a model trained on another action space or candidate count).
    """

    name = "learned"

    def __init__(self, model: BaseAlgorithm, context: PolicyContext) -> None:
        layout = context.layout
        observation, action = model.observation_space, model.action_space
        if observation.shape != (layout.size,) or not (
            isinstance(action, spaces.Discrete) and action.n == layout.n_candidates
        ):
            raise ValueError(
                f"the model sees observations of shape {observation.shape} and "
                f"acts over {action}; scenario {context.scenario.config.name!r} "
                f"needs shape ({layout.size},) and Discrete({layout.n_candidates})"
            )
        self.model = model
        self.masked_choices = 0
        """Actions the model proposed that the mask forbids, so far."""
        self._stay = NeverMigrate(context)

    def act(self, observation: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """Return the model's deterministic action, or stay where it is masked."""
        if isinstance(self.model, MaskablePPO):
            action, _ = self.model.predict(
                observation, deterministic=True, action_masks=mask
            )
            return np.asarray(action, dtype=np.int64)
        action, _ = self.model.predict(observation, deterministic=True)
        action = np.asarray(action, dtype=np.int64)
        forbidden = ~mask[np.arange(action.shape[0]), action]
        if forbidden.any():
            self.masked_choices += int(forbidden.sum())
            action = np.where(forbidden, self._stay.act(observation, mask), action)
        return action


def load_policy(
    path: str | Path, algorithm: str, context: PolicyContext
) -> LearnedPolicy:
    """Load a saved model as a policy.

    Args:
        path: The model's ``.zip`` file.
        algorithm: Name of its algorithm in :data:`ALGORITHMS`.
        context: The policy context of the evaluated scenario.

    Raises:
        KeyError: If the algorithm is unknown (the message lists the known).
        FileNotFoundError: If there is no such file.
        ValueError: If the model does not fit the scenario.
    """
    if not Path(path).is_file():
        raise FileNotFoundError(f"no saved model at {str(path)!r}")
    return LearnedPolicy(ALGORITHMS.get(algorithm).load(path), context)
