"""Scenarios: a typed config that builds a whole MEC world, and a registry.

A scenario names a topology, a mobility source, how sites are equipped, the
service classes, the cost weights and the episode length. Built with its own
``seed`` it gives a :class:`Scenario`: the static world (sites, network,
caches, background tenants). Episodes then draw users and services from a
key derived from the environment's seed (see :mod:`mecrl.rng`), so service
``n`` of an episode is the same whether one or ten thousand services are
simulated together.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

import mecrl.datasets  # noqa: F401  registers dataset-backed topologies and mobility
from mecrl.config import (
    ConfigError,
    check,
    from_dict,
    load_file,
    to_dict,
    without_defaults,
)
from mecrl.constraints import Constraints
from mecrl.costs import TERM_NAMES, CostConfig, HopCost
from mecrl.mobility import MOBILITY, MobilitySource, RandomWaypoint
from mecrl.network import TOPOLOGIES, CloudLink, Network, Topology
from mecrl.registry import Registry
from mecrl.runtimes import RuntimeTable, load_profiles
from mecrl.services import ServiceClassConfig, ServiceClasses, build_classes
from mecrl.sites import SitesConfig, SiteTable, build_sites


@dataclass(frozen=True)
class ComponentConfig:
    """A part chosen by name from a registry, with its keyword parameters."""

    kind: str
    """Registered name of the part."""
    params: dict[str, Any] = field(default_factory=dict)
    """Keyword arguments of the part's factory."""


@dataclass(frozen=True)
class ScenarioConfig:
    """Everything that defines a scenario."""

    name: str
    """Scenario name, as listed by ``mecrl scenario list``."""
    topology: ComponentConfig
    """Site graph generator (``line``, ``hex``, ``random-geometric``)."""
    mobility: ComponentConfig
    """Mobility source (``random-walk``, ``random-waypoint``, ...)."""
    services: tuple[ServiceClassConfig, ...]
    """Service classes and their shares."""
    description: str = ""
    """One paragraph on what the scenario models."""
    seed: int = 0
    """Seed of the static world (Kata hosts, caches, background load)."""
    slot_s: float = 60.0
    """Length of a decision slot."""
    episode_slots: int = 100
    """Slots in an episode."""
    discount: float = 0.9
    """Discount factor of the MDP view of the problem."""
    radio_rtt_ms: float = 10.0
    """Radio round trip between a user and its access site."""
    per_hop_ms: float = 0.5
    """Switching delay added per network hop, one way."""
    sites: SitesConfig = field(default_factory=SitesConfig)
    """How edge sites are equipped."""
    layers: dict[str, float] = field(default_factory=dict)
    """Image layers by name and size in MB."""
    costs: CostConfig = field(default_factory=CostConfig)
    """Weights of the cost terms."""
    candidates: int = 8
    """Candidate sites in the single-service action: stay plus K - 1."""
    history_slots: int = 0
    """Past slots of the user's movement the observation summarises (0: none).

    With H > 0 every candidate also carries its mean latency from the user's
    access sites of the last H slots and its latency from the access site of
    H - 1 slots ago: a user who lingers looks different from one passing by.
    """
    history_per_slot: bool = False
    """Whether every candidate also carries its latency from the user's access
    site of each of the H - 1 slots before the current one, newest first, so
    that a policy can read when and from where the user came, not only a
    summary. Needs ``history_slots`` of at least 2.
    """
    term_features: tuple[str, ...] = ()
    """Cost terms every candidate also carries, each on its own (empty: none).

    Feature ``<term>_cost`` of a candidate is the term's weighted cost for
    one slot there (a placement term, such as ``co_residency``, counted
    with the site's background tenants only) or for the move there (a move
    term, such as ``zone_crossing``). The observation always carries their
    sum, as ``log1p_cost``; apart, a policy need not untangle them.
    """
    motion_horizons_slots: tuple[int, ...] = ()
    """Slots ahead at which the observation projects each user (empty: none).

    With horizons such as (2, 4, 8) every candidate also carries, for each
    horizon h, its latency from the access site nearest to where the user
    would be h slots on if it kept the velocity of its last slot. It reads
    the user's position, which a device's GPS or the operator's location
    service (the ETSI MEC Location API) reports, so it needs a mobility
    source that reports positions (``random-waypoint``, ``gauss-markov``).
    """
    plan_window_slots: int = 0
    """Slots a planner over drawn futures looks ahead for the observation
    (0: no planner).

    With W > 0 every candidate also carries ``plan_regret``, how much more
    the cheapest plan through it costs than the cheapest plan of all, and
    ``plan_best``, 1 at the candidate that plan starts with. The planner
    (``mecrl.planning``) draws ``plan_futures`` futures of each user from
    the mobility model, its position and its velocity, and plans the next W
    slots at their mean cost. It needs ``random-waypoint`` users, and it
    costs milliseconds per step of 64 services where the other features
    cost microseconds.
    """
    plan_futures: int = 64
    """Futures the observation's planner draws per user and slot."""
    prefetch_layers: bool = False
    """Whether cold moves pull missing layers before stopping the service."""
    calibration: str | None = None
    """Runtime calibration file replacing the default runtime profiles."""

    @property
    def tracks_motion(self) -> bool:
        """Whether observations read users' positions and velocities."""
        return bool(self.motion_horizons_slots) or self.plan_window_slots > 0

    def __post_init__(self) -> None:
        check(self.slot_s > 0, "slot_s", f"must be > 0, got {self.slot_s}")
        check(
            self.episode_slots > 0,
            "episode_slots",
            f"must be > 0, got {self.episode_slots}",
        )
        check(
            0.0 <= self.discount < 1.0,
            "discount",
            f"must be within [0, 1), got {self.discount}",
        )
        check(
            self.radio_rtt_ms >= 0,
            "radio_rtt_ms",
            f"must be >= 0, got {self.radio_rtt_ms}",
        )
        check(
            self.per_hop_ms >= 0, "per_hop_ms", f"must be >= 0, got {self.per_hop_ms}"
        )
        check(
            self.candidates >= 2, "candidates", f"must be >= 2, got {self.candidates}"
        )
        check(
            self.history_slots >= 0,
            "history_slots",
            f"must be >= 0, got {self.history_slots}",
        )
        check(
            not self.history_per_slot or self.history_slots >= 2,
            "history_per_slot",
            f"needs history_slots >= 2, got {self.history_slots}",
        )
        for term in self.term_features:
            check(
                term in TERM_NAMES,
                "term_features",
                f"unknown cost term {term!r}; terms are {', '.join(TERM_NAMES)}",
            )
        check(
            len(set(self.term_features)) == len(self.term_features),
            "term_features",
            f"names a term twice: {list(self.term_features)}",
        )
        check(
            all(h >= 1 for h in self.motion_horizons_slots),
            "motion_horizons_slots",
            f"every horizon must be >= 1, got {list(self.motion_horizons_slots)}",
        )
        check(
            self.plan_window_slots >= 0,
            "plan_window_slots",
            f"must be >= 0, got {self.plan_window_slots}",
        )
        check(
            self.plan_futures >= 1,
            "plan_futures",
            f"must be >= 1, got {self.plan_futures}",
        )
        check(len(self.services) > 0, "services", "must declare at least one class")
        for name, size in self.layers.items():
            check(size >= 0, f"layers.{name}", f"must be >= 0, got {size}")
        self._check_service_refs()
        _check_params("topology", self.topology, TOPOLOGIES)
        _check_params("mobility", self.mobility, MOBILITY, skip=1)

    def _check_service_refs(self) -> None:
        zones = set(self.sites.zones) | {"cloud"}
        for i, service in enumerate(self.services):
            for layer in service.layers:
                check(
                    layer in self.layers,
                    f"services.{i}.layers",
                    f"unknown layer {layer!r}; layers are {', '.join(self.layers)}",
                )
            for zone in service.allowed_zones:
                check(
                    zone in zones,
                    f"services.{i}.allowed_zones",
                    f"unknown zone {zone!r}; zones are {', '.join(sorted(zones))}",
                )

    @classmethod
    def from_file(cls, path: str | Path) -> ScenarioConfig:
        """Load a scenario config from a YAML or TOML file.

        A relative ``calibration`` path is taken from the file's folder.
        """
        data = load_file(path)
        calibration = data.get("calibration")
        if isinstance(calibration, str) and not Path(calibration).is_absolute():
            data["calibration"] = str(Path(path).parent / calibration)
        return from_dict(cls, data)

    def to_dict(self) -> dict[str, Any]:
        """Return the config as plain data."""
        data: dict[str, Any] = to_dict(self)
        return data

    def digest(self) -> str:
        """Return a SHA-256 of the config's canonical JSON form.

        Fields at their defaults are left out: a field added later leaves
        the digests of existing scenarios, and of the bundles and reports
        that record them, unchanged.
        """
        text = json.dumps(without_defaults(self), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()


def _check_params(
    field_name: str,
    component: ComponentConfig,
    registry: Registry[Callable[..., Any]],
    skip: int = 0,
) -> None:
    """Check that a component's kind exists and takes the given parameters."""
    try:
        factory = registry.get(component.kind)
    except KeyError as exc:
        raise ConfigError(f"{field_name}.kind", str(exc.args[0])) from None
    parameters = list(inspect.signature(factory).parameters.values())[skip:]
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
        return
    valid = {p.name for p in parameters}
    for key in component.params:
        check(
            key in valid,
            f"{field_name}.params.{key}",
            f"unknown parameter of {component.kind!r}; valid: "
            f"{', '.join(sorted(valid))}",
        )


class Scenario:
    """A built scenario: the static world, its costs and its rules.

    Args:
        config: The scenario's config.
    """

    def __init__(self, config: ScenarioConfig) -> None:
        self.config = config
        rng = np.random.default_rng(config.seed)
        self.topology = _build_topology(config.topology)
        self.runtimes: RuntimeTable = load_profiles(config.calibration)
        self.sites: SiteTable = build_sites(
            config.sites, self.topology.positions_m, len(config.layers), rng
        )
        cloud = config.sites.cloud
        self.network = Network.from_topology(
            self.topology,
            per_hop_ms=config.per_hop_ms,
            cloud=None
            if cloud is None
            else CloudLink(cloud.rtt_ms, cloud.bandwidth_mbps),
        )
        self.classes: ServiceClasses = build_classes(
            config.services, config.layers, self.sites.zone_names, self.runtimes
        )
        self.constraints = Constraints(self.sites, self.classes)
        # build the mobility source once, so a bad parameter fails here
        try:
            mobility = self.make_mobility()
        except ValueError as exc:
            raise ConfigError("mobility.params", str(exc)) from None
        if config.motion_horizons_slots and not mobility.reports_positions:
            raise ConfigError(
                "motion_horizons_slots",
                f"needs a mobility source that reports positions; "
                f"{config.mobility.kind!r} reports only access sites",
            )
        if config.plan_window_slots and not isinstance(mobility, RandomWaypoint):
            raise ConfigError(
                "plan_window_slots",
                f"the planner draws futures of random-waypoint users; "
                f"{config.mobility.kind!r} cannot be drawn forward",
            )

    @property
    def n_sites(self) -> int:
        """Number of sites, cloud included."""
        return self.sites.n_sites

    @property
    def n_access(self) -> int:
        """Number of sites a user can attach to (the edge sites)."""
        return self.sites.n_edge

    def make_mobility(self) -> MobilitySource:
        """Return a fresh instance of the scenario's mobility source."""
        factory = MOBILITY.get(self.config.mobility.kind)
        params = dict(self.config.mobility.params)
        if "slot_s" in inspect.signature(factory).parameters:
            params.setdefault("slot_s", self.config.slot_s)
        source: MobilitySource = factory(self.topology, **params)
        return source

    @cached_property
    def latency_ms(self) -> np.ndarray:
        """(A, M) access latency from each access site to each site."""
        rtt = self.network.rtt_ms[: self.n_access]
        return np.asarray(self.config.radio_rtt_ms + rtt, dtype=np.float64)

    @cached_property
    def nearest_feasible(self) -> np.ndarray:
        """(C, A, M) sites by latency from each access site, per class.

        Statically feasible sites come first, so entry ``[c, a, 0]`` is the
        feasible site nearest a user at ``a`` for class ``c``.
        """
        order = np.argsort(self.latency_ms, axis=1, kind="stable")
        feasible = self.constraints.static[:, order]
        ranked = np.argsort(~feasible, axis=2, kind="stable")
        return np.take_along_axis(np.broadcast_to(order, feasible.shape), ranked, 2)

    @cached_property
    def missing_layers_mb(self) -> np.ndarray:
        """(C, M) megabytes of each class's image missing at each site."""
        missing = ~self.sites.layer_cached
        return np.asarray(self.classes.layer_mb @ missing.T, dtype=np.float64)

    @cached_property
    def distance_cost(self) -> np.ndarray:
        """Cost of each hop distance between user and service."""
        return _hop_table(self.config.costs.distance, self.network.hops)

    @cached_property
    def migration_hop_cost(self) -> np.ndarray:
        """Cost of moving a service over each hop count."""
        return _hop_table(self.config.costs.migration, self.network.hops)


def _hop_table(shape: HopCost, hops: np.ndarray) -> np.ndarray:
    return shape.table(int(hops.max()))


def _build_topology(component: ComponentConfig) -> Topology:
    factory = TOPOLOGIES.get(component.kind)
    try:
        topology: Topology = factory(**component.params)
    except ValueError as exc:
        raise ConfigError("topology.params", str(exc)) from None
    return topology


SCENARIOS: Registry[Callable[[], ScenarioConfig]] = Registry("scenario")
"""Named scenarios; built-in ones are the YAML files shipped with mecrl."""


def _register_builtin() -> None:
    folder = resources.files("mecrl.scenarios")
    for entry in sorted(folder.iterdir(), key=lambda e: e.name):
        if entry.name.endswith((".yaml", ".toml")):
            path = Path(str(entry))
            SCENARIOS.add(path.stem, functools.partial(ScenarioConfig.from_file, path))


_register_builtin()


def load_config(name_or_path: str | Path) -> ScenarioConfig:
    """Return the config of a registered scenario, or of a config file.

    Raises:
        KeyError: If it is neither a registered name nor an existing file.
    """
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml", ".toml"):
        if not path.exists():
            raise FileNotFoundError(f"scenario file {str(path)!r} does not exist")
        return ScenarioConfig.from_file(path)
    return SCENARIOS.get(str(name_or_path))()


def load_scenario(name_or_path: str | Path) -> Scenario:
    """Build a registered scenario or a scenario config file."""
    return Scenario(load_config(name_or_path))
