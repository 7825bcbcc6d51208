"""The fleet environment: many services sharing sites, stepped as arrays.

Every service of the fleet decides each slot, all in one call: the backend
applies the placements together, so services compete for capacity and see
each other as co-residents. The same core is offered three ways:

- :class:`FleetVectorEnv`, a Gymnasium vector environment in which each
  service is one sub-environment (the fast path for PPO);
- :class:`FleetEnv`, one Gymnasium environment whose action is a site for
  every service (``MultiDiscrete``), for centralised policies;
- ``mecrl.agents.vec.FleetVecEnv`` adapts the vector environment to
  Stable-Baselines3's ``VecEnv`` (kept in ``agents`` so that this package
  does not depend on SB3).
"""

from __future__ import annotations

from typing import Any, SupportsFloat

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from gymnasium.vector import AutoresetMode, VectorEnv

from mecrl.backend import SimBackend, SlotResult
from mecrl.costs import TERM_NAMES
from mecrl.envs.observation import FEATURE_CAP, CandidateView
from mecrl.envs.single import DEFAULT_SCENARIO, resolve_scenario
from mecrl.rng import derive_key
from mecrl.scenario import Scenario, ScenarioConfig


class FleetCore:
    """State and stepping shared by the fleet environments.

    Args:
        scenario: The built scenario.
        n_services: Services in the fleet.
        coupled: Whether services share capacity and see each other.
        action_space: ``"candidates"`` or ``"sites"``.
    """

    def __init__(
        self, scenario: Scenario, n_services: int, coupled: bool, action_space: str
    ) -> None:
        if n_services < 1:
            raise ValueError(f"n_services must be >= 1, got {n_services}")
        if action_space not in ("candidates", "sites"):
            raise ValueError(
                f"action_space must be 'candidates' or 'sites', got {action_space!r}"
            )
        self.scenario = scenario
        self.n_services = n_services
        k = scenario.config.candidates if action_space == "candidates" else None
        self.view = CandidateView(scenario, k)
        self.layout = self.view.layout
        self.backend = SimBackend(scenario, coupled=coupled)
        self.ids = np.arange(n_services, dtype=np.int64)
        self.sites = np.zeros((n_services, self.layout.n_candidates), np.int64)
        self.mask = np.ones((n_services, self.layout.n_candidates), bool)

    def reset(self, key: int) -> np.ndarray:
        """Start an episode from ``key``; return the observations."""
        self.backend.reset(key, self.ids)
        return self.observe()

    def step(self, actions: np.ndarray) -> SlotResult:
        """Apply one action per service."""
        actions = np.asarray(actions)
        if actions.shape != (self.n_services,):
            raise ValueError(
                f"actions must have shape ({self.n_services},), got {actions.shape}"
            )
        if actions.dtype.kind not in "iu":
            raise ValueError(f"actions must be integers, got dtype {actions.dtype}")
        if ((actions < 0) | (actions >= self.layout.n_candidates)).any():
            raise ValueError(f"actions must lie in [0, {self.layout.n_candidates})")
        target = np.take_along_axis(self.sites, actions[:, None].astype(np.int64), 1)
        return self.backend.step(target[:, 0])

    @property
    def done(self) -> bool:
        """Whether the episode has reached its last slot."""
        return self.backend.slot >= self.scenario.config.episode_slots

    def observe(self) -> np.ndarray:
        """Refresh candidates and masks; return the observations."""
        self.sites, self.mask, observation = self.view.view(self.backend)
        return observation


def _terms_info(result: SlotResult) -> dict[str, Any]:
    return {
        "terms": {name: result.terms[name] for name in TERM_NAMES},
        "cost": result.cost,
        "moved": result.moved,
        "refused": result.refused,
    }


class FleetVectorEnv(VectorEnv[np.ndarray, np.ndarray, np.ndarray]):
    """A fleet of services as a Gymnasium vector environment.

    Sub-environment ``n`` is service ``n``: its observation, action, reward
    and mask are those of :class:`envs.single.MigrationEnv`, but all
    services share the sites. All episodes end together after
    ``episode_slots`` slots (truncation); the fleet then resets itself in
    the same step (``AutoresetMode.SAME_STEP``) and puts the last
    observations in ``infos["final_obs"]``. ``infos`` also carries every
    cost term as an (N,) array.

    Args:
        num_envs: Number of services.
        scenario: Scenario name, config file, config or built scenario.
        coupled: Whether services share capacity (False makes each service
            independent, matching the single-service environment).
        action_space: ``"candidates"`` or ``"sites"``.
    """

    # Gymnasium declares metadata as an instance attribute of the base class
    metadata: dict[str, Any] = {"autoreset_mode": AutoresetMode.SAME_STEP}  # noqa: RUF012

    def __init__(
        self,
        num_envs: int = 1000,
        scenario: str | ScenarioConfig | Scenario = DEFAULT_SCENARIO,
        coupled: bool = True,
        action_space: str = "candidates",
    ) -> None:
        self.core = FleetCore(
            resolve_scenario(scenario), num_envs, coupled, action_space
        )
        self.num_envs = num_envs
        self.layout = self.core.layout
        self.single_action_space = spaces.Discrete(self.layout.n_candidates)
        self.single_observation_space = spaces.Box(
            0.0, FEATURE_CAP, (self.layout.size,), dtype=np.float32
        )
        self.action_space = spaces.MultiDiscrete(
            np.full(num_envs, self.layout.n_candidates)
        )
        self.observation_space = spaces.Box(
            0.0, FEATURE_CAP, (num_envs, self.layout.size), dtype=np.float32
        )

    def reset(
        self,
        *,
        seed: int | list[int] | None = None,
        options: dict[str, Any] | None = None,
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """Start an episode for every service."""
        if isinstance(seed, list):
            raise ValueError("the fleet takes one seed for all services, not a list")
        if options:
            raise ValueError(f"unknown reset option {sorted(options)[0]!r}")
        super().reset(seed=seed)
        return self.core.reset(derive_key(self.np_random)), {}

    def step(
        self, actions: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        """Apply one action per service; reset all when the episode ends."""
        result = self.core.step(actions)
        observation = self.core.observe()
        infos = _terms_info(result)
        ended = np.full(self.num_envs, self.core.done)
        if self.core.done:
            infos["final_obs"] = observation
            infos["_final_obs"] = ended
            observation = self.core.reset(derive_key(self.np_random))
        rewards = -result.cost
        return observation, rewards, np.zeros(self.num_envs, bool), ended, infos

    def action_masks(self) -> np.ndarray:
        """Return (N, K) which actions each service may take now."""
        return self.core.mask.copy()

    def candidate_sites(self) -> np.ndarray:
        """Return (N, K) the site behind each action of each service."""
        return self.core.sites.copy()


class FleetEnv(gym.Env[np.ndarray, np.ndarray]):
    """A fleet of services as one Gymnasium environment.

    | | |
    |---|---|
    | action | ``MultiDiscrete([K] * N)``: a candidate per service |
    | observation | ``Box(0, 100, (N, K * F + 1))``: one row per service |
    | reward | minus the fleet's total weighted cost of the slot |
    | episode | truncated after ``episode_slots`` slots |
    | info | ``terms`` (fleet totals per term), ``cost``, ``moves``, ``refused`` |

    ``action_masks()`` is flat (N * K,), as MaskablePPO expects for
    ``MultiDiscrete`` actions.

    Args:
        scenario: Scenario name, config file, config or built scenario.
        n_services: Services in the fleet.
        coupled: Whether services share capacity.
        action_space: ``"candidates"`` or ``"sites"``.
        render_mode: Unused; no rendering.
    """

    # Gymnasium declares metadata as an instance attribute of the base class
    metadata: dict[str, Any] = {"render_modes": []}  # noqa: RUF012

    def __init__(
        self,
        scenario: str | ScenarioConfig | Scenario = DEFAULT_SCENARIO,
        n_services: int = 16,
        coupled: bool = True,
        action_space: str = "candidates",
        render_mode: str | None = None,
    ) -> None:
        self.core = FleetCore(
            resolve_scenario(scenario), n_services, coupled, action_space
        )
        k, size = self.core.layout.n_candidates, self.core.layout.size
        self.action_space = spaces.MultiDiscrete(np.full(n_services, k))
        self.observation_space = spaces.Box(
            0.0, FEATURE_CAP, (n_services, size), dtype=np.float32
        )
        self.render_mode = render_mode

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """Start an episode for the whole fleet."""
        if options:
            raise ValueError(f"unknown reset option {sorted(options)[0]!r}")
        super().reset(seed=seed)
        return self.core.reset(derive_key(self.np_random)), {}

    def step(
        self, action: np.ndarray
    ) -> tuple[np.ndarray, SupportsFloat, bool, bool, dict[str, Any]]:
        """Apply one action per service."""
        result = self.core.step(np.asarray(action))
        cost = float(result.cost.sum())
        info = {
            "terms": {name: float(result.terms[name].sum()) for name in TERM_NAMES},
            "cost": cost,
            "moves": int(result.moved.sum()),
            "refused": int(result.refused.sum()),
        }
        observation = self.core.observe()
        return observation, -cost, False, self.core.done, info

    def action_masks(self) -> np.ndarray:
        """Return the flat (N * K,) mask of feasible actions."""
        return self.core.mask.reshape(-1).copy()
