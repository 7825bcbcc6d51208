"""Evaluation: policies against each other and against the hindsight optimum.

Every policy runs on the same N uncoupled service problems of one seeded
episode: the problems that ``mecrl scenario export`` writes. The hindsight
optimum (a shortest path over (slot, site) with the whole trace known) is
the floor; each policy's total cost is reported as a ratio to it.
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mecrl.agents.hindsight import hindsight_optimum, lookahead_sites
from mecrl.agents.policy import Policy, PolicyContext, make_policy, parse_policy_spec
from mecrl.backend import SimBackend, SlotResult
from mecrl.costs import TERM_NAMES
from mecrl.envs.fleet import FleetCore
from mecrl.envs.observation import ObservationLayout
from mecrl.planning import FuturePlanner, drawable_mobility
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


def action_space_for(scenario: Scenario) -> str:
    """Return the action space that evaluation, and so training, uses.

    Every site is a candidate when the scenario has no more sites than
    ``candidates``; otherwise the K nearest feasible candidates.
    """
    if scenario.n_sites <= scenario.config.candidates:
        return "sites"
    return "candidates"


def policy_context(scenario: Scenario) -> PolicyContext:
    """Return the context of the policies that evaluation runs on ``scenario``."""
    if action_space_for(scenario) == "sites":
        return PolicyContext(ObservationLayout.of(scenario, scenario.n_sites), scenario)
    k = scenario.config.candidates
    return PolicyContext(ObservationLayout.of(scenario, k), scenario)


def run_policy(
    scenario: Scenario, seed: int, n_services: int, name: str, **params: float
) -> PolicyOutcome:
    """Run the registered policy ``name`` on the episode's uncoupled problems."""
    policy = make_policy(name, policy_context(scenario), **params)
    return run_policy_object(scenario, seed, n_services, policy)


def run_policy_object(
    scenario: Scenario, seed: int, n_services: int, policy: Policy
) -> PolicyOutcome:
    """Run a built policy on the episode's uncoupled problems.

    Args:
        scenario: The built scenario.
        seed: Episode seed.
        n_services: Services 0..n_services-1 of the episode.
        policy: A policy built for :func:`policy_context` of ``scenario``.
    """
    core = FleetCore(
        scenario, n_services, coupled=False, action_space=action_space_for(scenario)
    )
    observation = core.reset(episode_key(seed))
    outcome = _Accumulator(scenario, n_services)
    while not core.done:
        actions = policy.act(observation, core.mask)
        outcome.add(core.step(actions))
        observation = core.observe()
    return outcome.result()


@dataclass(frozen=True)
class ServicePath:
    """Where one service's user and the service were, slot by slot."""

    initial_site: int
    """Where the service ran before slot 0."""
    access: np.ndarray
    """(T,) the user's access site in each slot."""
    sites: np.ndarray
    """(T,) where the service ran in each slot."""

    @property
    def moves(self) -> np.ndarray:
        """(T,) whether the service changed site at the start of each slot."""
        previous = np.concatenate([[self.initial_site], self.sites[:-1]])
        return np.asarray(self.sites != previous)


def service_path(
    scenario: Scenario, seed: int, service: int, policy: Policy
) -> ServicePath:
    """Return the path of service ``service`` of episode ``seed`` under ``policy``.

    The service runs alone (uncoupled), as in :func:`run_policy_object`.
    """
    if service < 0:
        raise ValueError(f"service must be >= 0, got {service}")
    n_services = service + 1
    core = FleetCore(
        scenario, n_services, coupled=False, action_space=action_space_for(scenario)
    )
    observation = core.reset(episode_key(seed))
    initial_site = int(core.backend.site[service])
    access, sites = [], []
    while not core.done:
        access.append(int(core.backend.access[service]))
        core.step(policy.act(observation, core.mask))
        sites.append(int(core.backend.site[service]))
        observation = core.observe()
    return ServicePath(initial_site, np.array(access), np.array(sites))


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
    result = _replay(scenario, seed, sites)
    if not np.allclose(result.per_service, optimum, rtol=1e-9, atol=1e-9):
        raise RuntimeError("replaying the hindsight path does not reproduce its cost")
    return result


def run_lookahead(
    scenario: Scenario, seed: int, n_services: int, window: int
) -> PolicyOutcome:
    """Run the planner that foresees ``window`` slots (a yardstick, not a policy).

    See :func:`mecrl.agents.hindsight.lookahead_sites`.
    """
    problems = episode_problems(scenario, seed, n_services)
    sites = np.empty(problems.access.shape, dtype=np.int64)
    for c in np.unique(problems.cls):
        members = np.flatnonzero(problems.cls == c)
        sites[members] = lookahead_sites(
            problems.slot_cost[members],
            problems.migration_cost[c],
            problems.initial_site[members],
            window,
        )
    return _replay(scenario, seed, sites)


PREDICTIVE_SAMPLES = 64
"""Futures the model-predictive planner draws per service and slot."""


def run_predictive(
    scenario: Scenario,
    seed: int,
    n_services: int,
    window: int,
    n_samples: int = PREDICTIVE_SAMPLES,
) -> PolicyOutcome:
    """Run the planner that knows the mobility model (a yardstick, not a policy).

    Every slot it moves each service to the first step of the cheapest plan
    of :class:`mecrl.planning.FuturePlanner`, the planner whose verdict an
    observation can carry: ``window`` slots from this one, at the mean cost
    of ``n_samples`` futures drawn from each user's position and velocity.
    It knows no more than an online policy told the model and the users'
    positions could, so it estimates what the best such policy costs;
    planning at mean costs, it never plans on learning more later, so the
    best online cost may still lie somewhat below it.

    Raises:
        ValueError: If ``window`` < 1, or the scenario's mobility source
            cannot draw futures.
    """
    planner = FuturePlanner(scenario, window, n_samples)
    problems = episode_problems(scenario, seed, n_services)
    positions_m = _episode_positions(scenario, seed, n_services)
    slots, slot_s = problems.access.shape[1], scenario.config.slot_s
    sites = np.empty(problems.access.shape, dtype=np.int64)
    current = problems.initial_site
    for t in range(slots):
        velocity_mps = (positions_m[t] - positions_m[max(t - 1, 0)]) / slot_s
        costs = planner.first_step_costs(
            problems.cls,
            problems.access[:, t],
            current,
            t,
            positions_m[t],
            velocity_mps,
        )
        current = sites[:, t] = costs.argmin(axis=1)
    return _replay(scenario, seed, sites)


def _episode_positions(scenario: Scenario, seed: int, n_services: int) -> np.ndarray:
    """Return the episode's (T, N, 2) user positions."""
    mobility = drawable_mobility(scenario)
    mobility.reset(episode_key(seed), np.arange(n_services))
    positions_m = [mobility.positions_m]
    for _ in range(1, scenario.config.episode_slots):
        mobility.advance()
        positions_m.append(mobility.positions_m)
    return np.stack(positions_m)


def _replay(scenario: Scenario, seed: int, sites: np.ndarray) -> PolicyOutcome:
    """Run episode ``seed`` with each service at ``sites`` (N, T); sum its costs."""
    backend = SimBackend(scenario, coupled=False)
    backend.reset(episode_key(seed), np.arange(sites.shape[0]))
    outcome = _Accumulator(scenario, sites.shape[0])
    for t in range(scenario.config.episode_slots):
        outcome.add(backend.step(sites[:, t]))
    return outcome.result()


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


Planner = Callable[[Scenario, int, int], PolicyOutcome]
"""A yardstick planner: (scenario, seed, services) to its outcome."""


def yardsticks(
    lookahead: Sequence[int] = (), predictive: Sequence[int] = ()
) -> dict[str, Planner]:
    """Return the yardstick planners of these windows by report name.

    Each window of ``lookahead`` gives the planner that foresees that many
    slots (:func:`run_lookahead`), named ``lookahead-W``; each of
    ``predictive`` the planner that knows the mobility model
    (:func:`run_predictive`), named ``predictive-W``.

    Raises:
        ValueError: If a window is below 1 slot.
    """
    planners: dict[str, Planner] = {}
    for flag, windows, run in (
        ("lookahead", lookahead, run_lookahead),
        ("predictive", predictive, run_predictive),
    ):
        for window in windows:
            if window < 1:
                raise ValueError(f"{flag}: windows must be >= 1 slot, got {window}")
            planners[f"{flag}-{window}"] = functools.partial(_plan, run, window=window)
    return planners


def _plan(
    run: Callable[..., PolicyOutcome],
    scenario: Scenario,
    seed: int,
    n_services: int,
    window: int,
) -> PolicyOutcome:
    """Run the planner ``run`` with its window; log which."""
    logger.info("%s, window %d slots, seed %d", run.__name__, window, seed)
    return run(scenario, seed, n_services, window)


def evaluate(
    scenario: Scenario,
    seed: int,
    n_services: int,
    policies: list[str],
    lookahead: Sequence[int] = (),
    predictive: Sequence[int] = (),
) -> dict[str, PolicyOutcome]:
    """Run ``policies`` and the hindsight optimum on the same problems.

    The planners of ``lookahead`` and ``predictive`` (see :func:`yardsticks`)
    come after the optimum, before the policies.
    """
    outcomes = {HINDSIGHT: run_hindsight(scenario, seed, n_services)}
    for name, plan in yardsticks(lookahead, predictive).items():
        outcomes[name] = plan(scenario, seed, n_services)
    for name in policies:
        if name == HINDSIGHT:
            continue
        logger.info("evaluating %s on %s", name, scenario.config.name)
        outcomes[name] = run_policy(scenario, seed, n_services, name)
    return outcomes


@dataclass(frozen=True)
class Estimate:
    """A mean over seeds with the half-width of its 95 % confidence interval."""

    mean: float
    """Mean of the values."""
    half_width: float
    """Half-width of the 95 % interval (Student's t); NaN for one value."""
    n: int
    """Number of values."""

    @classmethod
    def of(cls, values: Sequence[float] | np.ndarray) -> Estimate:
        """Return the estimate of the mean of ``values``.

        Raises:
            ValueError: If ``values`` is empty.
        """
        from scipy import stats

        array = np.asarray(values, dtype=np.float64)
        if array.size == 0:
            raise ValueError("an estimate needs at least one value")
        if array.size == 1:
            return cls(float(array[0]), math.nan, 1)
        scale = float(array.std(ddof=1)) / math.sqrt(array.size)
        quantile = float(stats.t.ppf(0.975, array.size - 1))
        return cls(float(array.mean()), quantile * scale, int(array.size))

    def to_dict(self) -> dict[str, Any]:
        """Return plain data for JSON (``null`` for an undefined interval)."""
        half = None if math.isnan(self.half_width) else self.half_width
        return {"mean": self.mean, "ci95": half, "n": self.n}


@dataclass
class SeedsReport:
    """Policies and the hindsight optimum over several episode seeds.

    Every policy runs on the same services of the same episodes; each
    seed's ratio is a policy's total cost over the optimum's for that seed.
    """

    scenario: str
    """Scenario name."""
    seeds: tuple[int, ...]
    """Episode seeds, in order."""
    n_services: int
    """Services per episode."""
    outcomes: dict[str, list[PolicyOutcome]]
    """Per policy (the optimum first, under ``hindsight``), one per seed."""
    masked_choices: dict[str, list[int]] = field(default_factory=dict)
    """Per policy and seed, actions it proposed that the mask forbids (a
    learned policy without masks; replaced by staying). Zero for others."""

    def totals(self, name: str) -> np.ndarray:
        """Return (S,) the total cost of policy ``name`` per seed."""
        return np.array([o.total_cost for o in self.outcomes[name]])

    def ratios(self, name: str) -> np.ndarray:
        """Return (S,) the ratio of ``name``'s cost to the optimum's per seed."""
        best = self.totals(HINDSIGHT)
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(best > 0, self.totals(name) / best, np.nan)

    def weighted(self, name: str, term: str) -> np.ndarray:
        """Return (S,) the weighted cost of ``term`` for ``name`` per seed."""
        return np.array([o.weighted[term] for o in self.outcomes[name]])

    def migrations(self, name: str) -> np.ndarray:
        """Return (S,) the number of moves of ``name`` per seed."""
        return np.array([o.migrations for o in self.outcomes[name]], dtype=float)

    def to_dict(self) -> dict[str, Any]:
        """Return plain data for JSON: per-seed values and their estimates."""
        policies = {}
        for name in self.outcomes:
            ratios = self.ratios(name)
            policies[name] = {
                "total_cost": Estimate.of(self.totals(name)).to_dict(),
                "ratio_to_hindsight": Estimate.of(ratios).to_dict(),
                "migrations": Estimate.of(self.migrations(name)).to_dict(),
                "weighted_terms": {
                    term: Estimate.of(self.weighted(name, term)).to_dict()
                    for term in TERM_NAMES
                },
                "masked_choices": self.masked_choices.get(name, [0] * len(self.seeds)),
                "per_seed": [
                    {"seed": seed, "ratio_to_hindsight": float(ratio), **o.to_dict()}
                    for seed, ratio, o in zip(
                        self.seeds, ratios, self.outcomes[name], strict=True
                    )
                ],
            }
        return {
            "scenario": self.scenario,
            "seeds": list(self.seeds),
            "services": self.n_services,
            "policies": policies,
        }


def evaluate_seeds(
    scenario: Scenario,
    seeds: Sequence[int],
    n_services: int,
    policies: dict[str, Policy],
    planners: Mapping[str, Planner] | None = None,
) -> SeedsReport:
    """Run built policies and the hindsight optimum on several episodes.

    Args:
        scenario: The built scenario.
        seeds: Episode seeds.
        n_services: Services 0..n_services-1 of each episode.
        policies: Policies by report name, built for :func:`policy_context`.
        planners: Yardstick planners by report name (see :func:`yardsticks`),
            reported after the optimum.

    Raises:
        ValueError: If ``seeds`` is empty, a policy is named ``hindsight``,
            or a policy and a planner share a name.
    """
    if not seeds:
        raise ValueError("seeds must name at least one episode seed")
    if HINDSIGHT in policies:
        raise ValueError(f"{HINDSIGHT!r} names the optimum; give the policy another")
    clashes = sorted(set(policies) & set(planners or {}))
    if clashes:
        raise ValueError(f"{clashes} name both a policy and a planner")
    report = SeedsReport(
        scenario.config.name,
        tuple(seeds),
        n_services,
        {HINDSIGHT: [run_hindsight(scenario, seed, n_services) for seed in seeds]},
    )
    for name, plan in (planners or {}).items():
        report.outcomes[name] = [plan(scenario, seed, n_services) for seed in seeds]
    for name, policy in policies.items():
        logger.info("evaluating %s on %s, seeds %s", name, scenario.config.name, seeds)
        outcomes, masked = [], []
        for seed in seeds:
            # learned policies count masked proposals; baselines make none
            before = getattr(policy, "masked_choices", 0)
            outcomes.append(run_policy_object(scenario, seed, n_services, policy))
            masked.append(getattr(policy, "masked_choices", 0) - before)
        report.outcomes[name] = outcomes
        report.masked_choices[name] = masked
    return report


@dataclass(frozen=True)
class Tuning:
    """A heuristic's parameter swept over values on the same episodes."""

    name: str
    """The registered policy."""
    param: str
    """The parameter swept."""
    values: tuple[float, ...]
    """The values tried, in the order given."""
    mean_cost: tuple[float, ...]
    """Mean total cost over the seeds at each value."""
    hindsight_cost: float
    """Mean total cost of the hindsight optimum on the same episodes."""

    @property
    def best_value(self) -> float:
        """The value of the lowest mean cost (the first, on ties)."""
        return self.values[int(np.argmin(self.mean_cost))]

    @property
    def best_spec(self) -> str:
        """The policy spec of the best value, e.g. ``threshold:hops=3``."""
        return f"{self.name}:{self.param}={self.best_value:g}"


def tune_policy(
    scenario: Scenario,
    seeds: Sequence[int],
    n_services: int,
    spec: str,
) -> Tuning:
    """Sweep one parameter of a heuristic and find its best value.

    ``spec`` names the policy, the parameter and the values to try:
    ``threshold:hops=1,2,3,4``. Tune on the scenario you develop on, then
    judge the tuned spec on held-out episodes.

    Raises:
        ValueError: If the spec is not ``name:param=v1,v2,...`` with numbers,
            or names no parameter of the policy.
    """
    name, _, sweep = spec.partition(":")
    param, equals, listed = sweep.partition("=")
    if not equals or not listed.strip():
        raise ValueError(f"tuning {spec!r}: give name:param=v1,v2,... to sweep")
    try:
        values = tuple(float(v) for v in listed.split(",") if v.strip())
    except ValueError:
        raise ValueError(f"tuning {spec!r}: values must be numbers") from None
    name, param = name.strip(), param.strip()
    parse_policy_spec(f"{name}:{param}={values[0]:g}")  # names a real parameter
    context = policy_context(scenario)
    hindsight = [run_hindsight(scenario, seed, n_services) for seed in seeds]
    costs = []
    for value in values:
        policy = make_policy(name, context, **{param: value})
        runs = [run_policy_object(scenario, s, n_services, policy) for s in seeds]
        costs.append(float(np.mean([run.total_cost for run in runs])))
        logger.info("%s %s=%g: mean cost %.2f", name, param, value, costs[-1])
    return Tuning(
        name,
        param,
        values,
        tuple(costs),
        float(np.mean([run.total_cost for run in hindsight])),
    )
