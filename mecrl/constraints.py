"""Hard constraints of placement: runtime, isolation, trust zones, capacity.

Constraints are never penalties: they remove sites from the action mask,
and the backends refuse a placement that breaks them even if asked.

Static rules depend only on a service's class and a site: the site offers
the class's runtime, lies in an allowed zone, can hold the service alone,
and for a ``dedicated`` service hosts no background workloads of other
tenants (background workloads count as shared runc services). A move is
also refused between zones marked untrusted to each other.

Dynamic rules depend on the other services placed: capacity left, and the
``dedicated`` rule that no two services of different tenants share a host
when either is dedicated, unless both run in Kata.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

from mecrl.runtimes import KATA
from mecrl.services import DEDICATED, ServiceClasses
from mecrl.sites import SiteTable

N_CATEGORIES = 4
"""Co-residency categories: runtime (runc, kata) x (shared, dedicated)."""

RUNC_SHARED = 0


def category(classes: ServiceClasses) -> np.ndarray:
    """Return the co-residency category code of each class."""
    kata = (classes.runtime == KATA).astype(np.int64)
    dedicated = (classes.isolation == DEDICATED).astype(np.int64)
    return 2 * kata + dedicated


def _conflict_matrix() -> np.ndarray:
    """(4, 4) whether categories of two different tenants may not share."""
    codes = np.arange(N_CATEGORIES)
    kata, dedicated = codes // 2 == 1, codes % 2 == 1
    either_dedicated = dedicated[:, None] | dedicated[None, :]
    both_kata = kata[:, None] & kata[None, :]
    return either_dedicated & ~both_kata


CONFLICTS = _conflict_matrix()
_CONFLICTS_COUNT = CONFLICTS.T.astype(np.int64)
"""The transposed conflict matrix in integers, for counting clashing workloads."""


@dataclass(frozen=True)
class Constraints:
    """Feasibility rules of one scenario's sites and service classes."""

    sites: SiteTable
    classes: ServiceClasses

    @cached_property
    def categories(self) -> np.ndarray:
        """(C,) co-residency category of each class."""
        return category(self.classes)

    @cached_property
    def any_dedicated(self) -> bool:
        """Whether some class is ``dedicated``: only those clash with others."""
        return bool((self.categories % 2 == 1).any())

    @cached_property
    def static(self) -> np.ndarray:
        """(C, M) static feasibility of each class at each site."""
        sites, classes = self.sites, self.classes
        runtime_ok = sites.runtimes[:, classes.runtime].T
        zone_ok = classes.allowed_zone[:, sites.zone]
        fits = (classes.cpu_cores[:, None] <= sites.cpu_cores[None, :]) & (
            classes.memory_mb[:, None] <= sites.memory_mb[None, :]
        )
        alone = ~(
            (classes.isolation == DEDICATED)[:, None]
            & (sites.background_tenants > 0)[None, :]
        )
        # a kata dedicated service still conflicts with background runc work
        return np.asarray(runtime_ok & zone_ok & fits & alone, dtype=bool)

    def move_allowed(self, source: np.ndarray, target: np.ndarray) -> np.ndarray:
        """Return whether state may move from ``source`` to ``target`` sites."""
        zone = self.sites.zone
        allowed: np.ndarray = ~self.sites.untrusted[zone[source], zone[target]]
        return allowed

    def feasible(
        self, cls: np.ndarray, current: np.ndarray, target: np.ndarray
    ) -> np.ndarray:
        """Return whether each service may run at ``target`` next slot.

        Only static and zone rules; see :class:`Occupancy` for the dynamic
        ones. Staying put is always feasible. Arguments broadcast.
        """
        ok = self.static[cls, target] & self.move_allowed(current, target)
        return np.asarray(ok | (target == current), dtype=bool)


@dataclass
class Occupancy:
    """What runs where: capacity used and co-residents per tenant category.

    Args:
        constraints: The scenario's rules.
        n_tenants: Number of tenants in the scenario.
    """

    constraints: Constraints
    n_tenants: int

    def __post_init__(self) -> None:
        n_sites = self.constraints.sites.n_sites
        self.cpu_used = np.zeros(n_sites)
        self.memory_used = np.zeros(n_sites)
        self.counts = np.zeros((n_sites, self.n_tenants, N_CATEGORIES), np.int64)
        self.totals = np.zeros((n_sites, N_CATEGORIES), np.int64)
        self.totals[:, RUNC_SHARED] = self.constraints.sites.background_tenants

    def add(self, cls: np.ndarray, tenant: np.ndarray, site: np.ndarray) -> None:
        """Record services of ``cls`` and ``tenant`` as running at ``site``."""
        self._update(cls, tenant, site, 1)

    def remove(self, cls: np.ndarray, tenant: np.ndarray, site: np.ndarray) -> None:
        """Record services as no longer running at ``site``."""
        self._update(cls, tenant, site, -1)

    def _update(
        self, cls: np.ndarray, tenant: np.ndarray, site: np.ndarray, sign: int
    ) -> None:
        classes = self.constraints.classes
        cat = self.constraints.categories[cls]
        np.add.at(self.cpu_used, site, sign * classes.cpu_cores[cls])
        np.add.at(self.memory_used, site, sign * classes.memory_mb[cls])
        np.add.at(self.counts, (site, tenant, cat), sign)
        np.add.at(self.totals, (site, cat), sign)

    def foreign_total(self, tenant: np.ndarray, site: np.ndarray) -> np.ndarray:
        """Return the number of other tenants' workloads at ``site``."""
        per_site = self.totals.sum(axis=1)[:, None] - self.counts.sum(axis=2)
        total: np.ndarray = per_site[site, tenant]
        return total

    def admit_table(self) -> np.ndarray:
        """(M, C, T) whether a site admits one more service of a class and tenant.

        True when the site has CPU and memory left for the class and no other
        tenant's workload there conflicts with it (the ``dedicated`` rule).
        """
        classes, sites = self.constraints.classes, self.constraints.sites
        room = (
            self.cpu_used[:, None] + classes.cpu_cores[None, :]
            <= sites.cpu_cores[:, None]
        ) & (
            self.memory_used[:, None] + classes.memory_mb[None, :]
            <= sites.memory_mb[:, None]
        )
        table = np.repeat(room[:, :, None], self.n_tenants, axis=2)
        categories = self.constraints.categories
        if self.constraints.any_dedicated:  # only dedicated services can clash
            foreign = self.totals[:, None, :] - self.counts
            clash = (foreign @ _CONFLICTS_COUNT) > 0
            table &= ~clash[:, :, categories].transpose(0, 2, 1)
        return table

    def prefers_entries(self, n_entries: int) -> bool:
        """Whether ``n_entries`` admissions cost less alone than the whole table.

        Computed alone, an entry costs about four entries of the table (on
        city-grid), so a few services need not pay for every site, class
        and tenant.
        """
        table_size = self.constraints.sites.n_sites * self.constraints.classes.n_classes
        return 4 * n_entries < table_size * self.n_tenants

    def admits(
        self, cls: np.ndarray, tenant: np.ndarray, site: np.ndarray
    ) -> np.ndarray:
        """Return whether ``site`` admits services of ``cls`` and ``tenant``.

        For services not yet counted at ``site``; arguments broadcast. The
        entries of :meth:`admit_table`; a few are computed alone (see
        :meth:`prefers_entries`).
        """
        if not self.prefers_entries(np.broadcast(cls, tenant, site).size):
            table: np.ndarray = self.admit_table()[site, cls, tenant]
            return table
        classes, sites = self.constraints.classes, self.constraints.sites
        admitted: np.ndarray = (
            self.cpu_used[site] + classes.cpu_cores[cls] <= sites.cpu_cores[site]
        ) & (self.memory_used[site] + classes.memory_mb[cls] <= sites.memory_mb[site])
        categories = self.constraints.categories
        if self.constraints.any_dedicated:  # only dedicated services can clash
            foreign = self.totals[site] - self.counts[site, tenant]
            clash = (foreign * CONFLICTS[categories[cls]]).sum(axis=-1) > 0
            admitted &= ~clash
        return admitted
