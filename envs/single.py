"""The single-service environment: one user, one service, one decision a slot."""

from __future__ import annotations

from typing import Any, SupportsFloat

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from mecrl.backend import Backend, SimBackend
from mecrl.envs.observation import FEATURE_CAP, CandidateView
from mecrl.rng import derive_key
from mecrl.scenario import Scenario, ScenarioConfig, load_scenario

DEFAULT_SCENARIO = "city-grid"


def resolve_scenario(scenario: str | ScenarioConfig | Scenario) -> Scenario:
    """Return a built scenario from a name, a config file, a config or itself."""
    if isinstance(scenario, Scenario):
        return scenario
    if isinstance(scenario, ScenarioConfig):
        return Scenario(scenario)
    return load_scenario(scenario)


class MigrationEnv(gym.Env[np.ndarray, np.int64]):
    """Decide, slot by slot, where one user's service runs.

    | | |
    |---|---|
    | action | ``Discrete(K)``: candidate 0 stays, 1..K-1 move there |
    | observation | ``Box(0, 100, (K * F + 1,))``: F features per candidate |
    | | (see ``envs.observation.FEATURES``), then episode progress |
    | reward | minus the weighted sum of the slot's cost terms |
    | episode | truncated after ``episode_slots`` slots; never terminated |
    | info | ``terms`` (every named term, raw units), ``cost``, ``moved``, |
    | | ``refused``, ``site``, ``access`` |

    Masked candidates (infeasible sites) must not be chosen; if one is, the
    service stays and ``info["refused"]`` is true. ``action_masks()`` gives
    the mask, as MaskablePPO expects.

    Args:
        scenario: Scenario name, config file, config or built scenario.
        action_space: ``"candidates"`` (K nearest feasible sites) or
            ``"sites"`` (one action per site, for small topologies).
        render_mode: Unused; no rendering.
        backend: What places the service: the simulator when None, or a
            backend built on the same scenario object, such as
            :class:`mecrl.hosts.backend.RealBackend` driving real hosts.

    ``reset(options={"service": n})`` simulates service ``n`` of the
    episode's population (default 0), the same service ``n`` that the fleet
    environment and the solver export draw for the same seed.
    """

    # Gymnasium declares metadata as an instance attribute of the base class
    metadata: dict[str, Any] = {"render_modes": []}  # noqa: RUF012

    def __init__(
        self,
        scenario: str | ScenarioConfig | Scenario = DEFAULT_SCENARIO,
        action_space: str = "candidates",
        render_mode: str | None = None,
        backend: Backend | None = None,
    ) -> None:
        if action_space not in ("candidates", "sites"):
            raise ValueError(
                f"action_space must be 'candidates' or 'sites', got {action_space!r}"
            )
        self.scenario = resolve_scenario(scenario)
        k = self.scenario.config.candidates if action_space == "candidates" else None
        self.view = CandidateView(self.scenario, k)
        self.layout = self.view.layout
        if backend is not None and backend.scenario is not self.scenario:
            raise ValueError("backend must be built on the scenario the env is given")
        self.backend = backend or SimBackend(self.scenario, coupled=False)
        self.action_space = spaces.Discrete(self.layout.n_candidates)
        self.observation_space = spaces.Box(
            0.0, FEATURE_CAP, (self.layout.size,), dtype=np.float32
        )
        self.render_mode = render_mode
        self._sites = np.zeros((1, self.layout.n_candidates), dtype=np.int64)
        self._mask = np.ones((1, self.layout.n_candidates), dtype=bool)

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """Start an episode for one service of the seeded population."""
        super().reset(seed=seed)
        options = options or {}
        unknown = set(options) - {"service"}
        if unknown:
            raise ValueError(
                f"unknown reset option {sorted(unknown)[0]!r}; valid: service"
            )
        service = options.get("service", 0)
        if isinstance(service, bool) or not isinstance(service, int | np.integer):
            raise ValueError(f"option service must be an integer, got {service!r}")
        if service < 0:
            raise ValueError(f"option service must be >= 0, got {service}")
        self.backend.reset(derive_key(self.np_random), np.array([int(service)]))
        return self._observe(), {
            "site": int(self.backend.site[0]),
            "access": int(self.backend.access[0]),
        }

    def step(
        self, action: np.int64 | int
    ) -> tuple[np.ndarray, SupportsFloat, bool, bool, dict[str, Any]]:
        """Place the service at the chosen candidate for this slot."""
        k = self.layout.n_candidates
        if isinstance(action, bool | np.bool_) or not isinstance(
            action, int | np.integer
        ):
            value = np.asarray(action)
            if value.shape != () or value.dtype.kind not in "iu":
                raise ValueError(
                    f"action must be an integer in [0, {k}), got {action!r}"
                )
            action = int(value)
        if not 0 <= action < k:
            raise ValueError(f"action must be an integer in [0, {k}), got {action!r}")
        result = self.backend.step_one(int(self._sites[0, action]))
        info = {
            "terms": result.terms,
            "cost": result.cost,
            "moved": result.moved,
            "refused": result.refused,
            "site": int(self.backend.site[0]),
            "access": int(self.backend.access[0]),
        }
        truncated = self.backend.slot >= self.scenario.config.episode_slots
        return self._observe(), -result.cost, False, truncated, info

    def action_masks(self) -> np.ndarray:
        """Return which actions are feasible now."""
        return self._mask[0].copy()

    def candidate_sites(self) -> np.ndarray:
        """Return the site behind each action now."""
        return self._sites[0].copy()

    def _observe(self) -> np.ndarray:
        self._sites, self._mask, observation = self.view.view(self.backend)
        row: np.ndarray = observation[0]
        return row
