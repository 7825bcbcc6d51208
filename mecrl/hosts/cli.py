"""``mecrl host-agent`` and ``mecrl calibrate``."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)


def add_parsers(commands: Any) -> None:
    """Add the host commands to the ``mecrl`` sub-command parsers."""
    agent = commands.add_parser(
        "host-agent", help="serve this host's containerd to the controller"
    )
    agent.add_argument("--config", required=True, type=Path, help="agent YAML file")
    agent.set_defaults(run=_host_agent)


def _host_agent(args: argparse.Namespace) -> int:
    from mecrl.hosts.config import HostAgentConfig
    from mecrl.hosts.server import make_server

    config = HostAgentConfig.from_file(args.config)
    server = make_server(config)

    def stop(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    print(f"host agent {config.name} serving on {server.url}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    print(f"host agent {config.name} stopped", file=sys.stderr)
    return 0
