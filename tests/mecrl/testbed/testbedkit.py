"""What the testbed tests share: a spec, and why a test cannot run here."""

import os
import shutil
from pathlib import Path

SPEC = {
    "hosts": [
        {"name": "h1", "zone": "west"},
        {"name": "h2", "runtime": "kata"},
        {"name": "h3"},
    ],
    "links": [
        {"hosts": ["h1", "h2"], "delay_ms": 2.0, "bandwidth_mbps": 200},
        {"hosts": ["h2", "h3"], "delay_ms": 3.0, "bandwidth_mbps": 50},
    ],
    "user": {"access_host": "h1", "radio_rtt_ms": 8.0},
}
"""Three hosts in a line and a user: RTTs from 4 to 18 ms."""


def network_skip_reason() -> str | None:
    """Why the testbed's network cannot be built here, or None."""
    if os.geteuid() != 0:
        return "the testbed needs root to create network namespaces"
    for tool in ("ip", "tc", "ping"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (run .ci/install-hosts)"
    if not Path("/dev/net/tun").exists():
        return "/dev/net/tun is missing: no TAP devices for the link forwarder"
    return None


def containers_skip_reason() -> str | None:
    """Why the testbed's containerd cannot run here, or None."""
    reason = network_skip_reason()
    if reason:
        return reason
    for tool in ("containerd", "ctr", "runc", "umoci"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (run .ci/install-hosts)"
    if not Path("/bin/busybox").exists():
        return "busybox-static is not installed (run .ci/install-hosts)"
    return None
