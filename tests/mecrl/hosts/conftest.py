"""Real containerd and a locally built busybox image for the host tests.

Everything is created under a temporary folder and torn down pass or fail.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from agentkit import missing_tools


@pytest.fixture(scope="session")
def host_tools() -> None:
    reason = missing_tools()
    if reason:
        pytest.skip(reason)


@pytest.fixture(scope="session")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("hosts")


@pytest.fixture(scope="session")
def containerd(host_tools: None, workdir: Path) -> Iterator[str]:
    """A containerd of its own, CRI disabled, root and state under workdir."""
    folder = workdir / "containerd"
    folder.mkdir()
    socket_path = folder / "containerd.sock"
    config = folder / "config.toml"
    config.write_text(
        "version = 2\n"
        f'root = "{folder}/root"\nstate = "{folder}/state"\n'
        'disabled_plugins = ["io.containerd.grpc.v1.cri"]\n'
        f'[grpc]\n  address = "{socket_path}"\n'
        f'[ttrpc]\n  address = "{socket_path}.ttrpc"\n'
        f'[debug]\n  address = "{folder}/debug.sock"\n'
    )
    log = (folder / "log").open("w")
    process = subprocess.Popen(
        ["containerd", "--config", str(config)],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 20
        while not socket_path.exists():
            if time.monotonic() > deadline or process.poll() is not None:
                pytest.fail(f"containerd did not start: {(folder / 'log').read_text()}")
            time.sleep(0.05)
        yield str(socket_path)
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()


@pytest.fixture(scope="session")
def image_tar(host_tools: None, workdir: Path) -> Path:
    """A busybox OCI image archive built with umoci (no registry needed)."""
    layout, bundle = workdir / "image", workdir / "bundle"
    subprocess.run(["umoci", "init", "--layout", str(layout)], check=True)
    subprocess.run(["umoci", "new", "--image", f"{layout}:latest"], check=True)
    subprocess.run(
        ["umoci", "unpack", "--image", f"{layout}:latest", str(bundle)],
        check=True,
        capture_output=True,
    )
    rootfs = bundle / "rootfs"
    for folder in ("bin", "tmp", "etc", "proc", "sys", "dev", "data"):
        (rootfs / folder).mkdir(exist_ok=True)
    shutil.copy(shutil.which("busybox") or "", rootfs / "bin" / "busybox")
    subprocess.run(
        ["chroot", str(rootfs), "/bin/busybox", "--install", "-s", "/bin"], check=True
    )
    subprocess.run(
        ["umoci", "repack", "--image", f"{layout}:latest", str(bundle)], check=True
    )
    subprocess.run(
        [
            "umoci",
            "config",
            "--image",
            f"{layout}:latest",
            "--config.cmd",
            "/bin/sh",
            "--config.env",
            "PATH=/bin",
        ],
        check=True,
    )
    archive = workdir / "busybox.tar"
    subprocess.run(["tar", "cf", str(archive), "-C", str(layout), "."], check=True)
    return archive
