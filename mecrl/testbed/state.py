"""The record of what a testbed created, kept on disk so it can be undone.

Every namespace, process and containerd namespace is written to the state
file *before* it is created, so :func:`teardown` can remove everything even
after a crash halfway through :meth:`mecrl.testbed.Testbed.up`. Processes are
recorded with their start time, so a PID the system has since reused for
another process is never signalled.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

logger = logging.getLogger(__name__)

STATE_FILE = "testbed-state.json"


@dataclass
class Recorded:
    """What one testbed created."""

    testbed_id: str
    """Short random id in every name the testbed gives."""
    netns: list[str] = field(default_factory=list)
    """Network namespaces, in creation order."""
    processes: list[dict[str, Any]] = field(default_factory=list)
    """Processes started, each ``{"pid", "start_ticks", "what"}``; each leads
    its own process group."""
    containerd_socket: str | None = None
    """Socket of the testbed's containerd, once started."""
    containerd_namespaces: list[str] = field(default_factory=list)
    """containerd namespaces the hosts use."""


class StateFile:
    """The state file of a testbed in ``workdir``.

    Args:
        workdir: The testbed's working directory.
        recorded: What was created so far.
    """

    def __init__(self, workdir: Path, recorded: Recorded) -> None:
        self.path = workdir / STATE_FILE
        self.recorded = recorded

    @classmethod
    def load(cls, workdir: Path) -> StateFile | None:
        """Return the state file in ``workdir``, or None if there is none."""
        path = workdir / STATE_FILE
        if not path.exists():
            return None
        data = json.loads(path.read_text(encoding="utf-8"))
        return cls(workdir, Recorded(**data))

    def save(self) -> None:
        """Write the record, replacing the file atomically."""
        temporary = self.path.with_suffix(".tmp")
        temporary.write_text(json.dumps(asdict(self.recorded), indent=1), "utf-8")
        os.replace(temporary, self.path)

    def add_netns(self, name: str) -> None:
        """Record a namespace about to be created."""
        self.recorded.netns.append(name)
        self.save()

    def add_containerd_namespace(self, name: str) -> None:
        """Record a containerd namespace about to be used."""
        self.recorded.containerd_namespaces.append(name)
        self.save()

    def spawn(
        self,
        argv: Sequence[str],
        what: str,
        log_path: Path,
        *,
        stdout_pipe: bool = False,
        env: Mapping[str, str] | None = None,
    ) -> subprocess.Popen[str]:
        """Start a process in its own process group and record it.

        Args:
            argv: Command line.
            what: Short description for logs and the record.
            log_path: File that receives its standard error (and standard
                output unless ``stdout_pipe``).
            stdout_pipe: Give the caller a pipe to its standard output.
            env: Its environment; None for this process's.
        """
        with log_path.open("ab") as log:
            stdout: int | IO[bytes] = subprocess.PIPE if stdout_pipe else log
            process = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=stdout,
                stderr=log,
                start_new_session=True,
                text=True,
                env=None if env is None else dict(env),
            )
        self.record_process(process.pid, what)
        logger.info("started %s (pid %d)", what, process.pid)
        return process

    def record_process(self, pid: int, what: str) -> None:
        """Record a process that leads its own process group."""
        self.recorded.processes.append(
            {"pid": pid, "start_ticks": _start_ticks(pid), "what": what}
        )
        self.save()

    def remove(self) -> None:
        """Delete the state file: nothing is left to undo."""
        self.path.unlink(missing_ok=True)


def stop_processes(
    processes: list[dict[str, Any]], kind: str, timeout_s: float
) -> None:
    """Stop the recorded processes whose ``what`` starts with ``kind``.

    Each process group gets SIGTERM, then SIGKILL if its leader is still
    alive after ``timeout_s``.
    """
    matching = [p for p in processes if p["what"].startswith(kind)]
    running = [p for p in matching if alive(p)]
    for record in running:
        _signal_group(record["pid"], signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    for record in running:
        while alive(record) and time.monotonic() < deadline:
            _reap(record["pid"])
            time.sleep(0.02)
        if alive(record):
            logger.warning("%s ignored SIGTERM; killing it", record["what"])
            _signal_group(record["pid"], signal.SIGKILL)
    for record in matching:
        _reap(record["pid"])


def alive(record: dict[str, Any]) -> bool:
    """Return whether the recorded process still runs (and is not a zombie)."""
    ticks = _start_ticks(record["pid"])
    return ticks is not None and ticks == record["start_ticks"]


def _signal_group(pid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signum)


def _reap(pid: int) -> None:
    """Collect the exit status of our own child, so it leaves no zombie."""
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def _start_ticks(pid: int) -> int | None:
    """Start time of ``pid`` in clock ticks since boot; None if gone or a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="utf-8")
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = stat.rsplit(")", 1)[1].split()
    if fields[0] == "Z":
        return None
    return int(fields[19])
