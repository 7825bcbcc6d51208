"""The host agent: an HTTP API over one host's containerd.

One agent runs on every edge host (``mecrl host-agent --config FILE``). It
deploys services from OCI images with a state volume, reports their health,
freezes, checkpoints (runc with CRIU) or exports them, streams their state
to a peer agent, starts or restores what it received, stops them, holds and
routes service addresses in its own network namespace, and measures RTTs.

The API speaks JSON. Every call but ``GET /healthz`` carries
``Authorization: Bearer TOKEN``; all agents of a deployment share the token
(an agent authenticates to its peers with its own), compared in constant
time. A bad request gets a 4xx whose ``error`` says what is wrong.

| method | path | does |
|---|---|---|
| GET | /healthz | liveness, unauthenticated |
| GET | /v1/info | host name, runtime handler, runtimes, CRIU modes |
| GET | /v1/images?ref=R | whether image R is present |
| POST | /v1/images/import | import ``{ref, tar}`` from a file on this host |
| POST | /v1/images/send | send ``{ref, peer}`` to a peer agent |
| PUT | /v1/images?ref=R | receive an image archive |
| GET | /v1/services | every service and its status |
| POST | /v1/services | deploy a service (see :class:`ServiceSpec`) |
| GET | /v1/services/ID?wait_s=S | status and health (waits up to S s) |
| DELETE | /v1/services/ID | stop it and delete its volume and state |
| POST | /v1/services/ID/stop | stop it, keeping its volume |
| POST | /v1/services/ID/pause, /resume | freeze or thaw it (cold moves) |
| POST | /v1/services/ID/checkpoint | CRIU dump; the task stops |
| POST | /v1/services/ID/restore-local | restore its own last dump |
| POST | /v1/services/ID/send | stream ``{peer, mode}`` state to a peer |
| PUT | /v1/services/ID/state | receive state from a peer |
| POST | /v1/services/ID/start | start (cold) or restore (live) received state |
| POST | /v1/addresses | claim ``{address}`` |
| DELETE | /v1/addresses/A | release A |
| POST | /v1/routes | route ``{address}`` toward host address ``{toward}`` |
| DELETE | /v1/routes/A | remove the route of A |
| POST | /v1/drops | drop packets of ``{address}`` until told otherwise |
| DELETE | /v1/drops/A | stop dropping them |
| POST | /v1/rtt | median TCP connect time to ``{targets: ["ADDR:PORT"]}`` |
"""

from __future__ import annotations

import io
import json
import logging
import re
import shutil
import statistics
import subprocess
import tarfile
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from mecrl.config import ConfigError, check, from_dict
from mecrl.hosts.client import AgentClient, image_query
from mecrl.hosts.config import HostAgentConfig
from mecrl.hosts.containerd import (
    CRIU_CONFIG_ANNOTATION,
    Ctr,
    checkpoint_layout,
    target_spec,
)
from mecrl.hosts.netns import HostNetwork, check_address, connect_s, wait_port
from mecrl.runtimes import RUNTIME_NAMES
from mecrl.services import ISOLATION_LEVELS

logger = logging.getLogger(__name__)

MAX_JSON_BYTES = 1 << 20
"""Largest JSON body accepted."""

MODES: tuple[str, ...] = ("cold", "live")
"""How state moves: the volume alone, or the volume and a CRIU dump."""

_SERVICE_ID = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")
_CHECKPOINT_REPO = "mecrl-checkpoint"


class ApiError(Exception):
    """A request the agent refuses, with its HTTP status."""

    def __init__(self, status: int, message: str) -> None:
        self.status = status
        super().__init__(message)


@dataclass(frozen=True)
class ServiceSpec:
    """A service as deployed: image, command, runtime and health port."""

    service: str
    """Service id: lower-case letters, digits and dashes."""
    image: str
    """Image reference, present on the host (see ``/v1/images/import``)."""
    args: tuple[str, ...] = ()
    """Command and arguments; the image's own when empty."""
    runtime: str = "runc"
    """mecrl runtime: ``runc`` or ``kata``."""
    isolation: str = "shared"
    """Isolation level; ``sandboxed`` needs a Kata host."""
    port: int | None = None
    """TCP port that accepts connections when the service is healthy."""
    address: str | None = None
    """Service address, dropped around a checkpoint so no reset escapes."""

    def __post_init__(self) -> None:
        check(
            bool(_SERVICE_ID.fullmatch(self.service)),
            "service",
            f"must be lower-case letters, digits and dashes, got {self.service!r}",
        )
        check(
            self.runtime in RUNTIME_NAMES,
            "runtime",
            f"must be one of {', '.join(RUNTIME_NAMES)}; got {self.runtime!r}",
        )
        check(
            self.isolation in ISOLATION_LEVELS,
            "isolation",
            f"must be one of {', '.join(ISOLATION_LEVELS)}; got {self.isolation!r}",
        )
        check(
            not (self.isolation == "sandboxed" and self.runtime != "kata"),
            "runtime",
            "a sandboxed service must run in kata",
        )
        if self.port is not None:
            check(0 < self.port < 65536, "port", f"must be a TCP port, got {self.port}")
        if self.address is not None:
            try:
                check_address(self.address)
            except ValueError as exc:
                raise ConfigError("address", str(exc)) from None


@dataclass
class Agent:
    """What the API does, on one host."""

    config: HostAgentConfig
    token: str
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        c = self.config
        self.ctr = Ctr(c.containerd_socket, c.containerd_namespace, c.ctr_path)
        self.network = None if c.netns_path is None else HostNetwork(c.netns_path)
        self.root = Path(c.state_dir)
        for folder in ("volumes", "services", "checkpoints", "incoming", "tmp"):
            (self.root / folder).mkdir(parents=True, exist_ok=True)
        self.criu_config = self.root / "criu.conf"
        # runc reads per-container CRIU options only from this file
        self.criu_config.write_text("tcp-established\n", encoding="utf-8")
        self.runc_binary = self._runc_wrapper()
        self.criu_modes = self._criu_modes()

    def _runc_wrapper(self) -> str | None:
        """Return a runc that calls the configured CRIU, or None for PATH's."""
        if self.config.criu_path is None:
            return None
        wrapper = self.root / "runc-criu"
        wrapper.write_text(
            f'#!/bin/sh\nexec runc --criu {self.config.criu_path} "$@"\n',
            encoding="utf-8",
        )
        wrapper.chmod(0o755)
        return str(wrapper)

    def _criu_modes(self) -> list[str]:
        """Return the checkpoint modes ``criu check`` allows here.

        ``stop-and-copy`` is what migrations use; ``pre-copy`` is listed when
        the kernel tracks dirty pages, for information. Lazy pages are not
        listed: ``criu check`` reports them on kernels where they fail.
        """
        if not self.config.can_checkpoint:
            return []
        criu = self.config.criu_path or "criu"

        def passes(*extra: str) -> bool:
            try:
                done = subprocess.run(
                    [criu, "check", *extra], capture_output=True, timeout=30
                )
            except (OSError, subprocess.TimeoutExpired):
                return False
            return done.returncode == 0

        if not passes():
            logger.warning("criu check fails: this host cannot checkpoint")
            return []
        modes = ["stop-and-copy"]
        if passes("--feature", "mem_dirty_track"):
            modes.append("pre-copy")
        return modes

    # -- info and images ------------------------------------------------------

    def info(self) -> dict[str, Any]:
        """Return what this host is and can do."""
        c = self.config
        return {
            "name": c.name,
            "runtime_handler": c.runtime_handler,
            "runtimes": list(c.runtimes),
            "can_checkpoint": bool(self.criu_modes),
            "criu_modes": self.criu_modes,
            "netns_path": c.netns_path,
        }

    def image_present(self, ref: str) -> dict[str, Any]:
        """Return whether image ``ref`` is here."""
        return {"ref": ref, "present": self.ctr.image_present(ref)}

    def import_image(self, ref: str, tar: str) -> dict[str, Any]:
        """Import image ``ref`` from an archive on this host."""
        path = Path(tar)
        if not path.is_file():
            raise ApiError(404, f"no image archive at {tar!r} on {self.config.name}")
        with self.lock:
            if self.ctr.image_present(ref):
                return {"ref": ref, "imported": False}
            self.ctr.import_image(path, ref)
        return {"ref": ref, "imported": True}

    def send_image(self, ref: str, peer: str) -> dict[str, Any]:
        """Export image ``ref`` and send it to the agent at ``peer``."""
        if not self.ctr.image_present(ref):
            raise ApiError(404, f"image {ref!r} is not on {self.config.name}")
        with tempfile.TemporaryDirectory(dir=self.root / "tmp") as folder:
            archive = Path(folder) / "image.tar"
            self.ctr.export_image(ref, archive)
            start = time.perf_counter()
            self._peer(peer).request("PUT", image_query(ref), upload=archive)
            return {
                "bytes": archive.stat().st_size,
                "seconds": time.perf_counter() - start,
            }

    def receive_image(self, ref: str, archive: Path) -> dict[str, Any]:
        """Import an image archive received from a peer."""
        with self.lock:
            if not self.ctr.image_present(ref):
                self.ctr.import_image(archive, ref)
        return {"ref": ref, "bytes": archive.stat().st_size}

    # -- services -------------------------------------------------------------

    def _record_path(self, service: str) -> Path:
        return self.root / "services" / f"{service}.json"

    def _volume(self, service: str) -> Path:
        return self.root / "volumes" / service

    def record(self, service: str) -> ServiceSpec:
        """Return the spec of a service known here.

        Raises:
            ApiError: 404 if the service is unknown here.
        """
        path = self._record_path(service)
        if not path.is_file():
            raise ApiError(404, f"no service {service!r} on {self.config.name}")
        return from_dict(ServiceSpec, json.loads(path.read_text(encoding="utf-8")))

    def _save(self, spec: ServiceSpec) -> None:
        path = self._record_path(spec.service)
        temporary = path.with_suffix(".tmp")
        temporary.write_text(json.dumps(asdict(spec)), encoding="utf-8")
        temporary.replace(path)

    def _admit(self, spec: ServiceSpec) -> None:
        """Refuse a service this host's runtime cannot run."""
        if spec.runtime not in self.config.runtimes:
            raise ApiError(
                409,
                f"service {spec.service!r} needs {spec.runtime} "
                f"({spec.isolation}); host {self.config.name} runs "
                f"{self.config.runtime_handler} only",
            )
        if not self.ctr.image_present(spec.image):
            raise ApiError(
                409, f"image {spec.image!r} is not on {self.config.name}; import it"
            )

    def deploy(self, spec: ServiceSpec) -> dict[str, Any]:
        """Start a new service with an empty state volume."""
        with self.lock:
            self._admit(spec)
            if self.ctr.status(spec.service) is not None:
                raise ApiError(409, f"service {spec.service!r} already exists here")
            volume = self._volume(spec.service)
            volume.mkdir(exist_ok=True)
            self._save(spec)
            self._start(spec)
        return self.status(spec.service)

    def _start(self, spec: ServiceSpec) -> None:
        self.ctr.start(
            spec.service,
            spec.image,
            list(spec.args),
            runtime=self.config.runtime_handler,
            netns_path=self.config.netns_path,
            volume=self._volume(spec.service),
            annotations={CRIU_CONFIG_ANNOTATION: str(self.criu_config)},
            runc_binary=self.runc_binary,
        )

    def list_services(self) -> dict[str, Any]:
        """Return every service recorded here with its task status."""
        names = sorted(p.stem for p in (self.root / "services").glob("*.json"))
        return {"services": {n: self.ctr.status(n) for n in names}}

    def status(self, service: str, wait_s: float = 0.0) -> dict[str, Any]:
        """Return a service's task status and health.

        Healthy means running and, if the service has a port, accepting
        connections on it; ``wait_s`` waits that long for health.
        """
        spec = self.record(service)
        deadline = time.monotonic() + wait_s
        while True:
            status = self.ctr.status(service)
            healthy = status == "RUNNING" and (
                spec.port is None or wait_port(spec.port, 0.2, self.config.netns_path)
            )
            if healthy or time.monotonic() >= deadline:
                return {"service": service, "status": status, "healthy": healthy}
            time.sleep(0.02)

    def stop(self, service: str) -> dict[str, Any]:
        """Stop a service's container, keeping its volume and record."""
        with self.lock:
            self.record(service)
            self.ctr.remove(service)
        return {"service": service, "status": None}

    def delete(self, service: str) -> dict[str, Any]:
        """Stop a service and delete all it left here.

        It waits for any request on the service still running here (say, a
        start sent by a controller that then died), so nothing it creates
        outlives the deletion.
        """
        folders = [
            self._volume(service),
            self.root / "checkpoints" / service,
            self.root / "incoming" / service,
        ]
        with self.lock:
            if not self._record_path(service).is_file() and not any(
                folder.exists() for folder in folders
            ):
                raise ApiError(404, f"no service {service!r} on {self.config.name}")
            self.ctr.remove(service)
            self.ctr.remove_image(self._checkpoint_ref(service))
            for folder in folders:
                shutil.rmtree(folder, ignore_errors=True)
            self._record_path(service).unlink(missing_ok=True)
        return {"service": service, "deleted": True}

    def pause(self, service: str) -> dict[str, Any]:
        """Freeze a running service (its state stops changing)."""
        with self.lock:
            self.record(service)
            if self.ctr.status(service) != "PAUSED":
                self.ctr.pause(service)
        return self.status(service)

    def resume(self, service: str) -> dict[str, Any]:
        """Thaw a frozen service."""
        with self.lock:
            self.record(service)
            if self.ctr.status(service) == "PAUSED":
                self.ctr.resume(service)
        return self.status(service)

    # -- checkpoints ----------------------------------------------------------

    def _checkpoint_ref(self, service: str) -> str:
        return f"{_CHECKPOINT_REPO}/{service}:latest"

    def _require_checkpoint(self) -> None:
        if not self.criu_modes:
            raise ApiError(
                409, f"host {self.config.name} cannot checkpoint (no working CRIU)"
            )

    def checkpoint(self, service: str) -> dict[str, Any]:
        """Dump a running service with CRIU; the task stops.

        Packets of the service's address are dropped first, so that neither
        the dump nor the stopped task answers a client with a reset, and
        CRIU's own drop-everything chain is removed after the dump so that
        this agent stays reachable.
        """
        spec = self.record(service)
        self._require_checkpoint()
        folder = self.root / "checkpoints" / service
        with self.lock:
            if self.ctr.status(service) != "RUNNING":
                raise ApiError(409, f"service {service!r} is not running")
            shutil.rmtree(folder, ignore_errors=True)
            (folder / "spec.json").parent.mkdir(parents=True)
            (folder / "spec.json").write_text(json.dumps(self.ctr.spec(service)))
            if self.network is not None and spec.address is not None:
                self.network.drop(spec.address)
            start = time.perf_counter()
            try:
                self.ctr.checkpoint(service, folder / "images", folder / "work")
            finally:
                if self.network is not None:
                    self.network.clear_criu_lock()
            seconds = time.perf_counter() - start
        size = sum(p.stat().st_size for p in (folder / "images").iterdir())
        return {"service": service, "seconds": seconds, "bytes": size}

    def restore_local(self, service: str) -> dict[str, Any]:
        """Restore a service from its own last dump here (undo a live move)."""
        spec = self.record(service)
        self._require_checkpoint()
        folder = self.root / "checkpoints" / service
        if not (folder / "images").is_dir():
            raise ApiError(409, f"service {service!r} has no checkpoint here")
        with self.lock:
            if self.ctr.status(service) != "RUNNING":
                self.ctr.remove(service)
                source = json.loads((folder / "spec.json").read_text())
                self._restore(spec, folder / "images", source)
            if self.network is not None and spec.address is not None:
                self.network.undrop(spec.address)
        return self.status(service)

    def _restore(
        self, spec: ServiceSpec, images: Path, source_spec: dict[str, Any]
    ) -> None:
        fitted = target_spec(
            source_spec,
            netns_path=self.config.netns_path,
            volume=self._volume(spec.service),
            cgroup=f"/{self.config.containerd_namespace}/{spec.service}",
        )
        ref = self._checkpoint_ref(spec.service)
        with tempfile.TemporaryDirectory(dir=self.root / "tmp") as temporary:
            archive = Path(temporary) / "checkpoint.tar"
            checkpoint_layout(
                archive,
                criu_dir=images,
                spec=fitted,
                image_ref=spec.image,
                checkpoint_ref=ref,
                runtime=self.config.runtime_handler,
                runc_binary=self.runc_binary,
            )
            self.ctr.remove_image(ref)
            self.ctr.run("images", "import", "--no-unpack", str(archive))
        self.ctr.restore(spec.service, ref)

    # -- moving state ---------------------------------------------------------

    def send(self, service: str, peer: str, mode: str) -> dict[str, Any]:
        """Stream a service's state (volume, and its dump if live) to a peer."""
        spec = self.record(service)
        _check_mode(mode)
        folder = self.root / "checkpoints" / service
        if mode == "live" and not (folder / "images").is_dir():
            raise ApiError(409, f"service {service!r} has no checkpoint to send")
        if mode == "cold" and self.ctr.status(service) == "RUNNING":
            raise ApiError(409, f"pause or stop service {service!r} before a cold send")
        with tempfile.TemporaryDirectory(dir=self.root / "tmp") as temporary:
            archive = Path(temporary) / "state.tar"
            with tarfile.open(archive, "w") as tar:
                tar.add(self._volume(service), arcname="volume")
                _add_json(tar, "service.json", asdict(spec))
                if mode == "live":
                    tar.add(folder / "images", arcname="images")
                    tar.add(folder / "spec.json", arcname="spec.json")
            start = time.perf_counter()
            self._peer(peer).request(
                "PUT", f"/v1/services/{service}/state", upload=archive
            )
            return {
                "service": service,
                "bytes": archive.stat().st_size,
                "seconds": time.perf_counter() - start,
            }

    def receive(self, service: str, archive: Path) -> dict[str, Any]:
        """Unpack state received from a peer, ready for :meth:`start`."""
        incoming = self.root / "incoming" / service
        unpacked = Path(tempfile.mkdtemp(dir=self.root / "tmp"))
        try:
            with tarfile.open(archive) as tar:
                tar.extractall(unpacked, filter="data")
            spec = from_dict(
                ServiceSpec, json.loads((unpacked / "service.json").read_text())
            )
        except (tarfile.TarError, OSError, ValueError) as exc:
            shutil.rmtree(unpacked, ignore_errors=True)
            raise ApiError(400, f"bad state archive: {exc}") from None
        if spec.service != service:
            shutil.rmtree(unpacked, ignore_errors=True)
            raise ApiError(
                400, f"state archive is of {spec.service!r}, not {service!r}"
            )
        with self.lock:
            shutil.rmtree(incoming, ignore_errors=True)
            unpacked.replace(incoming)
        return {"service": service, "bytes": archive.stat().st_size}

    def start(self, service: str, mode: str) -> dict[str, Any]:
        """Start (cold) or restore (live) a service from received state."""
        _check_mode(mode)
        incoming = self.root / "incoming" / service
        with self.lock:
            if not (incoming / "service.json").is_file():
                raise ApiError(409, f"no received state for {service!r}")
            spec = from_dict(
                ServiceSpec, json.loads((incoming / "service.json").read_text())
            )
            if mode == "live":
                self._require_checkpoint()
                if not (incoming / "images").is_dir():
                    raise ApiError(409, f"received state of {service!r} has no dump")
            self._admit(spec)
            if self.ctr.status(service) is not None:
                raise ApiError(409, f"service {service!r} already exists here")
            volume = self._volume(service)
            shutil.rmtree(volume, ignore_errors=True)
            (incoming / "volume").replace(volume)
            self._save(spec)
            start = time.perf_counter()
            if mode == "live":
                source = json.loads((incoming / "spec.json").read_text())
                self._restore(spec, incoming / "images", source)
            else:
                self._start(spec)
            seconds = time.perf_counter() - start
            shutil.rmtree(incoming, ignore_errors=True)
        return {**self.status(service), "seconds": seconds}

    def _peer(self, url: str) -> AgentClient:
        return AgentClient(url, self.token, ca_file=self.config.tls_ca)

    # -- network --------------------------------------------------------------

    def _net(self) -> HostNetwork:
        if self.network is None:
            raise ApiError(
                409,
                f"host {self.config.name} has no network namespace configured; "
                "it changes no addresses or routes",
            )
        return self.network

    def claim(self, address: str) -> dict[str, Any]:
        """Hold a service address here."""
        self._net().claim(check_address(address))
        return {"address": address, "held": True}

    def release(self, address: str) -> dict[str, Any]:
        """Give up a service address."""
        self._net().release(check_address(address))
        return {"address": address, "held": False}

    def route(self, address: str, toward: str) -> dict[str, Any]:
        """Route a service address toward the host at ``toward``."""
        self._net().route(check_address(address), check_address(toward))
        return {"address": address, "toward": toward}

    def unroute(self, address: str) -> dict[str, Any]:
        """Remove the route of a service address."""
        self._net().unroute(check_address(address))
        return {"address": address, "routed": False}

    def drop(self, address: str) -> dict[str, Any]:
        """Drop, without reset, packets of a service address."""
        self._net().drop(check_address(address))
        return {"address": address, "dropped": True}

    def undrop(self, address: str) -> dict[str, Any]:
        """Stop dropping packets of a service address."""
        self._net().undrop(check_address(address))
        return {"address": address, "dropped": False}

    def rtt(self, targets: list[str], count: int) -> dict[str, Any]:
        """Return the median TCP connect time to each ``ADDR:PORT``, in ms."""
        result: dict[str, float | None] = {}
        for target in targets:
            address, _, port = target.rpartition(":")
            if not port.isdigit():
                raise ApiError(400, f"targets: expected ADDR:PORT, got {target!r}")
            samples = [
                connect_s(
                    check_address(address), int(port), 2.0, self.config.netns_path
                )
                for _ in range(count)
            ]
            good = [s * 1000.0 for s in samples if s is not None]
            result[target] = statistics.median(good) if good else None
        return {"rtt_ms": result}


def _check_mode(mode: str) -> None:
    if mode not in MODES:
        raise ApiError(400, f"mode must be one of {', '.join(MODES)}; got {mode!r}")


def _add_json(tar: tarfile.TarFile, name: str, data: dict[str, Any]) -> None:
    raw = json.dumps(data).encode()
    info = tarfile.TarInfo(name)
    info.size = len(raw)
    info.mtime = int(time.time())
    tar.addfile(info, io.BytesIO(raw))
