"""The real backend: the simulator's interface, driving host agents.

Each scenario site that a host stands for is driven by that host's agent
(the hosts file maps hosts to sites). A service is a real container from
the hosts file's image, with its own address from the service subnet. A
slot's decision is applied with a make-before-break migration (see
:mod:`mecrl.hosts.migrate`), and the slot's cost terms are filled with what
was measured: the user's RTT to the serving host, the migration's downtime
and the bytes it sent. Terms that are policy rather than physics (SLO
violations, co-residency exposure, hop costs, zone crossings) follow from
the measured figures with the scenario's own rules.

A target that breaks a hard constraint of the scenario, or that the target
host's runtime cannot run (a sandboxed service on a runc-only host), is
refused before any agent is asked. A migration that fails leaves the
service where it was; the slot then reports it as not moved and not
refused, with the downtime the attempt cost.

Sites that no host stands for cannot be placed on: such targets are
refused, so a scenario meant for a testbed should have no more hosting
sites than the testbed has hosts.
"""

from __future__ import annotations

import ipaddress
import logging
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mecrl.backend import BACKENDS, Backend, SlotResult, spawn_services
from mecrl.config import ConfigError, check, from_dict, load_file
from mecrl.costs import weighted_total
from mecrl.hosts.client import AgentClient, AgentError, image_query
from mecrl.hosts.config import read_token
from mecrl.hosts.journal import Journal
from mecrl.hosts.migrate import (
    HEALTH_WAIT_S,
    Host,
    Migrator,
    MoveReport,
    choose_mode,
)
from mecrl.hosts.netns import check_address
from mecrl.migration import COLD
from mecrl.problem import move_terms, placement_terms
from mecrl.runtimes import RUNTIME_NAMES
from mecrl.scenario import Scenario
from mecrl.services import ISOLATION_LEVELS
from mecrl.testbed import Testbed

logger = logging.getLogger(__name__)

MB = 1e6
"""Bytes in a megabyte, as ``bytes_moved`` counts them."""


@dataclass(frozen=True)
class HostEntry:
    """One host of the hosts file."""

    name: str
    """Host name."""
    agent_url: str
    """Its agent's base URL."""
    address: str
    """The host's own IPv4 address (routes toward it; RTTs are measured to it)."""
    site: int | None = None
    """Scenario site it stands for; None for a host that only routes (the
    user's)."""
    runtime: str = "runc"
    """Isolation it offers: ``kata`` hosts also run sandboxed services."""
    can_checkpoint: bool = False
    """Whether it may checkpoint (its agent must also report a working CRIU)."""

    def __post_init__(self) -> None:
        check(
            self.runtime in RUNTIME_NAMES,
            "runtime",
            f"must be one of {', '.join(RUNTIME_NAMES)}; got {self.runtime!r}",
        )
        try:
            check_address(self.address)
        except ValueError as exc:
            raise ConfigError("address", str(exc)) from None


@dataclass(frozen=True)
class ServiceTemplate:
    """What every service of an episode runs."""

    image: str
    """Image reference."""
    image_tar: str | None = None
    """Archive to import the image from on a host that lacks it."""
    args: tuple[str, ...] = ()
    """Command and arguments."""
    port: int = 7000
    """TCP port the service answers on (its health check)."""


@dataclass(frozen=True)
class HostsConfig:
    """The hosts file: agents, the services' image and where to journal."""

    hosts: tuple[HostEntry, ...]
    """Every host; those with a ``site`` host services."""
    token_file: str
    """Bearer token of the agents."""
    journal: str
    """Migration journal file."""
    service: ServiceTemplate
    """What the services run."""
    user: str | None = None
    """Host the user stands on (RTTs are measured from its agent); the
    access site's host when None."""
    service_subnet: str = "10.77.0.0/16"
    """Service addresses: service ``n`` gets the subnet's ``n + 1``-th address."""
    tls_ca: str | None = None
    """CA bundle for HTTPS agents."""
    control_netns: str | None = None
    """Network namespace the controller reaches the agents from; its own
    when None."""
    rtt_samples: int = 3
    """TCP connects per RTT measurement (the median is taken)."""

    def __post_init__(self) -> None:
        names = [h.name for h in self.hosts]
        check(len(set(names)) == len(names), "hosts", "host names must be unique")
        sites = [h.site for h in self.hosts if h.site is not None]
        check(len(set(sites)) == len(sites), "hosts", "two hosts stand for one site")
        check(bool(sites), "hosts", "at least one host must stand for a site")
        if self.user is not None:
            check(self.user in names, "user", f"unknown host {self.user!r}")
        try:
            ipaddress.IPv4Network(self.service_subnet)
        except ValueError as exc:
            raise ConfigError("service_subnet", str(exc)) from None

    @classmethod
    def from_file(cls, path: str | Path) -> HostsConfig:
        """Read a hosts file (YAML or TOML); unknown keys are an error."""
        return from_dict(cls, load_file(path))

    @classmethod
    def from_testbed(
        cls, testbed: Testbed, journal: str | Path, args: tuple[str, ...]
    ) -> HostsConfig:
        """Return the hosts file of a running testbed.

        Args:
            testbed: The testbed. A host that stands for no scenario site
                (a testbed from a spec file) stands for its index in the spec.
            journal: Migration journal file.
            args: Command and arguments every service runs.
        """
        entries = tuple(
            HostEntry(
                name=host.name,
                agent_url=host.agent_url or "",
                address=host.address,
                site=index if host.site is None else host.site,
                runtime=host.runtime,
                can_checkpoint=host.can_checkpoint,
            )
            for index, host in enumerate(testbed.hosts.values())
        )
        return cls(
            hosts=entries,
            token_file=str(testbed.token_file),
            journal=str(journal),
            service=ServiceTemplate(
                image=testbed.image_ref,
                image_tar=None if testbed.image_tar is None else str(testbed.image_tar),
                args=args,
            ),
            control_netns=testbed.user.netns_path,
        )


def connect(config: HostsConfig) -> dict[str, Host]:
    """Return every host of a hosts file, asking each agent what it can do."""
    token = read_token(config.token_file)
    hosts = {}
    for entry in config.hosts:
        client = AgentClient(
            entry.agent_url,
            token,
            ca_file=config.tls_ca,
            netns_path=config.control_netns,
        )
        info = client.get("/v1/info")
        hosts[entry.name] = Host(
            name=entry.name,
            agent=client,
            address=entry.address,
            runtimes=("runc", "kata") if entry.runtime == "kata" else ("runc",),
            can_checkpoint=entry.can_checkpoint and bool(info["can_checkpoint"]),
        )
    return hosts


@BACKENDS.register("real")
class RealBackend(Backend):
    """Places one episode's services on real hosts through their agents.

    Args:
        scenario: The built scenario; its sites are mapped to hosts by the
            hosts file.
        hosts: The hosts file.
        on_access: Called with the host name of the user's new access site
            after each slot (a testbed moves its user host there); sites with
            no host are skipped.
    """

    def __init__(
        self,
        scenario: Scenario,
        hosts: HostsConfig,
        on_access: Callable[[str], None] | None = None,
    ) -> None:
        self.scenario = scenario
        self.config = hosts
        self.on_access = on_access
        self.entries = {h.name: h for h in hosts.hosts}
        self.site_host = {h.site: h.name for h in hosts.hosts if h.site is not None}
        for site in self.site_host:
            check(
                0 <= int(site) < scenario.n_sites,
                "hosts",
                f"site {site} is not a site of {scenario.config.name!r}",
            )
        self.hosts = connect(hosts)
        self.migrator = Migrator(self.hosts, Journal(hosts.journal))
        # a controller that restarts finishes what its last run left open
        self.migrator.recover()
        self.slot = 0
        self.specs: list[dict[str, Any]] = []
        self.last_moves: list[MoveReport | None] = []

    # -- episodes -------------------------------------------------------------

    def reset(self, key: int, service_ids: np.ndarray) -> None:
        """Start an episode: remove the last one's services, deploy new ones.

        Each service starts at the host of the feasible site nearest its user.

        Raises:
            ValueError: If a service fits at no site that a host stands for.
        """
        self.close()
        s = self.scenario
        self.service_ids = np.asarray(service_ids, dtype=np.int64)
        self.cls, self.tenant = spawn_services(s, key, self.service_ids)
        self._start_users(key)
        self.migrator.recover()
        self.site = np.array(
            [self._first_site(n) for n in range(len(self.service_ids))],
            dtype=np.int64,
        )
        subnet = ipaddress.IPv4Network(self.config.service_subnet)
        self.specs = [
            self._spec(n, str(subnet[int(i) + 1]))
            for n, i in enumerate(self.service_ids)
        ]
        for n, spec in enumerate(self.specs):
            self._deploy(spec, self.site_host[int(self.site[n])])
        self._notify_access()

    def _first_site(self, n: int) -> int:
        """Return the nearest site to service ``n``'s user that it may run at."""
        s, cls = self.scenario, int(self.cls[n])
        for site in s.nearest_feasible[cls, int(self.access[n])]:
            if s.constraints.static[cls, site] and self._host_runs(n, int(site)):
                return int(site)
        raise ValueError(
            f"service {self.service_ids[n]} of class "
            f"{s.classes.names[cls]!r} fits at no site that a host stands for"
        )

    def _spec(self, n: int, address: str) -> dict[str, Any]:
        classes, cls = self.scenario.classes, int(self.cls[n])
        template = self.config.service
        return {
            "service": f"svc{int(self.service_ids[n])}",
            "image": template.image,
            "args": list(template.args),
            "runtime": RUNTIME_NAMES[int(classes.runtime[cls])],
            "isolation": ISOLATION_LEVELS[int(classes.isolation[cls])],
            "port": template.port,
            "address": address,
        }

    def _deploy(self, spec: dict[str, Any], host_name: str) -> None:
        host = self.hosts[host_name]
        template = self.config.service
        if not host.agent.get(image_query(spec["image"]))["present"]:
            if template.image_tar is None:
                raise ValueError(f"host {host_name} lacks {spec['image']!r}")
            host.agent.post(
                "/v1/images/import", {"ref": spec["image"], "tar": template.image_tar}
            )
        host.agent.post("/v1/services", spec)
        state = host.agent.get(f"/v1/services/{spec['service']}?wait_s={HEALTH_WAIT_S}")
        if not state["healthy"]:
            raise AgentError(host.agent.url, 0, f"{spec['service']} never got healthy")
        self.migrator.switch(spec["address"], host)

    def close(self) -> None:
        """Delete this backend's services from every host, and their routes."""
        for spec in self.specs:
            for host in self.hosts.values():
                for path in (
                    f"/v1/services/{spec['service']}",
                    f"/v1/addresses/{spec['address']}",
                    f"/v1/routes/{spec['address']}",
                    f"/v1/drops/{spec['address']}",
                ):
                    try:
                        host.agent.delete(path)
                    except AgentError as exc:
                        if exc.status != 404:
                            logger.warning("clean-up of %s failed: %s", path, exc)
        self.specs = []

    # -- slots ----------------------------------------------------------------

    def _host_runs(self, n: int, site: int) -> bool:
        """Whether a host stands for ``site`` and runs service ``n``'s runtime."""
        name = self.site_host.get(site)
        runtime = RUNTIME_NAMES[int(self.scenario.classes.runtime[self.cls[n]])]
        return name is not None and runtime in self.hosts[name].runtimes

    def admissible(self, n: int, target: int) -> bool:
        """Whether service ``n`` may move to ``target`` under every hard rule."""
        here = int(self.site[n])
        if target == here:
            return True
        cls = self.cls[n : n + 1]
        ok = self.scenario.constraints.feasible(
            cls, self.site[n : n + 1], np.array([target])
        )
        return bool(ok[0]) and self._host_runs(n, target)

    def step(self, target: np.ndarray) -> SlotResult:
        """Move services to ``target`` where admissible, measure, move users on."""
        target = self._checked_target(target)
        previous = self.site.copy()
        refused = np.zeros(len(target), dtype=bool)
        downtime_s = np.zeros(len(target))
        moved_mb = np.zeros(len(target))
        self.last_moves = []
        for n, site in enumerate(target.tolist()):
            report = None
            if site != previous[n] and not self.admissible(n, site):
                refused[n] = True
                logger.warning(
                    "refused: service %s may not run at site %d", n, int(site)
                )
            elif site != previous[n]:
                report = self._move(n, site)
                downtime_s[n] = report.downtime_s
                moved_mb[n] = report.moved_bytes / MB
            self.last_moves.append(report)
        terms = self._terms(previous, downtime_s, moved_mb)
        cost = weighted_total(terms, self.scenario.config.costs.weights)
        self._advance_users()
        self._notify_access()
        return SlotResult(
            terms=terms,
            cost=np.broadcast_to(cost, previous.shape).copy(),
            refused=refused,
            moved=self.site != previous,
        )

    def _move(self, n: int, site: int) -> MoveReport:
        source = self.site_host[int(self.site[n])]
        target = self.site_host[site]
        # live only for classes the scenario moves live, and hosts that can
        live = (
            self.scenario.classes.mode[self.cls[n]] != COLD
            and choose_mode(
                self.specs[n]["runtime"], self.hosts[source], self.hosts[target]
            )
            == "live"
        )
        report = self.migrator.migrate(
            self.specs[n], source, target, "live" if live else "cold"
        )
        if report.ok:
            self.site[n] = site
        else:
            logger.warning("migration of service %d failed: %s", n, report.error)
        return report

    def _terms(
        self, previous: np.ndarray, downtime_s: np.ndarray, moved_mb: np.ndarray
    ) -> dict[str, np.ndarray]:
        """Cost terms of the slot, measured where the world can be measured."""
        s = self.scenario
        terms = placement_terms(s, self.cls, self.access, self.site)
        latency_ms = s.config.radio_rtt_ms + self.measure_rtt_ms()
        terms["access_latency"] = latency_ms
        slo = s.classes.slo_ms[self.cls]
        terms["slo_violation"] = (latency_ms > slo).astype(np.float64)
        moves = move_terms(s, self.cls, previous, self.site)
        moves["downtime"] = downtime_s
        moves["bytes_moved"] = moved_mb
        terms.update(moves)
        return terms

    def measure_rtt_ms(self) -> np.ndarray:
        """Return the measured RTT from each service's user to its host, in ms.

        Measured from the user's host when the hosts file names one, else
        from the host of the user's access site (the radio part is the
        scenario's ``radio_rtt_ms``, added by the caller).
        """
        rtt = np.zeros(len(self.site))
        for n, site in enumerate(self.site.tolist()):
            serving = self.entries[self.site_host[site]]
            origin = self.config.user or self.site_host.get(int(self.access[n]))
            if origin is None or origin == serving.name:
                continue
            port = urllib.parse.urlsplit(serving.agent_url).port
            target = f"{serving.address}:{port}"
            answer = self.hosts[origin].agent.post(
                "/v1/rtt", {"targets": [target], "count": self.config.rtt_samples}
            )
            value = answer["rtt_ms"][target]
            if value is None:
                raise AgentError(serving.agent_url, 0, f"no RTT from {origin}")
            rtt[n] = value
        return rtt

    def _notify_access(self) -> None:
        if self.on_access is None or len(self.access) == 0:
            return
        name = self.site_host.get(int(self.access[0]))
        if name is not None:
            self.on_access(name)
