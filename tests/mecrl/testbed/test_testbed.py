"""The testbed on this machine: real namespaces, links, containerd and agents."""

import http.client
import itertools
import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from testbedkit import SPEC, containers_skip_reason, network_skip_reason

from mecrl.config import from_dict
from mecrl.hosts.config import HostAgentConfig
from mecrl.testbed import Testbed, TestbedSpec, teardown
from mecrl.testbed.containerd import IMAGE_REF
from mecrl.testbed.netns import run
from mecrl.testbed.state import STATE_FILE
from mecrl.testbed.testbed import AGENT_PORT, mounts_under

TOLERANCE = 0.2
"""Largest relative RTT error the testbed may show."""

network_only = pytest.mark.skipif(
    network_skip_reason() is not None, reason=network_skip_reason() or ""
)
with_containers = pytest.mark.skipif(
    containers_skip_reason() is not None, reason=containers_skip_reason() or ""
)


def namespaces(prefix: str) -> list[str]:
    listed = run(["ip", "netns", "list"]).split("\n")
    return [line.split()[0] for line in listed if line.startswith(prefix)]


def process_gone(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


def shims_of(socket_path: str) -> list[str]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if b"containerd-shim" in cmdline and socket_path.encode() in cmdline:
                found.append(entry.name)
    return found


def assert_nothing_left(workdir: Path, testbed_id: str, pids: list[int]) -> None:
    assert namespaces(f"mecrl-{testbed_id}-") == []
    assert all(process_gone(pid) for pid in pids), pids
    assert mounts_under(workdir) == []
    assert not (workdir / STATE_FILE).exists()
    assert not list(Path("/run/containerd/runc").glob(f"mecrl-{testbed_id}-*"))
    assert not list(Path("/sys/fs/cgroup").glob(f"*/mecrl-{testbed_id}-*"))


@pytest.fixture
def spec() -> TestbedSpec:
    return from_dict(TestbedSpec, SPEC)


@pytest.fixture(scope="module")
def testbed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Testbed]:
    """The network of SPEC, without containerd."""
    if network_skip_reason():
        pytest.skip(network_skip_reason() or "")
    spec = from_dict(TestbedSpec, SPEC)
    workdir = tmp_path_factory.mktemp("testbed")
    built = Testbed.up(spec, workdir, containerd=False, agents=False)
    try:
        yield built
    finally:
        built.down()


@network_only
@pytest.mark.slow
def test_rtts_match_the_spec_for_every_pair(testbed: Testbed) -> None:
    names = ["user", *testbed.hosts]
    for src, dst in itertools.combinations(names, 2):
        configured = testbed.configured_rtt_ms(src, dst)
        measured = testbed.measure_rtt_ms(src, dst)
        assert measured == pytest.approx(configured, rel=TOLERANCE), (src, dst)


@network_only
@pytest.mark.slow
def test_moving_the_user_moves_its_rtts(testbed: Testbed) -> None:
    assert testbed.access_host == "h1"
    testbed.move_user("h3")
    try:
        assert testbed.access_host == "h3"
        expected = {"h1": 18.0, "h2": 14.0, "h3": 8.0}
        for host, rtt_ms in expected.items():
            assert testbed.configured_rtt_ms("user", host) == pytest.approx(rtt_ms)
            measured = testbed.measure_rtt_ms("user", host)
            assert measured == pytest.approx(rtt_ms, rel=TOLERANCE), host
        # another process sees the move
        assert Testbed.attach(testbed.workdir).access_host == "h3"
    finally:
        testbed.move_user("h1")
    assert testbed.measure_rtt_ms("user", "h1") == pytest.approx(8.0, rel=TOLERANCE)


RECEIVER = """
import socket, sys, time
server = socket.create_server((sys.argv[1], 5201))
print("listening", flush=True)
connection, _ = server.accept()
received, first = 0, None
while chunk := connection.recv(1 << 20):
    first = first or time.monotonic()
    received += len(chunk)
print(received * 8 / (time.monotonic() - first) / 1e6, flush=True)
"""

SENDER = """
import socket, sys, time
connection = socket.create_connection((sys.argv[1], 5201))
end = time.monotonic() + float(sys.argv[2])
block = bytes(1 << 16)
while time.monotonic() < end:
    connection.sendall(block)
connection.close()
"""


@network_only
@pytest.mark.slow
def test_bandwidth_is_roughly_as_configured(testbed: Testbed) -> None:
    # h3 -> h2 crosses the 50 Mbit/s link
    address = testbed.hosts["h2"].address
    receiver = testbed.run_in(
        "h2",
        [sys.executable, "-c", RECEIVER, address],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert receiver.stdout is not None
    assert receiver.stdout.readline().strip() == "listening"
    sender = testbed.run_in("h3", [sys.executable, "-c", SENDER, address, "3"])
    assert sender.wait(timeout=20) == 0
    rate_mbps = float(receiver.stdout.readline())
    receiver.wait(timeout=10)
    assert 0.7 * 50 < rate_mbps < 1.1 * 50


@network_only
def test_a_second_testbed_in_the_same_workdir_is_refused(testbed: Testbed) -> None:
    with pytest.raises(RuntimeError, match="a testbed is up in"):
        Testbed.up(testbed.spec, testbed.workdir, containerd=False)
    # and the running one was left alone
    assert testbed.measure_rtt_ms("h1", "h2", count=2) > 0


@network_only
def test_unknown_hosts_are_named(testbed: Testbed) -> None:
    with pytest.raises(KeyError, match="unknown host 'h9'"):
        testbed.measure_rtt_ms("user", "h9")
    with pytest.raises(KeyError, match="unknown host 'h9'"):
        testbed.move_user("h9")


@network_only
@pytest.mark.slow
def test_down_removes_everything_and_twice_is_harmless(
    spec: TestbedSpec, tmp_path: Path
) -> None:
    built = Testbed.up(spec, tmp_path, containerd=False, agents=False)
    try:
        sleeper = built.run_in("h2", ["sleep", "300"])
        state = json.loads((tmp_path / STATE_FILE).read_text())
        pids = [p["pid"] for p in state["processes"]]
        assert len(namespaces(f"mecrl-{built.testbed_id}-")) == 4
    finally:
        built.down()
    sleeper.wait(timeout=5)
    assert_nothing_left(tmp_path, built.testbed_id, pids)
    built.down()
    assert teardown(tmp_path) is False


@network_only
@pytest.mark.slow
def test_teardown_after_the_builder_was_killed(tmp_path: Path) -> None:
    spec_file = tmp_path / "spec.json"
    spec_file.write_text(json.dumps(SPEC))
    builder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from mecrl.testbed import Testbed, TestbedSpec; "
            "from mecrl.config import from_dict; import json; "
            "spec = from_dict(TestbedSpec, json.load(open(sys.argv[1]))); "
            "Testbed.up(spec, sys.argv[2], containerd=False); "
            "print('up', flush=True); time.sleep(300)",
            str(spec_file),
            str(tmp_path / "bed"),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert builder.stdout is not None
        assert builder.stdout.readline().strip() == "up"
    finally:
        builder.send_signal(signal.SIGKILL)
        builder.wait()
    try:
        state = json.loads((tmp_path / "bed" / STATE_FILE).read_text())
        testbed_id = state["testbed_id"]
        pids = [p["pid"] for p in state["processes"]]
        # the forwarder outlives its builder: the links still work
        assert len(namespaces(f"mecrl-{testbed_id}-")) == 4
        orphan = Testbed.attach(tmp_path / "bed")
        assert orphan.measure_rtt_ms("h1", "h3", count=2) > 0
    finally:
        torn_down = teardown(tmp_path / "bed")
    assert torn_down is True
    assert_nothing_left(tmp_path / "bed", testbed_id, pids)


@network_only
@pytest.mark.slow
def test_a_failed_start_leaves_nothing(spec: TestbedSpec, tmp_path: Path) -> None:
    probe = Testbed.up(spec, tmp_path / "probe", containerd=False)
    has_netem = probe.delay_by == "netem"
    probe.down()
    if has_netem:
        pytest.skip("this kernel has netem, so asking for it cannot fail the start")
    before = set(namespaces("mecrl-"))
    with pytest.raises(RuntimeError, match="netem is not available"):
        Testbed.up(spec, tmp_path / "bed", containerd=False, delay_by="netem")
    assert not (tmp_path / "bed" / STATE_FILE).exists()
    assert set(namespaces("mecrl-")) == before


def healthz_status(testbed: Testbed, from_host: str, address: str) -> int:
    connection = http.client.HTTPConnection(address, AGENT_PORT, timeout=5)
    try:
        with testbed.entered(from_host):
            connection.connect()
        connection.request("GET", "/healthz")
        return connection.getresponse().status
    finally:
        connection.close()


@with_containers
@pytest.mark.slow
def test_containers_and_agents_run_in_the_hosts_and_leave_nothing(
    spec: TestbedSpec, tmp_path: Path
) -> None:
    built = Testbed.up(spec, tmp_path)
    try:
        socket_path = built.containerd_socket
        assert socket_path is not None
        assert built.image_tar is not None
        assert Path(built.image_tar).exists()
        host = built.hosts["h3"]
        ctr = ["ctr", "-a", socket_path, "-n", host.containerd_namespace]
        run(
            [
                *ctr,
                "run",
                "-d",
                "--with-ns",
                f"network:{host.netns_path}",
                IMAGE_REF,
                "probe",
                "sleep",
                "300",
            ]
        )
        addresses = run(
            [*ctr, "tasks", "exec", "--exec-id", "ip", "probe", "ip", "addr"]
        )
        assert f"inet {host.address}/32" in addresses
        # every agent answers from the user's side of the network
        for each in built.hosts.values():
            assert each.agent_url == f"http://{each.address}:{AGENT_PORT}"
            assert healthz_status(built, "user", each.address) == 200
        assert built.hosts["h2"].runtime == "kata"
        assert not built.hosts["h2"].can_checkpoint
        # the agents read the configs the testbed wrote
        configs = {
            name: HostAgentConfig.from_file(str(each.agent_config))
            for name, each in built.hosts.items()
        }
        assert configs["h2"].offers_kata is True
        assert configs["h1"].offers_kata is False
        assert configs["h1"].can_checkpoint
        assert configs["h3"].netns_path == host.netns_path
        state = json.loads((tmp_path / STATE_FILE).read_text())
        pids = [p["pid"] for p in state["processes"]]
        assert shims_of(socket_path)
    finally:
        built.down()
    deadline = time.monotonic() + 5
    while shims_of(socket_path) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert shims_of(socket_path) == []
    assert_nothing_left(tmp_path, built.testbed_id, pids)
