"""Stable-Baselines3 ``VecEnv`` view of the fleet environment.

SB3 trains on a ``VecEnv``; the fleet is already vectorised, so this adapter
only renames things: each service is one of SB3's environments, episodes
end together, and the terminal observation goes where SB3 looks for it.
MaskablePPO reads masks through ``env_method("action_masks")``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import gymnasium as gym
import numpy as np
from stable_baselines3.common.vec_env import VecEnv
from stable_baselines3.common.vec_env.base_vec_env import (
    VecEnvIndices,
    VecEnvStepReturn,
)

from mecrl.envs.fleet import FleetVectorEnv
from mecrl.scenario import Scenario, ScenarioConfig


class FleetVecEnv(VecEnv):
    """The fleet of services as an SB3 vectorised environment.

    Args:
        n_services: Services in the fleet, SB3's ``num_envs``.
        scenario: Scenario name, config file, config or built scenario.
        coupled: Whether services share site capacity.
        seed: Seed of the first episode.
        action_space: ``"candidates"`` or ``"sites"``.

    ``last_infos`` holds the fleet's infos of the last step (every cost term,
    ``cost``, ``moved`` and ``refused`` as (N,) arrays), for loggers: SB3's
    per-environment info dicts stay empty to keep a step cheap.
    """

    def __init__(
        self,
        n_services: int,
        scenario: str | ScenarioConfig | Scenario,
        coupled: bool = True,
        seed: int | None = None,
        action_space: str = "candidates",
    ) -> None:
        self.fleet = FleetVectorEnv(
            n_services, scenario, coupled=coupled, action_space=action_space
        )
        self.last_infos: dict[str, Any] = {}
        super().__init__(
            n_services,
            self.fleet.single_observation_space,
            self.fleet.single_action_space,
        )
        self._seed = seed
        self._actions = np.zeros(n_services, dtype=np.int64)

    def reset(self) -> np.ndarray:
        """Start an episode for every service; return their observations."""
        observation, _ = self.fleet.reset(seed=self._seed)
        self._seed = None  # later episodes continue the seeded stream
        return observation

    def seed(self, seed: int | None = None) -> Sequence[int | None]:
        """Seed the next reset."""
        self._seed = seed
        return [seed] * self.num_envs

    def step_async(self, actions: np.ndarray) -> None:
        """Store the actions for :meth:`step_wait`."""
        self._actions = np.asarray(actions, dtype=np.int64).reshape(self.num_envs)

    def step_wait(self) -> VecEnvStepReturn:
        """Step every service; on episode end, reset and report terminal data."""
        observation, rewards, terminated, truncated, infos = self.fleet.step(
            self._actions
        )
        self.last_infos = infos
        dones = terminated | truncated
        if dones.any():
            final = infos["final_obs"]
            per_env: list[dict[str, Any]] = [
                {"terminal_observation": final[n], "TimeLimit.truncated": True}
                for n in range(self.num_envs)
            ]
        else:
            per_env = [{} for _ in range(self.num_envs)]
        return observation, rewards.astype(np.float32), dones, per_env

    def action_masks(self) -> np.ndarray:
        """Return (N, K) the feasible actions of every service."""
        return self.fleet.action_masks()

    def close(self) -> None:
        """Nothing to release: the fleet lives in this process."""

    def get_attr(self, attr_name: str, indices: VecEnvIndices = None) -> list[Any]:
        """Return a fleet attribute once per selected service."""
        value = getattr(self.fleet, attr_name)
        return [value] * len(list(self._get_indices(indices)))

    def set_attr(
        self, attr_name: str, value: Any, indices: VecEnvIndices = None
    ) -> None:
        """Set a fleet attribute (shared by every service)."""
        setattr(self.fleet, attr_name, value)

    def env_method(
        self,
        method_name: str,
        *method_args: Any,
        indices: VecEnvIndices = None,
        **method_kwargs: Any,
    ) -> list[Any]:
        """Call a fleet method; per-service results are split by service."""
        chosen = list(self._get_indices(indices))
        if method_name == "action_masks":
            masks = self.fleet.action_masks()
            return [masks[i] for i in chosen]
        result = getattr(self.fleet, method_name)(*method_args, **method_kwargs)
        return [result] * len(chosen)

    def env_is_wrapped(
        self, wrapper_class: type[gym.Wrapper], indices: VecEnvIndices = None
    ) -> list[bool]:
        """No service is wrapped."""
        return [False] * len(list(self._get_indices(indices)))
