"""What a testbed is made of: hosts, the links between them, and a user.

A :class:`TestbedSpec` is read from YAML (or TOML) with unknown keys refused,
or cut out of a scenario's network by :meth:`TestbedSpec.from_scenario`. The
spec alone fixes the round-trip times the testbed must show: traffic follows
minimum-delay paths over the links, and the user reaches every host through
its access host.

Example::

    hosts:
      - {name: h1, zone: west}
      - {name: h2, runtime: kata}
      - {name: h3}
    links:
      - {hosts: [h1, h2], delay_ms: 2.0, bandwidth_mbps: 200}
      - {hosts: [h2, h3], delay_ms: 3.0, bandwidth_mbps: 100}
    user: {access_host: h1, radio_rtt_ms: 8.0}
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import networkx as nx
import numpy as np

from mecrl.config import (
    check,
    check_integer,
    check_non_negative,
    check_positive,
    from_dict,
    load_file,
)
from mecrl.runtimes import RUNTIME_NAMES
from mecrl.scenario import Scenario

RUNC_HANDLER = "io.containerd.runc.v2"
KATA_HANDLER = "io.containerd.kata.v2"
USER = "user"
"""Name of the user host; no edge host may take it."""

_HOST_NAME = re.compile(r"[a-z][a-z0-9]{0,9}")


@dataclass(frozen=True)
class HostSpec:
    """One edge host."""

    name: str
    """Short name: a lower-case letter, then up to 9 letters or digits."""
    runtime: Literal["runc", "kata"] = "runc"
    """The isolation the host offers: ``kata`` hosts may run sandboxed
    services and never checkpoint."""
    can_checkpoint: bool | None = None
    """Whether the host checkpoints running containers (CRIU); None means
    yes for ``runc`` hosts."""
    zone: str = "default"
    """Trust zone of the host."""
    site: int | None = None
    """Scenario site this host stands for, when built from a scenario."""

    def __post_init__(self) -> None:
        check(
            _HOST_NAME.fullmatch(self.name) is not None and self.name != USER,
            "name",
            f"must be a lower-case letter and up to 9 letters or digits, other "
            f"than {USER!r}; got {self.name!r}",
        )
        check(
            not (self.runtime == "kata" and self.can_checkpoint),
            "can_checkpoint",
            "kata hosts cannot checkpoint",
        )
        check(bool(self.zone), "zone", "must not be empty")

    @property
    def checkpoints(self) -> bool:
        """Whether this host checkpoints, with the default resolved."""
        if self.can_checkpoint is None:
            return self.runtime == "runc"
        return self.can_checkpoint


@dataclass(frozen=True)
class LinkSpec:
    """A link between two edge hosts."""

    hosts: tuple[str, str]
    """The two hosts it joins."""
    delay_ms: float
    """One-way delay; a round trip over the link takes twice this."""
    bandwidth_mbps: float
    """Rate in each direction."""

    def __post_init__(self) -> None:
        check(self.hosts[0] != self.hosts[1], "hosts", "a link joins two hosts")
        check_non_negative("delay_ms", self.delay_ms)
        check_positive("bandwidth_mbps", self.bandwidth_mbps)


@dataclass(frozen=True)
class UserSpec:
    """The user host, attached to one edge host at a time by a radio link."""

    access_host: str
    """Edge host the user is attached to when the testbed comes up."""
    radio_rtt_ms: float = 10.0
    """Round trip over the radio link between the user and its access host."""
    bandwidth_mbps: float = 1000.0
    """Rate of the radio link in each direction."""

    def __post_init__(self) -> None:
        check_non_negative("radio_rtt_ms", self.radio_rtt_ms)
        check_positive("bandwidth_mbps", self.bandwidth_mbps)


@dataclass(frozen=True)
class TestbedSpec:
    """Edge hosts, links and the user of a testbed."""

    hosts: tuple[HostSpec, ...]
    """The edge hosts."""
    links: tuple[LinkSpec, ...]
    """Links between edge hosts; together they must connect every host."""
    user: UserSpec
    """The user host."""
    kata_handler: str = RUNC_HANDLER
    """containerd runtime handler that ``kata`` hosts run. Kata cannot be
    installed on the machines mecrl is tested on, so by default those hosts
    run runc under Kata's rules (no checkpoint); set it to
    ``io.containerd.kata.v2`` where Kata is installed."""
    mtu: int = 9000
    """MTU of every link: large frames keep a user-space forwarder fast."""

    __test__ = False  # a dataclass named Test*, not a pytest class

    def __post_init__(self) -> None:
        check(len(self.hosts) > 0, "hosts", "must list at least one host")
        names = [host.name for host in self.hosts]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        check(not duplicates, "hosts", f"duplicate host names: {duplicates}")
        self._check_links(set(names))
        check(
            self.user.access_host in names,
            "user.access_host",
            f"unknown host {self.user.access_host!r}; hosts are {', '.join(names)}",
        )
        check(
            self.kata_handler in (RUNC_HANDLER, KATA_HANDLER),
            "kata_handler",
            f"must be {RUNC_HANDLER} or {KATA_HANDLER}, got {self.kata_handler!r}",
        )
        check_integer("mtu", self.mtu, minimum=1280)
        check(self.mtu <= 65_000, "mtu", f"must be at most 65000, got {self.mtu}")

    def _check_links(self, names: set[str]) -> None:
        seen: set[frozenset[str]] = set()
        for i, link in enumerate(self.links):
            for end in link.hosts:
                check(
                    end in names,
                    f"links.{i}.hosts",
                    f"unknown host {end!r}; hosts are {', '.join(sorted(names))}",
                )
            pair = frozenset(link.hosts)
            check(pair not in seen, f"links.{i}", f"duplicate link {link.hosts}")
            seen.add(pair)
        check(
            nx.is_connected(self.graph()),
            "links",
            "must connect every host to every other",
        )

    @classmethod
    def from_file(cls, path: str | Path) -> TestbedSpec:
        """Read a spec from a YAML or TOML file."""
        return from_dict(cls, load_file(path))

    @classmethod
    def from_scenario(
        cls, scenario: Scenario, n_hosts: int, *, kata_handler: str = RUNC_HANDLER
    ) -> TestbedSpec:
        """Cut a testbed of ``n_hosts`` hosts out of a scenario's network.

        The hosts are the scenario's most central site that hosts services,
        then, one at a time, the hosting site nearest (by RTT) to those
        already taken. Every pair of hosts is linked directly with half the
        scenario's RTT between them as one-way delay and the path's bottleneck
        bandwidth, so the testbed reproduces the scenario's RTTs exactly. The
        user starts at the first host with the scenario's radio RTT.

        Raises:
            ValueError: If the scenario has fewer hosting sites than
                ``n_hosts``.
        """
        check_integer("n_hosts", n_hosts, minimum=1)
        sites = scenario.sites
        hosting = np.flatnonzero(sites.runtimes[: sites.n_edge].any(axis=1))
        check(
            len(hosting) >= n_hosts,
            "n_hosts",
            f"scenario {scenario.config.name!r} has {len(hosting)} sites that "
            f"host services, fewer than {n_hosts}",
        )
        rtt_ms = scenario.network.rtt_ms
        chosen = _central_sites(rtt_ms, hosting, n_hosts)
        kata = RUNTIME_NAMES.index("kata")
        hosts = tuple(
            HostSpec(
                name=f"s{site}",
                runtime="kata" if sites.runtimes[site, kata] else "runc",
                zone=sites.zone_names[sites.zone[site]],
                site=int(site),
            )
            for site in chosen
        )
        bandwidth = scenario.network.bandwidth_mbps
        links = tuple(
            LinkSpec(
                hosts=(f"s{a}", f"s{b}"),
                delay_ms=float(rtt_ms[a, b]) / 2.0,
                bandwidth_mbps=float(bandwidth[a, b]),
            )
            for i, a in enumerate(chosen)
            for b in chosen[i + 1 :]
        )
        user = UserSpec(
            access_host=hosts[0].name, radio_rtt_ms=scenario.config.radio_rtt_ms
        )
        return cls(hosts=hosts, links=links, user=user, kata_handler=kata_handler)

    def host(self, name: str) -> HostSpec:
        """Return the host called ``name``.

        Raises:
            KeyError: If there is none.
        """
        for host in self.hosts:
            if host.name == name:
                return host
        known = ", ".join(h.name for h in self.hosts)
        raise KeyError(f"unknown host {name!r}; hosts are {known}")

    def runtime_handler(self, name: str) -> str:
        """Return the containerd runtime handler host ``name`` runs."""
        return self.kata_handler if self.host(name).runtime == "kata" else RUNC_HANDLER

    def graph(self) -> nx.Graph:
        """Return the hosts as a graph whose edges carry ``delay_ms``."""
        graph = nx.Graph()
        graph.add_nodes_from(host.name for host in self.hosts)
        for link in self.links:
            graph.add_edge(*link.hosts, delay_ms=link.delay_ms)
        return graph

    def paths(self) -> dict[str, dict[str, list[str]]]:
        """Minimum-delay path between every ordered pair of hosts.

        Ties between equally fast paths are broken by networkx's Dijkstra,
        which is deterministic for a given spec; the reverse of the path from
        ``a`` to ``b`` is used from ``b`` to ``a``, so traffic both ways
        crosses the same links.
        """
        raw = dict(nx.all_pairs_dijkstra_path(self.graph(), weight="delay_ms"))
        names = [host.name for host in self.hosts]
        paths: dict[str, dict[str, list[str]]] = {a: {} for a in names}
        for i, a in enumerate(names):
            for b in names[i:]:
                paths[a][b] = raw[a][b]
                paths[b][a] = list(reversed(raw[a][b]))
        return paths

    def rtt_ms(self, src: str, dst: str, *, access_host: str | None = None) -> float:
        """Configured round trip between two hosts, either may be the user.

        Args:
            src: A host name, or ``"user"``.
            dst: A host name, or ``"user"``.
            access_host: Where the user is attached; the spec's initial
                access host when None.
        """
        access = access_host or self.user.access_host
        delays = {frozenset(link.hosts): link.delay_ms for link in self.links}
        radio_ms = 0.0
        ends = []
        for end in (src, dst):
            if end == USER:
                radio_ms += self.user.radio_rtt_ms
                ends.append(access)
            else:
                self.host(end)
                ends.append(end)
        if src == dst:
            return 0.0
        path = self.paths()[ends[0]][ends[1]]
        one_way_ms = sum(delays[frozenset(hop)] for hop in itertools.pairwise(path))
        return radio_ms + 2.0 * one_way_ms


def _central_sites(rtt_ms: np.ndarray, hosting: np.ndarray, n_hosts: int) -> list[int]:
    """The hosting site with the least total RTT, then nearest ones greedily."""
    among = rtt_ms[np.ix_(hosting, hosting)]
    chosen = [int(hosting[int(np.argmin(among.sum(axis=1)))])]
    while len(chosen) < n_hosts:
        left = [int(s) for s in hosting if int(s) not in chosen]
        nearest = min(left, key=lambda s: (float(rtt_ms[chosen, s].min()), s))
        chosen.append(nearest)
    return chosen
