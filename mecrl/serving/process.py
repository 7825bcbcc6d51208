"""A server in a process of its own, on a free loopback port.

The benchmark and the tests talk to a real ``mecrl serve`` over HTTP; this
starts it, waits until it is ready and always stops it.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import IO

import httpx

from mecrl.serving import TOKEN_ENV


def free_port() -> int:
    """Return a TCP port free on the loopback interface just now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class ServerProcess:
    """``mecrl serve BUNDLE`` in a child process, as a context manager.

    Args:
        bundle: The bundle folder.
        token: Bearer token, passed in the environment; None for
            ``--no-auth``.
        extra_args: More ``mecrl serve`` options.
        ready_timeout_s: How long to wait for readiness.
    """

    def __init__(
        self,
        bundle: str | Path,
        token: str | None,
        extra_args: tuple[str, ...] = (),
        ready_timeout_s: float = 60.0,
    ) -> None:
        self.bundle = Path(bundle)
        self.token = token
        self.extra_args = extra_args
        self.ready_timeout_s = ready_timeout_s
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None
        self._stderr: IO[bytes] | None = None

    @property
    def headers(self) -> dict[str, str]:
        """Headers that carry the token, if any."""
        return {} if self.token is None else {"Authorization": f"Bearer {self.token}"}

    def __enter__(self) -> ServerProcess:
        env = {key: value for key, value in os.environ.items() if key != TOKEN_ENV}
        command = [sys.executable, "-m", "mecrl.cli", "serve", str(self.bundle)]
        command += ["--port", str(self.port), *self.extra_args]
        if self.token is None:
            command.append("--no-auth")
        else:
            env[TOKEN_ENV] = self.token
        # a file, not a pipe: a server that logs much must never block on it
        self._stderr = tempfile.TemporaryFile()
        self.process = subprocess.Popen(
            command, env=env, stdout=subprocess.PIPE, stderr=self._stderr
        )
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def _wait_ready(self) -> None:
        assert self.process is not None  # set by __enter__ just before
        deadline = time.monotonic() + self.ready_timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"mecrl serve exited with {self.process.returncode}: "
                    f"{self.stderr()}"
                )
            try:
                if httpx.get(f"{self.url}/v2/health/ready", timeout=1.0).is_success:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise TimeoutError(f"mecrl serve was not ready in {self.ready_timeout_s} s")

    def stderr(self) -> str:
        """Return what the server wrote to its standard error so far."""
        if self._stderr is None:
            return ""
        self._stderr.seek(0)
        return self._stderr.read().decode(errors="replace").strip()

    def stop(self) -> None:
        """Stop the server: SIGTERM, then SIGKILL after 10 s."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.process.stdout is not None:
            self.process.stdout.close()
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None
