"""A testbed of edge hosts and a user on one Linux machine.

:meth:`Testbed.up` builds the network of a :class:`~mecrl.testbed.spec.TestbedSpec`
(see :mod:`mecrl.testbed.network`), starts one containerd with a containerd
namespace per host, builds and imports the busybox service image, and starts
one host agent per host inside the host's network namespace. Everything it
creates is recorded first in a state file in the working directory, so
:func:`teardown` (and :meth:`Testbed.down`) removes all of it, also after a
failed start or a crash; both are safe to call twice.

Layout of the working directory::

    testbed-state.json      what was created (removed by down)
    testbed.json            the running testbed, for Testbed.attach
    token                   bearer token of every agent
    image/busybox.oci.tar   the service image (OCI layout tarball)
    containerd/             config, root, state, containerd.sock
    hosts/NAME/agent.yaml   host agent config; hosts/NAME/state/ its state_dir

Needs root, iproute2, and for containers containerd, runc, umoci and
busybox-static (``.ci/install-hosts`` installs them all).
"""

from __future__ import annotations

import contextlib
import http.client
import json
import logging
import os
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import yaml

from mecrl.config import from_dict, to_dict
from mecrl.testbed.containerd import (
    IMAGE_REF,
    build_image,
    import_image,
    remove_containers,
    scratch_dir,
    start_containerd,
)
from mecrl.testbed.netns import CommandError, entered, exec_argv, netns_path, run
from mecrl.testbed.network import TestbedNetwork, remove_netns
from mecrl.testbed.spec import USER, TestbedSpec
from mecrl.testbed.state import Recorded, StateFile, alive, stop_processes

logger = logging.getLogger(__name__)

AGENT_PORT = 7070
"""Port every host agent listens on, at its host's address."""
DESCRIPTION_FILE = "testbed.json"
_AGENT_READY_S = 60.0
_RUNC_ROOT = Path("/run/containerd/runc")
_CGROUP_ROOT = Path("/sys/fs/cgroup")


@dataclass(frozen=True)
class TestbedHost:
    """One host of a running testbed (an edge host or the user)."""

    name: str
    """Host name from the spec, or ``"user"``."""
    netns: str
    """Name of its network namespace."""
    netns_path: str
    """Path of its network namespace (``/var/run/netns/NAME``)."""
    address: str
    """IPv4 address reachable from every namespace of the testbed."""
    agent_url: str | None
    """Base URL of its host agent; None for the user, or without agents."""
    runtime: str
    """Isolation it offers in the model: ``runc`` or ``kata``."""
    runtime_handler: str
    """containerd runtime handler its containers run with."""
    can_checkpoint: bool
    """Whether it checkpoints running containers (CRIU)."""
    zone: str
    """Trust zone."""
    site: int | None
    """Scenario site it stands for, if built from a scenario."""
    containerd_namespace: str
    """containerd namespace of its images and containers."""
    agent_config: str | None
    """Path of its host agent's config file, if agents run."""
    state_dir: str
    """The agent's state directory."""

    __test__ = False


class Testbed:
    """A running testbed; build one with :meth:`up`.

    Attributes:
        spec: What it was built from.
        workdir: Its working directory.
        hosts: Edge hosts by name.
        user: The user host.
        containerd_socket: containerd's socket (None without containerd).
        image_tar: The service image's OCI layout tarball (None without).
        image_ref: The image's reference once imported.
        token_file: File with the bearer token of every agent.
    """

    __test__ = False

    def __init__(self, workdir: Path, description: dict[str, Any]) -> None:
        self.workdir = workdir
        self.spec: TestbedSpec = from_dict(TestbedSpec, description["spec"])
        self.testbed_id: str = description["testbed_id"]
        self.hosts = {
            h["name"]: TestbedHost(**h)
            for h in description["hosts"]
            if h["name"] != USER
        }
        self.user = TestbedHost(
            **next(h for h in description["hosts"] if h["name"] == USER)
        )
        self.containerd_socket: str | None = description["containerd_socket"]
        self.image_tar: str | None = description["image_tar"]
        self.image_ref: str = IMAGE_REF
        self.token_file = str(workdir / "token")
        state = StateFile.load(workdir) or StateFile(workdir, Recorded(self.testbed_id))
        self._state = state
        self._network = TestbedNetwork(self.spec, self.testbed_id, workdir, state)
        self._network.access_host = description["access_host"]
        self._network.delay_by = description["delay_by"]

    @classmethod
    def up(
        cls,
        spec: TestbedSpec,
        workdir: str | Path,
        *,
        containerd: bool = True,
        agents: bool = True,
        delay_by: str = "auto",
    ) -> Testbed:
        """Build the testbed of ``spec`` in ``workdir``.

        Args:
            spec: Hosts, links and user.
            workdir: Working directory; created if missing. It must not hold
                a testbed that is still up.
            containerd: Start containerd and import the service image.
            agents: Start a host agent per host (implies ``containerd``).
            delay_by: ``auto``, ``netem`` or ``forwarder``; see
                :meth:`TestbedNetwork.build`.

        Raises:
            RuntimeError: If not root, a tool is missing, a testbed is already
                up in ``workdir``, or a part does not come up. Whatever was
                built is torn down first.
        """
        if os.geteuid() != 0:
            raise RuntimeError("the testbed needs root (network namespaces)")
        if delay_by not in ("auto", "netem", "forwarder"):
            raise ValueError(f"delay_by must be auto, netem or forwarder: {delay_by!r}")
        workdir = Path(workdir).resolve()
        workdir.mkdir(parents=True, exist_ok=True)
        if StateFile.load(workdir) is not None:
            raise RuntimeError(
                f"a testbed is up in {workdir}; run `mecrl testbed down` first"
            )
        state = StateFile(workdir, Recorded(secrets.token_hex(3)))
        state.save()
        try:
            return cls._build(
                spec, workdir, state, containerd or agents, agents, delay_by
            )
        except BaseException:
            teardown(workdir)
            raise

    @classmethod
    def _build(
        cls,
        spec: TestbedSpec,
        workdir: Path,
        state: StateFile,
        containerd: bool,
        agents: bool,
        delay_by: str,
    ) -> Testbed:
        testbed_id = state.recorded.testbed_id
        network = TestbedNetwork(spec, testbed_id, workdir, state)
        network.build(delay_by)
        token_file = workdir / "token"
        token_file.write_text(secrets.token_urlsafe(24) + "\n", encoding="utf-8")
        token_file.chmod(0o600)
        socket_path = image_tar = None
        if containerd:
            socket_path = start_containerd(workdir / "containerd", state)
            image_tar = build_image(workdir / "image" / "busybox.oci.tar")
            for host in spec.hosts:
                namespace = network.netns(host.name)
                state.add_containerd_namespace(namespace)
                import_image(socket_path, namespace, image_tar)
        description = _describe(spec, network, socket_path, image_tar, agents)
        (workdir / DESCRIPTION_FILE).write_text(json.dumps(description, indent=1))
        testbed = cls(workdir, description)
        if agents:
            testbed._start_agents()
        logger.info(
            "testbed %s up: %d hosts, delay by %s",
            testbed_id,
            len(spec.hosts),
            network.delay_by,
        )
        return testbed

    @classmethod
    def attach(cls, workdir: str | Path) -> Testbed:
        """Return the testbed running in ``workdir`` (started by another process).

        Raises:
            FileNotFoundError: If no testbed is up there.
        """
        workdir = Path(workdir).resolve()
        path = workdir / DESCRIPTION_FILE
        if StateFile.load(workdir) is None or not path.exists():
            raise FileNotFoundError(f"no testbed is up in {workdir}")
        return cls(workdir, json.loads(path.read_text(encoding="utf-8")))

    def down(self) -> None:
        """Tear the testbed down; see :func:`teardown`."""
        teardown(self.workdir)

    def __enter__(self) -> Testbed:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.down()

    @property
    def access_host(self) -> str:
        """Edge host the user is attached to."""
        return self._network.access_host

    @property
    def delay_by(self) -> str:
        """How link delay is made: ``netem`` or ``forwarder``."""
        return self._network.delay_by

    def host(self, name: str) -> TestbedHost:
        """Return the edge host ``name``, or the user for ``"user"``.

        Raises:
            KeyError: If there is no such host.
        """
        if name == USER:
            return self.user
        if name not in self.hosts:
            raise KeyError(f"unknown host {name!r}; hosts are {', '.join(self.hosts)}")
        return self.hosts[name]

    def run_in(
        self, host: str, argv: Sequence[str], **popen: Any
    ) -> subprocess.Popen[Any]:
        """Start ``argv`` inside the network namespace of ``host``.

        The process leads its own process group and is recorded in the state
        file, so :meth:`down` stops it if it still runs.

        Args:
            host: Edge host name or ``"user"``.
            argv: Command line.
            **popen: Further arguments for :class:`subprocess.Popen`.
        """
        netns = self.host(host).netns
        process = subprocess.Popen(
            exec_argv(netns, argv), start_new_session=True, **popen
        )
        self._state.record_process(process.pid, f"run:{host}")
        return process

    @contextlib.contextmanager
    def entered(self, host: str) -> Iterator[None]:
        """Run the block with the calling thread in ``host``'s namespace.

        Sockets opened in the block (an HTTP client's, say) stay in that
        namespace; see :func:`mecrl.testbed.netns.entered`.
        """
        with entered(self.host(host).netns):
            yield

    def move_user(self, host: str) -> None:
        """Re-attach the user to edge host ``host``; RTTs follow from there."""
        self._network.move_user(host)
        path = self.workdir / DESCRIPTION_FILE
        description = json.loads(path.read_text(encoding="utf-8"))
        description["access_host"] = host
        path.write_text(json.dumps(description, indent=1), encoding="utf-8")

    def measure_rtt_ms(self, src: str, dst: str, count: int = 10) -> float:
        """Median ping RTT from ``src`` to ``dst`` (host names or ``"user"``)."""
        self.host(src)
        self.host(dst)
        return self._network.measure_rtt_ms(src, dst, count)

    def configured_rtt_ms(self, src: str, dst: str) -> float:
        """RTT the spec gives from ``src`` to ``dst`` with the current access host."""
        return self.spec.rtt_ms(src, dst, access_host=self.access_host)

    def token(self) -> str:
        """Return the agents' bearer token."""
        return Path(self.token_file).read_text(encoding="utf-8").strip()

    def _start_agents(self) -> None:
        for host in self.hosts.values():
            if host.agent_config is None:
                raise RuntimeError(f"host {host.name} has no agent config")
            argv = [
                sys.executable,
                "-m",
                "mecrl.cli",
                "host-agent",
                "--config",
                host.agent_config,
            ]
            log = Path(host.state_dir).parent / "agent.log"
            self._state.spawn(exec_argv(host.netns, argv), f"agent:{host.name}", log)
        for host in self.hosts.values():
            self._wait_agent(host)

    def _wait_agent(self, host: TestbedHost) -> None:
        deadline = time.monotonic() + _AGENT_READY_S
        record = next(
            p
            for p in self._state.recorded.processes
            if p["what"] == f"agent:{host.name}"
        )
        while time.monotonic() < deadline:
            if not alive(record):
                break
            if self._healthy(host):
                return
            time.sleep(0.1)
        log = (Path(host.state_dir).parent / "agent.log").read_text(errors="replace")
        raise RuntimeError(f"host agent {host.name} did not come up: {log[-2000:]}")

    def _healthy(self, host: TestbedHost) -> bool:
        connection = http.client.HTTPConnection(host.address, AGENT_PORT, timeout=2)
        try:
            # the socket is made at connect: inside the host's namespace
            with entered(host.netns):
                connection.connect()
            connection.request("GET", "/healthz")
            return connection.getresponse().status == 200
        except OSError:
            return False
        finally:
            connection.close()


def _describe(
    spec: TestbedSpec,
    network: TestbedNetwork,
    socket_path: Path | None,
    image_tar: Path | None,
    agents: bool,
) -> dict[str, Any]:
    """The JSON description of a testbed that :meth:`Testbed.attach` reads."""
    workdir = network.workdir
    criu = _criu_path()
    hosts = []
    for host in spec.hosts:
        netns = network.netns(host.name)
        folder = workdir / "hosts" / host.name
        (folder / "state").mkdir(parents=True, exist_ok=True)
        address = network.addresses[host.name]
        config = folder / "agent.yaml" if agents else None
        entry = TestbedHost(
            name=host.name,
            netns=netns,
            netns_path=netns_path(netns),
            address=address,
            agent_url=f"http://{address}:{AGENT_PORT}" if agents else None,
            runtime=host.runtime,
            runtime_handler=spec.runtime_handler(host.name),
            can_checkpoint=host.checkpoints,
            zone=host.zone,
            site=host.site,
            containerd_namespace=netns,
            agent_config=str(config) if config else None,
            state_dir=str(folder / "state"),
        )
        if config is not None and socket_path is not None:
            config.write_text(
                yaml.safe_dump(_agent_config(entry, workdir, socket_path, criu))
            )
        hosts.append(asdict(entry))
    user_netns = network.netns(USER)
    hosts.append(
        asdict(
            TestbedHost(
                name=USER,
                netns=user_netns,
                netns_path=netns_path(user_netns),
                address=network.addresses[USER],
                agent_url=None,
                runtime="runc",
                runtime_handler="",
                can_checkpoint=False,
                zone="",
                site=None,
                containerd_namespace="",
                agent_config=None,
                state_dir="",
            )
        )
    )
    return {
        "testbed_id": network.testbed_id,
        "spec": to_dict(spec),
        "hosts": hosts,
        "access_host": network.access_host,
        "delay_by": network.delay_by,
        "containerd_socket": str(socket_path) if socket_path else None,
        "image_tar": str(image_tar) if image_tar else None,
    }


def _agent_config(
    host: TestbedHost, workdir: Path, socket_path: Path, criu: str | None
) -> dict[str, Any]:
    """The host agent config of ``host`` (``mecrl.hosts.HostAgentConfig``)."""
    return {
        "name": host.name,
        "listen": f"{host.address}:{AGENT_PORT}",
        "token_file": str(workdir / "token"),
        "containerd_socket": str(socket_path),
        "containerd_namespace": host.containerd_namespace,
        "netns_path": host.netns_path,
        "runtime_handler": host.runtime_handler,
        "can_checkpoint": host.can_checkpoint,
        # a kata host running the runc stand-in still follows Kata's rules
        "offers_kata": host.runtime == "kata",
        "state_dir": host.state_dir,
        "criu_path": criu,
    }


def _criu_path() -> str | None:
    built = Path("/usr/local/sbin/criu")
    return str(built) if built.exists() else shutil.which("criu")


def teardown(workdir: str | Path) -> bool:
    """Remove everything the testbed in ``workdir`` created.

    In order: its agents and other processes started in its namespaces, its
    containers, containerd, any mount left under ``workdir``, runc's state
    and the cgroups of its containerd namespaces, the forwarder, and the
    namespaces. Each step goes on when an earlier one fails.

    Returns:
        Whether there was anything to tear down.
    """
    workdir = Path(workdir).resolve()
    state = StateFile.load(workdir)
    if state is None:
        return False
    recorded = state.recorded
    stop_processes(recorded.processes, "agent", 5.0)
    stop_processes(recorded.processes, "run:", 5.0)
    _kill_netns_processes(recorded.netns)
    socket_path = recorded.containerd_socket
    if socket_path is not None and Path(socket_path).exists():
        for namespace in recorded.containerd_namespaces:
            remove_containers(Path(socket_path), namespace)
    stop_processes(recorded.processes, "containerd", 10.0)
    if socket_path is not None:
        _kill_shims(socket_path)
        shutil.rmtree(scratch_dir(Path(socket_path).parent), ignore_errors=True)
    _remove_runc_state(recorded.containerd_namespaces)
    _unmount_under(workdir)
    stop_processes(recorded.processes, "forwarder", 5.0)
    remove_netns(recorded.netns)
    (workdir / DESCRIPTION_FILE).unlink(missing_ok=True)
    state.remove()
    logger.info("testbed %s torn down", recorded.testbed_id)
    return True


def _kill_netns_processes(names: list[str]) -> None:
    """Kill what still runs inside the testbed's namespaces."""
    for name in names:
        if not Path(netns_path(name)).exists():
            continue
        try:
            pids = run(["ip", "netns", "pids", name]).split()
        except CommandError:
            continue
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid), 9)


def _kill_shims(socket_path: str) -> None:
    """Kill containerd shims of this testbed's containerd that outlived it."""
    marker = f"-address\0{socket_path}\0".encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if b"containerd-shim" in cmdline and marker in cmdline:
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(entry.name), 9)


def _remove_runc_state(namespaces: list[str]) -> None:
    """Delete runc containers, state and cgroups of the testbed's namespaces."""
    for namespace in namespaces:
        root = _RUNC_ROOT / namespace
        if root.is_dir():
            for container in root.iterdir():
                with contextlib.suppress(CommandError):
                    run(
                        [
                            "runc",
                            "--root",
                            str(root),
                            "delete",
                            "--force",
                            container.name,
                        ]
                    )
            shutil.rmtree(root, ignore_errors=True)
        for controller in _CGROUP_ROOT.iterdir():
            _remove_cgroup_tree(controller / namespace)


def _remove_cgroup_tree(folder: Path) -> None:
    if not folder.is_dir():
        return
    for child in folder.iterdir():
        if child.is_dir():
            _remove_cgroup_tree(child)
    with contextlib.suppress(OSError):
        folder.rmdir()


def _unmount_under(workdir: Path) -> None:
    """Unmount whatever is still mounted inside ``workdir``, deepest first."""
    for point in sorted(mounts_under(workdir), key=len, reverse=True):
        with contextlib.suppress(CommandError):
            run(["umount", "-l", point])


def mounts_under(folder: Path) -> list[str]:
    """Mount points at or below ``folder`` in this mount namespace."""
    prefix = str(folder.resolve())
    points = []
    for line in Path("/proc/self/mountinfo").read_text(encoding="utf-8").splitlines():
        point = line.split()[4].replace("\\040", " ")
        if point == prefix or point.startswith(prefix + "/"):
            points.append(point)
    return points
