"""Scenarios: built-in configs, validation, file formats, digests, the world."""

import copy
import dataclasses
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from mecrl.config import ConfigError, from_dict, without_defaults
from mecrl.costs import CostConfig, CostWeights, HopCost
from mecrl.mobility import RandomWaypoint
from mecrl.runtimes import KATA, RUNC
from mecrl.scenario import (
    SCENARIOS,
    ComponentConfig,
    Scenario,
    ScenarioConfig,
    load_config,
    load_scenario,
)
from mecrl.services import ServiceClassConfig
from mecrl.sites import SitesConfig

BUILTIN = ("city-grid", "hex-2d", "wang-1d")
"""The synthetic built-in scenarios, which need no data folder."""

YAML_TEXT = """\
name: small-city
description: Seven hexagonal cells, a cloud, two zones.
seed: 11
slot_s: 30.0
episode_slots: 12
discount: 0.8
candidates: 4
prefetch_layers: true
topology:
  kind: hex
  params: {rings: 1, spacing_m: 400.0, bandwidth_mbps: 500.0}
mobility:
  kind: random-waypoint
  params: {speed_min_mps: 2.0, speed_max_mps: 9.0}
sites:
  cpu_cores: 6.0
  memory_mb: 8192.0
  kata_fraction: 0.5
  zones: [west, east]
  untrusted_zone_pairs: [[west, east]]
  background_tenants: 1.0
  layer_cache_prob: 0.3
  cloud: {rtt_ms: 70.0, bandwidth_mbps: 800.0}
layers:
  base: 40.0
  app: 120.0
services:
  - name: web
    share: 2.0
    runtime: runc
    migration: precopy
    layers: [base, app]
    tenants: [acme, globex]
  - name: vault
    runtime: kata
    isolation: sandboxed
    state_mb: 64.0
    allowed_zones: [west, cloud]
costs:
  weights: {access_latency: 0.01, downtime: 1.0}
  migration: {const: 3.0, scale: -2.0, power: 0.7}
"""

TOML_TEXT = """\
name = "small-city"
description = "Seven hexagonal cells, a cloud, two zones."
seed = 11
slot_s = 30.0
episode_slots = 12
discount = 0.8
candidates = 4
prefetch_layers = true

[topology]
kind = "hex"
params = { rings = 1, spacing_m = 400.0, bandwidth_mbps = 500.0 }

[mobility]
kind = "random-waypoint"
params = { speed_min_mps = 2.0, speed_max_mps = 9.0 }

[sites]
cpu_cores = 6.0
memory_mb = 8192.0
kata_fraction = 0.5
zones = ["west", "east"]
untrusted_zone_pairs = [["west", "east"]]
background_tenants = 1.0
layer_cache_prob = 0.3
cloud = { rtt_ms = 70.0, bandwidth_mbps = 800.0 }

[layers]
base = 40.0
app = 120.0

[[services]]
name = "web"
share = 2.0
runtime = "runc"
migration = "precopy"
layers = ["base", "app"]
tenants = ["acme", "globex"]

[[services]]
name = "vault"
runtime = "kata"
isolation = "sandboxed"
state_mb = 64.0
allowed_zones = ["west", "cloud"]

[costs.weights]
access_latency = 0.01
downtime = 1.0

[costs.migration]
const = 3.0
scale = -2.0
power = 0.7
"""


def city_data() -> dict[str, Any]:
    return copy.deepcopy(load_config("city-grid").to_dict())


def assert_same_world(a: Scenario, b: Scenario) -> None:
    """Assert that two built scenarios hold the same world, array by array."""
    for name in (
        "positions_m",
        "cpu_cores",
        "memory_mb",
        "runtimes",
        "zone",
        "untrusted",
        "background_tenants",
        "layer_cached",
    ):
        np.testing.assert_array_equal(getattr(a.sites, name), getattr(b.sites, name))
    assert a.sites.zone_names == b.sites.zone_names
    for name in ("rtt_ms", "bandwidth_mbps", "hops"):
        np.testing.assert_array_equal(
            getattr(a.network, name), getattr(b.network, name)
        )
    for name in ("runtime", "isolation", "mode", "share_cdf", "memory_mb", "layer_mb"):
        np.testing.assert_array_equal(
            getattr(a.classes, name), getattr(b.classes, name)
        )
    np.testing.assert_array_equal(a.constraints.static, b.constraints.static)
    np.testing.assert_array_equal(a.latency_ms, b.latency_ms)
    np.testing.assert_array_equal(a.missing_layers_mb, b.missing_layers_mb)


def test_registry_lists_the_builtin_scenarios() -> None:
    names = SCENARIOS.names()

    assert set(BUILTIN) <= set(names)
    assert names == sorted(names)


@pytest.mark.parametrize("name", SCENARIOS.names())
def test_every_registered_config_loads(name: str) -> None:
    config = load_config(name)

    assert config.name == name
    assert from_dict(ScenarioConfig, config.to_dict()) == config


@pytest.mark.parametrize(
    ("name", "n_edge", "has_cloud", "classes"),
    [
        ("city-grid", 61, True, ("ar-render", "vehicle-assist", "game-server")),
        ("hex-2d", 331, False, ("app",)),
        ("wang-1d", 21, False, ("app",)),
    ],
)
def test_builtin_scenario_loads_and_builds(
    name: str, n_edge: int, has_cloud: bool, classes: tuple[str, ...]
) -> None:
    # the figures come from each scenario's description
    config = load_config(name)
    scenario = Scenario(config)

    assert config.name == name
    assert config.description
    assert scenario.n_access == n_edge
    assert scenario.n_sites == n_edge + int(has_cloud)
    assert scenario.sites.has_cloud is has_cloud
    assert scenario.classes.names == classes
    assert scenario.latency_ms.shape == (n_edge, scenario.n_sites)
    assert scenario.network.rtt_ms.shape == (scenario.n_sites, scenario.n_sites)
    # every class can run somewhere, so an episode can start
    assert scenario.constraints.static.any(axis=1).all()


def test_load_scenario_by_name_builds_the_registered_config() -> None:
    scenario = load_scenario("wang-1d")

    assert scenario.config == load_config("wang-1d")


def test_city_grid_world_matches_its_description() -> None:
    scenario = load_scenario("city-grid")
    sites = scenario.sites
    edge = slice(0, sites.n_edge)

    # half the edge hosts offer kata; all offer runc
    assert abs(sites.runtimes[edge, KATA].sum() - 0.5 * sites.n_edge) <= 0.5
    assert sites.runtimes[:, RUNC].all()
    # three zones striped west to east, then the cloud
    assert sites.zone_names == ("west", "central", "east", "cloud")
    x = sites.positions_m[edge, 0]
    zone = sites.zone[edge]
    for west, east in ((0, 1), (1, 2)):
        assert x[zone == west].max() <= x[zone == east].min()
    assert np.ptp(np.bincount(zone)) <= 1
    # state never moves between west and east, in either direction
    expected = np.zeros((4, 4), bool)
    expected[0, 2] = expected[2, 0] = True
    np.testing.assert_array_equal(sites.untrusted, expected)
    # the cloud: last, unlimited, every runtime, every layer, no neighbours
    cloud = sites.n_sites - 1
    assert sites.zone[cloud] == 3
    assert np.isinf(sites.cpu_cores[cloud])
    assert np.isinf(sites.memory_mb[cloud])
    assert sites.runtimes[cloud].all()
    assert sites.layer_cached[cloud].all()
    assert sites.background_tenants[cloud] == 0
    assert np.all(sites.cpu_cores[edge] == 32.0)


def test_radio_only_sites_offer_no_runtime() -> None:
    config = load_config("city-grid")
    sites = dataclasses.replace(config.sites, host_fraction=0.5, kata_fraction=0.5)
    scenario = Scenario(dataclasses.replace(config, sites=sites))
    edge = scenario.sites.runtimes[: scenario.n_access]

    hosts = edge.any(axis=1)
    assert abs(hosts.sum() - 0.5 * 61) <= 0.5
    # every host offers runc; half of them offer kata as well
    np.testing.assert_array_equal(edge[:, RUNC], hosts)
    assert abs(edge[:, KATA].sum() - 0.5 * hosts.sum()) <= 0.5
    assert not (edge[:, KATA] & ~hosts).any()
    # no class may run on a radio-only site; the cloud still hosts
    assert not scenario.constraints.static[:, : scenario.n_access][:, ~hosts].any()
    assert scenario.constraints.static[:, -1].any()


def test_same_config_builds_the_same_world_and_its_seed_changes_it() -> None:
    config = load_config("city-grid")

    assert_same_world(Scenario(config), Scenario(config))
    other = Scenario(dataclasses.replace(config, seed=config.seed + 1))
    # which 30 of the 61 hosts offer kata is drawn from the seed
    kata = Scenario(config).sites.runtimes[:, KATA]
    assert not np.array_equal(other.sites.runtimes[:, KATA], kata)
    assert other.sites.runtimes[:, KATA].sum() == kata.sum()


def test_make_mobility_passes_the_slot_length() -> None:
    scenario = load_scenario("city-grid")

    source = scenario.make_mobility()

    assert isinstance(source, RandomWaypoint)
    assert source.slot_s == scenario.config.slot_s == 30.0
    assert source.speed_max_mps == 14.0


def test_python_config_equals_the_builtin_file() -> None:
    # written from the values in wang-1d.yaml
    config = ScenarioConfig(
        name="wang-1d",
        description=load_config("wang-1d").description,
        seed=0,
        slot_s=60.0,
        episode_slots=200,
        discount=0.9,
        radio_rtt_ms=5.0,
        per_hop_ms=1.0,
        candidates=8,
        topology=ComponentConfig(
            "line",
            {
                "n_sites": 21,
                "spacing_m": 1000.0,
                "bandwidth_mbps": 1000.0,
                "ring": True,
            },
        ),
        mobility=ComponentConfig("random-walk", {"move_prob": 0.6}),
        sites=SitesConfig(
            cpu_cores=1000.0,
            memory_mb=1000000.0,
            kata_fraction=1.0,
            layer_cache_prob=1.0,
        ),
        services=(
            ServiceClassConfig(
                name="app",
                runtime="runc",
                isolation="shared",
                migration="cold",
                state_mb=100.0,
                slo_ms=100.0,
            ),
        ),
        costs=CostConfig(
            weights=CostWeights(
                access_latency=0.0,
                slo_violation=0.0,
                co_residency=0.0,
                distance=1.0,
                downtime=0.0,
                bytes_moved=0.0,
                zone_crossing=0.0,
                migration=1.0,
            ),
            distance=HopCost(const=1.0, scale=-1.0, power=0.8),
            migration=HopCost(const=2.0, scale=-1.0, power=0.8),
        ),
    )

    assert config == load_config("wang-1d")
    assert config.digest() == load_config("wang-1d").digest()
    assert_same_world(Scenario(config), load_scenario("wang-1d"))


def test_yaml_and_toml_files_build_identical_scenarios(tmp_path: Path) -> None:
    (tmp_path / "small.yaml").write_text(YAML_TEXT)
    (tmp_path / "small.toml").write_text(TOML_TEXT)

    from_yaml = ScenarioConfig.from_file(tmp_path / "small.yaml")
    from_toml = ScenarioConfig.from_file(tmp_path / "small.toml")

    assert from_yaml == from_toml
    assert from_yaml.digest() == from_toml.digest()
    assert from_yaml.services[1].allowed_zones == ("west", "cloud")
    assert from_yaml.costs.weights.access_latency == 0.01
    assert from_yaml.costs.weights.slo_violation == CostWeights().slo_violation
    assert_same_world(Scenario(from_yaml), Scenario(from_toml))


def test_load_config_accepts_a_file_path(tmp_path: Path) -> None:
    path = tmp_path / "small.yaml"
    path.write_text(YAML_TEXT)

    config = load_config(path)

    assert config == ScenarioConfig.from_file(path)
    assert load_config(str(path)) == config
    assert load_scenario(path).n_sites == 7 + 1


def test_load_config_of_an_unknown_name_lists_the_known_ones() -> None:
    known = ", ".join(SCENARIOS.names())
    with pytest.raises(KeyError, match=f"unknown scenario 'atlantis'; known: {known}"):
        load_config("atlantis")
    assert {"city-grid", "hex-2d", "wang-1d"} <= set(known.split(", "))


def test_digest_is_stable_and_tracks_every_field() -> None:
    config = load_config("city-grid")
    digest = config.digest()

    assert re.fullmatch(r"[0-9a-f]{64}", digest)
    assert load_config("city-grid").digest() == digest
    assert from_dict(ScenarioConfig, config.to_dict()).digest() == digest

    changed = [
        dataclasses.replace(config, slot_s=31.0),
        dataclasses.replace(config, seed=8),
        dataclasses.replace(
            config, sites=dataclasses.replace(config.sites, kata_fraction=0.25)
        ),
        dataclasses.replace(
            config,
            services=(
                dataclasses.replace(config.services[0], state_mb=513.0),
                *config.services[1:],
            ),
        ),
        dataclasses.replace(config, layers={**config.layers, "ar-engine": 351.0}),
        dataclasses.replace(
            config,
            topology=ComponentConfig("hex", {**config.topology.params, "rings": 3}),
        ),
    ]
    digests = {c.digest() for c in changed}
    assert digest not in digests
    assert len(digests) == len(changed)
    assert len({load_config(name).digest() for name in BUILTIN}) == len(BUILTIN)


def test_digest_leaves_out_fields_at_their_defaults() -> None:
    config = load_config("city-grid")
    assert config.history_slots == 0  # the default

    data = without_defaults(config)
    assert "history_slots" not in data
    assert "slot_s" in data
    # a later version's config: one field more, whose default keeps the old
    # behaviour; the same scenario keeps its digest
    later = dataclasses.make_dataclass(
        "LaterScenarioConfig",
        [("new_knob", int, dataclasses.field(default=0))],
        bases=(ScenarioConfig,),
        frozen=True,
    )
    fields = {f.name: getattr(config, f.name) for f in dataclasses.fields(config)}
    assert later(**fields).digest() == config.digest()
    assert later(**fields, new_knob=1).digest() != config.digest()
    assert dataclasses.replace(config, history_slots=3).digest() != config.digest()


@pytest.mark.parametrize(
    ("path", "value", "field", "message"),
    [
        ("slot_s", -1.0, "slot_s", "must be > 0"),
        ("slot_s", 0.0, "slot_s", "must be > 0"),
        ("discount", 1.0, "discount", r"must be within \[0, 1\)"),
        ("discount", -0.1, "discount", r"must be within \[0, 1\)"),
        ("episode_slots", 0, "episode_slots", "must be > 0"),
        ("candidates", 1, "candidates", "must be >= 2"),
        ("radio_rtt_ms", -1.0, "radio_rtt_ms", "must be >= 0"),
        ("services", [], "services", "at least one class"),
        ("layers.ar-engine", -5.0, "layers.ar-engine", "must be >= 0"),
        ("services.0.runtime", "docker", "services.0.runtime", "'docker'"),
        ("services.0.isolation", "open", "services.0.isolation", "'open'"),
        ("services.0.share", 0.0, "services.0.share", "must be > 0"),
        ("services.0.tenants", [], "services.0.tenants", "at least one tenant"),
        (
            "services.0.layers",
            ["debian-base", "nope"],
            "services.0.layers",
            "unknown layer 'nope'",
        ),
        (
            "services.2.allowed_zones",
            ["west", "north"],
            "services.2.allowed_zones",
            "unknown zone 'north'",
        ),
        (
            "sites.untrusted_zone_pairs",
            [["west", "north"]],
            "sites.untrusted_zone_pairs.0",
            "unknown zone 'north'",
        ),
        ("sites.kata_fraction", 1.5, "sites.kata_fraction", r"within \[0, 1\]"),
        ("sites.host_fraction", -0.1, "sites.host_fraction", r"within \[0, 1\]"),
        ("sites.cpu_cores", 0.0, "sites.cpu_cores", "must be > 0"),
        ("sites.zones", ["a", "a"], "sites.zones", "repeat"),
        ("sites.zones", ["cloud"], "sites.zones", "reserved"),
        ("costs.distance.power", 0.0, "costs.distance.power", "must be > 0"),
        ("topology.kind", "torus", "topology.kind", "unknown topology 'torus'"),
        ("mobility.kind", "teleport", "mobility.kind", "unknown mobility source"),
    ],
)
def test_bad_value_names_its_field(
    path: str, value: Any, field: str, message: str
) -> None:
    data = city_data()
    *parents, last = path.split(".")
    node: Any = data
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node[part]
    node[last] = value

    with pytest.raises(ConfigError, match=rf"^{re.escape(field)}: .*{message}") as info:
        from_dict(ScenarioConfig, data)

    assert info.value.field == field


def test_sandboxed_service_in_runc_names_the_runtime() -> None:
    data = city_data()
    data["services"][1]["runtime"] = "runc"  # vehicle-assist is sandboxed

    with pytest.raises(
        ConfigError,
        match=r"^services\.1\.runtime: a sandboxed service must run in kata",
    ):
        from_dict(ScenarioConfig, data)


def test_kata_service_with_precopy_names_the_migration() -> None:
    data = city_data()
    data["services"][1]["migration"] = "precopy"  # vehicle-assist runs kata

    with pytest.raises(
        ConfigError, match=r"^services\.1\.migration: kata cannot checkpoint"
    ):
        from_dict(ScenarioConfig, data)


def test_configs_written_in_python_are_checked_too() -> None:
    config = load_config("wang-1d")

    with pytest.raises(ConfigError, match=r"^discount: must be within"):
        dataclasses.replace(config, discount=1.0)
    with pytest.raises(ConfigError, match=r"^runtime: a sandboxed service"):
        ServiceClassConfig(name="x", runtime="runc", isolation="sandboxed")
    with pytest.raises(ConfigError, match=r"^migration: kata cannot checkpoint"):
        ServiceClassConfig(name="x", runtime="kata", migration="postcopy")


def test_bad_topology_parameter_value_names_the_topology() -> None:
    data = city_data()
    data["topology"]["params"]["rings"] = -1
    config = from_dict(ScenarioConfig, data)

    with pytest.raises(ConfigError, match=r"^topology\.params: rings") as info:
        Scenario(config)

    assert info.value.field == "topology.params"


def test_bad_mobility_parameter_value_fails_when_the_scenario_is_built() -> None:
    data = city_data()
    data["mobility"]["params"]["speed_min_mps"] = -1.0
    config = from_dict(ScenarioConfig, data)

    with pytest.raises(ConfigError, match=r"^mobility\.params"):
        Scenario(config)


def test_configs_with_the_same_digest_build_the_same_world() -> None:
    config = load_config("city-grid")
    reordered = dataclasses.replace(
        config, layers=dict(reversed(list(config.layers.items())))
    )
    assert list(reordered.layers) != list(config.layers)

    if reordered.digest() == config.digest():
        assert_same_world(Scenario(config), Scenario(reordered))
