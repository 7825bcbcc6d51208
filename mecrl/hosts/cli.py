"""``mecrl host-agent`` and ``mecrl calibrate``."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import signal
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    # imported when used: they load the agent and testbed machinery
    from mecrl.hosts.backend import HostsConfig
    from mecrl.hosts.calibrate import Sample
    from mecrl.hosts.migrate import Migrator

logger = logging.getLogger(__name__)


def add_parsers(commands: Any) -> None:
    """Add the host commands to the ``mecrl`` sub-command parsers."""
    agent = commands.add_parser(
        "host-agent", help="serve this host's containerd to the controller"
    )
    agent.add_argument("--config", required=True, type=Path, help="agent YAML file")
    agent.set_defaults(run=_host_agent)

    calibrate = commands.add_parser(
        "calibrate", help="fit the simulator's runc profile to real migrations"
    )
    calibrate.add_argument("--out", required=True, type=Path, help="calibration file")
    calibrate.add_argument(
        "--sizes", default="1,8,32", help="state sizes in MB (default 1,8,32)"
    )
    calibrate.add_argument(
        "--held-out",
        default="",
        help="sizes in MB measured but not fitted, to check the fit (default none)",
    )
    calibrate.add_argument(
        "--modes", default="cold,live", help="migration modes (default cold,live)"
    )
    calibrate.add_argument("--repeats", type=int, default=3, help="moves per point")
    calibrate.add_argument(
        "--hosts", type=Path, help="hosts file of real hosts (default: a testbed)"
    )
    calibrate.add_argument(
        "--pair", help="two host names of the hosts file (default: its first two)"
    )
    calibrate.add_argument(
        "--bandwidth-mbps",
        type=float,
        default=200.0,
        help="link rate: the testbed's, or the real hosts' (default 200)",
    )
    calibrate.add_argument(
        "--delay-ms", type=float, default=2.0, help="testbed link one-way delay"
    )
    calibrate.add_argument(
        "--workdir", type=Path, help="testbed folder (default: temp)"
    )
    calibrate.add_argument("--report", type=Path, help="also write the table here")
    calibrate.add_argument(
        "--samples", type=Path, help="also write every measured move here (JSON)"
    )
    calibrate.set_defaults(run=_calibrate)


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


def _numbers(text: str) -> list[float]:
    try:
        values = [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ValueError(f"expected comma-separated numbers, got {text!r}") from None
    if not values or min(values) <= 0:
        raise ValueError(f"expected sizes > 0, got {text!r}")
    return values


def _calibrate(args: argparse.Namespace) -> int:
    from mecrl.hosts import calibrate
    from mecrl.runtimes import DEFAULT_PROFILES

    sizes = _numbers(args.sizes)
    held_out = _numbers(args.held_out) if args.held_out else []
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    for mode in modes:
        if mode not in ("cold", "live"):
            raise ValueError(f"--modes: expected cold or live, got {mode!r}")
    if args.repeats < 1:
        raise ValueError(f"--repeats must be at least 1, got {args.repeats}")
    if args.hosts is not None:
        samples, where = _measure_hosts(args, sizes + held_out, modes)
    else:
        samples, where = _measure_testbed(args, sizes + held_out, modes)
    before = DEFAULT_PROFILES["runc"]
    fitted = [s for s in samples if s.state_mb not in held_out]
    after = calibrate.fit(fitted, args.bandwidth_mbps)
    rows = calibrate.table(samples, before, after, args.bandwidth_mbps, held_out)
    source = (
        f"mecrl calibrate on {where}, {args.bandwidth_mbps:g} Mbit/s, sizes "
        f"{args.sizes} MB, {args.repeats} moves each, {time.strftime('%Y-%m-%d')}"
    )
    calibrate.write(args.out, after, source)
    text = calibrate.markdown(rows)
    print(text)
    if args.report is not None:
        args.report.write_text(text + "\n", encoding="utf-8")
    if args.samples is not None:
        measured = [dataclasses.asdict(sample) for sample in samples]
        args.samples.write_text(json.dumps(measured, indent=1), encoding="utf-8")
    print(f"wrote {args.out}")
    return 0


def _measure_testbed(
    args: argparse.Namespace, sizes: list[float], modes: list[str]
) -> tuple[list[Sample], str]:
    import tempfile

    from mecrl.config import from_dict
    from mecrl.hosts import calibrate
    from mecrl.hosts.backend import HostsConfig
    from mecrl.testbed import Testbed, TestbedSpec

    spec = from_dict(
        TestbedSpec,
        {
            "hosts": [{"name": "a"}, {"name": "b"}],
            "links": [
                {
                    "hosts": ["a", "b"],
                    "delay_ms": args.delay_ms,
                    "bandwidth_mbps": args.bandwidth_mbps,
                }
            ],
            "user": {"access_host": "a"},
        },
    )
    with tempfile.TemporaryDirectory() as temporary:
        workdir = args.workdir or Path(temporary)
        with Testbed.up(spec, workdir) as testbed:
            hosts = HostsConfig.from_testbed(testbed, workdir / "journal", ())
            migrator = _migrator(hosts)
            samples = calibrate.measure(
                migrator,
                ("a", "b"),
                image=testbed.image_ref,
                sizes_mb=sizes,
                modes=modes,
                repeats=args.repeats,
            )
    where = f"a two-host testbed ({args.delay_ms:g} ms one way)"
    return samples, where


def _measure_hosts(
    args: argparse.Namespace, sizes: list[float], modes: list[str]
) -> tuple[list[Sample], str]:
    from mecrl.hosts import calibrate
    from mecrl.hosts.backend import HostsConfig

    hosts = HostsConfig.from_file(args.hosts)
    names = [h.name for h in hosts.hosts if h.site is not None]
    pair = tuple(args.pair.split(",")) if args.pair else tuple(names[:2])
    if len(pair) != 2 or not set(pair) <= set(names):
        raise ValueError(f"--pair must name two hosts of {args.hosts}; got {pair}")
    samples = calibrate.measure(
        _migrator(hosts),
        (pair[0], pair[1]),
        image=hosts.service.image,
        sizes_mb=sizes,
        modes=modes,
        repeats=args.repeats,
    )
    return samples, f"hosts {pair[0]} and {pair[1]} of {args.hosts}"


def _migrator(hosts: HostsConfig) -> Migrator:
    from mecrl.hosts.backend import connect
    from mecrl.hosts.journal import Journal
    from mecrl.hosts.migrate import Migrator

    return Migrator(connect(hosts), Journal(hosts.journal))
