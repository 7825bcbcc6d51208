"""Candidate sites and their features: what a policy sees of a service.

The observation of one service is a fixed number ``K`` of candidate sites
(candidate 0 is where the service runs now; the others are the feasible
sites nearest the user), each described by the same features, plus the
fraction of the episode elapsed. Features are relative (latency over the
SLO, hops, downtime), so a policy trained on one topology can act on
another. In the global variant the candidates are all sites, in site order.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mecrl.backend import SimBackend
from mecrl.problem import CostTables
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

HOPS_SCALE = 10.0
"""Hop counts are divided by this; policies multiply back to get integers."""

FEATURE_CAP = 100.0
"""Every feature is clipped to [0, FEATURE_CAP] to keep the space bounded."""


@dataclass(frozen=True)
class ObservationLayout:
    """Where each feature of each candidate sits in the flat observation."""

    n_candidates: int
    """Candidates per observation (K)."""

    @property
    def size(self) -> int:
        """Length of the flat observation."""
        return self.n_candidates * len(FEATURES) + 1

    def feature(self, observation: np.ndarray, name: str) -> np.ndarray:
        """Return feature ``name`` of every candidate: shape (..., K)."""
        table = observation[..., :-1].reshape(
            *observation.shape[:-1], self.n_candidates, len(FEATURES)
        )
        return table[..., FEATURES.index(name)]

    def progress(self, observation: np.ndarray) -> np.ndarray:
        """Return the fraction of the episode elapsed."""
        return observation[..., -1]


class CandidateView:
    """Builds candidates, masks and observations for a backend's services.

    Args:
        scenario: The built scenario.
        n_candidates: K, or None for every site (the global variant).
    """

    def __init__(self, scenario: Scenario, n_candidates: int | None) -> None:
        self.scenario = scenario
        self.tables = CostTables(scenario)
        self.global_sites = n_candidates is None
        k = scenario.n_sites if n_candidates is None else n_candidates
        if not 2 <= k <= scenario.n_sites:
            raise ValueError(
                f"n_candidates must lie in [2, {scenario.n_sites}] for scenario "
                f"{scenario.config.name!r}, got {k}"
            )
        self.layout = ObservationLayout(k)
        # enough nearest sites that K - 1 admissible ones are usually among them
        self._pool = min(scenario.n_sites, 3 * k)

    def candidates(self, backend: SimBackend) -> tuple[np.ndarray, np.ndarray]:
        """Return (N, K) candidate sites and whether each is admissible."""
        n = backend.site.shape[0]
        if self.global_sites:
            sites = np.broadcast_to(
                np.arange(self.scenario.n_sites), (n, self.layout.n_candidates)
            )
            return sites, backend.admissible(sites)
        here = backend.site[:, None]
        pool = backend.nearest_feasible[backend.cls, backend.access, : self._pool]
        ok = backend.admissible(pool) & (pool != here)
        pick = np.argsort(~ok, axis=1, kind="stable")[:, : self.layout.n_candidates - 1]
        sites = np.concatenate([here, np.take_along_axis(pool, pick, axis=1)], axis=1)
        mask = np.concatenate(
            [np.ones((n, 1), bool), np.take_along_axis(ok, pick, axis=1)], axis=1
        )
        return sites, mask

    def observe(
        self, backend: SimBackend, sites: np.ndarray, mask: np.ndarray
    ) -> np.ndarray:
        """Return (N, layout.size) float32 observations."""
        s, t = self.scenario, self.tables
        cls, access, here = (
            backend.cls[:, None],
            backend.access[:, None],
            backend.site[:, None],
        )
        hops = s.network.hops
        cost = t.placement[cls, access, sites] + t.move[cls, here, sites]
        load = np.zeros(sites.shape)
        if backend.occupancy is not None:
            capacity = s.sites.cpu_cores[sites]
            load = np.where(
                np.isfinite(capacity), backend.occupancy.cpu_used[sites] / capacity, 0.0
            )
        columns = (
            s.latency_ms[access, sites] / s.classes.slo_ms[cls],
            s.network.rtt_ms[here, sites] / 100.0,
            t.downtime_s[cls, here, sites] / 10.0,
            load,
            mask,
            np.log1p(np.where(mask, cost, 0.0)),
            hops[access, sites] / HOPS_SCALE,
            hops[here, sites] / HOPS_SCALE,
            sites == access,
        )
        table = np.stack(columns, axis=-1, dtype=np.float32)
        table[~mask] = 0.0
        np.clip(table, 0.0, FEATURE_CAP, out=table)
        progress = np.full(
            (sites.shape[0], 1), backend.slot / s.config.episode_slots, np.float32
        )
        return np.concatenate([table.reshape(sites.shape[0], -1), progress], axis=1)
