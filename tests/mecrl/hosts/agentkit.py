"""Helpers of the host tests: agents, namespaces, a counter service."""

from __future__ import annotations

import itertools
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from mecrl.hosts.client import AgentClient, AgentError
from mecrl.hosts.config import HostAgentConfig
from mecrl.hosts.containerd import Ctr
from mecrl.hosts.netns import enter_netns
from mecrl.hosts.server import AgentServer, serve_in_thread

TOOLS = ("containerd", "ctr", "runc", "umoci", "busybox", "nsenter", "iptables", "ip")
IMAGE_REF = "docker.io/mecrl/busybox:latest"
TOKEN = "test-token-0123456789"
PREFIX = f"mecrlA{os.getpid()}"
_names = itertools.count()

COUNTER_ARGS = [
    "nc",
    "-ll",
    "-p",
    "7000",
    "-e",
    "/bin/sh",
    "-c",
    "while read l; do n=$(($(cat /data/count 2>/dev/null || echo 0)+1)); "
    "echo $n > /data/count; echo $n; done",
]
"""A TCP counter: each line a client sends bumps the count in the volume."""


def missing_tools() -> str | None:
    if os.geteuid() != 0:
        return "needs root (containerd, network namespaces)"
    for tool in TOOLS:
        if shutil.which(tool) is None:
            return f"needs {tool} on PATH (run .ci/install-hosts)"
    return None


def criu_works() -> bool:
    """Return whether a CRIU that passes ``criu check`` is on PATH."""
    if shutil.which("criu") is None:
        return False
    done = subprocess.run(["criu", "check"], capture_output=True, check=False)
    return done.returncode == 0


def new_netns() -> str:
    """Create a network namespace with a unique name and its loopback up."""
    name = f"{PREFIX}-{next(_names)}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
    return name


def delete_netns(name: str) -> None:
    subprocess.run(["ip", "netns", "del", name], check=False, capture_output=True)


@dataclass
class RunningAgent:
    config: HostAgentConfig
    server: AgentServer
    client: AgentClient

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def start_agent(
    workdir: Path,
    containerd: str,
    netns: str | None,
    *,
    can_checkpoint: bool = False,
    runtime_handler: str = "io.containerd.runc.v2",
) -> RunningAgent:
    """Start an agent on a free loopback port, with its own containerd namespace."""
    name = f"{PREFIX}-{next(_names)}"
    token_file = workdir / "token"
    token_file.write_text(TOKEN + "\n")
    config = HostAgentConfig(
        name=name,
        listen="127.0.0.1:0",
        token_file=str(token_file),
        containerd_socket=containerd,
        containerd_namespace=name,
        netns_path=None if netns is None else f"/var/run/netns/{netns}",
        runtime_handler=runtime_handler,
        can_checkpoint=can_checkpoint,
        state_dir=str(workdir / name),
    )
    server, _ = serve_in_thread(config)
    return RunningAgent(config, server, AgentClient(server.url, TOKEN, timeout_s=60))


def remove_all(agent: RunningAgent) -> None:
    """Delete every container of the agent's namespace, whatever state it is in."""
    ctr = agent.server.agent.ctr
    for container in ctr.run("containers", "ls", "-q").split():
        ctr.remove(container)


def talk(netns: str, address: str, lines: int, port: int = 7000) -> list[str]:
    """Open a connection from ``netns``, send ``lines`` lines, return the answers."""
    answers: list[str] = []

    def run() -> None:
        enter_netns(f"/var/run/netns/{netns}")
        with socket.create_connection((address, port), timeout=10) as conn:
            stream = conn.makefile("rw")
            for _ in range(lines):
                stream.write("x\n")
                stream.flush()
                answers.append(stream.readline().strip())

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(30)
    return answers


@dataclass
class StarHost:
    name: str
    netns: str
    address: str
    url: str
    config_path: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def netns_path(self) -> str:
        return f"/var/run/netns/{self.netns}"


@dataclass
class Star:
    """A user namespace linked to each host namespace by a veth pair.

    Host ``k`` (from 1) has address ``10.99.k.2``; the user holds ``10.99.k.1``
    on the link to it and forwards between them. Every namespace runs a real
    agent process on its own address, port 7700.
    """

    user: StarHost
    hosts: list[StarHost]
    token_file: Path

    def all(self) -> list[StarHost]:
        return [self.user, *self.hosts]

    def client(self, host: StarHost) -> AgentClient:
        return AgentClient(
            host.url, TOKEN, timeout_s=60, netns_path=self.user.netns_path
        )


def _ns(netns: str, *argv: str) -> None:
    subprocess.run(["ip", "-n", netns, *argv], check=True, capture_output=True)


def build_star(workdir: Path, containerd: str, n_hosts: int) -> Star:
    """Create the namespaces and links of a :class:`Star` (agents not started)."""
    token_file = workdir / "token"
    token_file.write_text(TOKEN + "\n")
    user_ns = new_netns()
    subprocess.run(
        ["ip", "netns", "exec", user_ns, "sysctl", "-qw", "net.ipv4.ip_forward=1"],
        check=True,
    )
    hosts = []
    for k in range(1, n_hosts + 1):
        netns = new_netns()
        _ns(
            user_ns,
            "link",
            "add",
            f"to{k}",
            "type",
            "veth",
            "peer",
            "name",
            "up0",
            "netns",
            netns,
        )
        _ns(user_ns, "addr", "add", f"10.99.{k}.1/24", "dev", f"to{k}")
        _ns(user_ns, "link", "set", f"to{k}", "up")
        _ns(netns, "addr", "add", f"10.99.{k}.2/24", "dev", "up0")
        _ns(netns, "link", "set", "up0", "up")
        _ns(netns, "route", "add", "default", "via", f"10.99.{k}.1")
        hosts.append(_star_host(workdir, containerd, netns, f"10.99.{k}.2", token_file))
    user = _star_host(workdir, containerd, user_ns, "10.99.1.1", token_file)
    return Star(user, hosts, token_file)


def _star_host(
    workdir: Path, containerd: str, netns: str, address: str, token_file: Path
) -> StarHost:
    config = {
        "name": netns,
        "listen": f"{address}:7700",
        "token_file": str(token_file),
        "containerd_socket": containerd,
        "containerd_namespace": netns,
        "netns_path": f"/var/run/netns/{netns}",
        "can_checkpoint": criu_works(),
        "state_dir": str(workdir / netns),
    }
    path = workdir / f"{netns}.yaml"
    path.write_text(json.dumps(config))
    return StarHost(netns, netns, address, f"http://{address}:7700", path)


def start_star_agent(host: StarHost, star: Star, **changes: object) -> None:
    """Start (or restart) a host's agent process and wait for it to answer."""
    if changes:
        config = json.loads(host.config_path.read_text())
        config.update(changes)
        host.config_path.write_text(json.dumps(config))
    mecrl = str(Path(sys.executable).parent / "mecrl")
    log = (host.config_path.with_suffix(".log")).open("ab")
    host.process = subprocess.Popen(
        [
            "ip",
            "netns",
            "exec",
            host.netns,
            mecrl,
            "host-agent",
            "--config",
            str(host.config_path),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    deadline = time.monotonic() + 30
    while True:
        try:
            star.client(host).get("/healthz")
            return
        except AgentError:
            if time.monotonic() > deadline or host.process.poll() is not None:
                raise
            time.sleep(0.1)


def kill_agent(host: StarHost) -> None:
    """SIGKILL a host's agent process (a crash, not a clean stop)."""
    if host.process is not None and host.process.poll() is None:
        os.killpg(host.process.pid, signal.SIGKILL)
        host.process.wait(10)
    host.process = None


def teardown_star(star: Star) -> None:
    """Stop every agent and container, then delete every namespace."""
    for host in star.all():
        kill_agent(host)
    for host in star.all():
        ctr = Ctr(
            str(json.loads(host.config_path.read_text())["containerd_socket"]),
            host.netns,
        )
        try:
            for container in ctr.run("containers", "ls", "-q").split():
                ctr.remove(container)
        finally:
            delete_netns(host.netns)
