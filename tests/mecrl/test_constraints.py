"""Hard constraints: every placement the mask allows is truly feasible.

The checks here recompute feasibility from the scenario's config and the
backend's placement (``site``, ``cls``, ``tenant``), not from the rules of
:mod:`mecrl.constraints`, over random scenarios that mix Kata and runc
hosts and radio-only cells, trust zones, untrusted zone pairs, background
tenants, tight capacities, sandboxed and dedicated services and an optional
cloud.
"""

import itertools
from dataclasses import dataclass

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from mecrl.backend import SimBackend, spawn_services
from mecrl.constraints import Occupancy
from mecrl.envs.fleet import FleetVectorEnv
from mecrl.envs.single import MigrationEnv
from mecrl.evaluate import episode_key
from mecrl.runtimes import KATA, RUNTIME_NAMES
from mecrl.scenario import ComponentConfig, Scenario, ScenarioConfig, load_scenario
from mecrl.services import ServiceClassConfig
from mecrl.sites import CloudConfig, SitesConfig

ZONES = ("west", "central", "east")
TENANTS = ("t0", "t1", "t2")


@st.composite
def service_classes(
    draw: st.DrawFn, zones: tuple[str, ...], index: int
) -> ServiceClassConfig:
    isolation = draw(st.sampled_from(("shared", "sandboxed", "dedicated")))
    runtime = (
        "kata" if isolation == "sandboxed" else draw(st.sampled_from(("runc", "kata")))
    )
    migration = (
        "cold"
        if runtime == "kata"
        else draw(st.sampled_from(("cold", "precopy", "postcopy")))
    )
    allowed = draw(st.lists(st.sampled_from(zones), unique=True, max_size=len(zones)))
    tenants = draw(st.lists(st.sampled_from(TENANTS), unique=True, min_size=1))
    return ServiceClassConfig(
        name=f"class-{index}",
        runtime=runtime,
        isolation=isolation,
        migration=migration,
        share=draw(st.sampled_from((0.5, 1.0, 2.0))),
        state_mb=draw(st.sampled_from((16.0, 256.0))),
        cpu_cores=draw(st.sampled_from((0.5, 1.0, 2.0))),
        memory_mb=draw(st.sampled_from((256.0, 1024.0))),
        tenants=tuple(tenants),
        allowed_zones=tuple(allowed),
    )


@st.composite
def scenario_configs(draw: st.DrawFn) -> ScenarioConfig:
    if draw(st.booleans()):
        topology = ComponentConfig(
            "hex", {"rings": draw(st.integers(1, 2)), "spacing_m": 500.0}
        )
    else:
        topology = ComponentConfig(
            "random-geometric",
            {
                "n_sites": draw(st.integers(5, 14)),
                "area_m": 4000.0,
                "radius_m": 1500.0,
                "seed": draw(st.integers(0, 1000)),
            },
        )
    zones = ZONES[: draw(st.integers(1, 3))]
    pairs = tuple(p for p in itertools.combinations(zones, 2) if draw(st.booleans()))
    has_cloud = draw(st.booleans())
    sites = SitesConfig(
        cpu_cores=draw(st.sampled_from((2.0, 4.0, 8.0))),
        memory_mb=draw(st.sampled_from((2048.0, 4096.0, 16384.0))),
        host_fraction=draw(st.sampled_from((1.0, 0.6))),
        kata_fraction=draw(st.sampled_from((0.0, 0.3, 0.6, 1.0))),
        zones=zones,
        untrusted_zone_pairs=pairs,
        background_tenants=draw(st.sampled_from((0.0, 0.3, 1.0))),
        cloud=CloudConfig(rtt_ms=50.0) if has_cloud else None,
    )
    all_zones = (*zones, "cloud") if has_cloud else zones
    n_classes = draw(st.integers(1, 3))
    services = tuple(draw(service_classes(all_zones, i)) for i in range(n_classes))
    return ScenarioConfig(
        name="random",
        seed=draw(st.integers(0, 1000)),
        topology=topology,
        mobility=ComponentConfig("random-walk", {"move_prob": 0.8}),
        services=services,
        sites=sites,
        episode_slots=8,
        candidates=4,
    )


@dataclass
class Oracle:
    """Feasibility recomputed from the config and the placement arrays."""

    scenario: Scenario

    def __post_init__(self) -> None:
        config = self.scenario.config
        runtimes = self.scenario.runtimes.profiles
        self.services = config.services
        self.cpu = np.array([c.cpu_cores for c in config.services])
        self.memory = np.array(
            [
                c.memory_mb + runtimes[c.runtime].memory_overhead_mb
                for c in config.services
            ]
        )
        self.kata = np.array([c.runtime == "kata" for c in config.services])
        self.dedicated = np.array([c.isolation == "dedicated" for c in config.services])
        self.untrusted = {frozenset(p) for p in config.sites.untrusted_zone_pairs}

    def zone(self, site: int) -> str:
        sites = self.scenario.sites
        return sites.zone_names[sites.zone[site]]

    def may_move(self, source: int, target: int) -> bool:
        pair = frozenset((self.zone(source), self.zone(target)))
        return source == target or pair not in self.untrusted

    def static_ok(self, cls: int, site: int) -> bool:
        """Runtime, sandbox, zone, fits alone, and no background if dedicated."""
        sites, service = self.scenario.sites, self.services[cls]
        return bool(
            sites.runtimes[site, RUNTIME_NAMES.index(service.runtime)]
            and (service.isolation != "sandboxed" or sites.runtimes[site, KATA])
            and (not service.allowed_zones or self.zone(site) in service.allowed_zones)
            and self.cpu[cls] <= sites.cpu_cores[site]
            and self.memory[cls] <= sites.memory_mb[site]
            and not (self.dedicated[cls] and sites.background_tenants[site] > 0)
        )

    def clash(self, cls_a: int, tenant_a: int, cls_b: int, tenant_b: int) -> bool:
        """Whether two services may not share a host (the dedicated rule)."""
        either = self.dedicated[cls_a] or self.dedicated[cls_b]
        both_kata = self.kata[cls_a] and self.kata[cls_b]
        return bool(tenant_a != tenant_b and either and not both_kata)

    def usage(self, backend: SimBackend) -> tuple[np.ndarray, np.ndarray]:
        n_sites = self.scenario.n_sites
        cpu = np.bincount(backend.site, self.cpu[backend.cls], minlength=n_sites)
        memory = np.bincount(backend.site, self.memory[backend.cls], minlength=n_sites)
        return cpu, memory

    def may_join(self, backend: SimBackend, n: int, target: int) -> bool:
        """Whether service ``n`` alone may move to ``target`` now (coupled)."""
        cls, tenant = int(backend.cls[n]), int(backend.tenant[n])
        cpu, memory = self.usage(backend)
        sites = self.scenario.sites
        if cpu[target] + self.cpu[cls] > sites.cpu_cores[target]:
            return False
        if memory[target] + self.memory[cls] > sites.memory_mb[target]:
            return False
        there = np.flatnonzero(backend.site == target)
        return not any(
            self.clash(cls, tenant, int(backend.cls[m]), int(backend.tenant[m]))
            for m in there
        )

    def check_placement(self, backend: SimBackend) -> None:
        """Assert every hard rule on the backend's current placement."""
        sites, names = self.scenario.sites, self.scenario.classes.tenant_names
        for n, (cls, tenant, site) in enumerate(
            zip(backend.cls, backend.tenant, backend.site, strict=True)
        ):
            assert names[tenant] in self.services[cls].tenants
            assert self.static_ok(int(cls), int(site)), f"service {n} at {site}"
        if backend.occupancy is None:
            return
        cpu, memory = self.usage(backend)
        assert np.all(cpu <= sites.cpu_cores + 1e-9)
        assert np.all(memory <= sites.memory_mb + 1e-9)
        np.testing.assert_allclose(backend.occupancy.cpu_used, cpu, atol=1e-9)
        np.testing.assert_allclose(backend.occupancy.memory_used, memory, atol=1e-9)
        for site in np.unique(backend.site):
            here = np.flatnonzero(backend.site == site)
            for a, b in itertools.combinations(here, 2):
                assert not self.clash(
                    int(backend.cls[a]),
                    int(backend.tenant[a]),
                    int(backend.cls[b]),
                    int(backend.tenant[b]),
                ), f"services {a} and {b} clash at site {site}"

    def check_step(
        self, backend: SimBackend, before: np.ndarray, refused: np.ndarray
    ) -> None:
        """Assert the placement after a step, and that no move crossed zones."""
        self.check_placement(backend)
        for n, (source, target) in enumerate(zip(before, backend.site, strict=True)):
            assert self.may_move(int(source), int(target)), f"service {n}"
        assert np.all(backend.site[refused] == before[refused])


def build_or_reject(config: ScenarioConfig) -> Scenario:
    scenario = Scenario(config)
    # a class that fits nowhere cannot start an episode; such worlds are
    # checked by test_reset_refuses_a_class_that_fits_nowhere
    oracle = Oracle(scenario)
    assume(
        all(
            any(oracle.static_ok(c, s) for s in range(scenario.n_sites))
            for c in range(len(config.services))
        )
    )
    return scenario


RANDOM_WORLDS = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)


@RANDOM_WORLDS
@given(
    config=scenario_configs(),
    service=st.integers(0, 50),
    seed=st.integers(0, 2**16),
    action_space=st.sampled_from(("candidates", "sites")),
)
def test_single_env_mask_allows_only_feasible_sites(
    config: ScenarioConfig, service: int, seed: int, action_space: str
) -> None:
    scenario = build_or_reject(config)
    oracle = Oracle(scenario)
    env = MigrationEnv(scenario, action_space=action_space)
    env.reset(seed=seed, options={"service": service})
    backend = env.backend
    oracle.check_placement(backend)
    rng = np.random.default_rng(seed)

    for _ in range(config.episode_slots):
        mask, sites = env.action_masks(), env.candidate_sites()
        here, cls = int(backend.site[0]), int(backend.cls[0])
        if action_space == "sites":
            np.testing.assert_array_equal(sites, np.arange(scenario.n_sites))
            assert mask[here]
        else:
            assert mask[0]
            assert sites[0] == here
        for target in sites[mask]:
            assert oracle.static_ok(cls, int(target))
            assert oracle.may_move(here, int(target))
        before = backend.site.copy()
        _, _, _, _, info = env.step(int(rng.choice(np.flatnonzero(mask))))
        assert not info["refused"]
        oracle.check_step(backend, before, np.array([info["refused"]]))


@RANDOM_WORLDS
@given(
    config=scenario_configs(),
    n_services=st.integers(12, 40),
    seed=st.integers(0, 2**16),
)
def test_fleet_mask_allows_only_feasible_sites(
    config: ScenarioConfig, n_services: int, seed: int
) -> None:
    scenario = build_or_reject(config)
    oracle = Oracle(scenario)
    env = FleetVectorEnv(n_services, scenario, coupled=True)
    try:
        env.reset(seed=seed)
    except ValueError as exc:
        # greedy first placement may find no room; that world is skipped
        if "cannot hold" not in str(exc):
            raise
        assume(False)
    backend = env.core.backend
    oracle.check_placement(backend)
    rng = np.random.default_rng(seed)

    for _ in range(config.episode_slots - 1):
        mask, sites = env.action_masks(), env.candidate_sites()
        assert mask[:, 0].all()
        np.testing.assert_array_equal(sites[:, 0], backend.site)
        for n, k in zip(*np.nonzero(mask[:, 1:]), strict=True):
            here, target = int(backend.site[n]), int(sites[n, k + 1])
            assert oracle.static_ok(int(backend.cls[n]), target)
            assert oracle.may_move(here, target)
            assert oracle.may_join(backend, n, target), f"service {n} to {target}"
        actions = np.array([rng.choice(np.flatnonzero(row)) for row in mask])
        before = backend.site.copy()
        _, _, _, truncated, infos = env.step(actions)
        assert not truncated.any()
        oracle.check_step(backend, before, infos["refused"])


@RANDOM_WORLDS
@given(
    config=scenario_configs(),
    n_services=st.integers(12, 40),
    seed=st.integers(0, 2**16),
)
def test_backend_refuses_unmasked_infeasible_targets(
    config: ScenarioConfig, n_services: int, seed: int
) -> None:
    scenario = build_or_reject(config)
    oracle = Oracle(scenario)
    backend = SimBackend(scenario, coupled=True)
    try:
        backend.reset(episode_key(seed), np.arange(n_services))
    except ValueError as exc:
        # greedy first placement may find no room; that world is skipped
        if "cannot hold" not in str(exc):
            raise
        assume(False)
    rng = np.random.default_rng(seed)

    for _ in range(4):
        target = rng.integers(0, scenario.n_sites, n_services)
        before = backend.site.copy()
        statically_bad = np.array(
            [
                not (
                    oracle.static_ok(int(c), int(t)) and oracle.may_move(int(s), int(t))
                )
                for c, s, t in zip(backend.cls, before, target, strict=True)
            ]
        )

        result = backend.step(target)

        moved = target != before
        assert np.all(result.refused[statically_bad & moved])
        np.testing.assert_array_equal(result.refused, target != backend.site)
        np.testing.assert_array_equal(result.moved, backend.site != before)
        oracle.check_step(backend, before, result.refused)


@settings(max_examples=20, deadline=None)
@given(config=scenario_configs(), service=st.integers(0, 50))
def test_reset_refuses_a_class_that_fits_nowhere(
    config: ScenarioConfig, service: int
) -> None:
    scenario = Scenario(config)
    oracle = Oracle(scenario)
    backend = SimBackend(scenario, coupled=False)
    key, ids = episode_key(0), np.array([service])
    cls = int(spawn_services(scenario, key, ids)[0][0])

    if any(oracle.static_ok(cls, s) for s in range(scenario.n_sites)):
        backend.reset(key, ids)
        assert backend.cls[0] == cls
        assert oracle.static_ok(cls, int(backend.site[0]))
    else:
        name = scenario.classes.names[cls]
        with pytest.raises(ValueError, match=f"class '{name}' fits at no site"):
            backend.reset(key, ids)


def city_backend(coupled: bool, n_services: int = 60) -> SimBackend:
    backend = SimBackend(load_scenario("city-grid"), coupled=coupled)
    backend.reset(episode_key(0), np.arange(n_services))
    return backend


@pytest.mark.parametrize("coupled", [False, True])
def test_sandboxed_service_sent_to_a_runc_only_host_is_refused(coupled: bool) -> None:
    backend = city_backend(coupled)
    scenario = backend.scenario
    n = int(
        np.flatnonzero(scenario.classes.names.index("vehicle-assist") == backend.cls)[0]
    )
    runc_only = np.flatnonzero(~scenario.sites.runtimes[:, KATA])
    before = backend.site.copy()
    target = before.copy()
    target[n] = runc_only[0]

    result = backend.step(target)

    assert result.refused[n]
    assert not result.moved[n]
    assert backend.site[n] == before[n]
    assert result.terms["downtime"][n] == 0.0
    assert result.refused.sum() == 1


@pytest.mark.parametrize("coupled", [False, True])
def test_move_between_untrusted_zones_is_refused(coupled: bool) -> None:
    backend = city_backend(coupled)
    sites = backend.scenario.sites
    west, east = sites.zone_names.index("west"), sites.zone_names.index("east")
    runc = backend.scenario.classes.runtime == RUNTIME_NAMES.index("runc")
    candidates = np.flatnonzero((sites.zone[backend.site] == west) & runc[backend.cls])
    n = int(candidates[0])
    target = backend.site.copy()
    # an east host with no background work, so only the zone rule forbids it
    east_sites = np.flatnonzero((sites.zone == east) & (sites.background_tenants == 0))
    target[n] = east_sites[0]

    result = backend.step(target)

    assert result.refused[n]
    assert backend.site[n] != east_sites[0]


def test_move_onto_a_full_host_is_refused() -> None:
    config = ScenarioConfig(
        name="two-hosts",
        topology=ComponentConfig("line", {"n_sites": 2}),
        mobility=ComponentConfig("random-walk", {"move_prob": 0.0, "start_site": 0}),
        sites=SitesConfig(cpu_cores=1.0, memory_mb=4096.0),
        services=(ServiceClassConfig(name="app", cpu_cores=1.0),),
        candidates=2,
    )
    backend = SimBackend(Scenario(config), coupled=True)
    backend.reset(episode_key(0), np.arange(2))
    # both users sit at site 0; the second service found room only at site 1
    np.testing.assert_array_equal(backend.site, [0, 1])

    result = backend.step(np.array([1, 1]))

    assert result.refused[0]
    assert not result.refused[1]
    np.testing.assert_array_equal(backend.site, [0, 1])
    uncoupled = SimBackend(Scenario(config), coupled=False)
    uncoupled.reset(episode_key(0), np.arange(2))
    np.testing.assert_array_equal(uncoupled.site, [0, 0])


@pytest.mark.parametrize("n", [1, 20, 150, 1000])
def test_admits_reads_the_admission_table(n: int) -> None:
    # city-grid has dedicated services and fills up: both rules refuse some;
    # small batches compute their entries alone, large ones read the table
    scenario = load_scenario("city-grid")
    rng = np.random.default_rng(1)
    occupancy = Occupancy(scenario.constraints, n_tenants=4)
    n_classes, n_sites = scenario.classes.n_classes, scenario.n_sites
    occupancy.add(
        rng.integers(0, n_classes, 400),
        rng.integers(0, 4, 400),
        rng.integers(0, n_sites, 400),
    )
    admitted, expected = [], []
    for _ in range(max(1, 2000 // n)):
        cls = rng.integers(0, n_classes, (n, 1))
        tenant = rng.integers(0, 4, (n, 1))
        site = rng.integers(0, n_sites, (n, 2))
        admitted.append(occupancy.admits(cls, tenant, site))
        expected.append(occupancy.admit_table()[site, cls, tenant])

    np.testing.assert_array_equal(np.concatenate(admitted), np.concatenate(expected))
    assert np.concatenate(admitted).any()
    assert not np.concatenate(admitted).all()
