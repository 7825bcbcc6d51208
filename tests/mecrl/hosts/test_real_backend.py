"""The real backend on a testbed: an episode of the single-service env."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from agentkit import COUNTER_ARGS, criu_works, missing_tools

from mecrl.config import from_dict
from mecrl.envs.single import MigrationEnv
from mecrl.hosts.backend import HostsConfig, RealBackend
from mecrl.scenario import Scenario, ScenarioConfig
from mecrl.testbed import Testbed, TestbedSpec

SCENARIO = {
    "name": "testbed-line",
    "episode_slots": 6,
    "radio_rtt_ms": 8.0,
    "per_hop_ms": 1.0,
    "candidates": 3,
    "topology": {
        "kind": "line",
        "params": {"n_sites": 3, "spacing_m": 100000.0, "bandwidth_mbps": 200.0},
    },
    "mobility": {"kind": "random-walk", "params": {"move_prob": 0.9}},
    "sites": {"kata_fraction": 0.0, "layer_cache_prob": 1.0},
    "services": [
        {
            "name": "counter",
            "runtime": "runc",
            "migration": "precopy",
            "state_mb": 1.0,
            "slo_ms": 50.0,
        }
    ],
}


@pytest.fixture(scope="module")
def scenario() -> Scenario:
    return Scenario(from_dict(ScenarioConfig, SCENARIO))


@pytest.fixture(scope="module")
def testbed(
    scenario: Scenario, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Testbed]:
    reason = missing_tools()
    if reason:
        pytest.skip(reason)
    spec = TestbedSpec.from_scenario(scenario, 3)
    with Testbed.up(spec, tmp_path_factory.mktemp("testbed")) as up:
        yield up


def follow(env: MigrationEnv, access: int) -> int:
    """The action that moves to the user's access site, or stays."""
    sites, mask = env.candidate_sites(), env.action_masks()
    hits = np.flatnonzero((sites == access) & mask)
    return int(hits[0]) if hits.size else 0


def host_of(testbed: Testbed, site: int) -> str:
    return next(h.name for h in testbed.hosts.values() if h.site == site)


def count_once(testbed: Testbed, address: str) -> int:
    with testbed.entered("user"), socket.create_connection((address, 7000), 10) as conn:
        conn.sendall(b"x\n")
        return int(conn.makefile().readline())


@pytest.mark.slow
def test_an_episode_of_the_single_service_env_runs_on_real_hosts(
    scenario: Scenario, testbed: Testbed, tmp_path: Path
) -> None:
    hosts = HostsConfig.from_testbed(testbed, tmp_path / "journal", tuple(COUNTER_ARGS))
    backend = RealBackend(scenario, hosts, on_access=testbed.move_user)
    env = MigrationEnv(scenario, backend=backend)
    try:
        _, info = env.reset(seed=3)
        address = backend.specs[0]["address"]
        count = count_once(testbed, address)
        moves, away, truncated = 0, 0, False
        while not truncated:
            access = host_of(testbed, info["access"])
            # follow the user every other slot, so that it is sometimes away
            action = follow(env, info["access"]) if backend.slot % 2 == 0 else 0
            _, reward, _, truncated, info = env.step(action)
            terms = info["terms"]
            assert reward == pytest.approx(-info["cost"])
            assert not info["refused"]
            serving = host_of(testbed, info["site"])
            # the latency term is measured: radio RTT plus the RTT from the
            # access host to the serving host, close to the links' (a loaded
            # machine adds to it, never takes from it)
            network_ms = terms["access_latency"] - scenario.config.radio_rtt_ms
            configured_ms = testbed.configured_rtt_ms(access, serving)
            assert 0.8 * configured_ms - 0.5 <= network_ms <= 1.5 * configured_ms + 2
            away += access != serving
            if info["moved"]:
                moves += 1
                assert terms["downtime"] > 0.0
                assert terms["bytes_moved"] > 0.0
                report = backend.last_moves[0]
                assert report is not None
                assert report.ok
                assert report.mode == ("live" if criu_works() else "cold")
            else:
                assert terms["downtime"] == 0.0
            # the service runs where the env says, its count intact
            state = backend.hosts[serving].agent.get("/v1/services/svc0")
            assert state["healthy"]
            count += 1
            assert count_once(testbed, address) == count
        assert moves > 0
        assert away > 0
    finally:
        backend.close()
