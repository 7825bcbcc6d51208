"""Migrations between the agents of a testbed, each in its host's namespace."""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from agentkit import COUNTER_ARGS, criu_works, missing_tools, talk

from mecrl.config import from_dict
from mecrl.hosts.backend import HostEntry, HostsConfig, RealBackend, ServiceTemplate
from mecrl.hosts.client import AgentClient, AgentError
from mecrl.hosts.journal import Journal
from mecrl.hosts.migrate import Host, Migrator
from mecrl.hosts.netns import enter_netns
from mecrl.scenario import Scenario, ScenarioConfig
from mecrl.testbed import Testbed, TestbedHost, TestbedSpec

ADDRESS = "10.77.0.7"
needs_criu = pytest.mark.skipif(
    not criu_works(), reason="needs a CRIU that passes `criu check` (.ci/install-hosts)"
)
SPEC = {
    "hosts": [{"name": "h1"}, {"name": "h2"}, {"name": "k3", "runtime": "kata"}],
    "links": [
        {"hosts": ["h1", "h2"], "delay_ms": 2.0, "bandwidth_mbps": 200},
        {"hosts": ["h1", "k3"], "delay_ms": 2.0, "bandwidth_mbps": 200},
    ],
    "user": {"access_host": "h1", "radio_rtt_ms": 4.0},
}
"""Two runc hosts, a kata stand-in, and the user attached to h1."""


@dataclass
class Bed:
    """The testbed and what the tests reach it by."""

    testbed: Testbed
    token: str

    def client(self, host: TestbedHost) -> AgentClient:
        url = host.agent_url or ""
        return AgentClient(url, self.token, netns_path=self.testbed.user.netns_path)

    @property
    def source(self) -> TestbedHost:
        return self.testbed.hosts["h1"]

    @property
    def target(self) -> TestbedHost:
        return self.testbed.hosts["h2"]

    @property
    def user_netns(self) -> str:
        return self.testbed.user.netns


@pytest.fixture(scope="module")
def bed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bed]:
    reason = missing_tools()
    if reason:
        pytest.skip(reason)
    spec = from_dict(TestbedSpec, SPEC)
    with Testbed.up(spec, tmp_path_factory.mktemp("bed")) as testbed:
        yield Bed(testbed, testbed.token())


@pytest.fixture
def migrator(bed: Bed, tmp_path: Path) -> Iterator[Migrator]:
    hosts = {
        h.name: Host(h.name, bed.client(h), h.address, can_checkpoint=h.can_checkpoint)
        for h in bed.testbed.hosts.values()
    }
    yield Migrator(hosts, Journal(tmp_path / "journal.jsonl"))
    for h in bed.testbed.hosts.values():
        if agent_pid(h) is None:
            restart_agent(bed, h)
        for path in (
            "/v1/services/svc",
            f"/v1/addresses/{ADDRESS}",
            f"/v1/drops/{ADDRESS}",
            f"/v1/routes/{ADDRESS}",
        ):
            with contextlib.suppress(AgentError):  # nothing to clean there
                bed.client(h).delete(path)


def agent_pid(host: TestbedHost) -> int | None:
    """The pid of the agent serving ``host``, found among its namespace's."""
    pids = subprocess.run(
        ["ip", "netns", "pids", host.netns], capture_output=True, text=True
    ).stdout.split()
    for pid in pids:
        with contextlib.suppress(OSError):
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            if b"host-agent" in cmdline and str(host.agent_config).encode() in cmdline:
                return int(pid)
    return None


def kill_agent(host: TestbedHost) -> None:
    """SIGKILL a host's agent (a crash, not a clean stop)."""
    pid = agent_pid(host)
    assert pid is not None, f"no agent runs for {host.name}"
    os.kill(pid, signal.SIGKILL)
    while agent_pid(host) is not None:
        time.sleep(0.02)


def restart_agent(bed: Bed, host: TestbedHost) -> None:
    argv = [sys.executable, "-m", "mecrl.cli", "host-agent", "--config"]
    bed.testbed.run_in(host.name, [*argv, str(host.agent_config)])
    deadline = time.monotonic() + 30
    while True:
        try:
            bed.client(host).get("/healthz")
            return
        except AgentError:
            assert time.monotonic() < deadline, f"agent {host.name} did not restart"
            time.sleep(0.1)


def deploy(bed: Bed, migrator: Migrator) -> dict[str, object]:
    spec = {
        "service": "svc",
        "image": bed.testbed.image_ref,
        "args": COUNTER_ARGS,
        "port": 7000,
        "address": ADDRESS,
    }
    bed.client(bed.source).post("/v1/services", spec)
    assert bed.client(bed.source).get("/v1/services/svc?wait_s=10")["healthy"]
    migrator.switch(ADDRESS, migrator.hosts[bed.source.name])
    return spec


def volume(host_state: Path) -> Path:
    return host_state / "volumes" / "svc"


def seed_blob(bed: Bed, size_mb: int = 2) -> str:
    """Write a random file into the source volume; return its SHA-256."""
    data = os.urandom(size_mb << 20)
    (volume(Path(bed.source.state_dir)) / "blob").write_bytes(data)
    return hashlib.sha256(data).hexdigest()


class Client(threading.Thread):
    """A user talking to the service from the user namespace, line by line."""

    def __init__(self, bed: Bed, lines: int, reconnect: bool) -> None:
        super().__init__(daemon=True)
        self.bed, self.lines, self.reconnect = bed, lines, reconnect
        self.answers: list[int] = []
        self.connections = 0
        self.error: str | None = None

    def _connect(self):
        deadline = time.monotonic() + 30
        while True:
            try:
                conn = socket.create_connection((ADDRESS, 7000), timeout=3)
                self.connections += 1
                return conn.makefile("rw")
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def run(self) -> None:
        enter_netns(self.bed.testbed.user.netns_path)
        stream = self._connect()
        while len(self.answers) < self.lines:
            try:
                stream.write("x\n")
                stream.flush()
                line = stream.readline()
                if not line:
                    raise OSError("connection closed")
                self.answers.append(int(line))
            except OSError as exc:
                if not self.reconnect:
                    self.error = str(exc)
                    return
                stream = self._connect()
            time.sleep(0.05)


def check_move(bed: Bed, migrator: Migrator, mode: str) -> None:
    deploy(bed, migrator)
    digest = seed_blob(bed)
    client = Client(bed, 60, reconnect=mode == "cold")
    client.start()
    while len(client.answers) < 10:
        time.sleep(0.05)
    report = migrator.migrate(
        {
            "service": "svc",
            "image": bed.testbed.image_ref,
            "address": ADDRESS,
            "args": COUNTER_ARGS,
            "port": 7000,
        },
        bed.source.name,
        bed.target.name,
        mode,
    )
    client.join(60)
    assert report.ok, report.error
    assert report.mode == mode
    assert 0.0 < report.downtime_s < 10.0
    assert report.state_bytes > 2 << 20
    # every line was counted exactly once: the state moved whole
    assert client.error is None
    assert client.answers == list(range(1, 61))
    moved = volume(Path(bed.target.state_dir)) / "blob"
    assert hashlib.sha256(moved.read_bytes()).hexdigest() == digest
    assert not volume(Path(bed.source.state_dir)).exists()
    if mode == "live":
        assert client.connections == 1  # the same TCP connection throughout
    steps = migrator.journal.migrations()[-1].steps
    assert steps == [
        "begin",
        "prepared",
        "target_ready",
        "frozen",
        "sent",
        "started",
        "switched",
        "done",
    ]


@pytest.mark.slow
def test_cold_migration_keeps_state_and_serves_a_reconnecting_client(
    bed: Bed, migrator: Migrator
) -> None:
    check_move(bed, migrator, "cold")


@pytest.mark.slow
@needs_criu
def test_live_migration_keeps_state_and_the_client_connection(
    bed: Bed, migrator: Migrator
) -> None:
    check_move(bed, migrator, "live")


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["cold", pytest.param("live", marks=needs_criu)])
def test_killing_the_target_agent_mid_migration_leaves_the_source_serving(
    bed: Bed, migrator: Migrator, mode: str
) -> None:
    spec = deploy(bed, migrator)
    talk(bed.user_netns, ADDRESS, 3)

    def crash_target(step: str) -> None:
        if step == "frozen":
            kill_agent(bed.target)

    report = migrator.migrate(
        spec, bed.source.name, bed.target.name, mode, on_step=crash_target
    )
    assert not report.ok
    assert "unreachable" in (report.error or "") or "502" in (report.error or "")
    # the target could not be cleaned: the migration stays open for that
    assert migrator.journal.migrations()[-1].steps[-1] == "source_restored"
    source = bed.client(bed.source).get("/v1/services/svc?wait_s=10")
    assert source["healthy"]
    # the service answers at its address with its state intact
    assert talk(bed.user_netns, ADDRESS, 2) == ["4", "5"]

    # once the target's agent is back, recovery cleans it and closes the move
    restart_agent(bed, bed.target)
    assert [outcome for _, outcome in migrator.recover()] == ["rolled_back"]
    assert migrator.journal.unfinished() == []
    assert bed.client(bed.target).get("/v1/services")["services"] == {}
    held = subprocess.run(
        ["ip", "-n", bed.target.netns, "-4", "addr", "show", "dev", "lo"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert ADDRESS not in held
    assert talk(bed.user_netns, ADDRESS, 1) == ["6"]


CONTROLLER = """
import sys
from mecrl.hosts.client import AgentClient
from mecrl.hosts.journal import Journal
from mecrl.hosts.migrate import Host, Migrator
token, netns, journal, mode, source, target = sys.argv[1:7]
hosts = {}
for item in sys.argv[7:]:
    name, url, address = item.split(",")
    client = AgentClient(url, token, netns_path=netns)
    hosts[name] = Host(name, client, address, can_checkpoint=mode == "live")
spec = {"service": "svc", "image": %r, "address": %r, "args": %r, "port": 7000}
Migrator(hosts, Journal(journal)).migrate(spec, source, target, mode)
"""


@pytest.mark.slow
@pytest.mark.parametrize("kill_after", ["frozen", "sent", "started", "switched"])
def test_a_controller_killed_mid_migration_recovers_from_the_journal(
    bed: Bed, migrator: Migrator, kill_after: str
) -> None:
    mode = "live" if criu_works() else "cold"
    deploy(bed, migrator)
    digest = seed_blob(bed, 16)
    assert talk(bed.user_netns, ADDRESS, 3) == ["1", "2", "3"]
    script = CONTROLLER % (bed.testbed.image_ref, ADDRESS, COUNTER_ARGS)
    argv = [
        sys.executable,
        "-c",
        script,
        bed.token,
        bed.testbed.user.netns_path,
        str(migrator.journal.path),
        mode,
        bed.source.name,
        bed.target.name,
    ]
    hosts = bed.testbed.hosts.values()
    argv += [f"{h.name},{h.agent_url},{h.address}" for h in hosts]
    controller = bed.testbed.run_in("user", argv)
    try:
        deadline = time.monotonic() + 60
        while not any(m.reached(kill_after) for m in migrator.journal.migrations()):
            assert time.monotonic() < deadline, "the migration never got there"
            assert controller.poll() is None, "the controller ended early"
            time.sleep(0.005)
        os.killpg(controller.pid, signal.SIGKILL)
    finally:
        controller.wait(10)

    outcomes = migrator.recover()
    assert len(outcomes) == 1
    _, outcome = outcomes[0]
    assert migrator.journal.unfinished() == []
    done = outcome == "done"
    if kill_after == "frozen":
        assert outcome == "rolled_back"
    if kill_after == "switched":
        assert outcome == "done"
    serving_host, other_host = (bed.target, bed.source)
    if not done:
        serving_host, other_host = other_host, serving_host
    state = bed.client(serving_host).get("/v1/services/svc?wait_s=10")
    assert state["healthy"]
    # nothing lost: the count and the blob are those of before the move
    assert talk(bed.user_netns, ADDRESS, 1) == ["4"]
    blob = volume(Path(serving_host.state_dir)) / "blob"
    assert hashlib.sha256(blob.read_bytes()).hexdigest() == digest
    other = bed.client(other_host).get("/v1/services")
    assert other["services"] == {}


SANDBOXED = {
    "name": "two-sites",
    "episode_slots": 3,
    "candidates": 2,
    "topology": {"kind": "line", "params": {"n_sites": 2}},
    "mobility": {"kind": "random-walk", "params": {"move_prob": 0.5}},
    # the scenario believes both sites run kata: only the hosts know better
    "sites": {"kata_fraction": 1.0, "layer_cache_prob": 1.0},
    "services": [
        {"name": "vault", "runtime": "kata", "isolation": "sandboxed", "state_mb": 1.0}
    ],
}


@pytest.mark.slow
def test_a_sandboxed_service_is_never_placed_on_a_runc_only_host(
    bed: Bed, tmp_path: Path
) -> None:
    kata, runc = bed.testbed.hosts["k3"], bed.source
    entries = tuple(
        HostEntry(h.name, h.agent_url or "", h.address, site=i, runtime=h.runtime)
        for i, h in enumerate([kata, runc])
    )
    hosts = HostsConfig(
        hosts=entries,
        token_file=str(bed.testbed.token_file),
        journal=str(tmp_path / "journal"),
        service=ServiceTemplate(image=bed.testbed.image_ref, args=tuple(COUNTER_ARGS)),
        control_netns=bed.testbed.user.netns_path,
    )
    scenario = Scenario(from_dict(ScenarioConfig, SANDBOXED))
    backend = RealBackend(scenario, hosts)
    try:
        backend.reset(0, np.array([0]))
        assert backend.site.tolist() == [0]
        for _ in range(2):
            result = backend.step(np.array([1]))
            assert result.refused.tolist() == [True]
            assert result.moved.tolist() == [False]
            assert backend.site.tolist() == [0]
        assert bed.client(runc).get("/v1/services")["services"] == {}
        # asked directly, the runc-only agent refuses too
        spec = {**backend.specs[0], "service": "direct"}
        with pytest.raises(AgentError, match=r"409: .*needs kata \(sandboxed\)"):
            bed.client(runc).post("/v1/services", spec)
    finally:
        backend.close()
