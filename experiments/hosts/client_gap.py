"""What a client sees of a migration: its longest wait for a reply.

Brings up a two-host testbed (2 ms one way, 200 Mbit/s), deploys the
calibration counter at h1, and moves it to h2 and back, live and cold, while
a client in the user's namespace sends a line every 20 ms (reconnecting
with a 2 s timeout). Prints, per move, the controller's downtime and the
client's longest gap between two replies. Run as root from the repository:

    sudo .venv/bin/python experiments/hosts/client_gap.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import itertools
import socket
import tempfile
import threading
import time
from pathlib import Path

from mecrl.config import from_dict
from mecrl.hosts.backend import HostsConfig, connect
from mecrl.hosts.calibrate import service_args
from mecrl.hosts.journal import Journal
from mecrl.hosts.migrate import Migrator
from mecrl.hosts.netns import enter_netns
from mecrl.testbed import Testbed, TestbedSpec

ADDRESS = "10.77.0.9"
SPEC = {
    "hosts": [{"name": "h1"}, {"name": "h2"}],
    "links": [{"hosts": ["h1", "h2"], "delay_ms": 2.0, "bandwidth_mbps": 200}],
    "user": {"access_host": "h1", "radio_rtt_ms": 4.0},
}


class Client(threading.Thread):
    """Sends a line every 20 ms and notes when each reply came."""

    def __init__(self, netns_path: str) -> None:
        super().__init__(daemon=True)
        self.netns_path = netns_path
        self.replies: list[float] = []
        self.stop = threading.Event()

    def _connect(self) -> socket.SocketIO:
        while True:
            try:
                return socket.create_connection((ADDRESS, 7000), timeout=2).makefile(
                    "rw"
                )
            except OSError:
                time.sleep(0.01)

    def run(self) -> None:
        """Talk until told to stop, reconnecting whenever the line drops."""
        enter_netns(self.netns_path)
        stream = self._connect()
        while not self.stop.is_set():
            try:
                stream.write("x\n")
                stream.flush()
                if not stream.readline():
                    raise OSError("closed")
                self.replies.append(time.monotonic())
            except OSError:
                stream = self._connect()
            time.sleep(0.02)

    def longest_gap_s(self) -> float:
        """Longest time between two replies."""
        return float(max(b - a for a, b in itertools.pairwise(self.replies)))


def main() -> None:
    """Measure and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    bed_spec = from_dict(TestbedSpec, SPEC)
    with (
        tempfile.TemporaryDirectory() as folder,
        Testbed.up(bed_spec, Path(folder)) as testbed,
    ):
        hosts = connect(HostsConfig.from_testbed(testbed, f"{folder}/journal", ()))
        migrator = Migrator(hosts, Journal(f"{folder}/journal"))
        spec = {
            "service": "gap",
            "image": testbed.image_ref,
            "args": service_args(0.001),
            "port": 7000,
            "address": ADDRESS,
        }
        print("| mode | controller downtime s | client's longest gap s |")
        print("|---|---|---|")
        for mode in ["live", "cold"] * args.repeats:
            hosts["h1"].agent.post("/v1/services", spec)
            hosts["h1"].agent.get("/v1/services/gap?wait_s=10")
            migrator.switch(ADDRESS, hosts["h1"])
            client = Client(testbed.user.netns_path)
            client.start()
            time.sleep(1.0)
            report = migrator.migrate(spec, "h1", "h2", mode)
            time.sleep(2.5)
            client.stop.set()
            client.join(5)
            gap_s = client.longest_gap_s()
            print(f"| {mode} | {report.downtime_s:.3f} | {gap_s:.3f} |")
            hosts["h2"].agent.delete("/v1/services/gap")


if __name__ == "__main__":
    main()
