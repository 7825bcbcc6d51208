"""Link delay in user space: frames cross between TAP devices after a delay.

Where the kernel lacks ``netem``, each testbed link is a pair of TAP devices,
one in each host's network namespace, and this forwarder copies every frame
from one to the other once the link's one-way delay has passed. Bandwidth is
left to ``tbf`` on the TAP devices, which the kernel applies before a frame
reaches the forwarder.

One process serves every link of a testbed. It creates the TAP devices itself
(entering each namespace with ``setns``, then returning to its own), so the
devices, and with them the links, vanish when it exits. It runs as
``python -m mecrl.testbed.forwarder LINKS.json``, prints ``ready`` once every
device exists, and stops on SIGTERM or SIGINT.

The delay is timed with ``select`` timeouts at microsecond resolution, the
process's timer slack lowered to 1 us, and a short poll before each frame is
due (see :meth:`Forwarder._timeout_s`). The time a frame spends in the kernel
and in this loop before it is read is not subtracted, so each crossing of a
link takes a few tens of microseconds more than configured, more when the
machine is busy.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import json
import logging
import os
import select
import signal
import struct
import sys
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mecrl.config import check_non_negative, from_dict
from mecrl.testbed.netns import entered

logger = logging.getLogger(__name__)

_TUNSETIFF = 0x400454CA
_IFF_TAP = 0x0002
_IFF_NO_PI = 0x1000
_PR_SET_TIMERSLACK = 29
_MAX_FRAME_BYTES = 65_600
_READS_PER_WAKE = 64
_SPIN_S = 0.0002
_SPIN_FRAMES = 16
_NICE = -10


@dataclass(frozen=True)
class TapLink:
    """One link: two TAP devices in two namespaces, and its one-way delay."""

    netns_a: str
    """Network namespace of the first end (a name under /var/run/netns)."""
    device_a: str
    """TAP device created in ``netns_a``."""
    netns_b: str
    """Network namespace of the second end."""
    device_b: str
    """TAP device created in ``netns_b``."""
    delay_ms: float
    """One-way delay added to every frame, in both directions."""

    def __post_init__(self) -> None:
        check_non_negative("delay_ms", self.delay_ms)


def write_links(path: Path, links: Sequence[TapLink]) -> None:
    """Write ``links`` as the JSON file the forwarder process reads."""
    data = [link.__dict__ for link in links]
    path.write_text(json.dumps(data, indent=1), encoding="utf-8")


def read_links(path: Path) -> list[TapLink]:
    """Read the links written by :func:`write_links`."""
    data: Any = json.loads(path.read_text(encoding="utf-8"))
    return [from_dict(TapLink, item, f"links.{i}") for i, item in enumerate(data)]


def open_tap(netns: str, device: str) -> int:
    """Create the TAP device ``device`` in ``netns`` and return its descriptor.

    Raises:
        OSError: If the namespace cannot be entered or the device created.
    """
    with entered(netns):
        fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK)
        request = struct.pack("16sH", device.encode(), _IFF_TAP | _IFF_NO_PI)
        fcntl.ioctl(fd, _TUNSETIFF, request)
    return fd


class Forwarder:
    """Moves frames between the TAP descriptors of each link after its delay.

    Args:
        pairs: For each link, the descriptors of its two ends and its one-way
            delay in seconds.
    """

    def __init__(self, pairs: Sequence[tuple[int, int, float]]) -> None:
        self._route: dict[int, tuple[int, float]] = {}
        for fd_a, fd_b, delay_s in pairs:
            self._route[fd_a] = (fd_b, delay_s)
            self._route[fd_b] = (fd_a, delay_s)
        # delays are constant per direction, so each queue stays in time order
        self._queues: dict[int, deque[tuple[float, bytes]]] = {
            fd: deque() for fd in self._route
        }
        self._queued = 0

    def run(self) -> None:
        """Forward frames until an exception (a signal handler's) stops it."""
        fds = list(self._route)
        while True:
            next_s = self._release_due()
            readable, _, _ = select.select(fds, [], [], self._timeout_s(next_s))
            arrived_s = time.monotonic()
            for fd in readable:
                self._receive(fd, arrived_s)

    def _timeout_s(self, next_s: float | None) -> float | None:
        """How long to wait for frames before the next one is due.

        A timed wake-up comes some tens of microseconds late, a large error
        on a link of half a millisecond. With few frames queued (pings, a
        request) the loop wakes early and polls until the frame is due; under
        bulk traffic it sleeps the whole way, so as not to spin a core.
        """
        if next_s is None:
            return None
        wait_s = next_s - time.monotonic()
        if self._queued > _SPIN_FRAMES:
            return max(0.0, wait_s)
        return max(0.0, wait_s - _SPIN_S)

    def _receive(self, fd: int, arrived_s: float) -> None:
        out_fd, delay_s = self._route[fd]
        queue = self._queues[out_fd]
        for _ in range(_READS_PER_WAKE):
            try:
                frame = os.read(fd, _MAX_FRAME_BYTES)
            except BlockingIOError:
                return
            queue.append((arrived_s + delay_s, frame))
            self._queued += 1

    def _release_due(self) -> float | None:
        """Write every frame whose time has come; return when the next is due."""
        now_s = time.monotonic()
        next_s = float("inf")
        for out_fd, queue in self._queues.items():
            while queue and queue[0][0] <= now_s:
                _write(out_fd, queue.popleft()[1])
                self._queued -= 1
            if queue:
                next_s = min(next_s, queue[0][0])
        return None if next_s == float("inf") else next_s


def _write(fd: int, frame: bytes) -> None:
    try:
        os.write(fd, frame)
    except OSError as exc:
        # a device that is down (a detached user link) drops the frame, as a
        # cable would; a full device queue drops it too
        if exc.errno not in (errno.EIO, errno.EAGAIN, errno.ENOBUFS):
            raise


READY = "ready"
"""The line written once every device is open and frames flow."""


def main(argv: Sequence[str] | None = None) -> int:
    """Create the TAP devices listed in a links file and forward until stopped."""
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 1:
        raise SystemExit("usage: python -m mecrl.testbed.forwarder LINKS.json")
    links = read_links(Path(args[0]))
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_TIMERSLACK, 1, 0, 0, 0)
    # a busy machine delays every wake-up; a higher weight shortens that wait
    # (the forwarder sleeps between frames, so it takes little from others)
    os.setpriority(os.PRIO_PROCESS, 0, _NICE)
    pairs = [
        (
            open_tap(link.netns_a, link.device_a),
            open_tap(link.netns_b, link.device_b),
            link.delay_ms / 1000.0,
        )
        for link in links
    ]
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, _stop)
    # the handshake the testbed waits for on our stdout, not a message
    sys.stdout.write(READY + "\n")
    sys.stdout.flush()
    with contextlib.suppress(_StopError):
        Forwarder(pairs).run()
    return 0


class _StopError(Exception):
    """Raised by the signal handler to leave the forwarding loop."""


def _stop(signum: int, frame: object) -> None:
    raise _StopError


if __name__ == "__main__":
    sys.exit(main())
