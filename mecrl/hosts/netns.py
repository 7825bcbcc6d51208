"""Addresses, routes, packet drops and probes inside one network namespace.

Every command runs through ``nsenter --net=PATH`` on the host agent's own
namespace, so an agent never changes another namespace's network, and an
agent without a namespace refuses to change any (see :class:`HostNetwork`).
TCP probes enter the namespace from a short-lived thread (``setns`` moves
only the calling thread), so they work wherever the agent itself runs.
"""

from __future__ import annotations

import ctypes
import ipaddress
import logging
import os
import socket
import subprocess
import threading
import time
from dataclasses import dataclass

logger = logging.getLogger(__name__)

_CLONE_NEWNET = 0x40000000
_CRIU_CHAIN = "CRIU"
"""Chain CRIU leaves after a dump to drop all traffic of the namespace."""


class NetworkError(RuntimeError):
    """A network command inside the namespace failed."""


def check_address(text: str) -> str:
    """Return ``text`` as a canonical IPv4 address.

    Raises:
        ValueError: If it is not one.
    """
    try:
        return str(ipaddress.IPv4Address(text))
    except ValueError:
        raise ValueError(f"expected an IPv4 address, got {text!r}") from None


@dataclass(frozen=True)
class HostNetwork:
    """The network namespace of one host."""

    netns_path: str
    """Path of the namespace (``/var/run/netns/NAME``)."""

    def _run(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            ["nsenter", f"--net={self.netns_path}", *argv],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        if check and done.returncode != 0:
            raise NetworkError(f"{' '.join(argv)}: {done.stderr.strip()}")
        return done

    def claim(self, address: str) -> None:
        """Hold ``address``/32 on the loopback; drop any route elsewhere for it."""
        self.unroute(address)
        if address not in self.addresses():
            self._run("ip", "addr", "add", f"{address}/32", "dev", "lo")

    def release(self, address: str) -> None:
        """Give up ``address`` if held."""
        if address in self.addresses():
            self._run("ip", "addr", "del", f"{address}/32", "dev", "lo")

    def addresses(self) -> list[str]:
        """Return the IPv4 addresses on the loopback."""
        out = self._run("ip", "-4", "-o", "addr", "show", "dev", "lo").stdout
        return [line.split()[3].split("/")[0] for line in out.splitlines()]

    def route(self, address: str, toward: str) -> None:
        """Route ``address``/32 the way this namespace reaches ``toward``.

        ``toward`` is the serving host's own address: the service's packets
        follow the host's shortest-path route. An address held here is
        released first: a host routes only what it does not serve.
        """
        self.release(address)
        words = self._run("ip", "-4", "route", "get", toward).stdout.split()
        if "dev" not in words:
            raise NetworkError(f"no route to {toward}")
        argv = ["ip", "route", "replace", f"{address}/32"]
        if "via" in words:
            argv += ["via", words[words.index("via") + 1]]
        argv += ["dev", words[words.index("dev") + 1]]
        self._run(*argv)

    def unroute(self, address: str) -> None:
        """Remove this namespace's route for ``address``/32, if any."""
        self._run("ip", "route", "del", f"{address}/32", check=False)

    def drop(self, address: str) -> None:
        """Silently drop packets to and from ``address`` (no resets)."""
        for chain, flag in (("INPUT", "-d"), ("OUTPUT", "-s")):
            rule = [chain, flag, address, "-j", "DROP"]
            if self._run("iptables", "-C", *rule, check=False).returncode != 0:
                self._run("iptables", "-I", *rule)

    def undrop(self, address: str) -> None:
        """Remove the drops of :meth:`drop`, if present."""
        for chain, flag in (("INPUT", "-d"), ("OUTPUT", "-s")):
            rule = [chain, flag, address, "-j", "DROP"]
            while self._run("iptables", "-C", *rule, check=False).returncode == 0:
                self._run("iptables", "-D", *rule)

    def clear_criu_lock(self) -> None:
        """Remove the chain by which CRIU drops all traffic after a dump."""
        for tool in ("iptables", "ip6tables"):
            for chain in ("INPUT", "OUTPUT"):
                while (
                    self._run(tool, "-D", chain, "-j", _CRIU_CHAIN, check=False)
                ).returncode == 0:
                    pass
            self._run(tool, "-F", _CRIU_CHAIN, check=False)
            self._run(tool, "-X", _CRIU_CHAIN, check=False)


def connect_s(
    address: str, port: int, timeout_s: float, netns_path: str | None = None
) -> float | None:
    """Return the time of one TCP connect to ``address:port``, None on failure.

    Args:
        address: IPv4 address to connect to.
        port: TCP port.
        timeout_s: Give up after this long.
        netns_path: Namespace to connect from; the caller's when None.
    """
    result: list[float | None] = [None]

    def probe() -> None:
        try:
            if netns_path is not None:
                enter_netns(netns_path)
        except OSError as exc:
            logger.warning("cannot probe %s:%d: %s", address, port, exc)
            return
        start = time.perf_counter()
        try:
            with socket.create_connection((address, port), timeout=timeout_s):
                result[0] = time.perf_counter() - start
        except OSError:
            result[0] = None

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout_s + 1.0)
    return result[0]


def connect_from(
    netns_path: str, address: str, port: int, timeout_s: float
) -> socket.socket:
    """Return a TCP connection to ``address:port`` opened inside ``netns_path``.

    A socket belongs to the namespace it was created in, so the connection
    keeps working from any thread once opened.

    Raises:
        OSError: If the namespace cannot be entered or the connect fails.
    """
    result: list[socket.socket | OSError] = []

    def connect() -> None:
        try:
            enter_netns(netns_path)
            result.append(socket.create_connection((address, port), timeout_s))
        except OSError as exc:
            result.append(exc)

    thread = threading.Thread(target=connect, daemon=True)
    thread.start()
    thread.join(timeout_s + 1.0)
    if not result:
        raise OSError(f"connecting to {address}:{port} from {netns_path} timed out")
    if isinstance(result[0], OSError):
        raise result[0]
    return result[0]


def enter_netns(netns_path: str) -> None:
    """Move the calling thread into the network namespace at ``netns_path``."""
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(netns_path, os.O_RDONLY)
    try:
        if libc.setns(fd, _CLONE_NEWNET) != 0:
            error = ctypes.get_errno()
            raise OSError(error, f"setns {netns_path}: {os.strerror(error)}")
    finally:
        os.close(fd)


def wait_port(
    port: int, timeout_s: float, netns_path: str | None, address: str = "127.0.0.1"
) -> bool:
    """Return whether ``address:port`` accepts a connection within ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        left = deadline - time.monotonic()
        if connect_s(address, port, max(0.05, min(left, 1.0)), netns_path) is not None:
            return True
        if left <= 0:
            return False
        time.sleep(0.01)
