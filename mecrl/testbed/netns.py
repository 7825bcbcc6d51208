"""Entering network namespaces, and running ``ip`` and ``tc`` inside them.

Python 3.11 has no ``os.setns``, so :func:`entered` calls libc's. ``setns``
moves only the calling thread: a socket opened inside the block belongs to
the namespace for its whole life, even after the thread has left it.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import subprocess
from collections.abc import Iterator, Sequence

NETNS_DIR = "/var/run/netns"
_CLONE_NEWNET = 0x40000000


class CommandError(RuntimeError):
    """A command run for the testbed failed; the message holds its output."""


def netns_path(netns: str) -> str:
    """Return the path of the named network namespace ``netns``."""
    return f"{NETNS_DIR}/{netns}"


@contextlib.contextmanager
def entered(netns: str) -> Iterator[None]:
    """Run the block with the calling thread inside the named namespace.

    Raises:
        OSError: If the namespace does not exist or cannot be entered.
    """
    libc = ctypes.CDLL(None, use_errno=True)
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        target = os.open(netns_path(netns), os.O_RDONLY)
        try:
            _setns(libc, target, netns)
        finally:
            os.close(target)
        try:
            yield
        finally:
            _setns(libc, own, "own namespace")
    finally:
        os.close(own)


def _setns(libc: ctypes.CDLL, fd: int, what: str) -> None:
    if libc.setns(fd, _CLONE_NEWNET) != 0:
        code = ctypes.get_errno()
        raise OSError(code, f"setns into {what}: {os.strerror(code)}")


def run(
    argv: Sequence[str], *, stdin: str | None = None, timeout_s: float = 30.0
) -> str:
    """Run a command; return its output.

    Raises:
        CommandError: If it exits non-zero or times out, with its error output.
    """
    try:
        done = subprocess.run(
            list(argv),
            input=stdin,
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise CommandError(f"{' '.join(argv)}: timed out after {timeout_s} s") from None
    if done.returncode != 0:
        message = (done.stderr or done.stdout).strip()
        raise CommandError(f"{' '.join(argv[:4])}: {message}")
    return done.stdout


def ip_batch(netns: str, commands: Sequence[str]) -> None:
    """Run ``ip`` commands (one per item, without ``ip``) inside ``netns``."""
    if commands:
        run(["ip", "-n", netns, "-batch", "-"], stdin="\n".join(commands) + "\n")


def tc_batch(netns: str, commands: Sequence[str]) -> None:
    """Run ``tc`` commands (one per item, without ``tc``) inside ``netns``."""
    if commands:
        run(["tc", "-n", netns, "-batch", "-"], stdin="\n".join(commands) + "\n")


def exec_argv(netns: str, argv: Sequence[str]) -> list[str]:
    """Return ``argv`` prefixed to run inside the named namespace."""
    return ["ip", "netns", "exec", netns, *argv]
