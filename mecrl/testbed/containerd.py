"""The testbed's containerd and its service image.

One containerd serves every host of a testbed, each host in its own
containerd namespace. Its root, state and sockets live under the testbed's
working directory, and its CRI plugin is off (nothing here speaks
Kubernetes). No registry is reachable from these machines, so the service
image is built locally from busybox-static with umoci and kept as an OCI
layout tarball that each host imports.

Checkpoint and restore with this containerd (Debian 12: containerd 1.6,
runc 1.1, CRIU 4.1.1 from ``.ci/install-hosts``): ``ctr tasks checkpoint
--exit --image-path DIR`` dumps a task to plain CRIU images. ``ctr`` 1.6 has
no ``run --checkpoint``, cannot export a checkpoint image, and ``ctr
containers restore`` brings back the source's spec (its network namespace
and volume), so the host agents restore by importing a checkpoint image
built with the target's spec (:func:`mecrl.hosts.containerd.checkpoint_layout`).
``ctr`` passes no CRIU options: established TCP connections need the
container annotation ``org.criu.config`` naming a file that says
``tcp-established``. Files the service holds open must be in its volume,
since the container's writable layer does not move. After each dump CRIU
leaves an iptables chain ``CRIU`` that drops all local traffic of the
source host's namespace, until it is removed there. runc keeps its state
under ``/run/containerd/runc/<containerd namespace>`` for the whole machine,
which is why each host's containerd namespace carries the testbed's id.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import tarfile
import tempfile
import time
from pathlib import Path

from mecrl.testbed.netns import CommandError, run
from mecrl.testbed.state import StateFile

logger = logging.getLogger(__name__)

IMAGE_REF = "docker.io/mecrl/busybox:latest"
"""Reference of the busybox image once imported."""
_IMAGE_BASE_NAME = "docker.io/mecrl/busybox"
_BUSYBOX = Path("/bin/busybox")
_ROOTFS_DIRS = ("bin", "dev", "etc", "proc", "sys", "data", "tmp")
_READY_S = 20.0


def containerd_config(folder: Path) -> str:
    """Return a containerd config whose every path lies under ``folder``."""
    return "\n".join(
        [
            "version = 2",
            f'root = "{folder}/root"',
            f'state = "{folder}/state"',
            'disabled_plugins = ["io.containerd.grpc.v1.cri"]',
            "[grpc]",
            f'  address = "{folder}/containerd.sock"',
            "[ttrpc]",
            f'  address = "{folder}/containerd.sock.ttrpc"',
            "[debug]",
            f'  address = "{folder}/debug.sock"',
            "",
        ]
    )


def scratch_dir(folder: Path) -> Path:
    """The temporary directory of the containerd whose folder is ``folder``."""
    return folder / "tmp"


def start_containerd(folder: Path, state: StateFile) -> Path:
    """Start containerd with its config, root and state in ``folder``.

    Returns:
        The path of its gRPC socket, once it answers.

    Raises:
        RuntimeError: If containerd is not installed or does not answer.
    """
    if shutil.which("containerd") is None:
        raise RuntimeError("containerd is not installed (run .ci/install-hosts)")
    folder.mkdir(parents=True, exist_ok=True)
    config = folder / "config.toml"
    config.write_text(containerd_config(folder), encoding="utf-8")
    socket_path = folder / "containerd.sock"
    state.recorded.containerd_socket = str(socket_path)
    # containerd leaves a ctrd-checkpoint* folder in its temporary directory
    # per checkpoint; kept in the testbed's folder, teardown removes them
    scratch = scratch_dir(folder)
    scratch.mkdir(exist_ok=True)
    env = {**os.environ, "TMPDIR": str(scratch), "XDG_RUNTIME_DIR": str(scratch)}
    process = state.spawn(
        ["containerd", "--config", str(config)],
        "containerd",
        folder / "log.txt",
        env=env,
    )
    deadline = time.monotonic() + _READY_S
    while time.monotonic() < deadline and process.poll() is None:
        if _answers(socket_path):
            return socket_path
        time.sleep(0.05)
    log = (folder / "log.txt").read_text(errors="replace")[-2000:]
    raise RuntimeError(f"containerd did not come up: {log}")


def _answers(socket_path: Path) -> bool:
    if not socket_path.exists():
        return False
    with socket.socket(socket.AF_UNIX) as probe:
        try:
            probe.connect(str(socket_path))
        except OSError:
            return False
    return True


def build_image(tar_path: Path) -> Path:
    """Build the busybox service image as an OCI layout tarball at ``tar_path``.

    The root filesystem holds busybox-static with its applet links in
    ``/bin``, an empty ``/data`` for the state volume and a ``/tmp``; the
    default command is ``/bin/sh``.

    Raises:
        RuntimeError: If busybox-static or umoci is missing, or umoci fails.
    """
    for tool in ("umoci",):
        if shutil.which(tool) is None:
            raise RuntimeError(f"{tool} is not installed (run .ci/install-hosts)")
    if not _BUSYBOX.exists():
        raise RuntimeError(f"{_BUSYBOX} is missing (install busybox-static)")
    with tempfile.TemporaryDirectory(prefix="mecrl-image-") as scratch:
        layout = Path(scratch) / "layout"
        bundle = Path(scratch) / "bundle"
        image = f"{layout}:latest"
        run(["umoci", "init", "--layout", str(layout)])
        run(["umoci", "new", "--image", image])
        run(["umoci", "unpack", "--image", image, str(bundle)])
        _fill_rootfs(bundle / "rootfs")
        run(["umoci", "repack", "--image", image, str(bundle)])
        run(
            [
                "umoci",
                "config",
                "--image",
                image,
                "--config.cmd",
                "/bin/sh",
                "--config.env",
                "PATH=/bin",
            ]
        )
        run(["umoci", "gc", "--layout", str(layout)])
        tar_path.parent.mkdir(parents=True, exist_ok=True)
        with tarfile.open(tar_path, "w") as archive:
            for entry in sorted(layout.iterdir()):
                archive.add(entry, arcname=entry.name)
    return tar_path


def _fill_rootfs(rootfs: Path) -> None:
    for name in _ROOTFS_DIRS:
        (rootfs / name).mkdir(parents=True, exist_ok=True)
    (rootfs / "tmp").chmod(0o1777)
    shutil.copy2(_BUSYBOX, rootfs / "bin" / "busybox")
    applets = run([str(_BUSYBOX), "--list"]).split()
    for applet in applets:
        link = rootfs / "bin" / applet
        if applet != "busybox" and not link.exists():
            link.symlink_to("busybox")


def import_image(socket_path: Path, namespace: str, tar_path: Path) -> str:
    """Import the image tarball into one containerd namespace; return its ref.

    Raises:
        CommandError: If ``ctr`` fails.
    """
    run(
        [
            "ctr",
            "--address",
            str(socket_path),
            "--namespace",
            namespace,
            "images",
            "import",
            "--base-name",
            _IMAGE_BASE_NAME,
            str(tar_path),
        ],
        timeout_s=120,
    )
    return IMAGE_REF


def remove_containers(socket_path: Path, namespace: str) -> None:
    """Kill and delete every task and container in one containerd namespace."""
    ctr = ["ctr", "--address", str(socket_path), "--namespace", namespace]
    try:
        tasks = run([*ctr, "tasks", "list", "--quiet"]).split()
        for task in tasks:
            run([*ctr, "tasks", "delete", "--force", task], timeout_s=30)
        for container in run([*ctr, "containers", "list", "--quiet"]).split():
            run([*ctr, "containers", "delete", container])
    except CommandError as exc:
        logger.warning("cannot clean containerd namespace %s: %s", namespace, exc)
