"""Services: classes of edge applications and the table of their figures.

A scenario declares a few service classes (an AR renderer, a vehicle
assistant, a game server...). Each simulated service is an instance of one
class, owned by one tenant; per-service arrays therefore hold only a class
and a tenant index, and every figure is looked up in the class table.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mecrl.config import check
from mecrl.migration import MIGRATION_MODES
from mecrl.runtimes import RUNTIME_NAMES, RuntimeTable

ISOLATION_LEVELS: tuple[str, ...] = ("shared", "sandboxed", "dedicated")
"""``shared``: any runtime, any neighbours. ``sandboxed``: Kata only.
``dedicated``: no other tenant's service on the same host unless both run in
Kata."""

SHARED, SANDBOXED, DEDICATED = 0, 1, 2


@dataclass(frozen=True)
class ServiceClassConfig:
    """One class of service and its share of the population."""

    name: str
    """Class name, for reports."""
    runtime: str = "runc"
    """Container runtime: ``runc`` or ``kata``."""
    isolation: str = "shared"
    """Isolation level: ``shared``, ``sandboxed`` or ``dedicated``."""
    migration: str = "cold"
    """Migration mode: ``cold``, ``precopy`` or ``postcopy`` (runc only)."""
    share: float = 1.0
    """Relative share of services of this class."""
    state_mb: float = 256.0
    """Memory and volume state moved on migration."""
    layers: tuple[str, ...] = ()
    """Image layers, by name, from the scenario's layer table."""
    dirty_mb_per_s: float = 10.0
    """Rate at which the running service dirties memory."""
    cpu_cores: float = 1.0
    """CPU demand."""
    memory_mb: float = 512.0
    """Memory demand, before the runtime's own overhead."""
    slo_ms: float = 30.0
    """Latency objective from user to service, radio included."""
    tenants: tuple[str, ...] = ("tenant-a",)
    """Tenants owning services of this class, drawn uniformly."""
    allowed_zones: tuple[str, ...] = ()
    """Zones the service may run in; empty means every zone."""

    def __post_init__(self) -> None:
        _check_choice("runtime", self.runtime, RUNTIME_NAMES)
        _check_choice("isolation", self.isolation, ISOLATION_LEVELS)
        _check_choice("migration", self.migration, MIGRATION_MODES)
        for name in ("share", "slo_ms"):
            value = getattr(self, name)
            check(value > 0, name, f"must be > 0, got {value}")
        for name in ("state_mb", "dirty_mb_per_s", "cpu_cores", "memory_mb"):
            value = getattr(self, name)
            check(value >= 0, name, f"must be >= 0, got {value}")
        check(len(self.tenants) > 0, "tenants", "must name at least one tenant")
        check(
            not (self.isolation == "sandboxed" and self.runtime != "kata"),
            "runtime",
            "a sandboxed service must run in kata",
        )
        check(
            not (self.runtime == "kata" and self.migration != "cold"),
            "migration",
            "kata cannot checkpoint, so its services migrate cold only",
        )


def _check_choice(field: str, value: str, choices: tuple[str, ...]) -> None:
    check(
        value in choices,
        field,
        f"must be one of {', '.join(choices)}; got {value!r}",
    )


@dataclass(frozen=True)
class ServiceClasses:
    """Figures of every service class as arrays indexed by class."""

    names: tuple[str, ...]
    runtime: np.ndarray
    """(C,) runtime code."""
    isolation: np.ndarray
    """(C,) isolation code."""
    mode: np.ndarray
    """(C,) migration mode code."""
    share_cdf: np.ndarray
    """(C,) cumulative share, last entry 1, for drawing a class."""
    state_mb: np.ndarray
    dirty_mb_per_s: np.ndarray
    cpu_cores: np.ndarray
    memory_mb: np.ndarray
    """(C,) memory demand including the runtime's overhead."""
    slo_ms: np.ndarray
    image_mb: np.ndarray
    """(C,) total image size."""
    layer_mb: np.ndarray
    """(C, L) size of each scenario layer in the class's image, 0 if absent."""
    allowed_zone: np.ndarray
    """(C, Z) whether the class may run in each zone."""
    tenant_table: np.ndarray
    """(C, Tmax) indices into ``tenant_names`` of each class's tenants."""
    tenant_count: np.ndarray
    """(C,) number of tenants owning the class."""
    tenant_names: tuple[str, ...]
    """Distinct tenant names of the scenario."""

    @property
    def n_classes(self) -> int:
        """Number of classes."""
        return len(self.names)

    def draw(self, uniforms: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Map (N, 2) uniforms to a class and a tenant index per service."""
        cls = np.searchsorted(self.share_cdf, uniforms[:, 0], side="right")
        cls = np.minimum(cls, self.n_classes - 1)
        offset = (uniforms[:, 1] * self.tenant_count[cls]).astype(np.int64)
        return cls.astype(np.int64), self.tenant_table[cls, offset]


def build_classes(
    configs: tuple[ServiceClassConfig, ...],
    layers_mb: dict[str, float],
    zone_names: tuple[str, ...],
    runtimes: RuntimeTable,
) -> ServiceClasses:
    """Return the class table for ``configs``.

    Args:
        configs: The scenario's service classes (validated).
        layers_mb: Size of every named layer of the scenario.
        zone_names: Zones of the scenario's sites.
        runtimes: Runtime profiles, for memory overhead.
    """
    # sorted, so that the order layers are written in changes nothing
    layer_names = sorted(layers_mb)
    layer_mb = np.zeros((len(configs), len(layer_names)))
    allowed = np.zeros((len(configs), len(zone_names)), dtype=bool)
    for c, config in enumerate(configs):
        for layer in config.layers:
            layer_mb[c, layer_names.index(layer)] = layers_mb[layer]
        allowed[c] = [
            not config.allowed_zones or zone in config.allowed_zones
            for zone in zone_names
        ]
    tenant_names = tuple(dict.fromkeys(t for c in configs for t in c.tenants))
    shares = np.array([c.share for c in configs])
    runtime = np.array([RUNTIME_NAMES.index(c.runtime) for c in configs])
    overhead = runtimes.column("memory_overhead_mb")[runtime]
    return ServiceClasses(
        names=tuple(c.name for c in configs),
        runtime=runtime,
        isolation=np.array([ISOLATION_LEVELS.index(c.isolation) for c in configs]),
        mode=np.array([MIGRATION_MODES.index(c.migration) for c in configs]),
        share_cdf=np.cumsum(shares) / shares.sum(),
        state_mb=np.array([c.state_mb for c in configs]),
        dirty_mb_per_s=np.array([c.dirty_mb_per_s for c in configs]),
        cpu_cores=np.array([c.cpu_cores for c in configs]),
        memory_mb=np.array([c.memory_mb for c in configs]) + overhead,
        slo_ms=np.array([c.slo_ms for c in configs]),
        image_mb=layer_mb.sum(axis=1),
        layer_mb=layer_mb,
        allowed_zone=allowed,
        tenant_table=_tenant_table(configs, tenant_names),
        tenant_count=np.array([len(c.tenants) for c in configs]),
        tenant_names=tenant_names,
    )


def _tenant_table(
    configs: tuple[ServiceClassConfig, ...], tenant_names: tuple[str, ...]
) -> np.ndarray:
    width = max(len(c.tenants) for c in configs)
    table = np.zeros((len(configs), width), dtype=np.int64)
    for c, config in enumerate(configs):
        table[c, : len(config.tenants)] = [
            tenant_names.index(t) for t in config.tenants
        ]
    return table
