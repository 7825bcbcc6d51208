"""Migrations between real agents, each a process in its own host namespace."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from agentkit import (
    COUNTER_ARGS,
    IMAGE_REF,
    Star,
    build_star,
    criu_works,
    kill_agent,
    start_star_agent,
    talk,
    teardown_star,
)
from agentkit import enter_netns as enter

from mecrl.config import from_dict
from mecrl.hosts.backend import HostEntry, HostsConfig, RealBackend, ServiceTemplate
from mecrl.hosts.client import AgentError
from mecrl.hosts.journal import Journal
from mecrl.hosts.migrate import Host, Migrator
from mecrl.scenario import Scenario, ScenarioConfig

ADDRESS = "10.77.0.7"
needs_criu = pytest.mark.skipif(
    not criu_works(), reason="needs a CRIU that passes `criu check` (.ci/install-hosts)"
)


@pytest.fixture(scope="module")
def star(workdir: Path, containerd: str, image_tar: Path) -> Iterator[Star]:
    folder = workdir / f"star{os.getpid()}"
    folder.mkdir(exist_ok=True)
    built = build_star(folder, containerd, 2)
    try:
        for host in built.all():
            start_star_agent(host, built)
        for host in built.hosts:
            built.client(host).post(
                "/v1/images/import", {"ref": IMAGE_REF, "tar": str(image_tar)}
            )
        yield built
    finally:
        teardown_star(built)


@pytest.fixture
def migrator(star: Star, tmp_path: Path) -> Iterator[Migrator]:
    hosts = {
        h.name: Host(h.name, star.client(h), h.address, can_checkpoint=criu_works())
        for h in star.all()
    }
    yield Migrator(hosts, Journal(tmp_path / "journal.jsonl"))
    for h in star.all():
        if h.process is None:
            start_star_agent(h, star)
        for path in (
            "/v1/services/svc",
            f"/v1/addresses/{ADDRESS}",
            f"/v1/drops/{ADDRESS}",
            f"/v1/routes/{ADDRESS}",
        ):
            with contextlib.suppress(AgentError):  # nothing to clean there
                star.client(h).delete(path)


def deploy(star: Star, migrator: Migrator) -> dict[str, object]:
    spec = {
        "service": "svc",
        "image": IMAGE_REF,
        "args": COUNTER_ARGS,
        "port": 7000,
        "address": ADDRESS,
    }
    source = star.hosts[0]
    star.client(source).post("/v1/services", spec)
    assert star.client(source).get("/v1/services/svc?wait_s=10")["healthy"]
    migrator.switch(ADDRESS, migrator.hosts[source.name])
    return spec


def volume(host_state: Path) -> Path:
    return host_state / "volumes" / "svc"


def state_dir(star: Star, index: int) -> Path:
    return Path(json.loads(star.hosts[index].config_path.read_text())["state_dir"])


def seed_blob(star: Star, size_mb: int = 2) -> str:
    """Write a random file into the source volume; return its SHA-256."""
    data = os.urandom(size_mb << 20)
    (volume(state_dir(star, 0)) / "blob").write_bytes(data)
    return hashlib.sha256(data).hexdigest()


class Client(threading.Thread):
    """A user talking to the service from the user namespace, line by line."""

    def __init__(self, star: Star, lines: int, reconnect: bool) -> None:
        super().__init__(daemon=True)
        self.star, self.lines, self.reconnect = star, lines, reconnect
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
        enter(self.star.user.netns_path)
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


def check_move(star: Star, migrator: Migrator, mode: str) -> None:
    deploy(star, migrator)
    digest = seed_blob(star)
    client = Client(star, 60, reconnect=mode == "cold")
    client.start()
    while len(client.answers) < 10:
        time.sleep(0.05)
    report = migrator.migrate(
        {
            "service": "svc",
            "image": IMAGE_REF,
            "address": ADDRESS,
            "args": COUNTER_ARGS,
            "port": 7000,
        },
        star.hosts[0].name,
        star.hosts[1].name,
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
    moved = volume(state_dir(star, 1)) / "blob"
    assert hashlib.sha256(moved.read_bytes()).hexdigest() == digest
    assert not volume(state_dir(star, 0)).exists()
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
    star: Star, migrator: Migrator
) -> None:
    check_move(star, migrator, "cold")


@pytest.mark.slow
@needs_criu
def test_live_migration_keeps_state_and_the_client_connection(
    star: Star, migrator: Migrator
) -> None:
    check_move(star, migrator, "live")


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["cold", pytest.param("live", marks=needs_criu)])
def test_killing_the_target_agent_mid_migration_leaves_the_source_serving(
    star: Star, migrator: Migrator, mode: str
) -> None:
    spec = deploy(star, migrator)
    talk(star.user.netns, ADDRESS, 3)

    def crash_target(step: str) -> None:
        if step == "frozen":
            kill_agent(star.hosts[1])

    report = migrator.migrate(
        spec, star.hosts[0].name, star.hosts[1].name, mode, on_step=crash_target
    )
    assert not report.ok
    assert "unreachable" in (report.error or "") or "502" in (report.error or "")
    assert migrator.journal.migrations()[-1].steps[-1] == "rolled_back"
    source = star.client(star.hosts[0]).get("/v1/services/svc?wait_s=10")
    assert source["healthy"]
    # the service answers at its address with its state intact
    assert talk(star.user.netns, ADDRESS, 2) == ["4", "5"]


CONTROLLER = """
import sys
from mecrl.hosts.client import AgentClient
from mecrl.config import from_dict
from mecrl.hosts.backend import HostEntry, HostsConfig, RealBackend, ServiceTemplate
from mecrl.hosts.client import AgentError
from mecrl.hosts.journal import Journal
from mecrl.hosts.migrate import Host, Migrator
from mecrl.scenario import Scenario, ScenarioConfig
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
@pytest.mark.parametrize("kill_after", ["frozen", "sent", "switched"])
def test_a_controller_killed_mid_migration_recovers_from_the_journal(
    star: Star, migrator: Migrator, kill_after: str
) -> None:
    mode = "live" if criu_works() else "cold"
    deploy(star, migrator)
    digest = seed_blob(star, 16)
    assert talk(star.user.netns, ADDRESS, 3) == ["1", "2", "3"]
    script = CONTROLLER % (IMAGE_REF, ADDRESS, COUNTER_ARGS)
    argv = [
        sys.executable,
        "-c",
        script,
        star.token_file.read_text().strip(),
        star.user.netns_path,
        str(migrator.journal.path),
        mode,
        star.hosts[0].name,
        star.hosts[1].name,
    ]
    argv += [f"{h.name},{h.url},{h.address}" for h in star.all()]
    controller = subprocess.Popen(argv, start_new_session=True)
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
    serving = 1 if outcome == "done" else 0
    if kill_after == "frozen":
        assert outcome == "rolled_back"
    if kill_after == "switched":
        assert outcome == "done"
    state = star.client(star.hosts[serving]).get("/v1/services/svc?wait_s=10")
    assert state["healthy"]
    # nothing lost: the count and the blob are those of before the move
    assert talk(star.user.netns, ADDRESS, 1) == ["4"]
    blob = volume(state_dir(star, serving)) / "blob"
    assert hashlib.sha256(blob.read_bytes()).hexdigest() == digest
    other = star.client(star.hosts[1 - serving]).get("/v1/services")
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
    star: Star, tmp_path: Path
) -> None:
    kata, runc = star.hosts
    kill_agent(kata)
    start_star_agent(kata, star, offers_kata=True, can_checkpoint=False)
    entries = tuple(
        HostEntry(h.name, h.url, h.address, site=i, runtime=r)
        for i, (h, r) in enumerate([(kata, "kata"), (runc, "runc")])
    )
    hosts = HostsConfig(
        hosts=entries,
        token_file=str(star.token_file),
        journal=str(tmp_path / "journal"),
        service=ServiceTemplate(image=IMAGE_REF, args=tuple(COUNTER_ARGS)),
        control_netns=star.user.netns_path,
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
        assert star.client(runc).get("/v1/services")["services"] == {}
        # asked directly, the runc-only agent refuses too
        spec = {**backend.specs[0], "service": "direct"}
        with pytest.raises(AgentError, match=r"409: .*needs kata \(sandboxed\)"):
            star.client(runc).post("/v1/services", spec)
    finally:
        backend.close()
        kill_agent(kata)
        start_star_agent(kata, star, offers_kata=False, can_checkpoint=criu_works())
