"""The testbed's network: one namespace per host, links, addresses, routes.

Every edge host and the user get a network namespace named
``mecrl-<id>-<host>``, with its address (a /32 on the loopback) reachable
from every other namespace. Each link of the spec joins two namespaces by a
point-to-point /31; ``tbf`` shapes both ends to the link's bandwidth, and the
delay comes from ``netem`` where the kernel has it, else from the user-space
forwarder (:mod:`mecrl.testbed.forwarder`) between TAP devices. The user has
a radio link to every edge host, but only the one to its access host is up
and routed; :meth:`TestbedNetwork.move_user` switches it. Static routes
follow the spec's minimum-delay paths, and each namespace forwards IPv4.

Nothing here touches the namespace the caller runs in: every command names
its namespace (``ip -n``, ``tc -n``, ``ip netns exec``).

Addresses: hosts are ``10.76.0.N`` in spec order from ``10.76.0.1``, the
user ``10.76.1.1``; link ``k`` is ``10.76.128.0/17`` offset ``2k``; the
user's link to host ``i`` is ``10.76.64.0/18`` offset ``2i``. Service
addresses (``10.77.0.0/16``) are left to the host agents.
"""

from __future__ import annotations

import ipaddress
import logging
import re
import select
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from mecrl.testbed.forwarder import READY, TapLink, write_links
from mecrl.testbed.netns import (
    CommandError,
    exec_argv,
    ip_batch,
    run,
    tc_batch,
)
from mecrl.testbed.spec import USER, TestbedSpec
from mecrl.testbed.state import StateFile

logger = logging.getLogger(__name__)

HOSTS_NET = ipaddress.IPv4Network("10.76.0.0/24")
USER_ADDRESS = "10.76.1.1"
SERVICE_NET = ipaddress.IPv4Network("10.77.0.0/16")
"""Service addresses the agents claim and route; the testbed leaves them be."""
_LINK_NET = ipaddress.IPv4Network("10.76.128.0/17")
_RADIO_NET = ipaddress.IPv4Network("10.76.64.0/18")
_FORWARDER_READY_S = 20.0
_PING_TIME = re.compile(r"time=([0-9.]+) ms")


@dataclass(frozen=True)
class LinkEnd:
    """One end of a link as seen from its namespace."""

    host: str
    """Host (or ``"user"``) the end belongs to."""
    device: str
    """Device name inside the host's namespace."""
    address: str
    """The end's address on the link's /31."""


@dataclass(frozen=True)
class Link:
    """A link as built: its two ends, delay and bandwidth."""

    a: LinkEnd
    """First end."""
    b: LinkEnd
    """Second end."""
    delay_ms: float
    """One-way delay."""
    bandwidth_mbps: float
    """Rate in each direction."""

    def end_at(self, host: str) -> LinkEnd:
        """Return the end in ``host``."""
        return self.a if self.a.host == host else self.b

    def peer_of(self, host: str) -> LinkEnd:
        """Return the end that is not in ``host``."""
        return self.b if self.a.host == host else self.a


class TestbedNetwork:
    """Builds, re-routes, measures and removes a testbed's namespaces and links.

    Args:
        spec: What to build.
        testbed_id: Short id that makes the namespace names unique.
        workdir: Where the forwarder's links file and log go.
        state: The testbed's state file; everything is recorded there first.
    """

    __test__ = False

    def __init__(
        self, spec: TestbedSpec, testbed_id: str, workdir: Path, state: StateFile
    ) -> None:
        self.spec = spec
        self.testbed_id = testbed_id
        self.workdir = workdir
        self.state = state
        names = [host.name for host in spec.hosts]
        self.addresses = {name: str(HOSTS_NET[i + 1]) for i, name in enumerate(names)}
        self.addresses[USER] = USER_ADDRESS
        self.links = [_host_link(k, spec) for k in range(len(spec.links))]
        self.radio_links = {
            name: _radio_link(i, name, spec) for i, name in enumerate(names)
        }
        self.access_host = spec.user.access_host
        self.delay_by = ""

    def netns(self, host: str) -> str:
        """Return the namespace name of ``host`` (or of the user)."""
        return f"mecrl-{self.testbed_id}-{host}"

    def build(self, delay_by: str = "auto") -> None:
        """Create every namespace and link, then address and route them.

        Args:
            delay_by: ``netem``, ``forwarder``, or ``auto`` (netem when the
                kernel has it).

        Raises:
            CommandError: If a command fails.
            RuntimeError: If the forwarder does not come up.
        """
        every = [USER, *(host.name for host in self.spec.hosts)]
        for host in every:
            self._create_netns(host)
        available = self._probe_delay()
        if delay_by == "netem" and available != "netem":
            raise RuntimeError("netem is not available in this kernel")
        self.delay_by = available if delay_by == "auto" else delay_by
        logger.info("testbed %s: link delay by %s", self.testbed_id, self.delay_by)
        all_links = [*self.links, *self.radio_links.values()]
        if self.delay_by == "netem":
            for link in all_links:
                self._add_veth(link)
        else:
            self._start_forwarder(all_links)
        for link in all_links:
            self._configure_link(link)
        self._route_hosts()
        self._attach_user(self.access_host)

    def _create_netns(self, host: str) -> None:
        name = self.netns(host)
        self.state.add_netns(name)
        run(["ip", "netns", "add", name])
        ip_batch(
            name,
            ["link set lo up", f"address add {self.addresses[host]}/32 dev lo"],
        )
        # forwarding and loose source checks inside the namespace only
        run(
            exec_argv(
                name,
                [
                    "sysctl",
                    "-q",
                    "-w",
                    "net.ipv4.ip_forward=1",
                    "net.ipv4.conf.all.rp_filter=0",
                    "net.ipv4.conf.default.rp_filter=0",
                ],
            )
        )

    def _probe_delay(self) -> str:
        scratch = self.netns(USER)
        try:
            tc_batch(scratch, ["qdisc add dev lo root netem delay 1ms"])
        except CommandError as exc:
            logger.info("no netem here (%s); delays come from the forwarder", exc)
            return "forwarder"
        tc_batch(scratch, ["qdisc del dev lo root"])
        return "netem"

    def _add_veth(self, link: Link) -> None:
        ip_batch(
            self.netns(link.a.host),
            [
                f"link add {link.a.device} type veth peer name {link.b.device} "
                f"netns {self.netns(link.b.host)}"
            ],
        )

    def _start_forwarder(self, links: list[Link]) -> None:
        links_file = self.workdir / "forwarder-links.json"
        write_links(
            links_file,
            [
                TapLink(
                    netns_a=self.netns(link.a.host),
                    device_a=link.a.device,
                    netns_b=self.netns(link.b.host),
                    device_b=link.b.device,
                    delay_ms=link.delay_ms,
                )
                for link in links
            ],
        )
        process = self.state.spawn(
            [sys.executable, "-m", "mecrl.testbed.forwarder", str(links_file)],
            "forwarder",
            self.workdir / "forwarder.log",
            stdout_pipe=True,
        )
        if not _wait_ready(process, _FORWARDER_READY_S):
            process.kill()
            log = (self.workdir / "forwarder.log").read_text(errors="replace")
            raise RuntimeError(f"the link forwarder did not come up: {log[-2000:]}")

    def _configure_link(self, link: Link) -> None:
        for end in (link.a, link.b):
            netns = self.netns(end.host)
            ip_batch(
                netns,
                [
                    f"link set {end.device} mtu {self.spec.mtu}",
                    f"address add {end.address}/31 dev {end.device}",
                ],
            )
            qdiscs = _shaping(end.device, link, self.delay_by, self.spec.mtu)
            tc_batch(netns, qdiscs)
            # the user's radio links come up only when it attaches
            if end.host != USER:
                ip_batch(netns, [f"link set {end.device} up"])

    def _route_hosts(self) -> None:
        paths = self.spec.paths()
        for host in self.spec.hosts:
            commands = []
            for other in self.spec.hosts:
                if other.name == host.name:
                    continue
                hop = paths[host.name][other.name][1]
                commands.append(
                    self._route_command(host.name, self.addresses[other.name], hop)
                )
            ip_batch(self.netns(host.name), commands)

    def _route_command(self, host: str, destination: str, hop: str) -> str:
        link = self._link_between(host, hop)
        return (
            f"route replace {destination}/32 via {link.peer_of(host).address} "
            f"dev {link.end_at(host).device} src {self.addresses[host]}"
        )

    def _link_between(self, a: str, b: str) -> Link:
        for link in self.links:
            if {link.a.host, link.b.host} == {a, b}:
                return link
        raise KeyError(f"no link between {a} and {b}")

    def _attach_user(self, access: str) -> None:
        """Bring up the user's radio link to ``access`` and route through it."""
        radio = self.radio_links[access]
        user_end, host_end = radio.end_at(USER), radio.peer_of(USER)
        ip_batch(
            self.netns(USER),
            [
                f"link set {user_end.device} up",
                f"route replace default via {host_end.address} "
                f"dev {user_end.device} src {USER_ADDRESS}",
            ],
        )
        paths = self.spec.paths()
        for host in self.spec.hosts:
            if host.name == access:
                command = (
                    f"route replace {USER_ADDRESS}/32 via {user_end.address} "
                    f"dev {host_end.device} src {self.addresses[access]}"
                )
            else:
                hop = paths[host.name][access][1]
                command = self._route_command(host.name, USER_ADDRESS, hop)
            ip_batch(self.netns(host.name), [command])
        self.access_host = access

    def move_user(self, access: str) -> None:
        """Re-attach the user to the edge host ``access``.

        The new radio link comes up and every route to and from the user
        moves onto it before the old link goes down.

        Raises:
            KeyError: If ``access`` is not an edge host.
        """
        self.spec.host(access)
        old = self.access_host
        if access == old:
            return
        self._attach_user(access)
        ip_batch(self.netns(USER), [f"link set {self.radio_links[old].a.device} down"])
        logger.info("user moved from %s to %s", old, access)

    def measure_rtt_ms(self, src: str, dst: str, count: int = 10) -> float:
        """Median ping round trip from ``src`` to ``dst``, either may be the user.

        The first reply is dropped: it includes neighbour resolution.

        Raises:
            RuntimeError: If no reply comes back.
        """
        if count < 1:
            raise ValueError(f"count must be at least 1, got {count}")
        argv = [
            "ping",
            "-n",
            "-c",
            str(count + 1),
            "-i",
            "0.05",
            "-W",
            "2",
            "-I",
            self.addresses[src],
            self.addresses[dst],
        ]
        try:
            output = run(exec_argv(self.netns(src), argv), timeout_s=10 + count)
        except CommandError as exc:
            raise RuntimeError(f"no ping reply from {dst} to {src}: {exc}") from None
        times_ms = [float(t) for t in _PING_TIME.findall(output)][1:]
        if not times_ms:
            raise RuntimeError(f"no ping reply from {dst} to {src}: {output}")
        return statistics.median(times_ms)


def remove_netns(names: list[str]) -> None:
    """Delete the named namespaces that exist; the others are skipped."""
    for name in reversed(names):
        if Path(f"/var/run/netns/{name}").exists():
            try:
                run(["ip", "netns", "del", name])
            except CommandError as exc:
                logger.warning("cannot delete namespace %s: %s", name, exc)


def _wait_ready(process: subprocess.Popen[str], timeout_s: float) -> bool:
    """Wait for a process to print ``ready``; False if it exits or times out."""
    if process.stdout is None:
        raise ValueError("the process was started without a stdout pipe")
    deadline = time.monotonic() + timeout_s
    while (left_s := deadline - time.monotonic()) > 0:
        readable, _, _ = select.select([process.stdout], [], [], left_s)
        if not readable:
            return False
        line = process.stdout.readline()
        if not line:
            return False
        if line.strip() == READY:
            return True
    return False


def _host_link(k: int, spec: TestbedSpec) -> Link:
    link = spec.links[k]
    a_host, b_host = link.hosts
    device = f"tb{k}"
    return Link(
        a=LinkEnd(a_host, device, str(_LINK_NET[2 * k])),
        b=LinkEnd(b_host, device, str(_LINK_NET[2 * k + 1])),
        delay_ms=link.delay_ms,
        bandwidth_mbps=link.bandwidth_mbps,
    )


def _radio_link(i: int, host: str, spec: TestbedSpec) -> Link:
    return Link(
        a=LinkEnd(USER, f"tu{i}", str(_RADIO_NET[2 * i + 1])),
        b=LinkEnd(host, "tuser", str(_RADIO_NET[2 * i])),
        delay_ms=spec.user.radio_rtt_ms / 2.0,
        bandwidth_mbps=spec.user.bandwidth_mbps,
    )


def _shaping(device: str, link: Link, delay_by: str, mtu: int) -> list[str]:
    """``tc`` commands for the egress of one end: delay (netem) and rate."""
    rate_bytes_per_s = link.bandwidth_mbps * 1e6 / 8.0
    # the bucket holds at least two full frames, else large frames never pass
    burst_bytes = int(max(2 * (mtu + 64), rate_bytes_per_s * 0.001))
    tbf = f"tbf rate {link.bandwidth_mbps}mbit burst {burst_bytes} latency 50ms"
    if delay_by == "netem":
        return [
            f"qdisc replace dev {device} root handle 1: netem "
            f"delay {link.delay_ms}ms limit 100000",
            f"qdisc add dev {device} parent 1:1 handle 10: {tbf}",
        ]
    return [f"qdisc replace dev {device} root {tbf}"]
