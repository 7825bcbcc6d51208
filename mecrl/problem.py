"""Per-service cost of every placement and move, from the scenario's model.

The slot cost of a service splits into a placement part, a function of the
user's access site and the service's site, and a move part, a function of
the previous and the new site (see :mod:`mecrl.costs`). This module computes
the named terms for any arrays of sites, and tables of their weighted sums
per service class, which the environments, the oracles and the solver
export all read, so the three always agree.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from mecrl.costs import MOVE_TERMS, PLACEMENT_TERMS, weighted_total
from mecrl.migration import MigrationEffect, migration_effect
from mecrl.scenario import Scenario

TERM_TABLE_BUDGET_MB = 1024.0
"""Largest table of raw placement terms kept in memory."""


def placement_terms(
    scenario: Scenario,
    cls: np.ndarray,
    access: np.ndarray,
    site: np.ndarray,
    foreign: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """Return the placement terms of services of ``cls`` at ``site``.

    Args:
        scenario: The built scenario.
        cls: Service class per service.
        access: The user's access site per service.
        site: Where each service runs this slot.
        foreign: Other tenants' workloads at ``site``; the site's background
            workloads when None (no other service modelled).

    Arguments broadcast against each other.
    """
    classes = scenario.classes
    latency_ms = scenario.latency_ms[access, site]
    if foreign is None:
        foreign = scenario.sites.background_tenants[site]
    exposure = scenario.runtimes.column("exposure")[classes.runtime[cls]]
    return {
        "access_latency": latency_ms,
        "slo_violation": (latency_ms > classes.slo_ms[cls]).astype(np.float64),
        "co_residency": exposure * foreign,
        "distance": scenario.distance_cost[scenario.network.hops[access, site]],
    }


def move_terms(
    scenario: Scenario, cls: np.ndarray, source: np.ndarray, target: np.ndarray
) -> dict[str, np.ndarray]:
    """Return the move terms of services of ``cls`` going ``source`` -> ``target``.

    Every term is zero where a service stays. Arguments broadcast.
    """
    cls, source, target = np.broadcast_arrays(cls, source, target)
    moved = source != target
    terms = {name: np.zeros(cls.shape) for name in MOVE_TERMS}
    if not moved.any():
        return terms
    c, i, j = cls[moved], source[moved], target[moved]
    effect = _effect(scenario, c, i, j)
    zone = scenario.sites.zone
    terms["downtime"][moved] = effect.downtime_s
    terms["bytes_moved"][moved] = effect.moved_mb
    terms["zone_crossing"][moved] = (zone[i] != zone[j]).astype(np.float64)
    terms["migration"][moved] = scenario.migration_hop_cost[scenario.network.hops[i, j]]
    return terms


def _effect(
    scenario: Scenario, c: np.ndarray, i: np.ndarray, j: np.ndarray
) -> MigrationEffect:
    classes, runtimes = scenario.classes, scenario.runtimes
    runtime = classes.runtime[c]
    return migration_effect(
        mode=classes.mode[c],
        state_mb=classes.state_mb[c],
        missing_layers_mb=scenario.missing_layers_mb[c, j],
        bandwidth_mbps=scenario.network.bandwidth_mbps[i, j],
        dirty_mb_per_s=classes.dirty_mb_per_s[c],
        start_s=runtimes.column("start_s")[runtime],
        stop_s=runtimes.column("stop_s")[runtime],
        checkpoint_s=runtimes.column("checkpoint_s")[runtime],
        restore_s=runtimes.column("restore_s")[runtime],
        prefetch_layers=scenario.config.prefetch_layers,
        checkpoint_s_per_mb=runtimes.column("checkpoint_s_per_mb")[runtime],
        restore_s_per_mb=runtimes.column("restore_s_per_mb")[runtime],
        transfer_overhead_s=runtimes.column("transfer_overhead_s")[runtime],
        transfer_s_per_mb=runtimes.column("transfer_s_per_mb")[runtime],
    )


@dataclass(frozen=True)
class CostTables:
    """Weighted costs per class of every placement and every move.

    Tables are (C, A, M) and (C, M, M) arrays, built once per scenario: the
    hot path of the environments reads them instead of recomputing the
    migration model. Infeasible placements and forbidden moves are +inf.
    """

    scenario: Scenario

    @cached_property
    def placement(self) -> np.ndarray:
        """(C, A, M) weighted placement cost; +inf where the class may not run."""
        s = self.scenario
        cls = np.arange(s.classes.n_classes)[:, None, None]
        access = np.arange(s.n_access)[None, :, None]
        site = np.arange(s.n_sites)[None, None, :]
        terms = placement_terms(s, cls, access, site)
        cost = np.broadcast_to(
            weighted_total(terms, s.config.costs.weights),
            (s.classes.n_classes, s.n_access, s.n_sites),
        ).copy()
        cost[~np.broadcast_to(s.constraints.static[:, None, :], cost.shape)] = np.inf
        return cost

    @cached_property
    def move(self) -> np.ndarray:
        """(C, M, M) weighted move cost; +inf where state may not go."""
        s = self.scenario
        n = s.n_sites
        cls = np.arange(s.classes.n_classes)[:, None, None]
        source = np.arange(n)[None, :, None]
        target = np.arange(n)[None, None, :]
        terms = move_terms(s, cls, source, target)
        cost = np.broadcast_to(
            weighted_total(terms, s.config.costs.weights), (s.classes.n_classes, n, n)
        ).copy()
        allowed = s.constraints.move_allowed(source[0], target[0])
        cost[:, ~allowed] = np.inf
        return cost

    @cached_property
    def placement_terms(self) -> np.ndarray | None:
        """(P, C * A * M) raw placement terms, rows as ``PLACEMENT_TERMS``.

        None when the table would exceed ``TERM_TABLE_BUDGET_MB``; callers
        then compute the terms with :func:`placement_terms`.
        """
        s = self.scenario
        rows = s.classes.n_classes * s.n_access * s.n_sites
        if rows * len(PLACEMENT_TERMS) * 8 / 2**20 > TERM_TABLE_BUDGET_MB:
            return None
        cls = np.arange(s.classes.n_classes)[:, None, None]
        access = np.arange(s.n_access)[None, :, None]
        site = np.arange(s.n_sites)[None, None, :]
        terms = placement_terms(s, cls, access, site)
        shape = (s.classes.n_classes, s.n_access, s.n_sites)
        return np.stack(
            [np.broadcast_to(terms[name], shape).ravel() for name in PLACEMENT_TERMS]
        )

    @cached_property
    def move_terms(self) -> np.ndarray | None:
        """(Q, C * M * M) raw move terms, rows as ``MOVE_TERMS``, or None.

        None when the table would exceed ``TERM_TABLE_BUDGET_MB``.
        """
        s = self.scenario
        rows = s.classes.n_classes * s.n_sites * s.n_sites
        if rows * len(MOVE_TERMS) * 8 / 2**20 > TERM_TABLE_BUDGET_MB:
            return None
        n = s.n_sites
        cls = np.arange(s.classes.n_classes)[:, None, None]
        terms = move_terms(
            s, cls, np.arange(n)[None, :, None], np.arange(n)[None, None, :]
        )
        return np.stack([terms[name].ravel() for name in MOVE_TERMS])

    @cached_property
    def downtime_s(self) -> np.ndarray:
        """(C, M, M) downtime of each move, for observations."""
        s = self.scenario
        n = s.n_sites
        cls = np.arange(s.classes.n_classes)[:, None, None]
        terms = move_terms(
            s, cls, np.arange(n)[None, :, None], np.arange(n)[None, None, :]
        )
        return terms["downtime"]


@functools.lru_cache(maxsize=8)
def cost_tables(scenario: Scenario) -> CostTables:
    """Return the cost tables of ``scenario``, shared by all its users."""
    return CostTables(scenario)
