"""Named cost terms of a slot and their weighted sum.

Each slot a service pays *placement* terms, which depend on where its user is
and where it runs, and *move* terms, which depend on where it ran before and
where it runs now. That split makes a service's cost separable by slot, so a
service's whole episode is a shortest path over (slot, site): the hindsight
optimum and the solver export rely on it.

| term | kind | unit | meaning |
|---|---|---|---|
| access_latency | placement | ms | radio RTT plus network RTT to the service |
| slo_violation | placement | slots | 1 when that latency exceeds the SLO |
| co_residency | placement | exposure | other tenants' workloads on the host, |
| | | | times the runtime's exposure factor |
| distance | placement | cost | Wang et al.'s hop-distance cost (see HopCost) |
| downtime | move | s | time the service is unreachable |
| bytes_moved | move | MB | state and image layers sent |
| zone_crossing | move | count | 1 when state leaves its trust zone |
| migration | move | cost | Wang et al.'s hop-count migration cost |
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np

from mecrl.config import check
from mecrl.registry import Registry

PLACEMENT_TERMS: tuple[str, ...] = (
    "access_latency",
    "slo_violation",
    "co_residency",
    "distance",
)
MOVE_TERMS: tuple[str, ...] = ("downtime", "bytes_moved", "zone_crossing", "migration")
TERM_NAMES: tuple[str, ...] = PLACEMENT_TERMS + MOVE_TERMS

TERM_UNITS: dict[str, str] = {
    "access_latency": "ms",
    "slo_violation": "slots",
    "co_residency": "exposure",
    "distance": "cost",
    "downtime": "s",
    "bytes_moved": "MB",
    "zone_crossing": "count",
    "migration": "cost",
}


@dataclass(frozen=True)
class CostWeights:
    """Weight of each term in the slot cost (reward units per term unit)."""

    access_latency: float = 0.02
    """Per millisecond of access latency."""
    slo_violation: float = 1.0
    """Per slot spent above the latency objective."""
    co_residency: float = 0.05
    """Per unit of co-residency exposure per slot."""
    distance: float = 0.0
    """Per unit of hop-distance cost (Wang et al.'s transmission cost)."""
    downtime: float = 0.5
    """Per second of downtime."""
    bytes_moved: float = 0.001
    """Per megabyte moved."""
    zone_crossing: float = 1.0
    """Per migration that crosses trust zones."""
    migration: float = 0.0
    """Per unit of hop-count migration cost (Wang et al.)."""

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            check(value >= 0, field.name, f"must be >= 0, got {value}")

    def vector(self, names: tuple[str, ...]) -> np.ndarray:
        """Return the weights of ``names`` in that order."""
        return np.array([getattr(self, name) for name in names])


@dataclass(frozen=True)
class HopCost:
    """A cost of a hop count ``x``: ``const + scale * power**x`` if x > 0, else 0.

    Wang et al. (IEEE/ACM ToN 2019) use this constant-plus-exponential form
    for both the transmission cost of a user-service distance and the cost
    of migrating a service over a distance. With ``scale < 0`` and
    ``0 < power < 1`` the cost grows with x towards ``const``.
    """

    const: float = 1.0
    """Constant part, paid for any non-zero distance."""
    scale: float = -1.0
    """Factor of the exponential part (negative for a rising cost)."""
    power: float = 0.8
    """Base of the exponential part; must be positive."""

    def __post_init__(self) -> None:
        for name in ("const", "scale", "power"):
            value = getattr(self, name)
            check(math.isfinite(value), name, f"must be finite, got {value}")
        check(self.power > 0, "power", f"must be > 0, got {self.power}")

    def at(self, hops: int) -> float:
        """Return the cost of one hop count."""
        if hops == 0:
            return 0.0
        return float(self.const + self.scale * self.power**hops)

    def table(self, max_hops: int) -> np.ndarray:
        """Return the cost of every hop count 0..max_hops."""
        hops = np.arange(max_hops + 1)
        cost = self.const + self.scale * self.power**hops
        cost[0] = 0.0
        return cost


@dataclass(frozen=True)
class CostConfig:
    """Weights of the terms and shapes of the hop-based terms."""

    weights: CostWeights = CostWeights()
    """Weight of each named term."""
    distance: HopCost = HopCost(const=1.0, scale=-1.0, power=0.8)
    """Shape of the ``distance`` term."""
    migration: HopCost = HopCost(const=2.0, scale=-1.0, power=0.8)
    """Shape of the ``migration`` term."""


COST_PRESETS: Registry[Callable[..., CostConfig]] = Registry("cost preset")


@COST_PRESETS.register("physical")
def physical_costs() -> CostConfig:
    """Latency, SLO, downtime, bytes, exposure and zone terms, defaults."""
    return CostConfig()


@COST_PRESETS.register("wang2019")
def wang2019_costs(migration_weight: float = 1.0, power: float = 0.8) -> CostConfig:
    """Wang et al.'s distance-only costs, as in their published simulations.

    Transmission ``1 - power**x`` for a user-service distance of ``x`` hops;
    migration ``1 + w * (1 - power**x)`` for moving ``x`` hops, ``w`` being
    ``migration_weight``. In the paper's notation ``theta = mu = power``,
    ``delta_c = 1``, ``delta_l = -1``, ``beta_l = -migration_weight`` and
    ``beta_c = 1 - beta_l``. Only these two terms are weighted; the physical
    terms are still reported.

    Args:
        migration_weight: Weight of the distance-dependent part of a
            migration's cost, finite and at least 0.
        power: Base of both exponentials (their ``theta = mu``), in (0, 1).

    Raises:
        ValueError: If an argument is out of range; the message names it.
    """
    check(
        math.isfinite(migration_weight) and migration_weight >= 0,
        "migration_weight",
        f"must be finite and >= 0, got {migration_weight}",
    )
    check(0 < power < 1, "power", f"must lie in (0, 1), got {power}")
    zero = {field.name: 0.0 for field in dataclasses.fields(CostWeights)}
    return CostConfig(
        weights=CostWeights(**{**zero, "distance": 1.0, "migration": 1.0}),
        distance=HopCost(const=1.0, scale=-1.0, power=power),
        migration=HopCost(
            const=1.0 + migration_weight, scale=-migration_weight, power=power
        ),
    )


def weighted_total(terms: Mapping[str, np.ndarray], weights: CostWeights) -> np.ndarray:
    """Return the weighted sum of ``terms`` (any subset of the term names)."""
    total: np.ndarray | float = 0.0
    for name, value in terms.items():
        weight = getattr(weights, name)
        if weight:
            total = total + weight * value
    return np.asarray(total, dtype=np.float64)
