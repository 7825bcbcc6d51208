"""Make-before-break migration of one service between two host agents.

| step | what happens | if it fails |
|---|---|---|
| begin | the journal records service, hosts, mode | nothing to undo |
| prepared | the target has the image (the source sends it) | undo target |
| target_ready | the target holds the address, dropping its packets | undo target |
| frozen | live: CRIU dump, the task stops; cold: the task is paused | roll back |
| sent | the source streams volume (and dump) to the target | roll back |
| started | the target restores or starts it, and it is healthy | roll back |
| switched | every host routes the address to the target | roll forward |
| done | the source's copy is deleted | roll forward |
| source_restored | rolled back, but the target was down: clean it later | |

Rolling back deletes what the target holds, routes the address back to the
source and resumes the source (thaws it, or restores its own dump), so a
failure at any step before the switch leaves the service running at the
source. After the switch the target serves, and only the source's copy is
left to delete. A target that is down during a roll back is cleaned later:
the migration stays open (``source_restored``) until :meth:`Migrator.recover`
can. Every step reaches the journal before the next begins, so
:meth:`Migrator.recover` can finish the same job after a crash of the
controller.

The downtime is measured at the controller, from the freeze request to the
last route change; it omits the client's TCP retransmission back-off, which
a client sees on top.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from mecrl.hosts.client import AgentClient, AgentError, image_query
from mecrl.hosts.journal import Journal, Migration

logger = logging.getLogger(__name__)

HEALTH_WAIT_S = 20.0
"""How long the target may take to become healthy."""


@dataclass(frozen=True)
class Host:
    """A host as the controller sees it."""

    name: str
    """Host name."""
    agent: AgentClient
    """Its agent."""
    address: str
    """The host's own IPv4 address; service routes point toward it."""
    runtimes: tuple[str, ...] = ("runc",)
    """mecrl runtimes it runs."""
    can_checkpoint: bool = False
    """Whether its agent reports a working CRIU."""


@dataclass
class MoveReport:
    """What one migration measured."""

    migration: str
    """Journal id."""
    mode: str
    """``live`` or ``cold``."""
    ok: bool
    """Whether the service now runs at the target."""
    downtime_s: float = 0.0
    """From the freeze request to the last route change."""
    image_bytes: int = 0
    """Image archive sent to the target (0 if it had the image)."""
    state_bytes: int = 0
    """State archive sent: volume, and the dump if live."""
    steps_s: dict[str, float] = field(default_factory=dict)
    """Seconds of each step: freeze, send (as the source timed it), start."""
    error: str | None = None
    """Why it failed, if it did."""

    @property
    def moved_bytes(self) -> int:
        """Everything sent over the network."""
        return self.image_bytes + self.state_bytes


def choose_mode(runtime: str, source: Host, target: Host) -> str:
    """Return ``live`` for runc when both hosts checkpoint, else ``cold``."""
    live = runtime == "runc" and source.can_checkpoint and target.can_checkpoint
    return "live" if live else "cold"


@dataclass
class Migrator:
    """Moves services between hosts, journalling every step.

    Args:
        hosts: Every host of the deployment, by name; all of them route
            service addresses.
        journal: Where steps are recorded.
    """

    hosts: dict[str, Host]
    journal: Journal

    def migrate(
        self,
        spec: dict[str, Any],
        source: str,
        target: str,
        mode: str | None = None,
        on_step: Callable[[str], None] | None = None,
    ) -> MoveReport:
        """Move the service of ``spec`` from ``source`` to ``target``.

        Args:
            spec: The service's spec as deployed (service id, image,
                address...).
            source: Host it runs on.
            target: Host to move it to.
            mode: ``live`` or ``cold``; :func:`choose_mode` when None.
            on_step: Called after each step is journalled, with its name.

        Returns:
            The report; ``ok`` is false when the move was rolled back.
        """
        s, t = self.hosts[source], self.hosts[target]
        mode = mode or choose_mode(spec.get("runtime", "runc"), s, t)
        key = self.journal.new_id(spec["service"])
        report = MoveReport(key, mode, ok=False)

        def step(name: str, **data: Any) -> None:
            self.journal.append(key, name, **data)
            if on_step is not None:
                on_step(name)

        step("begin", spec=spec, source=source, target=target, mode=mode)
        try:
            self._forward(spec, s, t, mode, report, step)
        except AgentError as exc:
            report.error = str(exc)
            logger.warning("migration %s failed: %s", key, exc)
            migration = self._read(key)
            if migration.reached("switched"):
                self._roll_forward(migration)
                report.ok = True
            else:
                self._roll_back(migration)
        return report

    def _forward(
        self,
        spec: dict[str, Any],
        s: Host,
        t: Host,
        mode: str,
        report: MoveReport,
        step: Callable[..., None],
    ) -> None:
        service, address = spec["service"], spec["address"]

        # prepare: the target gets the image, then holds the address silently
        if not t.agent.get(image_query(spec["image"]))["present"]:
            sent = s.agent.post(
                "/v1/images/send", {"ref": spec["image"], "peer": t.agent.url}
            )
            report.image_bytes = int(sent["bytes"])
        step("prepared", image_bytes=report.image_bytes)
        t.agent.post("/v1/drops", {"address": address})
        t.agent.post("/v1/addresses", {"address": address})
        step("target_ready")

        # freeze: from here the service is down
        start = time.perf_counter()
        if mode == "live":
            frozen = s.agent.post(f"/v1/services/{service}/checkpoint")
            report.steps_s["freeze"] = float(frozen["seconds"])
        else:
            s.agent.post(f"/v1/services/{service}/pause")
            report.steps_s["freeze"] = time.perf_counter() - start
        step("frozen")

        sent = s.agent.post(
            f"/v1/services/{service}/send", {"peer": t.agent.url, "mode": mode}
        )
        report.state_bytes = int(sent["bytes"])
        report.steps_s["send"] = float(sent["seconds"])
        step("sent", state_bytes=report.state_bytes)

        started = t.agent.post(f"/v1/services/{service}/start", {"mode": mode})
        report.steps_s["start"] = float(started["seconds"])
        health = t.agent.get(f"/v1/services/{service}?wait_s={HEALTH_WAIT_S}")
        if not health["healthy"]:
            raise AgentError(t.agent.url, 0, f"{service} is not healthy at {t.name}")
        step("started")

        self.switch(address, t)
        report.downtime_s = time.perf_counter() - start
        step("switched", downtime_s=report.downtime_s)

        self._drop_source(service, address, s)
        report.ok = True
        step("done", moved_bytes=report.moved_bytes)

    def switch(self, address: str, serving: Host) -> None:
        """Route ``address`` to ``serving`` everywhere, then let it answer."""
        serving.agent.post("/v1/addresses", {"address": address})
        for host in self.hosts.values():
            if host.name != serving.name:
                host.agent.delete(f"/v1/addresses/{address}")
                host.agent.post(
                    "/v1/routes", {"address": address, "toward": serving.address}
                )
        serving.agent.delete(f"/v1/drops/{address}")

    def _drop_source(self, service: str, address: str, s: Host) -> None:
        """Delete the source's copy once the target serves."""
        try:
            s.agent.delete(f"/v1/services/{service}")
        except AgentError as exc:
            if exc.status != 404:
                raise
        s.agent.delete(f"/v1/drops/{address}")

    def _read(self, key: str) -> Migration:
        for migration in self.journal.migrations():
            if migration.migration == key:
                return migration
        raise KeyError(f"migration {key!r} is not in {self.journal.path}")

    def _roll_back(self, migration: Migration) -> str:
        """Leave the service running at the source, and nothing at the target.

        If the target cannot be cleaned (it is down), the migration is
        journalled as ``source_restored`` and stays open: :meth:`recover`
        cleans the target once it answers, and only then records
        ``rolled_back``.

        Returns:
            The step recorded: ``rolled_back`` or ``source_restored``.
        """
        begin = migration.begin
        spec, mode = begin["spec"], begin["mode"]
        service, address = spec["service"], spec["address"]
        s, t = self.hosts[begin["source"]], self.hosts[begin["target"]]

        # the target may be gone: clean what can be cleaned there
        cleaned = [
            _best_effort(t, method, path)
            for method, path in (
                ("DELETE", f"/v1/services/{service}"),
                ("DELETE", f"/v1/addresses/{address}"),
                ("DELETE", f"/v1/drops/{address}"),
            )
        ]
        route = {"address": address, "toward": s.address}
        cleaned.append(_best_effort(t, "POST", "/v1/routes", route))

        # the source serves again: address, routes, then the task itself
        s.agent.post("/v1/addresses", {"address": address})
        for host in self.hosts.values():
            if host.name not in (s.name, t.name):
                host.agent.post("/v1/routes", {"address": address, "toward": s.address})
        if mode == "live":
            self._resume_live(service, s)
        else:
            s.agent.post(f"/v1/services/{service}/resume")
        s.agent.delete(f"/v1/drops/{address}")
        step = "rolled_back" if all(cleaned) else "source_restored"
        if not (step == "source_restored" and migration.reached(step)):
            self.journal.append(migration.migration, step)
        return step

    def _resume_live(self, service: str, s: Host) -> None:
        """Run the source again after a dump, or leave it if never dumped."""
        status = s.agent.get(f"/v1/services/{service}")["status"]
        if status != "RUNNING":
            s.agent.post(f"/v1/services/{service}/restore-local")

    def _roll_forward(self, migration: Migration) -> None:
        """Finish a migration whose target already serves."""
        begin = migration.begin
        spec = begin["spec"]
        s, t = self.hosts[begin["source"]], self.hosts[begin["target"]]
        self.switch(spec["address"], t)
        self._drop_source(spec["service"], spec["address"], s)
        self.journal.append(migration.migration, "done")

    def recover(self) -> list[tuple[str, str]]:
        """Finish or roll back every migration the journal leaves open.

        A migration that reached the switch is finished if its target is
        healthy; any other is rolled back to its source.

        Returns:
            (migration id, ``done``, ``rolled_back`` or ``source_restored``)
            for each one handled; ``source_restored`` stays open until its
            target can be cleaned.
        """
        outcomes = []
        for migration in self.journal.unfinished():
            begin = migration.begin
            target = self.hosts[begin["target"]]
            service = begin["spec"]["service"]
            forward = migration.reached("switched") and _healthy(target, service)
            if forward:
                self._roll_forward(migration)
                outcome = "done"
            else:
                outcome = self._roll_back(migration)
            logger.info("recovered %s: %s", migration.migration, outcome)
            outcomes.append((migration.migration, outcome))
        return outcomes


def _healthy(host: Host, service: str) -> bool:
    try:
        return bool(host.agent.get(f"/v1/services/{service}?wait_s=2")["healthy"])
    except AgentError:
        return False


def _best_effort(
    host: Host, method: str, path: str, body: dict[str, Any] | None = None
) -> bool:
    """Send a clean-up request; return whether it is done (or was not needed)."""
    try:
        host.agent.request(method, path, body)
    except AgentError as exc:
        if exc.status == 404:
            return True
        logger.warning("clean-up %s %s at %s failed: %s", method, path, host.name, exc)
        return False
    return True
