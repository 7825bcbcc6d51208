"""Candidate sites and their features: what a policy sees of a service.

The observation of one service is a fixed number ``K`` of candidate sites
(candidate 0 is where the service runs now; the others are the statically
feasible sites nearest the user, in order of latency), each described by
the same features, plus the fraction of the episode elapsed. Features are
relative (latency over the SLO, hops, downtime), so a policy trained on one
topology can act on another. In the global variant the candidates are all
sites, in site order.

Everything but capacity and co-residency depends only on the service's
class, its user's access site and its current site, so for scenarios of
moderate size the candidates, masks and features are tabulated once per
(class, access site, current site) and a step only gathers rows. Beyond
``TABLE_BUDGET_MB`` they are computed each step instead, by the same code.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np
from scipy.spatial import cKDTree

from mecrl.backend import Backend, UserMotion
from mecrl.planning import FuturePlanner
from mecrl.problem import cost_tables, move_terms, placement_terms
from mecrl.scenario import Scenario

FEATURES: tuple[str, ...] = (
    "latency_over_slo",
    "rtt_from_current_100ms",
    "downtime_10s",
    "cpu_load",
    "feasible",
    "log1p_cost",
    "hops_from_user_10",
    "hops_from_current_10",
    "is_access",
)
"""Per-candidate features, in order."""

HISTORY_FEATURES: tuple[str, ...] = (
    "recent_latency_over_slo",
    "oldest_latency_over_slo",
    "ahead_latency_over_slo",
)
"""Per-candidate features of the user's recent movement, after ``FEATURES``,
when the scenario keeps ``history_slots`` of it. "Ahead" is the access site
nearest to where the user would be if it went on as far again in the same
direction as it came from the oldest remembered site."""


def past_slot_features(n_slots: int) -> tuple[str, ...]:
    """Return the names of the per-slot history features of ``n_slots`` slots.

    Feature ``latency_over_slo_<i>_ago`` of a candidate is its latency from
    the user's access site of i slots ago, over the SLO; they follow
    ``HISTORY_FEATURES``, newest first, when the scenario sets
    ``history_per_slot``.
    """
    return tuple(f"latency_over_slo_{i}_ago" for i in range(1, n_slots + 1))


def term_features(terms: tuple[str, ...]) -> tuple[str, ...]:
    """Return the names of the cost-term features of ``terms``.

    Feature ``<term>_cost`` of a candidate is that term's weighted cost there
    (see ``ScenarioConfig.term_features``); they follow ``FEATURES``, when
    the scenario sets ``term_features``.
    """
    return tuple(f"{term}_cost" for term in terms)


PLAN_FEATURES: tuple[str, ...] = ("plan_regret", "plan_best")
"""Per-candidate features of the planner over drawn futures, last of all,
when the scenario sets ``plan_window_slots``: how much more the cheapest
plan through the candidate costs than the cheapest of all (reward units),
and 1 at the candidate the cheapest plan starts with."""


def motion_features(horizons_slots: tuple[int, ...]) -> tuple[str, ...]:
    """Return the names of the projected-motion features of ``horizons_slots``.

    Feature ``latency_over_slo_in_<h>`` of a candidate is its latency, over
    the SLO, from the access site nearest to where the user would be h slots
    on at the velocity of its last slot; they follow the history features,
    when the scenario sets ``motion_horizons_slots``.
    """
    return tuple(f"latency_over_slo_in_{h}" for h in horizons_slots)


HOPS_SCALE = 10.0
"""Hop counts are divided by this; policies multiply back to get integers."""

FEATURE_CAP = 100.0
"""Every feature is clipped to [0, FEATURE_CAP] to keep the space bounded."""

TABLE_BUDGET_MB = 512.0
"""Largest observation table built; bigger scenarios compute each step."""

_LOAD = FEATURES.index("cpu_load")
_FEASIBLE = FEATURES.index("feasible")


@dataclass(frozen=True)
class ObservationLayout:
    """Where each feature of each candidate sits in the flat observation."""

    n_candidates: int
    """Candidates per observation (K)."""
    terms: tuple[str, ...] = ()
    """Cost terms carried on their own, after ``FEATURES`` (see
    :func:`term_features`)."""
    history: bool = False
    """Whether each candidate also carries ``HISTORY_FEATURES``."""
    past_slots: int = 0
    """Slots before the current one whose latency each candidate carries
    after those (see :func:`past_slot_features`)."""
    horizons_slots: tuple[int, ...] = ()
    """Horizons of the projected-motion features (see
    :func:`motion_features`)."""
    plan: bool = False
    """Whether each candidate also carries ``PLAN_FEATURES``, last."""

    @classmethod
    def of(cls, scenario: Scenario, n_candidates: int) -> ObservationLayout:
        """Return the layout of ``scenario``'s observations with K candidates."""
        config = scenario.config
        past = config.history_slots - 1 if config.history_per_slot else 0
        return cls(
            n_candidates,
            terms=config.term_features,
            history=config.history_slots > 0,
            past_slots=past,
            horizons_slots=config.motion_horizons_slots,
            plan=config.plan_window_slots > 0,
        )

    @cached_property
    def static_features(self) -> tuple[str, ...]:
        """The features fixed by class, access site and current site."""
        return FEATURES + term_features(self.terms)

    @cached_property
    def features(self) -> tuple[str, ...]:
        """Per-candidate features, in order."""
        # built once: every view of every step reads them
        history = HISTORY_FEATURES if self.history else ()
        past = past_slot_features(self.past_slots)
        motion = motion_features(self.horizons_slots)
        plan = PLAN_FEATURES if self.plan else ()
        return self.static_features + history + past + motion + plan

    @cached_property
    def size(self) -> int:
        """Length of the flat observation."""
        return self.n_candidates * len(self.features) + 1

    def candidate_table(self, observation: np.ndarray) -> np.ndarray:
        """Return a (..., K, F) view of the per-candidate features."""
        return observation[..., :-1].reshape(
            *observation.shape[:-1], self.n_candidates, len(self.features)
        )

    def feature(self, observation: np.ndarray, name: str) -> np.ndarray:
        """Return feature ``name`` of every candidate: shape (..., K)."""
        return self.candidate_table(observation)[..., self.features.index(name)]

    def progress(self, observation: np.ndarray) -> np.ndarray:
        """Return the fraction of the episode elapsed."""
        return observation[..., -1]


@dataclass(frozen=True)
class StaticView:
    """Candidates, static masks and features of a batch of services."""

    sites: np.ndarray
    """(N, K) candidate sites."""
    mask: np.ndarray
    """(N, K) whether the static and zone rules allow each candidate."""
    features: np.ndarray
    """(N, K * F) float32 features, zero for masked candidates."""


class CandidateView:
    """Builds candidates, masks and observations for a backend's services.

    Args:
        scenario: The built scenario.
        n_candidates: K, or None for every site (the global variant).
        table_budget_mb: Largest observation table to precompute.
    """

    def __init__(
        self,
        scenario: Scenario,
        n_candidates: int | None,
        table_budget_mb: float = TABLE_BUDGET_MB,
    ) -> None:
        self.scenario = scenario
        self.costs = cost_tables(scenario)
        self.global_sites = n_candidates is None
        k = scenario.n_sites if n_candidates is None else n_candidates
        if not 2 <= k <= scenario.n_sites:
            raise ValueError(
                f"n_candidates must lie in [2, {scenario.n_sites}] for scenario "
                f"{scenario.config.name!r}, got {k}"
            )
        self.layout = ObservationLayout.of(scenario, k)
        # enough nearest sites that K - 1 allowed ones are usually among them
        self._pool = min(scenario.n_sites, 3 * k)
        rows = scenario.classes.n_classes * scenario.n_access * scenario.n_sites
        width = len(self.layout.static_features)
        self.tabulated = rows * k * (width * 4 + 9) / 2**20 <= table_budget_mb

    @cached_property
    def _tables(self) -> StaticView:
        """The static view of every (class, access, site), rows flattened."""
        s = self.scenario
        c, a, i = np.meshgrid(
            np.arange(s.classes.n_classes),
            np.arange(s.n_access),
            np.arange(s.n_sites),
            indexing="ij",
        )
        return self.static_view(c.ravel(), a.ravel(), i.ravel())

    def static_view(
        self, cls: np.ndarray, access: np.ndarray, site: np.ndarray
    ) -> StaticView:
        """Compute the static view of services of ``cls`` at ``site``."""
        sites, mask = self._candidates(cls, access, site)
        return StaticView(sites, mask, self._features(cls, access, site, sites, mask))

    def _candidates(
        self, cls: np.ndarray, access: np.ndarray, site: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        s, n = self.scenario, cls.shape[0]
        here = site[:, None]
        if self.global_sites:
            sites = np.broadcast_to(np.arange(s.n_sites), (n, s.n_sites))
            return sites, s.constraints.feasible(cls[:, None], here, sites)
        pool = self.scenario.nearest_feasible[cls, access, : self._pool]
        ok = s.constraints.feasible(cls[:, None], here, pool) & (pool != here)
        pick = np.argsort(~ok, axis=1, kind="stable")[:, : self.layout.n_candidates - 1]
        sites = np.concatenate([here, np.take_along_axis(pool, pick, axis=1)], axis=1)
        mask = np.concatenate(
            [np.ones((n, 1), bool), np.take_along_axis(ok, pick, axis=1)], axis=1
        )
        return sites, mask

    def _features(
        self,
        cls: np.ndarray,
        access: np.ndarray,
        site: np.ndarray,
        sites: np.ndarray,
        mask: np.ndarray,
    ) -> np.ndarray:
        s, t = self.scenario, self.costs
        c, a, here = cls[:, None], access[:, None], site[:, None]
        hops = s.network.hops
        cost = t.placement[c, a, sites] + t.move[c, here, sites]
        columns = (
            s.latency_ms[a, sites] / s.classes.slo_ms[c],
            s.network.rtt_ms[here, sites] / 100.0,
            t.downtime_s[c, here, sites] / 10.0,
            np.zeros(sites.shape),
            mask,
            np.log1p(np.where(mask, cost, 0.0)),
            hops[a, sites] / HOPS_SCALE,
            hops[here, sites] / HOPS_SCALE,
            sites == a,
            *self._term_columns(c, a, here, sites),
        )
        table = np.stack(columns, axis=-1, dtype=np.float32)
        table[~mask] = 0.0
        np.clip(table, 0.0, FEATURE_CAP, out=table)
        return table.reshape(sites.shape[0], -1)

    def _term_columns(
        self, c: np.ndarray, a: np.ndarray, here: np.ndarray, sites: np.ndarray
    ) -> list[np.ndarray]:
        """Return the weighted cost of each term of ``layout.terms`` per candidate."""
        if not self.layout.terms:
            return []
        s = self.scenario
        terms = {
            **placement_terms(s, c, a, sites),
            **move_terms(s, c, here, sites),
        }
        weights = s.config.costs.weights
        return [getattr(weights, term) * terms[term] for term in self.layout.terms]

    @cached_property
    def _observation_table(self) -> np.ndarray:
        """Tabulated observations, zero where history and progress go."""
        return self._blank_observations(self._tables.features)

    def _blank_observations(self, features: np.ndarray) -> np.ndarray:
        """Observations holding the static ``features``, zero elsewhere."""
        observation = np.zeros((features.shape[0], self.layout.size), np.float32)
        table = self.layout.candidate_table(observation)
        width = len(self.layout.static_features)
        table[..., :width] = features.reshape(*table.shape[:-1], -1)
        return observation

    def view(self, backend: Backend) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Return candidates (N, K), mask (N, K) and observations (N, size)."""
        cls, access, site = backend.cls, backend.access, backend.site
        if self.tabulated and cls.shape[0] == 1:
            # one service: slicing a row costs less than a gather
            s = self.scenario
            one = (int(cls[0]) * s.n_access + int(access[0])) * s.n_sites + int(site[0])
            sites = self._tables.sites[one : one + 1]
            mask = self._tables.mask[one : one + 1]
            observation = self._observation_table[one : one + 1].copy()
        elif self.tabulated:
            s = self.scenario
            row = (cls * s.n_access + access) * s.n_sites + site
            sites = np.take(self._tables.sites, row, axis=0)
            mask = np.take(self._tables.mask, row, axis=0)
            observation = np.take(self._observation_table, row, axis=0)
        else:
            static = self.static_view(cls, access, site)
            sites, mask = static.sites, static.mask
            observation = self._blank_observations(static.features)
        if self.layout.history:
            self._add_history(backend, sites, mask, observation)
        if self.layout.horizons_slots:
            self._add_motion(backend, sites, mask, observation)
        if self.layout.plan:
            self._add_plan(backend, sites, mask, observation)
        if backend.occupancy is not None:
            mask = self._admit(backend, sites, mask, observation)
        observation[:, -1] = backend.slot / self.scenario.config.episode_slots
        return sites, mask, observation

    def _add_history(
        self,
        backend: Backend,
        sites: np.ndarray,
        mask: np.ndarray,
        observation: np.ndarray,
    ) -> None:
        """Write the history features of allowed candidates into ``observation``."""
        history = backend.history
        if history is None:
            raise ValueError(
                f"scenario {self.scenario.config.name!r} keeps history_slots, "
                f"but the {type(backend).__name__} records no access history"
            )
        s = self.scenario
        slo_ms = s.classes.slo_ms[backend.cls][:, None]
        recent = s.latency_ms[history.sites[:, :, None], sites[:, None, :]]
        oldest = s.latency_ms[history.oldest[:, None], sites]
        projected = self._ahead(backend.access, history.oldest)
        ahead = s.latency_ms[projected[:, None], sites]
        table = self.layout.candidate_table(observation)
        first = len(self.layout.static_features)
        table[..., first] = recent.mean(axis=1) / slo_ms
        table[..., first + 1] = oldest / slo_ms
        table[..., first + 2] = ahead / slo_ms
        start = first + len(HISTORY_FEATURES)
        end = start + self.layout.past_slots
        if self.layout.past_slots:
            past = history.window()[:, -2::-1]  # newest first
            latency = s.latency_ms[past[:, :, None], sites[:, None, :]]
            table[..., start:end] = np.moveaxis(latency / slo_ms[..., None], 1, 2)
        written = table[..., first:end]
        np.minimum(written, FEATURE_CAP, out=written)
        written *= mask[..., None]

    def _add_motion(
        self,
        backend: Backend,
        sites: np.ndarray,
        mask: np.ndarray,
        observation: np.ndarray,
    ) -> None:
        """Write the projected-motion features of allowed candidates."""
        motion = self._motion(backend)
        s = self.scenario
        horizons = self.layout.horizons_slots
        # (N, W, 2) positions at every horizon, each mapped to its access site
        projected_m = np.stack(
            [motion.projected_m(h * s.config.slot_s) for h in horizons], axis=1
        )
        _, ahead = self._access_tree.query(projected_m)
        latency = s.latency_ms[np.asarray(ahead)[:, :, None], sites[:, None, :]]
        slo_ms = s.classes.slo_ms[backend.cls][:, None, None]
        first = self.layout.features.index(motion_features(horizons)[0])
        table = self.layout.candidate_table(observation)
        values = np.moveaxis(np.minimum(latency / slo_ms, FEATURE_CAP), 1, 2)
        table[..., first : first + len(horizons)] = values * mask[..., None]

    def _add_plan(
        self,
        backend: Backend,
        sites: np.ndarray,
        mask: np.ndarray,
        observation: np.ndarray,
    ) -> None:
        """Write the planner's verdict on every allowed candidate."""
        motion = self._motion(backend)
        costs = self._planner.first_step_costs(
            backend.cls,
            backend.access,
            backend.site,
            backend.slot,
            motion.position_m,
            motion.velocity_mps,
        )
        planned = np.where(mask, np.take_along_axis(costs, sites, axis=1), np.inf)
        regret = planned - planned.min(axis=1, keepdims=True)
        table = self.layout.candidate_table(observation)
        first = self.layout.features.index(PLAN_FEATURES[0])
        table[..., first] = np.where(mask, np.minimum(regret, FEATURE_CAP), 0.0)
        table[..., first + 1] = mask & (regret == 0.0)

    def _motion(self, backend: Backend) -> UserMotion:
        """Return the users' motion, which the scenario's features read."""
        if backend.motion is None:
            raise ValueError(
                f"scenario {self.scenario.config.name!r} reads users' motion, "
                f"but the {type(backend).__name__} records no positions"
            )
        return backend.motion

    @cached_property
    def _planner(self) -> FuturePlanner:
        """The planner over drawn futures of the scenario's users."""
        config = self.scenario.config
        return FuturePlanner(
            self.scenario, config.plan_window_slots, config.plan_futures
        )

    @cached_property
    def _access_tree(self) -> cKDTree:
        """Nearest-neighbour index over the access sites' positions."""
        return cKDTree(self.scenario.topology.positions_m[: self.scenario.n_access])

    def _ahead(self, access: np.ndarray, oldest: np.ndarray) -> np.ndarray:
        """Return the access site ahead of users who came from ``oldest``."""
        xy_m = self.scenario.topology.positions_m
        _, ahead = self._access_tree.query(2.0 * xy_m[access] - xy_m[oldest])
        return np.asarray(ahead, dtype=np.int64)

    def _admit(
        self,
        backend: Backend,
        sites: np.ndarray,
        mask: np.ndarray,
        observation: np.ndarray,
    ) -> np.ndarray:
        """Apply capacity and co-residency; update ``observation`` in place."""
        occupancy = backend.occupancy
        assert occupancy is not None  # only called for coupled backends
        s = self.scenario
        cls, tenant = backend.cls[:, None], backend.tenant[:, None]
        if occupancy.prefers_entries(sites.size):
            allowed = occupancy.admits(cls, tenant, sites)
        else:
            flat = occupancy.admit_table().reshape(-1)
            index = (sites * s.classes.n_classes + cls) * occupancy.n_tenants
            allowed = flat[index + tenant]
        allowed |= sites == backend.site[:, None]  # staying needs no new room
        admitted = mask & allowed

        # zero the features of candidates that only capacity or co-residency
        # rules out
        width = len(self.layout.features)
        ruled_out = mask & ~allowed
        if ruled_out.any():
            self.layout.candidate_table(observation)[ruled_out] = 0.0
        capacity = s.sites.cpu_cores
        load = np.where(np.isfinite(capacity), occupancy.cpu_used / capacity, 0.0)
        observation[:, _LOAD:-1:width] = np.minimum(load[sites], FEATURE_CAP) * admitted
        return admitted
