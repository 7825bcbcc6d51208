"""Helpers of the host tests: in-process agents, a counter service, a client."""

from __future__ import annotations

import itertools
import os
import shutil
import socket
import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path

from mecrl.hosts.client import AgentClient
from mecrl.hosts.config import HostAgentConfig
from mecrl.hosts.netns import enter_netns
from mecrl.hosts.server import AgentServer, serve_in_thread

TOOLS = ("containerd", "ctr", "runc", "umoci", "nsenter", "iptables", "ip", "tc")
TOKEN = "test-token-0123456789"
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
    """Why the host tests cannot run here, or None."""
    if os.geteuid() != 0:
        return "needs root (containerd, network namespaces)"
    for tool in TOOLS:
        if shutil.which(tool) is None:
            return f"needs {tool} on PATH (run .ci/install-hosts)"
    if not Path("/bin/busybox").exists():
        return "needs busybox-static (run .ci/install-hosts)"
    if not Path("/dev/net/tun").exists():
        return "needs /dev/net/tun for the testbed's links"
    return None


def criu_works() -> bool:
    """Return whether a CRIU that passes ``criu check`` is on PATH."""
    if shutil.which("criu") is None:
        return False
    done = subprocess.run(["criu", "check"], capture_output=True, check=False)
    return done.returncode == 0


@dataclass
class RunningAgent:
    """An agent served from a thread of the test process, on loopback."""

    config: HostAgentConfig
    server: AgentServer
    client: AgentClient

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def start_agent(
    workdir: Path,
    containerd: str,
    namespace: str,
    netns_path: str | None,
    *,
    can_checkpoint: bool = False,
    tls: tuple[str, str] | None = None,
) -> RunningAgent:
    """Start an agent on a free loopback port of the test's own namespace.

    ``tls`` is a (certificate, key) pair to serve HTTPS with.
    """
    name = f"agent{next(_names)}"
    token_file = workdir / "token"
    token_file.write_text(TOKEN + "\n")
    config = HostAgentConfig(
        name=name,
        listen="127.0.0.1:0",
        token_file=str(token_file),
        containerd_socket=containerd,
        containerd_namespace=namespace,
        netns_path=netns_path,
        can_checkpoint=can_checkpoint,
        state_dir=str(workdir / name),
        tls_cert=None if tls is None else tls[0],
        tls_key=None if tls is None else tls[1],
    )
    server, _ = serve_in_thread(config)
    ca_file = None if tls is None else tls[0]
    client = AgentClient(server.url, TOKEN, ca_file=ca_file, timeout_s=60)
    return RunningAgent(config, server, client)


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
