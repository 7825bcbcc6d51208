from pathlib import Path

import numpy as np
import pytest
import yaml
from testbedkit import SPEC

from mecrl.config import ConfigError, from_dict
from mecrl.scenario import load_scenario
from mecrl.testbed.forwarder import TapLink, read_links, write_links
from mecrl.testbed.spec import KATA_HANDLER, RUNC_HANDLER, TestbedSpec


def spec_with(**changes: object) -> dict[str, object]:
    return {**SPEC, **changes}


def test_reads_a_yaml_file(tmp_path: Path) -> None:
    path = tmp_path / "testbed.yaml"
    path.write_text(yaml.safe_dump(SPEC))
    spec = TestbedSpec.from_file(path)
    assert [h.name for h in spec.hosts] == ["h1", "h2", "h3"]
    assert spec.host("h1").zone == "west"
    assert spec.links[1].bandwidth_mbps == 50.0


def test_unknown_key_is_named_with_the_valid_ones() -> None:
    data = spec_with(user={"access_host": "h1", "radio_ms": 3})
    with pytest.raises(
        ConfigError,
        match=r"^user\.radio_ms: unknown key; valid keys are: "
        r"access_host, bandwidth_mbps, radio_rtt_ms$",
    ):
        from_dict(TestbedSpec, data)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"hosts": [{"name": "H1"}]}, r"hosts\.0\.name: must be a lower-case letter"),
        ({"hosts": [{"name": "user"}]}, r"other than 'user'"),
        (
            {"hosts": [{"name": "h1"}, {"name": "h1"}]},
            r"hosts: duplicate host names: \['h1'\]",
        ),
        (
            {"hosts": [{"name": "h1", "runtime": "kata", "can_checkpoint": True}]},
            r"hosts\.0\.can_checkpoint: kata hosts cannot checkpoint",
        ),
        (
            {"links": [{"hosts": ["h1", "h9"], "delay_ms": 1, "bandwidth_mbps": 1}]},
            r"links\.0\.hosts: unknown host 'h9'",
        ),
        (
            {"links": [{"hosts": ["h1", "h2"], "delay_ms": -1, "bandwidth_mbps": 1}]},
            r"links\.0\.delay_ms: must be a finite number >= 0",
        ),
        (
            {"links": [{"hosts": ["h1", "h2"], "delay_ms": 1, "bandwidth_mbps": 1}]},
            r"links: must connect every host",
        ),
        ({"user": {"access_host": "h7"}}, r"user\.access_host: unknown host 'h7'"),
        ({"kata_handler": "io.containerd.crun"}, r"kata_handler: must be"),
        ({"mtu": 500}, r"mtu: must be at least 1280"),
    ],
)
def test_invalid_specs_are_refused(changes: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        from_dict(TestbedSpec, spec_with(**changes))


def test_duplicate_link_is_refused() -> None:
    link = {"hosts": ["h2", "h1"], "delay_ms": 1, "bandwidth_mbps": 1}
    with pytest.raises(ConfigError, match=r"links\.2: duplicate link"):
        from_dict(TestbedSpec, spec_with(links=[*SPEC["links"], link]))  # type: ignore[list-item]


def test_rtts_follow_minimum_delay_paths_and_the_access_host() -> None:
    spec = from_dict(TestbedSpec, SPEC)
    assert spec.rtt_ms("h1", "h3") == pytest.approx(10.0)
    assert spec.rtt_ms("h3", "h1") == pytest.approx(10.0)
    assert spec.rtt_ms("user", "h1") == pytest.approx(8.0)
    assert spec.rtt_ms("user", "h3") == pytest.approx(18.0)
    assert spec.rtt_ms("user", "h3", access_host="h3") == pytest.approx(8.0)
    assert spec.rtt_ms("h2", "h2") == 0.0
    with pytest.raises(KeyError, match="unknown host 'h4'"):
        spec.rtt_ms("user", "h4")


def test_paths_take_the_faster_route_and_the_same_links_both_ways() -> None:
    links = [
        *SPEC["links"],  # type: ignore[list-item]
        {"hosts": ["h1", "h3"], "delay_ms": 4.0, "bandwidth_mbps": 100},
    ]
    spec = from_dict(TestbedSpec, spec_with(links=links))
    paths = spec.paths()
    assert paths["h1"]["h3"] == ["h1", "h3"]  # 4 ms direct, 5 ms through h2
    assert paths["h3"]["h1"] == ["h3", "h1"]
    assert paths["h1"]["h2"] == ["h1", "h2"]
    assert spec.rtt_ms("h1", "h3") == pytest.approx(8.0)


def test_runtime_handlers_and_checkpointing() -> None:
    spec = from_dict(TestbedSpec, SPEC)
    assert spec.runtime_handler("h1") == RUNC_HANDLER
    # kata hosts run the runc stand-in unless told where Kata is installed
    assert spec.runtime_handler("h2") == RUNC_HANDLER
    assert spec.host("h1").checkpoints
    assert not spec.host("h2").checkpoints
    real_kata = from_dict(TestbedSpec, spec_with(kata_handler=KATA_HANDLER))
    assert real_kata.runtime_handler("h2") == KATA_HANDLER


@pytest.mark.parametrize("name", ["city-grid", "wang-1d"])
def test_from_scenario_keeps_the_scenarios_rtts(name: str) -> None:
    scenario = load_scenario(name)
    spec = TestbedSpec.from_scenario(scenario, 4)
    sites = [h.site for h in spec.hosts]
    assert len(set(sites)) == 4
    hosting = scenario.sites.runtimes.any(axis=1)
    assert all(hosting[s] for s in sites)
    for a in spec.hosts:
        for b in spec.hosts:
            expected = scenario.network.rtt_ms[a.site, b.site]
            assert spec.rtt_ms(a.name, b.name) == pytest.approx(expected)
        kata = bool(scenario.sites.runtimes[a.site, 1])
        assert (a.runtime == "kata") == kata
    first = spec.hosts[0].site
    assert spec.rtt_ms("user", spec.hosts[0].name) == scenario.config.radio_rtt_ms
    # the first host is the most central hosting site
    totals = scenario.network.rtt_ms[np.ix_(hosting, hosting)].sum(axis=1)
    assert scenario.network.rtt_ms[first, hosting].sum() == pytest.approx(totals.min())


def test_from_scenario_refuses_more_hosts_than_sites() -> None:
    with pytest.raises(ConfigError, match="n_hosts: scenario 'wang-1d' has"):
        TestbedSpec.from_scenario(load_scenario("wang-1d"), 500)


def test_forwarder_links_file_round_trips(tmp_path: Path) -> None:
    links = [
        TapLink("a", "tb0", "b", "tb0", 1.5),
        TapLink("b", "tu1", "c", "tuser", 0.0),
    ]
    write_links(tmp_path / "links.json", links)
    assert read_links(tmp_path / "links.json") == links
    (tmp_path / "bad.json").write_text('[{"netns_a": "a", "delay_ms": 1}]')
    with pytest.raises(ConfigError, match=r"links\.0"):
        read_links(tmp_path / "bad.json")
