"""containerd through its ``ctr`` client: images, containers, checkpoints.

Each host agent drives one containerd namespace. Containers run detached
with no standard streams, join the host's network namespace, and see their
state volume (a host directory) at ``/state``.

A live checkpoint is taken with ``ctr tasks checkpoint --exit --image-path``:
CRIU writes its images to a plain directory and the task stops, so nothing
the service does after the dump is lost. containerd 1.6's ``ctr`` restores
only from a checkpoint *image* in its content store, whose spec still names
the source host's network namespace and volume; :func:`checkpoint_layout`
therefore builds that image for the target, from the CRIU images and the
target's own spec, as an OCI layout that ``ctr images import`` loads.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import subprocess
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

VOLUME_TARGET = "/data"
"""Where a service sees its state volume."""

CRIU_CONFIG_ANNOTATION = "org.criu.config"
"""Annotation naming the CRIU config file runc passes to every dump and
restore of the container (runc reads no other per-container CRIU options)."""

_SPEC_TYPE = "types.containerd.io/opencontainers/runtime-spec/1/Spec"
_RUNC_OPTIONS_TYPE = "containerd.runc.v1.Options"
_RUNC_BINARY_FIELD = 6
"""Field number of ``binary_name`` in containerd's runc ``Options`` message."""
_INDEX_TYPE = "application/vnd.oci.image.index.v1+json"
_CRIU_TYPE = "application/vnd.containerd.container.criu.checkpoint.criu.tar"
_SPEC_BLOB_TYPE = "application/vnd.containerd.container.checkpoint.config.v1+proto"
_OPTIONS_TYPE = "application/vnd.containerd.container.checkpoint.runtime.options+proto"


class ContainerdError(RuntimeError):
    """A ``ctr`` command failed; the message holds its error output."""


@dataclass(frozen=True)
class Ctr:
    """One containerd namespace, driven through ``ctr``."""

    socket: str
    """containerd's gRPC socket."""
    namespace: str
    """containerd namespace."""
    ctr_path: str = "ctr"
    """The ``ctr`` binary."""

    def run(self, *args: str, timeout_s: float = 120.0) -> str:
        """Run ``ctr`` with ``args`` in this namespace; return its output.

        Raises:
            ContainerdError: If ``ctr`` exits non-zero or times out.
        """
        argv = [self.ctr_path, "--address", self.socket, "-n", self.namespace, *args]
        try:
            done = subprocess.run(
                argv, capture_output=True, text=True, timeout=timeout_s, check=False
            )
        except subprocess.TimeoutExpired:
            raise ContainerdError(
                f"ctr {args[0]} {args[1]} timed out after {timeout_s} s"
            ) from None
        if done.returncode != 0:
            message = (done.stderr or done.stdout).strip()
            raise ContainerdError(f"ctr {' '.join(args[:2])}: {message}")
        return done.stdout

    def image_present(self, ref: str) -> bool:
        """Return whether image ``ref`` is in this namespace."""
        return ref in self.run("images", "ls", "-q").split()

    def import_image(self, tar_path: str | Path, ref: str) -> None:
        """Import an OCI or Docker image archive that holds ``ref``.

        Raises:
            ContainerdError: If the import fails or does not yield ``ref``.
        """
        repository = ref.rsplit(":", 1)[0] if ":" in ref.split("/")[-1] else ref
        self.run("images", "import", "--base-name", repository, str(tar_path))
        if not self.image_present(ref):
            raise ContainerdError(f"importing {tar_path} gave no image {ref!r}")

    def export_image(self, ref: str, tar_path: str | Path) -> None:
        """Write image ``ref`` to an OCI archive."""
        self.run("images", "export", "--skip-manifest-json", str(tar_path), ref)

    def remove_image(self, ref: str) -> None:
        """Remove image ``ref`` if present."""
        if self.image_present(ref):
            self.run("images", "rm", ref)

    def start(
        self,
        container_id: str,
        ref: str,
        args: list[str],
        *,
        runtime: str,
        netns_path: str | None,
        volume: Path,
        annotations: dict[str, str],
        runc_binary: str | None,
    ) -> None:
        """Create and start a detached container with its state volume."""
        argv = ["run", "-d", "--null-io", "--runtime", runtime]
        if netns_path is not None:
            argv += ["--with-ns", f"network:{netns_path}"]
        if runc_binary is not None:
            argv += ["--runc-binary", runc_binary]
        argv += [
            "--mount",
            f"type=bind,src={volume},dst={VOLUME_TARGET},options=rbind:rw",
        ]
        for key, value in annotations.items():
            argv += ["--annotation", f"{key}={value}"]
        self.run(*argv, ref, container_id, *args)

    def status(self, container_id: str) -> str | None:
        """Return the task status (``RUNNING``, ``STOPPED``...), None if absent."""
        for line in self.run("tasks", "ls").splitlines()[1:]:
            fields = line.split()
            if fields and fields[0] == container_id:
                return fields[-1]
        if container_id in self.run("containers", "ls", "-q").split():
            return "CREATED"
        return None

    def spec(self, container_id: str) -> dict[str, Any]:
        """Return the OCI runtime spec of a container."""
        info = json.loads(self.run("containers", "info", container_id))
        spec: dict[str, Any] = info["Spec"]
        return spec

    def remove(self, container_id: str, timeout_s: float = 10.0) -> None:
        """Kill a container's task and delete it and the container, if present."""
        status = self.status(container_id)
        if status is None:
            return
        if status in ("RUNNING", "PAUSED"):
            if status == "PAUSED":
                self.run("tasks", "resume", container_id)
            self.run("tasks", "kill", "-s", "SIGKILL", container_id)
            deadline = time.monotonic() + timeout_s
            while self.status(container_id) not in ("STOPPED", "CREATED", None):
                if time.monotonic() > deadline:
                    raise ContainerdError(f"task {container_id} did not stop")
                time.sleep(0.02)
        if self.status(container_id) == "STOPPED":
            self.run("tasks", "delete", container_id)
        self.run("containers", "delete", container_id)

    def pause(self, container_id: str) -> None:
        """Freeze a running task (cgroup freezer)."""
        self.run("tasks", "pause", container_id)

    def resume(self, container_id: str) -> None:
        """Thaw a paused task."""
        self.run("tasks", "resume", container_id)

    def checkpoint(self, container_id: str, image_dir: Path, work_dir: Path) -> None:
        """Dump a running task with CRIU into ``image_dir``; the task stops."""
        image_dir.mkdir(parents=True, exist_ok=True)
        work_dir.mkdir(parents=True, exist_ok=True)
        self.run(
            "tasks",
            "checkpoint",
            "--exit",
            "--image-path",
            str(image_dir),
            "--work-path",
            str(work_dir),
            container_id,
        )

    def restore(self, container_id: str, checkpoint_ref: str) -> None:
        """Create a container from a checkpoint image and restore its task.

        ``ctr containers restore`` stays attached to the restored task, so
        it runs in the background, its streams closed; the task outlives it.

        Raises:
            ContainerdError: If the task is not running once ``ctr`` returns
                or detaches.
        """
        argv = [
            self.ctr_path,
            "--address",
            self.socket,
            "-n",
            self.namespace,
            "containers",
            "restore",
            "--live",
            container_id,
            checkpoint_ref,
        ]
        process = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        deadline = time.monotonic() + 60.0
        while time.monotonic() < deadline:
            if process.poll() is not None:
                error = process.stderr.read().decode() if process.stderr else ""
                raise ContainerdError(f"ctr containers restore: {error.strip()}")
            if self.status(container_id) == "RUNNING":
                return
            time.sleep(0.01)
        process.kill()
        raise ContainerdError(f"restoring {container_id} timed out")


def target_spec(
    spec: dict[str, Any], *, netns_path: str | None, volume: Path, cgroup: str
) -> dict[str, Any]:
    """Return a copy of a source container's spec fitted to the target host.

    The network namespace, the state volume's source directory and the
    cgroup path are the host-specific parts of a spec; everything else (the
    process, its capabilities and mounts) must stay as dumped for CRIU.
    """
    spec = json.loads(json.dumps(spec))
    linux = spec["linux"]
    for namespace in linux["namespaces"]:
        if namespace["type"] == "network":
            if netns_path is None:
                namespace.pop("path", None)
            else:
                namespace["path"] = netns_path
    for mount in spec["mounts"]:
        if mount["destination"] == VOLUME_TARGET:
            mount["source"] = str(volume)
    linux["cgroupsPath"] = cgroup
    return spec


def checkpoint_layout(
    path: Path,
    *,
    criu_dir: Path,
    spec: dict[str, Any],
    image_ref: str,
    checkpoint_ref: str,
    runtime: str,
    runc_binary: str | None,
) -> None:
    """Write an OCI layout archive holding a containerd checkpoint image.

    Args:
        path: The archive to write.
        criu_dir: CRIU's image files.
        spec: The runtime spec to restore with (see :func:`target_spec`).
        image_ref: The image the container runs, present at the target.
        checkpoint_ref: Name of the checkpoint image once imported.
        runtime: containerd runtime handler.
        runc_binary: runc binary to restore with, or None for runc on PATH.
    """
    blobs: dict[str, bytes] = {}

    def blob(media_type: str, data: bytes) -> dict[str, Any]:
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        blobs[digest] = data
        return {
            "mediaType": media_type,
            "digest": digest,
            "size": len(data),
            "platform": {"architecture": "amd64", "os": "linux"},
        }

    options = b""
    if runc_binary is not None:
        options = _proto_bytes(_RUNC_BINARY_FIELD, runc_binary.encode())
    spec_json = json.dumps(spec).encode()
    index = {
        "schemaVersion": 2,
        "manifests": [
            blob(_OPTIONS_TYPE, _proto_any(_RUNC_OPTIONS_TYPE, options)),
            blob(_CRIU_TYPE, _tar_of(criu_dir)),
            blob(_SPEC_BLOB_TYPE, _proto_any(_SPEC_TYPE, spec_json)),
        ],
        "annotations": {
            "io.containerd.checkpoint.runtime": runtime,
            "io.containerd.checkpoint.snapshotter": "overlayfs",
            "org.opencontainers.image.ref.name": image_ref,
        },
    }
    index_blob = json.dumps(index).encode()
    index_digest = "sha256:" + hashlib.sha256(index_blob).hexdigest()
    blobs[index_digest] = index_blob
    layout = {
        "schemaVersion": 2,
        "manifests": [
            {
                "mediaType": _INDEX_TYPE,
                "digest": index_digest,
                "size": len(index_blob),
                "annotations": {"io.containerd.image.name": checkpoint_ref},
            }
        ],
    }
    with tarfile.open(path, "w") as archive:
        _add_bytes(archive, "oci-layout", b'{"imageLayoutVersion":"1.0.0"}')
        _add_bytes(archive, "index.json", json.dumps(layout).encode())
        for digest, data in blobs.items():
            _add_bytes(archive, f"blobs/sha256/{digest.split(':')[1]}", data)


def _tar_of(folder: Path) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for entry in sorted(folder.iterdir()):
            archive.add(entry, arcname=entry.name)
    return buffer.getvalue()


def _add_bytes(archive: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = int(time.time())
    archive.addfile(info, io.BytesIO(data))


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _proto_bytes(field: int, data: bytes) -> bytes:
    """Encode a length-delimited protobuf field."""
    return _varint(field << 3 | 2) + _varint(len(data)) + data


def _proto_any(type_url: str, value: bytes) -> bytes:
    """Encode a ``google.protobuf.Any`` holding ``value`` of ``type_url``."""
    return _proto_bytes(1, type_url.encode()) + _proto_bytes(2, value)
