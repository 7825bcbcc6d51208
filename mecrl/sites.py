"""Edge sites: capacity, offered runtimes, trust zones, caches, and the cloud.

A :class:`SiteTable` holds every site as arrays indexed by site number. Edge
sites come first; the optional cloud site, when present, is the last index.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mecrl.config import check
from mecrl.runtimes import RUNTIME_NAMES

CLOUD_ZONE = "cloud"
"""Trust zone of the cloud site."""

HOST_SELECTIONS: tuple[str, ...] = ("random", "evenly-spaced")
"""Ways of choosing the hosting sites (see ``SitesConfig.host_selection``)."""


@dataclass(frozen=True)
class CloudConfig:
    """The optional cloud site: far away, without capacity limit."""

    rtt_ms: float = 80.0
    """Round-trip time from every edge site to the cloud."""
    bandwidth_mbps: float = 1000.0
    """Bandwidth between every edge site and the cloud."""

    def __post_init__(self) -> None:
        check(self.rtt_ms > 0, "rtt_ms", f"must be > 0, got {self.rtt_ms}")
        check(
            self.bandwidth_mbps > 0,
            "bandwidth_mbps",
            f"must be > 0, got {self.bandwidth_mbps}",
        )


@dataclass(frozen=True)
class SitesConfig:
    """How edge sites are equipped."""

    cpu_cores: float = 16.0
    """CPU capacity of each edge site."""
    memory_mb: float = 32768.0
    """Memory capacity of each edge site."""
    host_fraction: float = 1.0
    """Share of edge sites that host services; the others are radio cells
    only: users attach to them, but no service can run there."""
    host_selection: str = "random"
    """Which sites host: ``random`` (drawn with the scenario's seed) or
    ``evenly-spaced`` (sites ``round(k * M / H) - 1`` for ``k = 1..H``,
    rounding halves up: every (M/H)-th site in index order, as Wang et al.
    chose 100 of their 209 real cells)."""
    kata_fraction: float = 1.0
    """Share of hosting sites with hardware virtualisation (they offer Kata
    as well as runc); the others offer runc only."""
    zones: tuple[str, ...] = ("edge",)
    """Trust zones; sites are split among them in west-to-east stripes."""
    untrusted_zone_pairs: tuple[tuple[str, str], ...] = ()
    """Zone pairs between which service state must never move."""
    background_tenants: float = 0.0
    """Mean number of other tenants' workloads (runc, shared) already on
    each edge site; drawn per site from a Poisson law."""
    layer_cache_prob: float = 0.5
    """Probability that a site already holds a given image layer."""
    cloud: CloudConfig | None = None
    """The cloud site, or None for an edge-only deployment."""

    def __post_init__(self) -> None:
        check(self.cpu_cores > 0, "cpu_cores", f"must be > 0, got {self.cpu_cores}")
        check(self.memory_mb > 0, "memory_mb", f"must be > 0, got {self.memory_mb}")
        for name in ("host_fraction", "kata_fraction", "layer_cache_prob"):
            value = getattr(self, name)
            check(0.0 <= value <= 1.0, name, f"must be within [0, 1], got {value}")
        check(
            self.background_tenants >= 0,
            "background_tenants",
            f"must be >= 0, got {self.background_tenants}",
        )
        check(
            self.host_selection in HOST_SELECTIONS,
            "host_selection",
            f"must be one of {', '.join(HOST_SELECTIONS)}; got {self.host_selection!r}",
        )
        check(len(self.zones) > 0, "zones", "must name at least one zone")
        check(len(set(self.zones)) == len(self.zones), "zones", "zone names repeat")
        check(CLOUD_ZONE not in self.zones, "zones", f"{CLOUD_ZONE!r} is reserved")
        for i, pair in enumerate(self.untrusted_zone_pairs):
            for zone in pair:
                check(
                    zone in self.zones,
                    f"untrusted_zone_pairs.{i}",
                    f"unknown zone {zone!r}; zones are {', '.join(self.zones)}",
                )


@dataclass(frozen=True)
class SiteTable:
    """All sites as arrays indexed by site number (cloud last, if any)."""

    positions_m: np.ndarray
    """(M, 2) positions; the cloud sits at the centroid of the edge sites."""
    cpu_cores: np.ndarray
    """(M,) CPU capacity; infinite for the cloud."""
    memory_mb: np.ndarray
    """(M,) memory capacity; infinite for the cloud."""
    runtimes: np.ndarray
    """(M, R) whether each site offers each runtime (columns as
    ``RUNTIME_NAMES``)."""
    zone: np.ndarray
    """(M,) zone index into ``zone_names``."""
    zone_names: tuple[str, ...]
    """Zone names; the cloud's zone is last when there is a cloud."""
    untrusted: np.ndarray
    """(Z, Z) whether state may not move between two zones."""
    background_tenants: np.ndarray
    """(M,) other tenants' workloads already present (runc, shared)."""
    layer_cached: np.ndarray
    """(M, L) whether a site already holds each image layer."""
    n_edge: int
    """Number of edge sites; a site index ``>= n_edge`` is the cloud."""

    @property
    def n_sites(self) -> int:
        """Number of sites, cloud included."""
        return int(self.cpu_cores.shape[0])

    @property
    def has_cloud(self) -> bool:
        """Whether the last site is the cloud."""
        return self.n_sites > self.n_edge


def build_sites(
    config: SitesConfig,
    positions_m: np.ndarray,
    n_layers: int,
    rng: np.random.Generator,
) -> SiteTable:
    """Equip the edge sites at ``positions_m`` (and the cloud) per ``config``.

    Args:
        config: How sites are equipped.
        positions_m: (M, 2) edge site positions.
        n_layers: Number of distinct image layers in the scenario.
        rng: Generator for the random parts (Kata hosts, background
            tenants, layer caches).
    """
    n_edge = positions_m.shape[0]
    n_hosts = max(1, round(config.host_fraction * n_edge))
    if config.host_selection == "evenly-spaced":
        # round(k * M / H) - 1, halves up, in integers so that it is exact
        hosts = (np.arange(1, n_hosts + 1) * n_edge * 2 + n_hosts) // (2 * n_hosts) - 1
    else:
        hosts = rng.permutation(n_edge)[:n_hosts]
    runtimes = np.zeros((n_edge, len(RUNTIME_NAMES)), dtype=bool)
    runtimes[hosts, RUNTIME_NAMES.index("runc")] = True
    n_kata = round(config.kata_fraction * len(hosts))
    runtimes[hosts[:n_kata], RUNTIME_NAMES.index("kata")] = True

    zone = _stripe_zones(positions_m, len(config.zones))
    background = np.asarray(rng.poisson(config.background_tenants, n_edge))
    cached = rng.random((n_edge, n_layers)) < config.layer_cache_prob
    cpu = np.full(n_edge, config.cpu_cores)
    memory = np.full(n_edge, config.memory_mb)
    zone_names = config.zones
    untrusted = _untrusted_matrix(config, len(zone_names) + 1)

    if config.cloud is not None:
        # the cloud offers every runtime, mirrors every layer, never fills up
        positions_m = np.vstack([positions_m, positions_m.mean(axis=0)])
        runtimes = np.vstack([runtimes, np.ones((1, runtimes.shape[1]), bool)])
        zone = np.append(zone, len(zone_names))
        zone_names = (*zone_names, CLOUD_ZONE)
        background = np.append(background, 0)
        cached = np.vstack([cached, np.ones((1, n_layers), bool)])
        cpu = np.append(cpu, np.inf)
        memory = np.append(memory, np.inf)
    untrusted = untrusted[: len(zone_names), : len(zone_names)]

    return SiteTable(
        positions_m=np.asarray(positions_m, dtype=np.float64),
        cpu_cores=cpu,
        memory_mb=memory,
        runtimes=runtimes,
        zone=zone.astype(np.int64),
        zone_names=zone_names,
        untrusted=untrusted,
        background_tenants=background.astype(np.int64),
        layer_cached=cached,
        n_edge=n_edge,
    )


def _stripe_zones(positions_m: np.ndarray, n_zones: int) -> np.ndarray:
    """Split sites into ``n_zones`` groups of equal size from west to east."""
    order = np.argsort(positions_m[:, 0], kind="stable")
    zone = np.empty(len(order), dtype=np.int64)
    zone[order] = np.arange(len(order)) * n_zones // max(len(order), 1)
    return zone


def _untrusted_matrix(config: SitesConfig, size: int) -> np.ndarray:
    untrusted = np.zeros((size, size), dtype=bool)
    for a, b in config.untrusted_zone_pairs:
        i, j = config.zones.index(a), config.zones.index(b)
        untrusted[i, j] = untrusted[j, i] = True
    return untrusted
