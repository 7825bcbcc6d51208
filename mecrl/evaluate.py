"""Evaluation: policies against each other and against the hindsight optimum.

Every policy runs on the same N uncoupled service problems of one seeded
episode: the problems that ``mecrl scenario export`` writes. The hindsight
optimum (a shortest path over (slot, site) with the whole trace known) is
the floor; each policy's total cost is reported as a ratio to it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mecrl.agents.hindsight import hindsight_optimum
from mecrl.agents.policy import PolicyContext, make_policy
from mecrl.backend import SimBackend, SlotResult
from mecrl.costs import TERM_NAMES
from mecrl.envs.fleet import FleetCore
from mecrl.problem import cost_tables
from mecrl.rng import derive_key
from mecrl.scenario import Scenario

logger = logging.getLogger(__name__)

HINDSIGHT = "hindsight"
"""Name under which the hindsight optimum is reported."""


def episode_key(seed: int) -> int:
    """Return the episode key that an environment reset with ``seed`` uses."""
    from gymnasium.utils import seeding

    generator, _ = seeding.np_random(seed)
    return derive_key(generator)


@dataclass(frozen=True)
class EpisodeProblems:
    """The uncoupled problems of an episode's first N services.

    For service ``n`` running at ``s_t`` in slot ``t`` (``s_-1`` being
    ``initial_site[n]``), the slot costs
    ``slot_cost[n, t, s_t] + migration_cost[cls[n], s_(t-1), s_t]``: exactly
    minus the environment's reward for the same scenario and seed when
    services do not share capacity.
    """

    cls: np.ndarray
    """(N,) class of each service."""
    initial_site: np.ndarray
    """(N,) where each service runs before slot 0."""
    access: np.ndarray
    """(N, T) the user's access site in each slot."""
    slot_cost: np.ndarray
    """(N, T, M) placement cost; +inf where the service may not run."""
    migration_cost: np.ndarray
    """(C, M, M) move cost per class; +inf where state may not go."""


def episode_problems(scenario: Scenario, seed: int, n_services: int) -> EpisodeProblems:
    """Return the problems of services 0..n_services-1 of episode ``seed``."""
    if n_services < 1:
        raise ValueError(f"n_services must be >= 1, got {n_services}")
    backend = SimBackend(scenario, coupled=False)
    backend.reset(episode_key(seed), np.arange(n_services))
    slots = scenario.config.episode_slots
    access = np.empty((n_services, slots), dtype=np.int64)
    access[:, 0] = backend.access
    for t in range(1, slots):
        access[:, t] = backend.mobility.advance()
    tables = cost_tables(scenario)
    return EpisodeProblems(
        cls=backend.cls,
        initial_site=backend.site.copy(),
        access=access,
        slot_cost=tables.placement[backend.cls[:, None], access],
        migration_cost=tables.move,
    )


@dataclass
class PolicyOutcome:
    """What one policy cost over the evaluated services."""

    per_service: np.ndarray
    """(N,) total weighted cost of each service over the episode."""
    terms: dict[str, float] = field(default_factory=dict)
    """Sum over services and slots of each raw term (in its own unit)."""
    weighted: dict[str, float] = field(default_factory=dict)
    """Sum of each term times its weight (reward units)."""
    migrations: int = 0
    """Number of moves."""

    @property
    def total_cost(self) -> float:
        """Total weighted cost over all services."""
        return float(self.per_service.sum())

    def to_dict(self) -> dict[str, Any]:
        """Return plain data for JSON."""
        return {
            "total_cost": self.total_cost,
            "per_service": self.per_service.tolist(),
            "terms": self.terms,
            "weighted_terms": self.weighted,
            "migrations": self.migrations,
        }


def run_policy(
    scenario: Scenario, seed: int, n_services: int, name: str, **params: float
) -> PolicyOutcome:
    """Run the registered policy ``name`` on the episode's uncoupled problems."""
    action_space = (
        "sites" if scenario.n_sites <= scenario.config.candidates else "candidates"
    )
    core = FleetCore(scenario, n_services, coupled=False, action_space=action_space)
    observation = core.reset(episode_key(seed))
    policy = make_policy(name, PolicyContext(core.layout, scenario), **params)
    outcome = _Accumulator(scenario, n_services)
    while not core.done:
        actions = policy.act(observation, core.mask)
        outcome.add(core.step(actions))
        observation = core.observe()
    return outcome.result()


def run_hindsight(scenario: Scenario, seed: int, n_services: int) -> PolicyOutcome:
    """Solve each service's hindsight optimum and replay it for its terms.

    Raises:
        RuntimeError: If replaying the optimal path through the simulator
            does not reproduce the optimum's cost (a model inconsistency).
    """
    problems = episode_problems(scenario, seed, n_services)
    sites = np.empty(problems.access.shape, dtype=np.int64)
    optimum = np.empty(n_services)
    for c in np.unique(problems.cls):
        members = np.flatnonzero(problems.cls == c)
        plan = hindsight_optimum(
            problems.slot_cost[members],
            problems.migration_cost[c],
            problems.initial_site[members],
        )
        sites[members], optimum[members] = plan.sites, plan.total_cost
    backend = SimBackend(scenario, coupled=False)
    backend.reset(episode_key(seed), np.arange(n_services))
    outcome = _Accumulator(scenario, n_services)
    for t in range(scenario.config.episode_slots):
        outcome.add(backend.step(sites[:, t]))
    result = outcome.result()
    if not np.allclose(result.per_service, optimum, rtol=1e-9, atol=1e-9):
        raise RuntimeError("replaying the hindsight path does not reproduce its cost")
    return result


class _Accumulator:
    def __init__(self, scenario: Scenario, n_services: int) -> None:
        self.weights = scenario.config.costs.weights
        self.per_service = np.zeros(n_services)
        self.terms = dict.fromkeys(TERM_NAMES, 0.0)
        self.weighted = dict.fromkeys(TERM_NAMES, 0.0)
        self.migrations = 0

    def add(self, result: SlotResult) -> None:
        for name in TERM_NAMES:
            total = float(np.sum(result.terms[name]))
            self.terms[name] += total
            self.weighted[name] += getattr(self.weights, name) * total
        self.per_service += result.cost
        self.migrations += int(np.count_nonzero(result.moved))

    def result(self) -> PolicyOutcome:
        return PolicyOutcome(
            per_service=self.per_service,
            terms=self.terms,
            weighted=self.weighted,
            migrations=self.migrations,
        )


def evaluate(
    scenario: Scenario, seed: int, n_services: int, policies: list[str]
) -> dict[str, PolicyOutcome]:
    """Run ``policies`` and the hindsight optimum on the same problems."""
    outcomes = {HINDSIGHT: run_hindsight(scenario, seed, n_services)}
    for name in policies:
        if name == HINDSIGHT:
            continue
        logger.info("evaluating %s on %s", name, scenario.config.name)
        outcomes[name] = run_policy(scenario, seed, n_services, name)
    return outcomes
